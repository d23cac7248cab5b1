"""How long `sweeper` takes to say no (or that there is nothing to do), timed from the shell.

    .venv/bin/python scripts/bench_refusals.py                          # this checkout, 5 rounds
    .venv/bin/python scripts/bench_refusals.py --against /path/to/older  # and another checkout, side by side

Each answer below needs no trial: a sweep under a name whose recorded definition differs (and
its --dry-run), a sweep that already has its trials, an export to a path that exists, `confirm
--seeds 0`, a mistaken override, a report of a sweep that is not there. Each command runs as a
user runs it (`python -m sweeper.cli`, this venv, the checkout's code first on PYTHONPATH) in a
fresh copy of one prepared folder (a sweep `first` with no trials, a sweep `done` with two
finished ones, a file `model.pt`), timed from spawn to exit; its exit code is checked. Rounds
interleave every command and every checkout. The commands use the default tracking=local.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

SWEEP = ("sweep.cover=false",)  # the sweeps' trials are made here, not drawn from the cover
# (what is asked, the command line, the exit code it must end with)
CASES = [
    ("sweep: name taken by another definition", ["sweep", "sweep.name=first", *SWEEP, "sampler=random"], 2),
    ("sweep --dry-run: the same", ["sweep", "--dry-run", "sweep.name=first", *SWEEP, "sampler=random"], 2),
    ("sweep: already finished", ["sweep", "sweep.name=done", *SWEEP, "sweep.n_trials=2"], 0),
    ("export: the path exists", ["export", "done", "model.pt"], 2),
    ("confirm --seeds 0", ["confirm", "--seeds", "0", "done"], 2),
    ("sweep: a mistaken override", ["sweep", "sweep.n_trials=0"], 2),
    ("report: no such sweep", ["report", "nosuch"], 2),
]


def prepare(folder: Path) -> Path:
    """The folder every command starts from: two sweeps' studies as `sweeper sweep` makes them
    (made with this checkout's code, in a process of its own), and an existing model.pt."""
    make = (
        "import sys\nfrom sweeper.sweep.plan import plan_sweep\nfrom sweeper.sweep.study import open_study\n"
        "for name, finished in (('first', 0), ('done', 2)):\n"
        f"    study = open_study(plan_sweep([f'sweep.name={{name}}', *{list(SWEEP)!r}], validate=False), create=True)\n"
        "    for value in range(finished):\n"
        "        study.tell(study.ask(), float(value))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(benchlib.REPO)}
    subprocess.run([sys.executable, "-c", make], cwd=folder, env=env, check=True, capture_output=True)
    (folder / "model.pt").write_bytes(b"kept")
    return folder


def timed(template: Path, scratch: Path, code_root: Path, argv: list[str], expected: int | None) -> float:
    """Seconds from spawn to exit of `sweeper ARGV` with `code_root`'s code, in a fresh copy of
    `template`; its exit code must be `expected` (None: any, for an older checkout that may
    answer otherwise, e.g. a --dry-run that approved what the sweep refused)."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    shutil.copytree(template, work, dirs_exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweeper.cli", *argv], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if expected is not None and done.returncode != expected:
        raise SystemExit(f"{code_root}: `sweeper {' '.join(argv)}` exited {done.returncode}, not {expected}:\n{done.stderr[-2000:]}")
    shutil.rmtree(work)
    return seconds


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout of sweeper, timed side by side (e.g. an older commit's)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    roots = {"this checkout": benchlib.REPO}
    if args.against:
        roots["against"] = args.against.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        template = prepare(Path(tempfile.mkdtemp(dir=scratch)))
        variants = {
            (case, root_name): (
                lambda root=root, argv=argv, code=code if root_name == "this checkout" else None: timed(
                    template, Path(scratch), root, argv, code
                )
            )
            for case, argv, code in CASES
            for root_name, root in roots.items()
        }
        samples = benchlib.interleave({f"{c} | {r}": f for (c, r), f in variants.items()}, rounds, warmup=0 if args.quick else 1)
    rows = []
    for case, argv, code in CASES:
        row = {"answer": case, "command": f"`sweeper {' '.join(argv)}`", "exit": code}  # this checkout's, checked
        for root_name in roots:
            row[f"{root_name}: median s"] = round(benchlib.median(samples[f"{case} | {root_name}"]), 2)
            row[f"{root_name}: max s"] = round(max(samples[f"{case} | {root_name}"]), 2)
        if args.against:
            ratio = benchlib.ratios(samples[f"{case} | this checkout"], samples[f"{case} | against"])
            row["this / against (median of rounds)"] = round(benchlib.median(ratio), 3)
        rows.append(row)
    notes = [
        f"{rounds} timed rounds{'' if args.quick else ' after 1 untimed one'}, interleaved; seconds from spawn to exit of `python -m sweeper.cli`.",
        *([f"against: {args.against}"] if args.against else []),
        "The machine was shared with other work while this ran (see the load average): compare the "
        "columns of one table, not figures of other tables.",
    ]
    benchlib.publish(args.out_dir, "refusals", "Saying no: seconds from the command to its answer", rows, notes=notes)


if __name__ == "__main__":
    benchlib.run(main)
