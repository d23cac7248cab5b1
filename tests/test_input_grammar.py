"""What users type, as they would type it to the installed `sweeper` console script.

The slice the fastai way on every command (a number, slice(hi), slice(None, hi), slice(lo, hi), a
list), Hydra's override grammar whole (deletes, shuffle, exclusive ends, a replaced search node,
hydra-optuna-sweeper's older mapping form), and settings every trial would fail on. A refusal is
exit 2, one line on stderr that names the setting and the fix, no traceback, and nothing made in
the working directory (no results/, studies.db or mlflow.db). Arguments are given as the shell
hands them over: `lr='slice(1e-5,1e-3)'` typed in bash arrives as lr=slice(1e-5,1e-3). Most
cases run the command in this process (`sweeper.cli.main`, the console script's own function:
the same parsing, messages and exit codes, without seconds of process start each); a few run the
console script itself, as in tests/test_bad_input.py, and are `slow`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from test_bad_input import check_refusal, made_under

from sweeper.cli import main
from sweeper.config import compose_config
from sweeper.schedules.slices import parse_lr
from sweeper.sweep.plan import plan_sweep

SCRIPT = Path(sys.executable).with_name("sweeper")
NEEDS_TORCHVISION = pytest.mark.extras("torchvision")  # runs in .venv-extras (tests/test_extras.py)

# (id, command line with {inputs} for the folder of prepared files, fragments of the one line:
# the setting, then the fix)
REFUSALS = [
    # 1. the slice typed the fastai way, on every command
    ("lr-three-arguments", ["train", "lr=slice(1,2,3)"], ["lr: slice(1.0, 2.0, 3.0) has three arguments", "shape.pct_start"]),
    ("lr-word", ["train", "lr=abc"], ["lr=abc: there is no such option", "lr=1e-3, lr='slice(1e-5,1e-3)'"]),
    ("lr-negative", ["train", "lr=-1"], ["lr: -1 is not a usable learning rate", "positive, finite number such as 1e-3"]),
    ("lr-nan-sweep", ["sweep", "lr=nan"], ["lr: nan is not a usable learning rate", "positive, finite"]),
    (
        "lr-low-above-high-worker",
        ["worker", "lr=slice(1e-3,1e-5)"],
        ["lr: slice(0.001, 1e-05) has low > high", "write slice(1e-05, 0.001)"],
    ),
    ("lr-list-lr-find", ["lr-find", "lr=[1e-3,-1,1e-3]"], ["lr[1]: -1", "positive, finite"]),
    ("lr-no-high-schedule", ["schedule", "lr=slice(None)"], ["lr: a slice needs its high end", "slice(hi) or slice(lo, hi)"]),
    ("lr-infinite-confirm", ["confirm", "lr=inf"], ["lr: inf is not a usable learning rate", "positive, finite"]),
    ("lr-set-twice", ["train", "lr=slice(1e-3)", "lr.high=1e-2"], ["lr: 'lr=slice(1e-3)' sets the whole slice", "give one"]),
    (
        "lr-fixed-and-sampled",
        ["sweep", "lr=1e-3", "search.lr.high=interval(1e-3,1e-2)"],
        ["lr: lr=1e-3 fixes the slice", "drop one of them"],
    ),
    (
        "lr-fixed-leaves-nothing",
        ["sweep", "lr=1e-3", "search=slices"],
        ["search: the space is empty", "lr is fixed at 0.001", "search=shapes"],
    ),
    # 2. Hydra's grammar: deletes, hydra-optuna-sweeper's older form (command line and config file)
    ("delete-missing-sweep", ["sweep", "~train.nope"], ["~train.nope: there is no such setting to delete", "check its spelling"]),
    ("delete-other-value-worker", ["worker", "~train.seed=5"], ["~train.seed=5: train.seed holds 0, not 5", "write ~train.seed"]),
    (
        "older-form-command-line",
        ["sweep", "optimizer.weight_decay={type: float, low: 0.0001, high: 0.1, log: true}"],
        ["optimizer.weight_decay: ", "older search_space form", "optimizer.weight_decay='tag(log, interval(0.0001, 0.1))'", "exclusive"],
    ),
    (
        "older-form-search-node",
        ["sweep", "search.shape.triangular.warmup_pct={type: float, low: 0.1, high: 0.6}"],
        ["search.shape.triangular.warmup_pct: ", "search.shape.triangular.warmup_pct='interval(0.1, 0.6)'", "0.6 itself is never drawn"],
    ),
    (
        "older-form-config-file",
        ["sweep", "--config-dir", "{inputs}/older", "search=older"],
        ["search.params.train.batch_size: ", "search.params.train.batch_size='range(16, 80, 16)'", "keeps 64 in"],
    ),
    # 3. settings every trial would fail on, caught up front
    (
        "yaml-tab",
        ["train", "--config-dir", "{inputs}/tabbed", "model=tabbed"],
        ["--config-dir: {inputs}/tabbed/model/tabbed.yaml, line 3", "never tabs"],
    ),
    (
        "yaml-syntax-sweep",
        ["sweep", "--config-dir", "{inputs}/broken", "model=broken"],
        ["--config-dir: {inputs}/broken/model/broken.yaml, line 2", "fix the YAML"],
    ),
    (
        "word-for-a-number",
        ["train", "optimizer.weight_decay=abc"],
        ["optimizer.weight_decay: 'abc' is not a number", "optimizer.weight_decay=0.01"],
    ),
    (
        "words-for-a-number-sweep",
        ["sweep", "optimizer.weight_decay=choice(a,b)"],
        ["search.params.optimizer.weight_decay: choice(a, b)", "choose among numbers"],
    ),
    ("data-shape", ["train", "data.shape=[64]"], ["data.shape: [64] does not match the data", "data.shape=[1,8,8]"]),
    (
        "data-shape-sweep",
        ["sweep", "search=slices", "data=tensors", "data.shape=[5]", "data.num_classes=2", "data.source.path={inputs}/two.pt"],
        ["data.shape: [5] does not match the data", "data.shape=[4]"],
    ),
    (
        "one-class-sweep",
        ["sweep", "search=slices", "data=tensors", "data.shape=[4]", "data.num_classes=2", "data.source.path={inputs}/one.pt"],
        ["data.source.path: the training set holds a single class", "two classes or more"],
    ),
    (
        "not-a-tensors-file",
        ["train", "data=tensors", "data.shape=[4]", "data.num_classes=2", "data.source.path={inputs}/text.pt"],
        ["data.source.path: {inputs}/text.pt cannot be read as tensors", "torch.save"],
    ),
    (
        "image-classes-differ",
        [
            "train",
            "data=image_folder",
            "data.num_classes=2",
            "data.shape=[3,16,16]",
            "data.source.num_workers=0",
            "data.source.root={inputs}/images",
        ],
        ["data.source.root: train/ has classes ['cat', 'dog'] but valid/ has ['cat', 'cow']", "same class folders"],
        NEEDS_TORCHVISION,
    ),
    ("n-trials-true", ["sweep", "sweep.n_trials=true"], ["sweep.n_trials: True must be a whole number of trials >= 1", "sweep.n_trials=1"]),
    ("epochs-true", ["train", "train.epochs=true"], ["train.epochs: True must be a whole number >= 0", "train.epochs=1"]),
    ("timeout-true", ["sweep", "sweep.timeout=true"], ["sweep.timeout: True must be seconds > 0", "or null for none"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Files the cases read (kept out of the working directory, where nothing may appear)."""
    folder = tmp_path_factory.mktemp("inputs")
    for name, text in [
        ("tabbed/model/tabbed.yaml", "name: tabbed\nnet:\n\t_target_: sweeper.zoo.models.MLP\n"),
        ("broken/model/broken.yaml", "name: [broken\n"),
        (
            "older/search/older.yaml",
            yaml.safe_dump(
                {
                    "lr": {"strategies": None, "high": None, "low_ratio": None},
                    "shape": None,
                    "params": {"train": {"batch_size": {"type": "int", "low": 16, "high": 64, "step": 16}}},
                }
            ),
        ),  # fmt: skip
        ("text.pt", "not tensors\n"),
    ]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "y": torch.arange(20) % 2}, folder / "two.pt")
    torch.save({"x": x, "y": torch.zeros(20, dtype=torch.long)}, folder / "one.pt")
    from PIL import Image

    for split, classes in (("train", ("cat", "dog")), ("valid", ("cat", "cow"))):
        for name in classes:
            (folder / "images" / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 20)).save(folder / "images" / split / name / "0.png")
    return folder


