"""IQL with Discrete actions: the picked Q-values and the categorical log-likelihood by hand, the fast path against
the eager one, dataset checks, save/load, online fine-tuning, and learning beyond behaviour cloning."""

import math
import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from toy_data import (
    DISCRETE_LINE_ENV_ID,
    LineEnv,
    bad_discrete_policy,
    good_discrete_policy,
    make_episode,
    rollout_episodes,
    write_dataset,
)

from sb3_iql import IQL, evaluate
from sb3_iql.common.synthetic import SpacesEnv
from sb3_iql.iql import update
from sb3_iql.iql.policies import CategoricalActor, EnsembleCritic

SMALL_NET = dict(net_arch=[32, 32])


@pytest.fixture
def discrete_dataset(minari_root: pathlib.Path):
    """Half the episodes step towards the goal, half away from it."""
    env = gym.make(DISCRETE_LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_discrete_policy, bad_discrete_policy], n_episodes=100)
    return write_dataset("test/line/discrete-mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)


def discrete_model(dataset, **kwargs) -> IQL:
    defaults = dict(offline_steps=100, policy_kwargs=SMALL_NET, seed=0, batch_size=64)
    defaults.update(kwargs)
    return IQL("MlpPolicy", LineEnv(discrete=True), offline_dataset=dataset, **defaults)


def test_the_critics_pick_the_dataset_action_among_one_output_per_action():
    critic = EnsembleCritic(
        spaces.Box(-1, 1, (2,)), spaces.Discrete(3), net_arch=[], features_extractor=th.nn.Flatten(), features_dim=2
    )
    with th.no_grad():  # Q_i(s, .) = W_i s + b_i, one row per action
        critic.q_networks[0].weight.copy_(th.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], [[-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]))
        critic.q_networks[0].bias.copy_(th.tensor([[[0.0, 10.0, 20.0]], [[5.0, 5.0, 5.0]]]))
    obs = th.tensor([[1.0, 1.0], [2.0, -1.0]])
    actions = th.tensor([[2.0], [0.0]])  # as the replay buffer stores them
    # critic 0: s=(1,1) -> (1, 12, 24), pick 24; s=(2,-1) -> (2, 14, 25), pick 2
    # critic 1: s=(1,1) -> (5, 6, 6), pick 6; s=(2,-1) -> (2, 5, 5), pick 2
    assert th.equal(critic(obs, actions), th.tensor([[24.0, 2.0], [6.0, 2.0]]))


def test_the_actor_loss_is_the_weighted_log_softmax_of_the_dataset_action():
    actor = CategoricalActor(
        spaces.Box(-1, 1, (2,)), spaces.Discrete(2), net_arch=[], features_extractor=th.nn.Flatten(), features_dim=2
    )
    with th.no_grad():  # logits (0, log 3) whatever the state: probabilities (1/4, 3/4)
        actor.logits.weight.zero_()
        actor.logits.bias.copy_(th.tensor([0.0, math.log(3.0)]))
    obs, actions = th.zeros(2, 2), th.tensor([[1.0], [0.0]])
    assert th.allclose(actor.log_prob(obs, actions), th.tensor([math.log(0.75), math.log(0.25)]))
    batch = update.Batch(obs, actions, obs, th.zeros(2), th.zeros(2))
    targets = update.PolicyTargets(th.zeros(2), th.tensor([2.0, 1.0]), th.zeros(2))
    loss = update.actor_objective(actor.log_prob, batch, targets)
    assert loss.item() == pytest.approx(-(2.0 * math.log(0.75) + math.log(0.25)) / 2)
    assert actor(obs, deterministic=True).tolist() == [1, 1]
    samples = actor(th.zeros(4000, 2))
    assert samples.dtype == th.int64 and abs(samples.float().mean().item() - 0.75) < 0.03


