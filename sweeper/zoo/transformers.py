"""Hugging Face `transformers` sequence classifiers (the `transformers` extra), split for
layer-wise learning rates.

    model=transformer model.net.path=/path/to/a/checkpoint     # or a model name in your HF cache
    model=transformer model.net.config='{model_type: bert, ...}'  # random weights from a config

`SequenceClassifier` wraps `AutoModelForSequenceClassification` so the trainer can call it on a
batch of token ids and get logits. Weights come only from a local folder or the user's Hugging
Face cache: nothing is downloaded (`local_files_only`, and HF_HUB_OFFLINE while loading). A
checkpoint trained for another number of labels gets a fresh head.

`layer_groups` splits it into the embeddings, the encoder's layers (`layers_per_group` to a
group) and the head (everything after the last layer: final norms, pooler, classifier). A
geometric slice over those n groups is layer-wise lr decay: slice(lo, hi) gives each group
(lo/hi)^(1/(n-1)) times the lr of the group above it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from sweeper.config import ConfigError, error_line

__all__ = ["SequenceClassifier", "layer_groups", "sequence_classifier"]


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier called on token ids: logits out.

    Inputs are token ids shaped [batch, length] in any dtype (a tensors file stores floats); a
    model whose config has a pad token attends to every position but the padding.
    """

    def __init__(self, net: nn.Module, layers_per_group: int = 1) -> None:
        super().__init__()
        self.net = net
        self.layers_per_group = layers_per_group
        self.pad_token_id = getattr(net.config, "pad_token_id", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        mask = None if self.pad_token_id is None else (ids != self.pad_token_id).long()
        return self.net(input_ids=ids, attention_mask=mask).logits


def sequence_classifier(
    num_classes: int,
    path: str | None = None,
    config: Mapping | None = None,
    layers_per_group: int = 1,
) -> SequenceClassifier:
    """A sequence classifier for `num_classes`: pre-trained weights from `path` (a local folder
    saved with save_pretrained, or a model name already in your Hugging Face cache), or random
    weights from `config` (transformers config settings with its `model_type`)."""
    transformers = _import_transformers()
    if (path is None) == (config is None):
        raise ConfigError(
            "model.net: give either model.net.path (a local checkpoint folder or a model in your "
            "Hugging Face cache) or model.net.config (settings with a model_type, random weights)."
        )
    if layers_per_group < 1 or isinstance(layers_per_group, bool):
        raise ConfigError(f"model.net.layers_per_group: {layers_per_group!r} must be a whole number from 1, e.g. 2.")
    auto = transformers.AutoModelForSequenceClassification
    if config is not None:
        settings = dict(config)
        model_type = settings.pop("model_type", None)
        if model_type not in transformers.CONFIG_MAPPING:
            raise ConfigError(
                f"model.net.config.model_type: {model_type!r} is not a transformers model type; "
                f"give one such as bert, roberta, distilbert or deberta-v2."
            )
        try:
            hf_config = transformers.AutoConfig.for_model(model_type, num_labels=num_classes, **settings)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model.net.config: {error_line(error)[:200]}; give settings that {model_type} takes.") from None
        return SequenceClassifier(auto.from_config(hf_config), layers_per_group)
    with _offline():
        try:
            net = auto.from_pretrained(
                str(Path(path).expanduser()) if Path(path).expanduser().exists() else path,  # or a cached name
                num_labels=num_classes,
                ignore_mismatched_sizes=True,  # another number of labels: a fresh head
                local_files_only=True,
            )
        except (OSError, ValueError) as error:
            if Path(path).expanduser().is_dir():  # a folder that is not a checkpoint: say what is wrong with it
                raise ConfigError(f"model.net.path: {path!r} cannot be loaded: {error_line(error)[:200]}") from None
            raise ConfigError(
                f"model.net.path: {path!r} is neither a checkpoint folder nor a model in your Hugging "
                f"Face cache; nothing is downloaded here: save the model with save_pretrained(folder) "
                f"and point model.net.path at the folder."
            ) from None
    return SequenceClassifier(net, layers_per_group)


def layer_groups(model: SequenceClassifier) -> list[list[nn.Parameter]]:
    """The embeddings, the layers (`model.layers_per_group` to a group, counted from the
    embeddings up: the top block may be shorter), then the head.

    The layers are the longest ModuleList in the model (BERT's encoder.layer, DistilBERT's
    transformer.layer, GPT-2's h, Llama's layers, ...). Every parameter before the first layer is
    the embeddings, every parameter after the last one the head; models with two stacks
    (encoder-decoder) are split over the longer one: give those your own splitter.
    """
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise ConfigError("model.groups: this transformer has no list of layers to split; give prefixes or your own splitter.")
    layers = max(stacks, key=len)
    inside = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    before, per_layer, after = [], [[] for _ in layers], []
    for param in model.parameters():
        if id(param) in inside:
            per_layer[inside[id(param)]].append(param)
        else:
            (after if any(per_layer) else before).append(param)
    size = model.layers_per_group
    blocks = [sum(per_layer[i : i + size], []) for i in range(0, len(per_layer), size)]
    return [group for group in (before, *blocks, after) if group]


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model=transformer needs transformers: pip install 'sweeper[transformers]'.") from None
    return transformers


@contextmanager
def _offline():
    """HF_HUB_OFFLINE=1 while loading, beside local_files_only (the guard that holds even when
    huggingface_hub read its settings before): nothing is fetched from the Hub."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