def sweeper(argv: list[str], workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The console script, in `workdir`."""
    return subprocess.run([str(SCRIPT), *argv], cwd=workdir, capture_output=True, text=True, timeout=timeout)


def typed(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """The console script's command in this process, in the working directory (`workdir`)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


REFUSAL_CASES = [pytest.param(argv, fragments, id=name, marks=marks) for name, argv, fragments, *marks in REFUSALS]
# Through the console script too: one of each kind (a slice, Hydra's grammar, a config file, the data).
SCRIPT_CASES = ("lr-word", "delete-other-value-worker", "yaml-tab", "data-shape-sweep")


def check_refused(argv: list[str], fragments: list[str], inputs: Path, workdir: Path, run) -> None:
    argv = [a.replace("{inputs}", str(inputs)) for a in argv]
    done = run(argv)
    assert "Traceback" not in done.stderr, done.stderr
    check_refusal(argv[0], done.returncode, done.stderr, [f.replace("{inputs}", str(inputs)) for f in fragments], workdir)
    assert done.stdout == ""


@pytest.mark.parametrize(("argv", "fragments"), REFUSAL_CASES)
def test_refused_in_one_line_naming_the_setting_and_the_fix(argv, fragments, inputs, workdir, capsys):
    check_refused(argv, fragments, inputs, workdir, lambda argv: typed(argv, capsys))


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "fragments"), [case for case in REFUSAL_CASES if case.id in SCRIPT_CASES])
def test_the_console_script_refuses_them_the_same_way(argv, fragments, inputs, workdir):
    check_refused(argv, fragments, inputs, workdir, lambda argv: sweeper(argv, workdir))


