"""`sweeper sweep`: run or resume a sweep over slices and cycle shapes, on every device here.

    sweeper sweep                                       # digits, CPU (or GPU) workers, results/
    sweeper sweep search=slices sampler=random pruner=hyperband sweep.n_trials=40
    sweeper sweep optimizer.weight_decay='tag(log, interval(1e-4, 1e-1))'   # one more key to search
    SWEEPER_STORAGE_URL=postgresql://... sweeper sweep storage=postgres    # on every machine that joins
    sweeper sweep launcher=slurm launcher.jobs=8        # workers as SLURM jobs

Everything is checked first (a bad setting creates no study). The study is then created, or
resumed if it exists (sweep.n_trials counts its finished trials, whoever ran them); workers start
(one per device slot here, or cluster jobs) and a live view follows them until the sweep has
sweep.n_trials finished trials or sweep.timeout passes. The command ends by printing where to
look at the results.
"""

from __future__ import annotations

import argparse

from sweeper.collector import setting_up
from sweeper.sweep.warm import early_server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the space; create nothing")


def run(args: argparse.Namespace) -> int:
    # The warm server starts first of all: it loads what the workers need while this process
    # imports what the sweep needs (sweeper.commands.sweeping, ~0.4 s) and checks the sweep. A
    # dry run forks no worker. What the sweep loads and builds until its workers go lives as
    # long as it does: no garbage collection walks it, then or after (sweeper.collector).
    with early_server(wanted=not args.dry_run) as server, setting_up():
        from sweeper.commands import sweeping

        begun = sweeping.set_up(args, server)
    return begun if isinstance(begun, int) else sweeping.run_sweep(begun)
