"""Vision models (the vision extra): fastai's ResNet split, the generic body/head splitter over
torchvision classifiers, an ImageFolder sweep, and the one-line error for a mismatched pair."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.processes import finished_sweep
from test_data_models import write_image_folder
from torch import nn

from sweeper.config import ConfigError
from sweeper.zoo.groups import body_and_head, split_groups
from sweeper.zoo.vision import MATCHING_PAIR, classifier, import_torchvision

needs_torchvision = pytest.mark.extras("torchvision")


# --- fastai's split, ported from fastai/vision/learner.py (fastai is not installed) ---
def fastai_params(m: nn.Module) -> list[nn.Parameter]:
    return list(m.parameters())


def fastai_resnet_split(m: nn.Sequential) -> list[list[nn.Parameter]]:
    """fastai's `_resnet_split`: L(m[0][:6], m[0][6:], m[1:]).map(params)."""
    return [fastai_params(m[0][:6]), fastai_params(m[0][6:]), fastai_params(m[1:])]


def fastai_model(net: nn.Module) -> nn.Sequential:
    """The model fastai's `create_cnn_model` builds around the same modules: `create_body` with
    the ResNet meta's cut=-2 (before avgpool and fc), then a head; the head here is the
    torchvision net's own `fc`, the module that sits where fastai's head does."""
    body = nn.Sequential(*list(net.children())[:-2])
    return nn.Sequential(body, nn.Sequential(net.fc))


@needs_torchvision
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("splitter", ["sweeper.zoo.models.resnet_split", "sweeper.zoo.groups.body_and_head"])
def test_resnets_split_as_fastais_resnet_split_parameter_for_parameter(arch, splitter):
    net = classifier(arch, num_classes=5, in_shape=[3, 32, 32])
    ours = split_groups(net, splitter)
    theirs = fastai_resnet_split(fastai_model(net))
    assert [len(group) for group in ours] == [len(group) for group in theirs]
    for index, (group, reference) in enumerate(zip(ours, theirs)):
        assert all(a is b for (_, a), b in zip(group, reference)), f"group {index} differs"


def tiny_vit(num_classes: int) -> nn.Module:
    """A ViT small enough to build in milliseconds: a class token held by the model itself."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=num_classes)


@needs_torchvision
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "densenet121", "tiny_vit"])
@pytest.mark.parametrize("body_groups", [1, 2, 3])
def test_any_torchvision_classifier_splits_into_body_groups_and_its_head(arch, body_groups):
    net = tiny_vit(3) if arch == "tiny_vit" else classifier(arch, num_classes=3, in_shape=[3, 32, 32])
    groups = split_groups(net, lambda model: body_and_head(model, body_groups))
    assert len(groups) == body_groups + 1
    # in the model's own order: each group a contiguous run, the head last
    assert [name for group in groups for name, _ in group] == [name for name, _ in net.named_parameters()]
    last_linear = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear.out_features == 3 and {id(p) for p in last_linear.parameters()} <= {id(p) for _, p in groups[-1]}
    head_names = {name.split(".")[0] for name, _ in groups[-1]}
    assert len(head_names) == 1 and head_names <= {"fc", "classifier", "heads", "head"}  # one top-level module


@needs_torchvision
def test_too_many_body_groups_and_models_without_a_linear_head_are_config_errors():
    net = tiny_vit(3)
    with pytest.raises(ValueError, match="choose 1 to"):
        split_groups(net, lambda model: body_and_head(model, 99))
    with pytest.raises(ConfigError, match="squeezenet1_1 has no linear classifier"):
        classifier("squeezenet1_1", num_classes=3)
    with pytest.raises(ConfigError, match="model.net.arch: 'nonet' is not a torchvision classification model"):
        classifier("nonet", num_classes=3)


@needs_torchvision
def test_a_classifier_takes_images_of_other_channels_and_trains_a_step():
    net = classifier("efficientnet_b0", num_classes=4, in_shape=[1, 32, 32])
    out = net(torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, 4)
    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    assert all(p.grad is not None for p in net.parameters())


@needs_torchvision
@pytest.mark.slow
def test_an_image_folder_sweep_of_three_resnet_trials(sweeper_cli, tmp_path):
    root = write_image_folder(tmp_path / "images")  # 2 classes, 3 images each, train and valid
    sweep = [
        "model=resnet18", "data=image_folder", f"data.source.root={root}", "data.num_classes=2",
        "data.shape=[3,16,16]", "data.source.num_workers=0", "train.epochs=1", "train.batch_size=3",
        "sweep.workers=1", "sweep.cpu_threads=1", "pruner=none", "sampler.seed=0", "tracking=none",
        "sweep.live=false",
    ]  # fmt: skip
    finished_sweep(sweeper_cli, tmp_path, sweep, n_trials=3)


# --- a mismatched pair: runs without torchvision (a stand-in fails as the real one does) ---
MISMATCHED = "raise RuntimeError('operator torchvision::nms does not exist')\n"


@pytest.fixture
def mismatched_torchvision(tmp_path, monkeypatch):
    package = tmp_path / "stand_in" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(MISMATCHED)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    return package.parent


def test_a_mismatched_torchvision_is_one_line_that_names_a_pair_that_works(mismatched_torchvision):
    with pytest.raises(ConfigError) as raised:
        import_torchvision("data=image_folder")
    message = str(raised.value)
    assert "\n" not in message and "operator torchvision::nms does not exist" in message
    assert f"torch {torch.__version__}" in message and MATCHING_PAIR in message


@pytest.mark.slow
def test_sweeper_train_with_a_mismatched_torchvision_exits_2_with_that_line(mismatched_torchvision, tmp_path):
    paths = [str(mismatched_torchvision), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "train", "model=resnet18", "train.epochs=1", "tracking=none"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and MATCHING_PAIR in lines[0] and "Traceback" not in done.stderr
