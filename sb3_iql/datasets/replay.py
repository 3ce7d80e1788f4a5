"""The replay buffer of an SB3 off-policy model as a Minari dataset (the D4RL "medium-replay" recipe)."""

import warnings
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_iql.common.preprocessing import observation_breaks
from sb3_iql.data.image_buffers import DeviceImageReplayBuffer
from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES, PolicyFn, Predictor, as_env, write_episodes
from sb3_iql.datasets.storage import check_writable

#: Observations compared at once when a replay buffer is split into episodes (frames: a few hundred rows).
COMPARED_BYTES = 64 * 2**20


def _numpy(values: np.ndarray | th.Tensor) -> np.ndarray:
    """:return: ``values`` as a NumPy array (the package's device buffers store tensors)"""
    return values.cpu().numpy() if isinstance(values, th.Tensor) else values


def _rows(data: Any, rows: np.ndarray, env_index: int, space: spaces.Space) -> Any:
    """:return: ``data[rows, env_index]`` shaped like ``space`` (per key for Dict spaces), as NumPy arrays."""
    if isinstance(space, spaces.Dict):
        return {key: _rows(data[key], rows, env_index, subspace) for key, subspace in space.spaces.items()}
    return _numpy(data[rows, env_index]).reshape((len(rows), *space.shape)).astype(space.dtype, copy=False)


def _chronological_rows(replay_buffer: ReplayBuffer) -> np.ndarray:
    """:return: Indices of the stored rows, oldest first (the ring buffer wraps once full)."""
    if replay_buffer.full:
        return np.roll(np.arange(replay_buffer.buffer_size), -replay_buffer.pos)
    return np.arange(replay_buffer.pos)


def replay_buffer_episodes(
    replay_buffer: ReplayBuffer, observation_space: spaces.Space, action_space: spaces.Space, scaled_actions: bool = True
) -> list[EpisodeBuffer]:
    """
    Split an SB3 (Dict)ReplayBuffer into episodes, oldest first, one environment after the other.

    An episode ends at ``done`` or at a time-out: terminated unless flagged a time-out, truncated otherwise (SB3 stores a
    time-out as both, this package's offline data as a time-out only). The data still running at the end of the buffer
    forms a last episode marked truncated; once the ring buffer has wrapped, the oldest episode starts mid-way. A row
    whose next observation is not the next row's observation (a reset no flag marks: two ``learn()`` calls, each
    resetting the environment) also ends its episode, marked truncated, with a warning.

    :param replay_buffer: The buffer (``optimize_memory_usage=False``, ``handle_timeout_termination=True``: time-limit
        ends told apart from terminations; not empty).
    :param observation_space: The environment's observation space.
    :param action_space: The environment's action space.
    :param scaled_actions: Whether Box actions are stored scaled to [-1, 1], as SB3 off-policy algorithms do;
        they are then mapped back to the environment's bounds.
    :return: The episodes.
    """
    if replay_buffer.optimize_memory_usage:
        raise ValueError("A replay buffer with optimize_memory_usage=True has no next observations at episode ends")
    if isinstance(replay_buffer, DeviceImageReplayBuffer):
        raise ValueError("A DeviceImageReplayBuffer stores frames once, not as rows of transitions: it cannot be split")
    if replay_buffer.size() == 0:
        raise ValueError("The replay buffer is empty: nothing to write")
    if not getattr(replay_buffer, "handle_timeout_termination", True):
        raise ValueError(
            "This replay buffer was made with handle_timeout_termination=False: SB3 stored its time-limit ends as "
            "terminations, which the dataset cannot tell apart; collect with the default (True)"
        )
    rows = _chronological_rows(replay_buffer)
    episodes: list[EpisodeBuffer] = []
    for env_index in range(replay_buffer.n_envs):
        dones = _numpy(replay_buffer.dones[rows, env_index]).astype(bool)
        timeouts = _numpy(replay_buffer.timeouts[rows, env_index]).astype(bool)
        breaks = _unflagged_breaks(replay_buffer, rows, env_index, observation_space) & ~(dones | timeouts)
        if breaks.any():
            warnings.warn(
                f"{int(breaks.sum())} transition(s) of environment {env_index} are neither terminal nor a time-out, "
                f"yet the next one does not start where they end (a reset between two learn() calls, or data added "
                f"by hand; row {int(rows[np.argmax(breaks)])} first): each ends its episode, marked truncated, so "
                "that its next observation is kept",
                stacklevel=2,
            )
        ends = np.flatnonzero(dones | timeouts | breaks)
        if len(ends) == 0 or ends[-1] != len(rows) - 1:
            ends = np.append(ends, len(rows) - 1)
        for start, end in zip(np.concatenate(([0], ends[:-1] + 1)), ends):
            episode_rows = rows[start : end + 1]
            observations = _rows(replay_buffer.observations, episode_rows, env_index, observation_space)
            last = _rows(replay_buffer.next_observations, episode_rows[-1:], env_index, observation_space)
            actions = _rows(replay_buffer.actions, episode_rows, env_index, action_space)
            if scaled_actions and isinstance(action_space, spaces.Box):
                actions = (action_space.low + (actions + 1.0) * (action_space.high - action_space.low) / 2).astype(
                    action_space.dtype
                )
            terminations = dones[start : end + 1] & ~timeouts[start : end + 1]
            episodes.append(
                EpisodeBuffer(
                    id=len(episodes),
                    observations=_append_row(observations, last),
                    actions=actions,
                    rewards=_numpy(replay_buffer.rewards[episode_rows, env_index]).astype(np.float64),
                    terminations=terminations,
                    truncations=~terminations & (np.arange(start, end + 1) == end),
                    infos={},
                )
            )
    return episodes


