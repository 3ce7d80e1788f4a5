"""
One full-length run: ``learn_offline`` for 1M updates at the standard configuration (batch 256, 256x256 MLPs, AntMaze's
shapes, 1M synthetic transitions in a ``DeviceReplayBuffer``), as a user runs it, timed end to end: compilation or
graph capture included, in chunks so that a run over ``--max-seconds`` stops early and says how far it got.

Writes ``results/million_<device>.json`` and its section of ``speed.md`` (through ``benchmarks/speed.py``)::

    python benchmarks/million_updates.py --device cuda            # IQL's defaults
    python benchmarks/million_updates.py --device cpu --updates 20000 --chunk 5000 --output-dir /tmp/million
    python benchmarks/million_updates.py --device cpu --updates 100000 --chunk 100000 --peer-updates 5000

``--peer-updates N`` also times d3rlpy's IQL on the same data for N updates before the run and N after (its rate
is steady: no compilation), and reports the ratio of the run's updates/s, compilation included, to d3rlpy's.

Paths: ``auto`` (``IQL``'s defaults, what a user gets) or ``benchmarks/speed.py``'s (``PATHS``) of kind ``iql``.
After the run every parameter must be finite and the policy's actions finite on the dataset's first observations
(the script exits with an error otherwise).
"""

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import speed  # benchmarks/speed.py
import torch as th

from sb3_iql.common.synthetic import synthetic_transitions

#: ``--path auto``: what ``IQL(...)`` runs when nothing is asked (``compile_update="auto"``, default Adam).
DEFAULTS = speed.PathSpec(
    "IQL's defaults: compile_update='auto' (compiled; on CUDA captured in a CUDA graph)", compile_update="auto"
)


