"""The trial schedule: fine_tune's two phases and SGD without momentum against fastai 2.8.12 itself
(tests/data/fastai_parity.json, made by scripts/fastai_reference.py), the schedule as a value, and
one schedule for the trainer, `sweeper schedule` and the report."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.analysis.report import _planned_schedule
from sweeper.boundary.recorded_config import Allowed
from sweeper.cli import main
from sweeper.config import compose_config
from sweeper.schedules.shapes import Constant, FastaiOneCycle, TorchOneCycle
from sweeper.schedules.slices import peak_lrs
from sweeper.training.trainer import prepare, set_hyperparameters
from sweeper.trial.schedule import (
    TrialSchedule,
    count_groups,
    frozen_shape,
    optimizer_momentum_off,
    schedule_from_peaks,
    schedule_of,
    whole_epoch_steps,
)

FASTAI = json.loads((Path(__file__).parent / "data" / "fastai_parity.json").read_text())
EXACT = 1e-12  # fastai's positions are its accumulated pct_train, ours step / total


def split_in_two(model: torch.nn.Module) -> list[torch.nn.Module]:
    """A splitter (model.groups=tests.test_trial_schedule.split_in_two): the body, then the head."""
    return [model.body, model.head]


@pytest.mark.parametrize(
    "case", FASTAI["fine_tune"], ids=lambda c: f"{c['freeze_epochs']}+{c['epochs']}-{sorted(c['args'])}-{sorted(c['kwargs'])}"
)
def test_fine_tune_matches_fastai_in_both_phases_batch_for_batch(case):
    # fastai's fine_tune(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, **kwargs) is
    # slice(base_lr/2/lr_mult, base_lr/2) with a fastai one-cycle of pct_start, div and the kwargs
    args = {"lr_mult": 100, "pct_start": 0.3, "div": 5.0, **case["args"]}
    head = case["base_lr"] / 2
    peaks = peak_lrs(slice(head / args["lr_mult"], head), case["n_groups"])
    kwargs = {k: tuple(v) if k == "moms" else v for k, v in case["kwargs"].items()}
    shape = FastaiOneCycle(pct_start=args["pct_start"], div=args["div"], **kwargs)
    steps = (case["freeze_epochs"] + case["epochs"]) * case["n_batches"]
    schedule = schedule_from_peaks(peaks, shape, epochs=case["epochs"], freeze_epochs=case["freeze_epochs"], steps=steps)
    assert schedule.total == len(case["lrs"])
    assert [schedule.phase_at(step).name for step in range(schedule.total)] == case["phases"]
    for step, (lrs, moms) in enumerate(zip(case["lrs"], case["moms"])):
        for group, (lr, expected) in enumerate(zip(schedule.lrs[step], lrs, strict=True)):
            assert math.isclose(lr, expected, rel_tol=EXACT), (step, group, lr, expected)
        for momentum, expected in zip(schedule.momenta[step], moms, strict=True):  # moms reach the frozen phase too
            assert math.isclose(momentum, expected, rel_tol=EXACT), (step, momentum, expected)


def test_the_frozen_phase_takes_the_shapes_settings_but_not_fine_tunes_own():
    shape = FastaiOneCycle(pct_start=0.3, div=5.0, div_final=1e3, moms=(0.9, 0.8, 0.9), anneal="linear")
    # pct_start and div are fine_tune's arguments, for the unfrozen phase alone; the rest is **kwargs
    assert frozen_shape(shape) == FastaiOneCycle(pct_start=0.99, div=25.0, div_final=1e3, moms=(0.9, 0.8, 0.9), anneal="linear")
    assert frozen_shape(Constant()) == frozen_shape(TorchOneCycle()) == FastaiOneCycle(pct_start=0.99)


def fastai_sgd_batches(case: dict):
    x, y = torch.tensor(case["x"]).view(-1, 1), torch.tensor(case["y"]).view(-1, 1)
    batches = list(zip(x.split(case["batch"]), y.split(case["batch"])))
    for _ in range(case["n_epoch"]):
        yield from batches


def sgd_run(momentum_off: bool) -> tuple[list[list[float]], torch.optim.Optimizer, TrialSchedule]:
    """fastai's fit_one_cycle(2, 0.1) of y = a x + b, with torch's SGD(momentum=0) and our schedule."""
    case = FASTAI["sgd_no_momentum"]
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(case["initial"][0])
        layer.bias.fill_(case["initial"][1])
    optimizer = torch.optim.SGD(layer.parameters(), lr=case["lr_max"], momentum=0.0)
    schedule = schedule_from_peaks(
        [case["lr_max"]], FastaiOneCycle(), epochs=case["n_epoch"], steps=len(case["lrs"]), momentum_off=momentum_off
    )
    params = []
    for step, (x, y) in enumerate(fastai_sgd_batches(case)):
        set_hyperparameters(optimizer, [0], *schedule.at(step))
        loss = torch.nn.functional.mse_loss(layer(x).view(-1), y.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        params.append([layer.weight.item(), layer.bias.item()])
    return params, optimizer, schedule


def test_sgd_without_momentum_keeps_none_as_fastais_sgd():
    case = FASTAI["sgd_no_momentum"]
    assert not case["grad_avg_kept"]  # fastai's SGD(mom=0) keeps no average of the gradients...
    assert case["moms"][0] == [0.95]  # ...though fit_one_cycle schedules its mom all the same
    assert optimizer_momentum_off(compose_config(["optimizer=sgd", "optimizer.momentum=0.0"]).optimizer)
    params, optimizer, schedule = sgd_run(momentum_off=True)
    assert all(schedule.at(step)[1] is None for step in range(schedule.total))  # the schedule never sets it
    assert optimizer.param_groups[0]["momentum"] == 0.0
    assert all(state.get("momentum_buffer") is None for state in optimizer.state.values())  # no buffers
    for step, (lr, expected) in enumerate(zip(schedule.lrs[:, 0], case["lrs"])):
        assert math.isclose(lr, expected[0], rel_tol=EXACT), step
    for step, (ours, theirs) in enumerate(zip(params, case["params"], strict=True)):
        assert ours == pytest.approx(theirs, rel=1e-6), step  # every update is fastai's
    # the momentum the shape would have set (0.95 to 0.85) moves the parameters elsewhere
    moved, _, _ = sgd_run(momentum_off=False)
    assert moved[-1] != pytest.approx(case["params"][-1], rel=1e-3)


@pytest.mark.parametrize(
    ("overrides", "off"),
    [
        (["optimizer=sgd", "optimizer.momentum=0.0"], True),
        (["optimizer=sgd", "~optimizer.momentum"], True),  # torch's SGD: momentum 0 by default
        (["optimizer=sgd"], False),
        (["optimizer=adamw"], False),  # beta1 is moved
        (["optimizer._target_=torch.optim.Adagrad", "~optimizer.betas"], False),  # no momentum to keep at 0
    ],
)
def test_which_optimizers_keep_their_momentum_at_zero(overrides, off):
    assert optimizer_momentum_off(compose_config(overrides).optimizer) is off


def test_the_schedule_is_a_step_by_group_table_over_both_phases():
    peaks = peak_lrs(slice(1e-4, 1e-2), 3)
    schedule = schedule_from_peaks(peaks, FastaiOneCycle(pct_start=0.3, div=5.0), epochs=3, freeze_epochs=1, steps=40)
    assert schedule.lrs.shape == schedule.momenta.shape == (40, 3)
    assert [p.name for p in schedule.phases] == ["frozen", "unfrozen"] and schedule.starts == (0, 10)
    assert [p.trainable for p in schedule.phases] == [(False, False, True), (True, True, True)]
    assert schedule.phases[0].schedule.peaks == (2e-3, 2e-3, 2e-2)  # slice(base_lr), base_lr = 2 x the head peak
    for step in range(40):
        phase = schedule.phase_at(step)
        lrs, momentum = phase.schedule.at(step - schedule.starts[schedule.phases.index(phase)])
        assert schedule.at(step) == (lrs, momentum)  # the very floats of each phase's schedule
        assert list(schedule.momenta[step]) == [momentum] * 3  # every group the same momentum
    rows = schedule.rows()
    assert [r["phase"] for r in rows] == ["frozen"] * 10 + ["unfrozen"] * 30
    assert [r["lr_2"] for r in rows] == schedule.lrs[:, 2].tolist()


def test_the_schedule_is_a_picklable_value():
    schedule = schedule_from_peaks([1e-3, 1e-2], FastaiOneCycle(), epochs=2, freeze_epochs=1, steps=30)
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule and np.array_equal(copy.lrs, schedule.lrs)
    assert np.array_equal(copy.momenta, schedule.momenta, equal_nan=True)
    with pytest.raises(AttributeError):
        schedule.peaks = (1.0, 1.0)  # frozen


def test_the_schedule_draws_as_a_plot(tmp_path):
    from sweeper.schedules.plots import plot_schedule

    schedule = schedule_from_peaks([1e-3, 1e-2], Constant(), epochs=2, freeze_epochs=1, steps=30)
    assert schedule.shape == Constant()  # the configured one; the frozen phase's is fine_tune's
    assert plot_schedule(schedule, tmp_path / "schedule.png").read_bytes().startswith(b"\x89PNG")


def test_a_shape_without_momentum_leaves_nan_where_the_optimizer_keeps_its_own():
    schedule = schedule_from_peaks([1e-3], Constant(), epochs=1, freeze_epochs=1, steps=8)
    assert not np.isnan(schedule.momenta[:4]).any() and np.isnan(schedule.momenta[4:]).all()  # frozen one-cycle, then constant
    assert schedule.at(5)[1] is None and schedule.sets_momentum
    assert not schedule_from_peaks([1e-3], FastaiOneCycle(), epochs=2, steps=8, momentum_off=True).sets_momentum


def test_steps_must_split_into_whole_epochs_of_both_phases():
    with pytest.raises(ValueError, match="multiple of 4"):
        schedule_from_peaks([1e-3], FastaiOneCycle(), epochs=3, freeze_epochs=1, steps=10)
    cfg = compose_config(["train.freeze_epochs=1", "train.epochs=6"])
    assert whole_epoch_steps(cfg, 100) == 98 and whole_epoch_steps(cfg, 2) == 7
    assert whole_epoch_steps(compose_config(), 100) == 100  # one phase: any count


@pytest.mark.parametrize(
    ("overrides", "n_groups"),
    [([], 3), (["model.groups=2"], 2), (["model.groups=null"], 1), (["model.groups=tests.test_trial_schedule.split_in_two"], 2)],
)
def test_groups_are_counted_as_the_trial_splits_the_model(overrides, n_groups):
    assert count_groups(compose_config(overrides).model) == n_groups


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.freeze_epochs=1", "train.epochs=2", "shape=fastai_fine_tune", "shape.moms=[0.9,0.8,0.9]", "shape.div_final=1e3"],
        ["model.groups=tests.test_trial_schedule.split_in_two", "lr=fastai"],  # a splitter: two groups
        ["optimizer=sgd", "optimizer.momentum=0.0", "train.freeze_epochs=1", "train.epochs=1"],
        ["shape=fastai_sgdr", "train.epochs=7"],
    ],
    ids=["fine_tune", "splitter", "sgd-no-momentum", "sgdr"],
)
def test_trainer_schedule_command_and_report_schedule_alike(overrides, tmp_path, capsys):
    overrides = ["train.batch_size=256", "train.device=cpu", *overrides]
    trial = prepare(compose_config(overrides))
    schedule = trial.schedule
    assert schedule == schedule_of(compose_config(overrides), steps=schedule.total)  # one schedule from the config
    assert len(schedule.peaks) == len(trial.groups)
    assert main(["schedule", "--json", "--no-plot", "--steps", str(schedule.total), *overrides]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in document["phases"]] == [p.name for p in schedule.phases]
    assert document["rows"] == schedule.rows()  # every phase, every group, every step
    assert _planned_schedule(overrides, steps=schedule.total, allowed=Allowed(("tests",))) == schedule.lrs.T.tolist()


def test_a_log_axis_labels_its_decades_in_plain_text_without_the_mathtext_parser(monkeypatch):
    """Every recorded trial draws its schedule: its log axis is labelled 1e-03, not typeset."""
    from matplotlib import mathtext
    from matplotlib.figure import Figure

    from sweeper.schedules.plots import log_y

    typeset = []
    parse = mathtext.MathTextParser.parse
    monkeypatch.setattr(mathtext.MathTextParser, "parse", lambda self, s, *a, **k: typeset.append(s) or parse(self, s, *a, **k))
    figure = Figure()
    axis = figure.subplots()
    axis.plot([0, 1, 2], [1e-5, 1e-3, 1e-1])
    log_y(axis)
    figure.canvas.draw()
    labels = [label.get_text() for label in axis.get_yticklabels() if label.get_text()]
    assert "1e\u221203" in labels and not any("$" in label for label in labels), labels  # 1e-03, its minus typeset as one
    assert not typeset


def test_a_schedule_drawn_again_on_a_figure_of_its_layout_is_the_png_a_fresh_figure_draws(monkeypatch):
    """Each layout's figure is made once and drawn again with each schedule's curves: what an
    earlier schedule left in it (its limits, its ticks, its title) shows in no later one."""
    from sweeper.schedules import plots

    schedules = [
        prepare(compose_config(overrides)).schedule
        for overrides in (
            [],  # three groups, momentum moving, 126 steps
            ["shape=torch_one_cycle", "lr.high=0.3", "train.epochs=20"],  # the same layout, other limits and steps
            ["shape=constant", "lr=single", "lr.high=1e-6", "model.groups=2"],  # another layout
        )
    ]
    monkeypatch.setattr(plots, "_SCHEDULE_FIGURES", {})
    drawn_again = []
    for schedule in [*schedules, schedules[0]]:
        drawn_again.append(plots.schedule_png(schedule))
        figure = plots._SCHEDULE_FIGURES[(len(schedule.peaks), schedule.rows()[0]["momentum"] is not None)]
        low, high = figure.lr_axis.get_xlim()  # this schedule's steps, with matplotlib's 5% margins
        assert -0.06 * schedule.total < low < 0 and schedule.total - 1 < high < 1.06 * schedule.total
        low, high = figure.lr_axis.get_ylim()  # its lrs, within two decades each way (a flat line is widened)
        assert schedule.lrs.min() / 100 < low <= schedule.lrs.min() and schedule.lrs.max() <= high < schedule.lrs.max() * 100
        assert figure.lr_axis.get_title() == f"{schedule.shape.name}: {len(schedule.peaks)} groups, {schedule.total} steps"
    assert len(plots._SCHEDULE_FIGURES) == 2  # one figure a layout
    fresh = []
    for schedule in schedules:
        plots._SCHEDULE_FIGURES.clear()
        fresh.append(plots.schedule_png(schedule))
    assert drawn_again == [*fresh, fresh[0]]
    assert len(set(fresh)) == 3
