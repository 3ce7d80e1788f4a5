"""
IQL update speed: updates/s and peak memory of each training path, on synthetic 1M-transition datasets.

Paths (all in one run, interleaved round by round so that ratios hold on a noisy shared machine):

- ``plain``: a straightforward single-file PyTorch IQL loop (CORL style, ``benchmarks/plain_iql.py``), the same math
  as ours in the reference order.
- ``d3rlpy``: d3rlpy's IQL, the peer (``benchmarks/peers.py``), trained with its own ``fitter`` (sampling included).
- ``sb3``: ``IQL.learn_offline`` with SB3's NumPy buffer (``OfflineReplayBuffer``), default Adam.
- ``device``: ``IQL.learn_offline`` with ``DeviceReplayBuffer``, default Adam.
- ``fused``: ``DeviceReplayBuffer`` + ``Adam(fused=True)``.
- ``compiled``: ``fused`` with the update compiled by ``torch.compile`` (see ``compile_update``).
- ``cudagraph``: CUDA only: the whole update captured in one CUDA graph (see ``CudaGraphUpdate``).
- ``compiled-cudagraph``: CUDA only: the ``torch.compile``-d update captured in one CUDA graph, which also draws the
  batch (``CudaGraphUpdate.sampled_step``).
- ``compiled-cudagraph-outside``: the same with each batch sampled outside the graph and copied into its inputs
  (what ran before the sampling joined the graph).

The paths are the table ``PATHS``; the synthetic data comes from ``sb3_iql.common.synthetic`` (the tests' too).

Usage::

    python benchmarks/speed.py --updates 300 --rounds 5 --threads 1
    python benchmarks/speed.py --paths plain,sb3,fused --shapes antmaze --threads 2 --output-dir /tmp/speed
    python benchmarks/speed.py --spaces --updates 50   # Discrete actions and 84x84 images
    python benchmarks/speed.py --minari-load           # a 1M-step Minari dataset into the buffer, end to end

Each timed round runs ``--updates`` updates of every path; warm-up updates (and compilation) are excluded.
Updates/s are given from wall time and from the process CPU time (the latter is steadier when other
processes share the cores). Peak memory and dataset load time are measured in one fresh subprocess per path
(RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA).
"""

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import load_speed  # benchmarks/load_speed.py
import multi_seed_speed  # benchmarks/multi_seed_speed.py
import numpy as np
import peers  # benchmarks/peers.py
import psutil
import spaces_speed  # benchmarks/spaces_speed.py
import torch as th
from gymnasium import spaces
from hardware import cpu_model  # benchmarks/hardware.py
from plain_iql import BATCH_SIZE, BETA, EXPECTILE, HIDDEN, PlainIQL  # benchmarks/plain_iql.py

from sb3_iql import IQL
from sb3_iql.common.offline import OfflineAlgorithm
from sb3_iql.common.synthetic import SyntheticTransitions, box_env, synthetic_antmaze_transitions, synthetic_transitions
from sb3_iql.data import OfflineDictReplayBuffer, OfflineReplayBuffer
from sb3_iql.data.device_buffers import DeviceDictReplayBuffer, DeviceReplayBuffer
from sb3_iql.iql.fast_update import CudaGraphUpdate

#: name -> (observation dim, action dim)
SHAPES = {"antmaze": (29, 8), "locomotion": (17, 6)}
N_TRANSITIONS = 1_000_000
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --------------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathSpec:
    """
    :param note: what the path is, for the report
    :param kind: ``"iql"`` (``sb3_iql.IQL``), ``"plain"`` (``plain_iql.py``) or ``"d3rlpy"`` (d3rlpy's IQL)
    :param buffer_class: the IQL replay buffer
    :param fused: ``Adam(fused=True)``
    :param compile_update: ``IQL``'s ``compile_update``
    :param needs_cuda: runs on CUDA only
    :param auto_mode: with ``compile_update="auto"``, the path it takes for long calls (``iql.AutoMode``), forced
        from the first update on (the timed calls are shorter than ``AUTO_COMPILE_UPDATES``)
    :param sample_in_graph: a CUDA graph update draws its batches itself (False: sampled outside, copied in)
    """

    note: str
    kind: str = "iql"
    buffer_class: type = DeviceReplayBuffer
    fused: bool = False
    compile_update: bool | str = False
    needs_cuda: bool = False
    auto_mode: str | None = None
    sample_in_graph: bool = True


