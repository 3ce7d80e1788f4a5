"""
Differential test of sb3_iql's IQL against d3rlpy's IQL (d3rlpy 2.8.1), update by update.

Both algorithms are built on the same small synthetic continuous-control dataset (6-d observations, 2-d actions
in (-1, 1), 40 episodes of 50 steps cut by time limits, no terminal states), each through its own data path:
``IQL.add_transitions`` (sb3_iql's replay buffer) and ``MDPDataset`` with its transition picker (d3rlpy). The
sb3_iql networks' initial weights are copied into d3rlpy (actor latent layers, mean layer and log-std parameter;
each member of the batched critic ensemble into its own d3rlpy Q-function; target critics; value network). Then
both run the same minibatches (indices drawn by one NumPy generator): sb3_iql through ``IQL._update``, d3rlpy
through ``IQLImpl.update`` (what ``algo.update`` calls). For each configuration the script reports:

- the largest difference between the two libraries' batches (the two data paths must agree exactly);
- the largest absolute difference of the gradients after update 1, and the largest gradient;
- the largest absolute difference of the parameters after 1 and ``--updates`` updates;
- the value, Q and actor losses at a few updates (``--all-steps``: every update), and their largest difference.

Differences are given per column: ``actor_mean`` (latent layers and mean layer), ``actor_log_std`` (compared as
the log standard deviation itself; its gradients are those of the raw parameters), ``critic``, ``critic_target``
and ``value``.

Configurations:

- ``default``: sb3_iql's defaults (``update_order="sequential"``, clipped log-std parameter initialised at 0,
  orthogonal initialisation, cosine actor learning rate); expected to differ from d3rlpy.
- ``d3rlpy-matched``: ``update_order="joint"``, sigmoid log-std initialised at -1.5, PyTorch initialisation,
  constant actor learning rate; must agree with d3rlpy within ``TOLERANCES``. It keeps sb3_iql's fused Adam
  (non-fused gives the same agreement).

Shared hyperparameters: gamma 0.99, tau 0.005, expectile 0.9 (0.875 in float64, see below), beta (d3rlpy
``weight_temp``) 10, max weight 100, batch 64, Adam lr 3e-4, hidden layers (32, 32), 2 critics, raw rewards.

Differences between the libraries found on the way, beyond the three choices of the matched configuration:

- d3rlpy drops the last transition of every episode that is not terminated (it has no next observation). The
  d3rlpy dataset is therefore given each episode's final observation as an extra row (with a padding action and
  reward, never used) so that both libraries hold the same 2000 transitions.
- d3rlpy computes the expectile weights in float32 whatever the networks' dtype
  (``(expectile - (diff < 0.0).float()).abs()``): with expectile 0.9 the float64 runs agree only to ~2e-9
  (``--float64-expectile 0.9``); the float64 runs use 7/8, exact in float32, and agree to ~1e-15.
- d3rlpy sums the critics' Q losses in a float32 tensor: the reported Q loss is rounded to float32 (its gradient
  is exact), so in float64 it is compared to ``FLOAT64_Q_LOSS_TOLERANCE``.
- The Polyak update is ``(1 - tau) Qt + tau Q`` in d3rlpy and ``lerp`` in sb3_iql: a rounding difference only.
- sb3_iql rescaled dataset actions with ``2 (a - low) / (high - low) - 1`` even for a [-1, 1] space, which moved a
  float32 action by 1 ulp; it now stores such actions as they are. The dataset's actions are multiples of 2^-10
  (exact either way), so that both libraries get bitwise identical batches.
- SB3's preprocessing casts Box observations to float32: the float64 runs bypass it
  (``sb3_float64_observations``).

Usage::

    python benchmarks/d3rlpy_diff.py                     # both configurations, float32 and float64, 100 updates
    python benchmarks/d3rlpy_diff.py --updates 300 --dtypes float32 --all-steps

Exit status 1 when the matched configuration disagrees beyond the tolerance in any dtype run.
"""

import argparse
import contextlib
import dataclasses
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import structlog
import torch as th
from gymnasium import spaces
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn

from sb3_iql import IQL
from sb3_iql.data.minari_loader import Transitions
from sb3_iql.iql import policies
from sb3_iql.iql.iql import METRIC_NAMES
from sb3_iql.iql.policies import LOG_STD_BOUNDS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import d3rlpy
    from d3rlpy.dataset import MDPDataset, TransitionMiniBatch
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.torch_utility import TorchMiniBatch

