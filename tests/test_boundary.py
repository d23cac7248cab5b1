"""Everything recorded is read through one boundary (sweeper.boundary): a tampered record, passed
to each command that reads it, runs nothing, writes nothing, and puts nothing of this machine's
environment or raw terminal codes before the user.

The records here are real: an Optuna study in SQLite (as a shared database holds one) whose
attributes a recorder of ill will wrote, a real MLflow store whose trial runs hold a tampered
config.yaml, name and weights, and a results folder's config.yaml. Each case (CASES) is one class
of tampering in every form a reader reads; each reader (READERS: rerun, confirm, ablation, report,
verdict, ui up to its server, export, resume) is run on it in-process, as `sweeper` runs it, in an
empty working directory with the module `plant` on the path, which writes the canary file when
it is imported. Checkpoints, a full disk, passwords in argv and a worker's SIGSEGV have files of
their own (test_checkpoints, test_full_disk, test_secrets and test_processes).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers.payloads import RunsCodeWhenLoaded
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper.analysis.verdict import give_verdict
from sweeper.boundary.checked_study import UNREADABLE_ATTR, checked_study
from sweeper.boundary.printed import printable, printable_name
from sweeper.boundary.recorded_config import Allowed, read_recorded
from sweeper.boundary.recorded_study import trial_config
from sweeper.cli import main
from sweeper.config import ConfigError, compose_config
from sweeper.records.run_record import shape_name_of
from sweeper.trial.events import EpochEvent, TrialResult

CANARY = "canary"
SECRET = "B0undary-s3cret-Qz"  # an environment variable's value: it must reach no record and no terminal
PLANT = f"from pathlib import Path\nPath({CANARY!r}).write_text('imported')\nclass Shape:\n    name = 'plant'\n"
ESCAPE = "\x1b[2K\x1b[1Aall fine"  # erases the refusal's line and writes over the one above
SWEEP = "tampered"
BASE = ["train.device=cpu", "train.epochs=1", "tracking=none"]


def study_record(**changes) -> dict:
    """A study's attributes as a sweep records them, with `changes` (None removes one)."""
    attrs = {
        "overrides": BASE,
        "config_dirs": [],
        "objectives": ["accuracy"],
        "definition": {"trainer": json.dumps("sweeper.training.engine")},
    }
    attrs.update(changes)
    return {k: v for k, v in attrs.items() if v is not None}


def trial_record(overrides: list[str], strategy: str | None = "fastai", shape: str | None = "fastai_one_cycle") -> dict:
    attrs = {"overrides": overrides, "status": "finished", "strategy": strategy, "shape": shape}
    return {k: v for k, v in attrs.items() if v is not None}


def alias_bomb(levels: int = 9) -> str:
    """1.5 KB of nested YAML aliases that expand to 10**levels values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: {{name: *a{levels - 1}}}\n"


@dataclass(frozen=True)
class Case:
    """One tampered record in each form a reader reads: a study's attributes and its best trial's;
    the trial's MLflow run (its config.yaml, its name, its weights: None where this case leaves
    the run honest); what confirm's refusal says (None: confirm would train, and is not asked)."""

    study: dict
    trial: dict
    said: str | None
    config: str | None = None
    run_name: str = "trial-0"
    weights: Callable[[], Any] | None = None


