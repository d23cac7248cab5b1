"""Bad input through the real command line: exit code 2, one line on stderr that names the
setting and the fix, and nothing made: no study, no MLflow store or run, no file under results/.

Each case runs `sweeper.cli.main` in-process (fast), in an empty working directory, with the
results under it; a few run the installed `sweeper` console script as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from helpers.processes import NEEDS_POSTGRES, POSTGRES
from helpers.servers import free_port

from sweeper.cli import main

PORT = free_port()  # nothing listens here: an unreachable storage or tracking server
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: asking for CUDA is fine here")

# (id, command line, fragments the one-line message must hold: the setting, then the fix)
CASES = [
    # the config tree: groups, options and keys that do not exist
    ("unknown-model", ["sweep", "model=nosuch"], ["model=nosuch", "Available options in model", "mlp_pretrained"]),
    ("unknown-experiment", ["train", "experiment=nope"], ["experiment=nope", "digits_transfer", "--config-dir"]),
    # a mistyped key anywhere: one line with the closest known key (with + too: nothing silently ignored)
    ("unknown-setting", ["train", "train.epochz=3"], ["train.epochz: no such setting; did you mean train.epochs?"]),
    ("unknown-setting-added", ["train", "+train.epoch=3"], ["train.epoch: no such setting; did you mean train.epochs?"]),
    ("unknown-sweep-setting", ["sweep", "sweep.n_trial=3"], ["sweep.n_trial: no such setting; did you mean sweep.n_trials?"]),
    ("unknown-tracking-setting", ["train", "tracking.save_models=all"], ["did you mean tracking.save_model?"]),
    ("unknown-storage-setting", ["sweep", "+storage.heartbeat=5"], ["did you mean storage.heartbeat_interval?"]),
    ("unknown-model-setting", ["sweep", "model.group=[head]"], ["model.group: no such setting; did you mean model.groups?"]),
    ("unknown-model-argument", ["train", "model.net.hiden=[64]"], ["model.net.hiden", "did you mean model.net.hidden?"]),
    ("new-model-argument", ["train", "model.net.width=64"], ["model.net.width", "add it with +model.net.width=64"]),
    # an argument added with + that the node's target does not take: refused before it is built
    (
        "unknown-optimizer-argument",
        ["train", "+optimizer.weight_decy=0.1"],
        ["optimizer.weight_decy: no such setting of torch.optim.AdamW; did you mean optimizer.weight_decay?"],
    ),
    (
        "unknown-net-argument",
        ["train", "+model.net.hiden=[64]"],
        ["model.net.hiden: no such setting of sweeper.zoo.models.MLP", "model.net.hidden?"],
    ),
    ("unknown-data-argument", ["train", "data=synthetic", "+data.source.n_sample=9"], ["data.source.n_sample", "data.source.n_samples?"]),
    (
        "unknown-sampler-argument",
        ["sweep", "+sampler.n_startup_trial=3"],
        ["sampler.n_startup_trial", "did you mean sampler.n_startup_trials?"],
    ),
    ("unknown-pruner-argument", ["sweep", "+pruner.n_warmup_step=3"], ["pruner.n_warmup_step", "did you mean pruner.n_warmup_steps?"]),
    (
        "argument-none-close",
        ["train", "+optimizer.zzz=1"],
        ["optimizer.zzz: no such setting of torch.optim.AdamW; it takes params, lr,", "weight_decay"],
    ),
    ("unknown-space-setting", ["sweep", "search.lr.hihg=3"], ["did you mean search.lr.high?"]),
    ("unknown-group", ["train", "modle=cnn"], ["modle: no such setting; did you mean model?"]),
    ("unknown-top-level", ["train", "+result_dir=out"], ["did you mean results_dir?"]),
    ("unknown-sampler", ["sweep", "sampler=bogus"], ["sampler=bogus", "tpe"]),
    ("unknown-pruner", ["sweep", "pruner=bogus"], ["pruner=bogus", "median"]),
    ("unknown-sampler-class", ["sweep", "sampler._target_=optuna.samplers.Nope"], ["sampler", "optuna.samplers.Nope", "sampler=<name>"]),
    # learning rates and slices
    ("lr-zero", ["train", "lr=single", "lr.high=0"], ["lr.high: 0", "positive, finite"]),
    ("lr-negative", ["sweep", "lr=fastai", "lr.high=-1e-3"], ["lr.high: -0.001", "positive, finite"]),
    ("lr-nan", ["train", "lr=single", "lr.high=nan"], ["lr.high: nan", "positive, finite"]),
    ("lr-inf", ["sweep", "lr.high=inf"], ["lr.high: inf", "positive, finite"]),
    ("low-above-high", ["sweep", "lr.low=1e-2", "lr.high=1e-4"], ["low > high", "slice(0.0001, 0.01)"]),
    ("slice-low-above-high", ["schedule", "--lr", "slice(1e-3,1e-5)"], ["low > high", "slice(1e-05, 0.001)"]),
    ("three-argument-slice", ["schedule", "--lr", "slice(1e-5,1e-3,10)"], ["three arguments", "shape.pct_start"]),
    ("list-wrong-length", ["train", "lr=explicit", "lr.values=[1e-3,1e-2]"], ["2 learning rates", "3 layer groups", "exactly 3"]),
    (
        "list-wrong-length-sweep",
        ["sweep", "search=shapes", "search.lr.high=null", "search.lr.low_ratio=null", "lr=explicit", "lr.values=[1e-3,1e-2]"],
        ["2 learning rates", "3 layer groups", "exactly 3"],
    ),
    # layer groups
    (
        "prefix-matches-nothing",
        ["sweep", "search=slices", "model.groups=[body.0,body.1,neck]"],
        ["model.groups", "'neck' matches no parameter", "['body', 'head']"],
    ),
    (
        "prefixes-overlap",
        ["sweep", "search=slices", "model.groups=[body,body.1,head]"],
        ["model.groups", "more than one prefix", "disjoint"],
    ),
    ("prefixes-leave-out", ["train", "model.groups=[body.0,head]"], ["model.groups", "in no group", "add a prefix"]),
    # cycle shapes
    ("pct-start-beyond-one", ["train", "shape.pct_start=1.01"], ["shape.pct_start: 1.01 is outside [0, 1]", "shape.pct_start=0.25"]),
    (
        "pct-start-zero-sweep",
        ["sweep", "search=slices", "shape=torch_one_cycle", "shape.pct_start=0"],
        ["shape.pct_start: 0", "outside (0, 1)"],
    ),
    (
        "pct-start-searched-beyond-one",
        ["sweep", "search.shape.fastai_one_cycle.pct_start=interval(0.5, 1.5)"],
        ["search.shape.fastai_one_cycle", "shape.pct_start", "outside [0, 1]"],
    ),
    ("div-zero", ["train", "shape.div=0"], ["shape.div: 0", "positive, finite divisor"]),
    ("div-negative-sweep", ["sweep", "search=slices", "shape.div=-5"], ["shape.div: -5", "positive, finite divisor"]),
    # the search space, sampler, pruner and trial count
    (
        "empty-space",
        ["sweep", "search=slices", "search.lr.strategies=null", "search.lr.high=null", "search.lr.low_ratio=null"],
        ["search: the space is empty", "search=slices_and_shapes"],
    ),
    ("interval-low-above-high", ["sweep", "search.lr.high=tag(log, interval(1e-2, 1e-4))"], ["search.lr.high", "swap them"]),
    ("range-lists-nothing", ["sweep", "train.batch_size=range(64, 16)"], ["search.params.train.batch_size", "lists no values"]),
    ("unresolved-interpolation", ["sweep", "sweep.n_trials=${nope}"], ["sweep.n_trials: Interpolation key 'nope' not found"]),
    ("n-trials-zero", ["sweep", "sweep.n_trials=0"], ["sweep.n_trials: 0", ">= 1"]),
    ("n-trials-negative", ["sweep", "sweep.n_trials=-3"], ["sweep.n_trials: -3", ">= 1"]),
    # where state lives
    (
        "storage-unreachable",
        ["sweep", "search=slices", f"storage.url=postgresql://sweeper:pw@127.0.0.1:{PORT}/sweeps"],
        ["storage.url: cannot open postgresql://sweeper:***@127.0.0.1", "check the server is up"],
    ),
    ("storage-variable-unset", ["sweep", "storage=postgres"], ["storage.url", "export SWEEPER_STORAGE_URL="]),
    (
        "tracking-unreachable",
        ["sweep", "search=slices", f"tracking.uri=http://127.0.0.1:{PORT}"],
        ["tracking.uri: cannot reach MLflow", "tracking=local"],
    ),
    (
        "tracking-unreachable-train",
        ["train", f"tracking.uri=http://127.0.0.1:{PORT}"],
        ["tracking.uri: cannot reach MLflow", "tracking=none"],
    ),
    # what a trial needs: data, a metric to optimise, devices
    (
        "missing-data-path",
        ["sweep", "search=slices", "data=tensors", "data.shape=[4]", "data.num_classes=2", "data.source.path=missing.pt"],
        ["data.source.path", "does not exist", "data.source.path=/path/to/it"],
    ),
    # a data option's `???` is named by the key the user sets, not by the one that reads it
    (
        "image-folder-without-num-classes",
        ["train", "data=image_folder", "data.source.root=images"],
        ["data.num_classes: not set", "data=image_folder needs it", "data.num_classes=..."],
    ),
    (
        "image-folder-without-num-classes-sweep",
        ["sweep", "data=image_folder", "data.source.root=images"],
        ["data.num_classes: not set", "data=image_folder needs it", "data.num_classes=..."],
    ),
    ("tensors-without-shape", ["lr-find", "data=tensors", "data.num_classes=2"], ["data.shape: not set", "data.shape=..."]),
    ("objective-not-produced", ["sweep", "train.objective=f1"], ["train.objective", "['accuracy', 'loss']"]),
    ("objective-not-produced-train", ["train", "train.objective=f1"], ["train.objective", "['accuracy', 'loss']"]),
    ("workers-per-device-zero", ["sweep", "search=slices", "sweep.workers_per_device=0"], ["sweep.workers_per_device: 0", ">= 1"]),
    ("launcher-jobs-zero", ["sweep", "search=slices", "launcher=slurm", "launcher.jobs=0"], ["launcher.jobs: 0", ">= 1"]),
    # every sbatch option of launcher=slurm (conf/launcher/slurm.yaml)
    *(
        (f"slurm-{name}", ["sweep", "search=slices", "launcher=slurm", *overrides], fragments)
        for name, overrides, fragments in [
            ("cluster", ["launcher.cluster=pbs"], ["launcher.cluster: 'pbs'", "launcher.cluster=slurm"]),
            ("array-parallelism-zero", ["launcher.array_parallelism=0"], ["launcher.array_parallelism: 0", ">= 1", "or null"]),
            ("time-zero", ["launcher.timeout_min=0"], ["launcher.timeout_min: 0", "minutes >= 1"]),
            ("time-bool", ["launcher.timeout_min=true"], ["launcher.timeout_min: True", "minutes >= 1"]),
            ("cpus-zero", ["launcher.cpus_per_task=0"], ["launcher.cpus_per_task: 0", ">= 1"]),
            ("memory-negative", ["launcher.mem_gb=-1"], ["launcher.mem_gb: -1", "gigabytes > 0", "launcher.mem_gb=32"]),
            ("gpus-negative", ["launcher.gpus_per_node=-1"], ["launcher.gpus_per_node: -1", ">= 0"]),
            ("gres-malformed", ["launcher.gres=gpu"], ["launcher.gres: 'gpu'", "launcher.gres=gpu:1"]),
            ("gres-and-gpus", ["launcher.gres=gpu:a100:1"], ["launcher.gres: gpu:a100:1", "launcher.gpus_per_node=0 with launcher.gres"]),
            ("partition-with-space", ["launcher.partition='gpu a100'"], ["launcher.partition: 'gpu a100'", "sinfo"]),
            ("account-number", ["launcher.account=[a]"], ["launcher.account: ", "or null"]),
            ("qos-empty", ["launcher.qos=''"], ["launcher.qos: ''", "or null"]),
            ("setup-not-a-list", ["launcher.setup=module"], ["launcher.setup: 'module'", "list of shell lines"]),
            (
                "sbatch-args-short-form",
                ["launcher.sbatch_args=[-C a100]"],
                ["launcher.sbatch_args: '-C a100'", """'["--constraint=a100", "--exclusive"]'"""],
            ),
            (
                "sbatch-args-own-setting",
                ['launcher.sbatch_args=["--partition=gpu"]'],
                ["launcher.sbatch_args: --partition", "use launcher.partition"],
            ),
            ("sbatch-args-time", ['launcher.sbatch_args=["--time=10"]'], ["launcher.sbatch_args: --time", "use launcher.timeout_min"]),
        ]
    ),
    ("workers-zero", ["sweep", "search=slices", "sweep.workers=0"], ["sweep.workers: 0", "auto or a whole number"]),
    ("max-failures-zero", ["sweep", "search=slices", "sweep.max_failures=0"], ["sweep.max_failures: 0", ">= 1"]),
    ("cuda-without-gpu", ["sweep", "search=slices", "train.device=cuda"], ["train.device: 'cuda'", "train.device=cpu"], NO_GPU),
    ("cuda-without-gpu-train", ["train", "train.device=cuda:1"], ["train.device: 'cuda:1'", "train.device=auto"], NO_GPU),
]

TABLE = [pytest.param(argv, fragments, id=name, marks=marks) for name, argv, fragments, *marks in CASES]
BY_ID = {name: (argv, fragments) for name, argv, fragments, *_ in CASES}


def made_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def check_refusal(command: str, code: int, err: str, fragments: list[str], workdir: Path) -> None:
    assert code == 2, err
    lines = err.splitlines()
    # One line, after any lines libraries log (none expected; tolerated only if they are not ours).
    assert len(lines) == 1 and lines[0].startswith(f"sweeper {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    # Nothing made: no results/ (no study storage, no MLflow store or run, no report, no plot),
    # nor anything else in the working directory (mlruns/, outputs/, ...).
    assert made_under(workdir) == []


@pytest.mark.parametrize(("argv", "fragments"), TABLE)
def test_bad_input_is_refused_before_any_work(argv, fragments, workdir, capsys):
    code = main([*argv, "results_dir=results"])
    out, err = capsys.readouterr()
    check_refusal(argv[0], code, err, fragments, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unknown-sampler", "storage-unreachable", "prefixes-overlap"])
def test_the_console_script_refuses_bad_input_the_same_way(name, workdir):
    argv, fragments = BY_ID[name]
    script = Path(sys.executable).with_name("sweeper")
    done = subprocess.run([str(script), *argv], cwd=workdir, capture_output=True, text=True, timeout=120)
    check_refusal(argv[0], done.returncode, done.stderr, fragments, workdir)
    assert done.stdout == ""


@pytest.mark.postgres
@NEEDS_POSTGRES
@pytest.mark.parametrize("name", ["workers-per-device-zero", "cuda-without-gpu"])
def test_bad_input_creates_no_study_in_a_database(name, workdir, monkeypatch, capsys):
    if name == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible: asking for CUDA is fine here")
    argv, fragments = BY_ID[name]
    monkeypatch.setenv("SWEEPER_STORAGE_URL", POSTGRES)
    sweep = f"bad-{uuid.uuid4().hex[:8]}"
    code = main([*argv, "storage=postgres", f"sweep.name={sweep}", "results_dir=results"])
    check_refusal("sweep", code, capsys.readouterr().err, fragments, workdir)
    from sweeper.sweep.storage import StorageSpec

    assert sweep not in optuna.get_all_study_names(StorageSpec(POSTGRES).open())


# Read in a fresh interpreter: what the command loaded before it refused the input.
LOADED_AFTER_REFUSAL = """
import sys
from sweeper.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in ("torch", "mlflow", "matplotlib") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["train", "lr=abc"], ["sweep", "sweep.n_trials=true"], ["schedule", "--lr", "abc"]])
def test_a_mistaken_override_is_reported_before_torch_mlflow_or_matplotlib_load(argv, workdir):
    """The one line comes first: torch, MLflow and matplotlib take seconds to load, and only the work needs them."""
    done = subprocess.run([sys.executable, "-c", LOADED_AFTER_REFUSAL, *argv], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1 and made_under(workdir) == []


def test_sweeper_help_lists_every_command_without_loading_any(workdir):
    """`sweeper --help` is what a new user types first: it answers at once (no command module,
    no torch, MLflow, Optuna or matplotlib), listing each command with what it does."""
    from sweeper.cli import COMMANDS

    code = "import sys\nfrom sweeper.cli import main\ntry:\n    main(['--help'])\nfinally:\n    print(sorted(m for m in sys.modules if m.startswith(('sweeper.commands', 'torch', 'mlflow', 'optuna', 'matplotlib'))))"
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *usage, loaded = done.stdout.strip().splitlines()
    assert loaded == "[]"
    for name, help_text in COMMANDS.items():
        assert any(line.split()[:1] == [name] and help_text[:30] in line for line in usage), (name, usage)
