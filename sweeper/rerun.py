"""Exact reruns: train a recorded trial again and show how far the new curves are from the old.

    rerun = load_source("3f2a...", cfg)          # an MLflow run id, or a folder with config.yaml
    check_imports(rerun.config, allowed)           # before anything runs: every _target_ allowed?
    result = train(rerun.config, [recorder])       # same config, same seed
    comparison = compare_curves(rerun.curves, result_curves(result))

A source is what was recorded: the resolved config (the MLflow run's `config.yaml` artifact, or
a folder's `config.yaml`, as `sweeper train` writes under results/train/) and its curves (the
run's metric histories, or the folder's `result.json`). On CPU with `train.deterministic` on, a
rerun reproduces every step and epoch value bitwise: the largest difference is 0.

A recorded config names code to import (`_target_`s, a shape's `fn`, a splitter in
`model.groups`, `sweep.trainer`). A run on a shared server must not become a way to run
arbitrary code, so each name must lie in an allowed module (torch, torchvision, sweeper, and
those the user allows: `--allow-module`, or `tracking.allow_modules` in the user's own config,
never the recorded one's), and not in the parts of torch that fetch or compile code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError
from sweeper.events import EpochEvent, StepEvent, TrialResult
from sweeper.secrets import mask_text
from sweeper.study import load_trainer
from sweeper.tracking import (
    RERUN_KIND,
    SWEEP_MEMBER_KINDS,
    TRIAL_NODES,
    MlflowRecorder,
    TrackingSettings,
    connect,
    read_artifact,
    read_curves,
    result_curves,
    store_client,
    tracking_settings,
)

__all__ = [
    "ALLOWED_MODULES",
    "Comparison",
    "Import",
    "Rerun",
    "RerunSource",
    "allowed_modules",
    "check_imports",
    "compare_curves",
    "describe_imports",
    "find_imports",
    "load_source",
    "rerun",
]

ALLOWED_MODULES = ("torch", "torchvision", "sweeper")
# Inside allowed modules, these fetch, compile or load code at run time.
DENIED_MODULES = ("torch.hub", "torch.package", "torch.utils.cpp_extension", "torch.ops.load_library")
# Settings (besides _target_) whose string value is the dotted path of code to import.
IMPORT_SETTINGS = ("shape.fn", "model.groups", "sweep.trainer")

Curves = dict[str, list[tuple[int, float]]]


@dataclass(frozen=True)
class Import:
    setting: str                    # where the name is written, e.g. model.net._target_
    name: str                       # the dotted path it imports, e.g. sweeper.models.MLP


@dataclass
class RerunSource:
    label: str                      # the MLflow run id, or the folder
    config: DictConfig              # the resolved config as recorded
    curves: Curves | None           # the recorded curves (None: nothing to compare with)
    run_id: str | None = None       # the MLflow run, when the source is one
    experiment_id: str | None = None
    threads: int | None = None      # torch threads of the recorded run (summation order on CPU)
    tags: Mapping[str, str] = field(default_factory=dict)  # the MLflow run's tags (its sweep, its parent)


# --- what a config imports --------------------------------------------------------------------


def find_imports(config: Mapping | DictConfig) -> list[Import]:
    """Every dotted path a rerun of the config imports, in the order written: the _target_s of
    the nodes a trial is built from (the sweep's sampler and pruner are not built by a rerun)
    and the IMPORT_SETTINGS."""
    plain = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    found = [i for key in TRIAL_NODES if key in plain for i in _targets(plain[key], key)]
    for setting in IMPORT_SETTINGS:
        value = _get(plain, setting)
        if isinstance(value, str) and "." in value:
            found.append(Import(setting, value))
    return found


def _targets(node: Any, path: str) -> Iterator[Import]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key == "_target_" and isinstance(value, str):
                yield Import(where, value)
            else:
                yield from _targets(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def _get(node: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def check_imports(config: Mapping | DictConfig, allowed: Iterable[str]) -> list[Import]:
    """The config's imports, or ConfigError naming every one outside `allowed` modules."""
    allowed = tuple(allowed)
    imports = find_imports(config)
    refused = [
        i for i in imports
        if not any(_within(i.name, m) for m in allowed) or any(_within(i.name, m) for m in DENIED_MODULES)
    ]
    if refused:
        listed = ", ".join(f"{i.setting}={i.name}" for i in refused)
        roots = sorted({i.name.split(".")[0] for i in refused})
        raise ConfigError(
            f"rerun: the recorded config imports code outside the allowed modules {list(allowed)}: "
            f"{listed}. Nothing was run. If you trust it, allow its module with "
            f"--allow-module {roots[0]} (or tracking.allow_modules=[{','.join(roots)}] in your own "
            f"config); {', '.join(DENIED_MODULES)} stay refused."
        )
    return imports


# --- sources ----------------------------------------------------------------------------------


def load_source(source: str, cfg: DictConfig) -> RerunSource:
    """A folder (or its config.yaml) if `source` is a path, else an MLflow run id looked up in
    the store `cfg.tracking` names."""
    path = Path(source)
    if path.exists():
        return _from_folder(path.parent if path.is_file() else path)
    settings = tracking_settings(cfg)
    if settings is None:
        raise ConfigError(
            f"rerun: {source!r} is not a folder, and tracking is off (tracking=none) so it cannot be "
            f"an MLflow run id; give a folder with config.yaml, or the store that holds the run "
            f"(tracking=local or tracking=server)."
        )
    return _from_mlflow(source, settings)


def _from_folder(folder: Path) -> RerunSource:
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(
            f"rerun: {folder} has no config.yaml; give a folder that `sweeper train` (or a rerun) "
            f"wrote, e.g. results/train/<time>/, or an MLflow run id."
        )
    result_file = folder / "result.json"
    curves = result_curves(_read_result(result_file)) if result_file.is_file() else None
    return RerunSource(str(folder), OmegaConf.load(config_file), curves)


def _read_result(path: Path) -> TrialResult:
    """A TrialResult written as JSON (dataclasses.asdict)."""
    data = json.loads(path.read_text())
    steps = [StepEvent(**{**s, "lrs": tuple(s["lrs"])}) for s in data.pop("steps", [])]
    epochs = [EpochEvent(**e) for e in data.pop("epochs", [])]
    return TrialResult(**data, steps=steps, epochs=epochs)


def _from_mlflow(run_id: str, settings: TrackingSettings) -> RerunSource:
    client = store_client(settings)  # reading: no experiment is made in the user's store
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow says "not found" in several ways
        raise ConfigError(
            f"rerun: no MLflow run {run_id!r} in {settings.label}; copy a run id from the MLflow UI, "
            f"give the store that holds it (tracking.uri=...), or a folder with config.yaml."
        ) from None
    config = read_artifact(settings, run_id, "config.yaml")
    if config is None:
        raise ConfigError(f"rerun: MLflow run {run_id} has no config.yaml artifact; it was not recorded by sweeper.")
    environment = json.loads(read_artifact(settings, run_id, "environment.json") or "{}")
    # Torch's thread count sets the summation order on CPU: the rerun uses the recorded one.
    threads = (environment.get("torch") or {}).get("threads")
    return RerunSource(
        run_id, OmegaConf.create(config), read_curves(settings, run_id), run_id, run.info.experiment_id, threads, run.data.tags
    )


# --- the comparison ---------------------------------------------------------------------------


@dataclass
class Comparison:
    table: pd.DataFrame             # metric, points, max_abs_diff, note
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return float(self.table["max_abs_diff"].max()) if len(self.table) else math.nan

    @property
    def exact(self) -> bool:
        return len(self.table) > 0 and self.max_abs_diff == 0 and not self.notes

    def summary(self) -> str:
        if not len(self.table):
            return "no recorded curves to compare with"
        values = int(self.table["points"].sum())
        verdict = "bitwise equal" if self.exact else "different"
        return f"largest absolute difference over {len(self.table)} curves ({values} values): {self.max_abs_diff:.3g} ({verdict})"


def compare_curves(recorded: Curves, rerun: Curves) -> Comparison:
    """The largest absolute difference of every recorded curve, step by step. A step present in
    one run only, or a value finite in one and not the other, counts as an infinite difference."""
    rows, notes = [], []
    for key in sorted(set(recorded) | set(rerun)):
        old, new = dict(recorded.get(key, [])), dict(rerun.get(key, []))
        if set(old) != set(new):
            notes.append(f"{key}: recorded {len(old)} values, the rerun {len(new)}")
        diffs = [_difference(old.get(step), new.get(step)) for step in set(old) | set(new)]
        rows.append({"metric": key, "points": len(diffs), "max_abs_diff": max(diffs, default=0.0)})
    return Comparison(pd.DataFrame(rows, columns=["metric", "points", "max_abs_diff"]), notes)


def _difference(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.inf
    if a == b:  # infinities included
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)


def describe_imports(imports: Sequence[Import]) -> list[str]:
    return [f"{i.setting}: {mask_text(i.name)}" for i in imports]


# --- the rerun --------------------------------------------------------------------------------


@dataclass
class Rerun:
    result: TrialResult
    comparison: Comparison
    folder: Path                    # config.yaml, result.json, comparison.csv of the rerun
    run_id: str | None              # its MLflow run, when tracking is on


def allowed_modules(cfg: DictConfig, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Ours, the user's config's tracking.allow_modules, and `extra` (--allow-module)."""
    configured = OmegaConf.select(cfg, "tracking.allow_modules", default=None) or []
    if isinstance(configured, str) or not all(isinstance(m, str) and m for m in configured):
        raise ConfigError(f"tracking.allow_modules: {configured!r} must be a list of module names, e.g. [mypkg].")
    return (*ALLOWED_MODULES, *configured, *extra)


def rerun(source: RerunSource, cfg: DictConfig, folder: str | Path, allow_modules: Iterable[str] = ()) -> Rerun:
    """Train `source` again (its imports checked first), record it as a new run tagged
    sweeper.rerun_of, keep it in `folder` and compare its curves with the recorded ones."""
    config = source.config
    check_imports(config, allowed_modules(cfg, allow_modules))
    if source.threads and not OmegaConf.select(config, "train.threads"):
        config.train.threads = source.threads  # the same CPU summation order as the recorded run
    trainer = load_trainer(OmegaConf.create({"sweep": {"trainer": OmegaConf.select(config, "sweep.trainer", default="sweeper.trainer")}}))
    recorder = _recorder(source, cfg)
    result = trainer.train(config, [recorder] if recorder else [])
    comparison = compare_curves(source.curves, result_curves(result)) if source.curves is not None else Comparison(pd.DataFrame())

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, folder / "config.yaml")
    (folder / "result.json").write_text(json.dumps(asdict(result), indent=1))
    comparison.table.to_csv(folder / "comparison.csv", index=False)
    if recorder is not None:
        recorder.queue_tags({"rerun_max_abs_diff": repr(comparison.max_abs_diff), "rerun_exact": str(comparison.exact).lower()})
        recorder.attach("comparison.csv", (folder / "comparison.csv").read_text())
        recorder.flush()
    return Rerun(result, comparison, folder, recorder.run_id if recorder else None)


def _recorder(source: RerunSource, cfg: DictConfig) -> MlflowRecorder | None:
    """The rerun's MLflow run: in the source run's experiment, else the user's config's."""
    settings = tracking_settings(cfg)
    if settings is None:
        return None
    experiment_id = source.experiment_id or connect(settings)[1]
    # A rerun of a sweep's run is filed under that sweep's run, beside the run it repeats.
    in_sweep = source.tags.get("sweeper.kind") in SWEEP_MEMBER_KINDS and source.tags.get("mlflow.parentRunId")
    parent = source.tags["mlflow.parentRunId"] if in_sweep else None
    sweep = {"sweep": source.tags["sweep"]} if in_sweep and source.tags.get("sweep") else {}
    return MlflowRecorder(
        settings,
        source.config,
        lambda _: (experiment_id, parent),
        run_name=f"rerun of {Path(source.label).name if source.run_id is None else source.label}",
        tags={"sweeper.kind": RERUN_KIND, "sweeper.rerun_of": source.label, **sweep},
    )
