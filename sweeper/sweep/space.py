"""A sweep's search space: what Optuna samples, read from the `search` config node.

Two layers, both written in the sweep grammar Hydra users know from hydra-optuna-sweeper
(`interval(a, b)`, `range(a, b[, step])`, `choice(...)`, `tag(log, ...)`) and parsed by Hydra's
own override parser:

- `search.params`: any config key, e.g. `optimizer.weight_decay: tag(log, interval(1e-4, 1e-1))`;
- slice-aware settings: the slice strategies to compare (`search.lr.strategies`), the head's
  peak lr (`search.lr.high`, log), the first group's lr as a ratio of it (`search.lr.low_ratio`,
  log, sampled only for the geometric strategy), and the cycle shapes to compare
  (`search.shape.<name>`), each with its own settings, sampled only when that shape is drawn.

A trial's config is the base config recomposed with the sampled values as Hydra overrides
(`lr=geometric lr.high=0.003 lr.low=3e-05 shape=torch_one_cycle shape.pct_start=0.21`), so the
override list reproduces the trial exactly.

Ends. In Hydra's grammar the end of `interval(a, b)` and `range(a, b)` is exclusive; Optuna's
`high` is inclusive. We keep Hydra's meaning, so a space means the same here as in Hydra:
- `interval(a, b)` (floats) -> FloatDistribution(a, nextafter(b, a)): b itself is never drawn;
- `int(interval(a, b))` -> IntDistribution(a, b - 1);
- `range(a, b, step)` -> exactly the values Hydra lists (a, a + step, ... short of b), i.e.
  Int/FloatDistribution(first, last, step).
`describe()` prints the first two half-open, `[a, b)`, and a range by its first and last values,
`[a, last]`. hydra-optuna-sweeper passes both ends to Optuna as they are (inclusive); its older
mapping form (`{type: float, low: 0, high: 1}`) is refused with the grammar that draws the same
values (tests/test_hydra_optuna_sweeper_cases.py holds its cases, with the differences).

`shuffle(...)` only reorders what Hydra's basic sweeper runs; to a sampler order means nothing, so
it is a choice among its values, listed in their written order (every worker must build the same
distribution), as hydra-optuna-sweeper reads it too.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hydra.core.override_parser.types import Override, Transformer
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweeper.config import ConfigError, build_shape, compose_config, hydra_overrides, lr_given, parse_override
from sweeper.config.rules import is_number
from sweeper.schedules.shapes import ShapeError
from sweeper.schedules.slices import STRATEGIES, SliceError, parse_lr
from sweeper.sweep.lr_anchor_rule import AnchorRule, rule_from

__all__ = [
    "Dimension",
    "SearchSpace",
    "build_space",
    "parse_dimension",
    "split_overrides",
    "validate_space",
]

# Strategies a sweep can sample: "explicit" needs one lr per layer group, which has no
# two-number form to search over; compare it by running `lr=explicit` without sampling lr.
SAMPLED_STRATEGIES = tuple(s for s in STRATEGIES if s != "explicit")
GRAMMAR_HINT = "write interval(a, b), range(a, b[, step]), choice(x, y, ...) or tag(log, interval(a, b))"


@dataclass(frozen=True)
class Dimension:
    """One Optuna parameter and the config key whose override it sets."""

    setting: str  # where it is written, e.g. search.lr.high
    name: str  # the Optuna parameter name
    key: str  # the config key it overrides
    distribution: BaseDistribution
    texts: tuple[str, ...] | None = None  # categorical: each choice as override text
    end: float | None = None  # interval: its exclusive end, as written

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension through the public suggest API of `trial`."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return trial.suggest_categorical(self.name, dist.choices)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(self.name, dist.low, dist.high, step=dist.step, log=dist.log)

    def override(self, value: Any) -> str:
        return f"{self.key}={self.text(value)}"

    def text(self, value: Any) -> str:
        if self.texts is not None:
            return self.texts[self.distribution.choices.index(value)]
        return _number_text(value)

    def describe(self) -> str:
        """The values drawn, as a Hydra user reads them: [a, b) where the end is exclusive."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return f"choice({', '.join(self.texts or map(str, dist.choices))})"
        kind = f"{'log ' if dist.log else ''}{'int ' if isinstance(dist, IntDistribution) else ''}"
        if self.end is not None:
            return f"{kind}[{dist.low:g}, {self.end:g})"
        step = f", step {dist.step:g}" if dist.step is not None else ""
        return f"{kind}[{dist.low:g}, {dist.high:g}]{step}"

    def edges(self) -> tuple[Any, ...]:
        """The values that bound this dimension: every choice, or the two ends."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return tuple(dist.choices)
        return (dist.low, dist.high)

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler; continuous dimensions have no grid."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        if dist.step is None:
            raise ConfigError(
                f"{self.setting}: sampler=grid needs a finite set of values, but this one is "
                f"continuous ({self.describe()}); write range(a, b, step) or choice(...) for it, "
                f"or pick another sampler."
            )
        count = int(round((dist.high - dist.low) / dist.step)) + 1
        return [dist.low + i * dist.step for i in range(count)]


@dataclass(frozen=True)
class SearchSpace:
    """Everything a sweep samples; `suggest(trial)` turns one draw into Hydra overrides."""

    params: tuple[Dimension, ...] = ()
    fixed: tuple[str, ...] = ()  # plain overrides from search.params
    strategy: Dimension | None = None  # None: keep the config's own lr strategy
    high: Dimension | None = None
    low_ratio: Dimension | None = None
    base_strategy: str = "geometric"
    shape: Dimension | None = None  # None: keep the config's own shape
    shape_settings: Mapping[str, tuple[Dimension, ...]] = field(default_factory=dict)
    fixed_lr: str | None = None  # the config's slice, when nothing of it is sampled
    anchor: AnchorRule | None = None  # search.lr.high=auto: lr_find sets each strategy's range
    high_by_strategy: Mapping[str, Dimension] = field(default_factory=dict)  # those ranges, once set

    def strategies(self) -> tuple[str, ...]:
        """The slice strategies the sweep's trials may train with."""
        return tuple(self.strategy.distribution.choices) if self.strategy else (self.base_strategy,)

    def with_high_ranges(self, ranges: Mapping[str, tuple[float, float] | None]) -> SearchSpace:
        """The space with each strategy's head lr drawn from its own range (`lr.high.<strategy>`,
        log-uniform, the end exclusive as in interval(a, b)); None keeps the configured one."""
        own = {}
        for strategy in self.strategies():
            found = ranges.get(strategy)
            name, setting = f"lr.high.{strategy}", f"search.lr.high ({strategy})"
            if found is None:
                own[strategy] = replace(self.high, name=name, setting=setting)
            else:
                low, high = found
                own[strategy] = Dimension(setting, name, "lr.high", _interval(setting, low, high, log=True), end=high)
        return replace(self, high_by_strategy=own)

    def dimensions(self) -> list[Dimension]:
        highs = list(self.high_by_strategy.values()) or [self.high]
        lr = [d for d in (self.strategy, *highs, self.low_ratio) if d is not None]
        shapes = [self.shape] if self.shape else []
        settings = [d for dims in self.shape_settings.values() for d in dims]
        return [*self.params, *lr, *shapes, *settings]

    def is_empty(self) -> bool:
        """Nothing to draw: every dimension has a single value."""
        return all(d.distribution.single() for d in self.dimensions())

    def keys(self) -> set[str]:
        """Every config key the sampled overrides may set (to catch clashes with the base)."""
        return {o.split("=", 1)[0] for o in self.fixed} | {d.key for d in self.dimensions()} | ({"lr.low"} if self.low_ratio else set())

    def suggest(self, trial: Any) -> list[str]:
        """Draw one point through `trial`; return it as Hydra overrides of the base config."""
        overrides = list(self.fixed)
        overrides += [d.override(d.suggest(trial)) for d in self.params]
        return overrides + self._lr_overrides(trial) + self._shape_overrides(trial)

    def _lr_overrides(self, trial: Any) -> list[str]:
        overrides = []
        strategy = self.base_strategy
        if self.strategy is not None:
            strategy = self.strategy.suggest(trial)
            overrides.append(self.strategy.override(strategy))
        high_dimension = self.high_by_strategy.get(strategy, self.high)
        if high_dimension is not None:
            high = high_dimension.suggest(trial)
            overrides.append(high_dimension.override(high))
            # The ratio keeps low <= high by construction and is sampled only where it is used.
            if strategy == "geometric" and self.low_ratio is not None:
                overrides.append(f"lr.low={_number_text(high * self.low_ratio.suggest(trial))}")
        return overrides

    def _shape_overrides(self, trial: Any) -> list[str]:
        if self.shape is None:
            return []
        name = self.shape.suggest(trial)
        settings = self.shape_settings.get(name, ())
        return [self.shape.override(name), *(d.override(d.suggest(trial)) for d in settings)]

    def cover(self) -> list[dict[str, Any]]:
        """First trials that draw every strategy and every shape at least once (partial params).

        Pairs are laid out round-robin so `max(#strategies, #shapes)` trials cover both lists; the
        sampler draws everything else in them.
        """
        lists = [d for d in (self.strategy, self.shape) if d is not None and not d.distribution.single()]
        if not lists:
            return []
        count = max(len(d.distribution.choices) for d in lists)
        return [{d.name: d.distribution.choices[i % len(d.distribution.choices)] for d in lists} for i in range(count)]

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every dimension's values."""
        return {d.name: d.grid() for d in self.dimensions()}

    def edges(self) -> Iterator[tuple[str, list[str]]]:
        """(setting, overrides) at the edges of the space: what `validate_space` composes."""
        for strategy in self.strategies():
            for end in (0, -1):
                yield "search.lr", self._lr_overrides(_EdgeTrial(end, {"strategy": strategy}))
        for name in self.shape.distribution.choices if self.shape else ():
            for end in (0, -1):
                yield f"search.shape.{name}", self._shape_overrides(_EdgeTrial(end, {"shape": name}))
        for dim in self.params:
            for value in dim.edges():
                yield dim.setting, [*self.fixed, dim.override(value)]

    def describe(self) -> list[str]:
        """One line per dimension: its Optuna name and the values it takes (for logs and the study)."""
        fixed = [f"lr: fixed at {self.fixed_lr}; search.lr is not sampled"] if self.fixed_lr else []
        return [*fixed, *(f"{d.name}: {self._describe(d)}" for d in self.dimensions())]

    def _describe(self, dimension: Dimension) -> str:
        if dimension is self.high and self.anchor is not None:  # lr_find has not set the ranges yet
            return f"auto (lr_find per strategy: {self.anchor.describe()}; fallback {dimension.describe()})"
        return dimension.describe()


