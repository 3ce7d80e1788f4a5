"""
Many seeds in one process (``sb3_iql/iql/multi_seed.py``): K learners trained together, one vmapped update per
step, reach the parameters, Adam states and counters of the same K models trained one by one with their own
``learn_offline`` (their own seeds, hence their own batches). As in ``tests/test_fast_path.py``, the long comparisons
run in float64, where a difference of math shows and rounding cannot: they must agree to 1e-10.
"""

import itertools
import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from test_fast_path import CUDA_TOLERANCE, stand_in_capture
from toy_data import LINE_ENV_ID, LineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

from sb3_iql import IQL
from sb3_iql.common.synthetic import SpacesEnv, box_env, synthetic_antmaze_transitions, synthetic_transitions
from sb3_iql.iql import fast_update, multi_seed
from sb3_iql.iql import iql as iql_module
from sb3_iql.iql.multi_seed import CapturedStep, StackedLearners, learn_offline_together, make_seeds

OBS_DIM, ACTION_DIM = 7, 3
N_TRANSITIONS = 2_000
N_UPDATES = 30
SEEDS = (0, 1, 2)
#: The actor's cosine learning rate moves a lot within the compared updates.
SMALL = dict(batch_size=32, expectile=0.9, beta=10.0, offline_steps=40)


@pytest.fixture(scope="module")
def data():
    return synthetic_transitions(OBS_DIM, ACTION_DIM, n_transitions=N_TRANSITIONS, seed=0)


@pytest.fixture
def line_dataset(minari_root: pathlib.Path):
    env = gym.make(LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=40)
    return write_dataset("test/line/mixed-v0", episodes, env=env, ref_min_score=-16.0, ref_max_score=-2.0)


def make_model(data, seed: int, env: gym.Env | None = None, dtype: th.dtype = th.float64, **kwargs) -> IQL:
    """A model on ``data``, its observation normalizer fitted on a slice of its own (so each learner has its own
    buffers), its networks and replay buffer storage in ``dtype``."""
    env = box_env(OBS_DIM, ACTION_DIM) if env is None else env
    policy_kwargs = {"net_arch": [32, 32], "normalize_observations": True, **kwargs.pop("policy_kwargs", {})}
    model = IQL("MlpPolicy", env, buffer_size=N_TRANSITIONS, policy_kwargs=policy_kwargs, seed=seed, **{**SMALL, **kwargs})
    model.replay_buffer.extend(
        data.observations, data.next_observations, data.actions, data.rewards, data.dones, data.timeouts
    )
    observations = data.observations
    part = {key: value[100 * seed :] for key, value in observations.items()} if isinstance(observations, dict) else None
    model.policy.observation_normalizer.fit(observations[100 * seed :] if part is None else part)
    model.policy.to(dtype)
    buffer = model.replay_buffer
    buffer._storage = buffer._storage.to(dtype)  # batches in dtype too
    buffer._make_views()
    return model


def max_difference(first: IQL, second: IQL) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first.policy.parameters(), second.policy.parameters()))


def optimizer_states_match(first: IQL, second: IQL, atol: float, rtol: float = 0.0) -> None:
    for name in ("value_net", "actor", "critic"):
        states = [getattr(model, name).optimizer.state_dict()["state"] for model in (first, second)]
        assert states[0].keys() == states[1].keys() and len(states[0]) > 0
        for key in states[0]:
            for field in ("exp_avg", "exp_avg_sq"):
                th.testing.assert_close(states[0][key][field], states[1][key][field], rtol=rtol, atol=atol)
            assert float(states[0][key]["step"]) == float(states[1][key]["step"])
            assert states[0][key]["step"].device == states[1][key]["step"].device


def counters(model: IQL) -> tuple[int, int, int, int]:
    """The update counters, ``num_timesteps`` and the offline steps in it (which ``learning_starts`` skips)."""
    return model._n_offline_updates, model._n_updates, model.num_timesteps, model._offline_timesteps


