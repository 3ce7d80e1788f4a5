"""Minari datasets -> flat arrays of transitions, with the checks that keep bad data out of training."""

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from gymnasium import spaces
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path
from stable_baselines3.common.preprocessing import is_image_space

from sb3_iql.common.preprocessing import BatchObs, channel_last

#: A Minari id, a loaded dataset, or a list of them.
DatasetLike = str | minari.MinariDataset | Sequence[str | minari.MinariDataset]


class DatasetNotFoundError(FileNotFoundError):
    """A Minari dataset id that is not stored locally."""


@dataclass
class Transitions:
    """
    Every transition of one or more datasets, in the environment's units.

    ``n`` is the number of transitions, ``n_episodes`` the number of episodes.

    :param observations: ``(n, *obs_shape)`` or a dict of such arrays
    :param next_observations: same shapes; the episode's own next row
    :param actions: ``(n, action_dim)``, unscaled
    :param rewards: ``(n,)``, untransformed
    :param terminations: ``(n,)`` bool, the episode ended in a terminal state
    :param truncations: ``(n,)`` bool, the episode was cut (time limit); NOT terminal
    :param episode_returns: ``(n_episodes,)`` undiscounted return of each episode
    """

    observations: BatchObs
    next_observations: BatchObs
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    episode_returns: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)

    def digest(self) -> str:
        """
        :return: a fingerprint of the data (hex): every action, reward and flag, and ``DIGEST_ROWS`` evenly spaced
            observation rows, so that a dataset written again under its id is told apart cheaply (images too)
        """
        rows = np.unique(np.linspace(0, len(self) - 1, num=min(len(self), DIGEST_ROWS)).astype(np.int64))
        observations = self.observations if isinstance(self.observations, dict) else {"": self.observations}
        fingerprint = hashlib.blake2b(digest_size=16)
        arrays = [self.actions, self.rewards, self.terminations, self.truncations]
        for array in arrays + [observations[key][rows] for key in sorted(observations)]:
            fingerprint.update(np.ascontiguousarray(array).tobytes())
        return fingerprint.hexdigest()


#: Observation rows that ``Transitions.digest`` reads (all of them in smaller datasets).
DIGEST_ROWS = 4096


def check_dataset_id(dataset_id: str) -> None:
    """:raises ValueError: ``dataset_id`` is not of the form ``[namespace/]name-vN``"""
    try:
        parse_dataset_id(dataset_id)
    except (TypeError, ValueError) as error:  # Minari raises a TypeError where the version is missing
        raise ValueError(
            f"Malformed dataset id {dataset_id!r}: it needs the form [namespace/]name-vN, e.g. 'local/pendulum/random-v0'"
        ) from error


def load_dataset(dataset_id: str, download: bool = False) -> minari.MinariDataset:
    """
    Load a local Minari dataset, or download it first when asked.

    :param dataset_id: Minari id, e.g. ``"D4RL/antmaze/large-diverse-v1"``
    :param download: download the dataset from Minari's remote when it is not stored locally (needs network)
    :raises ValueError: a malformed id
    :raises DatasetNotFoundError: the dataset is not local and ``download`` is False, or its download failed
    """
    check_dataset_id(dataset_id)
    data_path = os.path.join(get_dataset_path(dataset_id), "data")
    if os.path.isdir(data_path) and not os.path.isfile(os.path.join(data_path, "metadata.json")):
        raise DatasetNotFoundError(
            f"Minari dataset '{dataset_id}' at {data_path} has no metadata.json: a write that did not finish? Write "
            "it again (overwrite=True), or delete the folder"
        )
    if not os.path.exists(data_path):
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets (default; MINARI_DATASETS_PATH is not set)")
        where = f"searched MINARI_DATASETS_PATH={root}"
        others = _other_local_versions(dataset_id)
        if others:
            where += f"; stored there: {', '.join(others)}"
        if not download:
            raise DatasetNotFoundError(
                f"Minari dataset '{dataset_id}' is not stored locally: {where}. Download it with `minari download "
                f"{dataset_id}`, or pass download_dataset=True to IQL, or point MINARI_DATASETS_PATH at the folder "
                "that holds it."
            )
        try:
            minari.download_dataset(dataset_id)
        except Exception as error:  # no network, an id the remote does not have, a newer Minari needed...
            raise DatasetNotFoundError(
                f"Minari dataset '{dataset_id}' is not stored locally ({where}) and its download failed "
                f"({type(error).__name__}: {str(error)[:300]}). Check the id and the network, or point "
                "MINARI_DATASETS_PATH at a folder that holds it."
            ) from error
    return minari.load_dataset(dataset_id)


