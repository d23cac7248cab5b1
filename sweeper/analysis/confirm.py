"""Is the difference real? Rerun each slice strategy's best config with fresh seeds.

A sweep picks each strategy's best trial on one seed, and the best of many noisy draws is
optimistic. `confirm` trains each strategy's best config again with `seeds` new seeds (the
trial's seed + 1, + 2, ...), so the spread across seeds shows whether the winner's lead is
larger than the noise: per strategy the mean, standard deviation, min and max, and a t-test of
the leader against each other strategy: paired, seed by seed, when every strategy ran the same
seeds (the sweep's trials shared one seed: the same initial weights and batches), else Welch's.

Writes confirm.csv (one row per run), confirm_summary.csv, confirm.md and confirm.png (the
leader minus each other strategy, seed by seed, where they ran the same seeds) into the sweep's folder;
every run is recorded in MLflow (nested under the sweep's run, tagged `sweeper.kind=confirm`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from omegaconf import DictConfig

from sweeper.analysis.paired import ALPHA, Paired, paired, with_family
from sweeper.analysis.paired_plot import plot_paired
from sweeper.analysis.repeats import seed_count
from sweeper.analysis.report import best_by, markdown_table, objective_columns, trials_table
from sweeper.analysis.seeded_runs import SeededRun, TrainFn, run_seeds
from sweeper.boundary.checked_study import checked_study
from sweeper.boundary.recorded_config import Allowed
from sweeper.boundary.recorded_study import trial_config
from sweeper.config import ConfigError
from sweeper.records.run_record import CONFIRM_KIND
from sweeper.records.tracking import SweepTracking

__all__ = ["Confirmation", "compose_trial", "confirm_strategies", "leader_differences", "summarize_seeds", "verdict", "write_seed_tables"]

SIGNIFICANCE = 0.05  # below this p-value a lead is called real


@dataclass
class Confirmation:
    runs: pd.DataFrame  # strategy, trial, seed, status, objective, MLflow run id
    summary: pd.DataFrame  # per strategy: runs, mean, std, min, max, p-value vs the leader
    verdict: str
    markdown: str
    folder: Path
    files: list[Path]  # what was written: the tables, the Markdown, the plot


def compose_trial(overrides: Sequence[str], config_dirs: Sequence[str], allowed: Allowed) -> DictConfig:
    """A trial's config from the overrides its study recorded, read through the boundary (a
    study may be shared: sweeper.boundary.recorded_study): the checked config, to build as it is."""
    return trial_config(overrides, config_dirs, allowed)


def confirm_strategies(
    study: optuna.Study,
    train: TrainFn,
    *,
    seeds: int,
    folder: str | Path,
    tracking: SweepTracking | None = None,
    config_dirs: Sequence[str] = (),
    strategies: Sequence[str] | None = None,
    allowed: Allowed = Allowed(),
    say: Callable[[str], None] | None = None,
) -> Confirmation:
    """Train each strategy's best trial again with `seeds` fresh seeds; write and return the result."""
    seed_count(seeds)
    study = checked_study(study)  # a study given by any caller is read through the boundary
    (objective, direction), *_ = objective_columns(study)
    best = best_by(trials_table(study), "strategy", objective, direction)
    if strategies:
        unknown = sorted(set(strategies) - set(best))
        if unknown:
            raise ConfigError(f"--strategy: {unknown} have no complete trial in this sweep; choose among {sorted(best)}.")
        best = {s: row for s, row in best.items() if s in strategies}
    if not best:
        raise ConfigError(f"sweep {study.study_name!r} has no complete trial yet; let it run, then confirm.")

    planned = []
    for strategy, trial in best.items():
        overrides = shlex.split(trial["overrides"])
        first_seed = int(compose_trial(overrides, config_dirs, allowed).train.seed) + 1
        for seed in range(first_seed, first_seed + seeds):
            planned.append(
                SeededRun(
                    overrides,
                    seed,
                    CONFIRM_KIND,
                    f"confirm {strategy} seed {seed}",
                    f"({strategy}, seed {seed})",
                    tags={"confirms_trial": str(int(trial["trial"]))},
                    describes={"strategy": strategy, "trial": int(trial["trial"])},
                    carries={"sweep_value": trial[objective]},
                )
            )
    runs = run_seeds(planned, train, objective, what="confirm", tracking=tracking, config_dirs=config_dirs, allowed=allowed, say=say)
    # Strategies whose trials share a seed (a sweep's trials do, unless train.seed is searched)
    # ran the same seeds here: the same initial weights and batches, seed by seed (common random
    # numbers, as the members of a fused run). Each is then compared with the leader in pairs.
    same_seeds = len(best) > 1 and runs.groupby("strategy")["seed"].apply(frozenset).nunique() == 1
    summary = summarize_seeds(runs, objective, direction, paired=same_seeds)
    said = verdict(summary, objective, seeds)
    test = (
        "every strategy ran the same seeds, so each is compared with the leader seed by seed (paired t-test)"
        if same_seeds
        else "the strategies ran different seeds: Welch's t-test"
    )
    intro = f"Each strategy's best trial, trained again with {seeds} fresh seeds; {objective} ({direction}); {test}."
    plotted = PlotSpec("strategy", objective, direction == "maximize") if same_seeds else None
    written = write_seed_tables(Path(folder), "confirm", f"Confirmation of sweep {study.study_name}", intro, runs, summary, said, plotted)
    return Confirmation(runs, summary, said, written.markdown, Path(folder), written.files)


