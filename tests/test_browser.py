"""The MLflow UI, opened for real: Chromium (Debian's, through Playwright) on a real `mlflow
server`. Over a small recorded sweep it finds the sweep's run and, expanded, its trial runs; on
the page `sweeper ui` links to, after a maximize and a minimize compare-mode sweep (recorded once,
in-process, for every check), each promise of the view is read off the rendered page.

Screenshots go to results/browser/ (git-ignored): a test run changes no tracked file.
scripts/ui_screenshots.sh runs these tests with SWEEPER_SCREENSHOTS=results/ui, which refreshes
the README's pictures. Needs /usr/bin/chromium (scripts/install_browser.sh installs it)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import optuna
import pytest
from helpers.played import feed_trial
from helpers.processes import with_tests_on_path
from helpers.servers import free_port
from helpers.trainers import StandInTrainer
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from sweeper.analysis.report import finish_sweep
from sweeper.cli import main
from sweeper.commands.sweeping import _begin
from sweeper.records.run_record import plain_config
from sweeper.records.tracking import prepare_sweep
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.workers import run_worker
from sweeper.trial.events import Reporter, StepEvent

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("SWEEPER_SCREENSHOTS") or ROOT / "results" / "browser")  # results/* is git-ignored
SCREENSHOT = SCREENSHOTS / "mlflow-experiment.png"
STRATEGIES = ["single", "fastai", "geometric"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: run scripts/install_browser.sh"),
]


def recorded_sweep(cfg, name: str):
    """A finished three-trial sweep: one trial per strategy, recorded and reported."""
    tracking = prepare_sweep(cfg, name)
    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    for number, strategy in enumerate(STRATEGIES):
        trial_cfg = cfg.copy()
        trial_cfg.lr = {"strategy": strategy, "low": 1e-5, "high": 1e-3}
        result = feed_trial(tracking.trial_reporter(trial_cfg, trial_number=number), plain_config(trial_cfg), seed=number)
        distributions = {"strategy": CategoricalDistribution(STRATEGIES)}
        study.add_trial(create_trial(params={"strategy": strategy}, distributions=distributions, value=result.objective))
    finish_sweep(tracking, study)
    return tracking


def test_the_mlflow_ui_shows_the_sweep_and_its_trial_runs(tracked_config, mlflow_server, monkeypatch):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    tracking = recorded_sweep(tracked_config("tracking=server"), "ui-sweep")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(f"{mlflow_server.url}/#/experiments/{tracking.experiment_id}/runs", wait_until="domcontentloaded")
            sweep_row = page.locator("[role=row]", has_text="ui-sweep").first
            sweep_row.wait_for(timeout=60_000)  # the sweep's run, its trials folded under it
            sweep_row.locator("button[data-component-id*='runnamecellrenderer']").click()
            for number in range(len(STRATEGIES)):
                # Named by what differs: "trial 0 · single · ...".
                page.get_by_text(f"trial {number} · {STRATEGIES[number]}").first.wait_for(timeout=30_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000  # a real page, not a blank one


def sweeper_env() -> dict[str, str]:
    """The environment of a `sweeper` command here: the stand-in trainer importable, no servers named."""
    env = {**os.environ, "PYTHONPATH": with_tests_on_path()}
    for variable in SERVER_VARIABLES:
        env.pop(variable, None)
    return env


SERVER_VARIABLES = ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH")


class WithSteps(Reporter):
    """Passes the stand-in trainer's events on, with the batches it leaves out (an lr, a momentum
    and a loss per step): the step curves a real trainer records, which the view orders after the
    objective's chart."""

    BATCHES = 3

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def on_start(self, event) -> None:
        self.inner.on_start(event)

    def on_epoch(self, event):
        for batch in range(self.BATCHES):
            step = event.epoch * self.BATCHES + batch
            self.inner.on_step(StepEvent(step, event.epoch, "train", (1e-3 / (step + 1),), 0.9, 1.0 / (step + 1)))
        return self.inner.on_epoch(event)

    def on_end(self, result) -> None:
        self.inner.on_end(result)


