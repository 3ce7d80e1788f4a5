"""
Many seeds in one process: K independent IQL learners (same network shapes, different seeds, optionally different
numeric hyperparameters, ``update.NUMERIC_SETTINGS``, tau and learning rates) trained as one batched computation,
``torch.func.vmap`` over their stacked parameters and hyperparameters.

Each learner reaches the parameters of its own single-seed ``learn_offline`` run from the same seed, to float
tolerance (``tests/test_multi_seed.py``: 1e-10 in float64): every model draws its batches from its own replay buffer
and sampling generator, as ``learn_offline`` does; the update is ``sb3_iql/iql/update.py``'s math on functional
callables (as ``FunctionalUpdate`` in ``fast_update.py``), vmapped over the learners; Adam is the same fused kernel,
run once on the stacked tensors (once per learner where each has its own learning rate); Polyak is one
``_foreach_lerp_``. At the end the parameters, Adam states and counters go back into each model, which is then an
ordinary ``IQL`` (save, load, ``learn_offline``, ``learn``)::

    from sb3_iql.iql.multi_seed import learn_offline_together, make_models, make_seeds

    data = "D4RL/antmaze/large-diverse-v1"
    models = make_seeds([0, 1, 2, 3], "MlpPolicy", env, offline_dataset=data, expectile=0.9, offline_steps=100_000)
    learn_offline_together(models)  # offline_steps updates
    models[2].save("iql_seed2")

    # or a sweep: one model per expectile, trained together
    variants = [{"seed": 0, "expectile": tau} for tau in (0.7, 0.8, 0.9)]
    sweep = make_models(variants, "MlpPolicy", env, offline_dataset=data, offline_steps=100_000)
    learn_offline_together(sweep)

Eager or compiled (``compile_update``: ``torch.compile`` of the two vmapped gradient functions, as the single-seed
``compile_update``; ``"auto"`` from ``AUTO_COMPILE_UPDATES`` updates on), and on CUDA optionally one captured CUDA
graph per step (``cuda_graph=True``); CPU or CUDA, no host synchronisation in the loop. With dropout in the actor
each learner draws its own masks, not the ones of its single-seed run: such learners match single-seed runs in
distribution, not parameter for parameter. Not supported: callbacks, Adam with weight decay, amsgrad or maximize.
"""

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch as th
from torch import nn
from torch.utils import _pytree as pytree

from sb3_iql.common.offline import checked_count
from sb3_iql.data.minari_loader import resolve_datasets
from sb3_iql.iql import update
from sb3_iql.iql.fast_update import (
    ActorObjectiveInputs,
    DeviceScalars,
    GuardSkipping,
    SampledGraph,
    adam_state_,
    capture_without_trace,
    compile_gradients,
    compiling,
    constant_attributes,
    fused_adam_step_,
    one_step_counter,
    policy_gradients,
    unsupported_network,
    value_gradients,
)
from sb3_iql.iql.iql import IQL, _warn_fallback, auto_mode
from sb3_iql.iql.update import Batch

#: The networks of a learner: the three trained ones (each with its Adam) and the Polyak-averaged target critics.
TRAINED = ("value", "actor", "critic")
NETWORKS = (*TRAINED, "critic_target")
NETWORK_ATTRIBUTES = {"value": "value_net", "actor": "actor", "critic": "critic", "critic_target": "critic_target"}
#: Model attributes that must be equal for the learners to share one batched update; the numeric hyperparameters of
#: the update (gamma, expectile, beta, max_weight, bc_weight), tau and the learning rates (``LEARNING_RATE_SETTINGS``)
#: may differ. The policies' constructor parameters must be equal too (``_policy_settings``).
SHARED_ATTRIBUTES = (
    "batch_size",
    "update_order",
    "policy_extraction",
    "offline_steps",
    "_n_offline_updates",
    "_current_progress_remaining",
    "device",
    "observation_space",
    "action_space",
)
#: What the private ones of ``SHARED_ATTRIBUTES`` mean, for the error that names them.
ATTRIBUTE_MEANINGS = {
    "_n_offline_updates": "offline updates run so far",
    "_current_progress_remaining": "training progress (one model has trained online or further)",
}
#: What sets a model's learning rates: where it differs between learners, each gets its own (one Adam kernel call per
#: learner); otherwise one call steps them all, with the lr they share.
LEARNING_RATE_SETTINGS = ("learning_rate", "actor_lr_schedule", "critic_lr_schedule")
#: Adam settings that must be equal across learners (one kernel call updates them all).
ADAM_SETTINGS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "differentiable")

Tensors = dict[str, th.Tensor]


