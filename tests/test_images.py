"""
Image observations: the uint8 frame buffer (each frame once), CnnPolicy on channel-last datasets, save/load.
Minari's HDF5 storage keeps image observations as JPEG (lossy): the frames IQL trains on are the decoded ones.
"""

import os
import pathlib
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize, VecTransposeImage
from toy_data import (
    IMAGE_LINE_ENV_ID,
    IMAGE_SIZE,
    ImageLineEnv,
    bad_policy,
    good_policy,
    make_episode,
    rollout_episodes,
    write_dataset,
)

from sb3_iql import IQL, LayerNormNatureCNN, NormalizedEvalCallback, SpatialSoftmaxCNN, evaluate
from sb3_iql.common.augmentation import random_shift
from sb3_iql.common.preprocessing import IMAGE_STD_OFFSET
from sb3_iql.common.synthetic import SpacesEnv
from sb3_iql.data import DeviceImageReplayBuffer, image_buffers, load_transitions
from sb3_iql.data.minari_loader import Transitions
from sb3_iql.datasets import (
    RandomPolicy,
    collect,
    ensure_dataset,
    make_pixel_pointmaze_env,
    make_pointmaze_dataset,
    pixel_dataset_id,
)
from sb3_iql.datasets.__main__ import main as datasets_main
from sb3_iql.datasets.pixels import render_states
from sb3_iql.iql.fast_update import FunctionalUpdate
from sb3_iql.iql.multi_seed import learn_offline_together

FRAME_SPACE = spaces.Box(0, 255, (1, 8, 8), dtype=np.uint8)
#: The smallest channel-last picture SB3's NatureCNN takes.
PICTURE_SPACE = spaces.Box(0, 255, (36, 36, 3), dtype=np.uint8)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
SMALL_CNN = dict(net_arch=[32], features_extractor_kwargs=dict(features_dim=32))


