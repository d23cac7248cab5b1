"""A recorded config is untrusted input: what it may make sweeper run, checked before anything runs.

    recorded = read_recorded(text, "results/train/x/config.yaml")  # YAML's safe subset, a mapping
    config = checked_config(recorded, allowed_code(cfg), cache)      # ConfigError, or the config to build

This module is a security boundary. Run stores (an MLflow server, a results/ folder) are shared,
so anyone who can write to one can write the config a colleague's `sweeper rerun` builds. Nothing
in it may run code, read this machine's environment or write files beyond what sweeper allows,
whatever it says. `checked_config` makes sure of it in three steps, and points the folders
allowed callables write in at the user's own results; each refusal is one ConfigError that names
the setting and the fix, raised before anything is imported or written.

1. Resolve the whole config with node interpolation alone (`${data.shape}`, `${a}.${b}`). No
   resolver runs: `oc.env` would put this user's environment into the rerun's records,
   `oc.create` and `oc.decode` make nodes the check has not seen, `hydra:` and custom resolvers
   run code. A value that resolves to text holding `${` is refused too (it would be interpolated
   again), so the result holds no interpolation at all: what is checked is what is built.
2. Find every name that building it imports (`find_imports`): every `_target_`, wherever it is
   (nested nodes, lists, `_args_`, nodes copied in by interpolation), the arguments of allowed
   callables that name code (CODE_ARGUMENTS: a FunctionShape's `fn`), and the settings the
   trainer imports by name (`model.groups` when it is a dotted path, `sweep.trainer`).
3. Allow each only if it is one of ALLOWED_CALLABLES (a code argument: ALLOWED_FUNCTIONS, the
   functions of pos; a class there would be called with pos), exact dotted names: a package is no
   boundary, since `sweeper.zoo.models.os.system` is `os.system` to Hydra. The user may vouch for a
   module of their own as a whole (`--allow-module`, or `tracking.allow_modules` in their own
   config, never the recorded one's); the standard library and the packages sweeper runs on
   cannot be allowed that way, nor can a name without a dot.

Hydra's other keys: `_args_` is refused (arguments that name code or a folder are checked by
name, and a positional argument would slip past that); `_partial_` only defers the call of a
checked callable to code of ours that finishes it (the optimizer, with the layer groups);
`_recursive_` and `_convert_` change only the form in which a checked callable gets its
arguments, and nested nodes are checked whether or not they are built.

Every entry of ALLOWED_CALLABLES must be harmless whatever named arguments a config gives it: it
runs no command, imports code only through a CODE_ARGUMENTS argument, and writes files only in
a WRITE_FOLDERS argument, which `checked_config` points into the rerunning user's results. One
exception is documented, not closed: `sweeper.zoo.models.resnet` builds whichever torchvision model
its `arch` names, and its `weights` have torchvision fetch published weights into its cache.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from sweeper.boundary.printed import printable_name
from sweeper.boundary.renamed import current_name
from sweeper.config import ConfigError, check_values, plain
from sweeper.secrets import mask_text

__all__ = [
    "ALLOWED_CALLABLES",
    "ALLOWED_FUNCTIONS",
    "CODE_ARGUMENTS",
    "WRITE_FOLDERS",
    "Allowed",
    "Import",
    "allowed_code",
    "check_config",
    "checked_config",
    "check_limits",
    "find_imports",
    "read_recorded",
    "resolve_recorded",
]

_SHAPES = (
    "FastaiOneCycle", "TorchOneCycle", "Constant", "WarmupCosine", "Triangular", "WarmupStableDecay", "Points", "FunctionShape",
    "FastaiFlatCos", "FastaiSGDR", "TorchCosineRestarts", "TorchExponential", "TorchPolynomial",
)  # fmt: skip
_TORCH_SCHEDULERS = ("TorchStep", "TorchMultiStep", "TorchLinear", "TorchCyclic", "TorchCosine", "TorchPlateau")
_SAMPLERS = ("TPESampler", "CmaEsSampler", "GPSampler", "GridSampler", "NSGAIISampler", "QMCSampler", "RandomSampler")
_PRUNERS = ("MedianPruner", "PercentilePruner", "HyperbandPruner", "SuccessiveHalvingPruner", "NopPruner")

# What conf/ names and the code builds (tests/test_rerun_security.py holds the two together).
ALLOWED_CALLABLES = frozenset(
    {
        # models (model.net) and the splitter of model.groups
        "sweeper.zoo.models.MLP",
        "sweeper.zoo.models.SmallCNN",
        "sweeper.zoo.models.resnet",
        "sweeper.zoo.models.pretrained_on_digits",
        "sweeper.zoo.models.resnet_split",
        "sweeper.zoo.vision.classifier",  # torchvision's models; a weights_path is read weights_only
        "sweeper.zoo.groups.body_and_head",
        "sweeper.zoo.transformers.sequence_classifier",  # local files only, never remote code (trust_remote_code off)
        "sweeper.zoo.transformers.layer_groups",
        # data (data.source)
        "sweeper.zoo.data.digits",
        "sweeper.zoo.data.digits_classes",
        "sweeper.zoo.data.synthetic",
        "sweeper.zoo.data.synthetic_regression",
        "sweeper.zoo.data.tensors_file",
        "sweeper.zoo.data.image_folder",
        "sweeper.zoo.data.synthetic_tokens",
        # cycle shapes
        *(f"sweeper.schedules.shapes.{name}" for name in _SHAPES),
        *(f"sweeper.schedules.torch_schedulers.{name}" for name in _TORCH_SCHEDULERS),
        "sweeper.schedules.sequential.Sequential",
        # the task's loss and metrics (task.loss, task.metrics: _partial_)
        "torch.nn.functional.cross_entropy",
        "torch.nn.functional.mse_loss",
        "sweeper.zoo.tasks.accuracy",
        "sweeper.zoo.tasks.mse",
        "sweeper.zoo.tasks.mae",
        "sweeper.zoo.tasks.r2",
        # optimizers (finished in code with the layer groups: _partial_)
        "torch.optim.AdamW",
        "torch.optim.Adam",
        "torch.optim.SGD",
        # the trainer (sweep.trainer)
        "sweeper.training.engine",
        # the sweep's sampler and pruner: in every trial's record, built by sweeps only
        *(f"optuna.samplers.{name}" for name in _SAMPLERS),
        *(f"optuna.pruners.{name}" for name in _PRUNERS),
    }
)
# Arguments of allowed callables whose value is the dotted path of a function the callable
# imports and calls with one number (a FunctionShape's pos).
CODE_ARGUMENTS = {"sweeper.schedules.shapes.FunctionShape": ("fn", "mom_fn")}
# What a code argument may name of sweeper's: functions of pos. Not ALLOWED_CALLABLES: a model,
# a shape class or an optimizer called with pos passes no check and fails the trial half-way.
ALLOWED_FUNCTIONS = frozenset({"sweeper.schedules.shapes.linear_decay"})
# Arguments of allowed callables that name the folder they write in.
WRITE_FOLDERS = {"sweeper.zoo.models.pretrained_on_digits": "cache_dir"}
# Not modules of the user's: allowing one whole would allow what it holds that runs commands,
# loads code or writes files (os.system, torch.hub.load, torch.save, ...).
NOT_YOURS = frozenset(sys.stdlib_module_names) | {
    "sweeper",
    "torch",
    "torchvision",
    "optuna",
    "hydra",
    "omegaconf",
    "mlflow",
    "numpy",
    "pandas",
    "sklearn",
    "matplotlib",
}
# Resolvers that read the config alone (sweeper's own model configs use one for a default).
PURE_RESOLVERS = frozenset({"oc.select"})
# The user's own settings a record's build gets instead of the record's: where runs are
# recorded (storage, tracking) and where run data lands.
OWN_NODES = ("storage", "tracking", "results_dir")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class ReadLimits:
    """How large a recorded text may be: sweeper's own records are far inside every limit (a
    config is a few KB, a few hundred values, a few levels deep)."""

    characters: int = 1_000_000
    nodes: int = 100_000
    depth: int = 32
    string: int = 100_000


READ_LIMITS = ReadLimits()
_NOT_READ = "nothing was read from it; give a config that `sweeper train` or a sweep recorded"


@dataclass(frozen=True)
class Import:
    setting: str  # where the name is written, e.g. model.net._target_
    name: Any  # what it names, e.g. sweeper.zoo.models.MLP (not always a string)
    function: bool = False  # named by a code argument (CODE_ARGUMENTS): a function of pos

    @property
    def shown(self) -> str:
        """The name as it may be printed: any password in it masked, anything but ASCII letters
        escaped (sweeper.boundary.printed), a non-string said to be one."""
        return printable_name(mask_text(self.name) if isinstance(self.name, str) else self.name)


@dataclass(frozen=True)
class Allowed:
    """ALLOWED_CALLABLES, and every name under the user's own `modules`; and what of the user's
    own a record's build gets instead of the record's: the folder allowed callables write in, and
    the storage and tracking nodes (resolved) that say where the user's runs are recorded."""

    modules: tuple[str, ...] = ()
    writes_to: str = "results/cache"
    own_nodes: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def allows(self, found: Import) -> bool:
        name = found.name
        if not isinstance(name, str) or "." not in name:
            return False
        ours = ALLOWED_FUNCTIONS if found.function else ALLOWED_CALLABLES
        return name in ours or any(name == m or name.startswith(m + ".") for m in self.modules)


