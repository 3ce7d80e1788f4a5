"""
Observations of offline data as the policy takes them: images channel-first (as SB3's ``VecTransposeImage`` gives
them online), SB3's preprocessing in a form ``torch.compile`` can trace, and normalisation with fixed statistics of
the offline dataset (as CORL and Unifloral normalise states).
"""

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

#: Observations of n transitions: an array ``(n, *obs_shape)`` or a dict of such arrays.
BatchObs = np.ndarray | dict[str, np.ndarray]


def observation_breaks(observations: BatchObs, next_observations: BatchObs) -> np.ndarray:
    """
    Where consecutive transitions do not join: a reset (or a jump) between them.

    :param observations: ``(n, *obs_shape)`` (a dict of them for Dict spaces), in order
    :param next_observations: the same transitions' next observations, same shapes
    :return: ``(n,)`` bool, True where a transition's next observation differs from the next transition's
        observation (in any key); the last transition: False
    """
    if isinstance(observations, dict):
        parts = [observation_breaks(observations[key], next_observations[key]) for key in observations]
        return np.logical_or.reduce(parts) if parts else np.zeros(0, dtype=bool)
    observations, next_observations = np.asarray(observations), np.asarray(next_observations)
    breaks = np.zeros(len(observations), dtype=bool)
    if len(observations) > 1:
        breaks[:-1] = (observations[1:] != next_observations[:-1]).reshape(len(observations) - 1, -1).any(axis=1)
    return breaks


def to_channel_first(observations: BatchObs, observation_space: spaces.Space) -> BatchObs:
    """
    Dataset images are stored as the environment gives them, often channel-last ``(n, H, W, C)``; SB3 wraps such
    environments in ``VecTransposeImage`` so the policy's space is ``(C, H, W)``. Transpose them to match (a view).

    :param observations: ``(n, *shape)`` arrays, or a dict of them
    :param observation_space: the policy's observation space
    :return: the observations, images transposed where their shape is the channel-last one of the space
    """
    if isinstance(observations, dict) and isinstance(observation_space, spaces.Dict):
        return {key: to_channel_first(value, observation_space[key]) for key, value in observations.items()}
    shape = observation_space.shape
    if isinstance(observations, np.ndarray) and shape is not None and len(shape) == 3:
        if observations.shape[1:] != shape and observations.shape[1:] == channel_last(shape):
            return observations.transpose(0, 3, 1, 2)
    return observations


def channel_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """:return: the channel-last ``(H, W, C)`` form of a channel-first image shape ``(C, H, W)``"""
    return shape[1], shape[2], shape[0]


#: How SB3 preprocesses one observation space, as constants of a network (``observation_preprocessing``): for a Box,
#: whether it divides by 255; for Discrete and MultiDiscrete spaces, the class counts of their one-hot encoding;
#: None for MultiBinary (taken as floats); per key of a Dict space.
ObservationPreprocessing = bool | int | tuple[int, ...] | None | dict[str, "ObservationPreprocessing"]


def observation_preprocessing(observation_space: spaces.Space, normalize_images: bool) -> ObservationPreprocessing:
    """
    :return: what SB3's ``preprocess_obs`` does to these observations, computed once when a network is built: per
        key of a Dict space, whether a Box is divided by 255 (``normalize_images`` and an image space), the class
        counts of a Discrete or MultiDiscrete space's one-hot encoding, None for MultiBinary. As Python constants: SB3
        reads the space (its NumPy bounds, its ``n``) at every call, on which a compiled graph cannot branch, and a
        compiled graph that read the space itself would be guarded on the space object, so that every new model
        would compile it again.
    """
    if isinstance(observation_space, spaces.Dict):
        return {key: observation_preprocessing(space, normalize_images) for key, space in observation_space.spaces.items()}
    if isinstance(observation_space, spaces.Discrete):
        return int(observation_space.n)
    if isinstance(observation_space, spaces.MultiDiscrete):
        return tuple(int(n) for n in observation_space.nvec.flatten())
    if isinstance(observation_space, spaces.MultiBinary):
        return None
    return normalize_images and is_image_space(observation_space)