def episode_arrays(n_steps: int, first_value: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One episode of ``n_steps`` transitions whose frame t is filled with ``first_value + t``."""
    frames = (first_value + np.arange(n_steps + 1, dtype=np.uint8))[:, None, None, None] * np.ones((1, 1, 8, 8), np.uint8)
    timeouts = np.zeros(n_steps, np.float32)
    timeouts[-1] = 1.0
    return dict(
        observations=frames[:-1],
        next_observations=frames[1:],
        actions=rng.uniform(-1, 1, (n_steps, 1)).astype(np.float32),
        rewards=rng.normal(size=n_steps).astype(np.float32),
        dones=np.zeros(n_steps, np.float32),
        timeouts=timeouts,
    )


def concatenated(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([episode[key] for episode in episodes]) for key in episodes[0]}


def all_samples(buffer: DeviceImageReplayBuffer):
    """Every sampleable transition, oldest first."""
    return buffer.gather((th.arange(buffer.size()) + buffer.oldest) % buffer.buffer_size)


def test_each_frame_is_stored_once_and_samples_give_the_transitions_back():
    rng = np.random.default_rng(0)
    episodes = [episode_arrays(n_steps, 10 * index, rng) for index, n_steps in enumerate([5, 3, 7])]
    data = concatenated(episodes)
    buffer = DeviceImageReplayBuffer(100, FRAME_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(**data)
    assert buffer.size() == 15 and buffer.n_frames == 15 + 3  # one frame per transition, one more per episode
    samples = all_samples(buffer)
    assert samples.observations.dtype == th.uint8
    assert np.array_equal(samples.observations.numpy(), data["observations"])
    assert np.array_equal(samples.next_observations.numpy(), data["next_observations"])
    assert np.array_equal(samples.actions.numpy(), data["actions"])
    assert np.array_equal(samples.rewards.numpy().ravel(), data["rewards"])
    assert samples.dones.sum() == 0  # timeouts are not terminal
    batch = buffer.sample(32)
    assert batch.observations.shape == (32, 1, 8, 8) and batch.rewards.shape == (32, 1)


def test_a_reward_only_vec_normalize_normalizes_the_sampled_rewards_as_sb3_s_buffers_do():
    """Any VecNormalize was refused at the first update, a reward-only one too (SAC trains with it)."""
    rng = np.random.default_rng(0)
    buffer = DeviceImageReplayBuffer(100, FRAME_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(**concatenated([episode_arrays(6, 0, rng)]))
    env = VecNormalize(DummyVecEnv([lambda: SpacesEnv(FRAME_SPACE, ACTION_SPACE)]), norm_obs=False)
    env.ret_rms.var[...] = 4.0
    buffer.generator = th.Generator().manual_seed(0)
    plain = buffer.sample(16)
    buffer.generator = th.Generator().manual_seed(0)
    normalized = buffer.sample(16, env=env)
    assert th.equal(normalized.observations, plain.observations)
    th.testing.assert_close(normalized.rewards, plain.rewards / np.sqrt(4.0 + env.epsilon))
    slots = np.array([0, 3, 5])  # SB3's hook for given transitions normalizes too (it ignored env)
    th.testing.assert_close(
        buffer._get_samples(slots, env).rewards, buffer._get_samples(slots).rewards / np.sqrt(4.0 + env.epsilon)
    )
    with pytest.raises(ValueError, match=r"does not normalize image observations: .*norm_obs=False"):
        buffer.sample(16, env=VecNormalize(DummyVecEnv([lambda: SpacesEnv(FRAME_SPACE, ACTION_SPACE)])))


def test_online_steps_of_several_envs_share_frames_per_env_and_the_ring_wraps():
    rng = np.random.default_rng(1)
    buffer = DeviceImageReplayBuffer(12, FRAME_SPACE, ACTION_SPACE, device="cpu", n_envs=2, extra_frames=4)
    env_episodes = [episode_arrays(10, 0, rng), episode_arrays(10, 100, rng)]
    for step in range(10):
        fields = {key: np.stack([episode[key][step] for episode in env_episodes]) for key in env_episodes[0]}
        infos = [{"TimeLimit.truncated": bool(fields["timeouts"][env])} for env in range(2)]
        buffer.add(
            fields["observations"], fields["next_observations"], fields["actions"], fields["rewards"], fields["dones"], infos
        )
    assert buffer.n_frames == 20 + 2  # one episode per environment
    assert buffer.size() == 12  # the ring keeps the newest 12 of 20 transitions
    samples = all_samples(buffer)
    # the last 6 steps of both environments, interleaved: frame values step (env 0) and 100 + step (env 1)
    expected = np.array([[step, 100 + step] for step in range(4, 10)]).ravel()
    assert np.array_equal(samples.observations[:, 0, 0, 0].numpy(), expected)
    assert np.array_equal(samples.next_observations[:, 0, 0, 0].numpy(), expected + 1)


def test_transitions_whose_frames_were_overwritten_are_no_longer_sampled():
    rng = np.random.default_rng(2)
    buffer = DeviceImageReplayBuffer(10, FRAME_SPACE, ACTION_SPACE, device="cpu", extra_frames=2)
    data = concatenated([episode_arrays(1, 20 * index, rng) for index in range(7)])  # one-step episodes: 2 frames each
    with pytest.warns(UserWarning, match="no longer sampled"):
        buffer.extend(**data)
    assert buffer.size() == 6  # 12 frame slots hold the 14 frames of the last 6 transitions only
    samples = all_samples(buffer)
    assert np.array_equal(samples.observations.numpy(), data["observations"][1:])
    assert np.array_equal(samples.next_observations.numpy(), data["next_observations"][1:])


def test_an_env_s_frame_is_shared_only_while_it_is_still_in_the_ring():
    """Two envs step, offline data fill the ring, then env 1 goes on: its last frame is written again, not reused."""
    rng = np.random.default_rng(3)
    buffer = DeviceImageReplayBuffer(30, FRAME_SPACE, ACTION_SPACE, device="cpu", n_envs=2, extra_frames=4)
    env_episodes = [episode_arrays(6, 0, rng), episode_arrays(6, 100, rng)]
    expected_obs, expected_next = [], []

    def step(index: int) -> None:
        fields = {key: np.stack([episode[key][index] for episode in env_episodes]) for key in env_episodes[0]}
        observations, next_observations = fields["observations"], fields["next_observations"]
        buffer.add(observations, next_observations, fields["actions"], fields["rewards"], fields["dones"], [{}, {}])
        expected_obs.extend(fields["observations"][:, 0, 0, 0])
        expected_next.extend(fields["next_observations"][:, 0, 0, 0])

    for index in range(3):  # the episodes go on after the offline data
        step(index)
    offline = concatenated([episode_arrays(15, 40 + 20 * index, rng) for index in range(2)])  # 32 frames: a full ring
    buffer.extend(**offline)
    expected_obs.extend(offline["observations"][:, 0, 0, 0])
    expected_next.extend(offline["next_observations"][:, 0, 0, 0])
    for index in range(3, 6):
        step(index)
    samples = all_samples(buffer)
    first = buffer.oldest
    assert buffer.size() > 0
    assert np.array_equal(samples.observations[:, 0, 0, 0].numpy(), expected_obs[first:])
    assert np.array_equal(samples.next_observations[:, 0, 0, 0].numpy(), expected_next[first:])


def test_the_graph_sampling_key_follows_the_sampleable_range():
    """``sample`` bakes the range of sampleable transitions (its size, and the oldest as an absolute number) into a
    CUDA graph: the key changes with either."""
    rng = np.random.default_rng(4)
    buffer = DeviceImageReplayBuffer(10, FRAME_SPACE, ACTION_SPACE, device="cpu", extra_frames=10)
    buffer.extend(**episode_arrays(6, 0, rng))
    key = buffer.graph_sampling_key()
    assert buffer.graph_sampling_key() == key
    buffer.extend(**episode_arrays(6, 50, rng))  # full, and the oldest sampleable transition moves
    full_key = buffer.graph_sampling_key()
    assert full_key != key and buffer.size() == 10
    buffer.extend(**episode_arrays(3, 100, rng))  # same size, a later oldest transition
    assert buffer.size() == 10 and buffer.graph_sampling_key() != full_key


def test_the_buffer_pickles_its_written_frames_and_generator_and_goes_on_as_the_original():
    rng = np.random.default_rng(3)
    buffer = DeviceImageReplayBuffer(5000, FRAME_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(**concatenated([episode_arrays(8, 0, rng), episode_arrays(9, 50, rng)]))
    buffer.generator = th.Generator().manual_seed(0)
    pickled = pickle.dumps(buffer)
    assert len(pickled) < 20_000, "the written frames only, not the room for 5,000 transitions (5500 x 64 bytes)"
    copy = pickle.loads(pickled)
    assert copy.frames.shape == buffer.frames.shape and copy.table.shape == buffer.table.shape
    first, second = buffer.sample(16), copy.sample(16)
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        assert th.equal(getattr(first, name), getattr(second, name))
    small = DeviceImageReplayBuffer(20, FRAME_SPACE, ACTION_SPACE, device="cpu")  # a wrapped ring: every slot written
    small.extend(**concatenated([episode_arrays(8, 0, rng), episode_arrays(9, 50, rng)]))
    small.extend(**episode_arrays(7, 100, rng))
    copy = pickle.loads(pickle.dumps(small))
    more = concatenated([episode_arrays(6, 150, np.random.default_rng(4))])
    for trained in (small, copy):
        trained.extend(**more)
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        assert th.equal(getattr(all_samples(small), name), getattr(all_samples(copy), name))


def test_setting_the_buffer_s_device_moves_its_rings():
    """SB3's load_replay_buffer sets buffer.device to the model's: the frames stayed where unpickling put them, so a
    buffer saved by a CPU model and loaded into a CUDA one sampled CUDA indices into CPU rings ("meta" stands in)."""
    buffer = DeviceImageReplayBuffer(10, FRAME_SPACE, ACTION_SPACE, device="cpu")
    buffer.extend(**episode_arrays(4, 0, np.random.default_rng(0)))
    buffer.device = "meta"
    assert buffer.device == th.device("meta")
    assert {tensor.device.type for tensor in (buffer.frames, buffer.frame_ids, buffer.table)} == {"meta"}


@pytest.fixture
def image_dataset(minari_root: pathlib.Path):
    """Half the episodes go to the goal, half go away from it, seen as channel-last frames."""
    env = gym.make(IMAGE_LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=40)
    return write_dataset("test/line/image-mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)


def image_model(dataset, **kwargs) -> IQL:
    defaults = dict(offline_steps=100, policy_kwargs=SMALL_CNN, seed=0, batch_size=64)
    defaults.update(kwargs)
    return IQL("CnnPolicy", ImageLineEnv(), offline_dataset=dataset, **defaults)


def test_a_model_loaded_for_deployment_with_one_transition_of_buffer_allocates_a_ring_of_that_size(image_dataset, tmp_path):
    """The saved ``extra_frames`` (sized for the offline data) allocated the whole ring again (2 GB at 84x84x3 for a
    1M buffer), whatever the buffer_size asked for at loading."""
    model = image_model(image_dataset)
    assert model.replay_buffer.extra_frames > 1000
    model.save(tmp_path / "pixels")
    deployed = IQL.load(tmp_path / "pixels", custom_objects={"buffer_size": 1})
    assert deployed.replay_buffer.frame_capacity == 3 and len(deployed.replay_buffer.frames) == 3  # 2 + n_envs
    obs = ImageLineEnv().observation_space.sample()
    np.testing.assert_array_equal(deployed.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_offline_data_added_to_a_full_frame_buffer_is_refused_as_by_the_other_buffers(image_dataset):
    """The frame buffer's extend wraps around: it overwrote every earlier transition, and counted them offline."""
    model = image_model(image_dataset, buffer_size=image_dataset.total_steps + 5)
    with pytest.raises(ValueError, match=rf"room for 5 more transitions, {image_dataset.total_steps} were given"):
        model.add_transitions(load_transitions([image_dataset]))
    assert model.offline_dataset_size == model.replay_buffer.size() == image_dataset.total_steps


def test_a_dataset_of_short_episodes_fits_a_frame_buffer_of_its_size(minari_root):
    env = gym.make(IMAGE_LINE_ENV_ID, max_episode_steps=3)
    dataset = write_dataset("test/line/image-short-v0", rollout_episodes(env, [good_policy], n_episodes=30), env=env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = IQL("CnnPolicy", ImageLineEnv(), offline_dataset=dataset, buffer_size=90, policy_kwargs=SMALL_CNN)
    assert not [warning for warning in caught if "no longer sampled" in str(warning.message)]
    assert model.replay_buffer.size() == model.offline_dataset_size == 90  # 30 episodes of 3 steps: 120 frames


def test_an_env_already_in_vec_transpose_image_takes_the_channel_last_dataset(image_dataset):
    wrapped = IQL(
        "CnnPolicy", VecTransposeImage(DummyVecEnv([ImageLineEnv])), offline_dataset=image_dataset, policy_kwargs=SMALL_CNN
    )
    raw = image_model(image_dataset)
    assert wrapped.observation_space == raw.observation_space
    assert th.equal(wrapped.replay_buffer.frames, raw.replay_buffer.frames)  # transposed alike


def test_a_frame_buffer_loaded_into_a_new_model_counts_its_transitions(image_dataset, tmp_path):
    def two_envs() -> IQL:
        return IQL("CnnPolicy", DummyVecEnv([ImageLineEnv] * 2), policy_kwargs=SMALL_CNN)

    source = two_envs()
    source.add_transitions(load_transitions([image_dataset]))
    source.save_replay_buffer(tmp_path / "frames")
    model = two_envs()
    model.load_replay_buffer(tmp_path / "frames")
    assert model.offline_dataset_size == source.offline_dataset_size == 40 * 20  # size() counts transitions here


def test_cnn_policy_trains_on_channel_last_frames_kept_as_uint8(image_dataset, tmp_path):
    model = image_model(image_dataset)
    buffer = model.replay_buffer
    assert isinstance(buffer, DeviceImageReplayBuffer)
    assert model.observation_space.shape == (3, IMAGE_SIZE, IMAGE_SIZE)  # SB3's VecTransposeImage
    # 20-step episodes: at most 21 frames each (fewer where an episode starts on its predecessor's last picture)
    assert buffer.size() == 40 * 20 and 40 * 20 < buffer.n_frames <= 40 * 21
    assert buffer.frames.dtype == th.uint8
    # the stored frames are the dataset's (as decoded from its JPEGs), transposed
    transitions = load_transitions([image_dataset])
    samples = buffer.gather(th.arange(buffer.size()))
    assert np.array_equal(samples.observations.numpy(), transitions.observations.transpose(0, 3, 1, 2))
    assert np.array_equal(samples.next_observations.numpy(), transitions.next_observations.transpose(0, 3, 1, 2))
    model.learn_offline(50)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model", env=ImageLineEnv())
    frames = np.stack([ImageLineEnv().reset(seed=seed)[0] for seed in range(8)])  # channel-last, as the env gives
    assert np.array_equal(loaded.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])
    n_frames = buffer.n_frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(total_timesteps=40)  # online steps through VecTransposeImage into the same buffer
    assert buffer.size() == 40 * 20 + 40 and buffer.n_frames == n_frames + 40 + 2  # two 20-step episodes


def test_a_normalized_evaluation_built_from_the_dataset_sees_frames_as_the_model_s_env_does(image_dataset):
    model = image_model(image_dataset, offline_steps=4)
    callback = NormalizedEvalCallback(dataset=image_dataset, eval_freq=2, n_eval_episodes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # EvalCallback warns where the two envs are of other types
        model.learn_offline(4, callback=callback)
    assert isinstance(callback.eval_env, VecTransposeImage) and callback.last_normalized_score is not None


def test_the_compiled_update_of_image_observations_trains_like_the_eager_one(image_dataset):
    # SB3's image test compares the space's NumPy bounds, on which a fullgraph-compiled update cannot branch: each
    # network decides once, when it is built (observation_preprocessing). A wrong decision (frames not divided by 255) would
    # train differently.
    eager, compiled = (image_model(image_dataset, compile_update=mode) for mode in (False, True))
    eager.learn_offline(5)
    compiled.learn_offline(5)  # same seed: the same batches
    assert isinstance(compiled._fast_update, FunctionalUpdate)
    difference = max((a - b).abs().max().item() for a, b in zip(eager.policy.parameters(), compiled.policy.parameters()))
    assert difference < 1e-5


def test_an_example_batch_leaves_the_image_buffer_drawing_the_batches_of_a_run_without_it(image_dataset, monkeypatch):
    """On a GPU the image buffer's first sample swaps the model's CPU generator for one on the device, seeded from it
    (``generator_on``); a batch drawn to compile or capture the update on must not leave that swap behind. Here a
    stand-in swap on the CPU."""
    swapped = set()

    def swap(generator, device):
        if generator is None or id(generator) in swapped:
            return generator
        on_device = th.Generator().manual_seed(int(th.randint(2**31, (), generator=generator)))
        swapped.add(id(on_device))
        return on_device

    monkeypatch.setattr(image_buffers, "generator_on", swap)
    plain, warmed = image_model(image_dataset), image_model(image_dataset)
    warmed._example_batch()
    for _ in range(2):
        first, second = plain._sample_batch(8), warmed._sample_batch(8)
        assert th.equal(first.observations, second.observations) and th.equal(first.actions, second.actions)


@pytest.mark.parametrize("normalize_images", [True, False])
def test_image_normalisation_is_per_pixel_in_the_units_the_networks_see(image_dataset, tmp_path, normalize_images):
    policy_kwargs = {**SMALL_CNN, "normalize_observations": True, "normalize_images": normalize_images}
    model = image_model(image_dataset, policy_kwargs=policy_kwargs)
    normalizer = model.policy.observation_normalizer
    frames = load_transitions([image_dataset]).observations.transpose(0, 3, 1, 2).astype(np.float64)
    scale = 255.0 if normalize_images else 1.0
    assert normalizer.fitted and normalizer.mean_obs.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.allclose(normalizer.mean_obs.numpy(), frames.mean(0) / scale, atol=1e-5)
    assert np.allclose(normalizer.std_obs.numpy(), frames.std(0) / scale + IMAGE_STD_OFFSET, atol=1e-5)
    batch = model.replay_buffer.sample(8).observations
    inputs = batch.float() / scale
    expected = (inputs - normalizer.mean_obs) / normalizer.std_obs
    assert th.allclose(normalizer(inputs), expected) and (normalizer(inputs).abs() > 1).any()  # the column stands out
    for network in (model.actor, model.critic, model.value_net):  # what each network's extractor is given
        extractor = network.features_extractor
        with th.no_grad():
            th.testing.assert_close(network.extract_features(batch, extractor), extractor(expected))
    model.learn_offline(2)
    model.save(tmp_path / "normalized")
    loaded = IQL.load(tmp_path / "normalized")
    assert th.equal(loaded.policy.observation_normalizer.std_obs, normalizer.std_obs)
    frames = batch.numpy()
    assert np.array_equal(loaded.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])


@pytest.mark.slow
def test_iql_beats_behaviour_cloning_on_mixed_image_data(image_dataset):
    th.set_num_threads(1)

    def offline_return(beta: float) -> float:
        model = image_model(image_dataset, beta=beta, offline_steps=1500, batch_size=128)
        model.learn(0)
        return evaluate(model, ImageLineEnv(), n_eval_episodes=20, seed=100).mean_return

    # stepping to the goal scores about -2.5, away from it about -17; measured: IQL -4.6, BC -7.8
    iql, bc = offline_return(beta=3.0), offline_return(beta=0.0)
    assert iql > -6.0, iql
    assert iql > bc + 2.0, (iql, bc)


def window_matches(images: th.Tensor, shifted: th.Tensor, pad: int) -> th.Tensor:
    """
    :return: for each image of ``shifted`` ``(batch, channels, size, size)``, which windows of its replicate-padded
        original in ``images`` it equals (all channels alike), shape ``(batch, 2 pad + 1, 2 pad + 1)``
    """
    size = images.shape[-1]
    padded = th.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (batch, channels, 2 pad + 1, 2 pad + 1, size, size)
    return (windows == shifted.float()[:, :, None, None]).flatten(-2).all(-1).all(1)


def test_random_shift_crops_the_border_padded_image_at_one_offset_per_image():
    n_images = 8
    images = th.randint(0, 256, (n_images, 3, 6, 6), dtype=th.uint8, generator=th.Generator().manual_seed(1))
    assert random_shift(images, 0) is images
    shifted = random_shift(images, 2, th.Generator().manual_seed(0))
    assert shifted.dtype == th.uint8 and shifted.shape == images.shape
    offsets = []
    for matches in window_matches(images, shifted, 2):  # each image is one 6x6 window of its padded version
        found = [tuple(offset) for offset in th.argwhere(matches).tolist()]
        assert len(found) == 1, found
        offsets += found
    assert len(set(offsets)) > 1 and offsets != [(2, 2)] * n_images  # shifted, each image by its own draw


def test_image_shift_augments_the_training_batches_only(image_dataset):
    model = image_model(image_dataset, image_shift=4)
    stored = model.replay_buffer.sample(64)
    model.sampling_generator.manual_seed(1)
    plain = model.replay_buffer.sample(64)
    model.sampling_generator.manual_seed(1)
    model.replay_buffer.generator = model.sampling_generator
    augmented = model._sample_batch(64)
    assert stored.observations.dtype == augmented.observations.dtype == th.uint8
    assert th.equal(plain.actions, augmented.actions)  # the same transitions...
    for name in ("observations", "next_observations"):  # ...with shifted pictures, each a window of the padded one
        plain_frames, shifted = getattr(plain, name), getattr(augmented, name)
        assert not th.equal(plain_frames, shifted)
        assert window_matches(plain_frames, shifted, 4).flatten(1).any(1).all()
    model.learn_offline(5)
    frames = plain.observations.numpy()
    assert np.array_equal(model.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])
    with pytest.raises(ValueError, match="image_shift"):
        image_model(image_dataset, image_shift=-1)
    with pytest.raises(ValueError, match=r"image_shift=4 shifts image observations .* has none"):
        IQL("MlpPolicy", "Pendulum-v1", image_shift=4)  # no image to shift: refused, not ignored


