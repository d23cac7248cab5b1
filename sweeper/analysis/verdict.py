"""One question, one answer: which slice strategy (or shape) wins, and is the difference real?

A sweep in compare mode (sweeper.sweep.arms) tunes each compared value, an arm, on its own equal
share of trials. The verdict then gathers what one answer needs, on the same K fresh seeds for
every run (common random numbers: runs of one seed share initial weights and data order, so
they are compared in pairs):

- each arm's best config, trained again on the K seeds: the arms compared *at their own tuned
  settings* (the question a user asks);
- at each arm's best settings (its head lr, shape and the rest), every other strategy swapped in,
  all else equal: the arms compared *at the same head lr* (for shapes: at the same slice and
  lrs). An arm's own run there is its tuned run, so the grid costs arms x arms x K runs.

Every comparison is a mean paired difference with a simultaneous 95% interval, Holm-corrected
across all of them (sweeper.analysis.paired). From them one answer in words: the leader at its
tuned settings, and what holding the head lr equal shows (the slice itself matters; or only the
lr each slice tolerates does; or nothing does), or "too close to tell" with the seeds and trials
that would tell. Each arm's settings are printed as a user types them (`lr='slice(lo, hi)'`,
`shape=...`).

Writes verdict.md, verdict.csv (one row per run), verdict_comparisons.csv, verdict.png (paired
differences per seed) and verdict.json (the answer, which the report leads with) into the sweep's
folder; every run is an MLflow child of the sweep's run (tuned reruns `sweeper.kind=confirm`,
swaps `sweeper.kind=ablation`, both tagged `verdict=true`).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd

from sweeper.analysis.ablation import FACTORS, variants
from sweeper.analysis.confirm import compose_trial
from sweeper.analysis.paired import Paired, paired, seeds_needed, with_family
from sweeper.analysis.paired_plot import plot_paired
from sweeper.analysis.repeats import seed_count
from sweeper.analysis.report import VERDICT_FILE, best_by, markdown_table, objective_columns, trials_table
from sweeper.analysis.seeded_runs import SeededRun, TrainFn, run_seeds
from sweeper.analysis.typed_settings import rerun_command, typed_settings
from sweeper.boundary.checked_study import checked_study
from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_config import Allowed
from sweeper.boundary.recorded_study import trial_overrides
from sweeper.boundary.recorded_sweep import recorded_compare
from sweeper.config import ConfigError
from sweeper.records.run_record import ABLATION_KIND, CONFIRM_KIND
from sweeper.records.tracking import SweepTracking

__all__ = ["ArmBest", "Verdict", "give_verdict", "levelled"]

LEVEL_TAIL = 1 / 3  # an arm has levelled off when its last third of trials did not raise its best


@dataclass(frozen=True)
class ArmBest:
    """An arm's best trial of the sweep and its settings as a user types them."""

    arm: str
    trial: int
    sweep_value: float
    trials: int  # complete trials of the arm
    levelled: bool
    typed: str  # e.g. lr='slice(1e-05,0.001)' shape=fastai_one_cycle shape.pct_start=0.25 (checked values only)
    head_lr: float | None
    rerun: str | None = None  # `sweeper rerun <its MLflow run id>`, where it has one

    @property
    def shown(self) -> str:
        """The arm and what to type, as printed (a recorded arm name escaped)."""
        rerun = f"; rerun its best trial: {self.rerun}" if self.rerun else ""
        return f"{printable(self.arm)}: {self.typed}{rerun}"


@dataclass
class Verdict:
    answer: str  # the one answer, in words
    markdown: str
    runs: pd.DataFrame
    comparisons: list[Paired]
    arms: dict[str, ArmBest]
    folder: Path
    files: list[Path] = field(default_factory=list)

    @property
    def comparison_table(self) -> pd.DataFrame:
        return _comparison_table(self.comparisons)


# --- reading the sweep ------------------------------------------------------------------------


def _compared(study: optuna.Study, trials: pd.DataFrame) -> tuple[str, list[str]]:
    """(param, arms): as the sweep's compare mode recorded them, else its strategies."""
    recorded = recorded_compare(study.user_attrs)
    param = recorded.get("param") if recorded.get("param") in FACTORS.values() else "strategy"
    drawn = [str(v) for v in trials[param].dropna().unique()] if len(trials) else []
    order = [str(a) for a in recorded.get("arms") or []] if recorded.get("param") == param else []
    return param, [a for a in order if a in drawn] + [a for a in drawn if a not in order]


