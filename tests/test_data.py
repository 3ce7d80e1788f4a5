"""Minari datasets into the replay buffer: every transition, episode boundaries, masks, action scaling, rewards."""

import dataclasses
import hashlib
import pathlib
import re
import sys
import time
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv
from toy_data import LineEnv, good_policy, make_episode, rollout_episodes, write_dataset

from sb3_iql import IQL, NormalizedEvalCallback
from sb3_iql.common.synthetic import SpacesEnv
from sb3_iql.data import DatasetNotFoundError, OfflineReplayBuffer, Transitions, load_transitions
from sb3_iql.data.minari_loader import spaces_match
from sb3_iql.data.rewards import LOCOMOTION_RETURN_SCALE
from sb3_iql.datasets import dataset_from_replay_buffer
from sb3_iql.datasets.replay import replay_buffer_episodes

OBS_SPACE = spaces.Box(-1e3, 1e3, (2,), np.float32)
# Not [-1, 1] and not symmetric: dataset actions must be scaled like SB3 scales its own.
ACTION_SPACE = spaces.Box(np.array([0.0, -2.0], np.float32), np.array([4.0, 2.0], np.float32))
#: ``write_dataset``'s arguments for datasets of these spaces
OBS_SPACE_ENV = SpacesEnv(OBS_SPACE, ACTION_SPACE)
DICT_OBS_SPACE = spaces.Dict(
    {"observation": spaces.Box(-1e3, 1e3, (2,), np.float32), "goal": spaces.Box(-1e3, 1e3, (1,), np.float32)}
)
# episode lengths and how each ends: (terminated, truncated) at the last step
EPISODES = [(3, (True, False)), (4, (False, True)), (2, (True, True))]
EPISODE_ACTIONS = [[0.0, 0.0], [4.0, 2.0], [2.0, -1.0], [1.0, 1.0]]


def obs_value(episode: int, step: int) -> float:
    return 100.0 * episode + step


def box_episodes(dict_obs: bool = False, nan_at: tuple[int, str] | None = None) -> list:
    episodes = []
    for index, (length, (terminated, truncated)) in enumerate(EPISODES):
        observations = []
        for step in range(length + 1):
            value = obs_value(index, step)
            if dict_obs:
                observations.append(
                    {"observation": np.array([value, -value], np.float32), "goal": np.array([index], np.float32)}
                )
            else:
                observations.append(np.array([value, -value], np.float32))
        actions = [np.array(EPISODE_ACTIONS[step % 4], np.float32) for step in range(length)]
        rewards = [float(index + 1)] * length
        if nan_at is not None and nan_at[0] == index:
            if nan_at[1] == "goal":
                observations[1]["goal"][0] = np.nan
            else:
                rewards[0] = np.inf
        terminations = [False] * (length - 1) + [terminated]
        truncations = [False] * (length - 1) + [truncated]
        episodes.append(make_episode(index, observations, actions, rewards, terminations, truncations))
    return episodes


@pytest.fixture
def box_dataset(minari_root: pathlib.Path):
    return write_dataset("test/box/episodes-v0", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)


def make_model(dataset, observation_space=OBS_SPACE, n_envs: int = 1, **kwargs) -> IQL:
    env = DummyVecEnv([lambda: SpacesEnv(observation_space, ACTION_SPACE)] * n_envs)
    return IQL("MlpPolicy", env, offline_dataset=dataset, policy_kwargs=dict(net_arch=[8]), seed=0, **kwargs)


def stored(model: IQL) -> dict:
    """The buffer's filled rows, first env column."""
    buffer, rows = model.replay_buffer, model.replay_buffer.pos
    return dict(
        obs=buffer.observations[:rows, 0],
        next_obs=buffer.next_observations[:rows, 0],
        actions=buffer.actions[:rows, 0],
        rewards=buffer.rewards[:rows, 0],
        dones=buffer.dones[:rows, 0],
        timeouts=buffer.timeouts[:rows, 0],
    )


def test_box_round_trip_keeps_episode_boundaries_and_masks(box_dataset):
    model = make_model(box_dataset)
    data = stored(model)
    n_transitions = sum(length for length, _ in EPISODES)
    assert model.replay_buffer.size() == n_transitions == model.offline_dataset_size
    assert model.replay_buffer.buffer_size == n_transitions + 1_000_000  # room for online data by default
    expected_obs, expected_next, expected_dones, expected_timeouts = [], [], [], []
    for index, (length, (terminated, truncated)) in enumerate(EPISODES):
        for step in range(length):
            expected_obs.append(obs_value(index, step))
            expected_next.append(obs_value(index, step + 1))  # never the next episode's first row
            last = step == length - 1
            expected_dones.append(float(last and terminated))
            expected_timeouts.append(float(last and truncated and not terminated))
    np.testing.assert_array_equal(data["obs"][:, 0], expected_obs)
    np.testing.assert_array_equal(data["obs"][:, 1], -np.array(expected_obs))
    np.testing.assert_array_equal(data["next_obs"][:, 0], expected_next)
    np.testing.assert_array_equal(data["dones"], expected_dones)
    np.testing.assert_array_equal(data["timeouts"], expected_timeouts)
    # sampling masks terminals only: the truncated episode's last step bootstraps
    batch = model.replay_buffer.sample(2000)
    terminal_next = {obs_value(0, 3), obs_value(2, 2)}
    for next_obs, done in zip(batch.next_observations[:, 0].tolist(), batch.dones[:, 0].tolist()):
        assert done == float(next_obs in terminal_next)