#: Every training path, in report order.
PATHS: dict[str, PathSpec] = {
    "plain": PathSpec("plain_iql.py: NumPy buffer, per-parameter Adam, .item() x3", kind="plain"),
    "d3rlpy": PathSpec("d3rlpy IQL (IQLConfig, same networks, batch and hyperparameters; peers.py)", kind="d3rlpy"),
    "sb3": PathSpec("OfflineReplayBuffer, default Adam", OfflineReplayBuffer),
    "device": PathSpec("DeviceReplayBuffer, default Adam"),
    "fused": PathSpec("DeviceReplayBuffer, Adam(fused=True)", fused=True),
    "compiled": PathSpec(
        "DeviceReplayBuffer, IQL(compile_update=True): torch.compile + direct fused Adam", fused=True, compile_update=True
    ),
    "cudagraph": PathSpec(
        "DeviceReplayBuffer, IQL(compile_update='cudagraph'): one CUDA graph per update, sampling included",
        fused=True,
        compile_update="cudagraph",
        needs_cuda=True,
    ),
    "compiled-cudagraph": PathSpec(
        "DeviceReplayBuffer, the torch.compile-d update captured in one CUDA graph, sampling included "
        "(compile_update='auto' from 50k updates on CUDA)",
        fused=True,
        compile_update="auto",
        needs_cuda=True,
        auto_mode="compile",
    ),
    "compiled-cudagraph-outside": PathSpec(
        "compiled-cudagraph with each batch sampled outside the graph and copied into its inputs",
        fused=True,
        compile_update="auto",
        needs_cuda=True,
        auto_mode="compile",
        sample_in_graph=False,
    ),
}


def make_iql(obs_dim: int, action_dim: int, device: th.device, spec: PathSpec, offline_steps: int | None = None) -> IQL:
    """IQL with the standard configuration (batch 256, MLPs 256x256), AntMaze hyperparameters, seed 0."""
    policy_kwargs: dict[str, Any] = {"net_arch": [HIDDEN, HIDDEN], "optimizer_kwargs": {"fused": spec.fused}}
    return IQL(
        "MlpPolicy",
        box_env(obs_dim, action_dim),
        buffer_size=N_TRANSITIONS,
        batch_size=BATCH_SIZE,
        expectile=EXPECTILE,
        beta=BETA,
        replay_buffer_class=spec.buffer_class,
        policy_kwargs=policy_kwargs,
        compile_update=spec.compile_update,
        offline_steps=offline_steps,
        seed=0,
        device=device,
    )


def load_into(model: IQL, data: SyntheticTransitions) -> None:
    model.replay_buffer.extend(  # type: ignore[union-attr]
        data.observations, data.next_observations, data.actions, data.rewards, data.dones, data.timeouts
    )


@dataclass
class Path:
    """A training path: ``run(n)`` does n updates; ``load_seconds``: time to put the 1M transitions in its buffer."""

    name: str
    run: Callable[[int], Any]
    load_seconds: float
    note: str = ""
    model: IQL | None = None
    rates_wall: list[float] = field(default_factory=list)
    rates_cpu: list[float] = field(default_factory=list)


def synchronize(device: th.device) -> None:
    if device.type == "cuda":
        th.cuda.synchronize(device)


