"""Learning-rate slices: one peak learning rate per layer group, exactly as fastai reads them.

A slice spreads learning rates across layer groups (space); a cycle shape moves them over time
(see `sweeper.schedules.shapes`). fastai's `Optimizer.set_hyper` and fastcore's `even_mults` define the
semantics reproduced here:

| lr given                         | peak lr of each of n groups                       |
|----------------------------------|---------------------------------------------------|
| a float x                        | [x] * n                                           |
| slice(hi), slice(0, hi)          | [hi / 10] * (n - 1) + [hi]                        |
| slice(lo, hi)                    | even_mults(lo, hi, n), geometric; [hi] when n == 1 |
| a list of n values               | as given                                          |

Every form a user types is accepted: a float, a list, a Python `slice`, the strings
"slice(1e-3)", "slice(None, 1e-3)" and "slice(1e-5,1e-3)", and a YAML mapping ({low: 1e-5,
high: 1e-3}, {high: 1e-3}, optionally with a `strategy` and `values`). `SliceSpec.overrides()`
writes a spec back as the `lr` config group's Hydra overrides, which is how `lr=slice(1e-5,1e-3)`
on a command line reaches a config (see `sweeper.config`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "STRATEGIES",
    "SliceError",
    "SliceSpec",
    "even_mults",
    "parse_lr",
    "peak_lrs",
]

# The slice strategies a sweep chooses among, by name.
#   single:    one lr for every group (a float)
#   fastai:    slice(hi): hi/10 below the head, hi for the head
#   geometric: slice(lo, hi): geometric spacing from lo (first group) to hi (head)
#   explicit:  a list with one lr per group
STRATEGIES = ("single", "fastai", "geometric", "explicit")

_SLICE_VS_SHAPE = (
    "A slice spreads learning rates across layer groups (space): slice(hi) or slice(lo, hi). "
    "How the rate moves over training time is the cycle shape: set it with shape=... and its "
    "settings (shape.pct_start, shape.div, ...), not with a third slice argument."
)


class SliceError(ValueError):
    """A learning-rate spec that cannot be read; the message names the value and the fix."""


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """fastcore's `even_mults`: n values from start to stop, evenly spaced on a log scale."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * (step**i) for i in range(n)]


@dataclass(frozen=True)
class SliceSpec:
    """A parsed learning-rate spec: a strategy and the numbers it needs."""

    strategy: str
    high: float | None = None
    low: float | None = None
    values: tuple[float, ...] | None = None

    def peaks(self, n_groups: int) -> list[float]:
        """The peak learning rate of each of `n_groups` groups (the head is the last)."""
        if n_groups < 1:
            raise SliceError(f"n_groups must be at least 1, but got {n_groups=}.")
        if self.strategy == "single":
            return [self.high] * n_groups
        if self.strategy == "fastai":
            return [self.high / 10] * (n_groups - 1) + [self.high]
        if self.strategy == "geometric":
            return even_mults(self.low, self.high, n_groups)
        if len(self.values) != n_groups:
            raise SliceError(
                f"lr: a list of {len(self.values)} learning rates was given for {n_groups} layer "
                f"groups; give exactly {n_groups} values (one per group, head last), or a "
                f"slice(lo, hi) to spread them."
            )
        return list(self.values)

    def describe(self) -> str:
        """The spec as a fastai user would type it."""
        if self.strategy == "single":
            return f"{self.high:g}"
        if self.strategy == "fastai":
            return f"slice({self.high:g})"
        if self.strategy == "geometric":
            return f"slice({self.low:g}, {self.high:g})"
        return "[" + ", ".join(f"{v:g}" for v in self.values) + "]"

    def overrides(self) -> list[str]:
        """The spec as Hydra overrides of the `lr` config group, e.g. for slice(1e-5, 1e-3):
        ["lr=geometric", "lr.low=1e-05", "lr.high=0.001"] (repr: floats read back exactly)."""
        if self.strategy == "explicit":
            return ["lr=explicit", f"lr.values=[{','.join(map(repr, self.values))}]"]
        low = [f"lr.low={self.low!r}"] if self.strategy == "geometric" else []
        return [f"lr={self.strategy}", *low, f"lr.high={self.high!r}"]


def peak_lrs(lr: object, n_groups: int) -> list[float]:
    """The peak lr of each of `n_groups` layer groups for any accepted lr form."""
    return parse_lr(lr).peaks(n_groups)


