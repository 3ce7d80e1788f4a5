"""
Same math proven: the fast training paths reach the same parameters as the plain one on the same batches.

The plain path is ``IQL._update`` with SB3's NumPy buffer (``OfflineReplayBuffer``) and the default Adam. The fast
paths are the device buffer with fused or foreach Adam, and ``FunctionalUpdate`` (``torch.func`` gradients and
direct fused Adam steps; ``sb3_iql/iql/fast_update.py``), eager or compiled. Each path gets the very same batches.

Training amplifies rounding differences (two float32 runs whose first steps differ by 1e-8 are 1e-3 apart after
300 updates, even between torch's own default and fused Adam), so the long comparisons run in float64, where
any difference of math would show and rounding cannot: they must agree to 1e-10. A float32 check covers the
first updates with the standard settings.
"""

import dataclasses
import gc
import weakref
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from sb3_iql import IQL
from sb3_iql.common.synthetic import SpacesEnv, synthetic_transitions
from sb3_iql.data import OfflineReplayBuffer
from sb3_iql.data.device_buffers import DeviceReplayBuffer
from sb3_iql.iql import fast_update
from sb3_iql.iql import iql as iql_module
from sb3_iql.iql.fast_update import CudaGraphUpdate, FunctionalUpdate, GuardSkipping
from sb3_iql.iql.update import Batch

OBS_DIM, ACTION_DIM = 29, 8
N_TRANSITIONS = 5_000
N_UPDATES = 300
#: offline_steps of the models: the actor's cosine learning rate moves a lot within the compared updates
OFFLINE_STEPS = 400


@pytest.fixture(scope="module")
def data():
    return synthetic_transitions(OBS_DIM, ACTION_DIM, n_transitions=N_TRANSITIONS, seed=0)


def make_model(data, buffer_class, optimizer_kwargs=None, dtype=th.float32, net_arch=(64, 64), device="cpu", seed=0, **kwargs):
    env = SpacesEnv(spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32))
    model = IQL(
        "MlpPolicy",
        env,
        replay_buffer_class=buffer_class,
        buffer_size=N_TRANSITIONS,
        expectile=0.9,
        beta=10.0,
        offline_steps=OFFLINE_STEPS,
        policy_kwargs={"net_arch": list(net_arch), "optimizer_kwargs": optimizer_kwargs or {}},
        seed=seed,
        device=device,
        **kwargs,
    )
    model.replay_buffer.extend(
        data.observations, data.next_observations, data.actions, data.rewards, data.dones, data.timeouts
    )
    model.policy.to(dtype)
    return model


def train_side_by_side(reference: IQL, others: list, n_updates: int, dtype=th.float32, device="cpu") -> list:
    """``n_updates`` updates of every model on the same batches (sampled from the reference's buffer).

    :param others: (model, update function) pairs
    :return: the metrics of the last update, reference first
    """
    for _ in range(n_updates):
        batch = reference.replay_buffer.sample(reference.batch_size)
        batch = batch._replace(**{k: v.to(device, dtype) for k, v in batch._asdict().items() if v is not None})
        metrics = []
        for model, update in [(reference, reference._update), *others]:
            model._set_learning_rates(offline=True)
            metrics.append(update(batch))
            model._n_offline_updates += 1
    return metrics


def max_difference(first: IQL, second: IQL) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first.policy.parameters(), second.policy.parameters()))


def optimizer_states_match(first: IQL, second: IQL, atol: float) -> None:
    for name in ("value_net", "actor", "critic"):
        states = [getattr(model, name).optimizer.state_dict()["state"] for model in (first, second)]
        assert states[0].keys() == states[1].keys()
        for key in states[0]:
            for field in ("exp_avg", "exp_avg_sq"):
                th.testing.assert_close(states[0][key][field], states[1][key][field], rtol=0, atol=atol)
            assert float(states[0][key]["step"]) == float(states[1][key]["step"])


@pytest.mark.parametrize("fast", ["fused", "foreach", "functional"])
def test_fast_paths_reach_the_plain_parameters_in_float64(data, float64, fast):
    reference = make_model(data, OfflineReplayBuffer, dtype=float64)
    optimizer_kwargs = {"foreach": True} if fast == "foreach" else {"fused": True}
    model = make_model(data, DeviceReplayBuffer, optimizer_kwargs, dtype=float64)
    update = model._functional_update(compile_mode=None) if fast == "functional" else model._update
    metrics = train_side_by_side(reference, [(model, update)], N_UPDATES, dtype=float64)
    assert reference.actor.optimizer.param_groups[0]["lr"] < 0.2 * reference.learning_rate  # the cosine ran
    assert max_difference(reference, model) < 1e-10
    th.testing.assert_close(metrics[0], metrics[1], rtol=1e-10, atol=1e-10)
    optimizer_states_match(reference, model, atol=1e-10)
    # Loading optimizer states (as IQL.load does) replaces their tensors: the update follows.
    for network in (model.value_net, model.actor, model.critic):
        network.optimizer.load_state_dict(network.optimizer.state_dict())
    train_side_by_side(reference, [(model, update)], 5, dtype=float64)
    # After the functional updates, the model's own optimizers carry on from the same state.
    train_side_by_side(reference, [(model, model._update)], 5, dtype=float64)
    assert max_difference(reference, model) < 1e-10


