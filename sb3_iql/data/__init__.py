from sb3_iql.data.buffers import OfflineDictReplayBuffer, OfflineReplayBuffer
from sb3_iql.data.device_buffers import DeviceDictReplayBuffer, DeviceReplayBuffer
from sb3_iql.data.her import HerReplayBuffer
from sb3_iql.data.image_buffers import DeviceImageReplayBuffer
from sb3_iql.data.minari_loader import DatasetNotFoundError, Transitions, load_dataset, load_transitions, resolve_datasets
from sb3_iql.data.rewards import AffineRewardTransform, make_reward_transform

#: The package's replay buffers by class name: a preset file (YAML) names its ``replay_buffer_class`` so.
REPLAY_BUFFER_CLASSES = {
    buffer_class.__name__: buffer_class
    for buffer_class in (
        DeviceReplayBuffer,
        DeviceDictReplayBuffer,
        DeviceImageReplayBuffer,
        HerReplayBuffer,
        OfflineReplayBuffer,
        OfflineDictReplayBuffer,
    )
}


def replay_buffer_class_named(name: str) -> type:
    """
    :param name: the class name of one of the package's replay buffers, e.g. ``"HerReplayBuffer"``
    :return: that class (``sb3_iql.HerReplayBuffer``, not SB3's, which cannot take offline data)
    :raises ValueError: no buffer of the package has that name; the message lists the names
    """
    if name not in REPLAY_BUFFER_CLASSES:
        raise ValueError(f"Unknown replay_buffer_class {name!r}: the package's buffers are {sorted(REPLAY_BUFFER_CLASSES)}")
    return REPLAY_BUFFER_CLASSES[name]


__all__ = [
    "REPLAY_BUFFER_CLASSES",
    "AffineRewardTransform",
    "DatasetNotFoundError",
    "DeviceDictReplayBuffer",
    "DeviceImageReplayBuffer",
    "DeviceReplayBuffer",
    "HerReplayBuffer",
    "OfflineDictReplayBuffer",
    "OfflineReplayBuffer",
    "Transitions",
    "load_dataset",
    "load_transitions",
    "make_reward_transform",
    "replay_buffer_class_named",
    "resolve_datasets",
]
