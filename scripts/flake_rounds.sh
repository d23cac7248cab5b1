#!/usr/bin/env bash
# The slow test files (real sweeps: worker processes, kills, Ctrl-C, servers) run ROUNDS times in
# a row beside a CPU-burning process, the load of a busy CI machine, and the rounds that failed
# counted: the check that the suite's waits hold under load. A log per round goes to
# $FLAKE_LOGS (default /tmp/sweeper-flake-rounds).
#   bash scripts/flake_rounds.sh [ROUNDS] [more pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
shift || true
files=(tests/test_faults.py tests/test_sweep_e2e.py tests/test_workers.py tests/test_study.py)
logs=${FLAKE_LOGS:-/tmp/sweeper-flake-rounds}
mkdir -p "$logs"

.venv/bin/python -c "while True: pass" &
burner=$!
trap 'kill "$burner"' EXIT

failed=0
for round in $(seq 1 "$rounds"); do
  start=$(date +%s)
  if .venv/bin/pytest -q "${files[@]}" "$@" >"$logs/round-$round.log" 2>&1; then
    verdict=passed
  else
    verdict=FAILED
    failed=$((failed + 1))
  fi
  echo "round $round: $verdict in $(($(date +%s) - start)) s: $(tail -n 1 "$logs/round-$round.log")"
done
echo "$failed of $rounds rounds failed (logs: $logs)"
[ "$failed" -eq 0 ]