def build_path(name: str, data: SyntheticTransitions, device: th.device) -> Path:
    """Create path ``name``, load the dataset into its buffer and return it (not warmed up)."""
    spec = PATHS[name]
    obs_dim, action_dim = data.observations.shape[1], data.actions.shape[1]
    if spec.kind == "plain":
        plain = PlainIQL(obs_dim, action_dim, device)
        start = time.perf_counter()
        plain.load(data)
        return Path(name, plain.run, time.perf_counter() - start, spec.note)
    if spec.kind == "d3rlpy":
        start = time.perf_counter()
        run_d3rlpy = d3rlpy_runner(data, device)
        return Path(name, run_d3rlpy, time.perf_counter() - start, spec.note)
    model = make_iql(obs_dim, action_dim, device, spec)
    if spec.auto_mode is not None:
        model._auto_mode = spec.auto_mode  # "auto" never steps down: the timed short calls keep this path
    if not spec.sample_in_graph:  # the offline step of the base class: sample, then call the update (the graph)
        model._offline_train_step = functools.partial(OfflineAlgorithm._offline_train_step, model)  # type: ignore[method-assign]
    start = time.perf_counter()
    load_into(model, data)
    synchronize(device)
    load_seconds = time.perf_counter() - start

    def run(n_updates: int) -> None:
        model.learn_offline(n_updates, log_interval=0)

    return Path(name, run, load_seconds, spec.note, model)


def d3rlpy_runner(data: SyntheticTransitions, device: th.device) -> Callable[[int], None]:
    """:return: ``run(n)``: n updates of d3rlpy's IQL (its own ``fitter``: its sampling, its update) on the data"""
    import d3rlpy

    dataset = d3rlpy.dataset.MDPDataset(
        observations=data.observations,
        actions=data.actions,
        rewards=data.rewards.reshape(-1, 1),
        terminals=data.dones,
        timeouts=data.timeouts,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )
    hyperparameters = {"expectile": EXPECTILE, "beta": BETA}
    d3rlpy.seed(0)
    algo = peers.make_d3rlpy_algo("iql", hyperparameters, [HIDDEN, HIDDEN], BATCH_SIZE, device=str(device))
    algo.build_with_dataset(dataset)

    def run(n_updates: int) -> None:
        peers.fit_steps(algo, dataset, n_updates)

    return run


def build_paths(
    names: list[str], data: SyntheticTransitions, device: th.device, shape: str
) -> tuple[list[Path], list[dict[str, str]]]:
    """:return: the paths that could be built here, and the others with the reason"""
    paths, skipped = [], []
    for name in names:
        reason = available(name, device)
        if reason is not None:
            skipped.append({"path": name, "skipped": reason})
            continue
        print(f"[{shape}] building {name}", flush=True)
        try:
            paths.append(build_path(name, data, device))
        except Exception as error:  # e.g. a CUDA graph that cannot be captured here: report it, time the rest
            skipped.append(failure(name, error))
            print(f"[{shape}] {name} failed: {error!r}", flush=True)
    return paths, skipped


def failure(name: str, error: Exception) -> dict[str, str]:
    """:return: the report row of path ``name``, which raised ``error`` (a compiler or capture failing here)"""
    return {"path": name, "skipped": f"failed: {type(error).__name__}: {str(error)[:200]}"}


def available(name: str, device: th.device) -> str | None:
    """:return: why path ``name`` cannot run here, or None"""
    if PATHS[name].needs_cuda and device.type != "cuda":
        return "needs CUDA (none here)"
    if PATHS[name].kind == "d3rlpy" and importlib.util.find_spec("d3rlpy") is None:
        return "needs d3rlpy (make install-benchmarks)"
    return None


