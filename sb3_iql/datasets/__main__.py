"""
Command line for :mod:`sb3_iql.datasets`.

Examples::

    python -m sb3_iql.datasets pointmaze --maze umaze medium large --reward sparse dense
    python -m sb3_iql.datasets pointmaze --maze umaze --stitch --n-steps 100000
    python -m sb3_iql.datasets pointmaze --maze medium --recipe antmaze-unseen   # Minari's AntMaze-v1 recipe
    python -m sb3_iql.datasets collect --env Hopper-v5 --algo sac --model sac_hopper.zip \\
        --dataset-id sb3_iql/hopper/medium-v0 --n-steps 1000000 --ref-min -20.272305 --ref-max 3234.3
    python -m sb3_iql.datasets collect --env Hopper-v5 --dataset-id sb3_iql/hopper/random-v0 --n-steps 100000
    python -m sb3_iql.datasets medium-expert --env Acrobot-v1
    python -m sb3_iql.datasets collect --env CartPole-v1 --algo dqn --model dqn_cartpole.zip --epsilon 0.3 \
        --dataset-id sb3_iql/cartpole/noisy-v0 --n-steps 100000 --ref-max 500
    python -m sb3_iql.datasets list
"""

import argparse
import functools
import importlib
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import minari
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_iql.common.arguments import int_at_least, non_negative_int, positive_int
from sb3_iql.datasets import medium_expert
from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES, NormalizedPredictor, RandomPolicy, as_env, collect
from sb3_iql.datasets.generated import is_generated_id, stored_dataset
from sb3_iql.datasets.pixels import DEFAULT_PIXEL_STEPS, MIN_SIZE, make_pixel_pointmaze_dataset, pixel_dataset_id
from sb3_iql.datasets.pointmaze import (
    DEFAULT_N_STEPS,
    MAZES,
    RECIPES,
    REWARD_TYPES,
    make_pointmaze_dataset,
    pointmaze_dataset_id,
)

# Packages searched, in order, for the class named by --algo
ALGORITHM_PACKAGES = ("stable_baselines3", "sb3_contrib", "sb3_iql")


def load_model(algo: str, path: str) -> BaseAlgorithm:
    """
    :param algo: Algorithm name, case-insensitive (``sac``, ``tqc``, ``iql``...).
    :param path: Path of the saved model (``.zip``, which may be left out).
    :return: The loaded model.
    :raises ValueError: no such algorithm, no such file, or a file that this algorithm cannot load
    """
    if not (os.path.isfile(path) or os.path.isfile(f"{path}.zip")):
        raise ValueError(f"No saved model at {path!r} (nor {path + '.zip'!r})")
    for package in ALGORITHM_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        for name in dir(module):
            candidate = getattr(module, name)
            if name.lower() == algo.lower() and isinstance(candidate, type) and issubclass(candidate, BaseAlgorithm):
                try:
                    return candidate.load(path)
                except (AttributeError, KeyError, TypeError) as error:  # another algorithm's file
                    raise ValueError(f"{path!r} does not load as a {name} model ({type(error).__name__}: {error})") from None
    raise ValueError(f"Unknown algorithm {algo!r}: no such class in {', '.join(ALGORITHM_PACKAGES)}")


def _report(dataset: minari.MinariDataset, seconds: float) -> None:
    metadata = dataset.storage.metadata
    scores = ""
    if "ref_max_score" in metadata:
        scores = f", ref_min_score {metadata['ref_min_score']:.2f}, ref_max_score {metadata['ref_max_score']:.2f}"
    print(
        f"{dataset.spec.dataset_id}: {dataset.total_steps} steps, {dataset.total_episodes} episodes{scores} "
        f"({seconds:.1f} s, {dataset.total_steps / seconds:.0f} steps/s)"
    )


def _pointmaze(args: argparse.Namespace) -> None:
    combinations = list(itertools.product(args.maze, args.reward))
    # with --pixels, --overwrite remakes the pixel dataset, and the state one only where --n-steps asks for it
    overwrite_states = args.overwrite and (args.pixels is None or args.n_steps is not None)
    for maze, reward in combinations:
        dataset_id = args.dataset_id or pointmaze_dataset_id(maze, reward, args.stitch, args.recipe)
        dataset = _kept_or_made(
            dataset_id,
            args.n_steps,
            overwrite_states,
            functools.partial(
                make_pointmaze_dataset,
                maze,
                reward,
                args.stitch,
                n_steps=DEFAULT_N_STEPS if args.n_steps is None else args.n_steps,
                recipe=args.recipe,
                seed=args.seed,
                n_reference_episodes=args.n_reference_episodes,
                dataset_id=dataset_id,
                overwrite=overwrite_states,
            ),
            remade_by="--overwrite" if args.pixels is None else "--overwrite with --n-steps",
        )
        if args.pixels is not None:
            pixel_id = pixel_dataset_id(dataset_id, args.pixels, check=False)
            _kept_or_made(
                pixel_id,
                args.pixel_steps,
                args.overwrite,
                functools.partial(
                    make_pixel_pointmaze_dataset,
                    dataset,
                    args.pixels,
                    n_steps=args.pixel_steps,
                    dataset_id=pixel_id,
                    overwrite=args.overwrite,
                    maze_and_reward=(maze, reward),
                ),
            )


