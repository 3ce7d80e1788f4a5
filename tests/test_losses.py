"""Each IQL formula against values computed by hand, and the networks against their definitions."""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_iql.iql.losses import awr_actor_loss, awr_weights, ddpg_bc_actor_loss, expectile_loss, twin_critic_loss
from sb3_iql.iql.policies import EnsembleLayerNorm, EnsembleLinear, IQLPolicy, orthogonal_init_


def test_expectile_loss_by_hand():
    diff = th.tensor([2.0, -1.0, 0.5, -3.0])
    # tau = 0.9: positive errors weigh 0.9, negative ones 0.1
    expected = (0.9 * 4.0 + 0.1 * 1.0 + 0.9 * 0.25 + 0.1 * 9.0) / 4
    assert expectile_loss(diff, 0.9).item() == pytest.approx(expected)
    # tau = 0.5 is half the mean squared error
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 0.25 + 9) / 4)


def test_expectile_loss_keeps_the_dtype_of_its_input_for_float_and_tensor_expectiles():
    """In float64 the weights are exactly tau and 1 - tau (not rounded to float32), as with a 0-d tensor tau (what
    the compiled and many-seed updates pass)."""
    diff = th.tensor([-1.0, 1.0], dtype=th.float64)
    expected = ((1.0 - 0.9) + 0.9) / 2
    assert expectile_loss(diff, 0.9).item() == expected
    assert expectile_loss(diff, th.tensor(0.9, dtype=th.float64)).item() == expected


def test_twin_critic_loss_sums_the_critics():
    current_q = th.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]])  # (n_critics=2, batch=3)
    target = th.tensor([2.0, 2.0, 2.0])
    # critic 1: mean(1, 0, 1) = 2/3; critic 2: mean(4, 4, 0) = 8/3; summed over the critics, averaged over the batch
    assert twin_critic_loss(current_q, target).item() == pytest.approx(10 / 3)


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


def test_ddpg_bc_actor_loss_by_hand_and_its_q_term_is_scale_free():
    policy_q = th.tensor([-2.0, -6.0], requires_grad=True)
    log_prob = th.tensor([-1.0, -3.0])
    # -mean(Q) / mean(|Q|) - alpha * mean(log_prob) = 4 / 4 + 0.5 * 2
    assert ddpg_bc_actor_loss(policy_q, log_prob, bc_weight=0.5).item() == pytest.approx(2.0)
    ddpg_bc_actor_loss(policy_q, log_prob, bc_weight=0.5).backward()
    # the normaliser carries no gradient: d/dQ_i = -1 / (batch * mean|Q|) = -1 / 8
    np.testing.assert_allclose(policy_q.grad.numpy(), [-0.125, -0.125])
    scaled = ddpg_bc_actor_loss(10 * policy_q.detach(), log_prob, bc_weight=0.5)
    assert scaled.item() == pytest.approx(2.0)  # rewards ten times larger give the same loss
    # DDPG + AWR: the log-likelihood term weighted, 1 + 0.5 * (3 * 1 + 0.5 * 3) / 2
    weighted = ddpg_bc_actor_loss(policy_q.detach(), log_prob, bc_weight=0.5, weights=th.tensor([3.0, 0.5]))
    assert weighted.item() == pytest.approx(1.0 + 0.5 * 4.5 / 2)
    # Q of both signs: the normaliser is mean(|Q|) = 4, not |mean(Q)| = 2: -(-2) / 4 + 0.5 * 2
    assert ddpg_bc_actor_loss(th.tensor([2.0, -6.0]), log_prob, bc_weight=0.5).item() == pytest.approx(1.5)


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
        policy.actor.log_std.copy_(th.tensor([-1.0, 3.0]))  # 3 is clipped to 2
        th.testing.assert_close(policy.actor.distribution(obs).stddev, th.tensor([math.exp(-1.0), math.exp(2.0)]).expand(5, 2))
        policy.actor.log_std.copy_(th.tensor([-7.0, 0.3]))
        th.testing.assert_close(policy.actor(obs, deterministic=True), mean)
        samples = policy.actor(obs.repeat(200, 1), deterministic=False)
    assert samples.abs().max() <= 1.0  # exploration samples are clipped to the bounds


def test_log_std_is_state_independent_and_starts_at_zero(policy: IQLPolicy):
    assert th.equal(policy.actor.log_std.detach(), th.zeros(2))
    first, second = (policy.actor.distribution(th.randn(4, 3)).stddev for _ in range(2))
    assert th.equal(first, second) and th.allclose(first, th.ones(4, 2))  # exp(0), whatever the observation


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


