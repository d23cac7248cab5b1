"""Models with a body/head split, so a slice has layer groups to spread over.

- `MLP` and `SmallCNN`: `body` (a Sequential of blocks) then `head`; their configs split them
  by prefixes `[body.0, body.1, head]`.
- `resnet`: a torchvision ResNet (the optional `vision` extra; `sweeper.zoo.vision.classifier`), split
  as fastai splits it into three groups (`resnet_split`); pretrained weights only from a file, or
  torchvision weights the user names (torchvision's cache).
- `pretrained_on_digits`: a model whose body is pre-trained on some digit classes (cached on
  disk by a hash of its recipe), with a fresh head for the classes it is fine-tuned on: the
  transfer task.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sweeper.boundary.printed import printable
from sweeper.config import ConfigError
from sweeper.zoo.vision import classifier
from sweeper.zoo.weights_file import weights_for

__all__ = ["MLP", "SmallCNN", "pretrained_on_digits", "resnet", "resnet_split"]

PRETRAIN_RECIPE_VERSION = 2  # part of the cache key: bump it when the pre-training loop changes


class MLP(nn.Module):
    """Flatten, hidden layers with ReLU (the body, one block each), then a linear head."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        if not hidden:
            raise ConfigError("model.net.hidden: give at least one hidden width, e.g. [256, 128].")
        sizes = [math.prod(in_shape), *hidden]
        blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(sizes, sizes[1:])]
        blocks[0].insert(0, nn.Flatten())
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class GlobalAvgPool(nn.Module):
    """The mean over the spatial dimensions, flattened (AdaptiveAvgPool2d(1) has no
    deterministic backward pass on CUDA; a mean has)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class SmallCNN(nn.Module):
    """Conv blocks (conv, batch norm, ReLU) as the body; global average pooling and a linear head."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(f"model=cnn needs images shaped [channels, height, width]; data.shape is {list(in_shape)}.")
        widths = [in_shape[0], *channels]
        self.body = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()) for a, b in zip(widths, widths[1:]))
        )
        self.head = nn.Sequential(GlobalAvgPool(), nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# Recorded configs name sweeper.zoo.models.resnet: torchvision's classifiers are built by one function.
resnet = classifier


def resnet_split(net: nn.Module) -> list[list[nn.Module]]:
    """fastai's three ResNet groups (`_resnet_split` over its body, cut before the pooling, and
    head): the stem to layer2, layer3 and layer4, the head."""
    return [[net.conv1, net.bn1, net.layer1, net.layer2], [net.layer3, net.layer4], [net.fc]]


def pretrained_on_digits(
    net: nn.Module,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    epochs: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    cache_dir: str = "results/cache",
) -> nn.Module:
    """`net` with its body pre-trained on the digits of `classes` and its own head left fresh.

    `net` (with `body` and `head`) is built for the classes it will be fine-tuned on; the
    pre-training trains the body under a temporary head for `classes`. The body's weights depend
    on the recipe alone (architecture, classes, epochs, lr, seed), not on the trial's seed, and
    are cached under `cache_dir` by a hash of it: every trial of a sweep shares one pre-training.
    """
    recipe = {
        "net": repr(net),
        "classes": list(classes),
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "version": PRETRAIN_RECIPE_VERSION,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"digits-body-{key}.pt"
    body_state = _cached_body(path, net.body)
    if body_state is None:
        print(f"pre-training the digits body (first use; cached at {printable(path)}) ...", end="", file=sys.stderr, flush=True)
        start = time.monotonic()
        body_state = _pretrain_body(net, list(classes), epochs, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(body_state, partial)
        os.replace(partial, path)  # atomic: parallel workers never read half a file
        print(f" done in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    net.body.load_state_dict(body_state)
    return net


def _cached_body(path: Path, body: nn.Module) -> dict[str, torch.Tensor] | None:
    """The body's weights cached at `path`, checked against `body`; None (after a line that says
    why, for one that is there) when they must be pre-trained. The cache may be shared (a folder
    of several users, a copied results/): a file is loaded only when it fits the body key by key."""
    if not path.exists():
        return None
    state, problem = weights_for(body, path)
    # On stderr (stdout is the trial's progress). Only the warning has the "sweeper: " mark that
    # a sweep passes on from its workers' logs to its console: every trial uses the cached body.
    if problem is None:
        print(f"using the cached body {printable(path)}", file=sys.stderr, flush=True)
        return state
    print(f"sweeper: ignoring the cached body {printable(path)}: {problem}; pre-training it afresh", file=sys.stderr, flush=True)
    return None


def _pretrain_body(net: nn.Module, classes: list[int], epochs: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    from sweeper.zoo.data import digits_classes

    body = copy.deepcopy(net.body)
    # A private random stream: the trial's own seeding is untouched, and the body starts from
    # weights drawn from the recipe's seed (not from the trial's), so the cache is the same
    # whichever trial fills it.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in body.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model = nn.Sequential(body, _head_for(net.head, len(classes)))
        data = digits_classes(classes, split_seed=seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for x, y in data.train_batches(32, order):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {name: value.detach().clone() for name, value in body.state_dict().items()}


def _head_for(head: nn.Module, num_classes: int) -> nn.Module:
    """A fresh copy of `head` whose last linear layer has `num_classes` outputs."""
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes)
    head = copy.deepcopy(head)
    head[-1] = nn.Linear(head[-1].in_features, num_classes)
    return head
