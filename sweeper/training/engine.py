"""The default `sweep.trainer`: one trial at a time (`trainer.train`), or several trials of one
architecture as one fused model (`fused.train_many`, with `fused.why_not_fused`). A module of its own
so that neither of the two imports the other's door: fused builds on the trainer, not the reverse."""

from __future__ import annotations

from sweeper.training.fused import train_many, why_not_fused
from sweeper.training.trainer import available_metrics, prepare, resolve_device, train

__all__ = ["available_metrics", "prepare", "resolve_device", "train", "train_many", "why_not_fused"]
