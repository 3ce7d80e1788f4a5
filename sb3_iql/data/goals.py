"""
Evaluation-goal relabelling: the original D4RL AntMaze protocol (the paper's data) on Minari's goal datasets.

Minari's mazes store, per transition, the goal its episode pursued (``desired_goal``) and rewards for that goal.
D4RL's antmaze-v0/v2 rewrote every transition for the fixed evaluation goal instead (and ended episodes there):
``relabel_to_goal`` does the same at load time, with the environment's own ``compute_reward`` (the
Gymnasium-Robotics goal API, vectorised over transitions).
"""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_iql.data.minari_loader import Transitions

#: The maze environments count the goal as reached within this distance (m) of it.
MAZE_GOAL_DISTANCE = 0.45
RewardFn = Callable[[np.ndarray, np.ndarray, dict], np.ndarray]


def evaluation_goal(env: gym.Env) -> np.ndarray:
    """
    :param env: a maze evaluation environment (Gymnasium-Robotics ``MazeEnv``) whose map has one goal cell
    :return: the centre of that cell, ``(goal_dim,)``: the fixed goal of the evaluation
    :raises ValueError: the environment has no maze or not exactly one goal cell
    """
    maze = getattr(env.unwrapped, "maze", None)
    goals = [] if maze is None else list(maze.unique_goal_locations)
    if len(goals) != 1:
        raise ValueError(
            "Evaluation-goal relabelling needs a maze evaluation environment with exactly one goal cell "
            f"(a 'g' in its maze map); {env.unwrapped} has {len(goals)}"
        )
    return np.asarray(goals[0], dtype=np.float64)


def relabel_to_goal(
    transitions: Transitions, goal: np.ndarray, compute_reward: RewardFn, terminal_distance: float | None = None
) -> Transitions:
    """
    Every transition rewritten for one goal: ``desired_goal`` (of observations and next observations) set to it,
    rewards recomputed with ``compute_reward(next achieved_goal, goal, {})``, and, with ``terminal_distance``, a
    terminal wherever the next achieved goal lies within that distance of it (D4RL's relabelled AntMaze).

    :param transitions: Dict transitions with ``achieved_goal`` and ``desired_goal`` keys
    :param goal: ``(goal_dim,)``
    :param compute_reward: the environment's ``compute_reward`` (vectorised over the first axis)
    :param terminal_distance: None: terminals as stored; a distance: terminal on reaching the goal
    :return: new transitions (episode returns recomputed; the input is not modified)
    """
    if not isinstance(transitions.observations, dict) or {"achieved_goal", "desired_goal"} - set(transitions.observations):
        raise ValueError("Goal relabelling needs Dict observations with 'achieved_goal' and 'desired_goal'")
    desired = np.broadcast_to(
        goal.astype(transitions.observations["desired_goal"].dtype), transitions.observations["desired_goal"].shape
    )
    achieved = transitions.next_observations["achieved_goal"]
    rewards = np.asarray(compute_reward(achieved, np.array(desired), {}), dtype=transitions.rewards.dtype)
    terminations = transitions.terminations
    if terminal_distance is not None:
        terminations = terminations | (np.linalg.norm(achieved - desired, axis=-1) <= terminal_distance)
    episode_ends = terminations | transitions.truncations
    episode_index = np.concatenate([[0], np.cumsum(episode_ends)[:-1]])
    return replace(
        transitions,
        observations={**transitions.observations, "desired_goal": np.array(desired)},
        next_observations={**transitions.next_observations, "desired_goal": np.array(desired)},
        rewards=rewards,
        terminations=terminations,
        episode_returns=np.bincount(episode_index, weights=rewards).astype(np.float64),
    )


def check_relabelled(transitions: Transitions, goal: np.ndarray) -> None:
    """
    :param goal: the evaluation goal the model's offline data was relabelled for, ``(goal_dim,)``
    :raises ValueError: a transition's ``desired_goal`` (or its next one) is not ``goal``: data left as it was
    """
    for observations in (transitions.observations, transitions.next_observations):
        desired = observations.get("desired_goal") if isinstance(observations, dict) else None
        if desired is None or not (desired == goal.astype(desired.dtype)).all():
            raise ValueError(
                f"This model's offline data is relabelled for the evaluation goal {goal.tolist()} (relabel_eval_goal); "
                "transitions added to it must be too: relabel_for_evaluation_goal(transitions, env, "
                "model.relabel_eval_goal, model.eval_goal) from sb3_iql.data.goals"
            )


#: The values of ``relabel_eval_goal``.
RELABEL_MODES = (False, True, "terminal")


def check_relabel_mode(mode: Any) -> None:
    """:raises ValueError: ``mode`` is not one of ``RELABEL_MODES`` (a typo of ``"terminal"`` would relabel silently
    without the terminal flags)"""
    if not any(mode is option or (isinstance(option, str) and mode == option) for option in RELABEL_MODES):
        raise ValueError(f"relabel_eval_goal must be False, True or 'terminal', got {mode!r}")


def relabel_for_evaluation_goal(
    transitions: Transitions, env: gym.Env, mode: bool | str, goal: np.ndarray | None = None
) -> Transitions:
    """
    ``IQL(relabel_eval_goal=mode)``'s rewriting of the offline data, for any trainer fed the same transitions.

    :param env: the maze evaluation environment (its goal cell and ``compute_reward``)
    :param mode: False: the transitions as they are; True: relabelled for the goal; ``"terminal"``: also terminal
        within ``MAZE_GOAL_DISTANCE`` of it
    :param goal: ``(goal_dim,)``; None: ``evaluation_goal(env)``
    """
    check_relabel_mode(mode)
    if not mode:
        return transitions
    goal = evaluation_goal(env) if goal is None else goal
    distance = MAZE_GOAL_DISTANCE if mode == "terminal" else None
    return relabel_to_goal(transitions, goal, env.unwrapped.compute_reward, distance)
