"""torch's step-counting schedulers as shapes (StepLR, MultiStepLR, LinearLR, CyclicLR,
CosineAnnealingLR, SequentialLR, and every torch shape stepped once an epoch), checked step by
step against torch's own schedulers on a dummy optimizer.

The cases are those of torch's test/optim/test_lrscheduler.py (the test each row ports is
named beside it), run here against the scheduler itself rather than torch's written targets;
the optimizer is that file's: two groups at lr 0.05 and 0.5. Where a case cannot be said as a
shape, the row says how it differs. The cases live in tests/helpers/torch_cases.py;
scripts/torch_reference.py writes what torch did in each into tests/data/torch_schedulers.json,
which the plan is checked against too, whatever torch is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from helpers.torch_cases import (
    CASES,
    CYCLIC_CASES,
    EPOCH_CASES,
    MOMENTUM_EPOCH_CASES,
    PEAKS,
    SEQUENTIAL_CASES,
    S,
    cyclic,
    reference_cases,
    torch_run,
)

from sweeper.schedules.sequential import Sequential
from sweeper.schedules.shapes import (
    Constant,
    FastaiOneCycle,
    Schedule,
    ShapeError,
    TorchExponential,
    TorchOneCycle,
    TorchPolynomial,
    WarmupCosine,
)
from sweeper.schedules.torch_schedulers import TorchCosine, TorchCyclic, TorchLinear, TorchMultiStep, TorchStep

EXACT = 1e-12  # relative: torch's chained steps against the closed forms
REFERENCE = Path(__file__).parent / "data" / "torch_schedulers.json"
SCRIPT = Path(__file__).parent.parent / "scripts" / "torch_reference.py"  # writes REFERENCE


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


@pytest.mark.parametrize(("case", "shape", "make", "batches"), CASES, ids=[c[0] for c in CASES])
def test_shape_matches_its_torch_scheduler_step_for_step(case, shape, make, batches):
    lrs, _ = torch_run(make, batches)
    assert_matches(Schedule(PEAKS, shape, batches), lrs)


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


@pytest.mark.parametrize(("shape", "make"), EPOCH_CASES, ids=[c[0].name for c in EPOCH_CASES])
def test_step_per_epoch_is_torch_stepped_once_an_epoch(shape, make):
    epochs, per_epoch = 10, 7
    lrs, _ = torch_run(make, epochs * per_epoch, per_epoch=per_epoch)
    assert_matches(Schedule(PEAKS, shape, epochs * per_epoch, epochs), lrs)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(("shape", "make"), MOMENTUM_EPOCH_CASES, ids=[c[0].name for c in MOMENTUM_EPOCH_CASES])
def test_momentum_cycles_step_per_epoch_too(shape, make, kind):
    lrs, momenta = torch_run(make, 10 * 5, per_epoch=5, kind=kind)
    assert_matches(Schedule(PEAKS, shape, 50, 10), lrs, momenta)


def committed_reference() -> dict:
    return json.loads(REFERENCE.read_text())


def test_the_committed_reference_holds_every_case_from_torch():
    reference = committed_reference()
    assert reference["torch"].split(".")[0] == "2"
    assert list(reference["peaks"]) == list(PEAKS)
    assert sorted(reference["cases"]) == sorted(case.name for case in reference_cases())  # else: run scripts/torch_reference.py


@pytest.mark.parametrize("case", reference_cases(), ids=lambda case: case.name)
def test_shape_matches_the_committed_torch_reference_step_for_step(case):
    # the same cases as the live tests above, against the values torch gave when the file was made
    recorded = committed_reference()["cases"][case.name]
    assert_matches(case.schedule(), recorded["lrs"], recorded["momenta"] if case.momentum else None)


def test_the_reference_script_writes_what_torch_does_now():
    # the script's own output for a few cases equals the live run (the script is not stale)
    spec = importlib.util.spec_from_file_location("torch_reference", SCRIPT)
    torch_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_reference)
    cases = reference_cases()[18:20]  # a cyclic case: its momenta too
    written = torch_reference.reference(cases)
    for case in cases:
        lrs, momenta = case.torch_run()
        momenta = momenta if case.momentum else None
        assert written["cases"][case.name] == {"batches": case.batches, "per_epoch": case.per_epoch, "lrs": lrs, "momenta": momenta}
    assert written["torch"] == torch.__version__


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
