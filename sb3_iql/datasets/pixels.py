"""
PointMaze seen in pixels, for image-based offline RL: a local PointMaze dataset's states re-rendered by MuJoCo's
offscreen renderer from a camera straight above the maze, at the height where the maze fills the frame.

Dataset ids: the state dataset's id with ``-pixels<size>`` before the version, e.g.
``sb3_iql/pointmaze/umaze-stitch-pixels48-v0`` from ``sb3_iql/pointmaze/umaze-stitch-v0`` (made first if missing).
Observations: ``(size, size, 6)`` uint8 images, the frame of the current step (channels 0-2) and of the step before
(channels 3-5; at an episode's first step, the current one again; SB3's ``VecFrameStack`` orders them the other
way and starts from zeros, so evaluate in ``PointMazePixels``, which stacks as the data do): the position
of the ball, its velocity (the difference between the two frames: under a pixel per step at 48x48, carried by the
antialiased edge) and the goal (the red marker) are only in the pictures. ``"CnnPolicy"`` takes them (NatureCNN,
channel-last frames transposed, ``DeviceImageReplayBuffer``).
Actions, rewards, episodes, reference scores and the evaluation goal are the state dataset's; the evaluation
environment renders the same frames (``PointMazePixels``), so ``dataset.recover_environment(eval_env=True)``
evaluates a policy on pixels.

Frames are stored losslessly (Minari's ``jpeg_encoding=False``: its default JPEG erases the small goal marker and
shifts every colour, so training frames would differ from the evaluation environment's). Rendering needs an
offscreen OpenGL backend: ``MUJOCO_GL=egl`` (set here when unset) or ``osmesa``.
"""

import math
import numbers
import os
import re
from typing import Any

import gymnasium as gym
import minari
import mujoco
import numpy as np
from gymnasium import spaces
from minari.data_collector import EpisodeBuffer

from sb3_iql.data.minari_loader import truncated_where_cut
from sb3_iql.datasets.pointmaze import POSITION_DIM, make_pointmaze_env, parse_pointmaze_dataset_id
from sb3_iql.datasets.storage import check_writable, write_dataset

#: Frame side of the default pixel datasets (NatureCNN needs at least 36).
DEFAULT_SIZE = 48
#: The smallest frame side the image policies take (NatureCNN's three convolutions).
MIN_SIZE = 36
#: Transitions of a pixel dataset by default (the first episodes of its state dataset): 100k observations of
#: 48x48x6 take 1.4 GB, stored losslessly.
DEFAULT_PIXEL_STEPS = 100_000
#: Frames per observation: the current one and the one before.
N_FRAMES = 2
_PIXEL_ID_RE = re.compile(r"^(?P<source>.+)-pixels(?P<size>\d+)(?P<version>-v\d+)$")


def top_down_camera(maze_env: Any) -> dict[str, Any]:
    """
    :param maze_env: an unwrapped PointMaze environment
    :return: MuJoCo free-camera settings (Gymnasium's ``default_camera_config``): straight above the maze's centre,
        at the distance where the vertical field of view spans the maze's longer side, so that the maze fills the
        frame (PointMaze's own camera looks at it from the side and far away: at 48x48 the ball was 1-2 pixels)
    """
    maze = maze_env.maze
    extent = max(maze.map_width, maze.map_length) * maze.maze_size_scaling  # metres
    field_of_view = maze_env.point_env.model.vis.global_.fovy  # degrees
    distance = extent / 2 / math.tan(math.radians(field_of_view / 2))
    return {"distance": distance, "elevation": -90.0, "azimuth": 90.0, "lookat": np.zeros(3)}


