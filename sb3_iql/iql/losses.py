"""The three IQL losses as pure functions (Kostrikov et al., 2022, eq. 5, 6 and 7), and the DDPG+BC actor loss.

Each function takes tensors that are already computed by the networks, so each formula can be checked
against hand-computed values. All returned losses are scalars (mean over the batch).
"""

import torch as th


def expectile_loss(diff: th.Tensor, expectile: float | th.Tensor) -> th.Tensor:
    """
    Asymmetric squared loss ``|tau - 1(u < 0)| * u^2`` averaged over the batch (IQL's value loss).

    :param diff: ``u = min_i Q_target_i(s, a) - V(s)``, shape ``(batch,)``
    :param expectile: ``tau`` in (0, 1) (a float or a 0-d tensor); above 0.5 it approximates a maximum over the data's
        actions
    :return: scalar loss
    """
    # in diff's dtype (th.where on two floats would round tau to float32)
    weight = (expectile - (diff < 0).to(diff.dtype)).abs()
    return (weight * diff.square()).mean()


def twin_critic_loss(current_q: th.Tensor, target_q: th.Tensor) -> th.Tensor:
    """
    Sum over the critics of the mean squared TD error (IQL's Q loss).

    :param current_q: ``Q_i(s, a)`` for every critic, shape ``(n_critics, batch)``
    :param target_q: ``r + gamma * (1 - terminal) * V(s')``, shape ``(batch,)``, without gradient
    :return: scalar loss ``sum_i mean_batch (Q_i - target)^2``
    """
    return (current_q - target_q).square().mean(dim=1).sum()


def awr_weights(advantage: th.Tensor, beta: float | th.Tensor, max_weight: float | th.Tensor) -> th.Tensor:
    """
    Advantage-weighted regression weights ``min(exp(beta * A), max_weight)``.

    :param advantage: ``A = min_i Q_target_i(s, a) - V(s)``, shape ``(batch,)``
    :param beta: inverse temperature; 0 gives behaviour cloning (all weights 1)
    :param max_weight: clip of the weights (100 in the paper)
    :return: weights, shape ``(batch,)``
    """
    return th.exp(beta * advantage).clamp(max=max_weight)


def awr_actor_loss(log_prob: th.Tensor, weights: th.Tensor) -> th.Tensor:
    """
    Weighted negative log-likelihood of the dataset actions (IQL's policy extraction loss).

    :param log_prob: ``log pi(a | s)`` of the dataset actions, summed over action dimensions, shape ``(batch,)``
    :param weights: AWR weights, shape ``(batch,)``, without gradient
    :return: scalar loss ``-mean(weights * log_prob)``
    """
    return -(weights * log_prob).mean()


def ddpg_bc_actor_loss(
    policy_q: th.Tensor, log_prob: th.Tensor, bc_weight: float | th.Tensor, weights: th.Tensor | None = None
) -> th.Tensor:
    """
    DDPG+BC policy extraction (Park et al., 2024, "Is Value Learning Really the Main Bottleneck in Offline RL?";
    OGBench's GCIQL): follow the critic's action gradient at the policy's action, kept near the data by a
    log-likelihood term. Q is divided by its batch mean magnitude (without gradient) so that ``bc_weight`` does not
    depend on the reward scale.

    :param policy_q: ``min_i Q_i(s, mu(s))`` at the policy's mean action, with gradient to the actor, ``(batch,)``
    :param log_prob: ``log pi(a | s)`` of the dataset actions, summed over action dimensions, shape ``(batch,)``
    :param bc_weight: weight of the behaviour cloning term (alpha)
    :param weights: optional AWR weights ``(batch,)`` of the log-likelihood term (DDPG + AWR), without gradient
    :return: scalar loss ``-mean(Q) / mean(|Q|) - bc_weight * mean(weights * log_prob)`` (weights 1 if None)
    """
    scale = policy_q.abs().mean().detach().clamp(min=1e-6)
    cloning = log_prob if weights is None else weights * log_prob
    return -policy_q.mean() / scale - bc_weight * cloning.mean()