def test_functional_update_follows_the_joint_update_order_in_float64(data, float64):
    reference = make_model(data, OfflineReplayBuffer, dtype=float64, update_order="joint")
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64, update_order="joint")
    sequential = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64)
    others = [(model, model._functional_update(compile_mode=None))]
    others.append((sequential, sequential._functional_update(compile_mode=None)))
    train_side_by_side(reference, others, 50, dtype=float64)
    assert max_difference(reference, model) < 1e-10
    assert max_difference(reference, sequential) > 1e-6


@pytest.mark.parametrize(
    "policy_extraction, compile_mode",
    [("ddpg_bc", None), ("ddpg_awr", None), pytest.param("ddpg_bc", "default", marks=pytest.mark.slow)],
)
def test_functional_update_runs_the_ddpg_policy_extractions_in_float64(data, float64, policy_extraction, compile_mode):
    ddpg_bc = dict(policy_extraction=policy_extraction, bc_weight=0.1)
    reference = make_model(data, OfflineReplayBuffer, dtype=float64, **ddpg_bc)
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64, **ddpg_bc)
    awr = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64)
    others = [(model, model._functional_update(compile_mode=compile_mode)), (awr, awr._functional_update(compile_mode=None))]
    metrics = train_side_by_side(reference, others, 20, dtype=float64)
    assert max_difference(reference, model) < 1e-10
    th.testing.assert_close(metrics[0], metrics[1], rtol=1e-10, atol=1e-10)
    assert max_difference(reference, awr) > 1e-6


def test_the_float64_comparison_detects_a_change_of_math(data, float64):
    reference = make_model(data, OfflineReplayBuffer, dtype=float64)
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64, tau=0.0051)
    train_side_by_side(reference, [(model, model._functional_update(compile_mode=None))], 50, dtype=float64)
    assert max_difference(reference, model) > 1e-6


def test_fast_paths_match_in_float32_with_the_standard_networks(data):
    reference = make_model(data, OfflineReplayBuffer, net_arch=(256, 256))
    fused = make_model(data, DeviceReplayBuffer, {"fused": True}, net_arch=(256, 256))
    functional = make_model(data, DeviceReplayBuffer, {"fused": True}, net_arch=(256, 256))
    others = [(fused, fused._update), (functional, functional._functional_update(compile_mode=None))]
    train_side_by_side(reference, others, 20)
    assert max_difference(reference, fused) < 1e-5
    assert max_difference(reference, functional) < 1e-5


@pytest.mark.slow
def test_compiled_update_reaches_the_plain_parameters_in_float64(data, float64):
    reference = make_model(data, OfflineReplayBuffer, dtype=float64)
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64)
    metrics = train_side_by_side(reference, [(model, model._functional_update(compile_mode="default"))], N_UPDATES, float64)
    assert max_difference(reference, model) < 1e-10
    th.testing.assert_close(metrics[0], metrics[1], rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_compiled_update_skips_its_guards_only_for_inputs_like_those_that_passed_them(data, float64):
    """After a call passed Dynamo's guards the next ones with the same input signature skip them
    (``GuardSkipping``); a batch of another size is checked again (a recompilation) and the
    update stays the eager one's."""
    reference = make_model(data, OfflineReplayBuffer, dtype=float64)
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64)
    update = model._functional_update(compile_mode="default")
    for batch_size in (32, 32, 16, 16, 32, 16):
        reference.batch_size = batch_size
        train_side_by_side(reference, [(model, update)], 3, dtype=float64)
    assert update.guards.signature is not None
    assert max_difference(reference, model) < 1e-10
    # Step counters: one tensor per network, its elements the optimizer's own step tensors.
    for name in ("value", "actor", "critic"):
        optimizer = update.networks[name].optimizer
        steps = [optimizer.state[param]["step"] for param in update.params[name].values()]
        assert all(step.data_ptr() == update.step_counters[name][i].data_ptr() for i, step in enumerate(steps))
        assert update.step_counters[name].tolist() == [18.0] * len(steps)