class _EdgeTrial:
    """Stands in for an Optuna trial: answers every draw with one end of its range."""

    def __init__(self, end: int, picks: Mapping[str, Any]) -> None:
        self.end = end
        self.picks = picks

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.picks.get(name, choices[self.end])

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return (low, high)[self.end]

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return (low, high)[self.end]


# --- the grammar ------------------------------------------------------------------------------


def parse_dimension(setting: str, name: str, key: str, value: Any) -> Dimension | str:
    """One `key: value` of the search config as a Dimension, or as a plain override if fixed."""
    _refuse_optuna_mapping(setting, value)
    if isinstance(value, (list, dict)) or OmegaConf.is_config(value):
        raise ConfigError(
            f"{setting}: {value!r} is a list or mapping; for a choice write choice(a, b, ...), for a fixed list quote it: '[1, 2]'."
        )
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    try:
        override = parse_override(f"{key}={text}")
    except ConfigError as error:
        raise ConfigError(f"{setting}: cannot read {text!r} ({error}); {GRAMMAR_HINT}.") from None
    if not override.is_sweep_override():
        return f"{key}={override.get_value_element_as_str()}"
    sweep = override.value()
    unknown = set(sweep.tags) - {"log"}
    if unknown:
        raise ConfigError(
            f"{setting}: tag(s) {sorted(unknown)} mean nothing here; only tag(log, ...) does (log-uniform sampling). Remove the others."
        )
    log = "log" in sweep.tags
    if override.is_interval_sweep():
        return Dimension(setting, name, key, _interval(setting, sweep.start, sweep.end, log), end=sweep.end)
    if getattr(sweep, "shuffle", False):  # a choice among its values, in written order (module notes)
        override = replace(override, _value=replace(sweep, shuffle=False))
        return Dimension(setting, name, key, *_choice(setting, override, log))
    if override.is_range_sweep():
        if log:
            raise ConfigError(
                f"{setting}: tag(log, range(...)) cannot be both stepped and log-uniform; write "
                f"tag(log, int(interval(a, b))) or tag(log, interval(a, b)) instead."
            )
        return Dimension(setting, name, key, _range(setting, override))
    return Dimension(setting, name, key, *_choice(setting, override, log))


