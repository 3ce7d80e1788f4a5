"""
PointMaze datasets following Minari's D4RL recipe, plus a "stitch" variant in the style of D4RL AntMaze.

Dataset ids: ``sb3_iql/pointmaze/{umaze,medium,large}[-dense][-stitch][-<recipe>]-v0``.

- Behaviour: a waypoint planner + PD controller (:class:`~sb3_iql.datasets.maze_controller.WaypointController`)
  drives the point mass towards random goals in ``PointMaze_*-v3`` with ``continuing_task=True`` and
  ``reset_target=True`` (a new goal is drawn as soon as one is reached), with Gaussian action noise
  (std 0.5) clipped to [-1, 1]. The run is never reset: it is cut into episodes of fixed length
  (umaze 300, medium 600, large 800 steps, as in D4RL), all marked truncated, never terminated.
- Evaluation: the same maze with a single fixed goal cell and ``reset_target=False``; its spec is stored.
  ``ref_max_score`` is the mean return of the noiseless controller and ``ref_min_score`` the one of uniform
  random actions on the evaluation environment.
- Default variant: observations carry the goal the controller was heading to, so behaviour cloning can
  imitate a goal-reaching controller.
- ``-stitch`` variant: the same behaviour, but every stored ``desired_goal`` is the evaluation goal (the
  centre of the fixed goal cell) and the rewards are recomputed for it, so that reaching the evaluation goal
  requires stitching pieces of trajectories that were heading elsewhere.

Recipes of other goal datasets (id suffix ``-<recipe>``; ``RECIPES``), as Minari's real datasets were made:

- ``-cut``: Minari's PointMaze recipe: the same continuous run, cut into an episode at each success (the goal is
  then redrawn), so episodes have any length and end where their goal is reached.
- ``-antmaze``: Minari's AntMaze-v1 recipe on the point mass: every episode resets the ball and draws a goal
  (``goal_cell``) that it keeps (``reset_target=False``): the controller reaches it and stays, and the sparse
  reward accumulates there; fixed-length episodes, truncated, never terminal. ``-antmaze-unseen``: no episode's
  goal lies in the evaluation goal's cell (as in Minari's medium-diverse data).
- ``-play``: undirected behaviour: the controller wanders between random goals as in the default recipe, while each
  episode stores a random goal it never pursues (rewards for that goal): stored goals say nothing about the
  behaviour, so only hindsight relabelling (``sb3_iql.HerReplayBuffer``) can teach goal reaching from it.
"""

import copy
import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import gymnasium_robotics
import minari
import mujoco
import numpy as np
from gymnasium_robotics.envs.maze import maps
from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv
from minari.data_collector import EpisodeBuffer

from sb3_iql.data.goals import MAZE_GOAL_DISTANCE
from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES
from sb3_iql.datasets.maze_controller import WaypointController
from sb3_iql.datasets.storage import check_writable, write_dataset

gym.register_envs(gymnasium_robotics)

REWARD_TYPES = ("sparse", "dense")
DATASET_NAMESPACE = "sb3_iql/pointmaze"
DATASET_VERSION = 0
DEFAULT_N_STEPS = 1_000_000
# Standard deviation of the Gaussian noise added to the controller's actions
ACTION_NOISE_STD = 0.5
# PointMaze: observation = (x, y, x_vel, y_vel); goals and actions (force commands) are 2-D like positions
OBSERVATION_DIM = 4
POSITION_DIM = 2
# Bounds of the PointMaze action space
ACTION_LIMIT = 1.0
# PointEnv clips the ball's velocity to this value (m/s) before each simulation step
MAX_SPEED = 5.0
# Seed-sequence keys that keep the random streams independent of the environment's own generator
_ACTION_NOISE_STREAM = 1
_RANDOM_POLICY_STREAM = 2
_GOAL_STREAM = 3  # the goals the recipes draw (antmaze: pursued; play: stored only)
#: Recipes beyond the default: Minari's PointMaze (``cut``) and AntMaze-v1 (``antmaze``, ``antmaze-unseen``) ones,
#: and undirected ``play`` data (module docstring).
RECIPES = ("cut", "antmaze", "antmaze-unseen", "play")
#: In the description of -play datasets whose episodes keep their goal on their last row (before, that row had the next
#: episode's goal, and the last reward was computed for it).
PLAY_GOAL_ON_EVERY_ROW = "each episode's goal on all its rows"
_DATASET_ID_RE = re.compile(
    rf"^{DATASET_NAMESPACE}/(?P<maze>[a-z]+)(?P<dense>-dense)?(?P<stitch>-stitch)?"
    rf"(-(?P<recipe>{'|'.join(RECIPES)}))?-v{DATASET_VERSION}$"
)


