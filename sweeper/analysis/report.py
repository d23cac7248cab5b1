"""The comparison of slice strategies and cycle shapes in a sweep: tables, plots and Markdown.

    report = write_report(study, Path("results/sweeps/mlp-digits"), report_sources(sweep_tracking))

writes into the folder
- `trials.csv`: one row per trial (state, status, objective(s), strategy, shape, sampled params,
  epochs, seconds, reason, MLflow run id, the overrides that reproduce it);
- `by_strategy.csv`, `by_shape.csv`: best, median, count, complete/pruned/failed per slice strategy
  and per cycle shape (best and median over complete trials);
- `best_curves.png`: the objective per epoch (and the training loss per batch, when the sweep
  was recorded in MLflow) of each strategy's best trial;
- `schedules.png`: the lr of every layer group over training for each strategy's best trial;
- `importance.png`, `parallel_coordinate.png`: Optuna's (matplotlib) plots;
- `report.md`: all of it, readable on its own.

The study alone is enough; MLflow (when the sweep was recorded) adds the per-batch curves and
exact schedules. A trial's strategy and shape are what it drew (`lr`, `shape` params), else
what its overrides or the sweep's base config say.
"""

from __future__ import annotations

import functools
import math
import shlex
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.exceptions import ExperimentalWarning  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from sweeper.analysis import tables  # noqa: E402
from sweeper.analysis.typed_settings import rerun_command  # noqa: E402
from sweeper.boundary.checked_study import checked_study  # noqa: E402
from sweeper.boundary.printed import printable  # noqa: E402
from sweeper.boundary.recorded_config import Allowed  # noqa: E402
from sweeper.boundary.recorded_study import study_config_dirs, trial_config, trial_overrides, unchecked_trial_config  # noqa: E402
from sweeper.boundary.recorded_sweep import recorded_anchor, recorded_compare, recorded_objectives  # noqa: E402
from sweeper.config import ConfigError  # noqa: E402
from sweeper.config.errors import error_line  # noqa: E402
from sweeper.records.tracking import SweepTracking, sweep_folder  # noqa: E402
from sweeper.records.trial_runs import MlflowSources, report_sources  # noqa: E402
from sweeper.schedules.plots import Margins, drawing, log_y, save_figure  # noqa: E402

__all__ = [
    "DrawnPlots",
    "FROM_RECORDS",
    "Outdated",
    "Report",
    "best_by",
    "describe_trial",
    "draw_best_trials_plots",
    "markdown_table",
    "objective_columns",
    "summarize",
    "finish_sweep",
    "read_verdict",
    "trials_table",
    "write_report",
]

VERDICT_FILE = "verdict.json"  # `sweeper verdict` writes its answer here; the report leads with it
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
TRIALS_SHOWN = 30  # rows of the trials table in report.md (trials.csv has them all)
# Below this many complete trials a parameter importance (fANOVA's forest fitted on the trials)
# ranks noise: on 6-9 trials it called the strategy unimportant where the ablation found it
# mattered. So the plot is left out, and the report says why.
MIN_IMPORTANCE_TRIALS = 20
FROM_RECORDS = ("best_curves.png", "schedules.png")  # the plots drawn from the trials' MLflow records
BOX_MIN_POINTS = 5  # fewer points per group: the points alone, no box of quartiles they cannot show


@dataclass
class Report:
    folder: Path
    trials: pd.DataFrame
    by_strategy: pd.DataFrame
    by_shape: pd.DataFrame
    summary: str  # Markdown: the best trial and the two summaries
    markdown: str  # the whole of report.md
    files: list[Path] = field(default_factory=list)
    objective: str = "value"  # the (first) objective's name, and its direction
    direction: str = "maximize"


# --- tables -----------------------------------------------------------------------------------


