"""torch_plateau: torch's ReduceLROnPlateau, the one shape whose lrs follow the validation
objective, checked against `torch.optim.lr_scheduler.ReduceLROnPlateau` itself fed the same
objectives, every group's lr epoch by epoch; in the trial schedule (a schedule fed the objectives), in the
trainer and fused trials (the lrs the optimizer got, against torch fed the objectives the run
recorded), across a checkpoint resume, and in `sweeper schedule` (the schedule for an objective that
never improves, which it says).

The cases of torch's test/optim/test_lrscheduler.py (test_reduce_lr_on_plateau1 to 8) are run
against the scheduler itself. Where this differs from torch: torch's compound cases
(test_compound_reduce_lr_on_plateau*, a ReduceLROnPlateau stepped beside StepLR and others on
one optimizer) have no form here (one shape sets the lrs; a plateau is no piece of a
`sequential` either, as SequentialLR cannot step one); a negative factor or threshold, which
torch takes, is refused (the first cuts every lr to min_lr, as 0 does; the second counts a
worse objective as an improvement); a per-group min_lr has one lr per layer group (each layer
group is one or two torch param groups with the same lr); test_reduce_lr_on_plateau_state_dict's
state is the objectives a trial recorded, from which the schedule is made again on resume.
"""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from helpers.played import before_each_optimizer_step
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sweeper.cli import main as cli_main
from sweeper.config import ConfigError
from sweeper.records.run_record import result_curves
from sweeper.schedules.sequential import Sequential
from sweeper.schedules.shapes import Schedule, ShapeError
from sweeper.schedules.torch_schedulers import TorchCosine, TorchPlateau
from sweeper.training.checkpoints import EpochCheckpoints
from sweeper.training.fused import FusedOptimizer, prepare_many, run_many
from sweeper.training.trainer import prepare, run
from sweeper.trial.events import Reporter
from sweeper.trial.schedule import configured_shape, schedule_from_peaks

PEAKS = (0.05, 0.5)  # torch's test optimizer: two param groups