def time_paths(
    paths: list[Path],
    n_updates: int,
    n_rounds: int,
    n_warmup: int,
    device: th.device,
    on_round: Callable[[int, list[dict[str, str]]], None] | None = None,
) -> list[dict[str, str]]:
    """
    Warm every path up (compilation included), then time ``n_rounds`` rounds of ``n_updates`` updates per path,
    the paths taking turns within each round. A path whose warm-up raises is dropped from ``paths`` (in place).

    :param on_round: called after each round with the rounds done and the dropped paths (to save what was measured:
        a run stopped by a time limit keeps its rounds)
    :return: the dropped paths, with the error
    """
    failed = []
    for path in list(paths):
        try:
            path.run(n_warmup)
            synchronize(device)
        except Exception as error:  # a compiler or graph capture that fails on this machine: report it, time the rest
            failed.append(failure(path.name, error))
            paths.remove(path)
            print(f"{path.name} failed to warm up: {error!r}", flush=True)
    for done in range(1, n_rounds + 1):
        for path in paths:
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            path.run(n_updates)
            synchronize(device)
            path.rates_wall.append(n_updates / (time.perf_counter() - wall))
            path.rates_cpu.append(n_updates / (time.process_time() - cpu))
        if on_round is not None:
            on_round(done, failed)
    return failed


# --------------------------------------------------------------------------------------------------------------------
# Memory probes (one fresh subprocess per path, so that each peak is its own)
# --------------------------------------------------------------------------------------------------------------------


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss would keep the parent's peak across fork + exec)."""
    try:
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) for line in file if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the peak measured next is the code's own."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass


def probe(kind: str, name: str, shape: str, n_updates: int, device: th.device) -> dict[str, Any]:
    """
    Run in a fresh process: load 1M transitions into path ``name`` (``kind="path"``) or into a Dict buffer
    (``kind="dict"``, ``name`` = ``"sb3"`` or ``"device"``), do ``n_updates`` updates (paths only), and report
    the load time and peak memory above the dataset's own arrays.
    """
    if kind == "dict":
        space, data = synthetic_antmaze_transitions(N_TRANSITIONS)
        reset_peak_rss()
        baseline = rss_mb()
        buffer_class = OfflineDictReplayBuffer if name == "sb3" else DeviceDictReplayBuffer
        action_space = spaces.Box(-1.0, 1.0, (8,), np.float32)
        start = time.perf_counter()
        buffer = buffer_class(N_TRANSITIONS, space, action_space, device=device)
        buffer.extend(data.observations, data.next_observations, data.actions, data.rewards, data.dones, data.timeouts)
        synchronize(device)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(1000):
            buffer.sample(BATCH_SIZE)
        synchronize(device)
        sample_us = (time.perf_counter() - start) * 1e3
    else:
        obs_dim, action_dim = SHAPES[shape]
        data = synthetic_transitions(obs_dim, action_dim, N_TRANSITIONS)
        reset_peak_rss()
        baseline = rss_mb()
        if device.type == "cuda":
            th.cuda.reset_peak_memory_stats(device)
        path = build_path(name, data, device)
        load_seconds = path.load_seconds
        path.run(n_updates)
        synchronize(device)
        sample_us = float("nan")
        if name in ("sb3", "device"):
            buffer = path.model.replay_buffer  # type: ignore[union-attr]
            start = time.perf_counter()
            for _ in range(1000):
                buffer.sample(BATCH_SIZE)
            synchronize(device)
            sample_us = (time.perf_counter() - start) * 1e3
    result = {
        "kind": kind,
        "path": name,
        "shape": shape,
        "load_seconds": load_seconds,
        "dataset_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_above_dataset_mb": peak_rss_mb() - baseline,
        "sample_us": sample_us,
    }
    if device.type == "cuda":
        result["cuda_max_memory_allocated_mb"] = th.cuda.max_memory_allocated(device) / 2**20
    return result


