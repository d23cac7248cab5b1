"""`sweeper rerun` of a recorded config written to run code: every payload is refused through the
real command line (exit 2, one line on stderr, no traceback) and nothing of it runs or is written.

Each payload, built the way a rerun built recorded configs before they were checked (resolved by
OmegaConf, then the trainer's `prepare` and `load_trainer`), creates a canary file in the working
directory: `test_each_payload_runs_when_built_unchecked` proves that, so the canary's absence after
a refused rerun proves the payload did not run. The recorded configs are folders as
`sweeper train` writes them (results/train/<x>/config.yaml), made in tmp_path.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import with_tests_on_path
from omegaconf import OmegaConf

from sweeper.boundary.recorded_config import ALLOWED_CALLABLES, ALLOWED_FUNCTIONS, Allowed, checked_config, find_imports, read_recorded
from sweeper.cli import main
from sweeper.config import compose_config

CANARY = "canary"  # what every payload creates in the working directory when it runs
SOURCE = "results/train/source"

# Importing `plant` (tmp_path/code on sys.path) creates the canary: a name that reaches an
# import of it ran code. Its functions would create it too, if an import were somehow avoided.
PLANT = f"""
from pathlib import Path
Path({CANARY!r}).write_text("imported")
def fn(pos):
    return 1.0
def split(model):
    return [model]
def train(cfg, reporters=()):
    pass
def available_metrics(cfg):
    return ("accuracy",)
