"""The one-cycle trainer: one trial, from a resolved config to a result with its curves.

    result = train(cfg, reporters=[...])

The story: seed everything, build the data, the model and its layer groups, one optimizer param
group per layer group; then run the phases. Before every training batch the lr of every group
and the momentum (SGD momentum or Adam beta1) are set by hand from the phase's `Schedule`, the
very values `sweeper schedule` prints. After every epoch the model is evaluated and reporters
hear of it; one of them may ask to stop (pruning).

Phases:
- `train.freeze_epochs == 0`: fastai's `fit_one_cycle(train.epochs, lr, shape)`.
- `train.freeze_epochs > 0`: fastai's `fine_tune`. First every group but the head is frozen
  (its parameters take no optimizer steps, batch norm included) and the head trains for
  `freeze_epochs` with `fit_one_cycle(slice(base_lr), pct_start=0.99)`, base_lr = 2 x the
  configured head peak; then everything unfreezes and trains `train.epochs` with the configured
  slice and shape. So `train.freeze_epochs=F lr=geometric lr.low=L lr.high=H
  shape=fastai_fine_tune` is fastai's `fine_tune(epochs, base_lr=2H, freeze_epochs=F,
  lr_mult=H/L)`.

Nothing here knows of Optuna or MLflow: they listen through `sweeper.events.Reporter`.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sweeper.config import ConfigError, build_shape, instantiate_node
from sweeper.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult
from sweeper.groups import LayerGroups, split_groups
from sweeper.shapes import FastaiOneCycle, Schedule
from sweeper.slices import parse_lr

__all__ = [
    "Phase",
    "TrialParts",
    "available_metrics",
    "build_parts",
    "evaluate",
    "plan_phases",
    "resolve_device",
    "seed_everything",
    "train",
]

METRICS = ("accuracy", "loss")  # what evaluation measures (classification)
VALID_BATCH = 1024  # evaluation batches: no gradients, so larger is faster


def available_metrics(cfg: DictConfig | Mapping) -> tuple[str, ...]:
    """Validation metrics a trial of this config reports every epoch (objective candidates)."""
    return METRICS


@dataclass(frozen=True)
class Phase:
    name: str                        # "train", or "frozen" / "unfrozen" in fine_tune
    epochs: int
    schedule: Schedule               # over this phase's own training batches
    trainable: tuple[bool, ...]      # per layer group


def plan_phases(train_cfg: Mapping, peaks: Sequence[float], shape, batches_per_epoch: int) -> list[Phase]:
    """fit_one_cycle, or fine_tune's frozen then unfrozen phase (see the module docstring)."""
    epochs, freeze_epochs = int(train_cfg["epochs"]), int(train_cfg.get("freeze_epochs", 0))
    if epochs < 1 or freeze_epochs < 0:
        raise ConfigError(
            f"train.epochs={epochs}, train.freeze_epochs={freeze_epochs}: train at least 1 epoch, "
            f"and freeze for 0 or more."
        )
    n_groups = len(peaks)
    unfrozen = Schedule(tuple(peaks), shape, epochs * batches_per_epoch)
    if freeze_epochs == 0:
        return [Phase("train", epochs, unfrozen, (True,) * n_groups)]
    base_lr = 2 * peaks[-1]  # fine_tune halves base_lr for the unfrozen phase
    frozen_peaks = [base_lr / 10] * (n_groups - 1) + [base_lr]  # slice(base_lr)
    frozen = Schedule(tuple(frozen_peaks), FastaiOneCycle(pct_start=0.99), freeze_epochs * batches_per_epoch)
    return [
        Phase("frozen", freeze_epochs, frozen, (False,) * (n_groups - 1) + (True,)),
        Phase("unfrozen", epochs, unfrozen, (True,) * n_groups),
    ]


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is a GPU, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: {name!r} asks for CUDA, but no GPU is visible here; use "
                f"train.device=auto (CUDA when present, else CPU) or train.device=cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r}, but only {torch.cuda.device_count()} GPU(s) are visible."
            )
    return device


def seed_everything(seed: int, deterministic: bool) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator of the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic results; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrialParts:
    """Everything a trial trains with, built and checked from its config."""

    device: torch.device
    generator: torch.Generator      # the data order
    data: object                    # TensorData or LoaderData
    model: nn.Module
    groups: LayerGroups
    peaks: list[float]              # peak lr per layer group
    shape: object                   # the cycle shape
    optimizer: torch.optim.Optimizer
    owners: list[int]               # the layer group of each optimizer param group


def build_parts(cfg: DictConfig) -> TrialParts:
    """Device, seeds, data, model, layer groups and optimizer; bad settings raise here."""
    settings = cfg.train
    device = resolve_device(str(settings.device))
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))
    generator = seed_everything(int(settings.seed), bool(settings.deterministic))
    data = instantiate_node(cfg.data.source, "data.source").to(device)
    model = instantiate_node(cfg.model.net, "model.net").to(device)
    groups = split_groups(model, _plain(cfg.model.get("groups")))
    peaks = parse_lr(_plain(cfg.lr)).peaks(len(groups))
    shape = build_shape(cfg.shape)
    decay_all = bool(settings.get("decay_norm_and_bias", False))
    optimizer, owners = _build_optimizer(cfg.optimizer, groups, peaks, decay_all)
    if shape.momentum(0, 1) is not None and not {"betas", "momentum"} & optimizer.defaults.keys():
        raise ConfigError(
            f"optimizer: {type(optimizer).__name__} has neither momentum nor betas for the shape "
            f"{shape.name} to move; use optimizer=adamw, adam or sgd, or a shape without momentum."
        )
    return TrialParts(device, generator, data, model, groups, peaks, shape, optimizer, owners)


