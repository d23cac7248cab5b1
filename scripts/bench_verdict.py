"""One question, one answer: does compare mode name the arm a large reference run finds best more
often than one TPE study over everything, at the same trial budget?

    .venv/bin/python scripts/bench_verdict.py                          # default MLP, sweep seeds 0-9
    .venv/bin/python scripts/bench_verdict.py --name verdict_transfer experiment=digits_transfer

For every sweep seed, the same sweep twice (the config's search, `sweep.n_trials` trials, TPE
seeded with the sweep seed, train.seed fixed): once in compare mode (`sweep.compare=auto`: each
slice strategy an arm with its own sampler and an equal share) and once as one study
(`sweep.compare=none`, with `sweep.cover`), then `sweeper verdict` on each (give_verdict, the
command's code, `--verdict-seeds` fresh seeds). Each sweep's answer is the verdict's: the arm it
names (the leader at its own tuned settings) and whether it calls the lead real ("X is best ...")
or "too close to tell".

The reference: `--reference-sweeps` compare-mode sweeps with `--reference-trials` trials each
(another train.seed, so the reference's seeds are not the benchmark's), each followed by a
verdict on `--reference-verdict-seeds` seeds. The reference's best arm is the arm with the best
mean of its tuned reruns, pooled over the reference sweeps.

A sweep is one worker loop (`run_worker`, in-process, SQLite, one thread): a seed gives the
same sweep again. Every finished sweep is appended to `<work>/sweeps.jsonl` and skipped when the
script is started again with the same `--work`, so a long run can be resumed or summarised early
(`--summarise`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import benchlib

MODES = {"compare": "auto", "one study": "none"}
TOO_CLOSE = "Too close to tell"


def base_overrides(args) -> list[str]:
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
    return ["train.threads=1", "train.device=cpu", "tracking=none", "sweep.live=false", *epochs, *args.overrides]


def run_sweep_and_verdict(overrides: list[str], folder: Path, verdict_seeds: int) -> dict:
    """One sweep (in-process) and its verdict; what the verdict said and what it cost."""
    import optuna

    from sweeper.analysis.verdict import give_verdict
    from sweeper.sweep.plan import plan_sweep
    from sweeper.sweep.study import open_study
    from sweeper.sweep.workers import run_worker
    from sweeper.training.engine import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_sweep([*overrides, f"results_dir={folder}", "sweep.name=bench"])
    started = time.perf_counter()
    open_study(plan, create=True)
    run_worker(plan)
    swept = time.perf_counter()
    study = optuna.load_study(study_name="bench", storage=plan.storage.open())
    verdict = give_verdict(study, train, seeds=verdict_seeds, folder=folder / "verdict", say=lambda line: None)
    done = time.perf_counter()
    param, objective = verdict.runs.columns[1], verdict.runs.columns[4]  # settings_of, <param>, seed, status, <objective>
    tuned = verdict.runs[verdict.runs["settings_of"] == verdict.runs[param]]
    return {
        "answer": verdict.answer,
        "leader": next(c.first for c in verdict.comparisons if c.where == "tuned"),
        "real": not verdict.answer.startswith(TOO_CLOSE),
        "sweep_best": max(verdict.arms.values(), key=lambda a: a.sweep_value).arm,
        "trials_per_arm": {a.arm: a.trials for a in verdict.arms.values()},
        "tuned_runs": {arm: [float(v) for v in rows[objective]] for arm, rows in tuned.groupby(param)},
        "sweep_seconds": swept - started,
        "verdict_seconds": done - swept,
        "verdict_runs": len(verdict.runs),
    }


def jobs(args) -> list[dict]:
    base = base_overrides(args)
    found = [
        {
            "role": "reference",
            "mode": "compare",
            "seed": 1000 + i,
            "overrides": [
                *base,
                "sweep.compare=auto",
                f"sweep.n_trials={args.reference_trials}",
                f"sampler.seed={1000 + i}",
                "train.seed=1000",
            ],
            "verdict_seeds": args.reference_verdict_seeds,
        }
        for i in range(args.reference_sweeps)
    ]
    for seed in args.seeds:
        for mode, setting in MODES.items():
            overrides = [*base, f"sweep.compare={setting}", f"sweep.n_trials={args.trials}", f"sampler.seed={seed}", "train.seed=0"]
            found.append({"role": "bench", "mode": mode, "seed": seed, "overrides": overrides, "verdict_seeds": args.verdict_seeds})
    return found


def key(job: dict) -> str:
    return f"{job['role']}/{job['mode']}/{job['seed']}"


def run_all(args, work: Path) -> list[dict]:
    log = work / "sweeps.jsonl"
    done = {key(row): row for row in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    for job in jobs(args):
        if key(job) in done or args.summarise:
            continue
        folder = Path(tempfile.mkdtemp(dir=work, prefix=key(job).replace("/", "-").replace(" ", "_") + "-"))
        result = run_sweep_and_verdict(job["overrides"], folder, job["verdict_seeds"])
        row = {k: job[k] for k in ("role", "mode", "seed")} | result
        done[key(job)] = row
        with log.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"{key(job)}: {result['leader']} ({'real' if result['real'] else 'too close'}), {result['sweep_seconds']:.0f} s + "
              f"{result['verdict_seconds']:.0f} s: {result['answer'][:160]}", flush=True)  # fmt: skip
    return [done[key(job)] for job in jobs(args) if key(job) in done]


def reference_best(references: list[dict]) -> tuple[str, dict[str, float], str]:
    """The arm with the best mean of the reference's tuned reruns (pooled), each arm's mean, and
    how clear the lead is: the pooled difference to each other arm with a 95% interval (Welch)."""
    from scipy import stats

    pooled: dict[str, list[float]] = {}
    for row in references:
        for arm, values in row["tuned_runs"].items():
            pooled.setdefault(arm, []).extend(v for v in values if v == v)
    means = {arm: sum(v) / len(v) for arm, v in pooled.items() if v}
    best = max(means, key=means.get)
    gaps = []
    for arm in means:
        if arm != best:
            test = stats.ttest_ind(pooled[best], pooled[arm], equal_var=False)
            low, high = test.confidence_interval(0.95)
            gaps.append(
                f"{best} vs {arm} {means[best] - means[arm]:+.4f} [{low:+.4f}, {high:+.4f}] ({len(pooled[best])} and {len(pooled[arm])} runs)"
            )
    return best, means, "; ".join(gaps)


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--name", default="verdict", help="results/bench/<name>.md and .csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="sweep seeds (sampler.seed)")
    parser.add_argument("--trials", type=int, default=12, help="trials per sweep, the same for both modes")
    parser.add_argument("--epochs", type=int, default=0, help="train.epochs (0: the config's)")
    parser.add_argument("--verdict-seeds", type=int, default=3, help="fresh seeds of each sweep's verdict")
    parser.add_argument("--reference-sweeps", type=int, default=2)
    parser.add_argument("--reference-trials", type=int, default=60, help="trials of each reference sweep (all arms)")
    parser.add_argument("--reference-verdict-seeds", type=int, default=5)
    parser.add_argument(
        "--work", type=Path, default=None, help="keeps every sweep and sweeps.jsonl (resumable); default: a temporary folder"
    )
    parser.add_argument("--summarise", action="store_true", help="run nothing: write the tables from --work's finished sweeps")
    parser.add_argument("overrides", nargs="*", help="more overrides for every sweep (experiment=..., model=...)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs, args.verdict_seeds = [0], 4, 1, 2
        args.reference_sweeps, args.reference_trials, args.reference_verdict_seeds = 1, 4, 2
        args.overrides = [*args.overrides, "search.lr.strategies=[single,fastai]"]  # two arms: a verdict of 2 x 2 x 2 runs
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = run_all(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_verdict-") as work:
            rows = run_all(args, Path(work))
    references = [r for r in rows if r["role"] == "reference"]
    bench = [r for r in rows if r["role"] == "bench"]
    if not references or not bench:
        print(f"nothing to summarise yet in {args.work}")
        return
    best, means, gaps = reference_best(references)
    table = [
        {
            "mode": r["mode"],
            "seed": r["seed"],
            "complete trials per arm": " ".join(f"{a}:{n}" for a, n in r["trials_per_arm"].items()),
            "sweep's best arm": r["sweep_best"],
            "verdict names": r["leader"],
            "verdict": "real" if r["real"] else "too close",
            "right": r["leader"] == best,
            "real on a wrong arm": r["real"] and r["leader"] != best,
            "sweep s": round(r["sweep_seconds"], 1),
            "verdict s": round(r["verdict_seconds"], 1),
        }
        for r in bench
    ]
    summary = []
    for mode in MODES:
        own = [t for t in table if t["mode"] == mode]
        if own:
            summary.append(
                {
                    "mode": mode,
                    "sweeps": len(own),
                    "names the reference's arm": sum(t["right"] for t in own),
                    "of them called real": sum(t["right"] and t["verdict"] == "real" for t in own),
                    "too close to tell": sum(t["verdict"] == "too close" for t in own),
                    "real on a wrong arm": sum(t["real on a wrong arm"] for t in own),
                    "sweep's best trial on the reference's arm": sum(t["sweep's best arm"] == best for t in own),
                    "median sweep s": benchlib.median(t["sweep s"] for t in own),
                    "median verdict s": benchlib.median(t["verdict s"] for t in own),
                }
            )
    ref_lines = "\n".join(
        f"- reference sweep {r['seed']} ({' '.join(f'{a}:{n}' for a, n in r['trials_per_arm'].items())} complete trials): {r['answer']}"
        for r in references
    )
    benchlib.publish(
        args.out_dir,
        args.name,
        "One question, one answer: compare mode against one study",
        table,
        notes=[
            f"Overrides of every sweep: `{' '.join(base_overrides(args))}`; {args.trials} trials a sweep, "
            f"sweep seeds {', '.join(map(str, args.seeds))}, each verdict on {args.verdict_seeds} fresh seeds.",
            f"Reference: {len(references)} compare-mode sweeps of {args.reference_trials} trials (train.seed=1000), each verdict on "
            f"{args.reference_verdict_seeds} seeds; mean of each arm's tuned reruns, pooled: "
            + ", ".join(f"{a} {m:.4f}" for a, m in sorted(means.items(), key=lambda x: -x[1]))
            + f". The reference's arm: **{best}** (pooled difference, 95% interval, Welch: {gaps}).\n\n{ref_lines}",
        ],
        sections=["Over the sweep seeds:\n\n" + benchlib.markdown_table(summary)],
    )


if __name__ == "__main__":
    benchlib.run(main)
