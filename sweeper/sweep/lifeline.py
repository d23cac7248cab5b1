"""A process that ends when the process that started it ends, however that one ends (SIGKILL
included): a sweep's workers, and its warm server (sweeper.sweep.warm)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["end_with_parent"]

PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
PARENT_CHECK_SECONDS = 1.0  # where there is no prctl: how often a worker looks for its parent


def end_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent`, the sweep that started it, ends, however it ends: a
    worker left behind by a killed sweep would go on taking trials that nobody watches. On Linux
    the kernel sends it (prctl PR_SET_PDEATHSIG); elsewhere a thread looks for the parent every
    PARENT_CHECK_SECONDS. A parent that ended before this was asked for has already left the
    process to another parent: it is looked for once more, after asking."""
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent,), name="parent watch", daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