def _interval(setting: str, start: float, end: float, log: bool) -> BaseDistribution:
    is_int = isinstance(start, int) and isinstance(end, int)
    kind = "int(interval" if is_int else "interval"
    # Hydra's end is exclusive: the largest value below it is Optuna's (inclusive) high.
    high = end - 1 if is_int else math.nextafter(end, -math.inf)
    if start > high:
        fix = f"swap them: interval({end}, {start})" if start > end else f"to fix the value write {start}"
        raise ConfigError(f"{setting}: {kind}({start}, {end}) is empty (its end is exclusive, as in Hydra); {fix}.")
    if log and start <= 0:
        raise ConfigError(
            f"{setting}: tag(log, {kind}({start}, {end})) needs a positive start; log-uniform sampling is for ranges like 1e-5 to 1e-1."
        )
    if is_int:
        return IntDistribution(start, high, log=log)
    return FloatDistribution(float(start), high, log=log)


def _range(setting: str, override: Override) -> BaseDistribution:
    sweep = override.value()
    written = f"range({sweep.start}, {sweep.stop}, {sweep.step})"
    if sweep.step == 0:
        raise ConfigError(f"{setting}: {written} has step 0; give a step such as 1 or 0.1.")
    values = sorted(override.sweep_iterator())  # exactly what Hydra lists, end excluded
    if not values:
        raise ConfigError(
            f"{setting}: {written} lists no values (its end is exclusive and the step must move "
            f"from start towards stop); e.g. range({sweep.stop}, {sweep.start}, {sweep.step}) or "
            f"range({sweep.start}, {sweep.stop}, {-sweep.step})."
        )
    step = abs(sweep.step)
    if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        return IntDistribution(values[0], values[-1], step=step)
    # Float steps: rebuild the last value from the count so Optuna's own grid check agrees.
    low = float(values[0])
    return FloatDistribution(low, low + step * (len(values) - 1), step=float(step))


