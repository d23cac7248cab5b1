"""A trial's schedule: the lr of every layer group and the momentum at every training batch, over
every phase. The trainer applies it, `sweeper schedule` prints and plots it, the report draws it.

    schedule = schedule_of(cfg, steps=120)          # from a composed config
    schedule.lrs[step, group], schedule.momenta[step, group], schedule.at(step), schedule.rows()

The schedule is a value: small frozen dataclasses (it pickles, compares and prints as its config)
and two [step, group] tables filled once when it is made. A fused engine stacks the tables of
its members into [member, step, group] tensors.

Phases, as fastai runs them:
- `freeze_epochs == 0`: `fit_one_cycle(epochs, lr)` with the configured shape; phase "train".
- `freeze_epochs > 0`: `fine_tune`. Phase "frozen": only the head trains, for freeze_epochs
  epochs of `fit_one_cycle(slice(base_lr), pct_start=0.99)`, base_lr = 2 x the configured head
  peak. fine_tune passes its other arguments (**kwargs) to both of its fit_one_cycle calls, so
  the frozen phase takes the shape's div_final and moms (and anneal) and keeps fit_one_cycle's
  div=25: pct_start and div are fine_tune's own arguments, for the unfrozen phase alone. A shape
  that is not fastai's one-cycle leaves the frozen phase at fit_one_cycle's defaults. Phase
  "unfrozen": every group, `epochs` epochs of the configured slice and shape.
Each phase's schedule starts at step 0 of its own total; the tables run over both.

The objective: a shape that follows the validation objective (torch_plateau) is planned for an
objective that never improves; the trainer feeds the schedule the objective after every epoch
(`TrialSchedule.fed`), and the epochs after it are planned again from what it was. Its mode, where the
shape sets none, is train.direction's (`configured_shape`).

Momentum: `momenta` is NaN (`at` says None) where the optimizer keeps its own: where the shape
moves none, and for an optimizer whose momentum is 0 (torch's SGD by default). fastai's SGD
without momentum keeps no momentum whatever its schedule says; here the shape's momentum never
reaches such an optimizer, so it stays 0 and torch keeps no momentum buffers.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError, build_shape, instantiate_node, plain
from sweeper.schedules.shapes import FastaiOneCycle, Schedule, Shape, follows_objective
from sweeper.schedules.slices import parse_lr

__all__ = [
    "FROZEN_PCT_START",
    "Phase",
    "TrialSchedule",
    "configured_shape",
    "count_groups",
    "frozen_shape",
    "optimizer_momentum_off",
    "schedule_from_peaks",
    "schedule_of",
    "whole_epoch_steps",
]

FROZEN_PCT_START = 0.99  # fine_tune's frozen fit_one_cycle


@dataclass(frozen=True)
class Phase:
    """One fit (a fit_one_cycle in fine_tune): its schedule and which layer groups train."""

    name: str  # "train", or "frozen" then "unfrozen" (fine_tune)
    epochs: int
    schedule: Schedule  # over this phase's own training batches, from its step 0
    trainable: tuple[bool, ...]  # per layer group: does it take optimizer steps


@dataclass(frozen=True)
class TrialSchedule:
    """Every phase of a trial, and its lr and momentum tables over all of them.

    The tables are filled once, here: mid-training a shape's arithmetic (NumPy float32 for the
    fastai shapes) costs several times a lookup. The values are the very floats the phases'
    `schedule.at(step)` return.
    """

    peaks: tuple[float, ...]  # the configured peak lr of each layer group (head last)
    phases: tuple[Phase, ...]
    momentum_off: bool = False  # the optimizer's momentum is 0 and stays 0: no step sets it
    lrs: np.ndarray = field(init=False, repr=False, compare=False)  # [step, group]
    momenta: np.ndarray = field(init=False, repr=False, compare=False)  # [step, group]; NaN: the optimizer's own

    def __post_init__(self) -> None:
        if not self.phases:
            raise ConfigError("the schedule has no phase: train at least one epoch (train.epochs or train.freeze_epochs).")
        lrs = np.concatenate([phase.schedule.table[0] for phase in self.phases])  # exact Python floats
        momenta = np.concatenate([phase.schedule.table[1] for phase in self.phases])
        if self.momentum_off:
            momenta[:] = np.nan
        object.__setattr__(self, "lrs", lrs)
        object.__setattr__(self, "momenta", np.repeat(momenta[:, None], len(self.peaks), axis=1))

    @property
    def follows_objective(self) -> bool:
        """Does a phase's lr follow the validation objective (torch_plateau)? Its schedule is then
        for an objective that never improves, until `fed` the objectives."""
        return any(follows_objective(phase.schedule.shape) for phase in self.phases)

    def fed(self, objectives: Sequence[float]) -> TrialSchedule:
        """This schedule after the validation objective of the epochs so far (over every phase): a
        phase whose shape follows it is planned again from them; a schedule without one is itself."""
        if not self.follows_objective:
            return self
        phases, first = [], 0
        for phase in self.phases:
            if follows_objective(phase.schedule.shape):
                own = tuple(float(value) for value in objectives[first : first + phase.epochs])
                phase = dataclasses.replace(phase, schedule=dataclasses.replace(phase.schedule, metrics=own))
            phases.append(phase)  # a phase that does not follow it keeps its schedule and its table
            first += phase.epochs
        return TrialSchedule(self.peaks, tuple(phases), self.momentum_off)

    @property
    def total(self) -> int:
        """Training batches over every phase."""
        return sum(phase.schedule.total for phase in self.phases)

    @property
    def shape(self) -> Shape:
        """The last phase's shape: the configured one, unless the frozen phase runs alone."""
        return self.phases[-1].schedule.shape

    @property
    def sets_momentum(self) -> bool:
        """Does any step set the optimizer's momentum (SGD momentum, Adam beta1)?"""
        return not np.isnan(self.momenta).all()

    @property
    def starts(self) -> tuple[int, ...]:
        """The first step of each phase."""
        return tuple(int(s) for s in np.cumsum([0] + [p.schedule.total for p in self.phases[:-1]]))

    def phase_at(self, step: int) -> Phase:
        """The phase that trains batch `step`."""
        for phase, start in zip(reversed(self.phases), reversed(self.starts)):
            if step >= start:
                return phase
        raise IndexError(f"step {step} is before the schedule's first step")

    def at(self, step: int) -> tuple[list[float], float | None]:
        """The lr of every group and the momentum (None: the optimizer's own) at `step`.

        Every group gets the same momentum, as fastai sets it.
        """
        momentum = self.momenta[step, 0]
        return self.lrs[step].tolist(), None if math.isnan(momentum) else float(momentum)

    def rows(self) -> list[dict[str, float | int | str | None]]:
        """One row per step: {"step", "phase", "lr_0", ..., "lr_{n-1}", "momentum"}."""
        rows = []
        for phase, start in zip(self.phases, self.starts):
            for step in range(start, start + phase.schedule.total):
                lrs, momentum = self.at(step)
                row: dict[str, float | int | str | None] = {"step": step, "phase": phase.name}
                row.update({f"lr_{g}": lr for g, lr in enumerate(lrs)})
                row["momentum"] = momentum
                rows.append(row)
        return rows


