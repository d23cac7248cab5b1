"""The sweep's Optuna study: what it optimises, where it lives, how it samples and prunes, and
how many trials it runs.

- Objectives come from `train.objective` / `train.direction`, or several at once from
  `sweep.objectives`; each must be a metric the trainer reports (`available_metrics(cfg)`).
- Storage (`storage.url`): SQLite under results/ by default, `journal:PATH` for Optuna's journal
  file, or a database URL (PostgreSQL for sweeps across machines). Heartbeats, on RDB storages
  only, fail the trial of a worker that died and queue it again (`sweep.retries` times).
- Resume: a study of the same name in the same storage is continued, and `sweep.n_trials`
  counts its finished (complete + pruned) trials, whoever ran them. A claim lock makes "count,
  then start a trial" atomic among workers, so a sweep ends at exactly n_trials.

`plan_sweep` validates all of it, the search space included, before anything is created.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import os
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from sweeper.config import ConfigError, check_results_dir, compose_config
from sweeper.config.errors import error_line
from sweeper.config.rules import check_required, check_sweep_name, seconds, whole
from sweeper.records.environment import git_state
from sweeper.secrets import mask_text, mask_url
from sweeper.sweep.arms import COMPARE_ATTR, ArmPruner, Arms, ArmSampler, arms_of
from sweeper.sweep.identity import (
    CHANGES_ATTR,
    DEFINITION_ATTR,
    change_record,
    definition_of,
    describe_differences,
    differences,
)
from sweeper.sweep.space import SearchSpace, build_space, split_overrides, validate_space
from sweeper.training.checkpoints import checkpoints_on
from sweeper.training.saved_models import save_model_setting
from sweeper.trial.events import EpochEvent, Reporter, TrialResult
from sweeper.trial.spec import TRIAL_NODES

__all__ = [
    "ClaimLock",
    "Counts",
    "Objectives",
    "PruningReporter",
    "StorageSpec",
    "SweepPlan",
    "check_trial",
    "count_trials",
    "existing_study",
    "fail_stale_trials",
    "load_trainer",
    "make_pruner",
    "make_sampler",
    "next_move",
    "open_study",
    "plan_sweep",
    "quick_checks",
    "validate_plan",
]

DIRECTIONS = ("minimize", "maximize")
STORAGE_LOCK = "(storage)"  # the claim lock taken while a storage is opened (no study has this name)


@contextmanager
def _experimental_features_on_purpose() -> Iterator[None]:
    """Heartbeats, their retry callback and TPE's group option are "experimental" in Optuna;
    we rely on them knowingly, so their warnings would only be noise in every worker's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


# --- objectives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def values(self, result: TrialResult) -> float | list[float]:
        """The value(s) Optuna is told: the last epoch's metrics."""
        if not self.several:
            return float(result.objective)
        metrics = result.epochs[-1].metrics
        return [float(metrics[name]) for name in self.names]


def objectives_of(cfg: DictConfig) -> Objectives:
    several = cfg.sweep.get("objectives")
    if several is None:
        pairs = [(cfg.train.objective, cfg.train.direction)]
        setting = "train.direction"
    else:
        if not OmegaConf.is_dict(several) or not several:
            raise ConfigError(
                f"sweep.objectives: {several!r} must map metric names to directions, e.g. "
                f"{{accuracy: maximize, loss: minimize}}; null uses train.objective."
            )
        pairs = list(several.items())
        setting = "sweep.objectives"
    for name, direction in pairs:
        if direction not in DIRECTIONS:
            raise ConfigError(f"{setting}: {direction!r} (for {name}) must be one of {list(DIRECTIONS)}.")
    return Objectives(tuple(str(n) for n, _ in pairs), tuple(str(d) for _, d in pairs))