def objective_columns(study: optuna.Study) -> list[tuple[str, str]]:
    """(column name, direction) of each objective, named as the sweep recorded them."""
    directions = [d.name.lower() for d in study.directions]
    return list(zip(recorded_objectives(study.user_attrs, len(directions)), directions))


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    for text in reversed(list(overrides)):
        name, _, value = text.partition("=")
        if name.lstrip("+~") == key:
            return value
    return None


def _drawn(trial: FrozenTrial, attr: str, key: str, base: Callable[[], Mapping[str, str]]) -> str:
    """A trial's strategy or shape (the Optuna param `attr`, the config group `key`): recorded,
    drawn, overridden, else the sweep's base config's."""
    if trial.user_attrs.get(attr):
        return str(trial.user_attrs[attr])
    if attr in trial.params:
        return str(trial.params[attr])
    return _override_value(trial.user_attrs.get("overrides", []), key) or base()[attr]


def _base_choices(study: optuna.Study) -> Callable[[], Mapping[str, str]]:
    """The strategy and shape of the sweep's base config, composed once and only if needed."""
    found: dict[str, str] = {}

    def choices() -> Mapping[str, str]:
        if not found:
            found.update(strategy="unknown", shape="unknown")
            try:
                from sweeper.records.run_record import shape_name_of, strategy_of

                attrs = study.user_attrs  # read through the boundary: nothing resolves a resolver, nothing is imported
                config = unchecked_trial_config(trial_overrides(attrs), study_config_dirs(attrs))
                found.update(strategy=strategy_of(config), shape=shape_name_of(config))
            except Exception:  # noqa: BLE001 - a config dir of the user's may be missing here, or the record refused
                pass
        return found

    return choices