def frozen_shape(shape: Shape) -> FastaiOneCycle:
    """fine_tune's frozen fit_one_cycle: pct_start=0.99 and fit_one_cycle's div, with the rest of
    the configured fastai one-cycle (div_final, moms, anneal), as fine_tune's **kwargs."""
    if isinstance(shape, FastaiOneCycle):
        return dataclasses.replace(shape, pct_start=FROZEN_PCT_START, div=FastaiOneCycle.div)
    return FastaiOneCycle(pct_start=FROZEN_PCT_START)


def schedule_from_peaks(
    peaks: Sequence[float],
    shape: Shape,
    *,
    epochs: int,
    steps: int,
    freeze_epochs: int = 0,
    momentum_off: bool = False,
) -> TrialSchedule:
    """fit_one_cycle, or fine_tune's frozen and unfrozen phases (see the module docstring).

    `steps` counts the training batches of every epoch of every phase; with frozen epochs the
    phases split them by epoch, so they must be a multiple of freeze_epochs + epochs.
    """
    n_groups = len(peaks)
    if freeze_epochs and steps % (freeze_epochs + epochs):
        raise ConfigError(
            f"steps: {steps} training batches do not split into {freeze_epochs} frozen + {epochs} "
            f"unfrozen epochs of whole batches; give a multiple of {freeze_epochs + epochs}."
        )
    per_epoch = steps // (freeze_epochs + epochs) if freeze_epochs else None
    phases = []
    if freeze_epochs:
        base_lr = 2 * peaks[-1]  # fine_tune halves base_lr when it unfreezes: the configured head peak
        frozen_peaks = tuple(parse_lr(slice(base_lr)).peaks(n_groups))
        schedule = Schedule(frozen_peaks, frozen_shape(shape), freeze_epochs * per_epoch, freeze_epochs)
        phases.append(Phase("frozen", freeze_epochs, schedule, (False,) * (n_groups - 1) + (True,)))
    if epochs:
        schedule = Schedule(tuple(peaks), shape, epochs * per_epoch if freeze_epochs else steps, epochs)
        phases.append(Phase("unfrozen" if freeze_epochs else "train", epochs, schedule, (True,) * n_groups))
    return TrialSchedule(tuple(float(p) for p in peaks), tuple(phases), momentum_off)


