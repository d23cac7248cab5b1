"""Cycle shapes against fastai itself (tests/data/fastai_one_cycle.json and tests/data/fastai_parity.json from
scripts/fastai_reference.py) and torch's schedulers themselves, step by step."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.schedules.shapes import (
    Constant,
    FastaiFlatCos,
    FastaiOneCycle,
    FastaiSGDR,
    FunctionShape,
    Points,
    Schedule,
    ShapeError,
    TorchCosineRestarts,
    TorchExponential,
    TorchOneCycle,
    TorchPolynomial,
    Triangular,
    WarmupCosine,
    WarmupStableDecay,
    combined_cos,
)
from sweeper.schedules.slices import peak_lrs
from tests.test_slices import VECTORS, spec_from_vector

FASTAI_REL = 1e-6  # the tolerance the vectors were published with
FASTAI = json.loads((Path(__file__).parent / "data" / "fastai_parity.json").read_text())
# fastai's positions are its accumulated pct_train, ours step / total: float64 rounding apart
EXACT = 1e-12


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


def torch_lrs(scheduler_class, peaks, total, **settings) -> list[list[float]]:
    """The lr of every param group before each of `total` steps, from torch's scheduler itself."""
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": p} for p in peaks], lr=1.0)
    scheduler = scheduler_class(optimizer, **settings)
    lrs = []
    for _ in range(total):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def assert_steps_equal(schedule: Schedule, expected: list[list[float]], rel: float = EXACT, moments: list[float] | None = None) -> None:
    """Every group's lr at every step; the momentum too where `moments` is given, else none."""
    assert len(expected) == schedule.total
    for step, wanted in enumerate(expected):
        lrs, momentum = schedule.at(step)
        for group, (lr, value) in enumerate(zip(lrs, wanted, strict=True)):
            assert math.isclose(lr, value, rel_tol=rel, abs_tol=1e-18), (step, group, lr, value)
        if moments is None:
            assert momentum is None  # these shapes leave momentum to the optimizer
        else:
            assert math.isclose(momentum, moments[step], rel_tol=rel), (step, momentum, moments[step])


