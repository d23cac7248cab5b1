"""The MLflow recorder, fed events directly and read back with MLflow's own client."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from helpers.played import feed_trial
from helpers.servers import free_port
from mlflow import MlflowClient

from sweeper.config import ConfigError
from sweeper.records.recorder import MlflowRecorder, record_run
from sweeper.records.run_record import plain_config, result_curves
from sweeper.records.sender import wait_for_records
from sweeper.records.tracking import prepare_sweep, trial_reporter
from sweeper.trial.events import Reporter

SECRET = "hunter2"


def children_of(client: MlflowClient, tracking) -> dict[int, object]:
    runs = client.search_runs([tracking.experiment_id], f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'")
    return {int(run.data.tags["trial"]): run for run in runs}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_trials_are_nested_runs_with_params_tags_every_curve_and_artifacts(tracked_config):
    cfg = tracked_config("lr=geometric", "lr.low=1e-5", "lr.high=1e-3", "shape=torch_one_cycle")
    tracking = prepare_sweep(cfg, "nest")
    results = {}
    for number, status in [(0, "finished"), (1, "pruned")]:
        reporter = tracking.trial_reporter(
            cfg, trial_number=number, overrides=["lr=geometric", "lr.high=0.001"], extra_tags={"worker": "w0"}
        )
        results[number] = feed_trial(reporter, plain_config(cfg), status=status, seed=number)

    wait_for_records()  # each run's schedule.png is drawn and sent after its end, in the background
    client = MlflowClient(tracking.settings.uri)
    parent = client.get_run(tracking.parent_run_id)
    assert parent.data.tags["sweeper.kind"] == "sweep" and parent.data.tags["sweep"] == "nest"
    assert parent.data.params["sampler._target_"] == "optuna.samplers.TPESampler"  # the sweep's settings
    children = children_of(client, tracking)
    assert sorted(children) == [0, 1]  # both trials nested under the sweep's run

    run = children[0]
    params, tags = run.data.params, run.data.tags
    assert params["strategy"] == "geometric" and params["shape"] == "torch_one_cycle"
    assert params["lr.low"] == "1e-05" and params["lr.high"] == "0.001"
    assert [params[f"peak_lr_{g}"] for g in range(3)] == [repr(p) for p in (1e-5, 1e-4, 1e-3)]
    assert params["shape.pct_start"] == "0.3" and params["model"] == "mlp" and params["seed"] == "0"
    assert tags["strategy"] == "geometric" and tags["shape"] == "torch_one_cycle" and tags["device"] == "cpu"
    assert tags["trial"] == "0" and tags["worker"] == "w0" and tags["code_version"]
    assert tags["overrides"] == "lr=geometric lr.high=0.001"
    assert tags["status"] == "finished" and tags["pruned"] == "false" and run.info.status == "FINISHED"
    assert run.info.run_name == "trial 0 · geometric · torch_one_cycle · 0.001"  # named by what differs
    pruned = children[1]
    # Pruned on purpose, not a crash: FINISHED, and its name and tags say pruned.
    assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "true"
    assert pruned.info.run_name == "trial 1 · pruned · geometric · torch_one_cycle · 0.001"  # cut short, "pruned" still shows

    # Every step and epoch value, at its step, exactly as the trainer reported it.
    for number, child in children.items():
        expected = result_curves(results[number])
        assert set(child.data.metrics) == set(expected)
        for key, curve in expected.items():
            assert history(client, child.info.run_id, key) == curve, key
    assert len(history(client, run.info.run_id, "lr_2")) == 10  # 2 epochs x 5 batches
    assert len(history(client, run.info.run_id, "valid_accuracy")) == 2

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "environment.json", "schedule.png"} <= artifacts
    environment = json.loads(open(client.download_artifacts(run.info.run_id, "environment.json")).read())
    assert environment["git"]["commit"] and "mlflow" in environment["packages"]


def test_the_schedule_plot_can_be_left_out_and_the_schedule_is_still_recorded(tracked_config):
    cfg = tracked_config("tracking.schedule_plot=false")
    tracking = prepare_sweep(cfg, "no-plot")
    result = feed_trial(tracking.trial_reporter(cfg, trial_number=0), plain_config(cfg))
    client = MlflowClient(tracking.settings.uri)
    (run,) = children_of(client, tracking).values()
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "environment.json"}
    assert history(client, run.info.run_id, "lr_0") == result_curves(result)["lr_0"]  # every step's lr


def test_a_worker_finds_the_sweep_run_by_itself(tracked_config):
    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "joined")
    # A worker process has only its config and the sweep's name.
    reporter = trial_reporter(cfg, study_name="joined", trial_number=4)
    feed_trial(reporter, plain_config(cfg))
    client = MlflowClient(tracking.settings.uri)
    assert client.get_run(reporter.run_id).data.tags["mlflow.parentRunId"] == tracking.parent_run_id


def test_steps_go_in_batches_of_at_most_1000_never_one_call_per_step(tracked_config, monkeypatch):
    cfg = tracked_config()
    reporter = record_run(cfg)
    calls = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(len(metrics) + len(params) + len(tags))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    result = feed_trial(reporter, plain_config(cfg), epochs=2, batches=600)  # 1200 steps x 5 metrics
    assert max(calls) <= 1000
    assert len(calls) <= 12  # a handful per epoch, not 1200
    client = MlflowClient(reporter.settings.uri)
    assert len(history(client, reporter.run_id, "loss")) == len(result.steps) == 1200


def test_resuming_a_sweep_finds_its_run_again(tracked_config):
    cfg = tracked_config()
    first = prepare_sweep(cfg, "again")
    client = MlflowClient(first.settings.uri)
    client.set_terminated(first.parent_run_id, "FINISHED")
    second = prepare_sweep(cfg, "again")
    assert second.parent_run_id == first.parent_run_id  # one parent run per sweep, across resumes
    assert client.get_run(second.parent_run_id).info.status == "RUNNING"


def test_train_runs_are_top_level(tracked_config):
    cfg = tracked_config()
    reporter = record_run(cfg, tags={"note": "x"})
    feed_trial(reporter, plain_config(cfg), status="diverged")
    run = MlflowClient(reporter.settings.uri).get_run(reporter.run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["sweeper.kind"] == "train" and run.data.tags["diverged"] == "true"
    assert run.info.status == "FAILED"  # diverged maps to FAILED


def test_a_password_in_a_url_never_reaches_params_tags_or_artifacts(tracked_config):
    url = f"postgresql://sweeper:{SECRET}@db.example.org:5432/sweeps"
    cfg = tracked_config(f"storage.url={url}")
    tracking = prepare_sweep(cfg, "secret")
    reporter = tracking.trial_reporter(cfg, trial_number=0, overrides=[f"storage.url={url}"], extra_tags={"storage": url})
    feed_trial(reporter, plain_config(cfg))

    client = MlflowClient(tracking.settings.uri)
    for run_id in (tracking.parent_run_id, reporter.run_id):
        run = client.get_run(run_id)
        recorded = json.dumps([run.data.params, run.data.tags])
        assert SECRET not in recorded
        assert "sweeper:***@db.example.org" in recorded  # the URL is kept, its password masked
        for artifact in client.list_artifacts(run_id):
            if artifact.path.endswith((".yaml", ".json")):
                assert SECRET not in open(client.download_artifacts(run_id, artifact.path)).read()


def test_an_unreachable_server_is_a_clear_error_at_prepare_time(tracked_config, tmp_path):
    cfg = tracked_config(f"tracking.uri=http://me:{SECRET}@127.0.0.1:{free_port()}")
    started = time.time()
    with pytest.raises(ConfigError, match=r"tracking.uri: cannot reach MLflow at http://me:\*\*\*@") as error:
        prepare_sweep(cfg, "down")
    assert SECRET not in str(error.value)
    assert time.time() - started < 30  # not MLflow's four minutes of retries
    with pytest.raises(ConfigError, match="tracking.uri"):
        record_run(cfg)


@pytest.fixture
def outage(monkeypatch, caplog):
    """A switch that makes every write to the MLflow store fail, as a server that went away."""
    down = {"now": False}
    caplog.set_level(logging.WARNING, logger="sweeper.records.mlflow_store")
    for name in ("create_run", "log_batch"):
        real = getattr(MlflowClient, name)

        def flaky(self, *args, _real=real, **kwargs):
            if down["now"]:
                raise ConnectionError("the tracking server went away")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, flaky)
    return down


class TakeDownAt(Reporter):
    """Takes the store down when epoch `epoch` ends (listed before the recorder: its flush fails)."""

    def __init__(self, down: dict, epoch: int) -> None:
        self.down, self.epoch = down, epoch

    def on_epoch(self, event):
        self.down["now"] = self.down["now"] or event.epoch == self.epoch


@pytest.mark.parametrize("down_at_epoch", [0, -1], ids=["mid-trial", "from-the-start"])
def test_a_store_that_goes_down_loses_nothing_and_warns_once(tracked_config, outage, caplog, down_at_epoch):
    cfg = tracked_config()
    first = record_run(cfg, run_name="first")
    outage["now"] = down_at_epoch < 0
    result = feed_trial([TakeDownAt(outage, down_at_epoch), first], plain_config(cfg), epochs=3)
    assert outage["now"]  # every flush from then on failed, the run's end included; the trial did not
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot be reached" in m for m in messages) == 1  # once, however many flushes failed

    outage["now"] = False
    second = record_run(cfg, run_name="second")
    feed_trial(second, plain_config(cfg))  # its first flush sends what the first run kept
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
    client = MlflowClient(first.settings.uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"  # the end's, sent late
    for key, curve in result_curves(result).items():
        assert history(client, first.run_id, key) == curve, key  # every value once, none lost


@pytest.mark.timeout(120)  # a trial that waited on the held sender would hang here until this
def test_the_trial_never_waits_on_the_store_between_its_start_and_its_end(tracked_config):
    """Steps and epochs only queue; the background sender sends. Held (inside a task that waits
    on an event) from the run's start on, the sender sends nothing, and the trial's epochs still
    go on; released at the last epoch, it sends every value."""
    from sweeper.records.sender import Sender

    cfg = tracked_config()
    reporter = record_run(cfg, run_name="held")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait()

    class HoldTheSender(Reporter):
        """Listed after the recorder, whose on_start waits for its run to be created."""

        def on_start(self, event):
            Sender.submit(hold)

        def on_epoch(self, event):
            if event.epoch == 2:  # three epochs, each flushed by the recorder, while the sender is held
                assert holding.wait(60)
                release.set()  # the recorder's on_end waits for its run's end to be stored

    result = feed_trial([reporter, HoldTheSender()], plain_config(cfg), epochs=3)
    client = MlflowClient(reporter.settings.uri)
    assert client.get_run(reporter.run_id).info.status == "FINISHED"
    for key, curve in result_curves(result).items():
        assert history(client, reporter.run_id, key) == curve, key  # all of it, once the sender was free


def test_tracking_off_is_a_no_op(trial_config, tmp_path):
    cfg = trial_config()  # tracking=none
    tracking = prepare_sweep(cfg, "quiet")
    assert tracking.settings is None and tracking.parent_run_id is None
    for reporter in (
        tracking.trial_reporter(cfg, trial_number=0),
        record_run(cfg),
        trial_reporter(cfg, study_name="quiet", trial_number=0),
    ):
        assert type(reporter) is Reporter
        feed_trial(reporter, plain_config(cfg))
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_a_recorder_never_raises_into_the_trial(tracked_config):
    cfg = tracked_config()
    cfg.lr, cfg.shape._target_ = "not a learning rate", "no.such.Shape"  # odd settings: still recorded
    reporter = record_run(cfg)
    assert isinstance(reporter, MlflowRecorder)
    feed_trial(reporter, plain_config(cfg))
    run = MlflowClient(reporter.settings.uri).get_run(reporter.run_id)
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "unknown"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("tracking.uri", "''", "tracking.uri: empty"),
        ("tracking.request_timeout", "0", "tracking.request_timeout"),
        ("tracking.request_retries", "-1", "tracking.request_retries"),
        ("tracking.enabled", "yes", "tracking.enabled"),
        ("tracking.schedule_plot", "maybe", "tracking.schedule_plot"),
    ],
)
def test_bad_settings_name_the_setting(tracked_config, setting, value, message):
    with pytest.raises(ConfigError, match=message):
        record_run(tracked_config(f"{setting}={value}"))


def test_server_uri_needs_its_variable(tracked_config, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="export MLFLOW_TRACKING_URI"):
        prepare_sweep(tracked_config("tracking=server"), "x")
