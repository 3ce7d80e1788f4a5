"""Image features extractors for IQL's networks, beside SB3's (``stable_baselines3.common.torch_layers``)."""

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn


class LayerNormNatureCNN(BaseFeaturesExtractor):
    """
    SB3's ``NatureCNN`` with DrQ-v2's output layer: its convolutions, then ``Linear -> LayerNorm -> tanh`` instead
    of ``Linear -> ReLU``.

    On frames that differ only by a few pixels (a small object moving on a fixed background) the linear layer's
    inputs barely change from frame to frame, so each ReLU unit is on for every frame or off for every frame: half
    of NatureCNN's 512 features are zero everywhere from the start, more die as the critics train, and a shared
    encoder trained by the critics can end with none alive. LayerNorm and tanh keep every unit trainable
    (``benchmarks/results/scores.md``, pixel PointMaze).

    :param observation_space: channel-first image space, as NatureCNN's
    :param features_dim: number of features (output units)
    :param normalized_image: whether images are already in [0, 1] (as NatureCNN's argument)
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 512, normalized_image: bool = False) -> None:
        super().__init__(observation_space, features_dim)
        nature = NatureCNN(observation_space, features_dim, normalized_image)
        self.cnn = nature.cnn
        self.linear = nn.Sequential(nature.linear[0], nn.LayerNorm(features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """:param observations: ``(batch, channels, height, width)`` preprocessed images
        :return: ``(batch, features_dim)`` features in [-1, 1]"""
        return self.linear(self.cnn(observations))


class SpatialSoftmaxCNN(BaseFeaturesExtractor):
    """
    Convolutions ending in a spatial softmax (Levine et al., 2016, "End-to-end training of deep visuomotor
    policies"): each of the last layer's ``features_dim / 2`` maps becomes a probability over the image, and the
    features are its expected (x, y) coordinates, in [-1, 1]. Where the task is where an object is (a ball in a
    maze), the features are positions, as a state observation would give them, instead of NatureCNN's 512 units
    after a stride-4 convolution.

    :param observation_space: channel-first image space
    :param features_dim: number of features, two per keypoint (even)
    :param normalized_image: unused (images arrive in [0, 1]); accepted as NatureCNN's argument is
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 64, normalized_image: bool = False) -> None:
        if features_dim % 2:
            raise ValueError(f"SpatialSoftmaxCNN's features_dim is two per keypoint: it must be even, got {features_dim}")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(
                f"SpatialSoftmaxCNN takes a channel-first image Box (channels, height, width) with CnnPolicy, not "
                f"{observation_space}: with MultiInputPolicy, SB3's CombinedExtractor encodes each image key with NatureCNN"
            )
        super().__init__(observation_space, features_dim)
        channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, features_dim // 2, kernel_size=3, stride=1),
        )
        with th.no_grad():
            height, width = self.cnn(th.zeros(1, *observation_space.shape)).shape[-2:]
        grid_y, grid_x = th.meshgrid(th.linspace(-1, 1, height), th.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", th.stack([grid_x.flatten(), grid_y.flatten()], dim=-1), persistent=False)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """:param observations: ``(batch, channels, height, width)`` preprocessed images
        :return: ``(batch, features_dim)``: the keypoints' expected x and y, ``(x_1, y_1, x_2, y_2, ...)``"""
        maps = self.cnn(observations).flatten(start_dim=2)  # (batch, keypoints, height * width)
        keypoints = th.softmax(maps, dim=-1) @ self.grid  # (batch, keypoints, 2)
        return keypoints.flatten(start_dim=1)


#: The package's features extractors and SB3's, by class name: a preset file (YAML) names a
#: ``policy_kwargs.features_extractor_class`` so.
FEATURES_EXTRACTOR_CLASSES: dict[str, type[BaseFeaturesExtractor]] = {
    extractor_class.__name__: extractor_class for extractor_class in (NatureCNN, LayerNormNatureCNN, SpatialSoftmaxCNN)
}


def features_extractor_class_named(name: str) -> type[BaseFeaturesExtractor]:
    """
    :param name: a class name of :data:`FEATURES_EXTRACTOR_CLASSES`
    :return: the class
    :raises ValueError: no extractor has that name; the message lists the names
    """
    if name not in FEATURES_EXTRACTOR_CLASSES:
        raise ValueError(
            f"Unknown features_extractor_class {name!r}: the extractors known by name are "
            f"{sorted(FEATURES_EXTRACTOR_CLASSES)} (or pass a class)"
        )
    return FEATURES_EXTRACTOR_CLASSES[name]