ESCAPED_NAME = f"plant.{ESCAPE}"
CASES = {
    # checked one thing, built another: a value that would be interpolated again after the check
    "interpolated-after-the-check": Case(
        study_record(),
        trial_record([*BASE, "model.name=\\${oc.env:BOUNDARY_SECRET}"]),
        "interpolated again",
        config="model:\n  name: \\${oc.env:BOUNDARY_SECRET}\n",
    ),
    # a recorded override resolves no resolver: the user's environment stays out of the records
    "oc-env-in-an-override": Case(
        study_record(),
        trial_record([*BASE, "model.name=${oc.env:BOUNDARY_SECRET}"]),
        "calls the resolver oc.env",
        config="model:\n  name: ${oc.env:BOUNDARY_SECRET}\n",
    ),
    "oc-env-in-the-study-s-base": Case(
        study_record(overrides=[*BASE, "+x=${oc.env:BOUNDARY_SECRET}"]),
        trial_record([*BASE, "+x=${oc.env:BOUNDARY_SECRET}"], strategy=None, shape=None),
        "calls the resolver oc.env",
    ),
    # a name the record chose: read, never imported (a trial without its strategy or shape; a
    # pickled global in its weights)
    "imported-recorded-name": Case(
        study_record(overrides=[*BASE, "shape._target_=plant.Shape"]),
        trial_record([*BASE, "shape._target_=plant.Shape"], strategy=None, shape=None),
        "shape._target_=plant.Shape",
        config="shape:\n  _target_: plant.Shape\n",
        weights=lambda: {"w": RunsCodeWhenLoaded(CANARY)},
    ),
    "trainer-of-the-record-s-choosing": Case(
        study_record(definition={"trainer": json.dumps("plant")}),
        trial_record(BASE),
        "sweep.trainer=plant",
        config="sweep:\n  trainer: plant\n",
    ),
    "hydra-search-path": Case(study_record(), trial_record([*BASE, "hydra.searchpath=[pkg://plant]"]), "sets Hydra itself"),
    # resource bombs: nested aliases, more overrides than a sweep records
    "resource-bomb": Case(
        study_record(),
        trial_record([*BASE, *["train.epochs=1"] * 2_000]),
        "more than a sweep records",
        config=alias_bomb(),
    ),
    # what is printed: terminal codes, a look-alike module, never advice to type it
    "terminal-codes-in-a-name": Case(
        study_record(),
        trial_record([*BASE, f"model.net._target_={ESCAPED_NAME}"]),
        "model.net._target_=plant.\\x1b[2K\\x1b[1Aall fine",
        config=f"model:\n  net:\n    _target_: {json.dumps(ESCAPED_NAME)}\n",
        run_name=ESCAPE,
    ),
    "look-alike-module": Case(
        study_record(),
        trial_record([*BASE, "model.net._target_='\u0455weeper.zoo.models.MLP'"]),  # a Cyrillic s
        "model.net._target_=\\u0455weeper.zoo.models.MLP",
        config="model:\n  net:\n    _target_: \u0455weeper.zoo.models.MLP\n",
    ),
    # a shape's function that is not one (a model's class): refused before anything is built
    "non-function-shape-fn": Case(
        study_record(),
        trial_record([*BASE, "shape=function", "shape.fn=sweeper.zoo.models.MLP"]),
        "shape.fn=sweeper.zoo.models.MLP",
        config="shape:\n  _target_: sweeper.schedules.shapes.FunctionShape\n  fn: sweeper.zoo.models.MLP\n",
    ),
    "trainer-not-json": Case(
        study_record(definition={"trainer": "{not json"}),
        trial_record(BASE),
        "the study's recorded trainer",
        config="sweep:\n  trainer: {not: json}\n",
    ),
    # what a study records about the sweep itself: where its runs are (which decides where a
    # reader writes), its objectives' and compared arms' names (printed, written into reports)
    "tracking-server-of-the-record-s-choosing": Case(
        study_record(tracking={"uri": "http://127.0.0.1:9/", "experiment": SWEEP, "experiment_id": "1", "parent_run_id": ""}),
        trial_record(BASE),
        "not your tracking store",
    ),
    "tracking-store-where-none-is": Case(
        study_record(tracking={"uri": "sqlite:///elsewhere/mlflow.db", "experiment": SWEEP, "experiment_id": "1", "parent_run_id": ""}),
        trial_record(BASE),
        "not your tracking store",
    ),
    "tracking-not-a-location": Case(study_record(tracking=["sqlite:///x.db"]), trial_record(BASE), "not a location"),
    "names-with-terminal-codes": Case(
        study_record(objectives=[ESCAPE], compare={"param": "strategy", "arms": [ESCAPE, "fastai"]}), trial_record(BASE), None
    ),
    "compared-setting-that-is-no-column": Case(study_record(compare={"param": "__class__", "arms": ["fastai"]}), trial_record(BASE), None),
    "resume-definition-not-json-text": Case(study_record(definition={"trainer": 5}), trial_record(BASE), "the study's recorded trainer"),
}


