"""
Where a trained model's value function peaks in a PointMaze: V(s) at the centre of every open cell of the maze,
standing still, with the goal of the evaluation environment's first reset (seed 0) as ``desired_goal``, printed
as a map (walls ``#``, the goal cell marked ``*``). On sparse goal rewards shifted by -1 (AntMaze's r - 1) a sound
V rises towards the goal cell; a peak elsewhere is a place where the greedy policy stops (the deterministic action
there is about zero), which is how a run that reached the goal earlier can lose it later
(``benchmarks/results/scores.md``, eleventh session).

Takes models saved by ``model.save`` (``benchmarks/scores.py --save-models DIR``, or its checkpoints in
``--checkpoint-dir``) of a Dict-observation PointMaze dataset.

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/value_map.py \\
        --dataset sb3_iql/pointmaze/large-stitch-v0 --models run_50k.zip run_75k.zip
"""

import argparse
from pathlib import Path

import numpy as np
import torch as th
from gymnasium_robotics.envs.maze.maze import Maze

from sb3_iql import IQL
from sb3_iql.data.minari_loader import load_dataset


def standing_still(positions: np.ndarray, goal: np.ndarray) -> dict[str, np.ndarray]:
    """
    :param positions: ball positions (x, y) in metres, shape ``(n, 2)``
    :param goal: the goal position (x, y) in metres, shape ``(2,)``
    :return: PointMaze Dict observations of the ball at rest at each position, pursuing ``goal``
    """
    positions = positions.astype(np.float32)
    return {
        "observation": np.concatenate([positions, np.zeros_like(positions)], axis=1),
        "achieved_goal": positions,
        "desired_goal": np.repeat(goal[None].astype(np.float32), len(positions), axis=0),
    }


def value_grid(model: IQL, maze: Maze, goal: np.ndarray) -> np.ndarray:
    """
    :param model: a trained IQL model with Dict observations (``observation`` = x, y, vx, vy)
    :param maze: the environment's ``Maze`` (Gymnasium-Robotics)
    :param goal: the goal position (x, y) in metres, shape ``(2,)``
    :return: V at every cell centre, standing still, shape ``(rows, columns)``; NaN on walls
    """
    rows, columns = maze.map_length, maze.map_width
    cells = [(row, column) for row in range(rows) for column in range(columns) if maze.maze_map[row][column] != 1]
    positions = np.array([maze.cell_rowcol_to_xy(np.array(cell)) for cell in cells])
    model.policy.set_training_mode(False)
    with th.no_grad():
        obs_tensor, _ = model.policy.obs_to_tensor(standing_still(positions, goal))
        values = model.policy.value_net(obs_tensor).flatten().cpu().numpy()
    grid = np.full((rows, columns), np.nan)
    for (row, column), value in zip(cells, values):
        grid[row, column] = value
    return grid


def render(grid: np.ndarray, goal_cell: tuple[int, int]) -> str:
    """:return: the grid as text, one maze row per line, walls ``#``, the goal cell's value followed by ``*``"""
    lines = []
    for row, values in enumerate(grid):
        cells = []
        for column, value in enumerate(values):
            mark = "*" if (row, column) == goal_cell else " "
            cells.append(f"{'#':>6} " if np.isnan(value) else f"{value:6.1f}{mark}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="Minari id of the PointMaze dataset the models learned from")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="models saved by model.save (.zip)")
    args = parser.parse_args()
    th.set_num_threads(1)
    env = load_dataset(args.dataset).recover_environment(eval_env=True)
    maze = env.unwrapped.maze
    goal = np.asarray(env.reset(seed=0)[0]["desired_goal"])
    goal_cell = tuple(int(index) for index in maze.cell_xy_to_rowcol(goal))
    for path in args.models:
        grid = value_grid(IQL.load(path, device="cpu"), maze, goal)
        best = tuple(int(index) for index in np.unravel_index(np.nanargmax(grid), grid.shape))
        print(f"{path.name}: V standing still; goal cell {goal_cell}: {grid[goal_cell]:.1f}; peak: {best}: {grid[best]:.1f}")
        print(render(grid, goal_cell) + "\n")


if __name__ == "__main__":
    main()
