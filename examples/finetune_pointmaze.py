"""
Offline pre-training then online fine-tuning (the paper's AntMaze protocol) on a local PointMaze dataset.

One replay buffer holds the dataset and the online transitions; after the offline updates, each environment step
(a sampled action) is followed by one gradient step, with a constant actor learning rate and r - 1 rewards online
too. The settings come from the package's preset (``sb3_iql/hyperparams/iql.yml``, key
``sb3_iql/pointmaze/*:finetune``).

    python examples/finetune_pointmaze.py --updates 200000 --online-steps 100000
"""

import argparse
from collections.abc import Sequence

import torch as th

from sb3_iql import IQL, evaluate
from sb3_iql.callbacks import NormalizedEvalCallback
from sb3_iql.common.arguments import non_negative_int, positive_int
from sb3_iql.datasets import ensure_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sb3_iql/pointmaze/umaze-stitch-v0", help="sb3_iql/pointmaze/... dataset id")
    parser.add_argument("--dataset-steps", type=positive_int, help="steps of the dataset when it is generated (default 1M)")
    parser.add_argument("--updates", type=positive_int, default=200_000, help="offline gradient steps")
    parser.add_argument("--online-steps", type=positive_int, default=100_000, help="environment steps (one update each)")
    parser.add_argument(
        "--eval-freq",
        type=positive_int,
        default=20_000,
        help="callback steps between two evaluations: updates offline, environment steps online",
    )
    parser.add_argument("--eval-episodes", type=positive_int, default=10)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    try:  # a malformed id, or a stored dataset of another size
        dataset = ensure_dataset(args.dataset, n_steps=args.dataset_steps)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    # The environment defaults to the dataset's evaluation environment: the fixed goal of the benchmark.
    model = IQL.from_preset(args.dataset, finetune=True, offline_steps=args.updates, seed=args.seed, device=args.device)
    evaluation = NormalizedEvalCallback(
        dataset=dataset, eval_freq=args.eval_freq, n_eval_episodes=args.eval_episodes, verbose=0
    )

    model.learn_offline(callback=evaluation, progress_bar=True)
    offline = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)
    # learn() goes on from the offline updates (they have run, so it does not repeat them): online steps only.
    model.learn(args.online_steps, callback=evaluation, reset_num_timesteps=False, progress_bar=True)
    online = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)

    print(f"{args.dataset}: normalized score {offline.normalized_score:.1f} after {args.updates} offline updates")
    print(f"{args.dataset}: normalized score {online.normalized_score:.1f} after {args.online_steps} online steps")
    print(f"replay buffer: {model.replay_buffer.size()} transitions ({model.offline_dataset_size} from the dataset)")


if __name__ == "__main__":
    main()
