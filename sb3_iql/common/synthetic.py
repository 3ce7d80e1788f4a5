"""
Synthetic environments and transitions for tests and benchmarks (as SB3 ships its identity environments): a model
can be built and trained on them without any dataset or simulator.
"""

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Episodes of the synthetic data end by time limit every this many steps.
SYNTHETIC_EPISODE_STEPS = 1000
#: AntMaze's Dict observation as Minari stores it: float64 ``observation`` (27, without x, y), ``achieved_goal``
#: and ``desired_goal`` (2 each); actions of dimension 8.
ANTMAZE_OBSERVATION_SIZES = {"achieved_goal": 2, "desired_goal": 2, "observation": 27}
ANTMAZE_ACTION_DIM = 8


class SpacesEnv(gym.Env):
    """An environment with the given spaces whose episodes last one step: enough to build a model around a dataset."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, True, {}


def box_env(obs_dim: int, action_dim: int) -> SpacesEnv:
    """:return: a ``SpacesEnv`` with unbounded float32 observations ``(obs_dim,)`` and actions in [-1, 1]"""
    return SpacesEnv(spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32), spaces.Box(-1.0, 1.0, (action_dim,), np.float32))


@dataclass
class SyntheticTransitions:
    """
    Transitions in the arguments' order of the replay buffers' ``extend``; ``n`` transitions.

    :param observations: ``(n, obs_dim)`` or a dict of such arrays
    :param next_observations: the next row of ``observations`` (wrapping at the end)
    :param actions: ``(n, action_dim)`` float32 in [-0.99, 0.99]
    :param rewards: ``(n,)`` float32, standard normal minus 1
    :param dones: ``(n,)`` float32 zeros (no terminal state)
    :param timeouts: ``(n,)`` float32, 1 at the last step of every episode
    """

    observations: Any
    next_observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray


def _next_rows(values: np.ndarray) -> np.ndarray:
    return np.roll(values, -1, axis=0)


def _transitions(observations: Any, action_dim: int, n: int, rng: np.random.Generator) -> SyntheticTransitions:
    if isinstance(observations, dict):
        next_observations = {key: _next_rows(value) for key, value in observations.items()}
    else:
        next_observations = _next_rows(observations)
    return SyntheticTransitions(
        observations,
        next_observations,
        rng.uniform(-0.99, 0.99, (n, action_dim)).astype(np.float32),
        rng.standard_normal(n, dtype=np.float32) - 1.0,
        np.zeros(n, np.float32),
        (np.arange(n) % SYNTHETIC_EPISODE_STEPS == SYNTHETIC_EPISODE_STEPS - 1).astype(np.float32),
    )


def synthetic_transitions(obs_dim: int, action_dim: int, n_transitions: int, seed: int = 0) -> SyntheticTransitions:
    """:return: random transitions with float32 observations ``(n_transitions, obs_dim)``"""
    rng = np.random.default_rng(seed)
    observations = rng.standard_normal((n_transitions, obs_dim), dtype=np.float32)
    return _transitions(observations, action_dim, n_transitions, rng)


def synthetic_antmaze_transitions(n_transitions: int, seed: int = 0) -> tuple[spaces.Dict, SyntheticTransitions]:
    """:return: the observation space, and AntMaze-shaped Dict data in it as Minari returns it (float64 parts)"""
    rng = np.random.default_rng(seed)
    sizes = ANTMAZE_OBSERVATION_SIZES
    space = spaces.Dict({key: spaces.Box(-np.inf, np.inf, (size,), np.float64) for key, size in sizes.items()})
    observations = {key: rng.standard_normal((n_transitions, size)) for key, size in sizes.items()}
    return space, _transitions(observations, ANTMAZE_ACTION_DIM, n_transitions, rng)