@dataclass(frozen=True)
class MazeSpec:
    """
    A maze of the benchmark.

    :param env_name: gymnasium-robotics environment name without reward suffix and version.
    :param maze_map: The maze layout (1 = wall, 0 = free).
    :param eval_goal_cell: ``(row, column)`` of the fixed goal of the evaluation environment (as in Minari).
    :param episode_length: Steps per dataset episode and per evaluation episode (as in D4RL).
    """

    env_name: str
    maze_map: list[list[int | str]]
    eval_goal_cell: tuple[int, int]
    episode_length: int

    def eval_maze_map(self) -> list[list[int | str]]:
        """:return: The maze layout with the single goal cell marked ``"g"``."""
        maze_map = copy.deepcopy(self.maze_map)
        row, col = self.eval_goal_cell
        maze_map[row][col] = maps.GOAL
        return maze_map


MAZES = {
    "umaze": MazeSpec("PointMaze_UMaze", maps.U_MAZE, eval_goal_cell=(1, 1), episode_length=300),
    "medium": MazeSpec("PointMaze_Medium", maps.MEDIUM_MAZE, eval_goal_cell=(6, 6), episode_length=600),
    "large": MazeSpec("PointMaze_Large", maps.LARGE_MAZE, eval_goal_cell=(7, 9), episode_length=800),
}


def _maze_spec(maze: str) -> MazeSpec:
    if maze not in MAZES:
        raise ValueError(f"Unknown maze {maze!r}: choose one of {sorted(MAZES)}")
    return MAZES[maze]


def _check_reward(reward: str) -> None:
    if reward not in REWARD_TYPES:
        raise ValueError(f"Unknown reward {reward!r}: choose one of {REWARD_TYPES}")


def _check_recipe(recipe: str | None, stitch: bool) -> None:
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}: choose one of {RECIPES} (or None, the default recipe)")
    if recipe is not None and stitch:
        raise ValueError("stitch applies to the default recipe only")


def pointmaze_dataset_id(maze: str = "umaze", reward: str = "sparse", stitch: bool = False, recipe: str | None = None) -> str:
    """
    :param maze: ``"umaze"``, ``"medium"`` or ``"large"``.
    :param reward: ``"sparse"`` (1 within 0.45 m of the goal, else 0) or ``"dense"`` (``exp(-distance)``).
    :param stitch: Whether the stored goal is always the evaluation goal.
    :param recipe: None (default recipe) or one of ``RECIPES``.
    :return: The dataset id, e.g. ``sb3_iql/pointmaze/umaze-dense-stitch-v0``, ``sb3_iql/pointmaze/large-play-v0``.
    """
    _maze_spec(maze)
    _check_reward(reward)
    _check_recipe(recipe, stitch)
    dense = "-dense" if reward == "dense" else ""
    suffix = f"{'-stitch' if stitch else ''}{f'-{recipe}' if recipe else ''}"
    return f"{DATASET_NAMESPACE}/{maze}{dense}{suffix}-v{DATASET_VERSION}"


