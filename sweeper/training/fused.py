"""Fused trials: N trials of one architecture trained at once, as one stacked model.

    results = train_many([cfg_a, cfg_b, ...], [reporters_a, reporters_b, ...])

A slice/shape sweep changes the schedule, never the model. So N trials whose configs differ only
in what a fused step takes per member (the lr of every layer group over time, momentum/beta1
over time, weight decay: `lr`, `shape`, `optimizer.weight_decay`, `optimizer.momentum`,
`optimizer.betas[0]`) train as one: every member is prepared by the one-trial trainer
(`sweeper.training.trainer.prepare`: the same checks, the same schedule, the same initial weights), their
parameters and buffers are stacked on a leading member dimension
(`torch.func.stack_module_state`), and one forward and backward pass serves them all
(`torch.func.vmap` over `functional_call`; the members' losses are summed, so each member's
gradient is its own). Batch norm keeps its statistics per member (its buffers are stacked too).

One batch stream: the members share the seed, so the data order and the initial weights are the
same for all of them; a fused run is a paired comparison of schedules (common random numbers).
Configs that cannot share a batch are refused as a group (`why_not_fused` says why).

The optimizer (`FusedOptimizer`) steps the stacked parameters with per-member, per-group lr,
momentum/beta1 and weight decay, exactly as torch.optim's single-tensor Adam, AdamW and SGD
define their step (the tests check it member by member against torch.optim itself). fine_tune's
frozen groups take no gradient, as in the trainer (the phases are common to all members).

Each member is still a whole trial: its own reporters hear its own steps and epochs, any of them
may stop it after an epoch (pruned), a non-finite loss ends it alone (diverged), and an exception
in one of its reporters fails it alone. A member that stops is dropped from the stack (its rows
of every parameter, buffer and optimizer state are taken out): the others then train N-1 wide,
which costs less than computing a masked member to the end (results/bench/fused.md). A shared
failure (the fused step itself raises) fails every member still training, with its reason.
Fused trials keep no checkpoints.

Tolerance against the one-trial trainer: float reassociation only. The batched matmuls and
convolutions of the stack sum in another order than the single model's, and the optimizer's
per-member scalars are float32 tensors where torch uses Python floats; the curves agree to a
few float32 ulps per step, growing slowly with the steps (tests/test_fused.py).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.func import functional_call, vmap

from sweeper.config import ConfigError
from sweeper.training.loop import Member, run_loop
from sweeper.training.trainer import VALID_BATCH, Trial, autocast, build_optimizer, no_decay_parameters, prepare
from sweeper.trial.events import Reporter, StartEvent, TrialResult
from sweeper.trial.schedule import Phase, TrialSchedule, schedule_of
from sweeper.trial.spec import TRIAL_NODES

__all__ = ["FusedOptimizer", "FusedRun", "PER_MEMBER", "prepare_many", "run_many", "train_many", "why_not_fused"]

# What may differ between the members of a fused run: every other trial setting is shared.
PER_MEMBER = ("lr", "shape", "optimizer.weight_decay", "optimizer.momentum", "optimizer.betas.0")


# --- which trials fuse ----------------------------------------------------------------------------


def why_not_fused(cfgs: Sequence[DictConfig | Mapping]) -> str | None:
    """Why these trial configs cannot train as one fused model; None when they can.

    They must share every trial setting but the per-member ones (PER_MEMBER): one model, one
    data set and data order (seed), one batch size, the same epochs and frozen epochs.
    """
    if not cfgs:
        return "no trials to fuse"
    shared = [_shared_settings(cfg) for cfg in cfgs]
    for index, settings in enumerate(shared[1:], start=1):
        difference = _first_difference(shared[0], settings)
        if difference is not None:
            key, first, other = difference
            return (
                f"trial {index} differs from trial 0 in {key} ({first!r} vs {other!r}): members of a fused run "
                f"share one batch stream, so only {', '.join(PER_MEMBER)} may differ"
            )
    target = str(OmegaConf.select(OmegaConf.create(shared[0]), "optimizer._target_"))
    if target not in FusedOptimizer.TARGETS:
        return f"optimizer {target} has no fused step; fused runs take {', '.join(FusedOptimizer.TARGETS)}"
    return None


def _shared_settings(cfg: DictConfig | Mapping) -> dict:
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    nodes = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in TRIAL_NODES if key in cfg}
    for path in PER_MEMBER:
        *parents, last = path.split(".")
        node = nodes
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
        elif isinstance(node, list) and last.isdigit() and len(node) > int(last):
            node[int(last)] = None
    return nodes


def _first_difference(a: object, b: object, at: str = "") -> tuple[str, object, object] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys(), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{at}.{key}" if at else str(key))
            if found:
                return found
        return None
    return None if a == b else (at, a, b)


# --- the fused optimizer --------------------------------------------------------------------------


@dataclass
class ParamSlot:
    """One stacked parameter: its name, layer group and, per member, its weight decay."""

    name: str
    owner: int  # layer group
    weight_decay: np.ndarray  # [member] float64
    trains_frozen: bool  # a norm parameter that trains in a frozen group (train_bn)
    step: int = 0  # optimizer steps taken (torch's state["step"])
    state: dict[str, Tensor] = field(default_factory=dict)


class FusedOptimizer:
    """torch.optim's single-tensor Adam, AdamW and SGD on stacked parameters ([member, ...]),
    with a per-member lr (per layer group), momentum/beta1 and weight decay.

    Scalars that torch computes in Python floats (bias corrections, lr x weight decay) are
    computed here in float64 per member, then applied as float32 tensors.
    """

    TARGETS = ("torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD")

    def __init__(self, kind: str, slots: list[ParamSlot], settings: Mapping[str, object]) -> None:
        self.kind = kind  # "adam" or "sgd"
        self.slots = slots
        self.decoupled = bool(settings.get("decoupled_weight_decay", False))
        self.eps = float(settings.get("eps", 0.0))
        self.beta2 = float(settings["betas"][1]) if kind == "adam" else 0.0

    @classmethod
    def check(cls, optimizer: torch.optim.Optimizer) -> str:
        """The kind of step `optimizer` takes ("adam", "sgd"); ConfigError for one with no fused step."""
        group = optimizer.param_groups[0]
        unsupported = [k for k in ("amsgrad", "nesterov", "maximize") if group.get(k)] + (["dampening"] if group.get("dampening") else [])
        if unsupported or not isinstance(optimizer, (torch.optim.Adam, torch.optim.SGD)):
            what = f"{type(optimizer).__name__} with {', '.join(unsupported)}" if unsupported else type(optimizer).__name__
            raise ConfigError(f"optimizer: {what} has no fused step; use sweep.fuse=1, or plain AdamW, Adam or SGD.")
        return "adam" if isinstance(optimizer, torch.optim.Adam) else "sgd"

    def keep(self, rows: Tensor) -> None:
        """Keep only these members' rows of the optimizer state (a member left the run)."""
        for slot in self.slots:
            slot.weight_decay = slot.weight_decay[rows.cpu().numpy()]
            slot.state = {key: value[rows] for key, value in slot.state.items()}

    @torch.no_grad()
    def step(self, params: Mapping[str, Tensor], lrs: np.ndarray, momenta: np.ndarray) -> None:
        """One step of every parameter that has a gradient; lrs [member, group], momenta [member]."""
        for slot in self.slots:
            param = params[slot.name]
            if param.grad is None:  # frozen: no step, no state, as torch skips a parameter without a gradient
                continue
            slot.step += 1
            view = (-1,) + (1,) * (param.dim() - 1)

            def column(values: np.ndarray, param: Tensor = param, view: tuple = view) -> Tensor:
                return torch.as_tensor(values, dtype=param.dtype).to(param.device, non_blocking=True).view(view)

            step = self._adam if self.kind == "adam" else self._sgd
            step(slot, param, param.grad, lrs[:, slot.owner], momenta, column)

    def _adam(self, slot: ParamSlot, param: Tensor, grad: Tensor, lr: np.ndarray, beta1: np.ndarray, column: Callable) -> None:
        # torch.optim.adam._single_tensor_adam, term by term; the last division folds the
        # per-member step size into the denominator, so one addcdiv_ applies it
        if self.decoupled:
            param.mul_(column(1 - lr * slot.weight_decay))
        elif slot.weight_decay.any():
            grad = grad.add(param * column(slot.weight_decay))
        if not slot.state:
            slot.state = {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
        exp_avg, exp_avg_sq = slot.state["exp_avg"], slot.state["exp_avg_sq"]
        exp_avg.lerp_(grad, column(1 - beta1))
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step_size = lr / (1 - beta1**slot.step)
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**slot.step)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps).div_(column(-step_size))
        param.addcdiv_(exp_avg, denom)

    def _sgd(self, slot: ParamSlot, param: Tensor, grad: Tensor, lr: np.ndarray, momentum: np.ndarray, column: Callable) -> None:
        # torch.optim.sgd._single_tensor_sgd (no dampening, not nesterov). A member whose momentum
        # is 0 gets buf = 0 * buf + grad = grad: what torch does without a buffer.
        if slot.weight_decay.any():
            grad = grad.add(param * column(slot.weight_decay))
        if "momentum_buffer" not in slot.state:
            slot.state["momentum_buffer"] = grad.clone()
        else:
            slot.state["momentum_buffer"].mul_(column(momentum)).add_(grad)
        param.addcmul_(slot.state["momentum_buffer"], column(-lr))


