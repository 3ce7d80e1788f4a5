"""
MuJoCo locomotion datasets in the D4RL recipe, end to end: SAC training, then ``medium``, ``medium-replay``
and ``expert`` Minari datasets under ``sb3_iql/<env>/<kind>-v0`` (e.g. ``sb3_iql/hopper/medium-replay-v0``).

1. Train SAC until the mean evaluation return reaches a D4RL normalized score of ``--medium-fraction`` (1/3,
   i.e. about a third of the expert return), or ``--total-steps``; that policy is "medium", and its replay
   buffer up to that point is "medium-replay".
2. ``medium``: ``--dataset-steps`` steps of the medium policy (actions sampled from the policy).
3. ``medium-replay``: the replay buffer, with the terminations and time-outs SB3 recorded.
4. ``expert`` (skipped with ``--expert-steps 0``): training goes on to ``--expert-steps`` in total, then
   ``--dataset-steps`` steps of that policy.

Reference scores are D4RL's, so normalized scores compare with published tables. Each stage is skipped when
its output exists (policies under ``--log-dir``, datasets in ``$MINARI_DATASETS_PATH``); training saves
checkpoints and resumes from the latest one. An uninterrupted run is deterministic given ``--seed``
(CPU, one torch thread) on one CPU with one set of kernels; a resumed one is not bit-identical, and neither is
one on another CPU: seed 0 made three generations of the Hopper datasets (medium policy after 120k SAC steps on
an Intel Xeon with AVX-512, twice to the digit; 160k on an AMD EPYC; 150k on the same Xeon with torch's AVX2
kernels, ``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``). The results record the machine. Policy
returns are printed and written to ``--results-dir`` as JSON and Markdown.

``--portable`` makes a generation meant to be the same on every x86-64 CPU with AVX (MuJoCo's wheels need it):
the script starts itself again with ``PORTABLE_ENV``, which pins each CPU-dependent numeric path to the baseline
instruction set (torch's scalar kernels, MKL's conditional numerical reproducibility, glibc's SSE2 maths
functions, which MuJoCo calls and whose FMA variants round otherwise, NumPy's baseline loops), and oneDNN is off;
it stops if torch or NumPy still dispatch to more. SAC runs about 40% slower. The results
(``locomotion_datasets_<env>_seed<seed>_portable.*``) hold a fingerprint, computed first: the hashes of SAC's
parameters and observations after ``FINGERPRINT_STEPS`` steps (500 of them random), and the versions of the
packages the data depend on. ``--fingerprint-only`` computes it alone (about 2 minutes) and compares it with the
recorded one: the same hashes on another machine say that it makes the recorded generation. Its ``parts`` hash
MuJoCo, MKL's matrix products and torch's sampling and elementwise kernels alone; each machine that checks adds its
fingerprint to the record (``fingerprints_elsewhere``) and is told which parts differ from the machines there.

Budget: SAC runs about 100 steps/s on one CPU core here, so a medium Hopper policy (~100k steps) takes
about 20 minutes and an expert one (1M steps) hours. Smoke test::

    python benchmarks/make_locomotion_datasets.py --total-steps 2000 --learning-starts 500 --eval-freq 1000 \\
        --eval-episodes 2 --expert-steps 3000 --dataset-steps 1000 --log-dir /tmp/loco --results-dir /tmp/loco
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import torch as th
from hardware import cpu_flags, machine  # benchmarks/hardware.py
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_iql.datasets import collect, dataset_exists, dataset_from_replay_buffer

# D4RL reference returns (random, expert) of its v2 locomotion tasks: normalized score = (R - min) / (max - min)
D4RL_REFERENCE_RETURNS = {
    "Hopper-v5": (-20.272305, 3234.3),
    "HalfCheetah-v5": (-280.178953, 12135.0),
    "Walker2d-v5": (1.629008, 4592.3),
}
MEDIUM_FRACTION = 1 / 3
#: SAC steps of the fingerprint (the first 500 random, then one update per step)
FINGERPRINT_STEPS = 2_500
#: Environment of ``--portable`` runs; GLIBC_TUNABLES and NPY_DISABLE_CPU_FEATURES are read when a process
#: starts, hence a restart (``restart_portable``).
#: Packages whose versions a generation depends on (with Python and glibc)
FINGERPRINT_PACKAGES = ("torch", "numpy", "mujoco", "gymnasium", "stable_baselines3")
#: Set in the restarted process (so that it restarts once)
PORTABLE_MARK = "SB3_IQL_PORTABLE"
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4,-AVX512F",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}
CHECKPOINT_PREFIX = "sac"
_CHECKPOINT_RE = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip")


def dataset_id(env_id: str, kind: str) -> str:
    """:return: e.g. ``sb3_iql/hopper/medium-v0`` for ``("Hopper-v5", "medium")``."""
    return f"sb3_iql/{env_id.split('-')[0].lower()}/{kind}-v0"


def _latest_checkpoint(folder: Path) -> tuple[Path, Path] | None:
    """:return: The newest (model, replay buffer) pair saved by CheckpointCallback, if any."""
    checkpoints = sorted(
        folder.glob(f"{CHECKPOINT_PREFIX}_*_steps.zip"), key=lambda path: int(_CHECKPOINT_RE.match(path.name)[1])
    )
    if not checkpoints:
        return None
    steps = _CHECKPOINT_RE.match(checkpoints[-1].name)[1]
    return checkpoints[-1], folder / f"{CHECKPOINT_PREFIX}_replay_buffer_{steps}_steps.pkl"


def _load(model_path: Path, buffer_path: Path, env: gym.Env) -> SAC:
    model = SAC.load(model_path, env=env, device="cpu")
    model.load_replay_buffer(buffer_path)
    return model


def end_open_episode(replay_buffer: ReplayBuffer) -> None:
    """
    Mark the buffer's last transition a time-out (SB3's truncation: ``dones`` and ``timeouts``) unless it ends an
    episode: a run resumed from a checkpoint starts from a reset, and the episode cut there would otherwise run on into
    the next one in the replay dataset (a mid-episode reset without a flag).
    """
    if replay_buffer.size() == 0:
        return
    last = (replay_buffer.pos - 1) % replay_buffer.buffer_size
    open_episodes = replay_buffer.dones[last] == 0
    replay_buffer.timeouts[last] = np.where(open_episodes, 1.0, replay_buffer.timeouts[last])
    replay_buffer.dones[last] = 1.0


def train_stage(
    name: str, args: argparse.Namespace, until_steps: int, stop_return: float | None, start: SAC | None = None
) -> SAC:
    """
    Train (or resume, or load) SAC up to ``until_steps`` environment steps in total.

    :param name: Stage name; the result is ``<log-dir>/<name>_policy.zip`` and ``<name>_replay_buffer.pkl``.
    :param args: Command-line arguments.
    :param until_steps: Total number of environment steps at the end of the stage.
    :param stop_return: Stop as soon as the mean evaluation return reaches it (None: train until the end).
    :param start: The model to continue from when no checkpoint of this stage exists (None: a new SAC).
    :return: The trained model, with its replay buffer.
    """
    env = gym.make(args.env)
    policy_path, buffer_path = args.log_dir / f"{name}_policy.zip", args.log_dir / f"{name}_replay_buffer.pkl"
    if policy_path.exists():
        return _load(policy_path, buffer_path, env)
    checkpoint_dir = args.log_dir / f"{name}_checkpoints"
    checkpoint = _latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        model = _load(*checkpoint, env)
        end_open_episode(model.replay_buffer)  # learn() starts a new episode from a reset
        print(f"{name}: resumed at {model.num_timesteps:,} steps", flush=True)
    elif start is not None:
        model = start
    else:
        model = SAC("MlpPolicy", env, learning_starts=args.learning_starts, seed=args.seed, device="cpu", verbose=0)
    callbacks = [CheckpointCallback(args.checkpoint_freq, str(checkpoint_dir), CHECKPOINT_PREFIX, save_replay_buffer=True)]
    if stop_return is not None:
        eval_env = Monitor(gym.make(args.env))
        eval_env.reset(seed=args.seed)
        stop = StopTrainingOnRewardThreshold(reward_threshold=stop_return, verbose=1)
        callbacks.append(EvalCallback(eval_env, stop, n_eval_episodes=args.eval_episodes, eval_freq=args.eval_freq, verbose=1))
    model.learn(max(until_steps - model.num_timesteps, 0), callback=CallbackList(callbacks), reset_num_timesteps=False)
    model.save(policy_path)
    model.save_replay_buffer(buffer_path)
    return model


def restart_portable() -> None:
    """
    Start this script again with ``PORTABLE_ENV`` (before any computation), unless it already runs with it.

    :raises SystemExit: torch or NumPy still dispatch to instructions beyond the baseline
    """
    if os.environ.get(PORTABLE_MARK) is None:
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), PORTABLE_ENV["GLIBC_TUNABLES"]]))
        env = {**os.environ, **PORTABLE_ENV, "GLIBC_TUNABLES": tunables, PORTABLE_MARK: "1"}
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    th.backends.mkldnn.enabled = False
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # NumPy 2

    numpy_features = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    if th.backends.cpu.get_cpu_capability() != "DEFAULT" or numpy_features:
        raise SystemExit(
            f"--portable: torch dispatches to {th.backends.cpu.get_cpu_capability()} kernels, NumPy to "
            f"{numpy_features or 'its baseline'}; this torch or NumPy does not take PORTABLE_ENV's settings"
        )


def package_versions() -> dict[str, str]:
    """:return: the versions of what a generation's numbers depend on besides the CPU"""
    return {
        "python": platform.python_version(),
        "glibc": " ".join(platform.libc_ver()),
        **{package: importlib.metadata.version(package) for package in FINGERPRINT_PACKAGES},
    }


def fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """
    Train SAC for ``FINGERPRINT_STEPS`` steps (500 random, as ``learning_starts=500``): two machines that give the
    same hashes compute SAC and MuJoCo alike, and make the same generation. The stages after it seed their own SAC.
    Where they differ, ``parts`` tell which computation does (``fingerprint_parts``).

    :return: The steps, the SHA-256 (first 16 hex digits) of SAC's parameters and of the observations it saw, and
        ``parts``
    """
    parts = fingerprint_parts(args)
    model = SAC("MlpPolicy", gym.make(args.env), learning_starts=500, seed=args.seed, device="cpu")
    parts["sac_init"] = _sha256(p.detach().numpy() for p in model.policy.parameters())
    model.learn(FINGERPRINT_STEPS)
    return {
        "steps": FINGERPRINT_STEPS,
        "parameters_sha256": _sha256(p.detach().numpy() for p in model.policy.parameters()),
        "observations_sha256": _sha256([model.replay_buffer.observations[: model.replay_buffer.pos]]),
        "parts": parts,
    }


def fingerprint_parts(args: argparse.Namespace) -> dict[str, str]:
    """
    The hashes of the computations SAC's fingerprint mixes, each alone, so that two machines' fingerprints say which
    one differs: ``mujoco``: 3,000 steps of the environment with uniform random actions (float64 observations and
    rewards: MuJoCo and glibc's maths); ``sgemm``: float32 matrix products of SAC's shapes (MKL); ``normal``: torch's
    normal sampling (its kernels and glibc's float maths); ``elementwise``: tanh, exp, log1p and softplus (torch's
    kernels). Their own generators: SAC's seeding is unchanged.
    """
    env = gym.make(args.env)
    rng = np.random.default_rng(args.seed)
    observation, _ = env.reset(seed=args.seed)
    steps = [observation]
    for _ in range(3_000):
        observation, reward, terminated, truncated, _ = env.step(rng.uniform(-1.0, 1.0, env.action_space.shape))
        steps += [observation, np.array([reward])]
        if terminated or truncated:
            observation, _ = env.reset()
            steps.append(observation)
    generator = th.Generator().manual_seed(args.seed)
    inputs, weights = th.randn(256, 14, generator=generator), th.randn(14, 256, generator=generator)
    hidden = th.randn(256, 256, generator=generator)
    values = th.randn(4096, generator=generator)
    elementwise = [th.tanh(values), th.exp(values), th.log1p(values.abs()), th.nn.functional.softplus(values)]
    return {
        "mujoco": _sha256(steps),
        "sgemm": _sha256(t.numpy() for t in (inputs @ weights, hidden @ hidden, hidden.T @ hidden)),
        "normal": _sha256([th.randn(4096, generator=generator).numpy()]),
        "elementwise": _sha256(t.numpy() for t in elementwise),
    }