def test_the_functional_update_matches_the_eager_one_in_float64(discrete_dataset, float64):
    eager, functional = discrete_model(discrete_dataset), discrete_model(discrete_dataset)
    for model in (eager, functional):
        model.policy.to(th.float64)
    fast = functional._functional_update(compile_mode=None)
    for _ in range(50):
        batch = eager.replay_buffer.sample(64)
        batch = batch._replace(**{k: v.to(th.float64) for k, v in batch._asdict().items() if v is not None})
        for model, step in ((eager, eager._update), (functional, fast)):
            model._set_learning_rates(offline=True)
            step(batch)
            model._n_offline_updates += 1
    difference = max((a - b).abs().max().item() for a, b in zip(eager.policy.parameters(), functional.policy.parameters()))
    assert difference < 1e-10


def test_dataset_actions_are_stored_as_indices_and_checked(discrete_dataset, minari_root):
    model = discrete_model(discrete_dataset)
    stored = model.replay_buffer.actions[: model.replay_buffer.size()].flatten().cpu().numpy()
    assert set(np.unique(stored)) == {0.0, 1.0, 2.0}
    env = LineEnv(discrete=True)
    obs = [env.reset(seed=0)[0]] * 3
    bad_actions = (
        (3, r"episode 0: .*'actions' holds 3 .* not an integer in \[0, 2\]"),
        (-1, r"holds -1 .* in \[0, 2\]"),
        (0.99999999, r"holds 0.99999999 .* not an integer"),  # rounded to 1 by the float32 cast before
    )
    for index, (bad_action, message) in enumerate(bad_actions):
        episode = make_episode(0, obs, [1, bad_action], [0.0, 0.0], [False, False], [False, True])
        dataset = write_dataset(f"test/line/bad-action{index}-v0", [episode], env=env)
        with pytest.raises(ValueError, match=message):
            discrete_model(dataset)


@pytest.mark.parametrize(
    "action_space, message",
    [
        (spaces.MultiDiscrete([2, 3]), "supports Box and Discrete action spaces"),
        (spaces.MultiBinary(4), "supports Box and Discrete action spaces"),
        (spaces.Discrete(3, start=1), "Discrete actions starting at 0"),
    ],
)
def test_unsupported_action_spaces_get_a_clear_error(action_space, message):
    with pytest.raises(ValueError, match=message):
        IQL("MlpPolicy", SpacesEnv(spaces.Box(-1, 1, (2,), np.float32), action_space))


def test_action_noise_needs_continuous_actions():
    from stable_baselines3.common.noise import NormalActionNoise

    with pytest.raises(ValueError, match=r"action_noise perturbs Box actions; with Discrete\(3\) it would do nothing"):
        IQL(
            "MlpPolicy",
            SpacesEnv(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(3)),
            action_noise=NormalActionNoise(0, 1),
        )


@pytest.mark.parametrize(
    "gaussian_setting", [dict(log_std_init=-1.5), dict(log_std_parametrization="sigmoid"), dict(log_std_bounds=(-3, 1))]
)
def test_the_gaussian_actor_s_settings_are_refused_for_discrete_actions(gaussian_setting):
    env = SpacesEnv(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(3))
    with pytest.raises(ValueError, match=r"Gaussian actor of Box actions; Discrete\(3\) actions have a categorical actor"):
        IQL("MlpPolicy", env, policy_kwargs=dict(net_arch=[8], **gaussian_setting))
    IQL("MlpPolicy", env, policy_kwargs=dict(net_arch=[8], log_std_init=0, log_std_bounds=[-5, 2]))  # the defaults


def test_ddpg_bc_needs_continuous_actions(discrete_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"ddpg_bc.*Box"):
        IQL("MlpPolicy", SpacesEnv(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(3)), policy_extraction="ddpg_bc")
    # set on a model (by hand or from a callback): refused before an update, and no file that load() refuses
    model = discrete_model(discrete_dataset)
    model.policy_extraction = "ddpg_awr"
    with pytest.raises(ValueError, match=r"ddpg_awr.*Box"):
        model.learn_offline(1)
    with pytest.raises(ValueError, match=r"ddpg_awr.*Box"):
        model.save(tmp_path / "model")
    assert not (tmp_path / "model.zip").exists()


