"""Trainer overhead: sweeper's one-cycle trainer against a hand-written PyTorch loop, per step.

    .venv/bin/python scripts/bench_trainer.py                      # CPU, mlp-tiny, mlp-wide, cnn
    .venv/bin/python scripts/bench_trainer.py --device cuda --batch-size 256

Both train the same model on the same data with the same optimizer (AdamW, one param group per
layer group, as the trainer's `prepare` builds them), the same steps, batch size and device:
- `trainer`: `sweeper.training.trainer.train`, which before every batch sets each group's lr and the
  momentum from the schedule, and every `train.sync_every` steps (16, the config's default) reads
  the losses, checks they are finite and tells its reporters;
- `plain`: the minimal loop a practitioner writes: forward, loss, zero_grad, backward, step,
  `loss.item()` for the log; no schedule;
- `plain+OneCycleLR`: the same with `torch.optim.lr_scheduler.OneCycleLR` stepped every batch,
  the scheduled loop most people would write instead (for context).
A step's time is the median over chunks of `train.sync_every` steps of a chunk's time (from
where the loop has read the last loss of one chunk to the next; a read waits for the GPU), over
its steps, so evaluation, set-up and moments when other work takes the core are left out. Rounds interleave the loops; the ratio
trainer / plain is taken round by round and its median reported.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib

from sweeper.trial.events import Reporter, StepEvent

ROUNDS = 5


class StepClock(Reporter):
    """Notes the time each step is reported (the trainer reports its steps once it has read their losses)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step(self, event: StepEvent) -> None:
        self.ends.append(time.perf_counter())


def step_time(ends: list[float], every: int) -> float:
    """A step's time: the median over chunks of `every` steps (the trainer reads its losses, and
    reports its steps, that many at a time) of the time from one chunk's end to the next's, over
    `every`. Medians leave out the moments other work on the machine takes the core away."""
    marks = ends[every - 1 :: every]
    return benchlib.median((b - a) / every for a, b in zip(marks, marks[1:]))


def trainer_step(cfg) -> float:
    from sweeper.training.trainer import train

    clock = StepClock()
    benchlib.check_finished(train(cfg, [clock]), "the trainer's run")
    return step_time(clock.ends, int(cfg.train.sync_every))


def plain_step(cfg, one_cycle: bool = False) -> float:
    """The hand-written loop, on what the trainer's `prepare` builds for this config (the same
    seeds, model, data and optimizer param groups as the trainer's)."""
    import torch
    from torch import nn

    from sweeper.training.trainer import prepare

    trial = prepare(cfg)
    model, optimizer, data, batch_size = trial.model, trial.optimizer, trial.data, trial.batch_size
    steps = data.n_train_batches(batch_size)
    scheduler = None
    if one_cycle:
        peaks = [group["lr"] for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps)
    model.train()
    ends = []
    order = torch.randperm(len(data.train_y), generator=trial.generator).to(data.train_x.device)
    for i in range(steps):
        index = order[i * batch_size : (i + 1) * batch_size]
        loss = nn.functional.cross_entropy(model(data.train_x[index]), data.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss.item()  # a hand-written loop reads its loss every step
        ends.append(time.perf_counter())
    return step_time(ends, int(cfg.train.sync_every))


def measure(size_name: str, args, folder: Path) -> dict:
    from sweeper.config import compose_config

    size = benchlib.MODEL_SIZES[size_name]
    steps = args.steps or size.steps
    data = benchlib.tensor_data(folder, size.shape, steps * args.batch_size, 256)
    cfg = compose_config(
        [
            *size.overrides,
            *data,
            "train.epochs=1",
            f"train.batch_size={args.batch_size}",
            f"train.device={args.device}",
            f"train.threads={args.threads}",
            "tracking=none",
            f"results_dir={folder}",
        ]
    )
    samples = benchlib.interleave(
        {
            "trainer": lambda: trainer_step(cfg),
            "plain": lambda: plain_step(cfg),
            "plain+OneCycleLR": lambda: plain_step(cfg, one_cycle=True),
        },
        args.repeats,
    )
    ratio = benchlib.ratios(samples["trainer"], samples["plain"])
    return {
        "model": size_name,
        "device": args.device,
        "batch_size": args.batch_size,
        "steps": steps,
        "rounds": args.repeats,
        "trainer_ms": 1000 * benchlib.median(samples["trainer"]),
        "plain_ms": 1000 * benchlib.median(samples["plain"]),
        "onecycle_ms": 1000 * benchlib.median(samples["plain+OneCycleLR"]),
        "ratio": benchlib.median(ratio),
        "ratio_min": min(ratio),
        "ratio_max": max(ratio),
        "ratio_vs_onecycle": benchlib.median(benchlib.ratios(samples["trainer"], samples["plain+OneCycleLR"])),
        "overhead_us": 1e6 * benchlib.median(a - b for a, b in zip(samples["trainer"], samples["plain"])),
    }


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--models", nargs="+", default=list(benchlib.MODEL_SIZES), choices=list(benchlib.MODEL_SIZES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, help="steps per timed run (default: per model size)")
    # one thread: a 2-thread OpenMP team on a machine where other work runs stalls at every barrier
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=ROUNDS, help="interleaved rounds (after one warm-up round)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.steps, args.repeats = ["mlp-tiny"], args.steps or 48, 1  # three chunks of 16
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, args, Path(folder)) for name in args.models]
    benchlib.publish(
        args.out_dir,
        "trainer",
        "Trainer overhead per step",
        rows,
        device=args.device,
        notes=[
            "Time per training step (ms: the median step of a run, then the median over the rounds); "
            "`ratio` = trainer / plain loop, "
            "taken round by round (median, min, max); `overhead_us` = trainer - plain per step. "
            f"AdamW, 3 layer groups (6 param groups), fastai one-cycle shape, deterministic kernels "
            f"(the config's default), {args.threads} torch thread(s), for every loop alike."
        ],
    )


if __name__ == "__main__":
    benchlib.run(main)
