"""
Learning against the peer: on a small stitch maze, sb3-iql's defaults reach the score of d3rlpy's IQL at the same
budget (``benchmarks/scores.py``: same transitions, rewards, networks, batches, evaluation resets), seed by seed.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
DATASET = "sb3_iql/pointmaze/medium-stitch-v0"
SEEDS = ("0", "1", "2")
#: How far below d3rlpy's mean our mean may fall (normalized score points).
MARGIN = 0.0


@pytest.mark.slow
def test_the_defaults_reach_d3rlpy_on_a_stitch_maze(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("d3rlpy")
    out = tmp_path / "results"
    command = [sys.executable, str(BENCHMARKS / "scores.py"), "--datasets", DATASET, "--dataset-steps", "100000",
               "--updates", "10000", "--eval-every", "10000", "--eval-episodes", "10", "--seeds", *SEEDS,
               "--net-arch", "64", "64", "--methods", "iql", "d3rlpy-iql", "--no-report", "--out", str(out),
               "--checkpoint-dir", str(tmp_path / "checkpoints")]  # fmt: skip
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads((out / "scores_runs.json").read_text())["runs"].values()
    finals = {method: [run["final"] for run in runs if run["config"]["method"] == method] for method in ("iql", "d3rlpy-iql")}
    assert len(finals["iql"]) == len(finals["d3rlpy-iql"]) == len(SEEDS)
    ours, theirs = (sum(values) / len(values) for values in (finals["iql"], finals["d3rlpy-iql"]))
    assert ours >= theirs - MARGIN, finals
