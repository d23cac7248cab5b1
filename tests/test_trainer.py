"""The trainer: the lr and momentum the optimizer really uses, fine_tune's frozen phase, weight
decay, learning, reproducibility, loss reads, and how trials end (finished, diverged, failed,
pruned) and fail to start (bad settings)."""

from __future__ import annotations

import pytest
import torch
from helpers.played import before_each_optimizer_step
from omegaconf import OmegaConf

from sweeper.config import ConfigError, build_shape
from sweeper.schedules.shapes import FastaiOneCycle, Schedule
from sweeper.schedules.slices import peak_lrs
from sweeper.training.trainer import available_metrics, prepare, run, train
from sweeper.trial.events import Reporter
from sweeper.zoo.data import digits
from sweeper.zoo.models import MLP

SMALL = ("train.epochs=2", "train.batch_size=128")  # 10 batches an epoch on digits


@pytest.fixture
def config(trial_config):
    """The real config, shrunk: two epochs of ten batches."""
    return lambda *overrides: trial_config(*SMALL, *overrides)


class OptimizerSpy:
    """Reads every param group's lr and momentum just before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.momenta: list[list[float]] = []

    def __call__(self, optimizer) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.momenta.append([g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups])


def scheduled(cfg) -> list[tuple[list[float], float | None]]:
    """Every training batch's (lrs, momentum) straight from design.md: fit_one_cycle with the
    configured slice and shape, after fine_tune's frozen fit_one_cycle(slice(2 x head peak),
    pct_start=0.99, **the shape's div_final and moms) when train.freeze_epochs > 0. An SGD
    without momentum keeps it at 0 (None: the optimizer's own)."""
    batches = len(digits().train_y) // cfg.train.batch_size
    peaks = peak_lrs(OmegaConf.to_container(cfg.lr), 3)
    shape = build_shape(cfg.shape)
    schedules = []
    if cfg.train.freeze_epochs:
        frozen_peaks = peak_lrs(slice(2 * peaks[-1]), 3)
        passed_on = {"div_final": shape.div_final, "moms": shape.moms} if isinstance(shape, FastaiOneCycle) else {}
        frozen = FastaiOneCycle(pct_start=0.99, **passed_on)
        schedules.append(Schedule(tuple(frozen_peaks), frozen, cfg.train.freeze_epochs * batches))
    if cfg.train.epochs:
        schedules.append(Schedule(tuple(peaks), shape, cfg.train.epochs * batches, cfg.train.epochs))
    no_momentum = cfg.optimizer.get("momentum") == 0
    return [(lrs, None if no_momentum else momentum) for schedule in schedules for lrs, momentum in map(schedule.at, range(schedule.total))]


@pytest.mark.parametrize(
    ("overrides", "param_groups_per_layer_group"),
    [
        ([], 2),  # fit_one_cycle with AdamW: momentum is beta1; biases in a second, undecayed group
        (["optimizer=sgd", "shape=torch_one_cycle", "lr=fastai"], 2),  # SGD momentum, OneCycleLR
        (["optimizer=adam", "train.wd_bn_bias=true"], 1),  # Adam; one param group per layer group
        (["train.freeze_epochs=1", "shape=fastai_fine_tune"], 2),  # fine_tune: both phases
        # fine_tune's other arguments reach both phases
        (["train.freeze_epochs=1", "shape=fastai_fine_tune", "shape.moms=[0.9,0.8,0.9]", "shape.div_final=1e3"], 2),
        (["train.freeze_epochs=2", "train.epochs=0"], 2),  # the frozen phase alone
        (["shape=warmup_cosine", "lr=explicit", "lr.values=[1e-4,2e-3,5e-3]"], 2),  # momentum left alone
        (["optimizer=sgd", "shape=constant"], 2),  # SGD's own momentum left alone
        (["optimizer=sgd", "shape=constant", "train.freeze_epochs=1"], 2),  # ...not where the frozen phase left it
        (["optimizer=sgd", "optimizer.momentum=0.0", "train.freeze_epochs=1"], 2),  # momentum 0 stays 0
        (["shape=fastai_sgdr", "lr=fastai"], 2),
        (["optimizer=sgd", "shape=torch_cyclic", "shape.step_size_up=3", "shape.mode=triangular2"], 2),  # CyclicLR's momentum
        (["shape=sequential", "shape.milestones=[4]", "shape.shapes.0.total_iters=4"], 2),
        (["train.epochs=3", "shape=torch_step", "shape.step_size=1", "shape.step_per=epoch"], 2),  # a staircase
        (["shape=torch_multistep", "shape.milestones=[5,12]"], 2),
        (["optimizer=sgd", "shape=torch_linear", "shape.start_factor=0.2", "shape.total_iters=8"], 2),  # SGD's own momentum
        (["shape=torch_cosine", "shape.T_max=7", "shape.eta_min=1e-5"], 2),  # past T_max, back up
    ],
    ids=[
        "fit_one_cycle",
        "sgd-torch",
        "adam-one-group",
        "fine_tune",
        "fine_tune-kwargs",
        "frozen-only",
        "warmup_cosine",
        "sgd-constant",
        "fine_tune-constant",
        "sgd-no-momentum",
        "sgdr",
        "sgd-torch_cyclic",
        "sequential",
        "step-per-epoch",
        "torch_multistep",
        "sgd-torch_linear",
        "torch_cosine",
    ],
)
def test_optimizer_uses_exactly_the_scheduled_lr_and_momentum(config, overrides, param_groups_per_layer_group):
    cfg = config(*overrides)
    spy = OptimizerSpy()
    with before_each_optimizer_step(spy):
        result = train(cfg)
    assert result.status == "finished", result.reason
    expected = scheduled(cfg)
    assert len(spy.lrs) == len(expected) == len(result.steps)  # one optimizer step per batch, none more
    own_momentum = cfg.optimizer.betas[0] if "betas" in cfg.optimizer else cfg.optimizer.momentum
    for step, ((lrs, momentum), used_lrs, used_momenta) in enumerate(zip(expected, spy.lrs, spy.momenta)):
        # param groups come in layer-group order, each layer group's with its lr
        assert used_lrs == [lr for lr in lrs for _ in range(param_groups_per_layer_group)], step
        wanted = own_momentum if momentum is None else momentum  # None: the optimizer's own
        assert used_momenta == [wanted] * len(used_momenta), (step, used_momenta, wanted)
        assert list(result.steps[step].lrs) == lrs and result.steps[step].momentum == momentum  # events say the same
    assert [s.step for s in result.steps] == list(range(len(expected)))  # StepEvent.step is global


def test_a_shape_stepped_per_epoch_is_torchs_scheduler_stepped_after_every_epoch(config):
    cfg = config("train.epochs=3", "optimizer=sgd", "shape=torch_cyclic", "shape.step_size_up=1", "shape.step_per=epoch")
    spy = OptimizerSpy()
    with before_each_optimizer_step(spy):
        assert train(cfg).status == "finished"
    peaks = peak_lrs(OmegaConf.to_container(cfg.lr), 3)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": p} for p in peaks]
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=[p * 0.1 for p in peaks], max_lr=peaks, step_size_up=1)
    batches = len(spy.lrs) // 3
    for epoch in range(3):
        for step in range(epoch * batches, (epoch + 1) * batches):
            assert spy.lrs[step][::2] == [g["lr"] for g in optimizer.param_groups], step  # two param groups a layer group
            assert spy.momenta[step][0] == optimizer.param_groups[0]["momentum"], step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(("momentum", "buffers"), [(0.0, False), (0.9, True)])