def test_together_equals_one_by_one_in_float64(data, float64):
    together = [make_model(data, seed) for seed in SEEDS]
    alone = [make_model(data, seed) for seed in SEEDS]
    learn_offline_together(together, N_UPDATES, log_interval=0)
    for model in alone:
        model.learn_offline(N_UPDATES, log_interval=0)
    assert together[0].actor.optimizer.param_groups[0]["lr"] < 0.5 * together[0].learning_rate  # the cosine ran
    for joint, single in zip(together, alone):
        assert max_difference(joint, single) < 1e-10
        optimizer_states_match(joint, single, atol=1e-10)
        assert counters(joint) == counters(single) == (N_UPDATES,) * 4
        assert th.equal(joint.replay_buffer.generator.get_state(), single.replay_buffer.generator.get_state())
    assert max_difference(together[0], together[1]) > 1e-3  # the learners are independent


@pytest.mark.slow
def test_compiled_together_equals_one_by_one_in_float64(data, float64):
    """Each learner with its own seed and expectile: the compiled functions take the hyperparameters as inputs."""
    together = [make_model(data, seed, expectile=expectile) for seed, expectile in zip(SEEDS, (0.7, 0.8, 0.9))]
    alone = [make_model(data, seed, expectile=expectile) for seed, expectile in zip(SEEDS, (0.7, 0.8, 0.9))]
    learn_offline_together(together, N_UPDATES, log_interval=0, compile_update=True)
    for joint, single in zip(together, alone):
        single.learn_offline(N_UPDATES, log_interval=0)
        assert max_difference(joint, single) < 1e-10
        optimizer_states_match(joint, single, atol=1e-10)
        assert th.equal(joint.replay_buffer.generator.get_state(), single.replay_buffer.generator.get_state())


def test_compilation_is_tried_from_auto_s_length_on_and_a_failure_warns_and_trains_eagerly(data, float64, monkeypatch):
    """``compile_update="auto"`` compiles calls of at least ``AUTO_COMPILE_UPDATES`` updates; where compilation fails
    the learners train with the eager update (after a warning), as ``True`` would not: it raises before any update."""
    tried, training = [], []

    def failing_compile(function, device, compile_mode="default"):
        tried.append(function.__name__)

        def compiled(*args):
            training.append(function.__self__.templates["actor"].training)  # compiled as trained (dropout on)
            raise RuntimeError("no C++ compiler")

        return compiled

    monkeypatch.setattr(multi_seed, "compile_gradients", failing_compile)
    together = [make_model(data, seed) for seed in SEEDS[:2]]
    learn_offline_together(together, 5, log_interval=0)  # below AUTO_COMPILE_UPDATES: not tried
    assert tried == []
    together[0].policy.set_training_mode(False)  # as after an evaluation
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        learn_offline_together(together, 5, log_interval=0, compile_update=True)
    assert counters(together[0]) == (5, 5, 5, 5) and training == [True]  # nothing trained
    with pytest.raises(ValueError, match="compile_update must be"):
        learn_offline_together(together, 5, log_interval=0, compile_update="fast")
    with pytest.raises(ValueError, match="cuda_graph=True needs models on a CUDA device"):
        learn_offline_together(together, 5, log_interval=0, compile_update="cudagraph")
    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", 5)
    together[1].compile_update = False
    with pytest.raises(ValueError, match="the models' compile_update differ"):
        learn_offline_together(together, 5, log_interval=0)
    together[0].compile_update = False
    learn_offline_together(together, 5, log_interval=0, reset_num_timesteps=False)  # the models' setting: not tried
    assert tried == ["_vmapped_value_grads", "_vmapped_policy_grads"]  # only compile_update=True's attempt
    assert counters(together[0]) == (10, 10, 10, 10)
    together[0].compile_update = together[1].compile_update = "auto"
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eager update"):
        learn_offline_together(together, N_UPDATES - 10, log_interval=0, reset_num_timesteps=False)
    assert tried == ["_vmapped_value_grads", "_vmapped_policy_grads"] * 2
    alone = [make_model(data, seed) for seed in SEEDS[:2]]
    for joint, single in zip(together, alone):
        single.learn_offline(N_UPDATES, log_interval=0)
        assert max_difference(joint, single) < 1e-10
        assert counters(joint) == counters(single)


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cuda_graph, compile_update", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("variants", [({}, {}), ({"expectile": 0.8}, {"beta": 3.0, "learning_rate": 1e-3, "tau": 0.01})])
def test_together_on_cuda_equals_one_by_one_in_float64(data, float64, cuda_graph, compile_update, variants):
    """On CUDA too, eager or captured in a CUDA graph (sampling included; its warm-up updates must leave no trace),
    the update eager or compiled; the learners with the same hyperparameters, or each with its own (lr and tau
    included)."""
    together = [make_model(data, seed, device="cuda", **variant) for seed, variant in zip(SEEDS[:2], variants)]
    alone = [make_model(data, seed, device="cuda", **variant) for seed, variant in zip(SEEDS[:2], variants)]
    learn_offline_together(together, N_UPDATES, log_interval=0, cuda_graph=cuda_graph, compile_update=compile_update)
    for joint, single in zip(together, alone):
        single.learn_offline(N_UPDATES, log_interval=0)
        assert th.equal(joint.replay_buffer.generator.get_state(), single.replay_buffer.generator.get_state())
        assert max_difference(joint, single) < CUDA_TOLERANCE
        # exp_avg_sq holds squared gradients (up to ~10 here): its last-bit differences are relative (H200: 4e-8)
        optimizer_states_match(joint, single, atol=CUDA_TOLERANCE, rtol=1e-6)


