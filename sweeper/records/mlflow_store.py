"""The MLflow store: the `tracking` settings, checked, and how sweeper talks to the store.

    settings = tracking_settings(cfg)           # None when tracking is off
    client, experiment_id = connect(settings)    # the experiment (and an embedded store) made if new
    curves = read_curves(settings, run_id)       # a recorded run's metric histories

Every call to MLflow goes through `mlflow_calls`: quick HTTP retries (a trial must not stall on a
server that is down), no run links printed (they would carry the URL's password). A store that
cannot be reached when a command starts is a ConfigError: one line, before anything is written.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from sweeper.config import ConfigError, error_line
from sweeper.config.errors import disk_full
from sweeper.records.mlflow_schema import write_schema
from sweeper.secrets import mask_text, mask_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "Outage",
    "TrackingSettings",
    "check_server",
    "connect",
    "experiment_id_of",
    "mlflow_calls",
    "mlflow_client",
    "one_line",
    "read_artifact",
    "read_curves",
    "search_all",
    "store_client",
    "tracking_settings",
]

logger = logging.getLogger(__name__)


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingSettings:
    """The `tracking` config node, checked, with embedded paths made absolute (workers agree)."""

    uri: str
    experiment: str
    artifacts: str | None  # artifact location of a new experiment (None: the server's)
    request_timeout: int
    request_retries: int
    results_dir: str
    schedule_plot: bool = True  # draw each run's schedule.png (~0.1 s a run) as it ends

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
    timeout, retries = node.get("request_timeout", 10), node.get("request_retries", 1)
    schedule_plot = node.get("schedule_plot", True)
    artifacts = node.get("artifacts")
    return TrackingSettings(
        uri=_absolute_sqlite(str(uri)),
        experiment=str(node.get("experiment")),
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


# --- the connection ---------------------------------------------------------------------------


@functools.cache
def mlflow_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    # A new embedded store logs its schema migrations at INFO ("Creating initial MLflow database
    # tables...") into the command's output, and every database error at ERROR with a traceback
    # (a full disk: "SQLAlchemy database error") that the error raised to sweeper says again, in
    # one line (Outage); alembic's warnings still show.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
    return _reach(settings, create, lambda client: experiment_id_of(client, settings, create))


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
                f"tracking.uri: cannot read the MLflow store {settings.label}: {one_line(error)}; it is damaged "
                f"or not an MLflow store: move it aside to start afresh, or point tracking.uri at the sweep's store."
            ) from None
        raise ConfigError(
            f"tracking.uri: cannot reach MLflow at {settings.label}: {one_line(error)}; start the "
            f"server (mlflow server --port 5000 ...: loopback only, unless --host opens it to other "
            f"machines) and check the URL, or use tracking=local (embedded, under results/) or tracking=none."
        ) from None


@contextmanager
def _embedded_store_lock(settings: TrackingSettings, create: bool) -> Iterator[None]:
    """An embedded SQLite store is created (its schema, then MLflow's Default experiment) by the
    first process that opens it; two that do so at once fail. One at a time, under a file lock
    beside it."""
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
            if create and not path.exists():
                _make_whole(path)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_whole(path: Path) -> None:
    """A new embedded store, made in a file beside `path`, then moved into place whole: its schema
    as MLflow's migrations leave it (written from the package's SQL of it, ~20 ms, or by the
    migrations themselves, ~1.2 s of a core, for a schema revision the package keeps no SQL of:
    sweeper.records.mlflow_schema), then opened by MLflow, which adds its Default experiment. A
    sweep makes its store beside its first trials, and a Ctrl-C or a kill in the middle of the
    migrations left a half-made store that every later command refused as damaged (a resume
    included); now it leaves none."""
    # What a command killed while it made one left (its file, SQLite's journal of it): under the
    # store's lock, no other is being made.
    for stale in path.parent.glob(f".{path.name}.*.partial*"):
        stale.unlink(missing_ok=True)
    # A name of its own each time (MLflow keeps the engines of the stores it opened by URL), and
    # the mode SQLite would give the store (0o666 less the umask; mkstemp's is 0o600).
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write_schema(partial)  # or, without the package's SQL of it, MLflow's migrations below
        mlflow_client(f"sqlite:///{partial}").search_experiments(max_results=1)
        os.replace(partial, path)
    finally:
        for left in (partial, Path(f"{partial}-journal")):
            left.unlink(missing_ok=True)


def experiment_id_of(client: MlflowClient, settings: TrackingSettings, create: bool = True) -> str:
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


def one_line(error: BaseException) -> str:
    """An MLflow error's first line, masked (a store's URL may hold a password), at most 300 characters."""
    return mask_text(error_line(error))[:300]


class Outage:
    """Which stores are down, so each outage is reported once, and its end once."""

    down: set[str] = set()

    @classmethod
    def failed(cls, settings: TrackingSettings, error: BaseException) -> None:
        if settings.uri in cls.down:
            return
        cls.down.add(settings.uri)
        if disk_full(error):
            logger.warning(
                "sweeper: MLflow tracking at %s cannot be written: the disk is full (%s). Training goes on; "
                "a trial whose records cannot be written fails (it runs again on resume) instead of finishing without them.",
                settings.label,
                one_line(error),
            )
            return
        logger.warning(
            "sweeper: MLflow tracking at %s cannot be reached (%s). Training goes on; the records "
            "are kept in memory and sent when it is back.",
            settings.label,
            one_line(error),
        )

    @classmethod
    def recovered(cls, settings: TrackingSettings) -> None:
        if settings.uri in cls.down:
            cls.down.discard(settings.uri)
            logger.warning("sweeper: MLflow tracking at %s answers again; the records kept meanwhile were sent.", settings.label)


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
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


def read_artifact(settings: TrackingSettings, run_id: str, path: str) -> str | None:
    """A text artifact of a recorded run (config.yaml, environment.json), or None if it has none."""
    with mlflow_calls(settings), tempfile.TemporaryDirectory() as folder:
        try:
            return Path(mlflow_client(settings.uri).download_artifacts(run_id, path, folder)).read_text()
        except Exception:  # noqa: BLE001 - MLflow reports a missing file in several ways
            return None


def read_curves(settings: TrackingSettings, run_id: str, keys: Iterable[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """The metric histories of a recorded run, key -> [(step, value)] (every metric it has,
    unless `keys` are named)."""
    with mlflow_calls(settings):
        client = mlflow_client(settings.uri)
        keys = list(client.get_run(run_id).data.metrics) if keys is None else list(keys)
        histories = {key: client.get_metric_history(run_id, key) for key in keys}
    return {key: [(m.step, m.value) for m in sorted(h, key=lambda m: (m.step, m.timestamp))] for key, h in histories.items()}