@pytest.mark.parametrize("replay_buffer_class", [None, OfflineReplayBuffer])
def test_without_timeout_handling_offline_time_outs_are_terminal_as_online_ones(box_dataset, replay_buffer_class):
    kwargs = dict(replay_buffer_class=replay_buffer_class, replay_buffer_kwargs=dict(handle_timeout_termination=False))
    handled, unhandled = stored(make_model(box_dataset)), stored(make_model(box_dataset, **kwargs))
    assert handled["timeouts"].any() and not unhandled["timeouts"].any()
    np.testing.assert_array_equal(unhandled["dones"], np.maximum(handled["dones"], handled["timeouts"]))


def test_actions_are_scaled_to_unit_box_and_clipped(box_dataset):
    actions = stored(make_model(box_dataset))["actions"]
    bound = 1.0 - 1e-5
    expected = {0: [-bound, 0.0], 1: [bound, bound], 2: [0.0, -0.5], 3: [-0.5, 0.5]}
    np.testing.assert_allclose(actions[:3], [expected[0], expected[1], expected[2]], atol=1e-7)
    np.testing.assert_allclose(actions[3:7], [expected[step % 4] for step in range(4)], atol=1e-7)
    # SB3's own scaling maps the same env actions to the same values (before the +-(1 - 1e-5) clip)
    model = make_model(box_dataset)
    sb3_scaled = model.policy.scale_action(np.array(EPISODE_ACTIONS[2:], np.float32))
    np.testing.assert_allclose(sb3_scaled, [expected[2], expected[3]], atol=1e-7)


