"""torch's step-counting schedulers as shapes (StepLR, MultiStepLR, LinearLR, CyclicLR,
CosineAnnealingLR, SequentialLR, and every torch shape stepped once an epoch), checked step by
step against torch's own schedulers on a dummy optimizer.

The cases are those of torch's test/optim/test_lrscheduler.py (the test each row ports is
named beside it), run here against the scheduler itself rather than torch's written targets;
the optimizer is that file's: two groups at lr 0.05 and 0.5. Where a case cannot be said as a
shape, the row says how it differs.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.optim import lr_scheduler

from sweeper.schedules.sequential import Sequential
from sweeper.schedules.shapes import (
    Constant,
    FastaiOneCycle,
    Schedule,
    ShapeError,
    TorchCosineRestarts,
    TorchExponential,
    TorchOneCycle,
    TorchPolynomial,
    WarmupCosine,
)
from sweeper.schedules.torch_schedulers import TorchCosine, TorchCyclic, TorchLinear, TorchMultiStep, TorchStep

EXACT = 1e-12  # relative: torch's chained steps against the closed forms
PEAKS = (0.05, 0.5)  # torch's test optimizer: two param groups


def dummy_optimizer(peaks=PEAKS, kind: str = "sgd") -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": p} for p in peaks]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=1.0)
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def read_momentum(group: dict) -> float:
    return group["betas"][0] if "betas" in group else group["momentum"]


def torch_run(make, batches: int, *, per_epoch: int = 1, peaks=PEAKS, kind: str = "sgd"):
    """The lr of every group and the momentum before each of `batches` training batches, the
    scheduler `make(optimizer)` stepped after every `per_epoch` batches (1: every batch)."""
    optimizer = dummy_optimizer(peaks, kind)
    scheduler = make(optimizer)
    lrs, momenta = [], []
    for batch in range(batches):
        lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        momenta.append(read_momentum(optimizer.param_groups[0]))
        optimizer.step()
        if (batch + 1) % per_epoch == 0:
            scheduler.step()
    return lrs, momenta


def assert_matches(schedule: Schedule, lrs, momenta=None) -> None:
    """Step by step: every group's lr, and the momentum where the shape moves it."""
    assert schedule.total == len(lrs)
    for step, wanted in enumerate(lrs):
        got, momentum = schedule.at(step)
        for group, (lr, value) in enumerate(zip(got, wanted, strict=True)):
            assert math.isclose(lr, value, rel_tol=EXACT, abs_tol=1e-15), (step, group, lr, value)
        if momenta is None:
            assert momentum is None, step  # the shape leaves momentum to the optimizer
        else:
            assert math.isclose(momentum, momenta[step], rel_tol=EXACT, abs_tol=1e-15), (step, momentum, momenta[step])


