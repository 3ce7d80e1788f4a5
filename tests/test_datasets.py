"""Dataset generators and writers: every dataset is written under a temporary MINARI_DATASETS_PATH."""

import dataclasses
import itertools
import os
import pathlib
import subprocess
import sys
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv
from minari.storage import get_dataset_path
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_iql.datasets import (
    MAZES,
    WaypointController,
    collect,
    dataset_exists,
    dataset_from_replay_buffer,
    ensure_dataset,
    generated,
    make_pointmaze_dataset,
    make_pointmaze_env,
    medium_expert,
    medium_expert_dataset_id,
    parse_pointmaze_dataset_id,
    pointmaze,
    pointmaze_dataset_id,
    replay,
    storage,
    write_dataset,
)
from sb3_iql.datasets.__main__ import main
from sb3_iql.datasets.collect import reference_scores, rollout_episodes, write_episodes
from sb3_iql.datasets.pixels import make_pixel_pointmaze_dataset
from sb3_iql.evaluation import dataset_reference_scores

th.set_num_threads(1)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# InvertedPendulum: Box observations, actions in [-3, 3], terminates once the pole tilts more than 0.2 rad
PENDULUM_ID = "InvertedPendulum-v5"
PENDULUM_MAX_ANGLE = 0.2
N_MAZE_STEPS = 700
N_REFERENCE_EPISODES = 2


def episodes_of(dataset_id: str) -> list[minari.EpisodeData]:
    return list(minari.load_dataset(dataset_id).iterate_episodes())


def assert_single_end_flag(episode: minari.EpisodeData) -> None:
    """Every episode ends exactly once, at its last step, by termination or truncation (not both)."""
    ends = episode.terminations | episode.truncations
    assert not ends[:-1].any() and ends[-1]
    assert not (episode.terminations[-1] and episode.truncations[-1])


