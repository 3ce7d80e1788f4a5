"""
A replay buffer for image observations that stores every frame once, as uint8, on the model's device.

Consecutive transitions of an episode share a frame (the next observation of one is the observation of the
next), so the buffer keeps one frame per transition plus one per episode instead of two per transition, and
four times less again than float32. Networks divide by 255 on the fly (SB3's ``preprocess_obs``).
"""

import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecNormalize

from sb3_iql.data.device_buffers import generator_on, generator_state, restore_generator, step_timeouts, zeros

#: Columns of the per-transition float32 table after the action: reward, done, timeout.
_REWARD, _DONE, _TIMEOUT = -3, -2, -1
#: Bytes of frames that ``extend`` copies at once (bounds its temporary host memory).
_CHUNK_BYTES = 1 << 28
#: Rows compared at once when looking for frames shared by consecutive transitions.
_COMPARE_ROWS = 1024


class DeviceImageReplayBuffer(ReplayBuffer):
    """
    SB3 ``ReplayBuffer`` for uint8 image observations (``is_image_space``): frames in one uint8 ring tensor on
    ``device``, each stored once; transitions hold the indices of their two frames. Sampling draws indices on the
    device and gathers frames with ``index_select``: no NumPy, no host sync. Offers ``extend`` for offline data.

    A frame is shared when a transition's observation equals the previous transition's next observation (same
    environment), which holds within episodes. The frame ring has ``buffer_size + extra_frames`` slots: one per
    transition plus ``extra_frames`` for the first frame of each episode; when episodes are shorter than that
    allows, the oldest transitions (whose frames were overwritten) are no longer sampled, with a warning.
    Memory: ``(buffer_size + extra_frames) * prod(obs_shape)`` bytes of frames, ``buffer_size * (action_dim + 5)``
    values of 4 or 8 bytes for the rest.

    :param buffer_size: capacity in transitions
    :param observation_space: uint8 image Box (channel-first, as SB3's policies take it)
    :param action_space: action space
    :param device: device of the storage and of the samples
    :param n_envs: number of parallel environments (``add`` takes one transition per environment)
    :param optimize_memory_usage: must be False (frames are shared anyway)
    :param handle_timeout_termination: store timeouts from ``infos`` in ``add`` (sampled dones are
        ``done * (1 - timeout)``)
    :param extra_frames: frame slots beyond one per transition (default ``default_extra_frames``: episodes of at
        least 10 steps on average keep every transition sampleable), at most ``buffer_size + n_envs``
    """

    @staticmethod
    def default_extra_frames(buffer_size: int, n_envs: int = 1, n_episodes: int = 0, n_transitions: int = 0) -> int:
        """
        :param buffer_size: the buffer's capacity in transitions
        :param n_envs: environments that write online steps
        :param n_episodes: episodes of the offline data the buffer will hold (their first frames)
        :param n_transitions: transitions of that data
        :return: ``buffer_size // 10 + n_envs``, or more where the offline data's episodes need it: one frame per
            episode, and a tenth of the room left for online steps
        """
        return max(buffer_size // 10, n_episodes + (buffer_size - n_transitions) // 10) + n_envs

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        extra_frames: int | None = None,
    ):
        if not (isinstance(observation_space, spaces.Box) and is_image_space(observation_space, check_channels=False)):
            raise ValueError(f"DeviceImageReplayBuffer takes uint8 image observations, got {observation_space}")
        if optimize_memory_usage:
            raise ValueError("DeviceImageReplayBuffer shares frames already: use optimize_memory_usage=False")
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)  # type: ignore[arg-type]
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        extra_frames = self.default_extra_frames(buffer_size, n_envs) if extra_frames is None else extra_frames
        # two frames per transition at most (episodes of one step): more is never used, as when a model saved with a
        # large buffer is loaded for deployment with custom_objects={"buffer_size": 1}
        self.extra_frames = min(extra_frames, buffer_size + n_envs)
        self.frame_capacity = buffer_size + self.extra_frames
        self.frames = zeros((self.frame_capacity, *self.obs_shape), self.device, np.uint8)  # type: ignore[misc]
        #: Absolute frame numbers of each transition's observation and next observation, ``(buffer_size, 2)``.
        self.frame_ids = zeros((buffer_size, 2), self.device, np.int64)
        #: Action, reward, done, timeout of each transition, ``(buffer_size, action_dim + 3)``.
        self.table = zeros((buffer_size, self.action_dim + 3), self.device)
        self._obs_frame_ids = np.zeros(buffer_size, dtype=np.int64)  # host copy of frame_ids[:, 0]
        self.n_transitions = 0  # transitions written since creation
        self.n_frames = 0  # frames written since creation
        self.oldest = 0  # oldest sampleable transition (absolute)
        #: Per environment: the absolute frame number of the last next observation and its pixels (host copy).
        self._last_next: list[tuple[int, np.ndarray] | None] = [None] * n_envs
        self.generator: th.Generator | None = None

    @property
    def device(self) -> th.device:
        """Device of the rings; setting it moves them (SB3's ``load_replay_buffer`` sets the model's)."""
        return self._device

    @device.setter
    def device(self, device: th.device | str) -> None:
        self._device = get_device(device)
        for name in ("frames", "frame_ids", "table"):  # absent while BaseBuffer.__init__ or __setstate__ runs
            tensor = self.__dict__.get(name)
            if tensor is not None and tensor.device != self._device:
                setattr(self, name, tensor.to(self._device))
        if self.__dict__.get("generator") is not None:
            self.generator = generator_on(self.generator, self._device)

    # --- writing --------------------------------------------------------------------------------------------------

    def _write_frames(self, first: int, frames: np.ndarray) -> None:
        """Copy ``frames`` to absolute frame numbers ``first, first + 1, ...`` of the ring."""
        for start in range(0, len(frames), self.frame_capacity):
            part = th.as_tensor(frames[start : start + self.frame_capacity])
            slot = (first + start) % self.frame_capacity
            head = min(len(part), self.frame_capacity - slot)
            self.frames[slot : slot + head].copy_(part[:head])
            self.frames[: len(part) - head].copy_(part[head:])

    def _write_rows(self, target: th.Tensor, first: int, rows: np.ndarray) -> None:
        """Copy ``rows`` to transitions ``first, first + 1, ...`` (absolute) of a per-transition tensor."""
        slot = first % self.buffer_size
        head = min(len(rows), self.buffer_size - slot)
        source = th.as_tensor(rows)
        target[slot : slot + head].copy_(source[:head])
        target[: len(rows) - head].copy_(source[head:])

    def _append(self, observations: np.ndarray, next_observations: np.ndarray, table: np.ndarray, env_index: int) -> None:
        """Append ``n <= buffer_size`` consecutive transitions of one environment."""
        n = len(table)
        flat_obs, flat_next = observations.reshape(n, -1), next_observations.reshape(n, -1)
        # The observation of transition i is the next observation of transition i - 1: share that frame.
        shared = np.empty(n, dtype=bool)
        last = self._last_next[env_index]
        # Only a frame written within the last step of the environments (SB3's add loop writes at most 2 frames per
        # environment in between), so that it is still in the ring and observation frames grow in write order to
        # within _drop_overwritten's order_margin; after other data (extend) the frame is written again.
        recent = last is not None and last[0] >= self.n_frames - (2 * self.n_envs - 1)
        shared[0] = recent and np.array_equal(last[1], flat_obs[0])  # type: ignore[index]
        for start in range(0, n - 1, _COMPARE_ROWS):  # row blocks: the comparison's temporary stays small
            stop = min(start + _COMPARE_ROWS, n - 1)
            shared[start + 1 : stop + 1] = (flat_next[start:stop] == flat_obs[start + 1 : stop + 1]).all(axis=1)
        new_obs = ~shared
        # Each transition writes its observation's frame (unless shared), then its next observation's frame.
        next_ids = self.n_frames + np.cumsum(new_obs.astype(np.int64) + 1) - 1
        obs_ids = np.where(new_obs, next_ids - 1, np.concatenate([[last[0] if last is not None else -1], next_ids[:-1]]))
        frames = np.empty((n + int(new_obs.sum()), *self.obs_shape), dtype=np.uint8)  # type: ignore[misc]
        frames[next_ids - self.n_frames] = next_observations
        frames[obs_ids[new_obs] - self.n_frames] = observations[new_obs]
        self._write_frames(self.n_frames, frames)
        self._write_rows(self.frame_ids, self.n_transitions, np.stack([obs_ids, next_ids], axis=1))
        self._write_rows(self.table, self.n_transitions, table)
        self._obs_frame_ids[(self.n_transitions + np.arange(n)) % self.buffer_size] = obs_ids
        self.n_frames += len(frames)
        self.n_transitions += n
        self._last_next[env_index] = (int(next_ids[-1]), flat_next[-1].copy())
        self._drop_overwritten()

    def _drop_overwritten(self) -> None:
        """Move ``oldest`` past the transitions that left the ring or whose observation frame was overwritten."""
        oldest = max(self.oldest, self.n_transitions - self.buffer_size)
        first_kept_frame = self.n_frames - self.frame_capacity
        # an observation frame is at most this much older than one of an earlier transition (shared frames: _append)
        order_margin = 2 * (self.n_envs - 1)
        dropped_for_frames = 0
        while oldest < self.n_transitions and self._obs_frame_ids[oldest % self.buffer_size] < first_kept_frame + order_margin:
            oldest += 1
            dropped_for_frames += 1
        if dropped_for_frames:
            warnings.warn(
                f"{dropped_for_frames} old transitions are no longer sampled: their frames were overwritten, episodes "
                f"being shorter than extra_frames={self.extra_frames} allows; pass a larger extra_frames in "
                "replay_buffer_kwargs",
                stacklevel=4,
            )
        self.oldest = oldest
        self.pos = self.n_transitions % self.buffer_size
        self.full = self.n_transitions >= self.buffer_size

    def _table(self, actions: Any, rewards: Any, dones: Any, timeouts: Any) -> np.ndarray:
        n = len(rewards)
        table = np.empty((n, self.action_dim + 3), dtype=np.float32)
        table[:, : self.action_dim] = np.asarray(actions, dtype=np.float32).reshape(n, self.action_dim)
        table[:, _REWARD] = np.asarray(rewards, dtype=np.float32).reshape(n)
        table[:, _DONE] = np.asarray(dones, dtype=np.float32).reshape(n)
        table[:, _TIMEOUT] = np.asarray(timeouts, dtype=np.float32).reshape(n)
        return table

    def extend(
        self,
        observations: np.ndarray,
        next_observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        timeouts: np.ndarray,
    ) -> None:
        """
        Append ``n`` transitions in time order (episodes one after another, as ``load_transitions`` gives them).

        :param observations: ``(n, *obs_shape)`` uint8
        :param next_observations: same shape
        :param actions: ``(n, action_dim)``
        :param rewards: ``(n,)``
        :param dones: ``(n,)``, 1 for terminal transitions
        :param timeouts: ``(n,)``, 1 for transitions cut by a time limit (they are not terminal)
        """
        n = len(rewards)
        if n > self.buffer_size:
            raise ValueError(
                f"The replay buffer holds {self.buffer_size} transitions, {n} were given: use a larger buffer_size"
            )
        table = self._table(actions, rewards, dones, timeouts)
        chunk = max(1, _CHUNK_BYTES // int(np.prod(self.obs_shape)))  # type: ignore[arg-type]
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            obs, next_obs = np.asarray(observations[start:stop]), np.asarray(next_observations[start:stop])
            self._append(obs, next_obs, table[start:stop], env_index=0)

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """One transition per environment (SB3's ``collect_rollouts``): arrays with a first dimension ``n_envs``."""
        timeouts = step_timeouts(infos, self.handle_timeout_termination)
        table = self._table(action, reward, done, timeouts)
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        for env_index in range(self.n_envs):
            row = slice(env_index, env_index + 1)
            self._append(obs[row], next_obs[row], table[row], env_index)

    # --- reading --------------------------------------------------------------------------------------------------

    def size(self) -> int:
        """:return: the number of sampleable transitions"""
        return self.n_transitions - self.oldest

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """
        Uniform sample of ``batch_size`` sampleable transitions, drawn on the device: frames as uint8
        ``(batch, *obs_shape)``, actions ``(batch, action_dim)``, dones ``done * (1 - timeout)`` and rewards
        ``(batch, 1)`` float32; rewards normalized by ``env`` (a ``VecNormalize`` with ``norm_obs=False``), as SB3's
        buffers do.

        :raises ValueError: ``env`` normalizes observations (images are not normalized)
        """
        if env is not None and env.norm_obs:
            raise ValueError(
                "DeviceImageReplayBuffer does not normalize image observations: wrap the env in "
                "VecNormalize(..., norm_obs=False) to normalize its rewards only"
            )
        self.generator = generator_on(self.generator, self.device)
        offsets = th.randint(self.size(), (batch_size,), device=self.device, generator=self.generator)
        return self._with_normalized_rewards(self.gather((offsets + self.oldest) % self.buffer_size), env)

    def _with_normalized_rewards(self, samples: ReplayBufferSamples, env: VecNormalize | None) -> ReplayBufferSamples:
        """:return: ``samples`` with their rewards normalized by ``env`` (a host round trip, as SB3's buffers)"""
        if env is None:
            return samples
        rewards = self._normalize_reward(samples.rewards.cpu().numpy(), env)
        return samples._replace(rewards=th.as_tensor(rewards, dtype=th.float32, device=self.device))

    def graph_sampling_key(self) -> Hashable | None:
        """
        What ``sample`` (without ``env``) reads that a CUDA graph capturing it freezes: the storage's addresses, the
        sampleable range and the generator (first moved to the device, as ``sample`` would; the object, compared by
        identity). A graph that captured ``sample`` stays valid while the key is unchanged (see
        ``CudaGraphUpdate.sampled_step``). None for a subclass that samples otherwise: not captured.
        """
        if type(self).sample is not DeviceImageReplayBuffer.sample:
            return None
        self.generator = generator_on(self.generator, self.device)
        addresses = tuple(tensor.data_ptr() for tensor in (self.frames, self.frame_ids, self.table))
        return addresses, self.size(), self.oldest, self.generator

    def gather(self, indices: th.Tensor) -> ReplayBufferSamples:
        """:param indices: ring positions of transitions, ``(batch,)``, on the device"""
        frame_slots = self.frame_ids.index_select(0, indices) % self.frame_capacity
        observations = self.frames.index_select(0, frame_slots[:, 0])
        next_observations = self.frames.index_select(0, frame_slots[:, 1])
        rows = self.table.index_select(0, indices)
        dones = rows[:, _DONE : _DONE + 1] * (1.0 - rows[:, _TIMEOUT:])
        return ReplayBufferSamples(observations, rows[:, : self.action_dim], next_observations, dones, rows[:, _REWARD:_DONE])

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:  # type: ignore[override]
        """SB3's: the transitions at ring positions ``batch_inds``, rewards normalized by ``env``."""
        return self._with_normalized_rewards(self.gather(th.as_tensor(batch_inds, device=self.device)), env)

    # --- pickling (SB3's save_replay_buffer / load_replay_buffer) ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Only the slots written so far (a prefix until the rings wrap), as NumPy arrays: a CUDA buffer loads on any
        machine, and a new buffer's room for a million online steps is not written to disk."""
        state = self.__dict__.copy()
        written_frames, written_rows = min(self.n_frames, self.frame_capacity), min(self.n_transitions, self.buffer_size)
        state["frames"] = self.frames[:written_frames].cpu().numpy()
        for name in ("frame_ids", "table"):
            state[name] = getattr(self, name)[:written_rows].cpu().numpy()
        state["_obs_frame_ids"] = self._obs_frame_ids[:written_rows].copy()
        state["device"] = str(self.device)
        state["generator"] = generator_state(self.generator)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved_generator = state.pop("generator")
        written = {name: state.pop(name) for name in ("frames", "frame_ids", "table", "_obs_frame_ids")}
        saved_device = state.pop("device")
        self.__dict__.update(state)
        self.device = saved_device  # get_device: the CPU where a saved CUDA device is absent
        shapes = {
            "frames": (self.frame_capacity, *self.obs_shape),  # type: ignore[misc]
            "frame_ids": (self.buffer_size, 2),
            "table": (self.buffer_size, self.action_dim + 3),
        }
        for name, shape in shapes.items():  # whole rings again (files of older versions saved them whole)
            tensor = zeros(shape, self.device, written[name].dtype.type)
            tensor[: len(written[name])].copy_(th.from_numpy(written[name]))
            setattr(self, name, tensor)
        self._obs_frame_ids = np.zeros(self.buffer_size, dtype=np.int64)
        self._obs_frame_ids[: len(written["_obs_frame_ids"])] = written["_obs_frame_ids"]
        self.generator = restore_generator(saved_generator, self.device)
