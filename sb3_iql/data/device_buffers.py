"""
SB3 replay buffers stored as torch tensors on the model's device, sampled without NumPy and without host sync.

Every transition is one row of a single float32 tensor ``(buffer_size * n_envs, width)`` whose columns are,
in order: the observation (each key of a Dict observation, flattened), the next observation, the action, the
reward, the done flag and the timeout flag. Image keys of a Dict observation (uint8 frames, SB3's
``is_image_space``) are kept as uint8 in a second tensor with the same rows: the key's observation, then its next
observation. Sampling is one ``torch.randint`` on the device and one ``index_select`` of those rows per tensor;
the batch fields are column views of the gathered rows.
"""

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecNormalize

from sb3_iql.common.preprocessing import BatchObs
from sb3_iql.data.buffers import advance_rows, rows_for

#: Bytes of transitions copied to the storage at once by ``extend`` (bounds the temporary memory of dtype
#: conversions): 64 MB, 65,536 transitions of 256 float32 columns, 1,585 of two 84 x 84 x 3 uint8 images.
EXTEND_CHUNK_BYTES = 1 << 26
#: Upper bound (exclusive) of the seed drawn from a generator of another device to seed the buffer's own one.
SEED_BOUND = 1 << 62


def zeros(shape: tuple[int, ...], device: th.device, dtype: type[np.generic] = np.float32) -> th.Tensor:
    """A zero tensor; on the CPU from ``np.zeros`` (calloc), so untouched rows take no resident memory."""
    if device.type == "cpu":
        return th.from_numpy(np.zeros(shape, dtype=dtype))
    torch_dtype = th.from_numpy(np.zeros(0, dtype=dtype)).dtype
    return th.zeros(shape, dtype=torch_dtype, device=device)


def step_timeouts(infos: list[dict[str, Any]], handle_timeout_termination: bool) -> np.ndarray:
    """:return: ``(n_envs,)`` float32, 1 where an environment's step ended by its time limit (as SB3's buffers read
    it from ``infos``; all 0 without ``handle_timeout_termination``: time limits are then terminal)"""
    if not handle_timeout_termination:
        return np.zeros(len(infos), dtype=np.float32)
    return np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=np.float32)


def generator_on(generator: th.Generator | None, device: th.device) -> th.Generator | None:
    """
    :return: ``generator`` if it draws on ``device``'s type, else a new generator there, seeded with one draw from it
        (so that sampling stays reproducible from the model's CPU generator on a CUDA buffer)
    """
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(th.randint(SEED_BOUND, (), generator=generator, device=generator.device))
    return th.Generator(device=device).manual_seed(seed)


def generator_state(generator: th.Generator | None) -> tuple[str, th.Tensor] | None:
    """:return: what ``restore_generator`` needs, picklable: the generator's device and state"""
    return None if generator is None else (str(generator.device), generator.get_state())


def restore_generator(saved: tuple[str, th.Tensor] | None, device: th.device) -> th.Generator | None:
    """:return: the generator of ``generator_state``, if it was on ``device``'s type (None otherwise)"""
    if saved is None or th.device(saved[0]).type != device.type:
        return None
    generator = th.Generator(device=device)
    generator.set_state(saved[1])
    return generator


def _columns_of(fields: list[tuple[Any, tuple[int, ...]]]) -> dict[Any, tuple[slice, tuple[int, ...]]]:
    """:return: each field's columns in a row holding the fields side by side, flattened, and its shape"""
    layout, width = {}, 0
    for name, shape in fields:
        size = int(np.prod(shape, dtype=int))
        layout[name] = (slice(width, width + size), shape)
        width += size
    return layout


def _width(layout: dict[Any, tuple[slice, tuple[int, ...]]]) -> int:
    return max((columns.stop for columns, _ in layout.values()), default=0)