class PointMazePixels(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    PointMaze observed from above: ``(size, size, 6)`` uint8, the frame of this step and of the one before (the
    current one again after a reset), from ``top_down_camera``. The wrapped environment renders ``rgb_array``
    frames of ``size x size`` (``make_pixel_pointmaze_env`` makes it so) and has not rendered yet (its camera is
    set up at the first frame).

    :param env: a PointMaze environment with ``render_mode="rgb_array"``, ``width=height=size``
    :param size: frame height and width in pixels
    """

    def __init__(self, env: gym.Env, size: int = DEFAULT_SIZE):
        # Before the first frame, which creates the renderer (also where ``recover_environment`` builds this wrapper):
        # without it Gymnasium tries GLFW first, which fails without a display and leaves EGL unusable.
        os.environ.setdefault("MUJOCO_GL", "egl")
        gym.utils.RecordConstructorArgs.__init__(self, size=size)
        gym.Wrapper.__init__(self, env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"PointMazePixels needs render_mode='rgb_array', got {env.render_mode!r}")
        self.observation_space = spaces.Box(0, 255, (size, size, 3 * N_FRAMES), np.uint8)
        maze_env: Any = env.unwrapped
        maze_env.point_env.mujoco_renderer.default_cam_config = top_down_camera(maze_env)
        self._previous_frame: np.ndarray | None = None

    def _observe(self, first: bool) -> np.ndarray:
        # After a physics step MuJoCo's body positions are those of the step's start: recompute them from the state,
        # as ``render_states`` does for the dataset's frames, so that both draw the ball where the state has it.
        point_env = self.env.unwrapped.point_env
        mujoco.mj_forward(point_env.model, point_env.data)
        frame = self.env.render()
        previous = frame if first or self._previous_frame is None else self._previous_frame
        self._previous_frame = frame
        return np.concatenate([frame, previous], axis=-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        _, info = self.env.reset(seed=seed, options=options)
        return self._observe(first=True), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        _, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(first=False), float(reward), terminated, truncated, info


def make_pixel_pointmaze_env(
    maze: str, reward: str = "sparse", size: int = DEFAULT_SIZE, evaluation: bool = False, keep_goal: bool = False
) -> gym.Env:
    """:return: ``make_pointmaze_env(maze, reward, evaluation, keep_goal)`` rendering ``size x size`` frames, in pixels"""
    env = make_pointmaze_env(maze, reward, evaluation, keep_goal, render_mode="rgb_array", width=size, height=size)
    return PointMazePixels(env, size)


def pixel_dataset_id(source_id: str, size: int = DEFAULT_SIZE, check: bool = True) -> str:
    """
    :param check: refuse ids that are not this package's PointMaze ids (``parse_pointmaze_dataset_id``)
    :return: the id of ``source_id`` re-rendered at ``size`` (``...-v0`` -> ``...-pixels<size>-v0``)
    """
    if check:
        parse_pointmaze_dataset_id(source_id)
    head, version = source_id.rsplit("-v", 1)
    return f"{head}-pixels{size}-v{version}"


def parse_pixel_dataset_id(dataset_id: str) -> tuple[str, int]:
    """
    :return: ``(state dataset id, frame size)``
    :raises ValueError: not a pixel PointMaze id of this package
    """
    match = _PIXEL_ID_RE.match(dataset_id)
    if match is None:
        raise ValueError(f"{dataset_id!r} is not a pixel PointMaze id (<PointMaze id without version>-pixels<size>-v0)")
    source_id = match["source"] + match["version"]
    parse_pointmaze_dataset_id(source_id)
    return source_id, int(match["size"])


def render_states(env: PointMazePixels, observations: np.ndarray, goals: np.ndarray) -> np.ndarray:
    """
    :param env: a reset ``PointMazePixels`` environment (its simulator state is overwritten)
    :param observations: PointMaze states ``(n, 4)``: x, y, x velocity, y velocity
    :param goals: goal positions ``(n, 2)`` (the red marker)
    :return: the frames ``(n, size, size, 3)`` of those states
    """
    maze_env: Any = env.unwrapped
    size = env.observation_space.shape[0]
    frames = np.empty((len(observations), size, size, 3), np.uint8)
    for index, (state, goal) in enumerate(zip(observations, goals)):
        maze_env.goal = goal
        maze_env.update_target_site_pos()
        maze_env.point_env.set_state(state[:POSITION_DIM], state[POSITION_DIM:])  # forward kinematics: marker too
        frames[index] = env.render()
    return frames


def make_pixel_pointmaze_dataset(
    source: minari.MinariDataset,
    size: int = DEFAULT_SIZE,
    n_steps: int | None = None,
    dataset_id: str | None = None,
    overwrite: bool = False,
    maze_and_reward: tuple[str, str] | None = None,
) -> minari.MinariDataset:
    """
    Re-render a local PointMaze dataset of this package in pixels (module docstring).

    :param source: the state dataset (``sb3_iql.datasets.ensure_dataset(id)``)
    :param size: frame height and width in pixels, at least ``MIN_SIZE`` (NatureCNN)
    :param n_steps: transitions: the source's first episodes, the last one cut (truncated) where they reach it
        (None: ``DEFAULT_PIXEL_STEPS``, or all of a smaller source)
    :param dataset_id: id to write (default: ``pixel_dataset_id(source id, size)``)
    :param overwrite: replace an existing dataset with that id
    :param maze_and_reward: the source's maze and reward, for a source written under another id (default: read from
        its id, ``parse_pointmaze_dataset_id``)
    :return: the pixel dataset
    """
    source_id = source.spec.dataset_id
    if not isinstance(size, numbers.Integral) or size < MIN_SIZE:  # before anything is written
        raise ValueError(f"size must be an integer of at least {MIN_SIZE} pixels (NatureCNN's input), got {size!r}")
    size = int(size)
    if n_steps is None:
        n_steps = min(DEFAULT_PIXEL_STEPS, source.total_steps)
    elif n_steps > source.total_steps:  # it would write fewer, and a later call asking for n_steps would refuse them
        raise ValueError(f"n_steps={n_steps} is more than the {source.total_steps} steps of {source_id}")
    maze, reward = maze_and_reward or parse_pointmaze_dataset_id(source_id)[:2]
    dataset_id = dataset_id or pixel_dataset_id(source_id, size, check=maze_and_reward is None)
    check_writable(dataset_id, overwrite)
    source_spec = source.spec.env_spec
    keep_goal = source_spec is not None and source_spec.kwargs.get("reset_target") is False  # the -antmaze recipes'
    env = make_pixel_pointmaze_env(maze, reward, size, keep_goal=keep_goal)
    env.reset(seed=0)
    episodes: list[EpisodeBuffer] = []
    total = 0
    for episode in source.iterate_episodes():
        length = min(len(episode.actions), n_steps - total)  # the last episode is cut (truncated) to fit
        if length <= 0:
            break
        total += length
        frames = render_states(env, episode.observations["observation"][: length + 1], episode.observations["desired_goal"])
        truncations = truncated_where_cut(episode.terminations[:length], episode.truncations[:length])
        episodes.append(
            EpisodeBuffer(
                id=episode.id,
                observations=np.concatenate([frames, np.concatenate([frames[:1], frames[:-1]])], axis=-1),
                actions=episode.actions[:length],
                rewards=episode.rewards[:length],
                terminations=episode.terminations[:length],
                truncations=truncations,
                infos={},
            )
        )
    metadata = source.storage.metadata
    return write_dataset(
        dataset_id,
        episodes,
        env=env,
        eval_env=make_pixel_pointmaze_env(maze, reward, size, evaluation=True),
        overwrite=overwrite,
        algorithm_name=metadata.get("algorithm_name"),
        description=f"{source_id} re-rendered as {size}x{size} RGB frames from a camera above the maze, two per "
        "observation (this step's and the one before); position, velocity and goal are only in the pictures. "
        "Generated by sb3_iql.datasets.",
        ref_min_score=metadata.get("ref_min_score"),
        ref_max_score=metadata.get("ref_max_score"),
        num_episodes_average_score=metadata.get("num_episodes_average_score"),
        jpeg_encoding=False,  # Minari's default JPEG erases the small goal marker and shifts every colour
    )
