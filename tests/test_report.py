"""The comparison report and the multi-seed confirmation, on a study made here with the names
the sweep uses (params `lr`, `lr.high`, `lr.low_ratio`, `shape`, `<shape>.<setting>`; trial user
attrs `overrides`, `status`, `reason`)."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from helpers.played import feed_trial
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from sweeper.analysis.confirm import confirm_strategies
from sweeper.analysis.report import finish_sweep, summarize, trials_table, write_report
from sweeper.analysis.which_sweep import split_sweep_name
from sweeper.config import ConfigError
from sweeper.records.run_record import plain_config
from sweeper.records.tracking import prepare_sweep, sweep_folder
from sweeper.trial.events import TrialResult

STRATEGIES = ["single", "fastai", "geometric"]
SHAPES = ["fastai_one_cycle", "constant"]
DISTRIBUTIONS = {
    "strategy": CategoricalDistribution(STRATEGIES),
    "lr.high": FloatDistribution(3e-4, 3e-2, log=True),
    "lr.low_ratio": FloatDistribution(1e-3, 0.5, log=True),
    "shape": CategoricalDistribution(SHAPES),
    "fastai_one_cycle.pct_start": FloatDistribution(0.1, 0.5),
}
# number: (strategy, shape, state, accuracy)
TRIALS = [
    ("single", "fastai_one_cycle", TrialState.COMPLETE, 0.80),
    ("fastai", "constant", TrialState.COMPLETE, 0.85),
    ("geometric", "fastai_one_cycle", TrialState.COMPLETE, 0.90),
    ("geometric", "constant", TrialState.COMPLETE, 0.70),
    ("single", "constant", TrialState.PRUNED, None),
    ("fastai", "fastai_one_cycle", TrialState.FAIL, None),
    ("single", "fastai_one_cycle", TrialState.COMPLETE, 0.82),
]


def sweep_trial(strategy: str, shape: str, state: TrialState, value: float | None) -> optuna.trial.FrozenTrial:
    params = {"strategy": strategy, "lr.high": 3e-3, "shape": shape}
    overrides = ["train.epochs=2", f"lr={strategy}", "lr.high=0.003"]
    if strategy == "geometric":
        params["lr.low_ratio"] = 0.01
        overrides.append("lr.low=3e-05")
    overrides.append(f"shape={shape}")
    if shape == "fastai_one_cycle":
        params["fastai_one_cycle.pct_start"] = 0.3
        overrides.append("shape.pct_start=0.3")
    status = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]
    attrs = {"overrides": overrides, "status": status}
    if state == TrialState.FAIL:
        attrs["reason"] = "RuntimeError: out of memory"
    curve = {1: 0.3} if state == TrialState.PRUNED else {1: value - 0.1, 2: value} if value else {}
    return create_trial(
        params=params,
        distributions={name: DISTRIBUTIONS[name] for name in params},
        value=value,
        intermediate_values=curve,
        user_attrs=attrs,
        state=state,
    )


@pytest.fixture
def study() -> optuna.Study:
    study = optuna.create_study(study_name="demo", direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    study.set_user_attr("overrides", ["train.epochs=2"])
    for spec in TRIALS:
        study.add_trial(sweep_trial(*spec))
    return study


def test_trials_table_has_one_row_per_trial_with_strategy_shape_and_state(study):
    table = trials_table(study)
    assert list(table["trial"]) == list(range(len(TRIALS)))
    assert list(table["strategy"]) == [t[0] for t in TRIALS]
    assert list(table["shape"]) == [t[1] for t in TRIALS]
    assert list(table["state"]) == ["complete"] * 4 + ["pruned", "failed", "complete"]
    assert table.loc[5, "reason"] == "RuntimeError: out of memory"
    assert table.loc[2, "param:lr.low_ratio"] == 0.01 and math.isnan(table.loc[0, "param:lr.low_ratio"])
    assert table.loc[2, "overrides"].startswith("train.epochs=2 lr=geometric")


def test_summary_per_strategy_counts_and_ranks(study):
    summary = summarize(trials_table(study), "strategy", "accuracy", "maximize").set_index("strategy")
    assert list(summary.index) == ["geometric", "fastai", "single"]  # best first
    assert summary.loc["geometric", ["trials", "complete", "pruned", "failed"]].tolist() == [2, 2, 0, 0]
    assert summary.loc["single", ["trials", "complete", "pruned", "failed"]].tolist() == [3, 2, 1, 0]
    assert summary.loc["fastai", "failed"] == 1
    assert summary.loc["geometric", "best"] == 0.90 and summary.loc["geometric", "median"] == pytest.approx(0.80)
    assert summary.loc["single", "median"] == pytest.approx(0.81)  # complete trials only
    assert summary.loc["geometric", "best_trial"] == 2
    by_shape = summarize(trials_table(study), "shape", "accuracy", "maximize").set_index("shape")
    assert by_shape.loc["constant", "pruned"] == 1 and by_shape.loc["fastai_one_cycle", "best"] == 0.90


def test_minimizing_ranks_the_lowest_first(study):
    table = trials_table(study)
    summary = summarize(table, "strategy", "accuracy", "minimize")
    assert summary.loc[0, "strategy"] == "geometric" and summary.loc[0, "best"] == 0.70


def test_a_strategy_not_drawn_comes_from_the_overrides_or_the_base_config():
    study = optuna.create_study(study_name="shapes-only", direction="maximize")
    study.set_user_attr("overrides", ["lr=fastai"])
    trial = create_trial(
        params={"shape": "constant"},
        distributions={"shape": DISTRIBUTIONS["shape"]},
        value=0.5,
        user_attrs={"overrides": ["lr=single", "shape=constant"]},
    )
    study.add_trial(trial)
    study.add_trial(create_trial(params={"shape": "constant"}, distributions={"shape": DISTRIBUTIONS["shape"]}, value=0.4))
    table = trials_table(study)
    assert list(table["strategy"]) == ["single", "fastai"]  # its override; else the sweep's base config


def test_write_report_writes_tables_plots_and_markdown(study, tmp_path):
    report = write_report(study, tmp_path / "demo")
    names = {p.name for p in report.files}
    assert {"trials.csv", "by_strategy.csv", "by_shape.csv", "report.md"} <= names
    assert {"best_curves.png", "schedules.png", "best_so_far.png", "parallel_coordinate.png"} <= names
    assert all(p.stat().st_size > 0 for p in report.files)
    assert len(pd.read_csv(tmp_path / "demo" / "trials.csv")) == len(TRIALS)
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert "### By slice strategy" in markdown and "| geometric | 2 | 2 | 0 | 0 | 0.9 | 0.8 | 2 |" in markdown
    assert "Best: trial 2 (accuracy 0.9, geometric, fastai_one_cycle)" in markdown
    assert "![schedules](schedules.png)" in markdown and "sweeper verdict" in markdown
    # too few complete trials for an importance that means something: left out, and why
    assert "importance.png" not in names
    assert f"- importance.png: left out: {sum(t.state == TrialState.COMPLETE for t in study.trials)} complete trials" in markdown


@pytest.fixture
def drawn_figures(monkeypatch) -> list:
    """The figures the report saves, kept open to be read back (as drawn, before the file)."""
    from sweeper.analysis import report

    figures = []

    def keep(figure, path, margins=None):
        figures.append(figure)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def test_parallel_coordinates_keep_the_losing_trials_visible(study, tmp_path, drawn_figures):
    from sweeper.analysis.report import plot_optuna

    plot_optuna(study, "parallel_coordinate", "accuracy", tmp_path / "parallel_coordinate.png")
    (figure,) = drawn_figures
    lines = [c for c in figure.axes[0].collections if c.get_array() is not None]
    assert lines, "no trial lines drawn"
    for collection in lines:
        collection.update_scalarmappable()
        # Optuna's Blues draws the worst trial in near-white (0.97, 0.98, 1.0) on white: every line
        # must stand apart from the background by a clear margin in some channel
        for r, g, b, _ in collection.get_colors():
            assert min(r, g, b) < 0.8, (r, g, b)


def test_distributions_draw_every_complete_trial_as_a_point(study, tmp_path, drawn_figures):
    from sweeper.analysis.report import plot_distributions

    table = trials_table(study)
    plot_distributions(table, "accuracy", tmp_path / "distribution.png")
    (figure,) = drawn_figures
    complete = table[table["state"] == "complete"]
    for axis, by in zip(figure.axes, ("strategy", "shape")):
        points = [line for line in axis.get_lines() if line.get_marker() == "o"]
        drawn = {label.get_text(): sorted(line.get_ydata()) for label, line in zip(axis.get_xticklabels(), points)}
        expected = {name: sorted(group["accuracy"]) for name, group in complete.groupby(by)}
        assert drawn == expected, by  # each group's points are its complete trials' values


def test_the_report_words_what_the_verdict_holds_equal_for_the_compared_setting(study, tmp_path):
    write_report(study, tmp_path / "strategies")
    assert "every other strategy swapped in" in (tmp_path / "strategies" / "report.md").read_text()
    study.set_user_attr("compare", {"param": "shape", "arms": SHAPES})
    markdown = write_report(study, tmp_path / "shapes").folder.joinpath("report.md").read_text()
    assert "every other shape swapped in, all else equal" in markdown and "(the same slice and lrs)" in markdown
    assert "strategy swapped in" not in markdown and "same head lr" not in markdown


def test_a_report_written_again_redraws_only_the_plots_a_new_trial_changes(study, tmp_path):
    """As a sweep's report is written while its trials run: a trial that beats no strategy's best
    changes the trials' plots, not the best trials' curves and schedules; a new best does."""
    from sweeper.analysis.report import DrawnPlots

    drawn = DrawnPlots()
    write_report(study, tmp_path / "demo", drawn=drawn)
    folder = tmp_path / "demo"
    names = ("best_curves.png", "schedules.png", "best_so_far.png", "distribution.png")
    for name in names:
        (folder / name).write_bytes(b"as drawn before")  # what a redrawing would replace
    study.add_trial(sweep_trial("fastai", "constant", TrialState.COMPLETE, 0.60))  # no strategy's best
    again = write_report(study, folder, drawn=drawn)
    kept = {name for name in names if (folder / name).read_bytes() == b"as drawn before"}
    assert kept == {"best_curves.png", "schedules.png"}
    assert {folder / name for name in names} <= set(again.files)  # listed, and shown, all the same
    study.add_trial(sweep_trial("fastai", "constant", TrialState.COMPLETE, 0.95))  # fastai's new best
    last = write_report(study, folder, drawn=drawn)
    assert all((folder / name).read_bytes() != b"as drawn before" for name in names)
    assert last.markdown == write_report(study, tmp_path / "fresh").markdown  # the report one written afresh is


def test_a_report_found_outdated_between_two_plots_is_given_up_and_the_next_draws_the_rest(study, tmp_path):
    """The report a sweep writes while its trials run is given up as soon as the sweep has all its
    trials: report.md stays as it was, and the report written then draws only the plots left."""
    from sweeper.analysis.report import DrawnPlots, Outdated

    folder, drawn = tmp_path / "demo", DrawnPlots()
    write_report(study, folder, drawn=drawn)
    before = (folder / "report.md").read_text()
    plots = sorted(folder.glob("*.png"))
    for plot in plots:
        plot.write_bytes(b"old")
    study.add_trial(sweep_trial("fastai", "constant", TrialState.COMPLETE, 0.95))  # a new best: every plot changes
    asked = []

    def outdated_after_one_plot(plot: str) -> bool:
        asked.append(True)
        return len(asked) > 1

    with pytest.raises(Outdated):
        write_report(study, folder, drawn=drawn, outdated=outdated_after_one_plot)
    assert (folder / "report.md").read_text() == before
    (redrawn,) = [plot for plot in plots if plot.read_bytes() != b"old"]  # drawn before it was given up
    redrawn.write_bytes(b"new")
    last = write_report(study, folder, drawn=drawn)
    assert redrawn.read_bytes() == b"new"  # kept: its inputs have not changed since
    assert all(plot.read_bytes() not in (b"old", b"new") for plot in plots if plot != redrawn)
    assert last.markdown == write_report(study, tmp_path / "fresh").markdown


def test_the_curves_of_an_ended_run_are_read_once_across_reports(study, tmp_path):
    from sweeper.analysis.report import DrawnPlots
    from sweeper.records.trial_runs import MlflowSources

    reads = []

    def read_curve(run_id: str, key: str) -> list[tuple[int, float]]:
        reads.append((run_id, key))
        return [(0, 1e-3), (1, 1e-4)] if key in ("loss", "lr_0") else []

    numbers = [trial.number for trial in study.trials]
    ended = MlflowSources({n: f"run-{n}" for n in numbers}, read_curve, frozenset(numbers))
    running = MlflowSources({n: f"run-{n}" for n in numbers}, read_curve, frozenset())
    drawn = DrawnPlots()
    write_report(study, tmp_path / "a", running, drawn=drawn)
    assert reads and not drawn.curves  # running runs' curves may still grow: read again
    reads.clear()
    write_report(study, tmp_path / "b", ended, drawn=DrawnPlots(curves=drawn.curves))
    first = list(reads)
    reads.clear()
    write_report(study, tmp_path / "c", ended, drawn=DrawnPlots(curves=drawn.curves))
    assert first and not reads  # the same plots again, not a curve read from MLflow


def test_the_best_trials_plots_drawn_while_the_last_trials_run_are_kept_unless_those_beat_them(study, tmp_path):
    """In a sweep's tail (every trial left is running) only the best trials' curves and
    schedules are drawn, nothing else written; the report after the last trial keeps them
    unless the last trial beats them, and then reads as one written afresh."""
    from sweeper.analysis.report import FROM_RECORDS, DrawnPlots, draw_best_trials_plots
    from sweeper.records.trial_runs import MlflowSources

    def read_curve(run_id: str, key: str) -> list[tuple[int, float]]:
        return [(0, 1e-3), (1, 1e-4)] if key in ("loss", "lr_0") else []

    def sources(ended: bool) -> MlflowSources:
        numbers = [trial.number for trial in study.trials]
        return MlflowSources({n: f"run-{n}" for n in numbers}, read_curve, frozenset(numbers if ended else ()))

    folder, drawn = tmp_path / "demo", DrawnPlots()
    assert not draw_best_trials_plots(study, folder, sources(ended=False), drawn)  # the best runs' curves may still grow
    assert not drawn.inputs and not folder.exists()
    assert draw_best_trials_plots(study, folder, sources(ended=True), drawn)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FROM_RECORDS) == sorted(drawn.inputs)  # no report, no table
    for name in FROM_RECORDS:
        (folder / name).write_bytes(b"drawn in the tail")
    study.add_trial(sweep_trial("fastai", "constant", TrialState.COMPLETE, 0.60))  # the last trial beats no best
    last = write_report(study, folder, sources(ended=True), drawn=drawn)
    assert all((folder / name).read_bytes() == b"drawn in the tail" for name in FROM_RECORDS)
    assert {folder / name for name in FROM_RECORDS} <= set(last.files)
    study.add_trial(sweep_trial("fastai", "constant", TrialState.COMPLETE, 0.95))  # a last trial that beats fastai's best
    last = write_report(study, folder, sources(ended=True), drawn=drawn)
    assert all((folder / name).read_bytes() != b"drawn in the tail" for name in FROM_RECORDS)
    assert last.markdown == write_report(study, tmp_path / "fresh", sources(ended=True)).markdown


def test_the_best_trials_plots_without_mlflow_records_are_drawn_at_once(study, tmp_path):
    """MLflow off or unreadable: the curves are the study's, whole once the trials finished, so
    the sweep's tail draws them once instead of looking for ended runs every tenth of a second."""
    from sweeper.analysis.report import FROM_RECORDS, DrawnPlots, draw_best_trials_plots

    drawn = DrawnPlots()
    assert draw_best_trials_plots(study, tmp_path / "demo", None, drawn)
    assert sorted(drawn.inputs) == sorted(FROM_RECORDS)


