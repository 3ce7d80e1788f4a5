"""
Hindsight goal relabelling (HER, Andrychowicz et al., 2017) for offline data, on the device: SB3's
``HerReplayBuffer`` arguments on top of ``DeviceDictReplayBuffer``, with the offline ``extend`` it lacks.

At sampling time a fraction ``1 - 1 / (n_sampled_goal + 1)`` of the batch gets a new ``desired_goal`` (in the
observation and the next observation): an ``achieved_goal`` reached in the same episode (``future``: at or after
the transition, ``final``: at its end, ``episode``: anywhere in it) or anywhere in the buffer (``random``, as
goal-conditioned offline RL samples). Rewards are recomputed for the new goal: on the device for the maze
environments' distance rewards, otherwise with the environment's ``compute_reward`` (Gymnasium-Robotics' goal
API, vectorised), then passed through the algorithm's reward transform. Episodes are never crossed: goals come
from the transition's own episode, and online only finished episodes are relabelled. As in SB3's buffer, an
episode still open when a ``learn()`` call ends goes on in the next call's steps, even where that call resets the
environment (``reset_num_timesteps=True``); ``load_replay_buffer(truncate_last_traj=True)`` ends it.
"""

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_iql.common.preprocessing import observation_breaks
from sb3_iql.data.device_buffers import DeviceDictReplayBuffer
from sb3_iql.data.goals import MAZE_GOAL_DISTANCE
from sb3_iql.data.rewards import AffineRewardTransform

GOAL_SELECTION_STRATEGIES = ("future", "final", "episode", "random")
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
#: Per stored transition (flat slot): its absolute index, its episode's first absolute index, the stride between its
#: episode's transitions and the episode's length (0: unfinished)
EPISODE_RECORDS = ("_absolute", "_episode_first", "_episode_stride", "_episode_length")


def maze_distance_reward(env: Any) -> tuple[str, float] | None:
    """
    :param env: an environment or a VecEnv
    :return: ``("sparse", threshold)`` or ``("dense", 0.0)`` for Gymnasium-Robotics' maze environments (rewards
        ``distance <= 0.45`` and ``exp(-distance)``), None for others
    """
    if isinstance(env, VecEnv):
        env = env.get_attr("unwrapped", indices=[0])[0]
    unwrapped = getattr(env, "unwrapped", env)
    if getattr(unwrapped, "maze", None) is None or getattr(unwrapped, "reward_type", None) not in ("sparse", "dense"):
        return None
    return ("sparse", MAZE_GOAL_DISTANCE) if unwrapped.reward_type == "sparse" else ("dense", 0.0)