def _other_local_versions(dataset_id: str) -> list[str]:
    """:return: the ids of the local datasets that differ from ``dataset_id`` in their version only, oldest first"""
    namespace, name, _ = parse_dataset_id(dataset_id)
    folder = os.path.dirname(get_dataset_path(dataset_id))
    entries = os.listdir(folder) if os.path.isdir(folder) else []
    prefix = f"{name}-v"
    suffixes = [entry[len(prefix) :] for entry in entries if entry.startswith(prefix)]
    versions = sorted(int(suffix) for suffix in suffixes if suffix.isdigit())
    return [f"{namespace}/{name}-v{version}" if namespace else f"{name}-v{version}" for version in versions]


def resolve_datasets(datasets: DatasetLike, download: bool = False) -> list[minari.MinariDataset]:
    """:return: the loaded datasets of a Minari id, a dataset, or a list of them"""
    if isinstance(datasets, (str, minari.MinariDataset)):
        datasets = [datasets]
    if not isinstance(datasets, Sequence) or not all(isinstance(item, (str, minari.MinariDataset)) for item in datasets):
        raise TypeError(
            f"offline_dataset must be a Minari dataset id, a MinariDataset or a list of them, got {datasets!r:.200}"
        )
    if len(datasets) == 0:
        raise ValueError("offline_dataset is an empty list")
    return [load_dataset(item, download) if isinstance(item, str) else item for item in datasets]


def describe_space(space: spaces.Space) -> str:
    """:return: a one-line description of a space, with shapes and bounds of Boxes"""
    if isinstance(space, spaces.Dict):
        return "Dict(" + ", ".join(f"{key}: {describe_space(sub)}" for key, sub in space.spaces.items()) + ")"
    if isinstance(space, spaces.Box):
        low, high = np.unique(space.low), np.unique(space.high)
        bounds = f"[{low[0]}, {high[0]}]" if len(low) == len(high) == 1 else f"low={space.low}, high={space.high}"
        return f"Box(shape={space.shape}, {bounds}, dtype={space.dtype})"
    return repr(space)


def check_action_space(
    action_space: spaces.Space, supported: tuple[type[spaces.Space], ...], name: str, action_noise: Any = None
) -> None:
    """
    A bounded Box (dataset actions are scaled to [-1, 1] with its bounds), or a ``Discrete(n)`` starting at 0
    where the algorithm supports it (actions are stored as indices, as SB3's DQN does).

    :param supported: the action space classes the algorithm supports
    :param name: the algorithm's name, for the messages
    :param action_noise: the online action noise (an SB3 ``ActionNoise``), which only Box actions take
    :raises ValueError: the space is not supported, naming the ones that are
    """
    if not isinstance(action_space, supported):
        names = " and ".join(space.__name__ for space in supported)
        raise ValueError(f"{name} supports {names} action spaces, got {action_space}")
    if isinstance(action_space, spaces.Discrete) and action_space.start != 0:
        raise ValueError(f"{name} needs Discrete actions starting at 0 (as SB3's policies predict), got {action_space}")
    if isinstance(action_space, spaces.Discrete) and action_noise is not None:
        raise ValueError(
            f"action_noise perturbs Box actions; with {action_space} it would do nothing: Discrete actions explore "
            "by sampling the policy's categorical distribution online"
        )
    shape = getattr(action_space, "shape", None)
    if isinstance(action_space, spaces.Box) and (len(shape) == 0 or int(np.prod(shape)) != shape[0]):
        raise ValueError(
            f"{name} needs Box actions of one dimension, shape (n,) (or (n, 1)), got shape {shape}: flatten the "
            "environment's actions and the dataset's (gymnasium.wrappers.TransformAction)"
        )
    if isinstance(action_space, spaces.Box) and not (
        np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()
    ):
        raise ValueError(f"{name} needs a bounded action space to scale actions to [-1, 1], got {action_space}")
    if isinstance(action_space, spaces.Box):
        with np.errstate(over="ignore"):
            span = action_space.high - action_space.low  # in the space's dtype, as the scaling computes it
        if not np.isfinite(span).all():
            raise ValueError(
                f"{name} scales actions to [-1, 1] by high - low, which overflows {action_space.dtype} for "
                f"{action_space} (every action would be NaN): give the action space bounds whose range is finite"
            )
    if isinstance(action_space, spaces.Box) and (action_space.high <= action_space.low).any():
        raise ValueError(
            f"{name} needs low < high in every action dimension to scale actions to [-1, 1], got {action_space}: "
            "leave out the dimensions that cannot move"
        )