"""
# torch.hub.load(source="local") imports the folder's hubconf.py.
HUBCONF = f"from pathlib import Path\nPath({CANARY!r}).write_text('hub')\ndef m():\n    return None\n"
OPEN_CANARY = {"_target_": "builtins.open", "file": CANARY, "mode": "w"}
MLP = {"_target_": "sweeper.zoo.models.MLP", "in_shape": [1, 8, 8], "num_classes": 10}

# The Hydra installed here refuses a few targets itself (os.system, subprocess, eval) when a
# config is built unchecked; not every Hydra does, and sweeper's check does not count on it.
BLOCKED_BY_HYDRA = False
# (id, {dotted setting: new value}, fragments of the one-line refusal, creates the canary when built unchecked)
PAYLOADS: list[tuple[str, dict[str, Any], list[str], bool]] = [
    # code outside the allow-list, by name
    (
        "os-system",
        {"model.net": {"_target_": "os.system", "command": f"touch {CANARY}"}},
        ["model.net._target_=os.system"],
        BLOCKED_BY_HYDRA,
    ),
    (
        "subprocess-run",
        {"data.source": {"_target_": "subprocess.run", "args": ["touch", CANARY]}},
        ["data.source._target_=subprocess.run"],
        BLOCKED_BY_HYDRA,
    ),
    ("builtins-open", {"model.net": OPEN_CANARY}, ["model.net._target_=builtins.open"], True),
    (
        "builtins-eval",
        {"model.net": {"_target_": "builtins.eval", "_args_": [f"open({CANARY!r}, 'w')"]}},
        ["model.net._target_=builtins.eval"],
        BLOCKED_BY_HYDRA,
    ),
    ("eval-without-a-dot", {"model.net": {"_target_": "eval", "_args_": [f"open({CANARY!r}, 'w')"]}}, ["model.net._target_=eval"], False),
    (
        "torch-hub-load",
        {"model.net": {"_target_": "torch.hub.load", "repo_or_dir": "hub", "model": "m", "source": "local"}},
        ["model.net._target_=torch.hub.load"],
        True,
    ),
    ("torch-save", {"data.source": {"_target_": "torch.save", "obj": 1, "f": CANARY}}, ["data.source._target_=torch.save"], True),
    (
        "pathlib-write-text",
        {"model.net": {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [CANARY]}, "data": "x"}},
        ["model.net._target_=pathlib.Path.write_text", "model.net.self._target_=pathlib.Path"],
        True,
    ),
    # inside an allowed package is not allowed: exact callables only
    (
        "through-an-allowed-module",
        {"model.net": {"_target_": "sweeper.zoo.models.os.system", "command": f"touch {CANARY}"}},
        ["model.net._target_=sweeper.zoo.models.os.system"],
        BLOCKED_BY_HYDRA,
    ),
    (
        "sweeper-function-not-a-callable-of-the-list",
        {
            "model.net": {
                "_target_": "sweeper.schedules.plots.plot_schedule",
                "path": CANARY,
                "schedule": {
                    "_target_": "sweeper.schedules.shapes.Schedule",
                    "peaks": [1e-3],
                    "shape": {"_target_": "sweeper.schedules.shapes.Constant"},
                    "total": 2,
                },
            }
        },
        ["model.net._target_=sweeper.schedules.plots.plot_schedule", "model.net.schedule._target_=sweeper.schedules.shapes.Schedule"],
        True,
    ),
    (
        "a-target-that-is-not-a-name",
        {"model.net._target_": ["os", "system"]},
        ["model.net._target_=['os', 'system'] (not a dotted name)"],
        False,
    ),
    # hidden: in a list, in _args_, behind _recursive_, built by _partial_ later
    ("in-a-list", {"model.net": {**MLP, "hidden": [OPEN_CANARY]}}, ["model.net.hidden[0]._target_=builtins.open"], True),
    (
        "in-args",
        {"model.net": {"_target_": "sweeper.zoo.models.MLP", "_args_": [[1, 8, 8], 10, [OPEN_CANARY]]}},
        ["model.net._args_[2][0]._target_=builtins.open"],
        True,
    ),
    (
        "behind-recursive-false",
        {"model.net": {**MLP, "_recursive_": False, "hidden": [OPEN_CANARY]}},
        ["model.net.hidden[0]._target_=builtins.open"],
        False,
    ),
    (
        "partial-called-by-the-trainer",
        {"optimizer": {"_target_": "torch.save", "_partial_": True, "f": CANARY}},
        ["optimizer._target_=torch.save"],
        True,
    ),
    # brought in by interpolation
    (
        "only-through-interpolation",
        {"stash": {"_target_": "torch.save", "obj": 1, "f": CANARY}, "model.net": "${stash}"},
        ["stash._target_=torch.save", "model.net._target_=torch.save"],
        True,
    ),
    (
        "name-built-from-pieces",
        {"a": "os", "b": "system", "model.net": {"_target_": "${a}.${b}", "command": f"touch {CANARY}"}},
        ["model.net._target_=os.system"],
        BLOCKED_BY_HYDRA,
    ),
    # resolvers: none runs on a recorded config
    ("oc-env", {"model.name": "${oc.env:HOME}"}, ["model.name", "oc.env", "never with this machine's environment"], False),
    ("oc-env-in-a-key", {"model.net.hidden": "${model.${oc.env:HOME}}"}, ["model.net.hidden", "oc.env"], False),
    ("oc-create", {"model.net": "${oc.create:{_target_: builtins.open, file: canary, mode: w}}"}, ["model.net", "oc.create"], True),
    ("oc-decode", {"model.net": "${oc.decode:'{_target_: builtins.open, file: canary, mode: w}'}"}, ["model.net", "oc.decode"], True),
    ("hydra-resolver", {"results_dir": "${hydra:runtime.cwd}"}, ["results_dir", "hydra"], False),
    ("custom-resolver", {"model.name": "${plant:x}"}, ["model.name", "resolver plant"], True),
    ("escaped-interpolation", {"model.name": "\\${oc.env:HOME}"}, ["model.name", "interpolated again"], False),
    # the other settings that name code
    ("shape-fn", {"shape": {"_target_": "sweeper.schedules.shapes.FunctionShape", "fn": "plant.fn"}}, ["shape.fn=plant.fn"], True),
    (
        "shape-mom-fn",
        {"shape": {"_target_": "sweeper.schedules.shapes.FunctionShape", "fn": "math.cos", "mom_fn": "plant.fn"}},
        ["shape.mom_fn=plant.fn"],
        True,
    ),
    (
        "function-shape-in-a-sequence",
        {
            "shape": {
                "_target_": "sweeper.schedules.sequential.Sequential",
                "milestones": [2],
                "shapes": [
                    {"_target_": "sweeper.schedules.torch_schedulers.TorchStep"},
                    {"_target_": "sweeper.schedules.shapes.FunctionShape", "fn": "plant.fn"},
                ],
            }
        },
        ["shape.shapes[1].fn=plant.fn"],
        True,
    ),
    (
        "function-shape-elsewhere",
        {"data.source": {"_target_": "sweeper.schedules.shapes.FunctionShape", "fn": "plant.fn"}},
        ["data.source.fn=plant.fn"],
        True,
    ),
    ("model-groups", {"model.groups": "plant.split"}, ["model.groups=plant.split", "--allow-module MODULE"], True),
    ("sweep-trainer-without-a-dot", {"sweep.trainer": "plant"}, ["sweep.trainer=plant"], True),
    # arguments by position would slip past the checks that read them by name
    (
        "cache-folder-by-position",
        {"model.net": {"_target_": "sweeper.zoo.models.pretrained_on_digits", "_args_": [MLP, [0, 1], 1, 1e-3, 0, CANARY]}},
        ["model.net._args_", "by name"],
        True,
    ),
    # the recorded config cannot allow itself anything
    (
        "recorded-allow-modules",
        {"tracking.allow_modules": ["os", "plant"], "model.groups": "plant.split"},
        ["model.groups=plant.split"],
        True,
    ),
]
CONSOLE_SCRIPT_PAYLOADS = ["os-system", "only-through-interpolation", "oc-env", "sweep-trainer-without-a-dot"]


@pytest.fixture(scope="module")
def recorded_config() -> dict:
    """A config as `sweeper train` records it (resolved), small and on the CPU."""
    cfg = compose_config(["train.device=cpu", "train.epochs=1", "tracking=none"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def planted(workdir, monkeypatch):
    """The working directory with the payloads' code in reach: module `plant` on the path,
    hub/hubconf.py, and an OmegaConf resolver `plant`; each creates the canary when it runs."""
    (workdir / "code").mkdir()
    (workdir / "code" / "plant.py").write_text(PLANT)
    (workdir / "hub").mkdir()
    (workdir / "hub" / "hubconf.py").write_text(HUBCONF)
    monkeypatch.syspath_prepend(str(workdir / "code"))
    OmegaConf.register_new_resolver("plant", lambda text: Path(CANARY).write_text(text) and text)
    yield workdir
    OmegaConf.clear_resolver("plant")
    for module in ("plant", "hubconf"):
        sys.modules.pop(module, None)


def record(workdir: Path, recorded_config: dict, changes: dict[str, Any]) -> Path:
    """results/train/source/config.yaml: the recorded config with `changes` written into it."""
    config = OmegaConf.create(recorded_config)
    for setting, value in changes.items():
        OmegaConf.update(config, setting, value, merge=False, force_add=True)
    folder = workdir / SOURCE
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return folder


def made_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def check_refused(code: int, err: str, fragments: list[str], workdir: Path, before: list[str]) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper rerun: error: "), err  # one line, no traceback
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (workdir / CANARY).exists()  # the payload did not run
    assert not (workdir / "results" / "reruns").exists()
    assert made_under(workdir) == before  # nothing else either: no MLflow store, no __pycache__ of plant


TABLE = [pytest.param(changes, fragments, id=name) for name, changes, fragments, _ in PAYLOADS]
BY_ID = {name: (changes, fragments) for name, changes, fragments, _ in PAYLOADS}


@pytest.mark.parametrize(("changes", "fragments"), TABLE)
def test_a_payload_is_refused_and_does_not_run(changes, fragments, planted, recorded_config, capsys):
    record(planted, recorded_config, changes)
    before = made_under(planted)
    code = main(["rerun", SOURCE, "results_dir=results"])  # tracking=local: a run would make results/mlflow.db
    check_refused(code, capsys.readouterr().err, fragments, planted, before)


@pytest.mark.parametrize(("changes", "fragments"), TABLE)
def test_a_dry_run_lists_and_refuses_a_payload(changes, fragments, planted, recorded_config, capsys):
    record(planted, recorded_config, changes)
    before = made_under(planted)
    code = main(["rerun", "--dry-run", SOURCE, "results_dir=results"])
    out, err = capsys.readouterr()
    check_refused(code, err, fragments, planted, before)
    for fragment in fragments:
        setting, _, name = fragment.partition("=")
        if name and "(not" not in name:  # a refused import, listed before the refusal and marked so
            assert f"  {setting}: {name}  (not allowed)" in out.splitlines(), out


@pytest.mark.slow
@pytest.mark.parametrize("name", CONSOLE_SCRIPT_PAYLOADS)
def test_the_console_script_refuses_a_payload(name, planted, recorded_config):
    changes, fragments = BY_ID[name]
    record(planted, recorded_config, changes)
    before = made_under(planted)
    script = Path(sys.executable).with_name("sweeper")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(planted / "code"), with_tests_on_path()])}
    done = subprocess.run(
        [str(script), "rerun", SOURCE, "results_dir=results"], cwd=planted, env=environment, capture_output=True, text=True, timeout=120
    )
    check_refused(done.returncode, done.stderr, fragments, planted, before)


@pytest.mark.parametrize("name", [name for name, *_, runs in PAYLOADS if runs])
def test_each_payload_runs_when_built_unchecked(name, planted, recorded_config):
    """The control: built as a rerun built a recorded config before the check (resolved whole
    for its record, the trainer loaded, the trial prepared), the payload creates the canary, so
    its absence in the tests above means it did not run."""
    from sweeper.sweep.trainer import load_trainer
    from sweeper.training.trainer import prepare

    folder = record(planted, recorded_config, BY_ID[name][0])
    config = OmegaConf.load(folder / "config.yaml")
    for build in (lambda: OmegaConf.to_container(config, resolve=True), lambda: load_trainer(config), lambda: prepare(config)):
        try:
            build()
        except Exception:  # noqa: BLE001 - a payload need not make a working trial; it has run by then
            pass
    assert (planted / CANARY).exists()


def test_a_config_that_reads_the_environment_records_none_of_it(planted, recorded_config, monkeypatch, capsys):
    monkeypatch.setenv("SWEEPER_TEST_SECRET", "s3cret-of-the-rerunning-user")
    record(planted, recorded_config, {"data.name": "${oc.env:SWEEPER_TEST_SECRET}"})
    before = made_under(planted)
    code = main(["rerun", SOURCE, "results_dir=results"])
    out, err = capsys.readouterr()
    check_refused(code, err, ["data.name", "oc.env", "write the value it stood for into a copy"], planted, before)
    assert "s3cret" not in out + err


def test_a_payload_in_a_config_that_is_not_yaml_mapping_is_refused(planted, capsys):
    folder = planted / SOURCE
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {CANARY}"]\n')
    before = made_under(planted)
    check_refused(
        main(["rerun", SOURCE, "results_dir=results"]),
        capsys.readouterr().err,
        ["config.yaml", "python/object/apply:os.system"],
        planted,
        before,
    )
    (folder / "config.yaml").write_text("- a list\n- not a config\n")
    check_refused(main(["rerun", SOURCE, "results_dir=results"]), capsys.readouterr().err, ["config.yaml", "ListConfig"], planted, before)


def test_a_broken_result_is_refused_before_training(planted, recorded_config, capsys):
    folder = record(planted, recorded_config, {})
    (folder / "result.json").write_text('{"steps": [{"oops": 1}]}')
    before = made_under(planted)
    check_refused(
        main(["rerun", SOURCE, "results_dir=results"]),
        capsys.readouterr().err,
        ["result.json", "not a result sweeper wrote"],
        planted,
        before,
    )


@pytest.mark.parametrize("module", ["os", "builtins", "subprocess", "sweeper", "torch", "torch.hub", "optuna"])
def test_a_module_that_is_not_the_users_cannot_be_allowed_whole(module, planted, recorded_config, capsys):
    record(planted, recorded_config, BY_ID["os-system"][0])
    before = made_under(planted)
    code = main(["rerun", "--allow-module", module, SOURCE, "results_dir=results"])
    check_refused(code, capsys.readouterr().err, [f"--allow-module: {module} cannot be allowed whole"], planted, before)
    code = main(["rerun", SOURCE, "results_dir=results", f"tracking.allow_modules=[{module}]"])
    check_refused(code, capsys.readouterr().err, [f"tracking.allow_modules: {module} cannot be allowed whole"], planted, before)


@pytest.mark.parametrize("allow", [["--allow-module", "plant"], ["tracking.allow_modules=[plant]"]])
def test_the_user_may_allow_a_module_of_their_own(allow, planted, recorded_config, capsys):
    record(planted, recorded_config, {"shape": {"_target_": "sweeper.schedules.shapes.FunctionShape", "fn": "plant.fn"}})
    code = main(["rerun", "--dry-run", SOURCE, *allow, "results_dir=results"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "  shape.fn: plant.fn" in out.splitlines()
    assert not (planted / CANARY).exists()  # a dry run imports nothing, allowed or not


def test_the_allow_list_holds_every_callable_our_configs_name():
    """Every name conf/ makes sweeper import is allowed, and every allowed name is a real callable
    (or the trainer module): the list neither refuses our own configs nor names stale code."""
    from hydra.utils import get_object

    from sweeper.config import config_dir

    named = set()
    for path in config_dir().rglob("*.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        group = path.parent.relative_to(config_dir()).as_posix()
        named |= {i.name for i in find_imports({group: node} if group != "." else node)}
    assert named <= ALLOWED_CALLABLES | ALLOWED_FUNCTIONS, named - ALLOWED_CALLABLES - ALLOWED_FUNCTIONS
    assert {
        "sweeper.zoo.models.resnet_split",
        "sweeper.schedules.shapes.linear_decay",
        "sweeper.training.engine",
    } <= named  # groups, fn, trainer found
    for name in ALLOWED_CALLABLES:
        assert callable(get_object(name)) or name == "sweeper.training.engine", name
    for name in ALLOWED_FUNCTIONS:
        assert inspect.isfunction(get_object(name)), name


def test_the_checked_config_is_what_runs(planted, recorded_config, monkeypatch, capsys):
    """The rerun builds the resolved, checked config: no interpolation left to resolve later, and
    the pre-training cache in the user's results, wherever the recorded config put it."""
    import sweeper.analysis.rerun

    built = []

    class Trainer:
        @staticmethod
        def train(cfg, reporters=()):
            built.append(cfg)
            raise KeyboardInterrupt  # stop here: what was built is all this test needs

    monkeypatch.setattr(sweeper.analysis.rerun, "load_trainer", lambda cfg: Trainer)
    net = {"_target_": "sweeper.zoo.models.pretrained_on_digits", "net": "${stash}", "cache_dir": "/elsewhere"}
    record(planted, recorded_config, {"stash": MLP, "model.net": net, "model.name": "${data.name}"})
    assert main(["rerun", SOURCE, "results_dir=results", "tracking=none"]) == 130  # stopped as by Ctrl-C
    (config,) = built
    assert "${" not in OmegaConf.to_yaml(config)
    assert config.model.name == "digits" and config.model.net.net == MLP
    assert config.model.net.cache_dir == str(Path("results") / "cache")


def test_checked_config_points_every_write_folder_at_the_users_results(tmp_path):
    text = OmegaConf.to_yaml({"model": {"net": {"_target_": "sweeper.zoo.models.pretrained_on_digits", "net": MLP, "cache_dir": "/etc"}}})
    config = checked_config(read_recorded(text, "x"), Allowed(), tmp_path / "cache")
    assert config.model.net.cache_dir == str(tmp_path / "cache")


def test_a_real_recorded_run_still_reruns_bitwise_equal(workdir, capsys):
    quick = ["train.epochs=1", "train.device=cpu", "train.deterministic=true", "train.batch_size=128", "train.threads=1"]
    assert main(["train", "--name", "source", "--quiet", *quick, "tracking=none", "results_dir=results"]) == 0
    code = main(["rerun", "--strict", "--name", "again", SOURCE, "results_dir=results", "tracking=none"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "(bitwise equal)" in out and "(not allowed)" not in out
    assert (workdir / "results" / "reruns" / "again" / "result.json").is_file()
