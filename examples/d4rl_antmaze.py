"""
IQL on D4RL AntMaze from Minari, as in the paper (1M updates, expectile 0.9, beta 10, rewards r - 1), with the
D4RL-style normalized score. Needs network access the first time: the dataset (``D4RL/antmaze/large-diverse-v1``:
1M steps, about 605 MB) is downloaded to ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).

    python examples/d4rl_antmaze.py --updates 1000000 --device cuda
    python examples/d4rl_antmaze.py --dataset D4RL/antmaze/medium-play-v1 --finetune --online-steps 1000000

Minari's AntMaze datasets were regenerated with newer environments and their reference scores are episode returns,
not success rates: compare with the paper's numbers as a guide, side by side on the same data.
The same with rl-zoo: ``python -m sb3_iql.zoo train --dataset D4RL/antmaze/large-diverse-v1 --eval-episodes 100``.
"""

import argparse
import os
from collections.abc import Sequence

import minari
from stable_baselines3.common.logger import configure

from sb3_iql import IQL, evaluate
from sb3_iql.callbacks import NormalizedEvalCallback
from sb3_iql.common.arguments import non_negative_int, positive_int


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="D4RL/antmaze/large-diverse-v1")
    parser.add_argument("--updates", type=positive_int, default=1_000_000, help="offline gradient steps")
    parser.add_argument("--finetune", action="store_true", help="then fine-tune online (constant actor lr)")
    parser.add_argument("--online-steps", type=positive_int, default=1_000_000, help="environment steps when fine-tuning")
    parser.add_argument("--eval-freq", type=positive_int, default=50_000)
    parser.add_argument("--eval-episodes", type=positive_int, default=100, help="100 in the paper for AntMaze")
    parser.add_argument("--log-dir", default="runs/d4rl_antmaze")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    dataset = minari.load_dataset(args.dataset, download=True)
    env = dataset.recover_environment(eval_env=True)
    model = IQL(
        "MlpPolicy",
        env,
        offline_dataset=args.dataset,
        download_dataset=True,
        expectile=0.9,
        beta=10.0,
        reward_transform="antmaze",
        offline_steps=args.updates,
        actor_lr_schedule="constant" if args.finetune else "cosine",
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    model.set_logger(configure(args.log_dir, ["stdout", "csv", "tensorboard"]))
    evaluation = NormalizedEvalCallback(
        dataset=dataset, eval_freq=args.eval_freq, n_eval_episodes=args.eval_episodes, log_path=args.log_dir, verbose=0
    )
    # learn(0) runs the offline updates only; with --finetune, the online steps follow on the same replay buffer.
    model.learn(args.online_steps if args.finetune else 0, callback=evaluation, progress_bar=True)
    model.save(os.path.join(args.log_dir, "iql_antmaze"))

    result = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)
    print(f"{args.dataset}: mean return {result.mean_return:.3f}, normalized score {result.normalized_score:.1f}")


if __name__ == "__main__":
    main()
