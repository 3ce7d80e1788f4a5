"""
Offline training as a layer of its own: an SB3 off-policy algorithm that loads a Minari dataset into its replay
buffer, trains on it without an environment (``learn_offline``), then goes on online with SB3's own ``learn()`` on
the same buffer. IQL builds on it; so can any other offline algorithm (BC, TD3+BC).

A subclass provides ``metric_names``, ``_update_function()`` (one gradient step on a replay batch, returning the
metrics as a device tensor; ``_offline_train_step()`` may fuse it with the sampling) and
``_set_learning_rates(offline)``; it sets its own attributes before calling
``OfflineAlgorithm.__init__``, which builds the model and loads the data.
"""

import copy
import math
import numbers
import os
import pathlib
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import gymnasium as gym
import minari
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import her as sb3_her
from stable_baselines3.common import utils
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule, TrainFrequencyUnit
from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

from sb3_iql.callbacks import OneRunCallback, UpdatesProgressBarCallback, callback_items, find_eval_callback
from sb3_iql.common.augmentation import has_images, shift_observations
from sb3_iql.common.preprocessing import to_channel_first
from sb3_iql.data import REPLAY_BUFFER_CLASSES, replay_buffer_class_named
from sb3_iql.data.buffers import OfflineDictReplayBuffer, OfflineReplayBuffer, rows_for
from sb3_iql.data.device_buffers import (
    SEED_BOUND,
    DeviceDictReplayBuffer,
    DeviceReplayBuffer,
    generator_state,
    restore_generator,
)
from sb3_iql.data.goals import check_relabel_mode, check_relabelled, evaluation_goal, relabel_for_evaluation_goal
from sb3_iql.data.her import HerReplayBuffer
from sb3_iql.data.image_buffers import DeviceImageReplayBuffer
from sb3_iql.data.minari_loader import (
    DatasetLike,
    Transitions,
    check_action_space,
    check_observation_space,
    check_spaces,
    checked_transitions,
    describe_space,
    episode_subset,
    load_transitions,
    recover_eval_env,
    resolve_datasets,
    spaces_match,
)
from sb3_iql.data.rewards import RewardTransformLike, make_reward_transform

SelfOfflineAlgorithm = TypeVar("SelfOfflineAlgorithm", bound="OfflineAlgorithm")
PathLike = str | pathlib.Path | Any  # SB3 also takes open file objects

#: Room left in the default replay buffer for online fine-tuning data, in transitions.
ONLINE_BUFFER_ROOM = 1_000_000
#: Offline gradient steps when ``offline_steps`` is not given: the paper's budget.
DEFAULT_OFFLINE_STEPS = 1_000_000
#: Dataset actions farther than this outside [-1, 1] once scaled (rounding aside) are warned about before clipping.
OUT_OF_BOUNDS_TOLERANCE = 1e-5