def _choice(setting: str, override: Override, log: bool) -> tuple[BaseDistribution, tuple[str, ...]]:
    if log:
        raise ConfigError(f"{setting}: tag(log, choice(...)) has no meaning; drop the log tag.")
    # Optuna stores str/int/float/bool choices as they are; a list or mapping is kept as the
    # override text Hydra reads back into the same value.
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    texts = tuple(override.sweep_string_iterator())
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{setting}: choice({', '.join(texts)}) lists a value twice; list each once.")
    return CategoricalDistribution(choices), texts


def _number_text(value: Any) -> str:
    # repr round-trips floats exactly, and Hydra reads 1e-05 and 0.003 alike.
    return repr(float(value)) if isinstance(value, float) else str(value)


# hydra-optuna-sweeper's older search_space entries: {type: float, low: 0, high: 1, log: true}
_OPTUNA_TYPES = {"float", "int", "categorical"}
_OPTUNA_KEYS = {"type", "low", "high", "step", "log", "choices"}


def _is_optuna_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("type") in _OPTUNA_TYPES and set(value) <= _OPTUNA_KEYS


def _refuse_optuna_mapping(setting: str, value: Any) -> None:
    """The older hydra-optuna-sweeper form, refused with the grammar that draws the same values."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if not _is_optuna_mapping(value):
        return
    grammar, note = _grammar_of(value)
    raise ConfigError(
        f"{setting}: {value} is hydra-optuna-sweeper's older search_space form; write the sweep "
        f"grammar instead: {setting}='{grammar}' ({note})."
    )


def _grammar_of(spec: Mapping) -> tuple[str, str]:
    """(grammar, what to know about its end) for an older-form entry. Its `high` was inclusive,
    as Optuna's is; the grammar's ends are exclusive."""
    kind = spec["type"]
    if kind == "categorical":
        return f"choice({', '.join(map(str, spec.get('choices') or []))})", "the same choices"
    if spec.get("low") is None or spec.get("high") is None:
        return GRAMMAR_HINT.removeprefix("write "), f"a {kind} entry needs low and high"
    number = int if kind == "int" else float
    low, high, step = number(spec["low"]), number(spec["high"]), spec.get("step")
    if step is not None and not spec.get("log"):
        step = number(step)
        # The stop is exclusive: one step past high for ints; half a step for floats, since
        # Hydra sums float steps and a stop one step past could be listed too (0.1 * 11 < 1.1).
        past = step if kind == "int" else step / 2
        grammar = f"range({_number_text(low)}, {_number_text(round(high + past, 12))}, {_number_text(step)})"
        return grammar, f"the stop is exclusive, so a stop past {high} keeps {high} in, as before"
    if kind == "int":
        grammar = f"int(interval({low}, {high + 1}))"
        note = f"the end is exclusive, so {high + 1} keeps {high} in, as before"
    else:
        grammar = f"interval({_number_text(low)}, {_number_text(high)})"
        note = (
            f"the end is exclusive: {high} itself is never drawn, every value below it can be; "
            f"to include an end, list the values: range(a, b + step, step) or choice(...)"
        )
    return (f"tag(log, {grammar})" if spec.get("log") else grammar), note


# --- from config ------------------------------------------------------------------------------

_SEARCH_KEYS = {"lr", "shape", "params"}
_LR_KEYS = {"strategies", "high", "low_ratio", "anchor"}


def split_overrides(overrides: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Command-line overrides -> (plain overrides, sweep overrides keyed by config key).

    `optimizer.weight_decay='tag(log, interval(1e-4, 1e-1))'` on a sweep's command line adds
    that key to the search space, as `--multirun` would in Hydra. An lr given the fastai way
    (`lr=1e-3`, `lr='slice(1e-5,1e-3)'`) fixes the slice: it becomes the lr group's overrides
    and `search.lr=null`, so no trial samples a strategy or an lr (`describe()` says so).
    """
    overrides = list(overrides)
    fixed_lr = [text for text in overrides if lr_given(text)]
    plain, sweeps = [], {}
    for text in hydra_overrides(overrides):
        override = parse_override(text)
        key, value = override.get_key_element(), text.partition("=")[2]  # key keeps a + or ~ prefix
        if override.is_delete() or not override.is_sweep_override():
            _refuse_optuna_mapping(key, override.value())
            plain.append(text)
        elif override.key_or_group.startswith("search."):
            # A setting of the search node itself (search.lr.high=interval(...)): keep it as the
            # string the search config holds, quoted so Hydra does not read it as a sweep.
            plain.append(f"{key}='{_quoted(value)}'")
        else:
            sweeps[key] = value
    if fixed_lr:
        searched = [o for o in plain if o.lstrip("+~").startswith(("search.lr.", "search.lr="))]
        if searched:
            raise ConfigError(f"lr: {fixed_lr[0]} fixes the slice, so {' '.join(searched)} has nothing to sample; drop one of them.")
        plain.append("search.lr=null")
    return plain, sweeps


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def build_space(cfg: DictConfig, extra_params: Mapping[str, str] = ()) -> SearchSpace:
    """The search space of `cfg.search` plus sweep overrides from the command line."""
    search = OmegaConf.to_container(cfg.search, resolve=True) if "search" in cfg else None
    search = search or {}
    _check_keys("search", search, _SEARCH_KEYS)
    params, fixed = _params(search.get("params") or {}, dict(extra_params))
    lr = search.get("lr") or {}
    _check_keys("search.lr", lr, _LR_KEYS)
    base = parse_lr(OmegaConf.to_container(cfg.lr, resolve=True))
    strategy = _strategies(lr.get("strategies"))
    anchor, lr = _anchor_request(lr)
    high = _lr_range(lr, "high", key="lr.high")
    low_ratio = _lr_range(lr, "low_ratio", key="lr.low")  # lr.low = lr.high * low_ratio
    _check_lr(strategy, base.strategy, high, low_ratio)
    shape, settings = _shapes(search.get("shape"))
    fixed_lr = None if strategy or high else base.describe()
    space = SearchSpace(params, fixed, strategy, high, low_ratio, base.strategy, shape, settings, fixed_lr, anchor)
    _check_unique(space)
    _check_types(space, cfg)
    if space.is_empty():
        raise ConfigError(
            f"search: the space is empty (nothing to sample{f'; lr is fixed at {fixed_lr}' if fixed_lr else ''}); "
            f"pick a ready-made one (search=slices, search=shapes, search=slices_and_shapes) or add "
            f"values such as search.lr.high='tag(log, interval(1e-4, 1e-2))'."
        )
    return space


