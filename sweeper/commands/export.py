"""`sweeper export`: write a run's kept weights (a state dict) to a file of yours.

    sweeper export mlp-digits model.pt              # the sweep's best trial that kept its weights
    sweeper export 3f2a9c... model.pt               # an MLflow run id (a trial, a `sweeper train` run)
    sweeper export mlp-digits model.pt tracking=server   # the store the runs are in

Which runs keep weights is `tracking.save_model` (sweeper.training.saved_models). The file is a plain
state dict: `model.load_state_dict(torch.load(PATH, weights_only=True))`. The recorded artifact
is untrusted: it is read with weights_only=True and only names and tensors are written out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sweeper.boundary.printed import printable
from sweeper.config import ConfigError, compose_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a sweep's name (its best trial with kept weights) or an MLflow run id")
    parser.add_argument("path", help="the file to write (must not exist)")


def run(args: argparse.Namespace) -> int:
    from sweeper.records.mlflow_store import mlflow_calls, store_client, tracking_settings
    from sweeper.records.model_export import export_model
    from sweeper.training.saved_models import refuse_existing

    refuse_existing(Path(args.path))  # before anything loads or opens the store
    cfg = compose_config(args.overrides, args.config_dir)
    settings = tracking_settings(cfg)
    if settings is None:
        raise ConfigError("export: tracking is off (tracking=none); name the store the weights are in (tracking=local or tracking=server).")
    client = store_client(settings)
    with mlflow_calls(settings):
        run, tensors = export_model(client, args.source, Path(args.path))
    # the run's name is recorded text: printed escaped (sweeper.boundary.printed)
    print(f"wrote {args.path}: {tensors} tensors, the weights of MLflow run {run.info.run_id} ({printable(run.info.run_name)})")
    return 0
