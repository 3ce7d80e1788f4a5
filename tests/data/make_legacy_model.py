"""
Write the saved model of an older sb3_iql that ``tests/test_legacy_load.py`` loads with today's code.

Run it with the old version's package and tests folder (for ``toy_data``) first on the path, e.g. for commit
1a48893, from the repository root::

    git worktree add ../old_sb3iql 1a48893
    PYTHONPATH=../old_sb3iql:../old_sb3iql/tests python tests/data/make_legacy_model.py tests/data
    git worktree remove ../old_sb3iql

It trains IQL for a few updates on the line dataset of ``tests/test_iql.py`` (``line_dataset``), then saves the model
(no replay buffer) as ``iql_<commit>.zip`` and the deterministic actions of :data:`OBSERVATIONS` as
``iql_<commit>_predictions.npz``.
"""

import argparse
import os
import pathlib
import subprocess
import tempfile

import gymnasium as gym
import numpy as np
import torch as th
from toy_data import LINE_ENV_ID, LineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

import sb3_iql
from sb3_iql import IQL

N_UPDATES = 20
#: Fixed observations: positions across [-1, 1], goal 0.5, shape (8, 2).
OBSERVATIONS = np.stack([np.linspace(-1.0, 1.0, 8), np.full(8, 0.5)], axis=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("output", type=pathlib.Path, help="folder of the zip and the npz")
    args = parser.parse_args()
    th.set_num_threads(1)
    with tempfile.TemporaryDirectory() as minari_root:
        os.environ["MINARI_DATASETS_PATH"] = minari_root
        package = pathlib.Path(sb3_iql.__file__).parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True, check=True
        ).stdout.strip()
        env = gym.make(LINE_ENV_ID)
        episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=100)
        dataset = write_dataset("test/line/mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)
        model = IQL(
            "MlpPolicy",
            LineEnv(),
            offline_dataset=dataset,
            offline_steps=N_UPDATES,
            batch_size=64,
            policy_kwargs=dict(net_arch=[16, 16]),
            seed=0,
        )
        model.learn_offline(N_UPDATES)
        actions, _ = model.predict(OBSERVATIONS, deterministic=True)
        args.output.mkdir(parents=True, exist_ok=True)
        model.save(args.output / f"iql_{commit}.zip")
        np.savez(args.output / f"iql_{commit}_predictions.npz", observations=OBSERVATIONS, actions=actions)
        print(f"sb3_iql {sb3_iql.__version__} at {commit}: saved iql_{commit}.zip and iql_{commit}_predictions.npz")


if __name__ == "__main__":
    main()
