"""fastai's learning-rate range test (`Learner.lr_find`), its suggestions and its plot.

Batch i of the test trains with lr `start_lr * (end_lr / start_lr) ** (i / num_it)`, the same
for every layer group (as fastai sets it). The loss is smoothed as fastai's Recorder smooths it
(`AvgSmoothLoss`: a float32 moving average with beta 0.98, debiased). The test stops after
`num_it` batches, or once the smoothed loss exceeds 4x its best. A NaN loss never does (no
comparison with NaN is true), so, as in fastai, a curve that turns NaN runs all `num_it` batches
and the suggestions are cut at its first NaN. Afterwards the model and the optimizer are
restored, so the test leaves no trace. With `train.freeze_epochs > 0` the test runs on what the
first (frozen) phase trains, as fastai's does on a frozen learner.

`follow_slice=True` applies the config's slice: every group moves with the head, at the ratio of
its peak to the head's (fastai's `lr_find(start_lr=[...], end_lr=[...])` with lists in the
slice's proportions); the recorded lr is the head's, as fastai records the last group's.

Suggestions, as fastai computes them, on the points between the first `num_it // 10` and the
last five, cut at the first NaN, in float32 (fastai makes tensors of the recorded lrs and
losses; on flat or tied curves float32 changes which loss is lower):
- `valley` (default): about halfway down the longest valley of the loss curve;
- `minimum`: the lr of the lowest loss, divided by 10;
- `steep`: the lr where the loss falls fastest (steepest negative slope in log lr);
- `slide`: fastai's interval slide rule, from the end of the curve back to where the loss's
  gradient changes by at most 0.005 over 15 points (fastai raises on a curve of 15 points or
  fewer; here it suggests nothing).
A suggested lr is the float32 value fastai returns. `suggestions` picks which (fastai's
`suggest_funcs`); `stop_div=False` runs all `num_it` batches whatever the loss does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sweeper.config import ConfigError
from sweeper.training.trainer import Trial, prepare

__all__ = [
    "DEFAULT_SUGGESTIONS",
    "LrFindResult",
    "SUGGESTIONS",
    "lr_find",
    "minimum",
    "plot_lr_find",
    "range_test",
    "slide",
    "steep",
    "suggest",
    "valley",
]

BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGED = 4  # stop once the smoothed loss exceeds this many times its best
DEFAULT_SUGGESTIONS = ("valley", "minimum", "steep")  # shown unless --suggest picks others


@dataclass
class LrFindResult:
    lrs: list[float]  # the lr of every batch the test ran
    losses: list[float]  # smoothed, as fastai plots them
    suggestions: dict[str, float] = field(default_factory=dict)  # name -> suggested lr


def lr_find(
    cfg: DictConfig,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    follow_slice: bool = False,
    suggestions: Sequence[str] = DEFAULT_SUGGESTIONS,
) -> LrFindResult:
    """Run the range test on the config's model, data and optimizer; see the module docstring."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find: start_lr={start_lr:g} and end_lr={end_lr:g} need 0 < start_lr < end_lr.")
    check_suggestions(suggestions)
    num_it = max(num_it, 6)  # as fastai
    trial = prepare(cfg)
    model, optimizer = trial.model, trial.optimizer
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    trial.set_trainable(trial.schedule.phases[0].trainable)
    batches = _batches(trial, num_it)
    # each param group's lr as a multiple of the head's: 1 for all, as fastai, unless the slice is followed
    ratios = [trial.peaks[owner] / trial.peaks[-1] if follow_slice else 1.0 for owner in trial.owners]

    def train_batch(lr: float) -> torch.Tensor:
        x, y = next(batches)
        for param_group, ratio in zip(optimizer.param_groups, ratios):
            param_group["lr"] = lr * ratio
        loss = trial.task.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    model.train()
    try:
        lrs, losses = range_test(train_batch, start_lr, end_lr, num_it, stop_div)
    finally:  # the test leaves no trace on the model or the optimizer
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        trial.set_trainable([True] * len(trial.groups))
    return LrFindResult(lrs, losses, suggest(lrs, losses, num_it, suggestions))


