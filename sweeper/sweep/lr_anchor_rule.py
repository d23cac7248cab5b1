"""The rule that turns an lr_find curve into the head lr's search range (`search.lr.high=auto`).

    found = anchored_range(lrs, losses, {"valley": ..., "steep": ...}, num_it, AnchorRule())
    found.range      # (low, high): the interval the sweep samples, log-uniform, high exclusive
    found.reason     # why the curve gave nothing usable (then range is None)

The rule, and why:
- fastai offers two lrs as good starts on a range-test curve: `valley` (about halfway down the
  longest descent) and `steep` (where the loss falls fastest). Which one is better differs from
  model to model and, on the same curve, either can lie above the other (on the digits MLP steep
  lies above valley). The range spans both: [min(valley, steep), max(valley, steep)].
- It is widened about its centre (in log lr) to at least `decades` decades, so the sampler has
  room on both sides, and narrowed about the valley (fastai's default) to at most `max_decades`
  when the two lie far apart on a noisy curve.
- Its top is clipped at the lr of the lowest loss (`clip=true`): past that point the loss rises
  (Leslie Smith's range test puts the largest useful lr there), so a peak above it diverges.
  A one-cycle warm-up tolerates peaks somewhat above a constant-lr test's best, which is why the
  clip is at the minimum itself and not at fastai's `minimum` suggestion (a tenth of it).

A curve gives nothing usable, and the sweep falls back to the configured range (saying why in
one line), when it has fewer than `min_points` points in fastai's window (the test diverged
too soon), when its loss never falls below its first point in that window but climbs (divergence at once),
when it falls by less than `min_drop` of its starting value (flat: no valley to anchor on), or
when the clip leaves no room (the lowest loss lies below the range).

Pure: plain floats in, a range out (no torch); fastai's suggestions are computed by lr_find.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sweeper.config import ConfigError
from sweeper.config.rules import is_number

__all__ = ["AnchorRule", "Anchored", "anchored_range", "rule_from"]

SKIP_END = 5  # fastai's suggestions ignore the last five points (the end is noise)


@dataclass(frozen=True)
class AnchorRule:
    """The settings of the rule (`search.lr.anchor.*`), each with its reason in the module notes."""

    decades: float = 1.0  # the narrowest range, in decades of lr
    max_decades: float = 2.0  # the widest (the default fixed range spans two decades)
    clip: bool = True  # no higher than the lr of the lowest loss
    min_points: int = 10  # fewer points in fastai's window: too few to judge
    min_drop: float = 0.05  # the loss must fall by this fraction of its start: else flat
    # lr_find's own settings (fastai's defaults)
    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_it: int = 100

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in asdict(self).items())


@dataclass(frozen=True)
class Anchored:
    range: tuple[float, float] | None  # (low, high); None: nothing usable
    reason: str = ""  # why nothing is usable


def anchored_range(
    lrs: Sequence[float], losses: Sequence[float], suggestions: Mapping[str, float], num_it: int, rule: AnchorRule
) -> Anchored:
    """The head lr's range from one lr_find curve (see the module notes)."""
    window = [(lr, loss) for lr, loss in zip(lrs[num_it // 10 : -SKIP_END], losses[num_it // 10 : -SKIP_END])]
    cut = next((i for i, (_, loss) in enumerate(window) if math.isnan(loss)), len(window))
    window = window[:cut]  # as fastai's suggestions: up to the first NaN
    if len(window) < rule.min_points or "valley" not in suggestions or "steep" not in suggestions:
        return Anchored(None, f"too few points ({len(window)}) before the loss diverged (lr_find needs {rule.min_points})")
    start = window[0][1]
    best_lr, best = min(window, key=lambda point: point[1])
    drop = (start - best) / abs(start) if start else math.inf
    if drop <= 0 and max(loss for _, loss in window) > start + rule.min_drop * abs(start):
        return Anchored(None, f"the loss never falls (it diverges at once from lr {window[0][0]:.2e})")
    if drop < rule.min_drop:
        return Anchored(None, f"the curve is flat (the loss falls by {drop:.1%}, less than min_drop={rule.min_drop:g})")
    valley, steep = float(suggestions["valley"]), float(suggestions["steep"])
    low, high = _widened(min(valley, steep), max(valley, steep), valley, rule)
    if rule.clip:
        high = min(high, best_lr)
    if not low < high:
        return Anchored(None, f"the lowest loss (lr {best_lr:.2e}) lies below the range [{low:.2e}, {high:.2e}) clipped at it")
    return Anchored((low, high))


def _widened(low: float, high: float, valley: float, rule: AnchorRule) -> tuple[float, float]:
    """[low, high] at least `decades` wide about its log centre, at most `max_decades` about the valley."""
    width = math.log10(high / low)
    if width < rule.decades:
        centre = math.sqrt(low * high)
        return centre * 10 ** (-rule.decades / 2), centre * 10 ** (rule.decades / 2)
    if width > rule.max_decades:
        return valley * 10 ** (-rule.max_decades / 2), valley * 10 ** (rule.max_decades / 2)
    return low, high


def rule_from(node: Any) -> AnchorRule:
    """The rule from `search.lr.anchor` (a mapping, or null for the defaults); one line per mistake."""
    node = dict(node or {})
    known = set(AnchorRule.__dataclass_fields__)
    unknown = set(node) - known
    if unknown:
        raise ConfigError(f"search.lr.anchor: unknown key(s) {sorted(unknown)}; it takes {sorted(known)}.")
    rule = AnchorRule(**node)
    numbers = {k: v for k, v in asdict(rule).items() if k != "clip"}
    bad = [k for k, v in numbers.items() if not is_number(v) or isinstance(v, bool) or not v > 0]
    if bad:
        raise ConfigError(f"search.lr.anchor.{bad[0]}: {numbers[bad[0]]!r} must be a positive number.")
    if not isinstance(rule.clip, bool):
        raise ConfigError(f"search.lr.anchor.clip: {rule.clip!r} must be true or false.")
    if rule.decades > rule.max_decades:
        raise ConfigError(f"search.lr.anchor.decades: {rule.decades} exceeds max_decades={rule.max_decades}; lower it.")
    if not rule.start_lr < rule.end_lr:
        raise ConfigError(f"search.lr.anchor.start_lr: {rule.start_lr:g} must lie below end_lr={rule.end_lr:g}.")
    if not isinstance(rule.num_it, int) or not isinstance(rule.min_points, int):
        raise ConfigError("search.lr.anchor: num_it and min_points are counts of batches; give whole numbers.")
    if rule.min_drop >= 1:
        raise ConfigError(f"search.lr.anchor.min_drop: {rule.min_drop} must be a fraction below 1, e.g. 0.05.")
    return rule