def make_seeds(seeds: Sequence[int], *args: Any, **kwargs: Any) -> list[IQL]:
    """
    K ordinary IQL models, ``IQL(*args, seed=seed, **kwargs)`` for each seed (``make_models``).

    :param seeds: one seed per model
    :param args: positional arguments of ``IQL`` (policy, env, offline_dataset, ...)
    :param kwargs: keyword arguments of ``IQL``, without ``seed``
    :return: the models, in the order of ``seeds``
    """
    if "seed" in kwargs:
        raise TypeError("make_seeds takes the seeds as its first argument, not seed=")
    return make_models([{"seed": seed} for seed in seeds], *args, **kwargs)


def make_models(variants: Sequence[dict[str, Any]], *args: Any, **kwargs: Any) -> list[IQL]:
    """
    One ordinary IQL model per variant, ``IQL(*args, **{**kwargs, **variant})``: seeds, or a sweep over numeric
    hyperparameters (``update.NUMERIC_SETTINGS``), tau and learning rates that ``learn_offline_together`` trains as
    one batched update::

        models = make_models([{"seed": 0, "expectile": tau} for tau in (0.7, 0.8, 0.9)], "MlpPolicy", env, dataset_id)

    A dataset given by id in ``args`` or ``kwargs`` is resolved (opened, downloaded if asked) once (one given in a
    variant, by each model), but each model loads its transitions into its own replay buffer: K copies of the data
    in memory, K loading times. An environment instance passed as ``env`` is shared by the K models (pass an id or
    None for one environment each). A variant may not repeat a positional argument.

    :param variants: each model's keyword arguments of ``IQL`` that differ from ``kwargs``
    :param args: positional arguments of ``IQL`` (policy, env, offline_dataset, ...)
    :param kwargs: keyword arguments of ``IQL`` shared by the models
    :return: the models, in the order of ``variants``
    """
    args, kwargs = list(args), dict(kwargs)
    download = kwargs.get("download_dataset", False)
    if len(args) > 2 and args[2] is not None:
        args[2] = resolve_datasets(args[2], download=download)
    elif kwargs.get("offline_dataset") is not None:
        kwargs["offline_dataset"] = resolve_datasets(kwargs["offline_dataset"], download=download)
    return [IQL(*args, **{**kwargs, **variant}) for variant in variants]


def learn_offline_together(
    models: Sequence[IQL],
    n_updates: int | None = None,
    log_interval: int | None = 1000,
    tb_log_name: str | None = None,
    reset_num_timesteps: bool = True,
    cuda_graph: bool = False,
    compile_update: bool | Literal["auto", "cudagraph"] | None = None,
) -> list[IQL]:
    """
    ``model.learn_offline(n_updates)`` for every model, as one vmapped update per step for all of them.

    Each update: every model sets its learning rates and samples its batch exactly as its own ``learn_offline``
    would; the K batches are stacked (leading dimension K) and one batched update steps all the learners. Every
    model's logger gets its own metrics every ``log_interval`` updates. Whenever the function returns (or raises),
    the parameters and Adam states are written back into the models and their counters (``_n_offline_updates``,
    ``_n_updates``, ``num_timesteps`` and the offline steps that ``learning_starts`` skips) count the updates done,
    as ``learn_offline`` leaves them.

    :param models: models that ``check_compatible`` accepts (e.g. from ``make_seeds``)
    :param n_updates: gradient steps (default: what is left of ``offline_steps``)
    :param log_interval: updates between two logger dumps (None or 0: dump only at the end)
    :param tb_log_name: name of the TensorBoard run (default: the class name)
    :param reset_num_timesteps: start counting ``num_timesteps`` from 0
    :param cuda_graph: CUDA only: capture the batched update in one CUDA graph (``CapturedStep``), replayed each
        step, with the sampling where every model's buffer allows it
    :param compile_update: ``torch.compile`` the batched update (``StackedLearners.compile``: the same math);
        ``"auto"``: for calls of at least ``AUTO_COMPILE_UPDATES`` updates, where it repays the compilation, eager
        (with a warning) where compilation fails; ``"cudagraph"``: compiled, in a CUDA graph (``cuda_graph=True``);
        None (default): the models' own ``compile_update``, which must be the same for all
    :return: the models, trained
    """
    models = list(models)
    for model in models:  # settings changed on a model since it was built reach its networks (dropout) first
        model._check_settings()
    check_compatible(models)
    if n_updates is not None:
        n_updates = checked_count("n_updates", n_updates)
    for model in models:  # once for all, at most
        if model._warn_about_lr_schedule(n_updates, stacklevel=3):
            break
    first = models[0]
    compile_update, cuda_graph = _compile_settings(models, compile_update, cuda_graph)
    if cuda_graph and first.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs models on a CUDA device, they are on {first.device}")
    if n_updates is None:
        n_updates = first.offline_updates_left
    tb_log_name = type(first).__name__ if tb_log_name is None else tb_log_name
    learners = StackedLearners(models)  # checks that the Adam states are at one step, before any model changes
    for model in models:  # compiled as trained: dropout on
        model.policy.set_training_mode(True)
    _compile_as_asked(learners, compile_update, n_updates)
    for model in models:
        model._setup_offline_learn(n_updates, None, reset_num_timesteps, tb_log_name, progress_bar=False)
    metric_sums = th.zeros(len(models), len(first.metric_names), device=first.device)
    since_dump, dump_start = 0, time.perf_counter()
    captured = CapturedStep(learners) if cuda_graph else None
    try:
        for _ in range(n_updates):
            metric_sums += learners.step(sample_together(models)) if captured is None else captured()
            for model in models:
                model._count_offline_update()
            since_dump += 1
            if log_interval and since_dump == log_interval:
                _dump_logs(models, metric_sums, since_dump, time.perf_counter() - dump_start)
                metric_sums.zero_()
                since_dump, dump_start = 0, time.perf_counter()
    finally:
        learners.write_back()
        for model in models:  # as learn_offline leaves it
            model.policy.set_training_mode(False)
    if since_dump > 0:
        _dump_logs(models, metric_sums, since_dump, time.perf_counter() - dump_start)
    return models


