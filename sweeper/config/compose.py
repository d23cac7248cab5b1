"""Hydra configs: where they are, how they are composed, and how a shape is built from one.

The config tree ships inside the package (`sweeper/conf` in a wheel) and lives at `conf/` in a
checkout; both are found. Users add config directories of their own (their models, data and
experiments) with `--config-dir DIR` on any command or the SWEEPER_CONFIG_PATH variable
(directories separated by `os.pathsep`). Their options join ours in every group; give them new
names (Hydra searches our tree first, so an option named like one of ours is ours).

Overrides are Hydra's, with two readings of ours (`hydra_overrides`), the same on every command:
- `lr` given the fastai way (`lr=1e-3`, `lr='slice(1e-5,1e-3)'`, `lr='slice(None,1e-3)'`,
  `lr='[1e-5,1e-4,1e-3]'`) sets the lr group: `lr=single lr.high=0.001`, and so on. Hydra alone
  would take the value for the name of a config option, or fail to parse slice(...).
- a mapping given for a node of the search space (`search.shape={constant: {}}`) replaces that
  node: a space is what you write. Hydra would merge it into the default and keep every shape.
"""

from __future__ import annotations

import collections
import difflib
import functools
import inspect
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper.config.errors import ConfigError, error_line
from sweeper.config.loaded import KeptConfigFiles, copy_config
from sweeper.config.schema import ConfigFiles, Schema, check_keys, config_files, schema_of
from sweeper.config.values import check_values
from sweeper.schedules.shapes import Shape, ShapeError
from sweeper.schedules.slices import SliceSpec, parse_lr

__all__ = [
    "ConfigError",
    "build_shape",
    "check_arguments",
    "check_results_dir",
    "compose_config",
    "config_dir",
    "hydra_overrides",
    "instantiate_node",
    "lr_given",
    "parse_override",
    "user_config_dirs",
]

CONFIG_PATH_VARIABLE = "SWEEPER_CONFIG_PATH"
_COMPOSING = threading.RLock()
_KEPT = KeptConfigFiles()  # the config files, read once per process (sweeper.config.loaded)


def config_dir() -> Path:
    """Our config tree: packaged beside the code in a wheel, at the repository root in a checkout."""
    package = Path(__file__).resolve().parents[1]  # sweeper/
    packaged = package / "conf"
    if packaged.is_dir():
        return packaged
    return package.parent / "conf"


def user_config_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Config directories of the user's: `extra` first, then SWEEPER_CONFIG_PATH."""
    from_env = [p for p in os.environ.get(CONFIG_PATH_VARIABLE, "").split(os.pathsep) if p]
    dirs = [Path(p).expanduser().resolve() for p in [*extra, *from_env]]
    for path in dirs:
        if not path.is_dir():
            raise ConfigError(
                f"--config-dir: {str(path)!r} is not a directory; give a folder laid out like conf/ (model/, data/, experiment/, ...)."
            )
    return dirs


def compose_config(overrides: Iterable[str] = (), config_dirs: Iterable[str | os.PathLike] = ()) -> DictConfig:
    """Compose the root config with overrides (`hydra_overrides`), the user's config directories added.

    A composition costs ~60-80 ms (Hydra builds the defaults list and merges every file it names),
    and a process composes many that share their group choices: a worker's trials, the edges of
    a search space, the configs of commands run in one process. So the config of one set of group
    choices is composed once (per generation of the config tree, as its files are kept: a file
    changed is composed again), and the overrides that set a value are applied to a copy of it
    by Hydra's own ConfigLoaderImpl._apply_overrides_to_config, which compose applies them with
    once it has composed (the same checks, the same messages): ~8-10 ms with the checks below."""
    overrides = hydra_overrides(overrides)
    users = user_config_dirs(config_dirs)
    tree = config_files([config_dir(), *users])
    schema = schema_of(tree)
    try:
        parsed = _parser().parse_overrides(overrides)  # every override read first, as compose reads them
        if any(override.is_sweep_override() for override in parsed):
            cfg = _compose(overrides, users, tree)  # Hydra says why a sweep is no config
        else:
            values, choices = [], []
            for override, text in zip(parsed, overrides):
                if _sets_a_value(text, schema):
                    values.append(override)
                else:
                    choices.append(text)
            cfg = _COMPOSED.copy_of(tuple(choices), users, tree)
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except HydraException as error:
        raise ConfigError(_composition_error(error, schema)) from None
    except yaml.MarkedYAMLError as error:  # a config file of the user's that is not YAML
        raise ConfigError(_yaml_error(error)) from None
    check_keys(cfg, schema)  # what a file or a +key=value added: a mistyped key is said first
    check_values(cfg)
    return cfg


