"""The architecture is a contract: the packages' layers and no import circle (pyproject.toml's
[tool.importlinter]), and the code as ruff lints and formats it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' brings it")
    return found


def test_each_package_imports_only_those_below_it_and_nothing_imports_in_a_circle():
    done = subprocess.run([tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The contract can fail: a copy of the package whose schedules import the sweep is refused.
    shutil.copytree(ROOT / "sweeper", tmp_path / "sweeper", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    slices = tmp_path / "sweeper" / "schedules" / "slices.py"
    slices.write_text(slices.read_text() + "\nfrom sweeper.sweep import study  # noqa: E402,F401\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(BIN)}
    done = subprocess.run([tool("lint-imports")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "sweeper.schedules.slices -> sweeper.sweep.study" in done.stdout, done.stdout[-3000:]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    done = subprocess.run([tool("ruff"), *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_readers_of_a_study_pick_nothing_out_of_its_record_themselves():
    """`sweeper.analysis`, `sweeper.commands` and `sweeper.sweep` (a resume, a worker joining)
    hand a study's attributes whole to `sweeper.boundary`, which checks what they hold
    (sweeper.boundary.recorded_study, recorded_sweep); a reader that picked a recorded value out
    itself would skip the check."""
    import re

    raw = re.compile(r"\bstudy\.user_attrs\s*(\.get\(|\[)")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in ("analysis", "commands", "sweep")
        for path in sorted((ROOT / "sweeper" / package).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if raw.search(line)
    ]
    assert found == [], found


# The readers that take a study from their caller (the sweep's own process passes its live one).
READERS_OF_A_STUDY = {
    "analysis/report.py": "write_report",
    "analysis/verdict.py": "give_verdict",
    "analysis/confirm.py": "confirm_strategies",
    "analysis/ablation.py": "ablate",
    "analysis/ui.py": "sampled_settings",
}


def test_the_readers_after_a_sweep_hold_only_a_checked_study():
    """A stored study reaches `sweeper.analysis` and `sweeper.commands` only as the checked copy
    `sweeper.boundary.checked_study` builds: opened in one place (which_sweep.load_sweep_study,
    which returns that copy), and each reader that is handed a study checks it first."""
    import ast
    import re

    opens = re.compile(r"\b(load_study|create_study|RDBStorage|JournalStorage|InMemoryStorage)\b|\._storage\b")
    found = [
        f"{path.relative_to(ROOT / 'sweeper')}: {line.strip()}"
        for package in ("analysis", "commands")
        for path in sorted((ROOT / "sweeper" / package).glob("*.py"))
        for line in path.read_text().splitlines()
        if opens.search(line) and ":memory:" not in line  # an empty study of its own (a worker warming up) reads no record
    ]
    assert found == ["analysis/which_sweep.py: raw = optuna.load_study(study_name=name, storage=storage)"], found
    assert "return checked_study(raw)" in (ROOT / "sweeper" / "analysis" / "which_sweep.py").read_text()
    for module, name in READERS_OF_A_STUDY.items():
        tree = ast.parse((ROOT / "sweeper" / module).read_text())
        function = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == name)
        checks = [ast.unparse(s) for s in function.body if isinstance(s, ast.Assign)]
        assert "study = checked_study(study)" in checks, f"{module}: {name} reads the study it is handed unchecked"