@pytest.mark.slow
def test_a_new_model_reuses_the_compiled_update_of_one_like_it_whatever_its_numeric_hyperparameters(data, monkeypatch):
    """In float32, where the networks read their observation space: a compiled graph that held on to the first
    model's space would be compiled again for every new model, and fail from the ninth on (Dynamo's recompile limit).
    The numeric hyperparameters are the update's inputs, not constants: a sweep over them compiles nothing again.
    Another update order is another computation: a compilation of each step, which Dynamo's default limit would
    refuse from the ninth on: here from the second, a limit the update raises where it may compile."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(th._dynamo.config, "recompile_limit", 1)
    first = make_model(data, DeviceReplayBuffer, {"fused": True})
    train_side_by_side(first, [(first, first._functional_update(compile_mode="default"))], 2)
    sweep = [{}, {}, {"expectile": 0.7}, {"beta": 3.0, "gamma": 0.9, "max_weight": 5.0}, {"update_order": "joint"}]
    for changes, new_graphs in zip(sweep, (0, 0, 0, 0, 2)):
        compiled_before = counters["stats"]["unique_graphs"]
        reference = make_model(data, DeviceReplayBuffer, {"fused": True}, seed=1)
        model = make_model(data, DeviceReplayBuffer, {"fused": True}, seed=1)
        for name, value in changes.items():
            setattr(reference, name, value)
            setattr(model, name, value)
        train_side_by_side(reference, [(model, model._functional_update(compile_mode="default"))], 5)
        assert counters["stats"]["unique_graphs"] - compiled_before == new_graphs, changes
        assert max_difference(reference, model) < 1e-5


@pytest.mark.slow
def test_hyperparameters_changed_between_calls_reach_the_compiled_update(data, float64):
    """A numeric hyperparameter changed between two calls is copied into the compiled update (not compiled again)."""
    eager = make_model(data, DeviceReplayBuffer, dtype=float64, compile_update=False)
    compiled = make_model(data, DeviceReplayBuffer, dtype=float64, compile_update=True)
    from torch._dynamo.utils import counters

    for model in (eager, compiled):
        model.replay_buffer._storage = model.replay_buffer._storage.to(float64)
        model.replay_buffer._make_views()
        model.learn_offline(20, log_interval=0)
        fast, graphs = model._fast_update, counters["stats"]["unique_graphs"]
        model.expectile, model.beta, model.gamma, model.max_weight = 0.6, 2.0, 0.95, 7.0
        model.learn_offline(20, log_interval=0)
    assert compiled._fast_update is fast and counters["stats"]["unique_graphs"] == graphs  # nothing built again
    assert compiled._fast_update.numbers["expectile"].item() == 0.6
    assert max_difference(eager, compiled) < 1e-10


class _ChangesHyperparameters(BaseCallback):
    """Sets attributes of the model (beta, tau...), or of its ``part`` (``"actor"``), at the given update of a call, as
    a user's schedule would from a callback."""

    def __init__(self, at: int, part: str | None = None, **values: Any):
        super().__init__()
        self.at, self.part, self.values = at, part, values

    def _on_step(self) -> bool:
        if self.n_calls == self.at:
            target = self.model if self.part is None else getattr(self.model, self.part)
            for name, value in self.values.items():
                setattr(target, name, value)
        return True


def test_hyperparameters_changed_by_a_callback_reach_the_next_update_on_every_path(data, float64):
    eager = make_model(data, DeviceReplayBuffer, dtype=float64, compile_update=False)
    functional = make_model(data, DeviceReplayBuffer, dtype=float64, compile_update=True)
    # the functional update uncompiled (the compiled one is the same math: the slow tests), to keep this test quick
    functional._functional_update = lambda compile_mode=None, tensor_lr=False: IQL._functional_update(
        functional, None, tensor_lr
    )
    for model in (eager, functional):
        model.replay_buffer._storage = model.replay_buffer._storage.to(float64)
        model.replay_buffer._make_views()
        model.learn_offline(10, callback=_ChangesHyperparameters(4, beta=30.0, tau=0.05), log_interval=0)
    assert isinstance(functional._fast_update, FunctionalUpdate) and functional._fast_update.numbers["beta"].item() == 30.0
    assert max_difference(eager, functional) < 1e-10
    with pytest.raises(ValueError, match="expectile must be"):  # refused as in the constructor
        eager.learn_offline(5, callback=_ChangesHyperparameters(2, expectile=1.5), log_interval=0)
    eager.expectile = 0.9
    with pytest.raises(ValueError, match="actor_lr_schedule must be"):  # a typo outside the update's settings too
        eager.learn_offline(5, callback=_ChangesHyperparameters(2, actor_lr_schedule="cosin"), log_interval=0)
    eager.actor_lr_schedule = "cosine"
    eager.beta = -1.0
    with pytest.raises(ValueError, match="beta must be"):  # set between calls: refused before training or saving
        eager.learn_offline(1)
    with pytest.raises(ValueError, match="beta must be"):
        eager.save("never-written")


