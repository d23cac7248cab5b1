"""MLflow records: a parent run per sweep, a nested child run per trial, a run per `sweeper train`.

    tracking = prepare_sweep(cfg, "mlp-digits")            # the parent process, before workers
    reporter = tracking.trial_reporter(7, trial_cfg, overrides, {"worker": "host:123"})
    train(trial_cfg, [reporter, ...])                      # in a worker: a nested child run
    tracking.finish(study)                                 # the comparison report, parent ended

Every run gets flattened params (slice strategy, low/high, each group's peak, shape and its
settings, model, data, seed, ...), tags to filter by (strategy, shape, device, sweep, trial, code
version, status, pruned, diverged), step metrics (`lr_<group>`, `momentum`, `loss`, x = global
training batch), epoch metrics (`train_loss`, `valid_loss`, `valid_<metric>`, `objective`,
x = epoch) and artifacts (`config.yaml`, the resolved config; `environment.json`; `schedule.png`,
the lr of every group and the momentum the run actually used).

How it talks to MLflow, and why:
- `MlflowClient` with explicit run ids, never the fluent API's active run: workers are processes
  and one process may hold several recorders.
- Buffered: steps are queued and sent with `log_batch` (at most 1000 entities a call) when an
  epoch ends and when the run ends, never one round trip per step.
- A tracking store that cannot be reached never fails a trial: the records stay queued, one
  clear warning is logged, and the next flush tries again (a run that ended meanwhile is sent
  with the next flush of any run in this process, or when the process exits).
- Nothing secret is recorded: every param, tag and text artifact goes through `mask_text`.
- `tracking.enabled: false` makes every entry point a no-op.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from sweeper.config import ConfigError
from sweeper.environment import describe_environment, git_state
from sweeper.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult
from sweeper.secrets import MASK, mask_text, mask_url
from sweeper.settings import whole

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from sweeper.report import Report

__all__ = [
    "RUN_STATUS",
    "TRIAL_NODES",
    "MlflowRecorder",
    "SweepTracking",
    "TrackingSettings",
    "check_server",
    "connect",
    "epoch_metrics",
    "mlflow_calls",
    "mlflow_client",
    "store_client",
    "find_sweep_run",
    "open_sweep",
    "prepare_sweep",
    "read_artifact",
    "read_curves",
    "record_run",
    "result_curves",
    "step_metrics",
    "sweep_folder",
    "tracking_settings",
    "trial_reporter",
]

logger = logging.getLogger(__name__)

# TrialResult.status -> MLflow run status. A pruned trial was stopped on purpose, by the pruner:
# it ended as planned (FINISHED, not a crash); its name and its `status` tag say it was pruned.
RUN_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
# Run kinds (tag sweeper.kind): a filter on it shows one kind alone, e.g. the trials of a sweep.
SWEEP_KIND, TRIAL_KIND, CONFIRM_KIND, ABLATION_KIND, RERUN_KIND = "sweep", "trial", "confirm", "ablation", "rerun"
# The kinds filed under a sweep's run.
SWEEP_MEMBER_KINDS = (TRIAL_KIND, CONFIRM_KIND, ABLATION_KIND, RERUN_KIND)
# MLflow's limits per log_batch call and per value.
MAX_ENTITIES_PER_CALL = 1000
MAX_PARAMS_OR_TAGS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
# How long a process that ends with records unsent waits for the store to come back, and how often it tries.
EXIT_WAIT_SECONDS = 60
EXIT_RETRY_SECONDS = 2
# Config nodes that describe one trial (its params), and those that describe the sweep around it.
TRIAL_NODES = ("lr", "shape", "model", "data", "task", "optimizer", "train")
SWEEP_NODES = ("search", "sampler", "pruner", "storage")


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingSettings:
    """The `tracking` config node, checked, with embedded paths made absolute (workers agree)."""

    uri: str
    experiment: str
    artifacts: str | None           # artifact location of a new experiment (None: the server's)
    request_timeout: int
    request_retries: int
    results_dir: str
    schedule_plot: bool = True      # draw each run's schedule.png (~0.1 s a run) as it ends

    @property
    def label(self) -> str:
        return mask_url(self.uri)

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))


def tracking_settings(cfg: DictConfig) -> TrackingSettings | None:
    """The checked tracking settings, or None when tracking is off."""
    node = cfg.get("tracking")
    if node is None or not node.get("enabled", False):
        return None
    if not isinstance(node.enabled, bool):
        raise ConfigError(f"tracking.enabled: {node.enabled!r} must be true or false.")
    try:
        uri = node.uri
    except InterpolationResolutionError as error:
        raise ConfigError(
            f"tracking.uri: {error}; export it first (export MLFLOW_TRACKING_URI=http://host:5000 "
            f"for a tracking server), or use tracking=local (embedded, under results/) or tracking=none."
        ) from None
    if not uri:
        raise ConfigError(
            "tracking.uri: empty; give sqlite:///PATH (embedded) or http(s)://host:port (a tracking "
            "server), or turn tracking off with tracking=none."
        )
    experiment = node.get("experiment")
    if not experiment:
        raise ConfigError("tracking.experiment: empty; name the MLflow experiment, e.g. tracking.experiment=digits.")
    timeout, retries = node.get("request_timeout", 10), node.get("request_retries", 1)
    whole("tracking.request_timeout", timeout, 1, unit="whole seconds", example=10)
    whole("tracking.request_retries", retries, 0, example=1)
    schedule_plot = node.get("schedule_plot", True)
    if not isinstance(schedule_plot, bool):
        raise ConfigError(f"tracking.schedule_plot: {schedule_plot!r} must be true or false.")
    artifacts = node.get("artifacts")
    return TrackingSettings(
        uri=_absolute_sqlite(str(uri)),
        experiment=str(experiment),
        artifacts=Path(artifacts).resolve().as_uri() if artifacts else None,
        request_timeout=timeout,
        request_retries=retries,
        results_dir=str(cfg.get("results_dir", "results")),
        schedule_plot=schedule_plot,
    )


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///results/mlflow.db means a path relative to the working directory: pin it."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    path = Path(uri.removeprefix(prefix)).resolve()
    return f"sqlite:///{path}"


def sweep_folder(holder: DictConfig | SweepTracking, sweep: str) -> Path:
    """Where a sweep's files go (worker logs, reports, confirmations): results/sweeps/<sweep>/."""
    results = holder.results_dir if isinstance(holder, SweepTracking) else holder.get("results_dir", "results")
    return Path(results) / "sweeps" / sweep


