"""Cycle shapes against fastai itself (../shared/vectors) and torch's OneCycleLR itself."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from sweeper.shapes import (
    Constant,
    FastaiOneCycle,
    FunctionShape,
    Points,
    Schedule,
    ShapeError,
    TorchOneCycle,
    Triangular,
    WarmupCosine,
    WarmupStableDecay,
    combined_cos,
)
from sweeper.slices import peak_lrs
from tests.test_slices import VECTORS, spec_from_vector

FASTAI_REL = 1e-6  # the tolerance shared/README.md gives for these vectors


@pytest.mark.parametrize("case", VECTORS["combined_cos"], ids=lambda c: f"pct{c['pct']}")
def test_combined_cos_matches_fastai(case):
    for pos, expected in zip(case["points"], case["expected"], strict=True):
        value = combined_cos(case["pct"], case["start"], case["middle"], case["end"], pos)
        assert math.isclose(value, expected, rel_tol=FASTAI_REL), (pos, value, expected)


@pytest.mark.parametrize(
    "case", VECTORS["fit_one_cycle"], ids=lambda c: f"{c['lr_max']}-{c['n_epoch']}x{c['n_batches']}-{sorted(c['kwargs'])}"
)
def test_fit_one_cycle_matches_fastai_batch_for_batch(case):
    # fastai's float32 phase boundaries are reproduced, so these agree far inside the tolerance.
    total = case["n_epoch"] * case["n_batches"]
    peaks = peak_lrs(spec_from_vector(case["lr_max"]), case["n_groups"])
    schedule = Schedule(tuple(peaks), FastaiOneCycle(**case["kwargs"]), total)
    assert len(case["lrs"]) == total  # every training batch of every epoch is covered
    for step, (expected_lrs, expected_moms) in enumerate(zip(case["lrs"], case["moms"])):
        lrs, momentum = schedule.at(step)
        for group, (lr, expected) in enumerate(zip(lrs, expected_lrs, strict=True)):
            assert math.isclose(lr, expected, rel_tol=FASTAI_REL), (step, group, lr, expected)
        for expected in expected_moms:  # fastai sets the same momentum in every group
            assert math.isclose(momentum, expected, rel_tol=FASTAI_REL), (step, momentum, expected)


def test_fastai_linear_anneal_is_straight_between_the_phase_ends():
    shape = FastaiOneCycle(pct_start=0.25, anneal="linear", div=10, div_final=100)
    total = 100
    # halfway through the warm-up the lr is halfway between peak/div and peak
    # (positions within a phase are float32, as in fastai: compare to 1e-6)
    assert math.isclose(shape.lr(1.0, 12, total), 0.1 + (12 / 25) * 0.9, rel_tol=1e-6)
    assert math.isclose(shape.lr(1.0, 25, total), 1.0, rel_tol=1e-6)
    assert math.isclose(shape.lr(1.0, 100, total), 0.01, rel_tol=1e-6)


TORCH_SETTINGS = [
    dict(n_groups=1, total=10),
    dict(n_groups=3, total=100),
    dict(n_groups=3, total=37, pct_start=0.25),
    dict(n_groups=2, total=50, pct_start=0.5, div_factor=10.0, final_div_factor=100.0),
    dict(n_groups=4, total=64, three_phase=True),
    dict(n_groups=2, total=45, three_phase=True, pct_start=0.2, anneal_strategy="linear"),
    dict(n_groups=3, total=20, anneal_strategy="linear"),
    dict(n_groups=2, total=33, base_momentum=0.8, max_momentum=0.9),
]


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("settings", TORCH_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_torch_one_cycle_matches_OneCycleLR_step_for_step(settings, optimizer_name):
    settings = dict(settings)
    n_groups, total = settings.pop("n_groups"), settings.pop("total")
    peaks = peak_lrs(slice(1e-5, 1e-2), n_groups)
    params = [[torch.nn.Parameter(torch.zeros(1))] for _ in peaks]
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD([{"params": p} for p in params], lr=0.1, momentum=0.9)
        read_momentum = lambda group: group["momentum"]  # noqa: E731
    else:
        optimizer = torch.optim.Adam([{"params": p} for p in params], lr=0.1)
        read_momentum = lambda group: group["betas"][0]  # noqa: E731
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, **settings)
    schedule = Schedule(tuple(peaks), TorchOneCycle(**settings), total)
    for step in range(total):
        lrs, momentum = schedule.at(step)
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            assert math.isclose(group["lr"], lr, rel_tol=1e-12, abs_tol=1e-18), (step, group["lr"], lr)
            assert math.isclose(read_momentum(group), momentum, rel_tol=1e-12), step
        optimizer.step()
        scheduler.step()


def test_torch_one_cycle_reaches_its_minimum_on_the_last_step():
    shape = TorchOneCycle()
    assert math.isclose(shape.lr(1.0, 99, 100), 1 / 25 / 1e4)
    assert shape.lr(1.0, 29, 100) == 1.0  # the peak lands on step pct_start * total - 1


@pytest.mark.parametrize(
    ("shape", "first", "last"),
    [
        (Constant(), 1.0, 1.0),
        (Triangular(warmup_pct=0.5, div=10, div_final=100), 0.1, 0.01),
        (WarmupCosine(warmup_pct=0.1, div=10, div_final=100), 0.1, 0.01),
        (WarmupStableDecay(warmup_pct=0.1, decay_pct=0.2, div=10, div_final=100), 0.1, 0.01),
        (Points(points=((0, 0.5), (0.5, 1.0), (1, 0.25))), 0.5, 0.25),
        (FunctionShape(fn="sweeper.shapes.linear_decay"), 1.0, 0.0),
    ],
    ids=lambda x: getattr(x, "name", None),
)
def test_end_to_end_shapes_start_and_end_where_they_say(shape, first, last):
    total = 101
    assert math.isclose(shape.lr(1.0, 0, total), first)
    assert math.isclose(shape.lr(1.0, total - 1, total), last, abs_tol=1e-15)
    values = [shape.lr(1.0, step, total) for step in range(total)]
    assert max(values) <= 1.0 + 1e-12  # no shape overshoots the peak
    assert shape.momentum(0, total) is None  # these leave momentum to the optimizer


def test_warmup_stable_decay_holds_the_peak_between_its_phases():
    shape = WarmupStableDecay(warmup_pct=0.1, decay_pct=0.2)
    total = 101  # positions are step / 100
    assert all(shape.lr(2.0, step, total) == 2.0 for step in range(10, 80))
    assert shape.lr(2.0, 81, total) < 2.0


def test_triangular_and_points_are_piecewise_linear():
    shape = Points(points=((0, 0.0), (0.5, 1.0), (1, 0.0)))
    assert math.isclose(shape.lr(1.0, 25, 101), 0.5)
    assert math.isclose(Triangular(div=1e9).lr(1.0, 25, 101), 0.5, rel_tol=1e-6)


def test_each_group_runs_the_same_shape_scaled_by_its_peak():
    schedule = Schedule((1e-5, 1e-4, 1e-3), FastaiOneCycle(), 50)
    for step in range(50):
        lrs, _ = schedule.at(step)
        assert math.isclose(lrs[1] / lrs[0], 10.0) and math.isclose(lrs[2] / lrs[1], 10.0)


@pytest.mark.parametrize(
    "shape",
    [FastaiOneCycle(), TorchOneCycle(three_phase=True), Constant(), Triangular(), WarmupCosine(),
     WarmupStableDecay(), Points(), FunctionShape(fn="sweeper.shapes.linear_decay")],
    ids=lambda s: s.name,
)
def test_shapes_pickle_to_equal_values(shape):
    copy = pickle.loads(pickle.dumps(shape))
    assert copy == shape
    assert [copy.lr(1e-3, s, 40) for s in range(40)] == [shape.lr(1e-3, s, 40) for s in range(40)]


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: FastaiOneCycle(pct_start=0), ["shape.pct_start", "outside (0, 1)"]),
        (lambda: FastaiOneCycle(pct_start=1.0), ["shape.pct_start"]),
        (lambda: FastaiOneCycle(div=0), ["shape.div", "positive"]),
        (lambda: FastaiOneCycle(div=-5), ["shape.div"]),
        (lambda: FastaiOneCycle(div_final=float("inf")), ["shape.div_final"]),
        (lambda: FastaiOneCycle(moms=(0.95, 0.85)), ["shape.moms", "three"]),
        (lambda: FastaiOneCycle(anneal="exp"), ["shape.anneal", "cos"]),
        (lambda: TorchOneCycle(pct_start=1.2), ["shape.pct_start"]),
        (lambda: TorchOneCycle(div_factor=0), ["shape.div_factor"]),
        (lambda: TorchOneCycle(final_div_factor=-1), ["shape.final_div_factor"]),
        (lambda: TorchOneCycle(anneal_strategy="step"), ["shape.anneal_strategy"]),
        (lambda: Triangular(warmup_pct=0), ["shape.warmup_pct"]),
        (lambda: WarmupCosine(warmup_pct=1), ["shape.warmup_pct"]),
        (lambda: WarmupStableDecay(warmup_pct=0.5, decay_pct=0.5), ["no stable phase"]),
        (lambda: Points(points=((0.1, 1.0), (1, 0.1))), ["start at 0"]),
        (lambda: Points(points=((0, 1.0), (0.5, 1.0), (0.5, 0.1), (1, 0.1))), ["strictly increasing"]),
        (lambda: Points(points=((0, 1.0), (1, -1.0))), ["multipliers"]),
        (lambda: Points(points=("ab",)), ["pairs"]),
        (lambda: FunctionShape(fn="no.such.module.f"), ["shape.fn", "cannot import"]),
        (lambda: Schedule((1e-3,), Constant(), 0), ["steps"]),
    ],
)
def test_bad_shape_settings_say_what_and_how_to_fix(build, fragments):
    with pytest.raises(ShapeError) as error:
        build()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