def test_an_optimizer_changed_into_one_the_fused_step_cannot_run_is_refused(data):
    model = make_model(data, DeviceReplayBuffer, compile_update=True)
    model._functional_update = lambda compile_mode=None, tensor_lr=False: IQL._functional_update(model, None, tensor_lr)
    model.learn_offline(2, log_interval=0)
    model.actor.optimizer.param_groups[0]["weight_decay"] = 0.1  # the fused step would skip it
    with pytest.raises(ValueError, match=r"without weight_decay.*use compile_update=False"):
        model.learn_offline(1, log_interval=0)


def freeze_first_layer(model: IQL) -> None:
    model.actor.latent_pi[0].weight.requires_grad_(False)


def train_only_the_head(model: IQL) -> None:
    model.actor.optimizer = th.optim.Adam(model.actor.mu.parameters(), lr=3e-4)


def clip_gradients_by_hook(model: IQL) -> None:
    for param in model.value_net.parameters():
        param.register_hook(lambda grad: grad.clamp(-1e-3, 1e-3))


class ClippingAdam(th.optim.Adam):
    """Adam with its gradients clipped in its own step, as users subclass it."""

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        th.nn.utils.clip_grad_norm_(self.param_groups[0]["params"], 1e-3)
        return super().step(closure)


def test_an_adam_subclass_that_keeps_adam_s_step_runs_on_the_fused_path():
    """torch wraps a class's step when the class is first instantiated: the check compared the wrapper."""
    from sb3_iql.iql.fast_update import unsupported_optimizer

    class TaggedAdam(th.optim.Adam):  # a new class: its first instance is this one
        pass

    assert unsupported_optimizer(TaggedAdam([th.zeros(2, requires_grad=True)])) is None
    assert "overrides it" in unsupported_optimizer(ClippingAdam([th.zeros(2, requires_grad=True)]))


def clip_in_the_optimizer_s_step(model: IQL) -> None:
    model.actor.optimizer = ClippingAdam(model.actor.parameters(), lr=3e-4)


def hook_the_optimizer_s_step(model: IQL) -> None:
    model.critic.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: optimizer.zero_grad())


def normalize_value_batches(model: IQL) -> None:
    extractor = model.value_net.features_extractor
    extractor.add_module("batch_norm", th.nn.BatchNorm1d(OBS_DIM, affine=False))  # no parameter for the optimizer
    extractor.forward = lambda observations: extractor.batch_norm(observations)


@pytest.mark.parametrize(
    "change, reason",
    [
        (freeze_first_layer, "frozen ones"),
        (train_only_the_head, "holds other ones"),
        (clip_gradients_by_hook, "gradient hooks"),
        (normalize_value_batches, "statistics of the BatchNorm layers"),
        (clip_in_the_optimizer_s_step, "ClippingAdam overrides it"),  # its step was skipped
        (hook_the_optimizer_s_step, "does not call optimizer step hooks"),
    ],
)
def test_what_the_functional_update_would_train_otherwise_than_autograd_is_refused_and_auto_stays_eager(
    data, change, reason, monkeypatch
):
    """Frozen parameters, an optimizer over some of a network's parameters, gradient hooks: torch.func would
    differentiate and step every parameter, hooks unrun. Refused before any compilation; "auto" then trains eagerly."""
    model = make_model(data, DeviceReplayBuffer, compile_update=True)
    change(model)
    with pytest.raises(ValueError, match=rf"{reason}.*use compile_update=False"):
        model.learn_offline(1, log_interval=0)
    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", 3)  # "auto" would compile this call
    auto, eager, initial = (make_model(data, DeviceReplayBuffer, compile_update=mode) for mode in ("auto", False, False))
    for trained in (auto, eager, initial):
        change(trained)
    for trained in (auto, eager):
        trained.learn_offline(3, log_interval=0)
    assert auto._fast_update is None and max_difference(auto, eager) == 0.0 and max_difference(auto, initial) > 0
    if change is freeze_first_layer:
        assert th.equal(auto.actor.latent_pi[0].weight, initial.actor.latent_pi[0].weight)