def allowed_code(cfg: DictConfig, extra: Iterable[str] = ()) -> Allowed:
    """What a recorded config may build: ours, and the modules the user vouches for in their own
    config (tracking.allow_modules) or on the command line (`extra`, from --allow-module)."""
    configured = OmegaConf.select(cfg, "tracking.allow_modules", default=None) or []
    if isinstance(configured, str) or not all(isinstance(m, str) for m in configured):
        raise ConfigError(f"tracking.allow_modules: {configured!r} must be a list of module names, e.g. [mypkg].")
    for setting, modules in (("tracking.allow_modules", configured), ("--allow-module", extra)):
        for module in modules:
            if not _MODULE_NAME.fullmatch(module):
                raise ConfigError(f"{setting}: {module!r} is not a module name; give a dotted module path, e.g. mypkg.")
            if module.split(".")[0] in NOT_YOURS:
                raise ConfigError(
                    f"{setting}: {module} cannot be allowed whole: it is not a module of yours, and it "
                    f"holds functions that run commands, load code or write files (sweeper allows the "
                    f"few of its callables that it uses by name); allow only modules of your own code."
                )
    own = {node: _resolved_where_it_can(cfg, node) for node in OWN_NODES if node in cfg}
    writes_to = str(Path(str(cfg.results_dir)) / "cache") if "results_dir" in cfg else Allowed.writes_to
    return Allowed((*configured, *extra), writes_to, own)