def _compile_settings(models: Sequence[IQL], compile_update: bool | str | None, cuda_graph: bool) -> tuple[bool | str, bool]:
    """
    :return: ``(compile_update, cuda_graph)`` as ``learn_offline_together`` runs them: None is the models' own
        setting (refused where they differ: one batched update runs all of them), ``"cudagraph"`` is compiled in a
        CUDA graph
    """
    if compile_update is None:
        settings = {repr(model.compile_update): model.compile_update for model in models}
        if len(settings) > 1:
            raise ValueError(
                f"the models' compile_update differ ({', '.join(settings)}): pass compile_update= to "
                "learn_offline_together, which trains them as one update"
            )
        compile_update = next(iter(settings.values()))
    if compile_update not in (True, False, "auto", "cudagraph"):
        raise ValueError(f"compile_update must be True, False, 'auto', 'cudagraph' or None, got {compile_update!r}")
    return (True, True) if compile_update == "cudagraph" else (compile_update, cuda_graph)


def _compile_as_asked(learners: "StackedLearners", compile_update: bool | str, n_updates: int) -> None:
    """
    ``learners.compile()`` where ``compile_update`` asks for it (``True``, or ``"auto"`` for a call of at least
    ``AUTO_COMPILE_UPDATES`` updates); under ``"auto"`` a compilation that fails warns and leaves the eager update.
    """
    auto = compile_update == "auto" and auto_mode(n_updates, learners.device.type) == "compile"
    if compile_update is not True and not auto:
        return
    try:
        learners.compile()
    except Exception as error:  # no C++ compiler, an unsupported platform or module...
        if compile_update is True:
            raise
        _warn_fallback("torch.compile failed", error, "the eager update")


def sample_together(models: Sequence[IQL]) -> Batch:
    """
    Each model's next batch, drawn as its ``learn_offline`` draws it (learning rates set, then ``_sample_batch``:
    ``replay_buffer.sample(batch_size)``, images randomly shifted by the model's ``image_shift``), stacked.

    :return: a batch whose tensors have a leading learner dimension: observations ``(K, batch, *obs_shape)`` (or a
        dict of them), actions ``(K, batch, action_dim)``, rewards and dones ``(K, batch)``
    """
    for model in models:
        model._set_learning_rates(offline=True)
    return stack_batches(models)


def stack_batches(models: Sequence[IQL]) -> Batch:
    """:return: each model's next batch (``_sample_batch``), stacked as ``sample_together`` returns them"""
    return _stacked([Batch.from_replay_data(model._sample_batch(model.batch_size)) for model in models])


