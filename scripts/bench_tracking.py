"""Recording overhead: a trial recorded to MLflow against the same trial unrecorded.

    .venv/bin/python scripts/bench_tracking.py               # embedded SQLite and a local server

A trial is recorded as a sweep records it: `sweeper.records.tracking.prepare_sweep` once per store (the
sweep's parent run), then per trial the reporter `trial_reporter` gives, a nested child run with
its params, tags, config and environment artifacts, step metrics (lr of each group, momentum,
loss) sent in batches when each epoch ends, epoch metrics, and the schedule plot at the end.
Stores: `sqlite` (tracking=local, the embedded default) and `server` (a `mlflow server` this
script starts on a free port of 127.0.0.1 over its own SQLite file, stopped at the end), both
recorded from the trial's process as a worker that is not the sweep's records (a job, a worker
joined by hand); and `handed over` (sqlite, as a sweep's local worker records): the trial writes
its records to a spool file (`sweeper.records.spool`) and the machine's recorder, in a process
of its own as in the sweep's, sends them (`sweeper.records.machine_recorder`).

Rounds interleave the variants (unrecorded, sqlite, server, unrecorded, ...). A sample is what a
worker does: `--sequence` trials back to back (reporter made + train()), then the wait until the
records are all in the store (the recorder sends from a background thread, so a trial's records
may still be going out while the next trial trains; that work counts, at the sequence's end).
Per trial = the sample / the sequence. The recorder's hooks on the trial's thread are timed too:
run start, per-step queueing, epoch flushes and the end (the wait for the run's end to be stored).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import benchlib

ROUNDS = 5
SEQUENCE = 4  # trials a worker runs back to back in one sample
TRIALS = {  # name -> overrides of the trial that is recorded
    "mlp-digits": ("model=mlp",),  # the default sweep's trial: 6 epochs of 21 batches
    "cnn-digits": ("model=cnn",),
}
HOOKS = ("on_start", "on_step", "on_epoch", "on_end")
HANDED_OVER = "sqlite, handed over"


class Store:
    """One way of running the trial: unrecorded, or recorded into one MLflow store."""

    def __init__(self, name: str, cfg, folder: Path) -> None:
        from sweeper.records import tracking

        self.name, self.cfg, self.trials = name, cfg, 0
        self.sweep = tracking.prepare_sweep(cfg, f"bench-{name}") if name != "none" else None
        self.hooks: list[dict[str, float]] = []
        self.spool = folder / f"spool-{name}" if name == HANDED_OVER else None
        self.recorder = None
        if self.spool is not None:  # the machine's recorder, in a process of its own as in a sweep
            context = multiprocessing.get_context("spawn")
            self.stop = context.Event()
            self.recorder = context.Process(target=run_recorder, args=(self.sweep, self.spool, self.stop))
            self.recorder.start()

    def reporter(self):
        from sweeper.records.spool import SpoolWriter

        if self.spool is not None:
            return SpoolWriter(self.spool, self.sweep.trial_header(self.cfg, trial_number=self.trials))
        return self.sweep.trial_reporter(self.cfg, trial_number=self.trials)

    def wait_for_records(self) -> None:
        from sweeper.records.sender import wait_for_records
        from sweeper.records.spool import spool_files

        wait_for_records()
        while self.spool is not None and spool_files(self.spool):  # sent, and so removed
            time.sleep(0.005)

    def trials_in_sequence(self, count: int) -> float:
        """Seconds a trial, over `count` trials back to back and the wait for their records."""
        from sweeper.training.trainer import train

        started = time.perf_counter()
        for _ in range(count):
            reporters = []
            if self.sweep is not None:
                self.trials += 1
                clock = benchlib.HookClock(self.reporter())
                reporters.append(clock)
            result = train(self.cfg, reporters)
            benchlib.check_finished(result, "the trial")
            if reporters:
                self.hooks.append(dict(clock.seconds))
        self.wait_for_records()
        return (time.perf_counter() - started) / count

    def close(self) -> None:
        if self.recorder is not None:
            self.stop.set()
            self.recorder.join()


def run_recorder(sweep, folder: Path, stop) -> None:
    from sweeper.records.machine_recorder import MachineRecorder

    recorder = MachineRecorder(sweep, folder).start()
    stop.wait()
    recorder.close()


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A local `mlflow server` for the block (the one the tests start); yields its URL."""
    server = benchlib.MlflowServer(folder).start(timeout=120)
    try:
        yield server.url
    finally:
        server.stop()