# --- the connection ---------------------------------------------------------------------------


@functools.cache
def mlflow_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextmanager
def mlflow_calls(settings: TrackingSettings) -> Iterator[None]:
    """Around every call to MLflow. Its HTTP client retries a failed request for about four
    minutes by default; a trial must not stall that long on a server that is down (its records
    are kept and sent later anyway), so requests here are quick (a user's own
    MLFLOW_HTTP_REQUEST_* settings win). And MLflow prints a link to each run it ends, built
    from the tracking URL, password included, and progress bars for downloads: both are off."""
    quick = {  # defaults: a user's own settings win
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.request_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.request_timeout),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    quiet = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {name: os.environ.get(name) for name in (*quick, *quiet)}
    os.environ.update({name: value for name, value in quick.items() if saved[name] is None})
    os.environ.update(quiet)
    # urllib3 logs every retry; one warning of ours says it better.
    retries_log = logging.getLogger("urllib3.connectionpool")
    level = retries_log.level
    retries_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries_log.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(settings: TrackingSettings, *, create: bool = True) -> tuple[MlflowClient, str]:
    """A client and the experiment's id, the experiment (and an embedded store) created if new,
    unless `create` is false (reading an existing sweep). A store that cannot be reached is a
    ConfigError, raised before anything is created elsewhere."""
    return _reach(settings, create, lambda client: _experiment_id(client, settings, create))


def store_client(settings: TrackingSettings) -> MlflowClient:
    """A client of an existing store, for reading a run by its id (no experiment is made)."""
    client, _ = _reach(settings, False, lambda client: client.search_experiments(max_results=1))
    return client


def _reach(settings: TrackingSettings, create: bool, first_call: Callable[[MlflowClient], Any]) -> tuple[MlflowClient, Any]:
    try:
        with _embedded_store_lock(settings, create), mlflow_calls(settings):
            client = mlflow_client(settings.uri)
            return client, first_call(client)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here means the store is not usable
        if not settings.is_server:
            raise ConfigError(
                f"tracking.uri: cannot read the MLflow store {settings.label}: {_one_line(error)}; it is damaged "
                f"or not an MLflow store: move it aside to start afresh, or point tracking.uri at the sweep's store."
            ) from None
        raise ConfigError(
            f"tracking.uri: cannot reach MLflow at {settings.label}: {_one_line(error)}; start the "
            f"server (mlflow server --port 5000 ...: loopback only, unless --host opens it to other "
            f"machines) and check the URL, or use tracking=local (embedded, under results/) or tracking=none."
        ) from None