def trials_table(study: optuna.Study, run_ids: Mapping[int, str] | None = None) -> pd.DataFrame:
    """One row per trial; `run_ids` maps trial numbers to MLflow run ids found in the store."""
    objectives = objective_columns(study)
    base = _base_choices(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = trial.values or [math.nan] * len(objectives)
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": STATES.get(trial.state, trial.state.name.lower()),
            "status": trial.user_attrs.get("status", ""),
            **{name: value for (name, _), value in zip(objectives, values)},
            "strategy": _drawn(trial, "strategy", "lr", base),
            "shape": _drawn(trial, "shape", "shape", base),
            "epochs": len(trial.intermediate_values),
            "seconds": trial.duration.total_seconds() if trial.duration else math.nan,
        }
        row["mlflow_run_id"] = trial.user_attrs.get("mlflow_run_id") or (run_ids or {}).get(trial.number, "")
        row["reason"] = trial.user_attrs.get("reason", "")
        row["overrides"] = shlex.join(trial.user_attrs.get("overrides", []))
        row.update({f"param:{name}": value for name, value in trial.params.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    # Trials draw different params (each shape its own settings): keep them last, in name order.
    params = sorted(c for c in table.columns if c.startswith("param:"))
    return table[[c for c in table.columns if not c.startswith("param:")] + params]


def summarize(trials: pd.DataFrame, by: str, objective: str, direction: str) -> pd.DataFrame:
    """Per value of `by` (strategy, shape): trials, complete, pruned, failed, best, median,
    best trial; best first. Best and median are over complete trials."""
    maximize = direction == "maximize"
    rows = []
    for value, group in trials.groupby(by, sort=True):
        complete = group[group["state"] == "complete"]
        scores = complete[objective].dropna()
        best = scores.idxmax() if maximize and len(scores) else scores.idxmin() if len(scores) else None
        rows.append(
            {
                by: value,
                "trials": len(group),
                "complete": len(complete),
                "pruned": int((group["state"] == "pruned").sum()),
                "failed": int((group["state"] == "failed").sum()),
                "best": scores.max() if maximize else scores.min() if len(scores) else math.nan,
                "median": scores.median() if len(scores) else math.nan,
                "best_trial": int(trials.loc[best, "trial"]) if best is not None else None,
            }
        )
    table = pd.DataFrame(rows, columns=[by, "trials", "complete", "pruned", "failed", "best", "median", "best_trial"])
    return table.sort_values("best", ascending=not maximize, na_position="last").reset_index(drop=True)


def best_by(trials: pd.DataFrame, by: str, objective: str, direction: str) -> dict[str, pd.Series]:
    """The best complete trial's row for each value of `by` (e.g. each strategy)."""
    summary = summarize(trials, by, objective, direction)
    best = {}
    for _, row in summary.dropna(subset=["best_trial"]).iterrows():
        best[row[by]] = trials[trials["trial"] == row["best_trial"]].iloc[0]
    return best


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table."""
    return tables.markdown_table(list(frame.columns), frame.itertuples(index=False), digits)


def describe_trial(row: pd.Series, objective: str) -> str:
    """One line: trial number, objective, strategy, shape, and the command that reruns it: by
    its MLflow run id, through the boundary, never the study's overrides as a command to type
    (a shared study's overrides may name code: sweeper.analysis.typed_settings)."""
    rerun = rerun_command(row.get("mlflow_run_id"))
    how = f"rerun it: `{rerun}`" if rerun else "no MLflow run to rerun (tracking was off); its overrides are in trials.csv"
    named = printable(f"{row['strategy']}, {row['shape']}")
    return f"trial {row['trial']} ({objective} {row[objective]:.4g}, {named}): {how}"


# --- plots ------------------------------------------------------------------------------------


def plot_best_curves(
    study: optuna.Study,
    best: Mapping[str, pd.Series],
    objective: str,
    curves: Callable[[str, str], list[tuple[int, float]]] | None,
    path: Path,
) -> Path:
    """Each strategy's best trial: objective per epoch; training loss per batch when recorded."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    with_loss = curves is not None and any(row.get("mlflow_run_id") for row in best.values())
    figure, axes = plt.subplots(1, 2 if with_loss else 1, figsize=(12 if with_loss else 7, 4), squeeze=False)
    for strategy, row in best.items():
        label = f"{strategy} (trial {row['trial']}, {row['shape']})"
        epochs = sorted(trials[int(row["trial"])].intermediate_values.items())
        axes[0][0].plot([e for e, _ in epochs], [v for _, v in epochs], marker="o", label=label)
        if with_loss and row.get("mlflow_run_id"):
            loss = curves(row["mlflow_run_id"], "loss")
            axes[0][1].plot([s for s, _ in loss], [v for _, v in loss], linewidth=0.8, label=label)
    axes[0][0].set(xlabel="epoch", ylabel=objective, title=f"{objective} of each strategy's best trial")
    axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize="small")
    if with_loss:
        axes[0][1].set(xlabel="training batch", ylabel="training loss", title="training loss per batch")
        log_y(axes[0][1])
        axes[0][1].legend(fontsize="small")
    return save_figure(figure, path, Margins(between=0.9))  # the loss panel has its own y axis


def plot_distributions(trials: pd.DataFrame, objective: str, path: Path) -> Path | None:
    """The objective of every complete trial, per slice strategy and per cycle shape (each dot a
    trial, the box its quartiles): the spread of all trials, not only each group's best."""
    complete = trials[trials["state"] == "complete"].dropna(subset=[objective]) if len(trials) else trials
    if not len(complete):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    for axis, by in zip(axes[0], ("strategy", "shape")):
        names = sorted(complete[by].unique())
        values = [complete[complete[by] == name][objective].to_list() for name in names]
        if min(len(v) for v in values) >= BOX_MIN_POINTS:
            axis.boxplot(values, showfliers=False)
        for position, group in enumerate(values, start=1):
            axis.plot([position] * len(group), group, "o", alpha=0.6, markersize=4)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize="small")
        axis.set(title=f"{objective} of every complete trial, by {by}", ylabel=objective)
    return save_figure(figure, path, Margins(right=0.5, bottom=0.75, between=0.9))  # names at an angle; two y axes


def plot_best_so_far(trials: pd.DataFrame, by: str, objective: str, direction: str, path: Path) -> Path | None:
    """Each arm's best objective so far against its own trials (complete ones, in trial order): an
    arm whose curve still climbs at its end has not been tuned enough to compare yet."""
    complete = trials[trials["state"] == "complete"].dropna(subset=[objective]).sort_values("trial") if len(trials) else trials
    if not len(complete):
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, group in complete.groupby(by, sort=True):
        so_far = group[objective].cummax() if direction == "maximize" else group[objective].cummin()
        axis.plot(range(1, len(so_far) + 1), so_far.to_list(), marker="o", label=f"{name} ({len(so_far)} trials)")
    axis.set(xlabel=f"complete trials of the {by}", ylabel=f"best {objective} so far", title=f"Best so far, per {by}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize="small")
    return save_figure(figure, path, Margins())


def read_verdict(folder: Path) -> str | None:
    """The answer `sweeper verdict` wrote into the sweep's folder, if it was run."""
    import json

    try:
        answer = json.loads((Path(folder) / VERDICT_FILE).read_text()).get("answer")
    except (OSError, ValueError, AttributeError):
        return None
    return answer if isinstance(answer, str) else None


def _planned_schedule(overrides: Sequence[str], steps: int = 200, allowed: Allowed = Allowed()) -> list[list[float]]:
    """lr per group at about `steps` points of training (both phases of a fine-tune), as the
    trial's config plans it (`sweeper.trial.schedule`, the trainer's own schedule)."""
    planned = _planned_lrs(tuple(overrides), steps, allowed)
    if isinstance(planned, str):
        raise ConfigError(planned)
    return planned


# A report written again as trials finish composes each best trial's config once (~0.25 s), and
# keeps a refusal as it keeps a schedule (a trainer not allowed stays so for the same overrides).
@functools.lru_cache(maxsize=64)
def _planned_lrs(overrides: tuple[str, ...], steps: int, allowed: Allowed) -> list[list[float]] | str:
    from sweeper.trial.schedule import schedule_of, whole_epoch_steps

    try:
        cfg = trial_config(overrides, (), allowed)  # what it builds (the shape, a splitter) is checked first: the overrides are the study's
    except ConfigError as error:
        return str(error)
    return schedule_of(cfg, steps=whole_epoch_steps(cfg, steps), momentum=False).lrs.T.tolist()


def _recorded_schedule(run_id: str, curves: Callable[[str, str], list[tuple[int, float]]]) -> list[list[float]]:
    lrs = []
    while True:
        curve = curves(run_id, f"lr_{len(lrs)}")
        if not curve:
            return lrs
        lrs.append([value for _, value in curve])


def plot_schedules(
    best: Mapping[str, pd.Series], curves: Callable[[str, str], list[tuple[int, float]]] | None, path: Path, allowed: Allowed = Allowed()
) -> Path:
    """The lr of every layer group over training, one panel per strategy's best trial: as
    recorded in MLflow when it was, else as its config plans it."""
    figure, axes = plt.subplots(1, max(1, len(best)), figsize=(5 * max(1, len(best)), 4), squeeze=False, sharey=True)
    for axis, (strategy, row) in zip(axes[0], best.items()):
        lrs = _recorded_schedule(row["mlflow_run_id"], curves) if curves and row.get("mlflow_run_id") else []
        try:
            lrs = lrs or _planned_schedule(shlex.split(row["overrides"]), allowed=allowed)
        except ConfigError as error:  # a record the boundary refused: its panel says so, the report goes on
            axis.text(0.5, 0.5, printable(error_line(error))[:120], wrap=True, ha="center", fontsize="small")
        for group, values in enumerate(lrs):
            head = " (head)" if group == len(lrs) - 1 else ""
            axis.plot([i / max(1, len(values) - 1) for i in range(len(values))], values, label=f"group {group}{head}")
        axis.set(title=f"{strategy}: trial {row['trial']}, {row['shape']}", xlabel="fraction of training")
        log_y(axis)
        if lrs:  # a panel that says why it has no curve has nothing to name
            axis.legend(fontsize="small")
    axes[0][0].set_ylabel("learning rate")
    return save_figure(figure, path, Margins(between=0.2))  # one y axis, shared


def plot_optuna(study: optuna.Study, kind: str, objective: str, path: Path) -> Path:
    """Optuna's importance or parallel-coordinate plot (matplotlib; no plotly needed)."""
    from optuna.visualization import matplotlib as optuna_plots

    options: dict[str, Any] = {} if len(study.directions) == 1 else {"target": lambda t: t.values[0]}
    if kind == "importance":
        plot = optuna_plots.plot_param_importances
    else:
        plot = optuna_plots.plot_parallel_coordinate
        # A shape's own settings exist only in its trials: an axis of mostly "None" says nothing.
        options["params"] = _shared_params(study) or None
    # Optuna marks these plots experimental, warns of small samples, and sets its own style:
    # keep all of it to this plot.
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        axis = plot(study, target_name=objective, **options)
        figure = axis.figure if hasattr(axis, "figure") else axis.flat[0].figure
        for lines in figure.axes[0].collections if kind != "importance" else ():
            lines.set_cmap("viridis")  # Optuna's Blues draws the losing trials white on white
        figure.set_size_inches(10, 5)
        return save_figure(figure, path)


class LeftOut(Exception):
    """A plot the report leaves out on purpose; the message says why."""


def _importance_ready(trials: pd.DataFrame) -> bool:
    return len(trials) > 0 and int((trials["state"] == "complete").sum()) >= MIN_IMPORTANCE_TRIALS


def _left_out(trials: pd.DataFrame) -> None:
    complete = int((trials["state"] == "complete").sum()) if len(trials) else 0
    raise LeftOut(
        f"{complete} complete trials; an importance fitted on fewer than {MIN_IMPORTANCE_TRIALS} ranks noise "
        f"(`sweeper verdict` answers whether the strategy matters)"
    )


def _shared_params(study: optuna.Study) -> list[str]:
    """Params every complete trial drew (the strategy, lr.high, the shape, ...)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    shared = set.intersection(*(set(t.params) for t in complete)) if complete else set()
    return sorted(shared) if len(shared) > 1 else []


# --- the report -------------------------------------------------------------------------------


@dataclass
class DrawnPlots:
    """The plots last drawn into a report's folder, each by what it was drawn from: a report
    written again (as a sweep's trials finish) redraws only the plots whose inputs changed."""

    inputs: dict[str, str] = field(default_factory=dict)
    # (run id, metric) -> its curve, for runs that had ended when it was read: whole, so read once
    curves: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)

    def reader(self, sources: MlflowSources) -> Callable[[str, str], list[tuple[int, float]]]:
        """sources.read_curve, keeping the curves of ended runs for the reports written after."""
        ended = {sources.run_ids[number] for number in sources.ended if number in sources.run_ids}

        def read(run_id: str, key: str) -> list[tuple[int, float]]:
            if (run_id, key) in self.curves:
                return self.curves[(run_id, key)]
            curve = sources.read_curve(run_id, key)
            if run_id in ended:
                self.curves[(run_id, key)] = curve
            return curve

        return read


class Outdated(Exception):
    """A report given up between two plots: what it was drawn from is out of date already."""


class _Plots:
    """A report's plots: how each is drawn, and what from (the trials, for the plots of the
    study: any new trial changes them, not their MLflow run ids, which no plot shows; or the
    best trial of each strategy, for those of the MLflow records: its curves and schedule, whole
    once its run has ended)."""

    def __init__(self, study: optuna.Study, sources: MlflowSources | None, drawn: DrawnPlots, allowed: Allowed) -> None:
        run_ids, curves, ended = (sources.run_ids, drawn.reader(sources), sources.ended) if sources else ({}, None, frozenset())
        self.trials = trials = trials_table(study, run_ids)
        (self.objective, self.direction), *self.others = objective_columns(study)
        objective, direction = self.objective, self.direction
        best = best_by(trials, "strategy", objective, direction) if len(trials) else {}
        compared = recorded_compare(study.user_attrs).get("param")
        self.makers: dict[str, Callable[[Path], Path | None]] = {
            "best_so_far.png": lambda p: plot_best_so_far(trials, compared or "strategy", objective, direction, p),
            "best_curves.png": lambda p: plot_best_curves(study, best, objective, curves, p) if best else None,
            "schedules.png": lambda p: plot_schedules(best, curves, p, allowed) if best else None,
            "distribution.png": lambda p: plot_distributions(trials, objective, p),
            "importance.png": lambda p: plot_optuna(study, "importance", objective, p) if _importance_ready(trials) else _left_out(trials),
            "parallel_coordinate.png": lambda p: plot_optuna(study, "parallel_coordinate", objective, p),
        }
        self.every = trials.drop(columns="mlflow_run_id", errors="ignore").to_csv(index=False) + str(compared)
        self.bests = repr([(key, row.to_dict(), int(row["trial"]) in ended) for key, row in sorted(best.items())]) + str(curves is not None)
        # A best trial whose MLflow run has not ended yet: its curves may still grow.
        self.bests_running = curves is not None and any(int(row["trial"]) not in ended for row in best.values())

    def draw(
        self, folder: Path, drawn: DrawnPlots, outdated: Callable[[str], bool] | None, names: Collection[str] | None = None
    ) -> dict[str, Path | str]:
        """Draw the plots (`names`, else all) whose inputs changed since `drawn`: name -> its
        file, or a note of why it is not drawn. The plots of the study alone come first, then
        those of the trials' MLflow records (a sweep's report may wait for its recorder before
        those); report.md shows the makers' order."""
        shown: dict[str, Path | str] = {}
        for name in sorted(self.makers, key=lambda name: name in FROM_RECORDS):
            if names is not None and name not in names:
                continue
            inputs = self.bests if name in FROM_RECORDS else self.every
            if drawn.inputs.get(name) == inputs and (folder / name).exists():
                shown[name] = folder / name
                continue
            if outdated is not None and outdated(name):
                raise Outdated(name)
            drawn.inputs.pop(name, None)
            try:
                with drawing():  # the whole figure: pyplot's state is shared with the recorder's thread
                    made = self.makers[name](folder / name)
            except LeftOut as why:
                shown[name] = f"- {name}: left out: {why}"
                continue
            except Exception as error:  # noqa: BLE001 - a plot that cannot be drawn yet is a note, not a failure
                plt.close("all")
                shown[name] = f"- {name}: not drawn ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                continue
            if made is None:
                shown[name] = f"- {name}: not drawn (no complete trial yet)"
            else:
                shown[name] = made
                drawn.inputs[name] = inputs
        return shown


def draw_best_trials_plots(
    study: optuna.Study, folder: str | Path, sources: MlflowSources | None, drawn: DrawnPlots, outdated: Callable[[str], bool] | None = None
) -> bool:
    """Only the plots of the best trials' MLflow records (FROM_RECORDS), kept in `drawn`, no
    report written: a sweep draws them while its last trials run, so that the report after the
    last trial draws them again only if one of those trials beats them. False (nothing drawn)
    while a best trial's run has not ended: its curves are not whole yet. (Without MLflow's
    records the curves are the study's, whole: drawn at once, not looked for again.)"""
    study = checked_study(study)
    plots = _Plots(study, sources, drawn, Allowed())
    if plots.bests_running:
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots.draw(folder, drawn, outdated, names=FROM_RECORDS)
    return True


def write_report(
    study: optuna.Study,
    folder: str | Path,
    sources: MlflowSources | None = None,
    allowed: Allowed = Allowed(),
    drawn: DrawnPlots | None = None,
    outdated: Callable[[str], bool] | None = None,
) -> Report:
    """Write the sweep's comparison into `folder` (see the module doc); return what was written.
    Without `sources` (MLflow off or unreadable) the curves come from the study alone. With
    `drawn`, a plot whose inputs are those it was last drawn from is kept as it is. `outdated`
    is asked before each plot is drawn, with its name: True gives the report up there (Outdated),
    leaving report.md as it was and `drawn` saying which plots were drawn."""
    study = checked_study(study)  # a study given by any caller is read through the boundary
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = drawn if drawn is not None else DrawnPlots()
    every_plot = _Plots(study, sources, drawn, allowed)
    trials, objective, direction, others = every_plot.trials, every_plot.objective, every_plot.direction, every_plot.others
    by_strategy = summarize(trials, "strategy", objective, direction) if len(trials) else pd.DataFrame()
    by_shape = summarize(trials, "shape", objective, direction) if len(trials) else pd.DataFrame()
    files = [folder / "trials.csv", folder / "by_strategy.csv", folder / "by_shape.csv"]
    trials.to_csv(files[0], index=False)
    by_strategy.to_csv(files[1], index=False)
    by_shape.to_csv(files[2], index=False)

    shown = every_plot.draw(folder, drawn, outdated)
    plots = [shown[name] for name in every_plot.makers if isinstance(shown.get(name), Path)]
    notes = [shown[name] for name in every_plot.makers if isinstance(shown.get(name), str)]

    summary = _summary_markdown(study, trials, by_strategy, by_shape, objective, direction, others, read_verdict(folder))
    markdown = _report_markdown(study, summary, trials, plots, notes, objective, direction)
    files += [*plots, folder / "report.md"]
    files[-1].write_text(markdown)
    return Report(folder, trials, by_strategy, by_shape, summary, markdown, files, objective, direction)


def _summary_markdown(
    study: optuna.Study,
    trials: pd.DataFrame,
    by_strategy: pd.DataFrame,
    by_shape: pd.DataFrame,
    objective: str,
    direction: str,
    others: list[tuple[str, str]],
    verdict: str | None = None,
) -> str:
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    compared = recorded_compare(study.user_attrs)
    lines = [f"**Verdict** (`sweeper verdict`): {verdict}", ""] if verdict else []
    if compared:
        lines += [
            f"Compare mode: each {compared.get('param')} ({', '.join(compared.get('arms') or [])}) was tuned by its own "
            f"sampler on an equal share of the trials; `best_so_far.png` shows whether each arm's tuning levelled off.",
            "",
        ]
    lines += [
        f"**{len(trials)} trials**: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed. Objective: {objective} ({direction}); best and median over complete trials.",
        "",
    ]
    if others:
        lines += [f"Several objectives: the comparison uses the first ({objective}); the others are in trials.csv.", ""]
    complete = trials[trials["state"] == "complete"] if len(trials) else trials
    if len(complete):
        best = complete.sort_values(objective, ascending=direction != "maximize").iloc[0]
        lines += [f"Best: {describe_trial(best, objective)}", ""]
    lines += _anchor_markdown(study, trials)
    if len(by_strategy):
        lines += ["### By slice strategy (lr across layer groups)", "", markdown_table(by_strategy), ""]
    if len(by_shape):
        lines += ["### By cycle shape (lr over time)", "", markdown_table(by_shape), ""]
    return "\n".join(lines)


def _anchor_markdown(study: optuna.Study, trials: pd.DataFrame) -> list[str]:
    """The head-lr ranges lr_find set (search.lr.high=auto), and what lr_find cost next to the trials."""
    try:
        record = recorded_anchor(study.user_attrs)
        return _anchor_lines(record, trials) if record is not None else []
    except (ConfigError, AttributeError, IndexError, KeyError, TypeError, ValueError):  # a record is untrusted input
        return ["lr_find's record in the study cannot be read (damaged, or not sweeper's); its ranges are left out.", ""]


def _anchor_lines(record: Mapping, trials: pd.DataFrame) -> list[str]:
    rows = []
    for strategy, found in record.get("strategies", {}).items():
        span = found.get("range")
        rows.append({
            "strategy": strategy,
            **{name: f"{lr:.3g}" for name, lr in found.get("suggestions", {}).items()},
            "lr.high range": f"[{span[0]:.3g}, {span[1]:.3g})" if span else f"fallback: {found.get('reason', '')}",
        })  # fmt: skip
    trained = float(trials["seconds"].sum(skipna=True)) if len(trials) else 0.0
    seconds = float(record.get("seconds", math.nan))
    return [
        "### Head lr ranges, anchored on lr_find (search.lr.high=auto)",
        "",
        f"lr_find ran once, before the first trial: {seconds:.1f} s, next to {trained:.1f} s of trials "
        f"({len(trials)}, summed over workers); lr_find was {seconds / max(seconds + trained, 1e-9):.0%} of the compute.",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
    ]


def _report_markdown(
    study: optuna.Study,
    summary: str,
    trials: pd.DataFrame,
    plots: list[Path],
    notes: list[str],
    objective: str,
    direction: str,
) -> str:
    lines = [f"# Sweep {study.study_name}", "", summary]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if notes:
        lines += ["", *notes]
    if len(trials):
        shown = trials.sort_values(objective, ascending=direction != "maximize", na_position="last").head(TRIALS_SHOWN)
        # The lr params here; each shape's own settings are in trials.csv.
        columns = [c for c in shown.columns if not c.startswith("param:") or c.startswith("param:lr.")]
        columns = [c for c in columns if c not in ("overrides", "reason")]
        lines += ["", f"## Trials (best {len(shown)} of {len(trials)}; all in trials.csv)", "", markdown_table(shown[columns])]
    verdict = shlex.join(["sweeper", "verdict", "--seeds", "5", study.study_name])
    # what the verdict swaps in and holds equal: the setting the sweep compared (sweeper.analysis.verdict)
    compared = recorded_compare(study.user_attrs).get("param")
    swapped, held = ("shape", "the same slice and lrs") if compared == "shape" else ("strategy", "the same head lr")
    lines += [
        "",
        "## What these comparisons hold equal",
        "",
        "- The tables by strategy and by shape, `distribution.png` and `best_curves.png` compare trials that",
        "  differ in more than the strategy (or shape): each also drew its own shape, lrs and settings. A gap",
        "  there is confounded: it may come from the other settings, not from the slice.",
        "- Each strategy's best was picked on one seed, and the best of many noisy draws is optimistic.",
        f"- `{verdict}` gives the one answer: each arm's best config trained again on the same fresh seeds",
        f"  (paired), and at each arm's best settings every other {swapped} swapped in, all else equal",
        f"  ({held}): effect sizes with 95% intervals, Holm-corrected, in words (verdict.md).",
        "",
    ]
    return "\n".join(lines)


def finish_sweep(tracking: SweepTracking, study: optuna.Study, status: str = "FINISHED", drawn: DrawnPlots | None = None) -> Path:
    """At the sweep's end: write the comparison report, attach it to the sweep's run and end that
    run (`status`: FINISHED, or KILLED for a sweep stopped early). Returns the folder. `drawn`:
    the plots a report written while the trials ran drew already."""
    report = write_report(study, sweep_folder(tracking, tracking.sweep), report_sources(tracking), drawn=drawn)
    tracking.attach_report(report, status)
    return report.folder
