"""Where a run ran: code version (git commit, dirty or not), package versions, Python, machine.

Recorded with every MLflow run so a result can be traced to the code and libraries behind it.
The git state is that of the sweeper checkout itself (not of the working directory), read once
per process: it cannot change under a running worker in any way that matters to its records.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["GitState", "PACKAGES", "describe_environment", "git_state", "package_versions", "torch_environment"]

# The libraries whose versions can change a result or how it is recorded.
PACKAGES = (
    "sweeper",
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "optuna",
    "hydra-core",
    "omegaconf",
    "mlflow",
    "pandas",
    "matplotlib",
)
_GIT_SECONDS = 10  # a git call that takes longer is not worth holding a worker up for


@dataclass(frozen=True)
class GitState:
    commit: str | None  # None: not a git checkout (an installed wheel), or no git
    dirty: bool | None  # uncommitted changes to tracked or unignored files

    @property
    def code_version(self) -> str:
        """The commit (suffixed "-dirty" when the tree had changes), else the package version."""
        if self.commit is None:
            return f"sweeper-{package_versions().get('sweeper', 'unknown')}"
        return f"{self.commit}-dirty" if self.dirty else self.commit


def _git(*args: str) -> str | None:
    repository = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=_GIT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_state() -> GitState:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None)
    status = _git("status", "--porcelain")
    return GitState(commit, None if status is None else bool(status))


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of PACKAGES (the ones not installed are left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def describe_environment(device: str | None = None) -> dict[str, Any]:
    """Everything about where a run ran, as plain JSON-able values."""
    info: dict[str, Any] = {
        "git": {**asdict(git_state()), "code_version": git_state().code_version},
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
    }
    torch = torch_environment()
    if torch is not None:
        info["torch"] = torch
    return info


def torch_environment() -> dict[str, Any] | None:
    """torch's settings in this process, or None if the trainer did not load it (importing it
    costs seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
