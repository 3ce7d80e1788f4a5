"""
The fast IQL update paths: ``FunctionalUpdate`` (``torch.func`` gradients, direct fused Adam steps; eager or
``torch.compile``-d) and ``CudaGraphUpdate`` (the same, captured in a CUDA graph).

The math is ``sb3_iql/iql/update.py``'s, the same functions as ``IQL._update`` (the eager path); this module adds
only gradient, optimizer and Polyak mechanics. ``tests/test_fast_path.py`` proves every path reaches the same
parameters. Select with ``IQL(..., compile_update=True)`` (torch.compile, CPU or CUDA) or
``compile_update="cudagraph"`` (CUDA only: one graph launch per update).
"""

import contextlib
import functools
import inspect
import numbers
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import torch as th
from torch import nn
from torch.optim import optimizer as optimizer_hooks

from sb3_iql.iql import update
from sb3_iql.iql.update import Batch, UpdateSettings


def fused_adam_step_(
    params: list[th.Tensor],
    grads: list[th.Tensor],
    state: dict[str, list[th.Tensor]],
    group: dict,
    lr: float | th.Tensor | Sequence[float | th.Tensor],
    step_counters: th.Tensor | None = None,
) -> None:
    """
    What ``Adam(fused=True).step()`` runs, without its Python overhead: one ``torch._fused_adam_`` call, in place.

    :param state: the optimizer's ``step``, ``exp_avg`` and ``exp_avg_sq`` tensors, in the order of ``params``
    :param group: the optimizer's param group (betas, eps; no weight decay, amsgrad or maximize)
    :param lr: the learning rate (a float32 device tensor inside a CUDA graph); or K learners' learning rates (floats,
        or a float32 ``(K,)`` tensor): then ``params``, ``grads`` and the moments are stacked ``(K, ...)`` and each
        learner's slice steps with its own lr (one kernel call per learner; the step counts are shared)
    :param step_counters: a 1-D tensor of which the ``step`` tensors are the elements (views), counted up in one
        operation; without it, one foreach addition (on the CPU, one addition per 0-d tensor)
    """
    if step_counters is None:
        th._foreach_add_(state["step"], 1.0)
    else:
        step_counters.add_(1.0)
    how = dict(
        beta1=group["betas"][0], beta2=group["betas"][1], weight_decay=0.0, eps=group["eps"], amsgrad=False, maximize=False
    )
    if isinstance(lr, numbers.Real) or (isinstance(lr, th.Tensor) and lr.dim() == 0):
        th._fused_adam_(params, grads, state["exp_avg"], state["exp_avg_sq"], [], state["step"], lr=lr, **how)
        return
    # for params, grads and both moments: each learner's slices (views; one unbind per stacked tensor)
    stacked = (params, grads, state["exp_avg"], state["exp_avg_sq"])
    per_learner = [list(zip(*(tensor.unbind(0) for tensor in tensors))) for tensors in stacked]
    for learner, learner_lr in enumerate(lr):
        slices = [list(lists[learner]) for lists in per_learner]
        th._fused_adam_(*slices, [], state["step"], lr=learner_lr, **how)


def unsupported_optimizer(optimizer: th.optim.Optimizer) -> str | None:
    """:return: why ``fused_adam_step_`` cannot run this optimizer's steps, None where it can"""
    if not isinstance(optimizer, th.optim.Adam) or len(optimizer.param_groups) != 1:
        return f"FunctionalUpdate needs one Adam param group per network, got {optimizer}"
    # unwrapped: torch wraps each optimizer class's step (profiling) when the class is first instantiated
    if inspect.unwrap(type(optimizer).step) is not inspect.unwrap(th.optim.Adam.step):
        return f"FunctionalUpdate runs Adam's own step; {type(optimizer).__name__} overrides it"
    if (
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or optimizer_hooks._global_optimizer_pre_hooks
        or optimizer_hooks._global_optimizer_post_hooks
    ):
        return "FunctionalUpdate does not call optimizer step hooks (register_step_pre_hook / register_step_post_hook)"
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"] or group["differentiable"]:
        return "FunctionalUpdate supports Adam without weight_decay, amsgrad, maximize or differentiable"
    return None


def adam_state_(optimizer: th.optim.Optimizer, param: th.Tensor) -> dict[str, th.Tensor]:
    """:return: ``param``'s state in an Adam optimizer, created first where missing, as Adam's first step creates it
    (``step`` a float32 0-d tensor, on the parameter's device for the fused and capturable kernels; zero moments)"""
    param_state = optimizer.state[param]
    if not param_state:
        group = optimizer.param_groups[0]
        on_device = group["fused"] or group["capturable"]
        param_state["step"] = th.zeros((), dtype=th.float32, device=param.device if on_device else "cpu")
        param_state["exp_avg"] = th.zeros_like(param, memory_format=th.preserve_format)
        param_state["exp_avg_sq"] = th.zeros_like(param, memory_format=th.preserve_format)
    return param_state