def _resolved_where_it_can(cfg: DictConfig, node: str) -> Any:
    """A node of the user's own config resolved; a setting that cannot be (an unset variable of
    a tracking this command does not use) is left out."""
    value = cfg._get_node(node)
    if not OmegaConf.is_config(value):
        return OmegaConf.select(cfg, node, throw_on_resolution_failure=False)
    found = {}
    for key in value:
        try:
            item = value[key]
            found[key] = OmegaConf.to_container(item, resolve=True) if OmegaConf.is_config(item) else item
        except OmegaConfBaseException:
            continue
    return found


# --- reading and resolving ------------------------------------------------------------------


def read_recorded(text: str, where: str) -> DictConfig:
    """A recorded config as written. OmegaConf reads YAML's safe subset (a Python tag is an
    error, not a call), within READ_LIMITS (checked first, on YAML's events: in time and memory
    linear in the text); the config must be a mapping."""
    check_limits(text, where)
    try:
        config = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException, RecursionError) as error:
        raise ConfigError(
            f"{where}: not a config sweeper can read ({_first_line(error)}); give one that `sweeper train` or a sweep recorded."
        ) from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{where}: holds a {type(config).__name__}, not a config mapping; give one that `sweeper train` recorded.")
    plain = OmegaConf.to_container(config, resolve=False)
    _rename_old_names(plain)  # a record written before the packages moved reads as today's names
    return OmegaConf.create(plain)


