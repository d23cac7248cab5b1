"""A sweep's wall time as its user waits for it: the whole command, timed from the shell.

    .venv/bin/python scripts/bench_end_to_end.py                 # 3 rounds, baseline included (~5 min on 2 cores)
    .venv/bin/python scripts/bench_end_to_end.py --no-baseline   # sweeper alone: no virtual environment made
    .venv/bin/python scripts/bench_end_to_end.py --profile       # and where the seconds go (two more sweeps)

16 trials that each sleep a drawn 0.2-2.2 s (seeded: every run does the same work; see
sleep_trials.py), on 4 workers, for:

- `sweeper sweep` (the console script of this venv, as a subprocess) with tracking=none,
  tracking=local with the stores already created, tracking=local in a fresh directory, and
  tracking=server (a local `mlflow server`, started once, its store created);
- the baseline: the real hydra-optuna-sweeper with Hydra's joblib launcher (n_jobs=4) on the
  same sleeps, in its own virtual environment (optuna<3), which this script creates when missing.

Each run is timed from spawn to exit (time.time() in this process) and split by the trials' own
records into before the first trial (command start -> first trial's sleep begins), trials
(first sleep begins -> last sleep ends) and after the last trial (-> the command exited); ideal
= sum of the sleeps / workers. Rounds interleave every variant. With --profile, one more sweep
(tracking=local, stores created) runs under `-X importtime` and one under cProfile (the sweep's
process and every worker), and the md lists where their seconds went; the raw profiles stay in
<out-dir>/end_to_end_profile/.
"""

from __future__ import annotations

import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import sleep_trials

SCRIPTS = Path(__file__).resolve().parent
SWEEPER = Path(sys.executable).parent / "sweeper"  # the console script of this venv
HYDRA_APP = SCRIPTS / "hydra_sleep_app.py"
HYDRA_VENV = benchlib.OUT_DIR / ".venv-hydra-optuna"
# hydra-optuna-sweeper 1.3.0 needs optuna>=2.10,<3; optuna 2.10 predates SQLAlchemy 2; hydra-core
# as sweeper's (pip would otherwise take a 1.4 pre-release).
HYDRA_PINS = (
    "hydra-core==1.3.2", "hydra-optuna-sweeper==1.3.0", "hydra-joblib-launcher==1.2.0", "optuna==2.10.1", "sqlalchemy<2",
)  # fmt: skip
BASELINE = "hydra-optuna-sweeper + joblib"
# --tracking's choices -> (the variant's name, sweeper's tracking, stores created before the run)
SWEEPER_VARIANTS = {
    "none": ("sweeper, tracking=none", "none", True),
    "local": ("sweeper, tracking=local, stores created", "local", True),
    "fresh": ("sweeper, tracking=local, fresh directory", "local", False),
    "server": ("sweeper, tracking=server", "server", True),
}
PROFILED = "local"
SEARCH = ("search=slices_and_shapes", "sampler=tpe", "pruner=none")  # sweeper's default space; no pruning: every trial sleeps in full
HYDRA_SEARCH = ("lr=tag(log, interval(1e-5, 1e-1))", "shape=choice(one_cycle, flat_cos)", "pct_start=interval(0.1, 0.5)")


