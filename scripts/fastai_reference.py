"""Reference values from fastai itself, for the parity tests (tests/data/fastai_parity.json).

    pip install fastai==2.8.12        # in a virtual environment of its own
    python scripts/fastai_reference.py [--out tests/data/fastai_parity.json]

Runs fastai's own training loop (Learner, ParamScheduler, Recorder, LRFinder) on tiny linear
models on the CPU and records what fastai does, batch by batch:
- `lr_find`: `Learner.lr_find` on scripted loss curves (one that turns NaN, one that diverges,
  flat and tied ones): the recorded lrs and smoothed losses and the valley, minimum and steep
  suggestions. `raw_losses` are the float32 losses the loss function returned, batch by batch.
- `fine_tune`: the lr and momentum of every group for every training batch of both phases,
  with non-default moms, div_final, pct_start, div and lr_mult.
- `sgd_no_momentum`: `fit_one_cycle` with fastai's SGD without momentum: the data, the initial
  and every updated parameter, and the lrs (fastai still schedules its `mom` hyper-parameter,
  which SGD without momentum never reads).
- `fit_sgdr`, `fit_flat_cos`: the lr of every group for every training batch.
- `param_scheduler`: a ParamScheduler over `combine_scheds` of `SchedLin`s (sweeper's `points`
  shape with position=fastai), with steps (a piece of length 0) and `SchedNo` pieces, and over a
  plain function (sweeper's `function` shape); some move `mom` too (`mom_points`, `mom_fn`).
- `pct_start_ends`: `fit_one_cycle` and `fit_flat_cos` with pct_start 0 and 1.
- `lr_find` also records fastai's `slide` suggestion, and a test with `stop_div=False`.
Everything is deterministic (fixed seeds, no shuffling where it matters).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import fastai
import numpy as np
import torch
from fastai.basics import SGD, DataLoaders, Learner, MSELossFlat, TfmdDL, params
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler, SchedLin, SchedNo, combine_scheds, minimum, slide, steep, valley
from torch import nn
from torch.utils.data import TensorDataset

BATCH = 4
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "fastai_parity.json"


class RecordHypers(Callback):
    """The lr and mom of every param group just before every training batch, and which fit."""

    order, run_valid = ParamScheduler.order + 1, False  # after the scheduler has set them

    def __init__(self) -> None:
        self.lrs, self.moms, self.fits, self.fit_index = [], [], [], -1

    def before_fit(self) -> None:
        self.fit_index += 1

    def before_batch(self) -> None:
        self.lrs.append([float(h["lr"]) for h in self.opt.hypers])
        self.moms.append([float(h["mom"]) for h in self.opt.hypers])
        self.fits.append(self.fit_index)


def learner(n_groups: int, n_batches: int, folder: str, mom: float = 0.9, loss_func=None, seed: int = 0) -> Learner:
    """A chain of n_groups Linear(1, 1) layers, one param group each, on n_batches batches."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * BATCH, 1, generator=generator)
    y = 2 * x + 3 + 0.1 * torch.randn(n_batches * BATCH, 1, generator=generator)
    train = TfmdDL(TensorDataset(x, y), bs=BATCH, shuffle=False, num_workers=0)
    valid = TfmdDL(TensorDataset(x[:BATCH], y[:BATCH]), bs=BATCH, num_workers=0)
    torch.manual_seed(seed)
    model = nn.Sequential(*(nn.Linear(1, 1) for _ in range(n_groups)))
    return Learner(
        DataLoaders(train, valid),
        model,
        loss_func=loss_func or MSELossFlat(),
        opt_func=partial(SGD, mom=mom),
        splitter=lambda m: [params(layer) for layer in m],
        path=folder,
    )


def lr_spec(spec):
    """A JSON lr spec (a float, or [hi] for slice(hi), or [lo, hi] for slice(lo, hi)) for fastai."""
    if isinstance(spec, list):
        return slice(*spec) if len(spec) == 2 else slice(spec[0])
    return spec


@contextmanager
def quiet(learn: Learner):
    """No progress bar and no printed table."""
    with learn.no_bar(), learn.no_logging():
        yield


# --- lr_find -----------------------------------------------------------------------------------


class ScriptedLoss:
    """Returns the given losses, one per call, with a gradient of zero (the model stays put)."""

    def __init__(self, losses) -> None:
        self.losses, self.calls = losses, 0

    def __call__(self, pred, target):
        value = torch.tensor(self.losses[self.calls], dtype=torch.float32)
        self.calls += 1
        return pred.sum() * 0 + value


