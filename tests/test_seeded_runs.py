"""`sweeper confirm` and its ablation through the CLI, in this process, on a recorded study whose
trainer's answer is known (tests/helpers/verdict_worlds.py): they say run k of n with the time
left as each run ends, and write the plot of the leader minus each other value, seed by seed,
beside their tables. And the run counter on a terminal: a progress bar under the lines."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from helpers.recorded_studies import write_recorded_study
from rich.console import Console

from sweeper.analysis import confirm
from sweeper.analysis.seeded_runs import RunCounter
from sweeper.cli import main

SWEEP = "recorded"
CODE = ["--allow-module", "helpers", "tracking=none", "results_dir=results"]


@pytest.fixture
def sweep(workdir, monkeypatch) -> str:
    """A recorded study: geometric's best trial beats single's; in this world the slice matters
    (geometric 0.1 above at every lr), and every seed has its own luck."""
    monkeypatch.setenv("VERDICT_WORLD", "slice")
    settings = ["lr.high=0.003", "shape=fastai_one_cycle"]
    return write_recorded_study(workdir, SWEEP, [("geometric", 0.9, settings, {}), ("single", 0.8, settings, {})])


@pytest.fixture
def plotted(monkeypatch) -> list:
    """The comparisons handed to the plot, as the plot is drawn."""
    seen = []

    def spy(comparisons, *args, **kwargs):
        seen.append(comparisons)
        return real(comparisons, *args, **kwargs)

    real = confirm.plot_paired
    monkeypatch.setattr(confirm, "plot_paired", spy)
    return seen


def per_seed_gaps(table: pd.DataFrame, column: str, leader: str, other: str) -> list[float]:
    by_seed = table.pivot(index="seed", columns=column, values="accuracy")
    return (by_seed[leader] - by_seed[other]).to_list()


def test_confirm_counts_its_runs_and_plots_the_paired_differences(sweep, plotted, workdir, capsys):
    code = main(["confirm", SWEEP, "--seeds", "3", f"storage.url={sweep}", *CODE])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line.startswith("confirm: run ")]
    # a line per finished run, as each ends (not a terminal): 2 strategies x 3 seeds
    assert [line.split()[2] for line in lines] == [f"{k}/6" for k in range(1, 7)]
    assert all(line.endswith(" s left)") for line in lines)
    folder = workdir / "results" / "sweeps" / SWEEP
    png = folder / "confirm.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in (folder / "confirm.md").read_text() and "(confirm.png)" in (folder / "confirm.md").read_text()
    (comparison,) = plotted[0]  # geometric minus single, on each seed the runs shared
    runs = pd.read_csv(folder / "confirm.csv")
    assert (comparison.first, comparison.second) == ("geometric", "single")
    assert list(comparison.diffs) == pytest.approx(per_seed_gaps(runs, "strategy", "geometric", "single"))
    assert comparison.real  # 0.1 apart at noise of 0.001 a run


def test_the_ablation_counts_its_runs_and_plots_the_paired_differences(sweep, plotted, workdir, capsys):
    code = main(["confirm", SWEEP, "--ablate", "slice", "--seeds", "2", f"storage.url={sweep}", *CODE])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line.startswith("ablation: run ")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    folder = workdir / "results" / "sweeps" / SWEEP
    assert (folder / "ablation_slice.png").read_bytes()[:4] == b"\x89PNG"
    (comparison,) = plotted[0]
    runs = pd.read_csv(folder / "ablation_slice.csv")
    assert list(comparison.diffs) == pytest.approx(per_seed_gaps(runs, "strategy", "geometric", "single"))


def test_on_a_terminal_a_bar_shows_the_run_under_way_under_the_lines():
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=120)
    with RunCounter(2, "verdict", console=console) as counter:
        for k in (1, 2):
            counter.starts(f"(run {k})")
            counter.finished(f"(run {k})", 0.5)
    text = shown.getvalue()
    assert "verdict: run 1/2 (run 1): 0.5" in text and "verdict: run 2/2 (run 2): 0.5" in text
    assert "verdict: run 2 of 2 (run 2)" in text  # the bar's line, drawn under the printed ones


def test_without_a_terminal_there_is_no_bar_only_lines():
    shown = io.StringIO()
    with RunCounter(1, "confirm", console=Console(file=shown, force_terminal=False)) as counter:
        counter.starts("(a)")
        counter.finished("(a)", 0.25)
    assert shown.getvalue().startswith("confirm: run 1/1 (a): 0.25 (") and "\x1b" not in shown.getvalue()
