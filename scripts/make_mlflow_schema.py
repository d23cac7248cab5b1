"""Keep the schema of a new embedded MLflow store in the package, for the installed MLflow.

    .venv/bin/python scripts/make_mlflow_schema.py

Makes an empty SQLite store the way MLflow makes one (its first tables, then every migration),
dumps it as SQL (sqlite3's iterdump: the tables, their indexes and the rows the migrations wrote)
and writes it to sweeper/records/mlflow_schemas/<revision>.sql, where sweeper makes new stores of
that schema revision from it (sweeper/records/mlflow_schema.py). Run it after an MLflow upgrade
that changed the schema; tests/test_mlflow_schema.py checks the kept SQL against a store MLflow
migrates.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeper.records.mlflow_schema import SCHEMAS, head_revision  # noqa: E402

LATER = ("CREATE INDEX", "CREATE UNIQUE INDEX", "CREATE TRIGGER", "CREATE VIEW")  # after every table


def migrated_store_sql() -> str:
    """The SQL of an empty store as MLflow's own migrations leave it (no experiment in it yet)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "mlflow.db")
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        try:
            _initialize_tables(engine)  # what MLflow's store runs on an empty database
        finally:
            engine.dispose()
        store = sqlite3.connect(path)
        try:
            statements = list(store.iterdump())
        finally:
            store.close()
    # iterdump gives the tables (each with its rows) by name, then the indexes in the order the
    # migrations made them, which differs from run to run: by name too. (The order of a table's
    # constraints in its CREATE TABLE may still differ between two runs: the same schema.)
    tables = [s for s in statements if not s.startswith(LATER) and s != "COMMIT;"]
    return "\n".join([*tables, *sorted(s for s in statements if s.startswith(LATER)), "COMMIT;"]) + "\n"


def main() -> int:
    revision = head_revision()
    if revision is None:
        print("make_mlflow_schema: this MLflow does not say its schema revision; nothing written", file=sys.stderr)
        return 1
    SCHEMAS.mkdir(exist_ok=True)
    path = SCHEMAS / f"{revision}.sql"
    path.write_text(migrated_store_sql())
    print(f"make_mlflow_schema: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
