"""The rules of single settings, in one table: what each value may be, checked where a config
enters (composed, or handed to the trainer, or read back from a record) so that the modules
that use a setting read a value already checked.

    check_values(cfg)      # every rule whose setting the config holds; ConfigError, one line

A rule sees one value. Checks that relate settings to each other, or that need something built
(a data file's contents, a device that exists, a shape's parameters), stay beside what they need.
Words a setting takes are kept here when the module that reads them is above config, so that
the table and the module read one list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from sweeper.config.errors import ConfigError
from sweeper.config.rules import is_number, seconds, whole

__all__ = [
    "COMPARE",
    "SAVE_MODEL",
    "VALUES",
    "Flag",
    "Fraction",
    "Named",
    "Nullable",
    "OneOf",
    "Positive",
    "Seconds",
    "Whole",
    "check_values",
]

SAVE_MODEL = ("best", "all", "none")  # tracking.save_model: which trials keep their weights in their run
COMPARE = ("auto", "none", "strategy", "shape")  # sweep.compare: arms of the slice strategy or of the shape


@dataclass(frozen=True)
class Whole:
    """A whole number >= minimum (never a bool); `auto` lets "auto" pass, `null` (what null
    means, or "") lets None pass and says so."""

    minimum: int = 0
    unit: str = "a whole number"
    auto: bool = False
    null: str | None = None
    example: object = None

    def check(self, setting: str, value: object) -> None:
        whole(setting, value, self.minimum, unit=self.unit, auto=self.auto, null=self.null, example=self.example)


@dataclass(frozen=True)
class Seconds:
    """A positive, finite number of seconds; `null` as for Whole."""

    null: str | None = None
    example: object = 10

    def check(self, setting: str, value: object) -> None:
        seconds(setting, value, null=self.null, example=self.example)


@dataclass(frozen=True)
class Positive:
    """A finite number >= 0 (`or_zero`) or > 0, said in `unit`, with what 0 or null means."""

    unit: str
    example: object
    or_zero: str | None = None  # what 0 means, when 0 passes
    null: str | None = None  # what null means, when null passes

    def check(self, setting: str, value: object) -> None:
        if self.null is not None and value is None:
            return
        if is_number(value) and math.isfinite(value) and (value > 0 or (self.or_zero is not None and value == 0)):
            return
        bound = f">= 0 ({self.or_zero})" if self.or_zero is not None else "> 0"
        orelse = f", or null ({self.null})" if self.null is not None else ""
        raise ConfigError(f"{setting}: {value!r} must be {self.unit} {bound}{orelse}, e.g. {setting}={self.example}.")


@dataclass(frozen=True)
class Flag:
    """true or false (YAML's), nothing that merely reads as one; with `auto`, auto too."""

    auto: bool = False

    def check(self, setting: str, value: object) -> None:
        if not isinstance(value, bool) and not (self.auto and value == "auto"):
            raise ConfigError(f"{setting}: {value!r} must be {'auto, true' if self.auto else 'true'} or false.")


@dataclass(frozen=True)
class Fraction:
    """A number strictly between 0 and 1."""

    example: float = 0.25

    def check(self, setting: str, value: object) -> None:
        if not (is_number(value) and 0 < value < 1):
            raise ConfigError(f"{setting}: {value!r} must be between 0 and 1, e.g. {setting}={self.example}.")


@dataclass(frozen=True)
class Named:
    """A name that is not empty; `fix` says what to name."""

    fix: str

    def check(self, setting: str, value: object) -> None:
        if not value:
            raise ConfigError(f"{setting}: empty; {self.fix}.")


@dataclass(frozen=True)
class OneOf:
    """One of a few words; `example` adds a setting that works."""

    words: tuple[str, ...]
    example: str | None = None

    def check(self, setting: str, value: object) -> None:
        if value not in self.words:
            example = f", e.g. {setting}={self.example}" if self.example else ""
            raise ConfigError(f"{setting}: {value!r} must be one of {list(self.words)}{example}.")


@dataclass(frozen=True)
class Nullable:
    """`rule`, or null: the setting is off (the message of `rule` is kept as it is)."""

    rule: Whole | Seconds | Positive | Flag | Fraction | Named | OneOf

    def check(self, setting: str, value: object) -> None:
        if value is not None:
            self.rule.check(setting, value)


# Every rule of a single setting, by its path. A setting the config does not hold (a launcher's,
# a data source's) is not checked; one that is `???` is check_required's to report.
VALUES: dict[str, Whole | Seconds | Positive | Flag | Fraction | Named | OneOf | Nullable] = {
    # the sweep
    "sweep.allow_changes": Flag(),
    "sweep.n_trials": Whole(1, unit="a whole number of trials"),
    "sweep.timeout": Seconds(null="for none"),
    "sweep.poll": Seconds(example=0.5),
    "sweep.live": Flag(auto=True),
    "sweep.max_failures": Whole(1, null="for sweep.n_trials"),
    "sweep.fuse": Whole(1, unit="a whole number of trials"),
    "sweep.compare": OneOf(COMPARE),
    "sweep.workers": Whole(1, auto=True),
    "sweep.workers_per_device": Whole(1),
    "sweep.cpu_threads": Whole(1, auto=True),
    "sweep.retries": Whole(0),
    "sweep.checkpoints": Flag(),
    "sweep.checkpoint_every": Positive("seconds", 30, or_zero="0: after every epoch"),
    # the study's storage
    "storage.heartbeat_interval": Whole(1, unit="whole seconds", null=""),
    # MLflow
    "tracking.enabled": Flag(),
    "tracking.experiment": Named("name the MLflow experiment, e.g. tracking.experiment=digits"),
    "tracking.request_timeout": Whole(1, unit="whole seconds", example=10),
    "tracking.request_retries": Whole(0, example=1),
    "tracking.schedule_plot": Flag(),
    "tracking.save_model": OneOf(SAVE_MODEL, example="best"),
    # training
    "train.epochs": Whole(0),
    "train.freeze_epochs": Whole(0),
    "train.batch_size": Whole(1),
    "train.sync_every": Whole(1),
    "train.threads": Nullable(Whole(1)),
    "train.seed": Whole(0),
    # the built-in data sources
    "data.source.val_fraction": Fraction(),
    "data.source.train_per_class": Whole(1, null=""),
    "data.source.outputs": Whole(1),
    # SLURM
    "launcher.jobs": Whole(1, unit="a whole number of worker jobs"),
    "launcher.array_parallelism": Whole(1, null="(all jobs at once)", example=4),
    "launcher.timeout_min": Whole(1, unit="a whole number of minutes", example=240),
    "launcher.cpus_per_task": Whole(1, example=8),
    "launcher.gpus_per_node": Whole(0, example=1),
    "launcher.mem_gb": Positive("gigabytes", 32, null="the partition's default"),
}

_ABSENT = object()


def check_values(cfg: DictConfig | Mapping) -> None:
    """Refuse the first value of `cfg` that its setting's rule does not take (ConfigError, one
    line naming the setting and the fix). Settings the config does not hold, values not set
    (`???`) and interpolations that do not resolve are left to the code that reads them: those
    say what is missing in their own words."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    for setting, rule in VALUES.items():
        value = OmegaConf.select(cfg, setting, default=_ABSENT, throw_on_missing=False, throw_on_resolution_failure=False)
        if value is not _ABSENT:
            rule.check(setting, value)