def train(cfg: DictConfig | Mapping, reporters: Sequence[Reporter] = ()) -> TrialResult:
    """Run one trial. Bad settings raise ConfigError (and friends) before any training."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    settings = cfg.train
    objective_name = settings.objective
    if objective_name not in available_metrics(cfg):
        raise ConfigError(
            f"train.objective: {objective_name!r} is not a metric this trainer reports; choose one "
            f"of {list(available_metrics(cfg))}."
        )
    started = time.perf_counter()
    parts = build_parts(cfg)
    device, data, model, groups, optimizer, owners = (
        parts.device, parts.data, parts.model, parts.groups, parts.optimizer, parts.owners
    )
    shape, peaks, generator = parts.shape, parts.peaks, parts.generator
    batch_size = int(settings.batch_size)
    phases = plan_phases(settings, peaks, shape, data.n_train_batches(batch_size))
    amp = bool(settings.amp) and device.type == "cuda" and torch.cuda.is_bf16_supported()

    result = TrialResult(status="finished", objective=None, objective_name=objective_name, device=str(device))
    start = StartEvent(
        config=OmegaConf.to_container(cfg, resolve=True), peaks=tuple(peaks), n_groups=len(groups),
        total_steps=sum(p.schedule.total for p in phases), device=str(device),
    )
    for reporter in reporters:
        reporter.on_start(start)

    # --- run the phases ----------------------------------------------------------------------
    step = epoch = 0
    try:
        for phase in phases:
            _set_trainable(groups, phase.trainable)
            phase_step = 0
            for _ in range(phase.epochs):
                model.train()
                losses = []
                for x, y in data.train_batches(batch_size, generator):
                    if result.first_step_seconds is None:
                        result.first_step_seconds = time.perf_counter() - started
                    lrs, momentum = phase.schedule.at(phase_step)
                    _apply_hyperparameters(optimizer, owners, lrs, momentum)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = nn.functional.cross_entropy(model(x), y)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):  # stop before a bad step touches the weights
                        result.status, result.diverged_step = "diverged", step
                        result.reason = f"loss became {loss_value} at step {step} (epoch {epoch})"
                        return result
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    event = StepEvent(step, epoch, phase.name, tuple(lrs), momentum, loss_value)
                    result.steps.append(event)
                    for reporter in reporters:
                        reporter.on_step(event)
                    losses.append(loss_value)
                    step += 1
                    phase_step += 1

                metrics = evaluate(model, data, device, amp)
                event = EpochEvent(epoch, step, sum(losses) / len(losses), metrics["loss"], metrics, metrics[objective_name])
                result.epochs.append(event)
                result.objective = event.objective
                epoch += 1
                # every reporter hears of the epoch, then any of them may stop the trial
                if any([reporter.on_epoch(event) for reporter in reporters]):
                    result.status, result.reason = "pruned", f"stopped by a reporter after epoch {event.epoch}"
                    return result
        return result
    except Exception as error:  # a trial that raises fails alone, with its reason
        result.status, result.reason = "failed", f"{type(error).__name__}: {error}"
        return result
    finally:
        result.seconds = time.perf_counter() - started
        for reporter in reporters:
            reporter.on_end(result)


@torch.no_grad()
def evaluate(model: nn.Module, data, device: torch.device, amp: bool = False) -> dict[str, float]:
    """Validation loss and accuracy over the whole validation set."""
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in data.valid_batches(VALID_BATCH):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
        count += len(y)
    return {"accuracy": correct.item() / count, "loss": total_loss.item() / count}


def _plain(node: object) -> object:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _build_optimizer(
    optimizer_cfg: DictConfig, groups: LayerGroups, peaks: Sequence[float], decay_norm_and_bias: bool
) -> tuple[torch.optim.Optimizer, list[int]]:
    """The optimizer with param groups per layer group; `owners[i]` is param group i's layer group.

    Unless `decay_norm_and_bias`, norm weights and biases get no weight decay (fastai's
    `wd_bn_bias=False`): each layer group then becomes a decayed and an undecayed param group.
    """
    factory = instantiate_node(optimizer_cfg, "optimizer")
    param_groups: list[dict] = []
    owners: list[int] = []
    for index, (group, peak) in enumerate(zip(groups, peaks)):
        if decay_norm_and_bias:
            parts = [[p for _, p in group]]
        else:
            # biases and norm weights are the one-dimensional parameters
            parts = [[p for _, p in group if p.ndim > 1], [p for _, p in group if p.ndim <= 1]]
        for part_index, params in enumerate(parts):
            if not params:
                continue
            param_group = {"params": params, "lr": peak}
            if part_index == 1:
                param_group["weight_decay"] = 0.0
            param_groups.append(param_group)
            owners.append(index)
    return factory(param_groups), owners


def _apply_hyperparameters(
    optimizer: torch.optim.Optimizer, owners: Sequence[int], lrs: Sequence[float], momentum: float | None
) -> None:
    for param_group, owner in zip(optimizer.param_groups, owners):
        param_group["lr"] = lrs[owner]
        if momentum is None:
            continue
        if "betas" in param_group:
            param_group["betas"] = (momentum, param_group["betas"][1])
        else:
            param_group["momentum"] = momentum


def _set_trainable(groups: LayerGroups, trainable: Sequence[bool]) -> None:
    for group, on in zip(groups, trainable):
        for _, param in group:
            param.requires_grad_(on)
