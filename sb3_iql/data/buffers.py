"""SB3 replay buffers that load a whole offline dataset at once and sample with a seeded generator."""

import warnings
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_iql.common.preprocessing import BatchObs


def advance_rows(buffer: Any, n_rows: int) -> None:
    """Move a buffer's ``pos`` past ``n_rows`` rows just written from it (``rows_for`` checked that they fit), to 0
    at its end, where it becomes ``full``."""
    buffer.pos += n_rows
    if buffer.pos == buffer.buffer_size:
        buffer.full, buffer.pos = True, 0


def rows_for(n_transitions: int, n_envs: int, free_rows: int) -> tuple[int, int]:
    """
    Rows of ``n_envs`` columns that ``n_transitions`` take in a replay buffer (``extend``).

    :param free_rows: rows left before the buffer is full
    :return: number of rows, and number of transitions stored twice to complete the last row
    :raises ValueError: the transitions do not fit in the free rows
    """
    n_rows = -(-n_transitions // n_envs)
    if n_rows > free_rows:
        raise ValueError(
            f"The replay buffer has room for {free_rows * n_envs} more transitions, "
            f"{n_transitions} were given: use a larger buffer_size"
        )
    n_duplicates = n_rows * n_envs - n_transitions
    if n_duplicates:
        warnings.warn(
            f"{n_transitions} transitions do not fill rows of n_envs={n_envs}: {n_duplicates} of them are stored twice",
            stacklevel=3,
        )
    return n_rows, n_duplicates


def _map_arrays(arrays: Any, function: Any) -> Any:
    """:return: ``function`` of an array, of each array of a dict of them, or None for None"""
    if arrays is None:
        return None
    if isinstance(arrays, dict):
        return {key: function(array) for key, array in arrays.items()}
    return function(arrays)


def _padded(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """:return: ``rows`` followed by zero rows, ``n_rows`` in all (the zeros allocated lazily, as SB3's are)"""
    array = np.zeros((n_rows, *rows.shape[1:]), dtype=rows.dtype)
    array[: len(rows)] = rows
    return array


class OfflineDataMixin:
    """
    Adds to an SB3 replay buffer:

    - ``extend(...)``: write many transitions at once (an offline dataset), vectorised;
    - ``generator``: a ``torch.Generator`` that draws the sampled indices, so that sampling is reproducible
      and its state travels with the model (SB3's own buffers draw from NumPy's global generator).

    ``add`` and everything else is SB3's, so online data keeps flowing in during fine-tuning.
    """

    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    optimize_memory_usage: bool
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    generator: th.Generator | None = None

    #: The per-row arrays (dicts of arrays for Dict observations) that pickling trims to the written rows
    ROW_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    # --- pickling (SB3's save_replay_buffer / load_replay_buffer) ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Only the written rows of each array: the free rows of a buffer sized for online fine-tuning are zeros."""
        state = self.__dict__.copy()
        if not self.full:
            for name in self.ROW_ARRAYS:
                state[name] = _map_arrays(state[name], lambda array: array[: self.pos])
            state["_saved_rows"] = self.pos
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The saved rows, then zeros up to ``buffer_size`` (files of earlier versions hold every row)."""
        if state.pop("_saved_rows", None) is not None:
            for name in self.ROW_ARRAYS:
                state[name] = _map_arrays(state[name], lambda rows: _padded(rows, state["buffer_size"]))
        self.__dict__.update(state)

    def _check_memory_option(self) -> None:
        if self.optimize_memory_usage:
            raise ValueError(
                "optimize_memory_usage=True reads next observations from the next row, which is wrong across the "
                "episode boundaries of an offline dataset: use optimize_memory_usage=False"
            )

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples | DictReplayBufferSamples:
        """
        Uniform sample of ``batch_size`` stored transitions, rows and env columns drawn from ``self.generator`` (SB3's
        ``_get_samples`` draws the columns from NumPy's global generator), gathered and normalized as SB3 does.
        """
        upper_bound = self.size() * self.n_envs
        draws = th.randint(upper_bound, (batch_size,), generator=self.generator, device="cpu")  # whatever the default
        rows, columns = np.divmod(draws.numpy(), self.n_envs)
        observations, next_observations = self._observations_at(rows, columns)
        samples_type = DictReplayBufferSamples if isinstance(observations, dict) else ReplayBufferSamples
        return samples_type(
            self._to_torch_obs(self._normalize_obs(observations, env)),  # type: ignore[attr-defined]
            self.to_torch(self.actions[rows, columns]),  # type: ignore[attr-defined]
            self._to_torch_obs(self._normalize_obs(next_observations, env)),  # type: ignore[attr-defined]
            # time-outs are not terminal
            self.to_torch((self.dones[rows, columns] * (1 - self.timeouts[rows, columns])).reshape(-1, 1)),  # type: ignore[attr-defined]
            self.to_torch(self._normalize_reward(self.rewards[rows, columns].reshape(-1, 1), env)),  # type: ignore[attr-defined]
        )

    def _observations_at(self, rows: np.ndarray, columns: np.ndarray) -> tuple[BatchObs, BatchObs]:
        """:return: the observations and next observations stored at ``(rows, columns)``"""
        raise NotImplementedError

    def _to_torch_obs(self, observations: BatchObs) -> th.Tensor | dict[str, th.Tensor]:
        if isinstance(observations, dict):
            return {key: self.to_torch(value) for key, value in observations.items()}  # type: ignore[attr-defined]
        return self.to_torch(observations)  # type: ignore[attr-defined]

    def _write_observations(self, rows: slice, observations: BatchObs, next_observations: BatchObs) -> None:
        raise NotImplementedError

    def extend(
        self,
        observations: BatchObs,
        next_observations: BatchObs,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        timeouts: np.ndarray,
    ) -> None:
        """
        Append ``n`` transitions in one vectorised write, row by row of ``n_envs`` columns.

        When ``n`` is not a multiple of ``n_envs``, the last row is completed with the first transitions again
        (fewer than ``n_envs`` duplicates), since SB3 samples every column of a stored row.

        :param observations: ``(n, *obs_shape)`` or a dict of such arrays, already in the buffer's layout
        :param next_observations: same shapes
        :param actions: ``(n, action_dim)``, scaled to [-1, 1]
        :param rewards: ``(n,)``
        :param dones: ``(n,)``, 1 for terminal transitions
        :param timeouts: ``(n,)``, 1 for transitions cut by a time limit (they are not terminal)
        :raises ValueError: the transitions do not fit in the free rows of the buffer
        """
        n_transitions = len(rewards)
        n_rows, _ = rows_for(n_transitions, self.n_envs, self.buffer_size - self.pos if not self.full else 0)
        order = np.arange(n_rows * self.n_envs) % n_transitions

        def rows_of(array: np.ndarray) -> np.ndarray:
            return array[order].reshape(n_rows, self.n_envs, *array.shape[1:])

        rows = slice(self.pos, self.pos + n_rows)
        self._write_observations(rows, _map_arrays(observations, rows_of), _map_arrays(next_observations, rows_of))
        self.actions[rows] = rows_of(actions).reshape(self.actions[rows].shape)
        self.rewards[rows] = rows_of(rewards)
        self.dones[rows] = rows_of(dones)
        self.timeouts[rows] = rows_of(timeouts)
        advance_rows(self, n_rows)


class OfflineReplayBuffer(OfflineDataMixin, ReplayBuffer):
    """SB3 ``ReplayBuffer`` with ``extend`` (bulk loading) and a seeded sampling generator."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._check_memory_option()

    def _write_observations(self, rows: slice, observations: np.ndarray, next_observations: np.ndarray) -> None:
        self.observations[rows] = observations.reshape(self.observations[rows].shape)
        self.next_observations[rows] = next_observations.reshape(self.next_observations[rows].shape)

    def _observations_at(self, rows: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.observations[rows, columns], self.next_observations[rows, columns]


class OfflineDictReplayBuffer(OfflineDataMixin, DictReplayBuffer):
    """SB3 ``DictReplayBuffer`` with ``extend`` (bulk loading) and a seeded sampling generator."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._check_memory_option()

    def _write_observations(
        self, rows: slice, observations: dict[str, np.ndarray], next_observations: dict[str, np.ndarray]
    ) -> None:
        for key in self.observations:
            self.observations[key][rows] = observations[key].reshape(self.observations[key][rows].shape)
            self.next_observations[key][rows] = next_observations[key].reshape(self.next_observations[key][rows].shape)

    def _observations_at(self, rows: np.ndarray, columns: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return (
            {key: array[rows, columns] for key, array in self.observations.items()},
            {key: array[rows, columns] for key, array in self.next_observations.items()},
        )
