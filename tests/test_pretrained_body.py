"""Saved weights are read as untrusted files: the digits body's cache (which a folder of several
users may share) and a user's `model.net.weights_path` are checked against the model before
anything is loaded. And `sweeper train` says when it pre-trains the body, and how long it took."""

from __future__ import annotations

import re
import types
from pathlib import Path

import torch
from torch import nn

from sweeper.cli import main
from sweeper.zoo import vision
from sweeper.zoo.models import MLP, pretrained_on_digits

QUICK = ["train.epochs=1", "train.batch_size=256", "train.device=cpu", "tracking=none", "--quiet"]
CHEAP_BODY = ["model=mlp_pretrained", "model.net.epochs=1", "model.net.classes=[0,1]", "model.net.net.hidden=[16,8]"]


def train(tmp_path: Path, name: str, capsys, *more: str) -> tuple[int, str]:
    code = main(["train", "--name", name, *QUICK, *CHEAP_BODY, f"model.net.cache_dir={tmp_path}/cache", f"results_dir={tmp_path}", *more])
    return code, capsys.readouterr().err


def cached(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "cache").glob("digits-body-*.pt")
    return path


def test_train_says_when_it_pretrains_the_body_and_then_that_it_uses_the_cache(tmp_path, capsys):
    code, err = train(tmp_path, "first", capsys)
    assert code == 0, err
    path = cached(tmp_path)
    assert re.search(
        rf"^pre-training the digits body \(first use; cached at {re.escape(str(path))}\) \.\.\. done in \d+\.\d s$", err, re.M
    ), err
    code, err = train(tmp_path, "second", capsys)
    assert code == 0, err
    assert f"using the cached body {path}" in err and "pre-training" not in err


def test_a_cached_body_that_does_not_fit_is_ignored_in_one_line_and_trained_afresh(tmp_path, capsys):
    def body_from_the_cache() -> tuple[nn.Module, str]:
        net = pretrained_on_digits(MLP([1, 8, 8], 3, hidden=[16, 8]), classes=[0, 1], epochs=1, cache_dir=str(tmp_path / "cache"))
        return net, capsys.readouterr().err

    first, _ = body_from_the_cache()
    path = cached(tmp_path)
    for planted, why in (
        ({"0.1.weight": torch.zeros(3)}, "its keys are not the model's"),
        (
            {**first.body.state_dict(), "1.0.bias": torch.zeros(8, dtype=torch.float64)},
            "1.0.bias is torch.float64, the model's torch.float32",
        ),
        (b"not a state dict at all", "it could not be read (UnpicklingError: "),
    ):
        torch.save(planted, path) if isinstance(planted, dict) else path.write_bytes(planted)
        again, err = body_from_the_cache()
        (line,) = [line for line in err.splitlines() if "ignoring" in line]
        assert line.startswith(f"sweeper: ignoring the cached body {path}: {why}"), line
        assert line.endswith("; pre-training it afresh") and "pre-training the digits body" in err
        for name, value in again.body.state_dict().items():  # pre-trained afresh: the recipe's body again
            assert torch.equal(value, first.body.state_dict()[name]), name
        assert set(torch.load(path, weights_only=True)) == set(first.body.state_dict())  # the cache fits again


def fake_torchvision(monkeypatch) -> None:
    """A stand-in for torchvision (not installed here; the check is torchvision's own code's
    neighbour, not torchvision's): one classification model, a conv then a linear classifier."""

    def get_model(arch, weights=None):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))

    models = types.SimpleNamespace(list_models=lambda module: ["resnet18"], get_model=get_model)
    monkeypatch.setattr(vision, "import_torchvision", lambda needed_by: types.SimpleNamespace(models=models))


def test_a_weights_file_that_does_not_fit_the_model_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    fake_torchvision(monkeypatch)
    weights = tmp_path / "mine.pt"
    torch.save({"0.weight": torch.zeros(4, 3, 3, 3)}, weights)  # a part of the model only
    code = main(
        ["train", "--name", "vision", *QUICK, "model=resnet18", f"model.net.weights_path={weights}", f"results_dir={tmp_path}/results"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.splitlines()  # one line, no traceback
    assert "model.net.weights_path: " in line and str(weights) in line and "its keys are not the model's (missing ['0.bias'" in line
    assert not (tmp_path / "results").exists()  # nothing written
