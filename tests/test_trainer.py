"""The trainer: the lr and momentum it really uses, fine_tune's frozen phase, learning,
reproducibility, and how trials end (finished, diverged, failed, pruned)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sweeper.config import ConfigError, build_shape, compose_config
from sweeper.events import Reporter
from sweeper.models import MLP
from sweeper.shapes import FastaiOneCycle, Schedule
from sweeper.slices import parse_lr, peak_lrs
from sweeper.trainer import plan_phases, train

SMALL = ["train.epochs=2", "train.batch_size=128"]


def config(*overrides: str, results_dir=None):
    extra = [f"results_dir={results_dir}"] if results_dir else []
    return compose_config([*SMALL, *overrides, *extra])


class OptimizerSpy:
    """Records, after every optimizer step, each param group's lr and momentum and the params."""

    def __init__(self, keep_params: bool = False) -> None:
        self.lrs: list[list[float]] = []
        self.momenta: list[list[float]] = []
        self.params: list[list[torch.Tensor]] = []
        self.keep_params = keep_params

    def __enter__(self) -> OptimizerSpy:
        self.handle = register_optimizer_step_pre_hook(self._record)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _record(self, optimizer, args, kwargs) -> None:
        groups = optimizer.param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.momenta.append([g["betas"][0] if "betas" in g else g["momentum"] for g in groups])
        if self.keep_params:
            self.params.append([p.detach().clone() for g in groups for p in g["params"]])


def expected_rows(cfg, n_groups: int = 3) -> list[tuple[list[float], float]]:
    """Every training batch's (lrs, momentum) from the schedules, as `sweeper schedule` prints them."""
    data = OmegaConf.to_container(cfg.data.source)
    n_train = {"sweeper.data.digits": 1797 - round(1797 * data.get("val_fraction", 0.25))}[data["_target_"]]
    peaks = parse_lr(OmegaConf.to_container(cfg.lr)).peaks(n_groups)
    phases = plan_phases(cfg.train, peaks, build_shape(cfg.shape), n_train // cfg.train.batch_size)
    return [phase.schedule.at(step) for phase in phases for step in range(phase.schedule.total)]


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # fit_one_cycle, AdamW: momentum is beta1
        ["optimizer=sgd", "shape=torch_one_cycle", "lr=fastai"],  # SGD momentum, OneCycleLR's shape
        ["train.freeze_epochs=1", "shape=fastai_fine_tune"],  # fine_tune: both phases
        ["shape=warmup_cosine", "lr=explicit", "lr.values=[1e-4,2e-3,5e-3]"],  # momentum left alone
    ],
    ids=["fit_one_cycle", "sgd-torch", "fine_tune", "no-momentum-shape"],
)
def test_optimizer_uses_exactly_the_scheduled_lr_and_momentum(overrides):
    cfg = config(*overrides)
    with OptimizerSpy() as spy:
        result = train(cfg)
    assert result.status == "finished", result.reason
    expected = expected_rows(cfg)
    assert len(spy.lrs) == len(expected) == len(result.steps)  # one optimizer step per batch
    initial_momentum = spy.momenta[0][0]
    for step, ((lrs, momentum), used_lrs, used_momenta) in enumerate(zip(expected, spy.lrs, spy.momenta)):
        # two param groups per layer group (decayed, then biases without decay), in group order
        assert used_lrs == [lr for lr in lrs for _ in range(2)], step
        want = initial_momentum if momentum is None else momentum
        assert all(m == want for m in used_momenta), (step, used_momenta, want)
        assert list(result.steps[step].lrs) == lrs  # and the step events say the same


def test_fine_tune_leaves_frozen_groups_untouched_then_trains_them():
    cfg = config("train.freeze_epochs=1", "train.epochs=1")
    with OptimizerSpy(keep_params=True) as spy:
        result = train(cfg)
    frozen_steps = [s.step for s in result.steps if s.phase == "frozen"]
    assert frozen_steps and len(frozen_steps) < len(result.steps)
    first, end_of_frozen, last = spy.params[0], spy.params[len(frozen_steps)], spy.params[-1]
    body = range(0, 4)  # layer groups 0 and 1: weight and bias each
    head = range(4, 6)
    for i in body:
        assert torch.equal(first[i], end_of_frozen[i]), f"frozen parameter {i} moved"
        assert not torch.equal(end_of_frozen[i], last[i]), f"parameter {i} did not train once unfrozen"
    for i in head:
        assert not torch.equal(first[i], end_of_frozen[i]), "the head must train while the body is frozen"
    # the frozen phase is fastai's fit_one_cycle(slice(base_lr), pct_start=0.99), base_lr = 2 x head peak
    head_peak = parse_lr(OmegaConf.to_container(cfg.lr)).peaks(3)[-1]
    frozen = Schedule(tuple(peak_lrs(slice(2 * head_peak), 3)), FastaiOneCycle(pct_start=0.99), len(frozen_steps))
    assert [list(s.lrs) for s in result.steps[: len(frozen_steps)]] == [frozen.at(k)[0] for k in range(len(frozen_steps))]