@dataclass(frozen=True)
class Store:
    """A real MLflow store with each case's trial run (experiment: the case's name)."""

    uri: str
    run_ids: dict[str, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_mlflow_store) -> Store:
    import torch
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    shutil.copyfile(empty_mlflow_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    run_ids = {}
    for name, case in CASES.items():
        experiment = client.create_experiment(name, artifact_location=str(folder / "mlartifacts" / name))
        run = client.create_run(
            experiment, run_name=case.run_name, tags={"sweeper.kind": "trial", "sweep": name, "saved_model": "model.pt"}
        )
        client.log_metric(run.info.run_id, "objective", 0.9)
        upload = folder / "upload" / name
        upload.mkdir(parents=True)
        (upload / "config.yaml").write_text(case.config or "model:\n  name: honest\n")
        torch.save(case.weights() if case.weights else {"w": torch.zeros(2)}, upload / "model.pt")
        for artifact in ("config.yaml", "model.pt"):
            client.log_artifact(run.info.run_id, str(upload / artifact))
        client.set_terminated(run.info.run_id)
        run_ids[name] = run.info.run_id
    return Store(uri, run_ids)


class NoServer:
    """`sweeper ui` up to the point where it would start the MLflow server: every record it reads
    is read by then."""

    def __init__(self, backend_uri: str, port: int, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> NoServer:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def wait(self) -> None:
        pass


@pytest.fixture
def planted(workdir, monkeypatch):
    (workdir / "code").mkdir()
    (workdir / "code" / "plant.py").write_text(PLANT)
    monkeypatch.syspath_prepend(str(workdir / "code"))
    monkeypatch.setenv("BOUNDARY_SECRET", SECRET)
    monkeypatch.setattr("sweeper.commands.ui.MlflowUiServer", NoServer)
    yield workdir
    sys.modules.pop("plant", None)


@functools.cache
def empty_study_file() -> bytes:
    """A study storage with Optuna's tables and no study, made once: each case's study file starts
    as a copy (making the tables is ~65 ms a case)."""
    with tempfile.TemporaryDirectory() as folder:
        optuna.storages.RDBStorage(f"sqlite:///{folder}/studies.db").engine.dispose()
        return (Path(folder) / "studies.db").read_bytes()


def write_study(folder: Path, study_attrs: dict, trial_attrs: dict, name: str = SWEEP) -> str:
    (folder / "studies.db").write_bytes(empty_study_file())
    storage = f"sqlite:///{folder}/studies.db"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in study_attrs.items():
        study.set_user_attr(key, value)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=trial_attrs))
    # a worse trial of another strategy and shape, as recorded: something for the ablation to compare
    honest = trial_record([*BASE, "lr=geometric", "shape=warmup_cosine"], strategy="geometric", shape="warmup_cosine")
    study.add_trial(optuna.trial.create_trial(value=0.4, user_attrs=honest))
    return storage