def _one_hot(indices: th.Tensor, n_classes: int) -> th.Tensor:
    """:return: ``F.one_hot(indices.long(), n_classes).float()`` as a comparison, which ``torch.compile`` and
    ``vmap`` trace (``one_hot`` infers its output size from the data)"""
    return (indices.long().unsqueeze(-1) == th.arange(n_classes, device=indices.device)).float()


def preprocess_observations(
    obs: PyTorchObs, observation_space: spaces.Space, preprocessing: ObservationPreprocessing
) -> PyTorchObs:
    """
    SB3's ``preprocess_obs`` (float observations, images divided by 255, one-hot discrete ones), in a form that
    ``torch.compile(fullgraph=True)`` and ``vmap`` trace: the update of image and discrete observations compiles too.

    :param obs: a batch of observations ``(batch, *shape)``, or a dict of them
    :param observation_space: their space
    :param preprocessing: ``observation_preprocessing(observation_space, normalize_images)``
    :return: the preprocessed batch, as SB3's
    """
    if isinstance(observation_space, spaces.Dict):
        return {key: preprocess_observations(value, observation_space[key], preprocessing[key]) for key, value in obs.items()}  # type: ignore[index]
    if isinstance(observation_space, spaces.Box):
        return obs.float() / 255.0 if preprocessing else obs.float()
    if isinstance(observation_space, spaces.Discrete):  # (batch,) or (batch, 1) indices
        return _one_hot(obs, preprocessing)  # type: ignore[arg-type]
    if isinstance(observation_space, spaces.MultiDiscrete):  # one one-hot block per column, side by side
        columns = obs.reshape(obs.shape[0], -1)
        blocks = [_one_hot(columns[:, index], n_classes) for index, n_classes in enumerate(preprocessing)]  # type: ignore[arg-type]
        return th.cat(blocks, dim=-1)
    return obs.float()  # MultiBinary


def check_observation_indices(obs: PyTorchObs, observation_space: spaces.Space) -> None:
    """
    :param obs: a batch of observations ``(batch, *shape)``, or a dict of them (tensors)
    :raises ValueError: a Discrete or MultiDiscrete observation outside its space, whose one-hot encoding would be all
        zeros (SB3's ``one_hot`` raised deep inside); checked where observations come from outside (``predict``)
    """
    if isinstance(observation_space, spaces.Dict):
        for key, space in observation_space.spaces.items():
            check_observation_indices(obs[key], space)  # type: ignore[index]
        return
    if not isinstance(observation_space, (spaces.Discrete, spaces.MultiDiscrete)):
        return
    counts = np.atleast_1d(observation_space.n if isinstance(observation_space, spaces.Discrete) else observation_space.nvec)
    values = obs.reshape(obs.shape[0], -1)
    high = th.as_tensor(counts.reshape(1, -1), device=values.device)
    bad = (values < 0) | (values >= high) | (values != values.round())
    if bad.any():
        raise ValueError(f"Observation values {values[bad][:5].tolist()} are outside {observation_space}")


#: Features whose standard deviation in the data is below this are only centred, not scaled (e.g. a goal that is
#: the same in every transition): scaling them would blow up any other value met at evaluation.
MIN_STD = 1e-6
#: Added to each pixel's standard deviation (in the images' preprocessed units, [0, 1] with ``normalize_images``):
#: a pixel that the data shows nearly constant (a spot the moving object seldom crossed) is scaled at most 50x.
IMAGE_STD_OFFSET = 0.02
#: Observations per chunk when the statistics are computed (float64 copies of a chunk only, not of the dataset).
_FIT_CHUNK = 4096


