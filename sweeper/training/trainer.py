"""The one-cycle trainer: one trial, from a resolved config to a result with its curves.

    result = train(cfg, reporters=[...])   # cfg: the composed config, or a plain dict of it

The story: `prepare` checks every setting and builds the trial (device, seeds, data, the model,
its layer groups, an optimizer with a param group per layer group); `run` trains it phase by
phase. The loss and the validation metrics are the task's (`cfg.task`, `sweeper.zoo.tasks`;
classification when a config has none). Before every training batch the lr of every layer
group and the momentum (SGD's momentum, Adam's beta1) are set by hand from the trial's schedule
(`sweeper.trial.schedule`): the very values `sweeper schedule` prints for the same settings. After
every epoch the model is evaluated on the whole validation set: the task's metrics and its loss.
A shape that follows the validation objective (`shape=torch_plateau`, torch's ReduceLROnPlateau)
is fed `train.objective` after every epoch, in `train.direction`'s mode unless `shape.mode` is
set, and the lrs of the epochs after it follow (`sweeper.training.loop`).
Reporters hear of every step and epoch, and any of them may stop the trial after an epoch.

Bad settings raise before any training (ConfigError, SliceError, ShapeError, GroupError). Once
training starts a result always comes back, with one of these statuses:
- finished: every epoch ran;
- diverged: a training loss was not finite; `diverged_step` is that batch, `reason` says so;
- failed: an exception ended it; `reason` is its type and message (Ctrl-C still propagates);
- pruned: a reporter's `on_epoch` returned True.

Phases:
- `train.freeze_epochs == 0`: fastai's `fit_one_cycle(train.epochs, lr)` with the configured
  shape; phase "train".
- `train.freeze_epochs > 0`: fastai's `fine_tune`. Phase "frozen": every layer group but the
  head is frozen (its parameters take no optimizer step and stay bitwise unchanged), and the head
  trains for `freeze_epochs` epochs of `fit_one_cycle(slice(base_lr), pct_start=0.99)`, with
  base_lr = 2 x the configured head peak and the shape's other settings (div_final, moms), as
  fine_tune passes them to both phases. As in fastai (`train_bn`, on by default), the
  parameters of norm layers (BatchNorm, InstanceNorm, LayerNorm) in frozen groups still train,
  at their group's lr, and batch-norm running statistics update everywhere; `train.train_bn=false`
  freezes them too. Phase "unfrozen": every group trains for `train.epochs` epochs with the
  configured slice and shape (`train.epochs=0` stops after the frozen phase: the head alone).
  Each phase's schedule starts at step 0 of its own total; `StepEvent.step` counts over both.
  The phases and their lrs and momentum are `sweeper.trial.schedule`'s schedule, the one `sweeper
  schedule` prints. A phase whose shape moves no momentum trains with the optimizer's
  configured momentum, not with where the frozen phase left it.

  So `train.freeze_epochs=F lr=geometric lr.low=L lr.high=H shape=fastai_fine_tune` is fastai's
  `fine_tune(epochs, base_lr=2H, freeze_epochs=F, lr_mult=H/L)`.

An optimizer whose momentum is 0 (`optimizer=sgd optimizer.momentum=0`) keeps it: a shape's
momentum does not reach it, and torch keeps no momentum buffers, as fastai's SGD without momentum.

Weight decay skips norm parameters and biases (fastai's `wd_bn_bias=False`): each layer group
becomes two param groups with the same lr, one without decay. `train.wd_bn_bias=true` decays
everything (one param group per layer group).

Speed: a step does nothing beyond setting the lrs and momentum, the forward and backward passes,
the optimizer step and keeping the loss. Losses are read from the device every
`train.sync_every` steps (a read waits for the GPU to catch up); a non-finite loss is still
reported at its exact step, and steps taken after it are discarded with the trial.

The loop itself (the order of events: steps, reads of the losses, evaluation, reports, stops) is
`sweeper.training.loop`'s, shared with fused trials; `OneTrial` is what one step does here.
Nothing here knows of Optuna or MLflow: they listen through `sweeper.trial.events.Reporter`. A
reporter that is a `sweeper.trial.events.TrainerHook` also gets the prepared trial (the model, to
keep its weights) and is told when an epoch's reports are done (to checkpoint it); a hook that
restores the trial from a checkpoint has its recorded steps and epochs replayed, then the rest
trains.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sweeper.config import ConfigError, build_shape, check_values, instantiate_node, plain
from sweeper.config.rules import check_required
from sweeper.schedules.slices import parse_lr
from sweeper.training.loop import Member, run_loop
from sweeper.training.seeding import seed_everything, use_deterministic_algorithms
from sweeper.trial.events import Reporter, StartEvent, TrialResult
from sweeper.trial.schedule import Phase, TrialSchedule, schedule_of
from sweeper.trial.spec import TRIAL_NODES
from sweeper.zoo.data import TrialData
from sweeper.zoo.groups import LayerGroups, split_groups
from sweeper.zoo.tasks import Task, build_task

__all__ = [
    "OneTrial",
    "Trial",
    "autocast",
    "available_metrics",
    "build_optimizer",
    "evaluate",
    "no_decay_parameters",
    "norm_parameters",
    "prepare",
    "resolve_device",
    "run",
    "set_hyperparameters",
    "train",
]

VALID_BATCH = 1024  # evaluation batches: no gradients are kept, so larger is faster
# fastai's `norm_types`: the layers whose parameters count as norm parameters.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


def available_metrics(cfg: DictConfig | Mapping) -> tuple[str, ...]:
    """The validation metrics every epoch of a trial of `cfg` reports (its possible objectives):
    the task's metrics, and its loss."""
    return build_task(_task_node(cfg)).metric_names