def test_save_load_gives_identical_predictions_and_online_steps_store_indices(discrete_dataset, tmp_path):
    model = discrete_model(discrete_dataset)
    model.learn_offline(100)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model", env=LineEnv(discrete=True))
    obs = np.random.default_rng(0).uniform(-1, 1, (64, 2)).astype(np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (64,) and actions.dtype.kind == "i"
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    size = model.replay_buffer.size()
    model.learn(total_timesteps=200)  # exploration samples the categorical policy
    online = model.replay_buffer.actions[size : size + 200].flatten().cpu().numpy()
    assert set(np.unique(online)) <= {0.0, 1.0, 2.0} and len(np.unique(online)) > 1


@pytest.mark.parametrize("seed", [0, 1])
def test_iql_beats_behaviour_cloning_on_mixed_discrete_data(discrete_dataset, seed):
    # Stepping to the goal scores about -1.6, stepping away about -20; BC averages the two behaviours (-13 to -17).
    def offline_return(beta: float) -> float:
        model = discrete_model(discrete_dataset, beta=beta, seed=seed, offline_steps=1500, batch_size=256)
        model.learn(0)
        return evaluate(model, LineEnv(discrete=True), n_eval_episodes=20, seed=100 + seed).mean_return

    iql, bc = offline_return(beta=10.0), offline_return(beta=0.0)  # IQL: -4.3 and -3.2
    assert iql > -6.0, iql
    assert iql > bc + 5.0, (iql, bc)


DISCRETE_OBSERVATION_SPACES = [
    spaces.Discrete(5),
    spaces.MultiDiscrete([3, 4]),
    spaces.MultiBinary(3),
    spaces.Dict({"cell": spaces.Discrete(4), "position": spaces.Box(-1.0, 1.0, (2,), np.float32)}),
]


@pytest.mark.parametrize("observation_space", DISCRETE_OBSERVATION_SPACES, ids=str)
@pytest.mark.parametrize("batch_shape", [(6,), (6, 1)])  # as predict and the replay buffers give Discrete ones
def test_discrete_observations_are_one_hot_as_sb3_encodes_them(observation_space, batch_shape):
    """Traceable by torch.compile and vmap (SB3's one_hot is not), and equal to SB3's encoding."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    from sb3_iql.common.preprocessing import observation_preprocessing, preprocess_observations

    def batch(space: spaces.Space) -> th.Tensor | dict:
        if isinstance(space, spaces.Dict):
            return {key: batch(subspace) for key, subspace in space.spaces.items()}
        samples = np.stack([space.sample() for _ in range(6)])
        return th.as_tensor(samples.reshape(batch_shape) if isinstance(space, spaces.Discrete) else samples)

    observation_space.seed(0)
    obs = batch(observation_space)
    ours = preprocess_observations(obs, observation_space, observation_preprocessing(observation_space, True))
    theirs = preprocess_obs(obs, observation_space)
    for key in ours if isinstance(ours, dict) else [None]:
        mine, sb3 = (ours, theirs) if key is None else (ours[key], theirs[key])
        assert mine.dtype == sb3.dtype and th.equal(mine, sb3), key


@pytest.mark.parametrize("observation_space", DISCRETE_OBSERVATION_SPACES, ids=str)
def test_models_of_discrete_observations_train_together_as_alone(observation_space):
    """vmap failed on SB3's one-hot encoding (``.item()`` inside ``one_hot``): a Dict with a Discrete key crashed,
    Discrete, MultiDiscrete and MultiBinary observations were refused."""
    from sb3_iql.data.minari_loader import Transitions
    from sb3_iql.iql.multi_seed import learn_offline_together

    observation_space.seed(0)
    samples = [observation_space.sample() for _ in range(65)]
    if isinstance(observation_space, spaces.Dict):
        observations = {key: np.stack([sample[key] for sample in samples]) for key in observation_space.spaces}
        first, following = (
            {key: values[part] for key, values in observations.items()} for part in (slice(-1), slice(1, None))
        )
    else:
        first, following = np.stack(samples[:-1]), np.stack(samples[1:])
    actions = np.random.default_rng(0).integers(0, 3, 64)
    transitions = Transitions(
        first,
        following,
        actions,
        actions.astype(np.float32),
        np.zeros(64, bool),
        np.arange(64) % 16 == 15,
        np.zeros(1),
    )

    def model(seed: int) -> IQL:
        env = SpacesEnv(observation_space, spaces.Discrete(3))
        made = IQL("MlpPolicy", env, None, offline_steps=10, batch_size=8, policy_kwargs=SMALL_NET, seed=seed)
        made.add_transitions(transitions)
        return made

    together, alone = [model(seed) for seed in (0, 1)], [model(seed) for seed in (0, 1)]
    learn_offline_together(together, 10, log_interval=0)
    for joint, single in zip(together, alone):
        single.learn_offline(10, log_interval=0)
        for (name, ours), theirs in zip(joint.policy.state_dict().items(), single.policy.state_dict().values()):
            th.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=name)  # float32: the batched products


@pytest.mark.slow
@pytest.mark.parametrize("observation_space", DISCRETE_OBSERVATION_SPACES[:2], ids=str)
def test_the_compiled_update_of_discrete_observations_trains_like_the_eager_one(observation_space):
    """torch.compile failed on SB3's one-hot encoding ("torch.* op returned non-Tensor")."""
    from sb3_iql.data.minari_loader import Transitions

    observation_space.seed(0)
    observations = np.stack([observation_space.sample() for _ in range(65)])
    actions = np.random.default_rng(0).integers(0, 3, 64)
    flags = np.zeros(64, bool)
    transitions = Transitions(observations[:-1], observations[1:], actions, actions.astype(np.float32), flags, flags, [0])
    models = []
    for compile_update in (False, True):
        env = SpacesEnv(observation_space, spaces.Discrete(3))
        models.append(
            IQL("MlpPolicy", env, None, batch_size=8, policy_kwargs=SMALL_NET, seed=0, compile_update=compile_update)
        )
        models[-1].add_transitions(transitions)
        models[-1].learn_offline(10, log_interval=0)
    for (name, eager), compiled in zip(models[0].policy.state_dict().items(), models[1].policy.state_dict().values()):
        th.testing.assert_close(eager, compiled, rtol=1e-5, atol=1e-6, msg=name)


def test_an_observation_outside_its_discrete_space_is_refused_at_predict():
    """Its one-hot encoding is all zeros (SB3's one_hot raised deep inside): a wrong observation acted on."""
    observation_space = DISCRETE_OBSERVATION_SPACES[-1]  # a Discrete(4) key
    model = IQL("MultiInputPolicy", SpacesEnv(observation_space, spaces.Discrete(3)), policy_kwargs=SMALL_NET, buffer_size=10)
    observation = {"cell": np.array(2), "position": np.zeros(2, np.float32)}
    model.predict(observation)
    for cell in (4, -1):
        with pytest.raises(ValueError, match=r"Observation values \[" + str(cell) + r"\] are outside Discrete\(4\)"):
            model.predict({**observation, "cell": np.array(cell)})
    multi = IQL(
        "MlpPolicy", SpacesEnv(spaces.MultiDiscrete([3, 4]), spaces.Discrete(3)), policy_kwargs=SMALL_NET, buffer_size=10
    )
    multi.predict(np.array([[2, 3], [0, 0]]))
    with pytest.raises(ValueError, match=r"\[3\] are outside MultiDiscrete"):
        multi.predict(np.array([[2, 3], [3, 0]]))
