"""fastai's lr range test: the sweep, the early stop, the restore, the smoothing, the
suggestions and the command; curves and suggestions against fastai 2.8.12's own
(tests/data/fastai_parity.json, made by scripts/fastai_reference.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.played import before_each_optimizer_step

from sweeper.cli import main
from sweeper.training import lr_find as lr_find_module
from sweeper.training.lr_find import SUGGESTIONS, lr_find, minimum, range_test, steep, suggest, valley

FASTAI = json.loads((Path(__file__).parent / "data" / "fastai_parity.json").read_text())


@pytest.fixture
def prepared(monkeypatch):
    """The trial lr_find prepares, with its model's parameters and requires_grad before the test."""
    seen = {}
    real = lr_find_module.prepare

    def spy(cfg):
        trial = real(cfg)
        seen["trial"] = trial
        seen["params"] = {k: v.detach().clone() for k, v in trial.model.state_dict().items()}
        seen["requires_grad"] = [p.requires_grad for p in trial.model.parameters()]
        return trial

    monkeypatch.setattr(lr_find_module, "prepare", spy)
    return seen


def test_lr_rises_exponentially_for_every_group_and_everything_is_restored(trial_config, prepared):
    lrs_used = []
    with before_each_optimizer_step(lambda opt: lrs_used.append({g["lr"] for g in opt.param_groups})):
        result = lr_find(trial_config("train.batch_size=32"), start_lr=1e-6, end_lr=1e-2, num_it=30)
    assert len(result.lrs) == 30  # no divergence below 1e-2: every batch runs
    for i, lr in enumerate(result.lrs):
        assert math.isclose(lr, 1e-6 * (1e-2 / 1e-6) ** (i / 30), rel_tol=1e-12), i
    assert lrs_used == [{lr} for lr in result.lrs]  # one lr for all groups, as fastai sets it
    trial = prepared["trial"]
    for name, value in trial.model.state_dict().items():
        assert torch.equal(value, prepared["params"][name]), f"{name} was not restored"
    assert trial.optimizer.state_dict()["state"] == {}  # the optimizer is back to untouched
    assert set(result.suggestions) == {"valley", "minimum", "steep"}


@pytest.mark.parametrize(
    "lr, ratios",
    [
        (["lr=fastai"], [0.1, 0.1, 1.0]),  # slice(hi): hi/10 below the head
        (["lr=geometric", "lr.high=1e-2", "lr.low=1e-4"], [0.01, 0.1, 1.0]),  # geometric from low to high
        (["lr=single"], [1.0, 1.0, 1.0]),
    ],
)
def test_follow_slice_ramps_every_group_in_the_slices_proportions(trial_config, prepared, lr, ratios):
    lrs_used = []
    with before_each_optimizer_step(lambda opt: lrs_used.append([g["lr"] for g in opt.param_groups])):
        result = lr_find(trial_config(*lr, "train.batch_size=32"), start_lr=1e-6, end_lr=1e-2, num_it=8, follow_slice=True)
    owners = prepared["trial"].owners  # the layer group of each param group (the mlp has three)
    for head_lr, used in zip(result.lrs, lrs_used, strict=True):
        assert used == pytest.approx([head_lr * ratios[owner] for owner in owners], rel=1e-12)


def test_a_fine_tune_config_is_tested_frozen_and_unfrozen_after(trial_config, prepared):
    moved = []
    with before_each_optimizer_step(lambda opt: moved.append([p.grad is not None for g in opt.param_groups for p in g["params"]])):
        lr_find(trial_config("train.freeze_epochs=1", "train.batch_size=64"), end_lr=1e-3, num_it=10)
    trial = prepared["trial"]
    head = {id(p) for _, p in trial.groups[-1]}
    with_grad = [id(p) for g in trial.optimizer.param_groups for p in g["params"]]
    assert len(moved) == 10  # one optimizer step a batch of the test
    for step in moved:  # only the head has gradients while frozen
        assert {pid for pid, has in zip(with_grad, step) if has} == head
    assert all(p.requires_grad for p in trial.model.parameters())  # unfrozen afterwards