@pytest.mark.parametrize(("maze", "reward"), [("umaze", "sparse"), ("medium", "dense"), ("large", "sparse")])
def test_pointmaze_dataset(minari_root: pathlib.Path, maze: str, reward: str) -> None:
    dataset = make_pointmaze_dataset(maze, reward, n_steps=N_MAZE_STEPS, n_reference_episodes=N_REFERENCE_EPISODES)
    dataset_id = pointmaze_dataset_id(maze, reward)
    assert dataset_exists(dataset_id)
    dataset = minari.load_dataset(dataset_id)
    episode_length = MAZES[maze].episode_length
    assert dataset.total_steps == N_MAZE_STEPS
    assert dataset.total_episodes == -(-N_MAZE_STEPS // episode_length)
    assert set(dataset.observation_space.spaces) == {"observation", "achieved_goal", "desired_goal"}

    # Reference scores: the noiseless controller beats random actions on the fixed-goal evaluation env
    metadata = dataset.storage.metadata
    assert metadata["ref_max_score"] > metadata["ref_min_score"]
    eval_spec = dataset.recover_environment(eval_env=True).spec
    goal_row, goal_col = MAZES[maze].eval_goal_cell
    assert eval_spec.kwargs["reset_target"] is False and eval_spec.kwargs["maze_map"][goal_row][goal_col] == "g"
    assert dataset.recover_environment().spec.kwargs["reset_target"] is True

    maze_env = make_pointmaze_env(maze, reward).unwrapped
    episodes = list(dataset.iterate_episodes())
    for index, episode in enumerate(episodes):
        assert len(episode) == min(episode_length, N_MAZE_STEPS - index * episode_length)
        assert not episode.terminations.any() and episode.truncations[-1] and not episode.truncations[:-1].any()
        observations = episode.observations
        np.testing.assert_array_equal(observations["achieved_goal"], observations["observation"][:, :2])
        expected_rewards = maze_env.compute_reward(observations["achieved_goal"][1:], observations["desired_goal"][1:], {})
        np.testing.assert_allclose(episode.rewards, expected_rewards)
        assert np.all(np.abs(episode.actions) <= 1.0)
    # One continuing run, cut into episodes: each episode starts where the previous one stopped
    for previous, following in itertools.pairwise(episodes):
        np.testing.assert_array_equal(previous.observations["observation"][-1], following.observations["observation"][0])


@pytest.mark.parametrize("maze", list(MAZES))
def test_pointmaze_data_matches_env_step(minari_root: pathlib.Path, maze: str) -> None:
    """The fast stepping loop reproduces env.step bit for bit, goal changes included."""
    make_pointmaze_dataset(maze, n_steps=N_MAZE_STEPS, seed=3, n_reference_episodes=1)
    env = make_pointmaze_env(maze).unwrapped
    env.reset(seed=3)
    n_goals = 0
    for episode in episodes_of(pointmaze_dataset_id(maze)):
        for step, action in enumerate(episode.actions):
            observation, reward, terminated, truncated, _ = env.step(action)
            for key, value in observation.items():
                np.testing.assert_array_equal(value, episode.observations[key][step + 1])
            assert reward == episode.rewards[step] and not terminated and not truncated
        n_goals += len(np.unique(episode.observations["desired_goal"], axis=0))
    assert n_goals > 1, "the controller should reach goals and get new ones"


def test_pointmaze_stitch(minari_root: pathlib.Path) -> None:
    """Same behaviour as the default variant, but the stored goal is the evaluation goal and rewards follow it."""
    kwargs = dict(maze="umaze", reward="sparse", n_steps=N_MAZE_STEPS, seed=1, n_reference_episodes=N_REFERENCE_EPISODES)
    make_pointmaze_dataset(stitch=False, **kwargs)
    make_pointmaze_dataset(stitch=True, **kwargs)
    assert parse_pointmaze_dataset_id("sb3_iql/pointmaze/umaze-stitch-v0") == ("umaze", "sparse", True, None)
    assert parse_pointmaze_dataset_id("sb3_iql/pointmaze/large-dense-play-v0") == ("large", "dense", False, "play")
    maze_env = make_pointmaze_env("umaze").unwrapped
    eval_goal = maze_env.maze.cell_rowcol_to_xy(np.array(MAZES["umaze"].eval_goal_cell))
    plain, stitch = episodes_of("sb3_iql/pointmaze/umaze-v0"), episodes_of("sb3_iql/pointmaze/umaze-stitch-v0")
    assert any(not np.allclose(episode.observations["desired_goal"], eval_goal) for episode in plain)
    for plain_episode, stitch_episode in zip(plain, stitch, strict=True):
        np.testing.assert_array_equal(plain_episode.actions, stitch_episode.actions)
        np.testing.assert_array_equal(plain_episode.observations["observation"], stitch_episode.observations["observation"])
        np.testing.assert_array_equal(
            stitch_episode.observations["desired_goal"], np.broadcast_to(eval_goal, (len(stitch_episode) + 1, 2))
        )
        expected = maze_env.compute_reward(stitch_episode.observations["achieved_goal"][1:], eval_goal, {})
        np.testing.assert_array_equal(stitch_episode.rewards, expected)
    assert sum(episode.rewards.sum() for episode in stitch) > 0, "the behaviour passes through the evaluation goal"


def test_pointmaze_deterministic_by_seed(minari_root: pathlib.Path) -> None:
    def actions(seed: int, dataset_id: str) -> np.ndarray:
        dataset = make_pointmaze_dataset(n_steps=N_MAZE_STEPS, seed=seed, n_reference_episodes=1, dataset_id=dataset_id)
        return np.concatenate([episode.actions for episode in dataset.iterate_episodes()])

    first = actions(0, "test/maze/a-v0")
    np.testing.assert_array_equal(first, actions(0, "test/maze/b-v0"))
    assert not np.array_equal(first, actions(1, "test/maze/c-v0"))


def test_waypoint_controller_reaches_far_goal() -> None:
    """Noiseless controller through the gymnasium API: reaches the fixed goal of the large maze and stays there."""
    env = make_pointmaze_env("large", evaluation=True)
    controller = WaypointController(env.unwrapped.maze)
    observation, _ = env.reset(seed=0)
    truncated = False
    while not truncated:
        observation, _, terminated, truncated, info = env.step(controller(observation))
        assert not terminated
    assert info["success"]


def test_next_cell_table_follows_free_cells() -> None:
    maze = make_pointmaze_env("large").unwrapped.maze
    controller = WaypointController(maze)
    goal = MAZES["large"].eval_goal_cell
    table = controller.next_cell_table(goal)
    free_cells = [(row, col) for row, line in enumerate(maze.maze_map) for col, cell in enumerate(line) if cell != 1]
    assert set(table) == set(free_cells)
    for cell in free_cells:
        for _ in range(len(free_cells)):
            following = table[cell]
            assert following == goal or abs(following[0] - cell[0]) + abs(following[1] - cell[1]) == 1
            cell = following
        assert cell == goal


def test_ensure_dataset(minari_root: pathlib.Path) -> None:
    dataset_id = "sb3_iql/pointmaze/umaze-stitch-v0"
    created = ensure_dataset(dataset_id, n_steps=N_MAZE_STEPS, n_reference_episodes=1)
    assert created.total_steps == N_MAZE_STEPS
    data_file = next((minari_root / dataset_id / "data").iterdir())
    modified = data_file.stat().st_mtime_ns
    assert ensure_dataset(dataset_id).total_steps == N_MAZE_STEPS
    assert data_file.stat().st_mtime_ns == modified, "an existing dataset is loaded, not regenerated"
    with pytest.raises(ValueError, match="has 700 steps"):
        ensure_dataset(dataset_id, n_steps=2 * N_MAZE_STEPS)
    # reference scores of another count (an older version's demo dataset), where one is asked for: refused
    assert ensure_dataset(dataset_id, n_reference_episodes=1).total_steps == N_MAZE_STEPS
    with pytest.raises(ValueError, match="reference scores average 1 episodes, not 100: it normalizes scores otherwise"):
        ensure_dataset(dataset_id, n_reference_episodes=100)
    with pytest.raises(FileNotFoundError, match="'D4RL/pointmaze/umaze-v2' is not stored locally"):  # not generated
        ensure_dataset("D4RL/pointmaze/umaze-v2")
    assert not (minari_root / "D4RL").exists()


def test_pointmaze_bad_input(minari_root: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="Unknown maze"):
        make_pointmaze_dataset("huge")
    with pytest.raises(ValueError, match="Unknown reward"):
        make_pointmaze_dataset("umaze", reward="shaped")
    with pytest.raises(ValueError, match="not a PointMaze dataset id"):
        parse_pointmaze_dataset_id("sb3_iql/pointmaze/huge-v0")
    make_pointmaze_dataset(n_steps=10, n_reference_episodes=1)
    with pytest.raises(FileExistsError, match="already exists"):
        make_pointmaze_dataset(n_steps=10, n_reference_episodes=1)
    assert make_pointmaze_dataset(n_steps=20, n_reference_episodes=1, overwrite=True).total_steps == 20


def test_collect_terminations_and_noise_clipping(minari_root: pathlib.Path) -> None:
    """Random-length episodes that really terminate; the last one cut by n_steps is truncated; noisy actions stay in bounds."""
    env = gym.make(PENDULUM_ID)
    high = env.action_space.high
    n_steps = 200
    collect(env, lambda observation: high, "test/pendulum/noisy-v0", n_steps=n_steps, action_noise_std=0.5, seed=0)
    episodes = episodes_of("test/pendulum/noisy-v0")
    assert sum(len(episode) for episode in episodes) == n_steps
    assert sum(episode.terminations[-1] for episode in episodes) >= 2
    for episode in episodes:
        assert_single_end_flag(episode)
        final_angle = abs(episode.observations[-1, 1])
        assert episode.terminations[-1] == (final_angle > PENDULUM_MAX_ANGLE)
    assert episodes[-1].truncations[-1] or episodes[-1].terminations[-1]
    actions = np.concatenate([episode.actions for episode in episodes])
    assert np.all(actions <= high) and np.all(actions >= env.action_space.low)
    assert np.mean(actions == high) > 0.3 and np.mean(actions < high) > 0.3, "noise, then clipped to the bound"


def test_collect_round_trip_sb3_model(minari_root: pathlib.Path) -> None:
    """Stored data replays exactly in the environment; an SB3 model as policy and as expert for the reference score."""
    model = TD3("MlpPolicy", PENDULUM_ID, seed=0, device="cpu")
    dataset = collect(
        PENDULUM_ID, model, "test/pendulum/td3-v0", n_episodes=3, seed=5, expert_policy=model, n_reference_episodes=2
    )
    assert dataset.total_episodes == 3
    assert {"ref_min_score", "ref_max_score"} <= set(dataset.storage.metadata)
    assert dataset.storage.metadata["num_episodes_average_score"] == 2, "Minari's default, 100, was stored before"
    env = gym.make(PENDULUM_ID)
    for index, episode in enumerate(dataset.iterate_episodes()):
        assert_single_end_flag(episode)
        observation, _ = env.reset(seed=5 if index == 0 else None)
        np.testing.assert_array_equal(observation, episode.observations[0])
        for step, action in enumerate(episode.actions):
            np.testing.assert_array_equal(action, model.predict(episode.observations[step], deterministic=True)[0])
            observation, reward, *_ = env.step(action)
            np.testing.assert_array_equal(observation, episode.observations[step + 1])
            assert reward == episode.rewards[step]


def test_collect_normalises_observations_as_a_vec_normalize_model_trained(minari_root: pathlib.Path) -> None:
    """A model trained in a VecNormalize acted on raw observations, without a word; a VecEnv failed in gym.make."""
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(PENDULUM_ID)] * 2))  # rl-zoo trains with several envs too
    venv.obs_rms.mean[:], venv.obs_rms.var[:] = 0.5, 4.0
    model = TD3("MlpPolicy", venv, seed=0, device="cpu")
    dataset = collect(
        PENDULUM_ID, model, "test/pendulum/vecnorm-v0", n_episodes=1, seed=5, expert_policy=model, n_reference_episodes=1
    )
    episode = next(dataset.iterate_episodes())
    for step in (0, 7):
        normalised = np.clip((episode.observations[step] - 0.5) / np.sqrt(4.0 + 1e-8), -10.0, 10.0)
        np.testing.assert_allclose(episode.actions[step], model.predict(normalised, deterministic=True)[0], rtol=1e-6)
        assert not np.allclose(episode.actions[step], model.predict(episode.observations[step], deterministic=True)[0])
    with pytest.raises(TypeError, match="collected in one environment, not a VecNormalize"):
        collect(venv, model, "test/pendulum/vecenv-v0", n_steps=5)
    model.save(minari_root / "td3")  # and from files, as rl-zoo leaves them: the model's 2 envs are no obstacle
    venv.save(str(minari_root / "vecnormalize.pkl"))
    files = ["--algo", "td3", "--model", str(minari_root / "td3"), "--vec-normalize", str(minari_root / "vecnormalize.pkl")]
    expert = ["--expert-model", str(minari_root / "td3"), "--expert-vec-normalize", str(minari_root / "vecnormalize.pkl")]
    arguments = ["--env", PENDULUM_ID, "--seed", "5", "--n-episodes", "1", "--n-reference-episodes", "1", *files, *expert]
    main(["collect", "--dataset-id", "test/pendulum/cli-v0", *arguments])
    from_files = minari.load_dataset("test/pendulum/cli-v0")
    np.testing.assert_array_equal(next(from_files.iterate_episodes()).actions, episode.actions)
    assert from_files.storage.metadata["ref_max_score"] == dataset.storage.metadata["ref_max_score"]  # the expert too


