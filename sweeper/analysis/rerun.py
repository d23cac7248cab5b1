"""Exact reruns: train a recorded trial again and show how far the new curves are from the old.

    source = load_source("3f2a...", cfg)         # an MLflow run id, or a folder with config.yaml
    outcome = rerun(source, cfg, folder)         # checked, trained with the same seed, compared
    outcome.comparison.summary()                 # "... 0 (bitwise equal)"

A source is what was recorded: the config (the MLflow run's `config.yaml` artifact, or a folder's
`config.yaml`, as `sweeper train` writes under results/train/) and its curves (the run's metric
histories, or the folder's `result.json`). On CPU with `train.deterministic` on, a rerun
reproduces every step and epoch value bitwise: the largest difference is 0.

A recorded config is untrusted input (run stores are shared): `rerun` builds only what
`sweeper.boundary.recorded_config.checked_config` returns, the recorded config resolved without resolvers and
checked against sweeper's allow-list of callables (and the modules the user vouches for in
their own config or with --allow-module). Everything a rerun writes lands in the user's own
results: its folder, the user's MLflow store, the pre-training cache under results_dir/cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sweeper.boundary.recorded_config import allowed_code, checked_config, read_recorded
from sweeper.config import ConfigError
from sweeper.records.mlflow_store import TrackingSettings, connect, read_artifact, read_curves, store_client, tracking_settings
from sweeper.records.recorder import MlflowRecorder
from sweeper.records.run_record import RERUN_KIND, SWEEP_MEMBER_KINDS, result_curves
from sweeper.sweep.trainer import load_trainer
from sweeper.trial.events import EpochEvent, Reporter, StepEvent, TrialResult

__all__ = [
    "Comparison",
    "Rerun",
    "RerunSource",
    "StopAfterEpochs",
    "compare_curves",
    "load_source",
    "rerun",
]

Curves = dict[str, list[tuple[int, float]]]


@dataclass
class RerunSource:
    label: str  # the MLflow run id, or the folder
    config: DictConfig  # the config as recorded: untrusted, unresolved, unchecked
    curves: Curves | None  # the recorded curves (None: nothing to compare with)
    run_id: str | None = None  # the MLflow run, when the source is one
    experiment_id: str | None = None
    threads: int | None = None  # torch threads of the recorded run (summation order on CPU)
    tags: Mapping[str, str] = field(default_factory=dict)  # the MLflow run's tags (its sweep, its parent)
    status: str | None = None  # how the recorded trial ended (finished, pruned, ...), where recorded

    @property
    def epochs_reached(self) -> int | None:
        """The epochs the recorded trial trained (its epoch curves' length); None without curves."""
        epochs = (self.curves or {}).get("valid_loss")
        return max(step for step, _ in epochs) + 1 if epochs else None


# --- sources ----------------------------------------------------------------------------------


def load_source(source: str, cfg: DictConfig) -> RerunSource:
    """A folder (or its config.yaml) if `source` is a path, else an MLflow run id looked up in
    the store `cfg.tracking` names. Whatever was recorded is read as data, never run."""
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
    try:
        text = config_file.read_text(errors="replace")
    except OSError as error:
        raise ConfigError(f"rerun: cannot read {config_file} ({error.strerror}); give a folder you can read.") from None
    config = read_recorded(text, str(config_file))
    result_file = folder / "result.json"
    curves, status = _read_curves(result_file) if result_file.is_file() else (None, None)
    return RerunSource(str(folder), config, curves, status=status)


def _read_curves(path: Path) -> tuple[Curves, str | None]:
    """The curves and the status of a TrialResult written as JSON (dataclasses.asdict)."""
    try:
        data = json.loads(path.read_text(errors="replace"))
        steps = [StepEvent(**{**s, "lrs": tuple(s["lrs"])}) for s in data.pop("steps", [])]
        epochs = [EpochEvent(**e) for e in data.pop("epochs", [])]
        result = TrialResult(**data, steps=steps, epochs=epochs)
        curves = result_curves(result)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"{path}: not a result sweeper wrote ({error}); remove it to rerun without a comparison.") from None
    if not all(isinstance(s, int) and isinstance(v, (int, float)) for points in curves.values() for s, v in points):
        raise ConfigError(f"{path}: holds curve values that are not numbers; remove it to rerun without a comparison.")
    return curves, result.status if isinstance(result.status, str) else None