def test_image_shift_shifts_float_images_of_a_policy_that_does_not_normalize_them():
    """SB3's route for images already in [0, 1]: normalize_images=False. image_shift refused them as 'has none'."""
    float_images = spaces.Box(0.0, 1.0, (3, 36, 36), np.float32)
    env = SpacesEnv(float_images, ACTION_SPACE)
    kwargs = dict(buffer_size=100, seed=0, image_shift=2)
    with pytest.raises(ValueError, match=r"uint8 ones, or any 3-D Box with policy_kwargs normalize_images=False"):
        IQL("CnnPolicy", env, **kwargs)
    model = IQL("CnnPolicy", env, policy_kwargs={"normalize_images": False}, **kwargs)
    frames = th.rand(8, 3, 36, 36, generator=th.Generator().manual_seed(0)).numpy()
    ends = np.arange(8) == 7
    zeros = np.zeros(8, np.float32)
    model.add_transitions(Transitions(frames, frames, np.zeros((8, 1), np.float32), zeros, ends, ends & False, zeros[:1]))
    model.sampling_generator.manual_seed(1)
    plain = model.replay_buffer.sample(8)
    model.sampling_generator.manual_seed(1)
    shifted = model._sample_batch(8)
    assert shifted.observations.dtype == th.float32 and not th.equal(plain.observations, shifted.observations)
    assert window_matches(plain.observations, shifted.observations, 2).flatten(1).any(1).all()