class StackedLearners:
    """
    The networks and Adam states of K compatible models, stacked along a new leading dimension, and one IQL update
    (``sb3_iql.iql.update``'s steps) of all of them at once:

    1. vmapped value step: value targets, value loss and its gradients;
    2. fused Adam step of the K value networks (one kernel call on the stacked tensors, or one per learner with its own
       learning rate);
    3. vmapped policy step: policy targets with the new V (V on s and s' in one pass), actor and critic gradients;
    4. fused Adam steps of the actors and the critics, Polyak averaging of the target critics.

    The first model's modules serve as templates for ``torch.func.functional_call``; every learner's parameters,
    buffers (observation normalizer statistics) and numeric hyperparameters (``numbers``, read at creation) are its
    own. The models' tensors are copied in at creation and back with ``write_back``.

    :param models: models that ``check_compatible`` accepts
    """

    def __init__(self, models: Sequence[IQL]):
        self.models = list(models)
        first = self.models[0]
        self.settings = first._update_settings()  # its structure; the numbers are each learner's own
        self.templates = _modules(first)
        per_model = [_modules(model) for model in self.models]
        self.params = {name: _stack([dict(m[name].named_parameters()) for m in per_model]) for name in NETWORKS}
        self.buffers = {name: _stack([dict(m[name].named_buffers()) for m in per_model]) for name in NETWORKS}
        #: the device of the stacked tensors
        self.device = next(iter(self.params["value"].values())).device
        #: the Polyak coefficient: the learners' one float, or where they differ, a ``(K, 1, ...)`` weight per target
        #: parameter (``torch.lerp`` broadcasts it)
        self.tau: float | list[th.Tensor] = first.tau
        taus = [model.tau for model in self.models]
        if len(set(taus)) > 1:
            stacked_taus = th.tensor(taus, dtype=self._dtype(), device=self.device)
            self.tau = [stacked_taus.view(-1, *[1] * (p.dim() - 1)) for p in self.params["critic_target"].values()]
        #: each learner's numeric hyperparameters, ``(K,)`` tensors
        self.numbers = DeviceScalars(update.NUMERIC_SETTINGS, self.device, self._dtype(), n_learners=len(self.models))
        per_model = [model._update_settings().numbers() for model in self.models]
        self.numbers.fill({name: [numbers[name] for numbers in per_model] for name in update.NUMERIC_SETTINGS})
        self.step_counters: dict[str, th.Tensor] = {}
        self.states = {name: self._stack_adam_state(name) for name in TRAINED}
        #: the learners' learning rates differ (``LEARNING_RATE_SETTINGS``): one Adam step per learner, its own lr
        self.lrs_per_learner = any(
            not _equal(getattr(model, key), getattr(first, key)) for model in self.models for key in LEARNING_RATE_SETTINGS
        )
        #: each network's current learning rate per learner (floats), set by ``set_learning_rates``
        self.learner_lrs: dict[str, list[float]] = {}
        # Learning rates as float32 device tensors (a CUDA graph's; a float would be frozen at capture), ``(K,)`` per
        # network where each learner has its own; None: floats.
        self.lrs: DeviceScalars | None = None
        #: the two steps of every learner at once (``compile`` replaces them with their compiled versions)
        self.value_grads, self.policy_grads = self._vmapped_value_grads, self._vmapped_policy_grads
        #: skips Dynamo's guards where they passed for the same inputs (None: not compiled)
        self.guards: GuardSkipping | None = None

    # --- stacking -------------------------------------------------------------------------------------------------

    def _dtype(self) -> th.dtype:
        """The dtype of the value network's parameters (of the learners' arithmetic)."""
        return next(iter(self.params["value"].values())).dtype

    def _stack_adam_state(self, name: str) -> dict[str, list[th.Tensor]]:
        """
        :return: Adam's ``exp_avg`` and ``exp_avg_sq`` of network ``name``, stacked ``(K, *param_shape)`` per
            parameter, and one float32 ``step`` per parameter (equal across learners, checked here), the elements
            of one tensor (``step_counters``: one addition counts them all up)
        """
        state: dict[str, list[th.Tensor]] = {"step": [], "exp_avg": [], "exp_avg_sq": []}
        steps_per_param = []
        for position, stacked in enumerate(self.params[name].values()):
            per_model = [_adam_state(model, name, position) for model in self.models]
            steps = {float(param_state["step"]) if param_state else 0.0 for param_state in per_model}  # one sync, here
            if len(steps) > 1:
                raise ValueError(f"The models' {name} optimizers are at different steps: {sorted(steps)}")
            for key in ("exp_avg", "exp_avg_sq"):
                values = [param_state[key] if param_state else th.zeros_like(stacked[0]) for param_state in per_model]
                state[key].append(th.stack(values))
            steps_per_param.append(th.tensor(steps.pop()))
        self.step_counters[name], state["step"] = one_step_counter(steps_per_param, stacked.device)
        return state

    def write_back(self) -> None:
        """Copy every learner's parameters and Adam state into its own model's networks and optimizers, in place."""
        with th.no_grad():
            for index, model in enumerate(self.models):
                modules = _modules(model)
                for name in NETWORKS:
                    for param, stacked in zip(modules[name].parameters(), self.params[name].values()):
                        param.copy_(stacked[index])
                for name in TRAINED:
                    self._write_adam_state(model, name, index)

    def _write_adam_state(self, model: IQL, name: str, index: int) -> None:
        """Learner ``index``'s Adam state of network ``name`` into ``model``'s optimizer (created as Adam would)."""
        optimizer = _network(model, name).optimizer
        group = optimizer.param_groups[0]
        state = self.states[name]
        for position, param in enumerate(group["params"]):
            param_state = adam_state_(optimizer, param)
            param_state["step"].copy_(state["step"][position])
            param_state["exp_avg"].copy_(state["exp_avg"][position][index])
            param_state["exp_avg_sq"].copy_(state["exp_avg_sq"][position][index])

    # --- the update -----------------------------------------------------------------------------------------------

    def compile(self) -> None:
        """
        ``torch.compile`` both vmapped gradient functions (``compile_gradients``, as the single-seed update) and run
        them once on batches that leave every sampling stream where it was: a compilation that fails raises here,
        before any update (and the learners keep the eager functions). Nothing else changes: the functions are pure.
        Each has its own code object, so that each keeps its own compilations (``fast_update.RECOMPILE_LIMIT``
        combinations of shapes and update structure per process); models of the same ones reuse them.
        """
        value_grads = compile_gradients(self._vmapped_value_grads, self.device)
        policy_grads = compile_gradients(self._vmapped_policy_grads, self.device)
        batch = _stacked([Batch.from_replay_data(model._example_batch()) for model in self.models])
        with th.no_grad(), compiling():
            _, value_loss, values, targets = value_grads(self._value_params(), self.buffers, self.numbers.tensors, batch)
            policy_grads(self._policy_params(), self.buffers, self.numbers.tensors, batch, targets, value_loss, values)
        self.value_grads, self.policy_grads = value_grads, policy_grads
        self.guards = GuardSkipping(self.templates.values())

    def _value_params(self) -> dict[str, Tensors]:
        """The parameters the value step reads."""
        return {"value": self.params["value"], "critic_target": self.params["critic_target"]}

    def _policy_params(self) -> dict[str, Tensors]:
        """The parameters the policy step reads."""
        return {name: self.params[name] for name in TRAINED}

    def _call(self, name: str, params: Tensors, buffers: dict[str, Tensors]) -> Any:
        """:return: network ``name`` of one learner as a function of its inputs, with the given parameters"""
        return lambda *inputs: th.func.functional_call(self.templates[name], (params, buffers[name]), inputs)

    def _vmapped_value_grads(self, *args: Any) -> tuple[Tensors, th.Tensor, th.Tensor, Tensors]:
        """``_value_grads`` of every learner: its results stacked along the learner dimension."""
        return th.func.vmap(self._value_grads)(*args)

    def _vmapped_policy_grads(self, *args: Any) -> tuple[Tensors, Tensors, th.Tensor]:
        """
        ``_policy_grads`` of every learner. Actor dropout: each learner draws its own masks (other masks than its
        single-seed run would draw).
        """
        return th.func.vmap(self._policy_grads, randomness="different")(*args)

    def _value_grads(
        self, params: dict[str, Tensors], buffers: dict[str, Tensors], numbers: Tensors, batch: Batch
    ) -> tuple[Tensors, th.Tensor, th.Tensor, Tensors]:
        """
        One learner's value step (vmapped over learners).

        :param numbers: the learner's numeric hyperparameters, 0-d tensors
        :return: gradients of the value loss, value loss, V(s) ``(batch,)``, value targets as a dict
        """
        grads, value_loss, values, targets = value_gradients(
            self._call("critic_target", params["critic_target"], buffers),
            self._call("value", params["value"], buffers),
            lambda value_params: self._call("value", value_params, buffers),
            params["value"],
            batch,
            self.settings.with_numbers(numbers),
        )
        return grads, value_loss, values, _targets_to_dict(targets)

    def _policy_grads(
        self,
        params: dict[str, Tensors],
        buffers: dict[str, Tensors],
        numbers: Tensors,
        batch: Batch,
        value_targets: Tensors,
        value_loss: th.Tensor,
        values: th.Tensor,
    ) -> tuple[Tensors, Tensors, th.Tensor]:
        """
        One learner's policy step with its new V (vmapped over learners).

        :param numbers: the learner's numeric hyperparameters, 0-d tensors
        :return: actor gradients, critic gradients, metrics of ``METRIC_NAMES`` ``(len(METRIC_NAMES),)``
        """
        return policy_gradients(
            self._call("value", params["value"], buffers),
            lambda actor_params: self._call("actor", actor_params, buffers),
            lambda critic_params: self._call("critic", critic_params, buffers),
            params["actor"],
            params["critic"],
            batch,
            _targets_from_dict(value_targets),
            value_loss,
            values,
            self.settings.with_numbers(numbers),
        )

    def _adam_(self, name: str, grads: Tensors) -> None:
        """
        ``Adam(fused=True).step()`` of the K networks ``name`` (as ``FunctionalUpdate._adam_``), in place: one kernel
        call for all of them, or one per learner where each has its own lr.
        """
        group = _network(self.models[0], name).optimizer.param_groups[0]
        if self.lrs is not None:
            lr: float | th.Tensor | list[float] = self.lrs[name]
        else:
            lr = self.learner_lrs[name] if self.lrs_per_learner else group["lr"]
        params, state = list(self.params[name].values()), self.states[name]
        fused_adam_step_(params, list(grads.values()), state, group, lr, self.step_counters[name])

    def step(self, batch: Batch) -> th.Tensor:
        """
        One IQL update of every learner, with the learning rates the models' optimizers hold (equal, checked, unless
        ``lrs_per_learner``).

        :param batch: the stacked batches of ``sample_together``
        :return: the metrics of ``METRIC_NAMES`` of every learner, ``(K, len(METRIC_NAMES))``, on the device
        """
        self.set_learning_rates()
        return self.update(batch)

    def set_learning_rates(self) -> None:
        """
        Read the models' current learning rates (each learner's, or the one they share, which is checked) into
        ``learner_lrs``, and into ``lrs`` if any (``DeviceScalars``).
        """
        self.learner_lrs = {
            name: [_network(model, name).optimizer.param_groups[0]["lr"] for model in self.models] for name in TRAINED
        }
        if not self.lrs_per_learner:
            _check_same_learning_rates(self.learner_lrs)
        if self.lrs is not None:
            self.lrs.fill({name: lrs if self.lrs_per_learner else lrs[0] for name, lrs in self.learner_lrs.items()})

    def use_tensor_learning_rates(self) -> None:
        """
        Read the learning rates from float32 device tensors (``lrs``), as a CUDA graph must (and the CUDA fused Adam
        kernel reads a tensor lr as float32).
        """
        if self.lrs is None:
            n_learners = len(self.models) if self.lrs_per_learner else None
            self.lrs = DeviceScalars(TRAINED, self.device, n_learners=n_learners)

    def update(self, batch: Batch) -> th.Tensor:
        """``step`` without setting the learning rates: what a CUDA graph captures."""
        params, buffers, numbers = self.params, self.buffers, self.numbers.tensors
        # torch.func.grad still differentiates inside no_grad
        with th.no_grad(), GuardSkipping.stance_of(self.guards, batch):
            value_grads, value_loss, values, targets = self.value_grads(self._value_params(), buffers, numbers, batch)
            self._adam_("value", value_grads)
            actor_grads, critic_grads, metrics = self.policy_grads(
                self._policy_params(), buffers, numbers, batch, targets, value_loss, values
            )
            self._adam_("actor", actor_grads)
            self._adam_("critic", critic_grads)
            th._foreach_lerp_(list(params["critic_target"].values()), list(params["critic"].values()), self.tau)
        return metrics


