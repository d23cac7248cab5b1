"""A new embedded MLflow store written from the package's SQL of its schema is the store MLflow's
own migrations make (sweeper/records/mlflow_schema.py): the same tables, columns, keys, indexes,
checks and rows, read back with SQLAlchemy's inspector (the migrations' DDL text itself differs
from run to run: the order of a table's constraints), and MLflow's client records into it.
Without SQL for the installed MLflow's schema revision, MLflow's migrations make the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
from make_mlflow_schema import migrated_store_sql
from mlflow import MlflowClient

from sweeper.records import mlflow_schema
from sweeper.records.mlflow_store import _make_whole

# What MLflow writes into a store it opens (its Default experiment) that differs between two stores
# made a moment apart.
MADE_AT = {"experiments": {"creation_time", "last_update_time", "artifact_location"}}


def schema_of(path: Path) -> dict:
    """Every table's columns, keys, indexes and checks, and its rows (less MADE_AT's columns)."""
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        inspector = sqlalchemy.inspect(engine)
        found = {}
        for table in sorted(inspector.get_table_names()):
            columns = inspector.get_columns(table)
            kept = [c["name"] for c in columns if c["name"] not in MADE_AT.get(table, ())]
            with engine.connect() as connection:
                rows = connection.execute(sqlalchemy.text(f'SELECT {", ".join(kept)} FROM "{table}"')).all()
            found[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in columns],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign keys": sorted(repr(sorted(k.items())) for k in inspector.get_foreign_keys(table)),
                "indexes": sorted(repr(sorted(i.items())) for i in inspector.get_indexes(table)),
                "unique": sorted(repr(sorted(u.items())) for u in inspector.get_unique_constraints(table)),
                "checks": sorted(repr(sorted(c.items())) for c in inspector.get_check_constraints(table)),
                "rows": sorted(map(repr, rows)),
            }
        return found
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def made_by_mlflow(tmp_path_factory) -> dict:
    """The schema of a store as MLflow makes it without sweeper: its client opened on a new file
    (its migrations, ~1.2 s of a core: made once for the tests here)."""
    path = tmp_path_factory.mktemp("by-mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return schema_of(path)


def test_a_new_store_is_the_store_mlflows_migrations_make_and_records_runs(made_by_mlflow, tmp_path):
    made = tmp_path / "mlflow.db"
    _make_whole(made)  # from the package's SQL where it keeps this MLflow's revision's
    assert schema_of(made) == made_by_mlflow
    assert not list(tmp_path.glob(".*partial*"))

    client = MlflowClient(f"sqlite:///{made}")
    experiment = client.create_experiment("kept-schema", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "lr", "0.001")
    client.log_metric(run.info.run_id, "accuracy", 0.75, step=3)
    client.set_terminated(run.info.run_id)
    read = client.get_run(run.info.run_id)
    assert read.data.params == {"lr": "0.001"} and read.data.metrics == {"accuracy": 0.75}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy")] == [(3, 0.75)]
    assert read.info.status == "FINISHED"


def test_the_kept_sql_of_this_mlflows_revision_makes_its_store_and_without_it_the_migrations_do(made_by_mlflow, tmp_path, monkeypatch):
    revision = mlflow_schema.head_revision()
    assert revision and revision.isalnum()
    kept = tmp_path / "kept"
    kept.mkdir()
    monkeypatch.setattr(mlflow_schema, "SCHEMAS", kept)

    # No SQL for this revision: nothing written, and MLflow's migrations make the store.
    assert mlflow_schema.schema_file(revision) is None
    assert not mlflow_schema.write_schema(tmp_path / "unwritten.db")
    assert not (tmp_path / "unwritten.db").exists()
    _make_whole(tmp_path / "migrated.db")

    # The SQL the script keeps for it: the store written from it is the migrated one.
    (kept / f"{revision}.sql").write_text(migrated_store_sql())
    written = tmp_path / "written.db"
    assert mlflow_schema.write_schema(written)
    assert sqlite3.connect(written).execute("SELECT version_num FROM alembic_version").fetchall() == [(revision,)]
    MlflowClient(f"sqlite:///{written}").search_experiments(max_results=1)  # MLflow's own check of the revision
    assert schema_of(written) == schema_of(tmp_path / "migrated.db") == made_by_mlflow


@pytest.mark.parametrize(
    ("revision", "there"), [("../outside", "outside.sql"), ("sub/head", "kept/sub/head.sql"), ("", "kept/.sql"), (None, None)]
)
def test_a_revision_that_is_no_plain_name_names_no_file(revision, there, tmp_path, monkeypatch):
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(mlflow_schema, "SCHEMAS", tmp_path / "kept")
    if there:  # a file where that name, taken as a path, would lead
        (tmp_path / there).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / there).write_text("SELECT 1;")
    assert mlflow_schema.schema_file(revision) is None


def test_an_mlflow_that_cannot_say_its_revision_makes_the_store_itself(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    def unsaid():
        raise RuntimeError("no migrations here")

    monkeypatch.setattr(db_utils, "_get_latest_schema_revision", unsaid)
    assert mlflow_schema.head_revision() is None
    assert not mlflow_schema.write_schema(tmp_path / "unwritten.db")
    assert not (tmp_path / "unwritten.db").exists()
