"""What one MLflow run has still to send: its params, tags, metrics, artifacts and end.

The trial's thread queues (`sweeper.records.recorder.MlflowRecorder`); the background sender
takes them in chunks MLflow accepts and drops each chunk only once it was sent, so a failure part
way resends nothing twice, and a value queued again meanwhile (a tag's newer value) stays queued.
Everything queued passes through `mask_text` here: nothing secret is recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sweeper.secrets import mask_text

__all__ = ["MAX_PARAM_LENGTH", "MAX_TAG_LENGTH", "RunBuffer"]

# MLflow's limits per log_batch call and per value.
MAX_ENTITIES_PER_CALL = 1000
MAX_PARAMS_OR_TAGS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000


class RunBuffer:
    """One run's queued records, shared by the trial's thread and the sender (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._metrics: list[Any] = []  # mlflow.entities.Metric
        self._artifacts: dict[str, bytes] = {}
        self._end: tuple[str, int] | None = None  # (MLflow status, end time) once ended, until sent
        self._ended = False

    # Queued by the trial's thread.

    def attach(self, name: str, data: bytes | str) -> None:
        data = mask_text(data).encode() if isinstance(data, str) else data
        with self._lock:
            self._artifacts[name] = data

    def add_params(self, params: Mapping[str, Any]) -> None:
        masked = {key: mask_text(str(value))[:MAX_PARAM_LENGTH] for key, value in params.items()}
        with self._lock:
            self._params.update(masked)

    def add_tags(self, tags: Mapping[str, Any], *, keep_queued: bool = False) -> None:
        """With `keep_queued`, a tag already queued keeps its value."""
        masked = {key: mask_text(str(value))[:MAX_TAG_LENGTH] for key, value in tags.items()}
        with self._lock:
            self._tags.update(masked if not keep_queued else {k: v for k, v in masked.items() if k not in self._tags})

    def add_metrics(self, metrics: Iterable[Any]) -> None:
        with self._lock:
            self._metrics.extend(metrics)

    def end(self, status: str, end_ms: int) -> None:
        with self._lock:
            self._end = (status, end_ms)
            self._ended = True

    @property
    def ended(self) -> bool:
        return self._ended

    def ended_unsent(self) -> bool:
        """Ended, and its end not in the store yet."""
        with self._lock:
            return self._ended and self._end is not None

    # Taken by the sender, and dropped once sent.

    def tags(self) -> dict[str, str]:
        with self._lock:
            return dict(self._tags)

    def next_batch(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[Any]]:
        """(params, tags, metrics) for one log_batch call; all empty when nothing is queued."""
        with self._lock:
            params = list(self._params.items())[:MAX_PARAMS_OR_TAGS_PER_CALL]
            tags = list(self._tags.items())[:MAX_PARAMS_OR_TAGS_PER_CALL]
            metrics = self._metrics[: MAX_ENTITIES_PER_CALL - len(params) - len(tags)]
        return params, tags, metrics

    def sent_batch(self, params: Iterable[tuple[str, str]], tags: Iterable[tuple[str, str]], metrics: list[Any]) -> None:
        self.sent_tags(tags)
        with self._lock:
            _drop(self._params, params)
            del self._metrics[: len(metrics)]

    def sent_tags(self, tags: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            _drop(self._tags, tags)

    def artifacts(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._artifacts.items())

    def sent_artifact(self, name: str, data: bytes) -> None:
        with self._lock:
            if self._artifacts.get(name) is data:
                del self._artifacts[name]

    def pending_end(self) -> tuple[str, int] | None:
        with self._lock:
            return self._end

    def sent_end(self, end: tuple[str, int]) -> None:
        with self._lock:
            if self._end is end:
                self._end = None


def _drop(queue: dict[str, str], sent: Iterable[tuple[str, str]]) -> None:
    """Drop what was sent from a queue, unless a newer value was queued meanwhile."""
    for key, value in sent:
        if queue.get(key) == value:
            del queue[key]