class CapturedStep:
    """
    CUDA only: ``StackedLearners.update`` captured in a CUDA graph, one launch for the update of all learners.
    Where every model's sampling can be captured (``IQL._graph_sampling``), the graph draws their batches too
    (``SampledGraph``: the batches of their single-seed runs); otherwise each call copies the batches of
    ``sample_together`` into a graph's static inputs. Each call sets the learning rates; the returned metrics are
    a graph's static output (read them before the next call). A capture's warm-up updates are undone, so the
    learners reach the parameters of their uncaptured run.

    :param learners: the learners (their learning rates become device tensors: ``use_tensor_learning_rates``)
    :param n_warmup: warm-up updates before a capture
    """

    def __init__(self, learners: StackedLearners, n_warmup: int = 3):
        learners.use_tensor_learning_rates()
        self.learners = learners
        self.n_warmup = n_warmup
        self.state = [*(t for p in learners.params.values() for t in p.values())]
        self.state += [t for s in learners.states.values() for tensors in s.values() for t in tensors]
        self.sampled = SampledGraph(lambda: learners.update(stack_batches(learners.models)), self.state, n_warmup)
        #: the graph on static inputs (static batch, graph, metrics), captured on first use
        self.static: tuple[Batch, th.cuda.CUDAGraph, th.Tensor] | None = None

    def __call__(self) -> th.Tensor:
        """One update of every learner on its next batch, with the learning rates its ``learn_offline`` would set."""
        models = self.learners.models
        for model in models:
            model._set_learning_rates(offline=True)
        self.learners.set_learning_rates()
        samplings = [model._graph_sampling() for model in models]
        if all(sampling is not None for sampling in samplings):
            keys, generators = zip(*samplings)  # type: ignore[arg-type]
            return self.sampled.replay(keys, generators)
        batch = stack_batches(models)
        if self.static is None:
            static = pytree.tree_map(th.clone, batch)
            self.static = (static, *capture_without_trace(self.learners.update, static, self.state, self.n_warmup))
        static, graph, metrics = self.static
        pytree.tree_map(lambda target, value: target.copy_(value), static, batch)
        graph.replay()
        return metrics


