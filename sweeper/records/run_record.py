"""What a run records: its params, tags and metrics, derived from its config and its events.

Pure functions of a config or an event (no MLflow call here), shared by the run recorder, the
sweep's runs and the report: flattened params (slice strategy, each group's peak, shape and its
settings, model, data, seed), tags to filter by (strategy, shape, code version, status), step
metrics (`lr_<group>`, `momentum`, `loss`, x = global training batch) and epoch metrics
(`train_loss`, `valid_loss`, `valid_<metric>`, `objective`, x = epoch).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper.boundary.recorded_config import ALLOWED_CALLABLES
from sweeper.boundary.renamed import current_name
from sweeper.records.environment import git_state
from sweeper.trial.events import EpochEvent, StartEvent, StepEvent, TrialResult
from sweeper.trial.spec import TRIAL_NODES

__all__ = [
    "ABLATION_KIND",
    "CONFIRM_KIND",
    "RERUN_KIND",
    "RUN_STATUS",
    "SWEEP_KIND",
    "SWEEP_MEMBER_KINDS",
    "SWEEP_NODES",
    "TRIAL_KIND",
    "TRIAL_NODES",
    "code_tags",
    "ended_label",
    "epoch_metrics",
    "flatten",
    "plain_config",
    "result_curves",
    "run_label",
    "run_params",
    "run_tags",
    "runs_filter",
    "shape_name_of",
    "step_metrics",
    "strategy_of",
]

# TrialResult.status -> MLflow run status. A pruned trial was stopped on purpose, by the pruner:
# it ended as planned (FINISHED, not a crash); its name and its `status` tag say it was pruned.
RUN_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
# Run kinds (tag sweeper.kind): a filter on it shows one kind alone, e.g. the trials of a sweep.
SWEEP_KIND, TRIAL_KIND, CONFIRM_KIND, ABLATION_KIND, RERUN_KIND = "sweep", "trial", "confirm", "ablation", "rerun"


def runs_filter(sweep: str, kind: str | None = None, *, not_kinds: Iterable[str] = (), tags: Mapping[str, str] | None = None) -> str:
    """MLflow's filter string for the runs of a sweep: of one kind (tag sweeper.kind), none of
    `not_kinds`, and holding these `tags`. Its values are names sweeper checked (sweep names,
    kinds, its own tags), so they need no quoting."""
    clauses = [*([f"tags.`sweeper.kind` = '{kind}'"] if kind else []), f"tags.sweep = '{sweep}'"]
    clauses += [f"tags.`sweeper.kind` != '{other}'" for other in not_kinds]
    clauses += [f"tags.{key} = '{value}'" for key, value in (tags or {}).items()]
    return " and ".join(clauses)


# The kinds filed under a sweep's run.
SWEEP_MEMBER_KINDS = (TRIAL_KIND, CONFIRM_KIND, ABLATION_KIND, RERUN_KIND)
# Config nodes that describe the sweep around a trial (a trial's own are TRIAL_NODES).
SWEEP_NODES = ("search", "sampler", "pruner", "storage")


# --- what a run records -----------------------------------------------------------------------


def step_metrics(event: StepEvent) -> dict[str, float]:
    """The metrics of one training batch (MLflow step = global batch index)."""
    values = {f"lr_{group}": lr for group, lr in enumerate(event.lrs)}
    if event.momentum is not None:
        values["momentum"] = event.momentum
    values["loss"] = event.loss
    return values


def epoch_metrics(event: EpochEvent) -> dict[str, float]:
    """The metrics of one epoch (MLflow step = epoch index)."""
    values = {f"valid_{name}": value for name, value in event.metrics.items()}
    values.update(train_loss=event.train_loss, valid_loss=event.valid_loss, objective=event.objective)
    return values


def result_curves(result: TrialResult) -> dict[str, list[tuple[int, float]]]:
    """Every curve a run of `result` records, as MLflow would hold it: key -> [(step, value)]."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step in result.steps:
        for key, value in step_metrics(step).items():
            curves[key].append((step.step, value))
    for epoch in result.epochs:
        for key, value in epoch_metrics(epoch).items():
            curves[key].append((epoch.epoch, value))
    return dict(curves)