def test_collect_dict_observations(minari_root: pathlib.Path) -> None:
    """Dict observations; a goal-reaching controller in a maze that terminates at the goal."""
    env = gym.make("PointMaze_UMaze-v3", continuing_task=False)
    controller = WaypointController(env.unwrapped.maze)
    dataset = collect(env, controller, "test/maze/dict-v0", n_episodes=2, seed=0)
    assert isinstance(dataset.observation_space, gym.spaces.Dict)
    for episode in dataset.iterate_episodes():
        assert_single_end_flag(episode)
        assert episode.terminations[-1], "the controller reaches the goal before the time limit"
        for key in ("observation", "achieved_goal", "desired_goal"):
            assert len(episode.observations[key]) == len(episode) + 1


def test_collect_bad_input(minari_root: pathlib.Path) -> None:
    env = gym.make(PENDULUM_ID)
    policy = env.action_space.sample
    with pytest.raises(ValueError, match="exactly one of n_steps and n_episodes"):
        rollout_episodes(env, lambda observation: policy(), n_steps=10, n_episodes=1)
    with pytest.raises(ValueError, match="exactly one of n_steps and n_episodes"):
        collect(env, lambda observation: policy(), "test/pendulum/none-v0")
    with pytest.raises(ValueError, match="not both"):
        collect(env, lambda observation: policy(), "test/pendulum/refs-v0", n_steps=5, ref_max_score=1.0, expert_policy=policy)
    with pytest.raises(ValueError, match="needs ref_max_score"):
        collect(env, lambda observation: policy(), "test/pendulum/refs-v0", n_steps=5, ref_min_score=0.0)
    with pytest.raises(ValueError, match="bounded Box"):
        collect("CartPole-v1", lambda observation: 0, "test/cartpole/noise-v0", n_steps=5, action_noise_std=0.1)
    with pytest.raises(TypeError, match="predict"):
        collect(env, 3, "test/pendulum/policy-v0", n_steps=5)
    for malformed in ("pendulum_random", "test/pendulum", "test/pendulum/random-vX"):  # Minari: a TypeError, a ValueError
        with pytest.raises(ValueError, match=r"Malformed dataset id .* \[namespace/\]name-vN"):
            collect(env, lambda observation: policy(), malformed, n_steps=5)
    gym.register("LambdaPendulum-v0", entry_point=lambda: PendulumEnv(), max_episode_steps=20)  # a spec JSON cannot hold

    def not_called(observation: np.ndarray) -> np.ndarray:
        raise AssertionError("the refusal comes before the rollouts (it came after all of them)")

    with pytest.raises(ValueError, match=r"spec of environment LambdaPendulum-v0 cannot be stored .* 'module:Class'"):
        collect("LambdaPendulum-v0", not_called, "test/pendulum/lambda-v0", n_steps=5)
    assert not any(minari_root.rglob("data")), "failed calls leave nothing behind"


