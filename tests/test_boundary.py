"""Everything recorded is read through one boundary (sweeper.boundary): a tampered record, passed
to each command that reads it, runs nothing, writes nothing, and puts nothing of this machine's
environment or raw terminal codes before the user.

The records here are real: an Optuna study in SQLite (as a shared database holds one) whose
attributes a recorder of ill will wrote, and a results folder's config.yaml. Each case is one
class of tampering; each reader (confirm, ablation, report, rerun) is run on it in-process, as
`sweeper` runs it, in an empty working directory with the module `plant` on the path, which
writes the canary file when it is imported.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from pathlib import Path

import optuna
import pytest
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


# case -> (the study's attributes, its one complete trial's attributes, what the refusal says)
STUDY_CASES = {
    # a study's recorded overrides resolve no resolver: the user's environment stays out of the records
    "oc-env-in-an-override": (
        study_record(),
        trial_record([*BASE, "model.name=${oc.env:BOUNDARY_SECRET}"]),
        "calls the resolver oc.env",
    ),
    "oc-env-in-the-study-s-base": (
        study_record(overrides=[*BASE, "+x=${oc.env:BOUNDARY_SECRET}"]),
        trial_record([*BASE, "+x=${oc.env:BOUNDARY_SECRET}"], strategy=None, shape=None),
        "calls the resolver oc.env",
    ),
    # a trial without its strategy or shape: its name is read, never imported
    "shape-named-by-the-record": (
        study_record(overrides=[*BASE, "shape._target_=plant.Shape"]),
        trial_record([*BASE, "shape._target_=plant.Shape"], strategy=None, shape=None),
        "shape._target_=plant.Shape",
    ),
    # a record's value reaches the trainer only as checked: no interpolation left to resolve later
    "hydra-search-path": (
        study_record(),
        trial_record([*BASE, "hydra.searchpath=[pkg://plant]"]),
        "sets Hydra itself",
    ),
    "terminal-codes-in-a-name": (
        study_record(),
        trial_record([*BASE, f"model.net._target_=plant.{ESCAPE}"]),
        "model.net._target_=plant.\\x1b[2K\\x1b[1Aall fine",
    ),
    "look-alike-module": (
        study_record(),
        trial_record([*BASE, "model.net._target_='\u0455weeper.zoo.models.MLP'"]),  # a Cyrillic s
        "model.net._target_=\\u0455weeper.zoo.models.MLP",
    ),
    "trainer-not-json": (
        study_record(definition={"trainer": "{not json"}),
        trial_record(BASE),
        "the study's recorded trainer",
    ),
    "trainer-of-the-record-s-choosing": (
        study_record(definition={"trainer": json.dumps("plant")}),
        trial_record(BASE),
        "sweep.trainer=plant",
    ),
}
READERS = {
    "confirm": ["confirm", SWEEP, "--seeds", "2"],
    "ablation": ["confirm", SWEEP, "--ablate", "shape", "--seeds", "2"],
}


@pytest.fixture
def planted(workdir, monkeypatch):
    (workdir / "code").mkdir()
    (workdir / "code" / "plant.py").write_text(PLANT)
    monkeypatch.syspath_prepend(str(workdir / "code"))
    monkeypatch.setenv("BOUNDARY_SECRET", SECRET)
    yield workdir
    sys.modules.pop("plant", None)


def write_study(folder: Path, study_attrs: dict, trial_attrs: dict) -> str:
    storage = f"sqlite:///{folder}/studies.db"
    study = optuna.create_study(study_name=SWEEP, storage=storage, direction="maximize")
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


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_a_tampered_study_is_refused_by_every_reader_and_nothing_runs(case, reader, planted, capsys):
    study_attrs, trial_attrs, said = STUDY_CASES[case]
    storage = write_study(planted, study_attrs, trial_attrs)
    before = made_under(planted)
    code = main([*READERS[reader], f"storage.url={storage}", "tracking=none", "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper confirm: error: "), err  # one line, no traceback
    assert said in lines[0], lines[0]
    assert "\x1b" not in out + err and SECRET not in out + err  # no raw terminal code, no environment
    assert "--allow-module \u0455" not in err and "--allow-module  " not in err  # no look-alike to type
    assert not (planted / CANARY).exists()  # nothing imported
    assert made_under(planted) == before  # nothing written


@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_a_report_of_a_tampered_study_imports_nothing_and_quotes_it_escaped(case, planted, capsys):
    study_attrs, trial_attrs, _ = STUDY_CASES[case]
    storage = write_study(planted, study_attrs, trial_attrs)
    code = main(["report", SWEEP, f"storage.url={storage}", "tracking=none", "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == 0, out + err  # a report only reads: what it cannot read it says so and goes on
    assert not (planted / CANARY).exists()
    # report.md is read on screen (a CSV file is data: it keeps the record's text as it is)
    written = "".join(p.read_text(errors="replace") for p in (planted / "results").rglob("*.md"))
    for text in (out, err, written):
        assert "\x1b" not in text and SECRET not in text


# What a study records about the sweep itself: where its runs are (which decides where a reader
# writes), its objectives' and compared arms' names (printed, written into reports).
ELSEWHERE = {"experiment": SWEEP, "experiment_id": "1", "parent_run_id": ""}
SWEEP_CASES = {
    "tracking-server-of-the-record-s-choosing": study_record(tracking={"uri": "http://127.0.0.1:9/", **ELSEWHERE}),
    "tracking-store-where-none-is": study_record(tracking={"uri": "sqlite:///elsewhere/mlflow.db", **ELSEWHERE}),
    "tracking-not-a-location": study_record(tracking=["sqlite:///x.db"]),
    "names-with-terminal-codes": study_record(objectives=[ESCAPE], compare={"param": "strategy", "arms": [ESCAPE, "fastai"]}),
    "compared-setting-that-is-no-column": study_record(compare={"param": "__class__", "arms": ["fastai"]}),
}
# every command that reads a study: the user asks for nothing to be written but the report (and
# its folder under results/); resume is the sweep's own check of an existing study (--dry-run)
ALL_READERS = {
    **READERS,
    "report": ["report", SWEEP],
    "verdict": ["verdict", SWEEP, "--seeds", "2"],
    "ui": ["ui", SWEEP, "--port", "9"],
    "resume": ["sweep", "--dry-run", f"sweep.name={SWEEP}", "sweep.n_trials=2", "sweep.trainer=sweeper.training.engine"],
}
ALL_CASES = {
    **{case: (attrs, trial) for case, (attrs, trial, _) in STUDY_CASES.items()},
    **{c: (a, trial_record(BASE)) for c, a in SWEEP_CASES.items()},
}
WRITES = {"report": "results/sweeps", "verdict": "results/sweeps"}  # what the user asked for


@pytest.mark.parametrize("reader", sorted(ALL_READERS))
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_every_reader_of_a_tampered_study_runs_nothing_writes_nothing_and_shows_nothing_raw(case, reader, planted, capsys):
    study_attrs, trial_attrs = ALL_CASES[case]
    storage = write_study(planted, study_attrs, trial_attrs)
    before = made_under(planted)
    if reader in READERS and case in SWEEP_CASES and "tracking" not in case:
        pytest.skip("a sweep-level name alone refuses nothing: confirm would train (covered by report, verdict, ui, resume)")
    code = main([*ALL_READERS[reader], f"storage.url={storage}", "tracking=none", "results_dir=results"])
    out, err = capsys.readouterr()
    written = "".join(p.read_text(errors="replace") for p in (planted / "results").rglob("*.md"))
    assert code in (0, 2), out + err  # done, or refused in one line: never a crash
    assert "Traceback" not in err and (code == 0 or len(err.splitlines()) == 1), err
    for text in (out, err, written):
        assert "\x1b" not in text and SECRET not in text  # no raw terminal code, nothing of the environment
    assert not (planted / CANARY).exists()  # nothing imported
    new = [p for p in made_under(planted) if p not in before and not p.startswith(WRITES.get(reader, "\0"))]
    assert not [p for p in new if p not in ("results", "results/sweeps")], new  # nothing written but what was asked
    if "tracking" in case and reader != "resume":  # resume refuses a study of another definition first
        assert code == 2 and ("not your tracking store" in err or "not a location" in err), err


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


def alias_bomb(levels: int = 9) -> str:
    """1.5 KB of nested YAML aliases that expand to 10**levels values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: {{name: *a{levels - 1}}}\n"


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