def made_under(folder: Path) -> list[str]:
    """What is in `folder`, but the lock file beside the study that opening it makes."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".claim.lock"))


STUDY = ["storage.url=sqlite:///studies.db", "results_dir=results"]
# Every command that reads a record, as the user types it: (case name, the store) -> argv. The
# study's readers run with tracking off but ui, which needs the store (its server is not started).
READERS: dict[str, Callable[[str, Store], list[str]]] = {
    "confirm": lambda c, s: ["confirm", c, "--seeds", "2", *STUDY, "tracking=none"],
    "ablation": lambda c, s: ["confirm", c, "--ablate", "shape", "--seeds", "2", *STUDY, "tracking=none"],
    "report": lambda c, s: ["report", c, *STUDY, "tracking=none"],
    "verdict": lambda c, s: ["verdict", c, "--seeds", "2", *STUDY, "tracking=none"],
    "ui": lambda c, s: ["ui", c, "--port", "9", *STUDY, f"tracking.uri={s.uri}"],
    # resume: a sweep of the same definition as the study's (--dry-run: it would go on)
    "resume": lambda c, s: ["sweep", "--dry-run", f"sweep.name={c}", *RESUME_ARGS, *STUDY, "tracking=none"],
    # the trial's MLflow run: rerun builds its config.yaml, export writes its weights
    "rerun": lambda c, s: ["rerun", s.run_ids[c], f"tracking.uri={s.uri}", "results_dir=results"],
    "export": lambda c, s: ["export", s.run_ids[c], "out.pt", f"tracking.uri={s.uri}", "results_dir=results"],
}
RESUME_ARGS = ["sweep.n_trials=2", "sweep.trainer=sweeper.training.engine"]
WRITES = {"report": "results/sweeps", "verdict": "results/sweeps", "ui": "results/sweeps", "export": "out.pt"}  # what the user asked for


@functools.cache
def resumed_definition() -> dict:
    """The definition the resume reader's sweep has: a study recorded with it is resumed, so its
    tampered content is read, not refused as another sweep's."""
    from sweeper.sweep.plan import plan_sweep

    return plan_sweep([*RESUME_ARGS, "tracking=none"], validate=False).definition


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_reader_of_a_tampered_record_runs_nothing_writes_nothing_and_shows_nothing_raw(case, reader, store, planted, capsys):
    """Each class of tampering (CASES) through each command that reads a record: done, or refused
    in one line; nothing imported, nothing of the environment shown, no raw terminal code, no
    look-alike name as advice to type, nothing written but what the user asked for."""
    tampered = CASES[case]
    if reader in ("rerun", "export") and tampered.config is None and tampered.run_name == "trial-0" and tampered.weights is None:
        pytest.skip("the case leaves the trial's run honest: rerun would train it, export has nothing tampered to read")
    if reader == "resume" and tampered.study == study_record():
        pytest.skip("a resume reads no trial's overrides: what this case tampers with (RESUME_CASES tamper with what it reads)")
    if reader in ("confirm", "ablation") and tampered.said is None:
        pytest.skip("a sweep-level name alone refuses nothing: confirm would train (covered by report, verdict, ui, resume)")
    # the study's definition is the resume reader's, but what the case changes in it
    study_attrs = {**tampered.study, "definition": {**resumed_definition(), **tampered.study.get("definition", {})}}
    write_study(planted, study_attrs, tampered.trial, name=case)
    before = made_under(planted)
    code = main(READERS[reader](case, store))
    out, err = capsys.readouterr()
    written = "".join(p.read_text(errors="replace") for p in (planted / "results").rglob("*.md"))
    assert code in (0, 2), out + err  # done, or refused in one line: never a crash
    assert "Traceback" not in err and (code == 0 or len(err.splitlines()) == 1), err
    for text in (out, err, written):
        assert "\x1b" not in text and SECRET not in text  # no raw terminal code, nothing of the environment
    assert "--allow-module \u0455" not in err and "--allow-module  " not in err  # no look-alike to type
    assert not (planted / CANARY).exists()  # nothing imported
    new = [p for p in made_under(planted) if p not in before and not p.startswith(WRITES.get(reader, "\0"))]
    assert not [p for p in new if p not in ("results", "results/sweeps")], new  # nothing written but what was asked
    if reader in ("confirm", "ablation", "rerun"):
        assert code == 2, out + err
    if reader in ("confirm", "ablation"):
        assert tampered.said in err, err
    if "tracking" in case and reader in ("confirm", "ablation", "report", "verdict", "ui"):
        assert code == 2 and tampered.said in err, err


def test_what_confirm_builds_is_what_was_checked(planted):
    """The config handed to the trainer holds no interpolation: nothing resolves after the check
    (an interpolation that read the environment the trainer changes would build unchecked code)."""
    config = trial_config([*BASE, "model.name=${data.name}-x"], [], Allowed())
    text = OmegaConf.to_yaml(config)
    assert "${" not in text and config.model.name == f"{config.data.name}-x"


def test_a_record_cannot_interpolate_the_user_s_own_settings(planted):
    with pytest.raises(ConfigError, match="cannot be resolved"):
        trial_config([*BASE, "model.name=${tracking.uri}"], [], Allowed())


