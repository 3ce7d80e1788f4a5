"""
How long the behaviour of a maze dataset stays at the evaluation goal: the ceiling of what stitching its pieces can
teach about *staying* there, which is what the normalized score of a continuing maze (reward at every step at the
goal) measures once the goal is reached.

For each dataset: the fraction of steps within the goal radius, the length of each visit (consecutive steps inside),
the speed inside, and the share of saturated actions (a component at +-1) inside and overall. Compare with the
``at goal`` column of ``scores.md`` (the trained policies) and with the expert reference (``ref_max_score``: a
controller that drives to the goal and stays).

With ``--models`` (models saved by ``model.save``: ``benchmarks/scores.py --save-models DIR``, or its checkpoints),
what each trained policy does once it reaches the goal, on the evaluation environment (deterministic actions): the
share of episodes that arrive, the fraction of the steps from the first arrival on spent at the goal, how far it
strays afterwards (median distance, metres), how often it is at rest then (slower than 0.5 m/s) and how fast it
moves at the goal; and its critics at the goal standing still: V, and the spread of min(Q1, Q2) over the nine
actions of {-1, 0, 1}^2. A policy that rests next to the goal, or circles it, where the critics barely tell the
actions apart, has nothing in the data to learn stopping at the goal from.

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/goal_dwell.py \\
        --datasets sb3_iql/pointmaze/medium-stitch-v0 sb3_iql/pointmaze/large-stitch-v0
    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/goal_dwell.py \\
        --datasets sb3_iql/pointmaze/large-stitch-v0 --models run_50k.zip run_150k.zip
"""

import argparse
import functools
import itertools
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import torch as th
from value_map import standing_still  # benchmarks/value_map.py

from sb3_iql import IQL
from sb3_iql.data.goals import MAZE_GOAL_DISTANCE

#: Below this speed (m/s) the ball counts as at rest.
REST_SPEED = 0.5


def visit_lengths(inside: np.ndarray) -> list[int]:
    """:return: the lengths of the runs of consecutive True values of ``inside``, shape ``(steps,)``"""
    padded = np.concatenate([[False], inside, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(edges[1::2] - edges[::2])


def dwell_statistics(dataset: minari.MinariDataset) -> dict[str, float]:
    """:return: fraction of steps at the goal, visit lengths (steps), speed at the goal (m/s), saturated actions"""
    inside_all, speeds, saturated, visits = [], [], [], []
    for episode in dataset.iterate_episodes():
        observations = episode.observations
        distance = np.linalg.norm(observations["achieved_goal"][:-1] - observations["desired_goal"][:-1], axis=1)
        inside = distance < MAZE_GOAL_DISTANCE
        inside_all.append(inside)
        speeds.append(np.linalg.norm(observations["observation"][:-1, 2:4], axis=1))
        saturated.append(np.abs(episode.actions).max(axis=1) > 0.99)
        visits += visit_lengths(inside)
    inside, speed, saturated_actions = (np.concatenate(values) for values in (inside_all, speeds, saturated))
    lengths = np.asarray(visits) if visits else np.zeros(1)
    return {
        "steps": float(inside.size),
        "fraction_at_goal": float(inside.mean()),
        "visits": float(len(visits)),
        "visit_median": float(np.median(lengths)),
        "visit_p90": float(np.quantile(lengths, 0.9)),
        "visit_max": float(lengths.max()),
        "speed_at_goal_median": float(np.median(speed[inside])) if inside.any() else float("nan"),
        "slow_at_goal": float((speed[inside] < REST_SPEED).mean()) if inside.any() else float("nan"),
        "saturated_at_goal": float(saturated_actions[inside].mean()) if inside.any() else float("nan"),
        "saturated_overall": float(saturated_actions.mean()),
    }


def policy_dwell(
    predict: Callable[[dict[str, np.ndarray]], np.ndarray], env: gym.Env, n_episodes: int, seed: int = 0
) -> dict[str, float]:
    """
    What a policy does after it first reaches the goal of a goal-maze environment (``achieved_goal`` within
    ``MAZE_GOAL_DISTANCE`` of ``desired_goal``).

    :param predict: observation -> action, shape ``(action_dim,)``
    :param env: the evaluation environment (Dict observations with ``observation`` = x, y, vx, vy)
    :param seed: seed of the first reset; later episodes continue the environment's random stream
    :return: ``reached`` (share of episodes that arrive), and over those: ``first_step`` (mean step of the first
        arrival), ``at_goal`` (mean fraction of the steps from then on inside the radius), ``distance_after``
        (mean of each episode's median distance to the goal from then on, m), ``at_rest_after`` (fraction of the
        steps from then on slower than ``REST_SPEED``), ``speed_at_goal`` (median speed inside the radius, m/s); NaN
        where no episode arrives
    """
    first_steps, at_goal, distances, speeds, rest = [], [], [], [], []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed if episode == 0 else None)
        after: list[float] = []
        step, done = 0, False
        while not done:
            observation, _, terminated, truncated, _ = env.step(predict(observation))
            step, done = step + 1, terminated or truncated
            distance = float(np.linalg.norm(observation["achieved_goal"] - observation["desired_goal"]))
            if after or distance < MAZE_GOAL_DISTANCE:
                if not after:
                    first_steps.append(step)
                after.append(distance)
                speed = float(np.linalg.norm(observation["observation"][2:4]))
                rest.append(speed < REST_SPEED)
                if distance < MAZE_GOAL_DISTANCE:
                    speeds.append(speed)
        if after:
            at_goal.append(float(np.mean(np.asarray(after) < MAZE_GOAL_DISTANCE)))
            distances.append(float(np.median(after)))
    nan = float("nan")
    return {
        "reached": len(first_steps) / n_episodes,
        "first_step": float(np.mean(first_steps)) if first_steps else nan,
        "at_goal": float(np.mean(at_goal)) if at_goal else nan,
        "distance_after": float(np.mean(distances)) if distances else nan,
        "at_rest_after": float(np.mean(rest)) if rest else nan,
        "speed_at_goal": float(np.median(speeds)) if speeds else nan,
    }


def critics_at_goal(model: IQL, goal: np.ndarray) -> dict[str, float]:
    """
    :param model: a trained IQL model of a Dict-observation PointMaze
    :param goal: the goal position (x, y), metres, shape ``(2,)``
    :return: V standing still at the goal, and the spread (max - min) of min(Q1, Q2) there over the actions
        {-1, 0, 1}^2
    """
    actions = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=2)), dtype=np.float32)
    model.policy.set_training_mode(False)
    with th.no_grad():
        obs_tensor, _ = model.policy.obs_to_tensor(standing_still(np.repeat(goal[None], len(actions), axis=0), goal))
        value = model.policy.value_net(obs_tensor)[0].item()
        q_values = th.min(*model.policy.critic(obs_tensor, th.as_tensor(actions, device=model.device))).flatten()
    return {"value": value, "q_spread": (q_values.max() - q_values.min()).item()}


