"""Reproducibility: one seed for every random number a trial draws, and deterministic kernels.

Two CPU runs of one config give bitwise-equal curves; on CUDA, `deterministic` picks
deterministic kernels where PyTorch has them (and warns, rather than fails, where it has none).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# torch.use_deterministic_algorithms imports torch._inductor.config (and with it sympy and
# dynamo: ~1 s of a core) the first time a process seeds a trial. Imported with this module
# instead, it is loaded once by the warm server a sweep's workers are forked from, not by each
# worker in its first trial (four at once on the README's first sweep).
import torch._inductor.config  # noqa: F401

__all__ = ["seed_everything", "use_deterministic_algorithms"]

# cuBLAS is deterministic only with a fixed workspace; it reads this when it first starts.
CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and every GPU); return a generator for the data order.

    The data order has a generator of its own so that drawing other random numbers (dropout,
    a model's initialisation) never shifts which batches come next.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_deterministic_algorithms(enabled: bool) -> None:
    """Deterministic kernels on (bitwise-equal reruns) or off (PyTorch's fastest choice)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    # cuDNN's benchmark mode picks convolution kernels by timing them: fast, but not repeatable.
    torch.backends.cudnn.benchmark = not enabled
    # warn_only: an op with no deterministic kernel (some CUDA backward passes) warns, not fails.
    torch.use_deterministic_algorithms(enabled, warn_only=True)
