"""A sweep's report, written in the background while its trials run.

    live = LiveReport(tracking, study, n_trials).start()   # the sweep's process, as the workers go
    ...
    folder = live.finish("FINISHED")               # after the last trial: only what changed is drawn

Drawing the report's plots takes seconds (Optuna's importance, the schedules of the best trials
composed from their configs, PNGs). Drawn only after the last trial, they are seconds the user
waits for a command whose work is done. So the report is written again, in a thread of the
sweep's process, as trials finish (at most one at a time, no sooner than MIN_INTERVAL_SECONDS
after the last, and never longer than its own drawing took again, so that on a busy machine it
takes at most half of a core from the trials; not in the sweep's tail, where every trial still
to finish is running, so that no drawing is under way, and stale, when the last one ends: there
only the best trials' curves and schedules, which the last trials change only if they beat
them), and at once when the sweep has all its trials, while the workers exit. The report
written after that keeps each plot whose inputs did not change (`DrawnPlots`): all of them once
the sweep is complete; else the best trials' curves and schedules, unless the last trials beat
them. The libraries are imported here too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sweeper.collector import leave_loaded_alone
from sweeper.records.run_plot import import_plotting
from sweeper.records.tracking import SweepTracking, sweep_folder
from sweeper.records.trial_runs import report_sources

if TYPE_CHECKING:
    import optuna

    from sweeper.sweep.storage import StorageSpec

__all__ = ["LiveReport"]

LOOK_SECONDS = 0.5  # how often the thread looks for newly finished trials
TAIL_LOOK_SECONDS = 0.1  # in the sweep's tail: the last trial's end starts the last drawing at once
MIN_INTERVAL_SECONDS = 2.0
REPORT_NICE = 10  # the report's thread yields the cores to the trials
SETTLE_SECONDS = 2.0  # the longest the last drawing waits for the last trials' records


class LiveReport:
    def __init__(
        self,
        tracking: SweepTracking,
        study: optuna.Study,
        n_trials: int,
        settled: Callable[[], bool] | None = None,
        storage: StorageSpec | None = None,
    ) -> None:
        """`settled`: whether every finished trial's records are in the store (the machine's
        recorder sends them a moment after the trial ends); the drawing made once the sweep has
        all its trials draws the plots of the study at once and waits for it (at most
        SETTLE_SECONDS) before those of the MLflow records, so that the report written after the
        workers have exited finds that drawing current and draws nothing again. `storage`: the
        study's, whose file (an embedded one's) says when the trials were not changed since
        they were counted."""
        self.tracking = tracking
        self.study = study
        self.n_trials = n_trials
        self.settled = settled or (lambda: True)
        self.storage = storage
        self._counted: tuple[tuple[int, int], float, tuple[int, int]] | None = None  # (file, when, counts)
        self.drawn = None  # DrawnPlots, once the report's module is loaded
        self._stop = threading.Event()
        # Not a daemon: a process that ends early waits for a drawing to finish rather than
        # stopping a thread in the middle of an import or a PNG.
        self._thread = threading.Thread(target=self._run, name="report")

    def start(self) -> LiveReport:
        self._thread.start()
        return self

    def finish(self, status: str) -> Path:
        """Stop writing in the background; write the final report (what changed since the last
        one), attach it to the sweep's run and end that run."""
        self.stop()
        from sweeper.analysis.report import finish_sweep

        return finish_sweep(self.tracking, self.study, status, self.drawn)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join()

    def _run(self) -> None:
        # The trials come first: on a machine whose cores the workers fill, this thread (the
        # libraries' import, each drawing) takes what they leave (a thread's own nice, Linux).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REPORT_NICE)
        # The report's libraries load now, not after the last trial; matplotlib first, one thread
        # at a time (the recorder draws runs' schedule plots in another).
        import_plotting()
        import optuna.visualization.matplotlib  # noqa: F401

        from sweeper.analysis.report import MIN_IMPORTANCE_TRIALS, DrawnPlots, Outdated, draw_best_trials_plots, write_report

        if self.n_trials >= MIN_IMPORTANCE_TRIALS:  # else the importance is left out: no scikit-learn (1 s of a core)
            import optuna.importance  # noqa: F401
        leave_loaded_alone()  # the libraries stay loaded: no collection walks them again (sweeper.collector)

        self.drawn = DrawnPlots()
        written, pause, last, look = None, MIN_INTERVAL_SECONDS, 0.0, LOOK_SECONDS
        settling: float | None = None  # when the sweep was seen to have all its trials
        best_drawn = None  # the finished trials the best trials' plots were last drawn for
        while not self._stop.wait(look):
            finished, running = self._counts()
            last_trial = finished >= self.n_trials  # drawn at once, while the workers exit
            # In the sweep's tail (every trial still to finish is running) a drawing would most
            # likely be under way when the last trial ends, and stale: the user would wait for it.
            tail = running and finished + running >= self.n_trials and not last_trial
            look = TAIL_LOOK_SECONDS if tail or last_trial else LOOK_SECONDS
            if tail and finished and finished != best_drawn:
                # Only the best trials' curves and schedules (a third of the drawing): after the
                # last trial they are drawn again only if it beats them.
                folder = sweep_folder(self.tracking, self.tracking.sweep)
                try:
                    if draw_best_trials_plots(self.study, folder, report_sources(self.tracking), self.drawn, self._superseded):
                        best_drawn = finished
                except Outdated:
                    pass
                except Exception:  # noqa: BLE001 - the report after the last trial says what fails
                    best_drawn = finished
                continue
            if finished == written or finished == 0 or tail or (time.monotonic() - last < pause and not last_trial):
                continue
            began = time.monotonic()
            if last_trial:
                # The plots of the study alone at once; those of the MLflow records once the
                # recorder has sent the last trials' (at most SETTLE_SECONDS after the first look),
                # and till then no report is written again (its tables, its reads of MLflow).
                if settling is not None and self._records_pending(settling):
                    continue
                settling = settling or began
                outdated = functools.partial(self._waits_for_records, settling)
            else:
                # A drawing made before the sweep had all its trials is given up as soon as it
                # has them (or the command ends): the drawing that counts, of every trial, starts then.
                outdated = self._superseded
            try:
                write_report(
                    self.study,
                    sweep_folder(self.tracking, self.tracking.sweep),
                    report_sources(self.tracking),
                    drawn=self.drawn,
                    outdated=outdated,
                )
            except Outdated:
                continue
            except Exception:  # noqa: BLE001, S112 - the final report says what fails; this one only saves it time
                continue
            written, last = finished, time.monotonic()
            pause = max(MIN_INTERVAL_SECONDS, last - began)
            look = 0.0  # trials may have finished during the drawing: the last one's drawing starts at once

    def _superseded(self, plot: str) -> bool:
        return self._stop.is_set() or self._counts()[0] >= self.n_trials

    def _records_pending(self, settling: float) -> bool:
        """Whether the last trials' records are still to be sent, SETTLE_SECONDS at most."""
        return not self.settled() and time.monotonic() - settling < SETTLE_SECONDS

    def _waits_for_records(self, settling: float, plot: str) -> bool:
        from sweeper.analysis.report import FROM_RECORDS

        return plot in FROM_RECORDS and self._records_pending(settling)

    def _counts(self) -> tuple[int, int]:
        """(finished, running) trials of the sweep. An embedded study whose file is as it was
        when they were last counted, less than LOOK_SECONDS ago, has the same counts: the looks
        of the sweep's tail (every TAIL_LOOK_SECONDS) and a drawing's checks between its plots
        read its trials (~1 ms each here, for a study of 20 or of 200 finished trials) no more
        often than the looks elsewhere."""
        from optuna.trial import TrialState

        file = self.storage.file_state() if self.storage is not None else None
        now = time.monotonic()
        if file is not None and self._counted is not None:
            counted_file, when, counts = self._counted
            if counted_file == file and now - when < LOOK_SECONDS:
                return counts
        states = [trial.state for trial in self.study.get_trials(deepcopy=False)]
        finished = sum(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states)
        counts = finished, states.count(TrialState.RUNNING)
        if file is not None:  # the file as it was before the read: a change during it shows at the next look
            self._counted = (file, now, counts)
        return counts