def plain_config(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The config as plain containers, resolved; a node that cannot resolve (an unset variable
    of a setting this run does not use) is kept as written rather than failing the record."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        plain = {}
        for key in cfg:
            try:
                plain[key] = OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            except OmegaConfBaseException:
                plain[key] = OmegaConf.to_container(cfg, resolve=False)[key]
        return plain


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"shape.pct_start": "0.25", ...}; lists stay whole, as text."""
    if not isinstance(node, Mapping):
        return {prefix.rstrip("."): _text(node)}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": _text(value)})
    return flat


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def strategy_of(config: Mapping) -> str:
    from sweeper.schedules.slices import SliceError, parse_lr

    try:
        return parse_lr(config.get("lr")).strategy
    except (SliceError, TypeError):
        return "unknown"


def shape_name_of(config: Mapping) -> str:
    """The shape's name: its config's `name` (`fastai_fine_tune`, which is a FastaiOneCycle with
    other settings), else the class's `name`, else its class name."""
    node = config.get("shape") or {}
    if node.get("name"):
        return str(node["name"])
    target = str(current_name(node.get("_target_", "unknown")))
    if target not in ALLOWED_CALLABLES:  # a record's name is never imported to be named
        return target.rsplit(".", 1)[-1]
    try:
        from hydra.utils import get_object

        return str(getattr(get_object(target), "name", target.rsplit(".", 1)[-1]))
    except Exception:  # noqa: BLE001 - a name for the record only; the trainer reports real errors
        return target.rsplit(".", 1)[-1]


def run_label(prefix: str, cfg: DictConfig | Mapping) -> str:
    """A run's name by what differs between trials: `trial 3 · geometric · warmup_cosine · 3.2e-03`."""
    config = plain_config(cfg)
    high = (config.get("lr") or {}).get("high")
    parts = [prefix, strategy_of(config), shape_name_of(config)]
    if isinstance(high, (int, float)):
        parts.append(f"{high:.2g}")
    return " · ".join(parts)


def ended_label(label: str, status: str) -> str:
    """A run's name once it ended early, its status right after its number (`trial 3 · pruned ·
    geometric · ...`): the MLflow UI's narrow run-name column cuts a name's end off."""
    head, separator, rest = label.partition(" · ")
    return f"{head} · {status}{separator}{rest}"


def run_params(config: Mapping, event: StartEvent | None = None) -> dict[str, str]:
    """A trial's params: its config nodes flattened, and what they amount to (peaks, names)."""
    params = flatten({key: config[key] for key in TRIAL_NODES if key in config})
    train = config.get("train") or {}
    params.update(
        strategy=strategy_of(config),
        shape=shape_name_of(config),
        model=str((config.get("model") or {}).get("name", "")),
        data=str((config.get("data") or {}).get("name", "")),
        seed=str(train.get("seed", "")),
    )
    if event is not None:
        params.update({f"peak_lr_{group}": repr(peak) for group, peak in enumerate(event.peaks)})
        params.update(n_groups=str(event.n_groups), total_steps=str(event.total_steps))
    return params


def code_tags() -> dict[str, str]:
    """The code version a run ran (git commit, "-dirty" when the tree had changes)."""
    git = git_state()
    tags = {"code_version": git.code_version}
    if git.commit:
        tags["mlflow.source.git.commit"] = git.commit  # the MLflow UI shows it as the run's source
    if git.dirty is not None:
        tags["git_dirty"] = str(git.dirty).lower()
    return tags


def run_tags(config: Mapping) -> dict[str, str]:
    """Tags to filter runs by in the MLflow UI (`tags.strategy = 'geometric'`)."""
    return {
        "strategy": strategy_of(config),
        "shape": shape_name_of(config),
        "model": str((config.get("model") or {}).get("name", "")),
        "data": str((config.get("data") or {}).get("name", "")),
        "seed": str((config.get("train") or {}).get("seed", "")),
        "status": "running",
        **code_tags(),
    }
