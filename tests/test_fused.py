"""Fused trials: each member of a fused run trains as the one-trial trainer trains its config
alone (same seed), its optimizer steps as torch.optim's own, it stops alone, and configs that
cannot share a batch are refused.

Tolerance: float reassociation only. The stack's batched matmuls and convolutions sum in another
order than the single model's, and the fused optimizer applies per-member float32 scalars where
torch uses Python floats: a few float32 ulps a step. Measured over these 20-30 steps: at most
2e-7 relative on the MLP's losses, 5e-6 on the CNN's (batch norm amplifies), 1e-4 absolute on a
validation loss. RTOL (1e-4) leaves a wide margin over that and is still far below any real
difference: another lr or shape moves these losses by 1e-2 or more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.played import before_each_optimizer_step
from test_trainer import OptimizerSpy  # reads torch's param groups before each step

from sweeper.config import ConfigError
from sweeper.training.fused import FusedOptimizer, ParamSlot, prepare_many, run_many, train_many, why_not_fused
from sweeper.training.saved_models import MODEL_ARTIFACT, ModelKeeper, read_state_dict
from sweeper.training.trainer import prepare, run, train
from sweeper.trial.events import Reporter

SMALL = ("train.epochs=2", "train.batch_size=128")  # 10 batches an epoch on digits
RTOL = 1e-4
# members differ in what a fused step takes per member: the slice, the shape, weight decay, momentum
MEMBERS = (
    ["lr.high=1e-2"],
    ["lr=single", "lr.high=3e-3", "shape=warmup_cosine"],
    ["optimizer.weight_decay=0.1", "shape=constant"],
    ["shape=torch_cyclic", "shape.step_size_up=1", "shape.step_per=epoch"],  # torch's CyclicLR (its momentum), once an epoch
)
# torch's step-counting shapes, each with a change inside the 20 batches
TORCH_MEMBERS = (
    ["shape=torch_multistep", "shape.milestones=[5,12]"],
    ["shape=torch_linear", "shape.start_factor=0.2", "shape.total_iters=8"],
    ["shape=torch_cosine", "shape.T_max=7", "shape.eta_min=1e-5"],  # past T_max, back up
)


@pytest.fixture
def config(trial_config):
    return lambda *overrides: trial_config(*SMALL, *overrides)


def assert_same_curves(fused, alone) -> None:
    assert fused.status == alone.status == "finished", (fused.reason, alone.reason)
    assert [s.step for s in fused.steps] == [s.step for s in alone.steps]
    assert [(s.lrs, s.momentum, s.phase, s.epoch) for s in fused.steps] == [(s.lrs, s.momentum, s.phase, s.epoch) for s in alone.steps]
    np.testing.assert_allclose(fused.curve("loss"), alone.curve("loss"), rtol=RTOL)
    np.testing.assert_allclose(fused.curve("valid_loss"), alone.curve("valid_loss"), rtol=RTOL)
    np.testing.assert_allclose(fused.curve("train_loss"), alone.curve("train_loss"), rtol=RTOL)
    # accuracy counts whole validation images: one whose two best logits tie within the tolerance may flip
    n_valid = 450
    np.testing.assert_allclose(fused.curve("accuracy"), alone.curve("accuracy"), atol=1.5 / n_valid)


class FusedSpy:
    """Reads the lrs [member, group] and momenta [member] the fused optimizer gets at every step."""

    def __init__(self, monkeypatch) -> None:
        self.lrs, self.momenta = [], []
        step = FusedOptimizer.step

        def spy(optimizer, params, lrs, momenta):
            self.lrs.append(lrs.copy())
            self.momenta.append(momenta.copy())
            return step(optimizer, params, lrs, momenta)

        monkeypatch.setattr(FusedOptimizer, "step", spy)


@pytest.mark.parametrize(
    ("shared", "members"),
    [
        ([], MEMBERS),  # MLP, AdamW, fit_one_cycle
        (["optimizer=sgd", "train.freeze_epochs=1", "shape=fastai_fine_tune"], MEMBERS),  # MLP, SGD, fine_tune
        (
            ["model=cnn", "model.net.channels=[8,16]", "train.epochs=1", "train.freeze_epochs=1"],
            MEMBERS,
        ),  # CNN (batch norm), AdamW, fine_tune
        (["model=cnn", "model.net.channels=[8,16]", "optimizer=sgd", "train.epochs=1"], MEMBERS),  # CNN, SGD, fit_one_cycle
        (["optimizer=sgd"], TORCH_MEMBERS),  # MLP, SGD (its own momentum), torch's shapes
    ],
    ids=["mlp-adamw-one_cycle", "mlp-sgd-fine_tune", "cnn-adamw-fine_tune", "cnn-sgd-one_cycle", "mlp-sgd-torch_shapes"],
)
def test_each_member_trains_as_the_one_trial_trainer_with_the_lrs_it_uses(config, shared, members, monkeypatch):
    cfgs = [config(*shared, *own) for own in members]
    fused_spy = FusedSpy(monkeypatch)
    fused = train_many(cfgs)
    for member, (cfg, result) in enumerate(zip(cfgs, fused)):
        torch_spy = OptimizerSpy()
        trial = prepare(cfg)
        with before_each_optimizer_step(torch_spy):
            alone = run(trial)
        assert_same_curves(result, alone)
        # the lr of every layer group and the momentum this member's rows of the stack stepped with
        # are those the one-trial trainer's torch optimizer read from its param groups
        assert len(fused_spy.lrs) == len(torch_spy.lrs)
        for step, (fused_lrs, torch_lrs) in enumerate(zip(fused_spy.lrs, torch_spy.lrs)):
            assert [fused_lrs[member][owner] for owner in trial.owners] == torch_lrs, step
        for step, (fused_momenta, torch_momenta) in enumerate(zip(fused_spy.momenta, torch_spy.momenta)):
            assert [fused_momenta[member]] * len(torch_momenta) == torch_momenta, step


class AttachedFiles:
    """What a recorder is given to attach (tracking.save_model's weights among them)."""

    def __init__(self) -> None:
        self.files, self.tags = {}, {}

    def attach(self, name, data):
        self.files[name] = data

    def queue_tags(self, tags):
        self.tags.update(tags)


def test_each_finished_member_keeps_its_own_weights(config, tmp_path):
    cfgs = [config(*own) for own in MEMBERS]
    recorders = [AttachedFiles() for _ in cfgs]
    train_many(cfgs, [[ModelKeeper(recorder)] for recorder in recorders])
    for cfg, recorder in zip(cfgs, recorders):
        (tmp_path / "model.pt").write_bytes(recorder.files[MODEL_ARTIFACT])
        kept = read_state_dict(tmp_path / "model.pt", "the kept weights")
        trial = prepare(cfg)
        run(trial)  # the same trial alone: its weights at the end
        alone = trial.model.state_dict()
        assert kept.keys() == alone.keys()
        for name, tensor in alone.items():
            torch.testing.assert_close(kept[name], tensor, rtol=RTOL, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("optimizer_class", "settings"),
    [
        (torch.optim.AdamW, {"betas": (0.9, 0.99), "eps": 1e-5}),
        (torch.optim.Adam, {"betas": (0.9, 0.99), "eps": 1e-8}),
        (torch.optim.SGD, {}),
    ],
)
def test_fused_optimizer_steps_every_member_as_torch_optim(optimizer_class, settings):
    # three members, two param groups (the second without weight decay), lr, momentum and weight
    # decay different per member and changing every step; one member with SGD momentum 0
    torch.manual_seed(0)
    members, steps = 3, 6
    shapes = {"w": (5, 4), "b": (4,)}
    start = {name: torch.randn(members, *shape) for name, shape in shapes.items()}
    grads = [{name: torch.randn(members, *shape) for name, shape in shapes.items()} for _ in range(steps)]
    lrs = np.random.default_rng(0).uniform(1e-3, 1e-1, size=(steps, members, 2))
    momenta = np.random.default_rng(1).uniform(0.8, 0.95, size=(steps, members))
    if optimizer_class is torch.optim.SGD:
        momenta[:, 2] = 0.0
    decay = np.array([0.01, 0.1, 0.0])
    kind = "sgd" if optimizer_class is torch.optim.SGD else "adam"
    slots = [ParamSlot("w", 0, decay.copy(), False), ParamSlot("b", 1, np.zeros(members), False)]
    fused = FusedOptimizer(kind, slots, optimizer_class([torch.zeros(1)], lr=0.1, **settings).defaults)
    stacked = {name: value.clone().requires_grad_() for name, value in start.items()}
    for step in range(steps):
        for name in stacked:
            stacked[name].grad = grads[step][name]
        fused.step(stacked, lrs[step], momenta[step])

    for member in range(members):
        own = {name: value[member].clone().requires_grad_() for name, value in start.items()}
        momentum_key = {"momentum": float(momenta[0, member])} if kind == "sgd" else {}
        reference = optimizer_class(
            [{"params": [own["w"]], "weight_decay": float(decay[member])}, {"params": [own["b"]], "weight_decay": 0.0}],
            lr=0.1, **settings, **momentum_key,
        )  # fmt: skip
        for step in range(steps):
            for index, group in enumerate(reference.param_groups):
                group["lr"] = float(lrs[step, member, index])
                if kind == "sgd":
                    group["momentum"] = float(momenta[step, member])
                else:
                    group["betas"] = (float(momenta[step, member]), group["betas"][1])
            for name in own:
                own[name].grad = grads[step][name][member].clone()
            reference.step()
        for name in own:
            torch.testing.assert_close(stacked[name][member].detach(), own[name].detach(), rtol=1e-6, atol=1e-7)


class StopAfterFirstEpoch(Reporter):
    def on_epoch(self, event) -> bool:
        return True


class BreaksAtStep(Reporter):
    def on_step(self, event) -> None:
        if event.step == 3:
            raise RuntimeError("this listener broke")


class Ended(Reporter):
    def __init__(self) -> None:
        self.results = []

    def on_end(self, result) -> None:
        self.results.append(result)


def test_members_stop_alone_and_the_others_train_on_unchanged(config):
    cfgs = [config(*own) for own in MEMBERS[:3]] + [config("lr=single", "lr.high=1e6")]  # the last one diverges
    ended = [Ended() for _ in cfgs]
    reporters = [[ended[0]], [StopAfterFirstEpoch(), ended[1]], [BreaksAtStep(), ended[2]], [ended[3]]]
    results = run_many(prepare_many(cfgs, reporters))
    assert [r.status for r in results] == ["finished", "pruned", "failed", "diverged"]
    assert len(results[1].epochs) == 1 and "after epoch 0" in results[1].reason
    assert "this listener broke" in results[2].reason and len(results[2].steps) == 4
    assert results[3].diverged_step is not None and "loss became" in results[3].reason
    assert all(e.results == [r] for e, r in zip(ended, results))  # each heard its own end, once
    assert_same_curves(results[0], train(cfgs[0]))  # dropping the others changed nothing for it


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (["train.batch_size=64"], "train.batch_size"),
        (["model=cnn"], "model"),
        (["train.freeze_epochs=1"], "train.freeze_epochs"),
        (["train.epochs=3"], "train.epochs"),
        (["train.seed=1"], "train.seed"),
        (["data=synthetic"], "data"),
    ],
)
def test_configs_that_cannot_share_a_batch_are_refused_with_the_setting_named(config, other, named):
    cfgs = [config(), config("lr.high=1e-2", "shape=constant"), config(*other)]
    assert why_not_fused(cfgs[:2]) is None
    refusal = why_not_fused(cfgs)
    assert f"trial 2 differs from trial 0 in {named}" in refusal
    with pytest.raises(ConfigError, match=f"sweep.fuse: trial 2 differs from trial 0 in {named}"):
        prepare_many(cfgs)