def _unflagged_breaks(replay_buffer: ReplayBuffer, rows: np.ndarray, env_index: int, space: spaces.Space) -> np.ndarray:
    """
    :return: ``(len(rows),)`` bool, True where the stored next observation of a row differs from the next row's
        observation (``observation_breaks``), compared about ``COMPARED_BYTES`` of observations at a time
    """
    subspaces = space.spaces.values() if isinstance(space, spaces.Dict) else [space]
    row_bytes = sum(int(np.prod(subspace.shape)) * np.dtype(subspace.dtype).itemsize for subspace in subspaces)
    chunk = max(1, COMPARED_BYTES // max(row_bytes, 1))
    breaks = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows) - 1, chunk):
        window = rows[start : start + chunk + 1]  # one row of overlap: the last pair of each window
        observations = _rows(replay_buffer.observations, window, env_index, space)
        next_observations = _rows(replay_buffer.next_observations, window, env_index, space)
        breaks[start : start + len(window) - 1] = observation_breaks(observations, next_observations)[:-1]
    return breaks


def _shapes(space: spaces.Space) -> Any:
    """:return: the observation shape of ``space`` (per key for Dict spaces)"""
    if isinstance(space, spaces.Dict):
        return {key: subspace.shape for key, subspace in space.spaces.items()}
    return space.shape


def _append_row(observations: Any, last: Any) -> Any:
    """:return: ``observations`` (T, ...) followed by ``last`` (1, ...), per key for dicts."""
    if isinstance(observations, dict):
        return {key: _append_row(observations[key], last[key]) for key in observations}
    return np.concatenate([observations, last])


def dataset_from_replay_buffer(
    model: OffPolicyAlgorithm,
    dataset_id: str,
    env: str | gym.Env,
    eval_env: str | EnvSpec | gym.Env | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    expert_policy: Predictor | PolicyFn | None = None,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    seed: int = 0,
    description: str | None = None,
    overwrite: bool = False,
) -> minari.MinariDataset:
    """
    Write everything an off-policy model has in its replay buffer (e.g. SAC up to a "medium" policy) as a
    Minari dataset, with the terminations and truncations SB3 recorded.

    :param model: An SB3 off-policy model (SAC, TD3, TQC...) with its replay buffer.
    :param dataset_id: Minari id to write, e.g. ``"sb3_iql/hopper/medium-replay-v0"``.
    :param env: The training environment or its id (spec and spaces are stored).
    :param eval_env: Evaluation environment stored in the dataset; default ``env``'s spec.
    :param ref_min_score: Return of score 0; measured from random actions when reference scores are written.
    :param ref_max_score: Return of normalized score 1 in Minari's metadata (100 in this package's reports;
        exclusive with ``expert_policy``).
    :param expert_policy: Policy whose mean return on the evaluation environment is ``ref_max_score``.
    :param n_reference_episodes: Episodes averaged per measured reference score.
    :param seed: Seed of the reference rollouts.
    :param description: Stored in the metadata.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :return: The new dataset.
    """
    check_writable(dataset_id, overwrite)
    name = type(model).__name__
    if getattr(model, "offline_dataset_size", 0) > 0 and model.replay_buffer.n_envs > 1:
        raise ValueError(
            f"The replay buffer of this {name} holds offline data written row by row across its "
            f"{model.replay_buffer.n_envs} environment columns, which cannot be split back into episodes: write it from "
            "a model with one environment"
        )
    if getattr(model, "reward_transform", None) is not None or getattr(model, "relabel_eval_goal", False):
        raise ValueError(
            f"This {name} stores transformed rewards (reward_transform) or relabelled goals (relabel_eval_goal), not "
            "the environment's: the dataset would hold them and be transformed again when trained on"
        )
    env = as_env(env)
    if _shapes(model.observation_space) != _shapes(env.observation_space):
        raise ValueError(
            f"The replay buffer stores observations as the model sees them ({_shapes(model.observation_space)}, e.g. "
            f"channel-first images), not as the environment gives them ({_shapes(env.observation_space)})"
        )
    episodes = replay_buffer_episodes(model.replay_buffer, env.observation_space, env.action_space)
    return write_episodes(
        dataset_id,
        episodes,
        env,
        eval_env,
        ref_min_score,
        ref_max_score,
        expert_policy,
        n_reference_episodes,
        seed,
        algorithm_name=f"{name} replay buffer",
        description=description or f"The replay buffer of {name} after {model.num_timesteps} steps.",
        overwrite=overwrite,
    )
