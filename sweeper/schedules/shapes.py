"""Cycle shapes: how the learning rate (and momentum) moves over training time.

A shape is a small frozen dataclass, so it pickles across worker processes and prints as its own
config. `shape.lr(peak, step, total)` is the learning rate of a group whose peak is `peak` at
training batch `step` of `total` (0-based, over all epochs); `shape.momentum(step, total)` is the
SGD momentum or Adam beta1 for that batch, or None where the shape leaves momentum alone.

Each shape is named after the library that defines it and equals it batch for batch:
- fastai (batch k of N at position k / N, as fastai's ParamScheduler reads `pct_train`; phase
  boundaries in float32, as fastai's `combine_scheds` keeps them): `FastaiOneCycle`
  (`fit_one_cycle`), `FastaiFlatCos` (`fit_flat_cos`), `FastaiSGDR` (`fit_sgdr`);
- torch (`torch.optim.lr_scheduler`, stepped once a batch, or once an epoch with
  `step_per="epoch"`): `TorchOneCycle` (`OneCycleLR`), `TorchCosineRestarts`
  (`CosineAnnealingWarmRestarts`), `TorchExponential` (`ExponentialLR`), `TorchPolynomial`
  (`PolynomialLR`); the others are in `sweeper.schedules.torch_schedulers`, and `SequentialLR`
  in `sweeper.schedules.sequential`.
- The other shapes start at their first value on step 0 and reach their last value on the final
  step (position k / (N - 1)): `Constant`, `Triangular`, `WarmupCosine`, `WarmupStableDecay`, and
  by default `Points` and `FunctionShape` (`position="fastai"` reads them at k / N instead); these
  two can move the momentum too (`mom_points`, `mom_fn`).

A `Schedule` joins a shape with the peak lr of every group over one phase of training;
`sweeper.trial.schedule` joins the phases of a trial.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

__all__ = [
    "Constant",
    "FastaiFlatCos",
    "FastaiOneCycle",
    "FastaiSGDR",
    "FunctionShape",
    "POSITIONS",
    "Points",
    "STEP_UNITS",
    "Schedule",
    "Shape",
    "ShapeError",
    "TorchCosineRestarts",
    "TorchExponential",
    "TorchOneCycle",
    "TorchPolynomial",
    "Triangular",
    "WarmupCosine",
    "WarmupStableDecay",
    "combine_position",
    "combined_cos",
    "follows_objective",
    "linear_decay",
    "sched_cos",
    "sched_lin",
    "shape_document",
    "steps_per_epoch",
]


class ShapeError(ValueError):
    """A cycle-shape setting that cannot work; the message names the setting and the fix."""


class Shape(Protocol):
    name: ClassVar[str]

    def lr(self, peak: float, step: int, total: int) -> float: ...

    def momentum(self, step: int, total: int) -> float | None: ...


def sched_cos(start: float, end: float, pos: float) -> float:
    """fastai's cosine annealing from start (pos 0) to end (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_lin(start: float, end: float, pos: float) -> float:
    return start + pos * (end - start)


_ANNEALS: dict[str, Callable[[float, float, float], float]] = {"cos": sched_cos, "linear": sched_lin}


def combine_position(pcts: tuple[float, ...], pos: float) -> tuple[int, float]:
    """fastai's `combine_scheds`: the phase that `pos` falls in and the position within it.

    fastai keeps the phase boundaries in a float32 tensor (their cumulative sum accumulated in
    float64, as torch's cumsum does on the CPU) and compares and divides in float32; doing the
    same keeps us equal to fastai even near the end of training, where the lr is tiny and a
    float64 position would drift from fastai's by ~1e-5.
    """
    bounds = _bounds(pcts)
    here = np.float32(pos)
    phase = min(int(np.flatnonzero(here >= bounds).max()), len(pcts) - 1)
    return phase, float((here - bounds[phase]) / (bounds[phase + 1] - bounds[phase]))


@functools.lru_cache(maxsize=64)
def _bounds(pcts: tuple[float, ...]) -> np.ndarray:
    return np.cumsum(np.array([0.0, *pcts], dtype=np.float32), dtype=np.float64).astype(np.float32)