def _check_keys(setting: str, node: Any, known: set[str]) -> None:
    if not isinstance(node, Mapping):
        raise ConfigError(f"{setting}: {node!r} must be a mapping with keys among {sorted(known)}.")
    unknown = set(node) - known
    if unknown:
        raise ConfigError(
            f"{setting}: unknown key(s) {sorted(unknown)}; it takes {sorted(known)} (any other config key goes under search.params)."
        )


def _flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and not _is_optuna_mapping(value):  # that one is refused whole
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _params(node: Mapping, extra: dict[str, str]) -> tuple[tuple[Dimension, ...], tuple[str, ...]]:
    dims, fixed = [], []
    for key, value in {**_flatten(node), **extra}.items():
        if key in ("lr", "shape") or key.startswith(("lr.", "shape.", "search")):
            raise ConfigError(
                f"search.params.{key}: the slice and the shape are searched under search.lr and "
                f"search.shape (e.g. search.lr.high, search.shape.triangular.warmup_pct); move it there."
            )
        parsed = parse_dimension(f"search.params.{key}", key, key, value)
        (dims if isinstance(parsed, Dimension) else fixed).append(parsed)
    return tuple(dims), tuple(fixed)


def _strategies(value: Any) -> Dimension | None:
    if value is None:
        return None
    names = list(value) if isinstance(value, (list, tuple)) else [value]
    bad = [n for n in names if n not in SAMPLED_STRATEGIES]
    if bad or not names:
        raise ConfigError(
            f"search.lr.strategies: {names!r} must list slice strategies among "
            f"{list(SAMPLED_STRATEGIES)} (explicit has no range to search; run it with lr=explicit)."
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"search.lr.strategies: {names!r} lists a strategy twice; list each once.")
    # Named "strategy" so Optuna's plots and optuna-dashboard show it as what it is.
    return Dimension("search.lr.strategies", "strategy", "lr", CategoricalDistribution(names), tuple(names))


