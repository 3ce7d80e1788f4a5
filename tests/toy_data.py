"""Small environments and Minari datasets written by the tests themselves."""

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from gymnasium import spaces
from minari.data_collector import EpisodeBuffer

GOAL = 0.5
EPISODE_STEPS = 20
STEP_SIZE = 0.1
MAX_ACTION = 2.0
#: Moves of the Discrete actions 0, 1, 2 of ``LineEnv(discrete=True)``.
DISCRETE_MOVES = (-MAX_ACTION, 0.0, MAX_ACTION)
#: Height and width of ``ImageLineEnv``'s frames (NatureCNN needs at least 36).
IMAGE_SIZE = 36
#: ``GoalLineEnv``'s reward: 1 within this distance of the goal.
GOAL_DISTANCE = 0.03


class LineEnv(gym.Env):
    """
    A point on [-1, 1] that should reach x = 0.5: x' = clip(x + 0.1 * a), reward -|x' - 0.5|, 20 steps
    (truncated, never terminal). Actions live in [-2, 2], so SB3 scales them.

    :param dict_obs: observations as a Dict {"position": (1,), "goal": (1,)} instead of a Box (2,)
    :param discrete: ``Discrete(3)`` actions: 0, 1, 2 move by -2, 0, +2 (times 0.1)
    """

    def __init__(self, dict_obs: bool = False, discrete: bool = False):
        self.dict_obs = dict_obs
        self.discrete = discrete
        box = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.observation_space = (
            spaces.Dict({"position": box, "goal": box}) if dict_obs else spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        )
        self.action_space = (
            spaces.Discrete(len(DISCRETE_MOVES)) if discrete else spaces.Box(-MAX_ACTION, MAX_ACTION, (1,), dtype=np.float32)
        )
        self.position = 0.0
        self.steps = 0

    def _obs(self) -> Any:
        position, goal = np.array([self.position], np.float32), np.array([GOAL], np.float32)
        return {"position": position, "goal": goal} if self.dict_obs else np.concatenate([position, goal])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(-1.0, 1.0))
        self.steps = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        if self.discrete:
            action = DISCRETE_MOVES[int(action)]
        else:
            action = float(np.clip(action, -MAX_ACTION, MAX_ACTION)[0])
        self.position = float(np.clip(self.position + STEP_SIZE * action, -1.0, 1.0))
        self.steps += 1
        return self._obs(), -abs(self.position - GOAL), False, self.steps >= EPISODE_STEPS, {}


class ImageLineEnv(LineEnv):
    """
    ``LineEnv`` seen as a picture: an RGB uint8 frame ``(IMAGE_SIZE, IMAGE_SIZE, 3)`` (channel-last, as most image
    envs) whose bright column is the position; the goal is not drawn (it never moves).
    """

    def __init__(self, discrete: bool = False):
        super().__init__(discrete=discrete)
        self.observation_space = spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def _obs(self) -> np.ndarray:
        frame = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        column = round((self.position + 1.0) / 2.0 * (IMAGE_SIZE - 1))
        frame[:, max(column - 1, 0) : column + 2] = 255
        return frame