def test_reward_transforms(box_dataset):
    rewards = {0: 1.0, 1: 2.0, 2: 3.0}
    raw = np.concatenate([[rewards[index]] * length for index, (length, _) in enumerate(EPISODES)])
    np.testing.assert_allclose(stored(make_model(box_dataset))["rewards"], raw)
    np.testing.assert_allclose(stored(make_model(box_dataset, reward_transform="antmaze"))["rewards"], raw - 1.0)
    returns = [3 * 1.0, 4 * 2.0, 2 * 3.0]  # 3, 8, 6: range 5
    locomotion = make_model(box_dataset, reward_transform="locomotion")
    np.testing.assert_allclose(stored(locomotion)["rewards"], raw / (max(returns) - min(returns)) * 1000, rtol=1e-6)
    assert locomotion.reward_transform_fn.scale == pytest.approx(LOCOMOTION_RETURN_SCALE / 5)
    custom = make_model(box_dataset, reward_transform=lambda r: 2.0 * r)
    np.testing.assert_allclose(stored(custom)["rewards"], 2.0 * raw)
    # huge rewards whose returns nearly cancel: the scale sent them past float32 (inf in the buffer, then NaN nets)
    huge = [
        dataclasses.replace(episode, rewards=[3e37, -3e37, 0.5][: len(episode.rewards)] + [0.0] * (len(episode.rewards) - 3))
        for episode in box_episodes()
    ]
    dataset = write_dataset("test/box/huge-v0", huge, observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    with pytest.raises(ValueError, match=r"overflows float32 for \d+ of \d+ rewards"):
        make_model(dataset, reward_transform="locomotion")


def test_dict_observations_round_trip(minari_root):
    dataset = write_dataset(
        "test/dict/episodes-v0", box_episodes(dict_obs=True), observation_space=DICT_OBS_SPACE, action_space=ACTION_SPACE
    )
    model = make_model(dataset, observation_space=DICT_OBS_SPACE)
    # "MlpPolicy" on Dict observations: the same MLPs on the concatenated parts
    assert type(model.policy).__name__ == "MultiInputPolicy"
    buffer, rows = model.replay_buffer, model.replay_buffer.pos
    expected_obs = [obs_value(index, step) for index, (length, _) in enumerate(EPISODES) for step in range(length)]
    np.testing.assert_array_equal(buffer.observations["observation"][:rows, 0, 0], expected_obs)
    np.testing.assert_array_equal(buffer.next_observations["observation"][:rows, 0, 0], np.array(expected_obs) + 1)
    goals = [index for index, (length, _) in enumerate(EPISODES) for _ in range(length)]
    np.testing.assert_array_equal(buffer.next_observations["goal"][:rows, 0, 0], goals)
    model.learn_offline(5)
    action, _ = model.predict(DICT_OBS_SPACE.sample(), deterministic=True)
    assert ACTION_SPACE.contains(action)


def test_several_datasets_and_vec_envs(box_dataset, minari_root):
    second = write_dataset("test/box/second-v0", box_episodes()[:1], observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    model = make_model([box_dataset, second])
    assert model.replay_buffer.size() == 9 + 3
    assert model.offline_dataset_ids == ["test/box/episodes-v0", "test/box/second-v0"]
    with pytest.warns(UserWarning, match="stored twice"):
        two_envs = make_model(box_dataset, n_envs=2)  # 9 transitions fill 5 rows of 2
    assert two_envs.replay_buffer.pos == 5
    np.testing.assert_array_equal(two_envs.replay_buffer.observations[0, :, 0], [0.0, 1.0])


def test_env_is_recovered_from_the_dataset(minari_root):
    env = gym.make("Pendulum-v1", max_episode_steps=5)
    obs, _ = env.reset(seed=0)
    observations, actions = [obs], []
    for _ in range(5):
        actions.append(env.action_space.sample())
        observations.append(env.step(actions[-1])[0])
    episode = make_episode(0, observations, actions, [0.0] * 5, [False] * 5, [False] * 4 + [True])
    write_dataset("test/pendulum/tiny-v0", [episode], env=env)
    model = IQL("MlpPolicy", None, offline_dataset="test/pendulum/tiny-v0", offline_steps=2, policy_kwargs=dict(net_arch=[8]))
    assert model.get_env() is not None
    assert model.observation_space.shape == (3,)
    model.learn(total_timesteps=3)  # 2 offline updates, then 3 online steps with one update each
    assert model._n_offline_updates == 2 and model._n_updates == 5
    assert model.replay_buffer.size() == 5 + 3


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing changed


def folder_digest(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_missing_dataset_says_where_it_looked_and_how_to_download(minari_root):
    before = folder_digest(minari_root)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as error:
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, ACTION_SPACE), offline_dataset="D4RL/antmaze/large-diverse-v1")
    assert time.perf_counter() - start < 5.0  # no download retries
    message = str(error.value)
    assert "minari download D4RL/antmaze/large-diverse-v1" in message
    assert str(minari_root) in message and "download_dataset=True" in message
    assert folder_digest(minari_root) == before


def test_a_missing_version_names_the_versions_stored(minari_root):
    write_dataset("test/box/versioned-v0", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    write_dataset("test/box/versioned-v2", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    write_dataset("test/box/versioned-extra-v1", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    with pytest.raises(DatasetNotFoundError, match=r"stored there: test/box/versioned-v0, test/box/versioned-v2\. "):
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, ACTION_SPACE), offline_dataset="test/box/versioned-v1")


def test_a_dataset_folder_without_metadata_is_named_as_unfinished(minari_root):
    (minari_root / "test" / "box" / "half-v0" / "data").mkdir(parents=True)  # Minari: "No data found in data path"
    with pytest.raises(DatasetNotFoundError, match=r"'test/box/half-v0' at .* has no metadata.json: a write that did"):
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, ACTION_SPACE), offline_dataset="test/box/half-v0")


def test_a_download_that_fails_names_the_dataset_and_what_to_check(minari_root, monkeypatch):
    def no_network(dataset_id: str, force_download: bool = False) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(minari, "download_dataset", no_network)
    with pytest.raises(
        DatasetNotFoundError,
        match=r"'D4RL/antmaze/large-diverse-v1' is not stored locally .* its "
        r"download failed \(ConnectionError: Name or service not known\)",
    ):
        IQL(
            "MlpPolicy",
            SpacesEnv(OBS_SPACE, ACTION_SPACE),
            offline_dataset="D4RL/antmaze/large-diverse-v1",
            download_dataset=True,
        )


@pytest.mark.parametrize(
    "offline_dataset, error, message",
    [
        ("pendulum-random", ValueError, r"Malformed dataset id 'pendulum-random': it needs the form"),  # not a download
        ("", ValueError, "Malformed dataset id ''"),
        (5, TypeError, "offline_dataset must be a Minari dataset id, a MinariDataset or a list of them, got 5"),
        ([None], TypeError, r"or a list of them, got \[None\]"),
    ],
)
def test_an_offline_dataset_that_is_no_dataset_id_says_so(minari_root, offline_dataset, error, message):
    with pytest.raises(error, match=message):
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, ACTION_SPACE), offline_dataset=offline_dataset)


def test_mismatched_spaces_show_both(box_dataset, minari_root):
    before = folder_digest(minari_root)
    wrong_obs = spaces.Box(-1.0, 1.0, (5,), np.float32)
    with pytest.raises(ValueError, match="Observation space") as error:
        IQL("MlpPolicy", SpacesEnv(wrong_obs, ACTION_SPACE), offline_dataset=box_dataset)
    assert "shape=(2,)" in str(error.value) and "shape=(5,)" in str(error.value)
    wrong_bounds = spaces.Box(-1.0, 1.0, (2,), np.float32)
    with pytest.raises(ValueError, match="Action space") as error:
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, wrong_bounds), offline_dataset=box_dataset)
    assert "dataset:" in str(error.value) and "environment:" in str(error.value)
    assert folder_digest(minari_root) == before


