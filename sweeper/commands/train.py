"""`sweeper train`: run one trial from Hydra overrides and keep its result.

    sweeper train model=cnn lr=fastai lr.high=3e-3 shape=torch_one_cycle

Prints an epoch line as it trains and a summary at the end; writes the resolved config and the
curves to results/train/<time>/ (config.yaml, result.json) and records an MLflow run when
tracking is on. `sweeper rerun results/train/<time>` runs it again.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper.config import compose_config
from sweeper.events import Reporter
from sweeper.progress import EpochPrinter
from sweeper.trainer import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="folder name under results/train/ (default: the start time)")
    parser.add_argument("--quiet", action="store_true", help="no epoch lines")


def reporters_for(cfg: DictConfig, quiet: bool) -> list[Reporter]:
    """Everything that listens to the run: the console, and MLflow when tracking is on."""
    reporters: list[Reporter] = [] if quiet else [EpochPrinter()]
    if cfg.get("tracking") and cfg.tracking.get("enabled", False):
        from sweeper import tracking

        reporters.append(tracking.record_run(cfg))
    return reporters


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides, args.config_dir)
    result = train(cfg, reporters_for(cfg, args.quiet))
    folder = Path(cfg.results_dir) / "train" / (args.name or time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    (folder / "result.json").write_text(json.dumps(asdict(result), indent=1))
    print(f"result: {folder}")
    return 0 if result.status == "finished" else 1