@pytest.mark.parametrize("extractor", ["NatureCNN", "LayerNormNatureCNN", "SpatialSoftmaxCNN"])
def test_every_image_extractor_takes_float_images_that_the_policy_does_not_normalize(extractor):
    """LayerNormNatureCNN, which the docs suggest for such images, failed NatureCNN's uint8 check (SB3 only lifts it
    for NatureCNN and CombinedExtractor)."""
    env = SpacesEnv(spaces.Box(0.0, 1.0, (3, 36, 36), np.float32), ACTION_SPACE)
    policy_kwargs = {"normalize_images": False, "features_extractor_class": extractor, "net_arch": [8]}
    model = IQL("CnnPolicy", env, policy_kwargs=policy_kwargs, buffer_size=10, seed=0)
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert action.shape == ACTION_SPACE.shape


def test_learners_trained_together_see_the_shifted_pictures_of_their_single_runs(image_dataset):
    alone = [image_model(image_dataset, image_shift=4, seed=seed) for seed in (0, 1)]
    together = [image_model(image_dataset, image_shift=4, seed=seed) for seed in (0, 1)]
    for model in alone:
        model.learn_offline(3)
    learn_offline_together(together, 3)
    for single, batched in zip(alone, together):
        difference = max((a - b).abs().max().item() for a, b in zip(single.policy.parameters(), batched.policy.parameters()))
        assert difference < 1e-5