def _compose(overrides: list[str], users: list[Path], tree: ConfigFiles) -> DictConfig:
    """The config as Hydra composes it, its files read through the kept ones."""
    if users:
        overrides = [*overrides, f"hydra.searchpath=[{','.join(f'file://{d}' for d in users)}]"]
    # Hydra keeps its state in one global per process: threads compose one at a time.
    with _COMPOSING, initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="sweeper"):
        _KEPT.install(GlobalHydra.instance().hydra.config_loader, tree)
        return compose(config_name="config", overrides=overrides)


class _Compositions:
    """Configs composed from group choices alone, kept for copies (the most recent few)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.composed: collections.OrderedDict[tuple, DictConfig] = collections.OrderedDict()

    def copy_of(self, choices: tuple[str, ...], users: list[Path], tree: ConfigFiles) -> DictConfig:
        key = (choices, tuple(users), tree)
        with _COMPOSING:
            composed = self.composed.get(key)
            if composed is None:
                composed = self.composed[key] = _compose(list(choices), users, tree)
                while len(self.composed) > self.size:
                    self.composed.popitem(last=False)
            else:
                self.composed.move_to_end(key)
            return copy_config(composed)  # what a caller changes reaches no later copy


_COMPOSED = _Compositions()


def _sets_a_value(override: str, schema: Schema) -> bool:
    """Whether compose applies the override to the composed config (a value), not to the
    defaults list (a group's option, +/~ a key, a package) or to Hydra's own settings."""
    key = override.split("=", 1)[0]
    if key.startswith(("+", "~")) or "/" in key or "@" in key or key.split(".")[0] == "hydra":
        return False
    return "." in key or key not in schema.groups


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def parse_override(text: str) -> Override:
    """One override read by Hydra's own parser; a ConfigError that names it if it cannot be read."""
    try:
        return _parser().parse_override(text)
    except HydraException as error:
        raise ConfigError(f"override {text!r}: {error_line(error)}") from None


# How config options are named (lr=fastai, lr=mine/wide): anything else given for lr is a value.
_OPTION_NAME = re.compile(r"^[A-Za-z_][\w.-]*(/[\w.-]+)*$")


def lr_given(text: str) -> SliceSpec | None:
    """The slice an `lr=...` override gives the fastai way (a number, slice(...), a list), read
    and checked by `parse_lr`; None for any other override (`lr=fastai` names a config option)."""
    key, equals, value = text.partition("=")
    if key.strip() != "lr" or not equals:
        return None
    try:
        override = _parser().parse_override(text)
    except HydraException:
        # Hydra's grammar has no slice(); anything else it cannot read is its own error to report.
        return parse_lr(value.strip()) if value.strip().startswith("slice") else None
    given = override.value()
    if override.is_sweep_override() or (isinstance(given, str) and _OPTION_NAME.match(given)):
        return None
    return parse_lr(given)


def hydra_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides as Hydra is to apply them: an lr given the fastai way becomes the lr
    group's overrides, and a mapping given for a node under `search.` replaces the node."""
    overrides = list(overrides)
    result = []
    for text in overrides:
        spec = lr_given(text)
        if spec is not None:
            _check_lr_alone(text, overrides)
            result += spec.overrides()
        elif _replaces_search_node(text):
            # Hydra merges a mapping into the node it overrides; set to null first, it is the node.
            result += [f"{text.partition('=')[0]}=null", text]
        else:
            result.append(text)
    return result


def _check_lr_alone(lr: str, overrides: list[str]) -> None:
    others = [o for o in overrides if o != lr and o.lstrip("+~").partition("=")[0].split(".")[0] == "lr"]
    if others:
        raise ConfigError(
            f"lr: {lr!r} sets the whole slice, and {' '.join(others)} sets it again; give one: "
            f"{lr}, or the lr group's own settings (lr=geometric lr.low=... lr.high=...)."
        )


def _replaces_search_node(text: str) -> bool:
    if not text.startswith("search."):
        return False
    try:
        override = _parser().parse_override(text)
    except HydraException:
        return False
    return override.type == OverrideType.CHANGE and isinstance(override.value(), dict)


# Hydra's words for a delete override (~key, ~key=value) it could not apply
_DELETE_MISSING = re.compile(r"Could not delete from config\. '(?P<key>[^']+)' does not exist\.")
_DELETE_OTHER_VALUE = re.compile(r"Could not delete from config\. The value of '(?P<key>[^']+)' is (?P<value>.+) and not (?P<given>.+)\.$")


def _composition_error(error: HydraException, schema: Schema) -> str:
    """Hydra's message for an override it cannot apply, as one line that says what to do."""
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or ""):
        group, _, option = error.missing_cfg_file.rpartition("/")
        # lr takes values too; say so where a typo of one lands (lr=1e-3x, lr=abc)
        values = " Or give the lr itself: lr=1e-3, lr='slice(1e-5,1e-3)' or lr='[1e-5,1e-4,1e-3]'."
        return (
            f"{group}={option}: there is no such option. Available options in {group}: "
            f"{', '.join(error.options)}; or add {error.missing_cfg_file}.yaml to a config directory "
            f"of yours (--config-dir DIR).{values if group == 'lr' else ''}"
        )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines[0].startswith("Could not override") and "not in struct" in str(error.__cause__):
        key = lines[0].removeprefix("Could not override ").strip("'.")
        parent, _, name = key.rpartition(".")
        refusal = schema.unknown(parent, name)
        if not schema.is_open(parent) or "did you mean" in refusal:
            return refusal
        # a node that builds something takes its target's arguments: a new one is added with +
        fix = lines[1].removeprefix("To append to your config use ") if len(lines) > 1 else f"+{key}=..."
        return f"{key}: no such setting in {parent}; to pass its target a new argument, add it with {fix}."
    if lines[0].startswith("Could not override") and "No match in the defaults list" in str(error):
        return schema.unknown("", lines[0].removeprefix("Could not override ").strip("'."))
    missing = _DELETE_MISSING.match(lines[0])
    if missing:
        return f"~{missing['key']}: there is no such setting to delete; check its spelling."
    other = _DELETE_OTHER_VALUE.match(lines[0])
    if other:
        return (
            f"~{other['key']}={other['given']}: {other['key']} holds {other['value']}, not {other['given']}, "
            f"so nothing was deleted; write ~{other['key']} to delete it whatever it holds."
        )
    text = " ".join(line for line in lines if not line.startswith(("Config search path", "provider=")))
    override = getattr(error, "override", None)  # a parse error names the override it could not read
    return f"override {override!r}: {text}" if override else text