def test_every_plot_is_made_and_laid_out_holding_the_drawing_lock(study, tmp_path, monkeypatch):
    """The sweep's process draws in two threads (the recorder's schedule plots, the report), and
    matplotlib is not thread-safe: its text layout (two at once broke its mathtext parser), and
    pyplot's figures and style (Optuna's plots change the style while they are made). So no
    figure is made and no text laid out, by any of the plots, while another thread could take
    the drawing lock."""
    import threading

    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from sweeper.records.run_plot import schedule_png_as_run
    from sweeper.schedules import plots
    from sweeper.trial.events import StepEvent

    held: dict[str, list[bool]] = {"figure": [], "text": []}

    def others_kept_out() -> bool:
        taken = []

        def try_to_take() -> None:
            taken.append(plots._DRAWING.acquire(blocking=False))
            if taken[0]:
                plots._DRAWING.release()

        other = threading.Thread(target=try_to_take)
        other.start()
        other.join()
        return not taken[0]

    def watch(cls, method, kind):
        original = getattr(cls, method)

        def watched(self, *args, **kwargs):
            held[kind].append(others_kept_out())
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, watched)

    watch(Figure, "__init__", "figure")
    watch(Text, "_get_layout", "text")
    steps = [StepEvent(s, 0, "train", (1e-4 * (s + 1), 1e-3 * (s + 1)), 0.9, 1.0) for s in range(8)]
    schedule_png_as_run(TrialResult("finished", 0.9, "accuracy", steps=steps))
    report = write_report(study, tmp_path / "demo")
    assert "not drawn" not in report.markdown
    assert len(held["figure"]) >= 5 and len(held["text"]) > 20
    assert all(held["figure"]) and all(held["text"])