def test_an_atari_shaped_minari_dataset_loads_as_uint8_frames_with_discrete_actions(minari_root):
    frame_space = spaces.Box(0, 255, (84, 84, 3), dtype=np.uint8)
    env = SpacesEnv(frame_space, spaces.Discrete(6))
    rng = np.random.default_rng(0)
    episodes = []
    for index, length in enumerate([30, 20]):
        frames = rng.integers(256, size=(length + 1, 84, 84, 3), dtype=np.uint8)
        actions = rng.integers(6, size=length)
        terminations = [False] * (length - 1) + [index == 0]
        truncations = [False] * (length - 1) + [index == 1]
        episodes.append(make_episode(index, list(frames), actions, rng.normal(size=length), terminations, truncations))
    dataset = write_dataset("test/atari/random-v0", episodes, env=env)
    model = IQL("CnnPolicy", env, offline_dataset=dataset, policy_kwargs=SMALL_CNN, batch_size=16, seed=0, offline_steps=3)
    buffer = model.replay_buffer
    assert isinstance(buffer, DeviceImageReplayBuffer) and buffer.frames.dtype == th.uint8
    assert buffer.size() == 50 and buffer.n_frames == 52  # each frame once, as uint8
    assert buffer.frames.element_size() * buffer.frames[: buffer.n_frames].numel() == 52 * 84 * 84 * 3
    transitions = load_transitions([dataset])
    samples = buffer.gather(th.arange(50))
    assert np.array_equal(samples.observations.numpy(), transitions.observations.transpose(0, 3, 1, 2))
    assert np.array_equal(samples.actions[:, 0].numpy(), transitions.actions[:, 0])
    assert samples.dones[:, 0].tolist() == [0.0] * 29 + [1.0] + [0.0] * 20  # the time limit is not terminal
    model.learn_offline(3)
    actions, _ = model.predict(transitions.observations[:4], deterministic=True)
    assert actions.shape == (4,) and set(actions.tolist()) <= set(range(6))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_collected_frames_load_back_exactly_unless_jpeg_is_asked_for(minari_root, channels):
    env = SpacesEnv(spaces.Box(0, 255, (36, 36, channels), dtype=np.uint8), spaces.Discrete(2))
    env.observation_space.seed(0)
    collect(env, RandomPolicy(env.action_space), "test/frames/lossless-v0", n_steps=6)
    episode = next(iter(minari.load_dataset("test/frames/lossless-v0").iterate_episodes()))
    env.observation_space.seed(0)
    expected = np.stack([env.observation_space.sample() for _ in range(2)])
    assert np.array_equal(episode.observations, expected)  # random frames, each episode of one step
    if channels != 3:
        with pytest.raises(ValueError, match="JPEG stores 2-D or RGB"):
            collect(env, RandomPolicy(env.action_space), "test/frames/jpeg-v0", n_steps=6, jpeg_encoding=True)
        assert not minari_root.joinpath("test", "frames", "jpeg-v0").exists()
        return
    env.observation_space.seed(0)
    collect(env, RandomPolicy(env.action_space), "test/frames/jpeg-v0", n_steps=6, jpeg_encoding=True)
    jpeg = next(iter(minari.load_dataset("test/frames/jpeg-v0").iterate_episodes()))
    assert jpeg.observations.shape == expected.shape and not np.array_equal(jpeg.observations, expected)


