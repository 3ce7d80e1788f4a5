"""Implicit Q-Learning (Kostrikov, Nair and Levine, ICLR 2022) as an SB3 off-policy algorithm."""

import math
import numbers
import warnings
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import update_learning_rate

from sb3_iql.common.offline import DEFAULT_OFFLINE_STEPS, OfflineAlgorithm
from sb3_iql.data.minari_loader import DatasetLike
from sb3_iql.data.rewards import RewardTransformLike
from sb3_iql.iql import update
from sb3_iql.iql.fast_update import CudaGraphUpdate, FunctionalUpdate, constant_attributes, constant_values
from sb3_iql.iql.policies import BaseActor, CnnPolicy, EnsembleCritic, IQLPolicy, MlpPolicy, MultiInputPolicy, ValueNetwork
from sb3_iql.iql.update import METRIC_NAMES, POLICY_EXTRACTIONS, Batch, PolicyExtraction, UpdateSettings
from sb3_iql.presets import check_preset_keys, preset_arguments, with_overrides

SelfIQL = TypeVar("SelfIQL", bound="IQL")
UpdateOrder = Literal["sequential", "joint"]
UPDATE_ORDERS: tuple[UpdateOrder, ...] = ("sequential", "joint")

#: Dataset actions are clipped to +-(1 - ACTION_CLIP_EPS) so their log-likelihood stays finite at the bounds.
ACTION_CLIP_EPS = 1e-5
#: ``compile_update="auto"`` compiles the update for ``learn_offline`` calls of at least this many updates: there
#: the ~1.4x faster compiled steps repay a CPU compilation of 25-100 s at least twice (``docs/guide/speed.md``).
AUTO_COMPILE_UPDATES = 50_000
#: On CUDA, ``"auto"`` captures the (eager) update in a CUDA graph for calls of at least this many updates: the
#: capture takes well under a second and the graph ran 18x the eager update on an H200.
AUTO_GRAPH_UPDATES = 1_000
#: What ``"auto"`` runs: None (the eager update), ``"graph"`` (the eager update in a CUDA graph) or ``"compile"``
#: (compiled; on CUDA, in a CUDA graph).
AutoMode = Literal["graph", "compile"] | None


def _is_count(value: Any, least: int) -> bool:
    """:return: whether ``value`` is an integer (not a bool) of at least ``least``"""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


#: The constructor's checks of its hyperparameters, by argument name: a test (False for NaN, by comparison) and
#: the rule that an error states (``offline_steps``: ``checked_count``, in ``OfflineAlgorithm``).
HYPERPARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "expectile": (lambda value: 0 < value < 1, "in (0, 1)"),
    "beta": (lambda value: 0 <= value < math.inf, "finite and >= 0 (0: behaviour cloning)"),
    "max_weight": (lambda value: value > 0, "> 0 (inf: no clipping of the AWR weights)"),
    "bc_weight": (lambda value: 0 <= value < math.inf, "finite and >= 0"),
    "dropout": (lambda value: value is None or 0 <= value < 1, "None or in [0, 1)"),
    "tau": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "gamma": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "batch_size": (lambda value: _is_count(value, 1), "an integer >= 1"),
    "actor_lr_schedule": (lambda value: value in ("cosine", "constant"), "'cosine' or 'constant'"),
    "critic_lr_schedule": (lambda value: value in ("cosine", "constant"), "'cosine' or 'constant'"),
    "update_order": (lambda value: value in UPDATE_ORDERS, f"one of {UPDATE_ORDERS}"),
    "compile_update": (lambda value: value in (False, True, "auto", "cudagraph"), "False, True, 'auto' or 'cudagraph'"),
    "policy_extraction": (lambda value: value in POLICY_EXTRACTIONS, f"one of {POLICY_EXTRACTIONS}"),
}


def auto_mode(n_updates: int, device_type: str) -> AutoMode:
    """:return: what ``compile_update="auto"`` runs for a ``learn_offline`` call of ``n_updates`` on that device"""
    if device_type not in ("cpu", "cuda"):
        return None
    if n_updates >= AUTO_COMPILE_UPDATES:
        return "compile"
    return "graph" if device_type == "cuda" and n_updates >= AUTO_GRAPH_UPDATES else None


