"""`sweeper train`: run one trial from Hydra overrides and keep its result.

    sweeper train model=cnn lr=fastai lr.high=3e-3 shape=torch_one_cycle
    sweeper train experiment=digits_transfer --name transfer

Checks and builds everything first (a bad setting is one error, exit 2, and nothing is written),
then trains with a progress display, prints a summary (status, objective, time, device, peaks)
and writes the resolved config and the curves to results/train/<name or time>/ (config.yaml,
result.json), which `sweeper rerun` reads. With tracking on, the run is recorded in MLflow too, in
the experiment of train runs (tracking.train_experiment), and its id is printed.
Exit code: 0 when the trial finished, 1 when it diverged, failed or was stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError, compose_config
from sweeper.secrets import mask_text
from sweeper.trial.events import Reporter, TrialResult
from sweeper.trial.progress import TrialProgress

if TYPE_CHECKING:
    from sweeper.records.mlflow_store import TrackingSettings

EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="folder name under results/train/ (default: the start time)")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary's folder")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides, args.config_dir)  # a mistaken override stops here, before torch loads
    import torch

    from sweeper.training.trainer import prepare  # torch loads only when a trial runs
    from sweeper.training.trainer import run as run_trial

    folder = output_folder(Path(cfg.results_dir) / "train", args.name)
    if cfg.train.get("threads") is None:
        cfg.train.threads = torch.get_num_threads()  # kept in config.yaml: a rerun sums in the same order
    trial = prepare(cfg)  # every check and build: bad input stops here, before anything is written
    reporters = reporters_for(cfg, args.quiet, args.name or "train", args.overrides, folder)
    try:
        result = run_trial(trial, reporters)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing kept.")
        return EXIT_INTERRUPTED
    save_result(folder, trial.config, result)
    print(f"result: {folder}")
    recorder = reporters[-1] if reporters and getattr(reporters[-1], "run_id", None) else None
    if recorder is not None:
        print(where_to_see(recorder.run_id, recorder.settings, kept=cfg.tracking.get("save_model") != "none"))
    return 0 if result.status == "finished" else 1


def reporters_for(cfg: DictConfig, quiet: bool, name: str, overrides: Sequence[str], folder: Path | None = None) -> list[Reporter]:
    """Everything that listens to the run: the place to add a listener. The MLflow recorder,
    with tracking on, comes last."""
    reporters: list[Reporter] = [] if quiet else [TrialProgress()]
    if cfg.get("tracking") and cfg.tracking.get("enabled", False):
        from sweeper.records.recorder import record_run  # MLflow loads only when tracking is on
        from sweeper.records.run_record import run_label
        from sweeper.training.saved_models import keepers, save_model_setting

        setting = save_model_setting(cfg)  # checked before the store is touched
        # In an experiment of train runs, named by what it trained (a sweep's holds its trials).
        recorder = record_run(
            cfg,
            run_name=run_label(name, cfg),
            overrides=overrides,
            experiment=cfg.tracking.get("train_experiment"),
            tags={"sweeper.folder": str(folder)} if folder else None,
        )
        # a run of its own is the best there is: `best` keeps it (the weights go before the run ends)
        reporters += [*keepers(setting, recorder, lambda result: True), recorder]
    return reporters


def where_to_see(run_id: str, settings: TrackingSettings, kept: bool) -> str:
    """The run's id, how to open it, and how to export the weights it kept."""
    browse = settings.label if settings.is_server else f"mlflow ui --backend-store-uri {settings.label}"
    weights = f"; its weights: sweeper export {run_id} model.pt" if kept else ""
    return f"MLflow run {run_id} (experiment {settings.experiment}); see it: {browse}{weights}"


def output_folder(parent: Path, name: str | None) -> Path:
    """results/train/<name>: a name given must be new; the default (the time) is made unique."""
    if name is not None:
        if "/" in name or name in ("", ".", ".."):
            raise ConfigError(f"--name: {name!r} must be a plain folder name, e.g. --name first-try.")
        if (parent / name).exists():
            raise ConfigError(f"--name: {parent / name} exists already; choose another --name.")
        return parent / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = parent / stamp, 1
    while folder.exists():
        n += 1
        folder = parent / f"{stamp}-{n}"
    return folder


def save_result(folder: Path, cfg: DictConfig, result: TrialResult) -> None:
    """config.yaml (resolved: it reruns as it ran) and result.json (every step and epoch).

    Passwords in URLs (a storage or tracking URL) are masked: a rerun needs neither.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(mask_text(OmegaConf.to_yaml(cfg, resolve=True)))
    (folder / "result.json").write_text(json.dumps(asdict(result), indent=1))