def test_sgd_without_momentum_keeps_no_momentum_buffers(config, momentum, buffers):
    # as fastai's SGD without momentum, which keeps no average of the gradients
    trial = prepare(config("optimizer=sgd", f"optimizer.momentum={momentum}", "train.epochs=1"))
    assert run(trial).status == "finished"
    assert ({g["momentum"] for g in trial.optimizer.param_groups} == {0.0}) == (momentum == 0)  # else the shape moved it
    kept = [s.get("momentum_buffer") is not None for s in trial.optimizer.state.values()]
    assert (bool(kept) and all(kept)) == buffers


def test_fine_tune_phases_are_named_and_restart_their_schedules(config):
    cfg = config("train.freeze_epochs=1", "train.epochs=1")
    result = train(cfg)
    assert [s.phase for s in result.steps] == ["frozen"] * 10 + ["unfrozen"] * 10
    assert [s.epoch for s in result.steps] == [0] * 10 + [1] * 10
    # each phase starts at its own step 0, at peak / div (fastai_one_cycle's div is 25)
    head_peak = peak_lrs(OmegaConf.to_container(cfg.lr), 3)[-1]
    assert result.steps[0].lrs[-1] == pytest.approx(2 * head_peak / 25)  # frozen: base_lr = 2 x head peak
    assert result.steps[10].lrs[-1] == pytest.approx(head_peak / 25)