def test_every_layer_starts_orthogonal_with_gain_sqrt_2_and_zero_biases_as_the_reference_s():
    """The reference's ``default_init`` is orthogonal(sqrt(2)) on every Dense layer, the output layers (the actor's
    mean, V's and each Q's) included."""
    policy = small_policy(net_arch=[64, 32])
    weights = []  # (out, in) each
    for network in (policy.actor, policy.critic, policy.value_net):
        for layer in network.modules():
            if isinstance(layer, nn.Linear):
                weights.append(layer.weight)
                assert th.equal(layer.bias, th.zeros_like(layer.bias))
            elif isinstance(layer, EnsembleLinear):  # stored transposed, one (in, out) per critic
                weights += [member.T for member in layer.weight]
                assert th.equal(layer.bias, th.zeros_like(layer.bias))
    assert len(weights) == 3 + 2 * 3 + 3  # actor: 2 hidden + mean; critics: 2 x 3; V: 2 hidden + output
    for weight in weights:  # orthonormal rows or columns, whichever are fewer, scaled by the gain
        gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
        th.testing.assert_close(gram, 2.0 * th.eye(len(gram)), atol=1e-5, rtol=1e-5)


def test_actor_dropout_follows_every_hidden_activation():
    """The reference's MLP: Dense -> ReLU -> Dropout for each hidden layer (activate_final), none in the critics."""
    policy = small_policy(net_arch=[64, 64], actor_dropout=0.1)
    kinds = [type(module) for module in policy.actor.latent_pi]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout] * 2
    assert not any(isinstance(module, nn.Dropout) for module in [*policy.critic.modules(), *policy.value_net.modules()])


def test_the_constructor_s_defaults_are_the_reference_s():
    """The reference's MuJoCo configuration and learner (the step-by-step reference test reads these off the model,
    so it would not see them change)."""
    from sb3_iql import IQL
    from sb3_iql.common.offline import DEFAULT_OFFLINE_STEPS
    from sb3_iql.iql.policies import DEFAULT_NET_ARCH

    model = IQL("MlpPolicy", "Pendulum-v1", buffer_size=10)
    assert (model.expectile, model.beta, model.max_weight) == (0.7, 3.0, 100.0)
    assert (model.gamma, model.tau, model.batch_size, model.learning_rate) == (0.99, 0.005, 256, 3e-4)
    assert DEFAULT_NET_ARCH == [256, 256] and model.policy.net_arch == [256, 256]
    assert DEFAULT_OFFLINE_STEPS == model.offline_steps == 1_000_000
    assert (model.actor_lr_schedule, model.critic_lr_schedule, model.dropout) == ("cosine", "constant", None)


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


def test_orthogonal_init_has_orthonormal_rows_scaled_by_the_gain():
    layer, ensemble = nn.Linear(4, 6), EnsembleLinear(3, 6, 4)
    orthogonal_init_(layer, gain=0.5)
    orthogonal_init_(ensemble, gain=0.5)
    th.testing.assert_close(layer.weight.T @ layer.weight, 0.25 * th.eye(4), atol=1e-6, rtol=1e-6)
    for member in range(3):  # stored transposed: (in=6, out=4)
        th.testing.assert_close(ensemble.weight[member].T @ ensemble.weight[member], 0.25 * th.eye(4), atol=1e-6, rtol=1e-6)
    assert not th.equal(ensemble.weight[0], ensemble.weight[1])
    assert th.equal(layer.bias, th.zeros(6)) and th.equal(ensemble.bias, th.zeros(3, 1, 4))


def small_policy(**kwargs) -> IQLPolicy:
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    return IQLPolicy(observation_space, action_space, lambda _: 3e-4, **{"net_arch": [64, 64], **kwargs})


def test_sigmoid_log_std_starts_at_its_initial_value_and_stays_inside_the_bounds():
    policy = small_policy(log_std_parametrization="sigmoid", log_std_init=-1.5)
    assert th.equal(policy.actor.log_std.detach(), th.zeros(2))  # -5 + 7 * sigmoid(0) = -1.5, d3rlpy's start
    th.testing.assert_close(policy.actor.log_std_value().detach(), th.full((2,), -1.5))
    with th.no_grad():
        policy.actor.log_std.copy_(th.tensor([-50.0, 50.0]))
    th.testing.assert_close(policy.actor.log_std_value().detach(), th.tensor([-5.0, 2.0]))
    std = policy.actor.distribution(th.zeros(1, 3)).stddev
    th.testing.assert_close(std, th.tensor([[math.exp(-5.0), math.exp(2.0)]]))
    other = small_policy(log_std_parametrization="sigmoid", log_std_init=0.5)
    th.testing.assert_close(other.actor.log_std_value().detach(), th.full((2,), 0.5))
    clipped = small_policy(log_std_init=-1.5)
    assert th.equal(clipped.actor.log_std.detach(), th.full((2,), -1.5))
    integer = small_policy(log_std_init=-3)  # as rl-zoo's files write it
    assert integer.actor.log_std.dtype == th.float32 and th.equal(integer.actor.log_std.detach(), th.full((2,), -3.0))