@pytest.mark.parametrize(
    "change",
    [
        lambda model: (setattr(model, "dropout", 0.3), model._check_settings()),  # as training does after a callback
        lambda model: setattr(model.actor, "log_std_bounds", (-0.5, -0.2)),
        lambda model: setattr(model.actor, "log_std_parametrization", "sigmoid"),
    ],
)
def test_a_constant_of_the_networks_changed_by_a_callback_is_an_input_of_the_compiled_update(data, change):
    """Compiled code reads a dropout rate or the actor's log-std bounds as a constant, a CUDA graph froze it: a
    change enters the guard-skipping signature (checked again: compiled anew) and the settings a training loop
    compares after each callback (a CUDA graph captured anew)."""
    model = make_model(data, DeviceReplayBuffer, dropout=0.1)
    guards = GuardSkipping([model.actor, model.critic, model.critic_target, model.value_net])
    batch = Batch.from_replay_data(model.replay_buffer.sample(8))
    signature, settings = fast_update._input_signature(batch, guards.modules, guards.constants), model._settings_snapshot()
    change(model)
    assert fast_update._input_signature(batch, guards.modules, guards.constants) != signature
    assert model._settings_snapshot() != settings


@pytest.mark.slow
def test_an_actor_setting_changed_by_a_callback_reaches_the_next_compiled_update(data, float64):
    """The compiled update skipped its guards from the second update of a call: it ran the old bounds to the end."""
    eager, compiled = (make_model(data, DeviceReplayBuffer, dtype=float64, compile_update=mode) for mode in (False, True))
    for model in (eager, compiled):
        model.replay_buffer._storage = model.replay_buffer._storage.to(float64)
        model.replay_buffer._make_views()
        model.learn_offline(8, callback=_ChangesHyperparameters(3, "actor", log_std_bounds=(-0.5, -0.2)), log_interval=0)
    assert isinstance(compiled._fast_update, FunctionalUpdate)
    assert max_difference(eager, compiled) < 1e-10


def test_dropout_set_on_the_model_reaches_the_actor_and_its_saved_arguments(data, tmp_path):
    model = make_model(data, DeviceReplayBuffer, dropout=0.1)
    model.dropout = 0.3
    model.learn_offline(1, log_interval=0)
    assert {module.p for module in model.actor.modules() if isinstance(module, th.nn.Dropout)} == {0.3}
    model.save(tmp_path / "model")
    loaded = IQL.load(tmp_path / "model")
    assert loaded.dropout == 0.3
    assert {module.p for module in loaded.actor.modules() if isinstance(module, th.nn.Dropout)} == {0.3}
    loaded.dropout = None  # off: the layers stay, at 0 (saved so; None would take the built 0.1 back at loading)
    loaded.save(tmp_path / "off")
    off = IQL.load(tmp_path / "off")
    assert off.dropout == 0.0 and {module.p for module in off.actor.modules() if isinstance(module, th.nn.Dropout)} == {0.0}
    without = make_model(data, DeviceReplayBuffer)
    without.dropout = 0.2
    with pytest.raises(ValueError, match="built without dropout layers"):
        without.learn_offline(1, log_interval=0)
    without.dropout = None
    without.save(tmp_path / "without")
    with pytest.warns(UserWarning, match=r"dropout=0.2 was never applied \(its actor has no dropout layers\)"):
        older = IQL.load(tmp_path / "without", custom_objects={"dropout": 0.2})  # as files of versions that ignored it
    assert older.dropout is None
    older.save(tmp_path / "older")


def test_a_deleted_model_s_networks_are_not_kept_by_the_guard_skipping_of_its_last_call(data):
    """The class-wide last caller held every module of its model: a deleted compiled model's networks and Adam
    state stayed in memory until another model's call."""
    model = make_model(data, DeviceReplayBuffer)
    guards = GuardSkipping([model.actor, model.critic, model.critic_target, model.value_net])
    with guards.stance(Batch.from_replay_data(model.replay_buffer.sample(8))):
        pass
    actor = weakref.ref(model.actor)
    del model, guards
    gc.collect()
    assert actor() is None


def test_online_training_checks_the_guards_once_per_learn_call(data, monkeypatch):
    """Every online train() (each environment step at train_freq=1) checked Dynamo's guards in full: +23% per update."""
    model = make_model(data, DeviceReplayBuffer, compile_update=True, learning_starts=0)
    model._functional_update = lambda compile_mode=None, tensor_lr=False: IQL._functional_update(model, None, tensor_lr)
    checks = []
    monkeypatch.setattr(FunctionalUpdate, "check_guards_again", lambda self: checks.append(1))
    model.learn(10)
    model.learn(10, reset_num_timesteps=False)
    assert model._n_updates == 20 and len(checks) == 2


def test_device_scalars_fill_only_what_changed():
    """An in-place fill per changed value (per changed element for K learners): no copy from host memory, which
    would synchronise a CUDA stream; NumPy and 0-d tensor values are numbers too."""
    one = fast_update.DeviceScalars(["expectile", "beta"], th.device("cpu"), th.float64)
    one.fill({"expectile": np.float32(0.5), "beta": th.tensor(3.0)})
    assert one["expectile"].item() == 0.5 and one["beta"].item() == 3.0
    one["beta"].fill_(-1.0)  # a fill of the same value writes nothing
    one.fill({"expectile": 0.5, "beta": 3.0})
    assert one["beta"].item() == -1.0
    many = fast_update.DeviceScalars(["lr"], th.device("cpu"), n_learners=3)
    many.fill({"lr": [1.0, 2.0, 3.0]})
    many["lr"][0] = -1.0
    many.fill({"lr": np.array([1.0, 2.0, 4.0])})  # only the third changed
    assert many["lr"].tolist() == [-1.0, 2.0, 4.0] and many["lr"].dtype == th.float32