def load_trainer(cfg: DictConfig) -> Any:
    """What `sweep.trainer` names: a module (or an object in one) with train(cfg, reporters) and
    available_metrics(cfg); optionally prepare(cfg) and resolve_device(name), the checks
    `check_trial` runs before a sweep starts."""
    name = cfg.sweep.trainer
    try:
        trainer = _import(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"sweep.trainer: cannot import {name!r} ({error}); name a module with "
            f"train(cfg, reporters) and available_metrics(cfg), e.g. sweeper.training.engine."
        ) from None
    missing = [f for f in ("train", "available_metrics") if not callable(getattr(trainer, f, None))]
    if missing:
        raise ConfigError(f"sweep.trainer: {name!r} has no {' or '.join(missing)}; it needs both.")
    return trainer


def _import(name: str) -> Any:
    """A module by its dotted name, or else an attribute of its parent module."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as missing:
        parent, _, attribute = name.rpartition(".")
        if not parent or missing.name != name:
            raise
        found = getattr(importlib.import_module(parent), attribute, None)
        if found is None:
            raise missing from None
        return found


def check_objectives(objectives: Objectives, available: Sequence[str], setting: str) -> None:
    unknown = [n for n in objectives.names if n not in available]
    if unknown:
        raise ConfigError(f"{setting}: {unknown} not reported by the trainer for this config; choose among {list(available)}.")


# --- storage ----------------------------------------------------------------------------------


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
            with _experimental_features_on_purpose():
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
            with self.claim(STORAGE_LOCK), _experimental_features_on_purpose():
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
    retries = cfg.sweep.retries
    whole("sweep.retries", retries, 0)
    spec = StorageSpec(url, interval, grace, retries)
    if interval is None:
        return spec
    if spec.kind == "journal":
        raise ConfigError(
            f"storage.heartbeat_interval: {interval} is set, but journal storages have no heartbeats; "
            f"set it (and storage.grace_period) to null, or use storage=local (SQLite)."
        )
    whole("storage.heartbeat_interval", interval, 1, unit="whole seconds", null="")
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


# --- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> Counts:
        states = [t.state for t in trials]
        return cls(
            complete=states.count(TrialState.COMPLETE),
            pruned=states.count(TrialState.PRUNED),
            failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )


def count_trials(study: optuna.Study) -> Counts:
    return Counts.of(study.get_trials(deepcopy=False))


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue again) the trials of workers whose heartbeat stopped; RDB storages only."""
    with _experimental_features_on_purpose():
        optuna.storages.fail_stale_trials(study)


def next_move(counts: Counts, n_trials: int, out_of_time: bool, failed_too_often: bool = False) -> str:
    """ "run" a trial, "wait" for running ones (one may fail and need redoing), or "stop"."""
    if counts.finished >= n_trials or out_of_time or failed_too_often:
        return "stop"
    if counts.finished + counts.running < n_trials:
        return "run"
    return "wait"


# --- sampler, pruner, reporter ----------------------------------------------------------------


ARM_SEED_STRIDE = 1000  # arm a's sampler draws with seed + 1000 a (+ the worker's index)


def make_sampler(cfg: DictConfig, space: SearchSpace, worker: int = 0, arms: Arms | None = None) -> optuna.samplers.BaseSampler:
    """The configured sampler; worker k draws with seed + k so parallel workers differ. In compare
    mode (`arms`) each arm gets its own, seeded apart (sweeper.sweep.arms)."""
    if arms is not None:
        return ArmSampler(arms, lambda index: make_sampler(cfg, space, worker + ARM_SEED_STRIDE * index))
    node = OmegaConf.to_container(cfg.sampler, resolve=True)
    if node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + worker
    sampler = _instantiate("sampler", node)
    if isinstance(sampler, functools.partial):  # the grid sampler, completed with the space's grid
        sampler = sampler(search_space=space.grid())
    return sampler


def make_pruner(cfg: DictConfig, arms: Arms | None = None) -> optuna.pruners.BasePruner:
    """The configured pruner; in compare mode it compares a trial with its own arm's alone, and
    waits for fewer complete trials where an arm's share is small (Arms.startup_trials)."""
    node = OmegaConf.to_container(cfg.pruner, resolve=True)
    startup = arms.capped_startup(node, int(cfg.sweep.n_trials)) if arms is not None else None
    if startup is not None:
        node["n_startup_trials"] = startup
    pruner = _instantiate("pruner", node)
    if arms is None or isinstance(pruner, optuna.pruners.NopPruner):
        return pruner
    return ArmPruner(pruner, arms.param)