def schedule_of(
    cfg: DictConfig | Mapping, *, steps: int, n_groups: int | None = None, lr: object = None, momentum: bool = True
) -> TrialSchedule:
    """The schedule of a trial of `cfg` with `steps` training batches over all its epochs.

    `n_groups` is the model's number of layer groups when the caller has split it (the
    trainer); by default it is counted from the config (`count_groups`). `lr`, any form
    `sweeper.schedules.slices.parse_lr` reads, stands in for the config's lr. `momentum=False` leaves
    the optimizer's momentum unasked (whether it is 0 may mean importing the optimizer, torch
    with it): for a schedule whose lrs alone are read, as the sweep's report reads them.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    spec = parse_lr(plain(cfg.lr) if lr is None else lr)
    n_groups = count_groups(cfg.model) if n_groups is None else n_groups
    return schedule_from_peaks(
        spec.peaks(n_groups),
        configured_shape(cfg),
        epochs=cfg.train.epochs,
        freeze_epochs=cfg.train.get("freeze_epochs", 0),
        steps=steps,
        momentum_off=momentum and optimizer_momentum_off(cfg.optimizer),
    )


def configured_shape(cfg: DictConfig | Mapping) -> Shape:
    """The config's shape, as a trial runs it: one that follows the validation objective
    (torch_plateau) and sets no mode takes train.direction's (maximize: max)."""
    shape = build_shape(cfg["shape"])
    if follows_objective(shape):
        return shape.for_direction(cfg["train"].get("direction", "maximize"))
    return shape


def whole_epoch_steps(cfg: DictConfig | Mapping, about: int) -> int:
    """The training-batch count nearest `about` that a trial of `cfg` can have: any count for one
    phase, a multiple of its frozen + unfrozen epochs for fine_tune."""
    train = cfg["train"]
    freeze_epochs = train.get("freeze_epochs", 0)
    if not freeze_epochs:
        return about
    epochs = freeze_epochs + train["epochs"]
    return max(1, round(about / epochs)) * epochs


def count_groups(model_cfg: DictConfig | Mapping) -> int:
    """The layer groups `model.groups` makes: a list's length, a number, or for a splitter the
    groups it makes of the model (built as a trial builds it)."""
    spec = plain(model_cfg.get("groups"))
    if spec is None:
        return 1
    if isinstance(spec, list):
        return len(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    from sweeper.zoo.groups import split_groups  # torch loads only for a splitter

    return len(split_groups(instantiate_node(model_cfg["net"], "model.net"), spec))


def optimizer_momentum_off(optimizer_cfg: DictConfig | Mapping) -> bool:
    """True for an optimizer whose momentum is 0, set so or by default (torch's SGD): a shape's
    momentum must not reach it (fastai's SGD without momentum keeps none)."""
    momentum = optimizer_cfg.get("momentum")
    if momentum is None:
        momentum = _default(optimizer_cfg.get("_target_"), "momentum")
    return momentum is not None and momentum == 0


def _default(target: str | None, name: str) -> object:
    """The default of parameter `name` of the callable at dotted path `target` (None: none)."""
    if not target:
        return None
    from hydra.utils import get_object

    try:
        parameter = inspect.signature(get_object(target)).parameters.get(name)
    except Exception:  # noqa: BLE001 - not importable or no signature: the optimizer says at build time
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