def test_log_std_options_are_checked():
    with pytest.raises(ValueError, match="log_std_parametrization"):
        small_policy(log_std_parametrization="softplus")
    with pytest.raises(ValueError, match="strictly inside"):
        small_policy(log_std_parametrization="sigmoid", log_std_init=2.0)
    with pytest.raises(ValueError, match="weight_init"):
        small_policy(weight_init="xavier")


def test_pytorch_init_draws_every_layer_as_nn_linear_does():
    policy = small_policy(weight_init="pytorch")
    first = policy.value_net.v_network[0][0]  # Linear(3, 64): U(-1/sqrt(3), 1/sqrt(3))
    assert first.weight.abs().max() <= 1 / math.sqrt(3) and first.bias.abs().max() > 0
    critic_hidden = policy.critic.q_networks[2].weight  # (2, 64, 64): U(-1/8, 1/8), not orthogonal
    assert critic_hidden.abs().max() <= 1 / 8 and critic_hidden.std().item() == pytest.approx(1 / 8 / math.sqrt(3), rel=0.05)
    assert policy.critic.q_networks[0].bias.abs().max() > 0
    assert not th.equal(critic_hidden[0], critic_hidden[1])
    for source, target in zip(policy.critic.parameters(), policy.critic_target.parameters()):
        assert th.equal(source, target)


class PretrainedEncoder(BaseFeaturesExtractor):
    """A user's extractor whose weights are set when it is built (loaded from a checkpoint, say)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 4):
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(observation_space.shape[0], features_dim)
        with th.no_grad():
            self.linear.weight.fill_(0.5)
            self.linear.bias.fill_(0.25)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


@pytest.mark.parametrize("weight_init", ["orthogonal", "pytorch"])
def test_a_custom_features_extractor_keeps_its_weights_and_the_heads_are_initialised(weight_init):
    """As in SAC: ``weight_init`` re-drew a custom (e.g. pretrained) extractor's linear layers before."""
    policy = small_policy(weight_init=weight_init, features_extractor_class=PretrainedEncoder)
    for network in (policy.actor, policy.critic, policy.value_net, policy.critic_target):
        assert th.equal(network.features_extractor.linear.weight, th.full((4, 3), 0.5))
        assert th.equal(network.features_extractor.linear.bias, th.full((4,), 0.25))
    first = policy.value_net.v_network[0][0]  # the heads are still the init's: zero biases when orthogonal
    assert first.weight.shape == (64, 4) and (first.bias.abs().max() == 0) == (weight_init == "orthogonal")


def test_spread_first_layer_biases_scale_with_each_units_weight_norm_and_leave_the_rest_at_zero():
    th.manual_seed(0)
    policy = small_policy(net_arch=[512, 64], spread_first_layer_biases=True)
    th.manual_seed(0)
    plain = small_policy(net_arch=[512, 64])
    firsts = {
        "actor": (policy.actor.latent_pi[0], plain.actor.latent_pi[0]),
        "value": (policy.value_net.v_network[0][0], plain.value_net.v_network[0][0]),
        "critic": (policy.critic.q_networks[0], plain.critic.q_networks[0]),
    }
    for name, (layer, reference) in firsts.items():
        assert th.equal(layer.weight, reference.weight), name  # the weights are the initialisation's
        norms = layer.weight.norm(dim=1, keepdim=True) if name == "critic" else layer.weight.norm(dim=1)
        ratio = (layer.bias / norms).flatten()  # N(0, 1): the kink w.x = -b sits |b| / |w| from the origin
        assert abs(ratio.mean().item()) < 0.15 and ratio.std().item() == pytest.approx(1.0, abs=0.1), name
    assert th.equal(policy.actor.latent_pi[2].bias, th.zeros(64))  # deeper layers keep their zero biases
    assert th.equal(policy.critic.q_networks[2].bias, th.zeros(2, 1, 64))
    for source, target in zip(policy.critic.parameters(), policy.critic_target.parameters()):
        assert th.equal(source, target)


def test_critic_layer_norm_normalises_each_member_with_its_own_affine_map():
    policy = small_policy(critic_layer_norm=True)
    norms = [module for module in policy.critic.q_networks if isinstance(module, EnsembleLayerNorm)]
    assert len(norms) == 2 and any(isinstance(module, nn.LayerNorm) for module in policy.value_net.modules())
    assert not any(isinstance(module, nn.LayerNorm) for module in policy.actor.modules())
    with th.no_grad():
        norms[0].weight[1].fill_(3.0)
    hidden = th.randn(2, 5, 64)
    out = norms[0](hidden)
    th.testing.assert_close(out[0], nn.functional.layer_norm(hidden[0], (64,)))
    th.testing.assert_close(out[1], 3.0 * nn.functional.layer_norm(hidden[1], (64,)))
