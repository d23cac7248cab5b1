"""Models with a body/head split, so a slice has layer groups to spread over.

- `MLP` and `SmallCNN`: `body` (a Sequential of blocks) then `head`; split by prefixes
  `[body.0, body.1, head]`.
- `resnet`: torchvision ResNets (an optional extra), split as fastai does into three groups
  (`resnet_split`); pretrained weights only from a file or torchvision weights the user has.
- `pretrained_on_digits`: a body pre-trained on some digit classes, cached on disk by its
  config, with a fresh head for the classes it is fine-tuned on (the transfer task).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sweeper.config import ConfigError

__all__ = ["MLP", "SmallCNN", "pretrained_on_digits", "resnet", "resnet_split"]


class MLP(nn.Module):
    """Flatten, hidden layers with ReLU (the body, one block each), then a linear head."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        sizes = [math.prod(in_shape), *hidden]
        blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(sizes, sizes[1:])]
        blocks[0].insert(0, nn.Flatten())
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """Conv blocks (conv, batch norm, ReLU) as the body; pooling and a linear head."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        widths = [in_shape[0], *channels]
        self.body = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(widths, widths[1:])
        ))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def resnet(arch: str = "resnet18", num_classes: int = 10, weights: str | None = None,
           weights_path: str | None = None, **_: object) -> nn.Module:
    """A torchvision ResNet with a new head; weights from torchvision's name or a local file."""
    try:
        from torchvision import models
    except ImportError:
        raise ConfigError("model=resnet18 needs torchvision: pip install 'sweeper[vision]'.") from None
    net = getattr(models, arch)(weights=weights)
    if weights_path is not None:
        if not Path(weights_path).exists():
            raise ConfigError(f"model.net.weights_path: {weights_path!r} does not exist; give a state_dict file.")
        net.load_state_dict(torch.load(weights_path, weights_only=True))
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def resnet_split(net: nn.Module) -> list[list[nn.Module]]:
    """fastai's three ResNet groups: stem to layer2, layer3 and layer4, the head."""
    return [[net.conv1, net.bn1, net.layer1, net.layer2], [net.layer3, net.layer4], [net.fc]]


def pretrained_on_digits(
    net: nn.Module,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    epochs: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    cache_dir: str = "results/cache",
) -> nn.Module:
    """`net` with its body pre-trained on digits of `classes` (cached) and its head left fresh.

    `net` is built for the fine-tuning classes; pre-training swaps in a temporary head for
    `classes`. The body's weights are cached under `cache_dir` by a hash of everything that
    makes them, so every trial of a sweep shares one pre-training.
    """
    recipe = {"net": repr(net), "classes": list(classes), "epochs": epochs, "lr": lr, "seed": seed}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"digits-body-{key}.pt"
    if path.exists():
        body_state = torch.load(path, weights_only=True)
    else:
        body_state = _pretrain_body(net, list(classes), epochs, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(body_state, partial)
        os.replace(partial, path)  # atomic: parallel workers never read half a file
    net.body.load_state_dict(body_state)
    return net


def _pretrain_body(net: nn.Module, classes: list[int], epochs: int, lr: float, seed: int) -> dict:
    from sweeper.data import digits_classes

    # A private RNG stream: whether the cache was warm must not change the trial's own seeding.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        data = digits_classes(classes, split_seed=seed)
        model = nn.Sequential(net.body, _head_for(net.head, len(classes)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for x, y in data.train_batches(32, generator):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {name: value.detach().clone() for name, value in net.body.state_dict().items()}


def _head_for(head: nn.Module, num_classes: int) -> nn.Module:
    """A copy of `head` whose last linear layer has `num_classes` outputs."""
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes)
    head = copy.deepcopy(head)
    head[-1] = nn.Linear(head[-1].in_features, num_classes)
    return head