def train(cfg: DictConfig | Mapping, reporters: Sequence[Reporter] = ()) -> TrialResult:
    """Run one trial. Bad settings raise before any training; after that a result comes back."""
    return run(prepare(cfg), reporters)


# --- preparing a trial: every check, then every build ---------------------------------------------


@dataclass
class Trial:
    """One trial, checked and built from its config, ready to `run`."""

    config: DictConfig
    started: float  # time.perf_counter() when preparing began
    device: torch.device
    amp: bool  # bf16 autocast
    data: TrialData
    task: Task  # the loss trained on, and the metrics each epoch reports
    generator: torch.Generator  # the order of the training batches
    model: nn.Module
    groups: LayerGroups
    peaks: list[float]  # peak lr of each layer group
    optimizer: torch.optim.Optimizer
    owners: list[int]  # the layer group of each optimizer param group
    schedule: TrialSchedule  # the phases, and the lr and momentum of every step
    batch_size: int
    sync_every: int  # steps between loss reads
    train_in_frozen: set[int]  # ids of parameters that train in frozen groups (train_bn)
    own_momenta: list[float | None]  # each param group's configured momentum or beta1

    def set_trainable(self, trainable: Sequence[bool]) -> None:
        """Freeze (no gradient, so no optimizer step) or unfreeze each layer group."""
        for group, on in zip(self.groups, trainable):
            for _, param in group:
                param.requires_grad_(on or id(param) in self.train_in_frozen)

    def reset_momenta(self) -> None:
        """Every param group's momentum back to the configured one: a phase whose shape moves
        none trains with the optimizer's own, not with where the phase before left it."""
        for param_group, momentum in zip(self.optimizer.param_groups, self.own_momenta):
            _set_momentum(param_group, momentum)


