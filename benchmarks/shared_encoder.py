"""
One image encoder per network (the default) against one shared encoder (``share_features_extractor=True``):
updates/s on 84x84x3 frames with NatureCNN, then returns on the tests' image toy (``ImageLineEnv``, 40 episodes
of mixed quality) for IQL and behaviour cloning, per seed. The figures of ``docs/guide/spaces.md``::

    python benchmarks/shared_encoder.py --seeds 0 1 2
"""

import argparse
import os
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from sb3_iql import IQL, evaluate
from sb3_iql.common.synthetic import SpacesEnv

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests")
#: Networks of the image toy (as the tests' SMALL_CNN).
TOY_POLICY_KWARGS = dict(net_arch=[32], features_extractor_kwargs=dict(features_dim=32))


def speed(share: bool, rounds: int = 3, n_updates: int = 10) -> float:
    """:return: updates/s (process CPU time, median of ``rounds``) on 1,000 random 84x84x3 frames"""
    rng = np.random.default_rng(0)
    env = SpacesEnv(spaces.Box(0, 255, (3, 84, 84), np.uint8), spaces.Box(-1.0, 1.0, (3,), np.float32))
    model = IQL("CnnPolicy", env, buffer_size=1000, policy_kwargs=dict(share_features_extractor=share), seed=0)
    for _ in range(10):
        frames = rng.integers(256, size=(101, 3, 84, 84), dtype=np.uint8)
        timeouts = np.zeros(100, np.float32)
        timeouts[-1] = 1.0
        actions, rewards = rng.uniform(-1, 1, (100, 3)).astype(np.float32), rng.normal(size=100).astype(np.float32)
        model.replay_buffer.extend(frames[:-1], frames[1:], actions, rewards, np.zeros(100, np.float32), timeouts)
    model.learn_offline(3, log_interval=0)
    rates = []
    for _ in range(rounds):
        start = time.process_time()
        model.learn_offline(n_updates, log_interval=0, reset_num_timesteps=False)
        rates.append(n_updates / (time.process_time() - start))
    return float(np.median(rates))


def toy_returns(seeds: list[int], n_updates: int) -> None:
    """Print the toy's mean return of IQL (beta 3) and BC (beta 0), both encoder layouts, per seed."""
    sys.path.insert(0, TESTS_DIR)
    os.environ["MINARI_DATASETS_PATH"] = tempfile.mkdtemp()
    from toy_data import IMAGE_LINE_ENV_ID, ImageLineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

    env = gym.make(IMAGE_LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=40)
    dataset = write_dataset("bench/line/image-mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)
    for seed in seeds:
        for share in (False, True):
            for beta in (3.0, 0.0):
                model = IQL(
                    "CnnPolicy",
                    ImageLineEnv(),
                    offline_dataset=dataset,
                    policy_kwargs={**TOY_POLICY_KWARGS, "share_features_extractor": share},
                    seed=seed,
                    batch_size=128,
                    offline_steps=n_updates,
                    beta=beta,
                )
                model.learn(0)
                env = ImageLineEnv()
                env.reset(seed=100 + seed)  # the protocol of the recorded figures: the episodes after this reset
                result = evaluate(model, env, n_eval_episodes=20)
                layout, method = "shared" if share else "separate", "IQL" if beta else "BC"
                print(f"seed {seed}, {layout} encoder, {method}: return {result.mean_return:.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=1500, help="offline updates of each toy run")
    args = parser.parse_args()
    th.set_num_threads(1)
    for share in (False, True):
        print(f"{'shared' if share else 'separate'} encoder: {speed(share):.2f} updates/s (84x84x3, NatureCNN)", flush=True)
    toy_returns(args.seeds, args.updates)