S = lr_scheduler
# (ported torch test, the shape, torch's scheduler, batches)
CASES = [
    ("test_step_lr", TorchStep(step_size=3, gamma=0.1), lambda o: S.StepLR(o, step_size=3, gamma=0.1), 12),
    ("test_get_last_lr_step_lr", TorchStep(step_size=3), lambda o: S.StepLR(o, 3), 10),
    ("torch's default gamma 0.1, a growing gamma", TorchStep(step_size=4, gamma=1.5), lambda o: S.StepLR(o, 4, gamma=1.5), 30),
    ("test_multi_step_lr", TorchMultiStep(milestones=(2, 5, 9)), lambda o: S.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.1), 12),
    (
        "MultiStepLR's Counter: a milestone twice, out of order",
        TorchMultiStep(milestones=(9, 2, 5, 5), gamma=0.5),
        lambda o: S.MultiStepLR(o, milestones=[9, 2, 5, 5], gamma=0.5),
        15,
    ),
    ("test_linearlr", TorchLinear(start_factor=0.5, total_iters=4), lambda o: S.LinearLR(o, start_factor=0.5, total_iters=4), 10),
    (
        "test_get_last_lr_linearlr",
        TorchLinear(start_factor=0.25, end_factor=0.6, total_iters=4),
        lambda o: S.LinearLR(o, start_factor=0.25, end_factor=0.6, total_iters=4),
        10,
    ),
    (
        "test_closed_form_linearlr",
        TorchLinear(start_factor=1.0 / 3, end_factor=0.7, total_iters=4),
        lambda o: S.LinearLR(o, start_factor=1.0 / 3, end_factor=0.7, total_iters=4),
        20,
    ),
    ("LinearLR's defaults", TorchLinear(), lambda o: S.LinearLR(o), 12),
    (
        "a linear decay to 0 over training (total_iters None)",
        TorchLinear(start_factor=1.0, end_factor=0.0, total_iters=None),
        lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=40),
        40,
    ),
    ("test_cos_anneal_lr", TorchCosine(T_max=10, eta_min=1e-10), lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-10), 10),
    (
        "test_closed_form_cos_anneal_lr: past T_max, back up",
        TorchCosine(T_max=5, eta_min=1e-10),
        lambda o: S.CosineAnnealingLR(o, T_max=5, eta_min=1e-10),
        20,
    ),
    ("past T_max, twice around, eta_min 0", TorchCosine(T_max=7), lambda o: S.CosineAnnealingLR(o, T_max=7), 40),
    ("T_max None: the trial's training", TorchCosine(eta_min=0.001), lambda o: S.CosineAnnealingLR(o, T_max=33, eta_min=0.001), 33),
    ("test_exp_lr", TorchExponential(gamma=0.9), lambda o: S.ExponentialLR(o, gamma=0.9), 10),
    ("ExponentialLR with gamma > 1 (accepted, as torch)", TorchExponential(gamma=1.05), lambda o: S.ExponentialLR(o, gamma=1.05), 50),
    (
        "test_poly_lr",
        TorchPolynomial(total_iters=5, power=0.9),
        lambda o: S.PolynomialLR(o, total_iters=5, power=0.9),
        10,
    ),
    (
        "PolynomialLR with power 0 (accepted, as torch)",
        TorchPolynomial(total_iters=5, power=0),
        lambda o: S.PolynomialLR(o, total_iters=5, power=0),
        10,
    ),
]


@pytest.mark.parametrize(("case", "shape", "make", "batches"), CASES, ids=[c[0] for c in CASES])
def test_shape_matches_its_torch_scheduler_step_for_step(case, shape, make, batches):
    lrs, _ = torch_run(make, batches)
    assert_matches(Schedule(PEAKS, shape, batches), lrs)


def cyclic(optimizer, momenta=(0.1, 0.5), **settings):
    """CyclicLR with torch's test ranges: base_lr = peak / 5 (torch's 1 to 5), and momenta
    between 0.1 and 0.5 (torch's test cycles momentum between 1 and 5, which no optimizer can
    use: a shape's momentum is kept in [0, 1])."""
    return S.CyclicLR(
        optimizer,
        base_lr=[p / 5 for p in PEAKS],
        max_lr=list(PEAKS),
        base_momentum=momenta[0],
        max_momentum=momenta[1],
        **settings,
    )


CYCLIC_CASES = [
    ("test_cycle_lr_triangular_mode_one_lr", dict(step_size_up=4, mode="triangular"), 11),
    ("test_cycle_lr_triangular2_mode_one_lr", dict(step_size_up=4, mode="triangular2"), 22),
    ("test_cycle_lr_exp_range_mode_one_lr", dict(step_size_up=4, mode="exp_range", gamma=0.9), 13),
    ("test_cycle_lr_triangular_mode_step_size_up_down", dict(step_size_up=4, step_size_down=6, mode="triangular"), 11),
    ("test_cycle_lr_triangular2_mode_step_size_up_down", dict(step_size_up=2, step_size_down=6, mode="triangular2"), 24),
    ("test_cycle_lr_exp_range_mode_step_size_up_down", dict(step_size_up=4, step_size_down=6, mode="exp_range", gamma=0.9), 30),
    ("a sawtooth: step_size_down 0", dict(step_size_up=5, step_size_down=0), 23),
    ("several cycles, uneven", dict(step_size_up=7, step_size_down=3, mode="triangular2"), 60),
]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(("case", "settings", "batches"), CYCLIC_CASES, ids=[c[0] for c in CYCLIC_CASES])
def test_cyclic_matches_CyclicLR_lr_and_momentum_step_for_step(case, settings, batches, kind):
    lrs, momenta = torch_run(lambda o: cyclic(o, **settings), batches, kind=kind)
    shape = TorchCyclic(base_fraction=0.2, base_momentum=0.1, max_momentum=0.5, **settings)
    assert_matches(Schedule(PEAKS, shape, batches), lrs, momenta)