@pytest.mark.parametrize("learning_rates", [(2**-12, 2**-12), (2**-12, 2**-10)])
def test_learners_in_a_stand_in_graph_draw_the_batches_of_their_single_runs(data, float64, monkeypatch, learning_rates):
    """``cuda_graph=True`` captures every model's sampling with the batched update (``CapturedStep``). Here a
    stand-in for the capture replays the captured work eagerly: each learner must reach its single run's parameters
    in float64, its generator where the single run's ends (the capture itself: the CUDA tests). A graph reads its
    learning rates from float32 tensors: a constant lr that float32 holds exactly keeps the comparison exact. With
    a learning rate of its own each learner takes its own Adam step, in the graph too."""
    captures = []
    monkeypatch.setattr(fast_update, "capture_without_trace", stand_in_capture(captures, n_learners=2))
    exact = [dict(learning_rate=lr, actor_lr_schedule="constant") for lr in learning_rates]
    together = [make_model(data, seed, **kwargs) for seed, kwargs in zip(SEEDS[:2], exact)]
    alone = [make_model(data, seed, **kwargs) for seed, kwargs in zip(SEEDS[:2], exact)]
    learners = StackedLearners(together)
    captured = CapturedStep(learners)
    for _ in range(N_UPDATES):
        captured()
    learners.write_back()
    assert captures == [True]  # one graph, sampling included
    assert learners.lrs["actor"].dtype == th.float32  # what the CUDA fused Adam kernel reads a tensor lr as
    for joint, single in zip(together, alone):
        single.learn_offline(N_UPDATES, log_interval=0)
        assert max_difference(joint, single) < 1e-10
        assert th.equal(joint.replay_buffer.generator.get_state(), single.replay_buffer.generator.get_state())


def test_cuda_graph_needs_cuda(data):
    if th.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="needs models on a CUDA device"):
        learn_offline_together([make_model(data, seed, dtype=th.float32) for seed in SEEDS[:2]], 2, cuda_graph=True)


def test_ddpg_bc_learners_together_equal_one_by_one_in_float64(data, float64):
    together = [make_model(data, seed, policy_extraction="ddpg_bc", bc_weight=0.1) for seed in SEEDS[:2]]
    alone = [make_model(data, seed, policy_extraction="ddpg_bc", bc_weight=0.1) for seed in SEEDS[:2]]
    awr = make_model(data, SEEDS[0])
    learn_offline_together(together, 10, log_interval=0)
    for model in [*alone, awr]:
        model.learn_offline(10, log_interval=0)
    for joint, single in zip(together, alone):
        assert max_difference(joint, single) < 1e-10
        optimizer_states_match(joint, single, atol=1e-10)
    assert max_difference(together[0], awr) > 1e-6  # the same batches, the other policy extraction


