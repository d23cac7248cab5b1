"""GitHub Markdown tables, for reports and benchmark tables alike.

Standard library only (the benchmark scripts run where pandas or matplotlib may be missing);
pandas' own `to_markdown` would need tabulate, which we do not ship.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sweeper.boundary.printed import printable

__all__ = ["markdown_table"]


def markdown_table(columns: Sequence[Any], rows: Iterable[Sequence[Any]], digits: int = 4) -> str:
    """A table with `columns` as its header; floats to `digits` significant digits, NaN blank."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{digits}g}"
        return printable(str(value).replace("|", "\\|").replace("\n", " "))  # a cell may quote a record

    header = "| " + " | ".join(map(str, columns)) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join([header, rule, *body])