def record_sweep(results: Path, name: str, *overrides: str) -> optuna.Study:
    """A compare-mode sweep of the stand-in trainer, run here by one worker (seeded: the same
    trials every time), recorded to MLflow under `results` and reported, as `sweeper sweep` does."""
    plan = plan_sweep(
        [f"results_dir={results}", "sweep.trainer=helpers.trainers.StandInTrainer", "sampler.seed=0", "train.epochs=4",
         "tracking.schedule_plot=false", "sweep.poll=0.1", f"sweep.name={name}", *overrides],
    )  # fmt: skip
    plan, records, study, _ = _begin(plan, results / "sweeps" / name, [], fresh=False)
    run_worker(plan, train=lambda cfg, reporters: StandInTrainer.train(cfg, [WithSteps(r) for r in reporters]))
    finish_sweep(records, study, "FINISHED")
    return study


# The two sweeps the page is checked on: the default search (12 trials, the 3 strategies compared,
# accuracy maximized, median pruning) with a search.params setting beside the lrs, and a shapes
# comparison that minimizes the loss.
SWEEPS = {
    "maximize": ("ui-strategies", ["search.params={optimizer.weight_decay: 'tag(log, interval(1e-4, 1e-1))'}"]),
    "minimize": (
        "ui-shapes",
        [
            "search=shapes", "search.shape={constant: {}, triangular: {warmup_pct: 'interval(0.1, 0.6)'}}",
            "train.objective=loss", "train.direction=minimize", "sweep.n_trials=8",
        ],
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Both sweeps in one results folder (one store), and the verdict on the shapes (2 arms: 8 runs)."""
    folder = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as patch:
        for variable in SERVER_VARIABLES:
            patch.delenv(variable, raising=False)
        patch.chdir(folder)
        studies = {direction: record_sweep(folder / "results", name, *overrides) for direction, (name, overrides) in SWEEPS.items()}
        name = SWEEPS["minimize"][0]
        with redirect_stdout(io.StringIO()):
            assert main(["verdict", name, "--seeds", "2", "--allow-module", "helpers"]) == 0
    verdict = json.loads((folder / "results" / "sweeps" / name / "verdict.json").read_text())["answer"]
    return folder, studies, verdict


def complete_by_arm(study: optuna.Study, param: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Each arm's complete trials, best first in the study's direction; the arms by their mean, best first."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    arms: dict[str, list] = {}
    for trial in sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=maximize):
        arms.setdefault(trial.params[param], []).append(trial)
    return dict(sorted(arms.items(), key=lambda item: statistics.mean(t.value for t in item[1]), reverse=maximize))


def check_view(page, study: optuna.Study, compared: str) -> None:
    """Each promise of `sweeper ui`'s view, read off the page it opens (the chart view)."""
    arms = complete_by_arm(study, compared)
    pruned = {t.params[compared]: [] for t in study.trials if t.state == TrialState.PRUNED}
    for trial in study.trials:
        if trial.state == TrialState.PRUNED:
            pruned[trial.params[compared]].append(trial.number)
    groups = page.locator("text=/^Group: /")
    groups.first.wait_for(timeout=60_000)
    page.get_by_text(f"{len(study.trials) + 1} matching runs").first.wait_for(timeout=30_000)  # the trials and the sweep's run
    shown = groups.all_inner_texts()
    # Best first: the complete trials of each arm, by their mean in the sweep's direction, then the
    # pruned trials, each arm's in a group of their own (so in no other group's mean).
    assert shown[: len(arms)] == [f"Group: {compared}: {arm}, status: finished" for arm in arms]
    assert sorted(shown[len(arms) : len(arms) + len(pruned)]) == sorted(f"Group: {compared}: {arm}, status: pruned" for arm in pruned)
    for numbers in pruned.values():
        for number in numbers:  # visible as pruned, where the name column cuts it short
            assert page.get_by_text(f"trial {number} · pruned · ").count() == 1
    # The charts: the objective first, then the sampled settings in parallel, before the losses and lrs.
    page.get_by_text("Parallel Coordinates").first.wait_for(timeout=30_000)
    titles = [text.split("\n", 1)[0] for text in page.locator("[data-testid=experiment-view-compare-runs-card]").all_inner_texts()]
    head = ["objective", "Parallel Coordinates", *dict.fromkeys([f"valid_{OBJECTIVES[compared]}", "valid_loss"]), "train_loss"]
    assert titles[: len(head)] == head, titles
    assert titles[len(head)] in ("loss", "lr_0", "momentum"), titles  # the step curves after them (the UI draws the rest on scrolling)
    parallel = page.locator("[data-testid=experiment-view-compare-runs-card]", has_text="Parallel Coordinates")
    axes = [line for line in parallel.inner_text().splitlines()[2:] if not _number(line)]
    assert axes == [*SAMPLED[compared], "objective"], axes  # the drawn settings alone, not ~50 config keys


OBJECTIVES = {"strategy": "accuracy", "shape": "loss"}
SAMPLED = {"strategy": ["lr.high", "optimi..._decay"], "shape": ["lr.high", "lr.low"]}  # as the chart writes its axes (lr.low: geometric)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def for_the_picture(page) -> None:
    """Room to read the groups' names: MLflow's assistant panel closed, the run list widened."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
    handle = page.locator("[handleaxis=e]")  # the run list's resize handle
    if handle.count():
        box = handle.first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + 200, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()


def check_means(page, link: str, study: optuna.Study, compared: str) -> None:
    """The table view of the same link: each arm's group row holds the mean of its complete trials."""
    page.goto(link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"), wait_until="domcontentloaded")
    for arm, trials in complete_by_arm(study, compared).items():
        name = page.locator("[role=row]", has_text=f"Group: {compared}: {arm}, status: finished").first
        name.wait_for(timeout=60_000)
        # The grid draws a row's pinned name and its other columns as two elements of one row-index.
        row = page.locator(f"[role=row][row-index='{name.get_attribute('row-index')}']")
        numbers = [float(text) for text in " ".join(row.all_inner_texts()).split() if _number(text)]
        assert statistics.mean(t.value for t in trials) == pytest.approx(numbers[1], rel=1e-6), numbers  # after the count


def check_sweep_run(page, name: str, leads: str) -> None:
    """The sweep's own run is a row of the page; its page's description leads with `leads`."""
    page.locator("[role=row] a", has_text=re.compile(f"^{name}$")).first.click()  # not the experiment's link
    page.get_by_text(leads).first.wait_for(timeout=60_000)


@pytest.mark.timeout(600)  # the first also records both sweeps and the verdict (100 s on a loaded 2-core machine)
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_sweeper_ui_shows_each_arm_best_first_without_its_pruned_trials(recorded, direction):
    """`sweeper ui NAME`, then in Chromium from the link it prints: the trials grouped by the
    compared setting, best group first in the sweep's direction; pruned trials listed by name as
    pruned, hidden, and out of their group's mean; the objective's chart first, then a
    parallel-coordinates chart of the sampled settings alone; the sweep's own run a click away,
    its description leading with the verdict."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    folder, studies, verdict = recorded
    name, study = SWEEPS[direction][0], studies[direction]
    compared = study.user_attrs["compare"]["param"]
    assert compared == ("strategy" if direction == "maximize" else "shape")
    # Compare mode prunes within each arm (n_startup_trials capped at half an arm's share).
    assert any(t.state == TrialState.PRUNED for t in study.trials)

    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "ui", name, "--port", str(free_port())],
        cwd=folder, env=sweeper_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        first = ui.stdout.readline()  # printed once the server answers (pytest's timeout bounds the wait)
        assert first.startswith(f"sweep {name} in MLflow: http://127.0.0.1:"), first + ui.stderr.read()
        link = first.split(": ", 1)[1].strip()
        assert f"complete trials grouped by {compared}, best first" in ui.stdout.readline()
        assert "the sweep's run" in ui.stdout.readline()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 950})
                page.goto(link, wait_until="domcontentloaded")
                check_view(page, study, compared)
                for_the_picture(page)
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / PICTURES[direction]))
                # The sweep's run, its report leading its description (and the verdict, once given).
                check_sweep_run(page, name, verdict[:40] if direction == "minimize" else f"Compare mode: each {compared}")
                page.screenshot(path=str(SCREENSHOTS / f"{name}-sweep-run.png"))
                check_means(page, link, study, compared)
            finally:
                browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # as Ctrl-C: the command stops its server
        ui.wait(30)
    assert ui.returncode == 130  # stopped by Ctrl-C, as a shell reports it


PICTURES = {"maximize": "sweep-by-strategy.png", "minimize": "shapes-minimize-by-shape.png"}