def prepare(cfg: DictConfig | Mapping) -> Trial:
    """Check every setting and build the trial; a bad setting raises here, before any training."""
    started = time.perf_counter()
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    settings = cfg.train

    # settings that need nothing built come first, so a typo fails in milliseconds
    check_required(cfg, TRIAL_NODES)
    check_values(cfg)  # a config built by hand, not composed, is checked as a composed one
    task = build_task(_task_node(cfg))
    objective = settings.objective
    if objective not in task.metric_names:
        raise ConfigError(
            f"train.objective: {objective!r} is not a metric this trainer reports for task "
            f"{task.name}; choose one of {list(task.metric_names)}."
        )
    device = resolve_device(str(settings.device))
    epochs, freeze_epochs = settings.epochs, settings.get("freeze_epochs", 0)
    if epochs + freeze_epochs < 1:
        raise ConfigError(
            f"train.epochs={epochs} with train.freeze_epochs={freeze_epochs} trains nothing; "
            f"set train.epochs to 1 or more (train.epochs=0 is for a frozen phase alone)."
        )
    batch_size, sync_every = settings.batch_size, settings.get("sync_every", 16)
    lr_spec = parse_lr(plain(cfg.lr))
    shape = build_shape(cfg.shape)

    # reproducibility first, then everything that draws random numbers
    if settings.get("threads") is not None:
        torch.set_num_threads(settings.threads)
    use_deterministic_algorithms(bool(settings.deterministic))
    generator = seed_everything(settings.seed)
    data = _build(cfg.data.source, "data.source", TrialData).to(device)
    model = _build(cfg.model.net, "model.net", nn.Module).to(device)
    task.check_targets(next(data.valid_batches(1))[1], _outputs(cfg), f"data={cfg.data.get('name', 'the data')}")
    groups = split_groups(model, plain(cfg.model.get("groups")))
    peaks = lr_spec.peaks(len(groups))

    # the optimizer: a param group per layer group (two where norms and biases skip weight decay)
    norms = norm_parameters(model)
    no_decay = no_decay_parameters(model, settings)
    optimizer, owners = build_optimizer(cfg.optimizer, groups, peaks, no_decay)
    schedule = schedule_of(cfg, steps=(freeze_epochs + epochs) * data.n_train_batches(batch_size), n_groups=len(groups))
    if schedule.sets_momentum and not {"betas", "momentum"} & optimizer.defaults.keys():
        moved_by = f"shape {shape.name}" + (" and fine_tune's frozen one-cycle" if freeze_epochs else "")
        raise ConfigError(
            f"optimizer: {type(optimizer).__name__} has neither momentum nor betas for the "
            f"{moved_by} to move; use optimizer=adamw, adam or sgd, or a shape without momentum."
        )
    return Trial(
        config=cfg,
        started=started,
        device=device,
        amp=bool(settings.amp) and device.type == "cuda" and torch.cuda.is_bf16_supported(),
        data=data,
        task=task,
        generator=generator,
        model=model,
        groups=groups,
        peaks=peaks,
        optimizer=optimizer,
        owners=owners,
        schedule=schedule,
        batch_size=batch_size,
        sync_every=sync_every,
        train_in_frozen=norms if settings.get("train_bn", True) else set(),
        own_momenta=[g["betas"][0] if "betas" in g else g.get("momentum") for g in optimizer.param_groups],
    )


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is a GPU, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: {name!r} asks for CUDA, but no GPU is visible here; use "
                f"train.device=auto (CUDA when present, else CPU) or train.device=cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r}, but only {torch.cuda.device_count()} GPU(s) are visible "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
    return device


def norm_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of norm layers (fastai's `norm_bias_params(model, with_bias=False)`)."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}


def no_decay_parameters(model: nn.Module, settings: DictConfig) -> set[int]:
    """ids of the parameters that skip weight decay: norms and biases (fastai's wd_bn_bias=False),
    none with `train.wd_bn_bias=true`."""
    return set() if settings.get("wd_bn_bias", False) else norm_parameters(model) | bias_parameters(model)


def bias_parameters(model: nn.Module) -> set[int]:
    """ids of every module's `bias` parameter."""
    return {id(m.bias) for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)}


def build_optimizer(
    optimizer_cfg: DictConfig, groups: LayerGroups, peaks: Sequence[float], no_decay: set[int]
) -> tuple[torch.optim.Optimizer, list[int]]:
    """The configured optimizer over the layer groups; `owners[i]` is param group i's layer group.

    The parameters whose ids are in `no_decay` go to a second param group of their layer group,
    with the same lr and no weight decay.
    """
    factory = instantiate_node(optimizer_cfg, "optimizer")
    if not callable(factory):
        raise ConfigError("optimizer: the config must build a factory; add `_partial_: true` beside its _target_.")
    param_groups: list[dict] = []
    owners: list[int] = []
    for index, (group, peak) in enumerate(zip(groups, peaks)):
        decayed = [p for _, p in group if id(p) not in no_decay]
        undecayed = [p for _, p in group if id(p) in no_decay]
        for params, overrides in ((decayed, {}), (undecayed, {"weight_decay": 0.0})):
            if params:
                param_groups.append({"params": params, "lr": peak, **overrides})
                owners.append(index)
    return factory(param_groups), owners


