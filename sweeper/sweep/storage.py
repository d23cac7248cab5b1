"""Where a sweep's study lives (`storage.url`) and the claim lock its workers share.

SQLite under results/ by default, `journal:PATH` for Optuna's journal file, or a database URL
(PostgreSQL for sweeps across machines). Heartbeats, on RDB storages only, fail the trial of a
worker that died and queue it again (`sweep.retries` times). A claim lock makes "count, then
start a trial" atomic among workers, so a sweep ends at exactly n_trials.
"""

from __future__ import annotations

import fcntl
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from sweeper.config import ConfigError
from sweeper.config.errors import error_line
from sweeper.secrets import mask_text, mask_url
from sweeper.sweep.optuna_quiet import experimental_features_on_purpose

STORAGE_LOCK = "(storage)"  # the claim lock taken while a storage is opened (no study has this name)


@dataclass(frozen=True)
class StorageSpec:
    url: str
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    retries: int = 1

    @property
    def kind(self) -> str:
        if self.url.startswith("journal:"):
            return "journal"
        if self.url.startswith("sqlite:"):
            return "sqlite"
        return "postgresql" if self.url.startswith("postgres") else "rdb"

    @property
    def path(self) -> Path | None:
        """The file behind an embedded storage."""
        if self.kind == "journal":
            return Path(self.url.removeprefix("journal:"))
        if self.kind == "sqlite":
            return Path(self.url.removeprefix("sqlite:///"))
        return None

    def file_state(self) -> tuple[int, int] | None:
        """The embedded storage's file as its modification time and size (None: a server's
        storage, or no file yet): a trial told, made or beating its heartbeat changes it."""
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def label(self) -> str:
        """The URL as it may be shown and recorded: password masked."""
        return mask_url(self.url)

    @property
    def driver_url(self) -> str:
        """The URL SQLAlchemy opens. A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1, but
        the driver we install is psycopg2, so name it (an explicit +driver is kept)."""
        scheme, _, rest = self.url.partition("://")
        return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else self.url

    def open(self) -> optuna.storages.BaseStorage:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(self.path)))
        heartbeat = {}
        if self.heartbeat_interval is not None:
            with experimental_features_on_purpose():
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.retries)
            heartbeat = {
                "heartbeat_interval": self.heartbeat_interval,
                "grace_period": self.grace_period,
                "heartbeat_stale_trial_callback": retry,
            }
        # SQLite: wait for the writer lock instead of failing (see results/bench/storage.md).
        engine = {"connect_args": {"timeout": 60}} if self.kind == "sqlite" else {"pool_pre_ping": True}
        try:
            # One process at a time: opening a new storage creates its tables, and two processes
            # doing so at once (two sweeps started together, a sweep and a joining worker) clash.
            with self.claim(STORAGE_LOCK), experimental_features_on_purpose():
                storage = optuna.storages.RDBStorage(self.driver_url, engine_kwargs=engine, skip_compatibility_check=True, **heartbeat)
                if storage.get_current_version() == optuna_schema_head(storage):
                    return storage
                storage.engine.dispose()
                # Not the schema this Optuna writes: its own check says what to do (upgrade the
                # storage, or Optuna).
                return optuna.storages.RDBStorage(self.driver_url, engine_kwargs=engine, **heartbeat)
        except Exception as error:  # noqa: BLE001 - any driver error means the same to the user
            fix = (
                f"it is not a study storage sweeper can read (damaged, or another kind of file): move "
                f"{self.path} aside to start afresh, or point storage.url at the sweep's storage"
                if self.path is not None
                else "check the server is up and the URL (user, password, host, database) is right"
            )
            raise ConfigError(f"storage.url: cannot open {self.label()}: {mask_text(error_line(error))}; {fix}.") from None

    def claim(self, study_name: str) -> ClaimLock:
        return ClaimLock(self, study_name)


_schema_head: str | None = None  # the installed Optuna's schema version, once read


def optuna_schema_head(storage: optuna.storages.RDBStorage, *, new: bool = False) -> str:
    """The schema version the installed Optuna writes, read once a process. Optuna's own check
    at every open reads each of its migration scripts to find it (~20-60 ms an open; a test
    process opens hundreds of studies, a worker several). `new`: `storage` is a database Optuna
    has just made, stamped with that version as it was made: read back, not found again in the
    scripts (~30 ms a reading)."""
    global _schema_head
    if _schema_head is None:
        _schema_head = storage.get_current_version() if new else storage.get_head_version()
    return _schema_head