@pytest.mark.parametrize(
    "settings",
    [dict(T_0=10), dict(T_0=7, T_mult=2), dict(T_0=5, T_mult=3, eta_min=1e-6), dict(T_0=1), dict(T_0=200, eta_min=1e-4)],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_cosine_restarts_match_CosineAnnealingWarmRestarts_step_for_step(settings):
    peaks = peak_lrs(slice(1e-4, 1e-2), 3)
    expected = torch_lrs(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, peaks, 120, **settings)
    assert_steps_equal(Schedule(tuple(peaks), TorchCosineRestarts(**settings), 120), expected)


@pytest.mark.parametrize("gamma", [0.9, 0.99, 0.999, 1.0])
def test_exponential_matches_ExponentialLR_step_for_step(gamma):
    peaks = peak_lrs(slice(1e-3), 2)
    expected = torch_lrs(torch.optim.lr_scheduler.ExponentialLR, peaks, 150, gamma=gamma)
    assert_steps_equal(Schedule(tuple(peaks), TorchExponential(gamma=gamma), 150), expected)


@pytest.mark.parametrize(
    ("total", "settings"),
    [(50, dict(power=1.0)), (37, dict(power=2.0)), (60, dict(total_iters=20, power=0.5)), (40, dict(total_iters=5))],
    ids=["linear", "square", "ends-early", "torch-default-iters"],
)
def test_polynomial_matches_PolynomialLR_step_for_step(total, settings):
    peaks = peak_lrs(slice(1e-5, 1e-3), 3)
    torch_settings = {"total_iters": total, **settings}  # total_iters None: the whole of training
    expected = torch_lrs(torch.optim.lr_scheduler.PolynomialLR, peaks, total, **torch_settings)
    assert_steps_equal(Schedule(tuple(peaks), TorchPolynomial(**settings), total), expected)
    if settings.get("total_iters", total) < total:
        assert Schedule(tuple(peaks), TorchPolynomial(**settings), total).at(total - 1)[0] == [0.0] * 3  # and stays 0


def fastai_peaks(spec, n_groups: int) -> list[float]:
    """fastai's set_hyper of a JSON lr: a float, [hi] for slice(hi), [lo, hi] for slice(lo, hi)."""
    if isinstance(spec, list):
        return peak_lrs(slice(*spec) if len(spec) == 2 else slice(spec[0]), n_groups)
    return peak_lrs(spec, n_groups)


@pytest.mark.parametrize("case", FASTAI["fit_sgdr"], ids=lambda c: f"{c['n_cycles']}x{c['cycle_len']}*{c['cycle_mult']}-{c['n_batches']}")
def test_sgdr_matches_fastai_fit_sgdr_batch_for_batch(case):
    shape = FastaiSGDR(n_cycles=case["n_cycles"], cycle_len=case["cycle_len"], cycle_mult=case["cycle_mult"])
    assert shape.epochs == case["n_epoch"]  # the epochs fit_sgdr trains for these cycles
    peaks = fastai_peaks(case["lr_max"], case["n_groups"])
    assert_steps_equal(Schedule(tuple(peaks), shape, shape.epochs * case["n_batches"]), case["lrs"])


def test_sgdr_restarts_at_the_peak_on_epoch_boundaries_and_runs_with_cycle_mult_1():
    shape = FastaiSGDR(n_cycles=3, cycle_len=1, cycle_mult=2)  # 1 + 2 + 4 epochs
    restarts = [step for step in range(70) if shape.lr(1.0, step, 70) == 1.0]
    # As fit_sgdr itself (the parity case 3x1*2 has it too): fastai's float32 boundary of the
    # third cycle lies just past 3/7, so batch 30 ends the second cycle (near 0) and the third one
    # starts a batch into its cosine.
    assert restarts == [0, 10] and shape.lr(1.0, 30, 70) < 1e-12 and 0.99 < shape.lr(1.0, 31, 70) < 1.0
    same_length = FastaiSGDR(n_cycles=4, cycle_len=2, cycle_mult=1)  # fastai divides by zero here
    assert same_length.epochs == 8
    assert [step for step in range(40) if same_length.lr(1.0, step, 40) == 1.0] == [0, 10, 20, 30]


@pytest.mark.parametrize("case", FASTAI["fit_flat_cos"], ids=lambda c: f"{c['n_epoch']}x{c['n_batches']}-{sorted(c['kwargs'])}")
def test_flat_cos_matches_fastai_fit_flat_cos_batch_for_batch(case):
    peaks = fastai_peaks(case["lr"], case["n_groups"])
    schedule = Schedule(tuple(peaks), FastaiFlatCos(**case["kwargs"]), case["n_epoch"] * case["n_batches"])
    assert_steps_equal(schedule, case["lrs"])


@pytest.mark.parametrize("case", FASTAI["param_scheduler"], ids=lambda c: f"{c['kind']}-{c['n_groups']}")
def test_points_and_function_at_fastai_positions_match_a_fastai_ParamScheduler(case):
    # steps (a position given twice), SchedNo pieces (as points) and the momentum too
    if case["kind"] == "points":
        mom_points = tuple(map(tuple, case["mom_points"])) if "mom_points" in case else None
        shape = Points(points=tuple(map(tuple, case["points"])), position="fastai", mom_points=mom_points)
    elif case["kind"] == "sched_no":
        ends = np.cumsum([0.0, *case["pcts"]])  # each SchedNo piece is a flat line; the pieces meet at steps
        points = [(float(p), v) for start, end, v in zip(ends, ends[1:], case["values"]) for p in (start, end)]
        shape = Points(points=tuple(points), position="fastai")
    else:
        shape = FunctionShape(fn=case["fn"], position="fastai", mom_fn=case.get("mom_fn"))
    schedule = Schedule(tuple(case["peaks"]), shape, case["n_epoch"] * case["n_batches"])
    moves_momentum = "mom_points" in case or "mom_fn" in case
    assert_steps_equal(schedule, case["lrs"], moments=[m[0] for m in case["moms"]] if moves_momentum else None)


@pytest.mark.parametrize("case", FASTAI["pct_start_ends"], ids=lambda c: f"{c['fit']}-pct_start={c['pct_start']}")
def test_pct_start_0_and_1_run_as_fastai_runs_them(case):
    peaks = fastai_peaks(case["lr"], case["n_groups"])
    if case["fit"] == "fit_one_cycle":
        shape, moms = FastaiOneCycle(pct_start=case["pct_start"]), [m[0] for m in case["moms"]]
    else:
        shape, moms = FastaiFlatCos(pct_start=case["pct_start"]), None
    assert_steps_equal(Schedule(tuple(peaks), shape, case["n_epoch"] * case["n_batches"]), case["lrs"], moments=moms)


def test_points_step_at_a_repeated_position_at_either_placing():
    step = Points(points=((0, 1.0), (0.5, 1.0), (0.5, 0.1), (1, 0.1)))  # end: step k of 11 at k/10
    assert [step.multiplier(k / 10) for k in range(11)] == [1.0] * 5 + [0.1] * 6  # at 0.5: the value after the step
    momentum = Points(mom_points=((0, 0.95), (0.5, 0.85), (1, 0.95)))
    assert [momentum.momentum(s, 11) for s in (0, 5, 10)] == [0.95, 0.85, 0.95]
    assert Points().momentum(3, 11) is None  # no mom_points: the optimizer's own


def test_the_two_positions_differ_only_in_where_the_last_step_lands():
    end, fastai = (
        FunctionShape(fn="sweeper.schedules.shapes.linear_decay"),
        FunctionShape(fn="sweeper.schedules.shapes.linear_decay", position="fastai"),
    )
    assert end.lr(1.0, 9, 10) == 0.0  # step / (N - 1): the last step reaches the function's end
    assert math.isclose(fastai.lr(1.0, 9, 10), 0.1)  # step / N: fastai never quite gets there
    assert end.lr(1.0, 0, 10) == fastai.lr(1.0, 0, 10) == 1.0


def test_torch_one_cycle_puts_the_peak_on_step_0_where_OneCycleLR_divides_by_zero():
    # pct_start * total == 1: OneCycleLR's warm-up has no length and it raises; the shape starts
    # at the peak and anneals to the minimum on the last step.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=4, pct_start=0.25)
    shape = TorchOneCycle(pct_start=0.25)
    assert shape.lr(1.0, 0, 4) == 1.0 and shape.momentum(0, 4) == 0.85
    assert [shape.lr(1.0, s, 4) for s in range(4)] == sorted((shape.lr(1.0, s, 4) for s in range(4)), reverse=True)
    assert math.isclose(shape.lr(1.0, 3, 4), 1 / 25 / 1e4)


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
        (FunctionShape(fn="sweeper.schedules.shapes.linear_decay"), 1.0, 0.0),
        (TorchPolynomial(), 1.0, 1 / 101),
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
    [
        FastaiOneCycle(),
        TorchOneCycle(three_phase=True),
        Constant(),
        Triangular(),
        WarmupCosine(),
        WarmupStableDecay(),
        Points(),
        FunctionShape(fn="sweeper.schedules.shapes.linear_decay"),
        FunctionShape(fn="sweeper.schedules.shapes.linear_decay", position="fastai"),
        Points(position="fastai"),
        Points(points=((0, 1.0), (0.5, 1.0), (0.5, 0.1), (1, 0.1)), mom_points=((0, 0.9), (1, 0.8))),
        FunctionShape(fn="math.cos", mom_fn="math.sin"),
        FastaiFlatCos(),
        FastaiSGDR(),
        TorchCosineRestarts(T_0=7, T_mult=2),
        TorchExponential(),
        TorchPolynomial(power=2.0),
    ],
    ids=lambda s: s.name,
)
def test_shapes_pickle_to_equal_values(shape):
    copy = pickle.loads(pickle.dumps(shape))
    assert copy == shape
    assert [copy.lr(1e-3, s, 40) for s in range(40)] == [shape.lr(1e-3, s, 40) for s in range(40)]
    assert [copy.momentum(s, 40) for s in range(40)] == [shape.momentum(s, 40) for s in range(40)]


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: FastaiOneCycle(pct_start=-0.1), ["shape.pct_start", "outside [0, 1]"]),
        (lambda: FastaiOneCycle(pct_start=1.5), ["shape.pct_start"]),
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
        (lambda: Points(points=((0, 1.0), (0.5, 1.0), (0.4, 0.1), (1, 0.1))), ["never decrease"]),
        (lambda: Points(mom_points=((0, 0.95), (1, 1.5))), ["shape.mom_points", "momenta", "[0, 1]"]),
        (lambda: FunctionShape(fn="math.cos", mom_fn="no.such.f"), ["shape.mom_fn", "cannot import"]),
        (lambda: Points(points=((0, 1.0), (1, -1.0))), ["multipliers"]),
        (lambda: Points(points=("ab",)), ["pairs"]),
        (lambda: FunctionShape(fn="no.such.module.f"), ["shape.fn", "cannot import"]),
        (lambda: FunctionShape(fn="sweeper.zoo.models.MLP"), ["shape.fn", "is a class, not a function of pos"]),
        (lambda: FunctionShape(fn="math.cos", mom_fn="torch.optim.SGD"), ["shape.mom_fn", "is a class"]),
        (lambda: FunctionShape(fn="sweeper.zoo.tasks.accuracy"), ["shape.fn", "a callable of other arguments"]),
        (lambda: FunctionShape(fn="math.pi"), ["shape.fn", "is a float"]),
        (lambda: FunctionShape(fn="math.cos", position="middle"), ["shape.position", "fastai"]),
        (lambda: Points(position="k/N"), ["shape.position", "end"]),
        (lambda: FastaiFlatCos(pct_start=1.01), ["shape.pct_start"]),
        (lambda: FastaiFlatCos(div_final=0), ["shape.div_final"]),
        (lambda: FastaiSGDR(n_cycles=0), ["shape.n_cycles", ">= 1"]),
        (lambda: FastaiSGDR(cycle_mult=1.5), ["shape.cycle_mult", "whole number"]),
        (lambda: TorchCosineRestarts(T_0=0), ["shape.T_0"]),
        (lambda: TorchCosineRestarts(T_mult=0), ["shape.T_mult"]),
        (lambda: TorchCosineRestarts(eta_min=-1e-5), ["shape.eta_min"]),
        (lambda: TorchExponential(gamma=float("inf")), ["shape.gamma", "positive, finite"]),
        (lambda: TorchExponential(gamma=0), ["shape.gamma"]),
        (lambda: TorchPolynomial(total_iters=0), ["shape.total_iters"]),
        (lambda: TorchPolynomial(power=-1), ["shape.power"]),
        (lambda: Schedule((1e-3,), Constant(), 0), ["steps"]),
    ],
)
def test_bad_shape_settings_say_what_and_how_to_fix(build, fragments):
    with pytest.raises(ShapeError) as error:
        build()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