def levelled(values: Sequence[float], maximize: bool) -> bool:
    """Whether an arm's best-so-far (its complete trials' objectives in trial order) stopped
    rising in its last third of trials; fewer than 3 trials cannot show it."""
    if len(values) < 3:
        return False
    keep = math.ceil(len(values) * (1 - LEVEL_TAIL))
    pick = max if maximize else min
    return pick(values) == pick(values[:keep])


# --- the runs ---------------------------------------------------------------------------------


def _grid(trials: pd.DataFrame, best: Mapping[str, pd.Series], arms: Sequence[str], param: str) -> dict[tuple[str, str], list[str]]:
    """(whose settings, which value) -> overrides: at each arm's best trial, every arm's value
    swapped in, all else equal (sweeper.analysis.ablation.variants)."""
    factor = next(f for f, column in FACTORS.items() if column == param)
    grid = {}
    for owner in arms:
        swapped = variants(trials, best[owner], factor)
        for value in arms:
            grid[(owner, value)] = shlex.split(best[owner]["overrides"]) if value == owner else swapped[value]
    return grid


def _planned(grid: Mapping[tuple[str, str], list[str]], seeds: Sequence[int], param: str, trial_of: Mapping[str, int]) -> list[SeededRun]:
    """The grid's runs, seed by seed (the pairs of a seed finish together): an arm's own value at
    its settings is its tuned run (recorded as a confirmation), any other a swap (as an ablation)."""
    planned = []
    for seed in seeds:
        for (owner, value), overrides in grid.items():
            tags = {"verdict": "true", "settings_of": owner, "variant": value, "confirms_trial": str(trial_of[owner])}
            describes = {"settings_of": owner, param: value}
            if owner == value:
                name, label, kind = f"verdict · {owner} tuned · seed {seed}", f"({owner} tuned, seed {seed})", CONFIRM_KIND
            else:
                name, label, kind = (
                    f"verdict · {value} at {owner}'s settings · seed {seed}",
                    f"({value} at {owner}'s settings, seed {seed})",
                    ABLATION_KIND,
                )
                tags["ablation"] = param
            planned.append(SeededRun(overrides, seed, kind, name, label, tags=tags, describes=describes))
    return planned


# --- the comparisons and the words ------------------------------------------------------------


def _comparisons(runs: pd.DataFrame, arms: Sequence[str], param: str, objective: str, maximize: bool) -> tuple[str, list[Paired]]:
    """The leader at tuned settings, and every comparison (tuned, then at each arm's settings), judged together."""
    table = runs.pivot_table(index="seed", columns=["settings_of", param], values=objective, dropna=False)

    def column(owner: str, value: str) -> list[float]:
        return [float(v) for v in table[(owner, value)]] if (owner, value) in table else [math.nan] * len(table)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else (-math.inf if maximize else math.inf)

    tuned = {arm: column(arm, arm) for arm in arms}
    leader = (max if maximize else min)(arms, key=lambda arm: mean(tuned[arm]))
    found = [paired(leader, other, "tuned", tuned[leader], tuned[other], maximize) for other in arms if other != leader]
    for owner in arms:
        found += [paired(owner, value, owner, column(owner, owner), column(owner, value), maximize) for value in arms if value != owner]
    return leader, with_family(found)