def test_the_user_s_own_storage_and_tracking_replace_the_record_s(planted):
    own = compose_config(["tracking=none", "results_dir=mine"])
    from sweeper.boundary.recorded_config import allowed_code

    config = trial_config([*BASE, "results_dir=theirs", "storage.url=sqlite:///theirs.db"], [], allowed_code(own))
    assert config.results_dir == "mine" and config.storage.url == "sqlite:///mine/studies.db"


def test_a_shape_s_name_is_read_without_importing_a_recorded_one(planted):
    assert shape_name_of({"shape": {"_target_": "plant.Shape"}}) == "Shape"
    assert not (planted / CANARY).exists()


# --- a recorded config's size ------------------------------------------------------------------


LIMIT_CASES = {
    "alias-bomb": (alias_bomb(), "anchor or alias"),
    "deep": ("a: " + "[" * 100 + "]" * 100 + "\n", "levels deep"),
    "long-string": ("a: " + "x" * 200_000 + "\n", "characters (at most"),
    "huge": ("a: [" + ", ".join(["1"] * 400_000) + "]\n", "more than a recorded config holds"),
}


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_a_recorded_config_past_the_limits_is_refused_before_it_is_parsed_whole(case):
    text, said = LIMIT_CASES[case]
    with pytest.raises(ConfigError, match=re.escape(said)):
        read_recorded(text, "config.yaml")


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_a_rerun_of_a_config_past_the_limits_says_so_in_one_line(case, workdir, capsys):
    text, said = LIMIT_CASES[case]
    folder = workdir / "results" / "train" / "source"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(text)
    started = time.process_time()
    code = main(["rerun", "--dry-run", "results/train/source", "tracking=none"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and said in err, err
    assert time.process_time() - started < 60  # not a timing test: the bound is 100x what it takes


# --- printing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("a\x1b[2Kb", "a\\x1b[2Kb"),
        ("line\nforged", "line\\x0aforged"),
        ("right\u202etfel", "right\\u202etfel"),  # a bidi override reverses what follows
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("accents é ok", "accents é ok"),  # readable text stays readable
    ],
)
def test_recorded_text_is_printed_with_its_control_characters_escaped(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("sweeper.zoo.models.MLP", "sweeper.zoo.models.MLP"),
        ("\u0455weeper.x", "\\u0455weeper.x"),
        (" sweeper.x", "\\x20sweeper.x"),
        (7, "7 (not a dotted name)"),
    ],
)
def test_a_recorded_name_is_printed_as_what_it_is(name, shown):
    assert printable_name(name) == shown


# --- the study the readers hold: a copy built from checked values ------------------------------


def write_tampered_values(folder: Path) -> str:
    """A study as a sweep writes one (an lr drawn from its range, a strategy from its choices),
    whose stored rows were then changed under Optuna, as anyone with access to a shared database
    can: trial 0 is left honest; each other trial holds one thing that does not check."""
    storage = write_study(folder, study_record(objectives=5, compare="strategy"), trial_record(BASE))
    study = optuna.load_study(study_name=SWEEP, storage=storage)
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    strategy = optuna.distributions.CategoricalDistribution(["fastai", "geometric"])
    for number in range(5):
        attrs = {**trial_record(BASE), "reason": f"honest{ESCAPE}"}
        trial = optuna.trial.create_trial(
            value=0.5 + number / 100,
            params={"lr": 1e-3, "strategy": "fastai"},
            distributions={"lr": lr, "strategy": strategy},
            user_attrs=attrs,
        )
        study.add_trial(trial)
    first = study.trials[2]._trial_id  # the first of the five
    with sqlite3.connect(folder / "studies.db") as db:
        db.execute("UPDATE trial_params SET param_value = 5.0 WHERE param_name = 'lr' AND trial_id = ?", (first + 1,))
        bad = '{"name": "CategoricalDistribution", "attributes": {"choices": [[1, 2], [3]]}}'
        db.execute("UPDATE trial_params SET distribution_json = ? WHERE param_name = 'strategy' AND trial_id = ?", (bad, first + 2))
        db.execute("UPDATE trial_values SET value = NULL, value_type = 'INF_POS' WHERE trial_id = ?", (first + 3,))
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'overrides' AND trial_id = ?", ('{"a": NaN}', first + 4))
        db.execute("UPDATE trial_user_attributes SET value_json = '[1, 2]' WHERE key = 'status' AND trial_id = ?", (first + 4,))
        db.execute("UPDATE trial_user_attributes SET value_json = '[3]' WHERE key = 'overrides' AND trial_id = ?", (first + 1,))
        db.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, 'notes', ?)", (first + 4, json.dumps("x" * 200_000))
        )
    return storage


