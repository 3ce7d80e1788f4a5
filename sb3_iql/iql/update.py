"""
The IQL update's math, defined once (Kostrikov et al., 2022), for every training path.

One gradient step, in the reference order:

1. ``value_targets``: the smaller target critic on the dataset action, ``min_i Qt_i(s, a)`` (and, in the
   ``"joint"`` order, V(s') before V's step);
2. ``value_objective``: expectile regression of V(s) towards it;
3. ``policy_targets``: with the NEW V, the advantage, the AWR weights and the TD target ``r + gamma (1 - d) V(s')``;
4. ``actor_objective``: advantage-weighted log-likelihood of the dataset actions (or, with
   ``policy_extraction="ddpg_bc"`` / ``"ddpg_awr"``, ``ddpg_bc_actor_objective``: the critic's value at the policy's
   action, kept near the data by a log-likelihood term, plain or advantage-weighted; ``policy_objective`` picks);
5. ``critic_objective``: regression of every Q critic towards the TD target;
6. Polyak averaging of the target critics (done by the caller).

Each objective takes the network it trains as a callable, so the same function serves the eager path
(``IQL._update``: the module itself, ``loss.backward()``) and the functional paths (``FunctionalUpdate``:
``torch.func.functional_call`` with explicit parameters, ``torch.func.grad``); those keep only the gradient,
optimizer and Polyak mechanics. A discrete-action variant changes the callables (Q of the dataset action picked
from one output per action, a categorical log-likelihood), not these steps.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch as th

from sb3_iql.iql.losses import awr_actor_loss, awr_weights, ddpg_bc_actor_loss, expectile_loss, twin_critic_loss

#: Names of the training metrics returned by one update, in order.
METRIC_NAMES = ("value_loss", "actor_loss", "critic_loss", "v_mean", "q_mean", "advantage_mean", "awr_weight_mean")

Observations = Any  # a tensor (batch, *obs_shape) or a dict of them
ValueFn = Callable[[Observations], th.Tensor]  # V(s): (batch,)
QFn = Callable[[Observations, th.Tensor], th.Tensor]  # Q_i(s, a) of every critic: (n_critics, batch)
LogProbFn = Callable[[Observations, th.Tensor], th.Tensor]  # log pi(a | s): (batch,)
# mu(s) (batch, action_dim) and log pi(a | s) (batch,)
MeanAndLogProbFn = Callable[[Observations, th.Tensor], tuple[th.Tensor, th.Tensor]]
#: How the actor is extracted from the critics: IQL's advantage-weighted regression, DDPG+BC, or DDPG + AWR.
PolicyExtraction = Literal["awr", "ddpg_bc", "ddpg_awr"]
POLICY_EXTRACTIONS: tuple[PolicyExtraction, ...] = ("awr", "ddpg_bc", "ddpg_awr")
#: The numeric hyperparameters of ``UpdateSettings``. The fast paths hold them as device tensors, inputs of their
#: compiled functions and CUDA graphs: another value needs no new compilation or capture, and learners trained
#: together (``multi_seed``) may each have their own.
NUMERIC_SETTINGS = ("gamma", "expectile", "beta", "max_weight", "bc_weight")
Number = float | th.Tensor  # a Python float, or a 0-d tensor (the fast paths)


@dataclass(frozen=True)
class UpdateSettings:
    """
    The hyperparameters of one IQL gradient step. The numeric ones (``NUMERIC_SETTINGS``) are floats, or 0-d tensors
    in the fast paths (``with_numbers``); the others decide the computation's structure.

    :param gamma: discount factor
    :param expectile: tau of the expectile value loss, in (0, 1)
    :param beta: inverse temperature of the advantage weights (0: behaviour cloning)
    :param max_weight: clip of the advantage weights
    :param joint_order: the TD target takes V(s') from before V's step (d3rlpy's order) instead of after it
    :param policy_extraction: ``"awr"`` (IQL), ``"ddpg_bc"`` or ``"ddpg_awr"`` (``ddpg_bc_actor_objective``)
    :param bc_weight: weight of the log-likelihood term of ``"ddpg_bc"`` and ``"ddpg_awr"``
    """

    gamma: Number
    expectile: Number
    beta: Number
    max_weight: Number
    joint_order: bool = False
    policy_extraction: PolicyExtraction = "awr"
    bc_weight: Number = 0.0

    def numbers(self) -> dict[str, Number]:
        """:return: the numeric hyperparameters by name (``NUMERIC_SETTINGS``)"""
        return {name: getattr(self, name) for name in NUMERIC_SETTINGS}

    def with_numbers(self, numbers: dict[str, Number]) -> "UpdateSettings":
        """:return: these settings with the given numeric hyperparameters (e.g. device tensors) instead"""
        return dataclasses.replace(self, **numbers)

    def same_structure(self, other: "UpdateSettings") -> bool:
        """:return: whether ``other`` differs at most in its numeric hyperparameters (one compiled update runs both)"""
        return self.with_numbers(other.numbers()) == other


class Batch(NamedTuple):
    """
    :param observations: ``(batch, *obs_shape)`` or a dict of them
    :param actions: scaled dataset actions, ``(batch, action_dim)``
    :param next_observations: like ``observations``
    :param rewards: transformed rewards, ``(batch,)``
    :param dones: 1 for terminal transitions (not for time limits), ``(batch,)``
    """

    observations: Observations
    actions: th.Tensor
    next_observations: Observations
    rewards: th.Tensor
    dones: th.Tensor

    @classmethod
    def from_replay_data(cls, replay_data: Any) -> "Batch":
        """:param replay_data: SB3 replay samples (rewards and dones of shape ``(batch, 1)``)"""
        return cls(
            replay_data.observations,
            replay_data.actions,
            replay_data.next_observations,
            replay_data.rewards.flatten(),
            replay_data.dones.flatten(),
        )


class ValueTargets(NamedTuple):
    """:param target_q: ``min_i Qt_i(s, a)``, ``(batch,)``; :param next_value: V(s') before V's step, or None"""

    target_q: th.Tensor
    next_value: th.Tensor | None


class PolicyTargets(NamedTuple):
    """Advantage ``(batch,)``, AWR weights ``(batch,)`` and TD target ``(batch,)``, all without gradient."""

    advantage: th.Tensor
    weights: th.Tensor
    td_target: th.Tensor


def td_target(next_value: th.Tensor, batch: Batch, settings: UpdateSettings) -> th.Tensor:
    """:return: ``r + gamma * (1 - terminal) * V(s')``, shape ``(batch,)``"""
    return batch.rewards + settings.gamma * (1.0 - batch.dones) * next_value


@th.no_grad()
def value_targets(critic_target: QFn, value: ValueFn, batch: Batch, settings: UpdateSettings) -> ValueTargets:
    """Step 1: the target of the value loss (and V(s') before V's step in the joint order)."""
    target_q = critic_target(batch.observations, batch.actions).min(dim=0).values
    next_value = value(batch.next_observations) if settings.joint_order else None
    return ValueTargets(target_q, next_value)


def value_objective(
    value: ValueFn, batch: Batch, targets: ValueTargets, settings: UpdateSettings
) -> tuple[th.Tensor, th.Tensor]:
    """Step 2. :return: the expectile value loss (scalar) and V(s) ``(batch,)``"""
    values = value(batch.observations)
    return expectile_loss(targets.target_q - values, settings.expectile), values


@th.no_grad()
def policy_targets(
    value: ValueFn, batch: Batch, targets: ValueTargets, settings: UpdateSettings, both_values: ValueFn | None = None
) -> PolicyTargets:
    """
    Step 3, with the value network after its step.

    :param value: the value network after its step
    :param batch: the batch of the update
    :param targets: step 1's targets (with V(s') from before V's step in the joint order)
    :param settings: the update's hyperparameters
    :param both_values: optional V evaluated on observations and next observations in one call (returns
        ``(V(s), V(s'))``), used by the fast paths to run one forward pass instead of two
    """
    if targets.next_value is not None:  # joint order: the TD target keeps V(s') from before V's step
        new_value, next_value = value(batch.observations), targets.next_value
    elif both_values is not None:
        new_value, next_value = both_values(batch.observations, batch.next_observations)
    else:
        new_value, next_value = value(batch.observations), value(batch.next_observations)
    advantage = targets.target_q - new_value
    weights = awr_weights(advantage, settings.beta, settings.max_weight)
    return PolicyTargets(advantage, weights, td_target(next_value, batch, settings))


def actor_objective(log_prob: LogProbFn, batch: Batch, targets: PolicyTargets) -> th.Tensor:
    """Step 4. :return: the AWR actor loss (scalar)"""
    return awr_actor_loss(log_prob(batch.observations, batch.actions), targets.weights)


def ddpg_bc_actor_objective(
    mean_and_log_prob: MeanAndLogProbFn, critic: QFn, batch: Batch, targets: PolicyTargets, settings: UpdateSettings
) -> th.Tensor:
    """
    Step 4 with ``policy_extraction="ddpg_bc"``: the smaller critic (before its own step) at the policy's mean
    action (the action it takes when deterministic), normalised, plus ``bc_weight`` times the log-likelihood of the
    dataset actions (``"ddpg_awr"``: weighted by the AWR weights). Only the actor's gradient is taken (the eager path
    zeroes the critics' before their step).

    :return: the actor loss (scalar)
    """
    mean, log_prob = mean_and_log_prob(batch.observations, batch.actions)
    policy_q = critic(batch.observations, mean).min(dim=0).values
    weights = targets.weights if settings.policy_extraction == "ddpg_awr" else None
    return ddpg_bc_actor_loss(policy_q, log_prob, settings.bc_weight, weights)


def actor_inputs(policy_extraction: str) -> str:
    """:return: the actor method whose output the actor objective takes: ``log_prob`` or ``mean_and_log_prob``"""
    return "log_prob" if policy_extraction == "awr" else "mean_and_log_prob"


def policy_objective(
    actor: Callable, critic: QFn, batch: Batch, targets: PolicyTargets, settings: UpdateSettings
) -> th.Tensor:
    """
    Step 4, by ``settings.policy_extraction``.

    :param actor: the actor's ``actor_inputs(settings.policy_extraction)`` method (or its functional call)
    :param critic: the critics with their weights before their step (DDPG variants only)
    :param batch: the batch of the update
    :param targets: step 3's targets (advantages, AWR weights)
    :param settings: the update's hyperparameters
    :return: the actor loss (scalar)
    """
    if settings.policy_extraction == "awr":
        return actor_objective(actor, batch, targets)
    return ddpg_bc_actor_objective(actor, critic, batch, targets, settings)


def critic_objective(critic: QFn, batch: Batch, targets: PolicyTargets) -> tuple[th.Tensor, th.Tensor]:
    """Step 5. :return: the summed critic loss (scalar) and ``Q_i(s, a)`` ``(n_critics, batch)``"""
    current_q = critic(batch.observations, batch.actions)
    return twin_critic_loss(current_q, targets.td_target), current_q


def update_metrics(
    value_loss: th.Tensor,
    actor_loss: th.Tensor,
    critic_loss: th.Tensor,
    values: th.Tensor,
    current_q: th.Tensor,
    targets: PolicyTargets,
) -> th.Tensor:
    """:return: the metrics named in ``METRIC_NAMES``, shape ``(len(METRIC_NAMES),)``, detached, on the device"""
    return th.stack(
        [
            value_loss,
            actor_loss,
            critic_loss,
            values.mean(),
            current_q.mean(),
            targets.advantage.mean(),
            targets.weights.mean(),
        ]
    ).detach()
