"""Epoch checkpoints: a trial whose worker died goes on from its last finished epoch, on any worker.

    hook = EpochCheckpoints(folder / "trial-7.pt", earlier=[folder / "trial-3.pt"])
    train(cfg, [..., hook])      # resumes from trial-3.pt if it is there, saves trial-7.pt per epoch

At the end of every epoch but the last (after every reporter heard of it and none stopped the
trial) the trainer hands the hook the trial, and it writes what the rest of training depends on:
the model's and the optimizer's state dicts, the data order's generator, the global random states
(torch's CPU and CUDA generators, Python's, NumPy's: dropout and augmentations draw from them),
and the steps and epochs reported so far (the schedule's position is the step count). The write
is atomic (a temporary file beside it, then os.replace): a worker killed while writing leaves the
previous checkpoint whole. The file is removed when the trial ends, whatever the ending.

A trial retried after its worker died (Optuna's retry callback, called by the sweep that saw the
worker die or by the heartbeat check: the same parameters, another trial number) looks for the
checkpoints of the trials it repeats, newest first, restores the newest one there is, replays
the recorded steps and epochs to its reporters (its MLflow run and Optuna's pruner see the whole
curve) and trains the epochs that remain. On CPU with train.deterministic=true the resumed
trial's curves are bitwise those of an uninterrupted run.

A checkpoint holds only tensors and plain containers: it is read with
`torch.load(..., weights_only=True)`, which runs no code from the file.

`TrainerHook` (`sweeper.trial.events`) is the seam: a Reporter that the trainer also hands its
prepared trial (model, optimizer, generator), asks to restore it, and tells when an epoch's reports
are done; the loop (`sweeper.training.loop`) replays what a restored trial had reported.
`sweeper.training.saved_models` uses the same seam to keep the final weights.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_weights import state_dict_problem
from sweeper.config.rules import sweep_folder
from sweeper.trial.events import EpochEvent, StepEvent, TrainerHook, TrialResult

if TYPE_CHECKING:
    from sweeper.training.trainer import Trial

# torch is imported inside the functions that use it: a sweep's parent process imports this
# module for its settings check and never loads torch.
__all__ = [
    "FORMAT",
    "EpochCheckpoints",
    "TrainerHook",
    "checkpoints_on",
    "for_sweep_trial",
    "load_checkpoint",
    "save_atomically",
]

logger = logging.getLogger(__name__)
FORMAT = 1  # the layout of a checkpoint file; a file of another layout is not resumed from


def checkpoints_on(cfg: DictConfig) -> bool:
    """`sweep.checkpoints`: whether sweep trials checkpoint at epoch ends."""
    return cfg.sweep.get("checkpoints", True)


def checkpoint_every(cfg: DictConfig) -> float:
    """`sweep.checkpoint_every`: the seconds of training at least between two checkpoints of a
    trial (0: after every epoch)."""
    return float(cfg.sweep.get("checkpoint_every", 0))


# --- the file ---------------------------------------------------------------------------------


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save `payload` to `path` whole or not at all: a temporary file in the same folder
    (so os.replace is a rename on one file system), flushed to disk, then renamed over `path`."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's contents, read without running code from it; None when there is no file
    (another worker may remove it at any moment) or it is not a checkpoint of this layout."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - damaged or foreign: train from the start instead
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def trial_state(trial: Trial, result: TrialResult) -> dict[str, Any]:
    """Everything the rest of `trial` depends on, after the epochs in `result`."""
    import torch

    return {
        "format": FORMAT,
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "data_order": trial.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python_rng": random.getstate(),
        "numpy_rng": _numpy_state(),
        "steps": [asdict(step) for step in result.steps],
        "epochs": [asdict(epoch) for epoch in result.epochs],
    }


def restore_state(trial: Trial, payload: dict[str, Any]) -> tuple[list[StepEvent], list[EpochEvent]]:
    """Put `payload`'s state into `trial`; return the steps and epochs it had reported."""
    import torch

    trial.model.load_state_dict(payload["model"])
    trial.optimizer.load_state_dict(payload["optimizer"])
    trial.generator.set_state(payload["data_order"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    random.setstate(_tuples(payload["python_rng"]))
    _set_numpy_state(payload["numpy_rng"])
    steps = [StepEvent(**{**step, "lrs": tuple(step["lrs"])}) for step in payload["steps"]]
    epochs = [EpochEvent(**epoch) for epoch in payload["epochs"]]
    return steps, epochs


def _numpy_state() -> dict[str, Any]:
    import torch

    # NumPy's state holds an array, which weights_only loading refuses: kept as a tensor.
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "gauss": gauss}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["position"], state["has_gauss"], state["gauss"]))