FLOAT_FRAMES, UINT8_FRAMES = spaces.Box(0.0, 1.0, (8, 8, 3), np.float32), spaces.Box(0, 255, (8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "dataset_space, env_space, fits",
    [
        (FLOAT_FRAMES, UINT8_FRAMES, False),  # white (1.0) stored as 1 of 255: nearly black
        (UINT8_FRAMES, FLOAT_FRAMES, False),  # values up to 255 where the env gives [0, 1]
        (FLOAT_FRAMES, spaces.Box(0, 255, (3, 8, 8), np.uint8), False),  # transposed too
        (UINT8_FRAMES, spaces.Box(0, 255, (3, 8, 8), np.uint8), True),
        (spaces.Box(-1.0, 1.0, (2,), np.float64), spaces.Box(-1.0, 1.0, (2,), np.float32), True),  # as D4RL's
    ],
)
def test_image_frames_fit_only_frames_of_their_dtype(dataset_space, env_space, fits):
    assert spaces_match(dataset_space, env_space, check_bounds=False) == fits


@pytest.mark.parametrize("dict_obs, field", [(False, "rewards"), (True, "observations['goal']")])
def test_non_finite_data_names_field_and_episode(minari_root, dict_obs, field):
    observation_space = DICT_OBS_SPACE if dict_obs else OBS_SPACE
    dataset = write_dataset(
        "test/bad/nan-v0",
        box_episodes(dict_obs=dict_obs, nan_at=(1, "goal" if dict_obs else "rewards")),
        observation_space=observation_space,
        action_space=ACTION_SPACE,
    )
    before = folder_digest(minari_root)
    with pytest.raises(ValueError, match="NaN or inf") as error:
        make_model(dataset, observation_space=observation_space)
    assert "episode 1" in str(error.value) and f"'{field}'" in str(error.value)
    assert folder_digest(minari_root) == before


def online_model(observation_space=OBS_SPACE) -> IQL:
    """A model without a dataset, filled by hand with ``add_transitions``."""
    return IQL("MlpPolicy", SpacesEnv(observation_space, ACTION_SPACE), policy_kwargs=dict(net_arch=[8]), buffer_size=100)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rewards", lambda t: np.where(np.arange(len(t)) == 3, np.inf, t.rewards), "'rewards' holds NaN or inf"),
        ("actions", lambda t: np.full_like(t.actions, np.nan), "'actions' holds NaN or inf"),
        (
            "next_observations",
            lambda t: {**t.next_observations, "goal": t.next_observations["goal"] * np.nan},
            r"'next_observations\['goal'\]' holds NaN",
        ),
        (
            "observations",
            lambda t: {**t.observations, "goal": np.full(t.observations["goal"].shape, 1e39)},
            r"'observations\['goal'\]' holds NaN or inf values \(in float32",  # finite in float64, inf in the buffer
        ),
        ("actions", lambda t: t.actions[:-1], r"'actions' has shape \(8, 2\): expected 9 rows"),
        ("observations", lambda t: {**t.observations, "goal": np.zeros((9, 3))}, r"'observations\['goal'\]' has shape"),
        ("observations", lambda t: t.observations["goal"], "must be a dict with keys"),
        ("terminations", lambda t: t.terminations[:-1], "'terminations' has shape"),
        ("truncations", lambda t: np.full(len(t), 0.5), "must hold booleans"),
        ("rewards", lambda t: t.rewards[:, None], r"'rewards' must have shape \(n,\)"),
    ],
    ids=[
        "inf-reward",
        "nan-actions",
        "nan-goal",
        "float64-beyond-float32",
        "short-actions",
        "wide-goal",
        "not-a-dict",
        "short-flags",
        "half-flags",
        "2d-rewards",
    ],
)
def test_transitions_added_by_hand_are_checked_field_by_field(minari_root, field, value, message):
    dataset = write_dataset(
        "test/dict/episodes-v0", box_episodes(dict_obs=True), observation_space=DICT_OBS_SPACE, action_space=ACTION_SPACE
    )
    transitions = load_transitions([dataset])
    model = online_model(DICT_OBS_SPACE)
    with pytest.raises(ValueError, match=message):
        model.add_transitions(dataclasses.replace(transitions, **{field: value(transitions)}))
    assert model.replay_buffer.size() == 0, "nothing of bad data is stored"


def test_float_flags_are_taken_as_booleans(box_dataset):
    transitions = load_transitions([box_dataset])
    model = online_model()
    # D4RL stores terminals and timeouts as floats
    as_floats = dataclasses.replace(
        transitions, terminations=transitions.terminations.astype(np.float32), truncations=transitions.truncations * 1.0
    )
    model.add_transitions(as_floats)
    np.testing.assert_array_equal(stored(model)["dones"], stored(make_model(box_dataset))["dones"])
    np.testing.assert_array_equal(stored(model)["timeouts"], stored(make_model(box_dataset))["timeouts"])