# --- running a trial ----------------------------------------------------------------------------


def run(trial: Trial, reporters: Sequence[Reporter] = ()) -> TrialResult:
    """Train a prepared trial phase by phase; the result says how it ended (module docstring)."""
    return run_loop(OneTrial(trial, reporters))[0]


class OneTrial:
    """The training loop's engine (`sweeper.training.loop`) for one trial: its model and its torch
    optimizer, the lr of every layer group and the momentum set by hand before every batch."""

    def __init__(self, trial: Trial, reporters: Sequence[Reporter]) -> None:
        self.trial = trial
        self.schedule = trial.schedule
        self.sync_every = trial.sync_every
        start = StartEvent(
            config=OmegaConf.to_container(trial.config, resolve=True),
            peaks=tuple(trial.peaks),
            n_groups=len(trial.groups),
            total_steps=trial.schedule.total,
            device=str(trial.device),
        )
        result = TrialResult("finished", None, trial.config.train.objective, device=str(trial.device))
        self.members = [Member(start, trial.schedule, reporters, result, trial.started, trial=trial)]
        self.autocast = autocast(trial.device, trial.amp)

    @property
    def rows(self) -> list[int]:
        return [0] if self.members[0].active else []

    def enter(self, phase: Phase) -> None:
        self.trial.set_trainable(phase.trainable)
        self.trial.reset_momenta()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.trial.model.train()
        return self.trial.data.train_batches(self.trial.batch_size, self.trial.generator)

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        trial = self.trial
        lrs, momentum = self.members[0].schedule.at(step)  # fed the objective so far (torch_plateau)
        set_hyperparameters(trial.optimizer, trial.owners, lrs, momentum)
        with self.autocast:
            loss = trial.task.loss(trial.model(x), y)
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()
        return loss.detach()

    def evaluate(self) -> list[dict[str, float]]:
        trial = self.trial
        return [evaluate(trial.model, trial.data, trial.device, trial.amp, trial.task)]

    def drop_stopped(self) -> None:
        pass  # one model: a trial that stopped has no rows left

    def finish(self, row: int) -> None:
        pass  # the hooks hold the trial already


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    """bf16 autocast on `device` when the trial trains with amp, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def set_hyperparameters(optimizer: torch.optim.Optimizer, owners: Sequence[int], lrs: Sequence[float], momentum: float | None) -> None:
    """Every param group gets its layer group's lr, and the momentum (None: the optimizer's own)."""
    for param_group, owner in zip(optimizer.param_groups, owners):
        param_group["lr"] = lrs[owner]
        if momentum is not None:
            _set_momentum(param_group, momentum)


def _set_momentum(param_group: dict, momentum: float | None) -> None:
    """SGD's momentum or Adam's beta1 (None: an optimizer that has neither)."""
    if "betas" in param_group:
        param_group["betas"] = (momentum, param_group["betas"][1])
    elif momentum is not None:
        param_group["momentum"] = momentum


@torch.no_grad()
def evaluate(model: nn.Module, data: TrialData, device: torch.device, amp: bool = False, task: Task | None = None) -> dict[str, float]:
    """The task's metrics and loss over the whole validation set (task None: classification)."""
    model.eval()
    context = autocast(device, amp)
    outputs, targets = [], []
    for x, y in data.valid_batches(VALID_BATCH):
        with context:
            outputs.append(model(x).float())
        targets.append(y)
    return (task or build_task(None)).evaluate(torch.cat(outputs), torch.cat(targets))


def _task_node(cfg: DictConfig | Mapping) -> object:
    """The config's task node; None (classification) for a config recorded before tasks."""
    return cfg.get("task")


def _outputs(cfg: DictConfig) -> int:
    """The model's output size (data.outputs; data.num_classes in configs recorded before it)."""
    return cfg.data.get("outputs", cfg.data.get("num_classes"))


def _build(node: DictConfig, setting: str, kind: type) -> object:
    built = instantiate_node(node, setting)
    if not isinstance(built, kind):
        raise ConfigError(
            f"{setting}._target_: {node.get('_target_')!r} built a {type(built).__name__}, not a "
            f"{kind.__name__}; point it at a function or class that returns one."
        )
    return built
