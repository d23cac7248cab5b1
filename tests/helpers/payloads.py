"""What a tampered record would carry."""

from __future__ import annotations


class RunsCodeWhenLoaded:
    """Pickled (torch.save), it creates the file `marker` when loaded by a loader that runs
    code: what a planted checkpoint or weights file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
