"""Data sets a trial trains on. Nothing here downloads anything, ever.

A data config names a builder by `_target_` (`data.source`); the builder returns `TrialData`:
- `TensorData` for small sets: kept whole on the trial's device, batched by indexing with a
  seeded permutation (no DataLoader, no copies per batch);
- `LoaderData` for image folders and other large sets, read through DataLoaders.

Built in: scikit-learn's digits (real 8x8 images), a class subset of digits (the transfer task:
pre-train on some digits, fine-tune on the others), a generated synthetic classification task and
a generated regression task (float targets shaped [n, outputs], for task=regression), a generated
token task (sequences of token ids, for model=transformer), tensors
from a .pt file, and a torchvision ImageFolder for your own images.

Data that every trial would fail on is a ConfigError naming the setting, raised when the data is
built (before any training, and when a sweep checks its first trial): a missing path, a file
that torch.save did not write, image folders whose train and valid classes differ, inputs of
another shape than `data.shape` or labels outside `data.num_classes` (the model is built from
those two, so each builder is given them: `shape: ${data.shape}`), and a training set of one class.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sweeper.config import ConfigError
from sweeper.config.rules import whole

__all__ = [
    "LoaderData",
    "TensorData",
    "TrialData",
    "digits",
    "digits_classes",
    "image_folder",
    "synthetic",
    "synthetic_regression",
    "synthetic_tokens",
    "tensors_file",
]

Batch = tuple[Tensor, Tensor]  # inputs, targets (integer class labels, or float values for regression)


@runtime_checkable
class TrialData(Protocol):
    """What the trainer needs of a data set."""

    def to(self, device: torch.device) -> TrialData: ...

    def n_train_batches(self, batch_size: int) -> int: ...

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]: ...

    def valid_batches(self, batch_size: int) -> Iterator[Batch]: ...


def _n_full_batches(n_samples: int, batch_size: int) -> int:
    # fastai drops the last, short training batch (it would be noisy); keep one if that is all.
    return max(1, n_samples // batch_size)


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
        return _n_full_batches(len(self.train_y), batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        # the order is drawn on the CPU generator, so it is the same on every device
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
    device: torch.device = torch.device("cpu")

    def to(self, device: torch.device) -> LoaderData:
        return LoaderData(self.train, self.valid, self.num_workers, device)

    def n_train_batches(self, batch_size: int) -> int:
        return _n_full_batches(len(self.train), batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        drop_last = len(self.train) > batch_size
        yield from self._batches(self.train, batch_size, shuffle=True, drop_last=drop_last, generator=generator)

    def valid_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._batches(self.valid, batch_size)

    def _batches(self, dataset: torch.utils.data.Dataset, batch_size: int, **order) -> Iterator[Batch]:
        on_gpu = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(dataset, batch_size, num_workers=self.num_workers, pin_memory=on_gpu, **order)
        for x, y in loader:
            yield x.to(self.device, non_blocking=on_gpu), y.to(self.device, non_blocking=on_gpu)


def _split(x: Tensor, y: Tensor, val_fraction: float, seed: int) -> TensorData:
    """A seeded random split into training and validation sets (the same for every trial)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_valid = max(1, round(len(y) * val_fraction))
    valid, train = order[:n_valid], order[n_valid:]
    return TensorData(x[train], y[train], x[valid], y[valid])


def _digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits, read from the CSV file scikit-learn ships (no download) as its
    load_digits reads it: 64 pixels then the label per row. Read here rather than through
    load_digits, whose import of scikit-learn (and scipy) costs ~2 s in every worker."""
    import numpy as np

    package = importlib.util.find_spec("sklearn")
    if package is None or package.origin is None:
        raise ConfigError("data=digits: the digits ship with scikit-learn, which is not installed: pip install scikit-learn.")
    table = np.loadtxt(Path(package.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    # Pixel values run 0..16: scale to 0..1, shaped as 1-channel 8x8 images.
    x = torch.tensor(table[:, :-1], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(table[:, -1].astype(int), dtype=torch.long)


def _checked(data: TensorData, shape: Sequence[int] | None, num_classes: int | None, setting: str) -> TensorData:
    """`data` if it fits the model the config builds (data.shape, data.num_classes) and can teach
    that classifier something (two classes or more); `setting` is where the data came from. Each
    check runs when its setting is given, as it is from a config."""
    inputs = list(data.train_x.shape[1:])
    if shape is not None and inputs != list(shape):
        raise ConfigError(
            f"data.shape: {list(shape)} does not match the data, whose inputs are shaped {inputs} "
            f"(from {setting}); set data.shape=[{','.join(map(str, inputs))}]."
        )
    if num_classes is None:
        return data
    labels = torch.cat([data.train_y, data.valid_y])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(
            f"data.num_classes: {num_classes}, but the labels run from {int(labels.min())} to "
            f"{int(labels.max())} (from {setting}); labels are class indices 0..n-1: set "
            f"data.num_classes={int(labels.max()) + 1}, or relabel the data."
        )
    present = data.train_y.unique().tolist()
    if len(present) < 2:
        raise ConfigError(
            f"{setting}: the training set holds a single class ({present}); a classifier needs examples of two classes or more."
        )
    return data


def digits(
    val_fraction: float = 0.25, split_seed: int = 0, shape: Sequence[int] | None = None, num_classes: int | None = None
) -> TensorData:
    """scikit-learn's 1,797 handwritten digits (ten classes), split train/valid."""
    return _checked(_split(*_digits_tensors(), val_fraction, split_seed), shape, num_classes, "data=digits")