def test_stops_once_the_smoothed_loss_passes_four_times_its_best(trial_config):
    result = lr_find(trial_config("optimizer=sgd", "train.batch_size=32"), end_lr=1e4, num_it=100)
    assert len(result.lrs) < 100
    assert result.losses[-1] > 4 * min(result.losses)
    assert all(loss <= 4 * min(result.losses[: i + 1]) for i, loss in enumerate(result.losses[:-1]))


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("case", FASTAI["lr_find"], ids=lambda c: c["name"])
def test_curve_and_suggestions_are_fastais_to_the_bit(case):
    # The raw losses fastai's loss function returned, fed to the same loop: every lr, every
    # smoothed loss, where the test stops and every suggestion equal fastai's exactly.
    # stop_div=False runs every batch, as fastai's; slide is missing where fastai raises.
    raw = iter(case["raw_losses"])
    stop_div = case.get("stop_div", True)
    lrs, losses = range_test(lambda lr: torch.tensor(next(raw)), case["start_lr"], case["end_lr"], case["num_it"], stop_div)
    assert lrs == case["lrs"]  # as many batches as fastai ran: all of them past a NaN
    assert len(losses) == len(case["losses"]) and all(map(same, losses, case["losses"])), case["name"]
    assert suggest(lrs, losses, case["num_it"], tuple(SUGGESTIONS)) == case["suggestions"]


def test_a_nan_does_not_stop_the_test_and_cuts_the_suggestions(trial_config):
    # fastai's LRFinder stops at 4x the best smoothed loss, which a NaN never exceeds: every
    # batch runs, and the suggestions come from the points before the first NaN.
    calls = 0
    real = torch.nn.functional.cross_entropy

    def turns_nan(*args, **kwargs):
        nonlocal calls
        calls += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls > 25 else loss

    cfg = trial_config("train.batch_size=64")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "cross_entropy", turns_nan)
        result = lr_find(cfg, end_lr=1e-2, num_it=40)
    assert len(result.lrs) == 40 == calls
    assert all(math.isnan(loss) for loss in result.losses[25:]) and not any(map(math.isnan, result.losses[:25]))
    # points 4..24: the first num_it // 10 skipped, the NaN and all after it dropped
    assert result.suggestions == suggest(result.lrs[:30], result.losses[:30], 40)
    assert result.suggestions["minimum"] == float(np.float32(result.lrs[4 + int(np.argmin(result.losses[4:25]))])) / 10


def test_smoothing_is_fastais_debiased_moving_average(trial_config, monkeypatch):
    raw = []
    real = torch.nn.functional.cross_entropy

    def recording(*args, **kwargs):
        loss = real(*args, **kwargs)
        raw.append(loss.item())
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    result = lr_find(trial_config("train.batch_size=64"), end_lr=1e-3, num_it=10)
    average = 0.0
    for i, (value, smooth) in enumerate(zip(raw, result.losses)):
        average = average * 0.98 + value * 0.02
        # float32, as fastai's AvgSmoothLoss (its very arithmetic: the parity test above)
        assert math.isclose(smooth, average / (1 - 0.98 ** (i + 1)), rel_tol=1e-5), i
        assert smooth == float(np.float32(smooth))


LRS = [10.0 ** (k / 2 - 6) for k in range(12)]  # 1e-6 .. 10**-0.5, half a decade apart
F32 = [float(np.float32(lr)) for lr in LRS]  # fastai suggests from float32 tensors of the lrs


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        # the lowest loss is at 7; the biggest fall per step is from 3 to 4 (4 -> 2)
        ([5, 5, 4.9, 4, 2, 1.5, 1.4, 1.3, 1.35, 3, 6, 9], {"minimum": LRS[7] / 10, "steep": LRS[3]}),
        # the lowest loss is at 9; the biggest fall is from 2 to 3 (2.8 -> 1)
        ([3, 2.9, 2.8, 1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 2, 8], {"minimum": LRS[9] / 10, "steep": LRS[2]}),
        # equal minima: the first, as torch's argmin; the biggest fall is from 1 to 2
        ([4, 3.5, 2, 1, 1, 2, 1, 1, 3, 4, 5, 6], {"minimum": LRS[3] / 10, "steep": LRS[1]}),
    ],
)
def test_minimum_and_steep(losses, expected):
    assert math.isclose(minimum(LRS, losses), expected["minimum"], rel_tol=1e-7)
    assert steep(LRS, losses) == float(np.float32(expected["steep"]))


