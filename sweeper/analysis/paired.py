"""Paired comparisons over seeds, corrected for how many are made at once.

Two configs trained on the same seed share their initial weights and data order (common random
numbers), so their difference on that seed is theirs, not the seed's luck: each comparison is
the mean of the per-seed differences, with a t interval and the paired t-test's p-value.
Several comparisons are judged together: p-values are Holm-adjusted (a difference is called
real when its adjusted p < ALPHA and its interval excludes 0), and intervals are simultaneous (Bonferroni: each at
1 - ALPHA / m), so a reader may trust all of them at once, not one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = ["ALPHA", "Paired", "holm", "paired", "seeds_needed", "with_family"]

ALPHA = 0.05
POWER = 0.8  # what "the seeds that would tell" aims at


@dataclass(frozen=True)
class Paired:
    """first vs second over n shared seeds; `mean` > 0: first is better (in the objective's direction)."""

    first: str
    second: str
    where: str  # what was held equal, in words
    diffs: tuple[float, ...]
    mean: float
    sd: float
    p: float
    p_holm: float = math.nan
    low: float = math.nan  # simultaneous interval of the mean difference
    high: float = math.nan

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def real(self) -> bool:
        """Holm's test rejects no difference, and the simultaneous interval, which is at least as
        wide (Bonferroni's), excludes 0 too: what is called real is what every shown figure says."""
        return self.p_holm < ALPHA and (self.low > 0 or self.high < 0)

    def flipped(self) -> Paired:
        """second vs first: the same comparison from the other side."""
        return replace(
            self, first=self.second, second=self.first, diffs=tuple(-d for d in self.diffs), mean=-self.mean, low=-self.high, high=-self.low
        )

    def interval(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}g} [{self.low:+.{digits}g}, {self.high:+.{digits}g}]"


def paired(first: str, second: str, where: str, a: Sequence[float], b: Sequence[float], maximize: bool) -> Paired:
    """first vs second from values on the same seeds (NaN: a run that did not finish; that seed is left out)."""
    from scipy import stats

    sign = 1.0 if maximize else -1.0
    diffs = tuple(sign * (x - y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y)))
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    if n < 2:
        p = math.nan
    elif sd == 0:  # the same difference on every seed: no noise to test against
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return Paired(first, second, where, diffs, mean, sd, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (NaN stays NaN and does not count)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def with_family(comparisons: Sequence[Paired]) -> list[Paired]:
    """The comparisons judged together: Holm-adjusted p-values and simultaneous intervals."""
    from scipy import stats

    m = max(1, sum(not math.isnan(c.p) for c in comparisons))
    adjusted = holm([c.p for c in comparisons])
    judged = []
    for comparison, p_holm in zip(comparisons, adjusted):
        low = high = math.nan
        if comparison.n > 1:
            half = stats.t.ppf(1 - ALPHA / (2 * m), comparison.n - 1) * comparison.sd / math.sqrt(comparison.n)
            low, high = comparison.mean - half, comparison.mean + half
        judged.append(replace(comparison, p_holm=p_holm, low=low, high=high))
    return judged


def seeds_needed(comparison: Paired, family: int) -> int | None:
    """Seeds at which a difference as large as the one seen would be called real (about POWER of
    the time, at the family's corrected level); None when no difference was seen at all."""
    from scipy import stats

    if comparison.n < 2 or not comparison.mean or math.isnan(comparison.sd):
        return None
    if comparison.sd == 0:
        return comparison.n
    z = stats.norm.ppf(1 - ALPHA / (2 * max(1, family))) + stats.norm.ppf(POWER)
    return max(comparison.n + 1, math.ceil((z * comparison.sd / comparison.mean) ** 2))
