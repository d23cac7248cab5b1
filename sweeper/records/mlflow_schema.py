"""A new embedded MLflow store written from the schema MLflow's migrations leave, in one go.

MLflow makes a new SQLite store by creating its first tables and then running every schema
migration since (alembic): ~1.0-1.5 s of a core, most of what a sweep in a fresh folder spends
on its store. For one schema revision the migrated store is the same every time, so the package
keeps it as SQL (sqlite3's dump of a store MLflow has just migrated, made by
`scripts/make_mlflow_schema.py`), in a file named by the revision: a new store of that revision
is that SQL executed (~20 ms), and MLflow opens it as a store it made (its tables are there, its
revision is the head MLflow verifies; MLflow adds its Default experiment as it does to any).
Where the package has no SQL for the installed MLflow's revision, MLflow's migrations make the
store, as they would without sweeper.

    if not write_schema(path):     # False: no SQL kept for this MLflow's schema revision
        ...                        # MLflow's own migrations make it
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["SCHEMAS", "head_revision", "schema_file", "write_schema"]

SCHEMAS = Path(__file__).with_name("mlflow_schemas")  # <revision>.sql, one a schema revision


def head_revision() -> str | None:
    """The schema revision the installed MLflow migrates its stores to and verifies when it opens
    one (its alembic head); None where MLflow no longer says it the way it does here."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # noqa: BLE001 - then MLflow makes the store itself, and says what fails there
        return None


def schema_file(revision: str | None) -> Path | None:
    """The kept SQL of a store migrated to `revision`, if the package has it."""
    if revision is None or not revision.isalnum():  # a file name of ours, never a path
        return None
    path = SCHEMAS / f"{revision}.sql"
    return path if path.is_file() else None


def write_schema(path: Path) -> bool:
    """Write the schema of the installed MLflow's revision into `path` (a new, empty file); False,
    writing nothing, where the package keeps no SQL for that revision."""
    kept = schema_file(head_revision())
    if kept is None:
        return False
    store = sqlite3.connect(path)
    try:
        store.executescript(kept.read_text())  # its own BEGIN and COMMIT: the whole schema or none
    finally:
        store.close()
    return True