@pytest.mark.parametrize(
    ("losses", "index"),
    [
        # one long decline 0..9 (10 points): fastai's max_start is 9 - 10 = -1, so the index is
        # -1 + int(10 / 3) + int(10 / 6) = 3
        ([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.9, 3.0], 3),
        # a bump at 1: the longest decreasing sequence skips it (0, 2..9: 9 points), so
        # max_start = 9 - 9 = 0 and the index is 0 + int(9 / 3) + int(9 / 6) = 4
        ([1.0, 1.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.9, 3.0], 4),
        # a short decline (0..2), a rise, then a longer one (3..10: 8 points): max_start is
        # 10 - 8 = 2 and the index 2 + int(8 / 3) + int(8 / 6) = 5
        ([1.0, 0.9, 0.8, 2.0, 1.9, 1.6, 1.4, 1.2, 1.0, 0.85, 0.82, 4.0], 5),
    ],
)
def test_valley_is_fastais_longest_valley(losses, index):
    assert valley(LRS, losses) == F32[index]


def test_suggestions_compare_float32_losses_as_fastai_does():
    # 1 + 1e-9 and 1 are one float32: no valley between them; in float64 there is one
    losses = [1.0 + 1e-9 * (12 - k) for k in range(12)]
    assert valley(LRS, losses) == F32[0]
    assert minimum(LRS, losses) == F32[0] / 10  # a tie: the first, as torch's argmin


def test_suggestions_skip_the_ends_and_stop_at_a_nan():
    lrs = [10.0 ** (i / 10 - 7) for i in range(40)]
    losses = [3.0 - 0.05 * i for i in range(40)]
    losses[20] = math.nan
    kept = suggest(lrs, losses, num_it=40)
    # points 4..19 remain (num_it // 10 skipped at the start, the NaN and all after it dropped)
    assert kept["minimum"] == float(np.float32(lrs[19])) / 10
    assert suggest(lrs[:8], losses[:8], num_it=40) == {}  # too few points: no suggestion


def test_lr_find_command_prints_suggestions_and_writes_the_plot(tmp_path, capsys):
    code = main(["lr-find", "--num-it", "40", f"results_dir={tmp_path}", "tracking=none"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("valley", "minimum", "steep"):
        assert name in out
    assert (tmp_path / "lr_find-mlp-digits.png").stat().st_size > 0


def test_lr_find_command_rejects_a_bad_range(tmp_path, capsys):
    assert main(["lr-find", "--start-lr", "1", "--end-lr", "0.1", f"results_dir={tmp_path}"]) == 2
    assert "start_lr" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_lr_find_command_takes_fastais_options(tmp_path, capsys):
    # fastai's lr_find(start_lr, end_lr, num_it, stop_div, suggest_funcs), as options
    args = ["--start-lr", "1e-5", "--end-lr", "1e3", "--num-it", "30", "--no-stop-div", "--suggest", "slide,minimum"]
    code = main(["lr-find", *args, f"results_dir={tmp_path}", "tracking=none"])
    out = capsys.readouterr().out
    assert code == 0
    assert "over 30 batches" in out  # no stop on divergence: every batch ran (an lr of 1e3 diverges)
    assert "slide" in out and "minimum" in out and "valley" not in out


def test_lr_find_without_stop_div_runs_every_batch_past_divergence(trial_config):
    cfg = trial_config("train.batch_size=128")
    stopped = lr_find(cfg, start_lr=1e-3, end_lr=1e4, num_it=40)
    every = lr_find(cfg, start_lr=1e-3, end_lr=1e4, num_it=40, stop_div=False, suggestions=("valley", "slide"))
    assert len(stopped.lrs) < 40 == len(every.lrs)
    assert every.lrs[: len(stopped.lrs)] == stopped.lrs
    assert set(every.suggestions) <= {"valley", "slide"} and "valley" in every.suggestions


def test_an_unknown_suggestion_is_one_line_naming_the_choices(tmp_path, capsys):
    assert main(["lr-find", "--suggest", "valley,fastest", f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "--suggest" in err and "fastest" in err and "slide" in err
    assert not any(tmp_path.iterdir())  # nothing written
