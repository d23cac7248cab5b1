"""The search space: Hydra's sweep grammar read into Optuna distributions, and the slice-aware layer."""

from __future__ import annotations

import math

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.config import ConfigError, build_shape, compose_config, config_dir
from sweeper.schedules.slices import parse_lr
from sweeper.sweep.space import SearchSpace, build_space, parse_dimension, split_overrides, validate_space

BELOW = math.nextafter  # the largest float under an exclusive end


def dimension(text: str):
    return parse_dimension("search.params.x", "x", "x", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("interval(0.1, 0.5)", FloatDistribution(0.1, BELOW(0.5, 0))),
        ("tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, BELOW(1e-2, 0), log=True)),
        ("int(interval(1, 5))", IntDistribution(1, 4)),
        ("tag(log, int(interval(1, 100)))", IntDistribution(1, 99, log=True)),
        ("range(1, 5)", IntDistribution(1, 4)),
        ("range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("range(0, 9, 3)", IntDistribution(0, 6, step=3)),  # 9 itself is excluded
        ("range(0, 1, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("range(5, 1, -1)", IntDistribution(2, 5)),  # Hydra lists 5, 4, 3, 2
        ("choice(32, 64)", CategoricalDistribution([32, 64])),
        ("choice(cos, linear)", CategoricalDistribution(["cos", "linear"])),
        # shuffle only reorders Hydra's runs: a choice among its values, in written order
        ("shuffle(range(1, 4))", CategoricalDistribution([1, 2, 3])),
        ("shuffle(c, a, b)", CategoricalDistribution(["c", "a", "b"])),
    ],
)
def test_grammar_reads_into_the_distribution(text, expected):
    assert dimension(text).distribution == expected


def test_shuffle_builds_the_same_distribution_in_every_worker():
    # Hydra's own iterator shuffles at random; a worker with another order could not join the study.
    assert {dimension("shuffle(a, b, c, d, e, f)").distribution.choices for _ in range(20)} == {tuple("abcdef")}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("interval(1, 5)", "[1, 5)"),  # half-open: 5 is never drawn (Optuna's high is 4.999...)
        ("tag(log, interval(1e-4, 1e-2))", "log [0.0001, 0.01)"),
        ("int(interval(1, 5))", "int [1, 5)"),
        ("range(0, 10, 3)", "int [0, 9], step 3"),  # a range by the values Hydra lists: 9 is one
        ("range(0, 1, 0.25)", "[0, 0.75], step 0.25"),
        ("choice(cos, linear)", "choice(cos, linear)"),
    ],
)
def test_describe_writes_ends_as_they_are(text, shown):
    assert dimension(text).describe() == shown


@pytest.mark.parametrize(
    "text", ["range(1, 5)", "range(0, 10, 3)", "range(0, 9, 3)", "range(0, 1, 0.25)", "range(5, 1, -1)", "range(0, 1, 0.1)"]
)
def test_range_samples_exactly_the_values_hydra_lists(text):
    hydra_values = sorted(OverridesParser.create().parse_override(f"x={text}").sweep_iterator())
    dim = dimension(text)
    assert dim.grid() == pytest.approx(hydra_values)  # float steps: up to rounding in Hydra's sums
    dist = dim.distribution
    assert not dist._contains(dist.to_internal_repr(dist.high + dist.step))  # the stop is never drawn


@pytest.mark.parametrize(("text", "end"), [("interval(0.1, 0.5)", 0.5), ("int(interval(1, 3))", 3)])
def test_interval_end_is_exclusive_as_in_hydra(text, end):
    dim = dimension(text)
    assert not dim.distribution._contains(dim.distribution.to_internal_repr(end))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [dim.suggest(study.ask()) for _ in range(200)]
    assert max(drawn) < end
    assert dim.distribution.low in drawn or isinstance(end, float)  # int: the low end is reachable


