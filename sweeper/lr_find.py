"""fastai's learning-rate range test (`Learner.lr_find`), its suggestions and its plot.

Batch i of the test trains with lr `start_lr * (end_lr / start_lr) ** (i / num_it)`, the same
for every layer group (as fastai sets it). The loss is smoothed as fastai's Recorder smooths it
(a moving average with beta 0.98, debiased). The test stops after `num_it` batches, or once
the smoothed loss exceeds 4x its best (or is no longer finite); afterwards the model and the
optimizer are restored, so the test leaves no trace. With `train.freeze_epochs > 0` the test
runs on what the first (frozen) phase trains, as fastai's does on a frozen learner.

Suggestions, as fastai computes them, on the points between the first `num_it // 10` and the
last five (cut at the first NaN):
- `valley` (default): about halfway down the longest valley of the loss curve;
- `minimum`: the lr of the lowest loss, divided by 10;
- `steep`: the lr where the loss falls fastest (steepest negative slope in log lr).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from sweeper.config import ConfigError
from sweeper.trainer import Trial, prepare

__all__ = ["LrFindResult", "SUGGESTIONS", "lr_find", "minimum", "plot_lr_find", "steep", "suggest", "valley"]

BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGED = 4  # stop once the smoothed loss exceeds this many times its best


@dataclass
class LrFindResult:
    lrs: list[float]                # the lr of every batch the test ran
    losses: list[float]             # smoothed, as fastai plots them
    suggestions: dict[str, float] = field(default_factory=dict)  # name -> suggested lr


def lr_find(
    cfg: DictConfig, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True
) -> LrFindResult:
    """Run the range test on the config's model, data and optimizer; see the module docstring."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find: start_lr={start_lr:g} and end_lr={end_lr:g} need 0 < start_lr < end_lr.")
    num_it = max(num_it, 6)  # as fastai
    trial = prepare(cfg)
    model, optimizer = trial.model, trial.optimizer
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    trial.set_trainable(trial.plan.phases[0].trainable)

    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    model.train()
    try:
        for i, (x, y) in enumerate(_batches(trial, num_it)):
            lr = start_lr * (end_lr / start_lr) ** (i / num_it)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            average = BETA * average + (1 - BETA) * loss.item()
            smooth = average / (1 - BETA ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if stop_div and (smooth > DIVERGED * best or not math.isfinite(smooth)):
                break
    finally:  # the test leaves no trace on the model or the optimizer
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        trial.set_trainable([True] * len(trial.groups))
    return LrFindResult(lrs, losses, suggest(lrs, losses, num_it))


def _batches(trial: Trial, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches, as many epochs as that takes."""
    produced = 0
    while True:
        for batch in trial.data.train_batches(trial.batch_size, trial.generator):
            if produced == count:
                return
            produced += 1
            yield batch


def suggest(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> dict[str, float]:
    """fastai's suggestions from a test's curve; empty when too few points remain to judge."""
    lrs, losses = list(lrs[num_it // 10 : -5]), list(losses[num_it // 10 : -5])
    nan = next((i for i, loss in enumerate(losses) if math.isnan(loss)), None)
    if nan is not None:
        lrs, losses = lrs[:nan], losses[:nan]
    if len(lrs) < 2:
        return {}
    return {name: function(lrs, losses) for name, function in SUGGESTIONS.items()}


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's valley: the longest run of decreasing losses, and the lr about halfway down it."""
    n = len(losses)
    max_start = max_end = 0
    run_length = [1] * n  # length of the longest decreasing sequence ending at each point
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run_length[i] < run_length[j] + 1:
                run_length[i] = run_length[j] + 1
            if run_length[max_end] < run_length[i]:
                max_end = i
                max_start = max_end - run_length[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's minimum: a tenth of the lr with the lowest loss."""
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's steep: the lr where the loss falls fastest per unit of log lr."""
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": valley,
    "minimum": minimum,
    "steep": steep,
}


def plot_lr_find(result: LrFindResult, path: str | Path, skip_end: int = 5) -> Path:
    """The smoothed loss against the lr (log scale), the suggestions marked; a PNG at `path`."""
    from sweeper.plots import plt, save_figure

    lrs = result.lrs[:-skip_end] if len(result.lrs) > skip_end else result.lrs  # as fastai: the end is noise
    losses = result.losses[: len(lrs)]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(lrs, losses)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss (smoothed)")
    for (name, lr), marker in zip(result.suggestions.items(), "o^s"):
        nearest = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / lr)))
        axis.plot(lr, result.losses[nearest], marker, label=f"{name}: {lr:.2e}")
    if result.suggestions:
        axis.legend(loc="best")
    return save_figure(figure, path)