def test_the_study_a_reader_holds_keeps_only_what_checks(planted):
    raw = optuna.load_study(study_name=SWEEP, storage=write_tampered_values(planted))
    study = checked_study(raw)
    assert checked_study(study) is study  # read once: a checked study is not checked again
    assert study.user_attrs["objectives"] == ["value"] and "compare" not in study.user_attrs  # wrong types: read as absent
    honest, lr_outside, choices_not_plain, infinite, attrs_not_plain = study.trials[2:]
    assert [t.number for t in study.trials] == [t.number for t in raw.trials]  # each trial under its own number
    assert honest.params == {"lr": 1e-3, "strategy": "fastai"} and honest.values == [0.5]
    assert honest.user_attrs["reason"] == f"honest{ESCAPE}"  # kept as recorded: printed escaped wherever it is printed
    assert lr_outside.params == {"strategy": "fastai"} and "param 'lr'" in lr_outside.user_attrs[UNREADABLE_ATTR]
    assert choices_not_plain.params == {"lr": 1e-3} and "param 'strategy'" in choices_not_plain.user_attrs[UNREADABLE_ATTR]
    assert infinite.state == TrialState.FAIL and "not finite numbers" in infinite.user_attrs["reason"]
    assert not {"overrides", "notes", "status"} & set(attrs_not_plain.user_attrs)  # not JSON, too long, not a word
    assert "overrides" not in lr_outside.user_attrs and "overrides" in honest.user_attrs  # [3]: no overrides to join
    assert not any(t.system_attrs for t in study.trials)