def _sha256(arrays: Iterable[np.ndarray]) -> str:
    """:return: the first 16 hex digits of the SHA-256 of the arrays' bytes, in order"""
    return hashlib.sha256(b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)).hexdigest()[:16]


def results_stem(args: argparse.Namespace) -> Path:
    """:return: ``<results-dir>/locomotion_datasets_<env>_seed<seed>`` (``_portable`` added with ``--portable``)."""
    suffix = "_portable" if args.portable else ""
    return args.results_dir / f"locomotion_datasets_{args.env.split('-')[0].lower()}_seed{args.seed}{suffix}"


def check_fingerprint(args: argparse.Namespace) -> None:
    """
    Compute this machine's fingerprint, print it, and compare it with the recorded one. It is added to the record's
    ``fingerprints_elsewhere`` (with the machine and package versions; once per CPU and fingerprint), and its
    ``parts`` that differ from those of the machines there are printed.
    """
    found = fingerprint(args)
    print(json.dumps({**found, "versions": package_versions()}))
    recorded_file = results_stem(args).with_suffix(".json")
    if not recorded_file.exists():
        print(f"Nothing recorded in {recorded_file} to compare with.")
        return
    record = json.loads(recorded_file.read_text())
    elsewhere = record.setdefault("fingerprints_elsewhere", [])
    for other in elsewhere:
        differing = [
            name for name, value in other["fingerprint"].get("parts", {}).items() if found["parts"].get(name) != value
        ]
        print(f"Parts that differ from those of {other['machine']['cpu']}: {', '.join(differing) or 'none'}")
    entry = {"machine": {**machine(), "cpu_flags": cpu_flags()}, "versions": package_versions(), "fingerprint": found}
    if not any((e["machine"]["cpu"], e["fingerprint"]) == (entry["machine"]["cpu"], found) for e in elsewhere):
        elsewhere.append(entry)
        recorded_file.write_text(json.dumps(record, indent=2) + "\n")
    recorded = record.get("fingerprint")
    main_hashes = {key: value for key, value in found.items() if key != "parts"}
    if recorded is None:
        print(f"No fingerprint recorded in {recorded_file} to compare with.")
    elif {key: value for key, value in recorded.items() if key != "parts"} == main_hashes:
        print(f"Same as {recorded_file}: this machine makes the recorded generation.")
    else:
        raise SystemExit(f"Not the fingerprint of {recorded_file} ({recorded}): this machine makes another generation.")


