"""All else equal: does the slice strategy (or the cycle shape) matter for this model?

A sweep's table by strategy compares trials that differ in everything: shape, lr, seed. An
ablation holds everything but one factor: it takes the sweep's best trial and trains it again
with each slice strategy (same shape and shape settings, same head lr; the low lr as sampled
when the best trial is geometric, else at the best geometric trial's low/high ratio), or with
each cycle shape (same slice; each shape with the settings of its own best trial), on the same
seeds. Runs of one seed differ in that factor alone, so they are compared in pairs (the paired
t-test over seeds): the seed's luck cancels out.

Writes ablation_<factor>.csv (one row per run), ablation_<factor>_summary.csv,
ablation_<factor>.md and ablation_<factor>.png (the leader minus each other value, seed by seed)
into the sweep's folder; every run is recorded in MLflow under the sweep's
run, tagged `sweeper.kind=ablation` and `ablation=<factor>`.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from sweeper.analysis.confirm import PlotSpec, compose_trial, summarize_seeds, verdict, write_seed_tables
from sweeper.analysis.repeats import FACTORS, seed_count
from sweeper.analysis.report import objective_columns, trials_table
from sweeper.analysis.seeded_runs import SeededRun, TrainFn, run_seeds
from sweeper.boundary.checked_study import checked_study
from sweeper.boundary.recorded_config import Allowed
from sweeper.config import ConfigError
from sweeper.records.run_record import ABLATION_KIND
from sweeper.records.tracking import SweepTracking

__all__ = ["Ablation", "ablate", "variants"]

FALLBACK_LOW_RATIO = 0.1  # geometric low/high when no geometric trial says better (fastai's slice(hi) gap)


@dataclass
class Ablation:
    factor: str  # slice or shape
    runs: pd.DataFrame  # variant, seed, status, objective, MLflow run id
    summary: pd.DataFrame  # per variant: mean, std, ..., paired p-value vs the leader
    verdict: str
    folder: Path
    files: list[Path]  # what was written: the tables, the Markdown, the plot


def _without(overrides: Sequence[str], *keys: str) -> list[str]:
    """`overrides` less those that set any of `keys` (a key ending in "." is a prefix)."""

    def sets(override: str, key: str) -> bool:
        name = override.split("=", 1)[0].lstrip("+~")
        return name.startswith(key) if key.endswith(".") else name == key

    return [o for o in overrides if not any(sets(o, key) for key in keys)]


def _value(overrides: Sequence[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    return found[-1] if found else None


def variants(trials: pd.DataFrame, best: pd.Series, factor: str) -> dict[str, list[str]]:
    """The best trial's overrides changed in `factor` alone, one entry per value the sweep drew."""
    base = shlex.split(best["overrides"])
    complete = trials[trials["state"] == "complete"]
    column = FACTORS[factor]
    found = {}
    for value in sorted(trials[column].dropna().unique()):
        if factor == "slice":
            overrides = [*_without(base, "lr", "lr.low"), f"lr={value}"]
            if value == "geometric":
                overrides.append(f"lr.low={_geometric_low(base, complete)!r}")
        else:
            own = complete[complete["shape"] == value]
            settings = [o for o in shlex.split(own.iloc[0]["overrides"]) if o.startswith("shape.")] if len(own) else []
            overrides = [*_without(base, "shape", "shape."), f"shape={value}", *settings]
        found[str(value)] = overrides
    return found


def _geometric_low(base: Sequence[str], complete: pd.DataFrame) -> float:
    high = _learning_rate(base, "lr.high") or float("nan")
    if _value(base, "lr") == "geometric" and _learning_rate(base, "lr.low"):
        return _learning_rate(base, "lr.low")  # as sampled
    geometric = complete[complete["strategy"] == "geometric"]
    # the best geometric trial's ratio (the table is sorted best first), where it recorded both
    overrides = shlex.split(geometric.iloc[0]["overrides"]) if len(geometric) else []
    low, its_high = _learning_rate(overrides, "lr.low"), _learning_rate(overrides, "lr.high")
    return high * (low / its_high if low and its_high else FALLBACK_LOW_RATIO)