def torch_lrs(settings: dict, metrics, epochs: int, peaks=PEAKS) -> list[list[float]]:
    """Every group's lr in each of `epochs` epochs: torch's scheduler stepped after epoch e with
    metrics[e], as its examples step it (after validation)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": p} for p in peaks]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    scheduler = ReduceLROnPlateau(optimizer, **settings)
    lrs = []
    for epoch in range(epochs):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step(metrics[epoch])
    return lrs


def shape_of(settings: dict) -> TorchPlateau:
    return TorchPlateau(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


# torch's test_lrscheduler.py cases: (test, settings, metrics); both groups start at 0.5 there
TORCH_CASES = [
    (
        "test_reduce_lr_on_plateau1",
        dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
        [10 - i * 0.0167 for i in range(20)],
    ),
    (
        "test_reduce_lr_on_plateau2",
        dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
        [10 - i * 0.0165 for i in range(22)],
    ),
    ("test_reduce_lr_on_plateau3", dict(mode="max", patience=5, cooldown=5, threshold_mode="abs"), [-0.8] * 2 + [-0.234] * 20),
    (
        "test_reduce_lr_on_plateau4",
        dict(mode="max", patience=3, threshold_mode="rel", threshold=0.1),
        [1.5 * (1.025**i) for i in range(20)],
    ),
    (
        "test_reduce_lr_on_plateau5",
        dict(mode="max", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
        [1.5 * (1.005**i) for i in range(20)],
    ),
    ("test_reduce_lr_on_plateau6", dict(mode="min", threshold_mode="rel", threshold=0.1), [1.5 * (0.85**i) for i in range(20)]),
    (
        "test_reduce_lr_on_plateau7",
        dict(mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
        [1] * 7 + [0.6] + [0.5] * 12,
    ),
    (
        "test_reduce_lr_on_plateau8: min_lr per group",
        dict(mode="max", threshold_mode="rel", min_lr=[0.4, 0.3], threshold=0.1, patience=5, cooldown=5),
        [1.5 * (1.005**i) for i in range(20)],
    ),
]


@pytest.mark.parametrize(("case", "settings", "metrics"), TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torchs_own_cases_step_for_step(case, settings, metrics):
    epochs = len(metrics) + 1  # the lr after the last step too
    wanted = torch_lrs(settings, [*metrics, 0.0], epochs, peaks=(0.5, 0.5))
    assert shape_of(settings).group_lrs((0.5, 0.5), epochs, metrics) == wanted  # exact: torch's own arithmetic, in its order


def improving(n):
    return [2.0 * 0.9**i for i in range(n)]


def flat(n):
    return [0.7] * n


def noisy(n, seed=0):
    generator = random.Random(seed)
    return [1.0 + 0.3 * math.sin(i / 2) + generator.gauss(0, 0.05) for i in range(n)]


def worsening_then_better(n):
    return [1.0 + 0.01 * i for i in range(n // 2)] + [0.5 - 0.01 * i for i in range(n - n // 2)]


SEQUENCES = {"improving": improving, "flat": flat, "noisy": noisy, "worse then better": worsening_then_better}
SETTINGS = [
    dict(),  # torch's defaults (mode min, patience 10)
    dict(mode="min", patience=2),
    dict(mode="max", patience=1, threshold=0.05),
    dict(mode="min", patience=0, threshold_mode="abs", threshold=0.02),
    dict(mode="max", patience=1, threshold_mode="abs", threshold=0.0),
    dict(mode="min", patience=1, cooldown=3, factor=0.5),
    dict(mode="max", patience=0, cooldown=1, factor=0.3, min_lr=[0.01, 0.002]),  # per group: the slice meets its floors
    dict(mode="min", patience=0, factor=0.5, min_lr=0.03),  # one floor: the head goes on down, the body stops
    dict(mode="min", patience=0, factor=0.5, eps=0.01),  # the body's cut drops below eps and is skipped
    dict(mode="max", patience=0, factor=0.0),  # torch takes factor 0: every lr to min_lr at once
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
@pytest.mark.parametrize("sequence", SEQUENCES, ids=list(SEQUENCES))
def test_every_groups_lr_equals_torchs_scheduler_fed_the_same_objectives(sequence, settings):
    metrics = SEQUENCES[sequence](40)
    wanted = torch_lrs(settings, metrics, 40)
    assert shape_of(settings).group_lrs(PEAKS, 40, metrics) == wanted


def test_a_noisy_objective_with_nan_counts_the_nan_as_no_improvement_as_torch():
    metrics = noisy(30, seed=3)
    metrics[4] = metrics[11] = float("nan")
    settings = dict(mode="min", patience=1)
    assert shape_of(settings).group_lrs(PEAKS, 30, metrics) == torch_lrs(settings, metrics, 30)


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_the_schedule_without_objectives_is_torchs_for_an_objective_that_never_improves(settings):
    shape = shape_of(settings)
    for never_improves in (flat(40), [1.0 + (i if settings.get("mode") != "max" else -i) for i in range(40)]):
        assert shape.group_lrs(PEAKS, 40, ()) == torch_lrs(settings, never_improves, 40)
    # known objectives, then the schedule goes on as if they stopped improving after them
    known = improving(10)
    assert shape.group_lrs(PEAKS, 40, known) == torch_lrs(settings, known + [known[-1] if settings.get("mode") != "max" else -1e9] * 30, 40)


def test_a_schedule_steps_it_once_an_epoch_on_every_batch_of_the_epoch():
    metrics = tuple(noisy(12))
    settings = dict(mode="min", patience=1, cooldown=1, factor=0.5)
    schedule = Schedule(PEAKS, shape_of(settings), 12 * 7, 12, metrics)
    wanted = torch_lrs(settings, metrics, 12)
    assert [schedule.at(step)[0] for step in range(12 * 7)] == [wanted[step // 7] for step in range(12 * 7)]
    assert schedule.at(0)[1] is None  # the optimizer keeps its own momentum
    assert schedule.table[0].tolist() == [schedule.at(step)[0] for step in range(12 * 7)]


def test_a_fine_tune_schedule_feeds_the_plateau_its_own_phases_objectives():
    shape = TorchPlateau(mode="min", patience=0, factor=0.5)
    schedule = schedule_from_peaks((1e-4, 1e-3, 1e-2), shape, epochs=6, freeze_epochs=2, steps=8 * 5)
    objectives = [3.0, 2.0, 1.0, 1.5, 0.8, 0.9, 0.95, 0.5]  # two frozen epochs, then six unfrozen
    fed = schedule.fed(objectives)
    assert np.array_equal(fed.lrs[:10], schedule.lrs[:10])  # the frozen one-cycle is not the plateau's
    unfrozen = schedule.phases[1].schedule.peaks
    wanted = torch_lrs(dict(mode="min", patience=0, factor=0.5), objectives[2:], 6, peaks=unfrozen)
    assert fed.lrs[10:].tolist() == [wanted[step // 5] for step in range(30)]
    assert schedule.fed(objectives[:3]).lrs[10:15].tolist() == [wanted[0]] * 5  # what is known so far
    one_cycle = schedule_from_peaks((1e-3,), TorchCosine(), epochs=2, steps=10)
    assert one_cycle.fed([0.5, 0.4]) is one_cycle  # a schedule that follows no objective is itself


@pytest.mark.parametrize(
    ("direction", "mode", "wanted"),
    [("maximize", None, "max"), ("minimize", None, "min"), ("maximize", "min", "min"), ("minimize", "max", "max")],
)
def test_mode_follows_the_objectives_direction_unless_set(direction, mode, wanted):
    cfg = {"shape": {"_target_": "sweeper.schedules.torch_schedulers.TorchPlateau", "mode": mode}, "train": {"direction": direction}}
    assert configured_shape(cfg).mode == wanted


def test_min_lr_per_group_needs_one_lr_per_layer_group():
    # torch: "expected 2 min_lrs, got 3"
    with pytest.raises(ShapeError, match=r"shape.min_lr: 3 lrs for 2 layer groups"):
        Schedule(PEAKS, TorchPlateau(min_lr=(0.0, 0.0, 0.0)), 20, 4).table  # noqa: B018


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: TorchPlateau(factor=1.0), ["shape.factor", "[0, 1)"]),  # torch: "Factor should be < 1.0."
        (lambda: TorchPlateau(factor=-0.1), ["shape.factor"]),
        (lambda: TorchPlateau(mode="avg"), ["shape.mode", "train.direction"]),  # torch: "mode avg is unknown!"
        (lambda: TorchPlateau(threshold_mode="pct"), ["shape.threshold_mode", "rel"]),  # torch: "threshold mode pct is unknown!"
        (lambda: TorchPlateau(threshold=-0.1), ["shape.threshold", ">= 0"]),
        (lambda: TorchPlateau(patience=-1), ["shape.patience", ">= 0"]),
        (lambda: TorchPlateau(cooldown=1.5), ["shape.cooldown"]),
        (lambda: TorchPlateau(min_lr=-1e-3), ["shape.min_lr"]),
        (lambda: TorchPlateau(min_lr=()), ["shape.min_lr"]),
        (lambda: TorchPlateau(eps=float("nan")), ["shape.eps"]),
        (lambda: TorchPlateau().for_direction("up"), ["shape.mode", "train.direction"]),
        (lambda: Sequential((TorchPlateau(), TorchCosine()), (3,)), ["shape.shapes", "torch_plateau"]),
    ],
)
def test_bad_settings_say_what_and_how_to_fix(build, fragments):
    with pytest.raises(ShapeError) as error:
        build()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_it_pickles_to_an_equal_value():
    shape = TorchPlateau(mode="max", patience=2, min_lr=(1e-5, 1e-4))
    assert pickle.loads(pickle.dumps(shape)) == shape
    schedule = Schedule(PEAKS, shape, 20, 5, (0.1, 0.2, 0.2))
    assert pickle.loads(pickle.dumps(schedule)).table[0].tolist() == schedule.table[0].tolist()


# --- the preview: `sweeper schedule` ---------------------------------------------------------------


def test_sweeper_schedule_shows_the_schedule_for_an_objective_that_never_improves_and_says_so(capsys, tmp_path):
    args = [
        "schedule",
        f"results_dir={tmp_path}/results",
        "--steps",
        "40",
        "--groups",
        "2",
        "shape=torch_plateau",
        "shape.patience=1",
        "train.epochs=8",
    ]
    assert cli_main([*args, "--json", "--no-plot"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["follows_objective"]["name"] == "accuracy" and document["follows_objective"]["mode"] == "max"
    assert "never improves" in document["follows_objective"]["shown_for"]
    assert document["phases"][0]["shape"]["mode"] == "max"  # as the trainer runs it: train.direction's
    assert document["shape"]["mode"] is None  # as configured
    peaks = document["peaks"]
    wanted = torch_lrs(dict(mode="max", patience=1), [0.5] * 8, 8, peaks=peaks)  # an accuracy that never improves
    assert [[row["lr_0"], row["lr_1"]] for row in document["rows"]] == [wanted[step // 5] for step in range(40)]

    assert cli_main(args) == 0
    table = capsys.readouterr().out
    assert "never improves" in table and "lrs follow accuracy (mode max)" in table
    assert next((tmp_path / "results").glob("schedule-*torch_plateau*.png")).stat().st_size > 0


def test_a_shape_that_follows_no_objective_says_nothing_of_one(capsys):
    assert cli_main(["schedule", "--steps", "10", "--json", "--no-plot", "shape=torch_cosine"]) == 0
    assert json.loads(capsys.readouterr().out)["follows_objective"] is None


# --- the trainer, fused trials and a resume: fed the objectives each epoch records ------------------

SMALL = ["data=synthetic", "data.source.n_samples=300", "train.batch_size=32", "train.threads=1", "train.deterministic=true"]
# accuracy rises by more than 10% after the first epoch (no cut), then less (a cut after every
# epoch, patience 0): unlike the schedule for an objective that never improves, which cuts at once
PLATEAU = ["shape=torch_plateau", "shape.patience=0", "shape.threshold=0.1", "shape.factor=0.5"]


def torch_fed(result, settings: dict, peaks) -> list[list[float]]:
    """What torch's scheduler sets in each epoch of `result`, fed the objectives it recorded;
    checked to differ from the schedule for an objective that never improves (else a trainer that
    fed nothing would pass)."""
    objectives = [epoch.objective for epoch in result.epochs]
    fed = torch_lrs(settings, objectives, len(objectives), peaks=peaks)
    assert fed != shape_of(settings).group_lrs(peaks, len(objectives)), objectives
    return fed


def test_one_trial_sets_the_lrs_torch_sets_fed_the_recorded_objectives(trial_config):
    cfg = trial_config(*SMALL, *PLATEAU, "train.epochs=4", "lr=geometric", "lr.high=1e-2", "lr.low=1e-4")
    trial = prepare(cfg)
    set_before_steps = []
    with before_each_optimizer_step(lambda o: set_before_steps.append([g["lr"] for g in o.param_groups])):
        result = run(trial)
    assert result.status == "finished"
    wanted = torch_fed(result, dict(mode="max", patience=0, threshold=0.1, factor=0.5), trial.peaks)  # accuracy: max
    per_epoch = len(result.steps) // 4
    assert [list(step.lrs) for step in result.steps] == [wanted[step // per_epoch] for step in range(len(result.steps))]
    given = [[lrs[trial.owners.index(group)] for group in range(len(trial.peaks))] for lrs in set_before_steps]
    assert given == [list(step.lrs) for step in result.steps]  # what the optimizer got
    assert wanted[-1] != wanted[0]  # the lr was cut: the test can fail
    ratios = {round(lrs[-1] / lrs[0], 9) for lrs in wanted}
    assert len(ratios) == 1  # every group cut together: the slice is kept


def test_fused_members_each_follow_their_own_objective(trial_config, monkeypatch):
    members = [
        trial_config(*SMALL, *PLATEAU, "train.epochs=3", "lr.high=1e-2"),
        trial_config(*SMALL, *PLATEAU, "train.epochs=3", "lr.high=3e-3", "shape.factor=0.2", "shape.mode=max"),
    ]
    given = []
    step = FusedOptimizer.step
    monkeypatch.setattr(
        FusedOptimizer, "step", lambda self, params, lrs, momenta: (given.append(lrs.tolist()), step(self, params, lrs, momenta))
    )
    fused = prepare_many(members)
    results = run_many(fused)
    settings = [dict(mode="max", patience=0, threshold=0.1, factor=0.5), dict(mode="max", patience=0, threshold=0.1, factor=0.2)]
    per_epoch = len(results[0].steps) // 3
    for index, (result, member) in enumerate(zip(results, fused.members)):
        assert result.status == "finished"
        wanted = torch_fed(result, settings[index], member.schedule.peaks)
        assert [row[index] for row in given] == [wanted[s // per_epoch] for s in range(len(given))]


def test_a_resumed_trial_follows_the_objectives_it_restored(trial_config, tmp_path):
    # objective loss (min), threshold 0: it improves, so no cut; a resume planned for an objective
    # that never improves would cut the lr of the epoch it resumes in
    cfg = trial_config(
        *SMALL,
        "train.epochs=4",
        "shape=torch_plateau",
        "shape.patience=0",
        "shape.threshold=0",
        "train.objective=loss",
        "train.direction=minimize",
    )
    reference = run(prepare(cfg))
    torch_fed(reference, dict(mode="min", patience=0, threshold=0.0), prepare(cfg).peaks)

    class KeepAt(Reporter):  # what a worker killed in epoch 2 leaves: the checkpoint after epoch 1
        def on_step(self, event) -> None:
            if event.epoch == 2 and not kept.exists():
                kept.write_bytes((tmp_path / "trial-0.pt").read_bytes())

    kept = tmp_path / "left.pt"
    run(prepare(cfg), [EpochCheckpoints(tmp_path / "trial-0.pt", announce=lambda line: None), KeepAt()])
    hook = EpochCheckpoints(tmp_path / "trial-1.pt", earlier=[kept], announce=lambda line: None)
    resumed = run(prepare(cfg), [hook])
    assert hook.resumed_from == kept
    assert result_curves(resumed) == result_curves(reference)  # every lr, loss and objective, bitwise


def test_a_config_whose_plateau_cannot_follow_its_direction_is_refused(trial_config):
    cfg = trial_config(*SMALL, "shape=torch_plateau", "train.direction=upwards")
    with pytest.raises((ShapeError, ConfigError), match="train.direction"):
        prepare(cfg)
