"""
How much goal-reaching signal IQL's advantages carry on a PointMaze dataset, and what the policy then does.

Written to explain why IQL beats behaviour cloning on the ``-stitch`` mazes but not on the goal-carrying ones
(``benchmarks/results/scores.md``). For each dataset and beta, IQL (maze preset: expectile 0.9, reward r - 1)
is trained for ``--updates`` updates like ``benchmarks/scores.py``, then:

- **value spread**: mean V(s) of dataset states within 1 m (``--near-goal``) of their stored ``desired_goal``
  minus the mean over states farther than 4 m (``--far-from-goal``): what the critic learned about reaching
  the goal (units: transformed reward);
- **rank correlation** (Spearman) of V(s) with minus the distance to the stored goal over the same states;
- **advantages** A = min target Q(s, a) - V(s) on dataset pairs: std; rank correlation with the action's norm
  and with the change of speed ||v(s')|| - ||v(s)|| (m/s) the action caused; and with the AWR weights
  w = min(exp(beta * A), 100), the share of clipped weights and the effective sample size of a batch,
  ESS = (sum w)^2 / (n * sum w^2) (1 = plain behaviour cloning, 1/n = one sample decides the batch);
- **evaluation**: success rate, mean distance to the goal at the end and mean path length (m) of the
  deterministic policy over ``--eval-episodes`` episodes of the evaluation environment.

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari nice -n 10 python benchmarks/advantage_signal.py \\
        --datasets sb3_iql/pointmaze/large-stitch-v0 sb3_iql/pointmaze/large-v0 --betas 10 \\
        --updates 30000 --net-arch 64 64
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from scipy.stats import spearmanr
from scores import preset_hyperparameters  # benchmarks/scores.py: the same preset as the score table
from stable_baselines3.common.logger import Logger

from sb3_iql.datasets import ensure_dataset
from sb3_iql.iql import IQL
from sb3_iql.iql.losses import awr_weights


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (ties ranked by their mean rank)."""
    return float(spearmanr(x, y).statistic)


@th.no_grad()
def critic_statistics(model: IQL, n_batches: int, near: float, far: float) -> dict[str, float]:
    """
    Value spread, value-distance correlation and advantage statistics on ``n_batches`` dataset batches.

    :param near: states closer than this to their stored goal (m) are "near" for the value spread
    :param far: states farther than this (m) are "far"
    """
    buffer = model.replay_buffer
    values, distances, advantages, action_norms, speed_changes, ess, clipped = [], [], [], [], [], [], []
    for _ in range(n_batches):
        batch = buffer.sample(model.batch_size)
        value = model.value_net(batch.observations).flatten()
        advantage = model.critic_target(batch.observations, batch.actions).min(dim=0).values.flatten() - value
        weights = awr_weights(advantage, model.beta, model.max_weight)
        ess.append(float(weights.sum() ** 2 / (len(weights) * (weights**2).sum())))
        clipped.append(float((weights >= model.max_weight).float().mean()))
        position = batch.observations["achieved_goal"]
        goal = batch.observations["desired_goal"]
        values.append(value.numpy())
        distances.append(th.linalg.vector_norm(position - goal, dim=1).numpy())
        advantages.append(advantage.numpy())
        action_norms.append(th.linalg.vector_norm(batch.actions, dim=1).numpy())
        speed = th.linalg.vector_norm(batch.observations["observation"][:, 2:4], dim=1)
        next_speed = th.linalg.vector_norm(batch.next_observations["observation"][:, 2:4], dim=1)
        speed_changes.append((next_speed - speed).numpy())
    value, distance, advantage, action_norm, speed_change = map(
        np.concatenate, (values, distances, advantages, action_norms, speed_changes)
    )
    value_near, value_far = float(value[distance < near].mean()), float(value[distance > far].mean())
    return {
        "value_near_goal": value_near,
        "value_far_from_goal": value_far,
        "value_spread": value_near - value_far,
        "value_distance_spearman": spearman(value, -distance),
        "advantage_std": float(advantage.std()),
        "advantage_action_norm_spearman": spearman(advantage, action_norm),
        "advantage_speed_change_spearman": spearman(advantage, speed_change),
        "clipped_weight_share": float(np.mean(clipped)),
        "batch_ess": float(np.mean(ess)),
    }


def check_goal_distances(dataset: Any, near: float, far: float) -> None:
    """
    Refuse ``--near-goal`` and ``--far-from-goal`` that leave either side of the value spread without dataset states
    (the spread would be NaN: on umaze every state lies within 4 m of its goal).

    :raises SystemExit: no stored state is closer than ``near`` (m) to its goal, or none is farther than ``far``
    """
    distances = np.concatenate(
        [
            np.linalg.norm(episode.observations["achieved_goal"] - episode.observations["desired_goal"], axis=1)
            for episode in dataset.iterate_episodes()
        ]
    )
    if not (distances < near).any() or not (distances > far).any():
        raise SystemExit(
            f"{dataset.spec.dataset_id}: its states lie {distances.min():.2f} to {distances.max():.2f} m from their "
            f"stored goals, so --near-goal {near:g} and --far-from-goal {far:g} leave no state on one side"
        )


