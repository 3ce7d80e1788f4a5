"""
Train IQL on your own data held in numpy arrays: write them as a local Minari dataset, then train on its id.

The arrays here are D4RL-style flat transitions (``observations``, ``actions``, ``rewards``, ``next_observations``,
``terminals``, ``timeouts``) from a noisy PD controller on ``Pendulum-v1``; replace ``make_arrays`` with your data.
Minari stores episodes, each with one observation more than actions: ``arrays_to_episodes`` cuts the flat arrays at
terminals and time limits. Terminals are true terminal states (no bootstrapping); time limits are not.

    python examples/from_numpy.py --n-steps 50000 --updates 50000
"""

import argparse
from collections.abc import Sequence

import gymnasium as gym
import minari
import numpy as np
import torch as th
from minari.data_collector import EpisodeBuffer
from stable_baselines3.common.monitor import Monitor

from sb3_iql import IQL, evaluate
from sb3_iql.common.arguments import non_negative_int, positive_int

ENV_ID = "Pendulum-v1"
#: PD gains of the behaviour controller (torque towards the upright position).
P_GAIN, D_GAIN = 10.0, 1.0
ACTION_NOISE_STD = 0.5


def make_arrays(n_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """:return: D4RL-style flat arrays of ``n_steps`` transitions, ``observations`` shape ``(n_steps, 3)``..."""
    env = gym.make(ENV_ID)
    rng = np.random.default_rng(seed)
    max_torque = float(env.action_space.high[0])
    data: dict[str, list] = {
        key: [] for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    }
    observation, _ = env.reset(seed=seed)
    for _ in range(n_steps):
        cos_theta, sin_theta, velocity = observation
        torque = -(P_GAIN * np.arctan2(sin_theta, cos_theta) + D_GAIN * velocity) + rng.normal(scale=ACTION_NOISE_STD)
        action = np.clip([torque], -max_torque, max_torque).astype(np.float32)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(data, (observation, action, reward, next_observation, terminated, truncated)):
            data[key].append(value)
        observation = env.reset()[0] if terminated or truncated else next_observation
    return {key: np.asarray(values) for key, values in data.items()}


def arrays_to_episodes(arrays: dict[str, np.ndarray]) -> list[EpisodeBuffer]:
    """
    Cut flat transition arrays into Minari episodes (observations ``(n + 1, ...)``, the rest ``(n, ...)``).

    An episode also ends where a transition's next observation is not the next transition's observation (a reset no
    flag marks, as the IQL reference code detects it), marked truncated; an unfinished last episode is kept, marked
    truncated.
    """
    ends = arrays["terminals"].astype(bool) | arrays["timeouts"].astype(bool)
    if len(ends) > 1:
        gaps = (arrays["observations"][1:] - arrays["next_observations"][:-1]).reshape(len(ends) - 1, -1)
        ends[:-1] |= np.linalg.norm(gaps, axis=1) > 1e-6
    ends[-1] = True
    episodes, start = [], 0
    for episode_id, end in enumerate(np.flatnonzero(ends)):
        rows = slice(start, end + 1)
        truncations = arrays["timeouts"][rows].astype(bool)
        truncations[-1] |= not arrays["terminals"][end]
        episodes.append(
            EpisodeBuffer(
                id=episode_id,
                observations=np.concatenate([arrays["observations"][rows], arrays["next_observations"][end][None]]),
                actions=arrays["actions"][rows],
                rewards=arrays["rewards"][rows],
                terminations=arrays["terminals"][rows].astype(bool),
                truncations=truncations,
                infos={},
            )
        )
        start = end + 1
    return episodes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", default="local/pendulum/pd-controller-v0")
    parser.add_argument("--n-steps", type=positive_int, default=50_000, help="transitions in the arrays")
    parser.add_argument("--updates", type=positive_int, default=50_000, help="offline gradient steps")
    parser.add_argument("--eval-episodes", type=positive_int, default=10)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace a local dataset of the same id")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    arrays = make_arrays(args.n_steps, args.seed)
    if args.dataset_id in minari.list_local_datasets():
        if not args.overwrite:
            parser.error(f"a local dataset {args.dataset_id} exists already: pass --overwrite to replace it")
        minari.delete_dataset(args.dataset_id)
    episodes = arrays_to_episodes(arrays)
    dataset = minari.create_dataset_from_buffers(
        dataset_id=args.dataset_id,
        buffer=episodes,
        env=ENV_ID,  # stores the spec: IQL and evaluate() can rebuild the environment
        algorithm_name="noisy PD controller",
        description="Example: flat numpy transitions written with minari.create_dataset_from_buffers",
    )
    print(f"{args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")

    model = IQL("MlpPolicy", offline_dataset=args.dataset_id, offline_steps=args.updates, seed=args.seed, verbose=0)
    model.learn_offline(progress_bar=True)
    result = evaluate(model, Monitor(gym.make(ENV_ID)), n_eval_episodes=args.eval_episodes, seed=args.seed)
    finished = episodes if arrays["terminals"][-1] or arrays["timeouts"][-1] else episodes[:-1]
    behaviour = np.mean([episode.rewards.sum() for episode in finished]) if finished else float("nan")
    print(
        f"IQL mean return {result.mean_return:.1f} +/- {result.std_return:.1f} (behaviour data: {behaviour:.1f} per "
        f"finished episode)"
    )


if __name__ == "__main__":
    main()