def test_episodes_minari_would_not_read_back_are_refused_before_writing(minari_root: pathlib.Path) -> None:
    env = gym.make(PENDULUM_ID)
    good = rollout_episodes(env, lambda observation: env.action_space.sample(), n_episodes=1)[0]
    n, width = good.observations.shape
    n -= 1
    cases = [
        (dataclasses.replace(good, actions=good.actions[:0], rewards=[], terminations=[], truncations=[]), "holds no step"),
        (dataclasses.replace(good, rewards=good.rewards[:-1]), rf"rewards holds {n - 1} steps for {n} actions"),
        (
            dataclasses.replace(good, observations=good.observations[:-1]),
            rf"have shape \({n}, {width}\): expected \({n + 1}, {width}\)",
        ),
        (
            dataclasses.replace(good, observations={"x": good.observations}),
            rf"have shape of a dict: expected \({n + 1}, {width}\)",
        ),
    ]
    for episode, message in cases:  # a bare IndexError or AssertionError inside Minari, or a dataset that fails to load
        with pytest.raises(ValueError, match=rf"Episode 1 \(id 0\).*{message}"):
            write_dataset("test/pendulum/bad-v0", [good, episode], env=env)
    goal_env = gym.make("PointMaze_UMaze-v3")
    observation, _ = goal_env.reset(seed=0)
    rows = {key: np.stack([value] * 3) for key, value in observation.items()}
    extra = dataclasses.replace(
        good,
        observations={**rows, "extra": rows["achieved_goal"]},
        actions=good.actions[:2],
        rewards=good.rewards[:2],
        terminations=good.terminations[:2],
        truncations=good.truncations[:2],
    )
    with pytest.raises(
        ValueError, match=r"observations have keys \['achieved_goal', 'desired_goal', 'extra', 'observation'\]"
    ):
        write_dataset("test/pointmaze/extra-v0", [extra], env=goal_env)
    assert not any(minari_root.rglob("data")), "refused before writing"
    flat = dataclasses.replace(good, observations=good.observations[:, :1].ravel())  # flat rows of one value
    one_value = gym.make(PENDULUM_ID)
    one_value.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float64)
    written = write_dataset("test/pendulum/flat-v0", (episode for episode in [good, flat][1:]), env=one_value)
    assert written.total_episodes == 1  # episodes from a generator are written, not consumed by the checks


def test_a_sampling_sb3_policy_rolls_out_the_same_actions_for_the_same_seed() -> None:
    model = SAC("MlpPolicy", PENDULUM_ID, policy_kwargs={"net_arch": [8]}, seed=0)

    def actions(seed: int) -> np.ndarray:
        episodes = rollout_episodes(gym.make(PENDULUM_ID), model, n_steps=20, seed=seed, deterministic=False)
        return episodes[0].actions

    state = th.random.get_rng_state()
    np.testing.assert_array_equal(actions(1), actions(1))
    assert not np.array_equal(actions(1), actions(2))
    assert th.equal(th.random.get_rng_state(), state)  # the caller's generator is left as it was


def test_toy_text_envs_step_with_a_scalar_action() -> None:
    """FrozenLake indexes its transition table with the action: a 0-d array there is unhashable."""
    env = gym.make("FrozenLake-v1")
    episodes = rollout_episodes(env, lambda observation: env.action_space.sample(), n_steps=30, epsilon=0.5)
    actions = np.concatenate([episode.actions for episode in episodes])
    assert len(actions) == 30 and actions.dtype == env.action_space.dtype and set(actions) <= {0, 1, 2, 3}


def test_failed_write_leaves_no_folder(minari_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset_id = "test/pendulum/failed-v0"
    episodes = rollout_episodes(gym.make(PENDULUM_ID), lambda observation: np.zeros(1), n_episodes=1)

    def create_then_fail(dataset_id: str, *args: object, **kwargs: object) -> None:
        # where Minari writes: half a dataset, metadata included, then the failure
        data = get_dataset_path(dataset_id) / "data"
        data.mkdir(parents=True)
        (data / "metadata.json").write_text("{}")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(minari, "create_dataset_from_buffers", create_then_fail)
        with pytest.raises(RuntimeError, match="disk full"):
            write_dataset(dataset_id, episodes, gym.make(PENDULUM_ID))
    assert not (minari_root / dataset_id).exists()
    assert not list(minari_root.parent.glob(".sb3_iql-writing-*")), "no staging folder left"
    # A leftover empty data folder (from a failed create elsewhere) does not block the id either
    (minari_root / dataset_id / "data").mkdir(parents=True)
    assert write_dataset(dataset_id, episodes, gym.make(PENDULUM_ID)).total_episodes == 1


CRASHING_WRITE = """
import os, gymnasium as gym, minari, numpy as np
from minari.storage import get_dataset_path
from sb3_iql.datasets import write_dataset
from sb3_iql.datasets import medium_expert
from sb3_iql.datasets.collect import rollout_episodes

def create_then_crash(dataset_id, *args, **kwargs):
    data = get_dataset_path(dataset_id) / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text("{}")
    (data / "main_data.hdf5").write_bytes(b"half a file")
    os._exit(3)  # killed mid-write: no exception handler, no cleanup runs

minari.create_dataset_from_buffers = create_then_crash
episodes = rollout_episodes(gym.make("InvertedPendulum-v5"), lambda observation: np.zeros(1), n_episodes=1)
write_dataset("test/pendulum/crashed-v0", episodes, gym.make("InvertedPendulum-v5"))
"""


def test_a_crash_during_a_write_leaves_no_dataset_under_the_id(minari_root: pathlib.Path) -> None:
    environment = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITE], env=environment, capture_output=True, timeout=120)
    assert crashed.returncode == 3, crashed.stderr.decode()[-2000:]
    dataset_id = "test/pendulum/crashed-v0"
    assert not dataset_exists(dataset_id) and not (minari_root / dataset_id).exists()
    assert dataset_id not in minari.list_local_datasets()
    # the dead writer's staging folder, beside the datasets root, is removed (and reported) by the next write
    (staging,) = minari_root.parent.glob(".sb3_iql-writing-*")
    episodes = rollout_episodes(gym.make(PENDULUM_ID), lambda observation: np.zeros(1), n_episodes=1)
    with pytest.warns(UserWarning, match=f"Removed {staging}: a dataset generation .* crashed"):
        assert write_dataset(dataset_id, episodes, gym.make(PENDULUM_ID)).total_episodes == 1  # no "already exists"
    assert not staging.exists() and not list(minari_root.parent.glob(".sb3_iql-writing-*"))


CRASHING_OVERWRITE = """
import os, gymnasium as gym, numpy as np
from sb3_iql.datasets import storage, write_dataset
from sb3_iql.datasets.collect import rollout_episodes

rename = storage._rename

def rename_then_crash(source, destination):
    rename(source, destination)
    if storage._REPLACED in str(destination):
        os._exit(3)  # killed once the old dataset is moved aside, before the new one is in place

storage._rename = rename_then_crash
episodes = rollout_episodes(gym.make("InvertedPendulum-v5"), lambda observation: np.zeros(1), n_episodes=2)
write_dataset("test/pendulum/replaced-v0", episodes, gym.make("InvertedPendulum-v5"), overwrite=True)
"""


