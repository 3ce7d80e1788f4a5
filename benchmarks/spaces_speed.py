"""
Updates/s and replay-buffer memory of IQL beyond Box vectors: Discrete actions (Acrobot's shapes) and 84x84 RGB
images (``CnnPolicy``, ``DeviceImageReplayBuffer``), on synthetic datasets. Called by ``benchmarks/speed.py
--spaces`` (which writes the figures to ``results/spaces_<device>.json`` and ``speed.md``); alone::

    python benchmarks/spaces_speed.py --updates 20
"""

import argparse
import datetime
import time
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from sb3_iql import IQL
from sb3_iql.common.synthetic import SpacesEnv

#: Transitions of each synthetic dataset, and the length of the image dataset's episodes.
N_TRANSITIONS = 100_000
EPISODE_STEPS = 100
IMAGE_SHAPE = (3, 84, 84)


def _tensor_mb(*tensors: th.Tensor) -> float:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 2**20


def _time_updates(model: IQL, n_updates: int, device: th.device) -> float:
    """:return: updates/s of ``learn_offline`` over ``n_updates`` after 5 warm-up updates"""
    model.learn_offline(5, log_interval=0)
    if device.type == "cuda":
        th.cuda.synchronize()
    start = time.perf_counter()
    model.learn_offline(n_updates, log_interval=0, reset_num_timesteps=False)
    if device.type == "cuda":
        th.cuda.synchronize()
    return n_updates / (time.perf_counter() - start)


def discrete_figures(n_updates: int, device: th.device, rng: np.random.Generator) -> dict[str, Any]:
    """IQL on 100k synthetic transitions with 6 observations and ``Discrete(3)`` actions (Acrobot's shapes)."""
    env = SpacesEnv(spaces.Box(-np.inf, np.inf, (6,), np.float32), spaces.Discrete(3))
    model = IQL("MlpPolicy", env, buffer_size=N_TRANSITIONS, offline_steps=10**6, device=device, seed=0)
    observations = rng.normal(size=(N_TRANSITIONS + 1, 6)).astype(np.float32)
    model.replay_buffer.extend(
        observations[:-1],
        observations[1:],
        rng.integers(3, size=(N_TRANSITIONS, 1)).astype(np.float32),
        rng.normal(size=N_TRANSITIONS).astype(np.float32),
        np.zeros(N_TRANSITIONS, np.float32),
        np.zeros(N_TRANSITIONS, np.float32),
    )
    return {
        "dataset": "Discrete(3) actions, 6 observations, MLPs 256x256",
        "buffer": type(model.replay_buffer).__name__,
        "buffer_mb": _tensor_mb(model.replay_buffer._storage),
        "updates_per_s": _time_updates(model, n_updates, device),
    }


def image_figures(n_updates: int, device: th.device, rng: np.random.Generator) -> dict[str, Any]:
    """IQL (``CnnPolicy``) on 100k synthetic 84x84 RGB frames in 100-step episodes, 3 continuous actions."""
    env = SpacesEnv(spaces.Box(0, 255, IMAGE_SHAPE, np.uint8), spaces.Box(-1.0, 1.0, (3,), np.float32))
    model = IQL("CnnPolicy", env, buffer_size=N_TRANSITIONS, offline_steps=10**6, device=device, seed=0)
    buffer = model.replay_buffer
    n_episodes = N_TRANSITIONS // EPISODE_STEPS
    start = time.perf_counter()
    for _ in range(n_episodes):
        frames = rng.integers(256, size=(EPISODE_STEPS + 1, *IMAGE_SHAPE), dtype=np.uint8)
        timeouts = np.zeros(EPISODE_STEPS, np.float32)
        timeouts[-1] = 1.0
        buffer.extend(
            frames[:-1],
            frames[1:],
            rng.uniform(-1, 1, (EPISODE_STEPS, 3)).astype(np.float32),
            rng.normal(size=EPISODE_STEPS).astype(np.float32),
            np.zeros(EPISODE_STEPS, np.float32),
            timeouts,
        )
    load_s = time.perf_counter() - start
    frame_bytes = int(np.prod(IMAGE_SHAPE))
    raw_frames_mb = (N_TRANSITIONS + n_episodes) * frame_bytes / 2**20
    return {
        "dataset": f"{N_TRANSITIONS:,} frames 84x84x3 uint8 in {EPISODE_STEPS}-step episodes, CnnPolicy (NatureCNN)",
        "buffer": type(buffer).__name__,
        "buffer_mb": _tensor_mb(buffer.frames, buffer.frame_ids, buffer.table),
        "frames_written_mb": buffer.n_frames * frame_bytes / 2**20,
        "raw_frames_plus_one_per_episode_mb": raw_frames_mb,
        "float32_two_copies_mb": 2 * N_TRANSITIONS * frame_bytes * 4 / 2**20,
        "load_s": load_s,
        "updates_per_s": _time_updates(model, n_updates, device),
    }


def measure(n_updates: int, device: th.device) -> dict[str, Any]:
    """:return: the figures of both datasets, with the device and torch version"""
    rng = np.random.default_rng(0)
    return {
        "device": device.type,
        "torch": th.__version__,
        "threads": th.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "updates": n_updates,
        "rows": [discrete_figures(n_updates, device, rng), image_figures(n_updates, device, rng)],
    }


def render(result: dict[str, Any], device_name: str) -> str:
    """:return: a markdown section of ``speed.md``"""
    lines = [
        f"## Other spaces: {device_name}, {result['threads']} thread(s), torch {result['torch']}, {result['date']}",
        "",
        f"Synthetic datasets, batch 256, {result['updates']} timed updates after 5 of warm-up (`benchmarks/spaces_speed.py`).",
        "",
        "| dataset | buffer | buffer memory (MB) | updates/s |",
        "|---|---|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['dataset']} | {row['buffer']} | {row['buffer_mb']:,.0f} | {row['updates_per_s']:.1f} |")
    image = result["rows"][-1]
    written, target = image["frames_written_mb"], image["raw_frames_plus_one_per_episode_mb"]
    lines += [
        "",
        f"Images: {written:,.0f} MB of frames written, against {target:,.0f} MB for the raw frames plus one per episode "
        f"(the target) and {image['float32_two_copies_mb']:,.0f} MB for float32 observations and next observations (a "
        f"`DeviceReplayBuffer`); the buffer's {image['buffer_mb']:,.0f} MB include the ring's room for episode starts "
        f"(`extra_frames`; untouched pages take no memory on the CPU). Loaded in {image['load_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    print(render(measure(args.updates, th.device(args.device)), args.device))