# The forms of the README's table, as typed in bash, and the lr group each one sets.
LR_FORMS = [
    ("1e-3", {"strategy": "single", "high": 1e-3}),
    ("slice(1e-3)", {"strategy": "fastai", "high": 1e-3}),
    ("slice(None, 1e-3)", {"strategy": "fastai", "high": 1e-3}),
    ("slice(1e-5,1e-3)", {"strategy": "geometric", "low": 1e-5, "high": 1e-3}),
    ("[1e-5,1e-4,1e-3]", {"strategy": "explicit", "values": [1e-5, 1e-4, 1e-3]}),
]
FORM_IDS = [form for form, _ in LR_FORMS]
TINY = ["data=synthetic", "data.source.n_samples=120", "train.epochs=1", "tracking=none"]


@pytest.mark.parametrize(("form", "lr"), LR_FORMS, ids=FORM_IDS)
def test_sweeper_train_takes_the_lr_as_fastai_takes_it(form, lr, workdir, capsys):
    done = typed(["train", "--quiet", "--name", "run", f"lr={form}", *TINY], capsys)
    assert done.returncode == 0, done.stderr
    recorded = yaml.safe_load((workdir / "results" / "train" / "run" / "config.yaml").read_text())
    assert recorded["lr"] == lr


@pytest.mark.parametrize(("form", "lr"), LR_FORMS, ids=FORM_IDS)
def test_a_sweep_with_a_fixed_lr_samples_no_slice_and_says_so(form, lr, workdir, capsys):
    done = typed(["sweep", "--dry-run", f"lr={form}", "search.shape=null", "train.batch_size=choice(32,64)"], capsys)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"  lr: fixed at {parse_lr(lr).describe()}; search.lr is not sampled",
        "  train.batch_size: choice(32, 64)",
    ]
    assert made_under(workdir) == []


@pytest.mark.parametrize(("form", "lr"), LR_FORMS, ids=FORM_IDS)
def test_the_trials_of_such_a_sweep_all_run_that_lr(form, lr):
    # what `sweeper sweep` and `sweeper worker` plan, and what a worker composes for each trial
    plan = plan_sweep([f"lr={form}", "search=shapes"], validate=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial_overrides = plan.space.suggest(study.ask())
        assert not [o for o in trial_overrides if o.startswith("lr")], trial_overrides
        assert OmegaConf.to_container(compose_config([*plan.overrides, *trial_overrides]).lr) == lr


def test_dry_run_shows_deletes_shuffles_replaced_nodes_and_exclusive_ends(workdir, capsys):
    done = typed(
        [
            "sweep", "--dry-run", "search.shape={constant: {}, triangular: {warmup_pct: 'interval(0.1, 0.6)'}}",
            "search=shapes", "~search.lr.low_ratio", "lr=fastai", "train.batch_size=shuffle(range(16,64,16))",
        ],
        capsys,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "  train.batch_size: choice(16, 32, 48)",  # shuffle: a choice among Hydra's values
        "  lr.high: log [0.0003, 0.03)",  # half-open: the end is exclusive, as in Hydra
        "  shape: choice(constant, triangular)",  # the mapping replaced the default shapes
        "  triangular.warmup_pct: [0.1, 0.6)",
        "  compare: shape (constant, triangular); each its own sampler and an equal share of the trials",
        "  pruning: within each shape arm, after its first 3 complete trials (pruner.n_startup_trials=4, capped at half of an arm's 6 trials)",
    ]
    assert made_under(workdir) == []


def test_a_worker_plans_a_sweep_with_delete_overrides():
    plan = plan_sweep(["~search.shape.constant", "~train.seed=0"], validate=False)
    assert "constant" not in plan.space.shape.distribution.choices and "seed" not in plan.cfg.train


@pytest.mark.slow
def test_far_more_workers_than_cores_is_a_warning_with_the_figures(workdir):
    done = sweeper(["sweep", "--dry-run", "search=slices", "sweep.workers=1000"], workdir)
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("sweeper: sweep.workers=1000 is ") and "times this machine's" in warning
    assert made_under(workdir) == []