def check_limits(text: str, where: str) -> None:
    """A recorded YAML text within READ_LIMITS, and without anchors or aliases: an alias repeats
    a node without its text, so a few of them nested (a "billion laughs") make a config
    exponentially larger than the text; sweeper writes none."""
    limits = READ_LIMITS
    if len(text) > limits.characters:
        raise ConfigError(f"{where}: {len(text)} characters, more than a recorded config holds ({limits.characters}); {_NOT_READ}")
    depth = nodes = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ConfigError(f"{where}: holds a YAML anchor or alias (&, *), which sweeper never writes; {_NOT_READ}")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > limits.depth:
                    raise ConfigError(f"{where}: nested more than {limits.depth} levels deep; {_NOT_READ}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent) and len(event.value) > limits.string:
                raise ConfigError(f"{where}: holds a value of {len(event.value)} characters (at most {limits.string}); {_NOT_READ}")
            nodes += 1
            if nodes > limits.nodes:
                raise ConfigError(f"{where}: more than {limits.nodes} values; {_NOT_READ}")
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not a config sweeper can read ({_first_line(error)}); {_NOT_READ}") from None


def resolve_recorded(config: DictConfig) -> dict[str, Any]:
    """The whole config resolved by node interpolation alone, as plain containers that hold no
    interpolation."""
    for setting, text in _strings(OmegaConf.to_container(config, resolve=False)):
        resolvers = [r for r in _resolvers(setting, text) if r not in PURE_RESOLVERS]
        if resolvers:
            raise ConfigError(
                f"{setting}: {mask_text(text)!r} calls the resolver {resolvers[0]}; a recorded config is "
                f"resolved with plain ${{a.b}} interpolation only, never with this machine's environment "
                f"or a resolver. Nothing was run; write the value it stood for into a copy of the config "
                f"and rerun that folder."
            )
    try:
        resolved = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "the recorded config"
        raise ConfigError(
            f"{key}: cannot be resolved ({_first_line(error)}); fix it in a copy of the config and rerun that folder."
        ) from None
    for setting, text in _strings(resolved):
        if "${" in text:
            raise ConfigError(
                f"{setting}: resolves to {mask_text(text)!r}, which would be interpolated again; a "
                f"recorded config holds values, not interpolations. Nothing was run."
            )
    return resolved


def _resolvers(setting: str, text: str) -> list[str]:
    """The resolvers an interpolation in `text` calls, outermost first."""
    if "${" not in text:
        return []
    try:
        nodes = [parse(text)]
    except OmegaConfBaseException as error:
        raise ConfigError(f"{setting}: {mask_text(text)!r} is not a valid interpolation ({_first_line(error)}).") from None
    called = []
    while nodes:
        node = nodes.pop(0)
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            called.append(node.resolverName().getText())
        nodes.extend(getattr(node, "children", None) or [])
    return called


# --- the check --------------------------------------------------------------------------------


def checked_config(recorded: DictConfig, allowed: Allowed, writes_to: str | Path) -> DictConfig:
    """The recorded config resolved, its writes pointed into `writes_to`, and checked: the only
    config a rerun may build (anything resolved or changed after the check would go unchecked)."""
    config = resolve_recorded(recorded)
    _rename_old_names(config)
    writers = [node for _, node in _paths(config) if isinstance(node, dict) and _target(node) in WRITE_FOLDERS]
    for node in writers:
        # The cache is keyed by what it holds: moving it changes no result, only where it lands.
        node[WRITE_FOLDERS[_target(node)]] = str(writes_to)
    check_config(config, allowed)
    checked = OmegaConf.create(config)
    check_values(checked)  # not composed: its values are checked here, as a composed config's are
    return checked


def check_config(config: DictConfig | Mapping, allowed: Allowed) -> list[Import]:
    """The config's imports, each allowed; else ConfigError naming what is not, and the fix."""
    imports = find_imports(config)
    refused = [i for i in imports if not allowed.allows(i)]
    if refused:
        listed = ", ".join(f"{i.setting}={i.shown}" for i in refused)
        raise ConfigError(f"the recorded config names code that sweeper does not allow: {listed}. Nothing was run; {_fix(refused)}.")
    positional = [path for path, node in _paths(plain(config, resolve=False)) if isinstance(node, Mapping) and "_args_" in node]
    if positional:
        raise ConfigError(
            f"{_join(positional[0], '_args_')}: a recorded config passes arguments by name, so that the "
            f"check sees each argument that names code or a folder; write them as named arguments. "
            f"Nothing was run."
        )
    return imports


def find_imports(config: DictConfig | Mapping) -> list[Import]:
    """Every name building `config` imports, where it is written, in the order written."""
    return list(_imports(plain(config, resolve=False), ""))


def _imports(node: Any, path: str) -> Iterator[Import]:
    if isinstance(node, Mapping):
        arguments = ("_target_", *CODE_ARGUMENTS.get(_target(node), ()))
        for key, value in node.items():
            setting = _join(path, key)
            if key in arguments[1:] and value is None:
                continue  # an optional code argument left unset (a shape's mom_fn: null) imports nothing
            if key in arguments or _names_code(setting, value):
                yield Import(setting, value, function=key in arguments[1:])  # a name that is not a string is refused whole
            else:
                yield from _imports(value, setting)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _imports(value, f"{path}[{index}]")


def _rename_old_names(node: Any, path: str = "") -> None:
    """Each name written before sweeper's packages moved, as it is called now (in place: it is
    the resolved plain container, which is what gets checked and built)."""
    if isinstance(node, dict):
        arguments = ("_target_", *CODE_ARGUMENTS.get(current_name(_target(node)), ()))
        for key, value in node.items():
            setting = _join(path, key)
            if key in arguments[1:] and value is None:
                continue
            if key in arguments or _names_code(setting, value):
                node[key] = current_name(value)
            else:
                _rename_old_names(value, setting)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _rename_old_names(value, f"{path}[{index}]")


def _names_code(setting: str, value: Any) -> bool:
    """The settings the trainer imports by name: sweep.trainer, and model.groups when it is a
    string (prefixes and a number of groups name no code)."""
    return setting == "sweep.trainer" or (setting == "model.groups" and isinstance(value, str))


def _fix(refused: list[Import]) -> str:
    # The advice never turns a recorded name into a command to type: a name that looks like a
    # module of yours may be a look-alike (another alphabet's letter, a leading space).
    yours = [i for i in refused if isinstance(i.name, str) and "." in i.name and i.name.split(".")[0] not in NOT_YOURS]
    if yours:
        return (
            "if it is code of yours that you trust, allow its module by typing the module's name "
            "yourself: --allow-module MODULE (or tracking.allow_modules=[MODULE] in your own config)"
        )
    if any(i.function for i in refused):
        return (
            "a FunctionShape's fn and mom_fn may name only a function of pos, sweeper's own "
            "(sweeper.boundary.recorded_config.ALLOWED_FUNCTIONS) or one in a module you allow"
        )
    return "a recorded config may build only sweeper's allowed callables (sweeper.boundary.recorded_config.ALLOWED_CALLABLES), by their dotted names"


def _target(node: Mapping) -> str | None:
    target = node.get("_target_")
    return target if isinstance(target, str) else None


# --- walking plain containers ------------------------------------------------------------------


def _paths(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(setting, node) for `node` and everything in it, in the order written."""
    yield path, node
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _paths(value, _join(path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, f"{path}[{index}]")


def _strings(plain: Any) -> Iterator[tuple[str, str]]:
    return ((path, node) for path, node in _paths(plain) if isinstance(node, str))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
