#!/usr/bin/env bash
# Create .venv and install sweeper with its test tools.
#
# torch: SWEEPER_TORCH picks the build (default torch==2.13.0). On machines that keep a CPU wheel
# of it on disk pip takes that one at once; elsewhere pip takes the PyPI build, CUDA included on
# Linux. A GPU user who wants another build sets e.g. SWEEPER_TORCH="torch==2.13.0 --index-url ...".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${SWEEPER_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[dev]"
if [ "${SWEEPER_EXTRAS:-0}" = 1 ]; then
  started=$SECONDS
  python3 -m venv .venv-extras
  # shellcheck disable=SC2086
  .venv-extras/bin/python -m pip install -q ${SWEEPER_EXTRAS_TORCH:-torch==2.14.1 torchvision==0.29.1}
  .venv-extras/bin/python -m pip install -q -e ".[dev,vision,transformers]"
  echo "installed .venv-extras in $((SECONDS - started)) s: $(.venv-extras/bin/python -c 'import torch, torchvision, transformers; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}")')"
fi
echo "installed: $(.venv/bin/python -c 'import torch, optuna, mlflow, hydra; print(f"torch {torch.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}, hydra {hydra.__version__}")')"
