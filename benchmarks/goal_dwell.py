"""
How long the behaviour of a maze dataset stays at the evaluation goal: the ceiling of what stitching its pieces can
teach about *staying* there, which is what the normalized score of a continuing maze (reward at every step at the
goal) measures once the goal is reached.

For each dataset: the fraction of steps within the goal radius, the length of each visit (consecutive steps inside),
the speed inside, and the share of saturated actions (a component at +-1) inside and overall. Compare with the
``at goal`` column of ``scores.md`` (the trained policies) and with the expert reference (``ref_max_score``: a
controller that drives to the goal and stays).

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/goal_dwell.py \\
        --datasets sb3_iql/pointmaze/medium-stitch-v0 sb3_iql/pointmaze/large-stitch-v0
"""

import argparse

import minari
import numpy as np

#: Goal radius of the maze environments (Gymnasium-Robotics' PointMaze and AntMaze), in metres.
GOAL_RADIUS = 0.45


def visit_lengths(inside: np.ndarray) -> list[int]:
    """:return: the lengths of the runs of consecutive True values of ``inside``, shape ``(steps,)``"""
    padded = np.concatenate([[False], inside, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(edges[1::2] - edges[::2])


def dwell_statistics(dataset: minari.MinariDataset) -> dict[str, float]:
    """:return: fraction of steps at the goal, visit lengths (steps), speed at the goal (m/s), saturated actions"""
    inside_all, speeds, saturated, visits = [], [], [], []
    for episode in dataset.iterate_episodes():
        observations = episode.observations
        distance = np.linalg.norm(observations["achieved_goal"][:-1] - observations["desired_goal"][:-1], axis=1)
        inside = distance < GOAL_RADIUS
        inside_all.append(inside)
        speeds.append(np.linalg.norm(observations["observation"][:-1, 2:4], axis=1))
        saturated.append(np.abs(episode.actions).max(axis=1) > 0.99)
        visits += visit_lengths(inside)
    inside, speed, saturated_actions = (np.concatenate(values) for values in (inside_all, speeds, saturated))
    lengths = np.asarray(visits) if visits else np.zeros(1)
    return {
        "steps": float(inside.size),
        "fraction_at_goal": float(inside.mean()),
        "visits": float(len(visits)),
        "visit_median": float(np.median(lengths)),
        "visit_p90": float(np.quantile(lengths, 0.9)),
        "visit_max": float(lengths.max()),
        "speed_at_goal_median": float(np.median(speed[inside])) if inside.any() else float("nan"),
        "slow_at_goal": float((speed[inside] < 0.5).mean()) if inside.any() else float("nan"),
        "saturated_at_goal": float(saturated_actions[inside].mean()) if inside.any() else float("nan"),
        "saturated_overall": float(saturated_actions.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", required=True, help="local Minari ids of goal-maze datasets")
    args = parser.parse_args()
    print("| dataset | steps | at goal | visits | visit length median / p90 / max (steps) | speed at goal (median, m/s) "
          "| slow (< 0.5 m/s) at goal | saturated actions at goal / overall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for dataset_id in args.datasets:
        stats = dwell_statistics(minari.load_dataset(dataset_id))
        print(
            f"| {dataset_id} | {stats['steps']:,.0f} | {100 * stats['fraction_at_goal']:.1f}% | {stats['visits']:.0f} "
            f"| {stats['visit_median']:.0f} / {stats['visit_p90']:.0f} / {stats['visit_max']:.0f} "
            f"| {stats['speed_at_goal_median']:.2f} | {100 * stats['slow_at_goal']:.1f}% "
            f"| {100 * stats['saturated_at_goal']:.0f}% / {100 * stats['saturated_overall']:.0f}% |"
        )


if __name__ == "__main__":
    main()