def _kept_or_made(
    dataset_id: str,
    n_steps: int | None,
    overwrite: bool,
    make: Callable[[], minari.MinariDataset],
    remade_by: str = "--overwrite",
) -> minari.MinariDataset:
    """:return: the stored dataset ``dataset_id`` (of ``n_steps`` where given), kept unless ``overwrite``; else
    ``make()``'s, reported; ``remade_by``: the options that would make it again, for the message"""
    dataset = None if overwrite else stored_dataset(dataset_id, n_steps)
    if dataset is not None:
        print(
            f"{dataset_id}: stored, kept as it was made ({dataset.total_steps} steps, its own seed and reference "
            f"episodes; {remade_by} makes it again with these options)"
        )
        return dataset
    start = time.perf_counter()
    dataset = make()
    _report(dataset, time.perf_counter() - start)
    return dataset


def _collect(args: argparse.Namespace) -> None:
    if is_generated_id(args.dataset_id):  # ensure_dataset would take the rollouts for the data it makes there
        raise ValueError(f"--dataset-id {args.dataset_id} is an id that ensure_dataset generates: give another one")
    for package in args.gym_packages:
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise ValueError(f"--gym-packages {package}: {error}") from error
    env = as_env(args.env)
    policy = load_model(args.algo, args.model) if args.model else RandomPolicy(env.action_space, args.seed)
    policy = _normalized(policy, args.vec_normalize, "--vec-normalize", "--model", args.env)
    expert = load_model(args.expert_algo or args.algo, args.expert_model) if args.expert_model else None
    expert = _normalized(expert, args.expert_vec_normalize, "--expert-vec-normalize", "--expert-model", args.env)
    start = time.perf_counter()
    dataset = collect(
        env,
        policy,
        args.dataset_id,
        n_steps=args.n_steps,
        n_episodes=args.n_episodes,
        action_noise_std=args.noise,
        epsilon=args.epsilon,
        seed=args.seed,
        deterministic=not args.stochastic,
        ref_min_score=args.ref_min,
        ref_max_score=args.ref_max,
        expert_policy=expert,
        n_reference_episodes=args.n_reference_episodes,
        overwrite=args.overwrite,
        jpeg_encoding=args.jpeg,
    )
    _report(dataset, time.perf_counter() - start)


def _normalized(model: Any, path: str | None, option: str, model_option: str, env_id: str) -> Any:
    """:return: ``model`` acting on observations normalised with the statistics at ``path`` (None: ``model``)"""
    if path is None:
        return model
    if not isinstance(model, BaseAlgorithm):
        raise ValueError(f"{option} gives the statistics of {model_option}: give {model_option} too")
    if not os.path.isfile(path):
        raise ValueError(f"{option}: no file at {path}")
    return NormalizedPredictor(model, VecNormalize.load(path, DummyVecEnv([lambda: as_env(env_id)])))