class GoalLineEnv(gym.Env):
    """
    ``LineEnv`` with the Gymnasium-Robotics goal API: a goal drawn on [-1, 1] at every reset, Dict observations
    ``observation`` / ``achieved_goal`` (the position, (1,)) and ``desired_goal`` (1,), reward 1 within
    ``GOAL_DISTANCE`` of the goal, else 0 (``compute_reward``, vectorised), 20 steps, never terminal.
    """

    observation_space = spaces.Dict(
        {key: spaces.Box(-1.0, 1.0, (1,), dtype=np.float32) for key in ("observation", "achieved_goal", "desired_goal")}
    )
    action_space = spaces.Box(-MAX_ACTION, MAX_ACTION, (1,), dtype=np.float32)

    def __init__(self) -> None:
        self.position, self.goal, self.steps = 0.0, 0.0, 0

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        return (np.abs(achieved_goal - desired_goal)[..., 0] <= GOAL_DISTANCE).astype(np.float64)

    def _obs(self) -> dict[str, np.ndarray]:
        position = np.array([self.position], np.float32)
        return {"observation": position, "achieved_goal": position.copy(), "desired_goal": np.array([self.goal], np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.position, self.goal = (float(x) for x in self.np_random.uniform(-1.0, 1.0, 2))
        self.steps = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        self.position = float(np.clip(self.position + STEP_SIZE * np.clip(action, -MAX_ACTION, MAX_ACTION)[0], -1.0, 1.0))
        self.steps += 1
        obs = self._obs()
        reward = float(self.compute_reward(obs["achieved_goal"], obs["desired_goal"], {}))
        return obs, reward, False, self.steps >= EPISODE_STEPS, {"is_success": reward > 0}


def image_position(obs: np.ndarray) -> float:
    """The position drawn in an ``ImageLineEnv`` frame (channel-last or channel-first)."""
    channel_last = obs.shape[-1] == 3
    columns = np.flatnonzero((obs.max(axis=-1) if channel_last else obs.max(axis=0)).max(axis=0) > 127)
    return float(columns.mean() / (IMAGE_SIZE - 1) * 2.0 - 1.0)


#: Registered so that Minari can store the spec (needed for reference scores) and recover the environment.
LINE_ENV_ID = "ToyLine-v0"
gym.register(LINE_ENV_ID, entry_point="toy_data:LineEnv")
DISCRETE_LINE_ENV_ID = "ToyLineDiscrete-v0"
gym.register(DISCRETE_LINE_ENV_ID, entry_point="toy_data:LineEnv", kwargs={"discrete": True})
IMAGE_LINE_ENV_ID = "ToyLineImage-v0"
gym.register(IMAGE_LINE_ENV_ID, entry_point="toy_data:ImageLineEnv")
GOAL_LINE_ENV_ID = "ToyGoalLine-v0"
gym.register(GOAL_LINE_ENV_ID, entry_point="toy_data:GoalLineEnv")


def good_policy(obs: Any) -> np.ndarray:
    """Moves straight to the goal."""
    position = obs["position"][0] if isinstance(obs, dict) else image_position(obs) if obs.ndim == 3 else obs[0]
    return np.clip([10.0 * (GOAL - position)], -MAX_ACTION, MAX_ACTION).astype(np.float32)


def bad_policy(obs: Any) -> np.ndarray:
    """Moves away from the goal."""
    return -good_policy(obs)


def good_discrete_policy(obs: Any) -> int:
    """Steps towards the goal, stays when within one step of it."""
    move = good_policy(obs)[0]
    return 2 if move > 1.0 else 0 if move < -1.0 else 1


def bad_discrete_policy(obs: Any) -> int:
    """Steps away from the goal."""
    position = obs["position"][0] if isinstance(obs, dict) else obs[0]
    return 0 if position < GOAL else 2


def rollout_episodes(
    env: gym.Env, policies: Sequence[Callable[[Any], np.ndarray]], n_episodes: int, seed: int = 0
) -> list[EpisodeBuffer]:
    """Episodes alternating between the given policies."""
    episodes = []
    for index in range(n_episodes):
        policy = policies[index % len(policies)]
        obs, _ = env.reset(seed=seed + index)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            action = policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        episodes.append(make_episode(index, observations, actions, rewards, terminations, truncations))
    return episodes


def make_episode(
    index: int,
    observations: list[Any],
    actions: Sequence[Any],
    rewards: Sequence[float],
    terminations: Sequence[bool],
    truncations: Sequence[bool],
) -> EpisodeBuffer:
    """An EpisodeBuffer from lists of steps (``observations`` has one more row than the others)."""
    if isinstance(observations[0], dict):
        stacked_obs = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    else:
        stacked_obs = np.stack(observations)
    return EpisodeBuffer(
        id=index,
        observations=stacked_obs,
        actions=np.stack(actions),
        rewards=list(map(float, rewards)),
        terminations=list(map(bool, terminations)),
        truncations=list(map(bool, truncations)),
        infos={},
    )


def write_dataset(
    dataset_id: str,
    episodes: list[EpisodeBuffer],
    env: gym.Env | str | None = None,
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> minari.MinariDataset:
    """Write a Minari dataset (to MINARI_DATASETS_PATH) from episode buffers."""
    if env is not None and not isinstance(env, str) and env.spec is None:
        observation_space, action_space, env = env.observation_space, env.action_space, None
    return minari.create_dataset_from_buffers(
        dataset_id,
        episodes,
        env=env,
        observation_space=observation_space,
        action_space=action_space,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
    )