def range_test(
    train_batch: Callable[[float], torch.Tensor], start_lr: float, end_lr: float, num_it: int, stop_div: bool = True
) -> tuple[list[float], list[float]]:
    """fastai's LRFinder loop: `train_batch(lr)` trains one batch and returns its loss.

    The lr of every batch and the smoothed loss after it, as fastai's Recorder keeps them. The
    smoothing is fastai's own arithmetic (a float32 `torch.lerp` on the CPU), so a curve is
    fastai's to the bit and ties stay ties.
    """
    lrs: list[float] = []
    losses: list[float] = []
    average = torch.zeros((), dtype=torch.float32)
    best = math.inf
    for i in range(num_it):
        lr = start_lr * (end_lr / start_lr) ** (i / num_it)
        loss = train_batch(lr).detach().to("cpu", torch.float32)
        average = torch.lerp(loss, average, BETA)
        smooth = average / (1 - BETA ** (i + 1))
        lrs.append(lr)
        losses.append(smooth.item())
        if smooth < best:
            best = smooth
        if stop_div and smooth > DIVERGED * best:  # never true of a NaN
            break
    return lrs, losses


def _batches(trial: Trial, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches, as many epochs as that takes."""
    produced = 0
    while True:
        for batch in trial.data.train_batches(trial.batch_size, trial.generator):
            if produced == count:
                return
            produced += 1
            yield batch


def check_suggestions(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in SUGGESTIONS]
    if unknown or not names:
        raise ConfigError(f"--suggest: {','.join(unknown) or 'nothing'} is not a suggestion; choose among {','.join(SUGGESTIONS)}.")


def suggest(lrs: Sequence[float], losses: Sequence[float], num_it: int, names: Sequence[str] = DEFAULT_SUGGESTIONS) -> dict[str, float]:
    """fastai's suggestions `names` from a test's curve; none when too few points remain to judge."""
    lrs = torch.tensor(lrs[num_it // 10 : -5], dtype=torch.float32)
    losses = torch.tensor(losses[num_it // 10 : -5], dtype=torch.float32)
    nan = torch.nonzero(torch.isnan(losses))
    if len(nan):
        lrs, losses = lrs[: nan.min()], losses[: nan.min()]
    if len(lrs) < 2:  # fastai raises here
        return {}
    suggested = {name: SUGGESTIONS[name](lrs, losses) for name in names}
    return {name: lr for name, lr in suggested.items() if lr is not None}


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's valley: the longest run of decreasing losses, and the lr about halfway down it."""
    lrs, losses = _float32(lrs).tolist(), _float32(losses).tolist()  # float32 values, compared exactly
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
    return lrs[max_start + int(sections) + int(sections / 2)]


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's minimum: a tenth of the lr with the lowest loss (the first, on a tie)."""
    return _float32(lrs)[_float32(losses).argmin()].item() / 10


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's steep: the lr where the loss falls fastest per unit of log lr."""
    lrs, losses = _float32(lrs), _float32(losses)
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    return lrs[slopes.argmin()].item()


def slide(
    lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005, adjust_value: float = 1.0
) -> float | None:
    """fastai's slide: walking back from the end of the curve, the lr where the loss's gradient
    (NumPy's, in float32) differs by at most `thresh` from the one `lr_diff` points later."""
    lrs, losses = _float32(lrs), _float32(losses).numpy()
    if len(losses) <= lr_diff:  # fastai indexes past the start of the curve here and raises
        return None
    gradient = np.gradient(losses)
    right, left = -1, -1 - lr_diff
    local_min_lr = lrs[left]
    while left >= -len(losses) and abs(gradient[right] - gradient[left]) > thresh:
        local_min_lr = lrs[left]
        right -= 1
        left -= 1
    return float(local_min_lr) * adjust_value


def _float32(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """As fastai's suggestion functions see values: a float32 tensor."""
    return torch.as_tensor(values, dtype=torch.float32)


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "valley": valley,
    "minimum": minimum,
    "steep": steep,
    "slide": slide,
}


def plot_lr_find(result: LrFindResult, path: str | Path, skip_end: int = 5) -> Path:
    """The smoothed loss against the lr (log scale), the suggestions marked; a PNG at `path`."""
    from sweeper.schedules.plots import plt, save_figure

    lrs = result.lrs[:-skip_end] if len(result.lrs) > skip_end else result.lrs  # as fastai: the end is noise
    losses = result.losses[: len(lrs)]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(lrs, losses)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss (smoothed)")
    for (name, lr), marker in zip(result.suggestions.items(), "o^sD"):
        nearest = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / lr)))
        axis.plot(lr, result.losses[nearest], marker, label=f"{name}: {lr:.2e}")
    if result.suggestions:
        axis.legend(loc="best")
    return save_figure(figure, path)