def load_rdb_storage() -> None:
    """Pay now what a process's first RDB study costs once: importing SQLAlchemy's ORM, alembic
    and Optuna's storage (~0.3 s of a core; a worker's ~0.8 s before its first trial), and the
    schema version of Optuna's studies, by an in-memory SQLite study storage made and closed
    again: no file, nothing left open."""
    storage = optuna.storages.RDBStorage("sqlite:///:memory:", skip_compatibility_check=True)
    optuna_schema_head(storage, new=True)
    storage.engine.dispose()


def storage_of(cfg: DictConfig) -> StorageSpec:
    try:
        url = cfg.storage.url
    except InterpolationResolutionError as error:
        raise ConfigError(
            f"storage.url: {error_line(error)}; export it first, e.g. "
            f"export SWEEPER_STORAGE_URL=postgresql://user:password@host:5432/sweeps"
        ) from None
    if not url:
        raise ConfigError("storage.url: empty; give sqlite:///PATH, journal:PATH or a database URL.")
    url = str(url)
    interval, grace = cfg.storage.get("heartbeat_interval"), cfg.storage.get("grace_period")
    spec = StorageSpec(url, interval, grace, cfg.sweep.retries)
    if interval is None:
        return spec
    if spec.kind == "journal":
        raise ConfigError(
            f"storage.heartbeat_interval: {interval} is set, but journal storages have no heartbeats; "
            f"set it (and storage.grace_period) to null, or use storage=local (SQLite)."
        )
    if not isinstance(grace, int) or grace <= interval:
        raise ConfigError(
            f"storage.grace_period: {grace!r} must be whole seconds above storage.heartbeat_interval "
            f"({interval}), e.g. {interval * 3}; a live trial must not look dead between two heartbeats."
        )
    return spec


class ClaimLock:
    """Makes "count the trials, then start one" atomic among all workers of a sweep.

    Embedded storages live on one machine (or one shared disk): a file lock beside the file.
    PostgreSQL: a session advisory lock, released by the server if the worker dies. Other
    databases get no lock, and a sweep there may overshoot n_trials by up to workers - 1.

    A thread that holds a claim may claim it again (the sweep creates its study and its MLflow
    run under one claim, and opening the storage claims too): it holds the lock until the
    outermost claim is released. Other threads and processes wait.
    """

    # (thread, storage URL, key) -> [the held lock, claims taken]
    _taken: dict[tuple[int, str, int], list[Any]] = {}

    def __init__(self, storage: StorageSpec, study_name: str) -> None:
        self.storage = storage
        # The advisory lock's id: same for every worker. A file lock covers the whole storage.
        self.key = 0 if storage.path is not None else zlib.crc32(study_name.encode())
        self._holding = False

    def __enter__(self) -> ClaimLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def _slot(self) -> tuple[int, str, int]:
        return (threading.get_ident(), self.storage.url, self.key)

    def acquire(self) -> None:
        if self._holding:
            return
        taken = self._taken.get(self._slot)
        if taken is not None:
            taken[1] += 1
        else:
            held = self._lock()
            if held is None:
                return
            self._taken[self._slot] = [held, 1]
        self._holding = True

    def _lock(self) -> Any:
        path = self.storage.path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(f"{path}.claim.lock", "a")  # noqa: SIM115 - closed in release()
            fcntl.flock(handle, fcntl.LOCK_EX)
            return handle
        if self.storage.kind == "postgresql":
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.storage.driver_url, poolclass=sqlalchemy.pool.NullPool)
            connection = engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            return connection
        return None

    def release(self) -> None:
        """Release (idempotent: the trial releases it once it has been asked for)."""
        if not self._holding:
            return
        self._holding = False
        taken = self._taken[self._slot]
        taken[1] -= 1
        if taken[1]:
            return
        del self._taken[self._slot]
        held = taken[0]
        if self.storage.path is not None:
            fcntl.flock(held, fcntl.LOCK_UN)
        else:
            import sqlalchemy

            held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        held.close()
