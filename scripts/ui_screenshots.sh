#!/usr/bin/env bash
# Refresh the README's MLflow UI pictures (results/ui/*.png): the browser tests record their two
# sweeps, open `sweeper ui`'s page in Chromium and save what they checked there. A plain test run
# saves them under results/browser/ (git-ignored) instead, so it changes no tracked file.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_browser.sh
SWEEPER_SCREENSHOTS="$PWD/results/ui" "${PYTHON:-.venv/bin/python}" -m pytest -q -n 0 -p no:cacheprovider \
    tests/test_browser.py -k sweeper_ui
ls -l results/ui/