@contextmanager
def _embedded_store_lock(settings: TrackingSettings, create: bool) -> Iterator[None]:
    """An embedded SQLite store is created (schema migrations) by the first process that opens
    it; two that do so at once fail. One at a time, under a file lock beside it."""
    if not settings.uri.startswith("sqlite:///"):
        yield
        return
    path = Path(settings.uri.removeprefix("sqlite:///"))
    if not create and not path.exists():
        raise ConfigError(
            f"tracking.uri: there is no MLflow store at {path}; run the command in the folder the runs "
            f"were recorded in, or point tracking.uri at their store."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client: MlflowClient, settings: TrackingSettings, create: bool = True) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(settings.experiment)
    if found is None and not create:
        raise ConfigError(
            f"tracking.experiment: MLflow at {settings.label} has no experiment {settings.experiment!r}; "
            f"point tracking.uri at the store the sweep recorded to."
        )
    if found is None:
        try:
            # The kind makes the MLflow UI open the experiment on its runs (training), not on traces.
            tags = {"mlflow.experimentKind": "custom_model_development"}
            return client.create_experiment(settings.experiment, artifact_location=settings.artifacts, tags=tags)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another process won the race
                raise
            found = client.get_experiment_by_name(settings.experiment)
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"tracking.experiment: {settings.experiment!r} was deleted in MLflow; restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or pick another "
            f"name with tracking.experiment=..."
        )
    return found.experiment_id


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return mask_text(text[0] if text else type(error).__name__)[:300]


class _Outage:
    """Which stores are down, so each outage is reported once, and its end once."""

    down: set[str] = set()

    @classmethod
    def failed(cls, settings: TrackingSettings, error: BaseException) -> None:
        if settings.uri in cls.down:
            return
        cls.down.add(settings.uri)
        logger.warning(
            "sweeper: MLflow tracking at %s cannot be reached (%s). Training goes on; the records "
            "are kept in memory and sent when it is back.",
            settings.label,
            _one_line(error),
        )

    @classmethod
    def recovered(cls, settings: TrackingSettings) -> None:
        if settings.uri in cls.down:
            cls.down.discard(settings.uri)
            logger.warning("sweeper: MLflow tracking at %s answers again; the records kept meanwhile were sent.", settings.label)


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
    from sweeper.slices import SliceError, parse_lr

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
    target = str(node.get("_target_", "unknown"))
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


# --- the recorder -----------------------------------------------------------------------------

# (experiment id, parent run id or None) for the run, asked of the store when first needed
Locate = Callable[["MlflowClient"], "tuple[str, str | None]"]