def _anchor_request(lr: Mapping) -> tuple[AnchorRule | None, Mapping]:
    """search.lr.high=auto: the anchor rule, and search.lr with the fallback range as its high."""
    if lr.get("low_ratio") == "auto":
        raise ConfigError(
            "search.lr.low_ratio: auto has no meaning: lr_find ramps the whole slice together, so it finds the "
            "head lr for a given slice, not the slice's own shape; give a range, e.g. 'tag(log, interval(1e-3, 0.5))'."
        )
    if lr.get("high") != "auto":  # the anchor's settings wait unused
        return None, lr
    anchor = dict(lr.get("anchor") or {})
    fallback = anchor.pop("fallback", None)
    if fallback is None:
        raise ConfigError(
            "search.lr.anchor.fallback: search.lr.high=auto needs the range to fall back on where lr_find gives "
            "nothing usable; set it, e.g. search.lr.anchor.fallback='tag(log, interval(3e-4, 3e-2))'."
        )
    return rule_from(anchor), {**lr, "high": fallback}


def _lr_range(node: Mapping, field_name: str, key: str) -> Dimension | None:
    if node.get(field_name) is None:
        return None
    setting = f"search.lr.{field_name}"
    parsed = parse_dimension(setting, f"lr.{field_name}", key, node[field_name])
    values = parsed.edges() if isinstance(parsed, Dimension) else ()
    if not values or not all(is_number(v) and v > 0 for v in values):
        raise ConfigError(
            f"{setting}: {node[field_name]!r} must draw positive learning rates, e.g. "
            f"tag(log, interval(1e-4, 1e-2)) or choice(1e-3, 3e-3); to fix one, set it in the lr "
            f"config instead."
        )
    return parsed