def _instantiate(group: str, node: dict) -> Any:
    try:
        with _experimental_features_on_purpose():
            return instantiate(node)
    except Exception as error:  # noqa: BLE001 - Hydra wraps the real cause; show it in one line
        cause = " ".join(str(error.__cause__ or error).split())
        raise ConfigError(
            f"{group}: cannot build {node.get('_target_')}: {cause}; pick a ready-made one with "
            f"{group}=<name> (conf/{group}/), or fix {group}._target_ and its settings."
        ) from None


class PruningReporter(Reporter):
    """Reports the objective to Optuna after every epoch; True (stop) when the pruner says so.

    The step is the number of epochs trained, so pruner settings read in epochs.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        # pruner=none never prunes: do not ask it (a storage round trip every epoch).
        self.may_prune = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

    def on_epoch(self, event: EpochEvent) -> bool:
        self.trial.report(event.objective, event.epoch + 1)
        return self.may_prune and bool(self.trial.should_prune())  # pruners may answer with a numpy bool


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A validated sweep: everything a worker needs, derived from overrides alone."""

    cfg: DictConfig
    command_line: tuple[str, ...]  # the overrides as given (workers start from these)
    overrides: tuple[str, ...]  # the base config's overrides (sweep overrides taken out)
    config_dirs: tuple[str, ...]
    space: SearchSpace
    objectives: Objectives
    storage: StorageSpec
    name: str
    n_trials: int
    timeout: float | None
    max_failures: int  # failed trials after which workers start no more
    definition: dict[str, str]  # what the sweep is (sweeper.sweep.identity), compared on resume
    allow_changes: bool  # continue a sweep of this name under another definition
    fuse: int = 1  # trials a worker trains at once as one fused model (1: one at a time)
    arms: Arms | None = None  # compare mode: the compared values, each its own sampler and share


def plan_sweep(
    overrides: Iterable[str] = (),
    config_dirs: Iterable[str | os.PathLike] = (),
    *,
    validate: bool = True,
) -> SweepPlan:
    """Read and check a sweep from its command line; nothing is created.

    `validate=False` skips composing the edges of the space and asking the trainer for its
    metrics (a worker joining a sweep that `sweeper sweep` has already checked).
    """
    command_line = tuple(overrides)
    base, sweeps = split_overrides(command_line)
    config_dirs = tuple(str(d) for d in config_dirs)
    cfg = compose_config(base, config_dirs)
    check_results_dir(cfg.results_dir)  # before any check that may write there (a cached body)
    name = check_sweep_name(str(cfg.sweep.name))
    check_required(cfg, TRIAL_NODES)  # before the definition reads them through interpolations
    allow_changes = cfg.sweep.get("allow_changes", False)
    if not isinstance(allow_changes, bool):
        raise ConfigError(f"sweep.allow_changes: {allow_changes!r} must be true or false.")
    space = build_space(cfg, sweeps)
    objectives = objectives_of(cfg)
    storage = storage_of(cfg)
    n_trials, timeout = cfg.sweep.n_trials, cfg.sweep.timeout
    whole("sweep.n_trials", n_trials, 1, unit="a whole number of trials")
    seconds("sweep.timeout", timeout, null="for none")
    poll = cfg.sweep.poll
    seconds("sweep.poll", poll, example=0.5)
    checkpoints_on(cfg)  # checked here, where a mistake stops the sweep: a worker would fail on it
    save_model_setting(cfg)
    max_failures = cfg.sweep.get("max_failures")
    if max_failures is None:
        max_failures = n_trials
    whole("sweep.max_failures", max_failures, 1, null="for sweep.n_trials")
    fuse = cfg.sweep.get("fuse", 1)
    whole("sweep.fuse", fuse, 1, unit="a whole number of trials")
    arms = arms_of(cfg.sweep.get("compare", "none"), space, objectives.several, str(cfg.sampler.get("_target_", "")))
    space_lines = [*space.describe(), *([arms.describe()] if arms else [])]
    definition = definition_of(cfg, space_lines, space.fixed, dict(zip(objectives.names, objectives.directions)))
    plan = SweepPlan(
        cfg=cfg, command_line=command_line, overrides=tuple(base), config_dirs=config_dirs, space=space,
        objectives=objectives, storage=storage, name=name, n_trials=n_trials, timeout=timeout,
        max_failures=max_failures, definition=definition, allow_changes=allow_changes, fuse=fuse, arms=arms,
    )  # fmt: skip
    if validate:
        quick_checks(plan)
        validate_plan(plan)
    return plan


