"""
Make an offline dataset from a trained SB3 agent, then train IQL on it.

A SAC agent learns ``Pendulum-v1`` for a while, ``sb3_iql.datasets.collect`` rolls it out with action noise into a
local Minari dataset (with reference scores: random actions = 0, the noiseless agent = 100), and IQL learns from
that data alone. The same collection from the command line, with a saved model::

    python -m sb3_iql.datasets collect --env Pendulum-v1 --algo sac --model sac_pendulum.zip \\
        --dataset-id local/pendulum/sac-noisy-v0 --n-steps 100000 --noise 0.3 --expert-model sac_pendulum.zip

    python examples/collect_from_sb3.py --train-steps 20000 --n-steps 100000 --updates 100000
"""

import argparse
from collections.abc import Sequence

import torch as th
from stable_baselines3 import SAC

from sb3_iql import IQL, evaluate
from sb3_iql.common.arguments import non_negative_int, positive_int
from sb3_iql.datasets import collect
from sb3_iql.datasets.storage import check_writable

ENV_ID = "Pendulum-v1"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", default="local/pendulum/sac-noisy-v0")
    parser.add_argument("--train-steps", type=positive_int, default=20_000, help="SAC environment steps")
    parser.add_argument("--n-steps", type=positive_int, default=100_000, help="transitions to collect")
    parser.add_argument("--noise", type=float, default=0.3, help="Gaussian action noise std, in half action ranges")
    parser.add_argument("--updates", type=positive_int, default=100_000, help="IQL offline gradient steps")
    parser.add_argument("--reference-episodes", type=positive_int, default=20, help="episodes per reference score")
    parser.add_argument("--eval-episodes", type=positive_int, default=10)
    parser.add_argument("--save-agent", help="also save the SAC agent here (.zip)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace a local dataset of the same id")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    try:  # before SAC trains
        check_writable(args.dataset_id, args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))

    agent = SAC("MlpPolicy", ENV_ID, learning_starts=min(1000, args.train_steps // 2), seed=args.seed)
    agent.learn(args.train_steps)
    if args.save_agent:
        agent.save(args.save_agent)

    dataset = collect(
        ENV_ID,
        agent,
        args.dataset_id,
        n_steps=args.n_steps,
        action_noise_std=args.noise,
        seed=args.seed,
        expert_policy=agent,
        n_reference_episodes=args.reference_episodes,
        overwrite=args.overwrite,
    )
    print(f"{args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")

    model = IQL("MlpPolicy", offline_dataset=dataset, offline_steps=args.updates, seed=args.seed)
    model.learn_offline(progress_bar=True)
    result = evaluate(model, dataset, n_eval_episodes=args.eval_episodes, seed=args.seed)
    print(f"IQL: mean return {result.mean_return:.1f}, normalized score {result.normalized_score:.1f} (SAC = 100)")


if __name__ == "__main__":
    main()