def spaces_match(dataset_space: spaces.Space, env_space: spaces.Space, check_bounds: bool) -> bool:
    """
    :return: whether data of ``dataset_space`` fits ``env_space`` (same structure and shapes, the same dtype where
        either is an image space, and bounds if asked); channel-last image frames fit the channel-first space of an
        env in SB3's ``VecTransposeImage``, as the frames are transposed when they are stored
    """
    if isinstance(dataset_space, spaces.Box) and is_image_space(env_space, check_channels=False):
        if len(env_space.shape) == 3 and dataset_space.shape == channel_last(env_space.shape) != env_space.shape:
            return dataset_space.dtype == env_space.dtype
    if isinstance(dataset_space, spaces.Dict) and isinstance(env_space, spaces.Dict):
        return set(dataset_space.spaces) == set(env_space.spaces) and all(
            spaces_match(dataset_space[key], env_space[key], check_bounds) for key in dataset_space.spaces
        )
    if isinstance(dataset_space, spaces.Box) and isinstance(env_space, spaces.Box):
        same_shape = dataset_space.shape == env_space.shape
        # uint8 frames [0, 255] stored as they come, float ones not: the other kind would be read in other units
        images = any(is_image_space(space, check_channels=False) for space in (dataset_space, env_space))
        if images and dataset_space.dtype != env_space.dtype:
            return False
        return same_shape and (
            not check_bounds
            or (np.allclose(dataset_space.low, env_space.low) and np.allclose(dataset_space.high, env_space.high))
        )
    return dataset_space == env_space


def check_spaces(dataset: minari.MinariDataset, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """
    :raises ValueError: the dataset's spaces do not fit the environment's, showing both
    """
    name = dataset.spec.dataset_id
    if not spaces_match(dataset.observation_space, observation_space, check_bounds=False):
        hint = _transposed_hint(dataset.observation_space, observation_space)
        raise ValueError(
            f"Observation space of dataset '{name}' does not match the environment's:\n"
            f"  dataset:     {describe_space(dataset.observation_space)}\n"
            f"  environment: {describe_space(observation_space)}{hint}"
        )
    # Actions are scaled with the environment's bounds, so the bounds must agree too.
    if not spaces_match(dataset.action_space, action_space, check_bounds=True):
        raise ValueError(
            f"Action space of dataset '{name}' does not match the environment's:\n"
            f"  dataset:     {describe_space(dataset.action_space)}\n"
            f"  environment: {describe_space(action_space)}"
        )


def _transposed_hint(stored: spaces.Space, observation_space: spaces.Space) -> str:
    """:return: a hint where the dataset stores channel-first images of a channel-last environment's, else ''"""
    if not (isinstance(stored, spaces.Box) and isinstance(observation_space, spaces.Box)):
        return ""
    same_rank = len(stored.shape) == len(observation_space.shape) == 3
    if same_rank and stored.shape == (observation_space.shape[-1], *observation_space.shape[:-1]):
        return (
            "\n  The dataset's images are the environment's, channel first: give the environment wrapped as SB3 "
            "trains it, VecTransposeImage(DummyVecEnv([lambda: env]))"
        )
    return ""


def check_observation_space(space: spaces.Space) -> None:
    """
    :raises ValueError: a space the replay buffers cannot hold: nested Dict, Tuple, a space other than Box,
        Discrete, MultiDiscrete, MultiBinary and a flat Dict of them (Text, Graph...), a Box of shape ``()``, or a
        Discrete or MultiDiscrete not starting at 0 (also inside a Dict), a MultiDiscrete of more than one dimension
        (SB3's extractors fail on it), saying what to do instead
    """
    if isinstance(space, spaces.Dict):
        for key, subspace in space.spaces.items():
            if isinstance(subspace, (spaces.Dict, spaces.Tuple)):
                raise ValueError(f"Nested observation spaces are not supported ({key!r} is {subspace}): flatten them")
            check_observation_space(subspace)
    elif isinstance(space, spaces.Tuple):
        raise ValueError(f"Tuple observation spaces are not supported ({space}): use a Dict, or flatten them")
    elif not isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(
            f"{type(space).__name__} observation spaces are not supported ({space}): SB3's policies take Box, Discrete, "
            "MultiDiscrete, MultiBinary and Dict of them; encode the observations as one of these"
        )
    elif isinstance(space, spaces.Box) and space.shape == ():
        raise ValueError(f"Box observations of shape () are not supported ({space}): reshape them to (1,)")
    elif isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)) and np.any(space.start != 0):
        raise ValueError(f"{type(space).__name__} observations must start at 0, as SB3 one-hot encodes them, got {space}")
    elif isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim != 1:
        raise ValueError(f"MultiDiscrete observations of more than one dimension are not supported ({space}): flatten them")