@pytest.mark.parametrize(
    "extraction, sweep",
    [
        ("awr", [dict(expectile=0.7, beta=3.0), dict(expectile=0.9, gamma=0.9, max_weight=5.0), {}]),
        ("ddpg_awr", [dict(bc_weight=0.1), dict(bc_weight=1.0, beta=1.0)]),
        ("awr", [dict(learning_rate=1e-3), dict(learning_rate=3e-4, expectile=0.8), dict(actor_lr_schedule="constant")]),
        ("awr", [dict(tau=0.005), dict(tau=0.05, beta=3.0)]),
    ],
)
def test_learners_with_their_own_hyperparameters_equal_their_single_runs_in_float64(data, float64, extraction, sweep):
    """A sweep trained together: each learner runs the update with its own gamma, expectile, beta, max_weight and
    bc_weight (``update.NUMERIC_SETTINGS``), its own learning rates (one Adam call per learner) and its own tau, one
    seed for all (the same batches: only the hyperparameters differ)."""
    together, alone = ([make_model(data, 0, policy_extraction=extraction, **changes) for changes in sweep] for _ in "ab")
    learn_offline_together(together, 10, log_interval=0)
    for joint, single in zip(together, alone):
        single.learn_offline(10, log_interval=0)
        assert max_difference(joint, single) < 1e-10
        optimizer_states_match(joint, single, atol=1e-10)
    assert min(max_difference(a, b) for a, b in itertools.pairwise(together)) > 1e-6  # each its own math


def test_dict_observations_and_the_joint_order_in_float64(float64):
    space, data = synthetic_antmaze_transitions(N_TRANSITIONS, seed=0)
    env = SpacesEnv(space, spaces.Box(-1.0, 1.0, (data.actions.shape[1],), np.float32))
    together = [make_model(data, seed, env, update_order="joint") for seed in SEEDS[:2]]
    alone = [make_model(data, seed, env, update_order="joint") for seed in SEEDS[:2]]
    learn_offline_together(together, 10, log_interval=0)
    for joint, single in zip(together, alone):
        single.learn_offline(10, log_interval=0)
        assert max_difference(joint, single) < 1e-10
        optimizer_states_match(joint, single, atol=1e-10)


def test_the_comparison_detects_other_batches_and_other_math(data, float64):
    together = [make_model(data, seed) for seed in SEEDS[:2]]
    learn_offline_together(together, N_UPDATES, log_interval=0)
    seed_1 = make_model(data, 1)
    seed_1.learn_offline(N_UPDATES, log_interval=0)
    assert max_difference(together[0], seed_1) > 1e-6  # another seed's run
    other_beta = make_model(data, 0, beta=10.1)
    other_beta.learn_offline(N_UPDATES, log_interval=0)
    assert max_difference(together[0], other_beta) > 1e-6  # the same batches, other math


def test_dropout_learners_draw_their_own_masks(data):
    twins = [make_model(data, 0, dtype=th.float32, dropout=0.1) for _ in range(2)]  # same weights, same batches
    learn_offline_together(twins, 5, log_interval=0)
    actors, critics = ([dict(getattr(twin, name).named_parameters()) for twin in twins] for name in ("actor", "critic"))
    assert max((actors[0][key] - actors[1][key]).abs().max().item() for key in actors[0]) > 1e-6  # other masks
    assert all(th.equal(critics[0][key], critics[1][key]) for key in critics[0])  # the critics never see the actor


def test_incompatible_models_are_refused(data):
    models = [make_model(data, seed, dtype=th.float32) for seed in SEEDS[:2]]
    with pytest.raises(ValueError, match="batch_size differs"):
        learn_offline_together([*models, make_model(data, 2, dtype=th.float32, batch_size=16)], 1)
    with pytest.raises(ValueError, match="same model is given twice"):
        learn_offline_together([models[0], models[0]], 1)
    with pytest.raises(
        ValueError, match=r"differ in a tensor's shape or dtype: \(.*torch.float32\) against \(.*torch.float64\)"
    ):
        learn_offline_together([models[0], make_model(data, 2, dtype=th.float64)], 1)
    models[1].learn_offline(1, log_interval=0)
    with pytest.raises(ValueError, match=r"_n_offline_updates \(offline updates run so far\) differs"):
        learn_offline_together(models, 1)
    assert counters(models[0]) == (0, 0, 0, 0)


