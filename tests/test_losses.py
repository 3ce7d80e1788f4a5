"""Each IQL formula against values computed by hand, and the networks against their definitions."""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from sb3_iql.iql.losses import awr_actor_loss, awr_weights, expectile_loss, twin_critic_loss
from sb3_iql.iql.policies import IQLPolicy, orthogonal_init_


def test_expectile_loss_by_hand():
    diff = th.tensor([2.0, -1.0, 0.5, -3.0])
    # tau = 0.9: positive errors weigh 0.9, negative ones 0.1
    expected = (0.9 * 4.0 + 0.1 * 1.0 + 0.9 * 0.25 + 0.1 * 9.0) / 4
    assert expectile_loss(diff, 0.9).item() == pytest.approx(expected)
    # tau = 0.5 is half the mean squared error
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 0.25 + 9) / 4)


def test_twin_critic_loss_sums_the_critics():
    current_q = th.tensor([[1.0, 2.0], [0.0, 4.0]])  # (n_critics=2, batch=2)
    target = th.tensor([2.0, 2.0])
    # critic 1: mean(1, 0) = 0.5; critic 2: mean(4, 4) = 4
    assert twin_critic_loss(current_q, target).item() == pytest.approx(4.5)


def test_awr_weights_and_clip():
    advantage = th.tensor([0.0, 0.1, -0.2, 1.0])
    weights = awr_weights(advantage, beta=10.0, max_weight=100.0)
    expected = [1.0, math.e, math.exp(-2.0), 100.0]  # exp(10) = 22026 is clipped at 100
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    # beta = 0 is behaviour cloning: every weight is 1
    assert th.equal(awr_weights(advantage, beta=0.0, max_weight=100.0), th.ones(4))


def test_awr_actor_loss_by_hand():
    log_prob = th.tensor([-1.0, -2.0])
    weights = th.tensor([3.0, 0.5])
    assert awr_actor_loss(log_prob, weights).item() == pytest.approx((3.0 * 1.0 + 0.5 * 2.0) / 2)


@pytest.fixture
def policy() -> IQLPolicy:
    th.manual_seed(0)
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    return IQLPolicy(observation_space, action_space, lambda _: 3e-4, net_arch=[8, 8])


def test_actor_is_an_unsquashed_gaussian_with_tanh_mean(policy: IQLPolicy):
    obs = th.randn(5, 3)
    actions = th.rand(5, 2) * 1.8 - 0.9
    with th.no_grad():
        policy.actor.log_std.copy_(th.tensor([-7.0, 0.3]))  # -7 is clipped to -5
        latent = policy.actor.latent_pi(obs)
        mean = th.tanh(policy.actor.mu(latent))
        std = th.tensor([math.exp(-5.0), math.exp(0.3)])
        expected = (-0.5 * ((actions - mean) / std) ** 2 - th.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=1)
        th.testing.assert_close(policy.actor.log_prob(obs, actions), expected)
        th.testing.assert_close(policy.actor(obs, deterministic=True), mean)
        samples = policy.actor(obs.repeat(200, 1), deterministic=False)
    assert samples.abs().max() <= 1.0  # exploration samples are clipped to the bounds


def test_log_std_is_state_independent_and_starts_at_zero(policy: IQLPolicy):
    assert policy.actor.log_std.shape == (2,)
    assert th.equal(policy.actor.log_std.detach(), th.zeros(2))


def test_ensemble_critic_equals_independent_mlps(policy: IQLPolicy):
    """Each member of the batched ensemble is the MLP its weights describe, on concat(s, a)."""
    obs, actions = th.randn(4, 3), th.randn(4, 2)
    inputs = th.cat([obs, actions], dim=1)
    layers = [module for module in policy.critic.q_networks if hasattr(module, "weight")]
    q_values = policy.critic(obs, actions)
    assert q_values.shape == (2, 4)
    for member in range(2):
        hidden = inputs
        for index, layer in enumerate(layers):
            hidden = hidden @ layer.weight[member] + layer.bias[member]
            hidden = th.relu(hidden) if index < len(layers) - 1 else hidden
        th.testing.assert_close(q_values[member], hidden.squeeze(-1))
    # the two critics are independent networks
    assert not th.equal(layers[0].weight[0], layers[0].weight[1])


def test_orthogonal_init_and_targets(policy: IQLPolicy):
    gain = math.sqrt(2)
    first_layer = policy.value_net.v_network[0][0]
    weight = first_layer.weight  # (8, 3): orthonormal columns scaled by the gain
    th.testing.assert_close(weight.T @ weight, gain**2 * th.eye(3), atol=1e-5, rtol=1e-5)
    for layer in policy.modules():
        if isinstance(layer, nn.Linear):
            assert th.equal(layer.bias, th.zeros_like(layer.bias))
    ensemble_weight = policy.critic.q_networks[0].weight[0]  # (in=5, out=8)
    th.testing.assert_close(ensemble_weight @ ensemble_weight.T, gain**2 * th.eye(5), atol=1e-5, rtol=1e-5)
    for source, target in zip(policy.critic.parameters(), policy.critic_target.parameters()):
        assert th.equal(source, target) and not target.requires_grad


def test_actor_dropout_only_in_training_mode():
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    policy = IQLPolicy(observation_space, action_space, lambda _: 3e-4, net_arch=[64], actor_dropout=0.5)
    assert any(isinstance(module, nn.Dropout) for module in policy.actor.latent_pi)
    obs = th.randn(1, 3).repeat(50, 1)
    policy.set_training_mode(True)
    assert policy.actor(obs, deterministic=True).std(dim=0).max() > 0
    policy.set_training_mode(False)
    assert policy.actor(obs, deterministic=True).std(dim=0).max() == 0


def test_orthogonal_init_is_reproducible():
    first, second = nn.Linear(4, 6), nn.Linear(4, 6)
    th.manual_seed(1)
    orthogonal_init_(first)
    th.manual_seed(1)
    orthogonal_init_(second)
    assert th.equal(first.weight, second.weight)
