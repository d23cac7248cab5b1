"""The study: objectives, storage, samplers and pruners, resume, and the exact trial count."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers.waiting import claim_order
from optuna.trial import TrialState

from sweeper.config import ConfigError, compose_config, config_dir
from sweeper.sweep.counts import Counts, Move, next_move
from sweeper.sweep.objectives import objectives_of
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.sampling import PruningReporter, make_pruner, make_sampler
from sweeper.sweep.space import build_space
from sweeper.sweep.storage import StorageSpec, storage_of
from sweeper.sweep.study import open_study
from sweeper.trial.events import EpochEvent

SAMPLERS = sorted(p.stem for p in (config_dir() / "sampler").glob("*.yaml"))
PRUNERS = sorted(p.stem for p in (config_dir() / "pruner").glob("*.yaml"))
DISCRETE = [  # a space the grid sampler can walk
    "search=slices",
    "search.lr.high='choice(1e-3,3e-3)'",
    "search.lr.low_ratio='choice(0.01,0.1)'",
]


@pytest.fixture
def sweep_args(tmp_path, stand_in_sweep) -> list[str]:
    """Overrides for a small sweep whose storage lives in tmp_path."""
    return [f"results_dir={tmp_path}", *stand_in_sweep, "sweep.n_trials=4"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_config_builds(sampler):
    overrides = [f"sampler={sampler}", *(DISCRETE if sampler == "grid" else [])]
    cfg = compose_config(overrides)
    built = make_sampler(cfg, build_space(cfg), worker=1)
    assert isinstance(built, optuna.samplers.BaseSampler)


def test_workers_draw_with_different_seeds():
    cfg = compose_config(["sampler=random", "sampler.seed=7"])
    space = build_space(cfg)

    def first_draw(worker: int) -> dict:
        study = optuna.create_study(sampler=make_sampler(cfg, space, worker))
        trial = study.ask()
        space.suggest(trial)
        return trial.params

    assert first_draw(0) == first_draw(0)  # a seed reproduces
    assert first_draw(0) != first_draw(1)  # parallel workers do not propose the same point


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_config_builds(pruner):
    assert isinstance(make_pruner(compose_config([f"pruner={pruner}"])), optuna.pruners.BasePruner)


@pytest.mark.parametrize(
    ("overrides", "names", "directions"),
    [
        ([], ("accuracy",), ("maximize",)),
        (["train.objective=loss", "train.direction=minimize"], ("loss",), ("minimize",)),
        (["+sweep.objectives={accuracy: maximize, loss: minimize}"], ("accuracy", "loss"), ("maximize", "minimize")),
    ],
)
def test_objectives_come_from_config(overrides, names, directions):
    overrides = [o.replace("+sweep", "sweep") for o in overrides]
    objectives = objectives_of(compose_config(overrides))
    assert (objectives.names, objectives.directions) == (names, directions)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.direction=up"], "train.direction: 'up'"),
        (["sweep.objectives={accuracy: best}"], "sweep.objectives: 'best'"),
        (["train.objective=f1"], "train.objective: \\['f1'\\] not reported"),
        (["sweep.objectives={accuracy: maximize, f1: maximize}"], "sweep.objectives: \\['f1'\\]"),
    ],
)
def test_bad_objective_fails_before_any_study(sweep_args, tmp_path, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan_sweep([*sweep_args, *overrides])
    assert not (tmp_path / "studies.db").exists()  # nothing was created


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [([], "sqlite"), (["storage=journal"], "journal"), (["storage=postgres"], "postgresql")],
)
def test_storage_kinds(monkeypatch, overrides, kind):
    monkeypatch.setenv("SWEEPER_STORAGE_URL", "postgresql://sweeper:hunter2@127.0.0.1:5432/sweeps")
    spec = storage_of(compose_config(overrides))
    assert spec.kind == kind
    assert "hunter2" not in spec.label()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["storage=postgres"], "export SWEEPER_STORAGE_URL"),
        (["storage=journal", "storage.heartbeat_interval=5"], "journal storages have no heartbeats"),
        (["storage.grace_period=5", "storage.heartbeat_interval=5"], "storage.grace_period: 5 must be"),
        (["storage.heartbeat_interval=0.5"], "whole seconds >= 1"),
        (["sweep.retries=-1"], "sweep.retries"),
    ],
)
def test_bad_storage_settings(monkeypatch, overrides, fragment):
    monkeypatch.delenv("SWEEPER_STORAGE_URL", raising=False)
    with pytest.raises(ConfigError, match=fragment):
        storage_of(compose_config(overrides))


@pytest.mark.parametrize(
    ("url", "driver_url"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),  # the driver we install
        ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),  # a chosen driver stays
        ("sqlite:///results/studies.db", "sqlite:///results/studies.db"),
    ],
)
def test_driver_url(url, driver_url):
    assert StorageSpec(url).driver_url == driver_url


def test_unreachable_database_error_hides_the_password():
    spec = StorageSpec("postgresql://sweeper:hunter2@127.0.0.1:9/sweeps")  # nothing listens on port 9
    with pytest.raises(ConfigError) as caught:
        spec.open()
    assert "storage.url: cannot open postgresql://sweeper:***@127.0.0.1:9/sweeps" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("counts", "out_of_time", "move"),
    [
        (Counts(), False, Move.RUN),
        (Counts(complete=3, running=0), False, Move.RUN),
        (Counts(complete=3, running=1), False, Move.WAIT),  # the running one may still fail
        (Counts(complete=2, pruned=1, failed=5, running=0), False, Move.RUN),  # failures do not count
        (Counts(complete=3, pruned=1), False, Move.STOP),
        (Counts(complete=9), False, Move.STOP),
        (Counts(complete=1), True, Move.STOP),
    ],
)
def test_next_move_counts_finished_and_running_trials(counts, out_of_time, move):
    assert next_move(counts, n_trials=4, out_of_time=out_of_time) == move


def test_next_move_claims_fused_trials_only_where_one_would_run():
    assert next_move(Counts(complete=1), n_trials=4, out_of_time=False, fuse=3) == Move.FUSE
    assert next_move(Counts(complete=3, running=1), n_trials=4, out_of_time=False, fuse=3) == Move.WAIT
    assert next_move(Counts(complete=4), n_trials=4, out_of_time=False, fuse=3) == Move.STOP


@pytest.mark.parametrize("storage", ["local", "journal"])
def test_claim_lock_excludes_other_holders(tmp_path, storage):
    spec = storage_of(compose_config([f"storage={storage}", f"results_dir={tmp_path}"]))
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    assert claim_order(spec.claim("s"), spec.claim("s")) == ["first", "second"]


def test_new_study_queues_covering_trials_once_and_resumes(sweep_args):
    plan = plan_sweep([*sweep_args, "sweep.n_trials=20", "sweep.compare=none"], validate=False)
    study = open_study(plan, create=True)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == len(plan.space.cover())  # one per shape (the longer list)
    assert study.user_attrs["objectives"] == ["accuracy"]
    again = open_study(plan, create=True)  # a second `sweeper sweep` resumes, queueing nothing more
    assert again._study_id == study._study_id
    assert len(again.get_trials(states=(TrialState.WAITING,))) == len(waiting)


def test_cover_is_cut_to_n_trials(sweep_args):
    study = open_study(plan_sweep([*sweep_args, "sweep.n_trials=2", "sweep.compare=none"], validate=False), create=True)
    assert len(study.trials) == 2


def test_compare_mode_queues_no_cover_the_arms_cover_the_strategies(sweep_args):
    study = open_study(plan_sweep(sweep_args, validate=False), create=True)  # the default: sweep.compare=auto
    assert not study.trials
    assert study.user_attrs["compare"] == {"param": "strategy", "arms": ["single", "fastai", "geometric"]}


def test_resuming_with_other_objectives_is_refused(sweep_args):
    open_study(plan_sweep(sweep_args, validate=False), create=True)
    other = plan_sweep([*sweep_args, "train.objective=loss", "train.direction=minimize"], validate=False)
    with pytest.raises(ConfigError, match="give this one another name"):
        open_study(other, create=True)


def test_joining_a_missing_sweep_is_a_clear_error(sweep_args):
    with pytest.raises(ConfigError, match="no sweep 'mlp-digits'.*start it with `sweeper sweep`"):
        open_study(plan_sweep(sweep_args, validate=False), create=False)


def test_pruning_reporter_reports_each_epoch_and_relays_the_pruner():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for value in (0.8, 0.9):
        study.add_trial(optuna.create_trial(value=value, intermediate_values={1: value}))
    good, bad = (PruningReporter(study.ask()) for _ in range(2))
    event = lambda accuracy: EpochEvent(0, 10, 0.5, 0.5, {"accuracy": accuracy}, accuracy)  # noqa: E731
    assert good.on_epoch(event(0.95)) is False
    assert bad.on_epoch(event(0.1)) is True  # below the median at epoch 1
    assert bad.trial.study.trials[-1].intermediate_values == {1: 0.1}  # step = epochs trained


def test_grid_sampler_needs_a_discrete_space(sweep_args):
    with pytest.raises(ConfigError, match="sampler=grid needs a finite set"):
        plan_sweep([*sweep_args, "sampler=grid"])
    plan_sweep([*sweep_args, "sampler=grid", *DISCRETE])


def test_plan_checks_n_trials_timeout_poll_and_max_failures(sweep_args):
    with pytest.raises(ConfigError, match="sweep.n_trials"):
        plan_sweep([*sweep_args, "sweep.n_trials=0"], validate=False)
    with pytest.raises(ConfigError, match="sweep.timeout"):
        plan_sweep([*sweep_args, "sweep.timeout=-5"], validate=False)
    with pytest.raises(ConfigError, match="sweep.poll"):
        plan_sweep([*sweep_args, "sweep.poll=0"], validate=False)
    with pytest.raises(ConfigError, match="sweep.max_failures: 0 must be a whole number >= 1"):
        plan_sweep([*sweep_args, "sweep.max_failures=0"], validate=False)
    assert plan_sweep([*sweep_args, "sweep.n_trials=7"], validate=False).max_failures == 7  # null: n_trials


def test_storage_file_lands_under_results_dir(sweep_args, tmp_path):
    open_study(plan_sweep(sweep_args, validate=False), create=True)
    assert Path(tmp_path / "studies.db").is_file()


@pytest.mark.parametrize(
    ("trainer", "fragment"),
    [
        ("no_such_package.trainer", "No module named 'no_such_package'"),
        ("sweeper.no_such_trainer", "No module named 'sweeper.no_such_trainer'"),
        ("sweeper.schedules.slices", "has no train or available_metrics"),
    ],
)
def test_trainer_that_cannot_serve_is_a_config_error(sweep_args, trainer, fragment):
    with pytest.raises(ConfigError, match=f"sweep.trainer: .*{fragment}"):
        plan_sweep([*sweep_args, f"sweep.trainer={trainer}"])


def test_a_new_name_in_an_existing_study_file_is_found_absent_without_optuna_and_without_a_write(sweep_args, tmp_path, monkeypatch):
    import sweeper.sweep.study as study_module

    other = open_study(plan_sweep([*sweep_args, "sweep.name=other"], validate=False), create=True)
    plan = plan_sweep([*sweep_args, "sweep.name=new"], validate=False)
    file = plan.storage.path
    before = (file.read_bytes(), file.stat().st_mtime_ns)

    def no_optuna(*args, **kwargs):
        raise AssertionError("Optuna's storage opened for a name the file does not hold")

    with monkeypatch.context() as patched:
        patched.setattr(study_module.optuna, "load_study", no_optuna)
        assert study_module.existing_study(plan) is None
    assert (file.read_bytes(), file.stat().st_mtime_ns) == before
    # a name the file holds: the study, read by Optuna
    found = study_module.existing_study(plan_sweep([*sweep_args, "sweep.name=other"], validate=False))
    assert found is not None and found._study_id == other._study_id


def test_a_study_file_without_optunas_tables_is_left_to_optuna_to_read(tmp_path):
    import sqlite3

    from sweeper.sweep.study import _named_in_sqlite

    file = tmp_path / "studies.db"
    with sqlite3.connect(file) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    assert _named_in_sqlite(file, "anything") is None
    file.write_bytes(b"not a database at all")
    assert _named_in_sqlite(file, "anything") is None


def test_a_study_file_of_another_optuna_schema_is_refused_as_optuna_refuses_it(tmp_path):
    import sqlite3

    spec = StorageSpec(f"sqlite:///{tmp_path / 'studies.db'}")
    spec.open().engine.dispose()
    with sqlite3.connect(spec.path) as db:  # as a study written by an older Optuna (v3.0.0's schema)
        db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    with pytest.raises(ConfigError) as caught:
        spec.open()
    assert "storage.url: cannot open sqlite:///" in str(caught.value)
    assert "optuna storage upgrade" in str(caught.value)  # Optuna's own answer: upgrade the storage


def test_opening_studies_reads_optunas_migration_scripts_once_a_process(tmp_path, monkeypatch):
    from alembic.script import ScriptDirectory

    from sweeper.sweep import storage as storage_module

    specs = [StorageSpec(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b")]
    for spec in specs:  # made (a new file's schema is stamped from the scripts by Optuna)
        spec.open().engine.dispose()
    monkeypatch.setattr(storage_module, "_schema_head", None)  # as a process that opened none yet
    reads = []
    original = ScriptDirectory.from_config.__func__
    monkeypatch.setattr(ScriptDirectory, "from_config", classmethod(lambda cls, *a, **k: reads.append(1) or original(cls, *a, **k)))
    for spec in [*specs, specs[0]]:
        opened = spec.open()
        optuna.create_study(storage=opened, study_name="s", load_if_exists=True)
        opened.engine.dispose()
    assert len(reads) == 1  # Optuna's own check reads them at every open: 3


def test_the_storage_warm_up_finds_the_schema_head_without_reading_the_scripts_again(monkeypatch):
    from alembic.script import ScriptDirectory

    from sweeper.sweep import storage as storage_module

    monkeypatch.setattr(storage_module, "_schema_head", None)  # as a process that opened none yet
    reads = []
    original = ScriptDirectory.from_config.__func__
    monkeypatch.setattr(ScriptDirectory, "from_config", classmethod(lambda cls, *a, **k: reads.append(1) or original(cls, *a, **k)))
    storage_module.load_rdb_storage()
    assert len(reads) == 2  # Optuna's own, as it makes the in-memory database: its head, then its stamp
    made = optuna.storages.RDBStorage("sqlite:///:memory:", skip_compatibility_check=True)
    assert storage_module._schema_head == made.get_head_version()  # what the scripts say
