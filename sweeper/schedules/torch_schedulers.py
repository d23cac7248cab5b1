"""torch's step-counting schedulers as shapes: `StepLR`, `MultiStepLR`, `LinearLR`, `CyclicLR`
and `CosineAnnealingLR`, step for step, with torch's own argument names.

Like every torch shape (`sweeper.schedules.shapes`), each counts scheduler steps: training
batches by default (`step_per="batch"`), or epochs (`step_per="epoch"`: the lr changes once an
epoch, a staircase, as torch's examples step them). `lr(peak, step, total)` is the lr after
`step` calls of `scheduler.step()` for a group whose initial lr is `peak`; settings that are lrs
in torch (`eta_min`, CyclicLR's `base_lr`) are one lr for every group, as torch's scalar form.
The arithmetic is torch's closed form (`_get_closed_form_lr`, or CyclicLR's `get_lr`, in its
order); what torch's chained `scheduler.step()` computes agrees with it to 1e-12, relative
(tests/test_torch_schedulers.py steps torch's schedulers beside these).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar

from sweeper.schedules.shapes import ShapeError, _check_gamma, _check_lr_floor, _check_step_per, _check_whole, _LeavesMomentum

__all__ = ["CYCLIC_MODES", "TorchCosine", "TorchCyclic", "TorchLinear", "TorchMultiStep", "TorchStep"]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@dataclass(frozen=True)
class TorchStep(_LeavesMomentum):
    """`StepLR`: the peak times gamma every step_size scheduler steps."""

    name: ClassVar[str] = "torch_step"
    step_size: int = 30
    gamma: float = 0.1
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        _check_whole("shape.step_size", self.step_size, 1)  # torch's step_size 0 divides by zero
        _check_gamma(self.gamma)

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class TorchMultiStep(_LeavesMomentum):
    """`MultiStepLR`: the peak times gamma at each milestone (a milestone given twice counts twice,
    as torch's Counter of milestones does; their order does not matter)."""

    name: ClassVar[str] = "torch_multistep"
    milestones: tuple[int, ...] = (30, 80)
    gamma: float = 0.1
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        _check_gamma(self.gamma)
        milestones = tuple(self.milestones) if isinstance(self.milestones, (list, tuple)) else None
        if milestones is None or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
            # torch's milestone 0 is never reached (its first step is step 1): it would be ignored.
            raise ShapeError(
                f"shape.milestones: {self.milestones!r} must be a list of scheduler steps >= 1 where the lr "
                f"is multiplied by gamma, e.g. shape.milestones=[30,80]."
            )
        object.__setattr__(self, "milestones", tuple(sorted(milestones)))

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclass(frozen=True)
class TorchLinear(_LeavesMomentum):
    """`LinearLR`: the peak times a factor going linearly from start_factor to end_factor over
    total_iters scheduler steps, then end_factor (the usual warm-up, start_factor < end_factor).

    total_iters None (torch's default is 5) is the trial's training: the factor reaches
    end_factor on the step after the last.
    """

    name: ClassVar[str] = "torch_linear"
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int | None = 5
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        # torch's own limits: a start factor of 0 would make its chained form divide by zero.
        if not (_real(self.start_factor) and 0 < self.start_factor <= 1):
            raise ShapeError(f"shape.start_factor: {self.start_factor!r} must be in (0, 1] (torch's limit), e.g. 0.1.")
        if not (_real(self.end_factor) and 0 <= self.end_factor <= 1):
            raise ShapeError(f"shape.end_factor: {self.end_factor!r} must be in [0, 1] (torch's limit), e.g. 1.0.")
        if self.total_iters is not None:
            _check_whole("shape.total_iters", self.total_iters, 1)

    def lr(self, peak: float, step: int, total: int) -> float:
        total_iters = total if self.total_iters is None else self.total_iters
        return peak * (self.start_factor + (self.end_factor - self.start_factor) * min(total_iters, step) / total_iters)


@dataclass(frozen=True)
class TorchCosine(_LeavesMomentum):
    """`CosineAnnealingLR`: a cosine from the peak to eta_min over T_max scheduler steps; past T_max
    it goes on as torch's does, back up to the peak at 2 * T_max (torch_cosine_restarts restarts
    instead). T_max None (torch has no default) is the trial's training."""

    name: ClassVar[str] = "torch_cosine"
    T_max: int | None = None
    eta_min: float = 0.0
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        if self.T_max is not None:
            _check_whole("shape.T_max", self.T_max, 1)  # torch's T_max 0 divides by zero
        _check_lr_floor("shape.eta_min", self.eta_min)

    def lr(self, peak: float, step: int, total: int) -> float:
        t_max = total if self.T_max is None else self.T_max
        return self.eta_min + (peak - self.eta_min) * (1 + math.cos(math.pi * step / t_max)) / 2


@dataclass(frozen=True)
class TorchCyclic:
    """`CyclicLR`: cycles between base_lr and the peak (torch's max_lr), up over step_size_up
    scheduler steps and down over step_size_down (None: step_size_up); `mode` triangular (every
    cycle alike), triangular2 (each cycle's height halved) or exp_range (the height times
    gamma**step). With cycle_momentum the momentum (SGD momentum, Adam beta1) cycles the other
    way, between max_momentum and base_momentum, as torch sets it.

    base_lr is an lr (torch's form: one for every group); None, the default, is base_fraction
    times each group's peak, so that a slice keeps its ratios at the bottom of the cycle too.
    """

    name: ClassVar[str] = "torch_cyclic"
    base_lr: float | None = None
    base_fraction: float = 0.1
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    cycle_momentum: bool = True
    base_momentum: float = 0.8
    max_momentum: float = 0.9
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        if self.base_lr is not None:
            _check_lr_floor("shape.base_lr", self.base_lr)
        if not (_real(self.base_fraction) and math.isfinite(self.base_fraction) and self.base_fraction >= 0):
            raise ShapeError(
                f"shape.base_fraction: {self.base_fraction!r} must be a finite fraction >= 0 of the peak "
                f"(the bottom of the cycle), e.g. 0.1; or give shape.base_lr."
            )
        _check_whole("shape.step_size_up", self.step_size_up, 1)  # 0 makes torch divide by zero
        if self.step_size_down is not None:
            _check_whole("shape.step_size_down", self.step_size_down, 0)
        if self.mode not in CYCLIC_MODES:
            raise ShapeError(f"shape.mode: {self.mode!r} is not one of CyclicLR's modes {list(CYCLIC_MODES)}.")
        _check_gamma(self.gamma)
        for setting in ("base_momentum", "max_momentum"):
            value = getattr(self, setting)
            if not (_real(value) and 0 <= value <= 1):
                raise ShapeError(f"shape.{setting}: {value!r} must be a momentum in [0, 1], e.g. 0.9.")

    def _scale(self, step: int) -> float:
        """torch's scale_factor * scale_fn(...) for scheduler step `step`, in torch's order."""
        up = float(self.step_size_up)
        total_size = up + (float(self.step_size_down) if self.step_size_down is not None else up)
        step_ratio = up / total_size
        cycle = math.floor(1 + step / total_size)
        x = 1.0 + step / total_size - cycle
        factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
        return factor, self._scale_fn(cycle, step)

    def _scale_fn(self, cycle: int, step: int) -> float:
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (cycle - 1))
        return self.gamma**step

    def lr(self, peak: float, step: int, total: int) -> float:
        base_lr = peak * self.base_fraction if self.base_lr is None else self.base_lr
        factor, scale = self._scale(step)
        return base_lr + (peak - base_lr) * factor * scale

    def momentum(self, step: int, total: int) -> float | None:
        if not self.cycle_momentum:
            return None
        factor, scale = self._scale(step)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * factor * scale


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
