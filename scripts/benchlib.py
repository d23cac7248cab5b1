"""What the benchmark scripts share: the machine they ran on, interleaved repeats and medians,
the CSV and Markdown they write, the generated data and model sizes they train, and a sweep run
the way `sweeper sweep` runs it.

Every script writes results/bench/<name>.csv (every figure, one row per measurement) and
results/bench/<name>.md. In an existing <name>.md, whatever stands above the `<!-- measured -->`
line (the analysis, written by hand) is kept; below it go the exact command, the machine and the
tables of this run.

Imports here are the standard library's, sweeper.trial.events (plain dataclasses) and sweeper.analysis.tables only, so `--help`
is instant and a worker process that imports a script (for its trainer wrapper) pays nothing.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sweeper.analysis import tables
from sweeper.analysis.ui import MlflowUiServer
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "results" / "bench"
MARKER = "<!-- measured -->"
PACKAGES = ("torch", "optuna", "hydra-core", "sqlalchemy", "mlflow")
LOAD_AT_START = os.getloadavg()  # other work on the machine skews every figure: say how much there was


# --- the command line -------------------------------------------------------------------------


def run(main: Callable[[], None]) -> None:
    """A benchmark's main, then the end of the process as `sweeper` ends (sweeper.cli.exit_now:
    threads finished, exit handlers run, streams flushed), without the teardown of every module
    it imported: torch's, MLflow's and matplotlib's took 1-2.5 s of a script's end. A main that
    raises ends as Python ends, with its traceback."""
    from sweeper.cli import exit_now

    main()
    exit_now(0)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every script takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where <name>.csv and <name>.md go")
    parser.add_argument("--quick", action="store_true", help="the smallest settings (smoke test): figures mean little")
    return parser


def command() -> str:
    """The command that ran this script, as it can be pasted again from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join([".venv/bin/python", str(shown), *sys.argv[1:]])


# --- the machine ------------------------------------------------------------------------------


