"""Pruning: the best objective a sweep reaches against the epochs it trains, pruner on and off.

    .venv/bin/python scripts/bench_pruning.py        # none, median, successive_halving x 3 seeds

Each sweep is the default one (MLP on digits, 6 epochs a trial, the slices_and_shapes search,
TPE) with the same number of trials and the sampler seeded; only the pruner differs:
`pruner=none`, `pruner=median`, `pruner=successive_halving` (their configs' settings). A sweep
runs one worker loop (`sweeper.sweep.workers.run_worker`, in-process, on a SQLite study) so trials
end in trial order and a seed gives the same sweep again; sweeps run side by side, one per core
(--quick: one after another, in its own process).

Written: pruning.csv (one row per sweep), pruning_curves.csv (best-so-far after every trial)
and pruning.png (best-so-far accuracy against cumulative epochs trained).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import benchlib

PRUNERS = ("none", "median", "successive_halving")


def run_pruned_sweep(job: tuple[str, int, int, int, str]) -> list[dict]:
    """One sweep; its trials as curve rows, in trial order."""
    import optuna
    from optuna.trial import TrialState

    from sweeper.sweep.plan import plan_sweep
    from sweeper.sweep.study import open_study
    from sweeper.sweep.workers import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner, seed, trials, epochs, folder = job
    overrides = [
        f"pruner={pruner}",
        f"sampler.seed={seed}",
        f"train.seed={seed}",
        f"train.epochs={epochs}",
        f"sweep.n_trials={trials}",
        "train.threads=1",
        "train.device=cpu",
        "tracking=none",
        f"results_dir={folder}/{pruner}-{seed}",
        "sweep.name=bench",
    ]
    plan = plan_sweep(overrides)
    study = open_study(plan, create=True)
    started = time.perf_counter()
    run_worker(plan)
    seconds = time.perf_counter() - started
    rows, cumulative, best = [], 0, float("nan")
    for trial in sorted(study.trials, key=lambda t: t.number):
        trained = len(trial.intermediate_values)  # the pruning reporter reports every epoch
        cumulative += trained
        if trial.state == TrialState.COMPLETE and (math.isnan(best) or trial.value > best):  # accuracy: up
            best = trial.value
        rows.append(
            {
                "pruner": pruner,
                "seed": seed,
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "epochs": trained,
                "cumulative_epochs": cumulative,
                "best_so_far": best,
                "sweep_s": seconds,
            }
        )
    return rows


def best_at(curve: list[dict], epochs: int) -> float:
    """The best-so-far of a sweep once it had trained `epochs` epochs in all."""
    reached = [row["best_so_far"] for row in curve if row["cumulative_epochs"] <= epochs]
    return reached[-1] if reached else float("nan")


def summarise(curves: dict[tuple[str, int], list[dict]]) -> list[dict]:
    rows = []
    for (pruner, seed), curve in curves.items():
        last = curve[-1]
        unpruned = curves.get(("none", seed))
        rows.append(
            {
                "pruner": pruner,
                "seed": seed,
                "trials": len(curve),
                "pruned": sum(row["state"] == "pruned" for row in curve),
                "epochs": last["cumulative_epochs"],
                "best": last["best_so_far"],
                # NaN (no complete trial) equals nothing: then there is no epoch of the best
                "epochs_to_best": next((r["cumulative_epochs"] for r in curve if r["best_so_far"] == last["best_so_far"]), float("nan")),
                "none_best_at_same_epochs": best_at(unpruned, last["cumulative_epochs"]) if unpruned else float("nan"),
                "epochs_vs_none": last["cumulative_epochs"] / unpruned[-1]["cumulative_epochs"] if unpruned else float("nan"),
                "sweep_s": last["sweep_s"],
            }
        )
    return rows


def plot(curves: dict[tuple[str, int], list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(PRUNERS, ("tab:grey", "tab:blue", "tab:orange")))
    styles = ("-", "--", ":", "-.")
    figure, axes = plt.subplots(figsize=(7, 4.2))
    seeds = sorted({seed for _, seed in curves})
    for (pruner, seed), curve in curves.items():
        axes.step(
            [row["cumulative_epochs"] for row in curve],
            [row["best_so_far"] for row in curve],
            where="post",
            color=colours.get(pruner),
            linestyle=styles[seeds.index(seed) % len(styles)],
            label=f"{pruner}, seed {seed}",
        )
    axes.set_xlabel("epochs trained, all trials so far")
    axes.set_ylabel("best validation accuracy so far")
    axes.set_title("Best-so-far against epochs trained, pruner on and off")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=len(PRUNERS), loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=24, help="trials per sweep, the same for every pruner")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of an unpruned trial")
    args = parser.parse_args()
    if args.quick:
        args.pruners, args.seeds, args.trials, args.epochs = ["none", "median"], [0], 5, 3
    from sweeper.sweep.workers import usable_cores

    processes = 1 if args.quick else usable_cores()
    with tempfile.TemporaryDirectory() as folder:
        jobs = [(pruner, seed, args.trials, args.epochs, folder) for seed in args.seeds for pruner in args.pruners]
        runs = benchlib.map_side_by_side(run_pruned_sweep, jobs, processes)
        curves = {(job[0], job[1]): rows for job, rows in zip(jobs, runs)}
    rows = summarise(curves)
    benchlib.write_csv(args.out_dir / "pruning_curves.csv", [row for curve in curves.values() for row in curve])
    plot(curves, args.out_dir / "pruning.png")
    benchlib.publish(
        args.out_dir,
        "pruning",
        "Pruning: best objective against epochs trained",
        rows,
        notes=[
            f"{args.trials} trials a sweep, {args.epochs} epochs an unpruned trial, seeds "
            f"{', '.join(map(str, args.seeds))} (sampler and training). `epochs`: epochs trained by "
            "all the sweep's trials; `best`: its best validation accuracy (complete trials), first "
            "reached after `epochs_to_best` epochs; "
            "`none_best_at_same_epochs`: what the unpruned sweep of the same seed had reached after as "
            "many epochs; `epochs_vs_none`: this sweep's epochs / the unpruned sweep's."
        ],
        sections=[pruner_table(rows), "![best-so-far accuracy against epochs trained](pruning.png)"],
    )


def pruner_table(rows: list[dict]) -> str:
    pruners = list(dict.fromkeys(row["pruner"] for row in rows))
    table = [
        {
            "pruner": pruner,
            "sweeps": len(found),
            **{
                f"median {key}": benchlib.median(row[key] for row in found)
                for key in ("pruned", "epochs", "epochs_vs_none", "best", "epochs_to_best", "none_best_at_same_epochs")
            },
        }
        for pruner in pruners
        for found in [[row for row in rows if row["pruner"] == pruner]]
    ]
    return "Medians over the seeds:\n\n" + benchlib.markdown_table(table)


if __name__ == "__main__":
    benchlib.run(main)
