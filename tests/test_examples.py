"""The examples run as written, with tiny budgets, on data they make in a temporary Minari root (no network)."""

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import gymnasium as gym
import minari
import numpy as np
import pytest
from maze_data import MAZE_ID, tiny_maze_root

from sb3_iql.datasets import RandomPolicy, collect

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 120
ANTMAZE_ID, ANTMAZE_ENV_ID = "D4RL/antmaze/large-diverse-v1", "AntMaze_Large_Diverse_GR-v4"
#: Evaluation episodes of the stand-in are cut short to keep the test fast.
ANTMAZE_EVAL_STEPS = 30


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield from tiny_maze_root(tmp_path_factory)


def run_example(name: str, *args: str, minari_root: pathlib.Path, cwd: pathlib.Path) -> str:
    """Run ``examples/<name>`` in a fresh interpreter; :return: its standard output"""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_offline_pointmaze(maze_root, tmp_path):
    log_dir = tmp_path / "run"
    output = run_example(
        "offline_pointmaze.py",
        *["--updates", "12", "--eval-freq", "6", "--eval-episodes", "1", "--log-dir", str(log_dir)],
        minari_root=maze_root,
        cwd=tmp_path,
    )
    assert f"{MAZE_ID}: 12 updates, mean return" in output and "normalized score" in output
    assert np.load(log_dir / "evaluations.npz")["timesteps"].tolist() == [6, 12]
    assert (log_dir / "iql_pointmaze.zip").is_file() and (log_dir / "progress.csv").is_file()
    short = tmp_path / "short"  # --eval-freq past --updates: no evaluations.npz nor best model before
    run_example("offline_pointmaze.py", *["--updates", "4", "--eval-episodes", "1", "--log-dir", str(short)],
                minari_root=maze_root, cwd=tmp_path)  # fmt: skip
    assert np.load(short / "evaluations.npz")["timesteps"].tolist() == [4] and (short / "best_model.zip").is_file()


def test_finetune_pointmaze(maze_root, tmp_path):
    output = run_example(
        "finetune_pointmaze.py",
        *["--updates", "6", "--online-steps", "10", "--eval-freq", "100", "--eval-episodes", "1"],
        minari_root=maze_root,
        cwd=tmp_path,
    )
    assert "after 6 offline updates" in output and "after 10 online steps" in output
    assert "replay buffer: 1210 transitions (1200 from the dataset)" in output


def test_from_numpy(tmp_path, monkeypatch):
    minari_root = tmp_path / "minari"
    output = run_example(
        "from_numpy.py",
        *["--n-steps", "450", "--updates", "5", "--eval-episodes", "1"],
        minari_root=minari_root,
        cwd=tmp_path,
    )
    # 200-step Pendulum episodes: two complete ones and an unfinished one, kept as truncated.
    assert "local/pendulum/pd-controller-v0: 3 episodes, 450 steps" in output and "IQL mean return" in output
    assert (minari_root / "local" / "pendulum" / "pd-controller-v0" / "data" / "main_data.hdf5").is_file()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    episodes = list(minari.load_dataset("local/pendulum/pd-controller-v0").iterate_episodes())
    behaviour = np.mean([episodes[0].rewards.sum(), episodes[1].rewards.sum()])  # the unfinished one left out
    assert f"(behaviour data: {behaviour:.1f} per finished episode)" in output
    with pytest.raises(AssertionError, match="exists already: pass --overwrite"):  # never deleted without asking
        run_example("from_numpy.py", "--n-steps", "450", "--updates", "1", minari_root=minari_root, cwd=tmp_path)


def test_from_numpy_cuts_episodes_where_the_observations_jump():
    """D4RL-style arrays with a reset that no flag marks: the next observation before it is kept, as an episode end
    (it was dropped, and the transition joined to the reset state)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        from from_numpy import arrays_to_episodes
    finally:
        sys.path.remove(str(EXAMPLES))
    observations = np.arange(12, dtype=np.float32).reshape(6, 2)
    next_observations = np.roll(observations, -1, axis=0)
    next_observations[2] = (9.0, 9.0)  # reset after row 2, unflagged
    flags = np.zeros(6, dtype=bool)
    arrays = dict(observations=observations, next_observations=next_observations, actions=np.zeros((6, 1)))
    arrays.update(rewards=np.zeros(6), terminals=flags, timeouts=flags)
    first, second = arrays_to_episodes(arrays)
    np.testing.assert_array_equal(first.observations, [[0, 1], [2, 3], [4, 5], [9, 9]])
    assert first.truncations.tolist() == [False, False, True] and not first.terminations.any()
    np.testing.assert_array_equal(second.observations[0], observations[3])


def test_collect_from_sb3(tmp_path):
    output = run_example(
        "collect_from_sb3.py",
        *["--train-steps", "40", "--n-steps", "250", "--updates", "5", "--reference-episodes", "1", "--eval-episodes", "1"],
        *["--save-agent", str(tmp_path / "sac.zip")],
        minari_root=tmp_path / "minari",
        cwd=tmp_path,
    )
    assert "local/pendulum/sac-noisy-v0: 2 episodes, 250 steps" in output and "normalized score" in output
    assert (tmp_path / "sac.zip").is_file()
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "OMP_NUM_THREADS": "1"}
    again = subprocess.run(  # replaced the dataset without a word before, after training SAC again
        [sys.executable, str(EXAMPLES / "collect_from_sb3.py"), "--train-steps", "40"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 2 and "local/pendulum/sac-noisy-v0 already exists" in again.stderr


def test_d4rl_antmaze_on_a_local_stand_in(tmp_path):
    """The D4RL script as a user runs it, with a local stand-in under the same id: minari finds it and downloads nothing."""
    minari_root = tmp_path / "minari"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
        env = gym.make(ANTMAZE_ENV_ID)
        short_eval_env = gym.make(ANTMAZE_ENV_ID, max_episode_steps=ANTMAZE_EVAL_STEPS)
        collect(
            env,
            RandomPolicy(env.action_space),
            ANTMAZE_ID,
            n_steps=100,
            eval_env=short_eval_env,
            ref_min_score=0.0,
            ref_max_score=1.0,
        )
    log_dir = tmp_path / "run"
    output = run_example(
        "d4rl_antmaze.py",
        *["--updates", "4", "--eval-freq", "2", "--eval-episodes", "1", "--log-dir", str(log_dir)],
        minari_root=minari_root,
        cwd=tmp_path,
    )
    assert f"{ANTMAZE_ID}: mean return" in output and "normalized score" in output
    assert np.load(log_dir / "evaluations.npz")["timesteps"].tolist() == [2, 4]
    assert (log_dir / "iql_antmaze.zip").is_file()