def check_generated_correctly(dataset: minari.MinariDataset) -> None:
    """
    :param dataset: any dataset (only this package's PointMaze ids are checked)
    :raises ValueError: a -play dataset written before its episodes kept their goal on their last row (the last
        transition's goal and reward were the next episode's), saying how to write it again
    """
    try:
        _, _, _, recipe = parse_pointmaze_dataset_id(dataset.spec.dataset_id)
    except ValueError:
        return
    if recipe == "play" and PLAY_GOAL_ON_EVERY_ROW not in dataset.storage.metadata.get("description", ""):
        raise ValueError(
            f"Local dataset {dataset.spec.dataset_id} was written by an older sb3-iql, whose play recipe gave each "
            "episode's last transition the next episode's goal: write it again with "
            "make_pointmaze_dataset(..., overwrite=True) or `python -m sb3_iql.datasets pointmaze ... --overwrite`"
        )


def parse_pointmaze_dataset_id(dataset_id: str) -> tuple[str, str, bool, str | None]:
    """
    Inverse of :func:`pointmaze_dataset_id`.

    :param dataset_id: A PointMaze dataset id of this package.
    :return: ``(maze, reward, stitch, recipe)``.
    :raises ValueError: If the id is not one of this package's PointMaze ids.
    """
    match = _DATASET_ID_RE.match(dataset_id)
    if match is None or match["maze"] not in MAZES or (match["stitch"] and match["recipe"]):
        raise ValueError(
            f"{dataset_id!r} is not a PointMaze dataset id of sb3_iql: expected "
            f"{DATASET_NAMESPACE}/{{{','.join(MAZES)}}}[-dense][-stitch | -{{{','.join(RECIPES)}}}]-v{DATASET_VERSION}"
        )
    return match["maze"], "dense" if match["dense"] else "sparse", match["stitch"] is not None, match["recipe"]


def make_pointmaze_env(
    maze: str = "umaze", reward: str = "sparse", evaluation: bool = False, keep_goal: bool = False, **render_kwargs: Any
) -> gym.Env:
    """
    :param maze: ``"umaze"``, ``"medium"`` or ``"large"``.
    :param reward: ``"sparse"`` or ``"dense"``.
    :param evaluation: False: the data-collection environment (random goals, a new one each time a goal is
        reached). True: the evaluation environment (fixed goal cell, ``reset_target=False``).
    :param keep_goal: a collection environment whose random goal stays once reached (``reset_target=False``: the
        AntMaze-v1 recipes)
    :param render_kwargs: ``render_mode``, ``width``, ``height`` of the environment
    :return: The environment, with the D4RL episode length as time limit.
    """
    spec = _maze_spec(maze)
    _check_reward(reward)
    env_id = f"{spec.env_name}{'Dense' if reward == 'dense' else ''}-v3"
    if evaluation:
        maze_kwargs = {"maze_map": spec.eval_maze_map(), "reset_target": False}
    else:
        maze_kwargs = {"reset_target": not keep_goal}
    return gym.make(env_id, continuing_task=True, max_episode_steps=spec.episode_length, **maze_kwargs, **render_kwargs)


