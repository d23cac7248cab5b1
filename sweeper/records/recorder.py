"""The run recorder: one MLflow run (a trial, a `sweeper train`, a rerun) through a buffer.

    reporter = record_run(cfg, kind="train")     # or SweepTracking.trial_reporter(...) for a trial
    train(cfg, [reporter, ...])

A sweep's local workers do not hold one: they write spool files (sweeper.records.spool) and the
machine's recorder (sweeper.records.machine_recorder) replays each into one of these, in the
sweep's process, with the times the worker wrote.

How it talks to MLflow, and why:
- `MlflowClient` with explicit run ids, never the fluent API's active run: workers are processes
  and one process may hold several recorders.
- Buffered (`sweeper.records.run_buffer`): steps are queued and sent with `log_batch` (at most
  1000 entities a call) when an epoch ends and when the run ends, never one round trip per step.
- A tracking store that cannot be reached never fails a trial: the records stay queued, one
  clear warning is logged, and the next flush tries again (a run that ended meanwhile is sent
  with the next flush of any run in this process, or when the process exits).
- Nothing secret is recorded: every param, tag and text artifact goes through `mask_text`.
Artifacts: `config.yaml` (the resolved config), `environment.json`, and `schedule.png` (the lr of
every group and the momentum the run actually used; sweeper.records.run_plot).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeper.config.errors import disk_full
from sweeper.records.environment import describe_environment
from sweeper.records.mlflow_store import (
    Outage,
    TrackingSettings,
    connect,
    mlflow_calls,
    mlflow_client,
    tracking_settings,
)
from sweeper.records.run_buffer import RunBuffer
from sweeper.records.run_plot import schedule_png_as_run
from sweeper.records.run_record import (
    RUN_STATUS,
    ended_label,
    epoch_metrics,
    plain_config,
    run_params,
    run_tags,
    step_metrics,
)
from sweeper.records.sender import Sender, Unsent
from sweeper.secrets import mask_text
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["Locate", "MlflowRecorder", "now_ms", "record_run"]

logger = logging.getLogger(__name__)

# --- the recorder -----------------------------------------------------------------------------

# (experiment id, parent run id or None) for the run, asked of the store when first needed
Locate = Callable[["MlflowClient"], "tuple[str, str | None]"]


class MlflowRecorder(Reporter):
    """Records one run (a trial, a `sweeper train`, a rerun) through a buffer; see the module doc.

    The run itself is created at the first flush that reaches the store, so a store that is down
    when a trial starts delays its record instead of losing it. `run_id` is None until then.

    The trial's thread only queues: the run's creation, its params and tags (derived from the
    config there), the epoch flushes and the schedule plot are the background sender's work
    (`sweeper.records.sender`). `on_end` returns once the run's end is in the store (or kept for later, the store
    being down), so a trial told finished has its records; its schedule.png follows.
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
        self.run_id = run_id  # given: record into that existing run
        self._cfg = cfg
        self._locate = locate
        self._run_name = mask_text(run_name) if run_name else None
        self._start_ms: int | None = None
        self._start: StartEvent | None = None  # the start, its params and tags not derived yet
        self._buffer = RunBuffer()  # what the run has still to send
        self.disk_full = False  # the store's last answer: its disk is full (not out of reach)
        # Where the times of the records come from, and where the run ran (None: this process);
        # the machine's recorder sets both to what the worker's spool file says.
        self.clock: Callable[[], int] = now_ms
        self.environment: dict[str, Any] | None = None
        self.queue_tags(tags or {})
        if overrides:
            self.queue_tags({"overrides": " ".join(overrides)})

    # Reporter events. They never raise: a recording problem must not end a trial.

    def on_start(self, event: StartEvent) -> None:
        self._start_ms = self.clock()
        self._start = event
        # The run exists, with the tags that file it (sweep, kind, trial), before the first batch:
        # a worker killed mid-trial leaves a run the sweep can find and end. The rest follows.
        Sender.submit(lambda: self.deliver(create_only=True)).result()
        self.flush_later()

    def on_step(self, event: StepEvent) -> None:
        with _never_raises("step"):
            self._queue_metrics(step_metrics(event), event.step)

    def on_epoch(self, event: EpochEvent) -> None:
        with _never_raises("epoch"):
            self._queue_metrics(epoch_metrics(event), event.epoch)
        self.flush_later()

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
                # Seen in the runs list at a glance: "trial 3 · pruned · geometric · ...".
                self.queue_tags({"mlflow.runName": ended_label(self._run_name, result.status)})
            self._buffer.end(RUN_STATUS.get(result.status, "FAILED"), self.clock())
        self.flush()
        if result.steps and self.settings.schedule_plot:
            Sender.submit(lambda: self._attach_plot(result))

    def unwritten(self) -> str | None:
        ended_unsent = self._buffer.ended_unsent()
        return f"its MLflow records ({self.settings.label})" if ended_unsent and self.disk_full else None

    # What is queued goes through the run's buffer (masked there) and is sent by a flush.

    def attach(self, name: str, data: bytes | str) -> None:
        """Queue an artifact (sent with the next flush)."""
        self._buffer.attach(name, data)

    def record_config(self, config: Mapping, device: str | None = None) -> None:
        """Queue the resolved config (config.yaml) and where the run ran (environment.json)."""
        self.attach("config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(config))))
        self.attach("environment.json", json.dumps(self.environment or describe_environment(device), indent=1))

    def queue_params(self, params: Mapping[str, Any]) -> None:
        self._buffer.add_params(params)

    def queue_tags(self, tags: Mapping[str, Any], *, keep_queued: bool = False) -> None:
        """Queue tags; with `keep_queued`, a tag already queued keeps its value."""
        self._buffer.add_tags(tags, keep_queued=keep_queued)

    def _queue_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = self.clock()
        self._buffer.add_metrics(Metric(key, float(value), now, step) for key, value in values.items())

    def flush(self) -> bool:
        """Send everything queued, and wait for it; False when the store cannot be reached (all
        of it is kept, and sent with a later flush)."""
        return Sender.submit(self._flush_now).result()

    def flush_later(self) -> None:
        """Send everything queued from the background sender; the caller goes on at once."""
        Sender.submit(self._flush_now)

    def _flush_now(self) -> bool:
        Unsent.retry(self.settings, but=self)
        return self.deliver()

    def deliver(self, create_only: bool = False) -> bool:
        try:
            with mlflow_calls(self.settings):
                self._send(mlflow_client(self.settings.uri), create_only)
        except Exception as error:  # noqa: BLE001 - a store that is down, full or refusing: retry later
            self.disk_full = disk_full(error)
            Outage.failed(self.settings, error)
            Unsent.keep(self)
            return False
        self.disk_full = False
        Outage.recovered(self.settings)
        return True

    def send(self) -> None:
        """Send everything queued now, from this thread; raises if the store fails (a flush keeps
        it for later)."""
        with mlflow_calls(self.settings):
            self._send(mlflow_client(self.settings.uri))

    def _describe_start(self) -> None:
        """The run's params, tags and config artifacts, derived from its config (in the sender:
        they take tens of milliseconds, and the trial need not wait for them)."""
        event, self._start = self._start, None
        if event is None:
            return
        with _never_raises("start"):
            config = plain_config(self._cfg) if self._cfg is not None else event.config
            self.queue_params(run_params(config, event))
            # The tags given at creation (sweep, trial, extra tags) and at the end win over the
            # derived ones; once the run has ended (the store was down meanwhile) its status is
            # the end's, which may have been sent already.
            derived = {**run_tags(config), "device": event.device}
            if self._buffer.ended:
                derived.pop("status")
            self.queue_tags(derived, keep_queued=True)
            self.record_config(config, event.device)

    def _send(self, client: MlflowClient, create_only: bool = False) -> None:
        from mlflow.entities import Param, RunTag

        if not create_only:
            self._describe_start()  # before the run is made: its derived tags go with it
        buffer = self._buffer
        if self.run_id is None:
            experiment_id, parent = self._locate(client)
            tags = buffer.tags()
            run = client.create_run(
                experiment_id,
                start_time=self._start_ms or now_ms(),
                tags={**tags, **({"mlflow.parentRunId": parent} if parent else {})},
                run_name=self._run_name,
            )
            self.run_id = run.info.run_id
            buffer.sent_tags(tags.items())
        if create_only:
            return
        # One chunk a call, dropped from the buffer only once sent.
        while True:
            params, tags, metrics = buffer.next_batch()
            if not (params or tags or metrics):
                break
            client.log_batch(
                self.run_id,
                metrics=metrics,
                params=[Param(k, v) for k, v in params],
                tags=[RunTag(k, v) for k, v in tags],
            )
            buffer.sent_batch(params, tags, metrics)
        for name, data in buffer.artifacts():
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / name
                path.write_bytes(data)
                client.log_artifact(self.run_id, str(path))
            buffer.sent_artifact(name, data)
        end = buffer.pending_end()
        if end is not None:
            client.set_terminated(self.run_id, status=end[0], end_time=end[1])
            buffer.sent_end(end)

    def _attach_plot(self, result: TrialResult) -> None:
        with _never_raises("schedule plot"):
            self.attach("schedule.png", schedule_png_as_run(result))
        self._flush_now()


def now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def _never_raises(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - tracking must never end a trial; say what went wrong
        logger.exception("sweeper: recording the %s of a run in MLflow failed; training goes on", what)


# --- single runs ------------------------------------------------------------------------------


def record_run(
    cfg: DictConfig,
    *,
    kind: str = "train",
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    overrides: Iterable[str] = (),
    experiment: str | None = None,
) -> Reporter:
    """A Reporter recording one top-level run (`sweeper train`, reruns, confirmations), or one
    nested under `parent_run_id`, in `experiment` (default: tracking.experiment). The store is
    checked now: a bad tracking URL is a ConfigError before training starts. A no-op Reporter
    when tracking is off."""
    settings = tracking_settings(cfg)
    if settings is None:
        return Reporter()
    if experiment:
        settings = dataclasses.replace(settings, experiment=str(experiment))
    _, experiment_id = connect(settings)
    return MlflowRecorder(
        settings,
        cfg,
        lambda _: (experiment_id, parent_run_id),
        run_name=run_name or kind,
        tags={"sweeper.kind": kind, **(tags or {})},
        overrides=list(overrides),
    )