def _check_lr(strategy: Dimension | None, base: str, high: Dimension | None, ratio: Dimension | None) -> None:
    strategies = strategy.distribution.choices if strategy else (base,)
    if high is not None and "explicit" in strategies:
        raise ConfigError(
            "search.lr.high: the config's lr is explicit (one lr per group), which has no high to "
            "sample; set search.lr.strategies (e.g. [single, fastai, geometric]) or drop search.lr.high."
        )
    if ratio is not None and high is None:
        raise ConfigError(
            "search.lr.low_ratio: the low lr is sampled as a ratio of the high one, so "
            "search.lr.high must be sampled too, e.g. search.lr.high='tag(log, interval(1e-4, 1e-2))'."
        )
    if high is not None and "geometric" in strategies and ratio is None:
        raise ConfigError(
            "search.lr.low_ratio: the geometric strategy needs its low lr once the high one is "
            "sampled (a fixed lr.low could exceed it); add search.lr.low_ratio="
            "'tag(log, interval(1e-3, 0.5))' (lr.low = lr.high * ratio)."
        )
    if ratio is not None and max(ratio.edges()) > 1:
        raise ConfigError(
            f"search.lr.low_ratio: {ratio.describe()} reaches above 1, which would put "
            f"the first group above the head (low > high); keep it within (0, 1]."
        )


def _shapes(node: Any) -> tuple[Dimension | None, dict[str, tuple[Dimension, ...]]]:
    if node is None:
        return None, {}
    if not isinstance(node, Mapping) or not node:
        raise ConfigError(
            f"search.shape: {node!r} must map shape names to their settings to sample, e.g. "
            f"{{fastai_one_cycle: {{pct_start: 'interval(0.1, 0.5)'}}, constant: {{}}}}; null keeps "
            f"the config's shape."
        )
    settings = {}
    for name, shape_node in node.items():
        shape_node = shape_node or {}
        if not isinstance(shape_node, Mapping):
            raise ConfigError(
                f"search.shape.{name}: {shape_node!r} must map the shape's settings to values to "
                f"sample, e.g. {{pct_start: 'interval(0.1, 0.5)'}}, or be {{}}."
            )
        dims = []
        for key, value in _flatten(shape_node).items():
            setting = f"search.shape.{name}.{key}"
            parsed = parse_dimension(setting, f"{name}.{key}", f"shape.{key}", value)
            if not isinstance(parsed, Dimension):  # a fixed setting is a one-value choice
                text = parsed.split("=", 1)[1]
                parsed = Dimension(setting, f"{name}.{key}", f"shape.{key}", CategoricalDistribution([text]), (text,))
            dims.append(parsed)
        settings[str(name)] = tuple(dims)
    names = list(settings)
    return Dimension("search.shape", "shape", "shape", CategoricalDistribution(names), tuple(names)), settings