# --- compatibility ------------------------------------------------------------------------------------------------


def check_compatible(models: Sequence[IQL]) -> None:
    """
    :raises ValueError: the models cannot be trained together: not distinct IQL models of one class, or differing
        in a hyperparameter of ``SHARED_ATTRIBUTES`` (the batch size, the progress, the update's structure...),
        the network shapes, or the Adam settings; or with an unsupported observation space, or an empty replay buffer
    """
    models = list(models)
    if not models:
        raise ValueError("learn_offline_together needs at least one model")
    if len({id(model) for model in models}) != len(models):
        raise ValueError("The same model is given twice: pass K distinct models (e.g. from make_seeds)")
    first = models[0]
    for index, model in enumerate(models):
        if not isinstance(model, IQL) or type(model) is not type(first):
            kinds = f"models[{index}] is a {type(model).__name__}, models[0] a {type(first).__name__}"
            raise ValueError(f"{kinds}: the models must be IQL models of one class")
        _check_alone(model, index)
        for attribute in SHARED_ATTRIBUTES:
            if not _equal(getattr(model, attribute), getattr(first, attribute)):
                meaning = f" ({ATTRIBUTE_MEANINGS[attribute]})" if attribute in ATTRIBUTE_MEANINGS else ""
                raise ValueError(
                    f"{attribute}{meaning} differs: models[0].{attribute}={getattr(first, attribute)!r}, "
                    f"models[{index}].{attribute}={getattr(model, attribute)!r}"
                )
        settings, first_settings = _policy_settings(model), _policy_settings(first)
        for name, value in settings.items():
            if not _equal(value, first_settings.get(name)):
                raise ValueError(
                    f"The policies differ in {name}: models[0] has {first_settings.get(name)!r}, models[{index}] {value!r}"
                )
        _check_networks(first, model, index)


