"""Epoch checkpoints: what writing one costs, per epoch, against the epoch it follows.

    .venv/bin/python scripts/bench_checkpoints.py                  # CPU: mlp-tiny, mlp-wide, cnn (+ resnet18)
    .venv/bin/python scripts/bench_checkpoints.py --device cuda

Each model trains one trial of `--epochs` epochs on generated data (benchlib.tensor_data) with the
trainer's own epoch checkpoints (sweeper.training.checkpoints.EpochCheckpoints, as a sweep's trials do), so
epochs and checkpoint writes alternate in the same run: epoch, write, epoch, write, ... An epoch's
time is from the end of one write to the end of the next epoch's reports (training and
evaluation); a write's time is that of `after_epoch` (the state gathered, torch.save to a
temporary file, fsync, rename). The ratio write / epoch is taken epoch by epoch and its median
reported, with the median reading back of the file (torch.load with weights_only=True) for the
resume. ResNet-18 runs only where torchvision imports.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib

from sweeper.training.checkpoints import EpochCheckpoints, load_checkpoint
from sweeper.trial.events import Reporter

SIZES = {
    **{name: (size.overrides, size.shape) for name, size in benchlib.MODEL_SIZES.items()},
    "resnet18": (("model=resnet18",), (3, 32, 32)),
}


class TimedCheckpoints(EpochCheckpoints):
    """The trainer's epoch checkpoints, each write timed, and every epoch's end noted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[float] = []
        self.epochs: list[float] = []
        self.bytes = 0
        self._since = time.perf_counter()

    def on_start(self, event) -> None:
        self._since = time.perf_counter()

    def after_epoch(self, result) -> None:
        started = time.perf_counter()
        self.epochs.append(started - self._since)
        super().after_epoch(result)
        done = time.perf_counter()
        if len(result.epochs) < self._epochs:  # the last epoch writes nothing
            self.writes.append(done - started)
            self.bytes = self.path.stat().st_size
        self._since = done


class KeepLast(Reporter):
    """Copies the checkpoint aside before the trial ends (the trial removes its own)."""

    def __init__(self, hook: TimedCheckpoints, kept: Path) -> None:
        self.hook, self.kept = hook, kept

    def on_epoch(self, event) -> None:
        if self.hook.path.exists():
            self.kept.write_bytes(self.hook.path.read_bytes())


def measure(name: str, overrides: tuple[str, ...], shape: tuple[int, ...], args, folder: Path) -> dict | None:
    from sweeper.config import compose_config
    from sweeper.training.trainer import train

    if name == "resnet18":
        try:
            import torchvision  # noqa: F401
        except Exception as error:  # noqa: BLE001 - any failure to import means the same here
            print(f"resnet18: skipped, torchvision does not import here ({type(error).__name__}: {error})")
            return None
    n_train = 512 if args.quick else args.train_size
    data = benchlib.tensor_data(folder, shape, n_train, 128)
    cfg = compose_config([
        *overrides, *data, f"train.epochs={args.epochs + 1}", "train.batch_size=64", f"train.device={args.device}",
        "train.threads=1" if args.device == "cpu" else "train.threads=null", f"results_dir={folder}/results", "tracking=none",
    ])  # fmt: skip
    hook = TimedCheckpoints(folder / f"{name}.pt")
    kept = folder / f"{name}-kept.pt"
    benchlib.check_finished(train(cfg, [hook, KeepLast(hook, kept)]), f"{name}'s trial")
    # the first epoch pays for warm-up (allocations, caches): left out; the last writes nothing
    epochs, writes = hook.epochs[1:-1], hook.writes[1:]
    reads = []
    for _ in range(len(writes)):
        started = time.perf_counter()
        assert load_checkpoint(kept) is not None
        reads.append(time.perf_counter() - started)
    return {
        "model": name,
        "device": args.device,
        "train_samples": n_train,
        "epochs_timed": len(writes),
        "checkpoint_mb": round(hook.bytes / 2**20, 2),
        "epoch_ms": round(benchlib.median(epochs) * 1000, 1),
        "write_ms": round(benchlib.median(writes) * 1000, 2),
        "ratio": round(benchlib.median(benchlib.ratios(writes, epochs)), 4),
        "read_ms": round(benchlib.median(reads) * 1000, 2),
    }


def main() -> None:
    parser = benchlib.parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=6, help="epochs with a checkpoint after them (one more trains, unwritten)")
    parser.add_argument("--train-size", type=int, default=4096, help="training samples per epoch")
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.models = 2, ["mlp-tiny"]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [row for name in args.models if (row := measure(name, *SIZES[name], args, Path(scratch)))]
    skipped = [name for name in args.models if name not in {row["model"] for row in rows}]
    notes = [
        "Per model, one trial whose epochs and checkpoint writes alternate (the trainer's own epoch "
        "checkpoints, written to a local disk): `epoch_ms` the median epoch (training and evaluation), "
        "`write_ms` the median write (state gathered, torch.save, fsync, rename), `ratio` the median of "
        "write / epoch taken epoch by epoch, `read_ms` reading it back for a resume (weights_only). "
        "Batch size 64, AdamW, one torch thread on the CPU.",
        *([f"Not measured: {', '.join(skipped)} (torchvision does not import here)."] if skipped else []),
    ]
    benchlib.publish(args.out_dir, "checkpoints", "Epoch checkpoints: cost per epoch", rows, notes=notes, device=args.device)


if __name__ == "__main__":
    benchlib.run(main)