def _words(
    leader: str,
    comparisons: Sequence[Paired],
    arms: Mapping[str, ArmBest],
    param: str,
    objective: str,
    seeds: int,
    per_arm: int,
) -> str:
    noun, held = ("slice", "the same head lr") if param == "strategy" else ("shape", "the same slice and lrs")
    tuned = [c for c in comparisons if c.where == "tuned"]
    at = {(c.where, c.second): c for c in comparisons if c.where != "tuned"}
    others = [c.second for c in tuned]
    close = [c for c in tuned if not c.real]
    if close:
        top = [leader, *(c.second for c in close)]
        gaps = "; ".join(f"{leader} vs {c.second} {c.interval()}" for c in close)
        needed = [n for n in (seeds_needed(c, len(comparisons)) for c in close) if n is not None]
        still = [a for a in top if not arms[a].levelled]
        asks = []
        if needed:
            asks.append(f"{max(needed) - seeds} more seeds (--seeds {max(needed)})")
        if still or not needed:
            asks.append(
                f"{per_arm} more trials per arm (sweep.n_trials={2 * per_arm * len(arms)})"
                + (f": the best-so-far of {', '.join(still)} has not levelled off" if still else "")
            )
        answer = f"Too close to tell with this budget between {', '.join(top)} ({objective} difference, 95% interval: {gaps}); run {' and '.join(asks)}."
        behind = [c for c in tuned if c.real]
        if behind:
            answer += f" {' and '.join(top)} beat {', '.join(f'{c.second} ({c.interval()})' for c in behind)}."
        return answer
    lead = ", ".join(f"{c.interval()} vs {c.second}" for c in tuned)
    head = f"{leader} is best at its own tuned settings ({objective} {lead}, 95% intervals)"
    at_leader = [at[(leader, o)] for o in others]  # > 0: the leader's value beats o at the leader's settings
    at_theirs = [at[(o, leader)] for o in others]  # < 0: the leader beats o even at o's own settings
    lr = f" (head lr {arms[leader].head_lr:.3g})" if arms[leader].head_lr else ""
    if all(c.real and c.mean > 0 for c in at_leader) and all(c.real and c.mean < 0 for c in at_theirs):
        tail = (
            f"and the {noun} itself makes the difference: at {held} it beats the others at their own settings too "
            f"({', '.join(_at_settings(c.flipped()) for c in at_theirs)})"
        )
    elif all(c.real and c.mean > 0 for c in at_leader) and not any(c.real for c in at_theirs):
        tail = (
            f"at {held} the {noun} makes no difference at the others' settings, but at {leader}'s{lr} the others fall "
            f"behind ({', '.join(f'{c.second} {-c.mean:+.3g} [{-c.high:+.3g}, {-c.low:+.3g}]' for c in at_leader)}): its advantage comes from the lr it tolerates, not from the {noun} itself"
        )
    elif not any(c.real for c in at.values()):
        tail = (
            f"at {held} the {noun} makes no difference: its advantage comes from the lr and settings its own tuning found "
            f"(the others, given them, do as well; more trials per arm may let their tuning find them)"
        )
    else:
        real = [c for c in at.values() if c.real]
        tail = f"at {held}: " + "; ".join(
            f"at {c.where}'s settings {c.first if c.mean > 0 else c.second} beats {c.second if c.mean > 0 else c.first} by {abs(c.mean):.3g}"
            for c in real
        )
    caveat = [a for a in arms if not arms[a].levelled]
    note = f" (The best-so-far of {', '.join(caveat)} had not levelled off: more trials per arm may change this.)" if caveat else ""
    return f"{head}; {tail}.{note}"


def _at_settings(comparison: Paired) -> str:
    return f"{comparison.interval()} at {comparison.second}'s settings"


# --- the verdict ------------------------------------------------------------------------------


def give_verdict(
    study: optuna.Study,
    train: TrainFn,
    *,
    seeds: int,
    folder: str | Path,
    tracking: SweepTracking | None = None,
    config_dirs: Sequence[str] = (),
    allowed: Allowed = Allowed(),
    say: Callable[[str], None] | None = None,
    run_ids: Mapping[int, str] | None = None,
) -> Verdict:
    """Gather the runs the answer needs, judge them, write and return the verdict (module doc).
    `run_ids`: the trials' MLflow runs (trial number -> run id), where the store has them."""
    seed_count(seeds)
    study = checked_study(study)  # a study given by any caller is read through the boundary
    (objective, direction), *_ = objective_columns(study)
    maximize = direction == "maximize"
    trials = trials_table(study, run_ids)  # run ids (MLflow's, of the trials): each arm's best is offered as a rerun
    param, arms = _compared(study, trials)
    best = best_by(trials, param, objective, direction) if len(trials) else {}
    arms = [a for a in arms if a in best]
    if len(arms) < 2:
        raise ConfigError(
            f"sweep {study.study_name!r} has complete trials of {len(arms)} {param} ({', '.join(arms) or 'none'}); "
            f"a verdict compares two or more: let the sweep run (raise sweep.n_trials)."
        )
    base = trial_overrides(study.user_attrs)  # the sweep's own overrides, checked as a trial's are
    complete = trials[trials["state"] == "complete"].sort_values("trial")
    found = {}
    for arm in arms:
        row = best[arm]
        overrides = shlex.split(row["overrides"])
        typed, head_lr = typed_settings(overrides, base, compose_trial(overrides, config_dirs, allowed), config_dirs)
        values = complete[complete[param] == arm][objective].dropna().to_list()
        rerun = rerun_command(row.get("mlflow_run_id"))
        found[arm] = ArmBest(arm, int(row["trial"]), float(row[objective]), len(values), levelled(values, maximize), typed, head_lr, rerun)
    first = best[(max if maximize else min)(arms, key=lambda a: found[a].sweep_value)]
    first_seed = int(compose_trial(shlex.split(first["overrides"]), config_dirs, allowed).train.seed) + 1
    seed_list = list(range(first_seed, first_seed + seeds))
    grid = _grid(trials, best, arms, param)
    trial_of = {arm: found[arm].trial for arm in arms}
    planned = _planned(grid, seed_list, param, trial_of)
    runs = run_seeds(planned, train, objective, what="verdict", tracking=tracking, config_dirs=config_dirs, allowed=allowed, say=say)
    leader, comparisons = _comparisons(runs, arms, param, objective, maximize)
    per_arm = max(f.trials for f in found.values())
    answer = _words(leader, comparisons, found, param, objective, seeds, per_arm)
    verdict = Verdict(answer, "", runs, comparisons, found, Path(folder))
    _write(verdict, study.study_name, param, objective, direction, seeds)
    return verdict