def stores_environment(dataset: minari.MinariDataset) -> bool:
    """:return: whether the dataset stores an environment spec (for evaluation, or the one it was collected in)"""
    return any(dataset.storage.metadata.get(key) for key in ("eval_env_spec", "env_spec"))


def recover_eval_env(dataset: minari.MinariDataset) -> gym.Env:
    """
    :return: the dataset's evaluation environment (its collection environment where it stores none)
    :raises ValueError: the dataset stores no environment at all, or one that cannot be made here (its module or
        id missing, an argument its version no longer takes...)
    """
    if not stores_environment(dataset):
        raise ValueError(
            f"Dataset '{dataset.spec.dataset_id}' stores no environment to recover: give the environment itself (one "
            "with the dataset's spaces)"
        )
    try:
        return dataset.recover_environment(eval_env=True)
    except Exception as error:
        spec = getattr(dataset, "_eval_env_spec", None) or dataset.env_spec  # the one recover_environment makes
        raise ValueError(
            f"Dataset '{dataset.spec.dataset_id}' stores the environment {spec.id!r}, which cannot be made here "
            f"({type(error).__name__}: {str(error)[:300]}): install or import what registers it, or give the "
            "environment itself (one with the dataset's spaces)"
        ) from error


def episode_subset(dataset: minari.MinariDataset) -> list[int] | None:
    """:return: the episodes a dataset view reads, in its order (``minari.split_dataset``, ``filter_episodes``),
    or None where it reads its storage's every episode in order"""
    indices = np.asarray(dataset.episode_indices)
    if np.array_equal(indices, np.arange(dataset.storage.total_episodes)):
        return None
    return indices.tolist()


#: Why a finite value can count as inf
NON_FINITE_HINT = "which the buffers and networks take: |x| above 3.4e38 is inf there"


def finite_in_float32(values: np.ndarray) -> bool:
    """:return: whether ``values`` hold no NaN or inf, and none once in float32, as the buffers and networks take
    them (a finite float64 beyond float32's range, about 3.4e38, becomes inf there)"""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return True
    finite = np.isfinite(values).all()
    if finite and values.dtype.itemsize > 4 and values.size:
        largest = np.finfo(np.float32).max
        finite = values.max() <= largest and values.min() >= -largest
    return bool(finite)


def _first_non_finite(values: BatchObs) -> str | None:
    """:return: the name of the first (sub)field holding NaN or inf (in float32), "" for a plain array, None if all
    finite"""
    if isinstance(values, dict):
        for key, array in values.items():
            if _first_non_finite(array) is not None:
                return f"[{key!r}]"
        return None
    return None if finite_in_float32(values) else ""