def quick_checks(plan: SweepPlan) -> None:
    """The checks that take milliseconds (the sampler's and the pruner's settings): they come
    before anything slow, so a typo fails at once."""
    make_sampler(plan.cfg, plan.space, arms=plan.arms)
    make_pruner(plan.cfg, plan.arms)


def validate_plan(plan: SweepPlan) -> None:
    """The checks that take seconds: the trainer's metrics, a trial composed at every edge of the
    space, a database server reached, and one trial built with the trainer's own checks.
    `sweeper sweep` runs them while its workers start."""
    cfg, objectives = plan.cfg, plan.objectives
    trainer = load_trainer(cfg)
    if plan.fuse > 1 and not callable(getattr(trainer, "train_many", None)):
        raise ConfigError(
            f"sweep.fuse: {plan.fuse}, but sweep.trainer {cfg.sweep.trainer!r} has no train_many(cfgs, reporters) "
            f"to train trials together; set sweep.fuse=1."
        )
    setting = "sweep.objectives" if objectives.several else "train.objective"
    check_objectives(objectives, tuple(trainer.available_metrics(cfg)), setting)
    validate_space(plan.space, plan.overrides, plan.config_dirs)
    if plan.storage.path is None:  # a database server: reachable now, before anything is recorded
        plan.storage.open()
    check_trial(trainer, plan.space, plan.overrides, plan.config_dirs)


def check_trial(trainer: Any, space: SearchSpace, base: Sequence[str], config_dirs: Sequence[str]) -> None:
    """Build one trial of the sweep with the trainer's own checks, where it offers them
    (`prepare(cfg)`, and `resolve_device(name)`): a setting that would fail every trial (data
    that is not there, layer groups that do not cover the model, a list of lrs of the wrong
    length, CUDA where there is none) stops the sweep before its study exists, instead of
    failing trial after trial. It builds on the CPU, so this process holds no GPU memory."""
    prepare = getattr(trainer, "prepare", None)
    if not callable(prepare):
        return
    first = optuna.trial.FixedTrial({d.name: d.edges()[0] for d in space.dimensions()})
    cfg = compose_config([*base, *space.suggest(first)], config_dirs)
    resolve_device = getattr(trainer, "resolve_device", None)
    if callable(resolve_device):
        resolve_device(str(cfg.train.device))
    cfg.train.device = "cpu"
    prepare(cfg)