def evaluate(model: SAC, args: argparse.Namespace) -> dict[str, float]:
    """:return: Steps trained, mean and std of the deterministic return, and its D4RL normalized score (0-100)."""
    env = Monitor(gym.make(args.env))
    env.reset(seed=args.seed)
    mean, std = evaluate_policy(model, env, n_eval_episodes=args.eval_episodes, deterministic=True)
    ref_min, ref_max = D4RL_REFERENCE_RETURNS[args.env]
    normalized = 100 * (mean - ref_min) / (ref_max - ref_min)
    return {"steps": model.num_timesteps, "return_mean": mean, "return_std": std, "normalized_score": normalized}


def make_dataset(kind: str, model: SAC, args: argparse.Namespace) -> dict[str, float]:
    """Write (or load) one dataset; :return: its size and mean episode return."""
    target = dataset_id(args.env, kind)
    ref_min, ref_max = D4RL_REFERENCE_RETURNS[args.env]
    if dataset_exists(target):
        dataset = minari.load_dataset(target)
    elif kind == "medium-replay":
        dataset = dataset_from_replay_buffer(model, target, args.env, ref_min_score=ref_min, ref_max_score=ref_max)
    else:
        th.manual_seed(args.seed)
        dataset = collect(
            args.env,
            model,
            target,
            n_steps=args.dataset_steps,
            seed=args.seed,
            deterministic=False,
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            algorithm_name=f"SAC ({kind}, {model.num_timesteps} steps)",
        )
    returns = np.array([episode.rewards.sum() for episode in dataset.iterate_episodes()])
    return {"steps": dataset.total_steps, "episodes": dataset.total_episodes, "episode_return_mean": float(returns.mean())}


