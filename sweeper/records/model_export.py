"""`sweeper export NAME|RUN_ID PATH`: the MLflow run whose kept weights are wanted (a run id, or a
sweep's best trial among those that kept weights, by train.objective and train.direction), and
its `model.pt` written to PATH (sweeper.training.saved_models says which runs keep weights, and
reads a state dict without running code from it)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.config import ConfigError
from sweeper.config.errors import error_line
from sweeper.config.rules import check_sweep_name
from sweeper.records.run_record import TRIAL_KIND, runs_filter
from sweeper.training.saved_models import MODEL_ARTIFACT, SAVED_TAG, read_state_dict, refuse_existing

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["export_model", "find_model_run"]

RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id, as its stores make them


def find_model_run(client: MlflowClient, source: str) -> Any:
    """The run whose weights `sweeper export` writes: `source` is a run id, or a sweep's name
    (its best trial among those that kept weights)."""
    if RUN_ID.fullmatch(source):
        try:
            run = client.get_run(source)
        except Exception:  # noqa: BLE001 - MLflow says "not found" in several ways
            run = None
        if run is not None:
            if SAVED_TAG not in run.data.tags:
                raise ConfigError(
                    f"export: MLflow run {source} kept no weights (it ran with tracking.save_model=none, did not "
                    f"finish, or was not the sweep's best when it ended); give a run tagged {SAVED_TAG}."
                )
            return run
    name = check_sweep_name(source, "export")
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = runs_filter(name, TRIAL_KIND, tags={SAVED_TAG: MODEL_ARTIFACT})
    runs = (
        [run for run in client.search_runs(experiments, query, max_results=1000) if "objective" in run.data.metrics] if experiments else []
    )
    if not runs:
        raise ConfigError(
            f"export: no MLflow run id {source!r} and no sweep {source!r} with kept weights in this store; give a "
            f"run id from the MLflow UI or a sweep's name, and the store that holds it (tracking.uri=...)."
        )
    maximize = runs[0].data.params.get("train.direction", "maximize") == "maximize"
    return (max if maximize else min)(runs, key=lambda run: run.data.metrics["objective"])


def export_model(client: MlflowClient, source: str, path: Path) -> tuple[Any, int]:
    """Write the weights of `source` (a run id or a sweep's name) to `path`; returns the run and
    the number of tensors. Refuses a `path` that exists: nothing is overwritten."""
    import torch

    refuse_existing(path)
    run = find_model_run(client, source)
    artifact = run.data.tags[SAVED_TAG]
    if artifact != MODEL_ARTIFACT:
        raise ConfigError(
            f"export: MLflow run {run.info.run_id} names {artifact!r} as its weights, not {MODEL_ARTIFACT}; nothing was written."
        )
    with tempfile.TemporaryDirectory() as folder:
        try:
            downloaded = Path(client.download_artifacts(run.info.run_id, MODEL_ARTIFACT, folder))
        except Exception as error:  # noqa: BLE001 - gone from the artifact store
            raise ConfigError(
                f"export: MLflow run {run.info.run_id} lacks its {MODEL_ARTIFACT} ({error_line(error)[:200]}); nothing was written."
            ) from None
        state = read_state_dict(downloaded, f"MLflow run {run.info.run_id}'s {MODEL_ARTIFACT}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return run, len(state)
