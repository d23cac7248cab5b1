"""Sweep efficiency and start latency: trials of unequal lengths on W workers, sweeper's
asynchronous workers against a batch-synchronous baseline.

    .venv/bin/python scripts/bench_sweep.py                      # 2 workers, 20 trials, 3 rounds

- `sweeper`: a real sweep (plan, SQLite study with heartbeats, `sweeper worker` processes that
  loop ask -> train -> tell with no barrier), over `train.epochs=choice(1,2,4,8)` with the random
  sampler and no pruner, so a trial's length is what it drew;
- `batch-sync`: the same trials (the sweep's own, in trial order) run W at a time by a pool of W
  processes, each batch waiting for its slowest trial before the next starts: how the Hydra
  Optuna sweeper runs trials with a parallel launcher (ask W, launch, wait, tell W).
Rounds interleave the two. Useful work is the trials' training: time inside train() less the
sweep's reporters; ideal = its sum / W; efficiency = ideal / wall time (workers launched -> last
worker exited) and ideal / busy span (first trial asked -> last trial told).

Start latency, per sweep trial: from the trial being asked (its datetime_start in the study) to
its first training step, split into ask -> train() called (the trial's config composed, its
attributes stored) and train() -> first step (seeds, data, model, optimizer built). The sweep
runs its trials through `TimedTrainer` (sweep.trainer=bench_sweep.TimedTrainer), which calls the
real trainer and notes when its first step began and the time its reporters took.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import benchlib

from sweeper.config import compose_config
from sweeper.sweep.workers import plan_slots, usable_cores
from sweeper.training import trainer

ROUNDS = 3
LENGTHS = "choice(1,2,4,8)"  # epochs a trial draws
FIRST_STEPS = "BENCH_SWEEP_FIRST_STEPS"  # where TimedTrainer appends its notes (one JSON line a trial)
# a trial: start and end (time.time()), seconds inside train(), of which in the sweep's reporters
Timing = tuple[float, float, float, float]


class TimedTrainer:
    """sweeper.training.trainer, noting in the FIRST_STEPS file when each trial's first step began and how
    long its reporters (pruning report, progress) took inside train()."""

    available_metrics = staticmethod(trainer.available_metrics)

    @staticmethod
    def train(cfg, reporters=()):
        called = time.time()
        clocks = [benchlib.HookClock(reporter) for reporter in reporters]
        result = trainer.train(cfg, clocks)
        # on_end runs after the trainer has stopped its clock (result.seconds)
        reporting = sum(t for clock in clocks for hook, t in clock.seconds.items() if hook != "on_end")
        note = {"pid": os.getpid(), "called": called, "first_step": called + result.first_step_seconds, "reporting": reporting}
        with open(os.environ[FIRST_STEPS], "a") as out:
            out.write(json.dumps(note) + "\n")
        return result


# --- the two ways of running the trials -------------------------------------------------------


def sweep_round(base: list[str], args, folder: Path) -> tuple[tuple, list[dict], list[list[str]]]:
    """A real sweep: ((launched, wall, timings, each trial's worker idle time after it), latency
    rows, the trials' overrides in trial order)."""
    notes = folder / "first_steps.jsonl"
    os.environ[FIRST_STEPS] = str(notes)
    overrides = [
        *base,
        f"train.epochs={LENGTHS}",
        "search=slices",
        "search.lr.strategies=null",
        "search.lr.high=null",
        "search.lr.low_ratio=null",
        "sampler=random",
        "pruner=none",
        f"sweep.n_trials={args.trials}",
        f"sweep.workers={args.workers}",
        f"sweep.cpu_threads={args.threads}",
        "sweep.trainer=bench_sweep.TimedTrainer",
        f"results_dir={folder}",
        "sweep.name=bench",
    ]
    run = benchlib.run_sweep(overrides, folder)
    written = [json.loads(line) for line in notes.read_text().splitlines()]
    timings, latencies, lanes = [], [], {}
    for trial, seconds in sorted(zip(run.trials, run.train_seconds()), key=lambda pair: pair[0].datetime_start):
        asked, told = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
        worker = trial.user_attrs["worker"]
        pid = int(worker.rsplit(":", 1)[1])
        note = next(n for n in written if n["pid"] == pid and asked <= n["called"] <= told)
        timings.append((asked, told, seconds, note["reporting"]))
        latencies.append(
            {
                "trial": trial.number,
                "first_in_worker": worker not in lanes,  # the worker process's first trial pays its imports
                "ask_to_train_ms": 1000 * (note["called"] - asked),
                "train_to_first_step_ms": 1000 * (note["first_step"] - note["called"]),
                "ask_to_first_step_ms": 1000 * (note["first_step"] - asked),
            }
        )
        lanes.setdefault(worker, []).append((asked, told))
    idle = [b[0] - a[1] for lane in lanes.values() for a, b in zip(lane, lane[1:])]
    return (run.launched, run.seconds, timings, idle), latencies, [t.user_attrs["overrides"] for t in run.trials]


def batch_sync_round(trials: list[list[str]], workers: int) -> tuple[float, float, list[Timing], list[float]]:
    """The trials W at a time, each batch waiting for its slowest: (launched, wall, timings, each
    trial's wait from its end to the next batch's start)."""
    context = multiprocessing.get_context("spawn")  # fresh processes, as launched workers are
    launched, started = time.time(), time.perf_counter()
    batches = []
    with context.Pool(workers) as pool:
        for first in range(0, len(trials), workers):
            batches.append(pool.map(_run_trial, trials[first : first + workers], chunksize=1))  # the barrier
    wall = time.perf_counter() - started
    idle = [min(t[0] for t in after) - done[1] for batch, after in zip(batches, batches[1:]) for done in batch]
    return launched, wall, [t for batch in batches for t in batch], idle


def _run_trial(overrides: list[str]) -> Timing:
    started = time.time()
    result = benchlib.check_finished(trainer.train(compose_config(overrides)), f"trial {overrides}")
    return started, time.time(), result.seconds, 0.0


# --- measuring --------------------------------------------------------------------------------


def efficiency_row(
    variant: str, round_index: int, workers: int, launched: float, wall: float, timings: list[Timing], idle: list[float]
) -> dict:
    useful = [seconds - reporting for _, _, seconds, reporting in timings]  # training alone
    first, last = min(t[0] for t in timings), max(t[1] for t in timings)
    ideal = sum(useful) / workers
    return {
        "variant": variant,
        "round": round_index,
        "workers": workers,
        "trials": len(timings),
        "train_s": sum(useful),
        "ideal_s": ideal,
        "span_s": last - first,
        "wall_s": wall,
        "efficiency_span": ideal / (last - first),
        "efficiency_wall": ideal / wall,
        "startup_s": first - launched,
        "shutdown_s": launched + wall - last,
        "outside_train_ms": 1000 * benchlib.median(end - start - seconds for start, end, seconds, _ in timings),
        "reporting_ms": 1000 * benchlib.median(reporting for *_, reporting in timings),
        "idle_ms": 1000 * benchlib.median(idle) if idle else 0.0,
    }


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20, help="trials per sweep")
    parser.add_argument("--epoch-steps", type=int, default=400, help="training batches per epoch (sets the trial lengths)")
    parser.add_argument("--repeats", type=int, default=ROUNDS, help="interleaved rounds of both variants")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epoch_steps, args.repeats = 4, 10, 1
    # the threads a CPU worker of the sweep gets (sweep.cpu_threads=auto), for the baseline's too
    args.threads = plan_slots({"workers": args.workers, "workers_per_device": 1, "cpu_threads": "auto"}, [], usable_cores())[0].threads
    # sweep workers import this module (the trainer wrapper) and benchlib from scripts/
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    rows, latencies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = benchlib.MODEL_SIZES["mlp-tiny"]
        base = [
            *size.overrides,
            *benchlib.tensor_data(folder, size.shape, args.epoch_steps * 64, 512),
            "train.batch_size=64",
            "train.device=cpu",
            f"train.threads={args.threads}",
            "tracking=none",
        ]
        for round_index in range(1, args.repeats + 1):
            measured, trial_latencies, trials = sweep_round(base, args, folder / f"round-{round_index}")
            rows.append(efficiency_row("sweeper", round_index, args.workers, *measured))
            latencies += [{"round": round_index, **row} for row in trial_latencies]
            print(rows[-1], flush=True)
            rows.append(efficiency_row("batch-sync", round_index, args.workers, *batch_sync_round(trials, args.workers)))
            print(rows[-1], flush=True)
    benchlib.write_csv(args.out_dir / "sweep_latency.csv", latencies)
    benchlib.publish(
        args.out_dir,
        "sweep",
        "Sweep efficiency and start latency",
        rows,
        notes=[
            f"{args.trials} trials of `train.epochs={LENGTHS}` (random sampler, no pruner), "
            f"{args.epoch_steps} batches of 64 per epoch, mlp-tiny on generated data, CPU, "
            f"{args.workers} workers x {args.threads} thread(s), no MLflow. Seconds; `ideal_s` = "
            "`train_s` / workers, `train_s` being the trials' training (time inside train() less "
            "the sweep's reporters); `startup_s`: workers launched -> first trial asked; "
            "`shutdown_s`: last trial told -> last worker exited. Per trial (medians): "
            "`outside_train_ms`, its time from start to end outside train() (sweeper: sampling, "
            "config composed, attributes stored, tell; batch-sync: config composed); "
            "`reporting_ms`, its time in the sweep's reporters inside train() (every epoch: the "
            "objective reported (and should_prune, unless pruner=none), the progress attribute: storage round trips); "
            "`idle_ms`, the worker's wait after it before its next trial (sweeper: claim lock, "
            "count, ask; batch-sync: the barrier)."
        ],
        sections=[summary(rows), latency_table(latencies)],
    )


def summary(rows: list[dict]) -> str:
    by = {v: [r for r in rows if r["variant"] == v] for v in ("sweeper", "batch-sync")}
    speedups = benchlib.ratios([r["wall_s"] for r in by["batch-sync"]], [r["wall_s"] for r in by["sweeper"]])
    table = [
        {
            "variant": variant,
            "efficiency_wall": benchlib.median(r["efficiency_wall"] for r in found),
            "efficiency_span": benchlib.median(r["efficiency_span"] for r in found),
            "wall_s": benchlib.median(r["wall_s"] for r in found),
        }
        for variant, found in by.items()
    ]
    return (
        "Medians over the rounds; batch-sync wall / sweeper wall, round by round: "
        + ", ".join(f"{s:.3g}" for s in speedups)
        + f" (median {benchlib.median(speedups):.3g}).\n\n"
        + benchlib.markdown_table(table)
    )


def latency_table(latencies: list[dict]) -> str:
    keys = ("ask_to_train_ms", "train_to_first_step_ms", "ask_to_first_step_ms")
    groups = {
        "every trial": latencies,
        "a worker's first": [r for r in latencies if r["first_in_worker"]],
        "later trials": [r for r in latencies if not r["first_in_worker"]],
    }
    table = [
        {
            "trials": name,
            "count": len(found),
            **{f"{key.removesuffix('_ms')} p50": benchlib.median(r[key] for r in found) for key in keys},
            **{f"{key.removesuffix('_ms')} p95": benchlib.percentile([r[key] for r in found], 95) for key in keys},
        }
        for name, found in groups.items()
        if found
    ]
    return (
        "Start latency (ms), from the trial asked to its first training step, over every round "
        "(each trial in sweep_latency.csv):\n\n" + benchlib.markdown_table(table)
    )


if __name__ == "__main__":
    benchlib.run(main)