@dataclass
class SeedTables:
    """What write_seed_tables wrote: the Markdown and every file (tables, the plot where there is one)."""

    markdown: str
    files: list[Path]


def write_seed_tables(
    folder: Path, stem: str, title: str, intro: str, runs: pd.DataFrame, summary: pd.DataFrame, said: str, plotted: PlotSpec | None
) -> SeedTables:
    """<stem>.csv (one row per run), <stem>_summary.csv, <stem>.md and, when the values ran the
    same seeds (`plotted`), <stem>.png: the leader minus each other value, seed by seed."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{stem}.md", folder / f"{stem}.csv", folder / f"{stem}_summary.csv"]
    runs.to_csv(files[1], index=False)
    summary.to_csv(files[2], index=False)
    if plotted is None:
        picture = "(No plot of paired differences: no two values ran the same seeds.)"
    else:
        differences = leader_differences(runs, summary, plotted.by, plotted.objective, plotted.maximize)
        title_of_plot = f"The leader minus each other {plotted.by} per seed (green: p < {ALPHA}, each comparison alone)"
        files.append(plot_paired(differences, plotted.objective, folder / f"{stem}.png", title_of_plot))
        picture = f"![the leader minus each other {plotted.by}, seed by seed]({stem}.png)"
    markdown = "\n".join(
        [f"# {title}", "", intro, "", markdown_table(summary), "", said, "", picture, "", "## Runs", "", markdown_table(runs), ""]
    )
    files[0].write_text(markdown)
    return SeedTables(markdown, files)


@dataclass(frozen=True)
class PlotSpec:
    """How write_seed_tables pairs the runs for its plot: by which column, on which objective."""

    by: str
    objective: str
    maximize: bool


def leader_differences(runs: pd.DataFrame, summary: pd.DataFrame, by: str, objective: str, maximize: bool) -> list[Paired]:
    """The leader (summary's first) against each other value of `by`, seed by seed, each judged
    alone, as the summary's p-values are (a 95% interval each, not corrected for the others)."""
    by_seed = runs.pivot(index="seed", columns=by, values=objective)
    leader = summary.loc[0, by]
    found = [paired(leader, v, "", by_seed[leader].to_list(), by_seed[v].to_list(), maximize) for v in summary[by].iloc[1:]]
    return [with_family([c])[0] for c in found]


def summarize_seeds(runs: pd.DataFrame, objective: str, direction: str, by: str = "strategy", paired: bool = False) -> pd.DataFrame:
    """Per value of `by` (a strategy, a shape): runs, failed, mean, std, min, max; leader first;
    p-value of the leader against each other one: Welch's t-test, or with `paired` (the same
    seeds for every value, all else equal) the paired t-test over the seeds both finished.
    NaN where there is no spread to test."""
    from scipy import stats

    rows = []
    for value, group in runs.groupby(by):
        values = group[objective].dropna()
        rows.append(
            {
                by: value,
                "runs": len(group),
                "failed": int(group[objective].isna().sum()),
                "mean": values.mean(),
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "min": values.min(),
                "max": values.max(),
                "sweep_value": group["sweep_value"].iloc[0],
            }
        )
    summary = pd.DataFrame(rows).sort_values("mean", ascending=direction != "maximize", na_position="last")
    summary = summary.reset_index(drop=True)
    by_seed = runs.pivot_table(index="seed", columns=by, values=objective) if paired else None
    leader_name = summary.loc[0, by]
    leader = runs[runs[by] == leader_name][objective].dropna()
    p_values = []
    for value in summary[by]:
        if value == leader_name:
            p_values.append(math.nan)
            continue
        if paired:
            both = by_seed[[leader_name, value]].dropna()
            gaps = both[leader_name] - both[value]
            tested = len(gaps) > 1 and gaps.std(ddof=1) > 0
            p_values.append(float(stats.ttest_rel(both[leader_name], both[value]).pvalue) if tested else math.nan)
            continue
        other = runs[runs[by] == value][objective].dropna()
        spread = leader.std(ddof=1) + other.std(ddof=1) if len(leader) > 1 and len(other) > 1 else 0
        p_values.append(float(stats.ttest_ind(leader, other, equal_var=False).pvalue) if spread > 0 else math.nan)
    summary["p_vs_leader"] = p_values
    return summary


def verdict(summary: pd.DataFrame, objective: str, seeds: int, by: str = "strategy") -> str:
    """The comparison in words: the leader, and against each other one, whether the gap is
    larger than the noise at this many seeds."""
    leader = summary.loc[0]
    if len(summary) == 1:
        return f"Only {leader[by]} was confirmed: mean {objective} {leader['mean']:.4g} ± {leader['std']:.2g} (std)."
    lines = [f"**{leader[by]}** leads with mean {objective} {leader['mean']:.4g} ± {leader['std']:.2g} (std, {seeds} seeds)."]
    for _, other in summary.iloc[1:].iterrows():
        gap = abs(leader["mean"] - other["mean"])
        p = other["p_vs_leader"]
        if math.isnan(p):
            judged = "no spread to test against (identical results across seeds)"
        elif p < SIGNIFICANCE:
            judged = f"p = {p:.3g}: larger than the noise, likely real"
        else:
            judged = f"p = {p:.3g}: within the noise, not a real difference at {seeds} seeds"
        lines.append(f"- vs {other[by]} (mean {other['mean']:.4g} ± {other['std']:.2g}): gap {gap:.3g}; {judged}.")
    return "\n".join(lines)