def test_an_empty_sweep_still_gets_a_report(tmp_path):
    study = optuna.create_study(study_name="empty", direction="minimize")
    report = write_report(study, tmp_path / "empty")
    assert "0 trials" in report.markdown and "not drawn" in report.markdown


def test_finish_attaches_the_report_to_the_sweep_run_with_mlflow_curves(study, tracked_config):
    cfg = tracked_config("train.epochs=2")
    tracking = prepare_sweep(cfg, "demo")
    for number, (_, _, state, _) in enumerate(TRIALS):
        if state == TrialState.COMPLETE:
            feed_trial(tracking.trial_reporter(cfg, trial_number=number), plain_config(cfg), seed=number)
    folder = finish_sweep(tracking, study)
    assert folder == sweep_folder(cfg, "demo")

    table = pd.read_csv(folder / "trials.csv")
    complete = table[table["state"] == "complete"]
    assert complete["mlflow_run_id"].notna().all()  # joined by the runs' trial tags
    client = MlflowClient(tracking.settings.uri)
    parent = client.get_run(tracking.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "By slice strategy" in parent.data.tags["mlflow.note.content"]  # the run's description
    attached = {a.path for a in client.list_artifacts(tracking.parent_run_id, "report")}
    assert {"report/report.md", "report/trials.csv", "report/best_curves.png"} <= attached


def fake_train(cfg, reporters=()) -> TrialResult:
    """Accuracy set by the strategy, plus seed noise of at most 0.009 (its own per strategy)."""
    base, shift = {"single": (0.80, 5), "fastai": (0.85, 3), "geometric": (0.90, 0)}[cfg.lr.strategy]
    accuracy = base + ((cfg.train.seed * 7 + shift) % 10) / 1000
    result = TrialResult("finished", accuracy, "accuracy")
    for reporter in reporters:
        reporter.on_end(result)
    return result


def test_confirm_reruns_each_strategy_with_fresh_seeds_and_judges_the_gap(study, tmp_path):
    confirmation = confirm_strategies(study, fake_train, seeds=3, folder=tmp_path)
    runs = confirmation.runs
    assert sorted(runs["strategy"].unique()) == sorted(STRATEGIES)
    assert sorted(runs[runs["strategy"] == "geometric"]["seed"]) == [1, 2, 3]  # fresh: the sweep used seed 0
    assert set(runs[runs["strategy"] == "geometric"]["trial"]) == {2}  # the strategy's best trial
    summary = confirmation.summary.set_index("strategy")
    assert list(summary.index) == ["geometric", "fastai", "single"]
    assert summary.loc["geometric", "mean"] == pytest.approx(0.90 + (7 + 4 + 1) / 3000)
    assert summary.loc["fastai", "p_vs_leader"] < 0.05  # a gap of 0.05 against noise of 0.01
    assert "geometric** leads" in confirmation.verdict and "likely real" in confirmation.verdict
    markdown = (tmp_path / "confirm.md").read_text()
    assert markdown.startswith("# Confirmation of sweep demo")
    # the sweep's trials share their seed, so every strategy ran seeds 1-3: compared seed by seed
    assert "same seeds" in markdown and "paired t-test" in markdown
    geometric, fastai = (runs[runs["strategy"] == s].set_index("seed")["accuracy"] for s in ("geometric", "fastai"))
    assert summary.loc["fastai", "p_vs_leader"] == pytest.approx(stats.ttest_rel(geometric, fastai.loc[geometric.index]).pvalue)


def test_confirm_records_its_runs_under_the_sweep_run(study, tracked_config, tmp_path):
    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "demo")
    confirmation = confirm_strategies(study, fake_train, seeds=2, folder=tmp_path, tracking=tracking, strategies=["fastai"])
    client = MlflowClient(tracking.settings.uri)
    for run_id in confirmation.runs["mlflow_run_id"]:
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.parentRunId"] == tracking.parent_run_id and tags["sweeper.kind"] == "confirm"


