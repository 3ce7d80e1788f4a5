"""IQL networks: a Gaussian (Box) or categorical (Discrete) actor, an ensemble of Q critics, a state-value network,
and the policy holding them."""

import itertools
import math
import numbers
from typing import Any, Literal

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_iql.common.preprocessing import (
    ObservationNormalizer,
    ObservationPreprocessing,
    check_observation_indices,
    observation_preprocessing,
    preprocess_observations,
)
from sb3_iql.common.torch_layers import FEATURES_EXTRACTOR_CLASSES, LayerNormNatureCNN, features_extractor_class_named

#: Gain of the orthogonal initialisation of every layer in the reference implementation.
ORTHOGONAL_GAIN = math.sqrt(2)
#: Bounds of the state-independent log standard deviation of the actor.
LOG_STD_BOUNDS = (-5.0, 2.0)
DEFAULT_NET_ARCH = [256, 256]
#: How the actor's log standard deviation is parametrised: ``"clip"``, a raw parameter clipped to the bounds
#: (reference implementation); ``"sigmoid"``, ``low + (high - low) * sigmoid(raw)`` (d3rlpy).
LogStdParametrization = Literal["clip", "sigmoid"]
#: Weight initialisation: ``"orthogonal"`` (gain ``ortho_init_gain``, zero biases; reference implementation) or
#: ``"pytorch"`` (PyTorch's default ``nn.Linear`` initialisation, as d3rlpy and CORL use).
WeightInit = Literal["orthogonal", "pytorch"]


