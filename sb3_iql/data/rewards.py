"""Reward transforms of the IQL paper, applied to offline and online rewards alike."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Scale of the locomotion transform: rewards are divided by the dataset's episode-return range, times this.
LOCOMOTION_RETURN_SCALE = 1000.0
#: Shift of the AntMaze transform (r - 1): a reward of 0 per step until the goal becomes -1.
ANTMAZE_REWARD_SHIFT = -1.0

RewardTransformLike = str | Callable[[np.ndarray], np.ndarray] | None


@dataclass(frozen=True)
class AffineRewardTransform:
    """``r -> scale * r + shift``, with constants fixed when the dataset is loaded (and saved with the model)."""

    scale: float = 1.0
    shift: float = 0.0

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        """
        :param rewards: any shape
        :return: transformed rewards, float32, same shape
        :raises ValueError: a transformed reward overflows float32 (huge rewards times the locomotion scale)
        """
        with np.errstate(over="ignore"):
            transformed = (self.scale * np.asarray(rewards, dtype=np.float32) + self.shift).astype(np.float32)
        if not np.isfinite(transformed).all():
            raise ValueError(
                f"reward_transform r -> {self.scale:g} r + {self.shift:g} overflows float32 for "
                f"{int((~np.isfinite(transformed)).sum())} of {transformed.size} rewards (largest |r| "
                f"{float(np.max(np.abs(rewards))):g}): rescale the rewards, or give a transform of your own"
            )
        return transformed


@dataclass(frozen=True)
class CheckedRewardTransform:
    """A reward transform of the user's (a callable), its output checked: one finite reward per reward given."""

    transform: Callable[[np.ndarray], np.ndarray]

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        """
        :param rewards: any shape
        :return: the callable's rewards, float32, same shape
        :raises ValueError: the callable returned another shape, or NaN or inf (in float32)
        """
        rewards = np.asarray(rewards)
        transformed = np.asarray(self.transform(rewards), dtype=np.float32)
        if transformed.shape != rewards.shape:
            raise ValueError(
                f"reward_transform {self.transform!r} returned shape {transformed.shape} for rewards of shape "
                f"{rewards.shape}: it must return one reward per reward"
            )
        if not np.isfinite(transformed).all():
            raise ValueError(
                f"reward_transform {self.transform!r} returned NaN or inf (in float32) for "
                f"{int((~np.isfinite(transformed)).sum())} of {transformed.size} rewards"
            )
        return transformed


def make_reward_transform(
    transform: RewardTransformLike, episode_returns: np.ndarray | None
) -> Callable[[np.ndarray], np.ndarray]:
    """
    :param transform: None (identity), ``"antmaze"`` (r - 1), ``"locomotion"``
        (r / (max episode return - min episode return) * 1000) or a callable on an array of rewards
    :param episode_returns: undiscounted returns of the dataset's episodes (as stored: each ends at a termination or
        a time limit), needed by ``"locomotion"``
    :return: the transform, with its constants fitted
    """
    if transform is None:
        return AffineRewardTransform()
    if callable(transform):
        return CheckedRewardTransform(transform)
    if transform == "antmaze":
        return AffineRewardTransform(shift=ANTMAZE_REWARD_SHIFT)
    if transform == "locomotion":
        if episode_returns is None or len(episode_returns) == 0:
            raise ValueError("reward_transform='locomotion' needs an offline dataset to measure the episode returns")
        return_range = float(np.max(episode_returns) - np.min(episode_returns))
        if return_range <= 0:
            raise ValueError(
                "reward_transform='locomotion' divides by the range of the dataset's episode returns, "
                f"which is {return_range}: all episodes have the same return"
            )
        return AffineRewardTransform(scale=LOCOMOTION_RETURN_SCALE / return_range)
    raise ValueError(f"Unknown reward_transform {transform!r}: use None, 'antmaze', 'locomotion' or a callable")
