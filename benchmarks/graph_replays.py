"""
CUDA only: how many IQL updates per second the GPU runs when the host does nothing but launch graphs, beside what
``learn_offline`` reaches, to tell the loop's host work from the device's own time (on a GPU, the process CPU time
cannot tell them apart: a host that waits for the device spins).

For each K of ``--updates-per-replay``, K updates (each drawing its own batch on the device, as
``CudaGraphUpdate.sampled_step`` does) are captured in one CUDA graph (``SampledGraph``), replayed back to back; updates/s =
K x replays / seconds. K = 1 is the device-side bound of ``learn_offline``'s loop (one replay per update); if K > 1
is much faster, launching several updates per replay is the next step; if not, the kernels themselves are the
bound. The standard configuration: batch 256, 256x256 MLPs, AntMaze's shapes, 1M synthetic transitions.

Where the device's time goes: ``--profile-replays`` replays of the K = 1 graph run under ``torch.profiler``, whose
trace has every kernel the replays ran (the graph's kernels included): kernels and their device time per update,
by kind (matrix products, Triton's fused kernels, Adam...), and how much of the replays' span the kernels fill (the
rest is the device waiting between kernels).

    python benchmarks/graph_replays.py --updates-per-replay 1 4 16 --output-dir OUT

Writes ``OUT/graph_replays_cuda.json`` and its section of ``speed.md`` (through ``benchmarks/speed.py``), and the
profiler's trace, ``OUT/graph_replays_trace_cuda.json.gz`` (open it in Perfetto or ``chrome://tracing``).
"""

import argparse
import datetime
import gzip
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import speed  # benchmarks/speed.py
import torch as th

from sb3_iql.common.synthetic import synthetic_transitions
from sb3_iql.iql.fast_update import CudaGraphUpdate, SampledGraph
from sb3_iql.iql.update import Batch

#: the update ``compile_update="auto"`` captures for long calls: compiled, fused Adam
SPEC = speed.PATHS["compiled-cudagraph"]
#: kinds of kernels, by a part of their names (the first that matches; lower case)
KERNEL_KINDS = {
    "matrix products": ("gemm", "cutlass", "xmma", "cublas", "nvjet"),
    "Adam": ("adam",),
    "Triton (fused by Inductor)": ("triton",),
}


def kernel_summary(trace_events: list[dict[str, Any]], n_updates: int, top: int = 12) -> dict[str, Any]:
    """
    The kernels of a profiler trace (Chrome trace format: ``ts`` and ``dur`` in microseconds), per update.

    :param trace_events: the trace's ``traceEvents``; the kernels are the complete events (``"ph": "X"``) of
        category ``"kernel"``
    :param n_updates: updates the trace covers
    :param top: the kernels with the most device time to list
    :return: kernels per update, their device time per update (us), the span from the first kernel's start to the
        last one's end per update (us), the fraction of that span the kernels fill, the same by kind
        (``KERNEL_KINDS``, else "other") and the ``top`` kernels
    """
    kernels = [event for event in trace_events if event.get("cat") == "kernel" and event.get("ph") == "X"]
    if not kernels:
        raise ValueError("The trace has no kernels (was CUDA activity profiled?)")
    busy = sum(event["dur"] for event in kernels)
    span = max(event["ts"] + event["dur"] for event in kernels) - min(event["ts"] for event in kernels)
    by_kind: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for event in kernels:
        kind = next((kind for kind, parts in KERNEL_KINDS.items() if any(p in event["name"].lower() for p in parts)), "other")
        for table, key in ((by_kind, kind), (by_name, event["name"])):
            count_and_time = table.setdefault(key, [0, 0.0])
            count_and_time[0] += 1
            count_and_time[1] += event["dur"]

    def rows(table: dict[str, list[float]], limit: int | None = None) -> list[dict[str, Any]]:
        ordered = sorted(table.items(), key=lambda item: -item[1][1])[:limit]
        return [{"name": name, "per_update": n / n_updates, "us_per_update": us / n_updates} for name, (n, us) in ordered]

    return {
        "updates": n_updates,
        "kernels_per_update": len(kernels) / n_updates,
        "kernel_us_per_update": busy / n_updates,
        "span_us_per_update": span / n_updates,
        "busy_fraction": busy / span if span > 0 else 1.0,
        "kinds": rows(by_kind),
        "top": rows(by_name, top),
    }