def write_atomically(path: PathLike, suffix: str, write: Callable[[PathLike], None]) -> None:
    """
    Write a file so that a crash during the write leaves the previous file intact: ``write`` writes to a temporary
    file beside the target, which is then renamed onto it (``os.replace``). File objects are written as they are.

    :param path: the target; without a suffix it gets ``.<suffix>``, as SB3 names its files
    :param suffix: the suffix SB3 would add (``"zip"``, ``"pkl"``)
    :param write: writes the file to the path it is given
    """
    if not isinstance(path, (str, os.PathLike)):
        write(path)
        return
    target = pathlib.Path(path)
    if target.suffix == "":
        target = target.with_name(f"{target.name}.{suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own (two processes may write the same target), with a suffix: SB3 adds none; created by
    # ``write``, with the permissions of any new file
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def checked_count(name: str, value: Any) -> int:
    """
    :param name: the argument's name, for the error
    :param value: a count (of updates, steps...)
    :return: ``value`` as an int (``1e5`` too, as SB3's ``learn`` takes it)
    :raises ValueError: ``value`` is not a whole number >= 0
    """
    whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (whole and value >= 0 and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


class OfflineAlgorithm(OffPolicyAlgorithm):
    """
    An off-policy algorithm trained first on an offline dataset. Arguments as in SB3's ``OffPolicyAlgorithm``,
    plus:

    :param offline_dataset: Minari dataset id, ``minari.MinariDataset``, or a list of them; every transition is
        loaded into the replay buffer (None: an online-only model, or one loaded later with ``add_transitions``)
    :param reward_transform: None, ``"antmaze"`` (r - 1), ``"locomotion"`` (r / return range * 1000) or a
        callable on an array of rewards; applied to offline and online rewards
    :param offline_steps: offline gradient steps, run by ``learn()`` before online steps when none have run yet
        (None: ``DEFAULT_OFFLINE_STEPS``, the paper's 1M)
    :param download_dataset: download dataset ids that are not stored locally (needs network)
    :param relabel_eval_goal: rewrite every offline transition for the evaluation environment's fixed goal at load
        time (``desired_goal`` and rewards from the env's ``compute_reward``), as D4RL's AntMaze data was: the paper's
        protocol on Minari's goal datasets (``sb3_iql.data.goals``); ``"terminal"`` also ends episodes on reaching it.
        Online transitions are stored as the environment gives them (its goal, reward and time limits)
    :param buffer_size: replay buffer capacity in transitions (None: the ``offline_dataset``'s size +
        ``ONLINE_BUFFER_ROOM``; ``ONLINE_BUFFER_ROOM`` in all without one, data added with ``add_transitions`` included)
    :param image_shift: random-shift augmentation of image observations in training batches (DrQ): each image
        (and next image) shifted by up to this many pixels, borders replicated; 0: off (4 for 84x84 in DrQ)
    :param action_noise: online: noise added to the policy's actions (SB3's ``ActionNoise``)
    :param replay_buffer_class: one of the package's buffers, which take offline data (default:
        ``DeviceReplayBuffer`` or its Dict version, ``DeviceImageReplayBuffer`` for image observations;
        ``OfflineReplayBuffer`` keeps SB3's NumPy storage; the Dict variant is picked from the observation space),
        or the class name of one of the package's buffers (``"HerReplayBuffer"``, as preset files write it)
    """

    #: Names of the metrics the update returns, in order.
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: Dataset actions (scaled to [-1, 1]) are clipped to +-(1 - this) when loaded.
    dataset_action_clip: ClassVar[float] = 0.0
    #: Updates between two logger dumps in ``learn()``'s offline phase (its ``log_interval`` counts episodes online);
    #: not saved; ``python -m sb3_iql.zoo`` sets it from ``--log-interval`` for an offline-only run.
    offline_log_interval: int = 1000

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        offline_dataset: DatasetLike | None,
        learning_rate: float | Schedule,
        buffer_size: int | None,
        learning_starts: int,
        batch_size: int,
        tau: float,
        gamma: float,
        train_freq: int | tuple[int, str],
        gradient_steps: int,
        reward_transform: RewardTransformLike = None,
        offline_steps: int | None = None,
        download_dataset: bool = False,
        relabel_eval_goal: bool | Literal["terminal"] = False,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | str | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        supported_action_spaces: tuple[type[spaces.Space], ...] = (spaces.Box,),
        image_shift: int = 0,
        _init_setup_model: bool = True,
    ):
        if image_shift < 0:
            raise ValueError(f"image_shift must be >= 0 pixels, got {image_shift}")
        check_relabel_mode(relabel_eval_goal)
        if relabel_eval_goal and offline_dataset is None and _init_setup_model:
            raise ValueError(
                "relabel_eval_goal relabels the offline_dataset as it loads, and there is none: relabel your own "
                "transitions with relabel_for_evaluation_goal(transitions, env, mode) from sb3_iql.data.goals before "
                "add_transitions, without relabel_eval_goal"
            )
        replay_buffer_class = _buffer_class(replay_buffer_class, relabel_eval_goal)
        self.image_shift = image_shift
        self.reward_transform = reward_transform
        self.relabel_eval_goal = relabel_eval_goal
        #: The goal every offline transition was relabelled for (``relabel_eval_goal``), ``(goal_dim,)``, or None.
        self.eval_goal: np.ndarray | None = None
        self.offline_steps = DEFAULT_OFFLINE_STEPS if offline_steps is None else checked_count("offline_steps", offline_steps)
        #: Whether ``offline_steps`` was left to its default (then a shorter first ``learn_offline`` is warned about).
        self.offline_steps_default = offline_steps is None
        self.offline_dataset_ids: list[str] = []
        #: Per dataset, the episodes of a view of it (``minari.split_dataset``...) in its order; None: all of them.
        self.offline_dataset_episodes: list[list[int] | None] = []
        #: Offline transitions put into the replay buffer (``add_transitions``): ``learn()`` trains on them first.
        self.offline_dataset_size = 0
        #: Transitions the datasets of ``offline_dataset_ids`` held when the model loaded them (None: no dataset).
        self.offline_dataset_transitions: int | None = None
        #: ``Transitions.digest`` of those transitions (None: no dataset, or a file of an older version).
        self.offline_dataset_digest: str | None = None
        self._n_offline_updates = 0
        #: Offline updates counted in ``num_timesteps`` (``learning_starts`` counts online steps after them).
        self._offline_timesteps = 0
        #: What ``learn()`` adds to ``learning_starts`` while it runs (``_offline_timesteps``; 0 outside it).
        self._learning_starts_shift = 0
        #: Whether ``learn()``'s offline phase has begun and not ended (saved: a checkpoint resumed finishes it).
        self._offline_phase_unfinished = False
        #: Whether a callback stopped the last ``learn_offline`` call (then ``learn()`` stops too, as SAC's).
        self._offline_stopped = False
        #: ``tb_log_name`` and folder of the TensorBoard run that this model's logger writes (saved: a loaded model
        #: continued with ``reset_num_timesteps=False`` goes on writing it); None: none configured by this model yet.
        self._logger_run_name: str | None = None
        self._logger_run_folder: str | None = None
        #: Whether online steps were told that they replace the offline data (once per model).
        self._warned_full_buffer = False
        self.sampling_generator = th.Generator()
        #: A saved model's state of its buffer's own sampling generator (on CUDA), until a buffer takes it back.
        self.device_sampling_state: tuple[str, th.Tensor] | None = None
        #: A saved model's state of torch's global generators (CPU, and CUDA where the model is), which the actor's
        #: dropout masks draw from, until loading gives it back (SB3's load seeds them again from ``seed``).
        self.torch_rng_state: tuple[th.Tensor, th.Tensor | None] | None = None
        if seed is not None:
            self.sampling_generator.manual_seed(seed)
        elif _init_setup_model:  # not in SB3's load, which restores the saved generator
            # from torch's global generator, so that torch.manual_seed makes the run reproducible, as NumPy's global
            # generator does for SB3's own buffers
            self.sampling_generator.manual_seed(int(th.randint(SEED_BOUND, ())))

        env = gym.make(env) if isinstance(env, str) else env
        transitions = None
        if _init_setup_model and offline_dataset is not None:
            datasets = resolve_datasets(offline_dataset, download=download_dataset)
            if env is None:  # the task the dataset is scored on, also the one to fine-tune on
                env = recover_eval_env(datasets[0])
            check_observation_space(env.observation_space)
            check_action_space(env.action_space, supported_action_spaces, type(self).__name__, action_noise)
            for dataset in datasets:
                check_spaces(dataset, env.observation_space, env.action_space)
            if relabel_eval_goal:
                self.eval_goal = evaluation_goal(env)
            transitions = self._load_transitions(datasets, env)
            self.offline_dataset_transitions = len(transitions)
            self.offline_dataset_digest = transitions.digest()
            self.offline_dataset_ids = [dataset.spec.dataset_id for dataset in datasets]
            self.offline_dataset_episodes = [episode_subset(dataset) for dataset in datasets]
            buffer_size = self._buffer_size_for(len(transitions), buffer_size, getattr(env, "num_envs", 1))
        elif env is not None:
            check_observation_space(env.observation_space)
            check_action_space(env.action_space, supported_action_spaces, type(self).__name__, action_noise)
        self.reward_transform_fn = make_reward_transform(
            reward_transform, None if transitions is None else transitions.episode_returns
        )
        is_mlp = policy == "MlpPolicy" or policy is self.policy_aliases.get("MlpPolicy")
        if env is not None and isinstance(env.observation_space, spaces.Dict) and is_mlp:
            # The MLPs are the same; MultiInputPolicy feeds them the concatenated parts of the observation.
            policy = "MultiInputPolicy"

        super().__init__(
            policy,
            env,  # type: ignore[arg-type]
            learning_rate,
            ONLINE_BUFFER_ROOM if buffer_size is None else buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,  # a name resolved above
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=False,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            use_sde=False,
            sde_support=False,
            supported_action_spaces=supported_action_spaces,
            support_multi_env=True,
        )
        if image_shift and self.observation_space is not None and not has_images(self.observation_space, self._float_images):
            raise ValueError(
                f"image_shift={image_shift} shifts image observations (uint8 ones, or any 3-D Box with "
                f"policy_kwargs normalize_images=False), and {describe_space(self.observation_space)} has none: leave it at 0"
            )
        if _init_setup_model:
            # a frame buffer keeps room for the first frame of each of the dataset's episodes
            self._dataset_size = None if transitions is None else (len(transitions), len(transitions.episode_returns))
            self._setup_model()
            del self._dataset_size
            if transitions is not None:
                self.add_transitions(transitions)

    def _load_transitions(self, datasets: list, env: gym.Env | None) -> Transitions:
        """:return: the datasets' transitions, relabelled for ``eval_goal`` with ``relabel_eval_goal``"""
        return relabel_for_evaluation_goal(load_transitions(datasets), env, self.relabel_eval_goal, self.eval_goal)

    @staticmethod
    def _buffer_size_for(n_transitions: int, buffer_size: int | None, n_envs: int = 1) -> int:
        """
        :return: the replay buffer's capacity in transitions: ``buffer_size``, or room for the dataset and
            ``ONLINE_BUFFER_ROOM`` online steps
        :raises ValueError: ``buffer_size`` cannot hold the dataset (SB3's buffers keep ``buffer_size // n_envs``
            rows of ``n_envs`` transitions, and the offline ones fill rows)
        """
        needed = -(-n_transitions // n_envs) * n_envs
        if buffer_size is None:  # whole rows of n_envs for both parts
            return needed + -(-ONLINE_BUFFER_ROOM // n_envs) * n_envs
        if buffer_size < needed:
            rows = "" if n_envs == 1 else f" in rows of {n_envs} environments, {needed} slots"
            raise ValueError(
                f"buffer_size={buffer_size} is smaller than the offline dataset ({n_transitions} transitions){rows}: "
                f"use buffer_size >= {needed}, or None for dataset size + {ONLINE_BUFFER_ROOM} online steps"
            )
        return buffer_size

    def _setup_model(self) -> None:
        self.offline_steps = checked_count("offline_steps", self.offline_steps)  # IQL.load's custom_objects too
        is_dict = isinstance(self.observation_space, spaces.Dict)
        if self.replay_buffer_class is None and is_image_space(self.observation_space, check_channels=False):
            self.replay_buffer_class = DeviceImageReplayBuffer  # uint8 frames, each stored once
        elif self.replay_buffer_class in (None, DeviceReplayBuffer, DeviceDictReplayBuffer):
            self.replay_buffer_class = DeviceDictReplayBuffer if is_dict else DeviceReplayBuffer
        elif self.replay_buffer_class in (OfflineReplayBuffer, OfflineDictReplayBuffer):
            self.replay_buffer_class = OfflineDictReplayBuffer if is_dict else OfflineReplayBuffer
        elif self.replay_buffer_class is sb3_her.HerReplayBuffer:
            raise ValueError(
                f"{type(self).__name__} takes sb3_iql.HerReplayBuffer (the same arguments), online too: SB3's cannot "
                "hold offline data"
            )
        dataset_size = getattr(self, "_dataset_size", None)  # (transitions, episodes) of the constructor's dataset
        image_buffer = issubclass(self.replay_buffer_class, DeviceImageReplayBuffer)
        if image_buffer and dataset_size is not None and "extra_frames" not in self.replay_buffer_kwargs:
            extra_frames = DeviceImageReplayBuffer.default_extra_frames(
                self.buffer_size, getattr(self, "n_envs", 1), dataset_size[1], dataset_size[0]
            )
            self.replay_buffer_kwargs = {**self.replay_buffer_kwargs, "extra_frames": extra_frames}  # saved: same ring
        hindsight = issubclass(self.replay_buffer_class, HerReplayBuffer)
        if hindsight:  # as SB3 does for its HerReplayBuffer, without keeping the env in the saved kwargs
            self.replay_buffer_kwargs["env"] = self.env
        # a loaded model whose file holds its buffer (save(include=["replay_buffer"])): SB3's set_random_seed would
        # restart the saved sampling stream
        kept_stream = None if self.replay_buffer is None else (self.sampling_generator.get_state(), self.device_sampling_state)
        try:
            super()._setup_model()
        except (MemoryError, th.OutOfMemoryError) as error:  # the replay buffer, allocated whole on its device
            # the base classes: NumPy's MemoryError subclass takes (shape, dtype), not a message
            error_type = th.OutOfMemoryError if isinstance(error, th.OutOfMemoryError) else MemoryError
            raise error_type(
                f"The replay buffer of buffer_size={self.buffer_size:,} transitions does not fit on {self.device} "
                f"({error}): pass a smaller buffer_size (the offline dataset's transitions and the online steps to keep)"
            ) from error
        finally:
            if hindsight:
                self.replay_buffer_kwargs.pop("env", None)
        # evaluation mode until training (which sets it): a new or loaded model's actor keeps no dropout, so that
        # model.actor(obs, deterministic=True) is deterministic, as SB3's export guide checks it
        self.policy.set_training_mode(False)
        if kept_stream is not None:
            self.sampling_generator.set_state(kept_stream[0])
            self.device_sampling_state = kept_stream[1]
        self._attach_generator()
        self._restore_torch_rng()

    def _restore_torch_rng(self) -> None:
        """
        A loaded seeded model: torch's global generators as they were at saving, where SB3's load (``_setup_model``'s
        ``set_random_seed``) seeded them from the start, so that a resumed run draws the dropout masks the
        uninterrupted one would. Used once; a model without seed leaves them as they are, as SB3 does.
        """
        saved, self.torch_rng_state = self.torch_rng_state, None
        if saved is None or self.seed is None:
            return
        cpu_state, cuda_state = saved
        th.set_rng_state(cpu_state)
        if cuda_state is not None and self.device.type == "cuda":
            th.cuda.set_rng_state(cuda_state, self.device)

    def _attach_generator(self, previous: th.Generator | None = None) -> None:
        """
        Give the replay buffer the model's sampling generator (and a hindsight buffer the reward transform). A buffer
        on another device (CUDA) draws from a generator of its own, seeded from the model's: it goes on drawing from
        ``previous`` (the generator of the buffer it replaces) or, in a loaded model, from the state saved with it
        (``device_sampling_state``), so that a resumed run samples what the uninterrupted one would.
        """
        if self.replay_buffer is not None and hasattr(self.replay_buffer, "generator"):
            device = self.replay_buffer.device
            restored = restore_generator(self.device_sampling_state, device)
            self.device_sampling_state = None  # used once: the buffer's generator moves on from here
            if previous is not None and previous is not self.sampling_generator and previous.device.type == device.type:
                self.replay_buffer.generator = previous
            else:
                self.replay_buffer.generator = self.sampling_generator if restored is None else restored
        if isinstance(self.replay_buffer, HerReplayBuffer):
            self.replay_buffer.reward_transform = self.reward_transform_fn

    def add_transitions(self, transitions: Transitions) -> None:
        """
        Put offline transitions into the replay buffer: Box actions scaled to [-1, 1] with the action space's bounds
        (and clipped to +-(1 - ``dataset_action_clip``)), Discrete ones checked and kept as indices, rewards
        transformed, truncations stored as timeouts (not terminal; terminal where the buffer has
        ``handle_timeout_termination=False``, as SB3 stores online ones then). A policy with an ``observation_normalizer`` has
        it fitted on the first transitions added. They count as offline data (``offline_dataset_size``): ``learn()``
        first trains ``offline_steps`` updates on the buffer, as with an ``offline_dataset``.

        :param transitions: transitions in the environment's units, e.g. from ``sb3_iql.data.load_transitions``
        :raises ValueError: a field that does not fit the spaces, or NaN or inf (``checked_transitions``); with
            ``relabel_eval_goal``, transitions not relabelled for ``eval_goal`` (``check_relabelled``)
        """
        _refuse_vec_normalize(self._vec_normalize_env, offline_data=True)
        if not isinstance(self.replay_buffer, tuple(REPLAY_BUFFER_CLASSES.values())):
            raise TypeError(
                f"{type(self.replay_buffer).__name__} cannot take an offline dataset: use one of this package's buffers, "
                "such as sb3_iql.data.DeviceReplayBuffer or OfflineReplayBuffer (and their Dict versions)"
            )
        transitions = checked_transitions(transitions, self.observation_space, self.action_space)
        if self.eval_goal is not None:  # relabel_eval_goal: every offline transition is for this goal
            check_relabelled(transitions, self.eval_goal)
        if isinstance(self.replay_buffer, DeviceImageReplayBuffer):  # its extend wraps: the other buffers refuse
            rows_for(len(transitions), 1, self.replay_buffer.buffer_size - self.replay_buffer.size())
        observations = to_channel_first(transitions.observations, self.observation_space)
        normalizer = getattr(self.policy, "observation_normalizer", None)
        if normalizer is not None and not normalizer.fitted:  # statistics of the first offline data, then fixed
            normalizer.fit(observations)
        dones, timeouts = transitions.terminations, transitions.truncations & ~transitions.terminations
        if not getattr(self.replay_buffer, "handle_timeout_termination", True):  # time-outs are terminal
            dones, timeouts = dones | timeouts, np.zeros_like(timeouts)
        if self.replay_buffer.size() == 0:  # a loaded model's count is of data no longer here (kept where refused)
            self.offline_dataset_size = 0
        self.replay_buffer.extend(
            observations,
            to_channel_first(transitions.next_observations, self.observation_space),
            self._buffer_actions(transitions.actions),
            self.reward_transform_fn(transitions.rewards),
            dones.astype(np.float32),
            timeouts.astype(np.float32),
        )
        self.offline_dataset_size += len(transitions)

    def _buffer_actions(self, actions: np.ndarray) -> np.ndarray:
        """
        :param actions: dataset actions in the environment's units, ``(n, action_dim)`` (or ``(n, action_dim, 1)``
            for a Box of shape ``(action_dim, 1)``)
        :return: Box: scaled to [-1, 1] and clipped to +-(1 - ``dataset_action_clip``), ``(n, action_dim)``; Discrete:
            the indices as they are (``checked_transitions`` checked them), float32 ``(n, 1)``
        """
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return actions.astype(np.float32)
        actions = actions.reshape(len(actions), -1)
        low, high = space.low.reshape(-1), space.high.reshape(-1)  # type: ignore[attr-defined]
        if np.all(low == -1.0) and np.all(high == 1.0):  # already scaled: the formula would move them by 1 ulp
            scaled_actions = actions
        else:
            scaled_actions = 2.0 * (actions - low) / (high - low) - 1.0
        outside = np.abs(scaled_actions) > 1.0 + OUT_OF_BOUNDS_TOLERANCE
        if outside.any():
            warnings.warn(
                f"{outside.any(axis=-1).mean():.1%} of the dataset's actions lie outside the action space's bounds "
                f"{describe_space(space)} (scaled to [-1, 1], the farthest is at {np.abs(scaled_actions).max():.3g}): they "
                "are clipped to the bounds. Check that the environment is the one the data came from.",
                stacklevel=3,
            )
        bound = 1.0 - self.dataset_action_clip
        return np.clip(scaled_actions, -bound, bound).astype(np.float32)

    def reload_offline_dataset(self, download: bool = False) -> None:
        """
        Load the offline datasets of ``offline_dataset_ids`` into the (empty) replay buffer again (relabelled as when
        the model was created, with ``relabel_eval_goal``): a loaded model
        (``load``, a ``CheckpointCallback`` file) holds no replay buffer, and this lets it resume offline training
        exactly where it stopped (the sampling generator's state is saved with the model).

        A dataset written again since (other transitions, by count or by ``Transitions.digest``) is loaded with a
        warning: training does not resume as it was; so is a model that also trained on transitions given to
        ``add_transitions`` (give them again after this call).

        :param download: download datasets that are not stored locally
        :raises RuntimeError: the model has no offline dataset, or its buffer is not empty
        """
        if not self.offline_dataset_ids:
            raise RuntimeError(f"This {type(self).__name__} was not created with an offline dataset: nothing to reload")
        if self.replay_buffer is not None and self.replay_buffer.size() > 0:
            raise RuntimeError("The replay buffer is not empty: reload the offline datasets into a freshly loaded model")
        datasets = resolve_datasets(self.offline_dataset_ids, download=download)
        for index, episodes in enumerate(self.offline_dataset_episodes):  # older models saved none: whole datasets
            if episodes is not None:
                n_episodes = datasets[index].total_episodes
                if max(episodes, default=-1) >= n_episodes:
                    raise ValueError(
                        f"The model trained on episodes {_first_items(episodes)} of '{self.offline_dataset_ids[index]}', "
                        f"which now holds {n_episodes} episodes: the dataset changed since"
                    )
                datasets[index] = minari.MinariDataset(datasets[index].spec.data_path, np.asarray(episodes))
        env = self._relabelling_env(datasets[0]) if self.relabel_eval_goal else None
        transitions = self._load_transitions(datasets, env)
        if self.offline_dataset_transitions not in (None, len(transitions)):  # None: a file of an older version
            changed = f"now hold {len(transitions):,} transitions, the model trained on {self.offline_dataset_transitions:,}"
        elif self.offline_dataset_digest not in (None, transitions.digest()):
            changed = f"hold {len(transitions):,} transitions as before, but other ones (written again under the id?)"
        else:
            changed = None
        if changed is not None:
            warnings.warn(
                f"The offline datasets {self.offline_dataset_ids} {changed}: they changed since, and training does not "
                "resume as it was",
                stacklevel=2,
            )
        elif self.offline_dataset_size > len(transitions):
            warnings.warn(
                f"The model trained on {self.offline_dataset_size:,} offline transitions, its datasets hold "
                f"{len(transitions):,}: give the other {self.offline_dataset_size - len(transitions):,} (added with "
                "add_transitions) to add_transitions again before training, or training does not resume as it was",
                stacklevel=2,
            )
        self.add_transitions(transitions)  # counted anew: the buffer was empty

    def _relabelling_env(self, dataset: minari.MinariDataset) -> gym.Env:
        """:return: the environment whose ``compute_reward`` relabels the offline data: the model's (as at its
        creation, where one was given), else the dataset's evaluation environment"""
        envs = getattr(self.env, "envs", None) if self.env is not None else None  # a DummyVecEnv, wrapped or not
        return envs[0] if envs else recover_eval_env(dataset)

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # Online rewards go through the same transform as the offline ones.
        if replay_buffer.full and self.offline_dataset_size > 0 and not self._warned_full_buffer:
            rows_hold = 1 if isinstance(replay_buffer, DeviceImageReplayBuffer) else replay_buffer.n_envs
            warnings.warn(
                f"The replay buffer is full ({replay_buffer.buffer_size * rows_hold:,} transitions): online "
                "transitions now replace the oldest stored ones, offline data included. Pass a larger buffer_size (the "
                f"default keeps the dataset and {ONLINE_BUFFER_ROOM:,} online transitions) to keep them all.",
                stacklevel=2,
            )
            self._warned_full_buffer = True
        vec_normalize = self._vec_normalize_env
        if vec_normalize is None:
            super()._store_transition(replay_buffer, buffer_action, new_obs, self.reward_transform_fn(reward), dones, infos)
            return
        # SB3 stores VecNormalize's original reward in place of the one passed: transformed there for this call
        original_reward = vec_normalize.get_original_reward
        vec_normalize.get_original_reward = lambda: self.reward_transform_fn(original_reward())  # type: ignore[method-assign]
        try:
            super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        finally:
            del vec_normalize.get_original_reward  # the class's method again

    def _update_function(self) -> Callable[[Any], th.Tensor]:
        """:return: one gradient step on a replay batch, returning ``metric_names``' values as a device tensor"""
        raise NotImplementedError

    def _settings_snapshot(self) -> Any:
        """
        :return: the hyperparameters as they are now (compared after every callback step: a change is checked with
            ``_check_settings`` and the train step built again, so that the next update has it)
        """
        return None

    def _check_settings(self) -> None:
        """:raises ValueError: a hyperparameter set on the model out of its range (checked before training, saving)"""

    def _offline_train_step(self) -> Callable[[], th.Tensor]:
        """:return: one offline update on a batch it samples itself (``batch_size``), returning the metrics"""
        update = self._update_function()
        return lambda: update(self._sample_batch(self.batch_size))

    def _sample_batch(self, batch_size: int, env: VecNormalize | None = None) -> Any:
        """A training batch from the replay buffer (normalized by ``env`` if given), images randomly shifted with
        ``image_shift``."""
        batch = self.replay_buffer.sample(batch_size, env=env)  # type: ignore[union-attr]
        if not self.image_shift:
            return batch
        generator = getattr(self.replay_buffer, "generator", None)
        space, pad, floats = self.observation_space, self.image_shift, self._float_images
        return batch._replace(
            observations=shift_observations(batch.observations, space, pad, generator, floats),
            next_observations=shift_observations(batch.next_observations, space, pad, generator, floats),
        )

    @property
    def _float_images(self) -> bool:
        """Whether float images count as images (``normalize_images=False`` in ``policy_kwargs``, as SB3's policies)"""
        return not (self.policy_kwargs or {}).get("normalize_images", True)

    def _set_learning_rates(self, offline: bool) -> None:
        """Set the optimizers' learning rates before an update (offline) or a round of online updates."""
        raise NotImplementedError

    def _record_metrics(self, metric_sums: th.Tensor, n_steps: int) -> None:
        """
        Log the mean of each metric over ``n_steps`` updates (the only host synchronisation of training); warn where
        one is not finite (training diverged).
        """
        means = dict(zip(self.metric_names, (metric_sums / n_steps).tolist()))
        for name, value in means.items():
            self.logger.record(f"train/{name}", value)
        diverged = [name for name, value in means.items() if not math.isfinite(value)]
        if diverged:
            warnings.warn(
                f"{', '.join(diverged)} not finite: training diverged (the networks' "
                "parameters are likely NaN). Look at the data's scale: policy_kwargs=dict(normalize_observations=True), "
                "a reward_transform, or a lower learning_rate",
                stacklevel=2,
            )
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        """Online gradient steps on the shared replay buffer (called by SB3's ``learn()`` loop)."""
        self.policy.set_training_mode(True)
        self._set_learning_rates(offline=False)
        update = self._update_function()
        metric_sums = th.zeros(len(self.metric_names), device=self.device)
        for _ in range(gradient_steps):
            metric_sums += update(self._sample_batch(batch_size, self._vec_normalize_env))
        self._n_updates += gradient_steps
        self._record_metrics(metric_sums, gradient_steps)

    def _check_offline_data(self) -> None:
        """:raises RuntimeError: the replay buffer is empty, saying how to fill it"""
        if self.replay_buffer is None or self.replay_buffer.size() == 0:
            if self.offline_dataset_ids:  # a loaded model: SB3 saves no replay buffer
                raise RuntimeError(
                    "The replay buffer is empty: a saved model holds no data. Call reload_offline_dataset() to load "
                    f"its datasets {self.offline_dataset_ids} again (or load_replay_buffer(path)) before training offline"
                )
            raise RuntimeError(
                f"The replay buffer is empty: create {type(self).__name__} with offline_dataset=..., or call "
                "add_transitions() or load_replay_buffer(path), before training offline"
            )

    def learn_offline(
        self: SelfOfflineAlgorithm,
        n_updates: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int | None = 1000,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOfflineAlgorithm:
        """
        Offline training: gradient steps on the replay buffer, no environment interaction.

        While it runs, ``num_timesteps`` counts updates, so callback frequencies (EvalCallback's ``eval_freq``,
        CheckpointCallback's ``save_freq``) and log steps are in updates. Callbacks get one ``on_step()`` per update;
        no episode ends, so their ``locals`` hold ``dones`` all False and empty ``infos``, one per environment.

        Before it trains, ``_prepare_offline_call`` lets the algorithm prepare the call (IQL: the path of
        ``compile_update="auto"``, and a warning where the call misses the actor's cosine lr schedule).

        :param n_updates: gradient steps (default: what is left of ``offline_steps``)
        :param callback: SB3 callback(s) called after every update
        :param log_interval: updates between two logger dumps (None or 0: dump only at the end)
        :param tb_log_name: name of the TensorBoard run (default: the class name)
        :param reset_num_timesteps: start counting ``num_timesteps`` (and a new TensorBoard run) from 0
        :param progress_bar: show a progress bar with updates/s
        :return: the trained model
        """
        self._check_offline_data()
        if n_updates is not None:
            n_updates = checked_count("n_updates", n_updates)
        self._prepare_offline_call(n_updates)
        if n_updates is None:
            n_updates = self.offline_updates_left
        tb_log_name = type(self).__name__ if tb_log_name is None else tb_log_name
        callback = self._setup_offline_learn(n_updates, callback, reset_num_timesteps, tb_log_name, progress_bar)
        # read by callbacks through locals(), as in SB3
        total_timesteps = self._total_timesteps
        n_envs = getattr(self, "n_envs", 1)
        dones, infos = np.zeros(n_envs, dtype=bool), [{} for _ in range(n_envs)]
        callback.on_training_start(locals(), globals())
        self.policy.set_training_mode(True)
        train_step, settings = self._offline_train_step(), self._settings_snapshot()
        metric_sums = th.zeros(len(self.metric_names), device=self.device)
        updates_since_dump, dump_start = 0, time.perf_counter()
        self._offline_stopped = False
        for _ in range(n_updates):
            self._set_learning_rates(offline=True)
            metric_sums += train_step()
            self._count_offline_update()
            updates_since_dump += 1
            if not callback.on_step():
                self._offline_stopped = True
                break
            if not self.policy.training:  # a callback evaluated the policy
                self.policy.set_training_mode(True)
            if self._settings_snapshot() != settings:  # a callback changed a hyperparameter: the next update has it
                self._check_settings()
                train_step, settings = self._offline_train_step(), self._settings_snapshot()
            if log_interval and updates_since_dump == log_interval:
                self._dump_offline_logs(metric_sums, updates_since_dump, time.perf_counter() - dump_start)
                metric_sums.zero_()
                updates_since_dump, dump_start = 0, time.perf_counter()
        if updates_since_dump > 0:
            self._dump_offline_logs(metric_sums, updates_since_dump, time.perf_counter() - dump_start)
        self.policy.set_training_mode(False)  # as after a predict(): the actor's dropout off for direct calls
        callback.on_training_end()
        return self

    def _prepare_offline_call(self, n_updates: int | None) -> None:
        """
        What an algorithm does before a ``learn_offline`` call trains (nothing here): choose the call's training
        path, warn about it. A warning there names the caller of ``learn_offline`` with ``stacklevel=3``.

        :param n_updates: the call's updates, None where it trains what is left of ``offline_steps``
        """

    @property
    def offline_updates_left(self) -> int:
        """What is left of ``offline_steps`` (what ``learn_offline()`` trains without ``n_updates``)."""
        return max(self.offline_steps - self._n_offline_updates, 0)

    def _count_offline_update(self) -> None:
        """One offline update done: counted in the update counters and in ``num_timesteps``."""
        self._n_offline_updates += 1
        self._n_updates += 1
        self.num_timesteps += 1
        self._offline_timesteps += 1

    def _setup_offline_learn(
        self,
        n_updates: int,
        callback: MaybeCallback,
        reset_num_timesteps: bool,
        tb_log_name: str,
        progress_bar: bool,
    ) -> BaseCallback:
        """SB3's ``_setup_learn`` without the environment: counters, logger and callbacks."""
        self._check_settings()
        self.start_time = time.time_ns()
        if reset_num_timesteps:  # a new run, as SB3's reset: episodes counted again, the env reset by the next learn()
            self.num_timesteps = self._offline_timesteps = self._episode_num = 0
            self._last_obs = None
        self._num_timesteps_at_start = self.num_timesteps
        self._total_timesteps = self.num_timesteps + n_updates
        if self.ep_info_buffer is None or reset_num_timesteps:  # as SB3's: read by dump_logs()
            self.ep_info_buffer = deque(maxlen=self._stats_window_size)
            self.ep_success_buffer = deque(maxlen=self._stats_window_size)
        self._set_up_logger(tb_log_name, reset_num_timesteps)
        callbacks = callback_items(callback)
        evaluation = find_eval_callback(callbacks)
        # SB3's own bar counts n_envs timesteps per step: offline, the updates bar counts one per update
        callbacks = [
            UpdatesProgressBarCallback(evaluation) if type(item) is ProgressBarCallback else item for item in callbacks
        ]
        if progress_bar:
            callbacks.append(UpdatesProgressBarCallback(evaluation))
        return self._init_callback(callbacks)

    def _set_up_logger(self, tb_log_name: str, reset_num_timesteps: bool) -> None:
        """
        SB3's logger set-up, except for a run continued (``reset_num_timesteps=False``, the same ``tb_log_name``):
        it goes on in its own TensorBoard run, with this model's logger or, for a loaded model, on the run's folder.
        SB3 would open the newest run of that name: another model's where several write to one ``tensorboard_log``
        (``make_seeds``). A logger given with ``set_logger`` is kept, as in SB3.
        """
        if self._custom_logger:
            return
        folder = self._logger_run_folder
        if folder is None or self.tensorboard_log is None:
            same_place = folder is None and self.tensorboard_log is None
        else:  # a tensorboard_log changed since (set on the model, or given to load) starts a run there, as SB3's
            same_place = os.path.dirname(os.path.abspath(folder)) == os.path.abspath(self.tensorboard_log)
        continued = not reset_num_timesteps and tb_log_name == self._logger_run_name and same_place
        if continued and hasattr(self, "_logger"):
            return
        if continued and self.tensorboard_log is not None and folder is not None and os.path.isdir(folder):
            formats = ["stdout", "tensorboard"] if self.verbose >= 1 else ["tensorboard"]  # as SB3's configure_logger
            self._logger = configure(folder, formats)
        else:
            self._logger = utils.configure_logger(self.verbose, self.tensorboard_log, tb_log_name, reset_num_timesteps)
        self._logger_run_name = tb_log_name
        self._logger_run_folder = self._logger.get_dir() if self.tensorboard_log is not None else None

    def _dump_offline_logs(self, metric_sums: th.Tensor, n_steps: int, seconds: float) -> None:
        self._record_metrics(metric_sums, n_steps)
        self.logger.record("time/updates_per_second", n_steps / max(seconds, 1e-9))
        self.logger.record("time/time_elapsed", int((time.time_ns() - self.start_time) / 1e9), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        self._check_settings()
        has_offline_data = self.offline_dataset_ids or self.offline_dataset_size > 0
        if has_offline_data and self.replay_buffer is not None and self.replay_buffer.size() == 0:
            how = (
                f"Call reload_offline_dataset() first to keep {self.offline_dataset_ids} in it"
                if self.offline_dataset_ids
                else f"Add its {self.offline_dataset_size:,} offline transitions back first (add_transitions(), or "
                "load_replay_buffer(path) with a buffer saved by save_replay_buffer)"
            )
            warnings.warn(
                "Fine-tuning a loaded model without its offline data: SB3 saves no replay buffer, so the buffer "
                f"holds only the new online steps. {how}, as in the run that was saved.",
                stacklevel=4,  # the caller of learn()
            )
        if reset_num_timesteps:
            self._offline_timesteps = 0
        self._set_up_logger(tb_log_name, reset_num_timesteps)
        custom_logger, self._custom_logger = self._custom_logger, True  # SB3 configures no other
        try:
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        finally:
            self._custom_logger = custom_logger

    def _check_online_setup(self) -> None:
        """:raises: what SB3's online loop would refuse, checked before a ``learn()`` call trains offline first"""
        if self.env is None:
            raise RuntimeError(f"Online learning needs an environment: pass env= to {type(self).__name__} or call set_env()")
        _refuse_vec_normalize(self._vec_normalize_env, offline_data=self.offline_dataset_size > 0)
        normalizer = getattr(self.policy, "observation_normalizer", None)
        if normalizer is not None and not normalizer.fitted:
            raise ValueError(
                "policy_kwargs normalize_observations=True normalises observations with the offline data's mean and "
                "std, and this model has no offline data to fit them on (the networks would train on raw observations "
                "until some was added): add it first (offline_dataset=, add_transitions), or leave the option out"
            )
        if self.env.num_envs > 1 and self.train_freq.unit != TrainFrequencyUnit.STEP:
            raise ValueError(
                f"train_freq=({self.train_freq.frequency}, 'episode') counts episodes, which SB3 supports with one "
                "environment only; "
                f"the env has {self.env.num_envs}: count steps, e.g. train_freq=(1, 'step')"
            )
        if self.train_freq.frequency < 1:  # SB3's bare "Should at least collect one step or episode" assertion
            raise ValueError(
                f"train_freq must collect at least 1 {self.train_freq.unit.value} between two trainings, got "
                f"{self.train_freq.frequency}"
            )
        if self.action_noise is not None:
            _check_noise_shape(self.action_noise, self.action_space, self.env.num_envs)

    def learn(
        self: SelfOfflineAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOfflineAlgorithm:
        """
        SB3's online loop on the shared replay buffer, after ``offline_steps`` offline updates if offline data was
        added and no offline training has run yet. ``learn(0)`` is thus a pure offline run. That offline phase is
        finished first where it was cut short: by a callback (which stops the call, as SB3's ``learn()`` stops), or
        in a checkpoint resumed. Offline updates run with ``learn_offline`` are never extended.

        Online, ``num_timesteps`` continues from the offline updates when both run in this call (or with
        ``reset_num_timesteps=False``); ``learning_starts`` still counts online steps (random actions, no update).
        What the online loop would refuse (no env, episodic ``train_freq`` with several envs, VecNormalize with
        offline data) is refused before the offline updates.
        """
        total_timesteps = checked_count("total_timesteps", total_timesteps)
        tb_log_name = type(self).__name__ if tb_log_name is None else tb_log_name
        offline_first = self.offline_dataset_size > 0 and self._n_offline_updates < self.offline_steps
        offline_first = offline_first and (self._n_offline_updates == 0 or self._offline_phase_unfinished)
        if total_timesteps > 0 or not offline_first:
            self._check_online_setup()
        if offline_first:
            if self.offline_steps_default and not self.offline_dataset_ids:
                warnings.warn(
                    f"learn() first trains offline_steps={self.offline_steps:,} updates (the default) on the data added "
                    "(add_transitions, load_replay_buffer), then acts online: create the model with offline_steps=N to "
                    "choose, 0 to skip",
                    stacklevel=2,
                )
            self._offline_phase_unfinished = True
            one_run = None
            if total_timesteps > 0:  # both phases: one run for the callbacks, a progress bar (listed) for each phase
                items = callback_items(callback)
                bars = [item for item in items if isinstance(item, ProgressBarCallback)]
                one_run = OneRunCallback([item for item in items if item not in bars])
                callback = [one_run, *bars]
            self.learn_offline(  # what is left of offline_steps
                callback=callback,
                log_interval=self.offline_log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )
            reset_num_timesteps = False
            if one_run is not None:
                one_run.last_phase = True
            self._offline_phase_unfinished = self._n_offline_updates < self.offline_steps
            if self._offline_stopped:  # a callback stopped training, at the last update too
                if one_run is not None:
                    one_run.on_training_end()
                return self
            if total_timesteps == 0:
                return self
        # SB3 compares learning_starts with num_timesteps: shifted past the offline updates counted there
        self._learning_starts_shift = 0 if reset_num_timesteps else self._offline_timesteps
        self.learning_starts += self._learning_starts_shift
        try:  # after an offline phase, reset_num_timesteps is False: the offline run's logger goes on (one writer)
            return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        finally:
            self.learning_starts -= self._learning_starts_shift
            self._learning_starts_shift = 0
            self.policy.set_training_mode(False)  # the last train() left it on

    def set_random_seed(self, seed: int | None = None) -> None:
        """
        SB3's ``set_random_seed``, and the offline batches' generator too (SB3's own buffers sample from NumPy's
        global generator, which SB3 seeds): the batches that follow are those of a new model with ``seed``. SB3 also
        calls it while setting the model up, before the replay buffer exists: a loaded model keeps its saved stream.
        """
        super().set_random_seed(seed)
        if seed is not None and self.replay_buffer is not None:
            self.sampling_generator.manual_seed(seed)
            self._attach_generator()  # a buffer on another device seeds its own generator from it again

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """
        SB3's ``set_env``; a ``VecNormalize`` env is refused where the model has offline data. A ``HerReplayBuffer``
        takes the env's reward rule.
        """
        _refuse_vec_normalize(unwrap_vec_normalize(env), offline_data=self.offline_dataset_size > 0)
        super().set_env(env, force_reset)
        if isinstance(self.replay_buffer, HerReplayBuffer):  # its reward rule (a model loaded without env has none)
            self.replay_buffer.set_env(self.env)

    def _excluded_save_params(self) -> list[str]:
        # a logging choice of the run (rl-zoo's --log-interval), not of the model
        return [*super()._excluded_save_params(), "offline_log_interval"]

    def save(self, path: PathLike, exclude: Iterable[str] | None = None, include: Iterable[str] | None = None) -> None:
        """
        SB3's ``save``, written to a temporary file then renamed: a crash mid-write keeps the previous file. The
        state of a buffer's own sampling generator (on CUDA) is saved too (``device_sampling_state``), and that of
        torch's global generators (``torch_rng_state``: the dropout masks').
        """
        self._check_settings()  # a file that load() would refuse is not written
        generator = getattr(self.replay_buffer, "generator", None)
        own_generator = generator is not None and generator is not self.sampling_generator
        self.device_sampling_state = generator_state(generator) if own_generator else None
        cuda_state = th.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self.torch_rng_state = (th.get_rng_state(), cuda_state)
        shift, self._learning_starts_shift = self._learning_starts_shift, 0  # a save from a callback inside learn()
        self.learning_starts -= shift
        try:
            write_atomically(path, "zip", lambda target: super(OfflineAlgorithm, self).save(target, exclude, include))
        finally:
            self.device_sampling_state = self.torch_rng_state = None
            self.learning_starts += shift
            self._learning_starts_shift = shift

    def save_replay_buffer(self, path: PathLike) -> None:
        """SB3's ``save_replay_buffer``, written to a temporary file then renamed (see ``save``)."""
        write_atomically(path, "pkl", lambda target: super(OfflineAlgorithm, self).save_replay_buffer(target))

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """
        SB3's ``load_replay_buffer``; sampling goes on with the model's stream (``_attach_generator``). A
        ``HerReplayBuffer`` gets the model's env and, with ``truncate_last_traj``, its open episodes ended, as SB3's.
        In a model that has not trained and holds no offline data, the loaded transitions count as its offline data
        (``learn()`` trains ``offline_steps`` updates on them first); they are stored as the file holds them (rewards
        transformed by the model that saved them, if it did).

        :raises ValueError: such a model normalises observations (``normalize_observations``) and its statistics are
            not fitted yet: they come from the data given to ``add_transitions`` or ``offline_dataset``
        """
        as_offline_data = self.offline_dataset_size == 0 and self.num_timesteps == 0 and self._n_offline_updates == 0
        normalizer = getattr(self.policy, "observation_normalizer", None)
        if as_offline_data and normalizer is not None and not normalizer.fitted:
            raise ValueError(
                "This model normalises observations with its offline data's mean and std, which a replay buffer file "
                "does not carry: give the data to add_transitions() (or offline_dataset=), or load the saved model "
                f"({type(self).__name__}.load) whose statistics were fitted, then its buffer"
            )
        previous_buffer = self.replay_buffer
        previous = getattr(self.replay_buffer, "generator", None)
        super().load_replay_buffer(path, truncate_last_traj)
        loaded = self.replay_buffer
        if not (
            spaces_match(loaded.observation_space, self.observation_space, check_bounds=False)
            # actions are stored scaled to [-1, 1] by their bounds: other bounds, other actions
            and spaces_match(loaded.action_space, self.action_space, check_bounds=True)
        ):
            self.replay_buffer = previous_buffer  # kept: the model's own data stay
            raise ValueError(
                f"The replay buffer in {path} holds observations {loaded.observation_space} and actions "
                f"{loaded.action_space}; this model has {self.observation_space} and {self.action_space}"
            )
        # a model loaded without env keeps its saved n_envs, which set_env() then requires: checked here either way
        n_envs = getattr(self, "n_envs", None)
        if n_envs is not None and loaded.n_envs != n_envs:  # online steps would be dropped or refused
            self.replay_buffer = previous_buffer
            raise ValueError(
                f"The replay buffer in {path} takes steps of {loaded.n_envs} environment(s); this model takes "
                f"{n_envs}: load it into a model with as many (SB3's buffers store one column per environment)"
            )
        if isinstance(self.replay_buffer, HerReplayBuffer):
            self.replay_buffer.set_env(self.env)
            if truncate_last_traj:
                self.replay_buffer.truncate_last_trajectory()
        self._attach_generator(previous)
        if as_offline_data:
            self.offline_dataset_size = stored_transitions(self.replay_buffer)


def stored_transitions(buffer: Any) -> int:
    """
    :return: the transitions a replay buffer holds (``DeviceImageReplayBuffer.size()`` counts transitions, SB3's
        buffers rows of ``n_envs``)
    """
    return buffer.size() if isinstance(buffer, DeviceImageReplayBuffer) else buffer.size() * buffer.n_envs


def _first_items(values: Sequence[int], n_items: int = 10) -> str:
    """:return: ``values`` as a list, its first ``n_items`` only (then ``...``)"""
    shown = ", ".join(str(value) for value in values[:n_items])
    return f"[{shown}{', ...' if len(values) > n_items else ''}]"


def _buffer_class(replay_buffer_class: type[ReplayBuffer] | str | None, relabel_eval_goal: Any) -> type[ReplayBuffer] | None:
    """
    :return: the replay buffer class (a name of ``REPLAY_BUFFER_CLASSES`` resolved)
    :raises ValueError: an unknown name; ``relabel_eval_goal="terminal"`` with a ``HerReplayBuffer``: its terminals
        belong to the evaluation goal, and hindsight goals would keep them (terminal for a goal it does not reach)
    """
    if isinstance(replay_buffer_class, str):
        replay_buffer_class = replay_buffer_class_named(replay_buffer_class)
    hindsight = isinstance(replay_buffer_class, type) and issubclass(replay_buffer_class, HerReplayBuffer)
    if relabel_eval_goal == "terminal" and hindsight:
        raise ValueError(
            'relabel_eval_goal="terminal" makes the transitions at the evaluation goal terminal; hindsight goals '
            "(HerReplayBuffer) would keep those flags for goals the transitions do not reach. For terminals at each "
            "sample's own goal, use relabel_eval_goal=True (or False) with replay_buffer_kwargs=dict(terminal_on_goal=True)"
        )
    return replay_buffer_class


def _check_noise_shape(action_noise: ActionNoise, action_space: spaces.Space, n_envs: int) -> None:
    """:raises ValueError: ``action_noise`` draws noise that SB3 cannot add to a batch of ``n_envs`` actions (one
    draw, on a copy, NumPy's global generator left as it was: the noise the run draws is unchanged)"""
    state = np.random.get_state()
    try:
        shape = np.shape(copy.deepcopy(action_noise)())
    finally:
        np.random.set_state(state)
    actions = (n_envs, *action_space.shape)
    try:
        fits = np.broadcast_shapes(shape, actions) == actions
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"action_noise draws noise of shape {shape} for actions of shape {action_space.shape}: give it mean and "
            "sigma of the actions' shape"
        )


def _refuse_vec_normalize(vec_normalize: VecNormalize | None, offline_data: bool) -> None:
    """
    :raises ValueError: a ``VecNormalize`` env with offline data: offline updates would train on the data as stored
        (its statistics come from online steps only), online ones on observations normalized with those statistics
    """
    if vec_normalize is not None and offline_data:
        raise ValueError(
            "VecNormalize is not supported with offline data: offline updates would see raw observations, online ones "
            "observations normalized with statistics of the online steps alone. Normalize with the dataset's mean and "
            "std instead: policy_kwargs=dict(normalize_observations=True)"
        )