def write_results(results: dict, args: argparse.Namespace) -> None:
    """Print the results and write them as JSON and as a Markdown table."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    hardware = results["machine"]
    lines = [
        f"# {args.env} datasets (seed {args.seed})",
        "",
        f"Made on {hardware['cpu']}, torch {hardware['torch']} with {hardware['torch_cpu_capability']} kernels "
        f"(MKL instructions: {hardware['mkl_enable_instructions'] or 'default'}).",
        "",
    ]
    if args.portable:
        lines += [
            f"Portable: {PORTABLE_ENV}, oneDNN off. Fingerprint after {results['fingerprint']['steps']} SAC steps: "
            f"parameters {results['fingerprint']['parameters_sha256']}, "
            f"observations {results['fingerprint']['observations_sha256']}.",
            "",
        ]
    lines += [
        "| policy | SAC steps | return (mean ± std) | D4RL normalized |",
        "|---|---|---|---|",
    ]
    for name, policy in results["policies"].items():
        lines.append(
            f"| {name} | {policy['steps']} | {policy['return_mean']:.1f} ± {policy['return_std']:.1f} "
            f"| {policy['normalized_score']:.1f} |"
        )
    lines += ["", "| dataset | steps | episodes | mean episode return |", "|---|---|---|---|"]
    for name, dataset in results["datasets"].items():
        lines.append(f"| {name} | {dataset['steps']} | {dataset['episodes']} | {dataset['episode_return_mean']:.1f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=list(D4RL_REFERENCE_RETURNS), default="Hopper-v5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-steps", type=int, default=300_000, help="most SAC steps to reach the medium policy")
    parser.add_argument(
        "--medium-fraction", type=float, default=MEDIUM_FRACTION, help="D4RL normalized score of the medium policy, in [0, 1]"
    )
    parser.add_argument("--expert-steps", type=int, default=1_000_000, help="total SAC steps of the expert (0: none)")
    parser.add_argument("--dataset-steps", type=int, default=1_000_000, help="steps of the medium / expert datasets")
    parser.add_argument("--learning-starts", type=int, default=10_000)
    parser.add_argument("--eval-freq", type=int, default=10_000, help="steps between evaluations while training")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--checkpoint-freq", type=int, default=50_000)
    parser.add_argument("--log-dir", type=Path, default=Path("logs/locomotion_datasets"))
    parser.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--portable", action="store_true", help="the same generation on every x86-64 CPU (slower)")
    parser.add_argument(
        "--fingerprint-only",
        action="store_true",
        help="compare this machine's fingerprint with the recorded one (implies --portable)",
    )
    args = parser.parse_args()
    args.portable |= args.fingerprint_only
    args.log_dir = args.log_dir / f"{args.env}_seed{args.seed}{'_portable' if args.portable else ''}"
    return args


def main() -> None:
    args = parse_args()
    if args.portable:
        restart_portable()
    th.set_num_threads(args.torch_threads)
    if args.fingerprint_only:
        check_fingerprint(args)
        return
    start = time.perf_counter()
    ref_min, ref_max = D4RL_REFERENCE_RETURNS[args.env]
    medium_return = ref_min + args.medium_fraction * (ref_max - ref_min)
    first_fingerprint = fingerprint(args) if args.portable else None  # first: another machine compares it in minutes
    if first_fingerprint is not None:
        print(json.dumps(first_fingerprint))
    medium = train_stage("medium", args, args.total_steps, stop_return=medium_return)
    results: dict = {
        "env": args.env,
        "seed": args.seed,
        "machine": machine(),
        "portable": args.portable,
        "fingerprint": first_fingerprint,
        "versions": package_versions(),
        "medium_target_return": medium_return,
        "policies": {},
        "datasets": {},
    }
    results["policies"]["medium"] = evaluate(medium, args)
    results["datasets"][dataset_id(args.env, "medium")] = make_dataset("medium", medium, args)
    results["datasets"][dataset_id(args.env, "medium-replay")] = make_dataset("medium-replay", medium, args)
    if args.expert_steps > medium.num_timesteps:
        expert = train_stage("expert", args, args.expert_steps, stop_return=None, start=medium)
        results["policies"]["expert"] = evaluate(expert, args)
        results["datasets"][dataset_id(args.env, "expert")] = make_dataset("expert", expert, args)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_results(results, args)


if __name__ == "__main__":
    main()
