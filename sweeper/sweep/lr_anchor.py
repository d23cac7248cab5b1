"""`search.lr.high=auto`: each slice strategy's head-lr range, anchored on lr_find, set once.

Before a new sweep's first trial, `anchor_plan` runs fastai's lr_find for the model and data
once per slice strategy, with that strategy's slice applied (every group ramps with the head),
in a process of its own (`sweeper.training.lr_find_job`: the sweep's process never loads
torch), and sets each strategy's range by the rule of `sweeper.sweep.lr_anchor_rule`. A curve
that gives nothing usable keeps the configured fallback range, said in one line.

The result is recorded in the study (`lr_anchor`: the rule, each strategy's curve, suggestions,
range or reason, and the seconds it took) when the study is created. From then on the ranges are
read, never found again: a resumed sweep (`ANCHOR_ATTR` in its study) and every worker that
joins it (`recorded_plan`, which cannot run lr_find) sample from the recorded ranges. The
sweep's definition holds the request (auto, the rule's settings, the fallback), so a resume
with other settings is refused like any other change of definition.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna

from sweeper.boundary.recorded_sweep import ANCHOR_ATTR, recorded_anchor  # what lr_find found: read there, checked
from sweeper.config import ConfigError
from sweeper.sweep.lr_anchor_rule import anchored_range
from sweeper.sweep.plan import SweepPlan

__all__ = ["ANCHOR_ATTR", "anchor_plan", "describe_anchor", "find_in_subprocess", "lr_find_requests", "recorded_plan"]


Finder = Callable[[dict[str, Any]], dict[str, Any]]  # request -> per strategy curve (lr_find_job)


def lr_find_requests(plan: SweepPlan) -> dict[str, list[str]]:
    """Per strategy, the overrides lr_find runs with: the strategy and its slice's proportions.
    The head lr given here is replaced by lr_find's; a geometric slice takes the log-centre of
    the searched low_ratio range (lr_find needs one slice, and the ratio is sampled later)."""
    space = plan.space
    requests = {}
    for strategy in space.strategies():
        overrides = [f"lr={strategy}", "lr.high=1.0"]
        if strategy == "geometric" and space.low_ratio is not None:
            low, high = space.low_ratio.edges()[0], space.low_ratio.edges()[-1]
            overrides.append(f"lr.low={math.sqrt(low * high)!r}")
        requests[strategy] = overrides
    return requests


def find_in_subprocess(request: dict[str, Any]) -> dict[str, Any]:
    """Run `sweeper.training.lr_find_job` on `request`; its answer (see there)."""
    done = subprocess.run([sys.executable, "-m", "sweeper.training.lr_find_job"], input=json.dumps(request), capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or f"exit code {done.returncode}").splitlines()
        raise ConfigError(f"search.lr.high: auto needs lr_find, which failed ({lines[-1]}); fix that, or give search.lr.high a range.")
    return json.loads(done.stdout.strip().splitlines()[-1])


def anchor_plan(
    plan: SweepPlan, study: optuna.Study | None, folder: Path, find: Finder | None = None, say: Callable[[str], None] = print
) -> tuple[SweepPlan, dict[str, Any] | None]:
    """The plan with each strategy's range set, and the record of how (None when the space asks
    for no anchoring). A study that holds a record is read, and lr_find is not run again."""
    if plan.space.anchor is None:
        return plan, None
    record = recorded_anchor(study.user_attrs) if study is not None else None  # one that is not sweeper's: refused
    if record is not None:
        applied = _applied(plan, record)
        say(f"lr ranges: as the sweep recorded them (lr_find took {record['seconds']:.1f} s when it began; not run again)")
        return applied, record
    record = _find(plan, folder, find or find_in_subprocess)
    for line in describe_anchor(record):
        say(line)
    return _applied(plan, record), record


def recorded_plan(plan: SweepPlan, study: optuna.Study) -> SweepPlan:
    """A joining worker's plan: the ranges the sweep recorded (this never runs lr_find)."""
    if plan.space.anchor is None:
        return plan
    record = recorded_anchor(study.user_attrs)
    if record is None:
        raise ConfigError(
            f"search.lr.high: auto, but the sweep {plan.name!r} has no lr ranges recorded yet; start (or resume) it "
            f"with `sweeper sweep` first, which runs lr_find once, then join it."
        )
    return _applied(plan, record)


def _find(plan: SweepPlan, folder: Path, find: Finder) -> dict[str, Any]:
    rule = plan.space.anchor
    request = {
        "overrides": list(plan.overrides),
        "config_dirs": list(plan.config_dirs),
        "strategies": lr_find_requests(plan),
        "start_lr": rule.start_lr,
        "end_lr": rule.end_lr,
        "num_it": rule.num_it,
        "plots": str(folder),
    }
    started = time.perf_counter()
    curves = find(request)
    seconds = time.perf_counter() - started  # the process's start included: what the sweep paid
    strategies = {}
    for strategy, curve in curves.items():
        found = anchored_range(curve["lrs"], curve["losses"], curve["suggestions"], rule.num_it, rule)
        strategies[strategy] = {**curve, "range": list(found.range) if found.range else None, "reason": found.reason}
    return {"rule": asdict(rule), "seconds": seconds, "strategies": strategies}


def _applied(plan: SweepPlan, record: Mapping[str, Any]) -> SweepPlan:
    """The plan with the ranges of `record` (what lr_find found, as recorded_anchor or _find
    gives it); one that lacks a strategy of this sweep is refused rather than guessed at."""
    ranges = {}
    for strategy in plan.space.strategies():
        found = record["strategies"].get(strategy)
        if found is None:
            raise ConfigError(
                f"search.lr.high: the study's recorded lr ranges have none for {strategy}; "
                f"give this sweep another name (sweep.name=...) to find the ranges again."
            )
        ranges[strategy] = tuple(found["range"]) if found["range"] is not None else None
    return replace(plan, space=plan.space.with_high_ranges(ranges))


def describe_anchor(record: Mapping[str, Any]) -> list[str]:
    """What lr_find found, one line per strategy, and its cost."""
    lines = [f"lr_find: {record['seconds']:.1f} s, once, before the first trial"]
    for strategy, found in record["strategies"].items():
        suggestions = ", ".join(f"{name} {lr:.2e}" for name, lr in found["suggestions"].items())
        if found["range"] is None:
            lines.append(f"  {strategy}: nothing usable: {found['reason']}; falling back to the configured range")
        else:
            low, high = found["range"]
            lines.append(f"  {strategy}: lr.high in [{low:.3g}, {high:.3g}) (log), from {suggestions}")
    return lines


def record_in_parent_run(records: Any, record: Mapping[str, Any], folder: Path) -> None:
    """lr_find's curves (JSON), plots and suggestions, and its cost, on the sweep's MLflow run."""
    folder.mkdir(parents=True, exist_ok=True)
    curves = folder / "lr_find.json"
    curves.write_text(json.dumps(record, indent=1))
    plots = [Path(found["plot"]) for found in record["strategies"].values() if Path(found.get("plot", "")).is_file()]
    tags = {}
    for strategy, found in record["strategies"].items():
        for name, lr in found["suggestions"].items():
            tags[f"lr_find.{strategy}.{name}"] = f"{lr:.4g}"
        low_high = found["range"]
        tags[f"lr_find.{strategy}.range"] = f"[{low_high[0]:.4g}, {low_high[1]:.4g})" if low_high else f"fallback: {found['reason']}"
    records.attach_files([curves, *plots], "lr_find", tags, metrics={"lr_find_seconds": record["seconds"]})
