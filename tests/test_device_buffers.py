"""Device replay buffers: same contents and samples as the NumPy buffers, online adds, timeouts, pickling, IQL."""

import pickle

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.save_util import load_from_pkl, save_to_pkl
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from toy_data import LineEnv

from sb3_iql import IQL
from sb3_iql.common.synthetic import SpacesEnv
from sb3_iql.data import OfflineDictReplayBuffer, OfflineReplayBuffer, device_buffers
from sb3_iql.data.device_buffers import DeviceDictReplayBuffer, DeviceReplayBuffer

OBS_SPACE = spaces.Box(-np.inf, np.inf, (3,), np.float32)
DICT_SPACE = spaces.Dict(
    {"observation": spaces.Box(-np.inf, np.inf, (3,), np.float64), "goal": spaces.Box(-np.inf, np.inf, (2,), np.float64)}
)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)
SMALL_NET = {"net_arch": [16, 16]}


def transitions(n: int, dict_obs: bool = False, seed: int = 0) -> tuple:
    """``n`` random transitions: (observations, next_observations, actions, rewards, dones, timeouts)."""
    rng = np.random.default_rng(seed)
    if dict_obs:
        observations = {"observation": rng.standard_normal((n, 3)), "goal": rng.standard_normal((n, 2))}
        next_observations = {key: value + 1.0 for key, value in observations.items()}
    else:
        observations = rng.standard_normal((n, 3)).astype(np.float32)
        next_observations = observations + 1.0
    actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    rewards = rng.standard_normal(n).astype(np.float32)
    dones = (rng.random(n) < 0.3).astype(np.float32)
    timeouts = (rng.random(n) < 0.3).astype(np.float32)
    return observations, next_observations, actions, rewards, dones, timeouts


def seeded(seed: int = 0) -> th.Generator:
    generator = th.Generator()
    generator.manual_seed(seed)
    return generator


def as_float(obs):
    return {key: value.float() for key, value in obs.items()} if isinstance(obs, dict) else obs.float()


def assert_same_samples(expected, actual) -> None:
    for field in ("observations", "next_observations"):
        left, right = getattr(expected, field), getattr(actual, field)
        if isinstance(left, dict):
            assert list(left) == list(right)
            for key in left:
                th.testing.assert_close(as_float(left[key]), right[key], rtol=0, atol=0)
        else:
            th.testing.assert_close(as_float(left), right, rtol=0, atol=0)
    for field in ("actions", "rewards", "dones"):
        th.testing.assert_close(getattr(expected, field), getattr(actual, field), rtol=0, atol=0)


@pytest.mark.parametrize("dict_obs", [False, True])
def test_extend_then_sample_matches_the_numpy_buffer(dict_obs):
    space = DICT_SPACE if dict_obs else OBS_SPACE
    reference_class = OfflineDictReplayBuffer if dict_obs else OfflineReplayBuffer
    device_class = DeviceDictReplayBuffer if dict_obs else DeviceReplayBuffer
    data = transitions(500, dict_obs)
    reference = reference_class(600, space, ACTION_SPACE, device="cpu")
    buffer = device_class(600, space, ACTION_SPACE, device="cpu")
    reference.extend(*data)
    buffer.extend(*data)
    assert buffer.size() == reference.size() == 500 and buffer.pos == 500 and not buffer.full
    # Same indices from equally seeded generators: the very same batches (observations stored as float32).
    reference.generator, buffer.generator = seeded(), seeded()
    for _ in range(5):
        expected, actual = reference.sample(64), buffer.sample(64)
        assert_same_samples(expected, actual)
        assert actual.actions.dtype == th.float32 and actual.dones.shape == actual.rewards.shape == (64, 1)
    # The SB3-shaped views hold the data as written.
    if dict_obs:
        np.testing.assert_array_equal(buffer.observations["goal"][:500, 0].numpy(), data[0]["goal"].astype(np.float32))
    else:
        np.testing.assert_array_equal(buffer.next_observations[:500, 0].numpy(), data[1])
    np.testing.assert_array_equal(buffer.timeouts[:500, 0].numpy(), data[5])