def test_an_overwrite_that_crashes_or_loses_a_race_loses_no_dataset(minari_root: pathlib.Path, monkeypatch) -> None:
    episodes = rollout_episodes(gym.make(PENDULUM_ID), lambda observation: np.zeros(1), n_episodes=1)
    write_dataset("test/pendulum/replaced-v0", episodes, gym.make(PENDULUM_ID))  # 1 episode, then overwritten
    environment = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}
    crashed = subprocess.run([sys.executable, "-c", CRASHING_OVERWRITE], env=environment, capture_output=True, timeout=120)
    assert crashed.returncode == 3, crashed.stderr.decode()[-2000:]
    assert not dataset_exists("test/pendulum/replaced-v0")  # deleted before the new one was moved in, before
    with pytest.warns(UserWarning, match="Restored dataset test/pendulum/replaced-v0: a writer replacing it crashed"):
        write_dataset("test/pendulum/other-v0", episodes, gym.make(PENDULUM_ID))  # any write cleans up the dead
    assert minari.load_dataset("test/pendulum/replaced-v0").total_episodes == 1
    # Another process writes the id while this one generates: its dataset is kept (it was deleted silently).
    create = minari.create_dataset_from_buffers
    theirs = rollout_episodes(gym.make(PENDULUM_ID), lambda observation: np.zeros(1), n_episodes=2)

    def another_writer_first(dataset_id: str, *args: object, **kwargs: object) -> object:
        with storage._datasets_root(minari_root):
            create("test/pendulum/raced-v0", theirs, env=gym.make(PENDULUM_ID))
        return create(dataset_id, *args, **kwargs)

    monkeypatch.setattr(minari, "create_dataset_from_buffers", another_writer_first)
    with pytest.raises(FileExistsError, match="written by another process meanwhile: it is kept"):
        write_dataset("test/pendulum/raced-v0", episodes, gym.make(PENDULUM_ID))
    assert minari.load_dataset("test/pendulum/raced-v0").total_episodes == 2


def test_ensure_dataset_says_why_an_id_is_neither_stored_nor_generated(minari_root: pathlib.Path) -> None:
    from sb3_iql.data import DatasetNotFoundError

    with pytest.raises(ValueError, match=r"'sb3_iql/pointmaze/foo-stitch-v0' is not a PointMaze dataset id"):
        ensure_dataset("sb3_iql/pointmaze/foo-stitch-v0")  # Minari's "Use download=True" before
    with pytest.raises(DatasetNotFoundError, match=r"'sb3_iql/hopper/mediun-v0' is not stored locally: searched"):
        ensure_dataset("sb3_iql/hopper/mediun-v0")


def test_ensure_dataset_takes_the_dataset_another_process_made_meanwhile(minari_root, monkeypatch) -> None:
    make = generated.make_pointmaze_dataset

    def another_process_first(*args: object, **kwargs: object) -> object:
        make(*args, **kwargs)  # the other process's, finished first
        return make(*args, **kwargs)  # this one's: refused at the end, theirs kept

    monkeypatch.setattr(generated, "make_pointmaze_dataset", another_process_first)
    assert ensure_dataset("sb3_iql/pointmaze/umaze-v0", n_steps=300, n_reference_episodes=1).total_steps == 300


def test_dataset_from_replay_buffer(minari_root: pathlib.Path) -> None:
    """SAC's buffer (scaled actions, terminations, time-outs) becomes episodes with the right flags and actions."""
    n_steps, time_limit = 300, 5
    env = gym.make(PENDULUM_ID, max_episode_steps=time_limit)
    model = SAC("MlpPolicy", env, learning_starts=n_steps, seed=0, device="cpu")
    model.learn(n_steps)
    dataset = dataset_from_replay_buffer(model, "test/pendulum/replay-v0", env)
    episodes = list(dataset.iterate_episodes())
    assert dataset.total_steps == n_steps
    flags = [(episode.terminations[-1], episode.truncations[-1]) for episode in episodes]
    assert (True, False) in flags and (False, True) in flags
    buffer = model.replay_buffer
    for episode in episodes:
        assert_single_end_flag(episode)
        assert len(episode) <= time_limit
        assert episode.terminations[-1] == (abs(episode.observations[-1, 1]) > PENDULUM_MAX_ANGLE)
    actions = np.concatenate([episode.actions for episode in episodes])
    np.testing.assert_allclose(actions, model.policy.unscale_action(buffer.actions[:n_steps, 0]), rtol=1e-6)
    assert np.abs(actions).max() > 1.0, "actions are back in the environment's [-3, 3] bounds"
    observations = np.concatenate([episode.observations[:-1] for episode in episodes])
    np.testing.assert_array_equal(observations, buffer.observations[:n_steps, 0])


@pytest.mark.parametrize("compared_rows", [None, 7])  # None: all at once; 7: the pairs across windows too
def test_a_reset_between_two_learn_calls_ends_the_episode_and_keeps_its_next_observation(
    minari_root, monkeypatch, compared_rows
) -> None:
    """The second ``learn()`` resets the environment mid-episode, with no flag: the two runs were one episode, whose
    step before the reset got the reset observation as its next observation."""
    if compared_rows is not None:
        monkeypatch.setattr(replay, "COMPARED_BYTES", compared_rows * 3 * 4)  # Pendulum: 3 float32 per observation
    env = gym.make("Pendulum-v1")  # no termination, a time limit of 200 steps
    model = TD3("MlpPolicy", env, learning_starts=100, seed=0, device="cpu")
    model.learn(30)
    model.learn(30)
    buffer = model.replay_buffer
    assert not buffer.dones[29, 0] and not buffer.timeouts[29, 0]
    assert not np.array_equal(buffer.next_observations[29, 0], buffer.observations[30, 0])
    with pytest.warns(UserWarning, match=r"1 transition\(s\) of environment 0 .* row 29 first"):
        dataset = dataset_from_replay_buffer(model, "test/pendulum/replay-v0", env)
    first, second = dataset.iterate_episodes()
    assert len(first) == len(second) == 30
    assert first.truncations[-1] and not first.terminations[-1]
    np.testing.assert_array_equal(first.observations[-1], buffer.next_observations[29, 0])


def test_a_replay_buffer_that_cannot_tell_time_limits_from_terminations_or_is_empty_is_refused(minari_root) -> None:
    env = gym.make(PENDULUM_ID, max_episode_steps=5)  # never terminates: every end is a time limit
    model = SAC("MlpPolicy", env, learning_starts=20, replay_buffer_kwargs={"handle_timeout_termination": False})
    with pytest.raises(ValueError, match="The replay buffer is empty"):  # "Episode 0 (id 0) holds no step" before
        dataset_from_replay_buffer(model, "test/pendulum/replay-v0", env)
    model.learn(20)
    with pytest.raises(ValueError, match="handle_timeout_termination=False: SB3 stored its time-limit ends as"):
        dataset_from_replay_buffer(model, "test/pendulum/replay-v0", env)  # written as 4 terminations before
    assert not dataset_exists("test/pendulum/replay-v0")