class Bench:
    def __init__(self, args, folder: Path) -> None:
        self.args, self.folder = args, folder
        self.sleeps = sleep_trials.draw_sleeps(args.trials, args.low, args.high, args.seed)
        self.kept = folder / "kept"  # the results_dir whose stores exist before the timed runs
        self.server = None
        self.runs = 0

    # --- one timed command --------------------------------------------------------------------

    def timed(self, variant: str, command: list[str], cwd: Path, env: dict[str, str]) -> dict:
        """Run `command` to its end; its times, split by the trials' records."""
        self.runs += 1
        work = sleep_trials.prepare_work(self.folder / f"work-{self.runs}", self.sleeps)
        env = {**env, sleep_trials.WORK: str(work)}
        log = work / "command.log"
        load_before = os.getloadavg()[0]
        with open(log, "wb") as out:
            spawned = time.time()
            done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            exited = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"{variant} exited with {done.returncode}: {log.read_text()[-3000:]}")
        trials = sleep_trials.read_trials(work)
        if len(trials) != self.args.trials:
            raise RuntimeError(f"{variant} ran {len(trials)} trials, not {self.args.trials}; see {log}")
        first, last = min(t["started"] for t in trials), max(t["ended"] for t in trials)
        ideal = sum(self.sleeps) / self.args.workers
        wall = exited - spawned
        return {
            "variant": variant,
            "wall_s": wall,
            "before_first_s": first - spawned,
            "trials_s": last - first,
            "after_last_s": exited - last,
            "ideal_s": ideal,
            "of_ideal": ideal / wall,
            "wall_over_ideal": wall / ideal,
            "trials_of_ideal": ideal / (last - first),
            "processes": len({t["pid"] for t in trials}),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }

    # --- sweeper ------------------------------------------------------------------------------

    def sweeper_env(self, tracking: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEPER_STORAGE_URL", "SWEEPER_CONFIG_PATH")}
        # The trainer (sleep_trials) from scripts/; sweeper from this checkout, as installed in the venv.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), str(benchlib.REPO), os.environ.get("PYTHONPATH")]))
        if tracking == "server":
            env["MLFLOW_TRACKING_URI"] = self.server.url
        return env

    def sweeper_command(self, tracking: str, results: Path, name: str) -> list[str]:
        return [
            str(SWEEPER), "sweep", "sweep.trainer=sleep_trials.SleepTrainer", *SEARCH,
            f"sweep.n_trials={self.args.trials}", f"sweep.workers={self.args.workers}", f"tracking={tracking}",
            f"results_dir={results}", f"sweep.name={name}",
        ]  # fmt: skip

    def run_sweeper(self, variant: str, label: str, extra_env: dict[str, str] | None = None) -> dict:
        """One `sweeper sweep` of `variant`, its study named after it and `label` (new each run)."""
        name, tracking, kept = SWEEPER_VARIANTS[variant]
        results = self.kept if kept else self.folder / f"fresh-{self.runs + 1}"
        command = self.sweeper_command(tracking, results, f"e2e-{variant}-{label}")
        return self.timed(name, command, self.folder, {**self.sweeper_env(tracking), **(extra_env or {})})

    def create_stores(self) -> None:
        """The kept results_dir's Optuna and MLflow stores, created (schemas and all) by the
        libraries themselves, as an earlier sweep there would have left them."""
        import mlflow
        import optuna

        self.kept.mkdir(parents=True, exist_ok=True)
        optuna.storages.RDBStorage(f"sqlite:///{self.kept}/studies.db")
        mlflow.MlflowClient(f"sqlite:///{self.kept}/mlflow.db").search_experiments()

    # --- the baseline -------------------------------------------------------------------------

    def run_baseline(self, round_index: int) -> dict:
        out = self.folder / f"hydra-{round_index}"
        command = [
            str(self.args.hydra_venv / "bin" / "python"), str(HYDRA_APP), "--multirun",
            "hydra/sweeper=optuna", "hydra/launcher=joblib", f"hydra.sweeper.n_trials={self.args.trials}",
            f"hydra.sweeper.n_jobs={self.args.workers}", f"hydra.launcher.n_jobs={self.args.workers}",
            "hydra.sweeper.direction=maximize", f"hydra.sweeper.sampler.seed={self.args.seed}",
            f"hydra.sweep.dir={out}", *HYDRA_SEARCH,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
        return self.timed(BASELINE, command, self.folder, env)

    # --- rounds -------------------------------------------------------------------------------

    def measure(self) -> list[dict]:
        rows = []
        for round_index in range(1, self.args.rounds + 1):
            for variant in self.args.variants:
                row = self.run_baseline(round_index) if variant == BASELINE else self.run_sweeper(variant, f"round{round_index}")
                rows.append({"round": round_index, **row})
                print(
                    f"round {round_index}: {variant}: wall {row['wall_s']:.1f} s (before {row['before_first_s']:.1f}, "
                    f"trials {row['trials_s']:.1f}, after {row['after_last_s']:.1f}), {row['of_ideal']:.2f} of ideal",
                    flush=True,
                )
        return rows

    # --- profiles -----------------------------------------------------------------------------

    def profile_imports(self, out: Path) -> str:
        """One sweep under -X importtime (every process: PYTHONPROFILEIMPORTTIME); the costliest
        top-level imports of the sweep's process and of one worker."""
        row = self.run_sweeper(PROFILED, "importtime", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
        logs = {
            "sweep": self.folder / f"work-{self.runs}" / "command.log",
            "worker-0": self.kept / "sweeps" / f"e2e-{PROFILED}-importtime" / "worker-0.log",
        }
        for label, log in logs.items():
            shutil.copy(log, out / f"importtime-{label}.txt")
        parent, worker = logs["sweep"].read_text(), logs["worker-0"].read_text()
        sections = [
            f"Imports (`-X importtime`, one sweep: wall {row['wall_s']:.1f} s, before the first trial {row['before_first_s']:.1f} s):"
        ]
        for label, text in (("the sweep's process (`sweeper sweep`)", parent), ("worker 0 (`sweeper worker`)", worker)):
            total, top = import_costs(text)
            rows = [{"import": name, "cumulative_s": seconds} for name, seconds in top[: self.args.top]]
            sections.append(
                f"{label}: {total:.2f} s of imports in all; the costliest imports it made itself (with all they pulled in):\n\n"
                + benchlib.markdown_table(rows)
            )
        return "\n\n".join(sections)

    def profile_calls(self, out: Path) -> str:
        """One sweep with every process under cProfile (a sitecustomize that starts it and dumps
        it at exit); sweeper's own functions that took the longest, in the sweep and in a worker."""
        hook = self.folder / "profile-hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(PROFILE_HOOK)
        dumps = out / "cprofile"
        shutil.rmtree(dumps, ignore_errors=True)
        dumps.mkdir(parents=True)
        env = {"BENCH_E2E_PROFILE": str(dumps)}
        env["PYTHONPATH"] = os.pathsep.join([str(hook), self.sweeper_env(SWEEPER_VARIANTS[PROFILED][1])["PYTHONPATH"]])
        row = self.run_sweeper(PROFILED, "cprofile", extra_env=env)
        first = sleep_trials.read_trials(self.folder / f"work-{self.runs}")[0]["pid"]
        profiles = {int(p.stem): p for p in dumps.glob("*.prof")}
        worker_pid = first if first in profiles else None
        parent = [pid for pid in profiles if pid != worker_pid and not _is_worker(profiles[pid])]
        sections = [
            f"Calls (cProfile of every process of one sweep: wall {row['wall_s']:.1f} s; cProfile slows Python code, so compare within a column):"
        ]
        chosen = (
            ("the sweep's process", "sweep", parent[0] if parent else None),
            ("the worker that ran the first trial", "worker", worker_pid),
        )
        for label, name, pid in chosen:
            if pid is None:
                sections.append(f"{label}: no profile written")
                continue
            kept = shutil.move(profiles.pop(pid), dumps / f"{name}.prof")
            table = benchlib.markdown_table(top_calls(Path(kept), self.args.top))
            sections.append(f"{label} (`{dumps.name}/{name}.prof`), sweeper's functions by cumulative time:\n\n{table}")
        for rest in profiles.values():  # the other workers': like the one kept
            rest.unlink()
        return "\n\n".join(sections)


# The sitecustomize of the profiled sweep: each process profiles itself from its start to its exit.
PROFILE_HOOK = """import os
if os.environ.get("BENCH_E2E_PROFILE"):
    import atexit, cProfile
    _profile = cProfile.Profile()
    _profile.enable()

    def _dump():
        _profile.disable()
        _profile.dump_stats(os.path.join(os.environ["BENCH_E2E_PROFILE"], f"{os.getpid()}.prof"))

    atexit.register(_dump)
"""


def _is_worker(profile: Path) -> bool:
    return any(name == "run_worker" for (_, _, name) in pstats.Stats(str(profile)).stats)


def import_costs(text: str) -> tuple[float, list[tuple[str, float]]]:
    """From -X importtime lines: the seconds of all imports, and the imports the program made
    itself (at its start or inside a function, not from another import), each with everything
    it pulled in, costliest first."""
    top: list[tuple[str, float]] = []
    total = 0.0
    for match in re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", text, re.MULTILINE):
        self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), len(match[3]), match[4]
        total += self_us / 1e6
        if indent == 1:
            top.append((name, cumulative_us / 1e6))
    return total, sorted(top, key=lambda item: -item[1])


def top_calls(profile: Path, count: int) -> list[dict]:
    """sweeper's own functions (and the program's entry) by cumulative seconds."""
    stats = pstats.Stats(str(profile)).stats
    rows = []
    for (file, line, name), (_, calls, _, cumulative, _) in stats.items():
        where = Path(file)
        if "sweeper" in where.parts and where.suffix == ".py" and "site-packages" not in where.parts:
            rows.append({"function": f"{where.parent.name}/{where.name}:{line} {name}", "calls": calls, "cumulative_s": cumulative})
    rows.sort(key=lambda row: -row["cumulative_s"])
    return rows[:count]


def ensure_hydra_venv(venv: Path) -> None:
    """The baseline's virtual environment, made once (pip install of HYDRA_PINS)."""
    ready = venv / "bench-pins.txt"
    if ready.exists() and ready.read_text() == "\n".join(HYDRA_PINS):
        return
    print(f"making {venv} for the baseline: {' '.join(HYDRA_PINS)}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *HYDRA_PINS], check=True)
    ready.write_text("\n".join(HYDRA_PINS))


def summary(rows: list[dict], variants: list[str]) -> list[dict]:
    """Medians over the rounds; with the baseline run, each variant's wall over the baseline's
    of the same round (the median of those ratios)."""
    keys = ("wall_s", "before_first_s", "trials_s", "after_last_s", "ideal_s", "of_ideal", "wall_over_ideal", "trials_of_ideal")
    baseline = {r["round"]: r["wall_s"] for r in rows if r["variant"] == BASELINE}
    table = []
    for variant in variants:
        found = [r for r in rows if r["variant"] == variant]
        row = {"variant": variant, "rounds": len(found), **{key: benchlib.median(r[key] for r in found) for key in keys}}
        if baseline:
            row["wall_vs_baseline"] = benchlib.median(r["wall_s"] / baseline[r["round"]] for r in found)
        table.append(row)
    return table


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--low", type=float, default=0.2, help="shortest sleep (s)")
    parser.add_argument("--high", type=float, default=2.2, help="longest sleep (s)")
    parser.add_argument("--seed", type=int, default=0, help="of the sleeps' draw")
    parser.add_argument("--no-baseline", action="store_true", help="skip hydra-optuna-sweeper (and making its venv)")
    parser.add_argument(
        "--tracking",
        nargs="+",
        choices=list(SWEEPER_VARIANTS),
        default=list(SWEEPER_VARIANTS),
        help="sweeper's variants (fresh: tracking=local in a fresh directory)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then profile one sweep under -X importtime and one under cProfile (two more sweeps)"
    )
    parser.add_argument("--hydra-venv", type=Path, default=HYDRA_VENV, help="the baseline's virtual environment (made when missing)")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile table")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.trials, args.workers, args.low, args.high, args.top = 1, 4, 2, 0.05, 0.2, 5
    args.variants = ([] if args.no_baseline else [BASELINE]) + [key for key in SWEEPER_VARIANTS if key in args.tracking]
    if not args.no_baseline:
        ensure_hydra_venv(args.hydra_venv)
    profiles = args.out_dir / "end_to_end_profile"
    if args.profile:
        profiles.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        bench.create_stores()
        if "server" in args.tracking:
            with benchlib.MlflowServer(Path(tmp) / "server") as bench.server:
                rows = bench.measure()
        else:
            rows = bench.measure()
        benchlib.write_csv(args.out_dir / "end_to_end_rounds.csv", rows)  # kept should a profile fail
        sections = [] if not args.profile else [bench.profile_imports(profiles), bench.profile_calls(profiles)]
    table = summary(rows, [SWEEPER_VARIANTS[v][0] if v in SWEEPER_VARIANTS else v for v in args.variants])
    load = f"{min(r['load_before'] for r in rows):.1f}-{max(r['load_after'] for r in rows):.1f}"
    benchlib.publish(
        args.out_dir,
        "end_to_end",
        "A sweep end to end, as its user waits for it",
        table,
        notes=[
            f"{args.trials} trials, each sleeping a drawn {args.low}-{args.high} s (seed {args.seed}; sum "
            f"{sum(bench.sleeps):.1f} s) over 6 reported epochs, on {args.workers} workers; {args.rounds} "
            f"rounds interleaving the variants (every run in end_to_end_rounds.csv). Medians, seconds: "
            "`wall_s` from spawning the command to its exit; `before_first_s` to the first trial's sleep "
            "(the first-trial latency); `trials_s` from there to the last trial's sleep's end; "
            "`after_last_s` from there to the exit; `ideal_s` = the sleeps' sum / workers; `of_ideal` = "
            "ideal / wall (1 is the best possible); `wall_over_ideal` its inverse; `trials_of_ideal` = "
            f"ideal / trials_s; `wall_vs_baseline`: wall / the baseline's wall of the same round. sweeper: `{' '.join(SEARCH)}`, trainer scripts/sleep_trials.py; the "
            f"baseline: {' '.join(HYDRA_PINS)}, search `{' '.join(HYDRA_SEARCH)}`. 1-minute load "
            f"average over the runs: {load} (the machine's cores: see above; other work on it slows "
            "every variant)."
        ],
        sections=sections,
    )


if __name__ == "__main__":
    benchlib.run(main)