def _concatenate(chunks: list[BatchObs]) -> BatchObs:
    if isinstance(chunks[0], dict):
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
    return np.concatenate(chunks)


def _slice(observations: BatchObs, start: int, stop: int | None) -> BatchObs:
    if isinstance(observations, dict):
        return {key: array[start:stop] for key, array in observations.items()}
    return observations[start:stop]


def load_transitions(datasets: Sequence[minari.MinariDataset]) -> Transitions:
    """
    Read every episode of the datasets into flat transition arrays.

    Next observations come from the episode's own next row (Minari stores ``n_steps + 1`` observations per
    episode), so episode boundaries are never crossed. An episode whose last step is neither terminated nor
    truncated (cut short) is marked truncated there: it ends, and keeps bootstrapping.

    :raises ValueError: an episode holds NaN or inf, or rows of other lengths than its ``n_steps`` actions (and
        ``n_steps + 1`` observations), naming the dataset, episode and field; or no data at all
    """
    observations, next_observations, actions, rewards, terminations, truncations, returns = [], [], [], [], [], [], []
    for dataset in datasets:
        for episode in dataset.iterate_episodes():
            fields = {"observations": episode.observations, "actions": episode.actions, "rewards": episode.rewards}
            for field, values in fields.items():
                bad = _first_non_finite(values)
                if bad is not None:
                    raise ValueError(
                        f"Dataset '{dataset.spec.dataset_id}', episode {episode.id}: field '{field}{bad}' "
                        f"holds NaN or inf values (in float32, {NON_FINITE_HINT}); clean the dataset before training."
                    )
            _check_episode_rows(dataset.spec.dataset_id, episode)
            try:  # before the float32 cast below, which would round 0.99999999 to a valid index
                raw_actions = np.asarray(episode.actions)
                _check_integer_values("actions", raw_actions.reshape(len(raw_actions), -1), dataset.action_space)
            except ValueError as error:
                raise ValueError(f"Dataset '{dataset.spec.dataset_id}', episode {episode.id}: {error}") from None
            for field in ("terminations", "truncations"):
                flags = np.asarray(getattr(episode, field))
                if not are_flags(flags):
                    raise ValueError(
                        f"Dataset '{dataset.spec.dataset_id}', episode {episode.id}: field '{field}' must hold "
                        f"booleans (or 0 and 1), got {np.unique(flags)[:5]}"
                    )
            steps = {
                field: _per_step(dataset.spec.dataset_id, episode.id, field, getattr(episode, field))
                for field in ("rewards", "terminations", "truncations")
            }
            observations.append(_slice(episode.observations, 0, -1))
            next_observations.append(_slice(episode.observations, 1, None))
            actions.append(episode.actions)
            rewards.append(steps["rewards"])
            terminations.append(steps["terminations"])
            truncations.append(truncated_where_cut(steps["terminations"], steps["truncations"]))
            returns.append(float(np.sum(steps["rewards"])))
    if not rewards or sum(len(chunk) for chunk in rewards) == 0:
        raise ValueError("The offline dataset holds no transitions")
    return Transitions(
        observations=_concatenate(observations),
        next_observations=_concatenate(next_observations),
        actions=np.concatenate(actions).astype(np.float32).reshape(-1, np.prod(actions[0].shape[1:], dtype=int)),
        rewards=np.concatenate(rewards).astype(np.float32),
        terminations=np.concatenate(terminations).astype(bool),
        truncations=np.concatenate(truncations).astype(bool),
        episode_returns=np.asarray(returns),
    )


def _per_step(dataset_id: str, episode_id: int, field: str, values: Any) -> np.ndarray:
    """
    :return: an episode's per-step field as ``(n_steps,)``: a column ``(n_steps, 1)``, as Minari stores what it is
        given, is flattened
    :raises ValueError: any other shape, naming the dataset, episode and field
    """
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim != 1:
        raise ValueError(
            f"Dataset '{dataset_id}', episode {episode_id}: field '{field}' must hold one value per step, shape "
            f"(n_steps,) or (n_steps, 1), got {values.shape}"
        )
    return values


