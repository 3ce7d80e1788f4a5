"""
The README's main job: offline IQL against behaviour cloning on a small PointMaze dataset, no network needed.

The dataset is the AntMaze-style "stitch" variant of PointMaze UMaze (every stored goal is the evaluation goal,
the behaviour wanders between random goals), generated on first use in a few seconds. IQL (expectile 0.9,
beta 10, reward r - 1: the paper's AntMaze settings) and behaviour cloning (the same policy, beta = 0) train for
the same number of updates; each is then evaluated on the dataset's evaluation environment.

    python examples/quickstart.py [--updates 20000] [--n-steps 100000] [--eval-episodes 20]
"""

import argparse
import time

import torch as th

from sb3_iql import IQL, evaluate
from sb3_iql.common.arguments import non_negative_int, positive_int
from sb3_iql.datasets import ensure_dataset
from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES

DATASET_ID = "sb3_iql/pointmaze/umaze-stitch-v0"


def train_and_evaluate(dataset, beta: float, args: argparse.Namespace) -> tuple[float, float, float]:
    """:return: normalized score (percent), mean return, seconds of training"""
    model = IQL(
        "MultiInputPolicy",
        env=None,  # recovered from the dataset
        offline_dataset=dataset,
        expectile=0.9,
        beta=beta,
        reward_transform="antmaze",
        offline_steps=args.updates,
        policy_kwargs=dict(net_arch=args.net_arch),
        seed=args.seed,
    )
    start = time.perf_counter()
    model.learn(0, progress_bar=True)  # `offline_steps` offline updates, no environment step
    seconds = time.perf_counter() - start
    result = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)
    return result.normalized_score, result.mean_return, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=positive_int, default=20_000, help="offline gradient steps per method")
    parser.add_argument("--n-steps", type=positive_int, default=100_000, help="dataset size (environment steps)")
    parser.add_argument("--eval-episodes", type=positive_int, default=20)
    parser.add_argument("--net-arch", type=positive_int, nargs="+", default=[64, 64], help="hidden widths of every network")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)

    # as the docs make it: the same size and reference scores (a dataset of an older version's demo is refused)
    try:  # a malformed id, or a stored dataset of another size
        dataset = ensure_dataset(DATASET_ID, n_steps=args.n_steps, n_reference_episodes=DEFAULT_N_REFERENCE_EPISODES)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"Dataset {DATASET_ID}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")
    rows = []
    for name, beta in (("IQL (beta=10)", 10.0), ("BC (beta=0)", 0.0)):
        print(f"Training {name} for {args.updates} offline updates")
        rows.append((name, *train_and_evaluate(dataset, beta, args)))

    print(f"\nNormalized score on {DATASET_ID} ({args.eval_episodes} episodes, seed {args.seed}; 0 = random, 100 = expert)")
    print(f"{'method':<16}{'normalized score':>18}{'mean return':>14}{'train time':>12}")
    for name, score, mean_return, seconds in rows:
        print(f"{name:<16}{score:>18.1f}{mean_return:>14.1f}{seconds:>11.0f}s")


if __name__ == "__main__":
    main()
