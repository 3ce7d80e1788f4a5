"""
Offline IQL on a local PointMaze dataset, scored like D4RL (0 = random actions, 100 = the expert controller).

The dataset is generated on first use by ``sb3_iql.datasets`` (1M steps of a noisy waypoint controller, about
3 minutes) under ``$MINARI_DATASETS_PATH``; the ``-stitch`` variants store the evaluation goal everywhere, so reaching
it means stitching pieces of trajectories that were heading elsewhere, as in D4RL AntMaze.

    python examples/offline_pointmaze.py --updates 200000
    python examples/offline_pointmaze.py --dataset sb3_iql/pointmaze/medium-stitch-v0 --updates 1000000 --device cuda
    python -m sb3_iql.plotting runs/offline_pointmaze -o offline_pointmaze.png
"""

import argparse
import os
from collections.abc import Sequence

import torch as th
from stable_baselines3.common.logger import configure

from sb3_iql import IQL, evaluate
from sb3_iql.callbacks import NormalizedEvalCallback
from sb3_iql.common.arguments import non_negative_int, positive_int
from sb3_iql.datasets import ensure_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sb3_iql/pointmaze/umaze-stitch-v0", help="sb3_iql/pointmaze/... dataset id")
    parser.add_argument("--dataset-steps", type=positive_int, help="steps of the dataset when it is generated (default 1M)")
    parser.add_argument("--updates", type=positive_int, default=200_000, help="offline gradient steps")
    parser.add_argument("--eval-freq", type=positive_int, default=20_000, help="updates between two evaluations")
    parser.add_argument("--eval-episodes", type=positive_int, default=10)
    parser.add_argument("--log-dir", default="runs/offline_pointmaze", help="progress.csv, evaluations.npz, models")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    try:  # a malformed id, or a stored dataset of another size
        dataset = ensure_dataset(args.dataset, n_steps=args.dataset_steps)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    # The PointMaze preset: the paper's AntMaze settings (upper expectile 0.9, greedy extraction with beta 10,
    # rewards r - 1) with DDPG + AWR policy extraction (sb3_iql/hyperparams/iql.yml); policy_extraction="awr" for
    # the paper's AWR.
    model = IQL.from_preset(args.dataset, offline_steps=args.updates, seed=args.seed, device=args.device, verbose=1)
    model.set_logger(configure(args.log_dir, ["stdout", "csv"]))
    evaluation = NormalizedEvalCallback(
        dataset=dataset,
        eval_freq=min(args.eval_freq, args.updates),  # one evaluation at least (evaluations.npz, the best model)
        n_eval_episodes=args.eval_episodes,
        log_path=args.log_dir,
        best_model_save_path=args.log_dir,
        verbose=0,
    )
    model.learn_offline(callback=evaluation, log_interval=max(args.updates // 20, 1), progress_bar=True)
    model.save(os.path.join(args.log_dir, "iql_pointmaze"))

    result = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)
    print(
        f"{args.dataset}: {args.updates} updates, mean return {result.mean_return:.1f} +/- {result.std_return:.1f}, "
        f"normalized score {result.normalized_score:.1f}"
    )


if __name__ == "__main__":
    main()
