"""Reference values from torch itself for the torch shapes (tests/data/torch_schedulers.json).

    python scripts/torch_reference.py [--out tests/data/torch_schedulers.json]

Runs every case of tests/helpers/torch_cases.py (torch's own test_lrscheduler.py cases for
StepLR, MultiStepLR, LinearLR, CosineAnnealingLR, CyclicLR, SequentialLR, ExponentialLR and
PolynomialLR, and the schedulers stepped once an epoch) on a dummy SGD optimizer and records,
before every training batch, the lr of each param group and the momentum; with torch's version.
tests/test_torch_schedulers.py checks sweeper's plan against the file (and against torch live).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "torch_schedulers.json"
sys.path.insert(0, str(ROOT / "tests"))  # the cases are the tests' own

from helpers.torch_cases import PEAKS, reference_cases  # noqa: E402


def reference(cases) -> dict:
    found = {}
    for case in cases:
        lrs, momenta = case.torch_run()
        momenta = momenta if case.momentum else None  # else the optimizer's own, which the shape leaves alone
        found[case.name] = {"batches": case.batches, "per_epoch": case.per_epoch, "lrs": lrs, "momenta": momenta}
    return {"torch": torch.__version__, "peaks": list(PEAKS), "cases": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    written = reference(reference_cases())
    cases = ",\n".join(f"  {json.dumps(name)}: {json.dumps(values)}" for name, values in written["cases"].items())
    args.out.write_text(f'{{"torch": {json.dumps(written["torch"])}, "peaks": {json.dumps(written["peaks"])}, "cases": {{\n{cases}\n}}}}\n')
    print(f"{len(written['cases'])} cases from torch {written['torch']} -> {args.out}")


if __name__ == "__main__":
    main()