def curve(name: str, num_it: int) -> list[float]:
    """The raw losses of a scripted lr_find curve."""
    k = np.arange(num_it + 20, dtype=np.float64)
    wiggle = 0.02 * np.sin(1.7 * k)
    if name == "turns_nan":  # falls, bottoms out, rises a little, then NaN (never 4x its best)
        losses = 2.3 - 1.6 * np.tanh(k / 25) + 0.002 * np.maximum(k - 55, 0) ** 2 + wiggle
        losses[int(num_it * 0.72) :] = np.nan
    elif name == "diverges":  # falls, then explodes past 4x the best: the test stops early
        losses = 2.3 - 1.5 * np.tanh(k / 20) + np.exp(np.maximum(k - 50, 0) / 4) - 1 + wiggle
    elif name == "flat":  # one value throughout: only float32 rounding moves the smoothed loss
        losses = np.full_like(k, 0.6931472)
    elif name == "plateaus":  # steps, so the smoothed curve has long near-ties
        losses = 1.0 - 0.25 * np.floor(k / 30) + 1e-9 * k
    elif name == "nan_early":  # NaN before the 4x stop on a short test
        losses = 1.5 - 0.01 * k + wiggle
        losses[18:] = np.nan
    else:
        raise ValueError(name)
    return [float(np.float32(v)) for v in losses[: num_it + 20]]


LR_FIND_CASES = [
    dict(name="turns_nan", start_lr=1e-7, end_lr=10.0, num_it=100),
    dict(name="diverges", start_lr=1e-7, end_lr=10.0, num_it=100),
    dict(name="flat", start_lr=1e-7, end_lr=10.0, num_it=100),
    dict(name="plateaus", start_lr=1e-6, end_lr=1.0, num_it=90),
    dict(name="nan_early", start_lr=1e-5, end_lr=1.0, num_it=30),
    dict(name="diverges", start_lr=1e-7, end_lr=10.0, num_it=100, stop_div=False),
    dict(name="plateaus", start_lr=1e-6, end_lr=1.0, num_it=90, stop_div=False),
]


def lr_find_case(case: dict, folder: str) -> dict:
    raw = curve(case["name"], case["num_it"])
    learn = learner(1, 7, folder, loss_func=ScriptedLoss(raw))
    settings = dict(start_lr=case["start_lr"], end_lr=case["end_lr"], num_it=case["num_it"], stop_div=case.get("stop_div", True))
    with quiet(learn):
        suggested = learn.lr_find(**settings, show_plot=False, suggest_funcs=(valley, minimum, steep))
    recorded = len(learn.recorder.lrs)
    return {
        **case,
        "raw_losses": raw[:recorded],
        "lrs": [float(lr) for lr in learn.recorder.lrs],
        "losses": [float(loss) for loss in learn.recorder.losses],
        "suggestions": {
            "valley": suggested.valley,
            "minimum": suggested.minimum,
            "steep": suggested.steep,
            **slide_case(case, settings, folder),
        },
    }


def slide_case(case: dict, settings: dict, folder: str) -> dict:
    """fastai's slide on the same test, run again: {} where fastai raises (a curve of 15 points
    or fewer once cut: it indexes past its start)."""
    learn = learner(1, 7, folder, loss_func=ScriptedLoss(curve(case["name"], case["num_it"])))
    try:
        with quiet(learn):
            return {"slide": learn.lr_find(**settings, show_plot=False, suggest_funcs=(slide,)).slide}
    except IndexError:
        return {}


# --- schedules ---------------------------------------------------------------------------------


def record(learn: Learner, fit) -> RecordHypers:
    spy = RecordHypers()
    learn.add_cb(spy)
    with quiet(learn):
        fit(learn)
    learn.remove_cb(spy)
    return spy


FINE_TUNE_CASES = [
    dict(n_groups=3, n_batches=4, epochs=2, freeze_epochs=1, base_lr=2e-3, args={}, kwargs={}),
    dict(n_groups=3, n_batches=4, epochs=2, freeze_epochs=1, base_lr=2e-3, args={}, kwargs={"moms": [0.9, 0.8, 0.9], "div_final": 1e3}),
    dict(
        n_groups=3,
        n_batches=3,
        epochs=3,
        freeze_epochs=2,
        base_lr=1e-2,
        args={"lr_mult": 10, "pct_start": 0.4, "div": 8.0},
        kwargs={"moms": [0.97, 0.8, 0.92], "div_final": 1e4},
    ),
    dict(n_groups=2, n_batches=5, epochs=1, freeze_epochs=1, base_lr=4e-3, args={"div": 3.0}, kwargs={"div_final": 50.0}),
]