def test_actions_outside_the_bounds_are_warned_about_then_clipped(box_dataset):
    transitions = load_transitions([box_dataset])
    model = online_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.add_transitions(transitions)  # at the bounds, not outside: no warning
    outside = transitions.actions.copy()
    outside[:3, 0] = 6.0  # the bounds are [0, 4]: scaled to 2.0
    with pytest.warns(UserWarning, match=r"33.3% of the dataset's actions lie outside .* the farthest is at 2"):
        model.add_transitions(dataclasses.replace(transitions, actions=outside))
    assert np.abs(model.replay_buffer.actions[9:12, 0, 0]).max() <= 1.0


def test_an_iql_buffer_splits_back_into_its_dataset_episodes(box_dataset):
    model = make_model(box_dataset)
    episodes = replay_buffer_episodes(model.replay_buffer, OBS_SPACE, ACTION_SPACE)
    originals = list(box_dataset.iterate_episodes())
    assert len(episodes) == len(originals) == len(EPISODES)
    for episode, original in zip(episodes, originals):
        np.testing.assert_array_equal(episode.observations, original.observations)
        np.testing.assert_allclose(episode.actions, original.actions, atol=1e-4)  # clipped at +-(1 - 1e-5) when loaded
        np.testing.assert_array_equal(episode.rewards, original.rewards)
        np.testing.assert_array_equal(episode.terminations, original.terminations)
        # a time limit is stored as a truncation unless the episode also terminated (then terminal only)
        np.testing.assert_array_equal(episode.truncations, original.truncations & ~original.terminations)
    with pytest.raises(ValueError, match=r"stores transformed rewards \(reward_transform\)"):
        dataset_from_replay_buffer(
            make_model(box_dataset, reward_transform="antmaze"), "test/box/replay-v0", SpacesEnv(OBS_SPACE, ACTION_SPACE)
        )
    with pytest.raises(ValueError, match="cannot be split back into episodes"):
        dataset_from_replay_buffer(make_model(box_dataset, n_envs=2), "test/box/replay-v0", SpacesEnv(OBS_SPACE, ACTION_SPACE))


def test_unsupported_action_space_and_small_buffer(box_dataset):
    with pytest.raises(ValueError, match="supports Box and Discrete action spaces"):
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, spaces.MultiDiscrete([3, 2])))
    with pytest.raises(ValueError, match="bounded action space"):
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, spaces.Box(-np.inf, np.inf, (2,))))
    with pytest.raises(ValueError, match="low < high in every action dimension"):  # scaled, it would be NaN
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 0.0]))))
    with pytest.raises(ValueError, match=r"high - low, which overflows float32"):  # finite bounds, NaN actions
        IQL("MlpPolicy", SpacesEnv(OBS_SPACE, spaces.Box(-3e38, 3e38, (2,), np.float32)))
    for shape in [(2, 2), (1, 2), ()]:  # SAC flattens them; (n, 1) is taken as (n,)
        with pytest.raises(
            ValueError, match=rf"one dimension, shape \(n,\) \(or \(n, 1\)\), got shape {re.escape(str(shape))}"
        ):
            IQL("MlpPolicy", SpacesEnv(OBS_SPACE, spaces.Box(-1.0, 1.0, shape)))
    column_space = spaces.Box(np.array([[0.0], [-3.0]], np.float32), np.array([[5.0], [1.0]], np.float32))
    column = IQL("MlpPolicy", SpacesEnv(OBS_SPACE, column_space), buffer_size=10)
    n = 4
    for actions in (np.array([[5.0, -3.0]] * n), np.array([[[5.0], [-3.0]]] * n)):  # (n, 2) or as the space, (n, 2, 1)
        zeros = np.zeros((n, *OBS_SPACE.shape), np.float32)
        flags = np.zeros(n, bool)
        column.replay_buffer.reset()
        column.add_transitions(Transitions(zeros, zeros, actions, np.zeros(n), flags, flags | [0, 0, 0, 1], np.zeros(1)))
        np.testing.assert_allclose(column.replay_buffer.actions[:n, 0].numpy(), [[1 - 1e-5, -1 + 1e-5]] * n)
    with pytest.raises(ValueError, match=r"buffer_size=5 is smaller than the offline dataset \(9 transitions\)"):
        make_model(box_dataset, buffer_size=5)
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        OfflineReplayBuffer(10, OBS_SPACE, ACTION_SPACE, optimize_memory_usage=True)


@pytest.mark.parametrize("field", ["terminations", "truncations"])
def test_flags_of_a_stored_episode_other_than_0_and_1_are_refused_naming_it(minari_root, field):
    episodes = box_episodes()
    flags = np.asarray(getattr(episodes[1], field), np.float64)
    flags[0] = np.nan  # read as True (a terminal) before
    bad = dataclasses.replace(episodes[1], **{field: flags})
    dataset = write_dataset("test/box/flags-v0", [episodes[0], bad], OBS_SPACE_ENV)
    with pytest.raises(ValueError, match=rf"'test/box/flags-v0', episode 1: field '{field}' must hold booleans"):
        load_transitions([dataset])