def batch_norm_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the weights and biases of the model's batch-norm layers: the test's own reference."""
    return {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters(recurse=False)}


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class SnapshotAfterEpoch(Reporter):
    """The model's parameters after every epoch."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.snapshots = model, []

    def on_epoch(self, event) -> None:
        self.snapshots.append(parameters(self.model))


def test_fine_tune_leaves_frozen_groups_bitwise_unchanged_then_trains_them(config):
    trial = prepare(config("train.freeze_epochs=1", "train.epochs=1"))
    before = parameters(trial.model)
    snapshots = SnapshotAfterEpoch(trial.model)
    assert run(trial, [snapshots]).status == "finished"
    after_frozen, after_unfrozen = snapshots.snapshots
    for name in before:
        if name.startswith("head"):
            assert not torch.equal(before[name], after_frozen[name]), f"the head ({name}) must train while frozen"
        else:
            assert torch.equal(before[name], after_frozen[name]), f"{name} moved in the frozen phase"
            assert not torch.equal(after_frozen[name], after_unfrozen[name]), f"{name} did not train once unfrozen"


@pytest.mark.parametrize("train_bn", [True, False])
def test_norm_layers_of_frozen_groups_train_only_with_train_bn(config, train_bn):
    trial = prepare(config("model=cnn", "train.freeze_epochs=1", "train.epochs=0", f"train.train_bn={train_bn}"))
    norms = batch_norm_parameters(trial.model)
    assert norms, "the CNN's body has batch-norm layers"
    before = parameters(trial.model)
    run(trial)
    for name, param in trial.model.named_parameters():
        if name.startswith("head"):
            continue
        moved = not torch.equal(before[name], param.detach())
        is_norm = id(param) in norms
        assert moved == (train_bn and is_norm), f"{name}: moved={moved}, norm layer={is_norm}, train_bn={train_bn}"


@pytest.mark.parametrize("wd_bn_bias", [False, True])
def test_weight_decay_skips_norm_parameters_and_biases_unless_asked(config, wd_bn_bias):
    trial = prepare(config("model=cnn", f"train.wd_bn_bias={wd_bn_bias}"))
    biases = {id(p) for name, p in trial.model.named_parameters() if name.endswith(".bias")}
    no_decay = batch_norm_parameters(trial.model) | biases
    assert biases and no_decay - biases, "the CNN has batch-norm weights and biases"
    configured = trial.config.optimizer.weight_decay
    for group in trial.optimizer.param_groups:
        for param in group["params"]:
            undecayed = id(param) in no_decay and not wd_bn_bias
            assert group["weight_decay"] == (0.0 if undecayed else configured)
    # every parameter is in exactly one param group, and its layer group's lr is shared
    assert sum(len(g["params"]) for g in trial.optimizer.param_groups) == len(list(trial.model.parameters()))
    layer_group_of = {id(p): index for index, group in enumerate(trial.groups) for _, p in group}
    for group in trial.optimizer.param_groups:
        (owner,) = {layer_group_of[id(p)] for p in group["params"]}  # one layer group per param group
        assert group["lr"] == trial.peaks[owner]


def test_digits_reaches_95_percent_validation_accuracy_on_cpu(trial_config):
    result = train(trial_config("train.device=cpu"))  # the default config: MLP, six epochs
    assert result.status == "finished", result.reason
    assert result.objective >= 0.95, [e.objective for e in result.epochs]
    assert result.objective == result.epochs[-1].metrics["accuracy"]  # the objective is the last epoch's
    assert 0 < result.first_step_seconds < result.seconds


