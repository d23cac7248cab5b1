"""Built-in data sets and models, and every config in conf/model, conf/data, conf/task,
conf/optimizer and conf/experiment: each one is composed and instantiated here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sweeper.config import ConfigError, config_dir, instantiate_node
from sweeper.training.trainer import evaluate, prepare
from sweeper.zoo.data import LoaderData, TensorData, digits, digits_classes, image_folder, synthetic, synthetic_regression, tensors_file
from sweeper.zoo.models import MLP, SmallCNN, pretrained_on_digits, resnet

needs_torchvision = pytest.mark.extras("torchvision")  # the vision extra (conftest.py: where these run)


def write_tensors(path: Path, n: int = 40, features: int = 4) -> Path:
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "y": (x[:, 0] > 0).long()}, path)
    return path


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> Path:
    from PIL import Image

    for split in ("train", "valid"):
        for index, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), color=(80 * index, 10 * i, 0)).save(root / split / name / f"{i}.png")
    return root


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


# Settings an option needs besides its own (paths of the user's, and small sizes for speed).
NEEDS = {
    "data/tensors": lambda tmp: ["data.shape=[4]", "data.num_classes=2", f"data.source.path={write_tensors(tmp / 'set.pt')}"],
    "data/synthetic_regression": lambda tmp: ["task=regression", "train.objective=r2"],
    "task/regression": lambda tmp: ["data=synthetic_regression", "train.objective=r2"],
    "data/image_folder": lambda tmp: [
        "data.num_classes=2",
        "data.shape=[3,16,16]",
        "data.source.num_workers=0",
        f"data.source.root={write_image_folder(tmp / 'images')}",
    ],
    "model/transformer": lambda tmp: [
        "data=tokens",
        "model.net.path=null",
        "model.net.config={model_type: bert, vocab_size: 64, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 16}",
    ],
    "model/transformer_tiny": lambda tmp: ["data=tokens"],
    "data/tokens": lambda tmp: ["model=transformer_tiny"],
    "model/torchvision": lambda tmp: ["model.net.arch=mobilenet_v3_small"],  # small and quick to build
}
EXTRAS = {
    "data/tokens": "transformers",
    "model/torchvision": "torchvision",
    "data/image_folder": "torchvision",
    "model/resnet18": "torchvision",
    "model/transformer": "transformers",
    "model/transformer_tiny": "transformers",
}


@pytest.mark.parametrize(
    ("group", "option"),
    [
        pytest.param(g, o, marks=[pytest.mark.extras(EXTRAS[f"{g}/{o}"])] if f"{g}/{o}" in EXTRAS else [])
        for g in ("model", "data", "optimizer", "experiment", "task")
        for o in options(g)
    ],
    ids=lambda value: value,
)
def test_every_option_composes_and_instantiates_into_a_trial(trial_config, tmp_path, group, option):
    extra = NEEDS.get(f"{group}/{option}", lambda tmp: [])(tmp_path)
    cfg = trial_config(f"{group}={option}", "train.device=cpu", *extra)
    trial = prepare(cfg)  # data, model, layer groups and optimizer, all built from the config
    x, y = next(trial.data.train_batches(4, trial.generator))
    assert tuple(x.shape[1:]) == tuple(cfg.data.shape)  # data.shape says what the data holds
    assert trial.model(x).shape == (len(x), cfg.data.outputs)  # data.outputs sizes the model
    if cfg.task.name == "regression":
        assert y.is_floating_point() and y.shape == (len(x), cfg.data.outputs)  # targets shaped like the outputs
    else:
        assert int(y.max()) < cfg.data.num_classes == cfg.data.outputs
    assert len(trial.groups) == len(trial.peaks) >= 1
    assert type(trial.optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[-1]
    metrics = evaluate(trial.model, trial.data, trial.device, task=trial.task)
    assert set(metrics) == set(cfg.task.metrics) | {"loss"} and metrics["loss"] > 0


def test_digits_are_real_8x8_images_split_by_a_fixed_seed():
    data = digits()
    assert data.train_x.shape[1:] == (1, 8, 8) and len(data.train_y) + len(data.valid_y) == 1797
    assert len(data.valid_y) == round(1797 * 0.25)
    assert 0 <= data.train_x.min() and data.train_x.max() <= 1  # scaled from 0..16
    assert set(data.train_y.tolist()) == set(range(10))
    assert torch.equal(digits().valid_y, data.valid_y)  # the same split every time
    assert not torch.equal(digits(split_seed=1).valid_y, data.valid_y)


def test_digits_are_scikit_learn_s_load_digits_pixel_for_pixel():
    from sklearn.datasets import load_digits

    from sweeper.zoo.data import _digits_tensors

    x, y = _digits_tensors()
    reference = load_digits()
    assert torch.equal(x, torch.tensor(reference.images, dtype=torch.float32).unsqueeze(1) / 16.0)
    assert torch.equal(y, torch.tensor(reference.target, dtype=torch.long))


def test_digits_classes_relabel_and_keep_a_few_training_images_per_class():
    data = digits_classes([7, 5, 9], train_per_class=4)
    assert data.train_y.tolist().count(0) == data.train_y.tolist().count(1) == data.train_y.tolist().count(2) == 4
    full = digits_classes([7, 5, 9])  # no per-class limit: a fraction validates
    everything = len(full.train_y) + len(full.valid_y)
    assert len(data.train_y) + len(data.valid_y) == everything  # every other image validates
    assert set(data.valid_y.tolist()) == {0, 1, 2}  # 7 -> 0, 5 -> 1, 9 -> 2
    train_rows = {tuple(row.flatten().tolist()) for row in data.train_x}
    assert not any(tuple(row.flatten().tolist()) in train_rows for row in data.valid_x[:200])  # disjoint


@pytest.mark.parametrize("classes", [[], [5, 5], [3, 12]])
def test_bad_digit_classes_are_config_errors(classes):
    with pytest.raises(ConfigError, match="data.source.classes"):
        digits_classes(classes)


def test_tensor_batches_cover_the_set_once_per_epoch_in_a_seeded_order():
    data = TensorData(torch.arange(10.0).unsqueeze(1), torch.arange(10), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    assert data.n_train_batches(3) == 3  # the short last batch is dropped, as fastai does
    first = [y.tolist() for _, y in data.train_batches(3, torch.Generator().manual_seed(0))]
    again = [y.tolist() for _, y in data.train_batches(3, torch.Generator().manual_seed(0))]
    assert first == again and len({v for batch in first for v in batch}) == 9
    assert first != [y.tolist() for _, y in data.train_batches(3, torch.Generator().manual_seed(1))]
    assert data.n_train_batches(64) == 1  # one batch when that is all there is


def test_synthetic_task_has_the_configured_shape():
    data = synthetic(n_samples=200, n_features=8, num_classes=3)
    assert data.train_x.shape[1:] == (8,) and set(data.train_y.tolist()) == {0, 1, 2}
    assert len(data.train_y) + len(data.valid_y) == 200


def test_synthetic_regression_has_float_targets_of_the_configured_width_from_a_seed():
    data = synthetic_regression(n_samples=200, n_features=8, outputs=2, seed=1)
    assert data.train_x.shape[1:] == (8,) and data.train_y.shape[1:] == data.valid_y.shape[1:] == (2,)
    assert data.train_y.dtype == torch.float32 and len(data.train_y) + len(data.valid_y) == 200
    targets = torch.cat([data.train_y, data.valid_y])
    assert targets.mean(dim=0).abs().max() < 1e-5 and (targets.std(dim=0) - 1).abs().max() < 1e-5  # standardised
    assert torch.equal(synthetic_regression(n_samples=200, n_features=8, outputs=2, seed=1).valid_y, data.valid_y)
    assert not torch.equal(synthetic_regression(n_samples=200, n_features=8, outputs=2, seed=2).valid_y, data.valid_y)


def test_tensors_file_takes_x_and_y_or_a_split(tmp_path):
    data = tensors_file(str(write_tensors(tmp_path / "xy.pt")), val_fraction=0.25)
    assert len(data.train_y) == 30 and len(data.valid_y) == 10
    split = {
        "train_x": torch.zeros(5, 2),
        "train_y": torch.zeros(5, dtype=torch.long),
        "valid_x": torch.ones(3, 2),
        "valid_y": torch.ones(3, dtype=torch.long),
    }
    torch.save(split, tmp_path / "split.pt")
    assert torch.equal(tensors_file(str(tmp_path / "split.pt")).valid_x, torch.ones(3, 2))


@pytest.mark.parametrize(
    ("saved", "fragment"),
    [
        ({"inputs": torch.zeros(3)}, "save a dict with x and y"),
        ({"x": torch.zeros(4, 2), "y": torch.zeros(4)}, "integer tensor of class indices"),  # float labels
        ({"x": torch.zeros(4, 2), "y": torch.zeros(3, dtype=torch.long)}, "as many inputs as labels"),
    ],
)
def test_a_tensors_file_that_cannot_train_is_a_config_error(tmp_path, saved, fragment):
    torch.save(saved, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=fragment):
        tensors_file(str(tmp_path / "bad.pt"))


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda tmp: tensors_file(None), "data.source.path is not set"),
        (lambda tmp: tensors_file(str(tmp / "missing.pt")), "data.source.path: '.*missing.pt' does not exist"),
        (lambda tmp: image_folder(None), "data.source.root is not set"),
        (lambda tmp: image_folder(str(tmp / "nowhere")), "data.source.root: '.*nowhere' does not exist"),
        (lambda tmp: image_folder(str(tmp)), "has no train/ folder"),
    ],
)
def test_a_missing_data_path_is_a_config_error_naming_the_setting(tmp_path, build, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build(tmp_path)


def test_vision_without_torchvision_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    with pytest.raises(ConfigError, match=r"pip install 'sweeper\[vision\]'"):
        image_folder(str(write_image_folder(tmp_path)))
    with pytest.raises(ConfigError, match=r"pip install 'sweeper\[vision\]'"):
        resnet()


@needs_torchvision
def test_an_image_folder_is_read_through_loaders(tmp_path):
    data = image_folder(str(write_image_folder(tmp_path)), image_size=16, num_workers=0).to(torch.device("cpu"))
    assert isinstance(data, LoaderData) and data.n_train_batches(4) == 1
    x, y = next(data.train_batches(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    assert sum(len(y) for _, y in data.valid_batches(4)) == 6


def test_mlp_and_cnn_have_a_body_and_a_head():
    mlp = MLP([1, 8, 8], 10, hidden=[32, 16, 8])
    assert len(mlp.body) == 3 and mlp.head.out_features == 10
    assert mlp(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    cnn = SmallCNN([1, 8, 8], 5, channels=[4, 8])
    assert len(cnn.body) == 2 and cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ConfigError, match="data.shape"):
        SmallCNN([64], 5)


@needs_torchvision
def test_resnet_splits_into_fastais_three_groups_and_loads_a_weights_file(tmp_path):
    from sweeper.zoo.groups import split_groups

    net = resnet("resnet18", num_classes=4, in_shape=[1, 32, 32])
    groups = split_groups(net, "sweeper.zoo.models.resnet_split")
    assert len(groups) == 3 and groups[-1][0][0].startswith("fc")
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    source = resnet("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    loaded = resnet("resnet18", num_classes=4, weights_path=str(tmp_path / "weights.pt"))
    assert torch.equal(loaded.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    with pytest.raises(ConfigError, match="model.net.weights_path"):
        resnet(weights_path=str(tmp_path / "missing.pt"))


def test_the_pretrained_body_is_cached_by_its_recipe_whatever_the_trial_seed(tmp_path, monkeypatch):
    def build(seed: int, epochs: int = 1) -> MLP:
        torch.manual_seed(seed)  # the trial's seed: decides the fresh head, not the body
        return pretrained_on_digits(MLP([1, 8, 8], 5, hidden=[16, 8]), epochs=epochs, cache_dir=str(tmp_path))

    first = build(seed=1)
    cached = list(tmp_path.glob("digits-body-*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr("sweeper.zoo.models._pretrain_body", lambda *a: pytest.fail("the cache was not used"))
    second = build(seed=2)
    for (name, a), b in zip(first.body.state_dict().items(), second.body.state_dict().values()):
        assert torch.equal(a, b), f"body {name} depends on the trial's seed"
    assert not torch.equal(first.head.weight, second.head.weight)  # the head is the trial's own
    monkeypatch.undo()
    build(seed=1, epochs=2)  # another recipe, another cache entry
    assert len(list(tmp_path.glob("digits-body-*.pt"))) == 2


def test_the_pretrained_body_has_learned_its_classes(tmp_path):
    net = pretrained_on_digits(MLP([1, 8, 8], 5, hidden=[64, 32]), classes=[0, 1, 2, 3, 4], epochs=4, cache_dir=str(tmp_path))
    probe = torch.nn.Sequential(net.body, torch.nn.Linear(32, 5))  # a linear probe on the frozen body
    data = digits_classes([0, 1, 2, 3, 4])
    optimizer = torch.optim.Adam(probe[1].parameters(), lr=1e-2)
    for _ in range(60):
        with torch.no_grad():
            features = net.body(data.train_x)
        loss = torch.nn.functional.cross_entropy(probe[1](features), data.train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert evaluate(probe, data, torch.device("cpu"))["accuracy"] > 0.9  # its features separate 0-4


def test_instantiate_node_names_the_setting_of_a_target_that_cannot_be_built():
    node = OmegaConf.create({"_target_": "sweeper.zoo.models.MLP", "in_shape": [4], "num_classes": 2, "hidden": []})
    with pytest.raises(ConfigError, match="model.net.hidden"):
        instantiate_node(node, "model.net")