def _tuples(value: Any) -> Any:
    """Python's random state as it was (tuples), where the file may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- the hook ---------------------------------------------------------------------------------


class EpochCheckpoints(TrainerHook):
    """Checkpoints one trial at `path` after each epoch but the last; resumes from the first of
    `earlier` (the checkpoints of the trials this one repeats, newest first) that holds one.
    Removes its own file, and the ones it resumed from, when the trial ends."""

    def __init__(self, path: Path, earlier: Sequence[Path] = (), announce: Any = print, every: float = 0.0) -> None:
        self.path = Path(path)
        self.every = every  # seconds of training at least between two checkpoints
        self._last = time.monotonic()  # the trial's start, then its last checkpoint
        self.earlier = [Path(p) for p in earlier]
        self.announce = announce  # says where a trial resumed from (the worker's log)
        self.resumed_from: Path | None = None
        self._epochs = 0  # epochs the trial trains, over all phases

    def on_trial(self, trial: Trial) -> None:
        super().on_trial(trial)
        self._epochs = sum(phase.epochs for phase in trial.schedule.phases)
        self._last = time.monotonic()

    def after_epoch(self, result: TrialResult) -> None:
        if self.trial is None or len(result.epochs) >= self._epochs:
            return  # after the last epoch there is nothing left to resume
        if time.monotonic() - self._last < self.every:
            return  # a short trial loses little when it starts again: a write could cost more than its epochs
        self._last = time.monotonic()
        try:
            save_atomically(trial_state(self.trial, result), self.path)
        except OSError as error:  # a full or read-only disk costs the resume, not the trial
            logger.warning("sweeper: could not write the checkpoint %s (%s); the trial goes on without it.", self.path, error)

    def restore(self, result: TrialResult) -> bool:
        """Restore the newest checkpoint of the trials this one repeats into the trial and
        `result`; False when there is none (the trial starts from its first step)."""
        for path in self.earlier:
            payload = load_checkpoint(path)
            if payload is None or self.trial is None:
                if path.exists():
                    self.announce(f"sweeper: ignored the checkpoint {path}: not a checkpoint sweeper wrote; the trial starts afresh")
                continue
            problem = self._restored(payload, result)
            if problem:
                self.announce(f"sweeper: ignored the checkpoint {path}: {problem}; the trial starts afresh")
                continue
            self.resumed_from = path
            self.announce(f"sweeper: resumed from {path} after epoch {len(result.epochs)} (step {len(result.steps)})")
            return True
        return False

    def _restored(self, payload: dict[str, Any], result: TrialResult) -> str | None:
        """Restore `payload` into the trial and `result`; else why not, the trial as it was. A
        checkpoint is a record (a shared results folder): its model must fit this one before
        anything is loaded, and the rest must load whole."""
        problem = state_dict_problem(payload.get("model"), self.trial.model.state_dict())
        if problem:
            return problem
        before = copy.deepcopy(trial_state(self.trial, result))
        try:
            result.steps[:], result.epochs[:] = restore_state(self.trial, payload)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            restore_state(self.trial, before)  # what the damaged part left half-loaded
            result.steps[:], result.epochs[:] = [], []
            return (
                f"it does not fit this trial ({type(error).__name__}: {printable(str(error).splitlines()[0] if str(error) else '')[:200]})"
            )
        return None

    def on_end(self, result: TrialResult) -> None:
        for path in (self.path, *([self.resumed_from] if self.resumed_from else [])):
            path.unlink(missing_ok=True)


def for_sweep_trial(results_dir: str | Path, sweep: str, trial: Any, every: float = 0.0) -> EpochCheckpoints:
    """The checkpoints of a sweep's Optuna trial, in results/sweeps/<sweep>/checkpoints/: its own
    file, and those of the trials it repeats (Optuna's retry history: the trial whose worker
    died, and the retries of it since), newest first, to resume from."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    folder = sweep_folder(results_dir, sweep) / "checkpoints"
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():  # "experimental" in Optuna: relied on knowingly, as the retries are
        warnings.simplefilter("ignore", ExperimentalWarning)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)  # the original first
    return EpochCheckpoints(folder / f"trial-{trial.number}.pt", [folder / f"trial-{n}.pt" for n in reversed(history)], every=every)