def unsupported_network(network: nn.Module) -> str | None:
    """
    :return: why ``torch.func`` gradients and ``fused_adam_step_`` would not train ``network`` as its optimizer and
        autograd do (they differentiate every parameter and step each one), None where they would
    """
    reason = unsupported_optimizer(network.optimizer)
    if reason is not None:
        return reason
    params = list(network.parameters())
    if {id(param) for param in network.optimizer.param_groups[0]["params"]} != {id(param) for param in params}:
        return (
            f"FunctionalUpdate trains every parameter of a network; the optimizer of {type(network).__name__} holds other ones"
        )
    if not all(param.requires_grad for param in params):
        return f"FunctionalUpdate trains every parameter; {type(network).__name__} has frozen ones (requires_grad=False)"
    if any(param._backward_hooks or getattr(param, "_post_accumulate_grad_hooks", None) for param in params):
        return f"FunctionalUpdate does not run gradient hooks, which parameters of {type(network).__name__} have"
    if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in network.modules()):
        return (  # one pass over cat(s, s') where the eager update makes two: other batch statistics
            f"FunctionalUpdate evaluates batches of observations and next observations together, which changes the "
            f"statistics of the BatchNorm layers of {type(network).__name__}"
        )
    return None


def one_step_counter(steps: list[th.Tensor], device: th.device) -> tuple[th.Tensor, list[th.Tensor]]:
    """
    Adam's per-parameter ``step`` tensors as the elements of one float32 tensor, as ``Adam(fused=True)`` keeps them,
    so that one addition counts all of them up (``fused_adam_step_(..., step_counters)``).

    :param steps: one 0-d step tensor per parameter
    :param device: the parameters' device
    :return: the counters, shape ``(n_params,)``, and its elements (views) in parameter order
    """
    counters = th.stack([step.to(device=device, dtype=th.float32) for step in steps])
    return counters, list(counters)


#: Dynamo's recompile limit where the update's compiled functions check their guards (and may compile): each
#: combination of shapes and update structure (order, policy extraction, dropout...) in a process is one compilation
#: of each function (not the numeric hyperparameters: ``DeviceScalars``), which a score run over many datasets takes
#: past Dynamo's default (8; past it a ``fullgraph`` function raises).
RECOMPILE_LIMIT = 64


