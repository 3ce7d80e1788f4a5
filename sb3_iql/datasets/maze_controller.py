"""Waypoint planner and PD controller for the PointMaze environments (the D4RL / Minari data recipe)."""

from collections import deque

import numpy as np
from gymnasium_robotics.envs.maze.maze_v4 import Maze

Cell = tuple[int, int]

WALL = 1
# Proportional and derivative gains of the D4RL / Minari PointMaze controller
P_GAIN = 10.0
D_GAIN = -1.0
# Distance (m) at which the controller switches to the next waypoint
WAYPOINT_THRESHOLD = 0.1
# Four-connected moves on the maze grid, in a fixed order so that planning is deterministic
GRID_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


class WaypointController:
    """
    Goal-reaching controller for a point mass in a maze.

    A breadth-first search over the free cells of ``maze.maze_map`` gives, for every cell, the next cell on a
    shortest path to the goal cell. The controller steers with a PD law towards the centre of that next cell,
    switches to the following waypoint once within ``waypoint_threshold``, and aims at the exact goal
    position in the goal cell: ``action = clip(p_gain * (waypoint - position) + d_gain * velocity, -1, 1)``.
    It replans whenever the desired goal changes.

    :param maze: The maze of a gymnasium-robotics ``PointMazeEnv`` (``env.unwrapped.maze``).
    :param p_gain: Proportional gain (action units per metre).
    :param d_gain: Derivative gain on the velocity (action units per m/s), negative to damp.
    :param waypoint_threshold: Distance (m) to a waypoint at which the next one is targeted.
    """

    def __init__(
        self,
        maze: Maze,
        p_gain: float = P_GAIN,
        d_gain: float = D_GAIN,
        waypoint_threshold: float = WAYPOINT_THRESHOLD,
    ) -> None:
        self.maze = maze
        self.p_gain = p_gain
        self.d_gain = d_gain
        self.waypoint_threshold = waypoint_threshold
        self._free_cells = {
            (row, col) for row, line in enumerate(maze.maze_map) for col, cell in enumerate(line) if cell != WALL
        }
        self._next_cell_tables: dict[Cell, dict[Cell, Cell]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the current plan (call when the environment is reset)."""
        self._goal = (np.nan, np.nan)
        self._goal_cell: Cell = (-1, -1)
        self._next_cell: dict[Cell, Cell] = {}
        self._waypoint_cell: Cell = (-1, -1)
        self._waypoint = (np.nan, np.nan)

    def cell_of(self, x: float, y: float) -> Cell:
        """
        :param x: Position along the x axis (m).
        :param y: Position along the y axis (m).
        :return: The ``(row, column)`` index of the maze cell that contains the position.
        """
        row, col = self.maze.cell_xy_to_rowcol(np.array((x, y)))
        return int(row), int(col)

    def next_cell_table(self, goal_cell: Cell) -> dict[Cell, Cell]:
        """
        :param goal_cell: ``(row, column)`` of the goal.
        :return: For every free cell connected to ``goal_cell``, the next cell on a shortest path to it
            (cached per goal cell).
        """
        if goal_cell not in self._next_cell_tables:
            table = {goal_cell: goal_cell}
            frontier = deque([goal_cell])
            while frontier:
                row, col = frontier.popleft()
                for d_row, d_col in GRID_MOVES:
                    neighbour = (row + d_row, col + d_col)
                    if neighbour in self._free_cells and neighbour not in table:
                        table[neighbour] = (row, col)
                        frontier.append(neighbour)
            self._next_cell_tables[goal_cell] = table
        return self._next_cell_tables[goal_cell]

    def _target_after(self, cell: Cell) -> None:
        """Aim at the cell after ``cell`` on the path, or at the exact goal position in the goal cell."""
        self._waypoint_cell = self._next_cell.get(cell, self._goal_cell)
        if self._waypoint_cell == self._goal_cell:
            self._waypoint = self._goal
        else:
            x, y = self.maze.cell_rowcol_to_xy(np.array(self._waypoint_cell))
            self._waypoint = (float(x), float(y))

    def _plan(self, x: float, y: float, goal_x: float, goal_y: float) -> None:
        self._goal = (goal_x, goal_y)
        self._goal_cell = self.cell_of(goal_x, goal_y)
        self._next_cell = self.next_cell_table(self._goal_cell)
        self._target_after(self.cell_of(x, y))

    def compute_action(
        self, x: float, y: float, x_vel: float, y_vel: float, goal_x: float, goal_y: float
    ) -> tuple[float, float]:
        """
        Unclipped PD action towards the current waypoint; scalar in and out for speed in the data loop.

        :param x: Position along x (m).
        :param y: Position along y (m).
        :param x_vel: Velocity along x (m/s).
        :param y_vel: Velocity along y (m/s).
        :param goal_x: Goal position along x (m).
        :param goal_y: Goal position along y (m).
        :return: The force command ``(a_x, a_y)`` before clipping to the action bounds.
        """
        if (goal_x, goal_y) != self._goal:
            self._plan(x, y, goal_x, goal_y)
        waypoint_x, waypoint_y = self._waypoint
        if (
            self._waypoint_cell != self._goal_cell
            and (waypoint_x - x) ** 2 + (waypoint_y - y) ** 2 <= self.waypoint_threshold**2
        ):
            self._target_after(self._waypoint_cell)
            waypoint_x, waypoint_y = self._waypoint
        return (
            self.p_gain * (waypoint_x - x) + self.d_gain * x_vel,
            self.p_gain * (waypoint_y - y) + self.d_gain * y_vel,
        )

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """
        Gymnasium-style policy.

        :param observation: A PointMaze observation: ``observation`` (4,) = (x, y, x_vel, y_vel),
            ``achieved_goal`` (2,), ``desired_goal`` (2,).
        :return: The action, shape (2,), clipped to [-1, 1].
        """
        x, y, x_vel, y_vel = (float(value) for value in observation["observation"])
        goal_x, goal_y = (float(value) for value in observation["desired_goal"])
        return np.clip(self.compute_action(x, y, x_vel, y_vel, goal_x, goal_y), -1.0, 1.0)