# --- preparing and running a fused run ------------------------------------------------------------


@dataclass
class FusedRun:
    """Prepared members and their stacked model, ready to `run_many`: the training loop's engine
    (`sweeper.training.loop`) for a fused run."""

    lead: Trial  # the first member's trial: its data, device, task and model serve all
    members: list[Member]
    momenta: list[np.ndarray]  # per member, [step]: the momentum (or beta1) its rows step with
    base: torch.nn.Module  # the architecture, on the meta device: functional_call's template
    params: dict[str, Tensor]  # [active member, ...], leaves that take gradients
    buffers: dict[str, Tensor]  # [active member, ...]: batch-norm statistics per member
    optimizer: FusedOptimizer
    rows: list[int]  # the member index of each row of the stack
    schedule: TrialSchedule = field(init=False)  # the phases, common to every member (one batch stream)
    sync_every: int = field(init=False)

    def __post_init__(self) -> None:
        self.schedule, self.sync_every = self.lead.schedule, self.lead.sync_every
        self.autocast = autocast(self.lead.device, self.lead.amp)
        task = self.lead.task

        def member_loss(params: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
            return task.loss(functional_call(self.base, (params, buffers), (x,)), y)

        self.losses_of = vmap(member_loss, in_dims=(0, 0, None, None))

    def enter(self, phase: Phase) -> None:
        for slot in self.optimizer.slots:
            self.params[slot.name].requires_grad_(phase.trainable[slot.owner] or slot.trains_frozen)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.base.train()
        return self.lead.data.train_batches(self.lead.batch_size, self.lead.generator)

    def step(self, step: int, x: Tensor, y: Tensor) -> Tensor:
        lrs = np.stack([self.members[index].schedule.lrs[step] for index in self.rows])
        momenta = np.array([self.momenta[index][step] for index in self.rows])
        with self.autocast:
            losses = self.losses_of(self.params, self.buffers, x, y)
        for param in self.params.values():
            param.grad = None
        losses.sum().backward()
        self.optimizer.step(self.params, lrs, momenta)
        return losses.detach()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        lead = self.lead
        self.base.eval()
        forward = vmap(lambda params, buffers, x: functional_call(self.base, (params, buffers), (x,)), in_dims=(0, 0, None))
        batch = max(1, VALID_BATCH // len(self.rows))  # the stack's activations stay as large as one model's
        outputs, targets = [], []
        for x, y in lead.data.valid_batches(batch):
            with self.autocast:
                outputs.append(forward(self.params, self.buffers, x).float())
            targets.append(y)
        self.base.train()
        joined, target = torch.cat(outputs, dim=1), torch.cat(targets)
        return [lead.task.evaluate(joined[row], target) for row in range(len(self.rows))]

    def drop_stopped(self) -> None:
        """Take the rows of members that stopped out of the stack (drop, not mask)."""
        keep = [row for row, index in enumerate(self.rows) if self.members[index].active]
        if len(keep) == len(self.rows):
            return
        rows = torch.tensor(keep, device=self.lead.device)
        self.params = {name: p.detach()[rows].requires_grad_(p.requires_grad) for name, p in self.params.items()}
        self.buffers = {name: b[rows] for name, b in self.buffers.items()}
        self.optimizer.keep(rows)
        self.rows = [self.rows[row] for row in keep]

    def finish(self, row: int) -> None:
        """A finished member's hooks (the model keeper: tracking.save_model) see its own weights:
        its row of the stack, loaded into the lead trial's model (which trains nothing itself)
        just before the member's on_end, where they are saved."""
        hooks = self.members[self.rows[row]].hooks
        if not hooks:
            return
        with torch.no_grad():
            state = {name: p[row].detach() for name, p in self.params.items()}
            state.update({name: b[row] for name, b in self.buffers.items()})
            self.lead.model.load_state_dict(state)
        for hook in hooks:
            hook.on_trial(self.lead)


def prepare_many(cfgs: Sequence[DictConfig | Mapping], reporters: Sequence[Sequence[Reporter]] | None = None) -> FusedRun:
    """Check that the configs fuse, prepare the first with the one-trial trainer (every check,
    the model, the data) and the others' schedules and optimizer settings over its layer groups; a
    bad setting (or configs that cannot fuse) raises here, before any training."""
    refusal = why_not_fused(cfgs)
    if refusal:
        raise ConfigError(f"sweep.fuse: {refusal}.")
    reporters = reporters if reporters is not None else [() for _ in cfgs]
    lead = prepare(cfgs[0])
    kind = FusedOptimizer.check(lead.optimizer)
    no_decay = no_decay_parameters(lead.model, lead.config.train)
    members = [_member(lead, lead.config, lead.schedule, lead.optimizer, reporters[0], lead.started)]
    for cfg, heard_by in zip(cfgs[1:], reporters[1:]):
        started = time.perf_counter()
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        schedule = schedule_of(cfg, steps=lead.schedule.total, n_groups=len(lead.groups))
        optimizer, _ = build_optimizer(cfg.optimizer, lead.groups, schedule.peaks, no_decay)
        members.append(_member(lead, cfg, schedule, optimizer, heard_by, started))
    # every member starts from the same weights (one seed): the lead's, stacked
    params = {name: p.detach().expand(len(members), *p.shape).clone().requires_grad_() for name, p in lead.model.named_parameters()}
    buffers = {name: b.expand(len(members), *b.shape).clone() for name, b in lead.model.named_buffers()}
    names = {id(p): name for name, p in lead.model.named_parameters()}
    slots = []
    for position, (owner, param_group) in enumerate(zip(lead.owners, lead.optimizer.param_groups)):
        decay = np.array([weight_decay[position] for _, weight_decay, _ in members], dtype=np.float64)
        for param in param_group["params"]:
            slots.append(ParamSlot(names[id(param)], owner, decay.copy(), id(param) in lead.train_in_frozen))
    optimizer = FusedOptimizer(kind, slots, lead.optimizer.defaults)
    base = copy.deepcopy(lead.model).to("meta")
    return FusedRun(
        lead,
        [member for member, _, _ in members],
        [momenta for _, _, momenta in members],
        base,
        params,
        buffers,
        optimizer,
        list(range(len(members))),
    )


def _member(
    lead: Trial, cfg: DictConfig, schedule: TrialSchedule, optimizer: torch.optim.Optimizer, reporters: Sequence[Reporter], started: float
) -> tuple[Member, list[float], np.ndarray]:
    """One member of a fused run; the weight decay of each of its optimizer param groups (as
    torch.optim built them for it); the momentum it steps with at every step."""
    own = [g["betas"][0] if "betas" in g else g.get("momentum", 0.0) for g in optimizer.param_groups]
    result = TrialResult("finished", None, cfg.train.objective, device=str(lead.device))
    start = StartEvent(
        config=OmegaConf.to_container(cfg, resolve=True),
        peaks=schedule.peaks,
        n_groups=len(schedule.peaks),
        total_steps=schedule.total,
        device=result.device,
    )
    member = Member(start, schedule, reporters, result, started)
    return member, [g["weight_decay"] for g in optimizer.param_groups], _momenta(schedule, own[0])


def _momenta(schedule: TrialSchedule, own: float) -> np.ndarray:
    """The momentum (or beta1) the optimizer uses at every step: the schedule's, else the configured
    one, which the trainer restores at the start of every phase."""
    momenta = schedule.momenta[:, 0].copy()
    used = own
    starts = set(schedule.starts)
    for step, value in enumerate(momenta):
        used = own if step in starts else used
        used = used if math.isnan(value) else value
        momenta[step] = used
    return momenta


def train_many(cfgs: Sequence[DictConfig | Mapping], reporters: Sequence[Sequence[Reporter]] | None = None) -> list[TrialResult]:
    """Run trials as one fused model; one result per config, in order (see the module docstring)."""
    return run_many(prepare_many(cfgs, reporters))


def run_many(fused: FusedRun) -> list[TrialResult]:
    """Train a prepared fused run phase by phase; every member's result says how it ended."""
    return run_loop(fused)