def test_confirm_needs_two_seeds_and_known_strategies(study, tmp_path):
    with pytest.raises(ConfigError, match="--seeds: 1"):
        confirm_strategies(study, fake_train, seeds=1, folder=tmp_path)
    with pytest.raises(ConfigError, match="--strategy: \\['explicit'\\]"):
        confirm_strategies(study, fake_train, seeds=2, folder=tmp_path, strategies=["explicit"])


def test_the_sweep_name_is_the_word_without_an_equals_sign():
    assert split_sweep_name(["mlp-digits", "storage=postgres"]) == ("mlp-digits", ["storage=postgres"])
    assert split_sweep_name(["train.epochs=2"]) == (None, ["train.epochs=2"])
    with pytest.raises(ConfigError, match="several names"):
        split_sweep_name(["a", "b"])


def test_margins_set_the_room_around_and_between_a_row_of_axes_in_inches():
    import matplotlib.pyplot as plt

    from sweeper.schedules.plots import Margins

    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    Margins(left=0.8, right=0.5, top=0.4, bottom=0.75, between=0.9).apply(figure)
    boxes = [axis.get_position() for axis in axes]  # figure fractions
    plt.close(figure)
    assert boxes[0].x0 * 12 == pytest.approx(0.8) and (1 - boxes[-1].x1) * 12 == pytest.approx(0.5)
    assert boxes[0].y0 * 4 == pytest.approx(0.75) and (1 - boxes[0].y1) * 4 == pytest.approx(0.4)
    assert all((right.x0 - left.x1) * 12 == pytest.approx(0.9) for left, right in zip(boxes, boxes[1:]))


def test_a_planned_schedule_that_the_boundary_refuses_is_composed_once(monkeypatch):
    """The report written again as trials finish keeps a refusal (a trainer not allowed) as it
    keeps a schedule: the best trial's config is not composed again for every drawing."""
    from sweeper.analysis import report

    composed = []

    def refused(overrides, config_dirs, allowed):
        composed.append(overrides)
        raise ConfigError("the recorded config names code that sweeper does not allow: sweep.trainer=mine.Trainer")

    monkeypatch.setattr(report, "trial_config", refused)
    overrides = ["sweep.trainer=mine.Trainer", "lr=fastai", "lr.high=0.0123"]
    for _ in range(3):
        with pytest.raises(ConfigError, match="does not allow: sweep.trainer=mine.Trainer"):
            report._planned_schedule(overrides)
    assert len(composed) == 1
