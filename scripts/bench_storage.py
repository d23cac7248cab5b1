"""Measure Optuna's embedded storages under several worker processes, and write the table.

    .venv/bin/python scripts/bench_storage.py            # writes results/bench/storage.md

Each worker process loops ask -> 4 suggestions -> 4 epoch reports (trial.report + should_prune,
as the pruning reporter does) -> tell, with no training in between, so the storage is all that is
measured: the worst case for contention. Storages: JournalStorage(JournalFileBackend) and SQLite
through RDBStorage, with and without heartbeats (a heartbeat thread writes to the database while
a trial runs, which is what a dead worker's retry rests on).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning

STORAGES = ("journal", "sqlite", "sqlite+heartbeat")


def open_storage(kind: str, folder: Path) -> optuna.storages.BaseStorage:
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    heartbeat = {"heartbeat_interval": 1, "grace_period": 10} if kind.endswith("heartbeat") else {}
    return optuna.storages.RDBStorage(
        f"sqlite:///{folder / 'study.db'}",
        engine_kwargs={"connect_args": {"timeout": 60}},
        **heartbeat,
    )


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-4, 1e-1, log=True)
    y = trial.suggest_float("y", 0.1, 0.9)
    trial.suggest_categorical("shape", ["a", "b", "c"])
    trial.suggest_int("n", 1, 8)
    for epoch in range(4):
        trial.report(x * y / (epoch + 1), epoch + 1)
        trial.should_prune()
    return x * y


def worker(kind: str, folder: str, left, latencies) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
    study = optuna.load_study(study_name="bench", storage=open_storage(kind, Path(folder)), sampler=optuna.samplers.RandomSampler())
    mine, errors = [], 0
    while True:
        with left.get_lock():
            if left.value <= 0:
                break
            left.value -= 1
        start = time.perf_counter()
        try:
            # optimize(n_trials=1) is what a sweep worker runs per trial (it keeps the heartbeat).
            study.optimize(objective, n_trials=1)
        except Exception:  # noqa: BLE001 - counted and reported, not hidden
            errors += 1
        mine.append(time.perf_counter() - start)
    latencies.put((mine, errors))


def measure(kind: str, n_workers: int, n_trials: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        optuna.create_study(study_name="bench", storage=open_storage(kind, Path(folder)))
        context = mp.get_context("spawn")
        left, latencies = context.Value("i", n_trials), context.Queue()
        processes = [context.Process(target=worker, args=(kind, folder, left, latencies)) for _ in range(n_workers)]
        start = time.perf_counter()
        for process in processes:
            process.start()
        results = [latencies.get() for _ in processes]
        for process in processes:
            process.join()
        seconds = time.perf_counter() - start
        times = sorted(t for mine, _ in results for t in mine)
        stored = optuna.load_study(study_name="bench", storage=open_storage(kind, Path(folder))).trials
        return {
            "storage": kind,
            "workers": n_workers,
            "trials/s": n_trials / seconds,
            "p50 ms": 1000 * statistics.median(times),
            "p95 ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "errors": sum(e for _, e in results),
            "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored),
        }


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", ExperimentalWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("results/bench/storage.md"))
    args = parser.parse_args()
    rows = []
    for kind in STORAGES:
        for n_workers in args.workers:
            row = measure(kind, n_workers, args.trials)
            print(row, flush=True)
            rows.append(row)
    write_table(rows, args)


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |" for row in rows),
    ]
    command = f".venv/bin/python scripts/bench_storage.py --trials {args.trials} --workers {' '.join(map(str, args.workers))}"
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, optuna {optuna.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = args.out.read_text() if args.out.exists() else ""
    marker = "<!-- measured -->"
    head = body.split(marker)[0] if marker in body else "# Study storage under parallel workers\n\n"
    args.out.write_text(
        f"{head}{marker}\n\nReproduce: `{command}`\n\nMachine: {machine}\n\n"
        f"{args.trials} trials per row, each ask -> 4 suggestions -> 4 reports -> tell, no training.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
