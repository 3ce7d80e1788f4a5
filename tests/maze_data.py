"""A tiny local PointMaze dataset (sb3_iql.datasets' generator) for the ecosystem tests: zoo, presets, examples."""

import pathlib
from collections.abc import Iterator

import pytest

from sb3_iql.datasets import make_pointmaze_dataset

MAZE_ID = "sb3_iql/pointmaze/umaze-stitch-v0"
MAZE_ENV_ID = "PointMaze_UMaze-v3"
MAZE_STEPS = 1200
#: Episodes of the UMaze evaluation environment, in steps.
MAZE_EPISODE_STEPS = 300


def tiny_maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A Minari root holding the tiny PointMaze dataset, set as MINARI_DATASETS_PATH (use as a module fixture body)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
        make_pointmaze_dataset("umaze", "sparse", stitch=True, n_steps=MAZE_STEPS, n_reference_episodes=2)
        yield root
