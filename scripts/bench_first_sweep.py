"""The README's first command, `sweeper sweep` on the embedded default, as a new user waits for it.

    .venv/bin/python scripts/bench_first_sweep.py                          # this checkout, 3 rounds
    .venv/bin/python scripts/bench_first_sweep.py --against /path/to/older  # and another checkout, side by side

The default sweep (the digits MLP, sweeper's own trainer: torch in the workers) with a few
trials, in a fresh folder each time (no study, no MLflow store yet), run as a user runs it
(`python -m sweeper.cli`, this venv, the checkout's code first on PYTHONPATH) and timed from
spawn to exit. The study's own records cut it into before the first trial (the first trial's
start), and after the last (its end to the exit). Rounds interleave the checkouts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import optuna


def timed(code_root: Path, scratch: Path, trials: int, epochs: int) -> dict[str, float]:
    """One default sweep in a fresh folder with `code_root`'s code: its seconds, cut by its study."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    argv = ["sweep", f"sweep.n_trials={trials}", "sweep.live=false", *([f"train.epochs={epochs}"] if epochs else [])]
    started, busy = time.time(), benchlib.machine_busy_seconds()
    done = subprocess.run([sys.executable, "-m", "sweeper.cli", *argv], cwd=work, env=env, capture_output=True, text=True)
    ended, busy = time.time(), benchlib.machine_busy_seconds() - busy
    if done.returncode != 0:
        raise SystemExit(f"{code_root}: `sweeper {' '.join(argv)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{work}/results/studies.db")
    first = min(trial.datetime_start.timestamp() for trial in study.trials)
    last = max(trial.datetime_complete.timestamp() for trial in study.trials)
    return {"wall_s": ended - started, "before_first_s": first - started, "after_last_s": ended - last, "machine_cpu_s": busy}


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--against", type=Path, help="another checkout of sweeper, timed side by side (e.g. an older commit's)")
    args = parser.parse_args()
    rounds, trials, epochs = (1, 1, 1) if args.quick else (args.rounds, args.trials, 0)
    roots = {"this checkout": benchlib.REPO, **({"against": args.against.resolve()} if args.against else {})}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(rounds):
            for name, root in roots.items():
                runs[name].append(timed(root, Path(scratch), trials, epochs))
                print(f"round {round_index + 1}: {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[name][-1].items()), flush=True)
    rows = [
        {"checkout": name, "rounds": len(got), **{key: round(benchlib.median(run[key] for run in got), 2) for key in got[0]}}
        for name, got in runs.items()
    ]
    notes = [
        f"`sweeper sweep sweep.n_trials={trials} sweep.live=false`{f' train.epochs={epochs}' if epochs else ''} in a fresh folder, "
        f"{rounds} rounds interleaving the checkouts; medians, seconds from spawn to exit, cut by the study's "
        "first trial start and last trial end; `machine_cpu_s`: the seconds the machine's cores were busy meanwhile (/proc/stat: the command's processes, and anything else running).",
        *([f"against: {args.against}"] if args.against else []),
        "The machine may be shared with other work (see the load average): compare the rows of one table.",
    ]
    benchlib.publish(args.out_dir, "first_sweep", "The README's first command, as a new user waits for it", rows, notes=notes)


if __name__ == "__main__":
    benchlib.run(main)