def test_fine_tuning_the_transfer_task_beats_training_the_head_alone(trial_config, tmp_path):
    # The experiment's slice over the pre-trained body against the head trained alone, with the
    # same head peak and as many epochs (1 frozen + 9 against 10 frozen). Measured: about 0.89
    # against 0.54 over three seeds.
    fine_tuned = train(trial_config("experiment=digits_transfer"))
    head_alone = train(trial_config("experiment=digits_transfer", "train.freeze_epochs=10", "train.epochs=0"))
    assert fine_tuned.status == head_alone.status == "finished"
    assert len(fine_tuned.steps) == len(head_alone.steps)
    assert fine_tuned.objective > head_alone.objective + 0.15, (fine_tuned.objective, head_alone.objective)
    assert list((tmp_path / "results" / "cache").glob("digits-body-*.pt")), "the pre-trained body is cached"


def test_two_cpu_runs_give_bitwise_equal_curves_and_the_seed_moves_them(config):
    first = train(config("model=cnn", "train.epochs=1"))
    second = train(config("model=cnn", "train.epochs=1"))
    assert first.steps == second.steps  # every loss, lr and momentum, to the bit
    assert first.epochs == second.epochs
    other_seed = train(config("model=cnn", "train.epochs=1", "train.seed=1"))
    assert [s.loss for s in other_seed.steps] != [s.loss for s in first.steps]


def test_a_plain_dict_config_trains_like_the_composed_one(config):
    cfg = config()
    assert train(OmegaConf.to_container(cfg, resolve=True)).steps == train(cfg).steps


@pytest.mark.parametrize("sync_every", [1, 7, 100])
def test_reading_losses_in_batches_changes_nothing(config, sync_every):
    reference = train(config("train.sync_every=1"))
    result = train(config(f"train.sync_every={sync_every}"))
    assert result.steps == reference.steps and result.epochs == reference.epochs


class CountEvents(Reporter):
    def __init__(self) -> None:
        self.starts, self.steps, self.epochs, self.ends = 0, [], [], []

    def on_start(self, event) -> None:
        self.starts += 1

    def on_step(self, event) -> None:
        self.steps.append(event.step)

    def on_epoch(self, event) -> None:
        self.epochs.append(event.epoch)

    def on_end(self, result) -> None:
        self.ends.append(result.status)


@pytest.mark.parametrize("sync_every", [1, 7])
def test_a_huge_lr_ends_as_diverged_at_its_exact_step_without_raising(config, sync_every):
    heard = CountEvents()
    result = train(config("optimizer=sgd", "lr=single", "lr.high=1e4", f"train.sync_every={sync_every}"), [heard])
    assert result.status == "diverged"
    # the steps before the non-finite loss are reported, the bad one and any after it are not
    assert result.diverged_step == len(result.steps) == len(heard.steps) > 0
    assert f"at step {result.diverged_step}" in result.reason and "loss became" in result.reason
    assert heard.ends == ["diverged"]


def test_the_diverged_step_does_not_depend_on_how_often_losses_are_read(config):
    results = [train(config("optimizer=sgd", "lr=single", "lr.high=1e4", f"train.sync_every={n}")) for n in (1, 3, 16)]
    assert [r.status for r in results] == ["diverged"] * 3
    steps = {r.diverged_step for r in results}
    assert len(steps) == 1 and None not in steps, steps


class RaisingMLP(MLP):
    """Fails in its third forward pass, as a model with a bug would."""

    calls = 0

    def forward(self, x):
        RaisingMLP.calls += 1
        if RaisingMLP.calls == 3:
            raise RuntimeError("shape mismatch somewhere in the model")
        return super().forward(x)


def test_an_exception_in_training_fails_the_trial_with_its_reason(config):
    cfg = config()
    cfg.model.net._target_ = f"{__name__}.RaisingMLP"
    RaisingMLP.calls = 0
    heard = CountEvents()
    result = train(cfg, [heard])
    assert result.status == "failed"
    assert result.reason == "RuntimeError: shape mismatch somewhere in the model"
    assert heard.ends == ["failed"]  # reporters always hear the end


