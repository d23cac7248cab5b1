"""Python's cyclic garbage collector, kept off what a process loads once and keeps.

    with setting_up():          # a command's imports, its config, its stores
        ...
    leave_loaded_alone()        # after a later burst of imports (a thread's libraries)

A sweep's process holds the objects of some 3,500 modules (torch, MLflow, Optuna, matplotlib,
pandas), and each full collection walks every one of them with the GIL held: 0.2-0.25 s each on
the project machine, five of them while the sweep set itself up and, as often as not, one after
its last trial, while the user waited. What a process makes while it sets itself up (modules,
their classes and tables) lives as long as the process: the collector is paused meanwhile, and
then told to leave those objects out of every collection (gc.freeze); what comes after is
collected as before. The price: cyclic garbage made while it was paused is never freed (the
five collections a sweep's set-up skips freed some 22,000 objects in all).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["leave_loaded_alone", "setting_up"]


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """No collection while the block runs; what it made (and everything before it) is left out
    of the collections after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        leave_loaded_alone()
        if enabled:
            gc.enable()


def leave_loaded_alone() -> None:
    """Every object there is now is left out of the collections from now on (gc.freeze): call it
    after a burst of imports, or in a process about to fork (then the children's collections do
    not touch, and copy, the pages they share with it)."""
    gc.freeze()
