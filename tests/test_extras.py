"""The optional extras' tests (marked `extras`: torchvision, transformers) run in .venv-extras,
the environment whose torch is the build torchvision was made for (README: Vision models): the
README's test command runs them there through this test, so CI runs them although the default
environment has neither extra."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest
from helpers.processes import EXTRAS_ENV, TESTS

EXTRAS = ("torchvision", "transformers")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_extras_tests_pass_in_the_extras_environment(request):
    if all(importlib.util.find_spec(name) is not None for name in EXTRAS):
        pytest.skip("the extras are installed here: their tests run in this session")
    python = EXTRAS_ENV / "bin" / "python"
    if not python.exists():
        message = f"no {EXTRAS_ENV.name}: SWEEPER_EXTRAS=1 bash scripts/setup.sh makes it"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI makes it (.ci/run): its absence there is a broken setup
        pytest.skip(message)
    extras = [item for item in request.session.items if item.get_closest_marker("extras")]
    # Only the files of this session's extras tests: collecting those alone (4 of ~60) saves the
    # run there ~6 s of a core. A session that collected none of them (this file alone) runs all.
    files = sorted({str(item.path) for item in extras}) or [str(TESTS)]
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    done = subprocess.run(
        [str(python), "-m", "pytest", "-m", "extras", "-n", "0", "-q", "-rs", "-p", "no:cacheprovider", *files],
        cwd=TESTS.parent, env=environment, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary and "deselected" in summary, summary
    if extras:  # each of them ran there, and passed
        assert summary.startswith(f"{len(extras)} passed"), summary