def test_set_settings_takes_other_numbers_in_place_and_refuses_another_structure(data):
    model = make_model(data, DeviceReplayBuffer, {"fused": True})
    fast = model._functional_update(compile_mode=None)
    expectile = fast.tensor_settings.expectile
    fast.set_settings(dataclasses.replace(model._update_settings(), expectile=0.6, beta=2.0))
    assert fast.tensor_settings.expectile is expectile and expectile.item() == pytest.approx(0.6)
    assert fast.numbers["beta"].item() == 2.0
    with pytest.raises(ValueError, match="need another update"):
        fast.set_settings(dataclasses.replace(model._update_settings(), joint_order=True))


def test_guards_are_skipped_only_after_a_checked_call_of_the_same_caller_on_like_inputs(data):
    """Models of the same shapes share compiled functions; a skip-mode call looks first at the version the last
    caller used, so a caller skips only where it ran the last guard-checked call itself."""
    model, other = make_model(data, DeviceReplayBuffer), make_model(data, DeviceReplayBuffer, seed=1)
    for trained in (model, other):
        trained.policy.set_training_mode(True)  # as training runs them
    batch, smaller = (Batch.from_replay_data(model.replay_buffer.sample(n)) for n in (32, 16))
    guards, other_guards = GuardSkipping([model.policy]), GuardSkipping([other.policy])

    def call(caller: GuardSkipping, inputs: Batch = batch) -> None:
        with caller.stance(inputs):  # where the compiled functions would run
            pass

    call(guards)
    assert guards.may_skip(batch)
    call(guards, smaller)
    assert guards.may_skip(smaller) and not guards.may_skip(batch)  # other inputs: checked again
    call(guards)
    call(other_guards)  # another model's call
    assert other_guards.may_skip(batch) and not guards.may_skip(batch)
    call(guards)
    with fast_update.compiling():  # a warm-up, a compilation: another caller
        pass
    assert not guards.may_skip(batch)
    call(guards)
    model.policy.set_training_mode(False)
    assert not guards.may_skip(batch)
    model.policy.set_training_mode(True)
    call(guards)
    guards.check_again()
    assert not guards.may_skip(batch)
    assert th._dynamo.eval_frame._stance.skip_guard_eval_unsafe is False  # the stance only within the blocks


#: On CUDA, float64 runs of the same math differ by more than on CPU: cuBLAS picks its kernels (and so the order of
#: its sums) by shape and by capture, and Adam's normalised steps grow those last-bit differences (measured on an
#: H200 after 30 updates: 3e-9 for the CUDA graphs). Still 1000x below a difference of math (>1e-6 in these tests).
CUDA_TOLERANCE = 1e-8


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fast", ["compiled", "cudagraph", "compiled-cudagraph"])
def test_cuda_compiled_and_graph_updates_match_eager_in_float64(data, float64, fast):

    reference = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64, device="cuda")
    model = make_model(data, DeviceReplayBuffer, {"fused": True}, dtype=float64, device="cuda")
    if fast == "compiled":
        update = model._functional_update(compile_mode="default")
    else:  # the capture's warm-up updates must leave no trace
        example = model._example_batch()
        example = example._replace(**{k: v.double() for k, v in example._asdict().items() if v is not None})
        compile_mode = "default" if fast == "compiled-cudagraph" else None
        update = CudaGraphUpdate(model._functional_update(compile_mode=compile_mode, tensor_lr=True), example)
    train_side_by_side(reference, [(model, update)], N_UPDATES, dtype=float64, device="cuda")
    assert max_difference(reference, model) < CUDA_TOLERANCE


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_update", ["auto", "cudagraph"])
def test_cuda_learn_offline_fast_paths_train_like_the_eager_update_in_float64(data, float64, compile_update, monkeypatch):
    """What a CUDA user gets: ``"auto"`` (the compiled update in a CUDA graph) and ``"cudagraph"`` in
    ``learn_offline`` reach the eager run's parameters; compiling and capturing draw no batch from its stream, and
    the graph that samples its own batches draws the eager run's (its generator ends where the eager one's does)."""
    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", N_UPDATES)
    models = []
    for option in (False, compile_update):
        model = make_model(data, DeviceReplayBuffer, dtype=float64, device="cuda", compile_update=option)
        model.replay_buffer._storage = model.replay_buffer._storage.to(float64)
        model.replay_buffer._make_views()
        model.learn_offline(N_UPDATES)
        models.append(model)
    graph = models[1]._fast_update
    assert isinstance(graph, CudaGraphUpdate) and graph._sampled is not None and not graph.sampling_failed
    assert th.equal(models[0].replay_buffer.generator.get_state(), models[1].replay_buffer.generator.get_state())
    assert max_difference(*models) < CUDA_TOLERANCE


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_reads_hyperparameters_changed_between_calls_without_a_new_capture(data, float64):
    """The graph reads the numeric hyperparameters from device tensors: a change between calls is copied in."""
    models = []
    for option in (False, "cudagraph"):
        model = make_model(data, DeviceReplayBuffer, dtype=float64, device="cuda", compile_update=option)
        model.replay_buffer._storage = model.replay_buffer._storage.to(float64)
        model.replay_buffer._make_views()
        model.learn_offline(20, log_interval=0)
        graph = model._fast_update
        model.expectile, model.beta, model.gamma = 0.6, 2.0, 0.95
        model.learn_offline(20, log_interval=0)
        models.append(model)
    assert isinstance(graph, CudaGraphUpdate) and models[1]._fast_update is graph  # not captured again
    assert max_difference(*models) < CUDA_TOLERANCE


