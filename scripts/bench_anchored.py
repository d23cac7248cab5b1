"""Anchored on lr_find: trials to come within 0.5 points of the best objective known, against the
fixed default range.

    .venv/bin/python scripts/bench_anchored.py                 # digits MLP, seeds 0-9, 12 trials a sweep
    .venv/bin/python scripts/bench_anchored.py --name anchored_cnn model=cnn
    .venv/bin/python scripts/bench_anchored.py --name anchored_regression data=synthetic_regression task=regression train.objective=r2

Two arms, the same sweep otherwise (search=slices: the strategy, the head lr and geometric's
low_ratio; the config's shape; TPE as configured, its seed the sweep seed; train.seed fixed, so
the task and its best are the same for every sweep): `fixed` samples the head lr from the default
`tag(log, interval(3e-4, 3e-2))`, `anchored` from each strategy's range set by lr_find
(`search.lr.high=auto`). A sweep is one worker loop (`run_worker`, in-process, SQLite), so a seed
gives the same sweep again; sweeps run side by side, one per core (`--processes`; --quick runs them one
after another in its own process).

lr_find depends on the model, data and train.seed, not on the sweep's seed: it runs once (in its
own process, as a sweep runs it) and every anchored sweep is charged its seconds, as trials
(`lr_find_trials`: its seconds / the median seconds of a trial).

"Best known": the best objective (validation accuracy, or r2 for regression) any trial of any sweep of this run reached. A sweep's
`trials_to_target` is the first trial (1-based) whose best-so-far is within `--margin` of it;
one that never gets there counts as `trials + 1` (marked in `reached`).

`--merge A B` runs nothing: it puts the sweeps of earlier runs of the same task (other sweep
seeds, the same settings) in one table under `--name`, the best known taken over all of their
trials; each anchored sweep keeps the lr_find charge its own run measured.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path

import benchlib

ARMS = ("fixed", "anchored")


def base_overrides(args, folder: str) -> list[str]:
    return [
        "search=slices",
        f"train.epochs={args.epochs}",
        "train.seed=0",
        "train.threads=1",
        "train.device=cpu",
        "tracking=none",
        f"sweep.n_trials={args.trials}",
        f"results_dir={folder}",
        *args.overrides,
    ]


def find_anchor(overrides: list[str], folder: str) -> dict:
    """lr_find's record, as `sweeper sweep` makes it (its own process, every strategy)."""
    from sweeper.sweep.lr_anchor import anchor_plan
    from sweeper.sweep.plan import plan_sweep

    plan = plan_sweep([*overrides, "search.lr.high=auto", "sweep.name=anchor"], validate=False)
    _, record = anchor_plan(plan, None, Path(folder))
    return record


def run_arm(job: tuple[str, int, list[str], dict, str]) -> list[dict]:
    """One sweep; its trials in order, with their objective and seconds."""
    import optuna
    from optuna.trial import TrialState

    from sweeper.sweep.lr_anchor import ANCHOR_ATTR, recorded_plan
    from sweeper.sweep.plan import plan_sweep
    from sweeper.sweep.study import open_study
    from sweeper.sweep.workers import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arm, seed, overrides, record, folder = job
    auto = ["search.lr.high=auto"] if arm == "anchored" else []
    plan = plan_sweep([*overrides, *auto, f"sampler.seed={seed}", f"results_dir={folder}/{arm}-{seed}", "sweep.name=bench"])
    if arm == "anchored":
        study = optuna.create_study(study_name="bench", storage=plan.storage.open(), directions=["maximize"])
        study.set_user_attr(ANCHOR_ATTR, record)  # as `sweeper sweep` records it: workers read it
        open_study(recorded_plan(plan, study), create=True)
    else:
        open_study(plan, create=True)
    run_worker(plan)
    study = optuna.load_study(study_name="bench", storage=plan.storage.open())
    rows = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        value = trial.value if trial.state == TrialState.COMPLETE else 0.0  # a pruned, failed or diverged trial found nothing
        params = trial.params
        rows.append(
            {
                "arm": arm,
                "seed": seed,
                "trial": trial.number + 1,
                "strategy": params.get("strategy", ""),
                "lr_high": _value(trial.user_attrs.get("overrides", []), "lr.high"),
                "objective": value,
                "seconds": trial.duration.total_seconds() if trial.duration else math.nan,
            }
        )
    return rows


def _value(overrides: list[str], key: str) -> float:
    return float(next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), "nan"))


def summarise(trials: list[dict], best_known: float, margin: float, n_trials: int, lr_find_trials: dict[int, float]) -> list[dict]:
    """Each sweep's trials to the target; `lr_find_trials`: the charge of each seed's anchored sweep."""
    rows = []
    for arm in ARMS:
        for seed in sorted({t["seed"] for t in trials}):
            own = [t for t in trials if t["arm"] == arm and t["seed"] == seed]
            best_so_far, reached_at = 0.0, None
            for t in own:
                best_so_far = max(best_so_far, t["objective"])
                if reached_at is None and best_so_far >= best_known - margin:
                    reached_at = t["trial"]
            cost = (reached_at if reached_at else n_trials + 1) + (lr_find_trials[seed] if arm == "anchored" else 0.0)
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "best": best_so_far,
                    "reached": reached_at is not None,
                    "trials_to_target": reached_at if reached_at else n_trials + 1,
                    "cost_in_trials": cost,
                }
            )
    return rows