class MlflowRecorder(Reporter):
    """Records one run (a trial, a `sweeper train`, a rerun) through a buffer; see the module doc.

    The run itself is created at the first flush that reaches the store, so a store that is down
    when a trial starts delays its record instead of losing it. `run_id` is None until then.
    """

    def __init__(
        self,
        settings: TrackingSettings,
        cfg: DictConfig | Mapping | None,
        locate: Locate,
        *,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
        run_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_id            # given: record into that existing run
        self._cfg = cfg
        self._locate = locate
        self._run_name = mask_text(run_name) if run_name else None
        self._start_ms: int | None = None
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._metrics: list[Any] = []
        self._artifacts: dict[str, bytes] = {}
        self._status: tuple[str, int] | None = None  # (MLflow status, end time) once ended
        self.queue_tags(tags or {})
        if overrides:
            self.queue_tags({"overrides": " ".join(overrides)})

    # Reporter events. They never raise: a recording problem must not end a trial.

    def on_start(self, event: StartEvent) -> None:
        with _never_raises("start"):
            self._start_ms = _now_ms()
            config = plain_config(self._cfg) if self._cfg is not None else event.config
            self.queue_params(run_params(config, event))
            # The tags given at creation (sweep, trial, extra tags) win over the derived ones.
            self.queue_tags({**run_tags(config), "device": event.device, **self._tags})
            self.record_config(config, event.device)
        self.flush()  # the run shows up (as running) before its first batch

    def on_step(self, event: StepEvent) -> None:
        with _never_raises("step"):
            self._queue_metrics(step_metrics(event), event.step)

    def on_epoch(self, event: EpochEvent) -> None:
        with _never_raises("epoch"):
            self._queue_metrics(epoch_metrics(event), event.epoch)
        self.flush()

    def on_end(self, result: TrialResult) -> None:
        with _never_raises("end"):
            self.queue_tags(
                {
                    "status": result.status,
                    "pruned": str(result.status == "pruned").lower(),
                    "diverged": str(result.status == "diverged").lower(),
                    "seconds": f"{result.seconds:.3f}",
                    **({"reason": result.reason} if result.reason else {}),
                    **({"diverged_step": str(result.diverged_step)} if result.diverged_step is not None else {}),
                }
            )
            if result.status != "finished" and self._run_name:
                # Seen in the runs list at a glance: "trial 3 · geometric · ... · pruned".
                self.queue_tags({"mlflow.runName": f"{self._run_name} · {result.status}"})
            if result.steps and self.settings.schedule_plot:
                self._artifacts["schedule.png"] = _schedule_png(result)
            self._status = (RUN_STATUS.get(result.status, "FAILED"), _now_ms())
        if not self.flush():
            _Unsent.keep(self)

    # The buffer. Everything recorded passes through mask_text here.

    def attach(self, name: str, data: bytes | str) -> None:
        """Queue an artifact (sent with the next flush)."""
        self._artifacts[name] = mask_text(data).encode() if isinstance(data, str) else data

    def record_config(self, config: Mapping, device: str | None = None) -> None:
        """Queue the resolved config (config.yaml) and where the run ran (environment.json)."""
        self.attach("config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(config))))
        self.attach("environment.json", json.dumps(describe_environment(device), indent=1))

    def queue_params(self, params: Mapping[str, Any]) -> None:
        self._params.update({key: mask_text(str(value))[:MAX_PARAM_LENGTH] for key, value in params.items()})

    def queue_tags(self, tags: Mapping[str, Any]) -> None:
        self._tags.update({key: mask_text(str(value))[:MAX_TAG_LENGTH] for key, value in tags.items()})

    def _queue_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self._metrics.extend(Metric(key, float(value), now, step) for key, value in values.items())

    def flush(self) -> bool:
        """Send everything queued; False when the store cannot be reached (all of it is kept)."""
        _Unsent.retry(self.settings)
        return self._deliver()

    def _deliver(self) -> bool:
        try:
            self.send()
        except Exception as error:  # noqa: BLE001 - a store that is down, full or refusing: retry later
            _Outage.failed(self.settings, error)
            return False
        _Outage.recovered(self.settings)
        return True

    def send(self) -> None:
        """Send everything queued now; raises if the store fails (flush() keeps it for later)."""
        with mlflow_calls(self.settings):
            self._send(mlflow_client(self.settings.uri))

    def _send(self, client: MlflowClient) -> None:
        from mlflow.entities import Param, RunTag

        if self.run_id is None:
            experiment_id, parent = self._locate(client)
            tags = {"mlflow.parentRunId": parent} if parent else {}
            run = client.create_run(experiment_id, start_time=self._start_ms or _now_ms(), tags=tags, run_name=self._run_name)
            self.run_id = run.info.run_id
        # Each call sends one chunk and only then drops it, so a failure part way resends nothing twice.
        while self._params or self._tags or self._metrics:
            params = list(self._params.items())[:MAX_PARAMS_OR_TAGS_PER_CALL]
            tags = list(self._tags.items())[:MAX_PARAMS_OR_TAGS_PER_CALL]
            metrics = self._metrics[: MAX_ENTITIES_PER_CALL - len(params) - len(tags)]
            client.log_batch(
                self.run_id,
                metrics=metrics,
                params=[Param(k, v) for k, v in params],
                tags=[RunTag(k, v) for k, v in tags],
            )
            for key, _ in params:
                del self._params[key]
            for key, _ in tags:
                del self._tags[key]
            del self._metrics[: len(metrics)]
        for name in list(self._artifacts):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / name
                path.write_bytes(self._artifacts[name])
                client.log_artifact(self.run_id, str(path))
            del self._artifacts[name]
        if self._status is not None:
            client.set_terminated(self.run_id, status=self._status[0], end_time=self._status[1])
            self._status = None


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def _never_raises(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - tracking must never end a trial; say what went wrong
        logger.exception("sweeper: recording the %s of a run in MLflow failed; training goes on", what)


@dataclass(frozen=True)
class _RecordedSchedule:
    """The lr of every group and the momentum a run used, in the shape plot_schedule draws."""

    steps: Sequence[StepEvent]

    @property
    def peaks(self) -> tuple[float, ...]:
        return tuple(max(step.lrs[g] for step in self.steps) for g in range(len(self.steps[0].lrs)))

    @property
    def total(self) -> int:
        return len(self.steps)

    def rows(self) -> list[dict[str, float | int | None]]:
        return [
            {"step": s.step, **{f"lr_{g}": lr for g, lr in enumerate(s.lrs)}, "momentum": s.momentum}
            for s in self.steps
        ]


def _schedule_png(result: TrialResult) -> bytes:
    from sweeper.plots import schedule_png

    return schedule_png(_RecordedSchedule(result.steps), title="lr of every layer group, as run")


class _Unsent:
    """Runs that ended while the store was down: sent with the next flush of any run in this
    process, or when the process exits."""

    recorders: list[MlflowRecorder] = []

    @classmethod
    def keep(cls, recorder: MlflowRecorder) -> None:
        if recorder not in cls.recorders:
            cls.recorders.append(recorder)

    @classmethod
    def retry(cls, settings: TrackingSettings | None = None) -> None:
        for recorder in list(cls.recorders):
            if settings is not None and recorder.settings.uri != settings.uri:
                continue
            if not recorder._deliver():
                return  # still down: the others would fail alike
            cls.recorders.remove(recorder)

    @classmethod
    def at_exit(cls) -> None:
        cls.retry()
        if cls.recorders:
            # A store that went down near the end of a sweep (a server restarting) would take
            # these records with it: give it a while to come back before the process ends.
            logger.warning(
                "sweeper: MLflow at %s is out of reach with the records of %d run(s) unsent; "
                "waiting up to %d s for it before this process ends.",
                cls.recorders[0].settings.label, len(cls.recorders), EXIT_WAIT_SECONDS,
            )
            deadline = time.monotonic() + EXIT_WAIT_SECONDS
            while cls.recorders and time.monotonic() < deadline:
                time.sleep(EXIT_RETRY_SECONDS)
                cls.retry()
        for recorder in cls.recorders:
            logger.warning(
                "sweeper: MLflow at %s was not reachable before this process ended; run %s lost "
                "the records it had not sent.",
                recorder.settings.label,
                recorder.run_id or "(never created)",
            )


atexit.register(_Unsent.at_exit)


# --- sweeps -----------------------------------------------------------------------------------


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep: str) -> Any | None:
    """The parent run of a sweep (the newest, should there be several), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`sweeper.kind` = '{SWEEP_KIND}' and tags.sweep = '{sweep}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


@dataclass(frozen=True)
class RecordsAudit:
    """What a sweep's records lack at its end (SweepTracking.audit)."""

    closed: Sequence[str] = ()      # runs left RUNNING by stopped workers, now ended (KILLED)
    lost: Sequence[int] = ()        # finished trials without a finished MLflow run
    unread: str | None = None       # why the store could not be checked

    @property
    def complete(self) -> bool:
        return not self.lost and self.unread is None

    def lines(self) -> list[str]:
        found = [f"ended {len(self.closed)} run(s) left running by stopped workers: {', '.join(self.closed)}"] if self.closed else []
        if self.lost:
            found.append(f"MLflow lacks the records of finished trial(s) {', '.join(map(str, self.lost))}; see the worker logs")
        if self.unread:
            found.append(self.unread)
        return found


class _Parents:
    """Parent run ids found in this process, so each worker asks the store only once."""

    found: dict[tuple[str, str, str], tuple[str, str | None]] = {}


@dataclass(frozen=True)
class SweepTracking:
    """A sweep's MLflow records: picklable, so it may travel to worker processes.

    `settings` is None when tracking is off: every method is then a no-op, except that `finish`
    still writes the comparison report to the sweep's folder.
    """

    settings: TrackingSettings | None
    sweep: str
    experiment_id: str | None = None
    parent_run_id: str | None = None
    results_dir: str = "results"

    def location(self) -> dict[str, str] | None:
        """Where the sweep's runs are, as its study records it (the URL's password masked):
        everything after the sweep (report, confirm, rerun, ui) files its runs there."""
        if self.settings is None:
            return None
        return {
            "uri": self.settings.label,
            "experiment": self.settings.experiment,
            "experiment_id": self.experiment_id or "",
            "parent_run_id": self.parent_run_id or "",
        }

    def trial_reporter(
        self,
        trial_number: int,
        trial_cfg: DictConfig | Mapping,
        overrides: Sequence[str] = (),
        extra_tags: Mapping[str, Any] | None = None,
    ) -> Reporter:
        """The Reporter that records one trial as a child run of the sweep's run."""
        tags = {"trial": str(trial_number), **(extra_tags or {})}
        return self.run_reporter(trial_cfg, TRIAL_KIND, run_label(f"trial {trial_number}", trial_cfg), tags, overrides)

    def run_reporter(
        self,
        cfg: DictConfig | Mapping,
        kind: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
    ) -> Reporter:
        """A Reporter recording a run of `kind` (trial, confirm) under the sweep's run, in the
        sweep's store (wherever `cfg` itself would record)."""
        if self.settings is None:
            return Reporter()
        tags = {"sweeper.kind": kind, "sweep": self.sweep, **(tags or {})}
        return MlflowRecorder(self.settings, cfg, self.locate, run_name=run_name, tags=tags, overrides=overrides)

    def locate(self, client: MlflowClient) -> tuple[str, str | None]:
        """(experiment id, parent run id) of the sweep, asked of the store once per process."""
        if self.experiment_id and self.parent_run_id:
            return self.experiment_id, self.parent_run_id
        key = (self.settings.uri, self.settings.experiment, self.sweep)
        if key not in _Parents.found:
            experiment_id = self.experiment_id or _experiment_id(client, self.settings)
            parent = find_sweep_run(client, experiment_id, self.sweep)
            # No parent run (the sweep began with tracking off): the trial is recorded unnested.
            _Parents.found[key] = (experiment_id, parent.info.run_id if parent else None)
        return _Parents.found[key]

    def trial_runs(self) -> dict[int, str]:
        """Trial number -> MLflow run id of this sweep's trials (a retried number: its newest run)."""
        if self.settings is None:
            return {}
        with mlflow_calls(self.settings):
            client = mlflow_client(self.settings.uri)
            experiment_id, _ = self.locate(client)
            runs = _search_all(client, experiment_id, f"tags.`sweeper.kind` = '{TRIAL_KIND}' and tags.sweep = '{self.sweep}'")
        ordered = sorted(runs, key=lambda run: run.info.start_time)
        return {int(run.data.tags["trial"]): run.info.run_id for run in ordered if run.data.tags.get("trial", "").isdigit()}

    def audit(self, study: optuna.Study) -> RecordsAudit:
        """After the workers: end the sweep's runs left RUNNING whose trial is no longer running
        (a worker that died or was stopped mid-trial: KILLED), and find the finished trials
        MLflow holds no finished run for (records lost)."""
        if self.settings is None or self.parent_run_id is None:
            return RecordsAudit()
        try:
            return self._audit(study)
        except Exception as error:  # noqa: BLE001 - a store that cannot be read cannot show the records are there
            return RecordsAudit(unread=f"MLflow at {self.settings.label} could not be read to check the records ({_one_line(error)})")

    def _audit(self, study: optuna.Study) -> RecordsAudit:
        from mlflow.entities import RunTag
        from optuna.trial import TrialState

        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        with mlflow_calls(self.settings):
            client = mlflow_client(self.settings.uri)
            runs = _search_all(client, self.experiment_id, f"tags.sweep = '{self.sweep}'")
            closed = []
            for run in runs:
                trial = trials.get(int(run.data.tags.get("trial", -1))) if run.data.tags.get("sweeper.kind") == TRIAL_KIND else None
                if run.info.status == "RUNNING" and run.info.run_id != self.parent_run_id and (
                    trial is None or trial.state != TrialState.RUNNING
                ):
                    client.log_batch(run.info.run_id, tags=[RunTag("status", "killed")])
                    client.set_terminated(run.info.run_id, status="KILLED")
                    closed.append(run.data.tags.get("mlflow.runName", run.info.run_id))
        recorded = {
            int(run.data.tags["trial"])
            for run in runs
            if run.data.tags.get("sweeper.kind") == TRIAL_KIND and run.info.status == "FINISHED" and "objective" in run.data.metrics
        }
        finished = [n for n, t in trials.items() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        return RecordsAudit(closed, sorted(set(finished) - recorded))

    def finish(self, study: optuna.Study, status: str = "FINISHED") -> Path:
        """At the sweep's end: write the comparison report, attach it to the sweep's run and end
        that run (`status`: FINISHED, or KILLED for a sweep stopped early). Returns the folder."""
        from sweeper.report import write_report

        report = write_report(study, sweep_folder(self, self.sweep), tracking=self)
        self.attach_report(report, status)
        return report.folder

    def end(self, status: str) -> None:
        """End the sweep's run (FINISHED, KILLED) without a report."""
        self.attach_files([], "report", {"status": status.lower()}, status)

    def attach_report(self, report: Report, end_status: str | None = None) -> None:
        """Attach a written report to the sweep's run (under report/); its summary becomes the
        run's description. `end_status` also ends the run. A store that is down only warns."""
        tags = {"mlflow.note.content": report.summary, "trials": str(len(report.trials))}
        if end_status is not None:
            tags["status"] = end_status.lower()
        self.attach_files(report.files, "report", tags, end_status, sweep_metrics(report))

    def attach_files(
        self,
        files: Iterable[Path],
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        end_status: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Attach files (and set tags and metrics) to the sweep's run; `end_status` also ends it."""
        if self.settings is None or self.parent_run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        try:
            with mlflow_calls(self.settings):
                client = mlflow_client(self.settings.uri)
                for path in files:
                    client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path)
                now = _now_ms()
                client.log_batch(
                    self.parent_run_id,
                    metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
                    tags=[RunTag(key, mask_text(value)[:MAX_TAG_LENGTH]) for key, value in (tags or {}).items()],
                )
                if end_status is not None:
                    client.set_terminated(self.parent_run_id, status=end_status)
        except Exception as error:  # noqa: BLE001 - the files are on disk; the record is a copy
            logger.warning(
                "sweeper: could not attach files to MLflow run %s at %s (%s); they are on disk.",
                self.parent_run_id, self.settings.label, _one_line(error),
            )


def sweep_metrics(report: Report) -> dict[str, float]:
    """The sweep's outcome as metrics of its run, so the runs table shows it: trial counts, the
    best objective overall, per slice strategy and per cycle shape (over complete trials)."""
    counts = report.trials["state"].value_counts() if len(report.trials) else {}
    metrics = {f"trials_{state}": float(counts.get(state, 0)) for state in ("complete", "pruned", "failed")}
    objective = report.objective
    for by, table in (("strategy", report.by_strategy), ("shape", report.by_shape)):
        for _, row in table.iterrows() if len(table) else ():
            if row["best"] == row["best"]:  # not NaN: the group has a complete trial
                metrics[f"best_{objective}_{by}_{row[by]}"] = float(row["best"])
    best = [value for key, value in metrics.items() if key.startswith(f"best_{objective}_strategy_")]
    if best:
        metrics[f"best_{objective}"] = max(best) if report.direction == "maximize" else min(best)
    return metrics


def open_sweep(cfg: DictConfig, study: optuna.Study) -> SweepTracking:
    """The records of an existing sweep, where the sweep recorded them (its study says), not
    where today's config would put a new one: `report`, `confirm` and `ui` of any sweep, run
    from anywhere, find its experiment and file their runs under its parent run. `cfg` gives
    what is not the sweep's: how to talk to the store, and the URL's password (a recorded URL
    has it masked)."""
    results_dir = str(cfg.get("results_dir", "results"))
    recorded = study.user_attrs.get("tracking", "unknown")
    if recorded is None:  # the sweep ran with tracking off
        return SweepTracking(None, study.study_name, results_dir=results_dir)
    settings = tracking_settings(cfg)
    if isinstance(recorded, Mapping):
        settings = _recorded_settings(recorded, settings, cfg)
    elif settings is not None:  # a sweep from before locations were recorded: its experiment bore its name
        settings = replace(settings, experiment=study.study_name)
    if settings is None:
        return SweepTracking(None, study.study_name, results_dir=results_dir)
    client, experiment_id = connect(settings, create=False)
    parent = recorded.get("parent_run_id") if isinstance(recorded, Mapping) else None
    if not parent:
        with mlflow_calls(settings):
            run = find_sweep_run(client, experiment_id, study.study_name)
        parent = run.info.run_id if run else None
    return SweepTracking(settings, study.study_name, experiment_id, parent or None, results_dir)


def _recorded_settings(recorded: Mapping, current: TrackingSettings | None, cfg: DictConfig) -> TrackingSettings:
    """The sweep's store and experiment. A recorded URL with a masked password is opened with
    the user's own URL when it is the same one (same masked form)."""
    uri = str(recorded["uri"])
    if current is not None and current.label == uri:
        uri = current.uri
    elif MASK in uri:
        raise ConfigError(
            f"tracking.uri: the sweep was recorded in MLflow at {uri}, whose password is not kept; "
            f"export MLFLOW_TRACKING_URI with that server's URL (password included) and add tracking=server."
        )
    node = cfg.get("tracking") or {}
    return TrackingSettings(
        uri=uri,
        experiment=str(recorded["experiment"]),
        artifacts=None,  # the experiment exists: its artifact location is its own
        request_timeout=int(node.get("request_timeout", 10)),
        request_retries=int(node.get("request_retries", 1)),
        results_dir=str(cfg.get("results_dir", "results")),
        schedule_plot=bool(node.get("schedule_plot", True)),
    )


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def check_server(cfg: DictConfig) -> None:
    """A tracking server that cannot be reached is a ConfigError now, before anything is written
    here (an embedded store is made where the sweep makes its study, so it needs no look ahead)."""
    settings = tracking_settings(cfg)
    if settings is not None and settings.is_server:
        connect(settings)


def prepare_sweep(cfg: DictConfig, study_name: str, study: optuna.Study | None = None) -> SweepTracking:
    """Once per sweep, in the parent process, before any worker starts: create the store and the
    experiment (several processes creating one SQLite store at once fail), start the sweep's
    parent run (or on resume find it again and mark it running), record the sweep's settings.

    `study` is the sweep's study when it exists already. The two stores must agree on what the
    sweep is: a study whose recorded run the MLflow store lacks (a store emptied or replaced), or
    an MLflow sweep with trial runs but no study (a study storage emptied or replaced), is refused
    before anything changes: continuing would file the trials of two sweeps as one.
    A store that cannot be reached raises ConfigError."""
    results_dir = str(cfg.get("results_dir", "results"))
    settings = tracking_settings(cfg)
    if settings is None:
        return SweepTracking(None, study_name, results_dir=results_dir)
    recorded = study.user_attrs.get("tracking") if study is not None else None
    # A resumed sweep's records exist: none are made (no store, no experiment) if they are not there.
    client, experiment_id = connect(settings, create=not (isinstance(recorded, Mapping) and recorded.get("parent_run_id")))
    config = plain_config(cfg)
    try:
        with mlflow_calls(settings):
            run = _sweep_run(client, settings, experiment_id, study_name, study, recorded)
            if run is None:
                run = client.create_run(experiment_id, run_name=study_name)
                recorder = MlflowRecorder(settings, None, _nowhere, run_id=run.info.run_id)
                nodes = (*SWEEP_NODES, *TRIAL_NODES, "sweep")
                recorder.queue_params(flatten({key: config[key] for key in nodes if key in config}))
                recorder.record_config(config)
            else:
                # A resumed sweep. Params are immutable in MLflow: what may change goes to tags.
                client.update_run(run.info.run_id, status="RUNNING")
                recorder = MlflowRecorder(settings, None, _nowhere, run_id=run.info.run_id)
            recorder.queue_tags(_sweep_tags(config, study_name))
            recorder.send()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - said in one line, before any study exists
        raise ConfigError(
            f"tracking.uri: MLflow at {settings.label} could not start the sweep's run: {_one_line(error)}"
        ) from None
    return SweepTracking(settings, study_name, experiment_id, run.info.run_id, results_dir)


def _sweep_run(
    client: MlflowClient,
    settings: TrackingSettings,
    experiment_id: str,
    study_name: str,
    study: optuna.Study | None,
    recorded: Any,
) -> Any | None:
    """The sweep's parent run, if it has one already, checked against the study."""
    from mlflow.exceptions import MlflowException

    if isinstance(recorded, Mapping) and recorded.get("parent_run_id"):
        try:
            run = client.get_run(recorded["parent_run_id"])
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != experiment_id:
            raise ConfigError(
                f"tracking.uri: the study of sweep {study_name!r} records its MLflow run {recorded['parent_run_id']} "
                f"in {recorded.get('uri')}, and MLflow at {settings.label} does not hold it (the store was emptied "
                f"or replaced). Nothing was changed; point tracking.uri at the sweep's store, or give this sweep "
                f"a new name (sweep.name=...)."
            )
        return run
    run = find_sweep_run(client, experiment_id, study_name)
    if run is not None and study is None:
        trials = client.search_runs(
            [experiment_id], f"tags.`sweeper.kind` = '{TRIAL_KIND}' and tags.sweep = '{study_name}'", max_results=1
        )
        if trials:
            raise ConfigError(
                f"storage.url: MLflow at {settings.label} holds sweep {study_name!r} (run {run.info.run_id}, with "
                f"trial runs), but the study storage has no study of that name (it was emptied or replaced). "
                f"Nothing was changed; point storage.url at the sweep's storage, or give this sweep a new name "
                f"(sweep.name=...)."
            )
    return run


def _nowhere(client: MlflowClient) -> tuple[str, str | None]:
    raise AssertionError("the run exists already")  # for recorders given an existing run id


def _sweep_tags(config: Mapping, study_name: str) -> dict[str, str]:
    train = config.get("train") or {}
    return {
        "sweeper.kind": SWEEP_KIND,
        "sweep": study_name,
        "model": str((config.get("model") or {}).get("name", "")),
        "data": str((config.get("data") or {}).get("name", "")),
        "objective": f"{train.get('objective')} ({train.get('direction')})",
        "n_trials": str((config.get("sweep") or {}).get("n_trials", "")),
        "storage": mask_url(str((config.get("storage") or {}).get("url", ""))),
        "status": "running",
        **code_tags(),
    }


def trial_reporter(
    trial_cfg: DictConfig,
    *,
    study_name: str,
    trial_number: int,
    overrides: Sequence[str] = (),
    extra_tags: Mapping[str, Any] | None = None,
    location: Mapping[str, str] | None = None,
) -> Reporter:
    """For a worker process that has the config but not the parent's SweepTracking: the sweep's
    run is where the study's recorded `location` says, else looked up by its tags (once per
    process) at the trial's first flush."""
    location = location or {}
    sweep = SweepTracking(
        tracking_settings(trial_cfg),
        study_name,
        location.get("experiment_id") or None,
        location.get("parent_run_id") or None,
        results_dir=str(trial_cfg.get("results_dir", "results")),
    )
    return sweep.trial_reporter(trial_number, trial_cfg, overrides, extra_tags)


# --- single runs ------------------------------------------------------------------------------


def record_run(
    cfg: DictConfig,
    *,
    kind: str = "train",
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    overrides: Iterable[str] = (),
) -> Reporter:
    """A Reporter recording one top-level run (`sweeper train`, reruns, confirmations), or one
    nested under `parent_run_id`. The store is checked now: a bad tracking URL is a ConfigError
    before training starts. A no-op Reporter when tracking is off."""
    settings = tracking_settings(cfg)
    if settings is None:
        return Reporter()
    _, experiment_id = connect(settings)
    return MlflowRecorder(
        settings,
        cfg,
        lambda _: (experiment_id, parent_run_id),
        run_name=run_name or kind,
        tags={"sweeper.kind": kind, **(tags or {})},
        overrides=list(overrides),
    )


def read_artifact(settings: TrackingSettings, run_id: str, path: str) -> str | None:
    """A text artifact of a recorded run (config.yaml, environment.json), or None if it has none."""
    with mlflow_calls(settings), tempfile.TemporaryDirectory() as folder:
        try:
            return Path(mlflow_client(settings.uri).download_artifacts(run_id, path, folder)).read_text()
        except Exception:  # noqa: BLE001 - MLflow reports a missing file in several ways
            return None


def read_curves(
    settings: TrackingSettings, run_id: str, keys: Iterable[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """The metric histories of a recorded run, key -> [(step, value)] (every metric it has,
    unless `keys` are named)."""
    with mlflow_calls(settings):
        client = mlflow_client(settings.uri)
        keys = list(client.get_run(run_id).data.metrics) if keys is None else list(keys)
        histories = {key: client.get_metric_history(run_id, key) for key in keys}
    return {key: [(m.step, m.value) for m in sorted(h, key=lambda m: (m.step, m.timestamp))] for key, h in histories.items()}