def test_cyclic_with_torchs_scalar_base_lr_and_no_momentum_cycling():
    # test_cycle_lr_triangular_mode_one_lr_no_momentum: the optimizer keeps its own momentum
    def make(optimizer):
        return S.CyclicLR(optimizer, base_lr=0.01, max_lr=list(PEAKS), step_size_up=4, cycle_momentum=False)

    lrs, momenta = torch_run(make, 20)
    assert set(momenta) == {0.9}  # torch left the optimizer's own
    assert_matches(Schedule(PEAKS, TorchCyclic(base_lr=0.01, step_size_up=4, cycle_momentum=False), 20), lrs)


def test_cyclic_defaults_are_torchs_but_base_lr_and_step_size_up():
    shape = TorchCyclic()
    assert (shape.step_size_up, shape.step_size_down, shape.mode, shape.gamma) == (2000, None, "triangular", 1.0)
    assert (shape.cycle_momentum, shape.base_momentum, shape.max_momentum) == (True, 0.8, 0.9)
    lrs, momenta = torch_run(lambda o: S.CyclicLR(o, base_lr=[p * 0.1 for p in PEAKS], max_lr=list(PEAKS)), 4100)
    assert_matches(Schedule(PEAKS, shape, 4100), lrs, momenta)


SEQUENTIAL_CASES = [
    (
        "test_sequentiallr1",
        Sequential((TorchExponential(gamma=0.8), TorchStep(step_size=4)), (3,)),
        lambda o: [S.ExponentialLR(o, gamma=0.8), S.StepLR(o, gamma=0.1, step_size=4)],
        (3,),
        19,
    ),
    (
        "test_sequentiallr3 (ConstantLR(0.1, 3) as a LinearLR of one factor)",
        Sequential(
            (TorchLinear(start_factor=0.1, end_factor=0.1, total_iters=3), TorchExponential(gamma=0.8), TorchStep(step_size=2)), (3, 6)
        ),
        lambda o: [S.LinearLR(o, 0.1, 0.1, 3), S.ExponentialLR(o, gamma=0.8), S.StepLR(o, gamma=0.1, step_size=2)],
        (3, 6),
        12,
    ),
    (
        "test_sequentiallr_no_warnings: a decaying LinearLR, then ExponentialLR",
        Sequential((TorchLinear(start_factor=0.5, end_factor=0.1, total_iters=5), TorchExponential(gamma=0.9)), (5,)),
        lambda o: [S.LinearLR(o, start_factor=0.5, end_factor=0.1, total_iters=5), S.ExponentialLR(o, gamma=0.9)],
        (5,),
        10,
    ),
    (
        "the usual warm-up, then a cosine over the rest (T_max None: the steps left)",
        Sequential((TorchLinear(start_factor=0.1, total_iters=10), TorchCosine()), (10,)),
        lambda o: [S.LinearLR(o, start_factor=0.1, total_iters=10), S.CosineAnnealingLR(o, T_max=40)],
        (10,),
        50,
    ),
    (
        "restarts, a multistep and a polynomial",
        Sequential(
            (TorchCosineRestarts(T_0=4), TorchMultiStep(milestones=(2, 5), gamma=0.5), TorchPolynomial(total_iters=8, power=2.0)),
            (10, 20),
        ),
        lambda o: [S.CosineAnnealingWarmRestarts(o, T_0=4), S.MultiStepLR(o, [2, 5], gamma=0.5), S.PolynomialLR(o, 8, power=2.0)],
        (10, 20),
        35,
    ),
]


