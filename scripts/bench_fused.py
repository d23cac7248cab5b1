"""Fused trials against one trial per worker: trials per hour and busy fraction, same trials.

    .venv/bin/python scripts/bench_fused.py                 # N = 1, 4, 16, 64; MLP and CNN on digits
    .venv/bin/python scripts/bench_fused.py --quick         # N = 1, 4; one round (smoke test)
    .venv/bin/python scripts/bench_fused.py --largest 64 16 # the CNN up to N = 16 only

For each model and each N, N trials of the default search (each its own slice and shape, the
same model, data, batch size, epochs and seed) are trained two ways in this one process:
- `alone`: one after another with `sweeper.training.trainer.train`, as one worker runs them;
- `fused`: at once with `sweeper.training.fused.train_many`, as a worker with sweep.fuse=N runs them.
Both include preparing the trials (data, model, plans) and every epoch's evaluation. Rounds
interleave the two (alone, fused, alone, fused, ...) and each round's ratio is taken side by side;
the table reports the median of those ratios. Busy fraction: the process's CPU time over its
wall time and torch's threads (on a machine other work loads, what it got of its cores).

A second table measures what a stopped member costs: a fused step of N members against one of
N/2 (what masking half the members, computing them on, costs against dropping them from the stack).
"""

from __future__ import annotations

import time

import benchlib
import torch

from sweeper.config import compose_config

SHAPES = ("fastai_one_cycle", "torch_one_cycle", "triangular", "warmup_cosine", "warmup_stable_decay", "constant")
MODELS = {"mlp": ("model=mlp",), "cnn": ("model=cnn",)}


def trial_configs(model: tuple[str, ...], n: int, folder: str) -> list:
    """N configs of the default search's kind: lr.high spread over its range, shapes in turn."""
    base = ["tracking=none", f"results_dir={folder}", "train.epochs=2", "train.batch_size=64", "train.device=cpu", "lr=fastai", *model]
    return [
        compose_config([*base, f"lr.high={3e-4 * 100 ** (i / max(1, n - 1)):.3g}", f"shape={SHAPES[i % len(SHAPES)]}"]) for i in range(n)
    ]


def timed(work) -> tuple[float, float]:
    """(wall seconds, busy fraction) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu / (wall * torch.get_num_threads())


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument(
        "--largest",
        type=int,
        nargs=2,
        default=(64, 64),
        metavar=("MLP", "CNN"),
        help="the largest N for each model (the CNN's alone runs grow with N)",
    )
    args = parser.parse_args()
    from sweeper.training.fused import prepare_many, run_many, train_many
    from sweeper.training.trainer import train

    torch.set_num_threads(1)  # one worker's share of the 2-core machine: one core
    sizes = (1, 4) if args.quick else (1, 4, 16, 64)
    rounds = 1 if args.quick else 2
    rows, cost_rows = [], []
    folder = str(args.out_dir / "fused-cache")
    for name, model in MODELS.items():
        for n in [n for n in sizes if n <= dict(zip(MODELS, args.largest))[name]]:
            cfgs = trial_configs(model, n, folder)
            train_many(cfgs[:2]), train(cfgs[0])  # warm: imports, the data file
            alone, fused = [], []
            for round_index in range(rounds):
                alone.append(timed(lambda cfgs=cfgs: [benchlib.check_finished(train(c), "alone") for c in cfgs]))
                fused.append(timed(lambda cfgs=cfgs: [benchlib.check_finished(r, "fused") for r in train_many(cfgs)]))
                print(f"{name} N={n} round {round_index + 1}: alone {alone[-1][0]:.2f}s, fused {fused[-1][0]:.2f}s", flush=True)
            ratio = benchlib.median(benchlib.ratios([a for a, _ in alone], [f for f, _ in fused]))
            rows.append({
                "model": name, "N": n, "rounds": rounds,
                "alone_trials_per_hour": round(3600 * n / benchlib.median(a for a, _ in alone)),
                "fused_trials_per_hour": round(3600 * n / benchlib.median(f for f, _ in fused)),
                "speedup": round(ratio, 2),
                "alone_busy": round(benchlib.median(b for _, b in alone), 2),
                "fused_busy": round(benchlib.median(b for _, b in fused), 2),
            })  # fmt: skip
        # masking against dropping: a fused run's step time with N members and with N/2
        n = sizes[-1] if args.quick else 16
        per_step = {}
        for members in (n, n // 2):
            run = prepare_many(trial_configs(model, members, folder))
            steps = run.lead.schedule.total
            per_step[members] = timed(lambda run=run: run_many(run))[0] / steps
        cost_rows.append({
            "model": name, "N": n,
            "step_ms_all_N": round(1000 * per_step[n], 2),
            "step_ms_half_dropped": round(1000 * per_step[n // 2], 2),
            "masking_half_costs": f"{per_step[n] / per_step[n // 2]:.2f}x dropping",
        })  # fmt: skip
    notes = [
        "The machine is shared with other agents' work (see the load average): absolute figures move with it; "
        "the speedups are medians of ratios of interleaved rounds (alone, then fused, in each round).",
        "Each trial: digits, 2 epochs of batch 64 (42 steps), one torch thread; `alone` runs the trials one after "
        "another in one process, as one worker; `fused` trains them as one stacked model (sweep.fuse=N).",
    ]
    cost = (
        "## A stopped member: masked or dropped\n\n"
        + benchlib.markdown_table(cost_rows)
        + (
            "\n\nA fused run drops a stopped member's rows from the stack: a step then costs what a step of the "
            "smaller stack costs; masking (computing it on, its update thrown away) would keep the full cost."
        )
    )
    benchlib.publish(args.out_dir, "fused", "Fused trials against one trial per worker", rows, notes=notes, sections=[cost])


if __name__ == "__main__":
    benchlib.run(main)