def test_an_expert_acts_as_in_its_own_episodes_in_reference_rollouts() -> None:
    """A recurrent policy kept its memory of zero (no state passed), and an SB3 model's 0-d Discrete action was
    unhashable for toy-text envs when measuring reference scores."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import DQN

    model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=8, seed=0, policy_kwargs={"lstm_hidden_size": 4})
    env = gym.make("CartPole-v1")
    (episode,) = rollout_episodes(env, model, n_episodes=1, seed=3)
    observation, _ = env.reset(seed=3)
    state, start, expected, done = None, np.array([True]), [], False
    while not done:
        action, state = model.predict(observation, state=state, episode_start=start, deterministic=True)
        start = np.array([False])
        expected.append(action)
        observation, _, terminated, truncated, _ = env.step(action[()])
        done = terminated or truncated
    np.testing.assert_array_equal(episode.actions, expected)
    frozen_lake = gym.make("FrozenLake-v1")
    dqn = DQN("MlpPolicy", frozen_lake, policy_kwargs={"net_arch": [8]}, seed=0)
    assert reference_scores(frozen_lake, ref_min_score=0.0, expert_policy=dqn, n_episodes=2)["ref_max_score"] >= 0


def test_given_reference_scores_claim_no_averaged_episodes() -> None:
    given = reference_scores("CartPole-v1", ref_min_score=9.0, ref_max_score=500.0, n_episodes=7)
    assert given == {"ref_min_score": 9.0, "ref_max_score": 500.0}  # num_episodes_average_score 7 before
    measured = reference_scores("CartPole-v1", ref_max_score=500.0, n_episodes=2)
    assert measured["num_episodes_average_score"] == 2


def test_a_reference_score_needs_an_episode(minari_root: pathlib.Path) -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="at least 1 episode, got 0"):  # would write a NaN score
        collect(env, lambda _: 0, "test/cartpole/none-v0", n_steps=10, ref_max_score=500.0, n_reference_episodes=0)
    assert not dataset_exists("test/cartpole/none-v0")


def test_reference_scores_that_would_invert_normalized_scores_are_left_out(minari_root):
    """Refused before collect's rollouts; episodes already collected are written without them."""
    env = gym.make("CartPole-v1")
    rollouts = []
    episodes = rollout_episodes(env, lambda _: 0, n_steps=30)
    with pytest.warns(UserWarning, match=r"ref_max_score \(5\) must be above ref_min_score \(10.*written without"):
        written = write_episodes("test/cartpole/kept-v0", episodes, env, ref_min_score=10.0, ref_max_score=5.0)
    assert written.total_steps == 30 and dataset_reference_scores(written) is None  # the data kept, no inverted score
    with pytest.warns(UserWarning, match=r"reference scores must be finite numbers, got ref_min_score nan"):
        written = write_episodes("test/cartpole/nan-v0", episodes, env, ref_min_score=float("nan"), ref_max_score=5.0)
    assert dataset_reference_scores(written) is None  # a NaN normalized score before
    with pytest.raises(ValueError, match=r"must be above ref_min_score .* normalized scores would be inverted"):
        # always pushing left falls sooner than random actions
        collect(env, lambda obs: rollouts.append(obs) or 0, "test/cartpole/left-v0", n_steps=50, expert_policy=lambda _: 0)
    assert rollouts == [] and not dataset_exists("test/cartpole/left-v0")
    unregistered = gym.wrappers.TimeLimit(CartPoleEnv(), 50)  # no spec: the random reference runs on the env itself
    own = collect(unregistered, lambda _: 0, "test/cartpole/own-v0", n_steps=30, ref_max_score=100.0)
    assert own.total_steps == 30
    scores = dataset_reference_scores(own)  # kept, though Minari keeps them only with an env spec
    assert scores is not None and scores[1] == 100.0 and 0 < scores[0] < 100


