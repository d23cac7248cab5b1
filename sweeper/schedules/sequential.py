"""`Sequential`: shapes one after another, switched at milestones, as torch's `SequentialLR`.

    Sequential(shapes=(TorchLinear(start_factor=0.1, total_iters=10), TorchCosine()), milestones=(10,))

Shape i runs over scheduler steps [milestones[i-1], milestones[i]) (the first from 0, the last
to the end of training) and starts there at its own step 0, as SequentialLR restarts the next
scheduler at a milestone; every shape scales the same peak. A shape that reads the length of
its run (a one-cycle, `torch_cosine` without T_max, the fastai shapes) gets the steps between
its milestones, the last one those left in training.

Momentum: the running shape's; where it moves none, the last value a shape before it set is
kept (torch leaves the optimizer's momentum where the last scheduler put it), else the
optimizer's own.

Where torch differs, through the order its schedulers are built in: OneCycleLR and CyclicLR set
the momentum when built (here a shape moves it only once it runs), and rewrite the groups'
initial lr (to OneCycleLR's peak / div_factor, CyclicLR's base_lr), so a scheduler built after
them starts from that lr; here every shape scales the peak, as torch does when they are built
last.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar

from sweeper.schedules.shapes import Shape, ShapeError, _check_step_per, follows_objective, steps_per_epoch

__all__ = ["Sequential"]


@dataclass(frozen=True)
class Sequential:
    """Shapes run one after another, switched at `milestones` (scheduler steps)."""

    name: ClassVar[str] = "sequential"
    shapes: tuple[Shape, ...] = ()
    milestones: tuple[int, ...] = ()
    step_per: str = "batch"

    def __post_init__(self) -> None:
        _check_step_per(self.step_per)
        shapes = tuple(self.shapes) if isinstance(self.shapes, (list, tuple)) else ()
        if not shapes or not all(callable(getattr(s, "lr", None)) for s in shapes):
            raise ShapeError(
                f"shape.shapes: {self.shapes!r} must be a list of shapes, each with its _target_, e.g. "
                f"[{{_target_: sweeper.schedules.torch_schedulers.TorchLinear}}, {{_target_: sweeper.schedules.torch_schedulers.TorchCosine}}]."
            )
        if any(follows_objective(s) for s in shapes):
            # torch's SequentialLR steps its schedulers without a metric: it cannot hold one either
            raise ShapeError(
                "shape.shapes: torch_plateau cannot be a piece of a sequence: it follows the validation objective; use it alone."
            )
        if any(steps_per_epoch(s) for s in shapes):
            raise ShapeError("shape.shapes: a shape in a sequence is stepped as the sequence is: set shape.step_per, not the pieces'.")
        milestones = tuple(self.milestones) if isinstance(self.milestones, (list, tuple)) else None
        if milestones is None or len(milestones) != len(shapes) - 1:
            raise ShapeError(
                f"shape.milestones: {self.milestones!r} must be {len(shapes) - 1} scheduler step(s) for "
                f"{len(shapes)} shapes: where each shape after the first starts (as SequentialLR)."
            )
        # A milestone at 0 or one not after the one before would give a shape no step to run.
        if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones) or any(
            b <= a for a, b in zip((0, *milestones), milestones)
        ):
            raise ShapeError(f"shape.milestones: {list(milestones)} must be whole steps >= 1, each after the one before.")
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "milestones", milestones)

    def _piece(self, step: int, total: int) -> tuple[int, int, int]:
        """(which shape runs `step`, its own step, its own total)."""
        index = bisect.bisect_right(self.milestones, step)
        start = self.milestones[index - 1] if index else 0
        end = self.milestones[index] if index < len(self.milestones) else max(total, start + 1)
        return index, step - start, end - start

    def lr(self, peak: float, step: int, total: int) -> float:
        index, own_step, own_total = self._piece(step, total)
        return self.shapes[index].lr(peak, own_step, own_total)

    def momentum(self, step: int, total: int) -> float | None:
        index, own_step, own_total = self._piece(step, total)
        momentum = self.shapes[index].momentum(own_step, own_total)
        while momentum is None and index > 0:  # the last value an earlier shape set
            index -= 1
            _, _, own_total = self._piece(self.milestones[index - 1] if index else 0, total)
            momentum = self.shapes[index].momentum(own_total - 1, own_total)
        return momentum