def test_an_episode_cut_short_ends_there_and_rows_that_do_not_line_up_are_refused(minari_root):
    episodes = box_episodes()
    cut = dataclasses.replace(episodes[1], truncations=np.zeros(4, bool))  # neither flag on its last step
    transitions = load_transitions([write_dataset("test/box/cut-v0", [episodes[0], cut, episodes[2]], OBS_SPACE_ENV)])
    ends = np.flatnonzero(transitions.terminations | transitions.truncations)
    assert ends.tolist() == [2, 6, 8]  # episode 1 ends where it was cut (a time-out: not terminal, bootstrapped)
    assert transitions.truncations[6] and not transitions.terminations[6]
    short = dataclasses.replace(episodes[1], observations=episodes[1].observations[:-1])  # its last row missing
    with pytest.raises(ValueError, match=r"'test/box/short-v0', episode 1: observations holds 3 steps for 4 actions"):
        load_transitions([write_dataset("test/box/short-v0", [episodes[0], short], OBS_SPACE_ENV)])


@pytest.mark.parametrize(
    "space, message",
    [
        (spaces.Dict({"inner": spaces.Dict({"x": spaces.Box(-1, 1, (1,))})}), "Nested observation spaces"),
        (spaces.Tuple((spaces.Box(-1, 1, (1,)), spaces.Box(-1, 1, (1,)))), "Tuple observation spaces"),
        (spaces.Box(-1.0, 1.0, ()), r"shape \(\) are not supported .* reshape them to \(1,\)"),
        (spaces.Discrete(6, start=1), "Discrete observations must start at 0"),
        (spaces.Dict({"cell": spaces.Discrete(6, start=1)}), "Discrete observations must start at 0"),
        (spaces.MultiDiscrete([3, 4], start=[0, 1]), "MultiDiscrete observations must start at 0"),
        (spaces.Dict({"cells": spaces.MultiDiscrete([3, 4], start=[1, 0])}), "MultiDiscrete observations must start"),
        (spaces.MultiDiscrete([[3, 4], [2, 2]]), "MultiDiscrete observations of more than one dimension"),
        (spaces.Text(8), r"Text observation spaces are not supported .* Box, Discrete, MultiDiscrete, MultiBinary"),
        (spaces.Dict({"name": spaces.Text(8)}), "Text observation spaces are not supported"),
    ],
)
def test_observation_spaces_the_buffers_cannot_hold_are_refused_before_loading(box_dataset, space, message):
    with pytest.raises(ValueError, match=message):
        IQL("MlpPolicy", SpacesEnv(space, ACTION_SPACE), offline_dataset=box_dataset)


def test_a_view_of_a_dataset_is_what_a_saved_model_reloads(box_dataset, tmp_path):
    view = minari.MinariDataset(box_dataset.spec.data_path, np.array([2, 0]))  # as split_dataset makes them
    model = make_model(view)
    assert model.offline_dataset_episodes == [[2, 0]] and model.replay_buffer.size() == 2 + 3
    before = stored(model)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model", env=DummyVecEnv([lambda: SpacesEnv(OBS_SPACE, ACTION_SPACE)]))
    loaded.reload_offline_dataset()
    for field, values in stored(loaded).items():
        np.testing.assert_array_equal(values, before[field], err_msg=field)
    whole = make_model(box_dataset)
    assert whole.offline_dataset_episodes == [None]


