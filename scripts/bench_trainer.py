"""Trainer overhead: sweeper's one-cycle trainer against a hand-written PyTorch loop, per step.

    .venv/bin/python scripts/bench_trainer.py                      # CPU, mlp-tiny, mlp-wide, cnn
    .venv/bin/python scripts/bench_trainer.py --device cuda --batch-size 256

Both train the same model on the same data with the same optimizer (AdamW, one param group per
layer group, as the trainer's `prepare` builds them), the same steps, batch size and device:
- `trainer`: `sweeper.trainer.train`, which before every batch sets each group's lr and the
  momentum from the schedule, checks the loss is finite (`loss.item()`) and tells its reporters;
- `plain`: the minimal loop a practitioner writes: forward, loss, zero_grad, backward, step,
  `loss.item()` for the log; no schedule;
- `plain+OneCycleLR`: the same with `torch.optim.lr_scheduler.OneCycleLR` stepped every batch,
  the scheduled loop most people would write instead (for context).
Time per step is the training loop alone (one epoch; evaluation and set-up are outside it), in
interleaved rounds; the ratio trainer / plain is taken round by round and its median reported.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib
from sweeper.events import Reporter, StartEvent, StepEvent

ROUNDS = 5


class StepClock(Reporter):
    """Times the trainer's loop: from on_start (just before the first batch) to the last step's
    on_step, where the GPU's queue is drained as the plain loop drains it at its end."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.total = self.started = self.ended = 0.0

    def on_start(self, event: StartEvent) -> None:
        self.total = event.total_steps
        self.started = time.perf_counter()

    def on_step(self, event: StepEvent) -> None:
        if event.step == self.total - 1:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.ended = time.perf_counter()


def trainer_step(cfg) -> float:
    from sweeper.trainer import train

    clock = StepClock(str(cfg.train.device))
    result = train(cfg, [clock])
    if result.status != "finished":
        raise RuntimeError(f"the trainer's run ended {result.status}: {result.reason}")
    return (clock.ended - clock.started) / clock.total


def plain_step(cfg, one_cycle: bool = False) -> float:
    """The hand-written loop, on what the trainer's `prepare` builds for this config (the same
    seeds, model, data and optimizer param groups as the trainer's)."""
    import torch
    from torch import nn

    from sweeper.trainer import prepare

    trial = prepare(cfg)
    model, optimizer, data, batch_size = trial.model, trial.optimizer, trial.data, trial.batch_size
    steps = data.n_train_batches(batch_size)
    scheduler = None
    if one_cycle:
        peaks = [group["lr"] for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps)
    model.train()
    losses = []
    started = time.perf_counter()
    order = torch.randperm(len(data.train_y), generator=trial.generator).to(data.train_x.device)
    for i in range(steps):
        index = order[i * batch_size : (i + 1) * batch_size]
        loss = nn.functional.cross_entropy(model(data.train_x[index]), data.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    if trial.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def measure(size_name: str, args, folder: Path) -> dict:
    from sweeper.config import compose_config

    size = benchlib.MODEL_SIZES[size_name]
    steps = args.steps or size.steps
    data = benchlib.tensor_data(folder, size.shape, steps * args.batch_size, 256)
    cfg = compose_config([
        *size.overrides, *data, "train.epochs=1", f"train.batch_size={args.batch_size}",
        f"train.device={args.device}", f"train.threads={args.threads}", "tracking=none", f"results_dir={folder}",
    ])
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
        args.models, args.steps, args.repeats = ["mlp-tiny"], args.steps or 20, 1
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, args, Path(folder)) for name in args.models]
    benchlib.publish(
        args.out_dir,
        "trainer",
        "Trainer overhead per step",
        rows,
        device=args.device,
        notes=[
            "Time per training step (ms, median of the rounds); `ratio` = trainer / plain loop, "
            "taken round by round (median, min, max); `overhead_us` = trainer - plain per step. "
            f"AdamW, 3 layer groups (6 param groups), fastai one-cycle shape, deterministic kernels "
            f"(the config's default), {args.threads} torch thread(s), for every loop alike."
        ],
    )


if __name__ == "__main__":
    main()
