"""
Offline datasets as local Minari datasets: PointMaze generators (states, or pixels), medium-expert data of PPO
(Discrete actions included), rollouts of any policy, SB3 replay buffers.

Command line: ``python -m sb3_iql.datasets {pointmaze,medium-expert,collect,list} --help``.
"""

from sb3_iql.datasets.collect import (
    NormalizedPredictor,
    RandomPolicy,
    average_return,
    collect,
    reference_scores,
    rollout_episodes,
    write_episodes,
)
from sb3_iql.datasets.generated import ensure_dataset
from sb3_iql.datasets.maze_controller import WaypointController
from sb3_iql.datasets.medium_expert import make_medium_expert_dataset, medium_expert_dataset_id
from sb3_iql.datasets.pixels import PointMazePixels, make_pixel_pointmaze_dataset, make_pixel_pointmaze_env, pixel_dataset_id
from sb3_iql.datasets.pointmaze import (
    MAZES,
    REWARD_TYPES,
    make_pointmaze_dataset,
    make_pointmaze_env,
    parse_pointmaze_dataset_id,
    pointmaze_dataset_id,
)
from sb3_iql.datasets.replay import dataset_from_replay_buffer, replay_buffer_episodes
from sb3_iql.datasets.storage import dataset_exists, write_dataset

__all__ = [
    "MAZES",
    "REWARD_TYPES",
    "NormalizedPredictor",
    "PointMazePixels",
    "RandomPolicy",
    "WaypointController",
    "average_return",
    "collect",
    "dataset_exists",
    "dataset_from_replay_buffer",
    "ensure_dataset",
    "make_medium_expert_dataset",
    "make_pixel_pointmaze_dataset",
    "make_pixel_pointmaze_env",
    "make_pointmaze_dataset",
    "make_pointmaze_env",
    "medium_expert_dataset_id",
    "parse_pointmaze_dataset_id",
    "pixel_dataset_id",
    "pointmaze_dataset_id",
    "reference_scores",
    "replay_buffer_episodes",
    "rollout_episodes",
    "write_dataset",
    "write_episodes",
]
