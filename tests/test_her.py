"""Hindsight relabelling offline: goals from the right part of the transition's own episode, rewards from the
environment's rule (on the device for mazes), the reward transform, terminals on reaching, online episodes,
pickling, and IQL end to end."""

import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3
import torch as th
from gymnasium import spaces
from maze_data import MAZE_ID, tiny_maze_root
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from toy_data import GOAL_LINE_ENV_ID, MAX_ACTION, GoalLineEnv, rollout_episodes, write_dataset

from sb3_iql import IQL, HerReplayBuffer, evaluate
from sb3_iql.data import AffineRewardTransform, DeviceDictReplayBuffer, load_dataset, load_transitions
from sb3_iql.data.goals import MAZE_GOAL_DISTANCE
from sb3_iql.data.her import EPISODE_RECORDS

GOAL_SPACE = spaces.Dict(
    {key: spaces.Box(-1e4, 1e4, (1,), np.float32) for key in ("observation", "achieved_goal", "desired_goal")}
)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (1,), np.float32)
EPISODE_LENGTHS = [5, 8, 3, 6]


class CountingGoalEnv(gym.Env):
    """Goal-API env whose reward is 1 when the achieved goal is within 0.5 of the desired one."""

    observation_space = GOAL_SPACE
    action_space = ACTION_SPACE

    def __init__(self) -> None:
        self.t = 0

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        return (np.abs(achieved_goal - desired_goal)[..., 0] < 0.5).astype(np.float64)

    def _obs(self) -> dict[str, np.ndarray]:
        return {key: np.array([self.t], np.float32) for key in ("observation", "achieved_goal")} | {
            "desired_goal": np.array([-1.0], np.float32)
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 4, {}


def counting_episodes() -> dict[str, Any]:
    """Episodes whose step t of episode e observes (and achieves) 100 e + t; the goal is -1, never reached."""
    observations, next_observations, timeouts = [], [], []
    for episode, length in enumerate(EPISODE_LENGTHS):
        steps = 100.0 * episode + np.arange(length, dtype=np.float32)
        observations.append(steps)
        next_observations.append(steps + 1)
        timeouts.append(np.arange(length) == length - 1)
    obs, next_obs = np.concatenate(observations)[:, None], np.concatenate(next_observations)[:, None]
    n = len(obs)
    goal = np.full((n, 1), -1.0, np.float32)
    return dict(
        observations={"observation": obs, "achieved_goal": obs, "desired_goal": goal},
        next_observations={"observation": next_obs, "achieved_goal": next_obs, "desired_goal": goal.copy()},
        actions=np.zeros((n, 1), np.float32),
        rewards=np.zeros(n, np.float32),
        dones=np.zeros(n, np.float32),
        timeouts=np.concatenate(timeouts).astype(np.float32),
    )


def counting_buffer(strategy: str, n_sampled_goal: int = 10_000, **kwargs: Any) -> HerReplayBuffer:
    buffer = HerReplayBuffer(
        100,
        GOAL_SPACE,
        ACTION_SPACE,
        env=CountingGoalEnv(),
        device="cpu",
        n_sampled_goal=n_sampled_goal,
        goal_selection_strategy=strategy,
        **kwargs,
    )
    buffer.generator = th.Generator().manual_seed(0)
    buffer.extend(**counting_episodes())
    return buffer


@pytest.mark.parametrize("strategy", ["future", "final", "episode", "random"])
def test_goals_come_from_the_strategy_s_part_of_the_episode(strategy):
    samples = counting_buffer(strategy).sample(4000)
    step = samples.observations["observation"][:, 0].numpy()
    goal = samples.observations["desired_goal"][:, 0].numpy()
    assert np.array_equal(goal, samples.next_observations["desired_goal"][:, 0].numpy())
    episode, goal_episode = step // 100, goal // 100
    goal_step = goal - 100 * goal_episode  # the goal is the next achieved goal of step goal_step - 1
    length = np.array(EPISODE_LENGTHS)[episode.astype(int)]
    if strategy == "random":
        assert len(np.unique(goal_episode[episode == 0])) == len(EPISODE_LENGTHS)  # goals from other episodes too
        return
    assert np.array_equal(goal_episode, episode)
    t = step - 100 * episode
    if strategy == "future":
        assert (goal_step >= t + 1).all() and (goal_step <= length).all()
        assert (goal_step == t + 1).any() and (goal_step == length).any()
    elif strategy == "final":
        assert np.array_equal(goal_step, length)
    else:
        assert (goal_step >= 1).all() and (goal_step <= length).all() and (goal_step < t + 1).any()


def test_an_episode_end_without_a_flag_is_found_where_the_next_transition_starts_elsewhere():
    buffer = HerReplayBuffer(100, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu", n_sampled_goal=10_000)
    buffer.generator = th.Generator().manual_seed(0)
    episodes = counting_episodes()
    episodes["timeouts"] = np.zeros_like(episodes["timeouts"])  # hand-built data that forgot the flags
    with pytest.warns(UserWarning, match=r"3 of these transitions are neither terminal nor a timeout.*\(transition 4 first\)"):
        buffer.extend(**episodes)
    samples = buffer.sample(4000)
    episode = samples.observations["observation"][:, 0].numpy() // 100
    goal_episode = samples.observations["desired_goal"][:, 0].numpy() // 100
    assert np.array_equal(goal_episode, episode), "goals came from the following episode before"


def test_an_online_episode_open_when_offline_data_is_added_takes_no_goal_from_it():
    buffer = HerReplayBuffer(100, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu", n_sampled_goal=10_000)
    buffer.generator = th.Generator().manual_seed(0)

    def online_step(t: int, done: bool) -> None:  # online states -10 - t, far from the offline ones (>= 0)
        obs, next_obs = ({key: np.array([[-10.0 - step]], np.float32) for key in GOAL_SPACE.spaces} for step in (t, t + 1))
        buffer.add(obs, next_obs, np.zeros((1, 1), np.float32), np.zeros(1), np.array([done]), [{}])

    for t in range(3):
        online_step(t, done=False)
    buffer.extend(**counting_episodes())  # the online episode is still open (a learn() call ended in it)
    for t in range(3, 6):
        online_step(t, done=t == 5)
    samples = buffer.sample(4000)
    online = samples.observations["observation"][:, 0] < -5
    assert online.any() and (samples.observations["desired_goal"][online, 0] < -5).all(), "offline goals before"


def test_one_transition_extends_and_a_refused_extend_leaves_the_open_episodes_open():
    buffer = HerReplayBuffer(8, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu")
    one = {name: ({key: array[:1] for key, array in value.items()} if isinstance(value, dict) else value[:1])
           for name, value in counting_episodes().items()}  # fmt: skip
    buffer.extend(**one)  # a reshape error of the episode-break check before
    obs = {key: np.array([[-10.0]], np.float32) for key in GOAL_SPACE.spaces}
    buffer.add(obs, obs, np.zeros((1, 1), np.float32), np.zeros(1), np.array([False]), [{}])
    with pytest.raises(ValueError, match="room"):
        buffer.extend(**counting_episodes())  # 22 transitions, 6 free rows
    assert len(buffer._open_episodes[0]) == 1 and int(buffer._episode_length[1]) == 0, "closed by a refused extend"


def test_relabelled_rewards_come_from_compute_reward_and_go_through_the_reward_transform():
    buffer = counting_buffer("future", n_sampled_goal=1)  # half the batch relabelled
    buffer.reward_transform = AffineRewardTransform(scale=2.0, shift=-1.0)
    samples = buffer.sample(2000)
    goal = samples.observations["desired_goal"][:, 0]
    reached = (samples.next_observations["achieved_goal"][:, 0] - goal).abs() < 0.5
    relabelled = goal != -1.0
    assert 0.4 < relabelled.float().mean() < 0.6
    rewards = samples.rewards[:, 0]
    assert th.equal(rewards[relabelled], th.where(reached[relabelled], 1.0, -1.0))  # 2 * {0, 1} - 1
    assert (rewards[~relabelled] == 0).all()  # stored rewards, untransformed by the buffer
    assert reached[relabelled].any() and not reached[relabelled].all()


def test_sb3_s_bit_flipping_env_trains_with_its_multibinary_goals_relabelled_by_its_rule():
    """SB3's own hindsight example: refused before (goals of a Box only)."""
    from stable_baselines3.common.envs import BitFlippingEnv

    env = BitFlippingEnv(n_bits=4, continuous=True, max_steps=4)
    model = IQL("MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer, batch_size=8, learning_starts=8,
                policy_kwargs=dict(net_arch=[8]), buffer_size=500, seed=0, offline_steps=0)  # fmt: skip
    model.learn(40)
    samples = model.replay_buffer.sample(400)
    achieved, goal = (samples.next_observations["achieved_goal"].numpy(), samples.observations["desired_goal"].numpy())
    assert set(np.unique(goal)) <= {0.0, 1.0} and len(np.unique(goal, axis=0)) > 1
    np.testing.assert_array_equal(samples.rewards[:, 0].numpy(), env.compute_reward(achieved, goal, {}))


def test_a_normalizing_env_sees_the_samples_relabelled_on_the_stored_goals():
    """As SB3's HerReplayBuffer: goals and rewards from the raw transitions, then VecNormalize's normalization."""
    env = VecNormalize(DummyVecEnv([CountingGoalEnv]), clip_obs=1e6, clip_reward=1e6)
    for statistics in env.obs_rms.values():
        statistics.mean[:], statistics.var[:] = 50.0, 400.0
    env.ret_rms.var = np.array(4.0)
    buffer = counting_buffer("future", n_sampled_goal=1)
    samples = []
    for normalizing in (None, env):
        buffer.generator = th.Generator().manual_seed(3)
        samples.append(buffer.sample(256, env=normalizing))
    raw, normalized = samples
    assert raw.rewards.sum() > 0  # some relabelled goals reached
    np.testing.assert_allclose(normalized.rewards.numpy(), env.normalize_reward(raw.rewards.numpy()), rtol=1e-6)
    for field in ("observations", "next_observations"):
        expected = env.normalize_obs({key: value.numpy() for key, value in getattr(raw, field).items()})
        for key, value in getattr(normalized, field).items():
            np.testing.assert_allclose(value.numpy(), expected[key], rtol=1e-6)


def test_without_sampled_goals_the_samples_are_the_stored_transitions():
    her, plain = counting_buffer("future", n_sampled_goal=0), DeviceDictReplayBuffer(100, GOAL_SPACE, ACTION_SPACE, "cpu")
    plain.extend(**counting_episodes())
    her.generator, plain.generator = th.Generator().manual_seed(3), th.Generator().manual_seed(3)
    first, second = her.sample(64), plain.sample(64)
    for key in GOAL_SPACE.spaces:
        assert th.equal(first.observations[key], second.observations[key])
    assert th.equal(first.rewards, second.rewards) and th.equal(first.dones, second.dones)


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory):
    yield from tiny_maze_root(tmp_path_factory)


def test_maze_rewards_are_computed_on_the_device_as_the_env_computes_them(maze_root):
    dataset = load_dataset(MAZE_ID)
    env = dataset.recover_environment()
    transitions = load_transitions([dataset])
    buffer = HerReplayBuffer(
        len(transitions),
        env.observation_space,
        env.action_space,
        env=env,
        device="cpu",
        goal_selection_strategy="future",
        terminal_on_goal=True,
    )
    assert buffer.distance_reward == ("sparse", MAZE_GOAL_DISTANCE)
    buffer.extend(
        transitions.observations,
        transitions.next_observations,
        transitions.actions,
        transitions.rewards,
        transitions.terminations.astype(np.float32),
        transitions.truncations.astype(np.float32),
    )
    samples = buffer.sample(3000)
    achieved, goals = samples.next_observations["achieved_goal"].numpy(), samples.observations["desired_goal"].numpy()
    expected = env.unwrapped.compute_reward(achieved, goals, {})
    relabelled = np.any(goals != transitions.observations["desired_goal"][0], axis=1)
    assert relabelled.mean() > 0.7
    assert np.allclose(samples.rewards[:, 0].numpy()[relabelled], expected[relabelled])
    assert expected[relabelled].any()  # some relabelled goals are reached: their transitions are terminal
    assert np.array_equal(samples.dones[:, 0].numpy() == 1, expected == 1)


def test_iql_trains_online_with_hindsight_and_relabels_finished_episodes_only(maze_root, tmp_path):
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, max_episode_steps=50)
    model = IQL(
        "MultiInputPolicy",
        env,
        offline_dataset=MAZE_ID,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy="future"),
        reward_transform=lambda rewards: rewards - 1.0,  # as "antmaze"; a lambda, which a buffer file leaves out
        policy_kwargs=dict(net_arch=[32]),
        batch_size=64,
        seed=0,
        offline_steps=20,
    )
    buffer = model.replay_buffer
    assert isinstance(buffer, HerReplayBuffer) and buffer.distance_reward == ("sparse", MAZE_GOAL_DISTANCE)
    assert "env" not in model.replay_buffer_kwargs  # not saved with the model
    model.learn_offline(20)
    offline = buffer.size()
    model.learn(total_timesteps=70)  # one finished 50-step episode, one open
    online_lengths = buffer._episode_length[offline : offline + 70]
    assert (online_lengths[:50] == 50).all() and (online_lengths[50:] == 0).all()
    samples = buffer.sample(256)
    relabelled = samples.observations["desired_goal"].ne(buffer.observations["desired_goal"][0, 0]).any(1)
    goals, achieved = samples.observations["desired_goal"], samples.next_observations["achieved_goal"]
    expected = env.unwrapped.compute_reward(achieved.numpy(), goals.numpy(), {}) - 1.0  # the antmaze transform, r - 1
    assert relabelled.any() and np.allclose(samples.rewards[relabelled, 0].numpy(), expected[relabelled.numpy()])
    model.save_replay_buffer(tmp_path / "buffer")
    model.load_replay_buffer(tmp_path / "buffer", truncate_last_traj=False)  # to go on in the same episode
    assert model.replay_buffer.env is model.env and th.equal(model.replay_buffer._episode_length, buffer._episode_length)
    with pytest.warns(UserWarning, match="last trajectory in the replay buffer will be truncated"):
        model.load_replay_buffer(tmp_path / "buffer")  # SB3's default: the open episode ends there, as SB3's buffer
    loaded = model.replay_buffer
    assert (loaded._episode_length[offline + 50 : offline + 70] == 20).all() and not any(loaded._open_episodes)
    last_row = offline + 69  # one environment: one transition per row
    assert loaded.dones[last_row, 0] == 1 and loaded.timeouts[last_row, 0] == 1  # a time-out: still bootstrapped
    assert loaded.reward_transform is model.reward_transform_fn  # set again by load_replay_buffer
    # a model loaded without env has no reward rule until set_env gives it one (SB3's HER needs env= at load)
    model.save(tmp_path / "model")
    reloaded = IQL.load(tmp_path / "model")
    assert reloaded.replay_buffer.distance_reward is None
    reloaded.set_env(env)
    assert reloaded.replay_buffer.env is reloaded.env
    assert reloaded.replay_buffer.distance_reward == ("sparse", MAZE_GOAL_DISTANCE)


def test_the_copies_that_complete_the_last_row_relabel_as_the_transitions_they_copy():
    buffer = HerReplayBuffer(100, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu", n_envs=3)
    buffer.extend(**counting_episodes())
    n = sum(EPISODE_LENGTHS)
    copies = slice(n, n + (-n % 3))
    assert copies.stop > n, "the episodes leave a row to complete"
    for record in (buffer._absolute, buffer._episode_first, buffer._episode_length):  # the place in the episode
        assert th.equal(record[copies], record[: copies.stop - n])


def test_copies_whose_originals_the_ring_overwrote_take_no_goal_of_another_episode():
    """With n_envs > 1, extend completes its last row with copies of its first transitions, which point at them for
    their goals: once online rows overwrote those, 'future' gave the copies goals of online episodes."""
    n_envs = 3
    buffer = HerReplayBuffer(30, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu", n_envs=n_envs)  # 10 rows
    buffer.generator = th.Generator().manual_seed(0)
    steps = 9000.0 + np.arange(7, dtype=np.float32)[:, None]  # one offline episode: rows 0-2 with 2 copies
    obs, next_obs = steps, steps + 1
    goal = np.full_like(steps, -1.0)
    ends = np.arange(7) == 6
    buffer.extend(
        {"observation": obs, "achieved_goal": obs, "desired_goal": goal},
        {"observation": next_obs, "achieved_goal": next_obs, "desired_goal": goal},
        np.zeros((7, 1), np.float32), np.zeros(7, np.float32), np.zeros(7, np.float32), ends.astype(np.float32),
    )  # fmt: skip
    for row in range(8):  # online rows 3-9, then row 0 again: the copies' originals t = 0, 1, 2 are gone
        online = np.full((n_envs, 1), 100.0 * row, np.float32)
        step = {"observation": online, "achieved_goal": online, "desired_goal": np.full_like(online, -1.0)}
        done = np.full(n_envs, row % 2 == 1)  # two-step episodes, relabelable once ended
        buffer.add(step, step, np.zeros((n_envs, 1), np.float32), np.zeros(n_envs), done, [{}] * n_envs)
    samples = buffer.sample(2000)
    achieved, goals = samples.observations["achieved_goal"][:, 0], samples.observations["desired_goal"][:, 0]
    offline = achieved >= 9000
    relabelled = offline & (goals != -1.0)
    assert relabelled.any() and (goals[relabelled] >= 9000).all()  # goals of their own episode only


def test_the_buffer_pickles_with_its_episodes():
    buffer = counting_buffer("future")
    buffer.reward_transform = lambda rewards: rewards - 1.0  # not picklable: left out
    without_transform = pickle.loads(pickle.dumps(buffer))
    without_transform.set_env(CountingGoalEnv())
    with pytest.raises(RuntimeError, match="no reward_transform"):
        without_transform.sample(32)
    copy = pickle.loads(pickle.dumps(buffer))
    copy.set_env(CountingGoalEnv())
    copy.reward_transform = buffer.reward_transform
    first, second = buffer.sample(32), copy.sample(32)
    assert th.equal(first.observations["desired_goal"], second.observations["desired_goal"])
    assert th.equal(first.rewards, second.rewards)


def test_goal_distance_s_rule_gives_every_sampled_reward_not_only_the_relabelled_ones():
    """The stored rewards kept the env's rule (here -1 / 0) beside relabelled 0 / 1: two scales in one batch."""
    buffer = HerReplayBuffer(
        100, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu", n_sampled_goal=1, goal_distance=0.5
    )
    buffer.generator = th.Generator().manual_seed(0)
    episodes = counting_episodes()
    buffer.extend(**{**episodes, "rewards": np.full_like(episodes["rewards"], -1.0)})  # the env's rule: -1 short of it
    samples = buffer.sample(256)
    distance = (samples.next_observations["achieved_goal"] - samples.observations["desired_goal"]).abs()[:, 0]
    assert th.equal(samples.rewards[:, 0], (distance <= 0.5).float())
    assert (samples.observations["desired_goal"][:, 0] == -1.0).any() and (distance <= 0.5).any()  # both kinds


def test_a_saved_buffer_holds_the_episodes_of_its_written_slots_only():
    """The episode records were saved for every slot: 32 MB for a 3,000-step dataset in a 1M-slot buffer."""
    buffer = HerReplayBuffer(100_000, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), device="cpu")
    buffer.extend(**counting_episodes())
    buffer.generator = th.Generator().manual_seed(0)
    saved = pickle.dumps(buffer)
    assert len(saved) < 100_000
    copy = pickle.loads(saved)
    for name in EPISODE_RECORDS:
        assert th.equal(getattr(copy, name), getattr(buffer, name)), name  # the empty slots' records too
    copy.set_env(CountingGoalEnv())
    copy.reward_transform = buffer.reward_transform
    first, second = buffer.sample(32), copy.sample(32)
    assert th.equal(first.observations["desired_goal"], second.observations["desired_goal"])


def test_bad_arguments_get_clear_errors(maze_root):
    with pytest.raises(ValueError, match="goal_selection_strategy"):
        HerReplayBuffer(10, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), goal_selection_strategy="past")
    with pytest.raises(ValueError, match=r"needs a sparse goal distance.*replacing the env's reward rule"):
        HerReplayBuffer(10, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), terminal_on_goal=True)
    # without env (IQL.load without env=, a saved terminal_on_goal model) the rule is checked when set_env gives one
    unset = HerReplayBuffer(10, GOAL_SPACE, ACTION_SPACE, terminal_on_goal=True)
    with pytest.raises(ValueError, match=r"needs a sparse goal distance"):
        unset.set_env(CountingGoalEnv())
    with pytest.raises(ValueError, match="copy_info_dict=True is not supported"):  # compute_reward would get {}
        HerReplayBuffer(10, GOAL_SPACE, ACTION_SPACE, env=CountingGoalEnv(), copy_info_dict=True)
    with pytest.raises(ValueError, match="Dict observation space with keys"):
        HerReplayBuffer(10, spaces.Dict({"observation": GOAL_SPACE["observation"]}), ACTION_SPACE)
    square_goals = spaces.Dict({**GOAL_SPACE.spaces, "desired_goal": spaces.Box(-1, 1, (2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"goals of one dimension .* 'desired_goal' is Box\(-1.0, 1.0, \(2, 2\)"):
        HerReplayBuffer(10, square_goals, ACTION_SPACE)  # relabelling failed in the first batch before
    with pytest.raises(ValueError, match=r"IQL takes sb3_iql\.HerReplayBuffer .* online too"):
        IQL("MultiInputPolicy", offline_dataset=MAZE_ID, replay_buffer_class=stable_baselines3.HerReplayBuffer)
    with pytest.raises(ValueError, match=r"Unknown replay_buffer_class 'HindsightBuffer'.*'HerReplayBuffer'"):
        IQL("MultiInputPolicy", offline_dataset=MAZE_ID, replay_buffer_class="HindsightBuffer")
    for buffer_class in ("HerReplayBuffer", HerReplayBuffer):  # relabelled samples kept the evaluation goal's terminals
        with pytest.raises(ValueError, match=r'relabel_eval_goal="terminal" .*dict\(terminal_on_goal=True\)'):
            IQL("MultiInputPolicy", offline_dataset=MAZE_ID, relabel_eval_goal="terminal", replay_buffer_class=buffer_class)


def test_a_buffer_named_as_preset_files_name_it_is_the_package_s(maze_root):
    model = IQL("MultiInputPolicy", offline_dataset=MAZE_ID, replay_buffer_class="HerReplayBuffer", offline_steps=0)
    assert type(model.replay_buffer) is HerReplayBuffer and model.replay_buffer.size() == len(
        load_transitions([load_dataset(MAZE_ID)])
    )


def wandering_policy(seed: int):
    """Play behaviour: a persistent random velocity that ignores the goal."""
    rng, velocity = np.random.default_rng(seed), [0.0]

    def policy(obs: Any) -> np.ndarray:
        velocity[0] = float(np.clip(0.8 * velocity[0] + rng.normal(), -MAX_ACTION, MAX_ACTION))
        return np.array(velocity, np.float32)

    return policy


def test_hindsight_learns_goal_reaching_from_play_data_where_plain_iql_does_not(minari_root):
    # 100 wandering episodes of 20 steps; each stores the random goal of its reset, reached in 3% of the steps.
    env = gym.make(GOAL_LINE_ENV_ID)
    dataset = write_dataset("test/goalline/play-v0", rollout_episodes(env, [wandering_policy(0)], 100), env=env)

    def success_steps(**kwargs: Any) -> float:
        model = IQL(
            "MultiInputPolicy",
            GoalLineEnv(),
            offline_dataset=dataset,
            policy_kwargs=dict(net_arch=[64, 64]),
            batch_size=256,
            offline_steps=2000,
            seed=0,
            **kwargs,
        )
        model.learn(0)
        return evaluate(model, GoalLineEnv(), n_eval_episodes=50, seed=100).mean_return  # steps at the goal, of 20

    her_kwargs = dict(n_sampled_goal=4, goal_selection_strategy="future")
    hindsight = success_steps(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=her_kwargs)  # 15.5
    plain = success_steps()  # 2.7: the stored goals are almost never reached
    assert hindsight > 10.0 and hindsight > plain + 8.0, (hindsight, plain)
