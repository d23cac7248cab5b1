"""What `sweeper sweep` does (sweeper.commands.sweep starts it, its warm server first): check the
sweep, make or resume its study, run its workers to the end, then its report, audit and summary.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweeper.analysis.live_report import LiveReport
from sweeper.boundary.checked_study import checked_study
from sweeper.boundary.printed import printable
from sweeper.config.errors import ConfigError, error_line
from sweeper.config.rules import sweep_folder
from sweeper.records.audit import audit_records
from sweeper.records.machine_recorder import MachineRecorder
from sweeper.records.mlflow_store import TrackingSettings, check_server, tracking_settings
from sweeper.records.spool import spool_files, spool_folder
from sweeper.records.tracking import prepare_sweep
from sweeper.stop_signals import raise_if_stopped
from sweeper.sweep.counts import Counts, count_trials
from sweeper.sweep.launchers import LocalWorker, WorkerHandle, check_launcher, check_trainer_beside, launch_held_workers, launch_workers
from sweeper.sweep.live import LiveView, WorkerNotes, read_status, sampled
from sweeper.sweep.lr_anchor import ANCHOR_ATTR, anchor_plan, record_in_parent_run
from sweeper.sweep.plan import SweepPlan, check_space, plan_sweep, quick_checks, validate_plan
from sweeper.sweep.storage import load_rdb_storage
from sweeper.sweep.study import check_definition, existing_study, open_study
from sweeper.sweep.warm import WarmServer

EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C
EXIT_CHECK_SECONDS = 0.1  # how soon the sweep sees its last worker exit
RUN_LOCK = ".run.lock"  # in the sweep's folder: held while a command finds or makes its MLflow run


@dataclass(frozen=True)
class _Begun:
    """A sweep checked, its study made or resumed, its workers held or gone."""

    plan: SweepPlan
    folder: Path
    spool: Path
    deadline: float | None
    held: list[LocalWorker]
    made: list[Path]  # the folders this command made
    records: Any  # the sweep's SweepTracking
    study: optuna.Study
    before: Counts  # its trials before any worker of this command went


def set_up(args: argparse.Namespace, server: WarmServer | None) -> _Begun | int:
    """Check the sweep and begin it; an exit code where it ends here (--dry-run, a sweep done
    already, Ctrl-C while it began). `server`: a warm server started early, for the workers to
    be forked from (sweeper.sweep.warm.early_server), or None."""
    plan = plan_sweep(args.overrides, args.config_dir, validate=False)
    quick_checks(plan)
    check_launcher(plan)
    # Said before torch or MLflow load, by --dry-run too: a name whose sweep has another
    # definition is refused, and a sweep that is done has nothing to run.
    existing = existing_study(plan)
    if existing is not None:
        check_definition(existing, plan)
    folder = sweep_folder(plan.cfg.results_dir, plan.name)
    # Records the store could not take yet (a full disk, a server away) wait in the spool folder:
    # a run of the sweep sends them, even one with no trial left to run.
    spool = spool_folder(folder)
    unsent = spool_files(spool)
    done = existing is not None and count_trials(existing).finished >= plan.n_trials and not unsent
    if args.dry_run:
        validate_plan(plan)
        with tempfile.TemporaryDirectory() as plots:  # a dry run writes nothing: lr_find's plots go
            plan, _ = anchor_plan(plan, existing, Path(plots))
        print(f"sweep {plan.name}: {plan.n_trials} trials in {plan.storage.label()}; space:")
        arms = [plan.arms.describe(), *filter(None, [_pruning(plan)])] if plan.arms else []
        print("\n".join(f"  {line}" for line in [*plan.space.describe(), *arms]))
        if done:
            print(_finished_already(existing, plan))
        return 0
    if done:
        print(_finished_already(existing, plan))
        report = folder if (folder / "report.md").exists() else None
        return _summarise(existing, plan, folder, tracking_settings(plan.cfg), report, failed_before=count_trials(existing).failed)
    deadline = time.time() + plan.timeout if plan.timeout else None
    # The workers start now, while the sweep is checked and its stores made (seconds each, side
    # by side); they wait for its word. A check that fails ends them, and leaves nothing written.
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    held = launch_held_workers(plan, folder, deadline, server)
    try:
        plan, records, study, before = _begin(plan, folder, held, fresh=folder in made)
    except BaseException as error:
        if isinstance(error, ConfigError) or not any(worker.went for worker in held):
            _discard(held, made)  # nothing of the sweep is left (a refusal after go took back its study)
            raise
        _stop(held)  # the workers went: they stop as Ctrl-C stops them, and the study stays, to resume
        if isinstance(error, KeyboardInterrupt):
            print(f"sweep {plan.name}: interrupted; run the same command again to resume it.")
            return EXIT_INTERRUPTED
        raise
    return _Begun(plan, folder, spool, deadline, held, made, records, study, before)


def run_sweep(begun: _Begun) -> int:
    """Run the workers to the end of the sweep, then its report, its audit and its summary."""
    plan, folder, spool, deadline, held, made = begun.plan, begun.folder, begun.spool, begun.deadline, begun.held, begun.made
    records, study, before = begun.records, begun.study, begun.before
    # This machine's workers hand their records to this process (and any left by an earlier run
    # of the sweep that was killed are sent now): MLflow is loaded and its store opened here alone.
    recorder = MachineRecorder(records, spool).start() if records.settings is not None else None
    # The report, written as the trials finish.
    live = LiveReport(records, study, plan.n_trials, recorder.settled if recorder else None, plan.storage)
    for note in [plan.arms.shares(plan.n_trials), _pruning(plan)] if plan.arms else []:
        if note:
            print(f"note: {note}", flush=True)
    interrupted = False
    try:
        if before.finished >= plan.n_trials:  # another command finished it while this one started
            _discard(held, made)
            print(_finished_already(study, plan))
        else:
            try:
                interrupted = _run_workers(study, plan, folder, deadline, held, live)
            except KeyboardInterrupt:  # a second Ctrl-C while the workers stop
                interrupted = True
    finally:
        live.stop()
        if recorder is not None:  # every record the workers wrote is sent before the audit looks
            recorder.close()
    audit = audit_records(records, study, spool)  # runs left RUNNING by stopped workers ended; lost records found
    report = _finish(live, records, study, plan, "KILLED" if interrupted else "FINISHED")
    code = _summarise(study, plan, folder, records.settings, report, failed_before=before.failed)
    for line in audit.lines():
        print(f"records: {line}")
    if (not audit.complete or report is None) and code == 0:
        code = EXIT_INCOMPLETE
    if interrupted:
        print(f"sweep {plan.name}: interrupted; run the same command again to resume it.")
        return EXIT_INTERRUPTED
    return code


def _begin(plan: SweepPlan, folder: Path, held: list[LocalWorker], *, fresh: bool) -> tuple[SweepPlan, Any, optuna.Study, Counts]:
    """Check the sweep (the slow checks), then make or resume its study and its MLflow run; the
    plan comes back with the lr ranges lr_find set (search.lr.high=auto: found once, recorded),
    and the study's trials as they were before any worker of this command went.

    A new sweep of this machine's workers (its study and its folder new, its storage embedded)
    lets them go as soon as its study exists: MLflow's import and its store's checks (seconds)
    then run beside the first trials, whose records wait in the spool meanwhile. Should MLflow
    refuse the sweep, the workers are stopped and what they made is taken back (the study, the
    folder): the refusal leaves nothing, as one made before the workers went."""
    # The trainer's checks (torch, for sweeper's own) run in a process forked from the warm
    # server, which has loaded the trainer already, beside the checks of the space here.
    trainer_checked = check_trainer_beside(plan, held)
    check_server(plan.cfg)  # unreachable: said before anything is written here
    check_space(plan)
    if plan.storage.kind != "journal":
        load_rdb_storage()  # the study's imports, while the warm server checks the trainer
    trainer_checked()
    # Two commands of one sweep started at once make one study and one parent run: the run is
    # made under a lock of its own, not the study's claim, which the workers take for every trial.
    with _run_lock(folder):
        with plan.storage.claim(plan.name):
            # A sweep of this name with another definition is refused before anything is written.
            existing = existing_study(plan)
            if existing is not None:
                check_definition(existing, plan)
            plan, anchor = anchor_plan(plan, existing, folder)
            early = bool(held) and existing is None and fresh and plan.storage.path is not None
            # The sweep's MLflow run; a tracking store that cannot be reached stops here, before any study.
            records = None if early else prepare_sweep(plan.cfg, plan.name, existing)
            study = open_study(plan, create=True)
            before = count_trials(study)  # what this command's summary counts from
            anchor_is_new = anchor is not None and ANCHOR_ATTR not in study.user_attrs
            if anchor_is_new:  # found now: kept before any worker joins
                study.set_user_attr(ANCHOR_ATTR, anchor)
        if early:
            records = _prepare_beside_workers(plan, folder, held)
        if anchor_is_new:
            record_in_parent_run(records, anchor, folder)
        # Where its runs are: what report, confirm, rerun and ui read (today's config may differ).
        study.set_user_attr("tracking", records.location())
    return plan, records, study, before


def _prepare_beside_workers(plan: SweepPlan, folder: Path, held: list[LocalWorker]) -> Any:
    """Let the workers go, then make the sweep's MLflow run. A refusal stops the workers and
    removes the new study and folder before it is said."""
    for worker in held:
        worker.go()
    try:
        return prepare_sweep(plan.cfg, plan.name, None)
    except ConfigError:
        _stop(held)
        optuna.delete_study(study_name=plan.name, storage=plan.storage.open())
        shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def _run_lock(folder: Path) -> Iterator[None]:
    """One command of a sweep at a time finds or makes its MLflow run (a file lock in its folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / RUN_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _discard(held: list[LocalWorker], made: list[Path]) -> None:
    """End the held workers of a sweep that stops before it begins, and remove the folders made
    for their logs (those that are empty now: a store made meanwhile stays)."""
    for worker in held:
        worker.discard()
    if made:  # the sweep's folder is new: its lock goes with it
        (made[0] / RUN_LOCK).unlink(missing_ok=True)
    for path in made:  # the deepest first
        try:
            path.rmdir()
        except OSError:
            pass


def _finish(live: LiveReport, records: Any, study: optuna.Study, plan: SweepPlan, status: str) -> Path | None:
    """The report, and the sweep's run ended; None (said in one line) when the report could not
    be written (a full disk, a folder that cannot be written): the run is ended all the same."""
    try:
        return live.finish(status)
    except Exception as error:  # noqa: BLE001 - whatever failed, the sweep's run must not stay RUNNING
        records.end(status)
        print(
            f"report: not written ({type(error).__name__}: {error_line(error)}); the study holds every trial, "
            f"and `sweeper report {plan.name}` writes it again once that is fixed."
        )
        return None


def _run_workers(
    study: optuna.Study, plan: SweepPlan, folder: Path, deadline: float | None, held: list[LocalWorker], live: LiveReport
) -> bool:
    """Let the held workers go (or launch the cluster's jobs now) and follow them to the end;
    True when Ctrl-C stopped them early."""
    for worker in held:
        worker.go()  # those not gone yet (a new sweep's went as soon as its study existed)
    workers = held or launch_workers(plan, folder, deadline)
    # The report is written while the trials run (this process mostly waits meanwhile), not
    # after the last trial, where the user waits for it.
    live.start()
    interrupted = False
    try:
        _watch(study, plan, workers)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        _stop(workers)  # watching failed: leave no orphans (the report stops with the command)
        raise
    # Stopped only now, out of the except block: Ctrl-C may have cut a read of the study short,
    # and until the exception (and the frames it keeps) is gone that read can hold the storage's
    # lock, which stopping workers wait on to record their trials. (A fifth of a second of a
    # finished sweep's exit otherwise.)
    if interrupted:
        gc.collect()
    _stop(workers)
    return interrupted


def _stop(workers: list[WorkerHandle]) -> None:
    for worker in workers:
        worker.stop()


def _watch(study: optuna.Study, plan: SweepPlan, workers: list[WorkerHandle]) -> None:
    notes = WorkerNotes(workers, study, plan.storage.claim(plan.name))
    with LiveView(f"sweep {plan.name}", plan.cfg.sweep.live) as view:
        while True:
            done = all(w.poll() is not None for w in workers)  # read before the study: no update lost
            for note in notes.new():
                view.say(note)
            view.show(read_status(study, plan, workers))
            if done:
                return
            _wait_for_exit(workers, float(plan.cfg.sweep.poll))


def _wait_for_exit(workers: list[WorkerHandle], seconds: float) -> None:
    """Sleep `seconds` (between looks at the study), or less once every worker has exited: the
    sweep's report should not wait on a poll interval."""
    deadline = time.monotonic() + seconds
    while any(w.poll() is None for w in workers):
        raise_if_stopped()  # a Ctrl-C or SIGTERM whose KeyboardInterrupt Python swallowed
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, EXIT_CHECK_SECONDS))


