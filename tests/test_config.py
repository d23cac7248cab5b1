"""The config tree: every option of every group composes, and users can add their own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeper.config import ConfigError, build_shape, compose_config, config_dir, instantiate_node
from sweeper.schedules.slices import SliceError

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir())
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((config_dir() / group).glob("*.yaml"))]

# Configs that read a URL from the environment compose with these set (as a user would).
# Options that need the user's own values (marked ??? in them) compose with these given.
REQUIRED = {
    ("data", "tensors"): ["data.shape=[4]", "data.num_classes=2"],
    ("data", "image_folder"): ["data.num_classes=2"],
}
ENVIRONMENT = {
    "SWEEPER_STORAGE_URL": "postgresql://sweeper:secret@127.0.0.1:5432/sweeper",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
}


def test_the_tree_has_the_groups_the_root_config_lists():
    root = OmegaConf.load(config_dir() / "config.yaml")
    listed = {next(iter(item)) for item in root.defaults if isinstance(item, dict)}
    assert listed <= set(GROUPS), listed - set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, monkeypatch):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config([f"{group}={option}", *REQUIRED.get((group, option), [])])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["train"]["epochs"] >= 1
    if group == "shape":
        shape = build_shape(cfg.shape)
        assert shape.name == option or option == "fastai_fine_tune", (option, shape.name)


def test_default_config_is_a_runnable_slice_and_shape():
    cfg = compose_config()
    assert cfg.lr.strategy in ("single", "fastai", "geometric", "explicit")
    assert build_shape(cfg.shape).name == "fastai_one_cycle"


def test_user_config_dir_adds_options_beside_ours(tmp_path, monkeypatch):
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape" / "gentle.yaml").write_text("_target_: sweeper.schedules.shapes.Triangular\nwarmup_pct: 0.1\n")
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "wide.yaml").write_text("strategy: geometric\nlow: 1e-6\nhigh: 1e-2\n")
    cfg = compose_config(["shape=gentle", "lr=wide"], config_dirs=[tmp_path])
    assert build_shape(cfg.shape).warmup_pct == 0.1  # new options of theirs, in our groups
    assert cfg.lr.low == 1e-6
    assert compose_config(["shape=triangular"], config_dirs=[tmp_path]).shape.warmup_pct == 0.5  # ours remain
    monkeypatch.setenv("SWEEPER_CONFIG_PATH", str(tmp_path))
    assert compose_config(["shape=gentle"]).shape.warmup_pct == 0.1  # the same from the environment


def test_a_mistyped_key_in_a_config_file_is_refused_with_the_closest(tmp_path):
    # an experiment overlay changes settings others define: a typo there would silently do nothing
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("# @package _global_\ntrain:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"^train\.epoch: no such setting; did you mean train\.epochs\?$"):
        compose_config(["experiment=typo"], [tmp_path])


def test_user_options_bring_their_own_keys_and_targets_take_new_arguments(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text(
        "name: wide\nwidth: 512\nnet:\n  _target_: sweeper.zoo.models.MLP\n  in_shape: ${data.shape}\n"
        "  num_classes: ${data.outputs}\n  hidden: ['${model.width}']\ngroups: [body.0, head]\n"
    )
    cfg = compose_config(["model=wide", "model.width=64", "+model.net.bias=false", "+task.metrics.top1._target_=x.y"], [tmp_path])
    assert cfg.model.width == 64  # a key the user's option defines is a setting
    assert cfg.model.net.bias is False  # a node that builds something takes new arguments of its target
    assert cfg.task.metrics.top1._target_ == "x.y"  # the task's metrics are a table of the user's names
    with pytest.raises(ConfigError, match=r"^model\.widht: no such setting; did you mean model\.width\?$"):
        compose_config(["model=wide", "+model.widht=64"], [tmp_path])


def test_missing_user_config_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        compose_config([], config_dirs=[tmp_path / "nope"])


# What the shell hands over: `lr='slice(1e-5,1e-3)'` arrives as lr=slice(1e-5,1e-3), and
# "lr='slice(1e-5, 1e-3)'" as a string Hydra quotes; both mean the same.
@pytest.mark.parametrize(
    ("override", "lr"),
    [
        ("lr=1e-3", {"strategy": "single", "high": 1e-3}),
        ("lr=2", {"strategy": "single", "high": 2.0}),
        ("lr='3e-4'", {"strategy": "single", "high": 3e-4}),
        ("lr=slice(1e-3)", {"strategy": "fastai", "high": 1e-3}),
        ("lr=slice(None, 1e-3)", {"strategy": "fastai", "high": 1e-3}),
        ("lr=slice(0,1e-3)", {"strategy": "fastai", "high": 1e-3}),  # fastai reads a falsy start as slice(hi)
        ("lr=slice(1e-5,1e-3)", {"strategy": "geometric", "low": 1e-5, "high": 1e-3}),
        ("lr='slice(1e-5, 1e-3)'", {"strategy": "geometric", "low": 1e-5, "high": 1e-3}),
        ("lr=[1e-5,1e-4,1e-3]", {"strategy": "explicit", "values": [1e-5, 1e-4, 1e-3]}),
        ("lr='[1e-5, 1e-4, 1e-3]'", {"strategy": "explicit", "values": [1e-5, 1e-4, 1e-3]}),
        ("lr=fastai", {"strategy": "fastai", "high": 1e-2}),  # an option of the group, as before
    ],
)
def test_lr_typed_the_fastai_way_sets_the_lr_group(override, lr):
    assert OmegaConf.to_container(compose_config([override]).lr) == lr


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["lr=slice(1,2,3)"], r"lr: slice\(1.0, 2.0, 3.0\) has three arguments"),
        (["lr=-1"], "lr: -1 is not a usable learning rate"),
        (["lr=nan"], "lr: nan is not a usable learning rate"),
        (["lr=true"], "lr: True is not a learning rate"),
        (["lr=slice(1e-3, 1e-5)"], "low > high"),
        (["lr=[1e-3, abc]"], "lr\\[1\\]: 'abc' is not a number"),
        (["lr=1e-3x"], "lr: '1e-3x' is not a learning rate; write a number"),
        (["lr=abc"], "lr=abc: there is no such option.*Or give the lr itself: lr=1e-3"),
        (["lr=1e-3", "lr.high=1e-2"], "lr: 'lr=1e-3' sets the whole slice, and lr.high=1e-2 sets it again"),
    ],
)
def test_an_lr_that_cannot_be_read_names_lr_and_the_fix(overrides, fragment):
    with pytest.raises((ConfigError, SliceError), match=fragment):
        compose_config(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["search=shapes", "search.shape={constant:{}}"],
        ["search.shape={constant: {}}", "search=shapes"],  # Hydra picks groups before it sets values
        ["search.shape={constant: {}}"],
    ],
)
def test_a_mapping_for_a_search_node_replaces_it(overrides):
    # Hydra would merge it into the default mapping and keep every shape there.
    assert OmegaConf.to_container(compose_config(overrides).search.shape) == {"constant": {}}


def test_search_lr_given_whole_or_by_its_strategies_replaces_them():
    assert list(compose_config(["search.lr.strategies=[fastai]"]).search.lr.strategies) == ["fastai"]
    lr = compose_config(["search.lr={strategies: [fastai, single]}"]).search.lr
    assert OmegaConf.to_container(lr) == {"strategies": ["fastai", "single"]}  # high and low_ratio gone too


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("~train.nope", "~train.nope: there is no such setting to delete; check its spelling."),
        (
            "~train.seed=5",
            "~train.seed=5: train.seed holds 0, not 5, so nothing was deleted; write ~train.seed to delete it whatever it holds.",
        ),
    ],
)
def test_a_delete_that_cannot_apply_says_why(override, message):
    with pytest.raises(ConfigError) as refused:
        compose_config([override])
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: tabbed\nnet:\n\t_target_: x\n", "broken.yaml, line 3, column 1: .*never tabs: replace the tab"),
        ("name: [broken\n", "broken.yaml, line 2, column 1: .*fix the YAML there"),
    ],
)
def test_a_config_file_that_is_not_yaml_is_one_line_naming_it(tmp_path, text, fragment):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "broken.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"--config-dir: {tmp_path}/model/{fragment}"):
        compose_config(["model=broken"], config_dirs=[tmp_path])


def test_a_string_where_the_target_takes_a_number_is_refused_before_it_is_built():
    cfg = compose_config(["optimizer.weight_decay=abc"])
    with pytest.raises(ConfigError, match="optimizer.weight_decay: 'abc' is not a number.*optimizer.weight_decay=0.01"):
        instantiate_node(cfg.optimizer, "optimizer")
    assert callable(instantiate_node(compose_config(["optimizer.weight_decay=0"]).optimizer, "optimizer"))


@pytest.mark.parametrize(
    ("node", "fragment"),
    [
        ({"pct_start": 0.3}, "no _target_"),
        ({"_target_": "sweeper.schedules.shapes.NoSuchShape"}, "cannot import"),
        ({"_target_": "sweeper.schedules.shapes.Constant", "pct_start": 0.3}, "does not take"),
        ({"_target_": "builtins.dict"}, "not a shape"),
    ],
)
def test_bad_shape_node_is_a_clear_error(node, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_shape(node)


def test_configs_ship_inside_the_wheel_and_are_found_there(tmp_path):
    root = Path(__file__).parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, root],
        check=True,
    )
    wheel = next(tmp_path.glob("sweeper-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "sweeper/conf/config.yaml" in archive.namelist()
        # the kept schemas of new MLflow stores (sweeper/records/mlflow_schema.py)
        kept = sorted(f"sweeper/records/mlflow_schemas/{path.name}" for path in (root / "sweeper/records/mlflow_schemas").glob("*.sql"))
        assert kept and set(kept) <= set(archive.namelist())
        archive.extractall(tmp_path / "site")
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sweeper.config import config_dir, compose_config; "
            "print(config_dir()); print(compose_config(['shape=constant']).shape._target_)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [str(tmp_path / "site" / "sweeper" / "conf"), "sweeper.schedules.shapes.Constant"]