@pytest.mark.parametrize(("case", "shape", "make_pieces", "milestones", "batches"), SEQUENTIAL_CASES, ids=[c[0] for c in SEQUENTIAL_CASES])
def test_sequential_matches_SequentialLR_step_for_step(case, shape, make_pieces, milestones, batches):
    lrs, _ = torch_run(lambda o: S.SequentialLR(o, make_pieces(o), milestones=list(milestones)), batches)
    assert_matches(Schedule(PEAKS, shape, batches), lrs)


def test_sequential_with_a_momentum_cycle_first_holds_its_last_momentum_after_it():
    # OneCycleLR, then StepLR: torch leaves the momentum where OneCycleLR last put it. StepLR is
    # built first: OneCycleLR rewrites the groups' initial lr (to peak / div_factor), and a
    # scheduler built after it would start from there; every shape here scales the peak.
    def make(optimizer):
        step = S.StepLR(optimizer, step_size=5)
        one_cycle = S.OneCycleLR(optimizer, max_lr=list(PEAKS), total_steps=20)
        return S.SequentialLR(optimizer, [one_cycle, step], milestones=[20])

    lrs, momenta = torch_run(make, 40)
    shape = Sequential((TorchOneCycle(), TorchStep(step_size=5)), (20,))
    assert_matches(Schedule(PEAKS, shape, 40), lrs, momenta)


def test_sequential_pieces_read_their_own_length_and_any_shape_is_a_piece():
    shape = Sequential((TorchLinear(start_factor=0.1, total_iters=10), FastaiOneCycle(moms=None), Constant()), (10, 60))
    schedule = Schedule((1e-3,), shape, 100)
    one_cycle = Schedule((1e-3,), FastaiOneCycle(moms=None), 50)
    assert [schedule.at(10 + s)[0] for s in range(50)] == [one_cycle.at(s)[0] for s in range(50)]  # from its own step 0, over 50
    assert [schedule.at(s)[0][0] for s in range(60, 100)] == [1e-3] * 40


# (torch's scheduler stepped once an epoch, 7 batches an epoch)
EPOCH_CASES = [
    (TorchStep(step_size=2, step_per="epoch"), lambda o: S.StepLR(o, step_size=2)),
    (TorchMultiStep(milestones=(3, 6), step_per="epoch"), lambda o: S.MultiStepLR(o, [3, 6])),
    (TorchLinear(start_factor=0.25, total_iters=4, step_per="epoch"), lambda o: S.LinearLR(o, 0.25, total_iters=4)),
    (TorchCosine(T_max=None, step_per="epoch"), lambda o: S.CosineAnnealingLR(o, T_max=10)),
    (TorchExponential(gamma=0.7, step_per="epoch"), lambda o: S.ExponentialLR(o, 0.7)),
    (TorchPolynomial(power=2.0, step_per="epoch"), lambda o: S.PolynomialLR(o, total_iters=10, power=2.0)),
    (TorchCosineRestarts(T_0=3, T_mult=2, step_per="epoch"), lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    (
        Sequential((TorchLinear(start_factor=0.1, total_iters=3), TorchCosine()), (3,), step_per="epoch"),
        lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3), S.CosineAnnealingLR(o, T_max=7)], milestones=[3]),
    ),
]


@pytest.mark.parametrize(("shape", "make"), EPOCH_CASES, ids=[c[0].name for c in EPOCH_CASES])
def test_step_per_epoch_is_torch_stepped_once_an_epoch(shape, make):
    epochs, per_epoch = 10, 7
    lrs, _ = torch_run(make, epochs * per_epoch, per_epoch=per_epoch)
    assert_matches(Schedule(PEAKS, shape, epochs * per_epoch, epochs), lrs)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(
    ("shape", "make"),
    [
        (TorchOneCycle(step_per="epoch"), lambda o: S.OneCycleLR(o, max_lr=list(PEAKS), total_steps=10)),
        (
            TorchCyclic(base_fraction=0.2, step_size_up=2, step_size_down=3, step_per="epoch"),
            lambda o: S.CyclicLR(o, base_lr=[p / 5 for p in PEAKS], max_lr=list(PEAKS), step_size_up=2, step_size_down=3),
        ),
    ],
    ids=["torch_one_cycle", "torch_cyclic"],
)
def test_momentum_cycles_step_per_epoch_too(shape, make, kind):
    lrs, momenta = torch_run(make, 10 * 5, per_epoch=5, kind=kind)
    assert_matches(Schedule(PEAKS, shape, 50, 10), lrs, momenta)