def version(package: str) -> str:
    """A package's installed version, read without importing it ("-" when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def machine(device: str = "cpu") -> str:
    """One line: platform, cores, memory, load average (1, 5, 15 min) when measuring began and
    ended, Python, packages, GPU."""
    from sweeper.sweep.workers import usable_cores

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " -> ".join(", ".join(f"{x:.1f}" for x in loads) for loads in (LOAD_AT_START, os.getloadavg()))
    packages = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    line = (
        f"{platform.platform()}, {usable_cores()} CPU cores, {memory:.0f} GiB, load average {load}; "
        f"Python {platform.python_version()}, {packages}"
    )
    if device.startswith("cuda"):
        import torch

        line += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return line


# --- repeats and statistics -------------------------------------------------------------------


def interleave(variants: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run the variants in turn, A, B, A, B, ..., `repeats` rounds after `warmup` untimed ones;
    each call returns the figure it measured. Interleaving spreads any drift of the machine (other
    work, clock, caches) over every variant alike, so ratios of one round are fair."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + repeats):
        for name, measure in variants.items():
            value = measure()
            if round_index >= warmup:
                samples[name].append(value)
        print(f"round {round_index + 1}/{warmup + repeats}: " + ", ".join(f"{n} {v[-1]:.4g}" for n, v in samples.items() if v), flush=True)
    return samples


def machine_busy_seconds() -> float:
    """CPU seconds the machine's cores have been busy since boot (user, nice, system, irq,
    softirq: /proc/stat, Linux; 0 elsewhere). Read before and after a command, the difference is
    what it cost the machine: its own processes and those it started, whoever reaped them (and
    anything else running then, which a quiet machine keeps small)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def map_side_by_side(function: Callable[[Any], Any], jobs: Sequence[Any], processes: int) -> list[Any]:
    """`function` over `jobs`, `processes` at a time, each in a fresh process (spawn: no torch
    thread pool or open database of this one crosses into it); with one process asked for, here,
    one after another. A job started afresh first spends seconds of a core importing torch and
    the rest again: --quick's runs (the tests' smoke runs of the scripts) take them here."""
    if processes <= 1:
        return [function(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(min(len(jobs), processes)) as pool:
        return pool.map(function, jobs, chunksize=1)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round by round: the ratio of two variants measured side by side."""
    return [a / b for a, b in zip(numerators, denominators)]


# --- writing ----------------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of one shape (dicts with the same keys) as a Markdown table."""
    columns = list(rows[0])
    return tables.markdown_table(columns, [[row[c] for c in columns] for row in rows])


def publish(
    out_dir: Path,
    name: str,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    notes: Sequence[str] = (),
    sections: Sequence[str] = (),
    device: str = "cpu",
) -> Path:
    """Write <name>.csv (the rows) and <name>.md (the kept analysis, then the command, the
    machine, the notes, the rows' table and any further sections). Returns the Markdown path."""
    write_csv(out_dir / f"{name}.csv", rows)
    path = out_dir / f"{name}.md"
    body = path.read_text() if path.exists() else ""
    head = body.split(MARKER)[0] if MARKER in body else f"# {title}\n\n"
    parts = [
        f"Reproduce: `{command()}`",
        f"Machine: {machine(device)}",
        *notes,
        markdown_table(rows),
        *sections,
    ]
    path.write_text(f"{head}{MARKER}\n\n" + "\n\n".join(parts) + "\n")
    print(f"wrote {path} and {name}.csv")
    return path


# --- what a trial's reporters cost -----------------------------------------------------------


class HookClock(Reporter):
    """Passes every event on to `inner` and adds up the seconds each kind of hook takes there."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}

    def _timed(self, hook: str, event: Any) -> Any:
        started = time.perf_counter()
        answer = getattr(self.inner, hook)(event)
        self.seconds[hook] = self.seconds.get(hook, 0.0) + time.perf_counter() - started
        return answer

    def on_start(self, event: StartEvent) -> None:
        self._timed("on_start", event)

    def on_step(self, event: StepEvent) -> None:
        self._timed("on_step", event)

    def on_epoch(self, event: EpochEvent) -> bool | None:
        return self._timed("on_epoch", event)

    def on_end(self, result: TrialResult) -> None:
        self._timed("on_end", result)


# --- what is trained --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """A model config and the input shape of the generated data it trains on."""

    overrides: tuple[str, ...]
    shape: tuple[int, ...]
    steps: int  # training steps per timed run (trainer benchmark)


MODEL_SIZES = {
    # the default model at digits' size: small enough that fixed per-step costs show most
    "mlp-tiny": ModelSize(("model=mlp",), (1, 8, 8), 600),
    # 6.3M parameters: matrix work dominates each step
    "mlp-wide": ModelSize(("model=mlp", "model.net.hidden=[2048,2048]"), (3, 16, 16), 80),
    # two conv blocks with batch norm on 16x16 colour images
    "cnn": ModelSize(("model=cnn",), (3, 16, 16), 80),
}


def tensor_data(folder: Path, shape: Sequence[int], n_train: int, n_valid: int, classes: int = 10, seed: int = 0) -> list[str]:
    """Write a generated classification set (labels from a random linear teacher, so it can be
    learnt) for `data=tensors`; return the overrides that train on it. Needs torch alone."""
    import torch

    path = folder / f"data-{'x'.join(map(str, shape))}-{n_train}-{n_valid}-{classes}-{seed}.pt"
    if not path.exists():
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n_train + n_valid, *shape, generator=generator)
        teacher = torch.randn(math.prod(shape), classes, generator=generator)
        y = (x.flatten(1) @ teacher).argmax(dim=1)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"train_x": x[:n_train], "train_y": y[:n_train], "valid_x": x[n_train:], "valid_y": y[n_train:]}, path)
    return [
        "data=tensors",
        f"data.source.path={path}",
        f"data.shape=[{','.join(map(str, shape))}]",
        f"data.num_classes={classes}",
    ]


def check_finished(result: TrialResult, what: str) -> TrialResult:
    """A measured trial must have trained to its end: anything else would time something else."""
    if result.status != "finished":
        raise RuntimeError(f"{what} ended {result.status}: {result.reason}")
    return result


# --- a sweep, run as `sweeper sweep` runs it --------------------------------------------------


@dataclass
class SweepRun:
    study: Any  # optuna.Study
    launched: float  # time.time() when the workers were launched
    seconds: float  # from launching the workers until the last one exited
    trials: list[Any]  # the finished (complete or pruned) trials, by number

    def span(self) -> float:
        """From the first trial's start (ask) to the last trial's end (tell)."""
        starts = [t.datetime_start.timestamp() for t in self.trials]
        ends = [t.datetime_complete.timestamp() for t in self.trials]
        return max(ends) - min(starts)

    def train_seconds(self) -> list[float]:
        """Each trial's time inside train() (the trainer's own clock)."""
        return [float(t.user_attrs["seconds"]) for t in self.trials]


def run_sweep(overrides: Sequence[str], folder: Path) -> SweepRun:
    """What `sweeper sweep` does, less its live view and summary: check the plan, start the
    sweep's MLflow run (a no-op with tracking off), create the study, launch `sweeper worker`
    processes (one per slot) and wait for them. A worker that fails raises, naming its log; so
    does a sweep that ends short of its trials (its workers stop at sweep.max_failures)."""
    import optuna
    from optuna.trial import TrialState

    from sweeper.sweep.counts import count_trials
    from sweeper.sweep.launchers import launch_workers
    from sweeper.sweep.plan import plan_sweep
    from sweeper.sweep.study import open_study
    from sweeper.sweep.workers import tracking_module

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_sweep(overrides)
    tracking = tracking_module()
    if tracking is not None:
        tracking.prepare_sweep(plan.cfg, plan.name)
    study = open_study(plan, create=True)
    launched, started = time.time(), time.perf_counter()
    workers = launch_workers(plan, folder / "logs", None)
    try:
        while any(w.poll() is None for w in workers):
            time.sleep(0.02)  # the wall time is read to within this
    finally:
        for worker in workers:
            worker.stop()
    seconds = time.perf_counter() - started
    failed = [w for w in workers if w.poll() != 0]
    if failed:
        raise RuntimeError(f"{failed[0].label} exited with {failed[0].poll()}; see {failed[0].log}")
    if count_trials(study).finished < plan.n_trials:
        failures = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = failures[0].user_attrs.get("reason") if failures else None
        raise RuntimeError(f"sweep {plan.name} ended short of {plan.n_trials} trials; the first failure: {reason}")
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return SweepRun(study, launched, seconds, sorted(finished, key=lambda t: t.number))


# --- a local MLflow server (the tracking benchmark and the tests) -----------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer(MlflowUiServer):
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in `folder`; stop() and start()
    again (same port, same store) play a tracking server that goes away and comes back."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        artifacts = ("--artifacts-destination", str(folder / "artifacts"))
        super().__init__(f"sqlite:///{folder}/mlflow.db", port or free_port(), folder / "server.log", artifacts)