def fine_tune_case(case: dict, folder: str) -> dict:
    kwargs = {k: tuple(v) if k == "moms" else v for k, v in case["kwargs"].items()}
    learn = learner(case["n_groups"], case["n_batches"], folder)
    spy = record(learn, lambda learn: learn.fine_tune(case["epochs"], case["base_lr"], case["freeze_epochs"], **case["args"], **kwargs))
    return {**case, "lrs": spy.lrs, "moms": spy.moms, "phases": ["frozen" if f == 0 else "unfrozen" for f in spy.fits]}


SGDR_CASES = [
    dict(n_groups=3, n_batches=5, n_cycles=3, cycle_len=1, cycle_mult=2, lr_max=[1e-4, 1e-2]),
    dict(n_groups=1, n_batches=3, n_cycles=2, cycle_len=2, cycle_mult=3, lr_max=1e-2),
    dict(n_groups=2, n_batches=2, n_cycles=4, cycle_len=1, cycle_mult=2, lr_max=[3e-3]),
    dict(n_groups=2, n_batches=4, n_cycles=3, cycle_len=2, cycle_mult=2, lr_max=5e-3),
]


def sgdr_case(case: dict, folder: str) -> dict:
    learn = learner(case["n_groups"], case["n_batches"], folder)
    spy = record(learn, lambda learn: learn.fit_sgdr(case["n_cycles"], case["cycle_len"], lr_spec(case["lr_max"]), case["cycle_mult"]))
    return {**case, "n_epoch": len(spy.lrs) // case["n_batches"], "lrs": spy.lrs}


FLAT_COS_CASES = [
    dict(n_groups=3, n_batches=5, n_epoch=4, lr=[1e-3], kwargs={}),
    dict(n_groups=3, n_batches=7, n_epoch=3, lr=[1e-5, 1e-3], kwargs={"pct_start": 0.5, "div_final": 1e3}),
    dict(n_groups=1, n_batches=6, n_epoch=5, lr=2e-2, kwargs={"pct_start": 0.9}),
]


def flat_cos_case(case: dict, folder: str) -> dict:
    learn = learner(case["n_groups"], case["n_batches"], folder)
    spy = record(learn, lambda learn: learn.fit_flat_cos(case["n_epoch"], lr_spec(case["lr"]), **case["kwargs"]))
    return {**case, "lrs": spy.lrs}


PARAM_SCHEDULER_CASES = [
    dict(kind="points", n_groups=3, n_batches=6, n_epoch=2, peaks=[1e-4, 1e-3, 1e-2], points=[[0.0, 0.04], [0.3, 1.0], [1.0, 1e-4]]),
    dict(kind="points", n_groups=2, n_batches=5, n_epoch=3, peaks=[1e-3, 5e-3], points=[[0.0, 0.1], [0.25, 1.0], [0.75, 0.5], [1.0, 0.01]]),
    dict(kind="function", n_groups=3, n_batches=6, n_epoch=2, peaks=[1e-4, 1e-3, 1e-2], fn="sweeper.schedules.shapes.linear_decay"),
    dict(kind="function", n_groups=2, n_batches=4, n_epoch=3, peaks=[2e-3, 4e-3], fn="math.cos"),
    # steps: a position given twice is a combine_scheds piece of length 0 (never run: a jump)
    dict(kind="points", n_groups=2, n_batches=5, n_epoch=2, peaks=[1e-3, 1e-2], points=[[0.0, 1.0], [0.5, 1.0], [0.5, 0.1], [1.0, 0.1]]),
    dict(
        kind="points",
        n_groups=3,
        n_batches=7,
        n_epoch=3,
        peaks=[1e-4, 1e-3, 1e-2],
        points=[[0.0, 0.1], [0.2, 1.0], [0.2, 0.5], [0.7, 0.5], [0.7, 0.05], [1.0, 0.01]],
        mom_points=[[0.0, 0.95], [0.2, 0.85], [1.0, 0.95]],
    ),
    # SchedNo pieces: a staircase of constants, as sweeper's points [[0,1],[0.3,1],[0.3,0.1],...]
    dict(kind="sched_no", n_groups=2, n_batches=4, n_epoch=5, peaks=[1e-3, 1e-2], pcts=[0.3, 0.4, 0.3], values=[1.0, 0.1, 0.01]),
    dict(kind="function", n_groups=2, n_batches=6, n_epoch=2, peaks=[1e-3, 1e-2], fn="math.cos", mom_fn="math.sin"),
]


def linear_decay(pos: float) -> float:
    return 1.0 - pos  # sweeper.schedules.shapes.linear_decay


FUNCTIONS = {"sweeper.schedules.shapes.linear_decay": linear_decay, "math.cos": math.cos, "math.sin": math.sin}


def scaled(function, peaks: np.ndarray, pos: float) -> np.ndarray:
    return peaks * function(pos)


def param_scheduler_case(case: dict, folder: str) -> dict:
    peaks = np.array(case["peaks"])
    scheds = {}
    if case["kind"] == "points":
        scheds["lr"] = lines(case["points"], peaks)
        if "mom_points" in case:
            scheds["mom"] = lines(case["mom_points"], 1.0)
    elif case["kind"] == "sched_no":
        scheds["lr"] = combine_scheds(case["pcts"], [SchedNo(peaks * v, peaks * v) for v in case["values"]])
    else:
        scheds["lr"] = partial(scaled, FUNCTIONS[case["fn"]], peaks)
        if "mom_fn" in case:
            scheds["mom"] = FUNCTIONS[case["mom_fn"]]
    learn = learner(case["n_groups"], case["n_batches"], folder)
    spy = record(learn, lambda learn: learn.fit(case["n_epoch"], cbs=ParamScheduler(scheds)))
    return {**case, "lrs": spy.lrs, "moms": spy.moms}


def lines(points, scale):
    """combine_scheds of SchedLins through (position, value) points, values times `scale`."""
    pcts = [p1 - p0 for (p0, _), (p1, _) in zip(points, points[1:])]
    return combine_scheds(pcts, [SchedLin(scale * v0, scale * v1) for (_, v0), (_, v1) in zip(points, points[1:])])


PCT_START_CASES = [
    dict(fit="fit_one_cycle", n_groups=2, n_batches=5, n_epoch=2, lr=[1e-4, 1e-2], pct_start=0.0),
    dict(fit="fit_one_cycle", n_groups=2, n_batches=5, n_epoch=2, lr=[1e-4, 1e-2], pct_start=1.0),
    dict(fit="fit_flat_cos", n_groups=1, n_batches=6, n_epoch=2, lr=1e-2, pct_start=0.0),
    dict(fit="fit_flat_cos", n_groups=1, n_batches=6, n_epoch=2, lr=1e-2, pct_start=1.0),
]


def pct_start_case(case: dict, folder: str) -> dict:
    learn = learner(case["n_groups"], case["n_batches"], folder)
    spy = record(learn, lambda learn: getattr(learn, case["fit"])(case["n_epoch"], lr_spec(case["lr"]), pct_start=case["pct_start"]))
    return {**case, "lrs": spy.lrs, "moms": spy.moms}


# --- SGD without momentum ------------------------------------------------------------------------


def sgd_no_momentum(folder: str) -> dict:
    """fit_one_cycle(2, 0.1) of y = a x + b with fastai's SGD(mom=0): every parameter update."""
    learn = learner(1, 3, folder, mom=0.0, seed=1)
    (layer,) = learn.model
    initial = [layer.weight.item(), layer.bias.item()]
    updates = []

    class RecordParams(Callback):
        order, run_valid = 90, False

        def after_step(self) -> None:
            updates.append([layer.weight.item(), layer.bias.item()])

    learn.add_cb(RecordParams())
    spy = record(learn, lambda learn: learn.fit_one_cycle(2, 0.1))
    x, y = learn.dls.train.dataset.tensors
    return {
        "n_epoch": 2,
        "lr_max": 0.1,
        "batch": BATCH,
        "x": x.flatten().tolist(),
        "y": y.flatten().tolist(),
        "initial": initial,
        "params": updates,
        "lrs": spy.lrs,
        "moms": spy.moms,
        "grad_avg_kept": any("grad_avg" in state for state in learn.opt.state.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        reference = {
            "source": f"fastai {fastai.__version__}, torch {torch.__version__} (scripts/fastai_reference.py)",
            "lr_find": [lr_find_case(case, folder) for case in LR_FIND_CASES],
            "fine_tune": [fine_tune_case(case, folder) for case in FINE_TUNE_CASES],
            "sgd_no_momentum": sgd_no_momentum(folder),
            "fit_sgdr": [sgdr_case(case, folder) for case in SGDR_CASES],
            "fit_flat_cos": [flat_cos_case(case, folder) for case in FLAT_COS_CASES],
            "param_scheduler": [param_scheduler_case(case, folder) for case in PARAM_SCHEDULER_CASES],
            "pct_start_ends": [pct_start_case(case, folder) for case in PCT_START_CASES],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference, indent=1) + "\n")  # NaN where fastai recorded NaN
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