def test_dict_image_keys_are_stored_as_uint8_and_sampled_exactly(minari_root, tmp_path):
    observation_space = spaces.Dict({"camera": PICTURE_SPACE, "position": spaces.Box(-np.inf, np.inf, (2,), dtype=np.float32)})
    env = SpacesEnv(observation_space, spaces.Box(-1, 1, (2,), dtype=np.float32))
    rng = np.random.default_rng(0)
    episodes = []
    for index, length in enumerate([12, 9]):
        observations = [
            {
                "camera": rng.integers(256, size=PICTURE_SPACE.shape, dtype=np.uint8),
                "position": rng.normal(size=2).astype(np.float32),
            }
            for _ in range(length + 1)
        ]
        actions = rng.uniform(-0.9, 0.9, size=(length, 2)).astype(np.float32)
        episodes.append(
            make_episode(
                index, observations, actions, rng.normal(size=length), [False] * length, [False] * (length - 1) + [True]
            )
        )
    dataset = write_dataset("test/camera/random-v0", episodes, env=env)
    policy_kwargs = dict(net_arch=[16], features_extractor_kwargs=dict(cnn_output_dim=8))
    model = IQL(
        "MultiInputPolicy", env, offline_dataset=dataset, buffer_size=40, policy_kwargs=policy_kwargs, batch_size=8, seed=0
    )
    buffer = model.replay_buffer
    assert buffer._image_storage.dtype == th.uint8 and buffer._image_storage.shape == (40, 2 * 36 * 36 * 3)
    assert buffer._storage.shape == (40, 2 * 2 + 2 + 3)  # position, next position, action, reward, done, timeout
    transitions = load_transitions([dataset])
    samples = buffer.gather(th.arange(21))
    assert samples.observations["camera"].dtype == th.uint8
    assert np.array_equal(samples.observations["camera"].numpy(), transitions.observations["camera"].transpose(0, 3, 1, 2))
    assert np.array_equal(
        samples.next_observations["camera"].numpy(), transitions.next_observations["camera"].transpose(0, 3, 1, 2)
    )
    assert np.array_equal(samples.observations["position"].numpy(), transitions.observations["position"])
    model.learn_offline(2)
    model.save_replay_buffer(tmp_path / "buffer")
    reloaded = IQL("MultiInputPolicy", env, buffer_size=40, policy_kwargs=policy_kwargs, seed=0)
    reloaded.load_replay_buffer(tmp_path / "buffer")
    again = reloaded.replay_buffer.gather(th.arange(21))
    for key in ("camera", "position"):
        assert th.equal(again.observations[key], samples.observations[key])
        assert th.equal(again.next_observations[key], samples.next_observations[key])
    model.learn(total_timesteps=3)  # online steps through add(): the frames of the env, as uint8
    online = model.replay_buffer.gather(th.arange(21, 24))
    assert online.observations["camera"].dtype == th.uint8 and online.observations["camera"].float().std() > 50


def test_a_shared_extractor_is_trained_by_the_critics_only_and_survives_save_load(image_dataset, tmp_path):
    model = image_model(image_dataset, policy_kwargs={**SMALL_CNN, "share_features_extractor": True})
    policy = model.policy
    shared = policy.critic.features_extractor
    assert policy.actor.features_extractor is shared and policy.value_net.features_extractor is shared
    assert policy.critic_target.features_extractor is not shared  # the targets' own Polyak-averaged copy
    extractor_ids = {id(param) for param in shared.parameters()}
    for network in (policy.actor, policy.value_net):
        assert not extractor_ids & {id(p) for group in network.optimizer.param_groups for p in group["params"]}
    batch = model.replay_buffer.sample(16)
    policy.actor.log_prob(batch.observations, batch.actions).mean().backward()
    policy.value_net(batch.observations).mean().backward()
    assert all(param.grad is None for param in shared.parameters())  # their losses see detached features
    policy.zero_grad(set_to_none=True)
    before = [param.clone() for param in shared.parameters()]
    model.learn_offline(3)
    assert any(not th.equal(old, new) for old, new in zip(before, shared.parameters()))  # the critics' steps
    model.save(tmp_path / "shared")
    loaded = IQL.load(tmp_path / "shared")
    assert loaded.policy.actor.features_extractor is loaded.policy.critic.features_extractor
    frames = np.stack([ImageLineEnv().reset(seed=seed)[0] for seed in range(8)])
    assert np.array_equal(loaded.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])
    with pytest.raises(ValueError, match="share parameters"):
        model._functional_update(compile_mode=None)
    with pytest.raises(ValueError, match="share_features_extractor"):
        learn_offline_together([model], 1)