OBS_DIM = 6
ACTION_DIM = 2
EPISODE_LENGTH = 50
N_EPISODES = 40
N_TRANSITIONS = EPISODE_LENGTH * N_EPISODES
HIDDEN = [32, 32]
BATCH_SIZE = 64
GAMMA = 0.99
TAU = 0.005
EXPECTILE = 0.9
BETA = 10.0
MAX_WEIGHT = 100.0
LEARNING_RATE = 3e-4
#: Largest dataset action magnitude: inside sb3_iql's clip to +-(1 - 1e-5), so both libraries see the same actions.
MAX_ACTION = 0.99
#: Dataset actions are multiples of 1 / ACTION_GRID (see ``make_data``).
ACTION_GRID = 1024
D3RLPY_DEVICE = "cpu:0"

#: sb3_iql keyword arguments of each configuration (on top of the shared hyperparameters).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "d3rlpy-matched": {
        "update_order": "joint",
        "actor_lr_schedule": "constant",
        "policy_kwargs": {"log_std_parametrization": "sigmoid", "log_std_init": -1.5, "weight_init": "pytorch"},
    },
}
#: Largest allowed difference (parameters, gradients, losses relative to max(1, |loss|)) of the matched config.
TOLERANCES: dict[str, float] = {"float32": 1e-5, "float64": 1e-10}
#: d3rlpy sums the critics' Q losses in a float32 tensor (the loss it reports; the gradient is exact): in float64,
#: its Q loss is compared to float32 precision.
FLOAT64_Q_LOSS_TOLERANCE = 1e-6
#: Expectile of each dtype's runs. In float64, 7/8: d3rlpy computes the expectile weights in float32
#: (``(expectile - (diff < 0).float()).abs()``), exact for 7/8 but off by 2.4e-7 (relative) for 1 - 0.9.
EXPECTILES: dict[str, float] = {"float32": EXPECTILE, "float64": 0.875}
DTYPES: dict[str, th.dtype] = {"float32": th.float32, "float64": th.float64}
#: Columns of the reports: the parameter groups, the actor split into its mean network (latent layers and mean
#: layer) and its log standard deviation.
COLUMNS = ("actor_mean", "actor_log_std", "critic", "critic_target", "value")
LOSS_NAMES = ("value", "q", "actor")


# --- data ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SyntheticData:
    """
    Fixed-length episodes cut by a time limit (no terminal state).

    :param observations: every observation of each episode, final one included, ``(n_episodes, length + 1, obs_dim)``
    :param actions: ``(n_episodes, length, action_dim)``, in ``[-MAX_ACTION, MAX_ACTION]``
    :param rewards: ``(n_episodes, length)``
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    @property
    def n_episodes(self) -> int:
        return self.actions.shape[0]

    @property
    def length(self) -> int:
        return self.actions.shape[1]


def make_data(seed: int = 0) -> SyntheticData:
    """
    A random-walk dataset: ``s' = 0.9 s + 0.3 [a, a, a] + noise``, reward ``-|s[:2]|^2 / 10 + a_0 / 2``; actions
    are multiples of ``1 / ACTION_GRID`` in ``[-MAX_ACTION, MAX_ACTION]``.
    """
    rng = np.random.default_rng(seed)
    observations = np.empty((N_EPISODES, EPISODE_LENGTH + 1, OBS_DIM), dtype=np.float32)
    observations[:, 0] = rng.normal(size=(N_EPISODES, OBS_DIM))
    actions = MAX_ACTION * np.tanh(rng.normal(size=(N_EPISODES, EPISODE_LENGTH, ACTION_DIM)))
    # Multiples of 2^-10: sb3_iql's rescaling 2 (a - low) / (high - low) - 1 from the action space is then exact.
    actions = (np.round(actions * ACTION_GRID) / ACTION_GRID).astype(np.float32)
    for t in range(EPISODE_LENGTH):
        noise = 0.1 * rng.normal(size=(N_EPISODES, OBS_DIM))
        observations[:, t + 1] = 0.9 * observations[:, t] + 0.3 * np.tile(actions[:, t], 3) + noise
    rewards = -0.1 * np.square(observations[:, :-1, :2]).sum(-1) + 0.5 * actions[..., 0]
    return SyntheticData(observations, actions, rewards.astype(np.float32))


def sb3_transitions(data: SyntheticData) -> Transitions:
    """The dataset as sb3_iql's flat transitions, ``n = n_episodes * length``, the last step of each truncated."""
    truncations = np.zeros((data.n_episodes, data.length), dtype=bool)
    truncations[:, -1] = True
    return Transitions(
        observations=data.observations[:, :-1].reshape(-1, OBS_DIM),
        next_observations=data.observations[:, 1:].reshape(-1, OBS_DIM),
        actions=data.actions.reshape(-1, ACTION_DIM),
        rewards=data.rewards.reshape(-1),
        terminations=np.zeros(truncations.size, dtype=bool),
        truncations=truncations.reshape(-1),
        episode_returns=data.rewards.sum(axis=1),
    )


