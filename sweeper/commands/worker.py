"""`sweeper worker`: join a running sweep from another shell or machine with one worker.

    sweeper worker storage=postgres search=slices      # the same overrides as the sweep's

The worker recomposes the sweep's config from the same overrides, so it finds the same study
and space; it runs trials on the devices it sees (set CUDA_VISIBLE_DEVICES to pick a GPU) until
the sweep has sweep.n_trials finished trials. To bring every device of another machine in at
once, run `sweeper sweep` there with the same overrides instead.

The workers `sweeper sweep` starts run this command too, with the sweep's command line in their
environment rather than in their argv (see sweeper.sweep.launchers), and end when the sweep does.
Ctrl-C or SIGTERM stops a worker after its trial's current step (the trial is marked failed and
runs again when the sweep resumes); it exits 130 or 143, as a shell reports the signal.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from collections.abc import Sequence

from sweeper.collector import setting_up
from sweeper.config.errors import NotWritten, disk_full
from sweeper.sweep.launchers import SweepArguments
from sweeper.sweep.lifeline import end_with_parent
from sweeper.sweep.plan import SweepPlan, check_trainer, plan_sweep
from sweeper.sweep.trainer import load_trainer
from sweeper.sweep.workers import StopRequest, run_worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=int, default=0, help="worker index: offsets the sampler's seed (default 0)")
    parser.add_argument("--deadline", type=float, help="start no trial after this time.time() (default: now + sweep.timeout)")
    parser.add_argument("--no-validate", action="store_true", help="skip the checks `sweeper sweep` already ran")
    parser.add_argument("--held", action="store_true", help=argparse.SUPPRESS)  # `sweeper sweep`'s: wait for "go" on stdin
    # `sweeper sweep`'s: run the trainer's checks of the sweep (sweeper.sweep.plan.check_trainer), then exit
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    faulthandler.enable(
        sys.__stderr__
    )  # the process's own stderr (its log), whoever replaced sys.stderr; a crash (SIGSEGV in a native library) leaves its Python stack in the worker's log
    stop = StopRequest()
    stop.install()  # first: a sweep that is already gone is noticed with a signal, just below
    sweep = SweepArguments.take()
    if sweep is not None:  # started by `sweeper sweep`; any arguments of its own come after its
        end_with_parent(sweep.parent)
        args.overrides = [*sweep.overrides, *args.overrides]
        args.config_dir = [*sweep.config_dirs, *args.config_dir]
    # What the worker loads before its first trial (torch, the trainer, its plan) stays loaded:
    # no garbage collection between its trials walks it (sweeper.collector).
    with setting_up():
        plan = _prepared(args) or plan_sweep(args.overrides, args.config_dir, validate=not args.no_validate)
        if args.check:
            check_trainer(plan)
            return 0
        if args.held and not wait_for_go(plan):
            return 0  # the sweep stopped before it began (it says why)
    deadline = args.deadline
    if deadline is None and plan.timeout is not None:
        deadline = time.time() + plan.timeout
    try:
        ran = run_worker(plan, index=args.index, deadline=deadline, stop=stop)
    except KeyboardInterrupt:  # from a trial's training: Optuna has marked the trial failed
        ran = None
    except Exception as error:
        if disk_full(error):  # the trial it ran stays unfinished, failed by the heartbeat check on resume
            raise NotWritten(f"the study {plan.name} in {plan.storage.label()}") from error
        raise
    if stop.requested:
        print(f"worker {args.index}: {stop.what}; a trial it had started runs again when the sweep resumes")
        return stop.exit_code
    print(f"worker {args.index}: ran {ran} trial(s) of sweep {plan.name}")
    return 0


# The sweep's plan, composed by the warm server before it forks the workers (prepare_plan), by
# the overrides and config folders it was composed from.
_PREPARED: dict[tuple[tuple[str, ...], tuple[str, ...]], SweepPlan] = {}


def prepare_plan() -> None:
    """Compose the plan of the sweep whose worker this environment is (SweepArguments) as a
    worker does, and keep it: the warm server calls this before it forks the trainer's check
    and the workers, who then take it from memory instead of composing it each (~0.25 s of a
    core each, as the workers start together)."""
    sweep = SweepArguments.take()
    if sweep is not None:
        _PREPARED[_command_line(sweep.overrides, sweep.config_dirs)] = plan_sweep(sweep.overrides, sweep.config_dirs, validate=False)


def _prepared(args: argparse.Namespace) -> SweepPlan | None:
    """The plan prepare_plan composed for exactly this worker's command line, if any; a worker
    that validates composes its own."""
    return _PREPARED.get(_command_line(args.overrides, args.config_dir)) if args.no_validate else None


def _command_line(overrides: Sequence[str], config_dirs: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(overrides), tuple(config_dirs)


def wait_for_go(plan: SweepPlan) -> bool:
    """A worker `sweeper sweep` started before checking the sweep: load what its trials need
    (the trainer) while the sweep checks, then wait for the word on stdin: "go" once the study
    and the MLflow store exist; end of input if the sweep stopped (or died) first. Its records
    go to the sweep's recorder: MLflow is not loaded here."""
    load_trainer(plan.cfg)
    import sweeper.records.tracking  # noqa: F401 - imported now, not at the first trial

    warm_up()
    return sys.stdin.readline().strip() == "go"


def warm_up() -> None:
    """Pay now, while the sweep checks itself, what a worker's first study and first trial config
    cost once per process (warm_up_study, warm_up_config). The warm server runs them before it
    forks the workers (sweeper.sweep.warm), so they keep nothing open."""
    warm_up_study()
    warm_up_config()


def warm_up_study() -> None:
    """Optuna's storage: SQLAlchemy's ORM, alembic (sweeper.sweep.storage.load_rdb_storage)."""
    from sweeper.sweep.storage import load_rdb_storage

    load_rdb_storage()


def warm_up_config() -> None:
    """Hydra's first composition (its override parser); the config is thrown away."""
    from sweeper.config.compose import compose_config

    compose_config()
