"""What a trial learns: the loss it trains on and the validation metrics it reports (the `task` group).

    task = build_task(cfg.get("task"))     # conf/task/classification.yaml when the config has none
    loss = task.loss(model(x), y)          # the batch's mean loss: training, lr_find, valid_loss
    task.evaluate(outputs, targets)        # {"accuracy": ..., "loss": ...} over the validation set

A task config names its loss and each metric by `_target_`, with `_partial_: true` for a function
(a loss class such as torch.nn.HuberLoss works without it):
- `loss(outputs, targets)` -> the batch's mean loss, a scalar tensor that training backpropagates;
- `metrics`: name -> `fn(outputs, targets)` -> a float, called once per evaluation with the
  model's outputs and the targets of the *whole* validation set, so a metric that is not a mean
  of per-example values (R^2, anything ranked) comes out right; the outputs are float32 (bf16
  autocast is undone first). The loss is reported as the metric `loss` beside them.

Built in: `classification` (cross-entropy; accuracy) and `regression` (mean squared error; mse,
mae, r2). A task also says what targets it learns from (`targets`): `classes` (integer labels,
one per example) or `values` (floats shaped like the model's outputs), so data of the other kind
is a ConfigError before any training, not a loss that quietly means something else.

The validation outputs are kept until the epoch's metrics are computed: n x outputs floats
(450 x 10 on digits), a memory cost only for very large validation sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sweeper.config import ConfigError, instantiate_node

__all__ = [
    "CLASSIFICATION",
    "TARGETS",
    "Task",
    "accuracy",
    "build_task",
    "mae",
    "mse",
    "r2",
]

Loss = Callable[[Tensor, Tensor], Tensor]
Metric = Callable[[Tensor, Tensor], float]
TARGETS = ("classes", "values")  # integer class labels, or floats shaped like the outputs

# conf/task/classification.yaml, for configs recorded before the task was a config group
# (tests/test_tasks.py holds the two together).
CLASSIFICATION: dict[str, Any] = {
    "name": "classification",
    "targets": "classes",
    "loss": {"_target_": "torch.nn.functional.cross_entropy", "_partial_": True},
    "metrics": {"accuracy": {"_target_": "sweeper.zoo.tasks.accuracy", "_partial_": True}},
}


# --- metrics: (outputs, targets) of the whole validation set -> float ---------------------------


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """The fraction of examples whose highest output is their class."""
    return (outputs.argmax(dim=1) == targets).sum().item() / len(targets)


def mse(outputs: Tensor, targets: Tensor) -> float:
    """Mean squared error over every example and output (sklearn's mean_squared_error)."""
    return (outputs.double() - targets.double()).square().mean().item()


def mae(outputs: Tensor, targets: Tensor) -> float:
    """Mean absolute error over every example and output (sklearn's mean_absolute_error)."""
    return (outputs.double() - targets.double()).abs().mean().item()


def r2(outputs: Tensor, targets: Tensor) -> float:
    """The coefficient of determination, 1 - SS_res / SS_tot, of each output over the whole set,
    averaged over the outputs (sklearn's r2_score, multioutput="uniform_average"). As sklearn: an
    output whose targets are constant scores 1 when predicted exactly, else 0."""
    predicted, actual = _columns(outputs), _columns(targets)
    residual = (actual - predicted).square().sum(dim=0)
    total = (actual - actual.mean(dim=0)).square().sum(dim=0)
    scores = torch.where(total > 0, 1 - residual / total.clamp_min(torch.finfo(total.dtype).tiny), (residual == 0).double())
    return scores.mean().item()


def _columns(values: Tensor) -> Tensor:
    """float64, one column per output."""
    values = values.double()
    return values.unsqueeze(1) if values.ndim == 1 else values.flatten(1)


# --- the task -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A built task: its loss, its metrics and the kind of targets it learns from."""

    name: str
    loss: Loss
    metrics: Mapping[str, Metric]
    targets: str = "classes"

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What an epoch reports: the metrics, then the loss."""
        return (*self.metrics, "loss")

    def evaluate(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """Every metric, and the loss, over the validation set's outputs and targets."""
        values = {name: float(metric(outputs, targets)) for name, metric in self.metrics.items()}
        values["loss"] = float(self.loss(outputs, targets))
        return values

    def check_targets(self, targets: Tensor, outputs: int, where: str) -> None:
        """ConfigError unless `targets` (a batch) are what this task learns from, for a model
        of `outputs` outputs."""
        if self.targets == "classes" and (targets.is_floating_point() or targets.ndim != 1):
            raise ConfigError(
                f"task: {self.name} learns from integer class labels, one per example, but {where} "
                f"gives {_described(targets)}; for float targets choose task=regression."
            )
        if self.targets == "values" and (not targets.is_floating_point() or list(targets.shape[1:]) != [outputs]):
            raise ConfigError(
                f"task: {self.name} learns from float targets shaped [n, {outputs}] (the model's "
                f"outputs, data.outputs), but {where} gives {_described(targets)}; for class labels "
                f"choose task=classification."
            )


def _described(targets: Tensor) -> str:
    return f"{str(targets.dtype).removeprefix('torch.')} targets shaped {['n', *targets.shape[1:]]}"


def build_task(node: DictConfig | Mapping | None) -> Task:
    """The task a config describes; None (a config recorded before tasks) is classification."""
    if not isinstance(node, DictConfig):  # a config's own node keeps its interpolations into the config
        node = OmegaConf.create(CLASSIFICATION if node is None else dict(node))
    name = node.get("name", "task")
    targets = node.get("targets", "classes")
    if targets not in TARGETS:
        raise ConfigError(f"task.targets: {targets!r} must be one of {list(TARGETS)} (class labels, or float values).")
    if not isinstance(node.get("loss"), DictConfig):
        raise ConfigError("task.loss: give the loss by _target_, e.g. task.loss._target_=mypkg.losses.huber (with _partial_: true).")
    loss = _callable(node.loss, "task.loss")
    metrics_node = node.get("metrics") or {}
    if not isinstance(metrics_node, DictConfig):
        raise ConfigError(f"task.metrics: {metrics_node!r} must map each metric's name to its _target_.")
    if "loss" in metrics_node:
        raise ConfigError("task.metrics.loss: the name `loss` is the task's loss, reported already; give the metric another name.")
    metrics = {str(key): _callable(value, f"task.metrics.{key}") for key, value in metrics_node.items()}
    return Task(str(name), loss, metrics, targets)


def _callable(node: Any, setting: str) -> Callable:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(
            f"{setting}: give it by _target_ (with _partial_: true for a function), e.g. {setting}._target_=mypkg.module.function."
        )
    built = instantiate_node(node, setting)
    if not callable(built):
        raise ConfigError(
            f"{setting}: {node._target_} built a {type(built).__name__}, which cannot be called with "
            f"(outputs, targets); add `_partial_: true` beside the _target_ of a function."
        )
    return built
