"""Data every trial would fail on is refused when it is built, with the setting and the fix."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from sweeper.config import ConfigError
from sweeper.zoo.data import digits, digits_classes, image_folder, synthetic, tensors_file


def saved(path: Path, x: torch.Tensor, y: torch.Tensor) -> str:
    torch.save({"x": x, "y": y}, path)
    return str(path)


def two_classes(path: Path) -> str:
    return saved(path, torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2)


def test_built_in_data_fits_its_own_config():
    assert digits(shape=[1, 8, 8], num_classes=10).train_x.shape[1:] == (1, 8, 8)
    assert len(digits_classes([5, 6], train_per_class=3, shape=[1, 8, 8], num_classes=2).train_y) == 6
    assert synthetic(n_samples=100, n_features=8, num_classes=3, shape=[8]).train_x.shape[1:] == (8,)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda tmp: digits(shape=[64]),
            "data.shape: [64] does not match the data, whose inputs are shaped [1, 8, 8] (from data=digits); set data.shape=[1,8,8].",
        ),
        (
            lambda tmp: digits(num_classes=5),
            "data.num_classes: 5, but the labels run from 0 to 9 (from data=digits); labels are class indices 0..n-1: set data.num_classes=10, or relabel the data.",
        ),
        (
            lambda tmp: tensors_file(two_classes(tmp / "a.pt"), shape=[5]),
            "data.shape: [5] does not match the data, whose inputs are shaped [4] (from data.source.path); set data.shape=[4].",
        ),
        (
            lambda tmp: tensors_file(saved(tmp / "one.pt", torch.randn(20, 4), torch.zeros(20, dtype=torch.long)), num_classes=2),
            "data.source.path: the training set holds a single class ([0]); a classifier needs examples of two classes or more.",
        ),
        (
            lambda tmp: tensors_file(str(tmp / "text.pt")),
            "data.source.path: {tmp}/text.pt cannot be read as tensors (UnpicklingError); point it at a .pt file saved with torch.save({'x': ..., 'y': ...}).",
        ),
        (
            lambda tmp: tensors_file(str(tmp / "empty.pt")),
            "data.source.path: {tmp}/empty.pt cannot be read as tensors (EOFError); point it at a .pt file saved with torch.save({'x': ..., 'y': ...}).",
        ),
    ],
)
def test_data_that_cannot_train_is_refused_when_built(tmp_path, build, message):
    (tmp_path / "text.pt").write_text("not tensors\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as refused:
        build(tmp_path)
    assert str(refused.value) == message.replace("{tmp}", str(tmp_path))


def image_folder_of(root: Path, train: tuple[str, ...], valid: tuple[str, ...]) -> str:
    from PIL import Image

    for split, classes in (("train", train), ("valid", valid)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 20)).save(root / split / name / "0.png")
    return str(root)


@pytest.fixture
def vision(monkeypatch):
    """torchvision, or where the vision extra is not installed a stand-in with ImageFolder's
    class discovery (sorted folder names) and RGB images of the transform's size."""
    if importlib.util.find_spec("torchvision") is not None:
        return

    class ImageFolder:
        def __init__(self, root, transform):
            self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
            self.size = transform

        def __getitem__(self, index):
            return torch.zeros(3, self.size, self.size), 0

    transforms = types.SimpleNamespace(
        Compose=lambda steps: steps[0], Resize=lambda size: size, CenterCrop=lambda size: size,
        ToTensor=lambda: None, Normalize=lambda mean, std: None,
    )  # fmt: skip
    stand_in = types.SimpleNamespace(datasets=types.SimpleNamespace(ImageFolder=ImageFolder), transforms=transforms)
    monkeypatch.setitem(sys.modules, "torchvision", stand_in)


@pytest.mark.parametrize(
    ("train", "valid", "settings", "fragment"),
    [
        (
            ("cat", "dog"),
            ("cat", "cow"),
            {},
            "train/ has classes ['cat', 'dog'] but valid/ has ['cat', 'cow']; give both the same class folders",
        ),
        (
            ("cat", "dog"),
            ("cat", "dog"),
            {"num_classes": 3},
            "data.num_classes: 3, but {root} has 2 classes ['cat', 'dog']; set data.num_classes=2.",
        ),
        (("cat",), ("cat",), {"num_classes": 1}, "data.source.root: {root} holds one class ['cat']; a classifier needs two or more."),
        (
            ("cat", "dog"),
            ("cat", "dog"),
            {"shape": [1, 16, 16]},
            "data.shape: [1, 16, 16] does not match the images of {root}, read as [3, 16, 16]; set data.shape=[3,16,16].",
        ),
    ],
)
def test_image_folders_that_cannot_train_are_refused_when_built(vision, tmp_path, train, valid, settings, fragment):
    root = image_folder_of(tmp_path / "images", train, valid)
    with pytest.raises(ConfigError) as refused:
        image_folder(root, image_size=16, num_workers=0, **settings)
    assert fragment.format(root=root) in str(refused.value)