def test_auto_picks_the_path_by_call_length_and_device():
    assert [iql_module.auto_mode(n, "cpu") for n in (999, 1_000, 49_999, 50_000)] == [None, None, None, "compile"]
    assert [iql_module.auto_mode(n, "cuda") for n in (999, 1_000, 49_999, 50_000)] == [None, "graph", "graph", "compile"]
    assert iql_module.auto_mode(10**6, "mps") is None


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_captures_the_eager_update_then_upgrades_to_the_compiled_one(data, monkeypatch):
    monkeypatch.setattr(iql_module, "AUTO_GRAPH_UPDATES", 10)
    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", 20)
    model = make_model(data, DeviceReplayBuffer, device="cuda")
    model.learn_offline(10)
    assert isinstance(model._fast_update, CudaGraphUpdate) and model._fast_update.functional.compile_mode is None
    model.learn_offline(5)  # short: the graph already captured stays
    assert model._fast_update.functional.compile_mode is None
    model.learn_offline(20)
    assert isinstance(model._fast_update, CudaGraphUpdate) and model._fast_update.functional.compile_mode == "default"


class HalveBatchSize(BaseCallback):
    """Halves the model's batch size after ``after`` updates."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def _on_step(self) -> bool:
        if self.n_calls == self.after:
            self.model.batch_size //= 2
        return True


class EagerGraph:
    """Stands in for a captured CUDA graph on the CPU: each replay runs what the capture would hold, eagerly."""

    def __init__(self, step, static, output: th.Tensor):
        self.step, self.static, self.output = step, static, output

    def replay(self) -> None:
        self.output.copy_(self.step(self.static))


def stand_in_capture(captures: list, refuse_sampling: bool = False, n_learners: int | None = None):
    """A stand-in for ``capture_without_trace`` on the CPU (an ``EagerGraph``), recording in ``captures`` whether
    each graph samples its own batches; with ``refuse_sampling``, those captures fail. The metrics: one row per
    learner where ``n_learners`` are trained together."""

    def capture(step, static, state, n_warmup, generators=()):
        captures.append(static is None)  # None: the graph samples its own batches
        if refuse_sampling and static is None:
            raise RuntimeError("capture refused")
        shape = (len(IQL.metric_names),) if n_learners is None else (n_learners, len(IQL.metric_names))
        output = th.zeros(shape, dtype=state[0].dtype)
        return EagerGraph(step, static, output), output

    return capture


def eager_and_graph_runs(data, dtype, make_callback=lambda: None) -> list[IQL]:
    """``learn_offline(N_UPDATES)`` eagerly, then with the update in a (stand-in) CUDA graph, as
    ``compile_update="cudagraph"`` builds it on CUDA. A graph reads its learning rates from float32 tensors: a
    constant lr that float32 holds exactly keeps a float64 comparison exact."""
    models = []
    for graph in (False, True):
        model = make_model(
            data,
            DeviceReplayBuffer,
            {"fused": True},
            dtype,
            compile_update=False,
            learning_rate=2**-12,
            actor_lr_schedule="constant",
        )
        model.replay_buffer._storage = model.replay_buffer._storage.to(dtype)
        model.replay_buffer._make_views()
        if graph:
            model._fast_update = CudaGraphUpdate(model._functional_update(None, tensor_lr=True), model._example_batch())
            model.compile_update = "cudagraph"
        model.learn_offline(N_UPDATES, callback=make_callback())
        models.append(model)
    return models


def test_sampled_graph_step_trains_like_the_eager_loop_and_is_captured_again_for_other_batches(data, float64, monkeypatch):
    """``learn_offline`` with the update in a CUDA graph moves the sampling into the graph
    (``CudaGraphUpdate.sampled_step``). Here a stand-in for the capture replays the captured work eagerly: the
    model must train as the eager loop does (same batches from its generator, same parameters in float64) and
    capture once per sampling key (a batch size changed by a callback: a new graph from the next update on). The
    capture itself is checked by the CUDA tests."""
    captures = []
    monkeypatch.setattr(fast_update, "capture_without_trace", stand_in_capture(captures))
    eager, graph = eager_and_graph_runs(data, float64, lambda: HalveBatchSize(N_UPDATES // 2))
    assert captures == [False, True, True]  # the update with static inputs, then one sampling graph per batch size
    assert max_difference(eager, graph) < 1e-10
    assert th.equal(eager.replay_buffer.generator.get_state(), graph.replay_buffer.generator.get_state())


def test_a_sampling_graph_that_cannot_be_captured_warns_and_trains_on_batches_sampled_outside(data, float64, monkeypatch):
    captures = []
    monkeypatch.setattr(fast_update, "capture_without_trace", stand_in_capture(captures, refuse_sampling=True))
    with pytest.warns(UserWarning, match="Sampling inside the CUDA graph failed"):
        eager, graph = eager_and_graph_runs(data, float64)
    assert captures == [False, True] and graph._fast_update.sampling_failed
    assert max_difference(eager, graph) < 1e-10
    assert th.equal(eager.replay_buffer.generator.get_state(), graph.replay_buffer.generator.get_state())


def test_cudagraph_needs_cuda(data):
    if th.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_model(data, DeviceReplayBuffer, compile_update="cudagraph")


@pytest.mark.slow
@pytest.mark.parametrize("compile_update", [True, "auto"])
def test_compile_update_option_trains_like_the_eager_update(data, compile_update, monkeypatch):
    """``IQL(compile_update=True)`` runs the compiled update in ``learn_offline`` and matches eager training;
    so does ``"auto"`` for a call as long as ``AUTO_COMPILE_UPDATES`` (its compilation batch changes nothing)."""
    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", 20)
    eager = make_model(data, DeviceReplayBuffer, optimizer_kwargs={"fused": True}, net_arch=(256, 256), compile_update=False)
    compiled = make_model(
        data, DeviceReplayBuffer, optimizer_kwargs={"fused": True}, net_arch=(256, 256), compile_update=compile_update
    )
    eager.learn_offline(20)
    compiled.learn_offline(20)  # same seed: the same batches
    assert isinstance(compiled._fast_update, FunctionalUpdate)
    assert max_difference(eager, compiled) < 1e-5


def test_auto_s_path_is_saved_so_that_a_resumed_run_keeps_it(data, tmp_path):
    """A long run compiled by "auto", resumed for a short call, trained eagerly: parameters 1e-8 off the uninterrupted
    run's, growing. A CUDA graph's path is dropped on a CPU load."""
    model = make_model(data, DeviceReplayBuffer)
    for mode, loaded_mode in (("compile", "compile"), ("graph", None)):
        model._auto_mode = mode  # as after a call of AUTO_COMPILE_UPDATES updates (on CUDA for "graph")
        model.save(tmp_path / "auto")
        assert IQL.load(tmp_path / "auto", device="cpu")._auto_mode == loaded_mode


@pytest.mark.parametrize("buffer_class", [DeviceReplayBuffer, OfflineReplayBuffer])
def test_auto_compile_stays_eager_on_short_calls_and_when_compilation_fails(data, buffer_class, monkeypatch):
    eager = make_model(data, buffer_class, compile_update=False)
    auto = make_model(data, buffer_class)
    assert auto.compile_update == "auto"
    np.random.seed(0)  # SB3's NumPy buffer samples from NumPy's global generator
    eager.learn_offline(30)
    np.random.seed(0)
    auto.learn_offline(30)  # below AUTO_COMPILE_UPDATES
    assert auto._fast_update is None and max_difference(eager, auto) == 0.0

    def failing_compile(function, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")

        return compiled

    monkeypatch.setattr(iql_module, "AUTO_COMPILE_UPDATES", 30)
    monkeypatch.setattr(th, "compile", failing_compile)
    state = np.random.get_state()
    eager.learn_offline(30)
    np.random.set_state(state)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eager update"):
        auto.learn_offline(30)
    # The failed attempt changed nothing: neither the networks nor the batches drawn after it.
    assert auto._fast_update is None and max_difference(eager, auto) == 0.0