def _comparison_table(comparisons: Sequence[Paired]) -> pd.DataFrame:
    rows = []
    for c in comparisons:
        where = "each at its own tuned settings" if c.where == "tuned" else f"at {c.where}'s settings"
        rows.append(
            {
                "comparison": f"{c.first} vs {c.second}",
                "held equal": where,
                "seeds": c.n,
                "mean difference": c.mean,
                "95% low": c.low,
                "95% high": c.high,
                "p": c.p,
                "p (Holm)": c.p_holm,
                "real": "yes" if c.real else "no",
            }
        )
    return pd.DataFrame(rows)


def _write(verdict: Verdict, sweep: str, param: str, objective: str, direction: str, seeds: int) -> None:
    folder = verdict.folder
    folder.mkdir(parents=True, exist_ok=True)
    table = verdict.comparison_table
    arms = pd.DataFrame(
        [
            {
                param: a.arm,
                "trial": a.trial,
                "sweep value": a.sweep_value,
                "complete trials": a.trials,
                "levelled": a.levelled,
                "settings": a.typed,
            }
            for a in verdict.arms.values()
        ]
    )
    lines = [
        f"# Verdict on sweep {sweep}",
        "",
        f"**{verdict.answer}**",
        "",
        f"{objective} ({direction}); every run on the same {seeds} fresh seeds, compared seed by seed; differences are "
        f"the first minus the second (> 0: the first is better), with simultaneous 95% intervals and p-values Holm-corrected "
        f"across all {len(verdict.comparisons)} comparisons.",
        "",
        "## Each arm's best settings (as you type them, after the sweep's own overrides)",
        "",
        *[f"- {_arm_line(a)}" for a in verdict.arms.values()],
        "",
        markdown_table(arms),
        "",
        "## Comparisons",
        "",
        markdown_table(table),
        "",
        "![paired differences per seed](verdict.png)",
        "",
        "## Runs",
        "",
        markdown_table(verdict.runs),
        "",
    ]
    verdict.markdown = "\n".join(lines)
    files = [folder / "verdict.md", folder / "verdict.csv", folder / "verdict_comparisons.csv", folder / VERDICT_FILE]
    files[0].write_text(verdict.markdown)
    verdict.runs.to_csv(files[1], index=False)
    table.to_csv(files[2], index=False)
    record = {"answer": verdict.answer, "param": param, "seeds": seeds, "arms": {a.arm: a.typed for a in verdict.arms.values()}}
    files[3].write_text(json.dumps(record, indent=1))
    title = "Paired differences per seed (green: real after Holm)"
    plot = plot_paired(verdict.comparisons, objective, folder / "verdict.png", title)
    verdict.files = [*files, plot]


def _arm_line(arm: ArmBest) -> str:
    rerun = f"; rerun it: `{arm.rerun}`" if arm.rerun else ""
    return f"{printable(arm.arm)} (trial {arm.trial}, {arm.trials} complete trials): `{arm.typed}`{rerun}"