def test_cli(minari_root: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["pointmaze", "--maze", "umaze", "--stitch", "--n-steps", "500", "--n-reference-episodes", "1"]
    environment = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "sb3_iql.datasets", *arguments]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "sb3_iql/pointmaze/umaze-stitch-v0: 500 steps, 2 episodes" in result.stdout
    main(arguments)  # made already: kept, as ensure_dataset keeps it
    assert "sb3_iql/pointmaze/umaze-stitch-v0: stored, kept as it was made (500 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments[:-4], "--n-steps", "600"])
    assert exit_info.value.code == 1 and "has 500 steps, not 600" in capsys.readouterr().err
    main(["pointmaze", "--maze", "umaze", "--stitch", "--pixels", "36", "--pixel-steps", "20"])  # from the stored data
    output = capsys.readouterr().out
    assert "umaze-stitch-v0: stored, kept" in output and "umaze-stitch-pixels36-v0: 20 steps" in output

    main(["collect", "--env", PENDULUM_ID, "--dataset-id", "test/pendulum/random-v0", "--n-steps", "30", "--ref-max", "1000"])
    assert "test/pendulum/random-v0: 30 steps" in capsys.readouterr().out
    main(["collect", "--env", PENDULUM_ID, "--dataset-id", "test/pendulum/unscored-v0", "--n-steps", "20"])
    assert "test/pendulum/unscored-v0: 20 steps, 4 episodes (" in capsys.readouterr().out  # no reference scores
    main(["list", "--prefix", "test"])
    listing = capsys.readouterr().out
    assert "test/pendulum/random-v0  30 steps" in listing and "ref [" in listing and "sb3_iql" not in listing
    with pytest.raises(SystemExit) as exit_info:
        main(["pointmaze", "--maze", "huge"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    for options, message in [  # argparse errors before anything is written (a 0-pixel dataset was written, broken)
        (["--pixels", "0"], "--pixels: must be at least 36, got 0"),
        (["--pixel-steps", "-5"], "--pixel-steps: must be at least 1, got -5"),  # advice to delete the dataset before
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*arguments[:4], *options])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(minari_root.rglob("*pixels0*"))
    with pytest.raises(SystemExit) as exit_info:  # ignored without a word before
        main([*arguments[:4], "--pixel-steps", "20"])
    assert exit_info.value.code == 2 and "--pixel-steps sizes the pixel dataset of --pixels SIZE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a large maze stored under umaze's id, found by ensure_dataset
        main(["pointmaze", "--maze", "large", "--n-steps", "500", "--dataset-id", "sb3_iql/pointmaze/umaze-v0"])
    assert exit_info.value.code == 1 and "is in this package's PointMaze namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # Pendulum rollouts that ensure_dataset would return as the maze
        main(["collect", "--env", PENDULUM_ID, "--dataset-id", "sb3_iql/pointmaze/umaze-stitch-v0", "--n-steps", "5"])
    assert exit_info.value.code == 1 and "is an id that ensure_dataset generates" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 36 pixels"):  # the Python API too, before anything is written
        make_pixel_pointmaze_dataset(minari.load_dataset("sb3_iql/pointmaze/umaze-stitch-v0"), 20)
    main(["pointmaze", "--maze", "umaze", "--stitch", "--pixels", "36", "--pixel-steps", "20", "--overwrite"])
    output = capsys.readouterr().out  # the pixel dataset made again; the state one (500 steps) kept, not 1M
    assert "umaze-stitch-v0: stored, kept" in output and "umaze-stitch-pixels36-v0: 20 steps" in output
    assert "--overwrite with --n-steps makes it again" in output


def test_a_relative_datasets_path_is_written_to(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", "minari")  # Minari joined the staging folder to it twice
    main(["pointmaze", "--maze", "umaze", "--n-steps", "300", "--n-reference-episodes", "1"])
    assert (tmp_path / "minari" / "sb3_iql" / "pointmaze" / "umaze-v0" / "data" / "metadata.json").is_file()


def test_cli_errors_are_one_line(minari_root: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    SAC("MlpPolicy", PENDULUM_ID, policy_kwargs={"net_arch": [8]}).save(tmp_path / "sac")
    collect = ["collect", "--dataset-id", "test/pendulum/x-v0", "--n-steps", "10"]
    for extra, message in (
        (["--env", PENDULUM_ID, "--model", str(tmp_path / "missing.zip")], "No saved model at"),
        (["--env", "NoSuchEnv-v0"], "NoSuchEnv"),
        (["--env", PENDULUM_ID, "--algo", "td3", "--model", str(tmp_path / "sac")], "does not load as a TD3 model"),
        (["--env", PENDULUM_ID, "--gym-packages", "no_such_package"], "--gym-packages no_such_package: No module"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*collect, *extra])
        assert exit_info.value.code == 1 and message in capsys.readouterr().err, extra


def test_evaluation_goal_relabelling_rewrites_goals_rewards_and_terminals(minari_root: pathlib.Path) -> None:
    from sb3_iql import IQL
    from sb3_iql.data import load_transitions
    from sb3_iql.data.goals import MAZE_GOAL_DISTANCE, evaluation_goal, relabel_to_goal

    dataset = make_pointmaze_dataset("umaze", "sparse", stitch=False, n_steps=3000, n_reference_episodes=1)
    env = dataset.recover_environment(eval_env=True)
    goal = evaluation_goal(env)
    np.testing.assert_array_equal(goal, env.unwrapped.maze.unique_goal_locations[0])
    transitions = load_transitions([dataset])
    assert (transitions.observations["desired_goal"] != goal).any(axis=1).mean() > 0.5  # goal-carrying data

    relabelled = relabel_to_goal(transitions, goal, env.unwrapped.compute_reward, MAZE_GOAL_DISTANCE)
    assert (relabelled.observations["desired_goal"] == goal).all() and (
        relabelled.next_observations["desired_goal"] == goal
    ).all()
    distance = np.linalg.norm(transitions.next_observations["achieved_goal"] - goal, axis=1)
    np.testing.assert_array_equal(relabelled.rewards, (distance <= MAZE_GOAL_DISTANCE).astype(np.float32))  # sparse
    assert relabelled.rewards.sum() > 0 and (relabelled.terminations == (distance <= MAZE_GOAL_DISTANCE)).all()
    assert relabelled.episode_returns.sum() == relabelled.rewards.sum()
    assert len(relabelled.episode_returns) == int((relabelled.terminations | relabelled.truncations).sum())
    assert (transitions.observations["desired_goal"] != goal).any()  # the input is left as it was

    model = IQL("MultiInputPolicy", None, offline_dataset=dataset, relabel_eval_goal="terminal", device="cpu", seed=0,
                policy_kwargs={"net_arch": [8]})  # fmt: skip
    stored = model.replay_buffer.sample(512)
    th.testing.assert_close(stored.observations["desired_goal"], th.as_tensor(goal, dtype=th.float32).expand(512, 2))
    assert float(stored.rewards.sum()) == float(stored.dones.sum())  # sparse: reward 1 exactly at the terminal steps
    # a saved model reloads its datasets relabelled as at creation (to resume training)
    model.save(minari_root / "relabelled")
    loaded = IQL.load(minari_root / "relabelled", device="cpu")
    loaded.reload_offline_dataset()
    np.testing.assert_array_equal(loaded.eval_goal, goal)
    assert loaded.replay_buffer.size() == model.replay_buffer.size()
    assert float(loaded.replay_buffer.sample(512).observations["desired_goal"].sub(th.as_tensor(goal)).abs().max()) < 1e-6
    # data added later must be relabelled too: refused as it is, taken relabelled
    with pytest.raises(ValueError, match=r"relabelled for the evaluation goal .* relabel_for_evaluation_goal"):
        loaded.add_transitions(transitions)
    loaded.add_transitions(relabelled)
    assert loaded.replay_buffer.size() == 2 * model.replay_buffer.size()
    with pytest.raises(ValueError, match="relabels the offline_dataset as it loads, and there is none"):
        IQL("MultiInputPolicy", env, relabel_eval_goal=True)
    with pytest.raises(ValueError, match="exactly one goal cell"):
        evaluation_goal(gym.make("PointMaze_UMaze-v3"))
    for typo in ("Terminal", "yes", 1):  # "Terminal" would relabel without the terminal flags
        with pytest.raises(ValueError, match=f"relabel_eval_goal must be False, True or 'terminal', got {typo!r}"):
            IQL("MultiInputPolicy", None, offline_dataset=dataset, relabel_eval_goal=typo)
    # a model made with its own environment (the dense rule) reloads relabelled by that environment, as at its
    # creation; the dataset's evaluation environment (sparse) relabelled it before, with a warning of changed data
    dense = make_pointmaze_env("umaze", "dense", evaluation=True)
    model = IQL("MultiInputPolicy", dense, offline_dataset=dataset, relabel_eval_goal=True, policy_kwargs={"net_arch": [8]})
    model.save(minari_root / "dense")
    loaded = IQL.load(minari_root / "dense", env=make_pointmaze_env("umaze", "dense", evaluation=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.reload_offline_dataset()
    n = model.offline_dataset_size
    np.testing.assert_array_equal(loaded.replay_buffer.rewards[:n], model.replay_buffer.rewards[:n])


def test_epsilon_replaces_actions_with_uniformly_random_ones() -> None:
    env = gym.make("CartPole-v1")
    episodes = rollout_episodes(env, lambda obs: 0, n_steps=4000, epsilon=0.5, seed=3)
    actions = np.concatenate([episode.actions for episode in episodes])
    # the policy always pushes left; half the steps draw uniformly from {left, right}: 25% right
    assert abs(actions.mean() - 0.25) < 0.03
    again = np.concatenate(
        [episode.actions for episode in rollout_episodes(env, lambda obs: 0, n_steps=4000, epsilon=0.5, seed=3)]
    )
    assert np.array_equal(actions, again)
    with pytest.raises(ValueError, match="epsilon must be in"):
        rollout_episodes(env, lambda obs: 0, n_steps=10, epsilon=1.5)


def test_medium_expert_dataset_has_both_halves_with_discrete_actions(
    minari_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = medium_expert.PPORecipe({**medium_expert.RECIPES["Acrobot-v1"].hyperparameters, "n_steps": 64}, 2, 128, 256)
    monkeypatch.setitem(medium_expert.RECIPES, "Acrobot-v1", tiny)
    dataset = ensure_dataset(medium_expert_dataset_id("Acrobot-v1"), n_steps=1200, n_reference_episodes=1)
    assert dataset.spec.dataset_id == "sb3_iql/acrobot/medium-expert-v0"
    assert dataset.total_steps == 1200 and isinstance(dataset.action_space, gym.spaces.Discrete)
    episodes = list(dataset.iterate_episodes())
    assert sum(len(episode) for episode in episodes) == 1200
    assert [episode.id for episode in episodes] == list(range(len(episodes)))
    actions = np.concatenate([episode.actions for episode in episodes])
    assert np.issubdtype(actions.dtype, np.integer) and set(np.unique(actions)) <= {0, 1, 2}
    assert "after 128 environment steps (medium, return" in dataset.storage.metadata["description"]
    with pytest.raises(ValueError, match="No medium-expert recipe"):
        medium_expert.make_medium_expert_dataset("CartPole-v1")
    trained = []
    monkeypatch.setattr(medium_expert, "train_medium_and_expert", lambda *args, **kwargs: trained.append(args))
    for arguments in ({"n_steps": 1}, {"epsilon": 2.0}, {"n_reference_episodes": 0}):
        with pytest.raises(ValueError, match="n_steps must be >= 2"):
            medium_expert.make_medium_expert_dataset("Acrobot-v1", dataset_id="test/acrobot/bad-v0", **arguments)
    assert not trained, "bad arguments are refused before PPO trains"


def test_pointmaze_recipes_follow_minari_s_goal_datasets(minari_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eval_goal = make_pointmaze_env("umaze", evaluation=True).unwrapped.maze.unique_goal_locations[0]
    by_recipe = {}
    for recipe in ("cut", "antmaze", "antmaze-unseen", "play"):
        dataset = make_pointmaze_dataset("umaze", n_steps=6000, n_reference_episodes=1, recipe=recipe)
        assert dataset.spec.dataset_id == f"sb3_iql/pointmaze/umaze-{recipe}-v0"
        assert ensure_dataset(f"sb3_iql/pointmaze/umaze-{recipe}-v0").total_steps == 6000
        by_recipe[recipe] = episodes_of(dataset.spec.dataset_id)
        for episode in by_recipe[recipe]:
            assert_single_end_flag(episode)
        # the stored collection environment: goals kept once reached (AntMaze-v1's recipes) or redrawn
        assert dataset.recover_environment().unwrapped.reset_target == (recipe not in ("antmaze", "antmaze-unseen"))
        if recipe in ("cut", "antmaze"):  # and their pixel datasets' (the antmaze one redrew them before)
            pixels = make_pixel_pointmaze_dataset(dataset, size=36, n_steps=20)
            assert pixels.recover_environment().unwrapped.reset_target == (recipe == "cut")
    # Minari's PointMaze: every episode but the last ends on reaching its goal, which holds along the episode
    cut = by_recipe["cut"]
    assert len(cut) > 10 and all(episode.rewards[-1] == 1 and episode.rewards[:-1].sum() == 0 for episode in cut[:-1])
    # (an episode's first observation still shows the goal just reached: env.step returns it before redrawing)
    assert all(len(np.unique(episode.observations["desired_goal"][1:], axis=0)) == 1 for episode in cut)
    # Minari's AntMaze-v1: one goal per 300-step episode, reached and kept: the reward accumulates there
    for recipe in ("antmaze", "antmaze-unseen"):
        episodes = by_recipe[recipe]
        assert [len(episode) for episode in episodes] == [300] * 20
        assert all(len(np.unique(episode.observations["desired_goal"], axis=0)) == 1 for episode in episodes)
        assert np.mean([episode.rewards.mean() for episode in episodes]) > 0.5
        goals = np.array([episode.observations["desired_goal"][0] for episode in episodes])
        in_eval_cell = np.abs(goals - eval_goal).max(axis=1) < 0.5
        assert in_eval_cell.any() == (recipe == "antmaze")  # the unseen variant never aims at the evaluation cell
    # play data: stored goals are random cells the behaviour never aims at: rarely rewarded
    play = by_recipe["play"]
    assert np.mean([episode.rewards.mean() for episode in play]) < 0.2
    assert len({tuple(episode.observations["desired_goal"][0]) for episode in play}) > 1
    # one goal per episode, its last row included (that row is also the next episode's first, with another goal)
    assert all(len(np.unique(episode.observations["desired_goal"], axis=0)) == 1 for episode in play)
    # a play dataset written before this fix is refused, with the way to write it again
    monkeypatch.setattr(pointmaze, "PLAY_GOAL_ON_EVERY_ROW", "a mark the stored description lacks")
    with pytest.raises(ValueError, match=r"older sb3-iql.*--overwrite"):
        ensure_dataset("sb3_iql/pointmaze/umaze-play-v0")
    ensure_dataset("sb3_iql/pointmaze/umaze-cut-v0")  # the other recipes are unaffected
    maze = make_pointmaze_env("umaze").unwrapped
    for episode in play:  # and the rewards are the stored goal's
        goals = episode.observations["desired_goal"][1:]
        np.testing.assert_array_equal(
            episode.rewards, maze.compute_reward(episode.observations["achieved_goal"][1:], goals, {})
        )