def combined_cos(pct: float, start: float, middle: float, end: float, pos: float, anneal=sched_cos) -> float:
    """fastai's `combined_cos`: start -> middle over [0, pct), then middle -> end over [pct, 1]."""
    phase, phase_pos = combine_position((pct, 1 - pct), pos)
    return anneal(start, middle, phase_pos) if phase == 0 else anneal(middle, end, phase_pos)


def _check_anneal(setting: str, value: str) -> None:
    if value not in _ANNEALS:
        raise ShapeError(f"{setting}: {value!r} is not an anneal; choose one of {list(_ANNEALS)}.")


def _check_fraction(setting: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise ShapeError(
            f"{setting}: {value!r} is outside (0, 1); it is the fraction of training spent in that phase, e.g. {setting}=0.25."
        )


def _check_pct_start(value: float) -> None:
    """fastai's pct_start: 0 (no warm-up) and 1 (no annealing) run in fastai, and here."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ShapeError(
            f"shape.pct_start: {value!r} is outside [0, 1]; it is the fraction of training spent warming up, e.g. shape.pct_start=0.25."
        )


def _check_divisor(setting: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ShapeError(
            f"{setting}: {value!r} must be a positive, finite divisor of the peak lr "
            f"(e.g. {setting}=25); the lr it sets is peak / {setting}."
        )


def _end_pos(step: int, total: int) -> float:
    """Position in [0, 1] that reaches 1 on the last step (for shapes that must end exactly)."""
    return step / (total - 1) if total > 1 else 1.0


# Where batch `step` of `total` sits in [0, 1], for the shapes that offer a choice:
#   end:    step / (total - 1): the first and the last step reach the shape's two ends;
#   fastai: step / total, fastai's ParamScheduler (pct_train): the last step is at (N-1)/N.
def _fastai_pos(step: int, total: int) -> float:
    return step / total


POSITIONS: dict[str, Callable[[int, int], float]] = {"end": _end_pos, "fastai": _fastai_pos}


def _check_position(value: str) -> None:
    if value not in POSITIONS:
        raise ShapeError(
            f"shape.position: {value!r} is not a position; choose end (step / (N-1): the last step "
            f"reaches the last point) or fastai (step / N, as fastai's ParamScheduler)."
        )


def _check_whole(setting: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShapeError(f"{setting}: {value!r} must be a whole number >= {minimum}, e.g. {setting}={max(minimum, 2)}.")


STEP_UNITS = ("batch", "epoch")


def _check_step_per(value: str) -> None:
    if value not in STEP_UNITS:
        raise ShapeError(
            f"shape.step_per: {value!r} is not a unit; choose batch (the scheduler steps after every "
            f"training batch) or epoch (after every epoch, as torch's examples step it: a staircase)."
        )


def _check_lr_floor(setting: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ShapeError(f"{setting}: {value!r} must be a finite lr >= 0 (one value for every group, as in torch), e.g. 0.")


@dataclass(frozen=True)
class FastaiOneCycle:
    """fastai's one-cycle: `combined_cos(pct_start, peak/div, peak, peak/div_final)`."""

    name: ClassVar[str] = "fastai_one_cycle"
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95)
    anneal: str = "cos"

    def __post_init__(self) -> None:
        _check_pct_start(self.pct_start)
        _check_divisor("shape.div", self.div)
        _check_divisor("shape.div_final", self.div_final)
        _check_anneal("shape.anneal", self.anneal)
        if self.moms is not None:
            object.__setattr__(self, "moms", _momentum_triple("shape.moms", self.moms))

    def lr(self, peak: float, step: int, total: int) -> float:
        ends = (peak / self.div, peak, peak / self.div_final)
        return combined_cos(self.pct_start, *ends, step / total, _ANNEALS[self.anneal])

    def momentum(self, step: int, total: int) -> float | None:
        if self.moms is None:
            return None
        return combined_cos(self.pct_start, *self.moms, step / total, _ANNEALS[self.anneal])


