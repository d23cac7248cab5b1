"""Scaling: trials per hour of a real sweep with 1, 2 and 4 workers.

    .venv/bin/python scripts/bench_scaling.py                               # CPU workers
    .venv/bin/python scripts/bench_scaling.py --device cuda --no-tracking --model cnn --workers 1 2 4 8

Each measurement is a sweep run as `sweeper sweep` runs it (SQLite study, `sweeper worker`
processes) over the default search (slice strategies and shapes, TPE), no pruner, every trial
the same length (`--epochs` of `--epoch-steps` batches on generated data). On the CPU, W workers
are `sweep.workers=W` (each with cores / W torch threads); with `--device cuda` they are W
workers on each GPU (`sweep.workers_per_device=W`). Rounds interleave the worker counts.
Trials per hour = finished trials / wall time (workers launched -> last exited), and over the
busy span (first trial asked -> last told), which leaves out the workers' start and stop.

With `--no-tracking` (no MLflow) it needs only hydra-core, omegaconf, optuna, sqlalchemy, torch,
numpy, pandas and this repository.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import benchlib

ROUNDS = 2


def measure(workers: int, base: list[str], args, folder: Path) -> dict:
    from sweeper.sweep.counts import count_trials

    per_device = f"sweep.workers_per_device={workers}" if args.device.startswith("cuda") else f"sweep.workers={workers}"
    run = benchlib.run_sweep([*base, per_device, f"results_dir={folder}"], folder)
    span = run.span()
    return {
        "workers": workers,
        "device": args.device,
        "trials": len(run.trials),
        "failed": count_trials(run.study).failed,
        "trial_s": benchlib.median(run.train_seconds()),
        "wall_s": run.seconds,
        "span_s": span,
        "trials_per_hour": 3600 * len(run.trials) / run.seconds,
        "trials_per_hour_span": 3600 * len(run.trials) / span,
    }


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (per GPU with --device cuda)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model", default="mlp-tiny", choices=list(benchlib.MODEL_SIZES))
    parser.add_argument("--trials", type=int, default=12, help="finished trials per sweep")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=100, help="training batches of 64 per epoch")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow records (and no mlflow needed)")
    parser.add_argument("--repeats", type=int, default=ROUNDS, help="interleaved rounds over the worker counts")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials, args.epochs, args.epoch_steps, args.repeats = [1, 2], 2, 1, 10, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = benchlib.MODEL_SIZES[args.model]
        base = [
            *size.overrides,
            *benchlib.tensor_data(folder, size.shape, args.epoch_steps * 64, 1024),
            f"train.epochs={args.epochs}",
            "train.batch_size=64",
            f"train.device={args.device}",
            "pruner=none",
            f"sweep.n_trials={args.trials}",
            "tracking=none" if args.no_tracking else "tracking=local",
        ]
        for round_index in range(1, args.repeats + 1):
            for workers in args.workers:
                rows.append({"round": round_index, **measure(workers, [*base, f"sweep.name=w{workers}-r{round_index}"], args, folder)})
                print(rows[-1], flush=True)
    benchlib.publish(
        args.out_dir,
        "scaling",
        "Scaling: trials per hour against workers",
        rows,
        device=args.device,
        notes=[
            f"{args.trials} trials a sweep, each {args.epochs} epochs of {args.epoch_steps} batches of 64 "
            f"({args.model}, generated data), default search with TPE, no pruner, "
            f"{'no MLflow' if args.no_tracking else 'MLflow on (embedded SQLite)'}. `trial_s`: median "
            "time inside train(); `trials_per_hour` over the wall time, `_span` over the busy span."
        ],
        sections=[speedups(rows)],
    )


def speedups(rows: list[dict]) -> str:
    counts = list(dict.fromkeys(row["workers"] for row in rows))
    single = [row for row in rows if row["workers"] == counts[0]]
    table = []
    for workers in counts:
        found = [row for row in rows if row["workers"] == workers]
        table.append(
            {
                "workers": workers,
                "trials_per_hour": benchlib.median(row["trials_per_hour"] for row in found),
                "trials_per_hour_span": benchlib.median(row["trials_per_hour_span"] for row in found),
                f"speedup vs {counts[0]}": benchlib.median(
                    benchlib.ratios([r["trials_per_hour"] for r in found], [r["trials_per_hour"] for r in single])
                ),
                "median trial_s": benchlib.median(row["trial_s"] for row in found),
            }
        )
    return "Medians over the rounds (speedup taken round by round):\n\n" + benchlib.markdown_table(table)


if __name__ == "__main__":
    benchlib.run(main)