def truncated_where_cut(terminations: np.ndarray, truncations: np.ndarray) -> np.ndarray:
    """:return: an episode's truncation flags ``(n_steps,)``, its last step flagged where it ends neither terminated
    nor truncated (cut short: it ends there and keeps bootstrapping)"""
    ends = np.asarray(truncations, dtype=bool).copy()
    ends[-1:] |= ~np.asarray(terminations[-1:], dtype=bool)
    return ends


def _check_episode_rows(dataset_id: str, episode: Any) -> None:
    """:raises ValueError: the episode's fields are not ``n_steps`` rows (``n_steps + 1`` for observations), naming
    the dataset, episode and field"""
    observations = episode.observations
    obs_rows = (
        {f"[{key!r}]": len(value) for key, value in observations.items()}
        if isinstance(observations, dict)
        else {"": len(observations)}
    )
    steps = {f"observations{key}": rows - 1 for key, rows in obs_rows.items()}
    steps.update(rewards=len(episode.rewards), terminations=len(episode.terminations), truncations=len(episode.truncations))
    n_steps = len(episode.actions)
    for field, n in steps.items():
        if n != n_steps:
            raise ValueError(
                f"Dataset '{dataset_id}', episode {episode.id}: {field} holds {n} steps for {n_steps} actions "
                "(observations have one row more than the actions, the episode's last)"
            )


#: Values checked at once against an integer space's bounds (``_check_integer_values``): 4M, 16 MB of float32.
_CHECK_CHUNK_VALUES = 1 << 22


def _integer_bounds(space: spaces.Space) -> tuple[np.ndarray, np.ndarray] | None:
    """:return: the lowest and highest value of each entry of an integer space (Discrete, MultiDiscrete,
    MultiBinary, integer Box such as uint8 images), flattened; None for a space of real numbers"""
    if isinstance(space, spaces.Discrete):
        return np.array([space.start]), np.array([space.start + space.n - 1])
    if isinstance(space, spaces.MultiDiscrete):
        return space.start.ravel(), (space.start + space.nvec - 1).ravel()
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(1, dtype=np.int8), np.ones(1, dtype=np.int8)
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.integer):
        return space.low.ravel(), space.high.ravel()
    return None