def _yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
    problem = " ".join(str(p) for p in (error.context, error.problem) if p)
    fix = "YAML indents with spaces, never tabs: replace the tab" if "'\\t'" in problem else "fix the YAML there"
    return f"--config-dir: {where}: {problem}; {fix}."


def build_shape(node: Mapping | DictConfig) -> Shape:
    """Build a cycle shape from its config node (`_target_` plus the shape's settings)."""
    settings = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = settings.pop("_target_", None)
    settings.pop("name", None)  # the config option's label (fastai_fine_tune), not a setting of the class
    if target is None:
        raise ConfigError("shape: the config has no _target_; pick one with shape=<name>.")
    try:
        factory = get_object(target)
    except Exception:
        raise ConfigError(
            f"shape._target_: cannot import {target!r}; name a shape class in sweeper.schedules.shapes or "
            f"an importable class or function of yours."
        ) from None
    settings = {key: _built_shapes(value) for key, value in settings.items()}
    try:
        shape = factory(**settings)
    except TypeError as error:
        raise ConfigError(f"shape: {target} does not take these settings {sorted(settings)}: {error}") from None
    except ShapeError:
        raise
    if not (callable(getattr(shape, "lr", None)) and callable(getattr(shape, "momentum", None))):
        raise ConfigError(
            f"shape._target_: {target!r} built {shape!r}, which is not a shape; a shape has "
            f"lr(peak, step, total) and momentum(step, total)."
        )
    return shape