def hidden_layers(
    input_dim: int,
    net_arch: list[int],
    activation_fn: type[nn.Module],
    dropout: float | None,
    layer_norm: bool = False,
) -> nn.Sequential:
    """
    Hidden layers ``Linear (-> LayerNorm) -> activation (-> Dropout)`` of an MLP.

    :param input_dim: size of the input features
    :param net_arch: width of each hidden layer
    :param activation_fn: activation after each hidden layer
    :param dropout: dropout probability after each activation, or None for no dropout
    :param layer_norm: normalise each hidden layer's pre-activations (LayerNorm with a learned affine map)
    :return: the layers; their output size is ``net_arch[-1]`` (``input_dim`` when ``net_arch`` is empty)
    """
    layers: list[nn.Module] = []
    for width in net_arch:
        layers.append(nn.Linear(input_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation_fn())
        if dropout:
            layers.append(nn.Dropout(dropout))
        input_dim = width
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """
    ``n_members`` independent linear layers evaluated in one batched matrix product.

    :param n_members: number of independent layers
    :param in_features: input size
    :param out_features: output size
    """

    def __init__(self, n_members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(th.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(th.zeros(n_members, 1, out_features))

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        """:param inputs: shape ``(n_members, batch, in_features)``
        :return: shape ``(n_members, batch, out_features)``"""
        return th.baddbmm(self.bias, inputs, self.weight)

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation, each member drawn as an ``nn.Linear(in_features, out_features)``."""
        n_members, in_features, out_features = self.weight.shape
        with th.no_grad():
            for member in range(n_members):
                layer = nn.Linear(in_features, out_features, device=self.weight.device)
                self.weight[member] = layer.weight.T
                self.bias[member, 0] = layer.bias


class EnsembleLayerNorm(nn.Module):
    """
    LayerNorm over the last dimension with a separate learned affine map per ensemble member.

    :param n_members: number of ensemble members
    :param width: size of the normalised dimension
    """

    def __init__(self, n_members: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(th.ones(n_members, 1, width))
        self.bias = nn.Parameter(th.zeros(n_members, 1, width))

    def forward(self, inputs: th.Tensor) -> th.Tensor:
        """:param inputs: shape ``(n_members, batch, width)``
        :return: same shape"""
        return th.nn.functional.layer_norm(inputs, inputs.shape[-1:]) * self.weight + self.bias


#: The features extractors whose linear layers ``weight_init`` initialises with the networks' (a custom extractor,
#: perhaps pretrained, keeps the weights it was built with).
INITIALISED_EXTRACTORS = (FlattenExtractor, CombinedExtractor, *FEATURES_EXTRACTOR_CLASSES.values())


def init_weights_(module: nn.Module, weight_init: WeightInit = "orthogonal", gain: float = ORTHOGONAL_GAIN) -> None:
    """
    Initialise every (ensemble) linear layer of ``module`` in place (LayerNorms keep their unit scale, zero shift).

    :param weight_init: ``"orthogonal"`` (``orthogonal_init_`` with ``gain``) or ``"pytorch"`` (PyTorch's default)
    :param gain: gain of the orthogonal initialisation
    """
    if weight_init == "orthogonal":
        orthogonal_init_(module, gain)
    elif weight_init == "pytorch":
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, EnsembleLinear)):
                layer.reset_parameters()
    else:
        raise ValueError(f"weight_init must be 'orthogonal' or 'pytorch', got {weight_init!r}")


def spread_first_layer_biases_(layers: nn.Module) -> None:
    """
    Draw the biases of the first (ensemble) linear layer in ``layers`` as ``b_j ~ N(0, |w_j|^2)`` for each unit
    ``j``, in place. Unit ``j``'s ReLU kink is the hyperplane ``w_j . x = -b_j``: with zero biases every kink passes
    through the origin of the inputs (the data's mean once observations are normalised); with these biases the
    kinks lie at offsets of the order of the inputs' spread (``w_j . x`` has standard deviation ``|w_j|`` for
    inputs of unit variance), as a constant input feature does for unnormalised observations.

    :param layers: the hidden layers of a network (its first linear layer takes the features; none: nothing done)
    """
    first = next((layer for layer in layers.modules() if isinstance(layer, (nn.Linear, EnsembleLinear))), None)
    if first is None:
        return
    with th.no_grad():
        if isinstance(first, EnsembleLinear):  # weight (n_members, in_features, out_features)
            norms = first.weight.norm(dim=1, keepdim=True)
        else:  # weight (out_features, in_features)
            norms = first.weight.norm(dim=1)
        first.bias.copy_(norms * th.randn_like(first.bias))


def orthogonal_init_(module: nn.Module, gain: float = ORTHOGONAL_GAIN) -> None:
    """Orthogonal weights and zero biases for every (ensemble) linear layer of ``module``, in place."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, EnsembleLinear):
            n_members, in_features, out_features = layer.weight.shape
            with th.no_grad():
                for member in range(n_members):
                    # Same draw as an nn.Linear(in_features, out_features) layer, stored transposed.
                    weight = nn.init.orthogonal_(th.empty(out_features, in_features, device=layer.weight.device), gain)
                    layer.weight[member] = weight.T
            nn.init.zeros_(layer.bias)


class NormalizedFeatures:
    """
    Networks whose observations pass through the policy's ``ObservationNormalizer`` (when it has one) after SB3's
    preprocessing and before the features extractor. Each network calls ``_setup_preprocessing()`` in its
    constructor; ``IQLPolicy`` gives the four networks (the target critics too) one shared normalizer.
    """

    observation_space: spaces.Space
    normalize_images: bool
    observation_normalizer: ObservationNormalizer | None
    #: What SB3's preprocessing does to the observations (per key of a Dict space): ``observation_preprocessing``.
    preprocessing: ObservationPreprocessing
    #: The extractor is another network's (``share_features_extractor``): its features are used, not trained.
    features_detached: bool = False

    def _setup_preprocessing(self) -> None:
        """No normalizer yet; the preprocessing of the observation space (after ``BaseModel.__init__``)."""
        self.observation_normalizer = None
        self.preprocessing = observation_preprocessing(self.observation_space, self.normalize_images)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A network pickled whole (``torch.save(model.policy)``) by an earlier version gets its ``preprocessing``
        here (such a network kept whether it scaled images as ``image_scaling``, or nothing)."""
        super().__setstate__(state)  # type: ignore[misc]
        if "preprocessing" not in state:
            self.__dict__.pop("image_scaling", None)
            self.preprocessing = observation_preprocessing(self.observation_space, self.normalize_images)

    def extract_features(self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor) -> th.Tensor:
        preprocessed = preprocess_observations(obs, self.observation_space, self.preprocessing)
        if self.observation_normalizer is not None:
            preprocessed = self.observation_normalizer(preprocessed)
        features = features_extractor(preprocessed)
        return features.detach() if self.features_detached else features


class BaseActor(NormalizedFeatures, BasePolicy):
    """
    What both actors share: the hidden layers ``latent_pi`` on the extracted features, the constructor parameters
    they save, and ``_predict``. Subclasses add their output layer and distribution.

    :param observation_space: observation space
    :param action_space: action space
    :param net_arch: hidden layer widths
    :param features_extractor: network turning observations into a flat vector
    :param features_dim: size of that vector
    :param activation_fn: activation after each hidden layer
    :param dropout: dropout probability after each hidden activation (None: no dropout)
    :param normalize_images: whether to divide image observations by 255
    :param squash_output: whether actions are scaled to [-1, 1] (Box actions)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        dropout: float | None = None,
        normalize_images: bool = True,
        squash_output: bool = False,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=squash_output,
        )
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.dropout = dropout
        self._setup_preprocessing()
        self.latent_pi = hidden_layers(features_dim, net_arch, activation_fn, dropout)
        #: Size of ``latent_pi``'s output.
        self.latent_dim = net_arch[-1] if net_arch else features_dim

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            features_dim=self.features_extractor.features_dim,
            activation_fn=self.activation_fn,
            dropout=self.dropout,
            features_extractor=self.features_extractor,
        )
        return data

    def latent(self, obs: PyTorchObs) -> th.Tensor:
        """:return: the hidden layers' output, shape ``(batch, latent_dim)``"""
        return self.latent_pi(self.extract_features(obs, self.features_extractor))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class Actor(BaseActor):
    """
    Gaussian policy: mean ``tanh(MLP(s))`` and a state-independent log standard deviation; the distribution
    itself is not tanh-squashed, samples are clipped to [-1, 1] when acting.

    :param observation_space: observation space
    :param action_space: action space (actions are handled scaled to [-1, 1])
    :param net_arch: hidden layer widths
    :param features_extractor: network turning observations into a flat vector
    :param features_dim: size of that vector
    :param activation_fn: activation after each hidden layer
    :param dropout: dropout probability after each hidden activation (None: no dropout)
    :param log_std_bounds: (min, max) bounds of the log standard deviation
    :param log_std_parametrization: ``"clip"``: a raw parameter clipped to the bounds (reference);
        ``"sigmoid"``: ``min + (max - min) * sigmoid(raw)`` (d3rlpy), smooth at the bounds
    :param log_std_init: initial log standard deviation (0: std 1, the reference; -1.5: std 0.22, d3rlpy's)
    :param normalize_images: whether to divide image observations by 255
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        dropout: float | None = None,
        log_std_bounds: tuple[float, float] = LOG_STD_BOUNDS,
        log_std_parametrization: LogStdParametrization = "clip",
        log_std_init: float = 0.0,
        normalize_images: bool = True,
    ):
        low, high = log_std_bounds
        log_std_init = float(log_std_init)  # rl-zoo's files write integers: log_std_init=-3
        if not low < log_std_init < high:
            raise ValueError(f"log_std_init={log_std_init} must lie strictly inside log_std_bounds={log_std_bounds}")
        if log_std_parametrization == "clip":
            raw_init = log_std_init
        elif log_std_parametrization == "sigmoid":
            raw_init = math.log((log_std_init - low) / (high - log_std_init))  # inverse of low + (high - low) * sigmoid
        else:
            raise ValueError(f"log_std_parametrization must be 'clip' or 'sigmoid', got {log_std_parametrization!r}")
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            features_extractor,
            features_dim,
            activation_fn,
            dropout,
            normalize_images,
            squash_output=True,
        )
        action_dim = int(action_space.shape[0])
        self.log_std_bounds = log_std_bounds
        self.log_std_parametrization = log_std_parametrization
        self.log_std_init = log_std_init
        self.mu = nn.Linear(self.latent_dim, action_dim)
        #: The raw parameter: the log std itself (``"clip"``) or the sigmoid's argument (``"sigmoid"``).
        self.log_std = nn.Parameter(th.full((action_dim,), raw_init))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            log_std_bounds=self.log_std_bounds,
            log_std_parametrization=self.log_std_parametrization,
            log_std_init=self.log_std_init,
        )
        return data

    def log_std_value(self) -> th.Tensor:
        """:return: the log standard deviation, shape ``(action_dim,)``, within ``log_std_bounds``"""
        low, high = self.log_std_bounds
        if self.log_std_parametrization == "sigmoid":
            return low + (high - low) * th.sigmoid(self.log_std)
        return self.log_std.clamp(low, high)

    def distribution(self, obs: PyTorchObs) -> th.distributions.Normal:
        """:return: independent Normal per action dimension, batch shape ``(batch, action_dim)``"""
        mean = th.tanh(self.mu(self.latent(obs)))
        std = self.log_std_value().exp().expand_as(mean)
        return th.distributions.Normal(mean, std, validate_args=False)

    def log_prob(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """:param obs: observations, a batch
        :param actions: scaled actions, shape ``(batch, action_dim)``
        :return: ``log pi(a | s)`` summed over action dimensions, shape ``(batch,)``"""
        return self.distribution(obs).log_prob(actions).sum(dim=-1)

    def mean_and_log_prob(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """:return: the mean action ``(batch, action_dim)`` and ``log pi(a | s)`` ``(batch,)``, from one forward pass"""
        distribution = self.distribution(obs)
        return distribution.mean, distribution.log_prob(actions).sum(dim=-1)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """:return: the mean (deterministic) or a sample clipped to [-1, 1], shape ``(batch, action_dim)``"""
        distribution = self.distribution(obs)
        if deterministic:
            return distribution.mean
        return distribution.sample().clamp(-1.0, 1.0)


class CategoricalActor(BaseActor):
    """
    Categorical policy for ``Discrete`` action spaces: ``softmax(MLP(s))`` over the ``n`` actions.
    Deterministic actions are the most likely action (argmax), stochastic ones are sampled.

    :param observation_space: observation space
    :param action_space: ``Discrete(n)`` action space (actions ``0 .. n - 1``)
    :param net_arch: hidden layer widths
    :param features_extractor: network turning observations into a flat vector
    :param features_dim: size of that vector
    :param activation_fn: activation after each hidden layer
    :param dropout: dropout probability after each hidden activation (None: no dropout)
    :param normalize_images: whether to divide image observations by 255
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        dropout: float | None = None,
        normalize_images: bool = True,
    ):
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            features_extractor,
            features_dim,
            activation_fn,
            dropout,
            normalize_images,
        )
        self.logits = nn.Linear(self.latent_dim, int(action_space.n))

    def log_probs(self, obs: PyTorchObs) -> th.Tensor:
        """:return: ``log pi(. | s)`` of every action, shape ``(batch, n_actions)``"""
        return th.log_softmax(self.logits(self.latent(obs)), dim=-1)

    def log_prob(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """:param obs: observations, a batch
        :param actions: action indices as stored in the replay buffer, shape ``(batch, 1)`` (any dtype)
        :return: ``log pi(a | s)``, shape ``(batch,)``"""
        return self.log_probs(obs).gather(-1, actions.long().view(-1, 1)).squeeze(-1)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """:return: the most likely action (deterministic) or a sampled one, shape ``(batch,)``, int64"""
        log_probs = self.log_probs(obs)
        if deterministic:
            return log_probs.argmax(dim=-1)
        return th.multinomial(log_probs.exp(), num_samples=1).squeeze(-1)


class EnsembleCritic(NormalizedFeatures, BaseModel):
    """
    ``n_critics`` independent Q networks, evaluated as one batched ensemble: on ``concat(features(s), a)`` for Box
    actions; for ``Discrete(n)`` actions on ``features(s)`` with ``n`` outputs, the dataset action's one picked.

    :param observation_space: observation space
    :param action_space: action space
    :param net_arch: hidden layer widths of each critic
    :param features_extractor: network turning observations into a flat vector
    :param features_dim: size of that vector
    :param activation_fn: activation after each hidden layer
    :param normalize_images: whether to divide image observations by 255
    :param n_critics: number of Q networks
    :param layer_norm: LayerNorm (one affine map per critic) before each hidden activation
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        layer_norm: bool = False,
    ):
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.n_critics = n_critics
        self._setup_preprocessing()
        self.discrete = isinstance(action_space, spaces.Discrete)
        action_inputs, outputs = (0, int(action_space.n)) if self.discrete else (int(action_space.shape[0]), 1)
        widths = [features_dim + action_inputs, *net_arch]
        layers: list[nn.Module] = []
        for in_features, out_features in itertools.pairwise(widths):
            layers.append(EnsembleLinear(n_critics, in_features, out_features))
            if layer_norm:
                layers.append(EnsembleLayerNorm(n_critics, out_features))
            layers.append(activation_fn())
        layers.append(EnsembleLinear(n_critics, widths[-1], outputs))
        self.q_networks = nn.Sequential(*layers)

    def forward(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """:param obs: observations, a batch
        :param actions: scaled actions, shape ``(batch, action_dim)``; Discrete: indices, shape ``(batch, 1)``
        :return: Q-values of every critic, shape ``(n_critics, batch)``"""
        features = self.extract_features(obs, self.features_extractor)
        if self.discrete:  # one output per action: pick the given action's
            q_values = self.q_networks(features.expand(self.n_critics, -1, -1))
            return q_values.gather(-1, actions.long().view(1, -1, 1).expand(self.n_critics, -1, 1)).squeeze(-1)
        inputs = th.cat([features, actions], dim=-1).expand(self.n_critics, -1, -1)
        return self.q_networks(inputs).squeeze(-1)


class ValueNetwork(NormalizedFeatures, BaseModel):
    """
    State-value network ``V(s)``.

    :param observation_space: observation space
    :param action_space: action space (unused by the network, kept for SB3's interface)
    :param net_arch: hidden layer widths
    :param features_extractor: network turning observations into a flat vector
    :param features_dim: size of that vector
    :param activation_fn: activation after each hidden layer
    :param normalize_images: whether to divide image observations by 255
    :param layer_norm: LayerNorm before each hidden activation
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        layer_norm: bool = False,
    ):
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self._setup_preprocessing()
        self.v_network = nn.Sequential(
            hidden_layers(features_dim, net_arch, activation_fn, dropout=None, layer_norm=layer_norm),
            nn.Linear(net_arch[-1] if net_arch else features_dim, 1),
        )

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        """:return: ``V(s)``, shape ``(batch,)``"""
        return self.v_network(self.extract_features(obs, self.features_extractor)).squeeze(-1)


def split_net_arch(net_arch: list[int] | dict[str, list[int]]) -> tuple[list[int], list[int], list[int]]:
    """
    :param net_arch: one list of widths for every network, or a dict with keys ``pi``, ``qf`` and ``vf``
    :return: widths of the actor, the critics and the value network
    """
    if isinstance(net_arch, dict):
        missing = {"pi", "qf", "vf"} - set(net_arch)
        if missing:
            raise ValueError(f"net_arch dict needs the keys 'pi', 'qf' and 'vf', missing {sorted(missing)}")
        return net_arch["pi"], net_arch["qf"], net_arch["vf"]
    return net_arch, net_arch, net_arch


class IQLPolicy(BasePolicy):
    """
    Actor, twin critics (with their target copy) and value network of IQL, each with its own optimizer. The actor
    is Gaussian (``Actor``) for Box actions, categorical (``CategoricalActor``) for Discrete ones.

    :param observation_space: observation space
    :param action_space: action space
    :param lr_schedule: learning rate schedule; every optimizer starts at ``lr_schedule(1)``
    :param net_arch: hidden widths, one list for all networks or a dict with keys ``pi``, ``qf``, ``vf``
        (default: 256, 256)
    :param activation_fn: activation after each hidden layer (ReLU)
    :param actor_dropout: dropout probability in the actor's hidden layers (None: no dropout)
    :param log_std_bounds: (min, max) bounds of the Gaussian actor's log standard deviation (Box actions)
    :param log_std_parametrization: ``"clip"`` (reference) or ``"sigmoid"`` (d3rlpy), see ``Actor``
    :param log_std_init: the Gaussian actor's initial log standard deviation (0: reference; -1.5: d3rlpy)
    :param weight_init: ``"orthogonal"`` (reference, gain ``ortho_init_gain``) or ``"pytorch"`` (d3rlpy, CORL): the
        networks' linear layers and those of SB3's and the package's extractors (``INITIALISED_EXTRACTORS``, these
        classes exactly); any other ``features_extractor_class``, a subclass of those included, keeps the weights it
        was built with, as in SAC
    :param critic_layer_norm: LayerNorm before each hidden activation of the critics and the value network
    :param normalize_observations: normalise observations with the offline dataset's mean and std (fitted by
        ``IQL`` when the dataset is loaded, then fixed; features that are constant in the data are only centred;
        images per pixel, after the division by 255; one-hot Discrete and MultiDiscrete keys left as they are:
        ``ObservationNormalizer``)
    :param spread_first_layer_biases: random first-hidden-layer biases (``spread_first_layer_biases_``) instead of
        the initialisation's, so that the ReLU kinks of the first layer do not all pass through the inputs' origin
    :param features_extractor_class: features extractor of each network, or its name in
        ``FEATURES_EXTRACTOR_CLASSES`` (``"LayerNormNatureCNN"``, as preset files write it)
    :param features_extractor_kwargs: its keyword arguments
    :param share_features_extractor: ``True``: one features extractor for the actor, the critics and the value
        network, trained by the critics' loss only (the actor and the value network use its features detached, as
        DrQ's actor does); ``"critics"``: one for the critics and the value network alone (trained the same way), the
        actor keeping its own, so that ``A = Q - V`` compares two heads on the same features; ``False``: one
        extractor per network. The target critics always keep their own Polyak-averaged copy
    :param normalize_images: whether to divide image observations by 255
    :param optimizer_class: optimizer of each network (Adam)
    :param optimizer_kwargs: its keyword arguments, without the learning rate (Adam default: ``fused=True``)
    :param n_critics: number of Q networks (2)
    :param ortho_init_gain: gain of the orthogonal initialisation of every layer (sqrt(2))
    """

    actor: BaseActor
    critic: EnsembleCritic
    critic_target: EnsembleCritic
    value_net: ValueNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        actor_dropout: float | None = None,
        log_std_bounds: tuple[float, float] = LOG_STD_BOUNDS,
        log_std_parametrization: LogStdParametrization = "clip",
        log_std_init: float = 0.0,
        weight_init: WeightInit = "orthogonal",
        critic_layer_norm: bool = False,
        normalize_observations: bool = False,
        spread_first_layer_biases: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] | str = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool | Literal["critics"] = False,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        ortho_init_gain: float = ORTHOGONAL_GAIN,
    ):
        if isinstance(features_extractor_class, str):
            features_extractor_class = features_extractor_class_named(features_extractor_class)
        gaussian = (tuple(log_std_bounds), log_std_parametrization, float(log_std_init))
        if isinstance(action_space, spaces.Discrete) and gaussian != (tuple(LOG_STD_BOUNDS), "clip", 0.0):
            raise ValueError(
                "log_std_bounds, log_std_parametrization and log_std_init set the Gaussian actor of Box actions; "
                f"{action_space} actions have a categorical actor: leave them out"
            )
        if share_features_extractor not in (False, True, "critics"):
            raise ValueError(f"share_features_extractor must be False, True or 'critics', got {share_features_extractor!r}")
        if optimizer_class is th.optim.Adam and optimizer_kwargs is None:
            optimizer_kwargs = {"fused": True}  # one kernel per network: +10% updates/s on CPU (benchmarks/speed.py)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
            normalize_images=normalize_images,
        )
        if not normalize_images and issubclass(self.features_extractor_class, LayerNormNatureCNN):
            self.features_extractor_kwargs.update(normalized_image=True)  # as SB3 does for NatureCNN
        if isinstance(n_critics, bool) or not isinstance(n_critics, numbers.Integral) or n_critics < 1:
            raise ValueError(f"n_critics must be an integer of at least 1 (the Q networks' ensemble), got {n_critics!r}")
        self.net_arch = list(DEFAULT_NET_ARCH) if net_arch is None else net_arch
        self.activation_fn = activation_fn
        self.actor_dropout = actor_dropout
        self.log_std_bounds = log_std_bounds
        self.log_std_parametrization = log_std_parametrization
        self.log_std_init = log_std_init
        self.weight_init = weight_init
        self.critic_layer_norm = critic_layer_norm
        self.normalize_observations = normalize_observations
        self.spread_first_layer_biases = spread_first_layer_biases
        self.n_critics = n_critics
        self.ortho_init_gain = ortho_init_gain
        self.share_features_extractor = share_features_extractor
        self._build(lr_schedule)
        # evaluation mode until training sets it: a policy loaded alone (``policy_class.load``) is deterministic,
        # dropout off, as the algorithm's own loading leaves it
        self.set_training_mode(False)

    def _build(self, lr_schedule: Schedule) -> None:
        actor_arch, critic_arch, value_arch = split_net_arch(self.net_arch)
        common = dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            activation_fn=self.activation_fn,
            normalize_images=self.normalize_images,
        )

        shared = self.make_features_extractor() if self.share_features_extractor else None
        actor_shares = self.share_features_extractor is True

        def extractor(own: bool = False) -> dict[str, Any]:
            """The shared extractor, or a new one (``own``, or nothing shared)."""
            features_extractor = self.make_features_extractor() if own or shared is None else shared
            return dict(features_extractor=features_extractor, features_dim=features_extractor.features_dim)

        if isinstance(self.action_space, spaces.Discrete):
            self.actor = CategoricalActor(
                net_arch=actor_arch, dropout=self.actor_dropout, **extractor(own=not actor_shares), **common
            )
        else:
            self.actor = Actor(
                net_arch=actor_arch,
                dropout=self.actor_dropout,
                log_std_bounds=self.log_std_bounds,
                log_std_parametrization=self.log_std_parametrization,
                log_std_init=self.log_std_init,
                **extractor(own=not actor_shares),
                **common,
            )
        critic_kwargs = dict(net_arch=critic_arch, n_critics=self.n_critics, layer_norm=self.critic_layer_norm)
        self.critic = EnsembleCritic(**critic_kwargs, **extractor(), **common)
        self.critic_target = EnsembleCritic(**critic_kwargs, **extractor(own=True), **common)
        self.value_net = ValueNetwork(net_arch=value_arch, layer_norm=self.critic_layer_norm, **extractor(), **common)
        for network in (self.actor, self.critic, self.value_net):
            for name, part in network.named_children():  # a custom extractor keeps its weights, as in SAC
                if name != "features_extractor" or type(part) in INITIALISED_EXTRACTORS:
                    init_weights_(part, self.weight_init, self.ortho_init_gain)
        if self.spread_first_layer_biases:
            for hidden in (self.actor.latent_pi, self.critic.q_networks, self.value_net.v_network):
                spread_first_layer_biases_(hidden)
        #: Shared by the four networks (one set of statistics), None without ``normalize_observations``.
        self.observation_normalizer = (
            ObservationNormalizer(self.observation_space, self.normalize_images) if self.normalize_observations else None
        )
        if self.observation_normalizer is not None:
            for network in (self.actor, self.critic, self.critic_target, self.value_net):
                network.observation_normalizer = self.observation_normalizer
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        # Target networks stay in evaluation mode.
        self.critic_target.set_training_mode(False)

        for network in (self.actor, self.critic, self.value_net):
            parameters = list(network.parameters())
            if network is not self.critic and network.features_extractor is shared:  # the critics' optimizer trains it
                network.features_detached = True
                named = network.named_parameters()
                parameters = [param for name, param in named if not name.startswith("features_extractor.")]
            network.optimizer = self.optimizer_class(parameters, lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            actor_dropout=self.actor_dropout,
            log_std_bounds=self.log_std_bounds,
            log_std_parametrization=self.log_std_parametrization,
            log_std_init=self.log_std_init,
            weight_init=self.weight_init,
            critic_layer_norm=self.critic_layer_norm,
            normalize_observations=self.normalize_observations,
            spread_first_layer_biases=self.spread_first_layer_biases,
            n_critics=self.n_critics,
            ortho_init_gain=self.ortho_init_gain,
            lr_schedule=self._dummy_schedule,  # not needed to load the policy alone
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        check_observation_indices(observation, self.observation_space)  # an encoding of zeros otherwise
        return self.actor(observation, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """Training mode (dropout on) or evaluation mode for the actor, the critics and the value network."""
        self.actor.set_training_mode(mode)
        self.critic.set_training_mode(mode)
        self.value_net.set_training_mode(mode)
        self.training = mode


MlpPolicy = IQLPolicy


class CnnPolicy(IQLPolicy):
    """IQL policy for image observations: same networks, each with SB3's ``NatureCNN`` (images divided by 255)."""

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] | str = NatureCNN,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


class MultiInputPolicy(IQLPolicy):
    """IQL policy for Dict observations: same networks, each with SB3's ``CombinedExtractor`` (``NatureCNN`` for
    image keys, a flatten for the others)."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] | str = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )
