"""
How often a late policy collapses: every evaluation from ``--from-updates`` on of every cached run
(``results/scores_runs.json``) counts as one draw of a final policy, so each seed gives several. Per stitch maze and
method: how many of those evaluations score below behaviour cloning + 15 (the issue's collapse line), and their
mean. Three late evaluations per seed triple the sample behind "no seed collapses"::

    python benchmarks/late_evaluations.py --net-arch 256 256 --updates 30000 --bc large-stitch=-0.1 medium-stitch=-1.7
"""

import argparse
import collections
from pathlib import Path

import numpy as np
from score_report import RUNS_FILE, load_runs  # benchmarks/score_report.py

#: Scores above behaviour cloning by less than this count as a collapse.
MARGIN = 15.0


def late_scores(runs: dict, net_arch: list[int], updates: int, from_updates: int) -> dict[tuple[str, str], list[float]]:
    """:return: ``{(dataset id, method): [normalized score of every late evaluation of every seed]}``, stitch mazes"""
    scores: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for record in runs.values():
        config = record["config"]
        if config["net_arch"] != net_arch or config["updates"] != updates or "stitch" not in config["dataset_id"]:
            continue
        late = [point["normalized_score"] for point in record["curve"] if point["updates"] >= from_updates]
        scores[(config["dataset_id"], config["method"])].extend(late)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of the runs cache")
    parser.add_argument("--net-arch", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--updates", type=int, default=30_000)
    parser.add_argument("--from-updates", type=int, default=20_000, help="first evaluation that counts as late")
    parser.add_argument(
        "--bc", nargs="+", default=["large-stitch=-0.1", "medium-stitch=-1.7"], help="BC's score per maze, NAME=SCORE"
    )
    args = parser.parse_args()
    bc = {name: float(score) for name, score in (item.split("=") for item in args.bc)}
    scores = late_scores(load_runs(args.out), args.net_arch, args.updates, args.from_updates)
    if not scores:
        raise SystemExit(f"No run in {args.out / RUNS_FILE} at {args.updates:,} updates with these networks")
    print(f"Late = from {args.from_updates:,} updates on; collapse = below BC + {MARGIN:g} ({args.out / RUNS_FILE})")
    print("| maze | method | late evaluations | below BC + 15 | mean |")
    print("|---|---|---:|---:|---:|")
    for (dataset_id, method), values in sorted(scores.items()):
        line = next((score for name, score in bc.items() if name in dataset_id), None)
        if line is None:
            continue
        below = sum(value < line + MARGIN for value in values)
        share = f"{below} ({100 * below / len(values):.0f}%)"
        print(f"| {dataset_id} | {method} | {len(values)} | {share} | {np.mean(values):.1f} |")


if __name__ == "__main__":
    main()
