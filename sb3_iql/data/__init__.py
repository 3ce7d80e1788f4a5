from sb3_iql.data.buffers import OfflineDictReplayBuffer, OfflineReplayBuffer
from sb3_iql.data.device_buffers import DeviceDictReplayBuffer, DeviceReplayBuffer
from sb3_iql.data.her import HerReplayBuffer
from sb3_iql.data.image_buffers import DeviceImageReplayBuffer
from sb3_iql.data.minari_loader import DatasetNotFoundError, Transitions, load_dataset, load_transitions, resolve_datasets
from sb3_iql.data.rewards import AffineRewardTransform, make_reward_transform

__all__ = [
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
    "resolve_datasets",
]