def compiling() -> contextlib.AbstractContextManager:
    """
    Where the update's compiled functions run with their guards checked (and may compile): Dynamo's recompile limit
    at ``RECOMPILE_LIMIT``; no ``GuardSkipping`` skips the guards of its next call (another caller ran them here).
    """
    GuardSkipping.last_caller = None
    name = "recompile_limit" if hasattr(th._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    return th._dynamo.config.patch(**{name: RECOMPILE_LIMIT})


def compile_gradients(function: Callable, device: th.device, compile_mode: str = "default") -> Callable:
    """
    ``torch.compile`` of a pure gradient function of the update, whole (``fullgraph``: a graph break raises).

    ``dynamic=False``: batches keep one shape; a recompilation for other strides (a CUDA graph's static inputs)
    stays static too, instead of a dynamic-shape graph (whose gradients came back with other strides than the
    parameters on an H200, which the fused Adam kernel refuses). On CPU with the ``"default"`` mode, Inductor's C++
    wrapper: one compiled module per graph instead of one per kernel, which halves a first (cold) compilation on 2
    cores (45-51 s to 28 s, ``docs/guide/speed.md``).

    :param device: the device the function runs on
    :param compile_mode: a ``torch.compile`` mode: ``"default"``, ``"max-autotune-no-cudagraphs"``
    """
    cpp_wrapper = device.type == "cpu" and compile_mode == "default"
    how: dict[str, Any] = {"options": {"cpp_wrapper": True}} if cpp_wrapper else {"mode": compile_mode}
    return th.compile(function, fullgraph=True, dynamic=False, **how)


class GuardSkipping:
    """
    Dynamo checks the compiled functions' guards (every module, parameter and input they read) at each call:
    0.5-1 ms per update on a shared 2-core CPU (``docs/guide/speed.md``). Once a call of the same input signature
    (shapes, strides, dtypes and devices of the batch, the networks' training flags) passed them, the next one
    reads the same objects: ``stance`` runs it under ``skip_guard_eval_unsafe``, which checks only the guards that
    told the compiled versions apart so far. Not where a user set another stance, not on the first call after
    ``check_again`` (each training call starts with it: global state such as autocast may differ from the last
    one), and not after another caller ran the compiled functions: models of the same shapes share them, and a
    skip-mode call tries first the version the last caller used, which may differ from its own in a guard that
    skip mode does not check. Not thread-safe (neither is the stance, which is global).

    :param networks: the networks the compiled functions run
    """

    #: the instance whose call last checked the guards (class-wide: compiled functions are shared between models), by
    #: weak reference: it holds every module of its model, which a deleted model's networks and Adam state would
    #: outlive
    last_caller: "weakref.ref[GuardSkipping] | None" = None

    def __init__(self, networks: Iterable[nn.Module]):
        networks = list(networks)
        self.modules = [module for network in networks for module in network.modules()]
        self.constants = constant_attributes(networks)
        #: the input signature of the last call that checked the guards (None: the next call checks them)
        self.signature: tuple | None = None

    @staticmethod
    def stance_of(guards: "GuardSkipping | None", batch: Batch) -> contextlib.AbstractContextManager:
        """``guards.stance(batch)``, or nothing to change where ``guards`` is None (not compiled)."""
        return contextlib.nullcontext() if guards is None else guards.stance(batch)

    def may_skip(self, batch: Batch) -> bool:
        """:return: whether a call on ``batch`` may skip the guards"""
        stance = getattr(th._dynamo.eval_frame, "_stance", None)
        if stance is None or (stance.stance, stance.backend) != ("default", None):
            return False
        last = GuardSkipping.last_caller
        return last is not None and last() is self and _input_signature(batch, self.modules, self.constants) == self.signature

    def stance(self, batch: Batch) -> contextlib.AbstractContextManager:
        """:return: what to run the compiled functions in on ``batch``: guards skipped, or checked (``compiling``:
        then remembered as the last checked call)"""
        if self.may_skip(batch):
            return _skipping_guards()
        checked = compiling()
        self.signature = _input_signature(batch, self.modules, self.constants)
        GuardSkipping.last_caller = weakref.ref(self)
        return checked

    def check_again(self) -> None:
        """Have the next call check Dynamo's guards, whatever its inputs."""
        self.signature = None


class DeviceScalars:
    """
    Named numbers as device tensors: the learning rates, which Adam steps inside a CUDA graph read, and the numeric
    hyperparameters (``update.NUMERIC_SETTINGS``), which compiled functions and CUDA graphs take as inputs. A Python
    float would be frozen at a graph's capture, and a constant of compiled code: compiled again for every value
    (a sweep). ``fill`` copies the current values in, an in-place fill each (no host sync), for those that changed
    since the last fill only (one kernel launch fewer per constant value and update).

    :param names: one tensor each
    :param device: the parameters' device
    :param dtype: the tensors' dtype (the learning rates of the fused Adam kernel: float32)
    :param n_learners: None: 0-d tensors, one value each; K: tensors of shape ``(K,)``, one value per learner
    """

    def __init__(self, names: Iterable[str], device: th.device, dtype: th.dtype = th.float32, n_learners: int | None = None):
        shape = () if n_learners is None else (n_learners,)
        self.tensors = {name: th.zeros(shape, device=device, dtype=dtype) for name in names}
        self._filled: dict[str, Any] = {}  # what fill last wrote

    def __getitem__(self, name: str) -> th.Tensor:
        return self.tensors[name]

    def fill(self, values: dict[str, Any]) -> None:
        """
        :param values: the current value of each name: a number (a float, a NumPy or 0-d tensor scalar...); K of
            them with ``n_learners`` (an element fill each that changed: a copy from host memory would sync)
        """
        for name, value in values.items():
            tensor = self.tensors[name]
            value = tuple(float(item) for item in value) if tensor.dim() else float(value)
            filled = self._filled.get(name)
            if filled == value:
                continue
            if tensor.dim() == 0:
                tensor.fill_(value)
            else:
                for index, item in enumerate(value):
                    if filled is None or filled[index] != item:
                        tensor[index].fill_(item)
            self._filled[name] = value


class ActorObjectiveInputs(nn.Module):
    """
    Calls what the actor objective takes from the actor as ``forward``, so that ``torch.func.functional_call`` can
    run it with given weights: ``actor.log_prob`` (AWR) or ``actor.mean_and_log_prob`` (DDPG+BC).
    """

    def __init__(self, actor: nn.Module, policy_extraction: str):
        super().__init__()
        self.actor = actor
        self.method = update.actor_inputs(policy_extraction)

    def forward(self, obs: Any, actions: th.Tensor) -> Any:
        return getattr(self.actor, self.method)(obs, actions)


class FunctionalUpdate:
    """
    One IQL update (``sb3_iql.iql.update``'s steps) as two pure-tensor functions that ``torch.compile(fullgraph=True)``
    captures whole:

    1. ``value_grads``: the value targets, the value loss and its gradients;
    2. (eager) fused Adam step of V;
    3. ``policy_grads``: the policy targets with the new V (V on s and s' in one pass; in the joint order V(s')
       is step 1's), the actor and critic losses and their gradients, and the metrics;
    4. (eager) fused Adam steps of the actor and the critics, and the Polyak update.

    Gradients come from ``torch.func.grad_and_value`` (``loss.backward()`` would break the graph). The Adam steps
    call ``torch._fused_adam_`` directly (what ``Adam(fused=True).step()`` runs, without its ~0.3 ms of Python
    per call) on the networks' own optimizer state, so saving, loading and the eager update keep working; the
    learning rates are read from the optimizers' param groups at every call (``IQL._set_learning_rates``). The
    numeric hyperparameters are device tensors (``DeviceScalars``): ``set_settings`` changes them without compiling
    or capturing again. Inside the compiled graph Inductor's own foreach Adam was slower on CPU than the fused kernel.

    Only for Adam without weight decay, amsgrad, maximize or differentiable (IQL's defaults).

    :param value_net: V(s), with its ``optimizer``
    :param actor: the policy, with ``log_prob(obs, actions)`` (AWR) or ``mean_and_log_prob`` (the DDPG extractions)
        and its ``optimizer``
    :param critic: the Q ensemble, with its ``optimizer``
    :param critic_target: the target Q ensemble (Polyak-averaged towards ``critic``)
    :param settings: the update's hyperparameters (the numeric ones may change later: ``set_settings``)
    :param tau: Polyak coefficient
    :param compile_mode: None: no compilation (eager ``torch.func``, for tests and CUDA graph capture), or a
        ``torch.compile`` mode: ``"default"``, ``"max-autotune-no-cudagraphs"``
    :param tensor_lr: pass the learning rates to the fused kernel as device tensors (needed inside a CUDA graph,
        where a float would be frozen at capture)
    """

    def __init__(
        self,
        value_net: nn.Module,
        actor: nn.Module,
        critic: nn.Module,
        critic_target: nn.Module,
        settings: UpdateSettings,
        tau: float,
        compile_mode: str | None = "default",
        tensor_lr: bool = False,
    ):
        self.tau = tau
        self.critic_target = critic_target
        self.critic_params = list(critic.parameters())
        self.critic_target_params = list(critic_target.parameters())
        self.networks = {"value": value_net, "actor": actor, "critic": critic}
        self.modules = {"value": value_net, "actor": ActorObjectiveInputs(actor, settings.policy_extraction), "critic": critic}
        self.states: dict[str, dict[str, list[th.Tensor]]] = {}
        self.step_counters: dict[str, th.Tensor] = {}
        self.params: dict[str, dict[str, th.Tensor]] = {}
        if len({id(param) for network in self.networks.values() for param in network.parameters()}) != sum(
            len(list(network.parameters())) for network in self.networks.values()
        ):
            raise ValueError(
                "The networks share parameters (share_features_extractor): FunctionalUpdate runs separate "
                "networks only; use compile_update=False"
            )
        for name, network in self.networks.items():
            reason = unsupported_network(network)
            if reason is not None:
                raise ValueError(f"{reason}: use compile_update=False")
            prefix = "actor." if name == "actor" else ""
            self.params[name] = {prefix + key: value for key, value in network.named_parameters()}
        self._state_owners: dict[str, dict] = {}
        for name in self.networks:
            self._state_lists(name)
        self.tensor_lr = tensor_lr
        device = self.critic_params[0].device
        self.lrs = DeviceScalars(self.networks, device)
        #: the numeric hyperparameters, which the gradient functions read from ``tensor_settings``
        self.numbers = DeviceScalars(update.NUMERIC_SETTINGS, device, self.critic_params[0].dtype)
        self.tensor_settings = settings.with_numbers(self.numbers.tensors)
        self.numbers.fill(settings.numbers())
        self.settings = settings
        self.compile_mode = compile_mode
        self.value_grads, self.policy_grads = self._value_grads, self._policy_grads
        #: skips Dynamo's guards where they passed for the same inputs (None: not compiled)
        self.guards: GuardSkipping | None = None
        if compile_mode is not None:
            self.value_grads = compile_gradients(self._value_grads, device, compile_mode)
            self.policy_grads = compile_gradients(self._policy_grads, device, compile_mode)
            self.guards = GuardSkipping([*self.networks.values(), critic_target])

    def set_settings(self, settings: UpdateSettings) -> None:
        """
        Take other numeric hyperparameters (``DeviceScalars.fill``: only those that changed).

        :raises ValueError: ``settings`` differ in a structural one (the update order, the policy extraction)
        """
        if not self.settings.same_structure(settings):
            raise ValueError(f"{settings} need another update than {self.settings}: create a new FunctionalUpdate")
        self.numbers.fill(settings.numbers())
        self.settings = settings

    def _state_lists(self, name: str) -> dict[str, list[th.Tensor]]:
        """
        The optimizer state tensors of network ``name``, as lists in parameter order (created as Adam's first step
        would, if missing); collected again when the optimizer's state was replaced (``load_state_dict``). The
        ``step`` tensors become the elements of one float32 tensor on the parameters' device (``step_counters``),
        as ``Adam(fused=True)`` keeps them, so one operation counts all of them up.
        """
        optimizer = self.networks[name].optimizer
        if self._state_owners.get(name) is optimizer.state:
            return self.states[name]
        state: dict[str, list[th.Tensor]] = {"step": [], "exp_avg": [], "exp_avg_sq": []}
        for param in self.params[name].values():
            param_state = adam_state_(optimizer, param)
            for key in state:
                state[key].append(param_state[key])
        device = next(iter(self.params[name].values())).device
        counters, state["step"] = one_step_counter(state["step"], device)
        for param, step in zip(self.params[name].values(), state["step"]):
            optimizer.state[param]["step"] = step
        self.step_counters[name] = counters
        self.states[name] = state
        self._state_owners[name] = optimizer.state
        return state

    def state_tensors(self) -> list[th.Tensor]:
        """Every tensor an update changes: the parameters, the target critics' and the Adam states."""
        tensors = [*self.critic_target_params]
        for name in self.networks:
            tensors += [*self.params[name].values(), *(t for ts in self._state_lists(name).values() for t in ts)]
        return tensors

    def state_replaced(self) -> bool:
        """Whether an optimizer's state was replaced since the state lists were collected."""
        return any(self._state_owners[name] is not network.optimizer.state for name, network in self.networks.items())

    def optimizers_unsupported(self) -> bool:
        """Whether a network or its optimizer was changed since into one the functional update cannot train as
        autograd and the optimizer would (weight decay set on it, parameters frozen, a gradient hook...)."""
        return any(unsupported_network(network) is not None for network in self.networks.values())

    def _adam_(self, name: str, grads: list[th.Tensor]) -> None:
        """``Adam(fused=True).step()`` of network ``name`` with the given gradients, in place."""
        group = self.networks[name].optimizer.param_groups[0]
        lr = self.lrs[name] if self.tensor_lr else group["lr"]
        state = self._state_lists(name)
        fused_adam_step_(list(self.params[name].values()), grads, state, group, lr, self.step_counters[name])

    def _call(self, name: str, params: dict[str, th.Tensor]) -> Any:
        """:return: network ``name`` as a function of its inputs, with the given parameters"""
        return lambda *inputs: th.func.functional_call(self.modules[name], params, inputs)

    def _value_grads(self, batch: Batch) -> tuple[list[th.Tensor], th.Tensor, th.Tensor, update.ValueTargets]:
        """:return: gradients of the value loss (in parameter order), value loss, V(s), value targets"""
        grads, value_loss, values, targets = value_gradients(
            self.critic_target,
            self.networks["value"],
            functools.partial(self._call, "value"),
            self.params["value"],
            batch,
            self.tensor_settings,
        )
        return _as_parameters(grads), value_loss, values, targets

    def _policy_grads(
        self, batch: Batch, value_targets: update.ValueTargets, value_loss: th.Tensor, values: th.Tensor
    ) -> tuple[list[th.Tensor], list[th.Tensor], th.Tensor]:
        """:return: actor gradients, critic gradients, metrics of ``METRIC_NAMES``"""
        actor_grads, critic_grads, metrics = policy_gradients(
            self.networks["value"],
            functools.partial(self._call, "actor"),
            functools.partial(self._call, "critic"),
            self.params["actor"],
            self.params["critic"],
            batch,
            value_targets,
            value_loss,
            values,
            self.tensor_settings,
        )
        return _as_parameters(actor_grads), _as_parameters(critic_grads), metrics

    def check_guards_again(self) -> None:
        """Have the next call check Dynamo's guards, whatever its inputs (``GuardSkipping``)."""
        if self.guards is not None:
            self.guards.check_again()

    def step(self, batch: Batch) -> th.Tensor:
        """One IQL update; returns the metrics of ``METRIC_NAMES``."""
        # torch.func.grad still differentiates inside no_grad; outside, no autograd graph is kept
        with th.no_grad(), GuardSkipping.stance_of(self.guards, batch):
            value_grads, value_loss, values, targets = self.value_grads(batch)
            self._adam_("value", value_grads)
            actor_grads, critic_grads, metrics = self.policy_grads(batch, targets, value_loss, values)
            self._adam_("actor", actor_grads)
            self._adam_("critic", critic_grads)
            th._foreach_lerp_(self.critic_target_params, self.critic_params, self.tau)
        return metrics

    def warm_up(self, replay_data: Any) -> None:
        """
        Run (and so compile) both gradient functions on a batch without applying any step: they are pure, so
        nothing changes; a compilation that fails raises here, before any update.
        """
        batch = Batch.from_replay_data(replay_data)
        with th.no_grad(), compiling():
            _, value_loss, values, targets = self.value_grads(batch)
            self.policy_grads(batch, targets, value_loss, values)

    def set_learning_rates(self) -> None:
        """With ``tensor_lr``: copy the optimizers' current lr into the lr tensors (``DeviceScalars.fill``)."""
        if self.tensor_lr:
            self.lrs.fill({name: network.optimizer.param_groups[0]["lr"] for name, network in self.networks.items()})

    def __call__(self, replay_data: Any) -> th.Tensor:
        """Drop-in for ``IQL._update(replay_data)``."""
        self.set_learning_rates()
        return self.step(Batch.from_replay_data(replay_data))


#: A network as a function of its parameters: ``parameters -> (inputs -> outputs)``
NetworkOf = Callable[[dict[str, th.Tensor]], Callable[..., Any]]


def value_gradients(
    critic_target: Callable[..., Any],
    value: Callable[..., Any],
    value_of: NetworkOf,
    value_params: dict[str, th.Tensor],
    batch: Batch,
    settings: UpdateSettings,
) -> tuple[dict[str, th.Tensor], th.Tensor, th.Tensor, update.ValueTargets]:
    """
    The value step's gradients (``torch.func``), for ``FunctionalUpdate`` and ``StackedLearners`` (vmapped): the
    value targets, then the gradients of the value loss with respect to ``value_params``.

    :param critic_target: the target Q ensemble, ``(obs, actions) -> (n_critics, batch, ...)``
    :param value: V with its current parameters (the targets' V(s') of the joint order)
    :param value_of: V as a function of its parameters
    :return: gradients (by parameter name), value loss, V(s) ``(batch,)``, value targets
    """
    targets = update.value_targets(critic_target, value, batch, settings)

    def loss_fn(params: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        return update.value_objective(value_of(params), batch, targets, settings)

    grads, (value_loss, values) = th.func.grad_and_value(loss_fn, has_aux=True)(value_params)
    return grads, value_loss, values, targets


def policy_gradients(
    value: Callable[..., Any],
    actor_of: NetworkOf,
    critic_of: NetworkOf,
    actor_params: dict[str, th.Tensor],
    critic_params: dict[str, th.Tensor],
    batch: Batch,
    value_targets: update.ValueTargets,
    value_loss: th.Tensor,
    values: th.Tensor,
    settings: UpdateSettings,
) -> tuple[dict[str, th.Tensor], dict[str, th.Tensor], th.Tensor]:
    """
    The policy step's gradients (``torch.func``), for ``FunctionalUpdate`` and ``StackedLearners`` (vmapped): the
    policy targets with V after its step (V(s) and V(s') in one pass where both are needed), then the gradients of
    the actor loss and of the critic loss (the actor's read the critics before their step).

    :param value: V after its step
    :param actor_of: the actor's objective inputs (``ActorObjectiveInputs``) as a function of its parameters
    :param critic_of: the Q ensemble as a function of its parameters
    :param value_targets: ``value_gradients``' targets
    :param value_loss: the value loss (for the metrics)
    :param values: V(s) before its step ``(batch,)`` (for the metrics)
    :return: actor gradients, critic gradients (by parameter name), metrics of ``METRIC_NAMES``
    """
    batch_size = batch.actions.shape[0]

    def both_values(observations: Any, next_observations: Any) -> tuple[th.Tensor, th.Tensor]:
        values = value(_cat_obs(observations, next_observations))
        return values[:batch_size], values[batch_size:]

    targets = update.policy_targets(value, batch, value_targets, settings, both_values)
    critic = critic_of(critic_params)

    def actor_loss_fn(params: dict[str, th.Tensor]) -> th.Tensor:
        return update.policy_objective(actor_of(params), critic, batch, targets, settings)

    def critic_loss_fn(params: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        return update.critic_objective(critic_of(params), batch, targets)

    actor_grads, actor_loss = th.func.grad_and_value(actor_loss_fn)(actor_params)
    critic_grads, (critic_loss, current_q) = th.func.grad_and_value(critic_loss_fn, has_aux=True)(critic_params)
    metrics = update.update_metrics(value_loss, actor_loss, critic_loss, values, current_q, targets)
    return actor_grads, critic_grads, metrics


@contextlib.contextmanager
def _skipping_guards() -> Iterator[None]:
    """Dynamo's ``skip_guard_eval_unsafe`` stance, from entering the block (``set_stance`` itself sets it at once)."""
    with th.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        yield


def _input_signature(batch: Batch, modules: Sequence[nn.Module], constants: Sequence[tuple[nn.Module, str]]) -> tuple:
    """
    :return: what tells two calls of the compiled functions apart besides the objects they read: the batch's
        tensors' layout, the networks' training flags and their modules' constants (``constant_attributes``: a
        dropout rate, an actor's log-std bounds, which a callback may change)
    """
    tensors = th.utils._pytree.tree_leaves(batch)
    return (
        tuple((tensor.shape, tensor.stride(), tensor.dtype, tensor.device) for tensor in tensors),
        tuple(module.training for module in modules),
        constant_values(constants),
    )


_CONSTANT_TYPES = (bool, int, float, str, type(None))


def _is_constant(value: Any) -> bool:
    return isinstance(value, _CONSTANT_TYPES) or (isinstance(value, tuple) and all(map(_is_constant, value)))


def constant_attributes(networks: Iterable[nn.Module]) -> list[tuple[nn.Module, str]]:
    """
    :return: ``(module, name)`` of each public attribute of the networks' modules (``training`` aside) whose value
        is a number, string, None or tuple of them: what compiled code reads as a constant and a CUDA graph freezes
        (a dropout rate, an actor's log-std bounds or parametrisation), which a user or a callback may change
    """
    return [
        (module, name)
        for network in networks
        for module in network.modules()
        for name, value in vars(module).items()
        if not name.startswith("_") and name != "training" and _is_constant(value)
    ]


def constant_values(constants: Sequence[tuple[nn.Module, str]]) -> tuple:
    """:return: the current values of ``constant_attributes`` (3.7 us for the 49 of a default MLP policy's networks)"""
    return tuple([getattr(module, name) for module, name in constants])


def _as_parameters(grads: dict[str, th.Tensor]) -> list[th.Tensor]:
    """The gradients, contiguous as the parameters are (the fused Adam kernel needs equal strides; no-op if so)."""
    return [grad.contiguous() for grad in grads.values()]


def _cat_obs(first: Any, second: Any) -> Any:
    if isinstance(first, dict):
        return {key: th.cat([first[key], second[key]]) for key in first}
    return th.cat([first, second])


class CudaGraphUpdate:
    """
    CUDA only: ``FunctionalUpdate.step`` (eager or compiled) captured once in a ``torch.cuda.CUDAGraph`` and
    replayed each update (one launch for the whole update). Each call copies the sampled batch into the graph's
    static input tensors; the returned metrics tensor is the graph's static output (read it before the next call).
    The capture needs warm-up updates first: the networks, target critics and Adam states are restored after them,
    so that the capture leaves no trace.

    :param functional: the update to capture, built with ``tensor_lr=True``, networks on CUDA (eager, or compiled:
        the warm-up updates compile it)
    :param example: a batch from the replay buffer (sets the static shapes)
    """

    def __init__(self, functional: FunctionalUpdate, example: Any, n_warmup: int = 3):
        if not functional.tensor_lr:
            raise ValueError("CudaGraphUpdate captures a FunctionalUpdate(tensor_lr=True)")
        self.functional = functional
        self.n_warmup = n_warmup
        self.static = Batch(*(_clone_obs(x) for x in Batch.from_replay_data(example)))
        self.functional.set_learning_rates()
        self.graph, self.metrics = capture_without_trace(functional.step, self.static, functional.state_tensors(), n_warmup)
        self.constants = constant_attributes(functional.networks.values())
        #: the networks' constants (``constant_attributes``: dropout rates...) the graph's kernels were captured with
        self.captured_constants = constant_values(self.constants)
        #: ``sampled_step``'s graph, or None before the first call
        self._sampled: SampledGraph | None = None
        #: set by the caller when ``sampled_step`` could not capture the sampling here (not tried again)
        self.sampling_failed = False

    @property
    def settings(self) -> UpdateSettings:
        return self.functional.settings

    def set_settings(self, settings: UpdateSettings) -> None:
        """Other numeric hyperparameters: the graphs read them from device tensors (``FunctionalUpdate.set_settings``)."""
        self.functional.set_settings(settings)

    @property
    def tau(self) -> float:
        return self.functional.tau

    def state_replaced(self) -> bool:
        """Whether an optimizer's state was replaced since the capture (the graph would update stale tensors)."""
        return self.functional.state_replaced()

    def optimizers_unsupported(self) -> bool:
        """``FunctionalUpdate.optimizers_unsupported`` of the captured update."""
        return self.functional.optimizers_unsupported()

    def constants_changed(self) -> bool:
        """Whether a network's constant (a dropout rate...) was changed since the capture (the graph replays the
        captured one)."""
        return constant_values(self.constants) != self.captured_constants

    def __call__(self, replay_data: Any) -> th.Tensor:
        self._check_state()
        self.functional.set_learning_rates()
        for static, value in zip(self.static, Batch.from_replay_data(replay_data)):
            _copy_obs(static, value)
        self.graph.replay()
        return self.metrics

    def sampled_step(
        self, sample: Callable[[], Any], sampling: Callable[[], tuple[Hashable, th.Generator | None] | None]
    ) -> Callable[[], th.Tensor]:
        """
        The update with its sampling inside the graph (``SampledGraph``): a zero-argument step whose replay draws a
        batch with ``sample()`` and trains on it, the batch the eager update would get. Captured now (a capture
        that fails raises here, before any update), and again before any update where ``sampling()``'s key changed.

        :param sample: draws a batch (SB3 replay samples) with device operations only, the same way at every call
            (what may differ between calls belongs in the key)
        :param sampling: read before every update: a key of what ``sample`` reads that a graph freezes (the
            buffer's storage and size, the batch size...) and the CUDA generator ``sample`` draws from (None: the
            device's default one); None where ``sample`` cannot be captured (that update samples outside the graph)
        """
        first = sampling()
        if first is None:
            raise ValueError("sampled_step needs a sampling that a CUDA graph can capture")
        functional = self.functional
        if self._sampled is None:  # kept across calls: captured again only for another key

            def update_on_a_sample() -> th.Tensor:
                return functional.step(Batch.from_replay_data(sample()))

            self._sampled = SampledGraph(update_on_a_sample, functional.state_tensors(), self.n_warmup)
        functional.set_learning_rates()
        key, generator = first
        self._sampled.capture_for(key, [generator])

        def sampled_update() -> th.Tensor:
            current = sampling()
            if current is None:
                return self(sample())
            self._check_state()
            functional.set_learning_rates()
            key, generator = current
            return self._sampled.replay(key, [generator])  # type: ignore[union-attr]

        return sampled_update

    def _check_state(self) -> None:
        if self.functional.state_replaced():
            raise RuntimeError("The optimizers' state was replaced (loaded) after the capture: create a new CudaGraphUpdate")


class SampledGraph:
    """
    CUDA only: ``sampled_update()``, sampling included, captured in one CUDA graph: nothing is copied into static
    inputs, and the host only launches the graph (with the fills of its generators' seeds and offsets that each
    replay makes). The generators are registered with the graph, so a replay draws what the eager calls would
    draw and advances each generator as they would. What the sampling freezes in the graph (the buffers' storage
    and size, the batch size...) is a key given at each replay: the graph is captured again when it changes.

    :param sampled_update: samples and trains (device operations only), returns the metrics tensor
    :param state: the tensors an update changes (restored after the capture's warm-up updates)
    :param n_warmup: warm-up updates before a capture
    """

    def __init__(self, sampled_update: Callable[[], th.Tensor], state: list[th.Tensor], n_warmup: int = 3):
        self.sampled_update = sampled_update
        self.state = state
        self.n_warmup = n_warmup
        self.key: Hashable = None
        self._graph: tuple[th.cuda.CUDAGraph, th.Tensor] | None = None

    def capture_for(self, key: Hashable, generators: Sequence[th.Generator | None]) -> None:
        """Capture the graph for ``key`` (unless done): ``generators`` are those the sampling draws from (None:
        the device's default one)."""
        if self._graph is not None and self.key == key:
            return
        self._graph = None  # frees the old graph before capturing the new one
        unique = list({id(generator): generator for generator in generators if generator is not None}.values())
        self._graph = capture_without_trace(lambda _: self.sampled_update(), None, self.state, self.n_warmup, unique)
        self.key = key

    def replay(self, key: Hashable, generators: Sequence[th.Generator | None]) -> th.Tensor:
        """One update (captured first where ``key`` is new); returns the graph's static metrics (read them before
        the next replay)."""
        self.capture_for(key, generators)
        graph, metrics = self._graph  # type: ignore[misc]
        graph.replay()
        return metrics


def capture_without_trace(
    step: Callable[[Any], th.Tensor],
    static: Any,
    state: list[th.Tensor],
    n_warmup: int,
    generators: Sequence[th.Generator] = (),
) -> tuple[th.cuda.CUDAGraph, th.Tensor]:
    """
    Capture ``step(static)`` in a CUDA graph after ``n_warmup`` warm-up calls on a side stream (as a capture needs),
    then restore ``state``, the tensors a step changes, and the random generators' states, so that the capture
    leaves no trace.

    :param generators: the CUDA generators ``step`` draws from besides the device's default one (registered with
        the graph, so that each replay draws from their current states)
    :return: the graph and ``step``'s static output
    """
    for device in (state[0].device, *(generator.device for generator in generators)):
        if device.type != "cuda":
            raise ValueError(f"A CUDA graph captures work on a CUDA device, not on {device}")
    saved = [tensor.clone() for tensor in state]
    every_generator = [th.cuda.default_generators[th.cuda.current_device()], *generators]
    saved_generators = [generator.get_state() for generator in every_generator]
    graph = th.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    stream = th.cuda.current_stream()
    try:
        side_stream = th.cuda.Stream()
        side_stream.wait_stream(th.cuda.current_stream())
        with th.cuda.stream(side_stream):
            for _ in range(n_warmup):
                step(static)
        th.cuda.current_stream().wait_stream(side_stream)
        with th.cuda.graph(graph):
            output = step(static)
    finally:  # also where the capture fails: training goes on without it, as if it had not been tried
        th.cuda.set_stream(stream)  # a capture that fails leaves its own stream current
        with th.no_grad():
            for tensor, value in zip(state, saved):
                tensor.copy_(value)
        for generator, generator_state in zip(every_generator, saved_generators):
            generator.set_state(generator_state)
    return graph, output


def _clone_obs(value: Any) -> Any:
    """A copy with the same strides (a batch's columns are strided views of the buffer's storage): a compiled
    update then runs on the static inputs as compiled for sampled batches, without recompiling."""
    if isinstance(value, dict):
        return {key: _clone_obs(item) for key, item in value.items()}
    return th.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device).copy_(value)


def _copy_obs(static: Any, value: Any) -> None:
    if isinstance(static, dict):
        for key in static:
            static[key].copy_(value[key])
    else:
        static.copy_(value)
