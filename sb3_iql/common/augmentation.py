"""Random-shift augmentation of image observations (DrQ, Kostrikov, Yarats and Fergus, 2021), on the device."""

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space


def random_shift(images: th.Tensor, pad: int, generator: th.Generator | None = None) -> th.Tensor:
    """
    Shift each image by up to ``pad`` pixels in both directions: pad by replicating the border, then crop back at a
    random offset per image.

    :param images: ``(batch, channels, height, width)``, any dtype (uint8 stays uint8)
    :param pad: largest shift in pixels (0: the images unchanged)
    :param generator: generator of the offsets, on the images' device (None: the default one)
    :return: the shifted images, same shape and dtype
    """
    if pad == 0:
        return images
    batch, channels, height, width = images.shape
    offsets = th.randint(0, 2 * pad + 1, (batch, 2), device=images.device, generator=generator) - pad
    # the padded image's pixel (r + offset) is the image's pixel r + offset - pad clamped to the image (replicated
    # borders): gathered from the images themselves, in their dtype, without building the padded copy
    rows = (th.arange(height, device=images.device) + offsets[:, :1]).clamp_(0, height - 1)[:, None, :, None]
    columns = (th.arange(width, device=images.device) + offsets[:, 1:]).clamp_(0, width - 1)[:, None, None, :]
    samples = th.arange(batch, device=images.device)[:, None, None, None]
    return images[samples, th.arange(channels, device=images.device)[None, :, None, None], rows, columns]


def has_images(observation_space: spaces.Space, normalized_image: bool = False) -> bool:
    """
    :param normalized_image: whether float images count (a policy with ``normalize_images=False``, as SB3's
        ``is_image_space`` takes it: any 3-D Box); otherwise SB3's uint8 images only
    :return: whether the space is an image, or a Dict with an image key (what ``shift_observations`` shifts)
    """
    subspaces = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    return any(is_image_space(space, check_channels=False, normalized_image=normalized_image) for space in subspaces)


def shift_observations(
    observations: Any,
    observation_space: spaces.Space,
    pad: int,
    generator: th.Generator | None,
    normalized_image: bool = False,
) -> Any:
    """:return: ``observations`` (a tensor or a dict of them) with every image (key, as ``has_images``) randomly shifted"""
    if isinstance(observations, dict):
        return {
            key: shift_observations(value, observation_space[key], pad, generator, normalized_image)
            for key, value in observations.items()
        }
    if is_image_space(observation_space, check_channels=False, normalized_image=normalized_image):
        return random_shift(observations, pad, generator)
    return observations
