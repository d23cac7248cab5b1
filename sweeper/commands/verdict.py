"""`sweeper verdict`: one question, one answer: which slice strategy (or shape) wins, and is it real?

    sweeper verdict mlp-digits --seeds 5
    sweeper verdict cnn_pretrained-digits_transfer --seeds 3

Trains each arm's best config again, and at each arm's best settings every other arm swapped in
(all else equal), on the same fresh seeds, here, one run after another (a line per finished run,
with the time left), then states one answer with effect sizes and 95% intervals, Holm-corrected
(sweeper.analysis.verdict). Writes verdict.md (and .csv, .png, .json) into results/sweeps/<name>/,
records it on the sweep's MLflow run (tag `verdict`, a table, the files) and writes the report
again so that it leads with the answer. `sweeper confirm` and `--ablate` are its parts, alone.
"""

from __future__ import annotations

import argparse
import time

from sweeper.analysis.report import write_report
from sweeper.analysis.verdict import give_verdict
from sweeper.boundary.recorded_study import study_config_dirs
from sweeper.commands.confirm import recorded_sweep
from sweeper.records.tracking import sweep_folder
from sweeper.records.trial_runs import report_sources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds, the same for every run (default 5)")
    parser.add_argument(
        "--allow-module", action="append", default=[], metavar="MODULE",
        help="also build code in MODULE, a module of yours (repeatable; as sweeper rerun)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    cfg, study, tracking, allowed, trainer = recorded_sweep(args)
    folder = sweep_folder(cfg, study.study_name)
    sources = report_sources(tracking)  # the trials' MLflow runs: each arm's best trial is offered as a rerun
    verdict = give_verdict(
        study,
        trainer.train,
        seeds=args.seeds,
        folder=folder,
        tracking=tracking,
        config_dirs=study_config_dirs(study.user_attrs, args.config_dir),
        allowed=allowed,
        run_ids=sources.run_ids if sources else None,
    )
    tracking.attach_files(verdict.files, "verdict", {"verdict": verdict.answer})
    tracking.attach_table(verdict.comparison_table, f"verdict/comparisons-{time.strftime('%Y%m%dT%H%M%S')}.json")
    tracking.attach_report(write_report(study, folder, sources))  # the report leads with the answer now
    print()
    print(verdict.answer)
    print()
    print("Each arm's best settings, as you type them after the sweep's own overrides:")
    for arm in verdict.arms.values():
        print(f"  {arm.shown}")
    print(f"verdict: {folder / 'verdict.md'}")
    return 0