def _check_integer_values(field: str, values: np.ndarray, space: spaces.Space) -> None:
    """:raises ValueError: ``values`` (``(n, *space.shape)``) of an integer space are not integers within its bounds
    (a float frame scaled to [0, 1] for a uint8 image space, an index past a Discrete space's end), naming the first"""
    bounds = _integer_bounds(space)
    if bounds is None:
        return
    low, high = bounds
    if np.issubdtype(values.dtype, np.integer):
        representable = np.iinfo(values.dtype)
        if representable.min >= low.max() and representable.max <= high.min():
            return  # uint8 frames for a [0, 255] image space: nothing to check, nothing to copy
    rows = values.reshape(len(values), -1)
    chunk = max(1, _CHECK_CHUNK_VALUES // max(rows.shape[1], 1))  # float frames: bounded temporary arrays
    first, n_bad = None, 0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        bad = (part < low) | (part > high)
        if not np.issubdtype(values.dtype, np.integer):
            bad |= part != np.round(part)
        bad_rows = bad.any(axis=1)
        n_bad += int(bad_rows.sum())
        if first is None and n_bad:
            row, column = np.argwhere(bad)[0]
            first = (start + row, column, part[row, column])
    if first is not None:
        row, column, value = first
        raise ValueError(
            f"Transitions field '{field}' holds {value} (transition {row}, value {column}; {n_bad} transitions in "
            f"all), not an integer in [{low.flat[column % low.size]}, {high.flat[column % high.size]}] of {space}"
        )


def _check_rows(field: str, values: BatchObs, space: spaces.Space, n_transitions: int) -> None:
    """:raises ValueError: ``values`` is not ``n_transitions`` rows of ``space``'s size (per key for Dict spaces;
    frames of an image space in its shape or its channel-last one), holds other than numbers, NaN or inf, or values
    outside an integer space (Discrete, MultiDiscrete, MultiBinary, uint8 images)"""
    if isinstance(space, spaces.Dict):
        if not isinstance(values, dict) or set(values) != set(space.spaces):
            keys = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"Transitions field '{field}' must be a dict with keys {sorted(space.spaces)}, got {keys}")
        for key, subspace in space.spaces.items():
            _check_rows(f"{field}[{key!r}]", values[key], subspace, n_transitions)
        return
    if isinstance(values, dict):
        raise ValueError(f"Transitions field '{field}' is a dict, but {space} takes an array")
    values = np.asarray(values)
    size = int(np.prod(space.shape, dtype=int)) if space.shape else 1
    if len(values) != n_transitions or values.size != n_transitions * size:
        raise ValueError(
            f"Transitions field '{field}' has shape {values.shape}: expected {n_transitions} rows (the length of "
            f"rewards) of {space} ({size} values per row)"
        )
    if is_image_space(space, check_channels=False):
        if values.shape[1:] not in (space.shape, channel_last(space.shape)):
            raise ValueError(
                f"Transitions field '{field}' holds frames of shape {values.shape[1:]}: expected {space.shape} (or "
                f"channel-last {channel_last(space.shape)}) for {space}"
            )
    elif not row_shape_fits(values.shape[1:], space):
        raise ValueError(  # a transposed (n, 3, 2) for (2, 3) rows would be reshaped, not transposed: scrambled
            f"Transitions field '{field}' holds rows of shape {values.shape[1:]}: expected {space.shape} (or flat "
            f"({size},)) for {space}"
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(f"Transitions field '{field}' holds values of dtype {values.dtype}: expected numbers")
    if not finite_in_float32(values):
        raise ValueError(
            f"Transitions field '{field}' holds NaN or inf values (in float32, {NON_FINITE_HINT}); clean the data "
            "before training."
        )
    _check_integer_values(field, values, space)


def are_flags(values: np.ndarray) -> bool:
    """:return: whether ``values`` are booleans, or numbers that are all 0 or 1 (D4RL stores its flags as floats)"""
    return values.dtype == bool or bool(np.isin(values, (0, 1)).all())


def row_shape_fits(row_shape: tuple[int, ...], space: spaces.Space) -> bool:
    """:return: whether rows of ``row_shape`` hold values of ``space``: its shape, or flattened (a scalar for one value)"""
    size = int(np.prod(space.shape, dtype=int)) if space.shape else 1
    return row_shape in (space.shape, (size,), *([()] if size == 1 else []))


def _as_flags(field: str, values: np.ndarray, n_transitions: int) -> np.ndarray:
    """:return: ``values`` as a bool ``(n,)`` array (D4RL stores its flags as floats)
    :raises ValueError: not ``n_transitions`` values, or values other than 0 and 1"""
    values = np.asarray(values)
    if values.shape != (n_transitions,):
        raise ValueError(f"Transitions field '{field}' has shape {values.shape}: expected ({n_transitions},)")
    if not are_flags(values):
        raise ValueError(f"Transitions field '{field}' must hold booleans (or 0 and 1), got {np.unique(values)[:5]}...")
    return values.astype(bool)


def checked_transitions(transitions: Transitions, observation_space: spaces.Space, action_space: spaces.Space) -> Transitions:
    """
    The checks ``load_transitions`` makes, for transitions built by hand: every field has one row per reward and the
    size of its space, and no NaN or inf.

    :param transitions: transitions in the environment's units
    :param observation_space: the space of each observation (a Dict space: a dict of arrays with its keys)
    :param action_space: the space of each action (Discrete: one index per row)
    :return: the transitions, with termination and truncation flags as bool
    :raises ValueError: naming the first field that does not fit
    """
    n_transitions = len(transitions)
    rewards = np.asarray(transitions.rewards)
    if rewards.ndim != 1 or n_transitions == 0:
        raise ValueError(f"Transitions field 'rewards' must have shape (n,) with n > 0, got {rewards.shape}")
    for field, space in (
        ("observations", observation_space),
        ("next_observations", observation_space),
        ("actions", action_space),
        ("rewards", spaces.Box(-np.inf, np.inf, ())),
    ):
        _check_rows(field, getattr(transitions, field), space, n_transitions)
    return replace(
        transitions,
        terminations=_as_flags("terminations", transitions.terminations, n_transitions),
        truncations=_as_flags("truncations", transitions.truncations, n_transitions),
    )