def deterministic_action(model: IQL, observation: dict[str, np.ndarray]) -> np.ndarray:
    """:return: the policy's mean action for one observation, shape ``(action_dim,)``"""
    return model.predict(observation, deterministic=True)[0]


def print_policy_table(dataset: minari.MinariDataset, models: list[Path], n_episodes: int) -> None:
    """One row per model: ``policy_dwell`` on the evaluation environment (first reset seed 0), ``critics_at_goal``."""
    print("| model | reached | first arrival (step) | at goal after | median distance after (m) | at rest after "
          "| speed at goal (m/s) | V at goal | Q spread at goal |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for path in models:
        model = IQL.load(path, device="cpu")
        env = dataset.recover_environment(eval_env=True)
        goal = np.asarray(env.reset(seed=0)[0]["desired_goal"])
        dwell = policy_dwell(functools.partial(deterministic_action, model), env, n_episodes)
        critics = critics_at_goal(model, goal)
        env.close()
        print(
            f"| {path.name} | {100 * dwell['reached']:.0f}% | {dwell['first_step']:.0f} | {dwell['at_goal']:.2f} "
            f"| {dwell['distance_after']:.2f} | {dwell['at_rest_after']:.2f} | {dwell['speed_at_goal']:.2f} "
            f"| {critics['value']:.1f} | {critics['q_spread']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", required=True, help="local Minari ids of goal-maze datasets")
    parser.add_argument("--models", type=Path, nargs="+", help="models (.zip) trained on the (single) dataset")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per model")
    args = parser.parse_args()
    if args.models:
        if len(args.datasets) != 1:
            parser.error("--models takes the one dataset they were trained on")
        th.set_num_threads(1)
        print_policy_table(minari.load_dataset(args.datasets[0]), args.models, args.episodes)
        return
    print("| dataset | steps | at goal | visits | visit length median / p90 / max (steps) | speed at goal (median, m/s) "
          "| slow (< 0.5 m/s) at goal | saturated actions at goal / overall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for dataset_id in args.datasets:
        stats = dwell_statistics(minari.load_dataset(dataset_id))
        print(
            f"| {dataset_id} | {stats['steps']:,.0f} | {100 * stats['fraction_at_goal']:.1f}% | {stats['visits']:.0f} "
            f"| {stats['visit_median']:.0f} / {stats['visit_p90']:.0f} / {stats['visit_max']:.0f} "
            f"| {stats['speed_at_goal_median']:.2f} | {100 * stats['slow_at_goal']:.1f}% "
            f"| {100 * stats['saturated_at_goal']:.0f}% / {100 * stats['saturated_overall']:.0f}% |"
        )


if __name__ == "__main__":
    main()