def test_sampled_dones_ignore_timeouts():
    n = 4
    observations = np.zeros((n, 3), np.float32)
    dones = np.array([1, 1, 0, 0], np.float32)
    timeouts = np.array([0, 1, 1, 0], np.float32)
    buffer = DeviceReplayBuffer(n, OBS_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(observations, observations, np.zeros((n, 2), np.float32), np.arange(n, dtype=np.float32), dones, timeouts)
    batch = buffer.gather(th.arange(n))
    assert batch.dones.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # done * (1 - timeout), as SB3
    assert batch.rewards.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert buffer.full and buffer.pos == 0


def test_online_adds_with_two_envs_match_sb3_replay_buffer():
    reference = ReplayBuffer(5, OBS_SPACE, ACTION_SPACE, device="cpu", n_envs=2, handle_timeout_termination=True)
    buffer = DeviceReplayBuffer(5, OBS_SPACE, ACTION_SPACE, device="cpu", n_envs=2)
    assert buffer.buffer_size == reference.buffer_size == 2
    rng = np.random.default_rng(1)
    for step in range(3):  # the third add wraps around the ring
        obs, next_obs = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
        action, reward = rng.uniform(-1, 1, (2, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
        done = np.array([step == 1, False])
        infos = [{"TimeLimit.truncated": step == 1}, {}]
        reference.add(obs, next_obs, action, reward, done, infos)
        buffer.add(obs, next_obs, action, reward, done, infos)
    assert buffer.full == reference.full and buffer.pos == reference.pos == 1
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(buffer, name).numpy(), getattr(reference, name), err_msg=name)
    # Every flat index (row * n_envs + env) is a stored transition.
    batch = buffer.sample(1000)
    stored = {tuple(row) for row in buffer.observations.reshape(-1, 3).numpy().tolist()}
    assert {tuple(row) for row in batch.observations.numpy().tolist()} <= stored


@pytest.mark.parametrize("dict_obs", [False, True])
def test_extend_with_two_envs_fills_rows_and_samples_like_the_numpy_buffer(dict_obs):
    data = transitions(7, dict_obs)
    space = DICT_SPACE if dict_obs else OBS_SPACE
    reference = (OfflineDictReplayBuffer if dict_obs else OfflineReplayBuffer)(10, space, ACTION_SPACE, device="cpu", n_envs=2)
    buffer = (DeviceDictReplayBuffer if dict_obs else DeviceReplayBuffer)(10, space, ACTION_SPACE, device="cpu", n_envs=2)
    with pytest.warns(UserWarning, match="1 of them are stored twice"):
        reference.extend(*data)
    with pytest.warns(UserWarning, match="1 of them are stored twice"):
        buffer.extend(*data)
    assert buffer.pos == reference.pos == 4
    for name in ("actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(buffer, name)[:4].numpy(), getattr(reference, name)[:4], err_msg=name)
    # rows and env columns both from the seeded generator (SB3's buffer draws the columns from NumPy's global one)
    reference.generator, buffer.generator = seeded(), seeded()
    numpy_state = np.random.get_state()[1].copy()
    for _ in range(3):
        assert_same_samples(reference.sample(64), buffer.sample(64))
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    with pytest.raises(ValueError, match="room for 2 more transitions"):
        buffer.extend(*transitions(3, dict_obs))


def test_wrong_spaces_and_memory_option_are_refused():
    with pytest.raises(ValueError, match="DeviceDictReplayBuffer"):
        DeviceReplayBuffer(10, DICT_SPACE, ACTION_SPACE, device="cpu")
    with pytest.raises(ValueError, match="DeviceReplayBuffer"):
        DeviceDictReplayBuffer(10, OBS_SPACE, ACTION_SPACE, device="cpu")
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        DeviceReplayBuffer(10, OBS_SPACE, ACTION_SPACE, device="cpu", optimize_memory_usage=True)
    buffer = DeviceReplayBuffer(10, OBS_SPACE, ACTION_SPACE, device="cpu")
    with pytest.raises(TypeError, match="Box observations"):
        buffer.extend(*transitions(3, dict_obs=True))


def test_memory_is_the_float32_data_and_next_observations_only():
    buffer = DeviceDictReplayBuffer(1000, DICT_SPACE, ACTION_SPACE, device="cpu")
    width = 2 * (3 + 2) + 2 + 3  # observations, next observations, action, reward, done, timeout
    assert buffer._storage.shape == (1000, width) and buffer._storage.dtype == th.float32
    assert not any(isinstance(value, np.ndarray) and value.size > 0 for value in vars(buffer).values())


@pytest.mark.parametrize("dict_obs", [False, True])
def test_pickle_round_trip_keeps_contents_and_sampling(tmp_path, dict_obs):
    space = DICT_SPACE if dict_obs else OBS_SPACE
    buffer = (DeviceDictReplayBuffer if dict_obs else DeviceReplayBuffer)(100, space, ACTION_SPACE, device="cpu")
    buffer.extend(*transitions(40, dict_obs))
    buffer.generator = seeded(3)
    path = tmp_path / "buffer.pkl"
    save_to_pkl(path, buffer)
    loaded = load_from_pkl(path)
    assert type(loaded) is type(buffer) and loaded.pos == 40 and loaded.buffer_size == 100
    th.testing.assert_close(loaded._storage[:40], buffer._storage[:40], rtol=0, atol=0)
    assert_same_samples(buffer.sample(32), loaded.sample(32))  # generator state travels too
    loaded.extend(*transitions(60, dict_obs, seed=1))  # the free rows are still there
    assert loaded.full
    copy = pickle.loads(pickle.dumps(loaded))
    th.testing.assert_close(copy._storage, loaded._storage, rtol=0, atol=0)


@pytest.mark.parametrize("dict_obs", [False, True])
def test_a_numpy_buffer_saves_its_written_rows_only_and_loads_as_it_was(dict_obs):
    """A buffer sized for online fine-tuning pickled every free row: an image dataset's zeros were gigabytes."""
    space = DICT_SPACE if dict_obs else OBS_SPACE
    buffer = (OfflineDictReplayBuffer if dict_obs else OfflineReplayBuffer)(10_000, space, ACTION_SPACE, device="cpu")
    buffer.extend(*transitions(40, dict_obs))
    buffer.generator = seeded(3)
    saved = pickle.dumps(buffer)
    assert len(saved) < 20_000  # 40 rows, not 10,000
    loaded = pickle.loads(saved)
    assert (loaded.pos, loaded.full, loaded.buffer_size) == (40, False, 10_000)
    for name in OfflineReplayBuffer.ROW_ARRAYS:
        pairs = (getattr(loaded, name), getattr(buffer, name))
        for ours, theirs in zip(*(list(a.values()) if isinstance(a, dict) else [a] for a in pairs)):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype and np.array_equal(ours, theirs), name
    for ours, theirs in zip(*(th.utils._pytree.tree_leaves(b.sample(32)) for b in (loaded, buffer))):
        assert (ours is None and theirs is None) or th.equal(ours, theirs)  # the same rows: the generator travels too
    loaded.extend(*transitions(9_960, dict_obs, seed=1))  # the free rows are there; a full buffer is saved whole
    assert loaded.full and pickle.loads(pickle.dumps(loaded)).actions.shape == (10_000, 1, 2)


def test_the_graph_sampling_key_changes_exactly_when_sampling_would_read_other_things():
    """A CUDA graph that captured ``sample`` freezes the sampled range, the storage and the generator: the key
    must change with each of them and with nothing else (new contents in a full ring change no sample's form)."""
    buffer = DeviceReplayBuffer(10, OBS_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(*transitions(6))
    key = buffer.graph_sampling_key()
    assert buffer.graph_sampling_key() == key
    buffer.extend(*transitions(2, seed=1))  # 8 of 10 rows: a wider sampled range
    assert buffer.graph_sampling_key() != key
    buffer.extend(*transitions(2, seed=2))  # full
    full_key = buffer.graph_sampling_key()
    observations, next_observations, actions, rewards, dones, _ = transitions(3, seed=3)
    for step in range(3):  # the ring wraps: other contents, same range and storage
        buffer.add(
            observations[step : step + 1],
            next_observations[step : step + 1],
            actions[step : step + 1],
            rewards[step : step + 1],
            dones[step : step + 1],
            [{}],
        )
    assert buffer.pos == 3 and buffer.graph_sampling_key() == full_key
    buffer.generator = seeded(0)
    assert buffer.graph_sampling_key() != full_key
    resampling = type("Resampling", (DeviceReplayBuffer,), {"sample": lambda self, n, env=None: None})
    assert resampling(10, OBS_SPACE, ACTION_SPACE, device="cpu").graph_sampling_key() is None  # samples otherwise
    loaded = pickle.loads(pickle.dumps(buffer))  # load_replay_buffer: the same range in a new storage
    assert loaded.graph_sampling_key()[1] == full_key[1] and loaded.graph_sampling_key() != buffer.graph_sampling_key()


def test_vec_normalize_is_applied_when_given():
    venv = VecNormalize(DummyVecEnv([lambda: SpacesEnv(OBS_SPACE, ACTION_SPACE)]), norm_reward=True)
    venv.obs_rms.mean[:] = 1.0
    venv.ret_rms.var = np.array(4.0)
    data = transitions(50)
    reference = OfflineReplayBuffer(50, OBS_SPACE, ACTION_SPACE, device="cpu")
    buffer = DeviceReplayBuffer(50, OBS_SPACE, ACTION_SPACE, device="cpu")
    reference.extend(*data)
    buffer.extend(*data)
    reference.generator, buffer.generator = seeded(), seeded()
    expected, actual = reference.sample(16, env=venv), buffer.sample(16, env=venv)
    th.testing.assert_close(expected.observations, actual.observations)
    th.testing.assert_close(expected.rewards, actual.rewards)


def test_iql_with_the_device_buffer_trains_exactly_like_with_the_numpy_buffer():
    data = transitions(300)
    models = []
    for buffer_class in (OfflineReplayBuffer, DeviceReplayBuffer):
        env = SpacesEnv(OBS_SPACE, ACTION_SPACE)
        model = IQL(
            "MlpPolicy", env, replay_buffer_class=buffer_class, buffer_size=400, batch_size=32, policy_kwargs=SMALL_NET, seed=0
        )
        model.replay_buffer.extend(*data)
        model.learn_offline(20, log_interval=0)
        models.append(model)
    # The model's sampling generator drives both buffers, so the batches and updates are the same.
    for reference, param in zip(models[0].policy.parameters(), models[1].policy.parameters()):
        th.testing.assert_close(reference, param, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dict_obs", [False, True])
def test_iql_online_fine_tuning_and_replay_buffer_save_load(tmp_path, dict_obs):
    env = DummyVecEnv([lambda: LineEnv(dict_obs=dict_obs), lambda: LineEnv(dict_obs=dict_obs)])
    buffer_class = DeviceDictReplayBuffer if dict_obs else DeviceReplayBuffer
    model = IQL(
        "MlpPolicy", env, replay_buffer_class=buffer_class, buffer_size=200, batch_size=16, policy_kwargs=SMALL_NET, seed=0
    )
    model.learn(total_timesteps=50)  # SB3's collect_rollouts adds rows of 2 transitions
    assert model.replay_buffer.pos == 25 and model.replay_buffer.timeouts.sum() == 2  # one 20-step episode per env
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    model.load_replay_buffer(tmp_path / "buffer.pkl")
    assert isinstance(model.replay_buffer, buffer_class) and model.replay_buffer.pos == 25
    assert model.replay_buffer.generator is model.sampling_generator  # re-attached (CPU model, CPU buffer)
    model.learn(total_timesteps=10, reset_num_timesteps=False)
    assert model.replay_buffer.pos == 30


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
def test_cuda_buffer_samples_on_the_device_with_its_own_generator(tmp_path):
    buffer = DeviceDictReplayBuffer(100, DICT_SPACE, ACTION_SPACE, device="cuda")
    buffer.extend(*transitions(100, dict_obs=True))
    buffer.generator = seeded(0)  # a CPU generator (IQL's) seeds a CUDA one
    assert buffer.generator.device.type == "cuda"
    batch = buffer.sample(64)
    assert batch.actions.device.type == "cuda" and batch.observations["goal"].device.type == "cuda"
    save_to_pkl(tmp_path / "buffer.pkl", buffer)
    loaded = load_from_pkl(tmp_path / "buffer.pkl")
    assert_same_samples(buffer.sample(16), loaded.sample(16))
    loaded.device = "cpu"  # what SB3's load_replay_buffer does for a CPU model
    assert loaded._storage.device.type == "cpu" and loaded.sample(8).actions.device.type == "cpu"


def test_extend_copies_in_chunks_of_bounded_bytes_per_storage(monkeypatch):
    image_space = spaces.Box(0, 255, (3, 4, 4), np.uint8)
    space = spaces.Dict({"camera": image_space, "goal": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    monkeypatch.setattr(device_buffers, "EXTEND_CHUNK_BYTES", 3 * 2 * 48)  # 3 rows of the images, 8 of the rest
    buffer = DeviceDictReplayBuffer(20, space, ACTION_SPACE, device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(256, size=(21, 3, 4, 4), dtype=np.uint8)
    goals = rng.standard_normal((21, 2)).astype(np.float32)
    _, _, actions, rewards, dones, timeouts = transitions(20)
    observations = {"camera": frames[:-1], "goal": goals[:-1]}
    buffer.extend(observations, {"camera": frames[1:], "goal": goals[1:]}, actions, rewards, dones, timeouts)
    samples = buffer.gather(th.arange(20))
    assert np.array_equal(samples.observations["camera"].numpy(), frames[:-1])
    assert np.array_equal(samples.next_observations["camera"].numpy(), frames[1:])
    assert np.array_equal(samples.observations["goal"].numpy(), goals[:-1])
    assert np.array_equal(samples.actions.numpy(), actions) and np.array_equal(samples.rewards[:, 0].numpy(), rewards)


@pytest.mark.parametrize("buffer_class", [OfflineReplayBuffer, DeviceReplayBuffer])
def test_a_cpu_buffer_steps_and_samples_whatever_torch_s_default_device(buffer_class):
    """A host row and the sampled indices were made on torch's default device: with th.set_default_device("cuda")
    every online step or sample failed ("meta" stands in)."""
    box = spaces.Box(-1, 1, (3,))
    buffer = buffer_class(10, box, spaces.Box(-1, 1, (2,)), device="cpu")
    buffer.generator = th.Generator().manual_seed(0)
    th.set_default_device("meta")
    try:
        buffer.add(np.zeros((1, 3)), np.ones((1, 3)), np.zeros((1, 2)), np.zeros(1), np.zeros(1), [{}])
        samples = buffer.sample(4)
    finally:
        th.set_default_device(None)  # torch's own state: "cpu" would leave a device mode set for later tests
    assert samples.next_observations.device.type == "cpu" and (samples.next_observations == 1).all()
