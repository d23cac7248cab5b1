"""Data sets a trial trains on. Nothing here downloads anything.

A data config names a builder by `_target_` (`data.source`); the builder returns either
`TensorData` (small sets: kept whole on the trial's device and batched by indexing, no loader)
or `LoaderData` (image folders and other large sets, through a DataLoader).

Built in: scikit-learn's digits (real 8x8 images), a transfer split of digits (pre-train on some
classes, fine-tune on the others), a generated synthetic task, tensors from a .pt file, and a
torchvision ImageFolder for users' own images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sweeper.config import ConfigError

__all__ = [
    "LoaderData",
    "TensorData",
    "digits",
    "digits_classes",
    "image_folder",
    "synthetic",
    "tensors_file",
]

Batch = tuple[Tensor, Tensor]


@dataclass
class TensorData:
    """A data set small enough to live on the device whole: batches are index slices."""

    train_x: Tensor
    train_y: Tensor
    valid_x: Tensor
    valid_y: Tensor

    def to(self, device: torch.device) -> TensorData:
        return TensorData(*(t.to(device) for t in (self.train_x, self.train_y, self.valid_x, self.valid_y)))

    def n_train_batches(self, batch_size: int) -> int:
        # fastai drops the last, short training batch (it would be noisy); keep one if that is all.
        return max(1, len(self.train_y) // batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(self.train_y), generator=generator).to(self.train_x.device)
        for i in range(self.n_train_batches(batch_size)):
            index = order[i * batch_size : (i + 1) * batch_size]
            yield self.train_x[index], self.train_y[index]

    def valid_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self.valid_y), batch_size):
            yield self.valid_x[start : start + batch_size], self.valid_y[start : start + batch_size]


@dataclass
class LoaderData:
    """A data set read through DataLoaders (images from disk); batches move to the device."""

    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset
    num_workers: int = 0

    def to(self, device: torch.device) -> LoaderData:
        self.device = device
        return self

    def n_train_batches(self, batch_size: int) -> int:
        return max(1, len(self.train) // batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.train, batch_size, shuffle=True, drop_last=len(self.train) > batch_size,
            generator=generator, num_workers=self.num_workers,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def valid_batches(self, batch_size: int) -> Iterator[Batch]:
        for x, y in torch.utils.data.DataLoader(self.valid, batch_size, num_workers=self.num_workers):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _split(x: Tensor, y: Tensor, val_fraction: float, seed: int) -> TensorData:
    """A seeded, stratification-free random split (the same for every trial of a sweep)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.source.val_fraction: {val_fraction!r} must be in (0, 1), e.g. 0.25.")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, int(round(len(y) * val_fraction)))
    valid, train = order[:n_valid], order[n_valid:]
    return TensorData(x[train], y[train], x[valid], y[valid])


def _digits_tensors() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values run 0..16: scale to 0..1, shaped as 1-channel 8x8 images.
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.long)


def digits(val_fraction: float = 0.25, split_seed: int = 0) -> TensorData:
    """scikit-learn's 1,797 handwritten digits (ten classes), split train/valid."""
    return _split(*_digits_tensors(), val_fraction, split_seed)


def digits_classes(
    classes: Sequence[int], train_per_class: int | None = None, val_fraction: float = 0.25, split_seed: int = 0
) -> TensorData:
    """Digits of the given classes only, relabelled 0..len(classes)-1.

    With `train_per_class`, the training set keeps only that many images per class (the rest
    validate): a small fine-tuning set is where a pre-trained body and a good slice matter.
    """
    x, y = _digits_tensors()
    keep = torch.isin(y, torch.tensor(list(classes)))
    x, y = x[keep], y[keep]
    relabel = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([relabel[int(label)] for label in y])
    if train_per_class is None:
        return _split(x, y, val_fraction, split_seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    train = torch.cat([order[y[order] == c][:train_per_class] for c in range(len(classes))])
    valid = order[~torch.isin(order, train)]
    return TensorData(x[train], y[train], x[valid], y[valid])


def synthetic(
    n_samples: int = 2000, n_features: int = 32, num_classes: int = 4, noise: float = 0.05,
    val_fraction: float = 0.25, seed: int = 0,
) -> TensorData:
    """A generated classification task (scikit-learn's make_classification), shaped [n, features]."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 2),
        n_classes=num_classes, n_clusters_per_class=1, flip_y=noise, random_state=seed,
    )
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), val_fraction, seed)


def _existing(setting: str, path: str | None) -> Path:
    if path is None or not Path(path).expanduser().exists():
        raise ConfigError(
            f"{setting}: {path!r} does not exist; point it at your data, e.g. {setting}=/data/my_set."
        )
    return Path(path).expanduser()


def tensors_file(path: str | None = None, val_fraction: float = 0.2, split_seed: int = 0) -> TensorData:
    """Tensors saved with torch.save: {"x", "y"} (split here) or {"train_x", "train_y", "valid_x", "valid_y"}."""
    saved = torch.load(_existing("data.source.path", path), weights_only=True)
    if {"train_x", "train_y", "valid_x", "valid_y"} <= saved.keys():
        return TensorData(saved["train_x"], saved["train_y"], saved["valid_x"], saved["valid_y"])
    if {"x", "y"} <= saved.keys():
        return _split(saved["x"], saved["y"].long(), val_fraction, split_seed)
    raise ConfigError(
        f"data.source.path: {path} holds keys {sorted(saved)}; save a dict with x and y "
        f"(or train_x, train_y, valid_x, valid_y)."
    )


def image_folder(
    root: str | None = None, image_size: int = 224, valid_dir: str = "valid", train_dir: str = "train",
    num_workers: int = 2,
) -> LoaderData:
    """torchvision ImageFolder images under root/train/<class>/ and root/valid/<class>/."""
    base = _existing("data.source.root", root)
    for sub in (train_dir, valid_dir):
        _existing("data.source.root", str(base / sub))
    try:
        from torchvision import datasets, transforms
    except ImportError:
        raise ConfigError(
            "data=image_folder needs torchvision: pip install 'sweeper[vision]'."
        ) from None
    transform = transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    return LoaderData(
        datasets.ImageFolder(base / train_dir, transform), datasets.ImageFolder(base / valid_dir, transform),
        num_workers=num_workers,
    )
