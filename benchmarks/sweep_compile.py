"""
A hyperparameter sweep in one process with the compiled update (``compile_update=True``), as a notebook loop or an
Optuna study runs it: for each model of the sweep, the seconds of its first ``learn_offline`` call (compilation
included) and the graphs Dynamo compiled for it. The numeric hyperparameters (``update.NUMERIC_SETTINGS``: gamma,
expectile, beta, max_weight, bc_weight) are inputs of the compiled update, so a model that differs only in them
reuses the first model's graphs; another update order is another computation (new graphs)::

    python benchmarks/sweep_compile.py --threads 1
    python benchmarks/sweep_compile.py --device cuda

Standard configuration (batch 256, 256x256 MLPs, AntMaze's shapes), 20,000 synthetic transitions (the buffer's size
does not change the update). Writes ``results/sweep_compile_<device>.json``.
"""

import argparse
import json
import os
import time
from typing import Any

import speed  # benchmarks/speed.py
import torch as th
from torch._dynamo.utils import counters

from sb3_iql.common.synthetic import synthetic_transitions

#: The sweep, in order: each entry's changes to the first model's hyperparameters.
SWEEP: list[dict[str, Any]] = [
    {},
    {"expectile": 0.7},
    {"expectile": 0.8, "beta": 3.0},
    {"gamma": 0.95, "max_weight": 50.0},
    {"expectile": 0.6, "beta": 1.0},
    {"update_order": "joint"},
    {"update_order": "joint", "expectile": 0.8},
]


def run(device: th.device, n_updates: int) -> list[dict[str, Any]]:
    """:return: per model of ``SWEEP``: its changes, the seconds of its first call, the graphs compiled for it"""
    obs_dim, action_dim = speed.SHAPES["antmaze"]
    data = synthetic_transitions(obs_dim, action_dim, 20_000)
    rows = []
    for changes in SWEEP:
        model = speed.make_iql(obs_dim, action_dim, device, speed.PATHS["compiled"], offline_steps=n_updates)
        speed.load_into(model, data)
        for name, value in changes.items():
            setattr(model, name, value)
        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        model.learn_offline(n_updates, log_interval=0)
        speed.synchronize(device)
        seconds = time.perf_counter() - start
        new_graphs = counters["stats"]["unique_graphs"] - graphs_before
        rows.append({"changes": changes, "first_call_s": seconds, "new_graphs": new_graphs})
        print(f"{json.dumps(changes):45s} first call {seconds:6.1f} s ({n_updates} updates), new graphs {new_graphs}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--updates", type=int, default=20, help="updates of each model's first call")
    parser.add_argument("--output-dir", default=speed.RESULTS_DIR)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    device = th.device(args.device)
    rows = run(device, args.updates)
    result = {"device": speed.device_name(device), "torch": th.__version__, "threads": args.threads, "models": rows}
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"sweep_compile_{device.type}.json")
    with open(path, "w") as file:
        json.dump(result, file, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
