"""Keeping the trained model: its weights in the run's MLflow artifacts, and getting them out.

`tracking.save_model` says which runs keep their weights:
- `best` (default): every `sweeper train` run, and each sweep trial that is the sweep's best when
  it finishes (no complete trial before it did better; with several objectives, none dominates
  it). So the sweep's best trial always has its weights, and the trials it superseded keep theirs.
- `all`: every run that trained to its end (pruned, diverged and failed trials keep none).
- `none`: no weights are kept.

The weights are the model's state dict (tensors on the CPU, by parameter and buffer name) in the
artifact `model.pt`, written by torch.save; the run gets the tag `saved_model=model.pt`. Load
it with plain torch:

    state = torch.load("model.pt", weights_only=True)
    model.load_state_dict(state)

`sweeper export NAME|RUN_ID PATH` (sweeper.records.model_export) writes them to PATH: a sweep's
name picks its best trial among those that kept weights (by train.objective and train.direction),
a run id that run. A recorded run is untrusted (run stores are shared): the artifact is read with
weights_only=True (`read_state_dict`, here), which runs no code from it, and only a mapping of
names to tensors is written out.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sweeper.config import ConfigError
from sweeper.config.errors import error_line
from sweeper.trial.events import Reporter, TrainerHook, TrialResult

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: a sweep's parent process imports this
# module for its settings check and never loads torch.
__all__ = [
    "MODEL_ARTIFACT",
    "SAVED_TAG",
    "ModelKeeper",
    "best_in_study",
    "best_so_far",
    "keepers",
    "read_state_dict",
    "refuse_existing",
    "save_model_setting",
]

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model.pt"
SAVED_TAG = "saved_model"  # run tag: the artifact holding the weights


def save_model_setting(cfg: DictConfig) -> str:
    """`tracking.save_model` (`none` when tracking is off: there is no run to keep them in)."""
    node = cfg.get("tracking")
    if node is None or not node.get("enabled", False):
        return "none"
    return node.get("save_model", "best")


class ModelKeeper(TrainerHook):
    """At the end of a trial that finished, attaches the model's weights to `recorder`'s run when
    `keep(result)` says so. It must come before the recorder among the reporters, so that the
    weights are queued before the recorder ends its run."""

    def __init__(self, recorder: Any, keep: Callable[[TrialResult], bool] = lambda result: True) -> None:
        self.recorder = recorder
        self.keep = keep

    def on_end(self, result: TrialResult) -> None:
        if result.status != "finished" or self.trial is None:
            return
        try:
            if self.keep(result):
                self.recorder.attach(MODEL_ARTIFACT, state_dict_bytes(self.trial.model))
                self.recorder.queue_tags({SAVED_TAG: MODEL_ARTIFACT})
        except Exception:  # noqa: BLE001 - keeping the weights must never fail a trial that finished
            logger.exception("sweeper: the model's weights could not be kept; the run is recorded without them")


def keepers(setting: str, recorder: Reporter, best: Callable[[TrialResult], bool]) -> list[Reporter]:
    """The ModelKeeper for a run recorded by `recorder` under `setting` (`best`: kept when
    `best(result)`), or none (setting none, or a recorder that keeps no MLflow run)."""
    if setting == "none" or not hasattr(recorder, "attach"):
        return []
    return [ModelKeeper(recorder, best if setting == "best" else lambda result: True)]


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as torch.save writes it, every tensor on the CPU."""
    import torch

    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def best_so_far(values: Sequence[float], directions: Sequence[str], others: Iterable[Sequence[float]]) -> bool:
    """Whether a trial of objective `values` is the best yet: no other (complete trials' values)
    is at least as good in every objective and better in one. A tie keeps both."""

    def better(a: float, b: float, direction: str) -> bool:
        return a > b if direction == "maximize" else a < b

    for other in others:
        if all(not better(v, o, d) for v, o, d in zip(values, other, directions)) and any(
            better(o, v, d) for v, o, d in zip(values, other, directions)
        ):
            return False
    return True


def best_in_study(study: Any, directions: Sequence[str], values: float | Sequence[float]) -> bool:
    """`best_so_far` among the study's complete trials (this one is not complete yet)."""
    from optuna.trial import TrialState

    values = [values] if isinstance(values, (int, float)) else list(values)
    others = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return best_so_far(values, directions, others)


# --- getting them out -------------------------------------------------------------------------


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A saved state dict, read without running code from it; ConfigError when `path` holds
    anything else than names and tensors."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - refused by the safe loader, or damaged
        raise ConfigError(f"export: {where} is not a state dict sweeper saved ({error_line(error)[:200]}); nothing was written.") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"export: {where} holds something other than named tensors; nothing was written.")
    return state


def refuse_existing(path: Path) -> None:
    """An export never overwrites: a ConfigError when `path` exists (checked by `sweeper export`
    first of all, and again just before writing)."""
    if path.exists():
        raise ConfigError(f"export: {path} exists already; give a new path, or remove it first.")
