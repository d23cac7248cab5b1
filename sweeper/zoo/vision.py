"""torchvision, imported with a one-line error that says how to fix it, and its classifiers.

torchvision ships compiled operators built against one torch build. A torchvision wheel beside
another torch (another release, or a CPU torch beside PyPI's CUDA-built torchvision) fails on
import with "operator torchvision::nms does not exist"; `import_torchvision` turns that into a
ConfigError naming both versions and a pair that installs and imports together.

`classifier` builds any torchvision classification model (resnet18, efficientnet_b0,
mobilenet_v3_small, convnext_tiny, vit_b_16, ...) with a fresh head for the data's classes; split
it with `sweeper.zoo.groups.body_and_head` (any model) or, for ResNets, `sweeper.zoo.models.resnet_split`
(fastai's three groups).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from sweeper.boundary.printed import printable
from sweeper.config import ConfigError, error_line
from sweeper.zoo.weights_file import weights_for

__all__ = ["MATCHING_PAIR", "classifier", "import_torchvision"]

# A torch/torchvision pair built together whose wheels import on a CPU-only machine (README:
# "Vision models" says why this one).
MATCHING_PAIR = "pip install torch==2.14.1 torchvision==0.29.1"


def import_torchvision(needed_by: str) -> ModuleType:
    """torchvision, or a ConfigError: not installed (the vision extra), or not loadable beside
    this torch (a mismatched pair)."""
    try:
        import torchvision
    except ImportError:
        raise ConfigError(f"{needed_by} needs torchvision: pip install 'sweeper[vision]'.") from None
    except (RuntimeError, OSError) as error:  # its compiled operators do not fit this torch
        raise ConfigError(_mismatch(error)) from None
    return torchvision


def _mismatch(error: BaseException) -> str:
    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = "?"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    reason = error_line(error)
    return (
        f"torchvision {vision} does not load beside torch {torch.__version__} (a {build} build): "
        f"{reason}; each torchvision wheel fits one torch build, so install a pair built together: "
        f"{MATCHING_PAIR}."
    )


def classifier(
    arch: str = "resnet18",
    num_classes: int = 10,
    in_shape: Sequence[int] = (3, 224, 224),
    weights: str | None = None,
    weights_path: str | None = None,
) -> nn.Module:
    """The torchvision classification model `arch` with a new last layer for `num_classes`.

    Weights: `weights` names torchvision's (e.g. IMAGENET1K_V1: torchvision's cache, where
    torchvision fetches them if they are not there yet), `weights_path` a state_dict file of
    yours for the model as torchvision builds it (1000 classes); neither (the default) starts
    from random weights. Images with other than 3 channels get a fresh first convolution.
    """
    models = import_torchvision(f"model.net: {arch}").models
    if arch not in models.list_models(module=models):
        raise ConfigError(
            f"model.net.arch: {arch!r} is not a torchvision classification model, e.g. resnet18, "
            f"efficientnet_b0 or vit_b_16 (torchvision.models.list_models() lists them)."
        )
    net = models.get_model(arch, weights=weights)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.net.weights_path: {weights_path!r} does not exist; give a state_dict file "
                f"saved with torch.save(model.state_dict(), path), or null."
            )
        state, problem = weights_for(net, path)
        if problem:
            raise ConfigError(
                f"model.net.weights_path: {printable(weights_path)} does not fit torchvision's {arch} (1000 classes): "
                f"{problem}; give the state_dict of that model (torch.save(model.state_dict(), path)), or null."
            )
        net.load_state_dict(state)
    _fit_first_conv(net, in_shape[0], arch)
    _fit_last_linear(net, num_classes, arch)
    return net


def _fit_first_conv(net: nn.Module, channels: int, arch: str) -> None:
    """A fresh first convolution when the images have another number of channels."""
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            f"model.net.arch: {arch} has no convolution to take {channels}-channel images; give it 3-channel images (data.shape)."
        )
    first = net.get_submodule(convs[0])
    if first.in_channels == channels:
        return
    fresh = nn.Conv2d(
        channels, first.out_channels, first.kernel_size, first.stride, first.padding,
        first.dilation, first.groups, first.bias is not None, first.padding_mode,
    )  # fmt: skip
    parent, _, name = convs[0].rpartition(".")
    setattr(net.get_submodule(parent), name, fresh)


def _fit_last_linear(net: nn.Module, num_classes: int, arch: str) -> None:
    """The model's last linear layer (its classifier) replaced by a fresh one for `num_classes`."""
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"model.net.arch: {arch} has no linear classifier to replace; choose one that has (resnet18, "
            f"efficientnet_b0, ...) or build your own with model.net._target_."
        )
    path = linears[-1]
    parent, _, name = path.rpartition(".")
    old = net.get_submodule(path)
    setattr(net.get_submodule(parent), name, nn.Linear(old.in_features, num_classes))
