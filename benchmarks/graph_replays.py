"""
CUDA only: how many IQL updates per second the GPU runs when the host does nothing but launch graphs, beside what
``learn_offline`` reaches, to tell the loop's host work from the device's own time (on a GPU, the process CPU time
cannot tell them apart: a host that waits for the device spins).

For each K of ``--updates-per-replay``, K updates (each drawing its own batch on the device, as
``CudaGraphUpdate.sampled_step`` does) are captured in one CUDA graph (``SampledGraph``), replayed back to back; updates/s =
K x replays / seconds. K = 1 is the device-side bound of ``learn_offline``'s loop (one replay per update); if K > 1
is much faster, launching several updates per replay is the next step; if not, the kernels themselves are the
bound. The standard configuration: batch 256, 256x256 MLPs, AntMaze's shapes, 1M synthetic transitions.

    python benchmarks/graph_replays.py --updates-per-replay 1 4 16 --output-dir OUT

Writes ``OUT/graph_replays_cuda.json`` and its section of ``speed.md`` (through ``benchmarks/speed.py``).
"""

import argparse
import datetime
import time
from typing import Any

import speed  # benchmarks/speed.py
import torch as th

from sb3_iql.common.synthetic import synthetic_transitions
from sb3_iql.iql.fast_update import CudaGraphUpdate, SampledGraph
from sb3_iql.iql.update import Batch

#: the update ``compile_update="auto"`` captures for long calls: compiled, fused Adam
SPEC = speed.PATHS["compiled-cudagraph"]


def measure(updates_per_replay: list[int], seconds: float, learn_offline_updates: int) -> dict[str, Any]:
    """
    :param seconds: timed replays per K (about)
    :param learn_offline_updates: updates of ``learn_offline`` timed beside (the same model, after the replays)
    :return: updates/s per K, and ``learn_offline``'s
    """
    device = th.device("cuda")
    obs_dim, action_dim = speed.SHAPES["antmaze"]
    model = speed.make_iql(obs_dim, action_dim, device, SPEC)
    data = synthetic_transitions(obs_dim, action_dim, speed.N_TRANSITIONS)
    speed.load_into(model, data)
    del data
    model._auto_mode = SPEC.auto_mode
    model.learn_offline(50, log_interval=0)  # compiles and captures, as a user's first call
    fast = model._fast_update
    if not isinstance(fast, CudaGraphUpdate):
        raise RuntimeError(f"learn_offline did not capture its update in a CUDA graph here (it runs {fast!r})")
    functional = fast.functional
    key, generator = model._graph_sampling()  # type: ignore[misc]
    rows = []
    for k in updates_per_replay:

        def updates(k: int = k) -> th.Tensor:
            metrics = [functional.step(Batch.from_replay_data(model._sample_batch(model.batch_size))) for _ in range(k)]
            return th.stack(metrics).sum(0)

        graph = SampledGraph(updates, functional.state_tensors(), n_warmup=2)
        graph.replay(key, [generator])  # captures, then replays once
        th.cuda.synchronize()
        replays, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(max(200 // k, 1)):
                graph.replay(key, [generator])
            replays += max(200 // k, 1)
            th.cuda.synchronize()
        rate = k * replays / (time.perf_counter() - start)
        rows.append({"updates_per_replay": k, "updates_per_s": rate})
        print(f"K = {k:3d}: {rate:8.0f} updates/s (graph replays only)", flush=True)
        del graph
    th.cuda.synchronize()
    start = time.perf_counter()
    model.learn_offline(learn_offline_updates, log_interval=0)
    th.cuda.synchronize()
    loop_rate = learn_offline_updates / (time.perf_counter() - start)
    print(f"learn_offline: {loop_rate:8.0f} updates/s", flush=True)
    return {
        "device_name": speed.device_name(device),
        "torch": th.__version__,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "replays": rows,
        "learn_offline_updates_per_s": loop_rate,
        "learn_offline_updates": learn_offline_updates,
    }


def render(result: dict[str, Any], name: str) -> str:
    """The ``speed.md`` section of a result."""
    lines = [
        f"## {name}: graph replays against learn_offline, torch {result['torch']}, {result['date']}",
        "",
        "`benchmarks/graph_replays.py`: K sampled updates (batch 256, 256x256, AntMaze's shapes) captured in one CUDA "
        "graph, replayed back to back (the host only launches), beside `learn_offline` (one replay per update).",
        "",
        "| updates per replay | updates/s |",
        "|---:|---:|",
        *(f"| {row['updates_per_replay']} | {row['updates_per_s']:.0f} |" for row in result["replays"]),
        f"| learn_offline ({result['learn_offline_updates']} updates) | {result['learn_offline_updates_per_s']:.0f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates-per-replay", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed replays per K (about)")
    parser.add_argument("--learn-offline-updates", type=int, default=20_000)
    parser.add_argument("--output-dir", default=speed.RESULTS_DIR)
    args = parser.parse_args()
    if not th.cuda.is_available():
        raise SystemExit("graph_replays.py needs CUDA (none here)")
    result = measure(args.updates_per_replay, args.seconds, args.learn_offline_updates)
    speed.save_section(args.output_dir, "graph_replays", "cuda", result)


if __name__ == "__main__":
    main()