def _simulate(
    env: PointMazeEnv, n_steps: int, controller: WaypointController | None, action_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Step a reset PointMaze environment ``n_steps`` times, bit for bit like ``env.step`` but without its
    per-step Python overhead (the reward is computed afterwards, vectorised).

    :param env: The unwrapped environment, already reset.
    :param n_steps: Number of steps.
    :param controller: The controller whose action is used, or None for actions = ``action_offsets``.
    :param action_offsets: (n_steps, 2) noise added to the controller's action, or the actions themselves.
    :return: Observations ``observation`` (n_steps + 1, 4) and ``desired_goal`` (n_steps + 1, 2) as
        ``env.step`` returns them (the goal before any goal update of that step), and the applied actions
        (n_steps, 2), float32 like the action space.
    """
    model, data = env.point_env.model, env.point_env.data
    observations = np.empty((n_steps + 1, OBSERVATION_DIM))
    desired_goals = np.empty((n_steps + 1, POSITION_DIM))
    actions = np.empty((n_steps, POSITION_DIM), dtype=np.float32)
    observations[0, :POSITION_DIM], observations[0, POSITION_DIM:] = data.qpos, data.qvel
    desired_goals[0] = env.goal
    goal_x, goal_y = env.goal.tolist()
    offsets = action_offsets.tolist()
    for step in range(n_steps):
        x, y = data.qpos.tolist()
        action_x, action_y = offsets[step]
        if controller is not None:
            x_vel, y_vel = data.qvel.tolist()
            control_x, control_y = controller.compute_action(x, y, x_vel, y_vel, goal_x, goal_y)
            action_x, action_y = control_x + action_x, control_y + action_y
        actions[step] = (
            min(max(action_x, -ACTION_LIMIT), ACTION_LIMIT),
            min(max(action_y, -ACTION_LIMIT), ACTION_LIMIT),
        )
        # PointEnv.step: clip the velocity, set the state (mj_forward), then simulate one frame
        np.clip(data.qvel, -MAX_SPEED, MAX_SPEED, out=data.qvel)
        mujoco.mj_forward(model, data)
        data.ctrl[:] = actions[step]
        mujoco.mj_step(model, data)
        observations[step + 1, :POSITION_DIM], observations[step + 1, POSITION_DIM:] = data.qpos, data.qvel
        desired_goals[step + 1] = goal_x, goal_y
        x, y = data.qpos.tolist()
        # MazeEnv.update_goal draws a new goal (only when continuing_task and reset_target) once this close
        if (x - goal_x) ** 2 + (y - goal_y) ** 2 <= MAZE_GOAL_DISTANCE**2:
            env.update_goal(data.qpos.copy())
            goal_x, goal_y = env.goal.tolist()
    return observations, desired_goals, actions


def _episode_lengths(n_steps: int, max_length: int, success: np.ndarray | None) -> np.ndarray:
    """:return: lengths of consecutive episodes covering ``n_steps``: cut after each success (if given) and at
    ``max_length`` steps otherwise"""
    if success is not None:
        ends = np.flatnonzero(success) + 1
        return np.diff(np.concatenate([[0], ends[ends < n_steps], [n_steps]]))
    lengths = np.full(n_steps // max_length, max_length)
    return np.append(lengths, n_steps % max_length) if n_steps % max_length else lengths


def _goal_keeping_runs(
    maze_env: PointMazeEnv, spec: MazeSpec, n_steps: int, noise: np.ndarray, seed: int, exclude_eval_cell: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """
    Minari's AntMaze-v1 recipe: episodes of ``spec.episode_length`` steps, each from a reset with a goal cell drawn
    among the free cells (not the evaluation goal's with ``exclude_eval_cell``) and kept when reached.

    :return: per episode, ``_simulate``'s observations, goals and actions, and its length as a 1-element array
    """
    maze = maze_env.maze
    eval_goal = maze.cell_rowcol_to_xy(np.array(spec.eval_goal_cell))
    cells = [
        (row, col)
        for row, line in enumerate(spec.maze_map)
        for col, cell in enumerate(line)
        if cell != 1 and not (exclude_eval_cell and np.allclose(maze.cell_rowcol_to_xy(np.array((row, col))), eval_goal))
    ]
    goal_rng = np.random.default_rng((seed, _GOAL_STREAM))
    assert not maze_env.reset_target, "the goal must stay once reached (make_pointmaze_env(keep_goal=True))"
    runs = []
    for start in range(0, n_steps, spec.episode_length):
        length = min(spec.episode_length, n_steps - start)
        goal_cell = cells[goal_rng.integers(len(cells))]
        maze_env.reset(seed=seed if start == 0 else None, options={"goal_cell": np.array(goal_cell)})
        observations, goals, actions = _simulate(maze_env, length, WaypointController(maze), noise[start : start + length])
        runs.append((observations, goals, actions, np.array([length])))
    return runs


def _reference_return(eval_env: gym.Env, controller: WaypointController | None, n_episodes: int, seed: int) -> float:
    """
    :param eval_env: The evaluation environment (with a time limit).
    :param controller: The noiseless controller, or None for uniform random actions.
    :param n_episodes: Number of episodes to average over.
    :param seed: Seed of the first reset and of the random actions.
    :return: Mean undiscounted episode return.
    """
    env: PointMazeEnv = eval_env.unwrapped
    episode_length = eval_env.spec.max_episode_steps
    rng = np.random.default_rng((seed, _RANDOM_POLICY_STREAM))
    returns = []
    for episode in range(n_episodes):
        env.reset(seed=seed if episode == 0 else None)
        if controller is None:
            offsets = rng.uniform(-ACTION_LIMIT, ACTION_LIMIT, size=(episode_length, POSITION_DIM))
        else:
            controller.reset()
            offsets = np.zeros((episode_length, POSITION_DIM))
        observations, desired_goals, _ = _simulate(env, episode_length, controller, offsets)
        returns.append(np.sum(env.compute_reward(observations[1:, :POSITION_DIM], desired_goals[1:], {})))
    return float(np.mean(returns))


def make_pointmaze_dataset(
    maze: str = "umaze",
    reward: str = "sparse",
    stitch: bool = False,
    n_steps: int = DEFAULT_N_STEPS,
    seed: int = 0,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    dataset_id: str | None = None,
    overwrite: bool = False,
    recipe: str | None = None,
) -> minari.MinariDataset:
    """
    Generate a PointMaze dataset (see the module docstring for the recipe). Deterministic given ``seed``.

    :param maze: ``"umaze"``, ``"medium"`` or ``"large"``.
    :param reward: ``"sparse"`` (1 within 0.45 m of the goal, else 0) or ``"dense"`` (``exp(-distance)``).
    :param stitch: Store the evaluation goal as ``desired_goal`` everywhere and recompute the rewards for it.
    :param n_steps: Number of transitions (1M in D4RL / Minari).
    :param seed: Seed of the goals, the action noise and the reference-score rollouts.
    :param n_reference_episodes: Episodes of the evaluation environment averaged for each reference score.
    :param dataset_id: Id to write to; default :func:`pointmaze_dataset_id` ``(maze, reward, stitch, recipe)``.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :param recipe: None (the default recipe) or one of ``RECIPES`` (module docstring).
    :return: The dataset, with observations a dict of ``observation`` (x, y, x_vel, y_vel),
        ``achieved_goal`` (x, y) and ``desired_goal`` (x, y).
    """
    spec = _maze_spec(maze)
    _check_recipe(recipe, stitch)
    standard_id = pointmaze_dataset_id(maze, reward, stitch, recipe)
    dataset_id = dataset_id or standard_id
    if dataset_id != standard_id and dataset_id.startswith(f"{DATASET_NAMESPACE}/"):  # ensure_dataset takes it as its own
        raise ValueError(
            f"dataset_id {dataset_id!r} is in this package's PointMaze namespace, where these options make "
            f"{standard_id!r}: give that id, or one outside {DATASET_NAMESPACE}/"
        )
    if n_steps < 1 or n_reference_episodes < 1:
        raise ValueError(f"n_steps ({n_steps}) and n_reference_episodes ({n_reference_episodes}) must be positive")
    check_writable(dataset_id, overwrite)
    keeps_goal = recipe in ("antmaze", "antmaze-unseen")  # its stored spec says so too
    env, eval_env = make_pointmaze_env(maze, reward, keep_goal=keeps_goal), make_pointmaze_env(maze, reward, evaluation=True)
    maze_env: PointMazeEnv = env.unwrapped
    noise = np.random.default_rng((seed, _ACTION_NOISE_STREAM)).normal(scale=ACTION_NOISE_STD, size=(n_steps, POSITION_DIM))
    if keeps_goal:
        runs = _goal_keeping_runs(maze_env, spec, n_steps, noise, seed, exclude_eval_cell=recipe == "antmaze-unseen")
    else:
        maze_env.reset(seed=seed)
        runs = [(*_simulate(maze_env, n_steps, WaypointController(maze_env.maze), noise), None)]
    episodes = []
    for observations, desired_goals, actions, lengths in runs:
        if stitch:
            desired_goals[:] = maze_env.maze.cell_rowcol_to_xy(np.array(spec.eval_goal_cell))
        achieved_goals = observations[:, :POSITION_DIM].copy()
        success = np.linalg.norm(achieved_goals[1:] - desired_goals[1:], axis=-1) <= MAZE_GOAL_DISTANCE
        if lengths is None:  # one continuous run: cut it into episodes
            lengths = _episode_lengths(len(actions), spec.episode_length, success if recipe == "cut" else None)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # each episode's own goals (its last row is the next episode's first: the two may differ)
        episode_goals = [desired_goals[start : start + length + 1] for start, length in zip(starts, lengths)]
        if recipe == "play":  # each episode stores a random goal that the behaviour never pursued
            goal_rng = np.random.default_rng((seed, _GOAL_STREAM))
            goals = maze_env.maze.unique_goal_locations
            episode_goals = [np.tile(goals[goal_rng.integers(len(goals))], (length + 1, 1)) for length in lengths]
        for start, length, goals_of_episode in zip(starts, lengths, episode_goals):
            end = start + length
            rewards = maze_env.compute_reward(achieved_goals[start + 1 : end + 1], goals_of_episode[1:], {})
            episodes.append(
                EpisodeBuffer(
                    id=len(episodes),
                    seed=seed if not episodes else None,
                    observations={
                        "achieved_goal": achieved_goals[start : end + 1],
                        "desired_goal": goals_of_episode,
                        "observation": observations[start : end + 1],
                    },
                    actions=actions[start:end],
                    rewards=rewards,
                    terminations=np.zeros(length, dtype=bool),
                    truncations=np.arange(start, end) == end - 1,
                    infos={},
                )
            )
    recipe_text = {
        None: f"cut into {spec.episode_length}-step episodes",
        "cut": "cut into an episode at each success (Minari's PointMaze recipe)",
        "antmaze": f"one kept goal per {spec.episode_length}-step episode from a reset (Minari's AntMaze-v1 recipe)",
        "antmaze-unseen": f"one kept goal per {spec.episode_length}-step episode from a reset, never in the evaluation "
        "goal's cell (Minari's AntMaze-v1 recipe, as medium-diverse)",
        "play": f"cut into {spec.episode_length}-step episodes, each storing a random goal it never pursued (play data), "
        + PLAY_GOAL_ON_EVERY_ROW,
    }[recipe]
    return write_dataset(
        dataset_id,
        episodes,
        env=env,
        eval_env=eval_env,
        overwrite=overwrite,
        algorithm_name="WaypointController (BFS planner + PD) with Gaussian action noise",
        description=(
            f"PointMaze {maze}, {reward} reward{', stitch (desired_goal = evaluation goal)' if stitch else ''}: "
            f"{n_steps} steps of a waypoint controller with N(0, {ACTION_NOISE_STD}) action noise chasing random "
            f"goals, {recipe_text}; seed {seed}. Generated by sb3_iql.datasets."
        ),
        ref_min_score=_reference_return(eval_env, None, n_reference_episodes, seed),
        ref_max_score=_reference_return(eval_env, WaypointController(maze_env.maze), n_reference_episodes, seed),
        num_episodes_average_score=n_reference_episodes,
    )
