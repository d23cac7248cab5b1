"""torch's schedulers as shapes: `StepLR`, `MultiStepLR`, `LinearLR`, `CyclicLR`,
`CosineAnnealingLR` and `ReduceLROnPlateau`, step for step, with torch's own argument names.

Like every torch shape (`sweeper.schedules.shapes`), each counts scheduler steps: training
batches by default (`step_per="batch"`), or epochs (`step_per="epoch"`: the lr changes once an
epoch, a staircase, as torch's examples step them). `lr(peak, step, total)` is the lr after
`step` calls of `scheduler.step()` for a group whose initial lr is `peak`; settings that are lrs
in torch (`eta_min`, CyclicLR's `base_lr`) are one lr for every group, as torch's scalar form.
The arithmetic is torch's closed form (`_get_closed_form_lr`, or CyclicLR's `get_lr`, in its
order); what torch's chained `scheduler.step()` computes agrees with it to 1e-12, relative
(tests/test_torch_schedulers.py steps torch's schedulers beside these).

`TorchPlateau` (`ReduceLROnPlateau`) is the one shape whose lrs follow the validation objective:
it is stepped once an epoch, fed the objective (see its docstring).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from sweeper.schedules.shapes import ShapeError, _check_gamma, _check_lr_floor, _check_step_per, _check_whole, _LeavesMomentum

__all__ = ["CYCLIC_MODES", "PLATEAU_MODES", "TorchCosine", "TorchCyclic", "TorchLinear", "TorchMultiStep", "TorchPlateau", "TorchStep"]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
PLATEAU_MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")


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


@dataclass(frozen=True)
class TorchPlateau(_LeavesMomentum):
    """`ReduceLROnPlateau`: every group's lr times `factor` once the objective has not improved for
    more than `patience` epochs (then `cooldown` epochs in which none count), never below
    `min_lr`, and not at all where the cut would be `eps` or less (torch's rules, per group).

    Stepped once an epoch, after validation, fed the trial's objective (`train.objective`): the
    lr of epoch e is the lr after e steps fed the objectives of epochs 0 .. e-1. `mode` None (the
    default; torch's is "min") follows `train.direction` (`for_direction`): maximize is "max". Every
    group is cut at the same epochs, so a slice keeps its ratios until a group reaches its
    `min_lr` (one lr for every group, or a list, one per layer group: torch's per-group form) or
    its cut would be `eps` or less.

    Where the objectives are not known yet (`sweeper schedule`, or the epochs after those a trial
    has run) the plan is for an objective that never improves: the first epoch sets the best
    (torch counts a first metric as better than none), no later one beats it.
    """

    name: ClassVar[str] = "torch_plateau"
    step_per: ClassVar[str] = "epoch"  # the objective exists once an epoch
    follows_objective: ClassVar[bool] = True
    mode: str | None = None
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float | tuple[float, ...] = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in PLATEAU_MODES:
            raise ShapeError(
                f"shape.mode: {self.mode!r} is not one of {list(PLATEAU_MODES)}; null follows train.direction "
                f"(maximize: max, minimize: min)."
            )
        # torch refuses factor >= 1 (no cut); below 0 it would cut every lr to min_lr, as 0 does: say 0.
        if not (_real(self.factor) and 0 <= self.factor < 1):
            raise ShapeError(
                f"shape.factor: {self.factor!r} must be in [0, 1) (torch refuses 1 and above): the lr is cut to lr x factor, e.g. 0.1."
            )
        _check_whole("shape.patience", self.patience, 0)
        _check_whole("shape.cooldown", self.cooldown, 0)
        # torch takes a negative threshold, which counts a worse objective as an improvement: refused.
        if not (_real(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise ShapeError(f"shape.threshold: {self.threshold!r} must be a finite margin >= 0 an improvement must pass, e.g. 1e-4.")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ShapeError(
                f"shape.threshold_mode: {self.threshold_mode!r} is not one of {list(THRESHOLD_MODES)} (relative or absolute margin)."
            )
        if isinstance(self.min_lr, (list, tuple)):
            if not self.min_lr:
                raise ShapeError("shape.min_lr: [] gives no floor; give one lr, or one per layer group, e.g. shape.min_lr=1e-6.")
            for value in self.min_lr:
                _check_lr_floor("shape.min_lr", value)
            object.__setattr__(self, "min_lr", tuple(self.min_lr))
        else:
            _check_lr_floor("shape.min_lr", self.min_lr)
        if not (_real(self.eps) and math.isfinite(self.eps) and self.eps >= 0):
            raise ShapeError(f"shape.eps: {self.eps!r} must be a finite lr >= 0: a cut of eps or less is skipped, e.g. 1e-8.")

    def for_direction(self, direction: str) -> TorchPlateau:
        """This shape with mode set from the objective's direction where it is None."""
        if self.mode is not None:
            return self
        if direction not in ("minimize", "maximize"):
            raise ShapeError(
                f"shape.mode: null follows train.direction, which is {direction!r}; set train.direction "
                f"(minimize or maximize) or shape.mode (min or max)."
            )
        return replace(self, mode="max" if direction == "maximize" else "min")

    def cuts(self, steps: int, metrics: Sequence[float] = ()) -> list[int]:
        """How many times the lr has been cut before each of `steps` epochs, fed `metrics` (the
        objective after each epoch so far; then one that never improves). torch's `step`, in its order."""
        mode = self.mode or "min"
        worst = math.inf if mode == "min" else -math.inf
        best, bad, cooling, cuts = worst, 0, 0, 0
        counts = [0]
        for epoch in range(steps - 1):
            if epoch < len(metrics):
                improved = self._is_better(float(metrics[epoch]), best, mode)
                best = float(metrics[epoch]) if improved else best
            else:  # never improves: the first sets the best, and nothing beats a best of -worst
                improved = best == worst
                best = -worst if improved else best
            bad = 0 if improved else bad + 1
            if cooling > 0:
                cooling -= 1
                bad = 0  # bad epochs in the cooldown are ignored
            if bad > self.patience:
                cuts, cooling, bad = cuts + 1, self.cooldown, 0
            counts.append(cuts)
        return counts

    def _is_better(self, value: float, best: float, mode: str) -> bool:
        if mode == "min":
            return value < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return value > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def group_lrs(self, peaks: Sequence[float], steps: int, metrics: Sequence[float] = ()) -> list[list[float]]:
        """Every group's lr for each of `steps` epochs, fed `metrics` (see `cuts`): each cut is
        torch's `max(lr * factor, min_lr)`, skipped where it would take eps or less off."""
        floors = self.min_lr if isinstance(self.min_lr, tuple) else (self.min_lr,) * len(peaks)
        if len(floors) != len(peaks):
            raise ShapeError(
                f"shape.min_lr: {len(floors)} lrs for {len(peaks)} layer groups; give one lr for every "
                f"group, or one per group, e.g. shape.min_lr={[0.0] * len(peaks)}."
            )
        counts = self.cuts(steps, metrics)
        after_cuts = []  # per group: its lr after 0, 1, ... cuts
        for peak, floor in zip(peaks, floors):
            values = [float(peak)]
            for _ in range(counts[-1]):
                new = max(values[-1] * self.factor, floor)
                values.append(new if values[-1] - new > self.eps else values[-1])
            after_cuts.append(values)
        return [[values[count] for values in after_cuts] for count in counts]

    def lr(self, peak: float, step: int, total: int) -> float:
        """One group's lr at epoch `step` of `total`, for an objective that never improves."""
        return self.group_lrs((peak,), total)[step][0]


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