def open_study(plan: SweepPlan, *, create: bool, worker: int = 0) -> optuna.Study:
    """The sweep's study: created (or resumed) by `sweeper sweep`, joined by workers."""
    storage = plan.storage.open()
    sampler, pruner = make_sampler(plan.cfg, plan.space, worker, plan.arms), make_pruner(plan.cfg, plan.arms)
    if not create:
        try:
            study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise ConfigError(
                f"sweep.name: no sweep {plan.name!r} in {plan.storage.label()}; start it with "
                f"`sweeper sweep` (same overrides), then join it."
            ) from None
        check_definition(study, plan)  # a worker with other overrides must not join
        return study
    with plan.storage.claim(plan.name), _quiet_optuna():
        study = optuna.create_study(
            study_name=plan.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=list(plan.objectives.directions),
            load_if_exists=True,
        )
        if study.trials or DEFINITION_ATTR in study.user_attrs:
            check_definition(study, plan, record=True)
        else:
            _start(study, plan)
    return study


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs "[I ...] A new study created in RDB with name: ..." at INFO into the sweep's
    output, which says so itself; its warnings and errors still show."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def existing_study(plan: SweepPlan) -> optuna.Study | None:
    """The sweep's study if its storage already holds one of this name; creates nothing (an
    embedded storage that does not exist yet is not made)."""
    if plan.storage.path is not None and not plan.storage.path.exists():
        return None
    try:
        return optuna.load_study(study_name=plan.name, storage=plan.storage.open())
    except KeyError:
        return None


def check_definition(study: optuna.Study, plan: SweepPlan, *, record: bool = False) -> None:
    """Refuse to go on with a study whose recorded definition differs from the plan's, unless
    sweep.allow_changes; `record` keeps an allowed change (and a definition the study lacked)."""
    _check_resumable(study, plan)
    recorded = study.user_attrs.get(DEFINITION_ATTR)
    if recorded is None:  # a study from before definitions were recorded: it has one from now on
        if record:
            study.set_user_attr(DEFINITION_ATTR, plan.definition)
        return
    found = differences(recorded, plan.definition)
    if not found:
        return
    if not plan.allow_changes:
        raise ConfigError(
            f"sweep.name: a sweep named {plan.name!r} already exists in {plan.storage.label()} with another "
            f"definition ({describe_differences(found)}); nothing was changed. Give this sweep its own name "
            f"(sweep.name={_free_name(study, plan)}), or continue the existing one with these settings anyway "
            f"(sweep.allow_changes=true: the study records the change)."
        )
    if record:
        changes = [*study.user_attrs.get(CHANGES_ATTR, []), change_record(found, git_state().code_version)]
        study.set_user_attr(CHANGES_ATTR, changes)
        study.set_user_attr(DEFINITION_ATTR, plan.definition)


def _free_name(study: optuna.Study, plan: SweepPlan) -> str:
    """A name no sweep in the storage has yet: the plan's, numbered."""
    taken = {s.study_name for s in optuna.get_all_study_summaries(study._storage, include_best_trial=False)}
    number = 2
    while f"{plan.name}-{number}" in taken:
        number += 1
    return f"{plan.name}-{number}"


def _check_resumable(study: optuna.Study, plan: SweepPlan) -> None:
    directions = tuple(d.name.lower() for d in study.directions)
    names = tuple(study.user_attrs.get("objectives", plan.objectives.names))
    if directions != plan.objectives.directions or names != plan.objectives.names:
        raise ConfigError(
            f"sweep.name: the sweep {plan.name!r} in {plan.storage.label()} optimises "
            f"{dict(zip(names, directions))}, not {dict(zip(plan.objectives.names, plan.objectives.directions))}; "
            f"give this one another name (sweep.name=...)."
        )


def _start(study: optuna.Study, plan: SweepPlan) -> None:
    """A new study: record what it is, and queue the covering trials."""
    study.set_user_attr("objectives", list(plan.objectives.names))
    with _experimental_features_on_purpose():
        study.set_metric_names(list(plan.objectives.names))  # Optuna's plots and dashboard name them
    study.set_user_attr("overrides", [mask_text(o) for o in plan.overrides])
    study.set_user_attr("config_dirs", list(plan.config_dirs))
    study.set_user_attr("space", plan.space.describe())
    study.set_user_attr(DEFINITION_ATTR, plan.definition)
    study.set_user_attr("code_version", git_state().code_version)  # information: not part of the definition
    if plan.arms is not None:  # the arms cover the compared values, an equal share each
        study.set_user_attr(COMPARE_ATTR, plan.arms.record())
    elif plan.cfg.sweep.cover:
        for params in plan.space.cover()[: plan.n_trials]:
            study.enqueue_trial(params, skip_if_exists=True)
