"""The rules of single settings are one table (sweeper.config.values), checked wherever a config
enters: composed, set on a composed config (a search space's edges), handed to the trainer, or
read back from a record. Each kind of rule refuses in one line that names the setting and the
fix; no module above config checks a value the table holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import sweeper
from sweeper.boundary.recorded_config import Allowed, checked_config
from sweeper.cli import main
from sweeper.config import ConfigError, check_values, compose_config
from sweeper.config.values import COMPARE, VALUES
from sweeper.sweep.arms import COMPARED

# (overrides, the one line that refuses them): every kind of rule, and bools where a number goes
REFUSED = [
    (["sweep.n_trials=0"], "sweep.n_trials: 0 must be a whole number of trials >= 1, e.g. sweep.n_trials=1."),
    (["sweep.n_trials=true"], "sweep.n_trials: True must be a whole number of trials >= 1, e.g. sweep.n_trials=1."),
    (["train.epochs=false"], "train.epochs: False must be a whole number >= 0, e.g. train.epochs=1."),
    (["sweep.workers=true"], "sweep.workers: True must be auto or a whole number >= 1, e.g. sweep.workers=1."),
    (["sweep.max_failures=0"], "sweep.max_failures: 0 must be a whole number >= 1, or null for sweep.n_trials, e.g. sweep.max_failures=1."),
    (["tracking.request_timeout=0.5"], "tracking.request_timeout: 0.5 must be whole seconds >= 1, e.g. tracking.request_timeout=10."),
    (
        ["storage.heartbeat_interval=0"],
        "storage.heartbeat_interval: 0 must be whole seconds >= 1, or null, e.g. storage.heartbeat_interval=1.",
    ),
    (["sweep.poll=0"], "sweep.poll: 0 must be seconds > 0, e.g. sweep.poll=0.5."),
    (["sweep.timeout=-1"], "sweep.timeout: -1 must be seconds > 0, or null for none, e.g. sweep.timeout=10."),
    (["sweep.timeout=true"], "sweep.timeout: True must be seconds > 0, or null for none, e.g. sweep.timeout=10."),
    (
        ["sweep.checkpoint_every=-1"],
        "sweep.checkpoint_every: -1 must be seconds >= 0 (0: after every epoch), e.g. sweep.checkpoint_every=30.",
    ),
    (["tracking.enabled=yes"], "tracking.enabled: 'yes' must be true or false."),
    (["sweep.allow_changes=1"], "sweep.allow_changes: 1 must be true or false."),
    (["sweep.live=flase"], "sweep.live: 'flase' must be auto, true or false."),
    (
        ["data=digits_transfer", "data.source.train_per_class=true"],
        "data.source.train_per_class: True must be a whole number >= 1, or null, e.g. data.source.train_per_class=1.",
    ),
    (["data.source.val_fraction=1.5"], "data.source.val_fraction: 1.5 must be between 0 and 1, e.g. data.source.val_fraction=0.25."),
    (["tracking.experiment=''"], "tracking.experiment: empty; name the MLflow experiment, e.g. tracking.experiment=digits."),
    (["tracking.save_model=some"], "tracking.save_model: 'some' must be one of ['best', 'all', 'none'], e.g. tracking.save_model=best."),
    (["sweep.compare=arms"], "sweep.compare: 'arms' must be one of ['auto', 'none', 'strategy', 'shape']."),
    (["train.threads=0"], "train.threads: 0 must be a whole number >= 1, e.g. train.threads=1."),
    (
        ["launcher=slurm", "launcher.mem_gb=0"],
        "launcher.mem_gb: 0 must be gigabytes > 0, or null (the partition's default), e.g. launcher.mem_gb=32.",
    ),
    (["launcher=slurm", "launcher.jobs=0"], "launcher.jobs: 0 must be a whole number of worker jobs >= 1, e.g. launcher.jobs=1."),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_a_composed_config_is_refused_with_the_setting_named(overrides, message):
    with pytest.raises(ConfigError) as refused:
        compose_config(overrides)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "overrides",
    [[], ["train.threads=null", "sweep.timeout=null", "sweep.max_failures=null"], ["launcher=slurm"], ["tracking=none", "storage=journal"]],
)
def test_the_defaults_and_null_where_a_rule_allows_it_pass(overrides):
    compose_config(overrides)


def test_a_mistyped_key_is_said_before_a_bad_value():
    with pytest.raises(ConfigError, match=r"^train\.epoch: no such setting; did you mean train\.epochs\?$"):
        compose_config(["+train.epoch=3", "train.batch_size=0"])


def test_settings_the_config_does_not_hold_or_has_not_set_are_left_to_their_readers():
    check_values({"sweep": {"n_trials": 3}})  # no tracking, no launcher: nothing to check there
    check_values(OmegaConf.create({"train": {"epochs": "???", "seed": "${oc.env:SWEEPER_NO_SUCH_VARIABLE}"}}))
    with pytest.raises(ConfigError, match=r"^train\.seed: -1 must be"):
        check_values({"train": {"epochs": "???", "seed": -1}})


def test_a_value_set_on_a_composed_config_is_checked_too():
    """A config of the same group choices is composed once and values are set on its copies."""
    compose_config(["train.batch_size=2"])
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 0 must be a whole number >= 1"):
        compose_config(["train.batch_size=0"])


def test_the_trainer_checks_a_config_built_by_hand(trial_config):
    from sweeper.training.trainer import prepare

    cfg = trial_config()
    cfg.train.sync_every = 0  # set after composing: only the trainer's entry can see it
    with pytest.raises(ConfigError, match=r"^train\.sync_every: 0 must be a whole number >= 1, e\.g\. train\.sync_every=1\.$"):
        prepare(cfg)


def test_a_recorded_config_is_checked_as_it_enters(tmp_path):
    recorded = compose_config(["tracking=none"])
    recorded.sweep.retries = -1  # a record written by hand, or by something else
    with pytest.raises(ConfigError, match=r"^sweep\.retries: -1 must be a whole number >= 0"):
        checked_config(recorded, Allowed(), tmp_path / "cache")


@pytest.mark.parametrize(
    ("argv", "setting"),
    [(["train", "train.batch_size=true"], "train.batch_size: True must be"), (["sweep", "sweep.workers=0"], "sweep.workers: 0 must be")],
)
def test_the_command_line_refuses_a_bad_value_in_one_line_with_exit_2(argv, setting, workdir, capsys):
    code = main([*argv, "results_dir=results"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"sweeper {argv[0]}: error: {setting}"), err
    assert not any(workdir.iterdir())  # refused before anything was made


def test_the_table_and_the_arms_read_one_list_of_words():
    assert COMPARE == ("auto", "none", *COMPARED)


def test_no_module_above_config_checks_a_value_the_table_holds():
    """`whole(` and `seconds(` outside sweeper/config name no setting of the table (a
    setting built from a prefix, f"train.{name}", counts for every setting under it): the
    rules of single settings stay in one place."""
    package = Path(sweeper.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "config" and path.parent.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("whole", "seconds")
                and node.args
            ):
                setting = _literal_start(node.args[0])
                if any(key.startswith(setting) for key in VALUES):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {setting}")
    assert found == []


def _literal_start(node: ast.expr) -> str:
    """The text a setting argument starts with: the whole string, or an f-string's first part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return "\0"  # a name: not a literal setting
