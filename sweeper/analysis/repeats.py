"""What `sweeper confirm` (and its ablation) is asked to repeat: how many seeds, which factor.

Light on purpose: the command checks its arguments with these before it loads pandas, torch or
MLflow, so a mistake is said at once.
"""

from __future__ import annotations

from sweeper.config import ConfigError

__all__ = ["FACTORS", "seed_count"]

FACTORS = {"slice": "strategy", "shape": "shape"}  # what is ablated -> its column in the trials table


def seed_count(seeds: int) -> int:
    """`seeds` when it can show a spread (2 or more fresh seeds); else a ConfigError."""
    if seeds < 2:
        raise ConfigError(f"--seeds: {seeds} gives no spread; use at least 2 (5 or more tells noise better).")
    return seeds