class DeviceBufferMixin:
    """
    Storage, ``add``, ``extend``, ``sample`` and pickling shared by ``DeviceReplayBuffer`` and
    ``DeviceDictReplayBuffer``.

    ``generator`` draws the sampled indices. It may be None (the device's default generator) or a
    ``torch.Generator``; one of another device (such as the CPU generator IQL attaches to a CUDA buffer) seeds a
    new generator on the buffer's device with one draw, so sampling stays reproducible from the model's seed.

    The attributes ``observations``, ``next_observations``, ``actions``, ``rewards``, ``dones`` and ``timeouts``
    are views of the storage shaped like SB3's arrays, ``(buffer_size, n_envs, *shape)``; rows never written are
    zeros (on the CPU they take no resident memory until written, as with SB3's ``np.zeros``).
    """

    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    observation_space: spaces.Space
    action_space: spaces.Space
    action_dim: int
    handle_timeout_termination: bool
    optimize_memory_usage: bool
    _device: th.device
    _generator: th.Generator | None
    _storage: th.Tensor | None = None
    #: uint8 rows of the image keys of a Dict observation (None without image keys)
    _image_storage: th.Tensor | None = None
    #: field name -> (columns, shape of one value); observation fields are ``("obs", key)`` and ``("next_obs", key)``
    _layout: dict[Any, tuple[slice, tuple[int, ...]]]
    #: the same for the fields in ``_image_storage``
    _image_layout: dict[Any, tuple[slice, tuple[int, ...]]]
    _obs_keys: list[str | None]

    def _init_storage(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str,
        n_envs: int,
        optimize_memory_usage: bool,
        handle_timeout_termination: bool,
    ) -> None:
        self._generator = None
        # SB3's BaseBuffer: spaces, shapes, pos, full, device; ReplayBuffer.__init__ would allocate NumPy arrays.
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)  # type: ignore[arg-type]
        if optimize_memory_usage:
            raise ValueError("Device replay buffers store next observations explicitly: use optimize_memory_usage=False")
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.buffer_size = max(buffer_size // n_envs, 1)
        obs_shapes = self.obs_shape if isinstance(self.obs_shape, dict) else {None: self.obs_shape}  # type: ignore[attr-defined]
        self._obs_keys = list(obs_shapes)
        image_keys = {
            key
            for key, space in getattr(observation_space, "spaces", {}).items()
            if is_image_space(space, check_channels=False)
        }
        fields: list[tuple[Any, tuple[int, ...]]] = [(("obs", key), tuple(shape)) for key, shape in obs_shapes.items()]
        fields += [(("next_obs", key), tuple(shape)) for key, shape in obs_shapes.items()]
        fields += [("actions", (self.action_dim,)), ("rewards", ()), ("dones", ()), ("timeouts", ())]
        in_images = [isinstance(name, tuple) and name[1] in image_keys for name, _ in fields]
        self._layout = _columns_of([field for field, image in zip(fields, in_images) if not image])
        self._image_layout = _columns_of([field for field, image in zip(fields, in_images) if image])
        n_rows = self.buffer_size * self.n_envs
        self._storage = zeros((n_rows, _width(self._layout)), self._device)
        self._image_storage = zeros((n_rows, _width(self._image_layout)), self._device, np.uint8) if image_keys else None
        self._make_views()

    # --- device and generator -------------------------------------------------------------------------------------

    @property
    def device(self) -> th.device:
        """Device of the storage; setting it moves the storage (SB3's ``load_replay_buffer`` sets it)."""
        return self._device

    @device.setter
    def device(self, device: th.device | str) -> None:
        self._device = get_device(device)
        if self._storage is not None and self._storage.device != self._device:
            self._storage = self._storage.to(self._device)
            if self._image_storage is not None:
                self._image_storage = self._image_storage.to(self._device)
            self._make_views()
        if getattr(self, "_generator", None) is not None:
            self.generator = self._generator  # re-seeds a generator of the new device if needed

    @property
    def generator(self) -> th.Generator | None:
        """Generator of the sampled indices, on the buffer's device (None: the device's default generator)."""
        return self._generator

    @generator.setter
    def generator(self, generator: th.Generator | None) -> None:
        self._generator = generator_on(generator, self._device)

    # --- storage views --------------------------------------------------------------------------------------------

    def _columns(self, name: Any) -> tuple[slice, tuple[int, ...]]:
        return self._image_layout[name] if name in self._image_layout else self._layout[name]

    def _field_view(self, rows: th.Tensor, name: Any, keep_column: bool = False) -> th.Tensor:
        """:return: the columns of ``name`` in ``rows`` of its storage (shape ``(len(rows), *shape)``), a view"""
        columns, shape = self._columns(name)
        view = rows[:, columns]
        if shape == ():
            return view if keep_column else view.squeeze(-1)
        return view.unflatten(-1, shape) if len(shape) > 1 else view

    def _make_views(self) -> None:
        assert self._storage is not None
        tables = [storage.view(self.buffer_size, self.n_envs, -1) for storage in self._storages()]

        def view(name: Any) -> th.Tensor:
            columns, shape = self._columns(name)
            table = tables[1] if name in self._image_layout else tables[0]
            return table[:, :, columns].unflatten(-1, shape) if shape else table[:, :, columns.start]

        def obs_view(kind: str) -> th.Tensor | dict[str, th.Tensor]:
            if self._obs_keys == [None]:
                return view((kind, None))
            return {key: view((kind, key)) for key in self._obs_keys}  # type: ignore[misc]

        self.observations = obs_view("obs")
        self.next_observations = obs_view("next_obs")
        self.actions = view("actions")
        self.rewards = view("rewards")
        self.dones = view("dones")
        self.timeouts = view("timeouts")

    # --- writing --------------------------------------------------------------------------------------------------

    def _obs_parts(self, kind: str, observations: BatchObs) -> list[tuple[Any, Any]]:
        if self._obs_keys == [None]:
            if isinstance(observations, dict):
                raise TypeError(f"{type(self).__name__} stores Box observations, got a dict: use DeviceDictReplayBuffer")
            return [((kind, None), observations)]
        if not isinstance(observations, dict):
            raise TypeError(f"{type(self).__name__} stores Dict observations, got {type(observations).__name__}")
        return [((kind, key), observations[key]) for key in self._obs_keys]

    def _storages(self) -> list[th.Tensor]:
        """:return: the float32 storage, and the uint8 one of the image keys where there are some"""
        assert self._storage is not None
        return [self._storage] if self._image_storage is None else [self._storage, self._image_storage]

    def _write(self, start: int, fields: list[tuple[Any, Any]], n_items: int) -> None:
        """Copy ``n_items`` transitions (arrays or tensors, first dimension ``n_items``) to storage rows ``start:``."""
        for storage, layout in zip(self._storages(), (self._layout, self._image_layout)):
            # Chunks are assembled on the CPU in the storage's dtype, then copied in one (host to device) transfer.
            chunk_rows = max(EXTEND_CHUNK_BYTES // max(storage[:1].nbytes, 1), 1)
            chunk = th.empty((min(chunk_rows, n_items), storage.shape[1]), dtype=storage.dtype)
            for chunk_start in range(0, n_items, chunk_rows):
                chunk_stop = min(chunk_start + chunk_rows, n_items)
                rows = chunk[: chunk_stop - chunk_start]
                for name, values in fields:
                    if name in layout:
                        source = th.as_tensor(values[chunk_start:chunk_stop]).reshape(chunk_stop - chunk_start, -1)
                        rows[:, layout[name][0]].copy_(source)
                storage[start + chunk_start : start + chunk_stop].copy_(rows)

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
        Append ``n`` transitions in one vectorised write, row by row of ``n_envs`` columns (as
        ``OfflineDataMixin.extend``). Arrays may be NumPy arrays or tensors of any float/bool dtype and device.

        When ``n`` is not a multiple of ``n_envs``, the last row is completed with the first transitions again
        (fewer than ``n_envs`` duplicates), since every column of a stored row is sampled.

        :param observations: ``(n, *obs_shape)`` or a dict of such arrays
        :param next_observations: same shapes
        :param actions: ``(n, action_dim)``, scaled to [-1, 1]
        :param rewards: ``(n,)``
        :param dones: ``(n,)``, 1 for terminal transitions
        :param timeouts: ``(n,)``, 1 for transitions cut by a time limit (they are not terminal)
        :raises ValueError: the transitions do not fit in the free rows of the buffer
        """
        n_transitions = len(rewards)
        n_rows, n_duplicates = rows_for(n_transitions, self.n_envs, self.buffer_size - self.pos if not self.full else 0)
        fields = [
            *self._obs_parts("obs", observations),
            *self._obs_parts("next_obs", next_observations),
            ("actions", actions),
            ("rewards", rewards),
            ("dones", dones),
            ("timeouts", timeouts),
        ]
        start = self.pos * self.n_envs
        self._write(start, fields, n_transitions)
        if n_duplicates:
            self._write(start + n_transitions, [(name, values[:n_duplicates]) for name, values in fields], n_duplicates)
        advance_rows(self, n_rows)

    def add(
        self,
        obs: BatchObs,
        next_obs: BatchObs,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """One transition per environment (SB3's ``collect_rollouts``): arrays with a first dimension ``n_envs``."""
        timeouts = step_timeouts(infos, self.handle_timeout_termination)
        fields = [
            *self._obs_parts("obs", obs),
            *self._obs_parts("next_obs", next_obs),
            ("actions", action),
            ("rewards", reward),
            ("dones", done),
            ("timeouts", timeouts),
        ]
        start = self.pos * self.n_envs
        for storage, layout in zip(self._storages(), (self._layout, self._image_layout)):
            row = th.empty((self.n_envs, storage.shape[1]), dtype=storage.dtype, device="cpu").numpy()  # a host row
            for name, values in fields:
                if name in layout:
                    row[:, layout[name][0]] = np.asarray(values).reshape(self.n_envs, -1)
            storage[start : start + self.n_envs].copy_(th.from_numpy(row))
        advance_rows(self, 1)

    # --- sampling -------------------------------------------------------------------------------------------------

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples | DictReplayBufferSamples:
        """
        Uniform sample of ``batch_size`` stored transitions: indices drawn on the device from ``generator``,
        rows gathered with one ``index_select``. No host synchronisation (unless ``env`` normalizes).
        """
        upper_bound = self.size() * self.n_envs
        indices = th.randint(upper_bound, (batch_size,), device=self._device, generator=self._generator)
        return self.gather(indices, env)

    def graph_sampling_key(self) -> Hashable | None:
        """
        What ``sample`` (without ``env``) reads that a CUDA graph capturing it freezes: the storage's address, the
        number of sampleable transitions and the generator (the object: compared by identity, kept alive). A graph
        that captured ``sample`` stays valid while the key is unchanged (see ``CudaGraphUpdate.sampled_step``).
        None for a subclass that samples otherwise (the hindsight buffer relabels with host state): not captured.
        """
        if type(self).sample is not DeviceBufferMixin.sample:
            return None
        upper_bound = self.size() * self.n_envs
        return tuple(storage.data_ptr() for storage in self._storages()), upper_bound, self._generator

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray | th.Tensor, env: VecNormalize | None = None
    ) -> ReplayBufferSamples | DictReplayBufferSamples:
        """SB3's semantics: rows ``batch_inds``, each with a random environment column."""
        rows = th.as_tensor(batch_inds, device=self._device)
        columns = th.randint(self.n_envs, rows.shape, device=self._device, generator=self._generator)
        return self.gather(rows * self.n_envs + columns, env)

    def gather(self, indices: th.Tensor, env: VecNormalize | None = None) -> ReplayBufferSamples | DictReplayBufferSamples:
        """
        :param indices: flat transition indices ``row * n_envs + env_index``, shape ``(batch,)``, on the device
        :return: the transitions (``normalized`` by ``env``); fields are float32 column views of one gathered
            ``(batch, width)`` tensor, ``dones`` is ``done * (1 - timeout)`` of shape ``(batch, 1)``, ``rewards`` has
            shape ``(batch, 1)``
        """
        rows, *image_rows = (storage.index_select(0, indices) for storage in self._storages())
        dones = self._field_view(rows, "dones", keep_column=True) * (
            1.0 - self._field_view(rows, "timeouts", keep_column=True)
        )
        samples = self._samples(
            self._sampled_obs(rows, image_rows, "obs"),
            self._field_view(rows, "actions"),
            self._sampled_obs(rows, image_rows, "next_obs"),
            dones,
            self._field_view(rows, "rewards", keep_column=True),
        )
        return self.normalized(samples, env)

    def gather_field(self, indices: th.Tensor, name: Any) -> th.Tensor:
        """:return: field ``name`` (e.g. ``("next_obs", "achieved_goal")``) of transitions ``indices``, ``(batch, *shape)``"""
        storage = self._image_storage if name in self._image_layout else self._storage
        assert storage is not None
        return self._field_view(storage.index_select(0, indices), name)

    def _sampled_obs(self, rows: th.Tensor, image_rows: list[th.Tensor], kind: str) -> th.Tensor | dict[str, th.Tensor]:
        """:return: the observations of ``kind`` in gathered ``rows`` (and ``image_rows``, the image keys' rows)"""
        if self._obs_keys == [None]:
            return self._field_view(rows, (kind, None))
        return {
            key: self._field_view(image_rows[0] if (kind, key) in self._image_layout else rows, (kind, key))
            for key in self._obs_keys  # type: ignore[misc]
        }

    def normalized(self, samples: Any, env: VecNormalize | None) -> Any:
        """
        :return: ``samples`` with observations and rewards normalized by ``env`` as SB3's buffers return them;
            ``samples`` itself where ``env`` is None. VecNormalize works on NumPy arrays: a host round trip, only
            when a normalizing env is given.
        """
        if env is None:
            return samples

        def on_device(value: np.ndarray) -> th.Tensor:
            return th.as_tensor(value, dtype=th.float32, device=self._device)

        def normalized_obs(obs: th.Tensor | dict[str, th.Tensor]) -> th.Tensor | dict[str, th.Tensor]:
            if isinstance(obs, dict):
                normalized = self._normalize_obs({key: value.cpu().numpy() for key, value in obs.items()}, env)  # type: ignore[attr-defined]
                return {key: on_device(value) for key, value in normalized.items()}
            return on_device(self._normalize_obs(obs.cpu().numpy(), env))  # type: ignore[attr-defined]

        return samples._replace(
            observations=normalized_obs(samples.observations),
            next_observations=normalized_obs(samples.next_observations),
            rewards=on_device(self._normalize_reward(samples.rewards.cpu().numpy(), env)),  # type: ignore[attr-defined]
        )

    def _samples(
        self, observations: Any, actions: th.Tensor, next_observations: Any, dones: th.Tensor, rewards: th.Tensor
    ) -> Any:
        raise NotImplementedError

    # --- pickling (SB3's save_replay_buffer / load_replay_buffer) ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            state.pop(name, None)
        # Only the written rows, as NumPy arrays, so that a CUDA buffer loads on any machine.
        n_rows = self.size() * self.n_envs
        for name, storage in zip(("_storage", "_image_storage"), self._storages()):
            state[name] = storage[:n_rows].cpu().numpy()
        state["_device"] = str(self._device)
        state["_generator"] = generator_state(self._generator)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        stored = [state.pop("_storage"), state.pop("_image_storage", None)]
        state.setdefault("_image_layout", {})  # files of older versions: every key in the float32 storage
        saved_generator = state.pop("_generator")
        self.__dict__.update(state)
        device = th.device(state["_device"])
        if device.type == "cuda" and not th.cuda.is_available():
            device = th.device("cpu")  # SB3's load_replay_buffer then sets the model's device
        self._device = device
        self._storage, self._image_storage = (
            None if rows is None else zeros((self.buffer_size * self.n_envs, rows.shape[1]), device, rows.dtype.type)
            for rows in stored
        )
        for storage, rows in zip(self._storages(), stored):
            storage[: len(rows)].copy_(th.from_numpy(rows))
        self._generator = restore_generator(saved_generator, device)
        self._make_views()


class DeviceReplayBuffer(DeviceBufferMixin, ReplayBuffer):
    """
    SB3 ``ReplayBuffer`` (Box observations) whose storage is one float32 tensor on ``device``; sampling draws
    indices on the device (``generator``) and gathers rows with ``index_select``: no NumPy, no host sync.
    Offers ``extend`` like ``OfflineReplayBuffer``, so ``IQL(..., replay_buffer_class=DeviceReplayBuffer)`` takes
    an offline dataset. Memory: ``buffer_size * (2 * obs_dim + action_dim + 3) * 4`` bytes.

    :param buffer_size: capacity in transitions
    :param observation_space: observation space (stored as float32)
    :param action_space: action space
    :param device: device of the storage and of the samples
    :param n_envs: number of parallel environments (``add`` takes one transition per environment)
    :param optimize_memory_usage: must be False
    :param handle_timeout_termination: store timeouts from ``infos`` in ``add`` (sampled dones are
        ``done * (1 - timeout)``)
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ):
        if isinstance(observation_space, spaces.Dict):
            raise ValueError("DeviceReplayBuffer takes Box observations: use DeviceDictReplayBuffer for Dict observations")
        self._init_storage(
            buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage, handle_timeout_termination
        )

    def _samples(
        self, observations: th.Tensor, actions: th.Tensor, next_observations: th.Tensor, dones: th.Tensor, rewards: th.Tensor
    ) -> ReplayBufferSamples:
        return ReplayBufferSamples(observations, actions, next_observations, dones, rewards)


class DeviceDictReplayBuffer(DeviceBufferMixin, DictReplayBuffer):
    """
    SB3 ``DictReplayBuffer`` whose storage is one float32 tensor on ``device`` (every key of the observation
    side by side) and, for image keys (uint8 frames), one uint8 tensor; same sampling and ``extend`` as
    ``DeviceReplayBuffer``; samples keep image keys as uint8 (the policy scales them, as SB3's buffers return them).

    :param buffer_size: capacity in transitions
    :param observation_space: Dict observation space (image keys stored as uint8, the others as float32)
    :param action_space: action space
    :param device: device of the storage and of the samples
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: must be False
    :param handle_timeout_termination: store timeouts from ``infos`` in ``add``
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ):
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError("DeviceDictReplayBuffer takes Dict observations: use DeviceReplayBuffer for Box observations")
        self._init_storage(
            buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage, handle_timeout_termination
        )

    def _samples(
        self,
        observations: dict[str, th.Tensor],
        actions: th.Tensor,
        next_observations: dict[str, th.Tensor],
        dones: th.Tensor,
        rewards: th.Tensor,
    ) -> DictReplayBufferSamples:
        return DictReplayBufferSamples(observations, actions, next_observations, dones, rewards)