def _built_shapes(value: object) -> object:
    """A setting that holds shapes (a sequential's `shapes`), each built from its `_target_` node."""
    if isinstance(value, list) and value and all(isinstance(item, Mapping) and "_target_" in item for item in value):
        return tuple(build_shape(item) for item in value)
    return value


def instantiate_node(node: DictConfig, setting: str) -> object:
    """`hydra.utils.instantiate`, with a failure reported as the config error it is.

    Hydra wraps whatever the target raised; a ValueError of ours (a missing data path, a bad
    setting) already says what to fix, so it surfaces unchanged, and anything else is reported
    with the setting that named the target.
    """
    check_arguments(node, setting)
    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ValueError) and type(cause).__module__.startswith("sweeper."):
            raise cause from None
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        raise ConfigError(f"{setting}: cannot build {target}: {cause or error}") from None


def check_arguments(node: Mapping, setting: str) -> None:
    """Refuse, before anything is built, what the target of a node (`_target_`) would fail on deep
    inside itself: a key it does not take (a typo: `optimizer.weight_decy`), said with the closest
    one it does, and a string where it takes a number (torch's optimizers raise TypeError on their
    first comparison). Nodes nested in it that build something are checked too. A target that takes
    any keyword (**kwargs), or one that cannot be inspected, is left to build and report itself."""
    try:
        target = node.get("_target_")
        parameters = inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 - no target, or none to inspect: instantiate reports it
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in node.keys():
        key = str(key)
        if key.startswith("_") and key.endswith("_"):  # Hydra's own: _target_, _partial_, _args_, ...
            continue
        if key not in parameters and not takes_any:
            raise ConfigError(_not_taken(setting, key, str(target), [n for n, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]))
        try:
            value = node[key]
        except OmegaConfBaseException:  # unresolvable: instantiate reports it as it always has
            continue
        if isinstance(value, Mapping) and "_target_" in value:
            check_arguments(value, f"{setting}.{key}")
        default = parameters[key].default if key in parameters else None
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ConfigError(
                f"{setting}.{key}: {value!r} is not a number, and {target} takes a number "
                f"there; give one, e.g. {setting}.{key}={default!r}."
            )


def _not_taken(setting: str, key: str, target: str, taken: list[str]) -> str:
    close = difflib.get_close_matches(key, taken, n=1, cutoff=0.6)
    fix = f"did you mean {setting}.{close[0]}?" if close else f"it takes {', '.join(taken)}."
    return f"{setting}.{key}: no such setting of {target}; {fix}"


def check_results_dir(results_dir: str) -> None:
    """results_dir can be made and written, checked before anything is written there: a read-only
    working directory (or results/) would otherwise fail deep inside the first store that opens
    it, with a traceback or a hundred lines of MLflow's. Nothing is created here (a dry run
    creates nothing): the folder itself, or the nearest existing one above it, must be a
    folder the user may write to."""
    path = Path(results_dir).expanduser().absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is read-only for you"
        else:
            return
    except OSError as error:  # a folder above it that may not even be looked into
        problem = f"{error.strerror}: {error.filename}"
    raise ConfigError(
        f"results_dir: cannot write the sweep's results to {path} ({problem}); set results_dir=PATH "
        f"to a folder you may write to (a relative PATH starts from the working directory)."
    )