def _policy_settings(model: IQL) -> dict[str, Any]:
    """:return: the policy's constructor parameters (its ``policy_kwargs`` with their defaults), without its lr"""
    return {name: value for name, value in model.policy._get_constructor_parameters().items() if name != "lr_schedule"}


def _check_alone(model: IQL, index: int) -> None:
    """What one model must satisfy on its own: data to train on, a supported space, plain Adam."""
    try:
        model._check_offline_data()
    except RuntimeError as error:  # says how to fill the buffer (a loaded model: reload_offline_dataset())
        raise ValueError(f"models[{index}]: {error}") from None
    if model.policy.share_features_extractor:
        raise ValueError("learn_offline_together does not support a shared features extractor (share_features_extractor)")
    for name in TRAINED:
        network = _network(model, name)
        reason = unsupported_network(network)  # the functional update's own check
        if reason is not None:
            raise ValueError(f"learn_offline_together, models[{index}]: {reason}")
        group = network.optimizer.param_groups[0]
        params = list(network.parameters())
        if len(group["params"]) != len(params) or any(a is not b for a, b in zip(group["params"], params)):
            raise ValueError(f"The {name} optimizer of models[{index}] does not hold exactly its network's parameters")


def _check_networks(first: IQL, model: IQL, index: int) -> None:
    """Same policy class, same modules (layers, activations), same parameter and buffer shapes, same Adam settings."""
    if type(model.policy) is not type(first.policy):
        raise ValueError(f"models[{index}] has a {type(model.policy).__name__}, models[0] a {type(first.policy).__name__}")
    references = _modules(first)
    for name, network in _modules(model).items():
        reference = references[name]
        if repr(network) != repr(reference):
            raise ValueError(f"The {name} networks of models[0] and models[{index}] differ in structure")
        tensors, reference_tensors = _shapes(network), _shapes(reference)
        if tensors != reference_tensors:  # (name, shape, dtype) of each, e.g. a float64 model beside float32 ones
            first_tensor, tensor = next(pair for pair in zip(reference_tensors, tensors) if pair[0] != pair[1])
            raise ValueError(
                f"The {name} networks of models[0] and models[{index}] differ in a tensor's shape or dtype: "
                f"{first_tensor} against {tensor}"
            )
        constants, reference_constants = (_named_constants(module) for module in (network, reference))
        if constants != reference_constants:  # every learner runs models[0]'s modules
            differing = sorted(key for key, value in constants.items() if reference_constants.get(key) != value)
            raise ValueError(
                f"The {name} networks of models[0] and models[{index}] differ in {', '.join(differing)} (set after "
                "building): every learner would train with models[0]'s"
            )
    for name in TRAINED:
        group, reference = (_network(m, name).optimizer.param_groups[0] for m in (model, first))
        for key in ADAM_SETTINGS:
            if group[key] != reference[key]:
                raise ValueError(f"Adam's {key} of {name} differs: models[0] {reference[key]}, models[{index}] {group[key]}")


