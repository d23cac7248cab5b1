"""Hugging Face sequence classifiers (the transformers extra): their layer groups, a slice over
them as layer-wise lr decay, weights from a local folder only, and a short sweep on the
generated token task. Every model here is a tiny BERT with random weights built from a config."""

from __future__ import annotations

import math

import pytest
from helpers.processes import finished_sweep

from sweeper.config import ConfigError
from sweeper.zoo.groups import split_groups

pytestmark = pytest.mark.extras("transformers")

TINY = {
    "model_type": "bert", "vocab_size": 64, "max_position_embeddings": 16, "hidden_size": 16,
    "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32, "pad_token_id": 0,
}  # fmt: skip


def tiny(num_classes: int = 2, layers_per_group: int = 1):
    from sweeper.zoo.transformers import sequence_classifier

    return sequence_classifier(num_classes, config=TINY, layers_per_group=layers_per_group)


def under(model, *prefixes: str) -> list[str]:
    """The names of the model's parameters under any of the prefixes, in model order."""
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


@pytest.mark.parametrize(
    ("layers_per_group", "layer_blocks"),
    [(1, [[0], [1], [2]]), (2, [[0, 1], [2]]), (3, [[0, 1, 2]])],
)
def test_groups_are_the_embeddings_blocks_of_layers_and_the_head(layers_per_group, layer_blocks):
    model = tiny(layers_per_group=layers_per_group)
    groups = [[name for name, _ in group] for group in split_groups(model, "sweeper.zoo.transformers.layer_groups")]
    layers = [under(model, *(f"net.bert.encoder.layer.{i}." for i in block)) for block in layer_blocks]
    expected = [under(model, "net.bert.embeddings."), *layers, under(model, "net.bert.pooler.", "net.classifier.")]
    assert groups == expected and all(expected)


def test_a_geometric_slice_over_the_groups_is_layer_wise_lr_decay(trial_config):
    from sweeper.training.trainer import prepare

    low, high = 1e-5, 1e-3
    cfg = trial_config("model=transformer_tiny", "data=tokens", f"lr=slice({low},{high})", "train.device=cpu")
    trial = prepare(cfg)
    n = len(trial.groups)
    assert n == 4  # embeddings, two layers, head
    decay = (low / high) ** (1 / (n - 1))  # the LLRD factor: each group's lr over the one above
    expected = [high * decay ** (n - 1 - i) for i in range(n)]  # the head at `high`, embeddings at `low`
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(trial.peaks, expected))
    lr_of = {id(p): g["lr"] for g in trial.optimizer.param_groups for p in g["params"]}
    for group, lr in zip(trial.groups, expected):
        assert all(math.isclose(lr_of[id(p)], lr, rel_tol=1e-12) for _, p in group)


def test_weights_come_from_a_local_folder_with_a_fresh_head(tmp_path):
    import torch

    from sweeper.zoo.transformers import sequence_classifier

    source = tiny(num_classes=5)
    source.net.save_pretrained(tmp_path / "checkpoint")
    loaded = sequence_classifier(3, path=str(tmp_path / "checkpoint"))
    for name, param in loaded.net.bert.named_parameters():
        assert torch.equal(param, dict(source.net.bert.named_parameters())[name]), name
    assert loaded.net.classifier.out_features == 3
    assert loaded(torch.tensor([[5, 1, 9, 0]])).shape == (1, 3)


def test_a_model_that_is_not_on_disk_is_a_config_error_not_a_download(tmp_path, monkeypatch):
    from sweeper.zoo.transformers import sequence_classifier

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="model.net.path: 'bert-base-uncased' is neither a checkpoint folder"):
        sequence_classifier(2, path="bert-base-uncased")
    with pytest.raises(ConfigError, match="model.net.config.model_type: 'nope'"):
        sequence_classifier(2, config={"model_type": "nope"})
    with pytest.raises(ConfigError, match="either model.net.path"):
        sequence_classifier(2)


def test_padding_is_masked(tmp_path):
    import torch

    model = tiny().eval()
    ids = torch.tensor([[7, 1, 9, 0, 0, 0]])
    with torch.no_grad():
        padded = model(ids)
        other_padding_tokens = model.net(
            input_ids=torch.tensor([[7, 1, 9, 5, 5, 5]]), attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0]])
        ).logits
    assert torch.allclose(padded, other_padding_tokens, atol=1e-6)  # what the padding holds is not attended to


@pytest.mark.slow
def test_a_short_sweep_on_the_token_task(sweeper_cli, tmp_path):
    sweep = [
        "model=transformer_tiny", "data=tokens", "data.source.n_samples=128", "train.epochs=2",
        "train.batch_size=16", "sweep.workers=1", "sweep.cpu_threads=1", "pruner=none", "sampler.seed=0",
        "tracking=none", "sweep.live=false",
    ]  # fmt: skip
    finished_sweep(sweeper_cli, tmp_path, sweep, n_trials=3)