def plot_seconds(cfg, folder: Path, repeats: int = 3) -> float:
    """What drawing the trial's schedule plot costs (the recorder draws one at every trial's end)."""
    from sweeper.schedules.plots import plot_schedule
    from sweeper.training.trainer import prepare

    schedule = prepare(cfg).schedule
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        plot_schedule(schedule, folder / "schedule.png")
        seconds.append(time.perf_counter() - started)
    return benchlib.median(seconds)


def measure(trial_name: str, stores: dict[str, Store], repeats: int, sequence: int, folder: Path) -> list[dict]:
    samples = benchlib.interleave({name: functools.partial(store.trials_in_sequence, sequence) for name, store in stores.items()}, repeats)
    plain = samples["none"]
    plot = plot_seconds(stores["none"].cfg, folder)
    rows = []
    for name, store in stores.items():
        if name == "none":
            continue
        extra = [a - b for a, b in zip(samples[name], plain)]
        hooks = store.hooks[-repeats * sequence :]  # the timed rounds
        overhead = benchlib.median(extra)
        rows.append(
            {
                "trial": trial_name,
                "store": name,
                "rounds": repeats,
                "sequence": sequence,
                "trial_s": benchlib.median(plain),
                "recorded_s": benchlib.median(samples[name]),
                "ratio": benchlib.median(benchlib.ratios(samples[name], plain)),
                "overhead_ms": 1000 * overhead,
                "hooks_ms": 1000 * benchlib.median(sum(h.values()) for h in hooks),
                **{f"{hook.removeprefix('on_')}_ms": 1000 * benchlib.median(h.get(hook, 0.0) for h in hooks) for hook in HOOKS},
                "plot_ms": 1000 * plot,
                "trial_s_for_3pct": overhead / 0.03,
            }
        )
    return rows


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--trials", nargs="+", default=list(TRIALS), choices=list(TRIALS))
    parser.add_argument("--stores", nargs="+", default=["sqlite", "server", "spool"], choices=["sqlite", "server", "spool"])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (the default config's 6)")
    parser.add_argument("--repeats", type=int, default=ROUNDS, help="interleaved rounds (after one warm-up round)")
    parser.add_argument("--sequence", type=int, default=SEQUENCE, help="trials back to back in a sample")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.repeats, args.sequence = args.trials[:1], 1, 1, 2
    from sweeper.config import compose_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        choices = {"none": ["tracking=none"], "sqlite": ["tracking=local"], HANDED_OVER: ["tracking=local"]}
        if "server" in args.stores:
            choices["server"] = ["tracking=server", f"tracking.uri={stack.enter_context(mlflow_server(folder / 'server'))}"]
        for trial_name in args.trials:
            base = [*TRIALS[trial_name], f"train.epochs={args.epochs}", "train.device=cpu", f"results_dir={folder}"]
            stores = {
                name: Store(name, compose_config([*base, *overrides]), folder)
                for name, overrides in choices.items()
                if name == "none" or name in args.stores or (name == HANDED_OVER and "spool" in args.stores)
            }
            try:
                rows += measure(trial_name, stores, args.repeats, args.sequence, folder)
            finally:
                for store in stores.values():
                    store.close()
    benchlib.publish(
        args.out_dir,
        "tracking",
        "Recording overhead: MLflow on and off",
        rows,
        notes=[
            f"Per trial ({args.epochs} epochs, CPU; {args.sequence} trials back to back a sample, then the "
            "wait for their records): `trial_s` unrecorded and `recorded_s` recorded "
            "(medians), `ratio` = recorded / unrecorded round by round (median), `overhead_ms` = "
            "recorded - unrecorded (median). Time inside the recorder's hooks over a trial (`hooks_ms`, "
            "medians), split: `start_ms` (run created, params, tags, config and environment "
            "artifacts; queued, sent from the background), `step_ms` (every step queued), `epoch_ms` "
            "(every epoch's flush handed to the background), `end_ms` (the wait for the run's last "
            "records and its end to be stored; the plot follows in the background); `plot_ms`: drawing that schedule plot "
            "alone (`sweeper.schedules.plots.plot_schedule`). `trial_s_for_3pct`: the trial length at which "
            "`overhead_ms` is 3%. Handed over: the hooks only write lines to the spool file (the run is made, "
            "sent and ended, and the plot drawn, by the recorder's process); the sample still ends when the "
            "recorder has sent the last trial's records (its spool file removed)."
        ],
    )


if __name__ == "__main__":
    benchlib.run(main)