def _mean_and_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    :return: the per-feature mean and standard deviation of ``(n, *shape)`` values, over the first axis, in chunks
        and two passes as ``np.std``: ``E[x^2] - E[x]^2`` gave a feature constant at 123.456 over 1M rows a standard
        deviation of 1.5e-5, above ``MIN_STD``
    """
    starts = range(0, len(values), _FIT_CHUNK)

    def chunk(start: int) -> np.ndarray:
        return np.asarray(values[start : start + _FIT_CHUNK], dtype=np.float64)

    mean = sum(chunk(start).sum(axis=0) for start in starts) / len(values)
    variance = sum(np.square(chunk(start) - mean).sum(axis=0) for start in starts) / len(values)
    return mean, np.sqrt(variance)


class ObservationNormalizer(nn.Module):
    """
    ``(obs - mean) / std`` per observation feature (per key of a Dict space), with statistics fitted once on the
    offline dataset and then fixed (saved with the policy's state dict). Identity until fitted. Applied to the
    preprocessed observations: images per pixel and channel, in the units the networks see (divided by 255 with
    ``normalize_images``), with ``IMAGE_STD_OFFSET`` added to each pixel's std. On a fixed background (a maze seen
    from above) this subtracts the background and leaves the moving object: NatureCNN's features of pixel
    PointMaze vary by 0.017 across ball positions at initialisation instead of 0.0006
    (``benchmarks/results/scores.md``). One-hot encoded observations (Discrete, MultiDiscrete) are left as they are.

    :param observation_space: Box or Dict observation space (channel-first images, as the policy's)
    :param normalize_images: whether the networks see images divided by 255 (SB3's ``normalize_images``)
    """

    def __init__(self, observation_space: spaces.Space, normalize_images: bool = True):
        super().__init__()
        is_dict = isinstance(observation_space, spaces.Dict)
        subspaces = dict(observation_space.spaces) if is_dict else {"obs": observation_space}
        #: Image keys and the factor between their stored values and the networks' inputs.
        self.image_scales = {
            name: 255.0 if normalize_images else 1.0
            for name, space in subspaces.items()
            if is_image_space(space, check_channels=False)
        }
        self.keys: list[str] | None = list(subspaces) if is_dict else None
        #: One-hot encoded keys (Discrete, MultiDiscrete): left as they are (statistics 0 and 1, never fitted).
        self.one_hot = {
            name for name, space in subspaces.items() if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete))
        }
        for name, space in subspaces.items():
            shape = (int(np.sum(space.nvec)),) if isinstance(space, spaces.MultiDiscrete) else space.shape  # one-hot
            self.register_buffer(f"mean_{name}", th.zeros(shape))
            self.register_buffer(f"std_{name}", th.ones(shape))
        self.register_buffer("fitted", th.zeros((), dtype=th.bool))

    def fit(self, observations: np.ndarray | dict[str, np.ndarray]) -> None:
        """
        :param observations: the dataset's observations as stored, ``(n, *shape)`` (images channel-first, uint8)
            or a dict of them
        """
        parts = observations if self.keys is not None else {"obs": observations}
        for name, values in parts.items():
            if name in self.one_hot:
                continue
            mean, std = _mean_and_std(values)
            if name in self.image_scales:
                scale = self.image_scales[name]
                mean, std = mean / scale, std / scale + IMAGE_STD_OFFSET
            else:
                std = np.where(std < MIN_STD, 1.0, std)
            getattr(self, f"mean_{name}").copy_(th.as_tensor(mean))
            getattr(self, f"std_{name}").copy_(th.as_tensor(std))
        self.fitted.fill_(True)

    def forward(self, observations: PyTorchObs) -> PyTorchObs:
        """:param observations: preprocessed float observations, ``(batch, *shape)`` or a dict of them"""
        if self.keys is None:
            return (observations - self.mean_obs) / self.std_obs
        return {key: (observations[key] - getattr(self, f"mean_{key}")) / getattr(self, f"std_{key}") for key in self.keys}
