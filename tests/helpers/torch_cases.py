"""torch's step-counting schedulers and the shapes that say them: the cases of
tests/test_torch_schedulers.py, which runs them against torch live, and of
scripts/torch_reference.py, which writes what torch did into tests/data/torch_schedulers.json.

The cases are those of torch's test/optim/test_lrscheduler.py (the test each row ports is named
beside it); the optimizer is that file's: two groups at lr 0.05 and 0.5."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler

from sweeper.schedules.sequential import Sequential
from sweeper.schedules.shapes import (
    Schedule,
    TorchCosineRestarts,
    TorchExponential,
    TorchOneCycle,
    TorchPolynomial,
)
from sweeper.schedules.torch_schedulers import TorchCosine, TorchCyclic, TorchLinear, TorchMultiStep, TorchStep

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

# (a shape that moves momentum, torch's scheduler) stepped once an epoch, 5 batches an epoch
MOMENTUM_EPOCH_CASES = [
    (TorchOneCycle(step_per="epoch"), lambda o: S.OneCycleLR(o, max_lr=list(PEAKS), total_steps=10)),
    (
        TorchCyclic(base_fraction=0.2, step_size_up=2, step_size_down=3, step_per="epoch"),
        lambda o: S.CyclicLR(o, base_lr=[p / 5 for p in PEAKS], max_lr=list(PEAKS), step_size_up=2, step_size_down=3),
    ),
]


@dataclass(frozen=True)
class TorchCase:
    """One case: the shape, torch's scheduler `make(optimizer)` stepped after every `per_epoch`
    batches, and whether the shape moves the momentum too."""

    name: str
    shape: object
    make: Callable
    batches: int
    per_epoch: int = 1
    momentum: bool = False

    def schedule(self) -> Schedule:
        epochs = self.batches // self.per_epoch if self.per_epoch > 1 else None
        return Schedule(PEAKS, self.shape, self.batches, epochs)

    def torch_run(self) -> tuple[list[list[float]], list[float]]:
        return torch_run(self.make, self.batches, per_epoch=self.per_epoch)


def sequential_lr(make_pieces, milestones):
    return lambda o: S.SequentialLR(o, make_pieces(o), milestones=list(milestones))


def reference_cases() -> list[TorchCase]:
    """Every case above, as the reference file holds it (SGD: Adam's beta1 takes the same values)."""
    return [
        *(TorchCase(name, shape, make, batches) for name, shape, make, batches in CASES),
        *(
            TorchCase(
                name,
                TorchCyclic(base_fraction=0.2, base_momentum=0.1, max_momentum=0.5, **settings),
                cyclic_lr(settings),
                batches,
                momentum=True,
            )
            for name, settings, batches in CYCLIC_CASES
        ),
        *(
            TorchCase(name, shape, sequential_lr(pieces, milestones), batches)
            for name, shape, pieces, milestones, batches in SEQUENTIAL_CASES
        ),
        *(TorchCase(f"{shape.name} once an epoch", shape, make, 70, per_epoch=7) for shape, make in EPOCH_CASES),
        *(TorchCase(f"{shape.name} once an epoch", shape, make, 50, per_epoch=5, momentum=True) for shape, make in MOMENTUM_EPOCH_CASES),
    ]


def cyclic_lr(settings: dict):
    return lambda o: cyclic(o, **settings)