def test_ctrl_c_propagates_and_the_reporters_hear_the_end(config):
    class Interrupt(Reporter):
        def on_step(self, event):
            raise KeyboardInterrupt

    heard = CountEvents()
    with pytest.raises(KeyboardInterrupt):
        train(config("train.sync_every=1"), [Interrupt(), heard])
    assert heard.ends == ["failed"]


def test_a_reporter_can_prune_after_an_epoch_and_every_reporter_hears_it(config):
    class StopAfterFirst(Reporter):
        def on_epoch(self, event):
            return event.epoch == 0

    heard = CountEvents()
    result = train(config("train.epochs=3"), [StopAfterFirst(), heard])
    assert result.status == "pruned"
    assert len(result.epochs) == 1 and heard.epochs == [0] and heard.ends == ["pruned"]
    assert len(result.steps) == 10  # no step of the second epoch ran


def test_the_objective_can_be_the_validation_loss(config):
    assert "loss" in available_metrics(config())
    result = train(config("train.objective=loss"))
    assert result.objective == result.epochs[-1].valid_loss == result.epochs[-1].metrics["loss"]
    assert result.epochs[-1].valid_loss < result.epochs[0].valid_loss  # it learns


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["train.device=cuda"], ["train.device", "no GPU", "train.device=cpu"]),
        (["train.device=cuda:0"], ["train.device", "no GPU"]),
        (["train.device=tpu7"], ["train.device", "not a device"]),
        (["data=tensors", "data.shape=[4]", "data.num_classes=2"], ["data.source.path is not set", "data.source.path="]),
        (
            ["data=tensors", "data.shape=[4]", "data.num_classes=2", "data.source.path=/no/such/file.pt"],
            ["data.source.path", "does not exist"],
        ),
        (["data=image_folder", "data.num_classes=2", "data.source.root=/no/such/folder"], ["data.source.root", "does not exist"]),
        (["train.objective=f1"], ["train.objective", "'f1'", "accuracy"]),
        (["train.epochs=0"], ["train.epochs=0", "trains nothing"]),
        (["train.batch_size=0"], ["train.batch_size", ">= 1"]),
        (["train.sync_every=0"], ["train.sync_every", ">= 1"]),
        (["lr=explicit", "lr.values=[1e-3,1e-3]"], ["2 learning rates", "3 layer groups"]),
        (["lr=geometric", "lr.low=1e-2", "lr.high=1e-4"], ["low > high"]),
        (["shape.pct_start=1.5"], ["shape.pct_start"]),
        (["model.groups=[body.0,nothing,head]"], ["nothing", "matches no parameter"]),
        (["model.groups=[body.0,head]"], ["body.1", "in no group"]),
        (["optimizer._target_=torch.optim.Adagrad", "~optimizer.betas"], ["Adagrad", "momentum", "optimizer=adamw"]),
        (["model.net._target_=builtins.dict"], ["model.net._target_", "built a dict, not a Module"]),
        (["data.source._target_=builtins.dict"], ["data.source._target_", "not a TrialData"]),
    ],
)
def test_bad_settings_raise_before_any_training(config, overrides, fragments):
    if any("cuda" in o for o in overrides) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    heard = CountEvents()
    with pytest.raises(ValueError) as error:  # ConfigError, SliceError, ShapeError, GroupError
        train(config(*overrides), [heard])
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    assert heard.starts == 0 and heard.ends == []  # nothing started


def test_cuda_without_a_gpu_is_a_config_error(config):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="train.device=auto"):
        prepare(config("train.device=cuda"))


def test_tensors_from_a_file_train(config, tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=generator)
    y = (x[:, 0] > 0).long()
    torch.save({"x": x, "y": y}, tmp_path / "set.pt")
    cfg = config(
        "data=tensors",
        "data.shape=[6]",
        "data.num_classes=2",
        f"data.source.path={tmp_path / 'set.pt'}",
        "train.batch_size=32",
        "train.epochs=6",
        "lr=single",
        "lr.high=1e-2",
    )
    result = train(cfg)
    assert result.status == "finished" and result.objective > 0.8  # a linearly separable task is learned
