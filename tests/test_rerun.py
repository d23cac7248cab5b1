"""Exact reruns: what a recorded config imports and may import, the curve comparison, and
bitwise-equal reruns of real trainings on CPU (from an MLflow run and from a `sweeper train`
folder). Payloads that try to run code are in test_rerun_security.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from sweeper.analysis.rerun import compare_curves, load_source, rerun
from sweeper.boundary.recorded_config import Allowed, Import, check_config, find_imports
from sweeper.config import ConfigError
from sweeper.records.mlflow_store import read_curves, tracking_settings
from sweeper.records.recorder import record_run

# A small real training: digits, one epoch, on CPU, deterministic.
QUICK = ["train.epochs=2", "train.device=cpu", "train.deterministic=true", "train.batch_size=128", "train.threads=1"]


def recorded(**changes) -> dict:
    """A recorded config; `model__net___target_="x"` sets model.net._target_."""
    config = OmegaConf.create(
        {
            "model": {"net": {"_target_": "sweeper.zoo.models.MLP", "hidden": [8]}, "groups": ["body.0", "head"]},
            "data": {"source": {"_target_": "sweeper.zoo.data.digits"}},
            "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
            "shape": {"_target_": "sweeper.schedules.shapes.FastaiOneCycle"},
            "sweep": {"trainer": "sweeper.training.engine"},
        }
    )
    for dotted, value in changes.items():
        OmegaConf.update(config, dotted.replace("__", "."), value, force_add=True)
    return OmegaConf.to_container(config)


def test_every_imported_name_is_found():
    config = recorded(
        shape___target_="sweeper.schedules.shapes.FunctionShape",
        shape__fn="mypkg.shapes.sqrt",
        model__groups="mypkg.split",
        data__extra=[{"_target_": "x.y.Z"}],
    )
    config["sampler"] = {"_target_": "optuna.samplers.TPESampler"}  # the sweep's: checked too, though a rerun builds none
    assert find_imports(config) == [
        Import("model.net._target_", "sweeper.zoo.models.MLP"),
        Import("model.groups", "mypkg.split"),
        Import("data.source._target_", "sweeper.zoo.data.digits"),
        Import("data.extra[0]._target_", "x.y.Z"),
        Import("optimizer._target_", "torch.optim.AdamW"),
        Import("shape._target_", "sweeper.schedules.shapes.FunctionShape"),
        Import("shape.fn", "mypkg.shapes.sqrt", function=True),
        Import("sweep.trainer", "sweeper.training.engine"),
        Import("sampler._target_", "optuna.samplers.TPESampler"),
    ]
    # Layer-group prefixes and a shape's other settings name no code.
    assert [i.setting for i in find_imports(recorded(shape__fn="mypkg.shapes.sqrt"))] == [
        "model.net._target_",
        "data.source._target_",
        "optimizer._target_",
        "shape._target_",
        "sweep.trainer",
    ]


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"model__net___target_": "os.system"}, "model.net._target_=os.system"),
        ({"optimizer___target_": "builtins.eval"}, "optimizer._target_=builtins.eval"),
        ({"data__source___target_": "torch.hub.load"}, "data.source._target_=torch.hub.load"),  # in torch, but it fetches and runs code
        (
            {"data__source___target_": "sweeper.zoo.models.os.system"},
            "data.source._target_=sweeper.zoo.models.os.system",
        ),  # os.system to Hydra
        ({"shape___target_": "sweeper.schedules.shapes.FunctionShape", "shape__fn": "subprocess.call"}, "shape.fn=subprocess.call"),
        ({"sweep__trainer": "helpers.trainers.StandInTrainer"}, "sweep.trainer=helpers.trainers.StandInTrainer"),
        ({"sweep__trainer": "antigravity"}, "sweep.trainer=antigravity"),  # no dot: imported as a module
        ({"model__net___target_": "sweeperx.evil"}, "model.net._target_=sweeperx.evil"),  # a prefix of a name is not its module
    ],
)
def test_a_disallowed_import_is_refused(changes, refused):
    with pytest.raises(ConfigError, match=rf"{refused}\b.*Nothing was run"):
        check_config(recorded(**changes), Allowed())


def test_a_module_the_user_allows_is_accepted():
    config = recorded(model__net___target_="mypkg.nets.Tiny")
    with pytest.raises(ConfigError, match="--allow-module MODULE"):  # typed by the user, never the record's name
        check_config(config, Allowed())
    assert Import("model.net._target_", "mypkg.nets.Tiny") in check_config(config, Allowed(("mypkg",)))


def test_a_refused_rerun_runs_nothing(tracked_config, tmp_path, monkeypatch):
    folder = tmp_path / "source"
    folder.mkdir()
    OmegaConf.save(OmegaConf.create(recorded(model__net___target_="os.system")), folder / "config.yaml")
    import sweeper.analysis.rerun

    monkeypatch.setattr(sweeper.analysis.rerun, "load_trainer", lambda cfg: pytest.fail("a refused config reached the trainer"))
    with pytest.raises(ConfigError, match="os.system"):
        rerun(load_source(str(folder), tracked_config()), tracked_config(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compare_curves_reports_the_largest_difference_and_missing_steps():
    same = compare_curves({"loss": [(0, 1.0), (1, 0.5)]}, {"loss": [(0, 1.0), (1, 0.5)]})
    assert same.exact and same.max_abs_diff == 0
    moved = compare_curves({"loss": [(0, 1.0), (1, 0.5)], "lr_0": [(0, 1e-3)]}, {"loss": [(0, 1.0), (1, 0.25)], "lr_0": [(0, 1e-3)]})
    assert not moved.exact and moved.max_abs_diff == 0.25
    short = compare_curves({"loss": [(0, 1.0), (1, 0.5)]}, {"loss": [(0, 1.0)]})
    assert math.isinf(short.max_abs_diff) and short.notes == ["loss: recorded 2 values, the rerun 1"]
    nan = compare_curves({"loss": [(0, math.nan)]}, {"loss": [(0, math.nan)]})
    assert nan.exact  # a diverged value reproduced is reproduced


def test_an_unknown_run_id_is_a_clear_error(trial_config):
    def tracked_config(*overrides: str):  # the embedded store in tmp_path/results, not made yet
        return trial_config("tracking=local", *overrides)

    with pytest.raises(ConfigError, match="there is no MLflow store at"):  # and none is made
        load_source("deadbeef", tracked_config())
    assert not Path(tracking_settings(tracked_config()).uri.removeprefix("sqlite:///")).exists()
    record_run(tracked_config())  # a store, without that run
    with pytest.raises(ConfigError, match="no MLflow run 'deadbeef'"):
        load_source("deadbeef", tracked_config())
    with pytest.raises(ConfigError, match="tracking is off"):
        load_source("deadbeef", tracked_config("tracking=none"))


def test_a_rerun_of_an_mlflow_run_is_bitwise_equal_on_cpu(tracked_config, tmp_path):
    trainer = pytest.importorskip("sweeper.training.trainer")
    cfg = tracked_config(*QUICK, "lr=geometric", "shape=torch_one_cycle")
    source_reporter = record_run(cfg)
    trainer.train(cfg, [source_reporter])

    outcome = rerun(load_source(source_reporter.run_id, cfg), cfg, tmp_path / "rerun")
    assert outcome.result.status == "finished"
    assert outcome.comparison.exact and outcome.comparison.max_abs_diff == 0.0
    assert {"loss", "lr_0", "momentum", "valid_loss", "objective"} <= set(outcome.comparison.table["metric"])

    # The new run is in the store, tagged with its source, and its recorded curves are the same.
    settings = source_reporter.settings
    run = MlflowClient(settings.uri).get_run(outcome.run_id)
    assert run.data.tags["sweeper.rerun_of"] == source_reporter.run_id and run.data.tags["rerun_exact"] == "true"
    assert read_curves(settings, outcome.run_id, run.data.metrics) == read_curves(settings, source_reporter.run_id, run.data.metrics)


@pytest.mark.slow
def test_sweeper_rerun_of_a_train_folder_is_exact_and_refuses_foreign_code(sweeper_cli, tmp_path):
    pytest.importorskip("sweeper.training.trainer")
    trained = sweeper_cli("train", "--name", "source", "--quiet", *QUICK, "tracking=none")
    assert trained.returncode == 0, trained.stderr[-2000:]
    again = sweeper_cli("rerun", "--strict", "--name", "again", "results/train/source", "tracking=none")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "model.net._target_: sweeper.zoo.models.MLP" in again.stdout  # listed before it ran
    assert "(bitwise equal)" in again.stdout
    assert (tmp_path / "results" / "reruns" / "again" / "result.json").is_file()

    config = tmp_path / "results" / "train" / "source" / "config.yaml"
    config.write_text(config.read_text().replace("sweeper.zoo.models.MLP", "mypkg.models.MLP"))
    refused = sweeper_cli("rerun", "results/train/source", "tracking=none")
    assert refused.returncode == 2 and "model.net._target_=mypkg.models.MLP" in refused.stderr
    assert "--allow-module MODULE" in refused.stderr


# Names as runs recorded them before sweeper's modules moved into packages (sweeper.boundary.renamed).
OLD_NAMES = {
    "sweeper.zoo.models.": "sweeper.models.",
    "sweeper.zoo.data.": "sweeper.data.",
    "sweeper.zoo.tasks.": "sweeper.tasks.",
    "sweeper.schedules.shapes.": "sweeper.shapes.",
    "sweeper.training.engine": "sweeper.trainer",
}


@pytest.mark.slow
def test_a_run_recorded_with_the_names_before_the_move_reruns_bitwise(sweeper_cli, tmp_path):
    pytest.importorskip("sweeper.training.trainer")
    trained = sweeper_cli("train", "--name", "before", "--quiet", *QUICK, "tracking=none")
    assert trained.returncode == 0, trained.stderr[-2000:]
    config = tmp_path / "results" / "train" / "before" / "config.yaml"
    text = config.read_text()
    for new, old in OLD_NAMES.items():
        text = text.replace(new, old)
    assert "sweeper.models.MLP" in text and "sweeper.shapes." in text and "sweeper.zoo" not in text  # as recorded then
    config.write_text(text)

    again = sweeper_cli("rerun", "--strict", "--name", "after", "results/train/before", "tracking=none")
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "model.net._target_: sweeper.zoo.models.MLP" in again.stdout  # checked under today's name
    assert "(bitwise equal)" in again.stdout


@pytest.mark.parametrize(
    ("recorded_name", "now"),
    [
        ("sweeper.models.MLP", "sweeper.zoo.models.MLP"),
        ("sweeper.text.sequence_classifier", "sweeper.zoo.transformers.sequence_classifier"),
        ("sweeper.trainer", "sweeper.training.engine"),
        ("sweeper.shapes.linear_decay", "sweeper.schedules.shapes.linear_decay"),
        ("sweeper.models.os.system", "sweeper.models.os.system"),  # only a whole moved module maps
        ("mypkg.models.MLP", "mypkg.models.MLP"),
        (7, 7),
    ],
)
def test_old_names_map_to_todays_and_nothing_else_does(recorded_name, now):
    from sweeper.boundary.renamed import current_name

    assert current_name(recorded_name) == now