# --- export: a sweep's kept weights, read from MLflow records ----------------------------------


def tampered_run(folder: Path, name: str, tags: dict, weights) -> str:
    """A trial run of sweep SWEEP in a real MLflow store under `folder`, its model.pt `weights`."""
    import torch
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
    experiment = client.create_experiment(SWEEP, artifact_location=str(folder / "results" / "mlartifacts"))
    run = client.create_run(experiment, run_name=name, tags={"sweeper.kind": "trial", "sweep": SWEEP, **tags})
    client.log_metric(run.info.run_id, "objective", 0.9)
    artifact = folder / "upload" / "model.pt"
    artifact.parent.mkdir()
    torch.save(weights, artifact)
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _export_cases():
    import torch
    from helpers.payloads import RunsCodeWhenLoaded

    return {
        # case -> (run name, tags, weights, exit code, what is said)
        "weights-that-run-code-when-loaded": ("t", {"saved_model": "model.pt"}, {"w": RunsCodeWhenLoaded(CANARY)}, 2, "not a state dict"),
        "weights-named-elsewhere": ("t", {"saved_model": "../../../x"}, {"w": torch.zeros(2)}, 2, "nothing was written"),
        "run-name-with-terminal-codes": (ESCAPE, {"saved_model": "model.pt"}, {"w": torch.zeros(2)}, 0, "\\x1b[2K"),
    }


@pytest.mark.parametrize("case", ["weights-that-run-code-when-loaded", "weights-named-elsewhere", "run-name-with-terminal-codes"])
def test_export_of_a_tampered_run_runs_nothing_and_shows_nothing_raw(case, planted, capsys):
    name, tags, weights, expected, said = _export_cases()[case]
    run_id = tampered_run(planted, name, tags, weights)
    code = main(["export", run_id, "out.pt", "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == expected and said in out + err, out + err
    assert "\x1b" not in out + err and "Traceback" not in err
    assert not (planted / CANARY).exists()  # nothing ran when the weights were read
    assert (planted / "out.pt").exists() is (expected == 0)  # written only when it holds plain weights


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