def test_critics_sharing_an_extractor_leave_the_actor_its_own(image_dataset, tmp_path):
    model = image_model(image_dataset, policy_kwargs={**SMALL_CNN, "share_features_extractor": "critics"})
    policy = model.policy
    shared = policy.critic.features_extractor
    assert policy.value_net.features_extractor is shared and policy.actor.features_extractor is not shared
    assert policy.critic_target.features_extractor is not shared
    value_params = {id(p) for group in policy.value_net.optimizer.param_groups for p in group["params"]}
    actor_params = {id(p) for group in policy.actor.optimizer.param_groups for p in group["params"]}
    assert not value_params & {id(param) for param in shared.parameters()}  # the value loss sees it detached
    assert {id(param) for param in policy.actor.features_extractor.parameters()} <= actor_params  # the actor trains its own
    before = [param.clone() for param in policy.actor.features_extractor.parameters()]
    model.learn_offline(3)
    assert any(not th.equal(old, new) for old, new in zip(before, policy.actor.features_extractor.parameters()))
    model.save(tmp_path / "critics")
    loaded = IQL.load(tmp_path / "critics").policy
    assert loaded.value_net.features_extractor is loaded.critic.features_extractor
    assert loaded.actor.features_extractor is not loaded.critic.features_extractor
    with pytest.raises(ValueError, match="share_features_extractor must be"):
        image_model(image_dataset, policy_kwargs={**SMALL_CNN, "share_features_extractor": "actor"})


def test_the_command_line_renders_a_maze_dataset_written_under_its_own_id(minari_root, capsys):
    arguments = ["--maze", "umaze", "--stitch", "--n-steps", "300", "--n-reference-episodes", "1", "--pixel-steps", "20"]
    datasets_main(["pointmaze", *arguments, "--dataset-id", "mine/maze/stitch-v0", "--pixels", "36"])
    pixels = minari.load_dataset("mine/maze/stitch-pixels36-v0")
    assert pixels.total_steps == 20 and pixels.observation_space.shape == (36, 36, 6)
    with pytest.raises(SystemExit):  # it wrote 300 steps, which the same command then refused as not 500
        datasets_main(["pointmaze", *arguments[:-1], "500", "--dataset-id", "mine/maze/stitch-v0", "--pixels", "40"])
    assert "n_steps=500 is more than the 300 steps of mine/maze/stitch-v0" in capsys.readouterr().err
    assert pixels.recover_environment(eval_env=True).observation_space == pixels.observation_space


def test_pixel_pointmaze_data_is_what_its_evaluation_environment_shows(minari_root):
    source = make_pointmaze_dataset("umaze", "sparse", stitch=True, n_steps=700, n_reference_episodes=1)
    pixel_id = pixel_dataset_id(source.spec.dataset_id, 36)
    assert pixel_id == "sb3_iql/pointmaze/umaze-stitch-pixels36-v0"
    dataset = ensure_dataset(pixel_id, n_steps=400)  # the source's first 300-step episode, then 100 steps of the next
    assert dataset.total_steps == 400 and dataset.total_episodes == 2
    first, second = list(dataset.iterate_episodes())
    source_first, source_second = list(source.iterate_episodes())[:2]
    assert np.array_equal(first.actions, source_first.actions) and np.array_equal(second.rewards, source_second.rewards[:100])
    assert second.truncations[-1] and not second.terminations.any()
    frames = first.observations
    assert frames.dtype == np.uint8 and frames.shape == (301, 36, 36, 6)
    # Channels 3-5 are the previous step's frame (the first step's own at the start).
    assert np.array_equal(frames[1:, ..., 3:], frames[:-1, ..., :3]) and np.array_equal(frames[0, ..., 3:], frames[0, ..., :3])
    assert not np.array_equal(frames[50, ..., :3], frames[50, ..., 3:])  # the ball moves
    # The evaluation environment draws the same picture of a state as the stored data (frames stored losslessly),
    # pixel for pixel, after steps too: a physics step leaves MuJoCo's body positions at the step's start, where the
    # ball was drawn until the wrapper recomputed them (up to 37 levels apart on 15 pixels at 48x48).
    env = dataset.recover_environment(eval_env=True)
    obs, _ = env.reset(seed=3)
    maze_env = env.unwrapped
    renderer = make_pixel_pointmaze_env("umaze", size=36)
    renderer.reset(seed=0)
    for action in ([0.5, -0.3], [1.0, 1.0], [-1.0, 0.2]):
        previous = obs[..., :3]
        obs, *_ = env.step(np.array(action, np.float32))
        state = np.concatenate([maze_env.point_env.data.qpos, maze_env.point_env.data.qvel])[None]
        assert np.array_equal(render_states(renderer, state, maze_env.goal[None])[0], obs[..., :3])
        assert np.array_equal(obs[..., 3:], previous)
    model = IQL("CnnPolicy", offline_dataset=dataset, policy_kwargs=SMALL_CNN, batch_size=32, seed=0)
    assert isinstance(model.replay_buffer, DeviceImageReplayBuffer) and model.observation_space.shape == (6, 36, 36)
    model.learn_offline(2)
    assert env.action_space.contains(model.predict(obs, deterministic=True)[0])


