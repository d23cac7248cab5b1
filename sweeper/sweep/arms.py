"""Compare mode: the tuning playbook's split of a sweep into arms (`sweep.compare`).

The setting a user compares (the slice strategy, or the cycle shape) is *scientific*; the lrs,
the shape's settings and `search.params` are *nuisance* settings that must be tuned for each
compared value before the values can be compared. One sampler over everything gives one
strategy 7 trials and another 2, so "best of each" would compare a tuned arm with an untuned one.
So in compare mode each compared value is an arm with:

- an equal share of the trials: a new trial joins the arm with the fewest trials that are
  finished, running or waiting (a failed trial does not count, so its arm gets another), chosen
  while the worker holds the sweep's claim lock, so parallel workers and machines balance too.
  A trial's arm is kept in its system attrs (ARM_ATTR) from its first moment, before it has
  drawn anything, so the count sees trials that are still starting. A retried trial (its
  worker died) keeps the arm its params fix. Stratifying by the balance, not by
  `trial.number % arms`, keeps the shares equal when trials fail or are retried;
- its own sampler state: every arm has its own sampler, which sees only the arm's trials
  (ArmView, as Optuna's Hyperband gives each bracket a filtered study), so TPE models each
  strategy's lrs apart;
- its own pruning: a trial is compared only with trials of its arm, and a pruner that waits for
  `n_startup_trials` complete trials waits for at most half of an arm's share (at least one):
  with the default 12 trials over 3 arms, an arm's 4 trials would never reach a pruner's 4
  complete ones, and nothing would ever be pruned.

`sweep.compare`: `auto` (the default) compares the strategies when the search draws several,
else the shapes when it draws several, else nothing; `strategy`, `shape`, or `none` (one sampler
over the whole space, as before). With several objectives or the grid sampler, `auto` means
`none`, and naming an arm is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from sweeper.config import ConfigError
from sweeper.sweep.space import Dimension, SearchSpace

__all__ = ["ARM_ATTR", "COMPARE_ATTR", "Arms", "ArmPruner", "ArmSampler", "ArmView", "arm_of", "arms_of"]

ARM_ATTR = "sweeper:arm"  # trial system attr: the arm the trial belongs to
COMPARE_ATTR = "compare"  # study user attr: {"param": ..., "arms": [...]}, for the report and the verdict
COMPARED = {"strategy": "search.lr.strategies", "shape": "search.shape"}


@dataclass(frozen=True)
class Arms:
    """The compared setting (an Optuna param: strategy or shape) and its values, one arm each."""

    param: str
    values: tuple[str, ...]

    def describe(self) -> str:
        return f"compare: {self.param} ({', '.join(self.values)}); each its own sampler and an equal share of the trials"

    def record(self) -> dict[str, Any]:
        return {"param": self.param, "arms": list(self.values)}

    def largest_share(self, n_trials: int) -> int:
        """The trials of the arm that gets the most of `n_trials` (one more where they do not split equally)."""
        return -(-n_trials // len(self.values))

    def startup_trials(self, configured: int, n_trials: int) -> int:
        """A pruner's `n_startup_trials` within one arm: the configured count, capped at half of
        the arm's share of `n_trials` (at least 1), so the later half of every arm's trials may
        be pruned. A resumed sweep with more trials only raises it, up to the configured count."""
        return max(1, min(configured, self.largest_share(n_trials) // 2))

    def capped_startup(self, pruner: Mapping[str, Any], n_trials: int) -> int | None:
        """The pruner's `n_startup_trials` within one arm where the cap changes the configured
        count (startup_trials); None where it does not, or the pruner has no such setting."""
        configured = pruner.get("n_startup_trials")
        if not isinstance(configured, int) or isinstance(configured, bool):
            return None
        startup = self.startup_trials(configured, n_trials)
        return None if startup == configured else startup

    def pruning_note(self, pruner: Mapping[str, Any], n_trials: int) -> str | None:
        """What the cap of startup_trials makes of the configured pruner (None: nothing changed)."""
        startup = self.capped_startup(pruner, n_trials)
        if startup is None:
            return None
        return (
            f"pruning: within each {self.param} arm, after its first {startup} complete trials "
            f"(pruner.n_startup_trials={pruner['n_startup_trials']}, capped at half of an arm's {self.largest_share(n_trials)} trials)"
        )

    def shares(self, n_trials: int) -> str | None:
        """A note when `n_trials` does not split equally among the arms (None when it does): the
        balance then keeps the arms within one trial of each other."""
        count = len(self.values)
        if not n_trials % count:
            return None
        equal = n_trials + count - n_trials % count
        return (
            f"sweep.n_trials={n_trials} does not split equally among the {count} {self.param} arms "
            f"({', '.join(self.values)}): some get one trial more; sweep.n_trials={equal} gives each {equal // count}."
        )


def arms_of(setting: Any, space: SearchSpace, several_objectives: bool, sampler_target: str) -> Arms | None:
    """The arms `sweep.compare` asks for in this space, or None (one sampler over everything)."""
    if setting == "none":
        return None
    drawn = {param: _choices(dim) for param, dim in (("strategy", space.strategy), ("shape", space.shape))}
    if setting == "auto":
        if several_objectives or sampler_target.endswith("GridSampler"):
            return None
        setting = next((param for param, values in drawn.items() if len(values) > 1), None)
        return Arms(setting, drawn[setting]) if setting else None
    if len(drawn[setting]) < 2:
        raise ConfigError(
            f"sweep.compare: {setting}, but the search draws {len(drawn[setting]) or 'no'} {setting}; list "
            f"two or more under {COMPARED[setting]}, or set sweep.compare=none."
        )
    if several_objectives:
        raise ConfigError(f"sweep.compare: {setting} picks each arm's best by one objective; use train.objective, or sweep.compare=none.")
    if sampler_target.endswith("GridSampler"):
        raise ConfigError(f"sweep.compare: {setting} gives each arm its own sampler, which a grid has no use for; set sweep.compare=none.")
    return Arms(setting, drawn[setting])


def _choices(dim: Dimension | None) -> tuple[str, ...]:
    return tuple(str(c) for c in dim.distribution.choices) if dim is not None else ()


def arm_of(trial: FrozenTrial, param: str) -> str | None:
    """The arm a trial belongs to: chosen when it began, or fixed by its params (a retry)."""
    arm = trial.system_attrs.get(ARM_ATTR)
    if arm is None:
        arm = trial.params.get(param, trial.system_attrs.get("fixed_params", {}).get(param))
    return None if arm is None else str(arm)


class ArmView:
    """The study as one arm sees it: only the arm's trials; everything else is the study's."""

    def __init__(self, study: optuna.Study, param: str, arm: str) -> None:
        self._study, self._param, self._arm = study, param, arm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if arm_of(t, self._param) == self._arm]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ArmSampler(optuna.samplers.BaseSampler):
    """Chooses each new trial's arm (the balance), then lets that arm's own sampler draw the rest
    on the arm's trials alone. `make(index)` builds the sampler of the arm at `index`."""

    def __init__(self, arms: Arms, make: Callable[[int], optuna.samplers.BaseSampler]) -> None:
        self.arms = arms
        self._samplers = {arm: make(index) for index, arm in enumerate(arms.values)}
        self._chosen: dict[int, str] = {}  # trial id -> arm, for the draws that follow before_trial

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        arm = trial.system_attrs.get("fixed_params", {}).get(self.arms.param)
        if arm is None or str(arm) not in self._samplers:
            arm = self._least_tried(study, trial)
        arm = str(arm)
        study._storage.set_trial_system_attr(trial._trial_id, ARM_ATTR, arm)  # as Optuna's samplers keep state
        self._chosen[trial._trial_id] = arm
        self._samplers[arm].before_trial(self._view(study, arm), trial)

    def _least_tried(self, study: optuna.Study, trial: FrozenTrial) -> str:
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        counts = dict.fromkeys(self.arms.values, 0)
        for other in study.get_trials(deepcopy=False, states=counted):
            arm = arm_of(other, self.arms.param)
            if other.number != trial.number and arm in counts:
                counts[arm] += 1
        return min(self.arms.values, key=lambda arm: counts[arm])  # ties: the first listed

    def _arm(self, study: optuna.Study, trial: FrozenTrial) -> str:
        arm = self._chosen.get(trial._trial_id)
        if arm is None:  # chosen by another process (never in a sweep: ask and draw are one worker's)
            arm = str(study._storage.get_trial_system_attrs(trial._trial_id)[ARM_ATTR])
        return arm

    def _view(self, study: optuna.Study, arm: str) -> ArmView:
        return ArmView(study, self.arms.param, arm)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        arm = self._arm(study, trial)
        space = self._samplers[arm].infer_relative_search_space(self._view(study, arm), trial)
        return {name: dist for name, dist in space.items() if name != self.arms.param}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        arm = self._arm(study, trial)
        return self._samplers[arm].sample_relative(self._view(study, arm), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        arm = self._arm(study, trial)
        if param_name == self.arms.param:
            return next(c for c in param_distribution.choices if str(c) == arm)
        return self._samplers[arm].sample_independent(self._view(study, arm), trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        arm = self._chosen.pop(trial._trial_id, None) or arm_of(trial, self.arms.param)
        if arm in self._samplers:
            self._samplers[arm].after_trial(self._view(study, arm), trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in self._samplers.values():
            sampler.reseed_rng()


class ArmPruner(optuna.pruners.BasePruner):
    """The configured pruner, asked about a trial with the trials of its own arm only."""

    def __init__(self, pruner: optuna.pruners.BasePruner, param: str) -> None:
        self.pruner, self.param = pruner, param

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        arm = arm_of(trial, self.param)
        return self.pruner.prune(ArmView(study, self.param, arm) if arm is not None else study, trial)