def rollout_statistics(model: IQL, dataset: Any, n_episodes: int, seed: int) -> dict[str, float]:
    """Success rate, final distance to the goal and path length (m) of the deterministic policy."""
    env = dataset.recover_environment(eval_env=True)
    successes, final_distances, path_lengths = [], [], []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed + episode)
        done, reached, path_length = False, False, 0.0
        while not done:
            action, _ = model.predict(observation, deterministic=True)
            previous = observation["achieved_goal"]
            observation, reward, terminated, truncated, _ = env.step(action)
            path_length += float(np.linalg.norm(observation["achieved_goal"] - previous))
            reached |= reward > 0
            done = terminated or truncated
        successes.append(reached)
        final_distances.append(float(np.linalg.norm(observation["achieved_goal"] - observation["desired_goal"])))
        path_lengths.append(path_length)
    env.close()
    return {
        "success_rate": float(np.mean(successes)),
        "final_goal_distance_m": float(np.mean(final_distances)),
        "path_length_m": float(np.mean(path_lengths)),
    }


def diagnose(dataset_id: str, beta: float, args: argparse.Namespace) -> dict[str, Any]:
    """Train IQL (maze preset, this ``beta``) on the dataset; :return: its critic and rollout statistics."""
    dataset = ensure_dataset(dataset_id, n_steps=args.dataset_steps)
    check_goal_distances(dataset, args.near_goal, args.far_from_goal)
    model = IQL(
        "MlpPolicy",
        env=None,
        offline_dataset=dataset,
        offline_steps=args.updates,
        policy_kwargs={"net_arch": args.net_arch},
        seed=args.seed,
        device="cpu",
        **(preset_hyperparameters(dataset_id) | {"beta": beta, "relabel_eval_goal": False}),  # the data's own rewards
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    start = time.perf_counter()
    model.learn_offline(args.updates, log_interval=0)
    train_s = time.perf_counter() - start
    result = {"dataset": dataset_id, "beta": beta, "updates": args.updates, "seed": args.seed, "train_s": train_s}
    result |= critic_statistics(model, args.batches, args.near_goal, args.far_from_goal)
    result |= rollout_statistics(model, dataset, args.eval_episodes, seed=10_000 + args.seed)
    return result


def write_markdown(path: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    columns = [
        ("dataset", "{}"),
        ("beta", "{:g}"),
        ("updates", "{:,}"),
        ("value_near_goal", "{:.1f}"),
        ("value_far_from_goal", "{:.1f}"),
        ("value_spread", "{:.2f}"),
        ("value_distance_spearman", "{:.2f}"),
        ("advantage_std", "{:.3f}"),
        ("advantage_action_norm_spearman", "{:.2f}"),
        ("advantage_speed_change_spearman", "{:.2f}"),
        ("clipped_weight_share", "{:.3f}"),
        ("batch_ess", "{:.3f}"),
        ("success_rate", "{:.2f}"),
        ("final_goal_distance_m", "{:.2f}"),
        ("path_length_m", "{:.1f}"),
    ]
    lines = [
        "# Advantage signal of IQL on PointMaze (`benchmarks/advantage_signal.py`)",
        "",
        f"Net {'x'.join(map(str, args.net_arch))}, seed {args.seed}, expectile 0.9, reward r - 1; critic statistics over "
        f"{args.batches} batches of 256 dataset transitions; evaluation over {args.eval_episodes} episodes. "
        f"Near = within {args.near_goal:g} m of the stored goal, far = beyond {args.far_from_goal:g} m.",
        "",
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for result in results:
        lines.append("| " + " | ".join(fmt.format(result[name]) for name, fmt in columns) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sb3_iql/pointmaze/large-stitch-v0", "sb3_iql/pointmaze/large-v0"])
    parser.add_argument("--betas", type=float, nargs="+", default=[10.0])
    parser.add_argument("--updates", type=int, default=30_000)
    parser.add_argument("--net-arch", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=40, help="dataset batches for the critic statistics")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--near-goal", type=float, default=1.0, help="distance to the stored goal (m) of near states")
    parser.add_argument("--far-from-goal", type=float, default=4.0, help="distance to the stored goal (m) of far states")
    parser.add_argument("--dataset-steps", type=int, default=1_000_000, help="size of generated PointMaze datasets")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/advantage_signal"))
    args = parser.parse_args()
    th.set_num_threads(1)
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else []
    for dataset_id in args.datasets:
        for beta in args.betas:
            key = (dataset_id, beta, args.updates, args.seed)
            if any((r["dataset"], r["beta"], r["updates"], r["seed"]) == key for r in results):
                continue
            result = diagnose(dataset_id, beta, args)
            print(json.dumps(result), flush=True)
            results.append(result)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=1) + "\n")
            write_markdown(args.out.with_suffix(".md"), results, args)


if __name__ == "__main__":
    main()
