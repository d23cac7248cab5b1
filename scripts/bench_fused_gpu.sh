#!/usr/bin/env bash
# Fused trials on a GPU (prepared, not yet run here: no GPU was lent): N = 1, 8, 64, 256 for the
# MLP and the CNN on digits, trials/hour fused against one trial at a time, interleaved rounds,
# with the GPU memory each fused run peaked at (torch.cuda.max_memory_allocated).
#
#     bash scripts/bench_fused_gpu.sh            # writes results/bench/fused_gpu.md and .csv
#
# Target (issue): >= 10x trials/hour for the MLP and the CNN. Alone, N = 256 runs 256 trials one
# after another each round: expect minutes per round on the CNN.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec env PYTHONPATH="$PWD:$PWD/scripts" "$PYTHON" - "$@" <<'PY'
import time
import benchlib
import torch
from sweeper.config import compose_config
from sweeper.training.fused import train_many
from sweeper.training.trainer import train

assert torch.cuda.is_available(), "no GPU visible: this script measures fused trials on a GPU"
SHAPES = ("fastai_one_cycle", "torch_one_cycle", "triangular", "warmup_cosine", "warmup_stable_decay", "constant")
def configs(model, n):
    base = ["tracking=none", "results_dir=results/bench/fused-cache", "train.epochs=2", "train.batch_size=64", "train.device=cuda", "lr=fastai", f"model={model}"]
    return [compose_config([*base, f"lr.high={3e-4 * 100 ** (i / max(1, n - 1)):.3g}", f"shape={SHAPES[i % 6]}"]) for i in range(n)]
def timed(work):
    torch.cuda.synchronize(); start = time.perf_counter(); work(); torch.cuda.synchronize()
    return time.perf_counter() - start
rows = []
for model in ("mlp", "cnn"):
    for n in (1, 8, 64, 256):
        cfgs = configs(model, n)
        train_many(cfgs[:2]); train(cfgs[0])  # warm
        alone, fused, memory = [], [], []
        for _ in range(2):
            alone.append(timed(lambda: [benchlib.check_finished(train(c), "alone") for c in cfgs]))
            torch.cuda.reset_peak_memory_stats()
            fused.append(timed(lambda: [benchlib.check_finished(r, "fused") for r in train_many(cfgs)]))
            memory.append(torch.cuda.max_memory_allocated() / 2**20)
            print(model, n, alone[-1], fused[-1], memory[-1], flush=True)
        rows.append({"model": model, "N": n,
                     "alone_trials_per_hour": round(3600 * n / benchlib.median(alone)),
                     "fused_trials_per_hour": round(3600 * n / benchlib.median(fused)),
                     "speedup": round(benchlib.median(benchlib.ratios(alone, fused)), 2),
                     "fused_peak_MiB": round(max(memory))})
benchlib.publish(benchlib.OUT_DIR, "fused_gpu", "Fused trials on a GPU", rows, device="cuda",
                 notes=["Speedup: median over interleaved rounds of (alone seconds / fused seconds) for the same N trials."])
PY