@dataclass(frozen=True)
class TorchOneCycle:
    """`torch.optim.lr_scheduler.OneCycleLR`, step for step (same defaults and names).

    Where pct_start * total == 1, OneCycleLR raises ZeroDivisionError; this shape puts the peak
    on step 0 and anneals from there.
    """

    name: ClassVar[str] = "torch_one_cycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    anneal_strategy: str = "cos"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        _check_fraction("shape.pct_start", self.pct_start)
        _check_divisor("shape.div_factor", self.div_factor)
        _check_divisor("shape.final_div_factor", self.final_div_factor)
        _check_anneal("shape.anneal_strategy", self.anneal_strategy)
        _momentum_triple("shape.base_momentum/max_momentum", (self.max_momentum, self.base_momentum, self.max_momentum))

    def _phases(self, total: int) -> list[tuple[float, int, int]]:
        """(end step, start key, end key) per phase; keys index (initial, max, min) values."""
        initial, top, low = 0, 1, 2
        if self.three_phase:
            return [
                (float(self.pct_start * total) - 1, initial, top),
                (float(2 * self.pct_start * total) - 2, top, initial),
                (total - 1, initial, low),
            ]
        return [(float(self.pct_start * total) - 1, initial, top), (total - 1, top, low)]

    def _value(self, values: tuple[float, float, float], step: int, total: int) -> float:
        anneal = _torch_cos if self.anneal_strategy == "cos" else _torch_linear
        start_step = 0.0
        phases = self._phases(total)
        for i, (end_step, start_key, end_key) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                # A phase of no length (pct_start * total == 1) makes OneCycleLR divide by zero;
                # here it ends where it starts, on step 0: the peak.
                pct = (step - start_step) / span if span > 0 else 1.0
                return anneal(values[start_key], values[end_key], pct)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")

    def lr(self, peak: float, step: int, total: int) -> float:
        initial = peak / self.div_factor
        return self._value((initial, peak, initial / self.final_div_factor), step, total)

    def momentum(self, step: int, total: int) -> float | None:
        if not self.cycle_momentum:
            return None
        # Momentum runs opposite to the lr: max at the start and end, base at the lr's peak.
        return self._value((self.max_momentum, self.base_momentum, self.max_momentum), step, total)


def _check_gamma(gamma: float) -> None:
    # gamma 0 would train one batch and stop; a negative one flips the lr's sign every step.
    if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ShapeError(
            f"shape.gamma: {gamma!r} must be a positive, finite factor the lr is multiplied by each "
            f"time (below 1 it decays, above 1 it grows), e.g. shape.gamma=0.98."
        )


def _torch_cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _torch_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


class _LeavesMomentum:
    """For shapes that move only the lr: the optimizer keeps its own momentum / beta1."""

    def momentum(self, step: int, total: int) -> float | None:
        return None


@dataclass(frozen=True)
class Constant(_LeavesMomentum):
    """The peak lr at every step; momentum left to the optimizer."""

    name: ClassVar[str] = "constant"

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak


@dataclass(frozen=True)
class FastaiFlatCos(_LeavesMomentum):
    """fastai's `fit_flat_cos`: the peak until pct_start, then cosine to peak/div_final.

    fit_flat_cos schedules no momentum: the optimizer keeps its own.
    """

    name: ClassVar[str] = "fastai_flat_cos"
    pct_start: float = 0.75
    div_final: float = 1e5

    def __post_init__(self) -> None:
        _check_pct_start(self.pct_start)
        _check_divisor("shape.div_final", self.div_final)

    def lr(self, peak: float, step: int, total: int) -> float:
        return combined_cos(self.pct_start, peak, peak, peak / self.div_final, step / total)


@dataclass(frozen=True)
class FastaiSGDR(_LeavesMomentum):
    """fastai's `fit_sgdr`: n_cycles cosines from the peak to 0, each cycle_mult times longer.

    fit_sgdr trains `epochs` = cycle_len * (cycle_mult**n_cycles - 1) / (cycle_mult - 1) epochs
    (cycle_len * n_cycles when cycle_mult is 1, which fastai itself cannot run: it divides by
    cycle_mult - 1). The cycles take the same fractions of any trial's training, so with
    train.epochs equal to `epochs` (or a multiple of it) every restart lands on an epoch
    boundary, and the lrs are fit_sgdr's batch for batch. It schedules no momentum.
    """

    name: ClassVar[str] = "fastai_sgdr"
    n_cycles: int = 3
    cycle_len: int = 1
    cycle_mult: int = 2

    def __post_init__(self) -> None:
        _check_whole("shape.n_cycles", self.n_cycles, 1)
        _check_whole("shape.cycle_len", self.cycle_len, 1)
        _check_whole("shape.cycle_mult", self.cycle_mult, 1)

    @property
    def epochs(self) -> int:
        """The epochs fit_sgdr trains for these cycles."""
        if self.cycle_mult == 1:
            return self.cycle_len * self.n_cycles
        return self.cycle_len * (self.cycle_mult**self.n_cycles - 1) // (self.cycle_mult - 1)

    def lr(self, peak: float, step: int, total: int) -> float:
        pcts = tuple(self.cycle_len * self.cycle_mult**i / self.epochs for i in range(self.n_cycles))
        _, pos = combine_position(pcts, step / total)
        return sched_cos(peak, 0.0, pos)