def _check_types(space: SearchSpace, cfg: DictConfig) -> None:
    """Choices that are not numbers for a key that holds a number would fail in every trial."""
    for dim in space.params:
        base = OmegaConf.select(cfg, dim.key.lstrip("+"), default=None, throw_on_missing=False)
        if not isinstance(dim.distribution, CategoricalDistribution) or not is_number(base):
            continue
        words = [t for t, c in zip(dim.texts, dim.distribution.choices) if not is_number(c)]
        if words:
            raise ConfigError(
                f"{dim.setting}: {dim.describe()} gives {', '.join(words)} for {dim.key}, which "
                f"holds a number ({base!r}); choose among numbers, e.g. choice({base!r}, ...)."
            )


def _check_unique(space: SearchSpace) -> None:
    seen: dict[str, str] = {}
    for dim in [*space.params, space.strategy, space.high, space.low_ratio, space.shape]:
        if dim is None:
            continue
        if dim.key in seen:
            raise ConfigError(f"search: {dim.key} is searched twice; keep one of its entries.")
        seen[dim.key] = dim.name


# --- validation by composition ----------------------------------------------------------------


def validate_space(
    space: SearchSpace,
    base_overrides: Sequence[str] = (),
    config_dirs: Iterable[str | os.PathLike] = (),
) -> None:
    """Compose a trial config at every edge of the space and build its slice and shape.

    Catches, before any study exists: clashes with the base overrides, unknown keys and shape
    names, and values a shape or slice rejects (e.g. pct_start reaching 1).
    """
    clashes = sorted({o.split("=", 1)[0].lstrip("+~") for o in base_overrides} & space.keys())
    if clashes:
        raise ConfigError(
            f"overrides: {clashes} are set on the command line and searched too; drop them from the "
            f"command line, or keep them fixed by removing them from the search (e.g. search=slices "
            f"keeps the shape, search=shapes keeps the slice)."
        )
    edges = list(space.edges())
    config_dirs = list(config_dirs)
    failed = None
    for overrides in _trials_at_the_edges(edges):
        try:
            _check_edge([*base_overrides, *overrides], config_dirs)
        except _EDGE_ERRORS as error:
            failed = (overrides, error)
            break
    if failed is None:
        return
    # Some trial cannot run: each edge alone, in order, names the setting that does it.
    for setting, overrides in edges:
        try:
            _check_edge([*base_overrides, *overrides], config_dirs)
        except _EDGE_ERRORS as error:
            raise ConfigError(_cannot_run(setting, overrides, error)) from None
    overrides, error = failed  # an lr edge and a shape edge that run alone, not together
    raise ConfigError(_cannot_run("search.lr and search.shape", overrides, error))


_EDGE_ERRORS = (HydraException, OmegaConfBaseException, ConfigError, ShapeError, SliceError)


def _check_edge(overrides: list[str], config_dirs: list) -> None:
    cfg = compose_config(overrides, config_dirs)  # the edges share their group choices: composed once each
    parse_lr(OmegaConf.to_container(cfg.lr, resolve=True))
    build_shape(cfg.shape)


def _cannot_run(setting: str, overrides: Sequence[str], error: Exception) -> str:
    return f"{setting}: a trial at the edge of the space ({' '.join(overrides)}) cannot run: {' '.join(str(error).split())}"


def _trials_at_the_edges(edges: Sequence[tuple[str, list[str]]]) -> Iterator[list[str]]:
    """The overrides of trials that together stand at every edge: an edge of the lr and one of
    the shape in one trial (separate groups; the trials of a sweep draw both), each other edge
    alone. A composition costs ~0.08 s: the default space's 18 edges take 6, not 9."""
    lrs = [overrides for setting, overrides in edges if setting == "search.lr"]
    shapes = [overrides for setting, overrides in edges if setting.startswith("search.shape.")]
    for lr, shape in itertools.zip_longest(lrs, shapes, fillvalue=[]):
        yield [*lr, *shape]
    yield from (overrides for setting, overrides in edges if setting != "search.lr" and not setting.startswith("search.shape."))
