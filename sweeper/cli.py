"""The `sweeper` command: one subcommand per job, each a thin door to the module that does it.

Every subcommand takes Hydra overrides as positional arguments (`model=cnn shape.pct_start=0.3`)
and `--config-dir DIR` for a config directory of the user's. A bad setting stops the command
before any work starts, with one message that names the setting and the fix, and exit code 2.
Whatever the command prints about an error goes through the password masker first. Ctrl-C and
SIGTERM stop any command the same way, and it exits as a shell reports the signal (130, 143).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading
import traceback
from collections.abc import Sequence

from sweeper.boundary.printed import printable
from sweeper.secrets import mask_text, passwords_in
from sweeper.stop_signals import StopSignals

# name -> module in sweeper.commands; each module has HELP, add_arguments(parser) and run(args).
# Modules are imported only when their command runs, so `sweeper schedule` starts fast.
COMMANDS = {
    "schedule": "Print and plot the per-step lr of every layer group for a slice and a cycle shape.",
    "train": "Run one trial (one training run) from Hydra overrides.",
    "lr-find": "fastai's learning-rate range test for a model and data.",
    "sweep": "Run (or resume) a sweep: Optuna over slices and cycle shapes, on every device.",
    "worker": "Join an existing sweep from this machine or shell.",
    "report": "Write the comparison of slice strategies and shapes for a sweep.",
    "verdict": "One answer: which strategy (or shape) wins at its tuned settings and at the same head lr, and is it real.",
    "confirm": "Rerun the best config of each strategy with several seeds.",
    "rerun": "Rerun one trial exactly from its MLflow run (or output directory).",
    "export": "Write the kept weights of a sweep's best trial (or of an MLflow run) to a file.",
    "ui": "Open the MLflow UI on a sweep's trials, grouped by slice strategy, as charts.",
}

EXIT_FAILED = 1  # an error of ours, or of a library's: its traceback is printed
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # as a shell reports a reader that closed the pipe (128 + SIGPIPE)


def _command_module(name: str):
    return importlib.import_module(f"sweeper.commands.{name.replace('-', '_')}")


def _add_command_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a config directory of yours; its options join sweeper's (repeatable)",
    )
    _command_module(name).add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cnn lr.high=3e-3")


def build_parser() -> argparse.ArgumentParser:
    """The command line above the subcommands, for `sweeper`, `sweeper --help` and a mistyped
    command: the commands and what each does. A command's own arguments come from its module,
    loaded only when that command is named (`sweeper sweep --help`)."""
    parser = argparse.ArgumentParser(prog="sweeper", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """Parse `sweeper COMMAND ...`; options may stand before or after the overrides."""
    if not argv or argv[0] not in COMMANDS:
        return build_parser().parse_args(argv)  # prints usage or help, and exits
    name = argv[0]
    parser = argparse.ArgumentParser(prog=f"sweeper {name}", description=COMMANDS[name])
    _add_command_arguments(parser, name)
    args = parser.parse_intermixed_args(argv[1:])
    args.command = name
    return args


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input is wrong (not the program): reported in one line, exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweeper.config import ConfigError
    from sweeper.schedules.shapes import ShapeError
    from sweeper.schedules.slices import SliceError

    # sweeper.zoo.groups' GroupError is a ConfigError: naming it here would load torch (seconds)
    # before a mistake in an override is reported.
    return (ConfigError, SliceError, ShapeError, HydraException, OmegaConfBaseException)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command(argv)
    with StopSignals() as stop:
        try:
            code = int(_command_module(args.command).run(args) or 0)
        except KeyboardInterrupt:
            print(f"sweeper {args.command}: {stop.what}", file=sys.stderr)
            code = stop.exit_code
        except user_errors() as error:
            from sweeper.config.errors import one_line

            print(f"sweeper {args.command}: error: {_masked(one_line(error), argv, args)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except BrokenPipeError:
            # The reader went away (`sweeper schedule --json | head`): not an error of ours. Point
            # stdout at nothing, so that the interpreter's last flush does not fail on it again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except Exception as error:  # noqa: BLE001 - any other error: its traceback, which may quote a URL
            from sweeper.config.errors import disk_full, full_disk_line

            # A full disk is no bug of ours: one line naming what could not be written, no traceback.
            shown = f"sweeper {args.command}: error: {full_disk_line(error)}\n" if disk_full(error) else traceback.format_exc()
            print(_masked(shown, argv, args), end="", file=sys.stderr)
            return EXIT_FAILED
    # A command stopped by a signal did what it does on Ctrl-C (a sweep stops its workers and
    # says how to resume); its exit code says which signal it was.
    return stop.exit_code if stop.received else code


def _masked(text: str, argv: Sequence[str], args: argparse.Namespace) -> str:
    """`text` without the passwords of the command line (`args` as the command completed it,
    e.g. a worker's from its sweep) or of the environment, whole or in URLs, and with any
    control character escaped: an error may quote a record, which may hold terminal escapes."""
    masked = mask_text(text, passwords_in([*argv, *getattr(args, "overrides", []), *os.environ.values()]))
    return printable(masked, keep="\n")


def entry_point() -> None:
    """The console script (and `python -m sweeper.cli`): the command, then the interpreter's own
    exit steps that matter, then the end of the process without the teardown of every module it
    imported. After a sweep (torch, MLflow, Optuna, matplotlib: ~3,500 modules) that teardown
    alone took 1.9 s, which the user waited for after the command had said all it had to say."""
    code = main()
    exit_now(code)


def exit_now(code: int) -> None:
    # What exit does that matters, in its order: non-daemon threads finish (a pool's threads are
    # told to by their atexit hooks, the recorder's sender among them), then the atexit handlers
    # run (the recorder's last retries, logging's flush, temporary folders removed). Only the
    # freeing of modules and objects is skipped; it writes nothing. Where the interpreter lacks
    # these steps under these names, or a profiler runs the command (cProfile writes its
    # figures after the command returns), the normal exit.
    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown_threads is None or run_exit_handlers is None or sys.getprofile() is not None:
        sys.exit(code)
    shutdown_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone, or a stream closed: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    entry_point()