@dataclass(frozen=True)
class TorchCosineRestarts(_LeavesMomentum):
    """`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`, stepped once a batch.

    A cosine from the peak to eta_min over T_0 batches, restarted at the peak; each cycle is
    T_mult times longer than the one before. eta_min is an lr (the same for every group), as in
    torch. The cycles are counted in batches, whatever the length of training.
    """

    name: ClassVar[str] = "torch_cosine_restarts"
    T_0: int = 50
    T_mult: int = 1
    eta_min: float = 0.0
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        _check_whole("shape.T_0", self.T_0, 1)
        _check_whole("shape.T_mult", self.T_mult, 1)
        _check_lr_floor("shape.eta_min", self.eta_min)

    def lr(self, peak: float, step: int, total: int) -> float:
        t_cur, t_i = step, self.T_0
        while t_cur >= t_i:  # the restarts before this step
            t_cur, t_i = t_cur - t_i, t_i * self.T_mult
        return self.eta_min + (peak - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


@dataclass(frozen=True)
class TorchExponential(_LeavesMomentum):
    """`torch.optim.lr_scheduler.ExponentialLR`: the peak times gamma**step.

    A gamma above 1 grows the lr every step, as torch lets it (an lr range test does that).
    """

    name: ClassVar[str] = "torch_exponential"
    gamma: float = 0.98
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        _check_gamma(self.gamma)

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak * self.gamma**step


@dataclass(frozen=True)
class TorchPolynomial(_LeavesMomentum):
    """`torch.optim.lr_scheduler.PolynomialLR`: peak * (1 - step / total_iters) ** power, then 0
    (power 0: the peak throughout, as torch).

    total_iters None (the default; torch's is 5) is the trial's training batches, so the lr
    falls to 0 just after the last one.
    """

    name: ClassVar[str] = "torch_polynomial"
    total_iters: int | None = None
    power: float = 1.0
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        if self.total_iters is not None:
            _check_whole("shape.total_iters", self.total_iters, 1)
        # power 0 holds the peak (torch's 0**0 == 1); a negative power would grow the lr without
        # bound and divide by zero at total_iters, as PolynomialLR does.
        if isinstance(self.power, bool) or not (isinstance(self.power, (int, float)) and math.isfinite(self.power) and self.power >= 0):
            raise ShapeError(f"shape.power: {self.power!r} must be a finite power >= 0, e.g. shape.power=1.0.")

    def lr(self, peak: float, step: int, total: int) -> float:
        total_iters = total if self.total_iters is None else self.total_iters
        return peak * (1.0 - min(total_iters, step) / total_iters) ** self.power


@dataclass(frozen=True)
class WarmupCosine(_LeavesMomentum):
    """Linear warm-up from peak/div over warmup_pct of training, then cosine to peak/div_final."""

    name: ClassVar[str] = "warmup_cosine"
    anneal: ClassVar[Callable[[float, float, float], float]] = staticmethod(sched_cos)
    warmup_pct: float = 0.1
    div: float = 25.0
    div_final: float = 1e4

    def __post_init__(self) -> None:
        _check_fraction("shape.warmup_pct", self.warmup_pct)
        _check_divisor("shape.div", self.div)
        _check_divisor("shape.div_final", self.div_final)

    def lr(self, peak: float, step: int, total: int) -> float:
        pos = _end_pos(step, total)
        if pos < self.warmup_pct:
            return sched_lin(peak / self.div, peak, pos / self.warmup_pct)
        return self.anneal(peak, peak / self.div_final, (pos - self.warmup_pct) / (1 - self.warmup_pct))


@dataclass(frozen=True)
class Triangular(WarmupCosine):
    """Linear up from peak/div to the peak at warmup_pct, then linear down to peak/div_final."""

    name: ClassVar[str] = "triangular"
    anneal: ClassVar[Callable[[float, float, float], float]] = staticmethod(sched_lin)
    warmup_pct: float = 0.5


@dataclass(frozen=True)
class WarmupStableDecay(_LeavesMomentum):
    """Warm-up, a long stable phase at the peak, then a short decay (the "WSD" schedule)."""

    name: ClassVar[str] = "warmup_stable_decay"
    warmup_pct: float = 0.05
    decay_pct: float = 0.2
    div: float = 25.0
    div_final: float = 1e4
    decay: str = "linear"

    def __post_init__(self) -> None:
        _check_fraction("shape.warmup_pct", self.warmup_pct)
        _check_fraction("shape.decay_pct", self.decay_pct)
        if self.warmup_pct + self.decay_pct >= 1:
            raise ShapeError(
                f"shape.warmup_pct + shape.decay_pct = {self.warmup_pct + self.decay_pct:g} leaves "
                f"no stable phase; keep their sum below 1 (e.g. warmup_pct=0.05 decay_pct=0.2)."
            )
        _check_divisor("shape.div", self.div)
        _check_divisor("shape.div_final", self.div_final)
        _check_anneal("shape.decay", self.decay)

    def lr(self, peak: float, step: int, total: int) -> float:
        pos = _end_pos(step, total)
        decay_start = 1 - self.decay_pct
        if pos < self.warmup_pct:
            return sched_lin(peak / self.div, peak, pos / self.warmup_pct)
        if pos < decay_start:
            return peak
        return _ANNEALS[self.decay](peak, peak / self.div_final, (pos - decay_start) / self.decay_pct)


@dataclass(frozen=True)
class Points:
    """A custom shape: (position, multiplier of the peak) points joined by straight lines.

    Positions run from 0 to 1, never decreasing; a position given twice is a step (the lr jumps
    there, as a fastai `combine_scheds` piece of length 0 or `SchedNo` pieces make it). With
    `position="end"` (the default) the first step is at 0 and the last at 1; with
    `position="fastai"` batch k of N is at k / N and the lines are fastai's `combine_scheds` of
    `SchedLin`s (float32 boundaries), as a fastai ParamScheduler runs them. `mom_points`, in the
    same form with momenta (SGD momentum, Adam beta1) for values, moves the momentum as a
    ParamScheduler of `mom` does; None leaves it to the optimizer.
    """

    name: ClassVar[str] = "points"
    points: tuple[tuple[float, float], ...] = ((0.0, 0.04), (0.3, 1.0), (1.0, 1e-4))
    position: str = "end"
    mom_points: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        _check_position(self.position)
        object.__setattr__(self, "points", _checked_points("shape.points", self.points, "multipliers", math.inf))
        if self.mom_points is not None:
            object.__setattr__(self, "mom_points", _checked_points("shape.mom_points", self.mom_points, "momenta", 1.0))

    def multiplier(self, pos: float) -> float:
        return _along(self.points, pos, self.position)

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak * self.multiplier(POSITIONS[self.position](step, total))

    def momentum(self, step: int, total: int) -> float | None:
        if self.mom_points is None:
            return None
        return _along(self.mom_points, POSITIONS[self.position](step, total), self.position)


def _checked_points(setting: str, given: object, values: str, most: float) -> tuple[tuple[float, float], ...]:
    example = "[[0, 0.04], [0.3, 1.0], [1, 1e-4]]" if values == "multipliers" else "[[0, 0.95], [0.25, 0.85], [1, 0.95]]"
    try:
        points = tuple((float(p), float(v)) for p, v in given)
    except (TypeError, ValueError):
        raise ShapeError(f"{setting}: {given!r} must be a list of [position, value] pairs, e.g. {example}.") from None
    positions = [p for p, _ in points]
    if len(points) < 2 or positions[0] != 0.0 or positions[-1] != 1.0:
        raise ShapeError(f"{setting}: positions {positions} must start at 0 and end at 1 (at least two points), e.g. {example}.")
    if any(b < a for a, b in zip(positions, positions[1:])):
        raise ShapeError(f"{setting}: positions {positions} must never decrease (a position given twice is a step).")
    if any(not math.isfinite(v) or not 0 <= v <= most for _, v in points):
        bounds = ">= 0" if math.isinf(most) else f"in [0, {most:g}]"
        raise ShapeError(f"{setting}: {values} must be finite and {bounds}, got {points}.")
    return points


def _along(points: tuple[tuple[float, float], ...], pos: float, position: str) -> float:
    """The value at `pos` on the lines through `points`; at a step, the value after it."""
    if position == "fastai":
        pcts = tuple(p1 - p0 for (p0, _), (p1, _) in zip(points, points[1:]))
        segment, segment_pos = combine_position(pcts, pos)
        return sched_lin(points[segment][1], points[segment + 1][1], segment_pos)
    segment = min(bisect.bisect_right([p for p, _ in points], pos) - 1, len(points) - 2)
    (p0, v0), (p1, v1) = points[segment], points[segment + 1]
    return v1 if p1 == p0 else sched_lin(v0, v1, (pos - p0) / (p1 - p0))


@dataclass(frozen=True)
class FunctionShape:
    """A custom shape from a function `f(pos) -> multiplier of the peak`, pos in [0, 1].

    `fn` is the function's dotted import path (e.g. "mypkg.schedules.sqrt_decay"): a string keeps
    the shape picklable and lets the config record exactly which function ran. `mom_fn`, a
    dotted path too, is `f(pos) -> momentum` (SGD momentum, Adam beta1), as a fastai
    ParamScheduler of `mom`; None leaves the momentum to the optimizer. `position`: "end"
    (step / (N-1), the default: the last step is at 1) or "fastai" (step / N, as a fastai
    ParamScheduler calls its functions).
    """

    name: ClassVar[str] = "function"
    fn: str = "math.cos"
    position: str = "end"
    mom_fn: str | None = None
    _resolved: Callable[[float], float] | None = field(default=None, repr=False, compare=False)
    _resolved_mom: Callable[[float], float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_position(self.position)
        object.__setattr__(self, "_resolved", _imported("shape.fn", self.fn))
        if self.mom_fn is not None:
            object.__setattr__(self, "_resolved_mom", _imported("shape.mom_fn", self.mom_fn))

    def __getstate__(self) -> dict:
        return {"fn": self.fn, "position": self.position, "mom_fn": self.mom_fn}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "fn", state["fn"])
        object.__setattr__(self, "position", state.get("position", "end"))
        object.__setattr__(self, "mom_fn", state.get("mom_fn"))
        self.__post_init__()

    def lr(self, peak: float, step: int, total: int) -> float:
        return peak * float(self._resolved(POSITIONS[self.position](step, total)))

    def momentum(self, step: int, total: int) -> float | None:
        if self._resolved_mom is None:
            return None
        return float(self._resolved_mom(POSITIONS[self.position](step, total)))


def _imported(setting: str, path: object) -> Callable[[float], float]:
    module_name, _, attr = str(path).rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ShapeError(
            f"{setting}: cannot import {path!r}; give the dotted path of a function of pos that is "
            f"importable here (e.g. mypkg.schedules.my_shape)."
        ) from None
    # A class is callable too, but called with pos it builds an object, not a number: refused
    # here, before anything is written, rather than as a TypeError at the first step.
    what = "a class" if isinstance(function, type) else None if callable(function) else f"a {type(function).__name__}"
    if what is None and not _takes_one_argument(function):
        what = "a callable of other arguments"
    if what:
        raise ShapeError(
            f"{setting}: {path!r} is {what}, not a function of pos; give the dotted path of a function "
            f"pos -> number (e.g. sweeper.schedules.shapes.linear_decay)."
        )
    return function


def _takes_one_argument(function: Callable) -> bool:
    try:
        inspect.signature(function).bind(0.5)
    except ValueError:
        return True  # a builtin without a signature (math.cos): called, it says what it takes
    except TypeError:
        return False
    return True


def linear_decay(pos: float) -> float:
    """An example for `FunctionShape`: from the peak straight down to 0 at the last step."""
    return 1.0 - pos


def _momentum_triple(setting: str, moms: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(m) for m in moms)
    if len(values) != 3 or not all(0 <= m < 1 for m in values):
        raise ShapeError(f"{setting}: {list(moms)!r} must be three momenta in [0, 1) (start, middle, end), e.g. [0.95, 0.85, 0.95].")
    return values


@dataclass(frozen=True)
class Schedule:
    """The peak lr of every layer group run through one shape over `total` training batches.

    A shape with `step_per="epoch"` is stepped once an epoch: batch `step` of `total` is in
    epoch `step * epochs // total`, and the shape sees that epoch of `epochs` as its step and
    total (so `epochs` must be given, and the batches split evenly into epochs, as they do in
    training).

    A shape that follows the validation objective (`follows_objective`: torch_plateau) sets every
    group's lr at once from `metrics`, the objective after each epoch so far; the epochs after
    them are planned for an objective that never improves.
    """

    peaks: tuple[float, ...]
    shape: Shape
    total: int
    epochs: int | None = None
    metrics: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ShapeError(f"steps: {self.total} must be at least 1 training batch.")
        object.__setattr__(self, "peaks", tuple(float(p) for p in self.peaks))
        if steps_per_epoch(self.shape) and not self.epochs:
            raise ShapeError("shape.step_per: epoch needs the phase's epochs; step it per batch or train whole epochs.")

    def scheduler_step(self, step: int) -> tuple[int, int]:
        """The shape's (step, total) for training batch `step`: the batch, or its epoch."""
        if steps_per_epoch(self.shape):
            return step * self.epochs // self.total, self.epochs
        return step, self.total

    def at(self, step: int) -> tuple[list[float], float | None]:
        """The lr of every group and the momentum for training batch `step`."""
        shape_step, shape_total = self.scheduler_step(step)
        if follows_objective(self.shape):
            lrs = list(self._followed[shape_step])
        else:
            lrs = [self.shape.lr(peak, shape_step, shape_total) for peak in self.peaks]
        return lrs, self.shape.momentum(shape_step, shape_total)

    @functools.cached_property
    def _followed(self) -> list[list[float]]:
        """A shape that follows the objective: every group's lr for each of its steps."""
        return self.shape.group_lrs(self.peaks, self.epochs, self.metrics)

    @functools.cached_property
    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """`at` every step at once: the lrs [step, group] and the momentum [step] (NaN: the
        optimizer's own). A shape stepped once an epoch is asked once an epoch."""
        steps = np.arange(self.total)
        shape_steps = steps * self.epochs // self.total if steps_per_epoch(self.shape) else steps
        _, firsts, which = np.unique(shape_steps, return_index=True, return_inverse=True)
        lrs, momenta = [], []
        for first in firsts:
            step_lrs, momentum = self.at(int(first))
            lrs.append(step_lrs)
            momenta.append(np.nan if momentum is None else momentum)
        return np.array(lrs, dtype=np.float64)[which], np.array(momenta, dtype=np.float64)[which]

    def rows(self) -> list[dict[str, float | int | None]]:
        """One row per step: {"step", "lr_0", ..., "lr_{n-1}", "momentum"}."""
        rows = []
        for step in range(self.total):
            lrs, momentum = self.at(step)
            row: dict[str, float | int | None] = {"step": step}
            row.update({f"lr_{g}": lr for g, lr in enumerate(lrs)})
            row["momentum"] = momentum
            rows.append(row)
        return rows


def steps_per_epoch(shape: Shape) -> bool:
    """Is `shape` stepped once an epoch (`step_per="epoch"`) rather than once a batch?"""
    return getattr(shape, "step_per", "batch") == "epoch"


def follows_objective(shape: Shape) -> bool:
    """Does `shape` follow the validation objective, fed once an epoch (torch_plateau)? Such a
    shape has `group_lrs(peaks, epochs, metrics)`: every group's lr for each epoch."""
    return getattr(shape, "follows_objective", False)


def shape_document(shape: Shape) -> dict:
    """The shape's name and settings as plain JSON values (a shape in a setting, as a
    sequential's pieces, is a document too; what a shape resolved for itself is left out)."""
    document: dict = {"name": shape.name}
    if not dataclasses.is_dataclass(shape):
        return document
    for setting in dataclasses.fields(shape):
        if setting.repr and not setting.name.startswith("_"):
            document[setting.name] = _plain_setting(getattr(shape, setting.name))
    return document


def _plain_setting(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_plain_setting(item) for item in value]
    if callable(getattr(value, "lr", None)) and hasattr(value, "name"):
        return shape_document(value)
    return value
