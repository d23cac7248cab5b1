"""lr_find for a sweep, in a process of its own: `python -m sweeper.training.lr_find_job`.

A sweep's own process never imports torch (it holds no GPU memory and starts in a second), so
`search.lr.high=auto` runs the range tests here. The request comes as JSON on stdin (the
overrides may hold secrets: never in argv):

    {"overrides": [...], "config_dirs": [...], "strategies": {"fastai": ["lr=fastai", ...]},
     "start_lr": 1e-7, "end_lr": 10, "num_it": 100, "plots": "results/sweeps/NAME"}

For each strategy, lr_find runs on the config composed with its overrides, with the slice
followed (every group ramps with the head, in the slice's proportions), and its plot is written
under `plots`. The answer is one JSON line on stdout: per strategy the lrs, the smoothed losses,
fastai's suggestions, the seconds it took and the plot's path. A bad setting is one line on
stderr and exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sweeper.config import ConfigError, compose_config
from sweeper.training.lr_find import lr_find, plot_lr_find

__all__ = ["run_request"]


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    answers = {}
    for strategy, overrides in request["strategies"].items():
        started = time.perf_counter()
        cfg = compose_config([*request["overrides"], *overrides], request["config_dirs"])
        result = lr_find(cfg, request["start_lr"], request["end_lr"], request["num_it"], follow_slice=True)
        seconds = time.perf_counter() - started
        plot = plot_lr_find(result, Path(request["plots"]) / f"lr_find-{strategy}.png")
        answers[strategy] = {
            "lrs": result.lrs,
            "losses": result.losses,
            "suggestions": result.suggestions,
            "seconds": seconds,
            "plot": str(plot),
        }
    return answers


def main() -> int:
    try:
        answers = run_request(json.loads(sys.stdin.read()))
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
