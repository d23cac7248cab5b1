"""The MLflow UI, opened for real: Chromium (Debian's, through Playwright) on a real `mlflow
server` over a small recorded sweep finds the sweep's run and, expanded, its trial runs.
A screenshot is kept at results/browser/mlflow-experiment.png.

Needs /usr/bin/chromium (scripts/install_browser.sh installs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.played import feed_trial
from helpers.processes import with_tests_on_path
from helpers.servers import free_port
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from sweeper.analysis.report import finish_sweep
from sweeper.records.run_record import plain_config
from sweeper.records.tracking import prepare_sweep

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
SCREENSHOT = Path(__file__).resolve().parents[1] / "results" / "browser" / "mlflow-experiment.png"
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
        result = feed_trial(tracking.trial_reporter(number, trial_cfg), plain_config(trial_cfg), seed=number)
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
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    return env


UI_SCREENSHOT = Path(__file__).resolve().parents[1] / "results" / "ui" / "sweep-by-strategy.png"


def test_sweeper_ui_opens_the_trials_grouped_by_strategy_as_charts(tmp_path, monkeypatch):
    """`sweeper ui NAME` over a real sweep's embedded store: the link it prints opens, in
    Chromium, the sweep's trials grouped by strategy in the chart view, with a validation curve."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    env = sweeper_env()
    sweep = [
        sys.executable, "-m", "sweeper.cli", "sweep", "search=slices", "sweep.trainer=helpers.trainers.StandInTrainer",
        "sweep.n_trials=6", "train.epochs=3", "sweep.live=false", "sweep.workers=2", "sweep.cpu_threads=1",
        "sampler.seed=0", "pruner=none", "sweep.name=ui-sweep",
    ]  # fmt: skip
    done = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "ui", "ui-sweep", "--port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        first = ui.stdout.readline()  # printed once the server answers (pytest's timeout bounds the wait)
        assert first.startswith("sweep ui-sweep in MLflow: http://127.0.0.1:"), first + ui.stderr.read()
        link = first.split(": ", 1)[1].strip()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 950})
                page.goto(link, wait_until="domcontentloaded")
                for strategy in STRATEGIES:  # one group per strategy, with its trials
                    page.get_by_text(f"Group: {strategy}", exact=True).first.wait_for(timeout=60_000)
                page.get_by_text("6 matching runs").first.wait_for(timeout=30_000)  # the trials alone
                # The chart view, with the validation curve of each group.
                page.get_by_text("valid_accuracy", exact=True).first.wait_for(timeout=30_000)
                page.get_by_text("single (valid_accuracy)").first.wait_for(timeout=30_000)
                UI_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(UI_SCREENSHOT))
            finally:
                browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # as Ctrl-C: the command stops its server
        ui.wait(30)
    assert UI_SCREENSHOT.stat().st_size > 10_000
    assert ui.returncode == 130  # stopped by Ctrl-C, as a shell reports it


def test_a_shapes_sweep_minimizing_loss_is_grouped_by_shape_without_its_pruned_trials(tmp_path):
    """After a shapes comparison that minimizes the loss, with pruning: `sweeper ui` groups the
    trials by shape, and pruned trials (their partial scores) are in no group."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    env = sweeper_env()
    sweep = [
        sys.executable, "-m", "sweeper.cli", "sweep", "search=shapes", "sweep.trainer=helpers.trainers.StandInTrainer",
        "search.shape={constant: {}, triangular: {warmup_pct: 'interval(0.1, 0.6)'}}",
        "train.objective=loss", "train.direction=minimize", "sweep.n_trials=8", "train.epochs=3", "sweep.live=false",
        "sweep.workers=1", "sampler.seed=0", "pruner=median", "pruner.n_startup_trials=1", "pruner.n_warmup_steps=0",
        "sweep.name=ui-shapes",
    ]  # fmt: skip
    done = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="ui-shapes", storage=f"sqlite:///{tmp_path}/results/studies.db")
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert 0 < complete < 8  # some were pruned, within their own shape's arm

    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "ui", "ui-shapes", "--port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        link = ui.stdout.readline().split(": ", 1)[1].strip()
        assert "grouped by shape" in ui.stdout.readline()
        assert "the sweep's run" in ui.stdout.readline()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 950})
                page.goto(link, wait_until="domcontentloaded")
                for shape in ("constant", "triangular"):
                    page.get_by_text(f"Group: {shape}", exact=True).first.wait_for(timeout=60_000)
                page.get_by_text(f"{complete} matching runs").first.wait_for(timeout=30_000)  # no pruned run among them
                page.screenshot(path=str(UI_SCREENSHOT.with_name("shapes-minimize-by-shape.png")))
            finally:
                browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(30)