def profile_replays(replay: Callable[[], Any], n_replays: int, updates_per_replay: int, trace_path: str) -> dict[str, Any]:
    """
    Run ``replay()`` ``n_replays`` times under ``torch.profiler`` (CPU and CUDA activity), save its trace, gzipped,
    to ``trace_path`` and return ``kernel_summary`` of it.
    """
    activities = [th.profiler.ProfilerActivity.CPU, th.profiler.ProfilerActivity.CUDA]
    with th.profiler.profile(activities=activities) as profile:
        for _ in range(n_replays):
            replay()
        th.cuda.synchronize()
    plain_path = trace_path.removesuffix(".gz")
    profile.export_chrome_trace(plain_path)
    with open(plain_path) as file:
        events = json.load(file)["traceEvents"]
    with open(plain_path, "rb") as plain, gzip.open(trace_path, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    os.remove(plain_path)
    return kernel_summary(events, n_replays * updates_per_replay)


def measure(
    updates_per_replay: list[int], seconds: float, learn_offline_updates: int, n_profiled: int, output_dir: str
) -> dict[str, Any]:
    """
    :param seconds: timed replays per K (about)
    :param learn_offline_updates: updates of ``learn_offline`` timed beside (the same model, after the replays)
    :param n_profiled: replays of the K = 1 graph profiled after the timings (0: none)
    :param output_dir: where the profiler's trace goes
    :return: updates/s per K, ``learn_offline``'s and the K = 1 graph's kernels (``kernel_summary``)
    """
    device = th.device("cuda")
    init_profiler = getattr(th.profiler._utils, "_init_for_cuda_graphs", None)
    if n_profiled and init_profiler is not None:  # before the first capture, or replays may not profile (pytorch#100441)
        init_profiler()
    obs_dim, action_dim = speed.SHAPES["antmaze"]
    model = speed.make_iql(obs_dim, action_dim, device, SPEC)
    data = synthetic_transitions(obs_dim, action_dim, speed.N_TRANSITIONS)
    speed.load_into(model, data)
    del data
    model._auto_mode = SPEC.auto_mode
    model.learn_offline(50, log_interval=0)  # compiles and captures, as a user's first call
    fast = model._fast_update
    ran = speed.path_that_ran(model)  # recorded: a compilation or in-graph sampling that fell back is timed as it runs
    print(f"learn_offline runs the {ran}", flush=True)
    if not isinstance(fast, CudaGraphUpdate):
        raise RuntimeError(f"learn_offline did not capture its update in a CUDA graph here (it runs the {ran})")
    functional = fast.functional
    key, generator = model._graph_sampling()  # type: ignore[misc]
    rows, first_graph = [], None
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
        if k == 1:
            first_graph = graph
        del graph
    th.cuda.synchronize()
    start = time.perf_counter()
    model.learn_offline(learn_offline_updates, log_interval=0)
    th.cuda.synchronize()
    loop_rate = learn_offline_updates / (time.perf_counter() - start)
    print(f"learn_offline: {loop_rate:8.0f} updates/s", flush=True)
    kernels: dict[str, Any] | None = None
    if first_graph is not None and n_profiled:
        trace_path = os.path.join(output_dir, "graph_replays_trace_cuda.json.gz")
        try:  # the timings are kept where the profiler cannot run here
            kernels = profile_replays(lambda: first_graph.replay(key, [generator]), n_profiled, 1, trace_path)
            print(f"K = 1 profiled: {json.dumps(kernels, indent=1)}", flush=True)
        except Exception as error:
            kernels = {"error": repr(error)}
            print(f"K = 1 not profiled: {error!r}", flush=True)
    return {
        "device_name": speed.device_name(device),
        "torch": th.__version__,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "replays": rows,
        "learn_offline_updates_per_s": loop_rate,
        "learn_offline_updates": learn_offline_updates,
        "learn_offline_ran": ran,
        "kernels": kernels,
    }


def render(result: dict[str, Any], name: str) -> str:
    """The ``speed.md`` section of a result."""
    ran = f"; ran: {result['learn_offline_ran']}" if result.get("learn_offline_ran") else ""
    lines = [
        f"## {name}: graph replays against learn_offline, torch {result['torch']}, {result['date']}",
        "",
        "`benchmarks/graph_replays.py`: K sampled updates (batch 256, 256x256, AntMaze's shapes) captured in one CUDA "
        "graph, replayed back to back (the host only launches), beside `learn_offline` (one replay per update).",
        "",
        "| updates per replay | updates/s |",
        "|---:|---:|",
        *(f"| {row['updates_per_replay']} | {row['updates_per_s']:.0f} |" for row in result["replays"]),
        f"| learn_offline ({result['learn_offline_updates']} updates{ran}) | {result['learn_offline_updates_per_s']:.0f} |",
        "",
    ]
    kernels = result.get("kernels")
    if kernels and "error" in kernels:
        lines += [f"The K = 1 graph could not be profiled: {kernels['error']}", ""]
    elif kernels:
        lines += [
            f"The K = 1 graph under `torch.profiler` ({kernels['updates']} updates): {kernels['kernels_per_update']:.0f} "
            f"kernels and {kernels['kernel_us_per_update']:.0f} us of kernel time per update, in a span of "
            f"{kernels['span_us_per_update']:.0f} us per update (kernels fill {kernels['busy_fraction']:.0%} of it).",
            "",
            "| kernels | per update | us per update |",
            "|---|---:|---:|",
            *(f"| {row['name']} | {row['per_update']:.1f} | {row['us_per_update']:.1f} |" for row in kernels["kinds"]),
            *(f"| `{row['name'][:90]}` | {row['per_update']:.1f} | {row['us_per_update']:.1f} |" for row in kernels["top"]),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates-per-replay", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed replays per K (about)")
    parser.add_argument("--learn-offline-updates", type=int, default=20_000)
    parser.add_argument("--profile-replays", type=int, default=50, help="replays of the K = 1 graph profiled (0: none)")
    parser.add_argument("--output-dir", default=speed.RESULTS_DIR)
    args = parser.parse_args()
    if not th.cuda.is_available():
        raise SystemExit("graph_replays.py needs CUDA (none here)")
    os.makedirs(args.output_dir, exist_ok=True)
    result = measure(args.updates_per_replay, args.seconds, args.learn_offline_updates, args.profile_replays, args.output_dir)
    speed.save_section(args.output_dir, "graph_replays", "cuda", result)


if __name__ == "__main__":
    main()
