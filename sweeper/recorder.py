"""The run recorder: one MLflow run (a trial, a `sweeper train`, a rerun) through a buffer.

    reporter = record_run(cfg, kind="train")     # or SweepTracking.trial_reporter(...) for a trial
    train(cfg, [reporter, ...])

How it talks to MLflow, and why:
- `MlflowClient` with explicit run ids, never the fluent API's active run: workers are processes
  and one process may hold several recorders.
- Buffered: steps are queued and sent with `log_batch` (at most 1000 entities a call) when an
  epoch ends and when the run ends, never one round trip per step.
- A tracking store that cannot be reached never fails a trial: the records stay queued, one
  clear warning is logged, and the next flush tries again (a run that ended meanwhile is sent
  with the next flush of any run in this process, or when the process exits).
- Nothing secret is recorded: every param, tag and text artifact goes through `mask_text`.
Artifacts: `config.yaml` (the resolved config), `environment.json`, and `schedule.png` (the lr of
every group and the momentum the run actually used).
"""

from __future__ import annotations

import atexit
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeper.environment import describe_environment
from sweeper.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult
from sweeper.mlflow_store import Outage, TrackingSettings, connect, mlflow_calls, mlflow_client, tracking_settings
from sweeper.run_record import RUN_STATUS, epoch_metrics, plain_config, run_params, run_tags, step_metrics
from sweeper.secrets import mask_text

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["Locate", "MlflowRecorder", "now_ms", "record_run"]

logger = logging.getLogger(__name__)

# MLflow's limits per log_batch call and per value.
MAX_ENTITIES_PER_CALL = 1000
MAX_PARAMS_OR_TAGS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
# How long a process that ends with records unsent waits for the store to come back, and how often it tries.
EXIT_WAIT_SECONDS = 60
EXIT_RETRY_SECONDS = 2


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
            self._start_ms = now_ms()
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
            self._status = (RUN_STATUS.get(result.status, "FAILED"), now_ms())
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

        now = now_ms()
        self._metrics.extend(Metric(key, float(value), now, step) for key, value in values.items())

    def flush(self) -> bool:
        """Send everything queued; False when the store cannot be reached (all of it is kept)."""
        _Unsent.retry(self.settings)
        return self._deliver()

    def _deliver(self) -> bool:
        try:
            self.send()
        except Exception as error:  # noqa: BLE001 - a store that is down, full or refusing: retry later
            Outage.failed(self.settings, error)
            return False
        Outage.recovered(self.settings)
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
            run = client.create_run(experiment_id, start_time=self._start_ms or now_ms(), tags=tags, run_name=self._run_name)
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


def now_ms() -> int:
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