def _learning_rate(overrides: Sequence[str], key: str) -> float | None:
    """A learning rate a trial recorded, or None where it holds no positive number (a record
    is read, never trusted: sweeper's own trials record every lr they ran)."""
    try:
        value = float(_value(overrides, key) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def ablate(
    study: optuna.Study,
    train: TrainFn,
    *,
    factor: str,
    seeds: int,
    folder: str | Path,
    tracking: SweepTracking | None = None,
    config_dirs: Sequence[str] = (),
    allowed: Allowed = Allowed(),
    say: Callable[[str], None] | None = None,
) -> Ablation:
    """Train the sweep's best trial with every value of `factor` on the same `seeds` fresh seeds."""
    if factor not in FACTORS:
        raise ConfigError(f"--ablate: {factor!r} is not a factor; choose {' or '.join(FACTORS)}.")
    seed_count(seeds)
    study = checked_study(study)  # a study given by any caller is read through the boundary
    (objective, direction), *_ = objective_columns(study)
    trials = trials_table(study)
    complete = trials[trials["state"] == "complete"] if len(trials) else trials
    if not len(complete):
        raise ConfigError(f"sweep {study.study_name!r} has no complete trial yet; let it run, then ablate.")
    trials = trials.sort_values(objective, ascending=direction != "maximize", na_position="last")
    best = trials[trials["state"] == "complete"].iloc[0]
    found = variants(trials, best, factor)
    if len(found) < 2:
        raise ConfigError(
            f"--ablate {factor}: sweep {study.study_name!r} drew one {FACTORS[factor]} only ({', '.join(found)}); "
            f"there is nothing to compare it with."
        )
    first_seed = int(compose_trial(shlex.split(best["overrides"]), config_dirs, allowed).train.seed) + 1
    column = FACTORS[factor]
    planned = [
        SeededRun(
            overrides,
            seed,
            ABLATION_KIND,
            f"ablation {factor} · {variant} · seed {seed}",
            f"({variant}, seed {seed})",
            tags={"ablation": factor, "variant": variant, "ablates_trial": str(int(best["trial"]))},
            describes={column: variant},
            carries={"sweep_value": best[objective] if best[column] == variant else math.nan},
        )
        for seed in range(first_seed, first_seed + seeds)  # seed by seed: pairs finish together
        for variant, overrides in found.items()
    ]
    runs = run_seeds(planned, train, objective, what="ablation", tracking=tracking, config_dirs=config_dirs, allowed=allowed, say=say)
    summary = summarize_seeds(runs, objective, direction, by=FACTORS[factor], paired=True)
    said = _verdict(summary, objective, seeds, factor, best)
    intro = (
        f"The best trial ({best['trial']}: {best['strategy']}, {best['shape']}) trained again with each "
        f"{FACTORS[factor]}, all else equal, on the same {seeds} seeds; {objective} ({direction}); "
        "p-values from the paired t-test over seeds."
    )
    title = f"Ablation of the {factor} in sweep {study.study_name}"
    plotted = PlotSpec(FACTORS[factor], objective, direction == "maximize")
    written = write_seed_tables(Path(folder), f"ablation_{factor}", title, intro, runs, summary, said, plotted)
    return Ablation(factor, runs, summary, said, Path(folder), written.files)


def _verdict(summary: pd.DataFrame, objective: str, seeds: int, factor: str, best: pd.Series) -> str:
    p = summary["p_vs_leader"].dropna()
    matters = bool(len(p)) and bool((p < 0.05).all())
    held = "shape, shape settings, head lr and seeds" if factor == "slice" else "slice, lrs and seeds"
    answer = (
        f"The {factor} matters for this model: {summary.loc[0, FACTORS[factor]]} beats every other one by more than the noise"
        if matters
        else f"At {seeds} seeds the {factor} does not clearly matter for this model: some gaps are within the noise"
    )
    return f"{answer} (held equal: {held}).\n\n{verdict(summary, objective, seeds, by=FACTORS[factor])}"