def test_plain_value_is_a_fixed_override():
    assert parse_dimension("search.params.train.epochs", "train.epochs", "train.epochs", 3) == "train.epochs=3"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("interval(5, 1)", "swap them"),
        ("interval(1, 1)", "empty"),
        ("int(interval(3, 3))", "empty"),
        ("range(1, 5, 0)", "step 0"),
        ("range(5, 1)", "lists no values"),
        ("tag(log, interval(0, 1))", "positive start"),
        ("tag(log, range(1, 5))", "stepped and log"),
        ("tag(fast, interval(0, 1))", "only tag\\(log"),
        ("tag(log, choice(1, 2))", "no meaning"),
        ("choice(1, 1)", "twice"),
        ("interval(0.1", "cannot read"),
        ([1, 2], "choice\\(a, b"),
    ],
)
def test_bad_grammar_is_a_config_error_naming_the_setting(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as caught:
        dimension(text)
    assert str(caught.value).startswith("search.params.x: ")


def draw(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict, list[str]]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(n):
        trial = study.ask()
        overrides = space.suggest(trial)
        draws.append((trial.params, overrides))
        study.tell(trial, 0.0)
    return draws


def test_default_space_is_slices_and_shapes():
    space = build_space(compose_config())
    assert space.strategy.distribution.choices == ("single", "fastai", "geometric")
    assert space.high.distribution.log and space.low_ratio.distribution.log
    assert "fastai_one_cycle" in space.shape.distribution.choices
    assert space.shape_settings["constant"] == ()


def test_low_ratio_and_shape_settings_are_drawn_only_where_they_apply():
    space = build_space(compose_config())
    for params, _ in draw(space, 60):
        assert ("lr.low_ratio" in params) == (params["strategy"] == "geometric"), params
        shape_params = {name.split(".")[0] for name in params if not name.startswith("lr")} - {"shape", "strategy"}
        assert shape_params <= {params["shape"]}, params


def test_trial_overrides_reproduce_the_sampled_config():
    space = build_space(compose_config())
    for params, overrides in draw(space, 20, seed=1):
        cfg = compose_config(overrides)
        spec = parse_lr(OmegaConf.to_container(cfg.lr))
        assert spec.strategy == params["strategy"]
        assert spec.high == params["lr.high"]
        if spec.strategy == "geometric":
            assert spec.low == pytest.approx(params["lr.high"] * params["lr.low_ratio"])
            assert spec.low <= spec.high
        assert build_shape(cfg.shape).name == params["shape"]
        for name, value in params.items():
            if name.startswith(params["shape"] + "."):
                assert cfg.shape[name.split(".", 1)[1]] == value


@pytest.mark.parametrize("option", ["slices", "shapes", "slices_and_shapes"])
def test_ready_made_searches_validate(option):
    cfg = compose_config([f"search={option}"])
    space = build_space(cfg)
    validate_space(space)  # every edge composes into a runnable slice and shape
    assert not space.is_empty()
    assert (space.shape is None) == (option == "slices")
    assert (space.strategy is None) == (option == "shapes")


def test_cover_draws_every_strategy_and_shape():
    space = build_space(compose_config())
    cover = space.cover()
    assert {c["strategy"] for c in cover} == set(space.strategy.distribution.choices)
    assert {c["shape"] for c in cover} == set(space.shape.distribution.choices)
    assert len(cover) == max(len(space.strategy.distribution.choices), len(space.shape.distribution.choices))


def test_sweep_overrides_on_the_command_line_join_the_space():
    plain, sweeps = split_overrides(["train.epochs=2", "optimizer.weight_decay=tag(log, interval(1e-4, 1e-1))"])
    assert plain == ["train.epochs=2"]
    space = build_space(compose_config(plain), sweeps)
    (dim,) = space.params
    assert dim.key == "optimizer.weight_decay" and dim.distribution.log
    validate_space(space, plain)


def test_delete_overrides_are_plain_overrides():
    plain, sweeps = split_overrides(["~search.shape.constant", "~train.seed=0", "x=interval(0, 1)"])
    assert plain == ["~search.shape.constant", "~train.seed=0"] and sweeps == {"x": "interval(0, 1)"}
    cfg = compose_config(plain)
    assert "constant" not in build_space(cfg).shape.distribution.choices
    assert "seed" not in cfg.train


@pytest.mark.parametrize(
    ("lr", "expected"),
    [
        ("lr=1e-3", ["lr=single", "lr.high=0.001"]),
        ("lr=slice(1e-3)", ["lr=fastai", "lr.high=0.001"]),
        ("lr=slice(None, 1e-3)", ["lr=fastai", "lr.high=0.001"]),
        ("lr=slice(1e-5,1e-3)", ["lr=geometric", "lr.low=1e-05", "lr.high=0.001"]),
        ("lr=[1e-5,1e-4,1e-3]", ["lr=explicit", "lr.values=[1e-05,0.0001,0.001]"]),
    ],
)
def test_a_fixed_lr_fixes_the_slice_of_every_trial(lr, expected):
    plain, sweeps = split_overrides([lr, "search=shapes"])
    assert plain == [*expected, "search=shapes", "search.lr=null"] and sweeps == {}
    space = build_space(compose_config(plain))
    assert space.strategy is None and space.high is None and space.low_ratio is None  # nothing of lr drawn
    spec = parse_lr(lr.partition("=")[2])
    assert space.describe()[0] == f"lr: fixed at {spec.describe()}; search.lr is not sampled"
    for _, overrides in draw(space, 5):
        assert not any(o.startswith("lr") for o in overrides), overrides
        assert parse_lr(OmegaConf.to_container(compose_config([*plain, *overrides]).lr)) == spec


def test_a_fixed_lr_and_a_sampled_one_are_refused_together():
    with pytest.raises(ConfigError, match="lr: lr=1e-3 fixes the slice, so search.lr.high='interval"):
        split_overrides(["lr=1e-3", "search.lr.high=interval(1e-3, 1e-2)"])
    with pytest.raises(ConfigError, match="the space is empty .*lr is fixed at 0.001"):
        build_space(compose_config(split_overrides(["lr=1e-3", "search=slices"])[0]))


def test_sweep_overrides_of_search_settings_set_them():
    plain, sweeps = split_overrides(["search.lr.high=tag(log, interval(1e-3, 1e-1))", "+search.params.x=choice('a b', c)"])
    assert sweeps == {}
    cfg = compose_config(plain)
    assert cfg.search.lr.high == "tag(log, interval(1e-3, 1e-1))"
    assert cfg.search.params.x == "choice('a b', c)"


def test_grid_lists_every_value_of_a_discrete_space():
    cfg = compose_config(["search=slices"])
    cfg.search.lr.high = "choice(1e-3, 3e-3)"
    cfg.search.lr.low_ratio = "choice(0.01, 0.1)"
    cfg.search.params = {"train.batch_size": "range(32, 129, 32)"}
    grid = build_space(cfg).grid()
    assert grid["train.batch_size"] == [32, 64, 96, 128]
    assert grid["lr.high"] == [1e-3, 3e-3]
    with pytest.raises(ConfigError, match="search.lr.high: sampler=grid needs"):
        build_space(compose_config(["search=slices"])).grid()


def space_with(search_node: dict, overrides=()) -> SearchSpace:
    cfg = compose_config(overrides)
    cfg.search = search_node
    return build_space(cfg)


@pytest.mark.parametrize(
    ("search_node", "fragment"),
    [
        ({}, "the space is empty"),
        ({"lr": {"strategies": ["single"]}}, "the space is empty"),  # one choice: nothing to draw
        ({"lr": {"strategies": ["single", "explicit"]}}, "explicit has no range"),
        ({"lr": {"strategies": ["single", "steep"]}}, "search.lr.strategies"),
        ({"lr": {"high": "tag(log, interval(1e-4, 1e-2))"}}, "search.lr.low_ratio: the geometric"),
        ({"lr": {"low_ratio": "interval(0.01, 0.5)"}}, "search.lr.high must be sampled"),
        ({"lr": {"high": "tag(log, interval(1e-4, 1e-2))", "low_ratio": "interval(0.1, 2)"}}, "low > high"),
        ({"lr": {"high": "choice(fast, slow)", "low_ratio": "interval(0.1, 0.5)"}}, "positive learning rates"),
        ({"lr": {"high": "interval(0, 1e-2)", "low_ratio": "interval(0.1, 0.5)"}}, "positive learning rates"),
        ({"lr": {"high": 1e-3, "low_ratio": "interval(0.1, 0.5)"}}, "positive learning rates"),
        ({"lr": {"hgh": "interval(1e-4, 1e-2)"}}, "unknown key"),
        ({"shapes": {"constant": {}}}, "unknown key"),
        ({"shape": []}, "must map shape names"),
        ({"params": {"lr.high": "interval(1e-4, 1e-2)"}}, "search.lr and search.shape"),
        ({"params": {"optimizer.weight_decay": "choice(a, b)"}}, "gives a, b for optimizer.weight_decay, which holds a number"),
        # hydra-optuna-sweeper's older form, wherever it is written: the grammar to write instead
        ({"params": {"x": {"type": "float", "low": 0, "high": 1}}}, "search.params.x='interval\\(0.0, 1.0\\)'"),
        (
            {"shape": {"triangular": {"warmup_pct": {"type": "float", "low": 0.1, "high": 0.6}}}},
            "search.shape.triangular.warmup_pct='interval\\(0.1, 0.6\\)'",
        ),
        (
            {"lr": {"high": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "low_ratio": "interval(0.1, 0.5)"}},
            "search.lr.high='tag\\(log, interval\\(0.0001, 0.01\\)\\)'",
        ),
    ],
)
def test_bad_space_is_a_config_error(search_node, fragment):
    with pytest.raises(ConfigError, match=fragment):
        space_with(search_node)


@pytest.mark.parametrize(
    ("search_node", "fragment"),
    [
        ({"params": {"optimizer.nope": "interval(0.1, 0.5)"}}, "search.params.optimizer.nope"),
        ({"params": {"model": "choice(mlp, no_such_model)"}}, "search.params.model"),
        ({"shape": {"no_such_shape": {}, "constant": {}}}, "search.shape.no_such_shape"),
        ({"shape": {"triangular": {"pct_start": "interval(0.1, 0.5)"}, "constant": {}}}, "search.shape.triangular"),
        ({"shape": {"triangular": {"warmup_pct": "interval(0.5, 1.5)"}, "constant": {}}}, "outside \\(0, 1\\)"),
    ],
)
def test_unknown_keys_and_unusable_values_fail_validation(search_node, fragment):
    space = space_with(search_node)
    with pytest.raises(ConfigError, match=fragment):
        validate_space(space)


def test_the_edges_are_checked_one_lr_and_one_shape_to_a_trial_each_named_alone_when_it_fails(monkeypatch):
    import sweeper.config.compose as compose
    import sweeper.sweep.space as space_module

    space = build_space(compose_config(["search=slices_and_shapes"]))
    composed = []
    real = compose._compose
    monkeypatch.setattr(compose, "_COMPOSED", compose._Compositions())  # as a process that composed none yet
    monkeypatch.setattr(compose, "_compose", lambda *args, **kwargs: composed.append(args[0]) or real(*args, **kwargs))
    validate_space(space)
    lrs = len(space.strategy.distribution.choices)
    shapes = len(space.shape.distribution.choices)
    assert len(composed) == max(lrs, shapes) < lrs + shapes  # one per group choice before: 9
    assert {choice for choices in composed for choice in choices} == {
        *(f"lr={name}" for name in space.strategy.distribution.choices),
        *(f"shape={name}" for name in space.shape.distribution.choices),
    }  # every option of both groups composed

    def refuse(overrides, config_dirs):  # each edge runs alone; an lr and a shape together do not
        if any(o.startswith("lr=") for o in overrides) and any(o.startswith("shape=") for o in overrides):
            raise ConfigError("this lr and this shape clash")
        return real_check(overrides, config_dirs)

    real_check = space_module._check_edge
    monkeypatch.setattr(space_module, "_check_edge", refuse)
    with pytest.raises(
        ConfigError, match=r"^search.lr and search.shape: a trial at the edge of the space \(lr=.* shape=.*\) cannot run: this lr"
    ):
        validate_space(space)


def test_searching_a_key_also_set_on_the_command_line_is_a_clash():
    space = build_space(compose_config())
    with pytest.raises(ConfigError, match=r"\['shape'\] are set on the command line and searched"):
        validate_space(space, ["shape=triangular"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"shape": "torch_multistep", "torch_multistep.milestones": "[30,60,90]"}, {"milestones": (30, 60, 90)}),
        (
            {"shape": "torch_linear", "torch_linear.start_factor": 0.05, "torch_linear.total_iters": 50},
            {"start_factor": 0.05, "end_factor": 1.0, "total_iters": 50},
        ),
        (
            {"shape": "torch_cyclic", "torch_cyclic.mode": "exp_range", "torch_cyclic.step_size_up": 25},
            {"mode": "exp_range", "step_size_up": 25},
        ),
        ({"shape": "sequential", "sequential.milestones": "[20]", "sequential.shapes.0.start_factor": 0.05}, {"milestones": (20,)}),
        (
            {"shape": "torch_plateau", "torch_plateau.factor": 0.3, "torch_plateau.patience": 2, "torch_plateau.cooldown": 1},
            {"factor": 0.3, "patience": 2, "cooldown": 1, "mode": None},  # mode: train.direction's, when a trial runs it
        ),
    ],
)
def test_torch_shapes_settings_are_sampled_by_the_grammar(params, expected):
    # A list (milestones) is a choice among lists; a sequential's piece is reached by its index.
    space = build_space(compose_config(["search=shapes"]))
    defaults = {"lr.high": 1e-3, "lr.low_ratio": 0.1, "torch_cyclic.base_fraction": 0.1, "sequential.shapes.0.start_factor": 0.1}
    overrides = space.suggest(optuna.trial.FixedTrial({**defaults, **params}))
    shape = build_shape(compose_config(overrides).shape)
    assert shape.name == params["shape"]
    for setting, value in expected.items():
        assert getattr(shape, setting) == value
    if shape.name == "sequential":
        assert shape.shapes[0].start_factor == 0.05


# Not searched: points and function are the user's own curve; fastai_fine_tune is fit_one_cycle's
# shape after a frozen phase (train.freeze_epochs), not a shape of its own.
NOT_SEARCHED = {"points", "function", "fastai_fine_tune"}


def test_search_shapes_offers_every_shape_but_the_users_own_curves():
    offered = set(compose_config(["search=shapes"]).search.shape)
    shipped = {path.stem for path in (config_dir() / "shape").glob("*.yaml")}
    assert offered == shipped - NOT_SEARCHED