def d3rlpy_data(data: SyntheticData) -> MDPDataset:
    """
    The dataset as a d3rlpy ``MDPDataset`` of ``n_episodes * (length + 1)`` rows: each episode with its final
    observation as an extra row (zero action and reward, never used), flagged as a timeout. d3rlpy makes
    ``length`` transitions of an episode of ``length + 1`` rows that is not terminated.
    """
    pad = np.zeros((data.n_episodes, 1), dtype=np.float32)
    actions = np.concatenate([data.actions, np.zeros((data.n_episodes, 1, ACTION_DIM), dtype=np.float32)], axis=1)
    timeouts = np.zeros((data.n_episodes, data.length + 1), dtype=np.float32)
    timeouts[:, -1] = 1.0
    return MDPDataset(
        observations=data.observations.reshape(-1, OBS_DIM),
        actions=actions.reshape(-1, ACTION_DIM),
        rewards=np.concatenate([data.rewards, pad], axis=1).reshape(-1, 1),
        terminals=np.zeros((timeouts.size, 1), dtype=np.float32),
        timeouts=timeouts.reshape(-1, 1),
    )


class SyntheticEnv(gym.Env):
    """An environment with the dataset's spaces, only there to give ``IQL`` its spaces (never stepped)."""

    observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(OBS_DIM, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(OBS_DIM, dtype=np.float32), 0.0, False, False, {}


# --- models -------------------------------------------------------------------------------------------------------


def make_sb3(config_name: str, data: SyntheticData, expectile: float = EXPECTILE, seed: int = 0) -> IQL:
    """sb3_iql's IQL in configuration ``config_name``, on CPU, with the dataset in its replay buffer."""
    kwargs = {key: dict(value) if isinstance(value, dict) else value for key, value in CONFIGS[config_name].items()}
    policy_kwargs = {"net_arch": HIDDEN, **kwargs.pop("policy_kwargs", {})}
    model = IQL(
        "MlpPolicy",
        SyntheticEnv(),
        buffer_size=N_TRANSITIONS,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        gamma=GAMMA,
        tau=TAU,
        expectile=expectile,
        beta=BETA,
        max_weight=MAX_WEIGHT,
        reward_transform=None,
        policy_kwargs=policy_kwargs,
        device="cpu",
        seed=seed,
        **kwargs,
    )
    model.add_transitions(sb3_transitions(data))
    return model


def make_d3rlpy(dataset: MDPDataset, expectile: float = EXPECTILE) -> d3rlpy.algos.IQL:
    """d3rlpy's IQL with the same hyperparameters and layer sizes, built for ``dataset``'s shapes (CPU)."""
    encoder = VectorEncoderFactory(hidden_units=HIDDEN)
    config = d3rlpy.algos.IQLConfig(
        batch_size=BATCH_SIZE,
        gamma=GAMMA,
        tau=TAU,
        n_critics=2,
        expectile=expectile,
        weight_temp=BETA,
        max_weight=MAX_WEIGHT,
        actor_learning_rate=LEARNING_RATE,
        critic_learning_rate=LEARNING_RATE,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
        value_encoder_factory=encoder,
    )
    algo = config.create(device=D3RLPY_DEVICE)
    algo.build_with_dataset(dataset)
    return algo


def _identity(tensor: th.Tensor) -> th.Tensor:
    return tensor


@dataclasses.dataclass(frozen=True)
class ParamPair:
    """
    One sb3_iql parameter and its d3rlpy counterpart.

    :param column: where its differences are reported, one of ``COLUMNS``
    :param name: readable name
    :param sb3: the sb3_iql parameter
    :param d3: the d3rlpy parameter
    :param layout: sb3_iql raw tensor (parameter or gradient) -> d3rlpy's layout (e.g. one critic, transposed)
    :param sb3_value: sb3_iql parameter -> the value compared, in d3rlpy's layout (the log std for the log-std)
    :param d3_value: d3rlpy parameter -> the value compared
    :param d3_raw: compared value -> d3rlpy parameter (inverse of ``d3_value``)
    """

    column: str
    name: str
    sb3: nn.Parameter
    d3: nn.Parameter
    layout: Callable[[th.Tensor], th.Tensor] = _identity
    sb3_value: Callable[[th.Tensor], th.Tensor] | None = None
    d3_value: Callable[[th.Tensor], th.Tensor] = _identity
    d3_raw: Callable[[th.Tensor], th.Tensor] = _identity

    def values(self) -> tuple[th.Tensor, th.Tensor]:
        """:return: the compared values of both parameters, same shape"""
        sb3_value = self.layout(self.sb3) if self.sb3_value is None else self.sb3_value(self.sb3)
        return sb3_value.detach(), self.d3_value(self.d3).detach()

    def grads(self) -> tuple[th.Tensor, th.Tensor]:
        """:return: the gradients of both raw parameters (zeros where there is none), d3rlpy's shape"""
        sb3_grad = th.zeros_like(self.d3) if self.sb3.grad is None else self.layout(self.sb3.grad)
        d3_grad = th.zeros_like(self.d3) if self.d3.grad is None else self.d3.grad
        return sb3_grad, d3_grad


def _linear_pairs(
    column: str, prefix: str, sb3_layers: Sequence[nn.Module], d3_layers: Sequence[nn.Module]
) -> list[ParamPair]:
    """The ``nn.Linear`` layers of two sequences of modules, in order (the activations are skipped)."""
    sb3_linear = [layer for layer in sb3_layers if isinstance(layer, nn.Linear)]
    d3_linear = [layer for layer in d3_layers if isinstance(layer, nn.Linear)]
    assert len(sb3_linear) == len(d3_linear), (column, len(sb3_linear), len(d3_linear))
    pairs = []
    for index, (sb3_layer, d3_layer) in enumerate(zip(sb3_linear, d3_linear)):
        pairs.append(ParamPair(column, f"{prefix}{index}.weight", sb3_layer.weight, d3_layer.weight))
        pairs.append(ParamPair(column, f"{prefix}{index}.bias", sb3_layer.bias, d3_layer.bias))
    return pairs


def _ensemble_pairs(column: str, sb3_critic: nn.Module, d3_q_funcs: nn.ModuleList) -> list[ParamPair]:
    """Member ``m`` of each ``EnsembleLinear`` (weight ``(n, in, out)``, bias ``(n, 1, out)``) <-> Q-function ``m``."""
    sb3_layers = [layer for layer in sb3_critic.q_networks if hasattr(layer, "weight")]
    pairs = []
    for member, q_func in enumerate(d3_q_funcs):
        d3_layers = [layer for layer in q_func._encoder._layers if isinstance(layer, nn.Linear)] + [q_func._fc]
        assert len(sb3_layers) == len(d3_layers)
        for index, (sb3_layer, d3_layer) in enumerate(zip(sb3_layers, d3_layers)):
            pairs.append(
                ParamPair(
                    column,
                    f"q{member}.{index}.weight",
                    sb3_layer.weight,
                    d3_layer.weight,
                    layout=lambda tensor, m=member: tensor[m].T,
                )
            )
            pairs.append(
                ParamPair(
                    column,
                    f"q{member}.{index}.bias",
                    sb3_layer.bias,
                    d3_layer.bias,
                    layout=lambda tensor, m=member: tensor[m, 0],
                )
            )
    return pairs


def pair_parameters(model: IQL, algo: d3rlpy.algos.IQL) -> list[ParamPair]:
    """Every trainable parameter of sb3_iql's networks with its d3rlpy counterpart (d3rlpy's layout)."""
    modules = algo.impl.modules
    low, high = LOG_STD_BOUNDS
    policy = modules.policy
    assert (policy._min_logstd, policy._max_logstd) == (low, high)
    actor = model.actor

    def sb3_log_std(raw: th.Tensor) -> th.Tensor:
        assert raw is actor.log_std
        return actor.log_std_value().reshape(1, -1)

    pairs = _linear_pairs("actor_mean", "latent", actor.latent_pi, policy._encoder._layers)
    pairs += _linear_pairs("actor_mean", "mu", [actor.mu], [policy._mu])
    pairs.append(
        ParamPair(
            "actor_log_std",
            "log_std",
            actor.log_std,
            policy._logstd,
            layout=lambda tensor: tensor.reshape(1, -1),
            sb3_value=sb3_log_std,
            d3_value=lambda raw: low + (high - low) * th.sigmoid(raw),
            d3_raw=lambda log_std: th.logit((log_std - low) / (high - low)),
        )
    )
    pairs += _ensemble_pairs("critic", model.critic, modules.q_funcs)
    pairs += _ensemble_pairs("critic_target", model.critic_target, modules.targ_q_funcs)
    value_layers = [*model.value_net.v_network[0], model.value_net.v_network[1]]
    pairs += _linear_pairs("value", "v", value_layers, [*modules.value_func._encoder._layers, modules.value_func._fc])
    n_d3 = sum(
        1 for module in (policy, modules.q_funcs, modules.targ_q_funcs, modules.value_func) for _ in module.parameters()
    )
    n_sb3 = sum(1 for module in (actor, model.critic, model.critic_target, model.value_net) for _ in module.parameters())
    assert len(pairs) == n_d3 and len({id(pair.sb3) for pair in pairs}) == n_sb3, (len(pairs), n_d3, n_sb3)
    return pairs


def copy_weights(pairs: Sequence[ParamPair]) -> None:
    """Set every d3rlpy parameter to its sb3_iql counterpart's value."""
    with th.no_grad():
        for pair in pairs:
            pair.d3.copy_(pair.d3_raw(pair.values()[0]))


def set_dtype(model: IQL, algo: d3rlpy.algos.IQL, dtype: th.dtype) -> None:
    """Cast both libraries' networks in place (before any optimizer step, so the Adam states follow)."""
    model.policy.to(dtype)
    modules = algo.impl.modules
    for module in (modules.policy, modules.q_funcs, modules.targ_q_funcs, modules.value_func):
        module.to(dtype)


@contextlib.contextmanager
def sb3_float64_observations(enabled: bool) -> Iterator[None]:
    """
    Within the block, SB3's preprocessing (which casts Box observations to float32) leaves float64 tensors as they
    are, so that sb3_iql's networks can run in float64. It is replaced in ``sb3_iql.iql.policies``, where every
    sb3_iql network's ``extract_features`` looks up ``preprocess_observations``. Nothing changes when not ``enabled``.
    """
    original = policies.preprocess_observations

    def preprocess_observations(obs: Any, observation_space: spaces.Space, scaling: Any) -> Any:
        if isinstance(observation_space, spaces.Box) and isinstance(obs, th.Tensor) and obs.dtype == th.float64:
            return obs
        return original(obs, observation_space, scaling)

    if enabled:
        policies.preprocess_observations = preprocess_observations
    try:
        yield
    finally:
        policies.preprocess_observations = original


def max_diffs(pairs: Sequence[ParamPair], kind: str) -> dict[str, float]:
    """:param kind: ``"values"`` or ``"grads"``
    :return: column of ``COLUMNS`` -> largest absolute difference over its parameters"""
    diffs = dict.fromkeys(COLUMNS, 0.0)
    for pair in pairs:
        sb3_tensor, d3_tensor = getattr(pair, kind)()
        assert sb3_tensor.shape == d3_tensor.shape, (pair.name, sb3_tensor.shape, d3_tensor.shape)
        diffs[pair.column] = max(diffs[pair.column], (sb3_tensor.double() - d3_tensor.double()).abs().max().item())
    return diffs


def grad_scales(pairs: Sequence[ParamPair]) -> dict[str, float]:
    """:return: column of ``COLUMNS`` -> largest absolute gradient (d3rlpy's) over its parameters"""
    scales = dict.fromkeys(COLUMNS, 0.0)
    for pair in pairs:
        scales[pair.column] = max(scales[pair.column], pair.grads()[1].abs().max().item())
    return scales


# --- batches ------------------------------------------------------------------------------------------------------


def sb3_batch(model: IQL, indices: np.ndarray, dtype: th.dtype) -> ReplayBufferSamples:
    """
    sb3_iql's transitions ``indices``, shape ``(batch,)``, gathered from its replay buffer and cast to ``dtype``.

    :return: observations ``(batch, obs_dim)``, actions ``(batch, action_dim)``, next observations, dones and
        rewards ``(batch, 1)``
    """
    samples = model.replay_buffer.gather(th.as_tensor(indices, dtype=th.long))
    return ReplayBufferSamples(*(None if tensor is None else tensor.to(dtype) for tensor in samples))


def d3rlpy_batch(dataset: MDPDataset, indices: np.ndarray, dtype: th.dtype) -> TorchMiniBatch:
    """
    d3rlpy's transitions ``indices``, shape ``(batch,)`` (transition ``i``: episode ``i // length``, step
    ``i % length``), picked by the dataset's transition picker and converted as ``algo.update`` does, then cast.

    :return: observations ``(batch, obs_dim)``, actions ``(batch, action_dim)``, rewards, terminals and intervals
        ``(batch, 1)``, next observations and next actions
    """
    transitions = [
        dataset.transition_picker(dataset.episodes[index // EPISODE_LENGTH], index % EPISODE_LENGTH) for index in indices
    ]
    batch = TorchMiniBatch.from_batch(
        TransitionMiniBatch.from_transitions(transitions), gamma=GAMMA, compute_returns_to_go=False, device=D3RLPY_DEVICE
    )
    fields = (
        "observations",
        "actions",
        "rewards",
        "next_observations",
        "next_actions",
        "returns_to_go",
        "terminals",
        "intervals",
    )
    return dataclasses.replace(batch, **{name: getattr(batch, name).to(dtype) for name in fields})


def batch_diff(sb3: ReplayBufferSamples, d3: TorchMiniBatch) -> float:
    """:return: largest absolute difference between the two batches' observations, actions, rewards, dones, next obs"""
    pairs = [
        (sb3.observations, d3.observations),
        (sb3.actions, d3.actions),
        (sb3.next_observations, d3.next_observations),
        (sb3.rewards, d3.rewards),
        (sb3.dones, d3.terminals),
    ]
    return max((a - b).abs().max().item() for a, b in pairs)


# --- comparison ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Harness:
    """
    Both algorithms with identical weights, fed the same minibatches.

    :param model: sb3_iql's IQL
    :param algo: d3rlpy's IQL
    :param dataset: d3rlpy's dataset (sb3_iql's is in ``model.replay_buffer``)
    :param pairs: the paired parameters
    :param dtype: dtype of both libraries' networks and batches
    """

    model: IQL
    algo: d3rlpy.algos.IQL
    dataset: MDPDataset
    pairs: list[ParamPair]
    dtype: th.dtype

    @classmethod
    def build(cls, config_name: str, dtype: th.dtype, seed: int = 0, expectile: float = EXPECTILE) -> "Harness":
        """Both algorithms on the data of ``seed``, d3rlpy's weights copied from sb3_iql's."""
        if config_name not in CONFIGS:
            raise ValueError(f"unknown configuration {config_name!r}, expected one of {sorted(CONFIGS)}")
        data = make_data(seed)
        th.manual_seed(seed)
        model = make_sb3(config_name, data, expectile, seed)
        dataset = d3rlpy_data(data)
        assert dataset.transition_count == N_TRANSITIONS, dataset.transition_count
        algo = make_d3rlpy(dataset, expectile)
        set_dtype(model, algo, dtype)
        pairs = pair_parameters(model, algo)
        copy_weights(pairs)
        model.policy.set_training_mode(True)
        return cls(model, algo, dataset, pairs, dtype)

    def update(self, step: int, indices: np.ndarray) -> tuple[list[float], list[float], float]:
        """
        One update of each library on transitions ``indices``, shape ``(batch,)``.

        :param step: number of this update, from 1
        :return: sb3_iql's and d3rlpy's value, Q and actor losses; the largest difference of their batches
        """
        sb3_samples, d3_samples = sb3_batch(self.model, indices, self.dtype), d3rlpy_batch(self.dataset, indices, self.dtype)
        # As IQL.learn_offline: learning rates (the cosine actor decay of "default"), update, counter.
        self.model._set_learning_rates(offline=True)
        with sb3_float64_observations(self.dtype == th.float64):
            metrics = self.model._update(sb3_samples).tolist()
        self.model._n_offline_updates += 1
        # As d3rlpy's algo.update(batch), from the TorchMiniBatch.
        d3_metrics = self.algo.impl.update(d3_samples, step - 1)
        sb3_losses = [metrics[METRIC_NAMES.index(name)] for name in ("value_loss", "critic_loss", "actor_loss")]
        d3_losses = [d3_metrics[name] for name in ("v_loss", "q_loss", "actor_loss")]
        return sb3_losses, d3_losses, batch_diff(sb3_samples, d3_samples)


def compare(
    config_name: str,
    n_updates: int = 100,
    dtype: str = "float32",
    seed: int = 0,
    checkpoints: Sequence[int] | None = None,
    expectile: float | None = None,
) -> dict[str, Any]:
    """
    Build both algorithms with identical weights and run ``n_updates`` updates on the same batches.

    :param config_name: a key of ``CONFIGS``
    :param n_updates: number of updates
    :param dtype: ``"float32"`` or ``"float64"`` (both libraries' networks and batches)
    :param seed: seed of the data, of sb3_iql's initialisation and of the batch indices
    :param checkpoints: updates after which the parameters are compared (default: 1 and ``n_updates``)
    :param expectile: expectile of both libraries (default: ``EXPECTILES[dtype]``)
    :return: ``config``, ``dtype``, ``n_updates``, ``expectile``, ``tolerance``; ``batch_diff`` (largest input
        difference over all batches); ``initial_param_diff``, ``grad_diff`` and ``grad_scale`` (largest
        gradient, both after update 1): column -> value; ``param_diff``: checkpoint -> column -> largest
        difference (columns: ``COLUMNS``); ``losses``: library -> array ``(n_updates, 3)`` of the value, Q and
        actor losses; ``loss_diff``: their absolute differences, ``(n_updates, 3)``
    """
    checkpoints = sorted({1, n_updates} if checkpoints is None else set(checkpoints))
    expectile = EXPECTILES[dtype] if expectile is None else expectile
    harness = Harness.build(config_name, DTYPES[dtype], seed, expectile)
    result: dict[str, Any] = {
        "config": config_name,
        "dtype": dtype,
        "n_updates": n_updates,
        "expectile": expectile,
        "tolerance": TOLERANCES[dtype],
        "batch_diff": 0.0,
        "initial_param_diff": max_diffs(harness.pairs, "values"),
        "param_diff": {},
    }
    losses = {"sb3_iql": np.zeros((n_updates, len(LOSS_NAMES))), "d3rlpy": np.zeros((n_updates, len(LOSS_NAMES)))}
    rng = np.random.default_rng(seed)
    for step in range(1, n_updates + 1):
        indices = rng.integers(0, N_TRANSITIONS, size=BATCH_SIZE)
        losses["sb3_iql"][step - 1], losses["d3rlpy"][step - 1], difference = harness.update(step, indices)
        result["batch_diff"] = max(result["batch_diff"], difference)
        if step == 1:
            result["grad_diff"] = max_diffs(harness.pairs, "grads")
            result["grad_scale"] = grad_scales(harness.pairs)
        if step in checkpoints:
            result["param_diff"][step] = max_diffs(harness.pairs, "values")
    result["losses"] = losses
    result["loss_diff"] = np.abs(losses["sb3_iql"] - losses["d3rlpy"])
    return result


def disagreements(result: dict[str, Any], tolerance: float | None = None) -> list[str]:
    """
    What differs beyond the tolerance: the batches at all; initial parameters and parameters at each checkpoint
    by more than ``tolerance``; gradients by more than ``tolerance * max(1, largest gradient of the column)``;
    losses by more than ``tolerance * max(1, |loss|)`` (in float64, d3rlpy's Q loss by more than
    ``FLOAT64_Q_LOSS_TOLERANCE * max(1, |loss|)``: d3rlpy sums it in a float32 tensor).

    :param result: an output of ``compare``
    :param tolerance: largest allowed difference (default: ``result["tolerance"]``)
    :return: a description of each disagreement (empty: the libraries agree)
    """
    tolerance = result["tolerance"] if tolerance is None else tolerance
    found = [f"batches differ by {result['batch_diff']:.3g}"] if result["batch_diff"] > 0.0 else []
    checks = {"initial parameters": (result["initial_param_diff"], dict.fromkeys(COLUMNS, 1.0))}
    checks["gradients after update 1"] = (
        result["grad_diff"],
        {key: max(1.0, value) for key, value in result["grad_scale"].items()},
    )
    for step, diffs in result["param_diff"].items():
        checks[f"parameters after update {step}"] = (diffs, dict.fromkeys(COLUMNS, 1.0))
    for what, (diffs, scales) in checks.items():
        found += [f"{what}: {key} differs by {diff:.3g}" for key, diff in diffs.items() if not diff <= tolerance * scales[key]]
    relative = result["loss_diff"] / np.maximum(1.0, np.abs(result["losses"]["d3rlpy"]))
    for column, name in enumerate(LOSS_NAMES):
        allowed = FLOAT64_Q_LOSS_TOLERANCE if (name == "q" and result["dtype"] == "float64") else tolerance
        worst = int(np.argmax(relative[:, column]))
        if not relative[worst, column] <= max(allowed, tolerance):
            found.append(f"{name} loss at update {worst + 1} differs by {result['loss_diff'][worst, column]:.3g}")
    return found


# --- report -------------------------------------------------------------------------------------------------------


def format_result(result: dict[str, Any], all_steps: bool = False) -> str:
    """A readable table of one ``compare`` result: differences per column, then the losses."""
    n_updates = result["n_updates"]
    lines = [
        f"== {result['config']} ({result['dtype']}, expectile {result['expectile']:g}, {n_updates} updates, "
        f"tolerance {result['tolerance']:g}) ==",
        f"largest batch input difference: {result['batch_diff']:.3g}",
        "",
        f"{'max |sb3_iql - d3rlpy|':<27}" + "".join(f"{column:>15}" for column in COLUMNS),
    ]
    rows = [
        ("initial parameters", result["initial_param_diff"]),
        ("gradients, update 1", result["grad_diff"]),
        ("  (largest gradient)", result["grad_scale"]),
    ]
    rows += [(f"parameters, update {step}", diffs) for step, diffs in result["param_diff"].items()]
    lines += [f"{label:<27}" + "".join(f"{diffs[column]:>15.3e}" for column in COLUMNS) for label, diffs in rows]
    steps = (
        range(1, n_updates + 1) if all_steps else sorted({1, 2, 10, n_updates // 2, n_updates} & set(range(1, n_updates + 1)))
    )
    header = "".join(f"{f'{name} sb3_iql':>17}{f'{name} d3rlpy':>16}{'|diff|':>10}" for name in LOSS_NAMES)
    lines += ["", f"{'update':>6}" + header]
    for step in steps:
        cells = [
            f"{result['losses']['sb3_iql'][step - 1, column]:>17.8f}{result['losses']['d3rlpy'][step - 1, column]:>16.8f}"
            f"{result['loss_diff'][step - 1, column]:>10.2e}"
            for column in range(len(LOSS_NAMES))
        ]
        lines.append(f"{step:>6}" + "".join(cells))
    largest = result["loss_diff"].max(axis=0)
    lines.append(f"{'max':>6}" + "".join(f"{'':>33}{value:>10.2e}" for value in largest))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both configurations in each dtype, print the tables; 1 if the matched configuration disagrees."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--updates", type=int, default=100, help="number of updates (default: 100)")
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes (default: float32,float64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and the batches")
    parser.add_argument(
        "--float64-expectile",
        type=float,
        default=EXPECTILES["float64"],
        help=f"expectile of the float64 runs (default: {EXPECTILES['float64']}; {EXPECTILE} shows d3rlpy's float32 weights)",
    )
    parser.add_argument("--all-steps", action="store_true", help="print the losses of every update")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    failed = False
    for dtype in args.dtypes.split(","):
        expectile = args.float64_expectile if dtype == "float64" else EXPECTILES[dtype]
        for config_name in CONFIGS:
            result = compare(config_name, args.updates, dtype, args.seed, expectile=expectile)
            print(format_result(result, args.all_steps))
            found = disagreements(result)
            if config_name == "d3rlpy-matched":
                failed = failed or bool(found)
                print(f"\n{config_name}: " + ("DISAGREES: " + "; ".join(found) if found else "agrees within tolerance"))
            else:
                final = max(result["param_diff"][args.updates].values())
                verdict = "differs" if final > result["tolerance"] else "agrees (unexpected)"
                print(f"\n{config_name}: {verdict}, largest parameter difference after {args.updates} updates {final:.3g}")
            print()
    return 1 if failed else 0


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # d3rlpy's info logs
    sys.exit(main())
