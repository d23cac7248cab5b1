"""Config files read once per process (sweeper.config.loaded) and configs composed once per set of
group choices (sweeper.config.compose): a composition through them is the composition Hydra
makes with all the overrides, reading every file afresh, whatever the compositions before it
composed or changed, and a file changed on disk is read again."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from sweeper.config import compose
from sweeper.config.compose import compose_config, config_dir
from sweeper.config.loaded import KeptConfigFiles, copy_config

GROUPS = ["model", "data", "lr", "shape"]  # options with defaults lists of their own, packages and interpolations


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


# Every option of every group once, the space's edges (a group choice and its values), and a
# value override on the primary config's own keys: each composed after the others.
CASES = [[f"{group}={option}"] for group in GROUPS for option in options(group)] + [
    ["lr=geometric", "lr.high=0.003", "lr.low=3e-05", "shape=torch_one_cycle", "shape.pct_start=0.21"],
    ["model=cnn", "data=digits", "train.epochs=2", "results_dir=elsewhere"],
    ["experiment=digits_transfer"] if (config_dir() / "experiment" / "digits_transfer.yaml").exists() else ["train.epochs=3"],
    # values on the same group choices as a case before: a copy of that composition
    ["lr=geometric", "lr.high=0.01", "shape=torch_one_cycle", "shape.pct_start=0.4", "results_dir=other"],
    ["lr=1e-3", "train.seed=7", "sweep.n_trials=3", "search.shape={constant: {}}"],
    ["lr=slice(1e-5,1e-3)", "search=slices", "train.epochs=1"],
    ["model=cnn", "~tracking", "results_dir=elsewhere"],
]


def afresh(overrides: list[str], config_dirs=()) -> dict:
    """As Hydra composes with all the overrides and nothing kept from an earlier composition."""
    kept, compose._KEPT = compose._KEPT, KeptConfigFiles()
    composed, compose._COMPOSED = compose._COMPOSED, compose._Compositions(size=0)
    every_override_composed = lambda text, schema: False  # noqa: E731
    sets_a_value, compose._sets_a_value = compose._sets_a_value, every_override_composed
    try:
        return OmegaConf.to_container(compose_config(overrides, config_dirs), resolve=False)
    finally:
        compose._KEPT, compose._COMPOSED, compose._sets_a_value = kept, composed, sets_a_value


def test_every_option_composes_as_hydra_composes_it_afresh():
    for overrides in CASES:
        expected = afresh(overrides)
        kept = compose_config(overrides)
        assert OmegaConf.to_container(kept, resolve=False) == expected, overrides
        # what a caller does to its config reaches no later composition
        kept.train.epochs = 999
        OmegaConf.set_struct(kept, False)
        kept.model.clear()
        assert OmegaConf.to_container(compose_config(overrides), resolve=False) == expected, overrides


def test_a_kept_config_is_copied_as_omegaconfs_deepcopy_copies_it():
    composed = compose_config(["model=cnn", "lr=geometric"])
    copied, reference = copy_config(composed), copy.deepcopy(composed)
    assert OmegaConf.to_yaml(copied) == OmegaConf.to_yaml(reference) == OmegaConf.to_yaml(composed)
    for config in (copied, reference):
        assert OmegaConf.is_struct(config)  # Hydra's flag: a mistyped key is refused, not added
        with pytest.raises(ConfigAttributeError):
            config.train.epochz = 3
        assert config.train._get_parent() is config  # its nodes are its own, not the kept one's
    copied.train.epochs = 999
    assert composed.train.epochs == reference.train.epochs != 999


def test_a_config_file_changed_on_disk_is_read_again(tmp_path: Path):
    mine = tmp_path / "conf"
    (mine / "model").mkdir(parents=True)
    option = mine / "model" / "mine.yaml"
    option.write_text("defaults:\n  - mlp\n  - _self_\nname: mine\n")
    assert compose_config(["model=mine"], [mine]).model.name == "mine"
    option.write_text("defaults:\n  - mlp\n  - _self_\nname: changed\n")
    assert compose_config(["model=mine"], [mine]).model.name == "changed"
    assert OmegaConf.to_container(compose_config(["model=mine"], [mine]), resolve=False) == afresh(["model=mine"], [mine])


def test_the_same_option_name_in_two_users_trees_is_each_trees_own(tmp_path: Path):
    trees = []
    for name in ("first", "second"):
        tree = tmp_path / name
        (tree / "model").mkdir(parents=True)
        (tree / "model" / "mine.yaml").write_text(f"defaults:\n  - mlp\n  - _self_\nname: {name}\n")
        trees.append(tree)
    assert [compose_config(["model=mine"], [tree]).model.name for tree in trees] == ["first", "second"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=nonesuch"],
        ["shape.nonesuch=2"],
        ["train.epoch=3"],
        ["nonesuch=3"],
        ["train.epochs=1,2"],
        ["train.epochs=[1", "model=nonesuch"],
        ["model=cnn", "train.batch_size=0"],
    ],
)
def test_a_bad_override_is_refused_as_before(overrides):
    with pytest.raises(Exception) as kept_error:
        compose_config(overrides)
    with pytest.raises(Exception) as fresh_error:
        afresh(overrides)
    assert str(kept_error.value) == str(fresh_error.value)