def arm_table(rows: list[dict]) -> str:
    table = []
    for arm in ARMS:
        found = [row for row in rows if row["arm"] == arm]
        steps = [row["trials_to_target"] for row in found]
        costs = [row["cost_in_trials"] for row in found]
        table.append(
            {
                "arm": arm,
                "sweeps": len(found),
                "reached": sum(row["reached"] for row in found),
                "median trials_to_target": benchlib.median(steps),
                "q25": benchlib.percentile(steps, 25),
                "q75": benchlib.percentile(steps, 75),
                "min": min(steps),
                "max": max(steps),
                "median cost_in_trials (lr_find included)": benchlib.median(costs),
                "median best": benchlib.median(row["best"] for row in found),
            }
        )
    return "Over the sweep seeds:\n\n" + benchlib.markdown_table(table)


def read_run(out_dir: Path, name: str) -> tuple[list[dict], dict[int, float]]:
    """An earlier run's trials, and the lr_find charge of each of its anchored sweeps."""
    with open(out_dir / f"{name}_trials.csv") as rows:
        trials = [
            {**row, "seed": int(row["seed"]), "trial": int(row["trial"]), "lr_high": float(row["lr_high"]),
             "objective": float(row["objective"]), "seconds": float(row["seconds"])}
            for row in csv.DictReader(rows)
        ]  # fmt: skip
    with open(out_dir / f"{name}.csv") as rows:
        charges = {
            int(row["seed"]): float(row["cost_in_trials"]) - float(row["trials_to_target"])
            for row in csv.DictReader(rows)
            if row["arm"] == "anchored"
        }
    return trials, charges


def merge(args) -> None:
    trials, charges, runs = [], {}, []
    for name in args.merge:
        own, own_charges = read_run(args.out_dir, name)
        if set(own_charges) & set(charges):
            raise SystemExit(f"--merge: {name} repeats sweep seeds {sorted(set(own_charges) & set(charges))}")
        trials += own
        charges |= own_charges
        runs.append(
            f"{name} (seeds {', '.join(map(str, sorted(own_charges)))}; lr_find {benchlib.median(own_charges.values()):.1f} trials)"
        )
    write_results(args, trials, charges, [f"Merged, nothing run: {'; '.join(runs)}. Each run's machine and load are in its own file."])


def write_results(args, trials: list[dict], charges: dict[int, float], notes: list[str], more_notes: tuple[str, ...] = ()) -> None:
    """The trials, each sweep's count against the best known, and the table over the seeds."""
    best_known = max(t["objective"] for t in trials)
    rows = summarise(trials, best_known, args.margin, args.trials, charges)
    benchlib.write_csv(args.out_dir / f"{args.name}_trials.csv", trials)
    benchlib.publish(
        args.out_dir,
        args.name,
        "Anchored on lr_find: trials to reach the best, against the fixed range",
        rows,
        notes=[
            *notes,
            f"Best known objective (the best of every trial here): {best_known:.4f}; target: within {args.margin} of it.",
            *more_notes,
        ],
        sections=[arm_table(rows)],
    )


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--trials", type=int, default=12, help="trials per sweep, the same for both arms")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--name", default="anchored", help="results/bench/<name>.md, .csv and <name>_trials.csv")
    parser.add_argument("--processes", type=int, default=0, help="sweeps side by side (0: one per core; --quick: one after another, here)")
    parser.add_argument("--margin", type=float, default=0.005, help="within this of the best known (0.005: half a point)")
    parser.add_argument("--merge", nargs="+", default=None, help="run nothing: these earlier runs (their names) in one table")
    parser.add_argument("overrides", nargs="*", help="more overrides for every sweep (model=..., data=...)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs = [0], 4, 1
        args.overrides = [*args.overrides, "search.lr.anchor.num_it=30"]
    if args.merge:
        merge(args)
        return
    from sweeper.sweep.workers import usable_cores

    processes = args.processes or (1 if args.quick else usable_cores())
    with tempfile.TemporaryDirectory() as folder:
        overrides = base_overrides(args, folder)
        started = time.perf_counter()
        record = find_anchor(overrides, folder)
        lr_find_seconds = time.perf_counter() - started
        jobs = [(arm, seed, overrides, record, folder) for seed in args.seeds for arm in ARMS]
        trials = [row for rows in benchlib.map_side_by_side(run_arm, jobs, processes) for row in rows]
    trial_seconds = benchlib.median(t["seconds"] for t in trials if not math.isnan(t["seconds"]))
    ranges = "; ".join(
        f"{s}: [{f['range'][0]:.3g}, {f['range'][1]:.3g})" if f["range"] else f"{s}: fallback ({f['reason']})"
        for s, f in record["strategies"].items()
    )
    write_results(
        args,
        trials,
        dict.fromkeys(args.seeds, record["seconds"] / trial_seconds),
        [
            f"{args.trials} trials a sweep, {args.epochs} epochs a trial, sweep seeds {', '.join(map(str, args.seeds))}; "
            f"overrides: `{' '.join(overrides[:1] + overrides[2:5] + list(args.overrides))}`."
        ],
        (
            f"lr_find: {record['seconds']:.1f} s for every strategy ({lr_find_seconds:.1f} s with the plan), a median trial "
            f"{trial_seconds:.1f} s: lr_find costs {record['seconds'] / trial_seconds:.1f} trials, added to every anchored "
            f"sweep's `cost_in_trials`. Ranges: {ranges}.",
        ),
    )


if __name__ == "__main__":
    benchlib.run(main)