def test_an_optimizer_without_a_fused_step_is_refused(config):
    refusal = why_not_fused([config("optimizer._target_=torch.optim.RMSprop", "~optimizer.betas")])
    assert refusal is not None and "torch.optim.RMSprop has no fused step" in refusal


# --- a sweep with sweep.fuse ------------------------------------------------------------------------

# One worker, six trials: a fused run of 4, then one of 2. pruner=none: every trial trains to its end,
# so each can be checked against the one-trial trainer.
FUSE_SWEEP = [
    "train.epochs=1", "train.batch_size=128", "sweep.workers=1", "sweep.cpu_threads=1", "sweep.n_trials=6",
    "pruner=none", "sampler.seed=0", "sweep.fuse=4", "sweep.name=fused",
]  # fmt: skip


@pytest.mark.timeout(600)
def test_a_fused_sweep_records_every_trial_as_the_one_trial_trainer_trains_it(sweeper_cli, tmp_path):
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from sweeper.config import compose_config

    done = sweeper_cli("sweep", *FUSE_SWEEP)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep fused: 6/6 finished" in done.stdout
    study = optuna.load_study(study_name="fused", storage=f"sqlite:///{tmp_path}/results/studies.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6, [(t.number, t.state, t.user_attrs) for t in study.trials]
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    experiment = client.get_experiment_by_name("fused")
    runs = {int(r.data.tags["trial"]): r for r in client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'trial'")}
    assert sorted(runs) == [t.number for t in study.trials]  # one child run per trial, no more
    for trial in study.trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags.get("mlflow.parentRunId"), trial.number
        assert trial.user_attrs["status"] == "finished" and run.data.metrics["valid_accuracy"] == trial.value
        history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        # the trial's own config, trained alone, gives the curve MLflow holds and the value the study holds
        cfg = compose_config([*trial.user_attrs["overrides"], f"results_dir={tmp_path}/alone", "tracking=none"])
        alone = train(cfg)
        np.testing.assert_allclose([m.value for m in history], alone.curve("loss"), rtol=RTOL, err_msg=str(trial.number))
        assert trial.value == pytest.approx(alone.objective, abs=1.5 / 450), trial.number


def test_a_trainer_without_train_many_cannot_fuse(workdir):
    from sweeper.sweep.plan import plan_sweep

    with pytest.raises(ConfigError, match="sweep.fuse: 4, but sweep.trainer 'helpers.trainers.StandInTrainer' has no train_many"):
        plan_sweep(["sweep.fuse=4", "sweep.trainer=helpers.trainers.StandInTrainer", "tracking=none"])
    with pytest.raises(ConfigError, match="sweep.fuse: 0 must be a whole number of trials >= 1"):
        plan_sweep(["sweep.fuse=0", "tracking=none"], validate=False)