def test_a_dataset_changed_since_the_model_was_saved_is_refused_or_warned_about(box_dataset, tmp_path):
    make_model(minari.MinariDataset(box_dataset.spec.data_path, np.array([2, 0]))).save(tmp_path / "view")
    make_model(box_dataset).save(tmp_path / "whole")
    minari.delete_dataset("test/box/episodes-v0")
    write_dataset("test/box/episodes-v0", box_episodes()[:2], observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    env = DummyVecEnv([lambda: SpacesEnv(OBS_SPACE, ACTION_SPACE)])
    with pytest.raises(ValueError, match=r"episodes \[2, 0\] of 'test/box/episodes-v0', which now holds 2 episodes"):
        IQL.load(tmp_path / "view", env=env).reload_offline_dataset()  # an h5py KeyError before
    with pytest.warns(UserWarning, match=r"now hold 7 transitions, the model trained on 9: they changed since"):
        IQL.load(tmp_path / "whole", env=env).reload_offline_dataset()
    more = make_model(minari.load_dataset("test/box/episodes-v0"))
    more.add_transitions(load_transitions([minari.load_dataset("test/box/episodes-v0")]))  # offline data beside it
    more.save(tmp_path / "more")
    # the dataset is as it was, but not the data beside it, dropped silently before
    with pytest.warns(UserWarning, match=r"trained on 14 offline transitions, its datasets hold 7: give the other 7"):
        IQL.load(tmp_path / "more", env=env).reload_offline_dataset()
    make_model(minari.load_dataset("test/box/episodes-v0")).save(tmp_path / "same")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing changed: nothing to warn about
        IQL.load(tmp_path / "same", env=env).reload_offline_dataset()
    minari.delete_dataset("test/box/episodes-v0")  # written again: as many transitions, other observations
    moved = [dataclasses.replace(episode, observations=episode.observations + 0.5) for episode in box_episodes()[:2]]
    write_dataset("test/box/episodes-v0", moved, observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    with pytest.warns(UserWarning, match=r"hold 7 transitions as before, but other ones .* changed since"):
        IQL.load(tmp_path / "more", env=env).reload_offline_dataset()


def test_a_dataset_whose_environment_cannot_be_made_names_it(minari_root, tmp_path, monkeypatch):
    (tmp_path / "gone_envs.py").write_text("from toy_data import LineEnv\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gym.register("ToyLineGone-v0", entry_point="gone_envs:LineEnv")
    env = gym.make("ToyLineGone-v0")
    dataset = write_dataset("test/line/gone-v0", rollout_episodes(env, [good_policy], n_episodes=2), env=env)
    (tmp_path / "gone_envs.py").unlink()  # the package that made the data, uninstalled
    monkeypatch.delitem(sys.modules, "gone_envs")
    del gym.registry["ToyLineGone-v0"]
    with pytest.raises(ValueError, match=r"'test/line/gone-v0' stores the environment 'ToyLineGone-v0', which cannot"):
        IQL("MlpPolicy", None, offline_dataset=dataset)  # a gymnasium NameNotFound from deep inside before
    IQL("MlpPolicy", LineEnv(), offline_dataset=dataset)  # given, the environment is not recovered


def test_a_dataset_that_stores_no_environment_needs_env_and_reloads_without_one(minari_root, tmp_path):
    dataset = write_dataset("test/box/nospec-v0", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    with pytest.raises(ValueError, match=r"'test/box/nospec-v0' stores no environment to recover: give the environment"):
        IQL("MlpPolicy", None, offline_dataset=dataset)
    model = make_model(dataset)
    with pytest.raises(ValueError, match="stores no environment to recover"):  # the same where one is evaluated
        NormalizedEvalCallback(dataset=dataset)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model")
    loaded.reload_offline_dataset()  # no environment needed without relabelling
    for field, values in stored(loaded).items():
        np.testing.assert_array_equal(values, stored(model)[field], err_msg=field)


def hand_transitions(observations: np.ndarray, n: int = 4) -> Transitions:
    """``n`` transitions of the given observation rows (next observations the same), actions 0, rewards 1."""
    return Transitions(
        observations=observations,
        next_observations=observations.copy(),
        actions=np.zeros((n, 2), np.float32),
        rewards=np.ones(n, np.float32),
        terminations=np.zeros(n, bool),
        truncations=np.eye(1, n, n - 1, dtype=bool)[0],
        episode_returns=np.array([float(n)]),
    )


IMAGE_SPACE = spaces.Box(0, 255, (8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "observation_space, observations, message",
    [
        (
            spaces.Discrete(4),
            np.array([0, 1, 7, 2]),
            r"holds 7 \(transition 2, value 0; 1 transitions in all\), not an integer in \[0, 3\]",
        ),
        (spaces.Discrete(4), np.array([0, 1.5, 1, 2]), r"holds 1.5 \(transition 1"),
        (
            spaces.MultiDiscrete([3, 3]),
            np.array([[0, 0], [2, 1], [1, 5], [0, 2]]),
            r"holds 5 \(transition 2, value 1; .* \[0, 2\]",
        ),
        (spaces.MultiBinary(2), np.array([[0, 1], [1, 1], [2, 0], [0, 0]]), r"holds 2 \(transition 2, value 0; .* \[0, 1\]"),
        (
            IMAGE_SPACE,
            np.full((4, 8, 8, 3), 0.5),
            r"holds 0.5 \(transition 0, value 0; 4 transitions in all\), not an integer in \[0, 255\]",
        ),
        (IMAGE_SPACE, np.full((4, 8, 8, 3), 300), r"holds 300 .* not an integer in \[0, 255\]"),
        # SB3 transposes image spaces to (3, 8, 8): frames come in that shape or the environment's (8, 8, 3)
        (
            IMAGE_SPACE,
            np.zeros((4, 8, 3, 8), np.uint8),
            r"frames of shape \(8, 3, 8\): expected \(3, 8, 8\) \(or channel-last \(8, 8, 3\)\)",
        ),
        (OBS_SPACE, np.array([["a", "b"]] * 4, dtype=object), "dtype object: expected numbers"),
        # rows of a 2-D Box given transposed would be reshaped, not transposed: scrambled
        (
            spaces.Box(-1, 1, (2, 3), np.float32),
            np.zeros((4, 3, 2), np.float32),
            r"rows of shape \(3, 2\): expected \(2, 3\) \(or flat \(6,\)\)",
        ),
    ],
    ids=[
        "discrete-past-the-end",
        "discrete-fraction",
        "multidiscrete",
        "multibinary",
        "scaled-frames",
        "frames-past-255",
        "frames-in-another-layout",
        "objects",
        "transposed-rows",
    ],
)
def test_observations_outside_their_space_are_refused_naming_the_first(observation_space, observations, message):
    # before: stored as they came (a 1.5 truncated to 1, 300 wrapped to 44 in uint8, frames scaled to [0, 1] stored
    # as 0), or refused by torch deep in the first update
    model = IQL("MlpPolicy", SpacesEnv(observation_space, ACTION_SPACE), policy_kwargs=dict(net_arch=[8]), buffer_size=100)
    with pytest.raises(ValueError, match=message):
        model.add_transitions(hand_transitions(observations))
    assert model.replay_buffer.size() == 0, "nothing of bad data is stored"


def test_observations_inside_their_space_are_stored():
    for observation_space, observations in (
        (spaces.Discrete(4), np.array([0, 1, 3, 2.0])),
        (IMAGE_SPACE, np.arange(4 * 8 * 8 * 3).reshape(4, 8, 8, 3) % 256),  # int64 frames within [0, 255]
        (IMAGE_SPACE, np.full((4, 8, 8, 3), 255, np.uint8)),
        (IMAGE_SPACE, np.zeros((4, 3, 8, 8), np.uint8)),  # channel-first, as the model's space
        (spaces.Box(-1, 1, (2, 3, 4), np.float32), np.zeros((4, 24))),  # not an image: rows may come flattened
    ):
        model = IQL("MlpPolicy", SpacesEnv(observation_space, ACTION_SPACE), policy_kwargs=dict(net_arch=[8]), buffer_size=100)
        model.add_transitions(hand_transitions(observations))
        assert model.replay_buffer.size() == 4


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda r: r[:2], r"returned shape \(2,\) for rewards of shape \(9,\): it must return one reward per reward"),
        (lambda r: r * np.inf, r"returned NaN or inf \(in float32\) for 9 of 9 rewards"),
        (lambda r: np.float32(1.0), r"returned shape \(\) for rewards of shape \(9,\)"),
    ],
    ids=["shorter", "inf", "scalar"],
)
def test_a_callable_reward_transform_is_checked(box_dataset, transform, message):
    # before: a shorter output filled part of the buffer, an inf one trained to NaN parameters, a scalar crashed
    with pytest.raises(ValueError, match=message):
        make_model(box_dataset, reward_transform=transform)


def test_a_dataset_of_channel_first_images_for_a_channel_last_env_is_refused_with_the_wrapper_to_use():
    from types import SimpleNamespace

    from sb3_iql.data.minari_loader import check_spaces

    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    stored = SimpleNamespace(
        spec=SimpleNamespace(dataset_id="mine/camera/images-v0"),
        observation_space=spaces.Box(0, 255, (3, 36, 48), np.uint8),
        action_space=action_space,
    )
    with pytest.raises(ValueError, match=r"channel first: give the environment wrapped .* VecTransposeImage"):
        check_spaces(stored, spaces.Box(0, 255, (36, 48, 3), np.uint8), action_space)
    with pytest.raises(ValueError, match=r"does not match the environment's:\n.*\n.*\(9, 9, 3\)[^\n]*$"):  # no hint
        check_spaces(stored, spaces.Box(0, 255, (9, 9, 3), np.uint8), action_space)
    with pytest.raises(ValueError, match="does not match"):  # another rank: the mismatch, not an IndexError
        check_spaces(stored, spaces.Box(-1.0, 1.0, (), np.float32), action_space)
    check_spaces(stored, spaces.Box(0, 255, (3, 36, 48), np.uint8), action_space)


def test_per_step_fields_stored_as_columns_load_as_one_value_per_step(minari_root):
    """Minari writes rewards of shape (n, 1) as given and reads them back so: they failed as 'Transitions' rewards."""
    column = [dataclasses.replace(episode, rewards=np.asarray(episode.rewards)[:, None]) for episode in box_episodes()]
    as_columns = load_transitions(
        [write_dataset("test/box/columns-v0", column, observation_space=OBS_SPACE, action_space=ACTION_SPACE)]
    )
    as_rows = load_transitions(
        [write_dataset("test/box/rows-v0", box_episodes(), observation_space=OBS_SPACE, action_space=ACTION_SPACE)]
    )
    assert as_columns.rewards.shape == (len(as_rows),) and np.array_equal(as_columns.rewards, as_rows.rewards)
    np.testing.assert_array_equal(as_columns.episode_returns, as_rows.episode_returns)
    wide = [dataclasses.replace(episode, rewards=np.stack([episode.rewards] * 2, axis=1)) for episode in box_episodes()]
    dataset = write_dataset("test/box/wide-v0", wide, observation_space=OBS_SPACE, action_space=ACTION_SPACE)
    with pytest.raises(ValueError, match=r"episode 0: field 'rewards' must hold one value per step, .* got \(\d+, 2\)"):
        load_transitions([dataset])