class IQL(OfflineAlgorithm):
    """
    Implicit Q-Learning: expectile value regression, twin Q regression towards ``r + gamma * V(s')`` and
    advantage-weighted regression of the policy, all on dataset actions only.
    Paper: https://arxiv.org/abs/2110.06169. Defaults follow the reference implementation (MuJoCo settings), but
    for the rewards, which are left as stored: the reference's MuJoCo scaling is ``reward_transform="locomotion"``,
    which ``IQL.from_preset`` sets with the rest of a domain's settings.

    Box actions get a Gaussian actor and critics on ``(s, a)``; ``Discrete`` actions the same algorithm with critics
    that have one output per action (Q of the dataset action picked) and a categorical actor (AWR on the
    log-softmax of the dataset action; deterministic action: the argmax; online exploration: sampling).

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"`` (uint8 images, NatureCNN), ``"MultiInputPolicy"`` (Dict) or a
        policy class; with Dict observations ``"MlpPolicy"`` runs the same MLPs on the concatenated parts
    :param env: environment for online fine-tuning and evaluation (gymnasium env, VecEnv or id); with
        ``offline_dataset`` it may be None: the dataset's evaluation environment is then recovered
    :param offline_dataset: Minari dataset id, ``minari.MinariDataset``, or a list of them; every transition is
        loaded into the replay buffer
    :param learning_rate: learning rate of the three Adam optimizers, or an SB3 schedule of the progress remaining
        (1 to 0 over ``offline_steps`` offline; online, SB3's ``1 - num_timesteps / total_timesteps`` of the
        ``learn()`` call, whose steps include the offline updates that call runs first); see also
        ``actor_lr_schedule``
    :param buffer_size: replay buffer capacity in transitions (default: the ``offline_dataset``'s size + 1,000,000;
        1,000,000 in all without one, data added later with ``add_transitions`` included)
    :param learning_starts: environment steps of uniformly random actions before learning online (0: act with
        the learned policy from the first step)
    :param batch_size: minibatch size of each gradient step
    :param tau: Polyak coefficient of the target critics (``Qt <- tau * Q + (1 - tau) * Qt``)
    :param gamma: discount factor
    :param train_freq: online: update the model every ``train_freq`` steps (int or tuple (n, "step"/"episode"))
    :param gradient_steps: online: gradient steps after each rollout (-1: as many as environment steps)
    :param expectile: tau of the expectile value loss, in (0, 1); 0.7 locomotion, 0.9 AntMaze
    :param beta: inverse temperature of the advantage weights; 0 is behaviour cloning; 3.0 locomotion, 10 AntMaze
    :param max_weight: clip of the advantage weights exp(beta * A)
    :param policy_extraction: ``"awr"`` (IQL's advantage-weighted regression) or ``"ddpg_bc"``: the actor follows
        the critic's action gradient at its mean action, plus ``bc_weight`` times the log-likelihood of the dataset
        actions (Park et al., 2024; ``sb3_iql/iql/losses.py``); ``"ddpg_awr"``: the same with the log-likelihood
        weighted by the AWR weights; continuous actions only
    :param bc_weight: weight of the log-likelihood term of the DDPG variants (unused by ``"awr"``)
    :param dropout: dropout probability in the actor's hidden layers (None: none; 0.1 for Kitchen and Adroit)
    :param reward_transform: None, ``"antmaze"`` (r - 1), ``"locomotion"`` (r / return range * 1000) or a
        callable on an array of rewards; applied to offline and online rewards
    :param offline_steps: offline gradient steps, run by ``learn()`` before online steps when none have run yet
        (0 to skip; None: 1M, the paper's budget); also the horizon of the actor's cosine learning rate decay
    :param actor_lr_schedule: ``"cosine"`` (decay to 0 over ``offline_steps``; online, the full ``learning_rate``
        again, constant) or ``"constant"`` (the paper's fine-tuning keeps it constant throughout)
    :param critic_lr_schedule: the same for the critics and the value net (``"constant"``: the paper's)
    :param update_order: ``"sequential"`` (reference): V, then actor, then Q with the new V(s');
        ``"joint"`` (d3rlpy): Q and V step together, the Q target using V(s') from before V's step, then the actor
    :param compile_update: ``"auto"``: compiled (as True) from the first ``learn_offline`` call of at least
        ``AUTO_COMPILE_UPDATES`` updates on, where it pays, eager before (and wherever compilation is unavailable:
        optimizers other than Adam, a failed compilation, which warns); False: the eager update (``_update``); True:
        the same update compiled with ``torch.compile`` (CPU or CUDA; 25-100 s of compilation, then ~1.4x faster on
        CPU), without a CUDA graph; ``"cudagraph"``: captured in a CUDA graph, one launch per update (CUDA only). On
        CUDA, ``"auto"`` also captures the update in a CUDA graph, the eager one from calls of
        ``AUTO_GRAPH_UPDATES`` updates on and the compiled one from ``AUTO_COMPILE_UPDATES`` on: on a GPU it is the
        fast path (an H200 measured ~8x ``True``'s updates/s, ``benchmarks/results/speed.md``)
    :param download_dataset: download dataset ids that are not stored locally (needs network)
    :param relabel_eval_goal: rewrite every transition for the evaluation environment's fixed goal when loading (the
        paper's AntMaze protocol on Minari's goal datasets; ``"terminal"``: also end episodes at the goal)
    :param image_shift: random-shift augmentation of image observations in training batches (DrQ): up to this many
        pixels, borders replicated; 0: off
    :param action_noise: online: noise added to the policy's actions (SB3's ``ActionNoise``, as for SAC); None: the
        stochastic policy's own samples
    :param replay_buffer_class: replay buffer class, one of this package's, which take the offline data
        (default: ``DeviceReplayBuffer`` or ``DeviceDictReplayBuffer``, float32 tensors on the model's device,
        uint8 for a Dict's image keys, and ``DeviceImageReplayBuffer`` for image observations, uint8 frames stored
        once;
        ``OfflineReplayBuffer`` / ``OfflineDictReplayBuffer`` keep SB3's NumPy storage; ``HerReplayBuffer``
        relabels goals in hindsight), or its class name (``"HerReplayBuffer"``, as preset files write it)
    :param replay_buffer_kwargs: keyword arguments of the replay buffer
    :param policy_kwargs: keyword arguments of the policy (``net_arch``, ``activation_fn``, ...)
    :param stats_window_size: episodes averaged in the rollout logs
    :param tensorboard_log: TensorBoard log folder (None: no TensorBoard)
    :param verbose: 0 no output, 1 info, 2 debug
    :param seed: seed of the pseudo random generators, including the replay sampling generator
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``
    :param _init_setup_model: build the networks and load the dataset at creation
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    metric_names: ClassVar[tuple[str, ...]] = METRIC_NAMES
    dataset_action_clip: ClassVar[float] = ACTION_CLIP_EPS
    policy: IQLPolicy
    actor: BaseActor
    critic: EnsembleCritic
    critic_target: EnsembleCritic
    value_net: ValueNetwork

    def __init__(
        self,
        policy: str | type[IQLPolicy],
        env: GymEnv | str | None = None,
        offline_dataset: DatasetLike | None = None,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int | None = None,
        learning_starts: int = 0,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        expectile: float = 0.7,
        beta: float = 3.0,
        max_weight: float = 100.0,
        policy_extraction: PolicyExtraction = "awr",
        bc_weight: float = 0.1,
        dropout: float | None = None,
        reward_transform: RewardTransformLike = None,
        offline_steps: int | None = None,
        actor_lr_schedule: Literal["cosine", "constant"] = "cosine",
        critic_lr_schedule: Literal["cosine", "constant"] = "constant",
        update_order: UpdateOrder = "sequential",
        compile_update: bool | Literal["auto", "cudagraph"] = "auto",
        download_dataset: bool = False,
        relabel_eval_goal: bool | Literal["terminal"] = False,
        image_shift: int = 0,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | str | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        policy_kwargs = {} if policy_kwargs is None else dict(policy_kwargs)
        if dropout is not None and policy_kwargs.get("actor_dropout", dropout) != dropout:
            raise ValueError(
                f"dropout={dropout} and policy_kwargs['actor_dropout']={policy_kwargs['actor_dropout']} disagree: give "
                "the actor's dropout once (dropout=)"
            )
        dropout = policy_kwargs.pop("actor_dropout", dropout)  # one place: the model's dropout, passed on below
        self._check_hyperparameters(
            dict(
                expectile=expectile,
                beta=beta,
                max_weight=max_weight,
                bc_weight=bc_weight,
                dropout=dropout,
                tau=tau,
                gamma=gamma,
                batch_size=batch_size,
                actor_lr_schedule=actor_lr_schedule,
                critic_lr_schedule=critic_lr_schedule,
                update_order=update_order,
                compile_update=compile_update,
                policy_extraction=policy_extraction,
            )
        )
        if math.isinf(max_weight) and beta > 0 and policy_extraction != "ddpg_bc":
            warnings.warn(
                f"max_weight=inf with beta={beta}: the AWR weights exp(beta * A) overflow float32 where beta * A > 88, "
                "and the actor's loss and parameters then turn NaN; a finite clip (the paper's 100) bounds them",
                stacklevel=2,
            )
        self.policy_extraction = policy_extraction
        self.bc_weight = bc_weight
        self.update_order = update_order
        self.expectile = expectile
        self.beta = beta
        self.max_weight = max_weight
        self.dropout = dropout
        self.actor_lr_schedule = actor_lr_schedule
        self.critic_lr_schedule = critic_lr_schedule
        self.compile_update = compile_update
        self._fast_update: FunctionalUpdate | CudaGraphUpdate | None = None
        # compile_update="auto": the fastest path a learn_offline call asked for so far (never downgraded; saved, so
        # that a resumed run keeps it)
        self._auto_mode: AutoMode = None
        if dropout is not None:
            policy_kwargs["actor_dropout"] = dropout
        super().__init__(
            policy,
            env,
            offline_dataset,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            reward_transform=reward_transform,
            offline_steps=offline_steps,
            download_dataset=download_dataset,
            relabel_eval_goal=relabel_eval_goal,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            seed=seed,
            device=device,
            supported_action_spaces=(spaces.Box, spaces.Discrete),
            image_shift=image_shift,
            _init_setup_model=_init_setup_model,
        )

    @classmethod
    def from_preset(
        cls: type[SelfIQL],
        dataset_id: str,
        env: GymEnv | str | None = None,
        finetune: bool = False,
        path: str | None = None,
        **overrides: Any,
    ) -> SelfIQL:
        """
        A model with the preset hyperparameters for a dataset (``sb3_iql/hyperparams/iql.yml``, looked up by
        ``sb3_iql.presets.preset_for``: the paper's, or for PointMaze and Hopper measured ones that leave it), the
        dataset loaded in its replay buffer.

        The online budget of a fine-tuning preset is ``preset_for(dataset_id, finetune=True)["n_timesteps"]``:
        ``model.learn(n_timesteps)`` runs the offline updates first, then the online steps.

        :param dataset_id: Minari id, e.g. ``"D4RL/antmaze/large-diverse-v1"`` or ``"mujoco/hopper/medium-v0"``,
            stored locally (or pass ``download_dataset=True``)
        :param env: environment for evaluation and fine-tuning (default: the dataset's evaluation environment, as
            for any ``offline_dataset``)
        :param finetune: the fine-tuning preset (offline then online, constant actor lr) instead of the offline one
        :param path: another preset file in the same format
        :param overrides: IQL arguments that replace the preset's (``offline_steps``, ``policy``, ``seed``,
            ``device``...); ``policy_kwargs`` are merged into the preset's, so that ``policy_kwargs={"net_arch":
            [64, 64]}`` keeps the preset's other network settings
        :return: the model (of this class, for a subclass)
        :raises sb3_iql.presets.PresetNotFoundError: no preset applies to ``dataset_id``
        :raises ValueError: a key of the preset's entry or of ``overrides`` that is no IQL argument (named, with the
            closest), or an rl-zoo key such as ``n_timesteps`` (for ``learn``)
        """
        check_preset_keys(dataset_id, cls, finetune, path, given=overrides)
        arguments = with_overrides(preset_arguments(dataset_id, finetune, path), overrides)
        model = cls(arguments.pop("policy", "MlpPolicy"), env, **arguments)
        if "offline_steps" not in overrides and model.offline_steps == DEFAULT_OFFLINE_STEPS:
            model.offline_steps_default = True  # the presets write the default: a shorter run is warned about too
        return model

    @staticmethod
    def _check_hyperparameters(values: dict[str, Any]) -> None:
        """
        :param values: hyperparameters by constructor argument name, every one of ``HYPERPARAMETER_RULES``
        :raises ValueError: one outside its range (NaN included) or not one of its choices, naming it
        """
        for name, (is_valid, rule) in HYPERPARAMETER_RULES.items():
            try:
                valid = bool(is_valid(values[name]))
            except (TypeError, ValueError):  # a string where a number goes, or an array
                valid = False
            if not valid:
                raise ValueError(f"{name} must be {rule}, got {values[name]!r}")

    def _check_settings(self) -> None:
        """
        Checked again wherever the settings may have changed (training, a callback's change, saving, loading).

        :raises ValueError: a hyperparameter of ``HYPERPARAMETER_RULES`` set on the model out of its range, a
            policy extraction the action space cannot take, or a dropout an actor built without it cannot take
        """
        self._check_hyperparameters({name: getattr(self, name) for name in HYPERPARAMETER_RULES})
        #: Whether the next update checks Dynamo's guards in full: once per training call (it may run in other global
        #: state, such as autocast, than the last one) and after a change, not at every online train() (+23% there)
        self._guards_unchecked = True
        if self.policy_extraction != "awr" and not isinstance(self.action_space, spaces.Box):
            raise ValueError(
                f"policy_extraction={self.policy_extraction!r} needs continuous (Box) actions, got {self.action_space}"
            )
        if getattr(self, "actor", None) is not None:
            self._apply_dropout()

    def _dropout_layers(self) -> list[th.nn.Dropout]:
        return [module for module in self.actor.modules() if isinstance(module, th.nn.Dropout)]

    def _apply_dropout(self) -> None:
        """
        ``dropout`` set on the model after its actor was built: its dropout layers take the rate (None: 0.0, the
        layers kept). The policy's arguments (``actor_dropout``) keep the built rate, which makes the layers again
        when the model is loaded, then given the saved ``dropout``. An actor built without dropout layers cannot
        take one.
        """
        layers = self._dropout_layers()
        if not layers:
            if self.dropout:
                raise ValueError(
                    f"dropout={self.dropout}: the actor was built without dropout layers; create the model with dropout="
                )
            return
        if self.dropout is None:
            self.dropout = 0.0  # saved so: None would take the built rate back at loading
        for layer in layers:
            layer.p = self.dropout

    def _settings_snapshot(self) -> tuple:
        """:return: what a callback may change between two updates: the hyperparameters (tau and the update's
        settings included) and the networks' constants (a dropout rate, an actor's log-std bounds...), which a
        compiled update or a CUDA graph holds as they were"""
        return (*(getattr(self, name) for name in HYPERPARAMETER_RULES), constant_values(self._network_constants))

    def _setup_model(self) -> None:
        if not (isinstance(self.policy_class, type) and issubclass(self.policy_class, IQLPolicy)):
            policy_name = getattr(self.policy_class, "__name__", self.policy_class)  # a file of another algorithm
            raise ValueError(
                f"IQL needs an IQLPolicy (MlpPolicy, MultiInputPolicy, CnnPolicy of sb3_iql), got {policy_name}: a model "
                "saved by another algorithm loads with that algorithm's class"
            )
        # here too for IQL.load, whose saved values and custom_objects do not pass through the constructor
        self._check_settings()
        if self.dropout is None:  # a model saved with it in policy_kwargs only
            self.dropout = (self.policy_kwargs or {}).get("actor_dropout")
        if self.compile_update == "cudagraph" and self.device.type != "cuda":
            raise ValueError(f"compile_update='cudagraph' needs a CUDA device, the model is on {self.device}")
        if self._auto_mode == "graph" and self.device.type != "cuda":  # a file saved on CUDA, loaded elsewhere
            self._auto_mode = None
        super()._setup_model()
        self._create_aliases()
        if self.dropout and not self._dropout_layers():  # a file of a version that ignored dropout set after building
            warnings.warn(
                f"This model's dropout={self.dropout} was never applied (its actor has no dropout layers): set to None",
                stacklevel=2,
            )
            self.dropout = None
        self._apply_dropout()

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        self.value_net = self.policy.value_net
        self._critic_params = list(self.critic.parameters())
        self._critic_target_params = list(self.critic_target.parameters())
        self._network_constants = constant_attributes([self.actor, self.critic, self.critic_target, self.value_net])

    def _update_settings(self) -> UpdateSettings:
        """The hyperparameters of the update, read from the model at every call (they may be changed)."""
        return UpdateSettings(
            self.gamma,
            self.expectile,
            self.beta,
            self.max_weight,
            self.update_order == "joint",
            self.policy_extraction,
            self.bc_weight,
        )

    def _update(self, replay_data: Any) -> th.Tensor:
        """
        One IQL gradient step (``sb3_iql/iql/update.py``), in the reference order: V, then actor (new V, target Q),
        then Q (new V), then Polyak. With ``update_order="joint"`` the Q target uses V(s') from before V's step
        (d3rlpy); nothing else changes: d3rlpy steps the critics before the actor, which is the same for the AWR
        actor (it reads the target critics only); the DDPG extractions read the critics before their step in both.

        :param replay_data: a batch from the replay buffer (observations, actions, next_observations, dones, rewards)
        :return: the metrics named in ``METRIC_NAMES``, shape ``(len(METRIC_NAMES),)``, still on the device
        """
        batch, settings = Batch.from_replay_data(replay_data), self._update_settings()
        # 1. Value: expectile regression towards the smaller target critic, on dataset actions.
        value_targets = update.value_targets(self.critic_target, self.value_net, batch, settings)
        value_loss, values = update.value_objective(self.value_net, batch, value_targets, settings)
        self._gradient_step(self.value_net.optimizer, value_loss)
        # 2. Actor: advantage-weighted regression with the new V (or DDPG+BC on the critics).
        policy_targets = update.policy_targets(self.value_net, batch, value_targets, settings)
        actor = getattr(self.actor, update.actor_inputs(settings.policy_extraction))
        actor_loss = update.policy_objective(actor, self.critic, batch, policy_targets, settings)
        self._gradient_step(self.actor.optimizer, actor_loss)
        # 3. Critics: regression towards r + gamma * (1 - terminal) * V(s').
        critic_loss, current_q = update.critic_objective(self.critic, batch, policy_targets)
        self._gradient_step(self.critic.optimizer, critic_loss)
        # 4. Polyak averaging of the target critics: Qt <- Qt + tau * (Q - Qt).
        with th.no_grad():
            th._foreach_lerp_(self._critic_target_params, self._critic_params, self.tau)
        return update.update_metrics(value_loss, actor_loss, critic_loss, values, current_q, policy_targets)

    @staticmethod
    def _gradient_step(optimizer: th.optim.Optimizer, loss: th.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _functional_update(self, compile_mode: str | None = "default", tensor_lr: bool = False) -> FunctionalUpdate:
        """The same update with ``torch.func`` gradients and direct fused Adam steps (``fast_update.py``)."""
        networks = (self.value_net, self.actor, self.critic, self.critic_target)
        return FunctionalUpdate(*networks, self._update_settings(), self.tau, compile_mode, tensor_lr)

    def _update_function(self) -> Callable[[Any], th.Tensor]:
        """
        The update to run: ``_update`` (eager), or its compiled or graph-captured version (built on first use,
        and again after the optimizers' state was replaced, e.g. by ``load``, or a structural hyperparameter or
        ``tau`` was changed; the numeric ones, device tensors there, are copied in).
        """
        auto = self.compile_update == "auto"
        if not self.compile_update or (auto and self._auto_mode is None):
            return self._update
        fast, settings = self._fast_update, self._update_settings()
        stale = fast is None or fast.state_replaced() or not fast.settings.same_structure(settings) or fast.tau != self.tau
        stale = stale or fast.optimizers_unsupported()  # e.g. weight decay set on a param group: built again, refused
        stale = stale or (isinstance(fast, CudaGraphUpdate) and fast.constants_changed())  # captured in the graph
        if stale or (auto and _mode_of(fast) != self._auto_mode):
            if self.compile_update == "cudagraph":
                self._fast_update = CudaGraphUpdate(self._functional_update(None, tensor_lr=True), self._example_batch())
            elif auto:
                self._fast_update = self._auto_fast_update()
                if self._fast_update is None:
                    return self._update
            else:
                self._fast_update = self._functional_update()
        self._fast_update.set_settings(settings)  # other numeric hyperparameters need no new compilation or capture
        if isinstance(self._fast_update, FunctionalUpdate) and self._guards_unchecked:
            self._fast_update.check_guards_again()
            self._guards_unchecked = False
        return self._fast_update

    def _offline_train_step(self) -> Callable[[], th.Tensor]:
        """
        With the update in a CUDA graph and a buffer whose sampling runs on the device (``graph_sampling_key``), the
        sampling joins the graph (``CudaGraphUpdate.sampled_step``): one graph launch per update, nothing copied.
        The batches are the ones the eager loop would draw. Where that capture fails, the graph's own inputs are
        filled with batches sampled outside it, as before, with a warning.
        """
        update = self._update_function()
        if not isinstance(update, CudaGraphUpdate) or update.sampling_failed or self._graph_sampling() is None:
            return super()._offline_train_step()
        try:
            return update.sampled_step(lambda: self._sample_batch(self.batch_size), self._graph_sampling)
        except Exception as error:  # a capture this device or torch version refuses
            update.sampling_failed = True
            generator = getattr(self.replay_buffer, "generator", None)
            if generator is not None:  # the same stream in a generator that no failed capture marked as capturing
                fresh = th.Generator(device=generator.device)
                fresh.set_state(generator.get_state())
                self.replay_buffer.generator = fresh  # type: ignore[union-attr]
            warnings.warn(
                f"Sampling inside the CUDA graph failed ({type(error).__name__}: {str(error)[:300]}); batches are "
                "sampled outside the graph instead (slower, same results).",
                stacklevel=3,
            )
            return super()._offline_train_step()

    def _graph_sampling(self) -> tuple[Hashable, th.Generator | None] | None:
        """
        :return: what drawing a training batch freezes in a CUDA graph (the buffer's ``graph_sampling_key``, the
            batch size, the image shift) and the generator it draws from; None where the buffer's sampling cannot
            be captured. Read before every update, so that data added or a buffer loaded by a callback is sampled.
        """
        buffer_key = getattr(self.replay_buffer, "graph_sampling_key", lambda: None)()
        if buffer_key is None:
            return None
        return (buffer_key, self.batch_size, self.image_shift), getattr(self.replay_buffer, "generator", None)

    def _example_batch(self) -> Any:
        """A batch to compile or capture the update on, drawn without moving the sampling streams."""
        generator = getattr(self.replay_buffer, "generator", None)
        generator_state = None if generator is None else generator.get_state()
        numpy_state = np.random.get_state()  # SB3's NumPy buffers sample from NumPy's global generator
        batch = self._sample_batch(self.batch_size)
        np.random.set_state(numpy_state)
        if generator is not None:
            generator.set_state(generator_state)
            # the image buffer's first sample swaps a CPU generator for one on its device, seeded from it: undone too
            self.replay_buffer.generator = generator  # type: ignore[union-attr]
        return batch

    def _auto_fast_update(self) -> FunctionalUpdate | CudaGraphUpdate | None:
        """
        ``compile_update="auto"``: the update of ``_auto_mode``, compiled (``"compile"``) on a batch that changes
        nothing (neither the networks nor the sampling stream), and on CUDA captured in a CUDA graph
        (``benchmarks/results/gpu_runs.md``: on an H200 the eager update runs 18x faster in a graph, the compiled
        one 8x); None where neither is available (then ``auto`` stays eager). A compilation or capture that fails
        warns, and the next fastest path runs.
        """
        cuda = self.device.type == "cuda"
        compiled = self._auto_mode == "compile"
        try:
            fast = self._functional_update("default" if compiled else None, tensor_lr=cuda)
        except ValueError:  # what the functional update does not run: an optimizer not Adam, a shared encoder...
            self._auto_mode = None
            return None
        batch = self._example_batch()
        if compiled:
            try:
                fast.warm_up(batch)
            except Exception as error:  # no C++ compiler, an unsupported platform or module...
                _warn_fallback("torch.compile failed", error, "the eager update" + (" in a CUDA graph" if cuda else ""))
                if not cuda:
                    self._auto_mode = None
                    return None
                self._auto_mode = "graph"
                fast = self._functional_update(None, tensor_lr=True)
        if not cuda:
            return fast
        try:
            return CudaGraphUpdate(fast, batch)
        except Exception as error:  # a capture that fails on this device
            _warn_fallback("the CUDA graph capture failed", error, "the compiled update" if compiled else "the eager update")
            if compiled:
                return fast
            self._auto_mode = None
            return None

    def _prepare_offline_call(self, n_updates: int | None) -> None:
        """
        ``compile_update="auto"``: the path of a ``learn_offline`` call of ``n_updates`` (``auto_mode``; never
        downgraded). Warns when a first call trains fewer updates than a default ``offline_steps``, over which the
        actor's cosine learning rate decays: the run then ends with the lr nearly undecayed
        (``benchmarks/results/scores.md``: on large-stitch, without the decay, mean final score 13 against 43 with
        it), or when a call runs past ``offline_steps`` (``_warn_about_lr_schedule``).
        """
        planned = self.offline_updates_left if n_updates is None else n_updates
        mode = auto_mode(planned, self.device.type)
        if self.compile_update == "auto" and mode is not None and self._auto_mode != "compile":
            self._auto_mode = mode
        self._warn_about_lr_schedule(n_updates, stacklevel=4)  # past this method and learn_offline

    def _warn_about_lr_schedule(self, n_updates: int | None, stacklevel: int) -> bool:
        """
        Warn where an offline call of ``n_updates`` misses the lr schedule: a first call that ends far from the
        end of a default ``offline_steps`` (the cosine lr nearly undecayed), or a call that runs past
        ``offline_steps``, where a decayed lr is 0 (the cosine-scheduled networks', or every network's where
        ``learning_rate`` is a schedule that ends at 0, such as rl-zoo's ``lin_``) and those updates leave the
        networks unchanged.

        :return: whether it warned
        """
        cosine = [name for name in ("actor_lr_schedule", "critic_lr_schedule") if getattr(self, name) == "cosine"]
        schedule_ends_at_zero = self.lr_schedule(0.0) == 0.0
        if n_updates is None or not (cosine or schedule_ends_at_zero):
            return False
        horizon = max(self.offline_steps, 1)  # as in _set_learning_rates: the first update takes the full lr
        past_the_end = self._n_offline_updates + n_updates - max(horizon, self._n_offline_updates)
        if past_the_end > 0:
            decay = (
                "learning_rate's schedule reaches 0"
                if schedule_ends_at_zero
                else f"{' and '.join(cosine)}='cosine' decays the lr to 0"
            )
            warnings.warn(
                f"{decay} at the end of offline_steps={self.offline_steps:,} offline updates "
                f"({self._n_offline_updates:,} done): the last {past_the_end:,} of these {n_updates:,} leave "
                f"{'every network' if schedule_ends_at_zero else 'those networks'} unchanged. Create the model with "
                "offline_steps=N for a longer run, or a schedule that does not end at 0.",
                stacklevel=stacklevel,
            )
            return True
        short = self._n_offline_updates == 0 and n_updates < self.offline_steps
        if not (short and "actor_lr_schedule" in cosine and getattr(self, "offline_steps_default", False)):
            return False
        factor = 0.5 * (1.0 + math.cos(math.pi * n_updates / self.offline_steps))
        warnings.warn(
            f"The actor's learning rate decays to 0 over offline_steps={self.offline_steps:,} updates; after these "
            f"{n_updates:,} it will still be {factor:.3f} of its start. For the paper's schedule over this run, "
            f"create the model with offline_steps={n_updates}.",
            stacklevel=stacklevel,
        )
        return True

    def _set_learning_rates(self, offline: bool) -> None:
        """
        Each network's lr: SB3's ``learning_rate`` (a float or a schedule of the progress remaining, over
        ``offline_steps`` offline and over ``learn()``'s steps online), times a cosine decay to 0 over
        ``offline_steps`` offline for the networks whose schedule (``actor_lr_schedule``, ``critic_lr_schedule``)
        is ``"cosine"``.
        """
        cosine = 1.0
        if offline:
            progress = min(self._n_offline_updates / max(self.offline_steps, 1), 1.0)
            self._current_progress_remaining = 1.0 - progress
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        base = self.lr_schedule(self._current_progress_remaining)
        critic_lr, actor_lr = (
            base * cosine if schedule == "cosine" else base for schedule in (self.critic_lr_schedule, self.actor_lr_schedule)
        )
        update_learning_rate(self.value_net.optimizer, critic_lr)
        update_learning_rate(self.critic.optimizer, critic_lr)
        update_learning_rate(self.actor.optimizer, actor_lr)

    def _record_metrics(self, metric_sums: th.Tensor, n_steps: int) -> None:
        super()._record_metrics(metric_sums, n_steps)
        self.logger.record("train/actor_lr", self.actor.optimizer.param_groups[0]["lr"])
        self.logger.record("train/learning_rate", self.critic.optimizer.param_groups[0]["lr"])

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "actor",
            "critic",
            "critic_target",
            "value_net",
            "_critic_params",
            "_critic_target_params",
            "_network_constants",
            "_guards_unchecked",
            "_fast_update",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "actor.optimizer", "critic.optimizer", "value_net.optimizer"], []


def _mode_of(fast: FunctionalUpdate | CudaGraphUpdate | None) -> AutoMode:
    """:return: the ``_auto_mode`` that ``fast`` serves (``"graph"``: the eager update in a CUDA graph)"""
    if fast is None:
        return None
    functional = fast.functional if isinstance(fast, CudaGraphUpdate) else fast
    return "compile" if functional.compile_mode is not None else "graph"


def _warn_fallback(what: str, error: Exception, instead: str) -> None:
    warnings.warn(
        f"compile_update='auto': {what} ({type(error).__name__}: {str(error)[:300]}); training continues with "
        f"{instead}. Pass compile_update=False to skip the attempt.",
        stacklevel=4,
    )
