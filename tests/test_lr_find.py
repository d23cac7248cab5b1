"""fastai's lr range test: the sweep, the early stop, the restore, and the suggestions."""

from __future__ import annotations

import math

import pytest
import torch

import sweeper.lr_find as lr_find_module
from sweeper.cli import main
from sweeper.config import compose_config
from sweeper.lr_find import lr_find, minimum, steep, valley


@pytest.fixture
def captured_parts(monkeypatch):
    """The model and optimizer lr_find builds, with their state before the test."""
    captured = {}
    real = lr_find_module.build_parts

    def capture(cfg):
        parts = real(cfg)
        captured["parts"] = parts
        captured["model"] = {k: v.clone() for k, v in parts.model.state_dict().items()}
        return parts

    monkeypatch.setattr(lr_find_module, "build_parts", capture)
    return captured


def test_lr_rises_exponentially_and_everything_is_restored(captured_parts):
    result = lr_find(compose_config(["train.batch_size=32"]), start_lr=1e-6, end_lr=1e-2, num_it=30)
    assert len(result.lrs) == 30  # no divergence below 1e-2: all batches run
    for i, lr in enumerate(result.lrs):
        assert math.isclose(lr, 1e-6 * (1e-2 / 1e-6) ** (i / 30), rel_tol=1e-12)
    parts = captured_parts["parts"]
    for name, value in parts.model.state_dict().items():
        assert torch.equal(value, captured_parts["model"][name]), f"{name} was not restored"
    assert parts.optimizer.state_dict()["state"] == {}  # the optimizer is back to untouched
    assert set(result.suggestions) == {"valley", "minimum", "steep"}


def test_stops_once_the_smoothed_loss_passes_four_times_its_best():
    result = lr_find(compose_config(["optimizer=sgd", "train.batch_size=32"]), end_lr=1e4, num_it=100)
    assert len(result.lrs) < 100
    assert result.losses[-1] > 4 * min(result.losses) or not math.isfinite(result.losses[-1])
    assert all(loss <= 4 * min(result.losses[: i + 1]) for i, loss in enumerate(result.losses[:-1]))


def test_smoothing_is_fastai_debiased_moving_average(monkeypatch):
    raw = []
    real = torch.nn.functional.cross_entropy

    def recording(*args, **kwargs):
        loss = real(*args, **kwargs)
        raw.append(loss.item())
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    result = lr_find(compose_config(["train.batch_size=64"]), end_lr=1e-3, num_it=10)
    average = 0.0
    for i, (value, smooth) in enumerate(zip(raw, result.losses)):
        average = average * 0.98 + value * 0.02
        assert math.isclose(smooth, average / (1 - 0.98 ** (i + 1)), rel_tol=1e-12)


LRS = [10.0 ** (k / 2 - 6) for k in range(12)]


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        # minimum: the lowest loss's lr over 10; steep: where the loss falls fastest
        ([5, 5, 4.9, 4, 2, 1.5, 1.4, 1.3, 1.35, 3, 6, 9], {"minimum": LRS[7] / 10, "steep": LRS[3]}),
        ([3, 2.9, 2.8, 1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 2, 8], {"minimum": LRS[9] / 10, "steep": LRS[2]}),
    ],
)
def test_minimum_and_steep(losses, expected):
    assert math.isclose(minimum(LRS, losses), expected["minimum"])
    assert steep(LRS, losses) == expected["steep"]


def test_valley_takes_the_middle_of_the_longest_decline():
    # the longest decreasing run is points 2..9 (8 points); fastai's index: start + 1/3 + 1/6 of it
    losses = [1.0, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.9, 3.0]
    run_end, run_length = 9, 9  # ends at 9; the run counts from point 0 (1.0 > 0.9 ... 0.4)
    start = run_end - run_length
    sections = (run_end - start) / 3
    assert valley(LRS, losses) == LRS[start + int(sections) + int(sections / 2)]
    assert LRS[2] <= valley(LRS, losses) <= LRS[8]  # inside the valley, not at an end


def test_lr_find_command_prints_suggestions_and_writes_the_plot(tmp_path, capsys):
    code = main(["lr-find", "--num-it", "40", f"results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "valley" in out and "minimum" in out and "steep" in out
    assert (tmp_path / "lr_find-mlp-digits.png").stat().st_size > 0
