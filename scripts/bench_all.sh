#!/usr/bin/env bash
# Every CPU benchmark table under results/bench/ with its default settings (storage, trainer,
# tracking, sweep, pruning, scaling, checkpoints, fused, end_to_end, refusals, in that order); it prints
# the time it took.
#
#   bash scripts/bench_all.sh                      # writes results/bench/*.md, *.csv, pruning.png
#   bash scripts/bench_all.sh --quick --out-dir /tmp/bench   # smallest settings: a smoke run
#
# GPU figures (not run here): .venv/bin/python scripts/bench_trainer.py --device cuda and
# .venv/bin/python scripts/bench_scaling.py --device cuda --no-tracking --workers 1 2 4 8,
# bash scripts/bench_fused_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=results/bench
quick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick); shift ;;
    --out-dir) out="$2"; shift 2 ;;
    *) echo "usage: bash scripts/bench_all.sh [--quick] [--out-dir DIR]" >&2; exit 2 ;;
  esac
done

storage=(--trials 200 --workers 1 2 4 8)  # the command results/bench/storage.md was measured with
if [ ${#quick[@]} -gt 0 ]; then
  storage=(--trials 20 --workers 1 2)
fi

started=$SECONDS
echo "== storage"
.venv/bin/python scripts/bench_storage.py "${storage[@]}" --out "$out/storage.md"
for name in trainer tracking sweep pruning scaling checkpoints fused end_to_end first_sweep refusals; do
  echo "== $name"
  .venv/bin/python "scripts/bench_$name.py" "${quick[@]}" --out-dir "$out"
done
echo "every table written under $out/ in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