def run(
    path: str,
    n_updates: int,
    chunk: int,
    max_seconds: float,
    device: th.device,
    peer_updates: int = 0,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """
    :param peer_updates: d3rlpy's IQL updates timed before and after the run (0: none)
    :param on_chunk: called with the figures so far after each chunk (to save them: a stage's time limit may stop
        the run before its end)
    :return: the run's figures: updates done, wall seconds of the first chunk (compilation included) and of all,
        updates/s over the whole run and over the chunks after the first, whether the result is finite, and with
        ``peer_updates`` d3rlpy's updates/s (before, after) and the ratio of the whole run's to their mean
    """
    spec = DEFAULTS if path == "auto" else speed.PATHS[path]
    if spec.kind != "iql":
        raise ValueError(f"--path must be one of sb3-iql's paths, got {path!r} ({spec.kind})")
    obs_dim, action_dim = speed.SHAPES["antmaze"]
    data = synthetic_transitions(obs_dim, action_dim, speed.N_TRANSITIONS)
    model = speed.make_iql(obs_dim, action_dim, device, spec, offline_steps=n_updates)  # the cosine lr spans the run
    speed.load_into(model, data)
    peer_rates: list[float] = []
    time_peer = speed.d3rlpy_runner(data, device) if peer_updates else None
    if time_peer is not None:
        time_peer(20)  # its first updates build its buffers
        peer_rates.append(_updates_per_s(time_peer, peer_updates, device))
    chunks: list[tuple[int, float]] = []
    done, start = 0, time.perf_counter()

    # a chunk starts only if it should end within max_seconds (at the last chunk's pace): a stage's time limit
    # (gpu_check.sh) would kill the run before it writes its figures
    def figures() -> dict[str, Any]:
        steady = chunks[1:] or chunks
        parameters = [p for net in (model.actor, model.critic, model.value_net) for p in net.parameters()]
        actions, _ = model.predict(data.observations[:1000], deterministic=True)
        return {
            "path": path,
            "note": spec.note,
            "updates": done,
            "target_updates": n_updates,
            "wall_s": total,
            "first_chunk_s": chunks[0][1],
            "chunk": chunk,
            "updates_per_s": done / total,
            "steady_updates_per_s": sum(size for size, _ in steady) / sum(seconds for _, seconds in steady),
            "chunk_updates_per_s": [size / seconds for size, seconds in chunks],
            "finite": bool(all(th.isfinite(p).all() for p in parameters) and np.isfinite(actions).all()),
            "ran": speed.path_that_ran(model),
            "peer_updates": peer_updates,
            "peer_updates_per_s": peer_rates,
            "ratio_to_peer": done / total / float(np.mean(peer_rates)) if peer_rates else None,
        }

    while not chunks or (done < n_updates and time.perf_counter() - start + chunks[-1][1] < max_seconds):
        size = min(chunk, n_updates - done)
        chunk_start = time.perf_counter()
        model.learn_offline(size, log_interval=0, reset_num_timesteps=not chunks)
        speed.synchronize(device)
        chunks.append((size, time.perf_counter() - chunk_start))
        done += size
        total = time.perf_counter() - start
        print(f"{done:>9,} updates, {total:7.1f} s", flush=True)
        if on_chunk is not None:  # a run killed by a time limit keeps its chunks
            on_chunk(figures())
    if time_peer is not None:
        peer_rates.append(_updates_per_s(time_peer, peer_updates, device))
    return figures()


def _updates_per_s(run_updates: Callable[[int], None], n_updates: int, device: th.device) -> float:
    """:return: updates/s of ``run_updates(n_updates)``"""
    start = time.perf_counter()
    run_updates(n_updates)
    speed.synchronize(device)
    return n_updates / (time.perf_counter() - start)


def render(result: dict[str, Any], device_name: str) -> str:
    """:return: a markdown section of ``speed.md``"""
    finished = "" if result["updates"] == result["target_updates"] else f" (stopped at {result['updates']:,})"
    ran = f"; ran: {result['ran']}" if result.get("ran") else ""  # a path that fell back names the one it ran
    peer_rates = result.get("peer_updates_per_s") or []
    ratios = " and ".join(f"{result['updates_per_s'] / rate:.2f}x" for rate in peer_rates)
    peer = (
        f"d3rlpy's IQL on the same data, {result['peer_updates']:,} updates before the run and after: "
        f"{' and '.join(f'{rate:.1f}' for rate in peer_rates)} updates/s; the whole run (compilation included) "
        f"at {ratios} those "
        f"(**{result['ratio_to_peer']:.2f}x** their mean; a gap between the two says the machine's speed moved)."
        if peer_rates
        else ""
    )
    return "\n".join(
        [
            f"## A full-length run: {device_name}, {result.get('threads', 1)} thread(s), torch {result['torch']}, "
            f"{result['date']}",
            "",
            f"`learn_offline` of {result['target_updates']:,} updates{finished}, `{result['path']}` path "
            f"({result['note']}{ran}), batch 256, 256x256, AntMaze's shapes, 1M synthetic transitions "
            "(`benchmarks/million_updates.py`); wall time from the first update, compilation included.",
            "",
            "| updates | wall (s) | first chunk, compilation included (s) | updates/s, whole run | updates/s after "
            "the first chunk | parameters finite |",
            "|---:|---:|---:|---:|---:|---|",
            f"| {result['updates']:,} | {result['wall_s']:.1f} | {result['first_chunk_s']:.1f} "
            f"({result['chunk']:,} updates) | {result['updates_per_s']:.0f} | {result['steady_updates_per_s']:.0f} | "
            f"{'yes' if result['finite'] else '**no**'} |",
            "",
            *([peer, ""] if peer else []),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="auto", help="auto (IQL's defaults) or one of speed.py's sb3-iql paths")
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000, help="updates per learn_offline call")
    parser.add_argument(
        "--max-seconds", type=float, default=float("inf"), help="start no chunk that would end after this (but the first)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--output-dir", default=speed.RESULTS_DIR)
    parser.add_argument("--peer-updates", type=int, default=0, help="d3rlpy IQL updates timed before and after")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    device = speed.chosen_device(args.device)
    header = {
        "torch": th.__version__,
        "threads": args.threads,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "device_name": speed.device_name(device),
    }

    def save(figures: dict[str, Any]) -> None:
        speed.save_section(args.output_dir, "million", device.type, {**header, **figures})

    result = {**header, **run(args.path, args.updates, args.chunk, args.max_seconds, device, args.peer_updates, save)}
    save(result)
    print(render(result, result["device_name"]), flush=True)
    if not result["finite"]:
        raise SystemExit("non-finite parameters or actions after the run")


if __name__ == "__main__":
    main()