def test_digits_reaches_95_percent_validation_accuracy_on_cpu():
    result = train(compose_config(["train.device=cpu"]))  # the default config, as the README runs it
    assert result.status == "finished"
    assert result.objective >= 0.95, [e.objective for e in result.epochs]
    assert result.objective == result.epochs[-1].metrics["accuracy"]


def test_fine_tuning_the_transfer_task_beats_training_the_head_alone(tmp_path):
    common = ["experiment=digits_transfer", "lr=single", "lr.high=1e-2", f"results_dir={tmp_path}"]
    fine_tuned = train(compose_config(common))
    # the head alone: seven frozen epochs (one unfrozen epoch follows; read the frozen phase's end)
    head_only = train(compose_config([*common, "train.freeze_epochs=7", "train.epochs=1"]))
    head_accuracy = head_only.epochs[6].objective
    assert fine_tuned.objective > head_accuracy + 0.1, (fine_tuned.objective, head_accuracy)
    assert list(tmp_path.glob("cache/digits-body-*.pt")), "the pre-trained body is cached on disk"


def test_two_cpu_runs_give_bitwise_equal_curves(tmp_path):
    first = train(config("model=cnn", "train.epochs=1"))
    second = train(config("model=cnn", "train.epochs=1"))
    assert first.steps == second.steps  # every loss, lr and momentum, to the bit
    assert first.epochs == second.epochs
    other_seed = train(config("model=cnn", "train.epochs=1", "train.seed=1"))
    assert other_seed.steps != first.steps  # the seed does move the curves


def test_a_huge_lr_ends_as_diverged_at_its_step_without_raising():
    result = train(config("optimizer=sgd", "lr=single", "lr.high=1e4"))
    assert result.status == "diverged"
    assert result.diverged_step == len(result.steps)  # the bad step itself is not taken
    assert "loss became" in result.reason and f"step {result.diverged_step}" in result.reason


class RaisingMLP(MLP):
    """Fails in its third forward pass, as a model with a bug would."""

    calls = 0

    def forward(self, x):
        RaisingMLP.calls += 1
        if RaisingMLP.calls == 3:
            raise RuntimeError("shape mismatch somewhere in the model")
        return super().forward(x)


def test_an_exception_in_training_fails_the_trial_with_its_reason():
    cfg = config()
    cfg.model.net._target_ = "tests.test_trainer.RaisingMLP"
    ended = []

    class Ends(Reporter):
        def on_end(self, result):
            ended.append(result.status)

    result = train(cfg, [Ends()])
    assert result.status == "failed"
    assert result.reason == "RuntimeError: shape mismatch somewhere in the model"
    assert ended == ["failed"]  # reporters always hear the end


def test_a_reporter_can_prune_after_an_epoch():
    class StopAfterFirst(Reporter):
        def on_epoch(self, event):
            return event.epoch == 0

    heard = []

    class Listener(Reporter):
        def on_epoch(self, event):
            heard.append(event.epoch)

    result = train(config("train.epochs=3"), [StopAfterFirst(), Listener()])
    assert result.status == "pruned"
    assert len(result.epochs) == 1 and heard == [0]  # every reporter heard the epoch


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["train.device=cuda"], ["train.device", "no GPU", "train.device=cpu"]),
        (["train.device=tpu7"], ["train.device", "not a device"]),
        (["data=tensors", "data.shape=[4]", "data.num_classes=2", "data.source.path=/no/such/file.pt"], ["data.source.path", "does not exist"]),
        (["train.objective=f1"], ["train.objective", "accuracy"]),
        (["train.epochs=0"], ["train.epochs"]),
        (["lr=explicit", "lr.values=[1e-3,1e-3]"], ["2 learning rates", "3 layer groups"]),
        (["model.groups=[body.0,nothing,head]"], ["nothing", "matches no parameter"]),
        (["model.groups=[body,body.0,head]"], ["more than one prefix"]),
        (["model.groups=[body.0,head]"], ["body.1", "in no group"]),
    ],
)
def test_bad_settings_raise_before_training(overrides, fragments):
    if "train.device=cuda" in overrides and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    steps = []

    class Steps(Reporter):
        def on_step(self, event):
            steps.append(event)

    with pytest.raises(ValueError) as error:
        train(config(*overrides), [Steps()])
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    assert steps == []


def test_tensor_file_data_trains(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=generator)
    y = (x[:, 0] > 0).long()
    torch.save({"x": x, "y": y}, tmp_path / "set.pt")
    result = train(config("data=tensors", "data.shape=[6]", "data.num_classes=2", f"data.source.path={tmp_path / 'set.pt'}", "train.batch_size=32", "train.epochs=6", "lr=single", "lr.high=1e-2"))
    assert result.status == "finished" and result.objective > 0.8  # a linearly separable task is learned