def _from_mlflow(run_id: str, settings: TrackingSettings) -> RerunSource:
    client = store_client(settings)  # reading: no experiment is made in the user's store
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow says "not found" in several ways
        raise ConfigError(
            f"rerun: no MLflow run {run_id!r} in {settings.label}; copy a run id from the MLflow UI, "
            f"give the store that holds it (tracking.uri=...), or a folder with config.yaml."
        ) from None
    text = read_artifact(settings, run_id, "config.yaml")
    if text is None:
        raise ConfigError(f"rerun: MLflow run {run_id} has no config.yaml artifact; it was not recorded by sweeper.")
    config = read_recorded(text, f"MLflow run {run_id}'s config.yaml")
    threads = _threads(read_artifact(settings, run_id, "environment.json"))
    curves = read_curves(settings, run_id)
    tags = run.data.tags
    return RerunSource(run_id, config, curves, run_id, run.info.experiment_id, threads, tags, tags.get("status"))


def _threads(environment: str | None) -> int | None:
    """Torch's thread count in a recorded environment.json (None when it holds none)."""
    try:
        threads = json.loads(environment or "{}")["torch"]["threads"]
    except (ValueError, TypeError, KeyError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


# --- the comparison ---------------------------------------------------------------------------


@dataclass
class Comparison:
    table: pd.DataFrame  # metric, points, max_abs_diff, note
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


# --- the rerun --------------------------------------------------------------------------------


@dataclass
class Rerun:
    result: TrialResult
    comparison: Comparison
    folder: Path  # config.yaml, result.json, comparison.csv of the rerun
    run_id: str | None  # its MLflow run, when tracking is on


def rerun(source: RerunSource, cfg: DictConfig, folder: str | Path, allow_modules: Iterable[str] = ()) -> Rerun:
    """Train `source` again, record it as a new run tagged sweeper.rerun_of, keep it in `folder`
    and compare its curves with the recorded ones.

    Only the checked config is built (and recorded): the recorded one resolved without resolvers,
    every import in it allowed (`allow_modules`: modules of the user's, as --allow-module), its
    pre-training cache in the user's results_dir. A refusal raises before anything is written.
    """
    config = checked_config(source.config, allowed_code(cfg, allow_modules), Path(cfg.results_dir) / "cache")
    if source.threads and not OmegaConf.select(config, "train.threads"):
        OmegaConf.update(config, "train.threads", source.threads)  # the recorded run's CPU summation order
    trainer = load_trainer(
        OmegaConf.create({"sweep": {"trainer": OmegaConf.select(config, "sweep.trainer", default="sweeper.training.engine")}})
    )
    recorder = _recorder(source, config, cfg)
    # A pruned trial trained part of its schedule: the rerun trains that part and stops where the
    # pruner stopped it, so both runs hold the same steps.
    stopped_after = source.epochs_reached if source.status == "pruned" else None
    stop = [StopAfterEpochs(stopped_after)] if stopped_after else []
    result = trainer.train(config, [*stop, *([recorder] if recorder else [])])
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


class StopAfterEpochs(Reporter):
    """Stops a trial once it has trained `epochs` epochs (frozen ones included), as a pruner did."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch(self, event: EpochEvent) -> bool:
        return event.epoch + 1 >= self.epochs


def _recorder(source: RerunSource, config: DictConfig, cfg: DictConfig) -> MlflowRecorder | None:
    """The rerun's MLflow run, of the checked `config`: in the source run's experiment, else in
    the user's config's."""
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
        config,
        lambda _: (experiment_id, parent),
        run_name=f"rerun of {Path(source.label).name if source.run_id is None else source.label}",
        tags={"sweeper.kind": RERUN_KIND, "sweeper.rerun_of": source.label, **sweep},
    )