def test_policies_are_compared_by_their_settings_not_by_how_they_were_written(data):
    written_out = {"n_critics": 2, "activation_fn": th.nn.ReLU, "actor_dropout": None}  # the defaults, spelled out
    models = [make_model(data, 0, dtype=th.float32), make_model(data, 1, dtype=th.float32, policy_kwargs=written_out)]
    learn_offline_together(models, 1, log_interval=0)
    assert counters(models[1])[0] == 1
    wider = make_model(data, 2, dtype=th.float32, policy_kwargs={"n_critics": 3})
    with pytest.raises(ValueError, match=r"The policies differ in n_critics: models\[0\] has 2, models\[1\] 3"):
        learn_offline_together([make_model(data, 0, dtype=th.float32), wider], 1)


def test_make_seeds_models_save_load_and_continue_like_single_runs(line_dataset, tmp_path):
    kwargs = dict(policy_kwargs={"net_arch": [32, 32]}, **SMALL)
    models = make_seeds([0, 1], "MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, **kwargs)
    alone = IQL("MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, seed=1, **kwargs)
    assert [model.replay_buffer.size() for model in models] == [alone.replay_buffer.size()] * 2
    learn_offline_together(models, 20, log_interval=10)
    alone.learn_offline(20, log_interval=10)
    assert max_difference(models[1], alone) < 1e-5  # float32: rounding only
    assert counters(models[1]) == counters(alone)

    models[1].save(tmp_path / "seed1")
    models[1].save_replay_buffer(tmp_path / "buffer")
    loaded = IQL.load(tmp_path / "seed1", env=LineEnv())
    with pytest.raises(ValueError, match=r"models\[0\]: .*reload_offline_dataset\(\)"):  # SB3 saves no buffer
        learn_offline_together([loaded, models[0]], 1)
    obs = np.random.default_rng(0).uniform(-1, 1, (16, 2)).astype(np.float32)
    np.testing.assert_array_equal(models[1].predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    optimizer_states_match(models[1], loaded, atol=0)
    loaded.load_replay_buffer(tmp_path / "buffer")
    for model in (loaded, models[1], alone):
        model.learn_offline(10, reset_num_timesteps=False, log_interval=0)
    assert max_difference(loaded, alone) < 1e-5
    assert max_difference(models[1], loaded) == 0.0
    assert counters(loaded) == counters(alone) == (30,) * 4


def test_each_model_continues_its_own_tensorboard_run(line_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    models = make_seeds(
        [0, 1, 2], "MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, tensorboard_log=str(tmp_path / "tb"), **SMALL
    )
    learn_offline_together(models, 10, log_interval=5)  # runs IQL_1, IQL_2, IQL_3: one per model
    learn_offline_together(models, 10, log_interval=5, reset_num_timesteps=False)
    models[0].learn_offline(5, reset_num_timesteps=False)  # SB3 would open the newest run, IQL_3
    for model in models:
        model.logger.close()
        model.save(tmp_path / "model")  # a loaded model goes on in its run too
        loaded = IQL.load(tmp_path / "model", env=LineEnv())
        loaded.reload_offline_dataset()
        loaded.learn_offline(5, reset_num_timesteps=False)
        loaded.logger.close()
    steps = {}
    for run in sorted((tmp_path / "tb").iterdir()):
        events = EventAccumulator(str(run))
        events.Reload()
        steps[run.name] = [event.step for event in events.Scalars("train/value_loss")]
    assert steps == {"IQL_1": [5, 10, 15, 20, 25, 30], "IQL_2": [5, 10, 15, 20, 25], "IQL_3": [5, 10, 15, 20, 25]}
    # another tensorboard_log (given to load, or set on the model): a run there, as SB3 opens one
    moved = IQL.load(tmp_path / "model", env=LineEnv(), tensorboard_log=str(tmp_path / "elsewhere"))
    moved.reload_offline_dataset()
    moved.learn_offline(5, reset_num_timesteps=False)
    moved.logger.close()
    assert [run.name for run in (tmp_path / "elsewhere").iterdir()] == ["IQL_0"]


def test_a_short_call_with_the_default_budget_is_warned_about_its_undecayed_actor_lr(line_dataset):
    models = make_seeds([0, 1], "MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, policy_kwargs={"net_arch": [8]})
    with pytest.warns(UserWarning, match=r"offline_steps=1,000,000 .* these 2 it will still be 1.000") as caught:
        learn_offline_together(models, 2, log_interval=0)
    undecayed = [warning for warning in caught if "still be" in str(warning.message)]
    assert len(undecayed) == 1 and undecayed[0].filename == __file__  # once for all, where the user called it


def test_make_models_builds_a_sweep_that_trains_together_like_its_single_runs(line_dataset, monkeypatch):
    resolved = []
    monkeypatch.setattr(multi_seed, "resolve_datasets", lambda *args, **kwargs: resolved.append(args) or args[0])
    kwargs = dict(policy_kwargs={"net_arch": [32, 32]}, **SMALL)
    variants = [{"seed": 0, "expectile": 0.7}, {"seed": 1, "beta": 1.0}]
    models = multi_seed.make_models(variants, "MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, **kwargs)
    assert len(resolved) == 1  # the dataset is resolved once
    assert [(m.seed, m.expectile, m.beta) for m in models] == [(0, 0.7, SMALL["beta"]), (1, SMALL["expectile"], 1.0)]
    alone = IQL("MlpPolicy", LINE_ENV_ID, offline_dataset=line_dataset, **{**kwargs, **variants[1]})
    learn_offline_together(models, 20, log_interval=0)
    alone.learn_offline(20, log_interval=0)
    assert max_difference(models[1], alone) < 1e-5  # float32: rounding only


def test_discrete_actions_together_equal_one_by_one_in_float64(data, float64):
    discrete = data.__class__(**{**data.__dict__, "actions": (data.actions[:, :1] > 0).astype(np.float32) * 2})
    env = SpacesEnv(spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), spaces.Discrete(3))
    together = [make_model(discrete, seed, env) for seed in SEEDS[:2]]
    alone = [make_model(discrete, seed, env) for seed in SEEDS[:2]]
    learn_offline_together(together, 10, log_interval=0)
    for joint, single in zip(together, alone):
        single.learn_offline(10, log_interval=0)
        assert max_difference(joint, single) < 1e-10


def test_each_learner_s_stdout_table_names_it(data, capsys):
    together = [make_model(data, seed, dtype=th.float32, verbose=1) for seed in (5, 7)]
    learn_offline_together(together, 4, log_interval=2)
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    values = {name: [int(value) for key, value in rows if key.strip() == name] for name in ("learner", "seed")}
    assert sum(key.strip() == "value_loss" for key, _ in rows) == 4  # two dumps of two learners
    assert values == {"learner": [0, 1, 0, 1], "seed": [5, 7, 5, 7]}


def test_frozen_parameters_are_refused(data):
    together = [make_model(data, seed, dtype=th.float32) for seed in (0, 1)]
    together[1].value_net.parameters().__next__().requires_grad_(False)  # the vmapped update would train it
    with pytest.raises(ValueError, match=r"models\[1\].*frozen ones"):
        learn_offline_together(together, 2, log_interval=0)


def test_a_dropout_changed_on_one_learner_since_it_was_built_is_refused(data):
    together = [make_model(data, seed, dtype=th.float32, dropout=0.1) for seed in (0, 1)]
    together[1].dropout = 0.5  # the vmapped update would run models[0]'s rate for both
    with pytest.raises(ValueError, match=r"The actor networks of models\[0\] and models\[1\] differ"):
        learn_offline_together(together, 2, log_interval=0)
    together[1].dropout = 0.1
    together[1].actor.log_std_bounds = (-0.5, -0.2)  # set after building: models[0]'s modules run every learner
    with pytest.raises(ValueError, match=r"The actor networks of models\[0\] and models\[1\] differ in actor.log_std_bounds"):
        learn_offline_together(together, 2, log_interval=0)