def test_step_per_epoch_needs_the_epochs():
    with pytest.raises(ShapeError, match="shape.step_per"):
        Schedule(PEAKS, TorchStep(step_per="epoch"), 40)


NEW_SHAPES = [
    TorchStep(step_size=3),
    TorchMultiStep(milestones=(4, 4, 9)),
    TorchLinear(total_iters=None),
    TorchCosine(T_max=7, eta_min=1e-6),
    TorchCyclic(step_size_up=5, mode="exp_range", gamma=0.99),
    Sequential((TorchLinear(), WarmupCosine(), TorchCyclic(step_size_up=3)), (5, 20), step_per="epoch"),
]


@pytest.mark.parametrize("shape", NEW_SHAPES, ids=lambda s: s.name)
def test_new_shapes_pickle_to_equal_values(shape):
    copy = pickle.loads(pickle.dumps(shape))
    assert copy == shape
    schedule, copied = Schedule((1e-3, 1e-2), shape, 40, 8), Schedule((1e-3, 1e-2), copy, 40, 8)
    assert [schedule.at(s) for s in range(40)] == [copied.at(s) for s in range(40)]


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: TorchStep(step_size=0), ["shape.step_size", ">= 1"]),
        (lambda: TorchStep(gamma=0), ["shape.gamma", "positive"]),
        (lambda: TorchStep(step_per="iteration"), ["shape.step_per", "batch", "epoch"]),
        (lambda: TorchMultiStep(milestones=(0, 5)), ["shape.milestones", ">= 1"]),
        (lambda: TorchMultiStep(milestones=5), ["shape.milestones", "list"]),
        (lambda: TorchLinear(start_factor=0), ["shape.start_factor", "(0, 1]"]),  # test_linearlr_start_factor_limits1
        (lambda: TorchLinear(start_factor=1.1), ["shape.start_factor"]),  # test_linearlr_start_factor_limits2
        (lambda: TorchLinear(end_factor=1.5), ["shape.end_factor", "[0, 1]"]),
        (lambda: TorchLinear(total_iters=0), ["shape.total_iters"]),
        (lambda: TorchCosine(T_max=0), ["shape.T_max"]),
        (lambda: TorchCosine(eta_min=-1.0), ["shape.eta_min"]),
        (lambda: TorchCyclic(mode="CATS"), ["shape.mode", "triangular2"]),  # test_cycle_lr_invalid_mode
        (lambda: TorchCyclic(step_size_up=0), ["shape.step_size_up"]),
        (lambda: TorchCyclic(base_momentum=5), ["shape.base_momentum", "[0, 1]"]),
        (lambda: TorchCyclic(base_fraction=-0.1), ["shape.base_fraction"]),
        (lambda: TorchCyclic(base_lr=float("nan")), ["shape.base_lr"]),
        (lambda: TorchExponential(gamma=-0.5), ["shape.gamma"]),
        (lambda: TorchPolynomial(power=-1), ["shape.power", ">= 0"]),
        (lambda: Sequential((TorchStep(),), (5,)), ["shape.milestones", "0 scheduler step"]),
        (lambda: Sequential((TorchStep(), TorchCosine()), (0,)), ["shape.milestones", ">= 1"]),
        (lambda: Sequential((TorchStep(), TorchCosine(), Constant()), (8, 8)), ["shape.milestones", "after the one before"]),
        (lambda: Sequential((), ()), ["shape.shapes", "_target_"]),
        (lambda: Sequential((TorchStep(step_per="epoch"), TorchCosine()), (3,)), ["shape.step_per", "pieces"]),
    ],
)
def test_bad_settings_say_what_and_how_to_fix(build, fragments):
    with pytest.raises(ShapeError) as error:
        build()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
