"""IQL end to end: the update against a step-by-step reference, schedules, callbacks, logging, save/load, learning."""

import copy
import dataclasses
import functools
import math
import pathlib
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3.common.base_class
import stable_baselines3.common.off_policy_algorithm
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from toy_data import LINE_ENV_ID, LineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

from sb3_iql import IQL, evaluate, normalized_score
from sb3_iql.common.offline import ONLINE_BUFFER_ROOM
from sb3_iql.common.preprocessing import ObservationNormalizer
from sb3_iql.common.synthetic import box_env
from sb3_iql.data import load_transitions
from sb3_iql.evaluation import dataset_reference_scores
from sb3_iql.iql.iql import METRIC_NAMES
from sb3_iql.iql.multi_seed import learn_offline_together

SMALL_NET = dict(net_arch=[32, 32])


@pytest.fixture
def line_dataset(minari_root: pathlib.Path):
    """Half the episodes go to the goal, half go away from it."""
    env = gym.make(LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=100)
    return write_dataset("test/line/mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)


def line_model(dataset, **kwargs) -> IQL:
    defaults = dict(offline_steps=100, policy_kwargs=SMALL_NET, seed=0, batch_size=64)
    defaults.update(kwargs)
    return IQL("MlpPolicy", LineEnv(), offline_dataset=dataset, **defaults)


def gaussian_log_prob(actor, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """The reference policy's log-likelihood written out: a diagonal Gaussian, mean tanh(mu(s)), state-independent
    log std clipped to [-5, 2], no squashing of the actions, summed over the action dimensions."""
    mean = th.tanh(actor.mu(actor.latent(obs)))
    log_std = actor.log_std.clamp(-5.0, 2.0)
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def reference_update(
    model: IQL, batch, actor_lr: float, joint: bool = False, bc_weight: float | None = None, weighted: bool = False
) -> th.Tensor:
    """The paper's update written out step by step, on deep copies, to check the algorithm's own.

    :param joint: d3rlpy's order instead: the Q target takes V(s') from before V's step
    :param bc_weight: DDPG+BC policy extraction with this weight instead of AWR
    :param weighted: DDPG + AWR: the log-likelihood term weighted by the AWR weights
    :return: the update's metrics, in ``METRIC_NAMES``' order: the three losses, V(s) before V's step, both
        critics' Q(s, a) before their step, the advantage and the AWR weight, each averaged over the batch
    """
    obs, actions, next_obs = batch.observations, batch.actions, batch.next_observations
    rewards, dones = batch.rewards.flatten(), batch.dones.flatten()
    value_net, actor, critic, critic_target = model.value_net, model.actor, model.critic, model.critic_target
    old_next_value = value_net(next_obs).detach()
    # V first, towards the min of the TARGET critics
    q_target = th.minimum(*critic_target(obs, actions)).detach()
    values = value_net(obs)
    diff = q_target - values
    value_loss = (th.abs(model.expectile - (diff < 0).float()) * diff**2).mean()
    value_net.optimizer.zero_grad()
    value_loss.backward()
    value_net.optimizer.step()
    # then the actor, with the NEW V and the target critics
    advantage = (q_target - value_net(obs)).detach()
    weights = th.exp(model.beta * advantage).clamp(max=model.max_weight)
    for group in actor.optimizer.param_groups:
        group["lr"] = actor_lr
    actor_loss = -(weights * gaussian_log_prob(actor, obs, actions)).mean()
    if bc_weight is not None:  # DDPG+BC: the smaller critic at the mean action, over its mean magnitude
        mean_action = th.tanh(actor.mu(actor.latent(obs)))
        policy_q = th.minimum(*critic(obs, mean_action))
        log_prob = actor.distribution(obs).log_prob(actions).sum(-1)
        cloning = (weights * log_prob).mean() if weighted else log_prob.mean()
        actor_loss = -policy_q.mean() / policy_q.abs().mean().detach() - bc_weight * cloning
    actor.optimizer.zero_grad()
    actor_loss.backward()
    actor.optimizer.step()
    # then Q, towards r + gamma * (1 - terminal) * V_new(s'): a SUM of the two MSEs
    target = (rewards + model.gamma * (1 - dones) * (old_next_value if joint else value_net(next_obs))).detach()
    q1, q2 = critic(obs, actions)
    critic_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
    critic.optimizer.zero_grad()
    critic_loss.backward()
    critic.optimizer.step()
    # then Polyak
    with th.no_grad():
        for param, target_param in zip(critic.parameters(), critic_target.parameters()):
            target_param.copy_(model.tau * param + (1 - model.tau) * target_param)
    q_mean = th.stack([q1, q2]).mean()
    return th.stack([value_loss, actor_loss, critic_loss, values.mean(), q_mean, advantage.mean(), weights.mean()]).detach()


@pytest.mark.parametrize("update_order", ["sequential", "joint"])
def test_update_matches_the_step_by_step_reference(line_dataset, update_order):
    model = line_model(line_dataset, offline_steps=10, expectile=0.8, beta=5.0, update_order=update_order)
    reference = copy.deepcopy(model)
    other_order = copy.deepcopy(model)
    for step in range(5):
        batch = model.replay_buffer.sample(64)  # a quarter made terminal: the toy line never terminates
        batch = batch._replace(dones=(th.arange(64) % 4 == 0).float().reshape(batch.dones.shape))
        model._set_learning_rates(offline=True)
        metrics = model._update(batch)
        actor_lr = 3e-4 * 0.5 * (1 + math.cos(math.pi * step / 10))
        reference_metrics = reference_update(reference, batch, actor_lr, joint=update_order == "joint")
        th.testing.assert_close(metrics, reference_metrics)  # each metric in its place
        reference_update(other_order, batch, actor_lr, joint=update_order != "joint")
        model._n_offline_updates += 1
    for (name, ours), theirs in zip(model.policy.state_dict().items(), reference.policy.state_dict().values()):
        th.testing.assert_close(ours, theirs, msg=name)
    # the two orders differ (in the critics, which see another V(s')): the comparison can tell them apart
    assert not th.allclose(model.critic.q_networks[0].weight, other_order.critic.q_networks[0].weight, rtol=0, atol=1e-6)
    th.testing.assert_close(model.value_net.v_network[0][0].weight, other_order.value_net.v_network[0][0].weight)
    assert metrics.shape == (len(METRIC_NAMES),) and len(set(metrics.tolist())) == len(METRIC_NAMES)


@pytest.mark.parametrize("policy_extraction", ["ddpg_bc", "ddpg_awr"])
def test_ddpg_update_matches_the_step_by_step_reference(line_dataset, policy_extraction):
    model = line_model(line_dataset, offline_steps=10, expectile=0.8, policy_extraction=policy_extraction, bc_weight=0.3)
    reference, awr = copy.deepcopy(model), copy.deepcopy(model)
    for step in range(5):
        batch = model.replay_buffer.sample(64)
        model._set_learning_rates(offline=True)
        metrics = model._update(batch)
        actor_lr = 3e-4 * 0.5 * (1 + math.cos(math.pi * step / 10))
        weighted = policy_extraction == "ddpg_awr"
        th.testing.assert_close(metrics, reference_update(reference, batch, actor_lr, bc_weight=0.3, weighted=weighted))
        reference_update(awr, batch, actor_lr)
        model._n_offline_updates += 1
    for (name, ours), theirs in zip(model.policy.state_dict().items(), reference.policy.state_dict().values()):
        th.testing.assert_close(ours, theirs, msg=name)
    assert not th.allclose(model.actor.mu.weight, awr.actor.mu.weight, rtol=0, atol=1e-6)  # the test can tell AWR apart
    th.testing.assert_close(model.critic.q_networks[0].weight, awr.critic.q_networks[0].weight)  # critics untouched


def test_ddpg_bc_is_checked_and_saved(line_dataset, tmp_path):
    with pytest.raises(ValueError, match="policy_extraction"):
        line_model(line_dataset, policy_extraction="ddpg")
    model = line_model(line_dataset, policy_extraction="ddpg_bc", bc_weight=0.3)
    model.save(tmp_path / "ddpg_bc")
    loaded = IQL.load(tmp_path / "ddpg_bc")
    assert (loaded.policy_extraction, loaded.bc_weight) == ("ddpg_bc", 0.3)


def test_update_order_is_checked(line_dataset):
    with pytest.raises(ValueError, match="update_order"):
        line_model(line_dataset, update_order="random")


def test_update_order_is_value_actor_critic(line_dataset):
    model = line_model(line_dataset)
    calls = []
    for name in ("value_net", "actor", "critic"):
        optimizer = getattr(model, name).optimizer
        original_step = optimizer.step
        optimizer.step = lambda *args, _name=name, _step=original_step, **kwargs: (calls.append(_name), _step(*args, **kwargs))
    model.learn_offline(2)
    assert calls == ["value_net", "actor", "critic"] * 2


def test_actor_lr_follows_a_cosine_to_zero_offline_then_constant_online(line_dataset):
    model = line_model(line_dataset, offline_steps=4)
    seen = []

    class RecordLr(BaseCallback):
        def _on_step(self) -> bool:
            seen.append((self.model.actor.optimizer.param_groups[0]["lr"], self.model.critic.optimizer.param_groups[0]["lr"]))
            return True

    model.learn(total_timesteps=2, callback=RecordLr())
    actor_lrs, critic_lrs = zip(*seen)
    cosine = [3e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(actor_lrs[:4], cosine)
    assert critic_lrs[:4] == (3e-4,) * 4
    # online: the callback runs before each step's update, the first online update uses the constant lr
    assert model.actor.optimizer.param_groups[0]["lr"] == 3e-4
    constant = line_model(line_dataset, offline_steps=4, actor_lr_schedule="constant")
    constant.learn_offline(3)
    assert constant.actor.optimizer.param_groups[0]["lr"] == 3e-4


def test_critic_lr_schedule_and_sb3_schedules_follow_the_offline_progress(line_dataset):
    def offline_lrs(model: IQL) -> list[tuple[float, float, float]]:
        seen = []
        for _ in range(4):
            model.learn_offline(1, reset_num_timesteps=False)
            seen.append(tuple(net.optimizer.param_groups[0]["lr"] for net in (model.actor, model.critic, model.value_net)))
        return seen

    cosine = [3e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    both = offline_lrs(line_model(line_dataset, offline_steps=4, critic_lr_schedule="cosine"))
    np.testing.assert_allclose(np.array(both), np.repeat(np.array(cosine)[:, None], 3, axis=1))
    # an SB3 schedule of the progress remaining (1 -> 0 over offline_steps) sets every network's base rate
    linear = offline_lrs(line_model(line_dataset, offline_steps=4, learning_rate=lambda remaining: 1e-3 * remaining))
    critic_linear = [1e-3 * (1 - k / 4) for k in range(4)]
    np.testing.assert_allclose([lrs[1:] for lrs in linear], [(lr, lr) for lr in critic_linear])
    np.testing.assert_allclose([lrs[0] for lrs in linear], np.multiply(critic_linear, np.array(cosine) / 3e-4))
    with pytest.raises(ValueError, match="critic_lr_schedule must be"):
        line_model(line_dataset, critic_lr_schedule="linear")


def test_a_short_run_with_the_default_budget_is_warned_about_its_undecayed_actor_lr(line_dataset):
    model = line_model(line_dataset, offline_steps=None)
    assert model.offline_steps == 1_000_000
    with pytest.warns(
        UserWarning, match=r"offline_steps=1,000,000 .* these 4 it will still be 1.000 .* offline_steps=4"
    ) as caught:
        model.learn_offline(4)
    assert [warning.filename for warning in caught] == [__file__]  # the line that called learn_offline
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn_offline(4, reset_num_timesteps=False)  # a later chunk of the same run: no warning
        line_model(line_dataset, offline_steps=8).learn_offline(4)  # a budget given explicitly, trained in chunks


def test_a_call_past_offline_steps_is_warned_about_its_updates_at_lr_zero(line_dataset):
    # before: updates past offline_steps ran with the actor's lr at 0, silently (offline_steps=0 too)
    model = line_model(line_dataset, offline_steps=4)
    with pytest.warns(
        UserWarning, match=r"actor_lr_schedule='cosine' .* offline_steps=4 .* \(0 done\): the last 2 of these 6"
    ):
        model.learn_offline(6)
    assert model.actor.optimizer.param_groups[0]["lr"] == 0.0  # what the warning is about
    with pytest.warns(UserWarning, match=r"actor_lr_schedule and critic_lr_schedule=.* \(0 done\): the last 2 of these 3"):
        line_model(line_dataset, offline_steps=0, critic_lr_schedule="cosine").learn_offline(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line_model(line_dataset, offline_steps=4).learn_offline(4)  # to the end, not past it
        line_model(line_dataset, offline_steps=0, actor_lr_schedule="constant").learn_offline(3)
    # a learning_rate schedule that ends at 0 (rl-zoo's lin_): every network stops, with a constant actor lr too
    linear = line_model(line_dataset, offline_steps=4, actor_lr_schedule="constant", learning_rate=lambda left: 1e-3 * left)
    with pytest.warns(UserWarning, match=r"learning_rate's schedule reaches 0 .* leave every network unchanged"):
        linear.learn_offline(6)
    assert {
        group["lr"] for net in (linear.actor, linear.critic, linear.value_net) for group in net.optimizer.param_groups
    } == {0.0}


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("beta", -1.0, "finite and >= 0"),
        ("beta", math.inf, "finite and >= 0"),
        ("tau", 1.5, r"in \[0, 1\]"),
        ("tau", -0.5, r"in \[0, 1\]"),
        ("gamma", math.nan, r"in \[0, 1\]"),
        ("max_weight", 0.0, "> 0"),
        ("bc_weight", -1.0, "finite and >= 0"),
        ("dropout", 1.0, r"None or in \[0, 1\)"),
        ("batch_size", 0, "an integer >= 1"),
        ("batch_size", 64.0, "an integer >= 1"),
        ("offline_steps", -5, "a whole number >= 0"),
        ("offline_steps", 2.5, "a whole number >= 0"),
        ("expectile", 1.0, r"in \(0, 1\)"),
        ("beta", "3", "finite and >= 0"),
    ],
)
def test_hyperparameters_out_of_range_are_refused_when_the_model_is_made(line_dataset, name, value, rule):
    # before: only expectile was checked; a negative beta, tau or max_weight, or a NaN, trained without a word
    with pytest.raises(ValueError, match=rf"{name} must be {rule}.*, got {re.escape(repr(value))}"):
        line_model(line_dataset, **{name: value})


@pytest.mark.parametrize("n_critics", [0, -1, 1.5, True])
def test_an_ensemble_without_critics_is_refused_when_the_model_is_made(line_dataset, n_critics):
    # before: n_critics=0 made a model whose first update failed in torch.min of an empty ensemble
    with pytest.raises(ValueError, match=rf"n_critics must be an integer of at least 1 .*, got {n_critics!r}"):
        line_model(line_dataset, policy_kwargs={**SMALL_NET, "n_critics": n_critics})
    line_model(line_dataset, policy_kwargs={**SMALL_NET, "n_critics": np.int64(1)})  # a NumPy integer (a sweep's) is one


def test_unclipped_awr_weights_are_warned_about(line_dataset):
    """max_weight=inf: exp(beta * A) overflows float32 above beta * A = 88 and the actor turned NaN without a word."""
    with pytest.warns(UserWarning, match=r"max_weight=inf with beta=3.0: the AWR weights exp\(beta \* A\) overflow"):
        line_model(line_dataset, max_weight=math.inf, beta=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line_model(line_dataset, max_weight=math.inf, beta=0.0)  # behaviour cloning: every weight is 1
        line_model(line_dataset, max_weight=math.inf, beta=3.0, policy_extraction="ddpg_bc")  # no weights


def test_a_loaded_model_s_hyperparameters_are_checked_too(line_dataset, tmp_path):
    line_model(line_dataset, max_weight=math.inf, gamma=1.0, tau=0.0, beta=0.0, dropout=0.0).save(tmp_path / "edges")
    IQL.load(tmp_path / "edges")  # the edges of each range are valid
    checks = (("expectile", 5.0), ("tau", 3.0), ("offline_steps", -1), ("offline_steps", None), ("policy_extraction", "x"))
    for name, value in checks:
        with pytest.raises(ValueError, match=f"{name} must be"):
            IQL.load(tmp_path / "edges", custom_objects={name: value})


def test_update_counts_must_be_whole_numbers_of_at_least_zero(line_dataset):
    model = line_model(line_dataset)
    for call in (model.learn_offline, model.learn, functools.partial(learn_offline_together, [model])):
        for count in (-5, 2.5, "5", math.inf):
            with pytest.raises(ValueError, match=rf"must be a whole number >= 0, got {re.escape(repr(count))}"):
                call(count)
    assert model._n_offline_updates == 0
    assert line_model(line_dataset, offline_steps=1e2).offline_steps == 100  # as rl-zoo's "-params offline_steps:1e5"
    model.learn_offline(2.0)  # 1e5 is a count too, as in SB3's learn
    assert model._n_offline_updates == 2
    fresh = line_model(line_dataset, offline_steps=3)
    fresh.learn(0.0)
    assert fresh._n_offline_updates == 3


def test_learn_zero_runs_the_offline_budget_with_callbacks_per_update(line_dataset, tmp_path):
    model = line_model(line_dataset, offline_steps=30)
    eval_callback = EvalCallback(LineEnv(), eval_freq=10, n_eval_episodes=2, log_path=str(tmp_path / "eval"))
    checkpoints = CheckpointCallback(save_freq=15, save_path=str(tmp_path / "ckpt"), name_prefix="iql")
    model.learn(0, callback=[eval_callback, checkpoints])
    assert model._n_offline_updates == model.num_timesteps == 30
    assert list(eval_callback.evaluations_timesteps) == [10, 20, 30]
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["iql_15_steps.zip", "iql_30_steps.zip"]
    model.learn(0)  # offline training already ran: nothing more
    assert model._n_offline_updates == 30


def test_learn_trains_offline_first_on_transitions_added_by_hand(line_dataset):
    model = IQL("MlpPolicy", LineEnv(), offline_steps=12, policy_kwargs=SMALL_NET, seed=0, batch_size=64)
    model.add_transitions(load_transitions([line_dataset]))
    assert model.offline_dataset_size == model.replay_buffer.size() > 0
    model.learn(0)
    assert model._n_offline_updates == model.num_timesteps == 12
    default_budget = IQL("MlpPolicy", LineEnv(), policy_kwargs=SMALL_NET, offline_steps=None)
    default_budget.add_transitions(load_transitions([line_dataset]))
    default_budget.offline_steps = 0  # the warning alone: no 1M updates here
    default_budget.offline_steps_default = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default_budget.learn(0)  # offline_steps 0: nothing to warn about
    default_budget.offline_steps = 2
    with pytest.warns(UserWarning, match=r"first trains offline_steps=2 updates \(the default\) on the data added"):
        default_budget.learn(0)


def test_learning_starts_counts_online_steps_after_the_offline_updates(line_dataset, tmp_path):
    class SaveAt(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 25:  # online, inside the random warm-up
                self.model.save(tmp_path / "inside")
            return True

    model = line_model(line_dataset, offline_steps=20, learning_starts=15)
    sampled = []
    sample_action = model._sample_action
    model._sample_action = lambda *args, **kwargs: sampled.append(args[0]) or sample_action(*args, **kwargs)
    model.learn(30, callback=SaveAt())  # 20 offline updates, then 15 random steps and 15 policy steps
    assert model.num_timesteps == 50
    assert model._n_updates == 20 + 15, "no online update before learning_starts online steps"
    assert set(sampled) == {35}, "the warm-up is shifted past the offline updates"
    assert model.learning_starts == 15 == IQL.load(tmp_path / "inside").learning_starts
    model.learn(5, reset_num_timesteps=True)  # counters from 0: 5 random steps, no update
    assert model._n_updates == 35


def test_a_callback_can_stop_offline_training(line_dataset):
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 7

    model = line_model(line_dataset)
    model.learn_offline(50, callback=StopAt())
    assert model._n_offline_updates == 7


def test_a_callback_that_stops_learn_s_offline_phase_stops_the_call_and_the_next_call_finishes_it(line_dataset):
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 10

    model = line_model(line_dataset, offline_steps=30)
    offline_size = model.replay_buffer.size()
    model.learn(20, callback=StopAt())  # as SAC's learn() stops: no online step
    assert model._n_offline_updates == model.num_timesteps == 10 and model.replay_buffer.size() == offline_size
    model.learn(20, reset_num_timesteps=False)  # the 20 offline updates left, then 20 online steps
    assert model._n_offline_updates == 30 and model.num_timesteps == 50
    assert model.replay_buffer.size() == offline_size + 20


class Events(BaseCallback):
    """Records the callback events of a run, with the step each came at."""

    def __init__(self):
        super().__init__()
        self.events = []

    def _init_callback(self) -> None:
        self.events.append(("init", self.model.num_timesteps))

    def _on_training_start(self) -> None:
        self.events.append(("start", self.num_timesteps))

    def _on_training_end(self) -> None:
        self.events.append(("end", self.model.num_timesteps))

    def _on_step(self) -> bool:
        assert not self.locals["dones"].any() or self.num_timesteps > 20  # no episode ends offline
        return True


@pytest.mark.parametrize("stop_at", [None, 10, 20])
def test_learn_s_two_phases_are_one_run_for_the_callbacks(line_dataset, stop_at):
    class StopAt(Events):
        def _on_step(self) -> bool:
            super()._on_step()
            return self.n_calls != stop_at

    callback = StopAt()
    model = line_model(line_dataset, offline_steps=20)
    model.learn(15, callback=callback)
    last_step = stop_at or 35  # a stop at the last offline update stops the call too
    assert callback.events == [("init", 0), ("start", 0), ("end", last_step)], "as SAC's learn(): once each"
    assert callback.n_calls == model.num_timesteps == last_step
    assert model._offline_phase_unfinished == (stop_at == 10)


def test_a_callback_list_is_set_up_and_counts_its_calls_as_sac_s_learn_leaves_it(line_dataset):
    inner = Events()
    listed = CallbackList([inner])
    model = line_model(line_dataset, offline_steps=20)
    model.learn(15, callback=listed)  # both phases
    assert listed.model is model and listed.n_calls == inner.n_calls == 35, "left at 0, without a model, before"
    assert inner.events == [("init", 0), ("start", 0), ("end", 35)]
    offline = CallbackList([Events()])
    model.learn_offline(10, callback=offline)
    assert offline.model is model and offline.n_calls == offline.callbacks[0].n_calls == 10


def test_sb3_callbacks_that_read_the_rollout_s_locals_and_functions_run_offline(line_dataset, tmp_path):
    from stable_baselines3.common.callbacks import LogEveryNTimesteps, StopTrainingOnMaxEpisodes

    calls = []
    episodes = StopTrainingOnMaxEpisodes(max_episodes=2)
    model = line_model(line_dataset, offline_steps=20)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(100, callback=[episodes, LogEveryNTimesteps(n_steps=10), lambda locals_, globals_: calls.append(1) is None])
    assert model._n_offline_updates == 20 and model.num_timesteps == 60, "stopped after 2 online episodes of 20 steps"
    assert len(calls) == 60, "the function ran at every step, offline too"
    header, *rows = (tmp_path / "progress.csv").read_text().splitlines()
    steps = [int(float(dict(zip(header.split(","), row.split(",")))["time/total_timesteps"])) for row in rows]
    assert {10, 20, 30, 40, 50} <= set(steps), "LogEveryNTimesteps dumped offline and online"


@pytest.mark.parametrize("dropout", [None, 0.1])  # dropout masks come from torch's global generator, saved too
def test_a_checkpoint_saved_in_learn_s_offline_phase_resumes_to_the_uninterrupted_run(line_dataset, tmp_path, dropout):
    checkpoints = CheckpointCallback(save_freq=15, save_path=str(tmp_path), name_prefix="iql")
    line_model(line_dataset, offline_steps=40, dropout=dropout).learn(0, callback=checkpoints)
    uninterrupted = line_model(line_dataset, offline_steps=40, dropout=dropout).learn(0)
    resumed = IQL.load(tmp_path / "iql_30_steps.zip", env=LineEnv())  # killed after 30 of the 40 offline updates
    resumed.reload_offline_dataset()
    resumed.learn(0, reset_num_timesteps=False)  # before: nothing, as an offline update had run
    assert resumed._n_offline_updates == resumed.num_timesteps == 40
    for (name, ours), theirs in zip(resumed.policy.state_dict().items(), uninterrupted.policy.state_dict().values()):
        th.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    uninterrupted.save(tmp_path / "done")
    assert not IQL.load(tmp_path / "done")._offline_phase_unfinished  # a later learn() goes online
    # the same phase finished with learn_offline: learn() then goes online only
    finished = IQL.load(tmp_path / "iql_30_steps.zip", env=LineEnv())
    finished.reload_offline_dataset()
    finished.learn_offline(10, reset_num_timesteps=False)
    finished.learn(5, reset_num_timesteps=False)
    assert finished._n_offline_updates == 40 and finished.num_timesteps == 45


def test_what_the_online_loop_refuses_is_refused_before_the_offline_updates(line_dataset, tmp_path):
    episodic = IQL(
        "MlpPolicy", DummyVecEnv([LineEnv, LineEnv]), offline_dataset=line_dataset, offline_steps=20,
        train_freq=(1, "episode"), policy_kwargs=SMALL_NET,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"train_freq=\(1, 'episode'\) counts episodes, .* the env has 2"):
        episodic.learn(10)
    line_model(line_dataset, offline_steps=20).save(tmp_path / "untrained")
    no_env = IQL.load(tmp_path / "untrained")  # a saved model keeps no env
    no_env.reload_offline_dataset()
    with pytest.raises(RuntimeError, match="needs an environment"):
        no_env.learn(10)
    assert episodic._n_offline_updates == no_env._n_offline_updates == 0
    never_collects = line_model(line_dataset, offline_steps=20, train_freq=0)  # SB3's bare AssertionError after them
    with pytest.raises(ValueError, match="train_freq must collect at least 1 step between two trainings, got 0"):
        never_collects.learn(10)
    noisy = line_model(line_dataset, offline_steps=20, action_noise=NormalActionNoise(np.zeros(2), np.ones(2)))
    with pytest.raises(ValueError, match=r"action_noise draws noise of shape \(2,\) for actions of shape \(1,\)"):
        noisy.learn(10)  # a broadcasting ValueError after the offline updates before
    assert never_collects._n_offline_updates == noisy._n_offline_updates == 0
    state = np.random.get_state()
    fitting = line_model(line_dataset, offline_steps=0, action_noise=NormalActionNoise(np.zeros(1), np.ones(1)))
    fitting._check_online_setup()
    broadcast = IQL("MlpPolicy", box_env(2, 2), action_noise=NormalActionNoise(np.zeros(1), np.ones(1)), buffer_size=10)
    broadcast._check_online_setup()  # one sigma for every action dimension: SB3 adds it, as SAC's learn() does
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))  # the run's noise stream unchanged
    no_env.learn(0)  # offline only: no environment needed
    assert no_env._n_offline_updates == 20


def test_a_new_offline_run_after_online_steps_counts_episodes_and_resets_the_env_as_sb3(line_dataset):
    model = line_model(line_dataset, offline_steps=5, learning_starts=0)
    model.learn(45)  # two 20-step episodes, the third one under way
    assert model._episode_num == 2 and model._last_obs is not None
    model.learn_offline(5)  # reset_num_timesteps=True: a new run
    assert model.num_timesteps == 5 and model._episode_num == 0 and model._last_obs is None
    model.learn(20, reset_num_timesteps=False)  # starts a new episode: one ends within these 20 steps
    assert model._episode_num == 1


def test_online_steps_that_start_replacing_the_offline_data_warn_once(line_dataset, tmp_path):
    model = line_model(line_dataset, offline_steps=0, buffer_size=2010)  # the dataset's 2,000 transitions + 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(10)  # fills the room left
    with pytest.warns(UserWarning, match=r"buffer is full \(2,010 transitions\): online transitions now replace"):
        model.learn(10, reset_num_timesteps=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(5, reset_num_timesteps=False)  # said once
    model.save_replay_buffer(tmp_path / "buffer")
    smaller = line_model(line_dataset, offline_steps=0, buffer_size=5000)
    smaller.load_replay_buffer(tmp_path / "buffer")  # the loaded buffer's capacity, not the model's buffer_size
    with pytest.warns(UserWarning, match=r"buffer is full \(2,010 transitions\)"):
        smaller.learn(1)


def test_buffers_and_sizes_that_cannot_take_the_offline_data_are_refused(line_dataset):
    from stable_baselines3.common.buffers import ReplayBuffer

    with pytest.raises(TypeError, match="ReplayBuffer cannot take an offline dataset: use one of this package's"):
        line_model(line_dataset, replay_buffer_class=ReplayBuffer)  # SB3's own has an extend() of another kind
    odd = load_transitions([line_dataset])
    n = len(odd) - 1
    fields = ("observations", "next_observations", "actions", "rewards", "terminations", "truncations")
    odd = dataclasses.replace(odd, **{name: getattr(odd, name)[:n] for name in fields})
    with pytest.raises(ValueError, match=rf"buffer_size={n} is smaller than the offline dataset \({n} .* rows of 2"):
        IQL._buffer_size_for(n, n, n_envs=2)  # rows of 2 transitions: one short
    model = IQL("MlpPolicy", DummyVecEnv([LineEnv, LineEnv]), buffer_size=IQL._buffer_size_for(n, n + 1, n_envs=2))
    model.add_transitions(odd)  # the size the check asks for takes them
    assert model.offline_dataset_size == n
    size = line_model(line_dataset).replay_buffer.size()  # even: in rows of 3 it needs one slot more
    with pytest.raises(ValueError, match=rf"buffer_size={size} is smaller .* in rows of 3 environments, {size + 1} slots"):
        IQL("MlpPolicy", DummyVecEnv([LineEnv] * 3), offline_dataset=line_dataset, buffer_size=size)
    for n_envs in (1, 3, 7):  # the default: whole rows for the dataset, and at least ONLINE_BUFFER_ROOM online slots
        rows = IQL._buffer_size_for(10, None, n_envs) // n_envs
        assert rows * n_envs - -(-10 // n_envs) * n_envs >= ONLINE_BUFFER_ROOM  # with 3 envs 999,999 before


def test_action_noise_is_taken_as_sac_takes_it(line_dataset):
    from stable_baselines3.common.noise import NormalActionNoise

    model = line_model(line_dataset, offline_steps=0, action_noise=NormalActionNoise(np.full(1, 10.0), np.full(1, 0.1)))
    offline_size = model.replay_buffer.size()
    model.learn(5)  # noise far past the bounds: every action clipped to the top one
    online = model.replay_buffer.gather(th.arange(offline_size, offline_size + 5)).actions
    assert th.equal(online, th.ones(5, 1))


def test_logger_records_the_training_figures(line_dataset, tmp_path):
    model = line_model(line_dataset, tensorboard_log=str(tmp_path / "tb"))
    model.set_logger(configure(str(tmp_path / "csv"), ["csv"]))
    update, per_update = model._update, []
    model._update = lambda batch: per_update.append(update(batch)) or per_update[-1]  # the eager path (20 updates)
    model.learn_offline(20, log_interval=10)
    header, *rows = (tmp_path / "csv" / "progress.csv").read_text().splitlines()
    columns = header.split(",")
    for key in [f"train/{name}" for name in METRIC_NAMES] + ["train/actor_lr", "time/updates_per_second"]:
        assert key in columns
    assert len(rows) == 2 and len(per_update) == 20
    values = dict(zip(columns, rows[-1].split(",")))
    logged = [float(values[f"train/{name}"]) for name in METRIC_NAMES]
    assert logged == pytest.approx(th.stack(per_update[10:]).mean(0).tolist(), rel=1e-5)  # the last 10 updates' mean
    assert float(values["time/updates_per_second"]) > 0
    assert [int(dict(zip(columns, row.split(",")))["time/total_timesteps"]) for row in rows] == [10, 20]  # as SB3's
    # TensorBoard through SB3's own logger
    tb_model = line_model(line_dataset, tensorboard_log=str(tmp_path / "tb"))
    tb_model.learn_offline(5, tb_log_name="offline")
    assert list((tmp_path / "tb").glob("offline_1/events.out.tfevents.*"))


def test_metrics_that_are_not_finite_warn_that_training_diverged(line_dataset):
    """Data of extreme scale (observations near 1e37 pass the loader) made every logged loss NaN, silently."""
    model = line_model(line_dataset)
    with th.no_grad():
        next(model.critic.parameters()).fill_(float("nan"))  # as after a diverged update
    with pytest.warns(UserWarning, match=r"critic_loss.* not finite: training diverged .*normalize_obs"):
        model.learn_offline(2, log_interval=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's: a warning once per place and text
        model.learn_offline(6, log_interval=2)
    assert sum("training diverged" in str(warning.message) for warning in caught) == 1  # not one per dump
    healthy = line_model(line_dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healthy.learn_offline(2, log_interval=2)


def test_learn_s_two_phases_write_one_tensorboard_run(line_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = line_model(line_dataset, offline_steps=20, tensorboard_log=str(tmp_path / "tb"), learning_starts=0)
    model.learn(25, log_interval=1, tb_log_name="both")  # one online episode: 20 steps
    model.logger.close()
    runs = sorted(path.name for path in (tmp_path / "tb").iterdir())
    event_files = list((tmp_path / "tb" / "both_1").glob("events.out.tfevents.*"))
    assert runs == ["both_1"] and len(event_files) == 1, "one run, one writer, as SAC's learn()"
    events = EventAccumulator(str(event_files[0]))
    events.Reload()
    offline_steps = [event.step for event in events.Scalars("train/value_loss")]
    online_steps = [event.step for event in events.Scalars("rollout/ep_rew_mean")]
    assert offline_steps[0] == 20 and online_steps == [40], "the offline updates, then the online steps after them"


def test_save_load_gives_identical_predictions_and_resumes_exactly(line_dataset, tmp_path):
    n_updates = 40
    model = line_model(line_dataset)
    model.learn_offline(n_updates)
    model.save(tmp_path / "iql")
    model.save_replay_buffer(tmp_path / "buffer")

    loaded = IQL.load(tmp_path / "iql", env=LineEnv())
    obs = np.random.default_rng(0).uniform(-1, 1, (16, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded._n_offline_updates == n_updates and loaded.reward_transform_fn == model.reward_transform_fn
    for name in ("actor", "critic", "value_net"):
        saved_state = getattr(model, name).optimizer.state_dict()["state"]
        loaded_state = getattr(loaded, name).optimizer.state_dict()["state"]
        for key in saved_state:
            th.testing.assert_close(saved_state[key]["exp_avg"], loaded_state[key]["exp_avg"])

    loaded.load_replay_buffer(tmp_path / "buffer")
    assert loaded.replay_buffer.size() == model.replay_buffer.size()
    loaded.learn_offline(n_updates, reset_num_timesteps=False)

    uninterrupted = line_model(line_dataset)
    uninterrupted.learn_offline(2 * n_updates)
    for (name, resumed), straight in zip(loaded.policy.state_dict().items(), uninterrupted.policy.state_dict().values()):
        th.testing.assert_close(resumed, straight, msg=name)
    # SB3's way to keep the buffer in the file: the batches went on from a new model's stream before
    model.save(tmp_path / "with_buffer", include=["replay_buffer"])
    with_buffer = IQL.load(tmp_path / "with_buffer", env=LineEnv())
    assert th.equal(with_buffer.sampling_generator.get_state(), model.sampling_generator.get_state())
    with_buffer.learn_offline(n_updates, reset_num_timesteps=False)
    for name, resumed in with_buffer.policy.state_dict().items():
        th.testing.assert_close(resumed, uninterrupted.policy.state_dict()[name], msg=name)


def test_the_policy_saved_alone_loads_for_deployment_in_evaluation_mode(line_dataset, tmp_path):
    """The docs' deployment route: ``policy_class.load`` left the actor's dropout on (training mode)."""
    model = line_model(line_dataset, dropout=0.5)
    model.learn_offline(5)
    model.policy.save(tmp_path / "policy")
    policy = model.policy_class.load(tmp_path / "policy")
    assert not policy.training and not policy.actor.training
    obs = th.as_tensor(np.random.default_rng(0).uniform(-1, 1, (16, 2)), dtype=th.float32)
    th.testing.assert_close(policy.actor(obs, deterministic=True), policy.actor(obs, deterministic=True), rtol=0, atol=0)
    np.testing.assert_array_equal(
        policy.predict(obs.numpy(), deterministic=True)[0], model.predict(obs.numpy(), deterministic=True)[0]
    )


def test_a_replay_buffer_that_does_not_fit_says_which_size_to_change(line_dataset, monkeypatch):
    from sb3_iql.data import device_buffers

    class ArrayMemoryError(MemoryError):  # as NumPy's own subclass: (shape, dtype), no message alone
        def __init__(self, shape, dtype):
            super().__init__(f"Unable to allocate an array with shape {shape} and data type {dtype}")

    def no_memory(shape, device, dtype=np.float32):
        raise ArrayMemoryError(shape, np.dtype(dtype))

    monkeypatch.setattr(device_buffers, "zeros", no_memory)
    with pytest.raises(MemoryError, match=r"buffer_size=1,002,000 transitions does not fit .* pass a smaller buffer_size"):
        line_model(line_dataset, buffer_size=None)


def test_a_file_of_another_algorithm_is_refused_by_name(tmp_path):
    from stable_baselines3 import SAC

    SAC("MlpPolicy", LineEnv(), policy_kwargs=dict(net_arch=[8]), buffer_size=10).save(tmp_path / "sac")
    with pytest.raises(ValueError, match=r"IQL needs an IQLPolicy .* got SACPolicy"):  # an AttributeError deep inside before
        IQL.load(tmp_path / "sac")


def test_the_actor_called_directly_is_deterministic_after_training_and_loading(line_dataset, tmp_path):
    """SB3's export guide checks an exported actor against model.actor(obs, deterministic=True): no dropout there."""
    model = line_model(line_dataset, dropout=0.5, offline_steps=20, learning_starts=0)
    obs = th.as_tensor(np.random.default_rng(0).uniform(-1, 1, (16, 2)).astype(np.float32))

    def direct_calls(trained: IQL) -> list[th.Tensor]:
        with th.no_grad():
            return [trained.actor(obs, deterministic=True) for _ in range(3)]

    for step in (lambda: None, lambda: model.learn_offline(20), lambda: model.learn(30)):
        step()
        expected = th.as_tensor(model.policy.scale_action(model.predict(obs.numpy(), deterministic=True)[0]))
        for actions in direct_calls(model):
            th.testing.assert_close(actions, expected)
    model.save(tmp_path / "model")
    for actions in direct_calls(IQL.load(tmp_path / "model")):
        th.testing.assert_close(actions, expected)


def test_observation_normalisation_uses_the_dataset_statistics_and_survives_save_load(line_dataset, tmp_path):
    model = line_model(line_dataset, policy_kwargs={**SMALL_NET, "normalize_observations": True})
    observations = np.concatenate([episode.observations[:-1] for episode in line_dataset.iterate_episodes()])
    normalizer = model.policy.observation_normalizer
    assert normalizer is model.actor.observation_normalizer is model.critic_target.observation_normalizer
    th.testing.assert_close(normalizer.mean_obs, th.as_tensor(observations.mean(axis=0), dtype=th.float32))
    # the goal coordinate is the same in every transition: centred, not scaled
    assert observations[:, 1].std() == 0 and normalizer.std_obs[1] == 1.0
    th.testing.assert_close(normalizer.std_obs[0], th.tensor(observations[:, 0].std(), dtype=th.float32))
    obs = th.as_tensor(observations[:8])
    expected = model.actor.mu(model.actor.latent_pi((obs - normalizer.mean_obs) / normalizer.std_obs)).tanh()
    th.testing.assert_close(model.actor(obs, deterministic=True), expected)
    model.learn_offline(10)
    model.save(tmp_path / "iql")
    loaded = IQL.load(tmp_path / "iql", env=LineEnv())
    assert bool(loaded.policy.observation_normalizer.fitted)
    th.testing.assert_close(loaded.policy.observation_normalizer.mean_obs, normalizer.mean_obs)
    np.testing.assert_array_equal(
        model.predict(observations[:16], deterministic=True)[0], loaded.predict(observations[:16], deterministic=True)[0]
    )
    assert line_model(line_dataset).policy.observation_normalizer is None  # off by default


def test_a_feature_constant_over_a_million_observations_is_only_centred():
    # The statistics are computed in chunks (a pixel dataset does not fit in memory as float64); E[x^2] - E[x]^2
    # would give this constant feature a std of 1.5e-5, above MIN_STD, and scale it by 7e4.
    normalizer = ObservationNormalizer(gym.spaces.Box(-np.inf, np.inf, (1,), np.float64))
    normalizer.fit(np.full((1_000_000, 1), 123.456))
    assert normalizer.std_obs == 1.0 and normalizer.mean_obs == th.tensor(123.456, dtype=th.float32)
    varying = np.arange(1_000_000, dtype=np.float64)[:, None] % 7
    normalizer.fit(varying)
    th.testing.assert_close(normalizer.std_obs, th.tensor([varying.std()], dtype=th.float32))


def test_one_hot_observations_are_left_as_they_are_by_the_normalizer():
    """Fitted on indices, the statistics had the index shape: a MultiDiscrete key failed at the first update, a
    Discrete one had its one-hot input shifted by the mean index."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    space = gym.spaces.Dict(
        {"x": gym.spaces.Box(-10, 10, (2,)), "cell": gym.spaces.Discrete(4), "cells": gym.spaces.MultiDiscrete([3, 2])}
    )
    observations = {
        "x": np.array([[1.0, 2.0], [3.0, 6.0]], np.float32),
        "cell": np.array([3, 1]),
        "cells": np.array([[2, 1], [0, 1]]),
    }
    normalizer = ObservationNormalizer(space)
    normalizer.fit(observations)
    one_hot = preprocess_obs({key: th.as_tensor(value) for key, value in observations.items()}, space)
    normalized = normalizer(one_hot)
    th.testing.assert_close(normalized["x"], th.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    for key in ("cell", "cells"):
        assert th.equal(normalized[key], one_hot[key])


def test_evaluate_gives_the_normalized_score(line_dataset):
    model = line_model(line_dataset)
    model.learn_offline(5)
    on_env = evaluate(model, LineEnv(), n_eval_episodes=3, seed=0)
    assert on_env.normalized_score is None and len(on_env.episode_returns) == 3
    on_dataset = evaluate(model, line_dataset, n_eval_episodes=3, seed=0)
    np.testing.assert_allclose(on_dataset.episode_returns, on_env.episode_returns)  # same env, same seed
    assert on_dataset.normalized_score == pytest.approx(100 * (on_dataset.mean_return + 16.0) / 14.0)
    assert normalized_score(line_dataset, -9.0) == pytest.approx(100 * (-9.0 + 16.0) / 14.0)
    assert normalized_score("test/line/mixed-v0", -9.0) == normalized_score(line_dataset, -9.0)  # by id, as evaluate
    # The same formula from the reference scores themselves, on arrays too.
    assert dataset_reference_scores(line_dataset) == (-16.0, -2.0)
    np.testing.assert_allclose(normalized_score((-16.0, -2.0), np.array([[-16.0], [-2.0]])), [[0.0], [100.0]])


def test_normalized_score_needs_reference_scores(minari_root):
    env = LineEnv()
    dataset = write_dataset("test/line/norefs-v0", rollout_episodes(env, [good_policy], 2), env=env)
    with pytest.raises(ValueError, match="has no reference scores"):
        normalized_score(dataset, 1.0)
    assert dataset_reference_scores(dataset) is None
    with pytest.raises(ValueError, match="must exceed"):
        normalized_score((1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="must exceed"):  # reversed: a score of 100 for the worse return
        normalized_score((5.0, 1.0), 1.0)


def test_online_learning_requires_an_environment(line_dataset, tmp_path):
    model = line_model(line_dataset)
    model.learn_offline(2)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model")  # no env, and the replay buffer is not part of the model file
    with pytest.raises(RuntimeError, match="needs an environment"):
        loaded.learn(10)
    with pytest.raises(RuntimeError, match=r"a saved model holds no data. Call reload_offline_dataset"):
        loaded.learn_offline(10)
    loaded.set_env(LineEnv())
    with pytest.warns(UserWarning, match="without its offline data"):
        loaded.learn(3)
    assert loaded.replay_buffer.size() == 3  # the warning's point: online steps only
    with pytest.raises(RuntimeError, match=r"create IQL with offline_dataset=..., or call add_transitions\(\)"):
        IQL("MlpPolicy", LineEnv()).learn_offline(10)


def test_data_from_add_transitions_is_missed_after_load_and_counted_once_when_added_back(line_dataset, tmp_path):
    transitions = load_transitions([line_dataset])
    model = IQL("MlpPolicy", LineEnv(), offline_steps=2, policy_kwargs=SMALL_NET, seed=0, batch_size=64)
    model.add_transitions(transitions)
    model.learn_offline(2)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model", env=LineEnv())
    assert loaded.offline_dataset_size == len(transitions) and loaded.replay_buffer.size() == 0
    with pytest.warns(UserWarning, match=r"without its offline data.*add_transitions\(\), or load_replay_buffer"):
        loaded.learn(3, reset_num_timesteps=False)
    again = IQL.load(tmp_path / "model", env=LineEnv())
    bad = dataclasses.replace(transitions, rewards=np.full_like(transitions.rewards, np.nan))
    with pytest.raises(ValueError, match="NaN"):
        again.add_transitions(bad)
    assert again.offline_dataset_size == len(transitions), "a refused add keeps the count (and the warning)"
    again.add_transitions(transitions)  # the saved count was of data no longer in the buffer
    assert again.offline_dataset_size == len(transitions) == again.replay_buffer.size()


def test_a_buffer_loaded_into_a_new_model_is_its_offline_data(line_dataset, tmp_path):
    source = line_model(line_dataset)
    source.save_replay_buffer(tmp_path / "buffer")
    model = IQL("MlpPolicy", LineEnv(), offline_steps=5, policy_kwargs=SMALL_NET, seed=0, batch_size=64)
    model.load_replay_buffer(tmp_path / "buffer")
    assert model.offline_dataset_size == source.offline_dataset_size == model.replay_buffer.size()
    with pytest.raises(ValueError, match="VecNormalize is not supported with offline data"):
        model.set_env(VecNormalize(DummyVecEnv([LineEnv])))
    model.learn(3)
    assert model._n_offline_updates == 5, "learn() trains offline_steps updates on it first, as on add_transitions data"
    assert model.offline_dataset_size == source.offline_dataset_size  # online steps are not offline data

    trained = line_model(line_dataset)
    trained.learn_offline(2)
    trained.load_replay_buffer(tmp_path / "buffer")  # a model that trained keeps its count
    assert trained.offline_dataset_size == source.offline_dataset_size
    normalizing = IQL("MlpPolicy", LineEnv(), policy_kwargs={**SMALL_NET, "normalize_observations": True})
    with pytest.raises(ValueError, match="a replay buffer file does not carry"):
        normalizing.load_replay_buffer(tmp_path / "buffer")
    with pytest.raises(ValueError, match=r"normalize_observations=True .* no offline data to fit them on"):
        normalizing.learn(5)  # trained on raw observations before, refitted by data added later
    assert normalizing.num_timesteps == 0
    discrete = IQL("MlpPolicy", LineEnv(discrete=True), policy_kwargs=SMALL_NET)  # Box actions would be cut to indices
    own_buffer = discrete.replay_buffer
    with pytest.raises(ValueError, match=r"holds observations .* and actions Box.*this model has .* Discrete\(3\)"):
        discrete.load_replay_buffer(tmp_path / "buffer")
    assert discrete.replay_buffer is own_buffer and discrete.offline_dataset_size == 0
    wider = IQL("MlpPolicy", gym.wrappers.RescaleAction(LineEnv(), np.float32(-5), np.float32(5)), policy_kwargs=SMALL_NET)
    with pytest.raises(ValueError, match=r"holds observations .* and actions Box.*this model has .* Box\(-5.0, 5.0"):
        wider.load_replay_buffer(tmp_path / "buffer")  # its actions, scaled by other bounds, would mean others
    two_envs = IQL("MlpPolicy", DummyVecEnv([LineEnv, LineEnv]), policy_kwargs=SMALL_NET)
    with pytest.raises(ValueError, match=r"takes steps of 1 environment\(s\); this model takes 2"):
        two_envs.load_replay_buffer(tmp_path / "buffer")
    two_envs.save(tmp_path / "two_envs")
    loaded = IQL.load(tmp_path / "two_envs")  # no env: set_env() will require its saved 2 environments
    with pytest.raises(ValueError, match=r"takes steps of 1 environment\(s\); this model takes 2"):
        loaded.load_replay_buffer(tmp_path / "buffer")


# ----------------------------------------------------------------------------------------------------------------------
# Learning


def offline_return(dataset, beta: float, seed: int, updates: int = 1500) -> float:
    model = line_model(dataset, beta=beta, seed=seed, offline_steps=updates, batch_size=256)
    model.learn(0)
    return evaluate(model, LineEnv(), n_eval_episodes=20, seed=100 + seed).mean_return


@pytest.mark.parametrize("seed", [0, 1])
def test_iql_beats_behaviour_cloning_on_mixed_data(line_dataset, seed):
    # The good policy scores about -2.5, the bad one about -17; BC averages the two behaviours.
    iql, bc = offline_return(line_dataset, beta=3.0, seed=seed), offline_return(line_dataset, beta=0.0, seed=seed)
    assert iql > -8.0, iql
    assert iql > bc + 5.0, (iql, bc)


def test_online_fine_tuning_improves_a_poor_offline_policy(minari_root):
    env = LineEnv()
    # only bad behaviour in the data: the offline policy walks away from the goal
    dataset = write_dataset("test/line/bad-v0", rollout_episodes(env, [bad_policy], 50), env=env)
    model = line_model(dataset, beta=3.0, offline_steps=500, batch_size=128, learning_rate=1e-3)
    model.learn(0)
    before = evaluate(model, LineEnv(), n_eval_episodes=20, seed=7).mean_return
    model.learn(total_timesteps=3000)
    after = evaluate(model, LineEnv(), n_eval_episodes=20, seed=7).mean_return
    assert model.replay_buffer.size() == 1000 + 3000
    assert after > before + 3.0, (before, after)
    # and heads for the goal (measured -3.0; the good policy scores about -2.5, standing still about -12.5)
    assert after > -8.0, after


def test_online_steps_store_transformed_rewards_and_keep_time_limits_non_terminal(line_dataset):
    model = line_model(line_dataset, reward_transform="antmaze", offline_steps=0)
    offline_rows = model.replay_buffer.pos
    model.learn(total_timesteps=25)  # one 20-step episode and the start of the next
    buffer = model.replay_buffer
    online = slice(offline_rows, offline_rows + 25)
    positions = buffer.next_observations[online, 0, 0]
    np.testing.assert_allclose(buffer.rewards[online, 0], -np.abs(positions - 0.5) - 1.0, rtol=1e-5)
    assert buffer.dones[online, 0].tolist() == [0.0] * 19 + [1.0] + [0.0] * 5
    assert buffer.timeouts[online, 0].tolist() == [0.0] * 19 + [1.0] + [0.0] * 5
    batch = buffer._get_samples(np.array([offline_rows + 19]))
    assert batch.dones.item() == 0.0  # the time limit is not a terminal state


def test_vectorized_environments(line_dataset):
    env = DummyVecEnv([LineEnv, LineEnv])
    model = IQL("MlpPolicy", env, offline_dataset=line_dataset, offline_steps=5, policy_kwargs=SMALL_NET, seed=0)
    model.learn(total_timesteps=10)
    assert model.replay_buffer.size() == 1000 + 5  # rows of 2 transitions: 500 offline, 5 online
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2, 1) and np.all(np.abs(actions) <= 2.0)


def test_vec_normalize_is_refused_wherever_it_would_meet_offline_data(line_dataset, tmp_path):
    """Offline updates see the data as stored, online ones normalized with statistics of the online steps alone."""

    def normalizing() -> VecNormalize:
        return VecNormalize(DummyVecEnv([LineEnv]))

    with pytest.raises(ValueError, match="VecNormalize is not supported with offline data"):
        IQL("MlpPolicy", normalizing(), offline_dataset=line_dataset)
    model = line_model(line_dataset, offline_steps=2)
    with pytest.raises(ValueError, match=r"not supported .* policy_kwargs=dict\(normalize_observations=True\)"):
        model.set_env(normalizing())
    assert not isinstance(model.env, VecNormalize)  # refused before anything changed
    model.learn_offline(2)
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model", env=normalizing())  # SB3's load sets the env without set_env
    with pytest.raises(ValueError, match="VecNormalize is not supported"):
        loaded.reload_offline_dataset()
    assert loaded.offline_dataset_size == model.offline_dataset_size  # as it was
    with pytest.raises(ValueError, match="VecNormalize is not supported"):  # fine-tuning a policy trained offline
        loaded.learn(10, reset_num_timesteps=False)
    online = IQL(
        "MlpPolicy", normalizing(), policy_kwargs=SMALL_NET, learning_starts=5, seed=0, reward_transform=lambda r: 10 * r + 1
    )
    online.learn(10)  # online alone, as SAC: normalized by the env's statistics
    # the stored rewards are the env's (SB3 stores VecNormalize's original ones), transformed as without VecNormalize
    stored = online.replay_buffer.sample(10, env=None)  # no normalization: the rows as stored
    np.testing.assert_allclose(
        stored.rewards[:, 0].cpu().numpy(), 10 * -np.abs(stored.next_observations[:, 0].cpu().numpy() - 0.5) + 1, atol=1e-5
    )
    with pytest.raises(ValueError, match="VecNormalize is not supported"):
        online.add_transitions(load_transitions([line_dataset]))
    assert online.offline_dataset_size == 0 and online.replay_buffer.size() == 10


def test_set_random_seed_reseeds_the_offline_batches_as_sb3_reseeds_its_buffers(line_dataset, tmp_path):
    def first_batch(model: IQL) -> th.Tensor:
        return model.replay_buffer.sample(64).observations

    reseeded, fresh = line_model(line_dataset, seed=0), line_model(line_dataset, seed=1)
    reseeded.set_random_seed(1)
    assert th.equal(first_batch(reseeded), first_batch(fresh))
    # seed=None: drawn from torch's global generator, so torch.manual_seed reproduces it (as np.random for SAC)
    batches = []
    for _ in range(2):
        th.manual_seed(5)
        batches.append(first_batch(line_model(line_dataset, seed=None)))
    assert th.equal(*batches) and not th.equal(batches[0], first_batch(fresh))
    # a loaded model keeps its saved stream (SB3 calls set_random_seed while setting it up)
    fresh.save(tmp_path / "fresh")
    loaded = IQL.load(tmp_path / "fresh", env=LineEnv())
    loaded.reload_offline_dataset()
    assert th.equal(first_batch(loaded), first_batch(fresh))


def test_a_save_that_fails_half_way_keeps_the_previous_file(line_dataset, tmp_path, monkeypatch):
    model = line_model(line_dataset)
    model.save(tmp_path / "iql")
    model.save_replay_buffer(tmp_path / "buffer")
    saved = {name: (tmp_path / name).read_bytes() for name in ("iql.zip", "buffer.pkl")}
    model.learn_offline(5)

    def write_half_then_fail(path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"half a file")
        raise OSError("disk full")

    # where SB3's save and save_replay_buffer look these writers up
    monkeypatch.setattr(stable_baselines3.common.base_class, "save_to_zip_file", write_half_then_fail)
    monkeypatch.setattr(stable_baselines3.common.off_policy_algorithm, "save_to_pkl", write_half_then_fail)
    for name, save in (("iql", model.save), ("buffer", model.save_replay_buffer)):
        with pytest.raises(OSError, match="disk full"):
            save(tmp_path / name)
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary file left behind
    IQL.load(tmp_path / "iql", env=LineEnv())  # still a whole model


def test_a_buffer_s_own_sampling_generator_is_saved_with_the_model(line_dataset, tmp_path):
    """A CUDA buffer draws from a generator of its own; here a CPU stand-in: its state goes with the model file."""
    model = line_model(line_dataset, offline_steps=20)
    model.replay_buffer.generator = th.Generator().manual_seed(123)  # not the model's sampling_generator
    model.learn_offline(10)
    model.save(tmp_path / "own")
    assert model.device_sampling_state is None  # only inside save
    model.learn_offline(10, reset_num_timesteps=False)
    resumed = IQL.load(tmp_path / "own", env=LineEnv())
    resumed.reload_offline_dataset()
    resumed.learn_offline(10, reset_num_timesteps=False)
    for (name, ours), theirs in zip(resumed.policy.state_dict().items(), model.policy.state_dict().values()):
        th.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    # a buffer loaded later goes on with the same stream
    stream = resumed.replay_buffer.generator
    resumed.save_replay_buffer(tmp_path / "buffer")
    resumed.load_replay_buffer(tmp_path / "buffer")
    assert resumed.replay_buffer.generator is stream


NEEDS_CUDA = pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "device, compile_update",
    [
        ("cpu", False),
        pytest.param("cuda", False, marks=NEEDS_CUDA),  # the buffer's own CUDA generator is saved with the model
        pytest.param("cuda", "cudagraph", marks=NEEDS_CUDA),  # ... and sampled inside the graph
    ],
)
def test_a_run_resumes_exactly_from_a_checkpoint_callback_file(line_dataset, tmp_path, device, compile_update):
    n_updates = 40
    kwargs = dict(offline_steps=n_updates, device=device, compile_update=compile_update)
    checkpoints = CheckpointCallback(save_freq=15, save_path=str(tmp_path), name_prefix="iql")
    line_model(line_dataset, **kwargs).learn_offline(n_updates, callback=checkpoints)
    uninterrupted = line_model(line_dataset, **kwargs).learn_offline(n_updates)

    # killed after the checkpoint at 30 updates: resume from its file alone
    resumed = IQL.load(tmp_path / "iql_30_steps.zip", env=LineEnv(), device=device)
    resumed.reload_offline_dataset()
    resumed.learn_offline(n_updates - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed._n_offline_updates == resumed.num_timesteps == n_updates
    atol = 0 if device == "cpu" else 1e-6  # cuBLAS may pick other kernels for a capture; other batches differ by far more
    for (name, ours), theirs in zip(resumed.policy.state_dict().items(), uninterrupted.policy.state_dict().values()):
        th.testing.assert_close(ours, theirs, rtol=0, atol=atol, msg=name)
    with pytest.raises(RuntimeError, match="not empty"):
        resumed.reload_offline_dataset()