def run_probe(args: argparse.Namespace, kind: str, name: str, shape: str) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--probe", kind, name, shape, "--threads", str(args.threads)]
    command += ["--probe-updates", str(args.probe_updates), "--device", args.device]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"kind": kind, "path": name, "shape": shape, "error": completed.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def device_name(device: th.device) -> str:
    if device.type == "cuda":
        return th.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def render_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# IQL update speed", "", "Written by `benchmarks/speed.py` (one section per run, newest first).", ""]
    for result in results:
        lines += [
            f"## {result['device_name']}, {result['threads']} thread(s), torch {result['torch']}, {result['date']}",
            "",
            f"Batch {BATCH_SIZE}, MLPs {HIDDEN}x{HIDDEN}, synthetic 1M-transition datasets; {result['rounds']} rounds of "
            f"{result['updates']} updates per path, paths taking turns within each round (median over rounds), "
            f"{result['warmup']} warm-up updates excluded (compilation included there). "
            "Updates/s from wall time, and from the process CPU time (steadier on a shared machine; "
            "with more than one thread it adds the threads' times). Memory: "
            + ("`torch.cuda.max_memory_allocated`" if result["device"] == "cuda" else "peak RSS of a fresh process")
            + " above the dataset's own arrays, load: 1M transitions into the path's buffer.",
            "",
        ]
        for shape, rows in result["shapes"].items():
            obs_dim, action_dim = SHAPES[shape]
            reference = next((row["reference"] for row in rows if "reference" in row), "plain")
            lines += [
                f"### {shape} (obs {obs_dim}, action {action_dim})",
                "",
                f"| path | what | updates/s (wall) | x {reference} | updates/s (CPU time) | x {reference} | peak memory (MB) "
                "| load 1M (s) | sample 256 (us) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for row in rows:
                if "skipped" in row:
                    lines.append(f"| {row['path']} | skipped: {row['skipped']} | | | | | | | |")
                    continue
                memory = row.get("memory_mb")
                memory_text = "n/a" if memory is None else f"{memory:,.0f}"
                load_seconds = row.get("probe", {}).get("load_seconds", row["load_seconds"])
                sample_us = row.get("probe", {}).get("sample_us", float("nan"))
                sample_text = "" if math.isnan(sample_us) else f"{sample_us:.0f}"
                ran = f" (ran: {row['ran']})" if row.get("ran") else ""  # what a path that fell back trained on
                lines.append(
                    f"| {row['path']} | {row['note']}{ran} | {row['wall']:.1f} | {row['wall_ratio']:.2f} | {row['cpu']:.1f} | "
                    f"{row['cpu_ratio']:.2f} | {memory_text} | {load_seconds:.2f} | {sample_text} |"
                )
            lines.append("")
        if result.get("dict_load"):
            lines += [
                "### Loading 1M AntMaze-shaped Dict transitions "
                "(float64 observation 27 + achieved_goal 2 + desired_goal 2, action 8)",
                "",
                "| buffer | load (s) | memory above dataset (MB) | sample 256 (us) |",
                "|---|---:|---:|---:|",
            ]
            for row in result["dict_load"]:
                if "error" in row:
                    lines.append(f"| {row['path']} | error: {row['error']} | | |")
                    continue
                memory = row.get("cuda_max_memory_allocated_mb", row["peak_rss_above_dataset_mb"])
                lines.append(f"| {row['buffer']} | {row['load_seconds']:.2f} | {memory:,.0f} | {row['sample_us']:.0f} |")
            lines.append("")
        for note in result.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    lines += ["What was measured while building the fast path: `docs/guide/speed.md`.", ""]
    return "\n".join(lines)


#: What the ratio columns divide by: the first of these paths that a run measured (else its first path).
RATIO_REFERENCES = ("plain", "d3rlpy")


def path_that_ran(model: IQL | None) -> str | None:
    """
    :return: the update path ``model`` trained on last, as built (a fast path that fell back, with a warning, names
        the one it fell back to); None for a peer's path
    """
    if model is None:
        return None
    fast = model._fast_update
    if fast is None:
        return "eager update"
    graph = isinstance(fast, CudaGraphUpdate)
    update = "compiled update" if (fast.functional if graph else fast).compile_mode is not None else "eager update"
    if not graph:
        return update
    inside = fast._sampled is not None and not fast.sampling_failed
    return f"{update} in a CUDA graph, sampling {'inside' if inside else 'outside'} it"


def summarize(paths: list[Path]) -> list[dict[str, Any]]:
    """:return: one row per path: median updates/s (wall, CPU time), and their ratios to the reference path's"""
    rows = []
    medians = {path.name: (statistics.median(path.rates_wall), statistics.median(path.rates_cpu)) for path in paths}
    reference = next((name for name in RATIO_REFERENCES if name in medians), paths[0].name if paths else "plain")
    base_wall, base_cpu = medians.get(reference, (float("nan"), float("nan")))
    for path in paths:
        wall, cpu = medians[path.name]
        rows.append(
            {
                "path": path.name,
                "note": path.note,
                "wall": wall,
                "cpu": cpu,
                "wall_ratio": wall / base_wall,
                "cpu_ratio": cpu / base_cpu,
                "reference": reference,
                "rates_wall": path.rates_wall,
                "rates_cpu": path.rates_cpu,
                "load_seconds": path.load_seconds,
                "ran": path_that_ran(path.model),
            }
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200, help="timed updates per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (paths take turns within a round)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per path first (compilation)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, among {', '.join(PATHS)}")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, among {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory and load subprocesses")
    parser.add_argument("--probe-updates", type=int, default=30, help="updates run by each memory probe")
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="where speed_<device>_threads<N>.json and speed.md go")
    parser.add_argument("--render", action="store_true", help="only rewrite speed.md from the JSON files")
    parser.add_argument(
        "--spaces", action="store_true", help="only Discrete actions and 84x84 images (benchmarks/spaces_speed.py)"
    )
    parser.add_argument(
        "--minari-load", action="store_true", help="only the end-to-end load of a 1M-step Minari dataset (load_speed.py)"
    )
    parser.add_argument("--probe", nargs=3, metavar=("KIND", "NAME", "SHAPE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def chosen_device(name: str) -> th.device:
    """:return: the device of ``--device`` (``auto``: CUDA where there is one)
    :raises SystemExit: CUDA asked for where there is none (a one-line refusal, not torch's assertion)"""
    if name == "auto":
        return th.device("cuda" if th.cuda.is_available() else "cpu")
    device = th.device(name)
    if device.type == "cuda" and not th.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device here")
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    th.set_num_threads(args.threads)
    device = chosen_device(args.device)
    if args.render:
        write_markdown(args.output_dir)
        return
    if args.spaces or args.minari_load:
        if args.spaces:
            prefix, result = "spaces", spaces_speed.measure(args.updates, device)
        else:
            prefix, result = "load", load_speed.measure(load_speed.DEFAULT_DATASET, device.type, repeats=3)
        result["device_name"] = device_name(device)
        save_section(args.output_dir, prefix, device.type, result)
        print(SECTION_RENDERERS[prefix](result, result["device_name"]), flush=True)
        return
    if args.probe:
        kind, name, shape = args.probe
        print(json.dumps(probe(kind, name, shape, args.probe_updates, device)))
        return
    names = [name for name in args.paths.split(",") if name]
    shapes = [shape for shape in args.shapes.split(",") if shape]
    result: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": th.__version__,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "threads": args.threads,
        "updates": args.updates,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "shapes": {},
        "notes": [],
    }
    json_path = os.path.join(args.output_dir, f"speed_{device.type}_threads{args.threads}.json")
    for shape in shapes:
        obs_dim, action_dim = SHAPES[shape]
        data = synthetic_transitions(obs_dim, action_dim, N_TRANSITIONS)
        paths, skipped = build_paths(names, data, device, shape)
        print(f"[{shape}] warm-up and {args.rounds} x {args.updates} updates per path", flush=True)

        def save_rounds(
            done: int,
            failed: list[dict[str, str]],
            shape: str = shape,
            paths: list[Path] = paths,
            skipped: list[dict[str, str]] = skipped,
        ) -> None:
            result["shapes"][shape] = summarize(paths) + skipped + failed
            result["rounds"] = done  # the header says how many rounds the medians are of
            write_result(json_path, result)
            print(f"[{shape}] round {done} of {args.rounds} saved", flush=True)

        skipped += time_paths(paths, args.updates, args.rounds, args.warmup, device, on_round=save_rounds)
        rows = summarize(paths)
        for row in rows:
            print(
                f"[{shape}] {row['path']:>10}: {row['wall']:7.1f} upd/s wall ({row['wall_ratio']:.2f}x), "
                f"{row['cpu']:7.1f} upd/s CPU time ({row['cpu_ratio']:.2f}x)",
                flush=True,
            )
        result["shapes"][shape] = rows + skipped
        del paths, data
    if not args.no_memory:
        for shape in shapes:
            for row in result["shapes"][shape]:
                if "skipped" in row:
                    continue
                print(f"[{shape}] memory probe {row['path']}", flush=True)
                measured = run_probe(args, "path", row["path"], shape)
                row["probe"] = measured
                if device.type == "cuda":
                    row["memory_mb"] = measured.get("cuda_max_memory_allocated_mb")
                else:
                    row["memory_mb"] = measured.get("peak_rss_above_dataset_mb")
        result["dict_load"] = []
        for name, buffer in (("sb3", "OfflineDictReplayBuffer"), ("device", "DeviceDictReplayBuffer")):
            print(f"[dict] load probe {buffer}", flush=True)
            measured = run_probe(args, "dict", name, "antmaze")
            result["dict_load"].append({"buffer": buffer, **measured})
    else:
        result["notes"].append("memory probes skipped (--no-memory)")
    write_result(json_path, result)
    print(f"wrote {json_path} and speed.md", flush=True)


def write_result(json_path: str, result: dict[str, Any]) -> None:
    """Write a run's ``result`` as ``json_path`` and re-render ``speed.md`` beside it."""
    os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
    with open(json_path, "w") as file:
        json.dump(result, file, indent=1)
    write_markdown(os.path.dirname(json_path) or ".")


def render_million(result: dict[str, Any], name: str) -> str:
    import million_updates  # benchmarks/million_updates.py (which imports this module)

    return million_updates.render(result, name)


def render_graph_replays(result: dict[str, Any], name: str) -> str:
    import graph_replays  # benchmarks/graph_replays.py (which imports this module)

    return graph_replays.render(result, name)


#: Sections of ``speed.md`` beyond the paths' tables: ``<prefix>_<device>.json`` rendered by its module.
SECTION_RENDERERS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "spaces": spaces_speed.render,
    "multi_seed": multi_seed_speed.render,
    "load": load_speed.render,
    "million": render_million,
    "graph_replays": render_graph_replays,
}


def save_section(output_dir: str, prefix: str, device_type: str, result: dict[str, Any]) -> None:
    """Write ``result`` (with its ``device_name``) as ``<prefix>_<device_type>.json`` and re-render ``speed.md``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{prefix}_{device_type}.json"), "w") as file:
        json.dump(result, file, indent=1)
    write_markdown(output_dir)


def write_markdown(output_dir: str) -> None:
    """(Re)write ``speed.md`` from every ``speed_*.json`` of ``output_dir``, then the ``SECTION_RENDERERS``' files."""
    results, sections = [], []
    for name in sorted(os.listdir(output_dir)):
        if not name.endswith(".json"):
            continue
        prefix = name.rsplit("_", 1)[0]
        if name.startswith("speed_") or prefix in SECTION_RENDERERS:
            with open(os.path.join(output_dir, name)) as file:
                result = json.load(file)
            if name.startswith("speed_"):
                results.append(result)
            else:
                sections.append(SECTION_RENDERERS[prefix](result, result["device_name"]))
    results.sort(key=lambda item: item["date"], reverse=True)
    with open(os.path.join(output_dir, "speed.md"), "w") as file:
        file.write(render_markdown(results) + "".join(f"\n{section}" for section in sections))


if __name__ == "__main__":
    main()