def _medium_expert(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    dataset = medium_expert.make_medium_expert_dataset(
        args.env,
        n_steps=args.n_steps,
        epsilon=args.epsilon,
        seed=args.seed,
        n_reference_episodes=args.n_reference_episodes,
        dataset_id=args.dataset_id,
        overwrite=args.overwrite,
    )
    _report(dataset, time.perf_counter() - start)


def _list(args: argparse.Namespace) -> None:
    datasets = minari.list_local_datasets(prefix=args.prefix)
    if not datasets:
        print("No local datasets" + (f" under {args.prefix}" if args.prefix else ""))
    for dataset_id, metadata in datasets.items():
        scores = (
            f"  ref [{metadata['ref_min_score']:.2f}, {metadata['ref_max_score']:.2f}]" if "ref_max_score" in metadata else ""
        )
        print(f"{dataset_id}  {metadata['total_steps']} steps  {metadata['total_episodes']} episodes{scores}")


def make_parser() -> argparse.ArgumentParser:
    """:return: The argument parser of ``python -m sb3_iql.datasets``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb3_iql.datasets",
        description="Create offline RL datasets as local Minari datasets (under $MINARI_DATASETS_PATH).",
    )
    subparsers = parser.add_subparsers(required=True, dest="command")

    maze = subparsers.add_parser(
        "pointmaze", help="PointMaze datasets: sb3_iql/pointmaze/<maze>[-dense][-stitch | -<recipe>]-v0"
    )
    maze.add_argument("--maze", nargs="+", choices=list(MAZES), default=["umaze"])
    maze.add_argument("--reward", nargs="+", choices=REWARD_TYPES, default=["sparse"])
    maze.add_argument("--stitch", action="store_true", help="store the evaluation goal as desired_goal everywhere")
    maze.add_argument("--recipe", choices=RECIPES, help="Minari's PointMaze (cut) or AntMaze-v1 recipe, or play data")
    maze.add_argument(
        "--n-steps",
        type=positive_int,
        help=f"transitions (default {DEFAULT_N_STEPS:,}; when left out, a stored dataset of any size is kept)",
    )
    maze.add_argument("--dataset-id", help="write to this id instead of the standard one")
    maze.add_argument(
        "--pixels",
        type=int_at_least(MIN_SIZE),
        metavar="SIZE",
        help="also re-render the dataset as SIZE x SIZE frames (e.g. umaze-stitch-v0 -> umaze-stitch-pixels<SIZE>-v0; "
        "--overwrite then remakes the pixel dataset, and the state one only with --n-steps)",
    )
    maze.add_argument(
        "--pixel-steps",
        type=positive_int,
        help=f"transitions of the pixel dataset, at most the state dataset's (default {DEFAULT_PIXEL_STEPS:,} or all of a "
        "smaller one; when left out, a stored one is kept)",
    )
    maze.set_defaults(run=_pointmaze)

    rollout = subparsers.add_parser("collect", help="roll out a saved SB3 model (or random actions) in an environment")
    rollout.add_argument("--env", required=True, help="Gymnasium environment id")
    rollout.add_argument("--dataset-id", required=True)
    rollout.add_argument("--algo", default="sac", help="class of --model / --expert-model: sac, td3, tqc, iql...")
    rollout.add_argument("--model", help="saved model (.zip); uniform random actions when omitted")
    size = rollout.add_mutually_exclusive_group(required=True)
    size.add_argument("--n-steps", type=positive_int)
    size.add_argument("--n-episodes", type=positive_int)
    rollout.add_argument("--stochastic", action="store_true", help="sample actions from the model's policy")
    rollout.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise std, in half action ranges")
    rollout.add_argument("--epsilon", type=float, default=0.0, help="probability of a uniformly random action")
    rollout.add_argument("--ref-min", type=float, help="return of normalized score 0 (default: measured, random)")
    rollout.add_argument("--ref-max", type=float, help="return of normalized score 100 (Minari's ref_max_score)")
    rollout.add_argument("--expert-model", help="saved model whose mean return is the reference max score")
    rollout.add_argument("--expert-algo", help="class of --expert-model (default: --algo)")
    rollout.add_argument(
        "--vec-normalize",
        help="VecNormalize statistics of --model (rl-zoo's vecnormalize.pkl): it acts on observations normalised with them",
    )
    rollout.add_argument("--expert-vec-normalize", help="the same for --expert-model")
    rollout.add_argument("--jpeg", action="store_true", help="store image observations as JPEG (lossy, smaller)")
    rollout.add_argument("--gym-packages", nargs="*", default=[], help="modules to import to register environments")
    rollout.set_defaults(run=_collect)

    mixed = subparsers.add_parser(
        "medium-expert", help="half PPO medium, half PPO expert (Discrete actions too): sb3_iql/<env>/medium-expert-v0"
    )
    mixed.add_argument("--env", choices=list(medium_expert.RECIPES), default="Acrobot-v1")
    mixed.add_argument("--n-steps", type=positive_int, default=100_000)
    mixed.add_argument(
        "--epsilon", type=float, default=medium_expert.DEFAULT_EPSILON, help="probability of a uniformly random action"
    )
    mixed.add_argument("--dataset-id", help="write to this id instead of the standard one")
    mixed.set_defaults(run=_medium_expert)

    for subparser in (maze, rollout, mixed):
        subparser.add_argument("--seed", type=non_negative_int, default=0)
        subparser.add_argument("--n-reference-episodes", type=positive_int, default=DEFAULT_N_REFERENCE_EPISODES)
        subparser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")

    listing = subparsers.add_parser("list", help="list the local Minari datasets")
    listing.add_argument("--prefix", help="only ids starting with this namespace, e.g. sb3_iql")
    listing.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m sb3_iql.datasets``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.run is _pointmaze and args.dataset_id is not None and len(args.maze) * len(args.reward) > 1:
        parser.error("--dataset-id needs a single --maze and a single --reward")
    if args.run is _pointmaze and args.pixel_steps is not None and args.pixels is None:
        parser.error("--pixel-steps sizes the pixel dataset of --pixels SIZE, which is not given")
    try:
        args.run(args)
    # gym's: an unknown --env; a datasets path that cannot be made (a file in it, no permission): one line
    except (ValueError, FileExistsError, NotADirectoryError, PermissionError, gym.error.Error) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