def digits_classes(
    classes: Sequence[int],
    train_per_class: int | None = None,
    val_fraction: float = 0.25,
    split_seed: int = 0,
    shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> TensorData:
    """Digits of the given classes only, relabelled 0..len(classes)-1 in the order given.

    With `train_per_class`, the training set keeps that many images per class and every other
    image validates: a small fine-tuning set is where a pre-trained body and a good slice matter.
    """
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
        raise ConfigError(f"data.source.classes: {classes!r} must be distinct digits 0-9, e.g. [5, 6, 7, 8, 9].")
    x, y = _digits_tensors()
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep]
    y = torch.tensor([classes.index(int(label)) for label in y])
    if train_per_class is None:
        return _checked(_split(x, y, val_fraction, split_seed), shape, num_classes, "data.source.classes")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    train = torch.cat([order[y[order] == label][:train_per_class] for label in range(len(classes))])
    valid = order[~torch.isin(order, train)]
    return _checked(TensorData(x[train], y[train], x[valid], y[valid]), shape, num_classes, "data.source.classes")


def synthetic(
    n_samples: int = 2000,
    n_features: int = 32,
    num_classes: int = 4,
    noise: float = 0.05,
    val_fraction: float = 0.25,
    seed: int = 0,
    shape: Sequence[int] | None = None,
) -> TensorData:
    """A generated classification task (scikit-learn's make_classification), shaped [n, features]."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=max(2, n_features // 2),
        n_classes=num_classes,
        n_clusters_per_class=1,
        flip_y=noise,
        random_state=seed,
    )
    data = _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), val_fraction, seed)
    return _checked(data, shape, num_classes, "data=synthetic")


def synthetic_regression(
    n_samples: int = 1000,
    n_features: int = 16,
    outputs: int = 1,
    noise: float = 10.0,
    val_fraction: float = 0.25,
    seed: int = 0,
    shape: Sequence[int] | None = None,
) -> TensorData:
    """A generated regression task (scikit-learn's make_regression): inputs shaped [n, features],
    float targets shaped [n, outputs] (the model's output size), standardised over the whole set so
    that a model's first outputs are on their scale."""
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=max(1, n_features // 2),
        n_targets=outputs,
        noise=noise,
        random_state=seed,
    )
    targets = torch.tensor(y, dtype=torch.float64).reshape(n_samples, outputs)
    targets = ((targets - targets.mean(dim=0)) / targets.std(dim=0)).float()
    data = _split(torch.tensor(x, dtype=torch.float32), targets, val_fraction, seed)
    return _checked(data, shape, None, "data=synthetic_regression")


def synthetic_tokens(
    n_samples: int = 512,
    seq_len: int = 16,
    vocab_size: int = 64,
    num_classes: int = 2,
    val_fraction: float = 0.25,
    seed: int = 0,
    shape: Sequence[int] | None = None,
) -> TensorData:
    """A generated token task: sequences of token ids shaped [n, seq_len], each holding one
    marker token (id 1 + its class) among random tokens (ids above the markers), then padding
    (id 0) over a random tail of up to half its length. The class is which marker it holds."""
    whole("data.source.num_classes", num_classes, 2)
    whole("data.source.seq_len", seq_len, 2)
    if vocab_size < num_classes + 2:
        raise ConfigError(
            f"data.source.vocab_size: {vocab_size} leaves no ordinary tokens beside {num_classes} markers and padding; give {num_classes + 2} or more."
        )
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n_samples,), generator=rng)
    ids = torch.randint(num_classes + 1, vocab_size, (n_samples, seq_len), generator=rng)
    lengths = seq_len - torch.randint(seq_len // 2 + 1, (n_samples,), generator=rng)
    ids[torch.arange(seq_len) >= lengths.unsqueeze(1)] = 0
    marker_at = (torch.rand(n_samples, generator=rng) * lengths).long()
    ids[torch.arange(n_samples), marker_at] = labels + 1
    return _checked(_split(ids, labels, val_fraction, seed), shape, num_classes, "data=tokens")


def _existing(setting: str, path: str | None, what: str) -> Path:
    """The path, or a ConfigError that names the setting and how to fix it."""
    if path is None:
        raise ConfigError(f"{setting} is not set; point it at {what}: {setting}=/path/to/it.")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(f"{setting}: {str(path)!r} does not exist; point it at {what}: {setting}=/path/to/it.")
    return resolved


def tensors_file(
    path: str | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> TensorData:
    """Tensors saved with torch.save: {"x", "y"} (split here) or {"train_x", "train_y", "valid_x", "valid_y"}."""
    what = "a .pt file saved with torch.save({'x': ..., 'y': ...})"
    file = _existing("data.source.path", path, what)
    try:
        saved = torch.load(file, weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the unpickler trips on, it is not such a file
        raise ConfigError(f"data.source.path: {path} cannot be read as tensors ({type(error).__name__}); point it at {what}.") from None
    contents = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
    if isinstance(saved, dict) and {"train_x", "train_y", "valid_x", "valid_y"} <= saved.keys():
        data = TensorData(
            *_inputs_and_labels(path, saved["train_x"], saved["train_y"]),
            *_inputs_and_labels(path, saved["valid_x"], saved["valid_y"]),
        )
        return _checked(data, shape, num_classes, "data.source.path")
    if isinstance(saved, dict) and {"x", "y"} <= saved.keys():
        data = _split(*_inputs_and_labels(path, saved["x"], saved["y"]), val_fraction, split_seed)
        return _checked(data, shape, num_classes, "data.source.path")
    raise ConfigError(f"data.source.path: {path} holds {contents}; save a dict with x and y (or train_x, train_y, valid_x, valid_y).")


def _inputs_and_labels(path: str, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if len(inputs) != len(labels) or labels.is_floating_point() or labels.ndim != 1:
        raise ConfigError(
            f"data.source.path: {path} needs as many inputs as labels, and labels as a 1-D integer "
            f"tensor of class indices; got inputs {tuple(inputs.shape)}, labels "
            f"{tuple(labels.shape)} {labels.dtype}."
        )
    return inputs.float(), labels.long()


def image_folder(
    root: str | None = None,
    image_size: int = 224,
    train_dir: str = "train",
    valid_dir: str = "valid",
    num_workers: int = 2,
    shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> LoaderData:
    """torchvision ImageFolder images under root/train/<class>/ and root/valid/<class>/."""
    base = _existing("data.source.root", root, "a folder with train/<class>/ and valid/<class>/ images")
    for sub in (train_dir, valid_dir):
        if not (base / sub).is_dir():
            raise ConfigError(
                f"data.source.root: {root} has no {sub}/ folder; lay it out as {sub}/<class>/*.jpg "
                f"(or set data.source.{'train' if sub == train_dir else 'valid'}_dir)."
            )
    from sweeper.zoo.vision import import_torchvision

    torchvision = import_torchvision("data=image_folder")
    datasets, transforms = torchvision.datasets, torchvision.transforms
    transform = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # ImageNet statistics
        ]
    )
    try:
        train, valid = (datasets.ImageFolder(base / sub, transform) for sub in (train_dir, valid_dir))
    except (FileNotFoundError, RuntimeError) as error:  # a class folder without images, or none
        raise ConfigError(f"data.source.root: {root}: {error}") from None
    # ImageFolder numbers classes by their sorted folder names: both sides must list the same ones.
    if train.classes != valid.classes:
        raise ConfigError(
            f"data.source.root: {train_dir}/ has classes {train.classes} but {valid_dir}/ has "
            f"{valid.classes}; give both the same class folders (labels are numbered by name)."
        )
    if num_classes is not None and len(train.classes) != num_classes:
        raise ConfigError(
            f"data.num_classes: {num_classes}, but {root} has {len(train.classes)} classes "
            f"{train.classes}; set data.num_classes={len(train.classes)}."
        )
    if num_classes is not None and len(train.classes) < 2:
        raise ConfigError(f"data.source.root: {root} holds one class {train.classes}; a classifier needs two or more.")
    inputs = list(train[0][0].shape)  # one image, decoded as every trial would
    if shape is not None and inputs != list(shape):
        raise ConfigError(
            f"data.shape: {list(shape)} does not match the images of {root}, read as {inputs}; "
            f"set data.shape=[{','.join(map(str, inputs))}]."
        )
    return LoaderData(train, valid, num_workers=num_workers)