def parse_lr(lr: object) -> SliceSpec:
    """Read any accepted learning-rate form into a validated `SliceSpec`."""
    if isinstance(lr, SliceSpec):
        return lr
    if isinstance(lr, bool):
        raise SliceError(f"lr: {lr!r} is not a learning rate; give a positive number such as 1e-3.")
    if isinstance(lr, (int, float)):
        return SliceSpec("single", high=_positive("lr", lr))
    if isinstance(lr, slice):
        return _from_slice(lr.start, lr.stop, lr.step)
    if isinstance(lr, str):
        return _from_string(lr)
    if isinstance(lr, Mapping):
        return _from_mapping(lr)
    if isinstance(lr, Sequence):
        return _from_values(lr)
    raise SliceError(
        f"lr: {lr!r} ({type(lr).__name__}) is not a learning rate; give a float, a list of one lr "
        f"per group, slice(hi), slice(lo, hi), or a mapping {{low: ..., high: ...}}."
    )


def _from_slice(start: object, stop: object, step: object = None) -> SliceSpec:
    if step is not None:
        raise SliceError(
            f"lr: slice({start}, {stop}, {step}) has three arguments; fastai ignores a slice's step, "
            f"and sweeper refuses it rather than guess what it meant. {_SLICE_VS_SHAPE}"
        )
    if stop is None:
        raise SliceError("lr: a slice needs its high end: slice(hi) or slice(lo, hi).")
    high = _positive("lr.high", stop)
    # fastai treats a falsy start (None or 0) as slice(hi).
    if start is None or start == 0:
        return SliceSpec("fastai", high=high)
    low = _positive("lr.low", start)
    if low > high:
        raise SliceError(
            f"lr: slice({low:g}, {high:g}) has low > high; the low end is the first layer group's "
            f"lr and the high end the head's: write slice({high:g}, {low:g})."
        )
    return SliceSpec("geometric", high=high, low=low)


_SLICE_CALL = re.compile(r"^\s*slice\s*\((?P<args>[^()]*)\)\s*$")


def _from_string(text: str) -> SliceSpec:
    match = _SLICE_CALL.match(text)
    if match:
        args = [a.strip() for a in match.group("args").split(",")]
        if args and args[-1] == "":  # a trailing comma, as in slice(1e-3,)
            args.pop()
        if not 1 <= len(args) <= 3:
            raise SliceError(f"lr: {text!r} must be slice(hi) or slice(lo, hi).")
        numbers = [None if a == "None" else _number("lr", a, text) for a in args]  # slice(None, hi)
        if len(numbers) == 1:
            return _from_slice(None, numbers[0])
        return _from_slice(*numbers)
    if text.strip().startswith("["):
        inner = text.strip().removeprefix("[").removesuffix("]")
        return _from_values([_number("lr", a, text) for a in inner.split(",") if a.strip()])
    return SliceSpec("single", high=_positive("lr", _number("lr", text, text)))


def _from_mapping(spec: Mapping) -> SliceSpec:
    known = {"strategy", "low", "high", "values"}
    unknown = set(spec) - known
    if unknown:
        raise SliceError(f"lr: unknown key(s) {sorted(unknown)} in {dict(spec)}; an lr mapping takes {sorted(known)}.")
    strategy = spec.get("strategy")
    low, high, values = spec.get("low"), spec.get("high"), spec.get("values")
    if strategy is None:
        if values is not None:
            return _from_values(values)
        return _from_slice(low, high)
    if strategy not in STRATEGIES:
        raise SliceError(f"lr.strategy: {strategy!r} is not a slice strategy; choose one of {list(STRATEGIES)}.")
    if strategy == "explicit":
        if values is None:
            raise SliceError("lr.values: the explicit strategy needs a list with one lr per group.")
        return _from_values(values)
    if high is None:
        raise SliceError(f"lr.high: the {strategy} strategy needs a high (peak) learning rate.")
    if strategy == "single":
        return SliceSpec("single", high=_positive("lr.high", high))
    if strategy == "fastai":
        return SliceSpec("fastai", high=_positive("lr.high", high))
    if low is None:
        raise SliceError("lr.low: the geometric strategy needs a low learning rate (first group).")
    return _from_slice(low, high)


def _from_values(values: Sequence) -> SliceSpec:
    if len(values) == 0:
        raise SliceError("lr: an empty list has no learning rates; give one lr per layer group.")
    return SliceSpec("explicit", values=tuple(_positive(f"lr[{i}]", v) for i, v in enumerate(values)))


def _number(setting: str, text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SliceError(
            f"{setting}: {whole!r} is not a learning rate; write a number (1e-3), slice(1e-3), "
            f"slice(1e-5, 1e-3) or a list [1e-5, 1e-4, 1e-3]."
        ) from None


def _positive(setting: str, value: object) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SliceError(f"{setting}: {value!r} is not a number; give a positive learning rate.") from None
    if not math.isfinite(number) or number <= 0:
        raise SliceError(f"{setting}: {value!r} is not a usable learning rate; give a positive, finite number such as 1e-3.")
    return number
