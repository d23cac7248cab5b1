"""fastai's learning-rate range test (`Learner.lr_find`), and its suggestions.

Every batch raises the lr of all groups together, exponentially from `start_lr` to `end_lr` over
`num_it` batches (`start * (end / start) ** (i / num_it)`); the loss is smoothed as fastai's
Recorder does (an exponential moving average with beta 0.98, debiased). The test stops early once
the smoothed loss exceeds 4x its best, and the model and optimizer are restored afterwards, so
the test leaves no trace. Suggestions, as fastai computes them on the points between the first
10% and the last five:
- `valley` (default): the middle of the longest valley of the loss curve;
- `minimum`: the lr of the lowest loss, divided by 10;
- `steep`: the lr where the loss falls fastest.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from sweeper.config import ConfigError
from sweeper.trainer import build_parts

__all__ = ["LrFindResult", "lr_find", "minimum", "plot_lr_find", "steep", "valley"]

SUGGESTIONS = ("valley", "minimum", "steep")


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]                  # smoothed, as fastai plots them
    suggestions: dict[str, float] = field(default_factory=dict)


def lr_find(cfg: DictConfig, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            stop_div: bool = True) -> LrFindResult:
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find: start_lr={start_lr} and end_lr={end_lr} need 0 < start_lr < end_lr.")
    num_it = max(num_it, 6)  # as fastai
    parts = build_parts(cfg)
    model, optimizer = parts.model, parts.optimizer
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    lrs, losses = [], []
    average, best = 0.0, math.inf
    batch_size = int(cfg.train.batch_size)
    model.train()
    try:
        while len(lrs) < num_it:
            for x, y in parts.data.train_batches(batch_size, parts.generator):
                lr = start_lr * (end_lr / start_lr) ** (len(lrs) / num_it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                average = 0.98 * average + 0.02 * loss.item()
                smooth = average / (1 - 0.98 ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(smooth)
                best = min(best, smooth)
                if len(lrs) >= num_it or (stop_div and (smooth > 4 * best or not math.isfinite(smooth))):
                    raise StopIteration
    except StopIteration:
        pass
    finally:  # the test leaves no trace on the model or the optimizer
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    result = LrFindResult(lrs, losses)
    lrs_kept, losses_kept = lrs[num_it // 10 : -5], losses[num_it // 10 : -5]
    if losses_kept:
        result.suggestions = {name: SUGGEST[name](lrs_kept, losses_kept) for name in SUGGESTIONS}
    return result


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley: the lr about halfway along the longest run of decreasing loss."""
    n = len(losses)
    max_start = max_end = 0
    longest = [1] * n  # longest decreasing run ending at each point
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[max_end] < longest[i]:
                max_end = i
                max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def minimum(lrs: list[float], losses: list[float]) -> float:
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


def steep(lrs: list[float], losses: list[float]) -> float:
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


SUGGEST = {"valley": valley, "minimum": minimum, "steep": steep}


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    from sweeper.plots import plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(result.lrs, result.losses)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss (smoothed)")
    for (name, lr), marker in zip(result.suggestions.items(), "o^s"):
        index = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / lr)))
        axis.plot(lr, result.losses[index], marker, label=f"{name}: {lr:.2e}")
    if result.suggestions:
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