def _named_constants(network: nn.Module) -> dict[str, Any]:
    """:return: ``fast_update.constant_attributes`` of a network by qualified name (``"mu.out_features"``), with values"""
    names = {module: prefix for prefix, module in network.named_modules()}
    return {
        f"{names[module]}.{attribute}".lstrip("."): getattr(module, attribute)
        for module, attribute in constant_attributes([network])
    }


def _check_same_learning_rates(learner_lrs: dict[str, list[float]]) -> None:
    """The learning rates the models just set, per network, are equal (one fused Adam call steps all learners)."""
    for name, lrs in learner_lrs.items():
        for index, lr in enumerate(lrs):
            if lr != lrs[0]:
                raise ValueError(
                    f"models[{index}] has another {name} learning rate than models[0] ({lr} against {lrs[0]}): the "
                    "schedules or progress differ"
                )


def _shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...], th.dtype]]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [(key, tuple(tensor.shape), tensor.dtype) for key, tensor in tensors]


def _equal(first: Any, second: Any) -> bool:
    """``==`` that also compares dicts holding arrays or spaces (any failure to compare counts as different)."""
    try:
        return bool(first == second)
    except (TypeError, ValueError, RuntimeError):
        return False


# --- helpers ------------------------------------------------------------------------------------------------------


def _network(model: IQL, name: str) -> nn.Module:
    return getattr(model, NETWORK_ATTRIBUTES[name])


def _modules(model: IQL) -> dict[str, nn.Module]:
    """:return: the modules ``functional_call`` runs, by network: the actor as ``ActorObjectiveInputs``"""
    return {
        name: ActorObjectiveInputs(model.actor, model.policy_extraction) if name == "actor" else _network(model, name)
        for name in NETWORKS
    }


def _stacked(batches: Sequence[Batch]) -> Batch:
    """:return: the batches stacked along a new leading (learner) dimension"""
    return pytree.tree_map(lambda *values: th.stack(values), *batches)


def _stack(per_model: list[Tensors]) -> Tensors:
    """:return: each tensor stacked over the models, ``(K, *shape)``, detached copies"""
    return {key: th.stack([tensors[key].detach() for tensors in per_model]) for key in per_model[0]}


def _adam_state(model: IQL, name: str, position: int) -> dict[str, th.Tensor]:
    """:return: the Adam state of parameter ``position`` of network ``name`` of ``model`` (empty before a step)"""
    optimizer = _network(model, name).optimizer
    return optimizer.state.get(optimizer.param_groups[0]["params"][position], {})


def _targets_to_dict(targets: update.ValueTargets) -> Tensors:
    """``ValueTargets`` as a dict without its None field (vmap takes and returns tensors only)."""
    return {key: value for key, value in targets._asdict().items() if value is not None}


def _targets_from_dict(targets: Tensors) -> update.ValueTargets:
    return update.ValueTargets(targets["target_q"], targets.get("next_value"))


def _dump_logs(models: Sequence[IQL], metric_sums: th.Tensor, n_steps: int, seconds: float) -> None:
    """
    Each model's logger dump, with its own metrics; updates/s is that of every learner (they run together). The
    learner's place in ``models`` and its seed label the dump (``together/learner``, ``together/seed``; not in
    TensorBoard), since K models logging to stdout print K tables otherwise alike.
    """
    for index, (model, sums) in enumerate(zip(models, metric_sums)):
        model.logger.record("together/learner", index, exclude="tensorboard")
        model.logger.record("together/seed", model.seed, exclude="tensorboard")
        model._dump_offline_logs(sums, n_steps, seconds)
