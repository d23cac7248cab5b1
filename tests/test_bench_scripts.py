"""Smoke tests of the benchmark scripts: each runs with --quick into a temporary folder, and the
CSV and Markdown it writes must have the expected columns and positive figures. Nothing here is
timed: how fast things are is what the scripts report, never what a test asserts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.forked_cli import run_script as forked_script

REPO = Path(__file__).resolve().parent.parent
# Packages the scaling benchmark must do without under --no-tracking (a GPU machine may have only
# hydra-core, omegaconf, optuna, sqlalchemy, torch, numpy, pandas and the repository).
NOT_NEEDED = ("mlflow", "matplotlib", "sklearn", "scipy", "rich", "submitit", "psycopg2", "cmaes")
# sitecustomize for the processes of that run: a None in sys.modules makes `import mlflow` fail as
# if it were not installed, and importlib.util.find_spec answer None, as torch's probes expect.
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({NOT_NEEDED!r}))\n"


def run_script(name: str, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """`python scripts/bench_NAME.py --quick ...`, forked from a process that has loaded what the
    scripts load (helpers.forked_cli); with `env`, started afresh, as that environment may
    change what the interpreter loads at its start."""
    script, args = REPO / "scripts" / f"bench_{name}.py", ["--quick", "--out-dir", str(folder), *args]
    if env is None:
        done = forked_script(script, args, folder, timeout=280)  # within pytest's 300 s
    else:
        done = subprocess.run([sys.executable, str(script), *args], cwd=folder, capture_output=True, text=True, timeout=280, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as table:
        return list(csv.DictReader(table))


def check_table(folder: Path, name: str, columns: set[str], positive: set[str]) -> list[dict[str, str]]:
    rows = read_rows(folder / f"{name}.csv")
    assert rows, f"{name}.csv has no rows"
    assert columns <= set(rows[0]), f"{name}.csv lacks {columns - set(rows[0])}"
    for row in rows:
        for column in positive:
            assert float(row[column]) > 0, (name, column, row)  # a measured time, count or ratio
    return rows


def check_markdown(folder: Path, name: str, script: str, columns: set[str]) -> str:
    text = (folder / f"{name}.md").read_text()
    assert "<!-- measured -->" in text  # where a hand-written analysis above is kept on rewrites
    assert f"Reproduce: `.venv/bin/python scripts/bench_{script}.py --quick" in text  # the exact command
    assert "Machine: " in text and "torch " in text
    rows = [{cell.strip() for cell in line.strip().strip("|").split("|")} for line in text.splitlines() if line.startswith("| ")]
    assert any(columns <= cells for cells in rows), f"{name}.md has no table with the columns {columns}"
    return text


def test_trainer_benchmark(tmp_path):
    run_script("trainer", tmp_path)
    columns = {"model", "device", "steps", "trainer_ms", "plain_ms", "onecycle_ms", "ratio", "overhead_us"}
    rows = check_table(tmp_path, "trainer", columns, {"steps", "trainer_ms", "plain_ms", "onecycle_ms", "ratio"})
    assert [row["model"] for row in rows] == ["mlp-tiny"] and rows[0]["device"] == "cpu"
    check_markdown(tmp_path, "trainer", "trainer", {"model", "ratio"})


@pytest.mark.slow
def test_tracking_benchmark_records_to_sqlite_and_a_local_server(tmp_path):
    run_script("tracking", tmp_path)
    columns = {"trial", "store", "trial_s", "recorded_s", "ratio", "overhead_ms", "start_ms", "end_ms"}
    rows = check_table(tmp_path, "tracking", columns, {"trial_s", "recorded_s", "ratio", "start_ms", "end_ms"})
    assert {row["store"] for row in rows} == {"sqlite", "server", "sqlite, handed over"}
    check_markdown(tmp_path, "tracking", "tracking", {"store", "ratio"})


@pytest.mark.slow
def test_sweep_benchmark_against_the_batch_synchronous_baseline(tmp_path):
    run_script("sweep", tmp_path)
    positive = {"trials", "train_s", "ideal_s", "span_s", "wall_s", "efficiency_span", "efficiency_wall"}
    rows = check_table(tmp_path, "sweep", {"variant", "workers", *positive}, positive)
    assert {row["variant"] for row in rows} == {"sweeper", "batch-sync"}
    assert len({row["train_s"] for row in rows}) == 2 and {row["trials"] for row in rows} == {"4"}  # the same 4 trials, twice
    latency = {"ask_to_train_ms", "train_to_first_step_ms", "ask_to_first_step_ms"}
    assert len(check_table(tmp_path, "sweep_latency", {"trial", "first_in_worker", *latency}, latency)) == 4
    text = check_markdown(tmp_path, "sweep", "sweep", {"variant", "efficiency_wall"})
    assert "Start latency" in text


@pytest.mark.slow
def test_pruning_benchmark_writes_its_plot(tmp_path):
    run_script("pruning", tmp_path)
    rows = check_table(tmp_path, "pruning", {"pruner", "seed", "pruned", "epochs", "best", "epochs_vs_none"}, {"epochs", "best", "sweep_s"})
    assert {row["pruner"] for row in rows} == {"none", "median"}
    check_table(tmp_path, "pruning_curves", {"pruner", "trial", "cumulative_epochs", "best_so_far"}, {"cumulative_epochs"})
    assert (tmp_path / "pruning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](pruning.png)" in check_markdown(tmp_path, "pruning", "pruning", {"pruner", "best"})


@pytest.mark.slow
def test_verdict_benchmark_scores_each_modes_answer_against_the_reference(tmp_path):
    run_script("verdict", tmp_path)
    rows = check_table(tmp_path, "verdict", {"mode", "seed", "verdict names", "verdict", "right"}, {"sweep s", "verdict s"})
    assert {row["mode"] for row in rows} == {"compare", "one study"}
    assert {row["verdict"] for row in rows} <= {"real", "too close"}
    text = check_markdown(tmp_path, "verdict", "verdict", {"mode", "names the reference's arm", "too close to tell"})
    assert "The reference's arm: **" in text


@pytest.mark.slow
def test_anchored_benchmark_counts_trials_to_the_target_with_lr_finds_cost(tmp_path):
    run_script("anchored", tmp_path)
    rows = check_table(tmp_path, "anchored", {"arm", "seed", "trials_to_target", "cost_in_trials"}, {"trials_to_target", "cost_in_trials"})
    assert {row["arm"] for row in rows} == {"fixed", "anchored"}
    check_table(tmp_path, "anchored_trials", {"arm", "trial", "strategy", "objective"}, {"trial"})
    check_markdown(tmp_path, "anchored", "anchored", {"arm", "median trials_to_target"})
    # --merge puts earlier runs in one table: one run alone gives its own rows back
    for suffix in (".csv", "_trials.csv"):
        (tmp_path / f"alone{suffix}").write_bytes((tmp_path / f"anchored{suffix}").read_bytes())
    run_script("anchored", tmp_path, "--name", "merged", "--merge", "alone")
    assert read_rows(tmp_path / "merged.csv") == rows


@pytest.mark.slow
def test_scaling_benchmark_needs_no_mlflow_under_no_tracking(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    # every process (the script and its sweep workers) starts with those packages unimportable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    run_script("scaling", tmp_path, "--no-tracking", env=env)
    positive = {"workers", "trials", "trial_s", "wall_s", "span_s", "trials_per_hour", "trials_per_hour_span"}
    rows = check_table(tmp_path, "scaling", {"device", "failed", *positive}, positive)
    assert [int(row["workers"]) for row in rows] == [1, 2]
    check_markdown(tmp_path, "scaling", "scaling", {"workers", "trials_per_hour"})


def test_checkpoints_benchmark(tmp_path):
    run_script("checkpoints", tmp_path)
    columns = {"model", "device", "checkpoint_mb", "epoch_ms", "write_ms", "ratio", "read_ms"}
    rows = check_table(tmp_path, "checkpoints", columns, {"checkpoint_mb", "epoch_ms", "write_ms", "ratio", "read_ms"})
    assert [row["model"] for row in rows] == ["mlp-tiny"] and rows[0]["device"] == "cpu"
    check_markdown(tmp_path, "checkpoints", "checkpoints", {"model", "ratio"})


@pytest.mark.slow
def test_end_to_end_benchmark_times_the_whole_command(tmp_path):
    # sweeper alone (the baseline's virtual environment is not made here), two of its variants
    run_script("end_to_end", tmp_path, "--no-baseline", "--tracking", "none", "local")
    phases = {"before_first_s", "trials_s", "after_last_s"}
    positive = {"wall_s", "ideal_s", "of_ideal", "wall_over_ideal", "trials_of_ideal", *phases}
    rows = check_table(tmp_path, "end_to_end", {"variant", "rounds", *positive}, positive)
    assert [row["variant"] for row in rows] == ["sweeper, tracking=none", "sweeper, tracking=local, stores created"]
    runs = check_table(tmp_path, "end_to_end_rounds", {"variant", "round", "processes", "load_before", *positive}, positive)
    assert len(runs) == 2 and {int(row["round"]) for row in runs} == {1}
    for row in runs:
        # the three phases are cut from one wall clock: together they are the command's time
        assert sum(float(row[phase]) for phase in phases) == pytest.approx(float(row["wall_s"]))
        assert 1 <= int(row["processes"]) <= 2  # the trials ran in the sweep's 2 workers
    check_markdown(tmp_path, "end_to_end", "end_to_end", {"variant", "before_first_s", "of_ideal"})


def test_end_to_end_benchmark_reads_python_importtime():
    from bench_end_to_end import import_costs

    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import json"], capture_output=True, text=True, check=True)
    total, top = import_costs(done.stderr)
    imported = dict(top)
    assert "json" in imported and "json.decoder" not in imported  # json's own imports count inside it
    assert 0 < imported["json"] <= total


def test_sleep_trials_hand_out_each_drawn_sleep_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import sleep_trials

    sleeps = sleep_trials.draw_sleeps(8, 0.0, 0.002, seed=3)
    assert sleeps == sleep_trials.draw_sleeps(8, 0.0, 0.002, seed=3) and all(0 <= s <= 0.002 for s in sleeps)
    work = sleep_trials.prepare_work(tmp_path, sleeps)
    with ThreadPoolExecutor(4) as pool:  # every claim takes the counter's lock on its own descriptor
        list(pool.map(lambda _: sleep_trials.sleep_trial(folder=work), range(8)))
    trials = sleep_trials.read_trials(work)
    assert [t["index"] for t in trials] == list(range(8)) and [t["seconds"] for t in trials] == sleeps
    assert all(t["started"] <= t["ended"] for t in trials)
    with pytest.raises(RuntimeError, match="only 8 were drawn"):
        sleep_trials.sleep_trial(folder=work)


@pytest.mark.slow
def test_first_sweep_benchmark_times_the_readmes_first_command(tmp_path):
    run_script("first_sweep", tmp_path)
    positive = {"wall_s", "before_first_s", "after_last_s", "machine_cpu_s"}
    (row,) = check_table(tmp_path, "first_sweep", {"checkout", "rounds", *positive}, positive)
    assert float(row["before_first_s"]) + float(row["after_last_s"]) < float(row["wall_s"])
    check_markdown(tmp_path, "first_sweep", "first_sweep", {"checkout", "before_first_s"})


def test_refusals_benchmark(tmp_path):
    run_script("refusals", tmp_path)
    columns = {"answer", "command", "exit", "this checkout: median s", "this checkout: max s"}
    rows = check_table(tmp_path, "refusals", columns, {"this checkout: median s", "this checkout: max s"})
    assert len(rows) == 7 and {row["exit"] for row in rows} == {"0", "2"}  # every answer as the script expects it
    check_markdown(tmp_path, "refusals", "refusals", {"answer", "exit"})


def test_test_durations_sums_each_files_tests_and_names_only_files_that_exist(tmp_path):
    import test_durations

    junit = tmp_path / "suite.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="one" time="1.25"/>'
        '<testcase classname="tests.test_a" name="two" time="2.5"/>'
        '<testcase classname="tests.test_b.TestGroup" name="three" time="0.5"/>'
        "</testsuite></testsuites>"
    )
    assert test_durations.file_seconds(junit) == {"tests/test_a.py": 3.8, "tests/test_b.py": 0.5}
    # the suite's own order: every file it names is a test file of today's suite
    tests = Path(__file__).parent
    named = set(test_durations.json.loads(test_durations.DURATIONS.read_text()))
    assert named and all((tests.parent / name).is_file() for name in named), sorted(named)
