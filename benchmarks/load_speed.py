"""
End-to-end load time of a 1M-transition Minari dataset from disk (HDF5) into IQL's replay buffer, as a user meets
it: ``IQL("MultiInputPolicy", offline_dataset=...)`` in a fresh process, split into its phases. Called by
``benchmarks/speed.py --minari-load`` (which writes ``results/load_<device>.json`` and a section of ``speed.md``);
alone::

    python benchmarks/load_speed.py --dataset sb3_iql/pointmaze/large-stitch-v0

The dataset is a package id (generated on first use, not timed). Each phase is timed in wall seconds and in the
process's CPU seconds (steadier on a shared machine); the median over ``--repeats`` fresh processes is reported.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from typing import Any

#: The standard 1M-step dataset of the measurement (PointMaze, AntMaze's Dict layout: observation, goals).
DEFAULT_DATASET = "sb3_iql/pointmaze/large-stitch-v0"
#: Phases of a load, in order.
PHASES = ("import", "optimizer", "read", "model")


class _Clock:
    """Wall and CPU seconds since the previous ``lap``."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def probe(dataset_id: str, device: str) -> dict[str, Any]:
    """
    Run in a fresh process: import the package, create a first torch optimizer, read the dataset's transitions
    (``load_transitions``, alone), then build the model (which opens and reads the dataset again, into its buffer).

    :return: ``{phase: [wall s, CPU s]}`` for ``PHASES``, and the number of transitions
    """
    clock = _Clock()
    import torch as th

    th.set_num_threads(1)
    from sb3_iql import IQL
    from sb3_iql.data import load_dataset, load_transitions

    phases = {"import": clock.lap()}
    th.optim.Adam([th.zeros(1, requires_grad=True)])
    phases["optimizer"] = clock.lap()
    n_transitions = len(load_transitions([load_dataset(dataset_id)]))
    phases["read"] = clock.lap()
    model = IQL("MultiInputPolicy", offline_dataset=dataset_id, device=device)
    phases["model"] = clock.lap()
    assert model.replay_buffer.size() == n_transitions
    return {"phases": phases, "transitions": n_transitions}


def measure(dataset_id: str, device: str, repeats: int) -> dict[str, Any]:
    """:return: the median of each phase over ``repeats`` fresh processes, and the settings"""
    from sb3_iql.datasets import ensure_dataset

    ensure_dataset(dataset_id)
    runs = []
    for _ in range(repeats):
        command = [sys.executable, __file__, "--probe", "--dataset", dataset_id, "--device", device]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    import torch as th

    return {
        "dataset": dataset_id,
        "transitions": runs[0]["transitions"],
        "repeats": repeats,
        "torch": th.__version__,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "phases": {
            phase: [statistics.median(run["phases"][phase][index] for run in runs) for index in (0, 1)] for phase in PHASES
        },
    }


def render(result: dict[str, Any], device_name: str) -> str:
    """:return: a markdown section of ``speed.md``"""
    what = {
        "import": "import torch and sb3_iql",
        "optimizer": "first torch optimizer (torch imports `torch._dynamo` then: once per process, any trainer)",
        "read": "`load_transitions` alone: every episode through Minari's API, NaN checks, flat arrays",
        "model": '**end to end**: `IQL("MultiInputPolicy", offline_dataset=...)`: open, environment, networks, '
        "read, buffer fill (target: <= 10 s)",
    }
    lines = [
        f"## Loading a Minari dataset: {device_name}, torch {result['torch']}, {result['date']}",
        "",
        f"`{result['dataset']}` ({result['transitions']:,} transitions, HDF5), median of {result['repeats']} fresh "
        "processes (`benchmarks/load_speed.py`), 1 torch thread.",
        "",
        "| phase | wall (s) | CPU (s) |",
        "|---|---:|---:|",
    ]
    for phase in PHASES:
        wall, cpu = result["phases"][phase]
        lines.append(f"| {what[phase]} | {wall:.2f} | {cpu:.2f} |")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.dataset, args.device)))
    else:
        print(render(measure(args.dataset, args.device, args.repeats), args.device))