def test_report_and_verdict_read_a_tampered_study_without_a_crash(planted, capsys):
    storage = write_tampered_values(planted)
    code = main(["report", SWEEP, f"storage.url={storage}", "tracking=none", "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    written = "".join(p.read_text(errors="replace") for p in (planted / "results").rglob("*.md"))
    assert "\x1b" not in out + err + written
    # the verdict, handed the raw study as a caller might, reads it through the boundary all the same
    raw = optuna.load_study(study_name=SWEEP, storage=storage)
    trained = TrialResult("finished", 0.5, "accuracy", epochs=[EpochEvent(0, 0, 0.5, 0.5, {"accuracy": 0.5}, 0.5)])
    verdict = give_verdict(raw, lambda cfg, reporters: trained, seeds=2, folder=planted / "verdict", say=lambda line: None)
    assert verdict.arms and "\x1b" not in (planted / "verdict" / "verdict.md").read_text()


def test_a_study_optuna_itself_cannot_parse_is_refused_in_one_line(planted, capsys):
    storage = write_study(planted, study_record(), trial_record(BASE))
    with sqlite3.connect(planted / "studies.db") as db:  # a choice index past the choices: Optuna's own reading fails
        db.execute(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (1, 'x', 7, ?)",
            ('{"name": "CategoricalDistribution", "attributes": {"choices": ["a"]}}',),
        )
    code = main(["report", SWEEP, f"storage.url={storage}", "tracking=none", "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == 2 and "its study cannot be read" in err and len(err.splitlines()) == 1, out + err


# --- resume: what a sweep compares itself with before it goes on --------------------------------

# A sweep with lr_find's ranges (search.lr.high=auto), so that a resume reads every attribute it
# compares itself with: its objectives, its definition, lr_find's record.
RESUMED = [
    "sweep.name=resumed", "sweep.trainer=helpers.trainers.StandInTrainer", "search=slices", "search.lr.high=auto",
    "sweep.n_trials=2", "storage.url=sqlite:///studies.db", "tracking=none", "results_dir=results",
]  # fmt: skip
FOUND = {"suggestions": {"valley": 1e-3}, "range": [1e-4, 1e-2], "reason": None}


@pytest.fixture(scope="module")
def resumable(tmp_path_factory) -> tuple[Path, dict]:
    """A study as `sweeper sweep` leaves one (its definition, objectives and lr_find's record), in
    a folder of its own: each case tampers with a copy."""
    from sweeper.sweep.plan import plan_sweep
    from sweeper.sweep.study import open_study

    folder = tmp_path_factory.mktemp("resumable")
    plan = plan_sweep([*RESUMED[:-3], f"storage.url=sqlite:///{folder}/studies.db", *RESUMED[-2:]], validate=False)
    study = open_study(plan, create=True)
    study.set_user_attr("lr_anchor", {"seconds": 1.5, "strategies": dict.fromkeys(plan.space.strategies(), FOUND)})
    return folder / "studies.db", dict(study.user_attrs)


def _definition(attrs: dict, **changes) -> dict:
    return {**attrs["definition"], **changes}


# case -> (the study attribute, its tampered value from the honest attributes, what the refusal says)
RESUME_CASES = {
    "objectives-not-a-list": ("objectives", lambda a: 5, "the study's recorded objectives"),
    "objectives-with-terminal-codes": ("objectives", lambda a: [ESCAPE], "the study's recorded objectives"),
    "definition-not-a-mapping": ("definition", lambda a: 5, "the study's recorded definition"),
    "definition-value-not-json-text": ("definition", lambda a: {"trainer": 5}, "the study's recorded definition"),
    "definition-past-the-limits": ("definition", lambda a: _definition(a, trainer="x" * 200_000), "the study's recorded definition"),
    "definition-nested-past-the-parser": ("definition", lambda a: _definition(a, trainer="[" * 90_000), "another definition"),
    "definition-with-terminal-codes": ("definition", lambda a: _definition(a, trainer=ESCAPE), "trainer: \\x1b[2K"),
    "lr-anchor-seconds-not-a-number": ("lr_anchor", lambda a: {**a["lr_anchor"], "seconds": "soon"}, "the study's recorded lr_anchor"),
    "lr-anchor-seconds-negative": ("lr_anchor", lambda a: {**a["lr_anchor"], "seconds": -1}, "the study's recorded lr_anchor"),
    "lr-anchor-range-reversed": (
        "lr_anchor",
        lambda a: {**a["lr_anchor"], "strategies": {s: {**FOUND, "range": [1e-2, 1e-4]} for s in a["lr_anchor"]["strategies"]}},
        "the study's recorded lr_anchor",
    ),
    "lr-anchor-without-a-strategy": ("lr_anchor", lambda a: {**a["lr_anchor"], "strategies": {}}, "have none for"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_a_resume_reads_what_the_study_recorded_through_the_boundary(case, resumable, workdir, capsys):
    """`sweeper sweep` of an existing study (--dry-run: it would go on) compares itself with what
    the study recorded: a record that is not sweeper's is refused in one line naming the
    attribute, before anything is written, and its text is shown escaped."""
    import shutil

    stored, honest = resumable
    shutil.copy(stored, workdir / "studies.db")
    key, tampered, said = RESUME_CASES[case]
    optuna.load_study(study_name="resumed", storage="sqlite:///studies.db").set_user_attr(key, tampered(honest))
    before = made_under(workdir)
    code = main(["sweep", "--dry-run", *RESUMED])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and said in err, out + err  # one line, no traceback
    assert "\x1b" not in out + err
    assert made_under(workdir) == before


def test_an_honest_resume_reads_the_recorded_ranges(resumable, workdir, capsys):
    import shutil

    shutil.copy(resumable[0], workdir / "studies.db")
    assert main(["sweep", "--dry-run", *RESUMED]) == 0, capsys.readouterr()
    assert "lr ranges: as the sweep recorded them (lr_find took 1.5 s when it began; not run again)" in capsys.readouterr().out