def test_a_stored_pixel_dataset_evaluates_in_a_fresh_process_without_rendering_settings(minari_root):
    # As a user does after making the dataset once: load it, recover its evaluation environment, render. No MUJOCO_GL
    # set beforehand (Gymnasium would try GLFW first: no display here, and EGL unusable after it).
    make_pointmaze_dataset("umaze", "sparse", stitch=True, n_steps=700, n_reference_episodes=1)
    ensure_dataset("sb3_iql/pointmaze/umaze-stitch-pixels36-v0", n_steps=50)
    script = (
        "import minari\n"
        "env = minari.load_dataset('sb3_iql/pointmaze/umaze-stitch-pixels36-v0').recover_environment(eval_env=True)\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs.shape == (36, 36, 6) and obs.max() > 0, obs.shape\n"
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def small_ball_frames(n_frames: int, size: int = 48) -> th.Tensor:
    """``(n, 3, size, size)`` uint8 frames: one grey background (a maze seen from above) with a 3x3 ball moving."""
    rng = np.random.default_rng(0)
    frames = np.full((n_frames, 3, size, size), 120, np.uint8)
    frames[:, :, ::8, :] = 40  # walls
    for frame, (row, column) in zip(frames, rng.integers(1, size - 4, (n_frames, 2))):
        frame[1, row : row + 3, column : column + 3] = 255
    return th.as_tensor(frames)


def test_layer_norm_nature_cnn_keeps_every_feature_alive_where_nature_cnn_loses_half(tmp_path):
    # Frames that differ by a 3x3 ball: NatureCNN's last ReLU is on for every frame or off for every frame, so
    # half its features are zero everywhere from the initialisation on; LayerNorm + tanh leaves none constant.
    env = SpacesEnv(spaces.Box(0, 255, (3, 48, 48), np.uint8), ACTION_SPACE)
    frames = small_ball_frames(64)
    kwargs = dict(buffer_size=100, seed=0)
    nature = IQL("CnnPolicy", env, **kwargs).policy.actor
    features = nature.extract_features(frames, nature.features_extractor)
    assert (features.abs().amax(0) == 0).float().mean() > 0.3
    model = IQL("CnnPolicy", env, policy_kwargs={"features_extractor_class": "LayerNormNatureCNN"}, **kwargs)
    actor = model.policy.actor
    assert isinstance(actor.features_extractor, LayerNormNatureCNN)  # named as a preset file names it
    features = actor.extract_features(frames, actor.features_extractor)
    assert features.shape == (64, 512) and features.abs().max() <= 1.0
    assert (features.std(0) > 0).all()
    model.save(tmp_path / "layer_norm_cnn")
    loaded = IQL.load(tmp_path / "layer_norm_cnn")
    assert isinstance(loaded.policy.critic.features_extractor, LayerNormNatureCNN)
    frames = frames.numpy()
    assert np.array_equal(loaded.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])
    with pytest.raises(ValueError, match=r"Unknown features_extractor_class 'NatureCnn'.*LayerNormNatureCNN"):
        IQL("CnnPolicy", env, policy_kwargs={"features_extractor_class": "NatureCnn"}, **kwargs)


def test_spatial_softmax_cnn_gives_the_coordinates_of_each_maps_peak(tmp_path):
    # The softmax over each last-layer map, times the pixel grid: a map peaked at one pixel gives its (x, y).
    extractor = SpatialSoftmaxCNN(spaces.Box(0, 255, (3, 48, 48), np.uint8), features_dim=4)
    height, width = extractor.cnn(th.zeros(1, 3, 48, 48)).shape[-2:]
    peaks = th.full((1, 2, height, width), -1e4)
    peaks[0, 0, 0, width - 1] = 0.0  # top right: x = 1, y = -1
    peaks[0, 1, height // 2, 0] = 0.0  # middle left: x = -1, y = 0 (odd height)

    class Peaks(th.nn.Module):
        def forward(self, observations: th.Tensor) -> th.Tensor:
            return peaks

    extractor.cnn = Peaks()
    assert height % 2 == 1 and th.allclose(extractor(th.zeros(1, 3, 48, 48)), th.tensor([[1.0, -1.0, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="must be even"):
        SpatialSoftmaxCNN(spaces.Box(0, 255, (3, 48, 48), np.uint8), features_dim=5)
    dict_space = spaces.Dict({"camera": spaces.Box(0, 255, (48, 48, 3), np.uint8), "velocity": ACTION_SPACE})
    with pytest.raises(ValueError, match=r"takes a channel-first image Box .* CombinedExtractor encodes each image key"):
        IQL(
            "MultiInputPolicy",
            SpacesEnv(dict_space, ACTION_SPACE),
            policy_kwargs={"features_extractor_class": "SpatialSoftmaxCNN"},
        )
    env = SpacesEnv(spaces.Box(0, 255, (3, 48, 48), np.uint8), ACTION_SPACE)
    model = IQL("CnnPolicy", env, policy_kwargs={"features_extractor_class": "SpatialSoftmaxCNN"}, buffer_size=100, seed=0)
    frames = small_ball_frames(8)
    actor = model.policy.actor
    features = actor.extract_features(frames, actor.features_extractor)
    assert features.shape == (8, 64) and features.abs().max() <= 1.0
    model.save(tmp_path / "spatial")
    loaded = IQL.load(tmp_path / "spatial")
    frames = frames.numpy()
    assert np.array_equal(loaded.predict(frames, deterministic=True)[0], model.predict(frames, deterministic=True)[0])