def _pruning(plan: SweepPlan) -> str | None:
    """How compare mode scales the pruner's startup to an arm's share (None: it does not)."""
    return plan.arms.pruning_note(OmegaConf.to_container(plan.cfg.pruner, resolve=True), plan.n_trials)


def _finished_already(study: optuna.Study, plan: SweepPlan) -> str:
    finished = count_trials(study).finished
    return (
        f"sweep {plan.name} already has {finished} finished trials; raise sweep.n_trials to run more "
        f"(`sweeper report {plan.name}` writes its report again)."
    )


def _summarise(
    study: optuna.Study, plan: SweepPlan, folder: Path, settings: TrackingSettings | None, report: Path | None, failed_before: int
) -> int:
    """The outcome, and where to look at it."""
    study = checked_study(study)  # a shared storage's trials are read as every reader reads them
    counts = count_trials(study)
    print(
        f"\nsweep {plan.name}: {counts.finished}/{plan.n_trials} finished ({counts.complete} complete, "
        f"{counts.pruned} pruned), {counts.failed} failed"
    )
    for reason, times in _failure_reasons(study).most_common(3):
        print(f"  failed {times}x: {printable(reason)}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trials if plan.objectives.several else [study.best_trial] if complete else []
    for trial in best:
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(plan.objectives.names, trial.values))
        print(f"best: trial {trial.number}, {values}: {sampled(trial, plan)}")
        print(f"  {_rerun_advice(trial, settings is not None)}")
    print(f"study: {plan.name} in {plan.storage.label()}")
    if report is not None:
        print(f"report: {report / 'report.md'} (tables and plots beside it)")
    if settings is not None:
        browse = settings.label if settings.is_server else f"mlflow ui --backend-store-uri {settings.label}"
        print(f"MLflow: {browse}  (experiment {settings.experiment})")
        compared = plan.arms.param if plan.arms else "strategy"  # what `sweeper ui` groups by
        print(f"compare the {compared} arms in the MLflow UI: sweeper ui {plan.name}")
    print(f"worker logs: {plan.cfg.launcher.folder if plan.cfg.launcher.name == 'slurm' else folder}/")  # jobs' are submitit's
    print(f"Optuna: optuna-dashboard {shlex.quote(plan.storage.label())}  (pip install optuna-dashboard)")
    if counts.finished < plan.n_trials and counts.failed - failed_before >= plan.max_failures:
        print(
            f"stopped: {counts.failed - failed_before} trials failed in this run (sweep.max_failures="
            f"{plan.max_failures}); fix the cause above, then run the same command again to resume."
        )
        return EXIT_INCOMPLETE
    if counts.finished < plan.n_trials and plan.timeout is None:
        print(f"the workers stopped before {plan.n_trials} finished trials: see their logs; run again to resume.")
        return EXIT_INCOMPLETE
    return 0


def _rerun_advice(trial: FrozenTrial, tracked: bool) -> str:
    """How to train the trial again: `sweeper rerun` of its MLflow run, which checks what was
    recorded before it builds anything. Its recorded overrides are shown as text, never as a
    command to type: a shared study's overrides may name anything."""
    if tracked:
        return f"rerun it: sweeper rerun RUN_ID, with trial {trial.number}'s MLflow run id (the report lists it)"
    overrides = printable(shlex.join(trial.user_attrs.get("overrides", [])))
    return f"its overrides, as the study recorded them (tracking was off: no run to rerun): {overrides}"


def _failure_reasons(study: optuna.Study) -> Counter[str]:
    """Why trials failed, by reason: one line each, as the workers recorded it."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return Counter(t.user_attrs.get("reason", "no reason recorded (its worker stopped or died)").splitlines()[0] for t in failed)