class HerReplayBuffer(DeviceDictReplayBuffer):
    """
    Device replay buffer with hindsight goal relabelling at sampling time, for Dict observations with
    ``observation``, ``achieved_goal`` and ``desired_goal`` (the Gymnasium-Robotics goal API). Arguments as SB3's
    ``HerReplayBuffer``, plus the offline and goal-conditioned ones:

    :param buffer_size: capacity in transitions
    :param observation_space: Dict observation space with the three goal keys
    :param action_space: action space
    :param env: the environment (``compute_reward``, and the maze reward's type); IQL passes its own
    :param device: device of the storage and of the samples
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: must be False
    :param handle_timeout_termination: store timeouts from ``infos`` in ``add``
    :param n_sampled_goal: relabelled transitions per original one: a fraction ``n / (n + 1)`` of each batch
    :param goal_selection_strategy: ``"future"``, ``"final"``, ``"episode"`` (SB3's) or ``"random"``
    :param copy_info_dict: must be False: infos are not stored (``compute_reward`` gets ``{}``), so an
        environment whose reward reads them cannot be relabelled here
    :param goal_distance: the rewards' rule, replacing the environment's for every sampled transition (relabelled
        or not): sparse reward ``distance(next achieved goal, goal) <= goal_distance``, computed on the device
        (default: the maze environments' own rule, detected from ``env``; otherwise ``compute_reward``)
    :param terminal_on_goal: every sampled transition whose next achieved goal reaches its (new) goal is terminal,
        as goal-conditioned IQL trains (needs a sparse distance rule: ``goal_distance`` or a sparse maze environment)
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        env: Any = None,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_sampled_goal: int = 4,
        goal_selection_strategy: str = "future",
        copy_info_dict: bool = False,
        goal_distance: float | None = None,
        terminal_on_goal: bool = False,
    ):
        strategy = getattr(goal_selection_strategy, "name", goal_selection_strategy)
        strategy = str(strategy).lower()
        if strategy not in GOAL_SELECTION_STRATEGIES:
            raise ValueError(
                f"goal_selection_strategy must be one of {GOAL_SELECTION_STRATEGIES}, got {goal_selection_strategy!r}"
            )
        if not isinstance(observation_space, spaces.Dict) or set(GOAL_KEYS) - set(observation_space.spaces):
            raise ValueError(f"HerReplayBuffer needs a Dict observation space with keys {GOAL_KEYS}, got {observation_space}")
        for key in ("achieved_goal", "desired_goal"):  # goals are relabelled and compared as vectors
            goal_space = observation_space[key]
            if not isinstance(goal_space, (spaces.Box, spaces.MultiBinary)) or len(goal_space.shape) != 1:
                raise ValueError(
                    f"HerReplayBuffer takes goals of one dimension (Box or MultiBinary of shape (n,)), as the goal "
                    f"API's; '{key}' is {goal_space}: flatten the goals (gymnasium.wrappers.TransformObservation)"
                )
        if n_sampled_goal < 0:
            raise ValueError(f"n_sampled_goal must be >= 0, got {n_sampled_goal}")
        if copy_info_dict:
            raise ValueError(
                "copy_info_dict=True is not supported: infos are not stored, relabelled rewards come from "
                "compute_reward(achieved, goal, {}) or goal_distance"
            )
        super().__init__(
            buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage, handle_timeout_termination
        )
        self.n_sampled_goal = n_sampled_goal
        self.her_ratio = 1.0 - 1.0 / (n_sampled_goal + 1)
        self.goal_selection_strategy = strategy
        self.copy_info_dict = copy_info_dict
        self.terminal_on_goal = terminal_on_goal
        self.goal_distance = goal_distance
        #: Applied to recomputed rewards (relabelled ones; every sampled one with ``goal_distance``); ``IQL`` sets its
        #: ``reward_transform`` here.
        self.reward_transform: Callable[[np.ndarray], np.ndarray] | None = AffineRewardTransform()
        self.env: VecEnv | None = None
        self.distance_reward: tuple[str, float] | None = None
        self.set_env(env)
        for name in EPISODE_RECORDS:  # the stride between an episode's transitions: 1 offline, n_envs online
            setattr(self, name, self._empty_records(name))
        self._n_written = 0  # flat transitions written since creation (absolute index of the next one)
        self._open_episodes: list[list[int]] = [[] for _ in range(n_envs)]  # online: absolute indices per env

    @DeviceDictReplayBuffer.device.setter  # type: ignore[attr-defined]
    def device(self, device: th.device | str) -> None:
        """The storage's device; the episode records move with it."""
        DeviceDictReplayBuffer.device.fset(self, device)  # type: ignore[attr-defined]
        for name in EPISODE_RECORDS:
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(self._device))

    def set_env(self, env: Any) -> None:
        """
        Set the environment whose reward rule relabels rewards (after loading a pickled buffer): ``distance_reward``
        is ``("sparse", goal_distance)``, else the maze environments' rule (``("sparse", 0.45)`` or
        ``("dense", 0.0)``, computed on the device), else None (the environment's ``compute_reward``).
        """
        self.env = env
        if self.goal_distance is not None:
            self.distance_reward = ("sparse", self.goal_distance)
        elif env is not None:
            self.distance_reward = maze_distance_reward(env)
        # without env (IQL.load without env=) the reward rule comes with set_env
        decided = env is not None or self.goal_distance is not None
        if decided and self.terminal_on_goal and (self.distance_reward is None or self.distance_reward[0] != "sparse"):
            raise ValueError(
                "terminal_on_goal needs a sparse goal distance: a sparse maze env, or goal_distance= (which also makes "
                "the sampled rewards distance <= goal_distance, replacing the env's reward rule)"
            )

    # --- writing --------------------------------------------------------------------------------------------------

    def _record_episodes(
        self, absolute: np.ndarray, first: np.ndarray, stride: int, length: np.ndarray, slots: np.ndarray | None = None
    ) -> None:
        """
        :param absolute: each transition's absolute index (its place in its episode)
        :param slots: the flat indices they are stored at (default: ``absolute`` in the ring)
        """
        slots = th.as_tensor(absolute % (self.buffer_size * self.n_envs) if slots is None else slots, device=self.device)
        self._absolute[slots] = th.as_tensor(absolute, device=self.device)
        self._episode_first[slots] = th.as_tensor(first, device=self.device)
        self._episode_stride[slots] = stride
        self._episode_length[slots] = th.as_tensor(length, device=self.device)

    def extend(self, observations, next_observations, actions, rewards, dones, timeouts) -> None:  # type: ignore[no-untyped-def]
        """
        ``DeviceDictReplayBuffer.extend``, recording episodes: consecutive transitions up to one that is terminal
        or a timeout form an episode (as ``load_transitions`` gives them); a last episode without either is
        treated as finished at the end of the data. A transition whose next observation is not the next one's
        observation ends its episode too (with a warning where it carries neither flag): goals are never taken
        across that break. Online episodes still open end their relabelling part here (their steps after these
        rows form another): an episode's records need its steps evenly spaced in the ring.
        """
        start, n_transitions = self._n_written, len(rewards)
        if n_transitions == 0:
            return
        if self.pos * self.n_envs != start % (self.buffer_size * self.n_envs):
            raise RuntimeError("HerReplayBuffer.extend needs whole rows: do not mix it with add() of n_envs > 1")
        super().extend(observations, next_observations, actions, rewards, dones, timeouts)
        for env_index, episode in enumerate(self._open_episodes):  # their goals came from these rows before
            if episode:
                self._close_episode(env_index)
        ends = np.asarray(dones, dtype=bool) | np.asarray(timeouts, dtype=bool)
        breaks = observation_breaks(observations, next_observations) & ~ends
        if breaks.any():
            warnings.warn(
                f"{int(breaks.sum())} of these transitions are neither terminal nor a timeout, yet the next "
                f"transition does not start where they end (transition {int(np.argmax(breaks))} first): each ends "
                "its episode for hindsight goals. Flag episode ends (terminations, truncations) to silence this.",
                stacklevel=3,
            )
        ends |= breaks
        ends[-1] = True
        episode = np.concatenate([[0], np.cumsum(ends)[:-1]])
        first_of_episode = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
        lengths = np.diff(np.append(first_of_episode, n_transitions))
        absolute = start + np.arange(n_transitions)
        self._record_episodes(absolute, start + first_of_episode[episode], 1, lengths[episode])
        n_duplicates = -n_transitions % self.n_envs  # the mixin completes the last row with the first transitions
        if n_duplicates:  # each copy relabels as the transition it copies
            copied, copies = np.arange(n_duplicates), start + n_transitions + np.arange(n_duplicates)
            slots = copies % (self.buffer_size * self.n_envs)
            first, length = start + first_of_episode[episode[copied]], lengths[episode[copied]]
            self._record_episodes(start + copied, first, 1, length, slots)
        self._n_written += n_transitions + n_duplicates

    def add(self, obs, next_obs, action, reward, done, infos) -> None:  # type: ignore[no-untyped-def]
        """SB3's ``add`` (one transition per environment); an episode becomes relabelable when it ends."""
        super().add(obs, next_obs, action, reward, done, infos)
        for env_index in range(self.n_envs):
            absolute = self._n_written + env_index
            episode = self._open_episodes[env_index]
            episode.append(absolute)
            self._record_episodes(np.array([absolute]), np.array([episode[0]]), self.n_envs, np.array([0]))
            if done[env_index] or infos[env_index].get("TimeLimit.truncated", False):
                self._close_episode(env_index)
        self._n_written += self.n_envs

    def _close_episode(self, env_index: int) -> np.ndarray:
        """Record environment ``env_index``'s open episode as finished (relabelable). :return: its absolute indices"""
        episode = np.array(self._open_episodes[env_index])
        stored = episode[-self.buffer_size :]  # an episode longer than the ring: its last lap (one write per slot)
        self._record_episodes(stored, np.full(len(stored), episode[0]), self.n_envs, np.full(len(stored), len(episode)))
        self._open_episodes[env_index] = []
        return episode

    def truncate_last_trajectory(self) -> None:
        """
        SB3's, for a buffer loaded to go on training (``load_replay_buffer(truncate_last_traj=True)``): the episodes
        open when it was saved end at their last stored transition, as time-outs, so that the next steps (after a
        reset) start new episodes instead of extending them.
        """
        open_envs = [env_index for env_index, episode in enumerate(self._open_episodes) if episode]
        if open_envs:
            warnings.warn(
                "The last trajectory in the replay buffer will be truncated. If you are in the same episode as when the "
                "replay buffer was saved, use truncate_last_traj=False to avoid that issue.",
                stacklevel=2,
            )
        for env_index in open_envs:
            episode = self._close_episode(env_index)
            last_row = int(episode[-1] % (self.buffer_size * self.n_envs)) // self.n_envs  # its env's column
            self.dones[last_row, env_index] = 1.0
            if self.handle_timeout_termination:  # not terminal: bootstrapped as a time-out
                self.timeouts[last_row, env_index] = 1.0

    # --- sampling -------------------------------------------------------------------------------------------------

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DictReplayBufferSamples:  # type: ignore[override]
        """
        ``DeviceDictReplayBuffer.sample``, a fraction ``her_ratio`` of the transitions relabelled (of those whose
        episode has ended and whose goal step is still stored): on the stored goals and rewards, then normalized by
        ``env`` (VecNormalize), as SB3's HerReplayBuffer does.
        """
        upper_bound = self.size() * self.n_envs
        indices = th.randint(upper_bound, (batch_size,), device=self.device, generator=self._generator)
        return self.normalized(self.relabel(indices, self.gather(indices)), env)

    def _goal_indices(self, indices: th.Tensor, upper_bound: int) -> tuple[th.Tensor, th.Tensor]:
        """
        :return: the flat index of the transition whose next achieved goal becomes the goal, per sample, and whether
            that slot still holds the sample's episode (its step was not overwritten since: the copies that complete
            ``extend``'s last row point at the transitions they copy, which the ring may overwrite first)
        """
        capacity = self.buffer_size * self.n_envs
        if self.goal_selection_strategy == "random":
            slots = th.randint(upper_bound, indices.shape, device=self.device, generator=self._generator)
            return slots, th.ones(indices.shape, dtype=th.bool, device=self.device)
        first, stride = self._episode_first[indices], self._episode_stride[indices]
        length = self._episode_length[indices].clamp(min=1)
        position = (self._absolute[indices] - first) // stride
        uniform = th.rand(indices.shape, device=self.device, generator=self._generator)
        if self.goal_selection_strategy == "future":
            step = position + (uniform * (length - position)).long()
        elif self.goal_selection_strategy == "final":
            step = length - 1
        else:  # "episode": from the part of the episode still stored
            oldest = max(self._n_written - capacity, 0)
            earliest = ((oldest - first).clamp(min=0) + stride - 1) // stride
            step = earliest + (uniform * (length - earliest)).long()
        absolute = first + step.clamp(max=length - 1) * stride
        slots = absolute % capacity
        return slots, self._absolute[slots] == absolute

    def _rewards(self, achieved: th.Tensor, goals: th.Tensor) -> th.Tensor:
        """:return: the environment's rewards for reaching ``achieved`` when aiming at ``goals``, ``(batch,)``"""
        if self.distance_reward is not None:
            kind, threshold = self.distance_reward
            distance = th.linalg.vector_norm(achieved - goals, dim=-1)
            return (distance <= threshold).float() if kind == "sparse" else th.exp(-distance)
        if self.env is None:
            raise RuntimeError("HerReplayBuffer needs env (its compute_reward) to relabel rewards: call set_env(env)")
        achieved_np, goals_np = achieved.cpu().numpy(), goals.cpu().numpy()
        if isinstance(self.env, VecEnv):
            rewards = self.env.env_method("compute_reward", achieved_np, goals_np, {}, indices=[0])[0]
        else:
            rewards = self.env.unwrapped.compute_reward(achieved_np, goals_np, {})
        return th.as_tensor(np.asarray(rewards), dtype=th.float32, device=self.device)

    def _transform(self, rewards: th.Tensor) -> th.Tensor:
        transform = self.reward_transform
        if transform is None:
            raise RuntimeError(
                "This unpickled HerReplayBuffer has no reward_transform (not saved): load it with "
                "model.load_replay_buffer(), or set reward_transform to the model's"
            )
        if isinstance(transform, AffineRewardTransform):
            return transform.scale * rewards + transform.shift
        return th.as_tensor(transform(rewards.cpu().numpy()), dtype=th.float32, device=self.device)

    def relabel(self, indices: th.Tensor, samples: DictReplayBufferSamples) -> DictReplayBufferSamples:
        """
        Relabel a fraction ``her_ratio`` of the sampled transitions (of finished episodes) in place.

        :param indices: flat indices of the samples, ``(batch,)``
        :param samples: the gathered transitions (fresh tensors; their ``desired_goal`` columns are overwritten)
        :return: the samples, with rewards ``(batch, 1)`` and dones ``(batch, 1)`` recomputed where relabelled (the
            rewards of every sample with ``goal_distance``, whose rule replaces the environment's)
        """
        upper_bound = self.size() * self.n_envs
        draws = th.rand(indices.shape, device=self.device, generator=self._generator)
        goal_slots, still_stored = self._goal_indices(indices, upper_bound)
        relabelled = (draws < self.her_ratio) & (self._episode_length[indices] > 0) & still_stored
        new_goals = self.gather_field(goal_slots, ("next_obs", "achieved_goal"))
        goals = th.where(relabelled.unsqueeze(-1), new_goals, samples.observations["desired_goal"])
        samples.observations["desired_goal"].copy_(goals)
        samples.next_observations["desired_goal"].copy_(goals)
        achieved = samples.next_observations["achieved_goal"]
        computed = self._transform(self._rewards(achieved, goals))
        # goal_distance's rule replaces the env's for every sample, not only the relabelled ones (one reward scale)
        rewards = computed if self.goal_distance is not None else th.where(relabelled, computed, samples.rewards.squeeze(-1))
        dones = samples.dones.squeeze(-1)
        if self.terminal_on_goal:
            reached = th.linalg.vector_norm(achieved - goals, dim=-1) <= self.distance_reward[1]  # type: ignore[index]
            dones = th.maximum(dones, reached.float())
        return samples._replace(rewards=rewards.unsqueeze(-1), dones=dones.unsqueeze(-1))

    # --- pickling -------------------------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The episode records of the written slots only, as the storage's (``DeviceDictReplayBuffer``)."""
        state = super().__getstate__()
        state["env"] = None  # not picklable: set_env after loading (IQL.load_replay_buffer does)
        state["reward_transform"] = None  # a lambda is not picklable: IQL.load_replay_buffer sets the model's again
        n_written = self.size() * self.n_envs
        for name in EPISODE_RECORDS:
            state[name] = getattr(self, name)[:n_written].cpu().numpy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The saved records, then those of empty slots (files of earlier versions hold every slot)."""
        episode_arrays = {name: state.pop(name) for name in EPISODE_RECORDS}
        super().__setstate__(state)
        for name, array in episode_arrays.items():
            records = self._empty_records(name)
            records[: len(array)] = th.from_numpy(array).to(self._device)
            setattr(self, name, records)

    def _empty_records(self, name: str) -> th.Tensor:
        """:return: the ``EPISODE_RECORDS`` entry ``name`` of every slot, as before any write (stride 1, else 0)"""
        empty = th.ones if name == "_episode_stride" else th.zeros
        return empty(self.buffer_size * self.n_envs, dtype=th.int64, device=self._device)
