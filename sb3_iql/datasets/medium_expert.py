"""
Medium-expert datasets for the Gymnasium environments of ``RECIPES`` (Acrobot-v1, Discrete actions): D4RL's recipe
(half the transitions from a partly trained policy, half from a trained one) with SB3's PPO, each action replaced by
a uniformly random one with probability ``epsilon``. Another environment needs its own ``PPORecipe`` (PPO's settings
and the two policies' training steps).

Where the two policies disagree the data holds both actions, the medium one more often where the medium policy
lingers, so behaviour cloning follows it there while IQL can pick the better one; the random actions widen the
data's coverage. Ids: ``sb3_iql/<env name>/medium-expert-v0``, e.g. ``sb3_iql/acrobot/medium-expert-v0``.
"""

import dataclasses
import io
from typing import Any

import gymnasium as gym
import minari
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES, average_return, rollout_episodes, write_episodes
from sb3_iql.datasets.storage import check_writable

DEFAULT_N_STEPS = 100_000
DEFAULT_EPSILON = 0.1


@dataclasses.dataclass(frozen=True)
class PPORecipe:
    """
    How the two policies of an environment are trained.

    :param hyperparameters: PPO's keyword arguments
    :param n_envs: PPO's parallel environments
    :param medium_steps: environment steps of the medium policy
    :param expert_steps: environment steps of the expert (the same run, continued)
    """

    hyperparameters: dict[str, Any]
    n_envs: int
    medium_steps: int
    expert_steps: int


#: The environments with a medium-expert recipe. Acrobot-v1, seed 0: the medium policy returns about -375 (it
#: swings up in some episodes only), the expert about -81 (deterministic actions).
RECIPES: dict[str, PPORecipe] = {
    "Acrobot-v1": PPORecipe(dict(n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0), 8, 12_288, 36_864),
}


def medium_expert_dataset_id(env_id: str) -> str:
    """:return: ``sb3_iql/<env name, lower case>/medium-expert-v0``"""
    return f"sb3_iql/{env_id.split('-')[0].lower()}/medium-expert-v0"


def parse_medium_expert_dataset_id(dataset_id: str) -> str:
    """
    :return: the environment id of a medium-expert dataset id of this package
    :raises ValueError: not such an id
    """
    for env_id in RECIPES:
        if medium_expert_dataset_id(env_id) == dataset_id:
            return env_id
    known = [medium_expert_dataset_id(env_id) for env_id in RECIPES]
    raise ValueError(f"{dataset_id!r} is not a medium-expert id of this package: {known}")


def train_medium_and_expert(env_id: str, recipe: PPORecipe, seed: int = 0) -> tuple[PPO, PPO]:
    """
    Train PPO on ``env_id``, keeping a copy after ``recipe.medium_steps`` environment steps.

    :return: the medium policy (a copy) and the expert (trained for ``recipe.expert_steps`` in all)
    """
    if not 0 < recipe.medium_steps < recipe.expert_steps:
        raise ValueError(f"Need 0 < medium_steps < expert_steps, got {recipe}")
    with th.random.fork_rng():
        env = make_vec_env(env_id, n_envs=recipe.n_envs, seed=seed)
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", **recipe.hyperparameters)
        model.learn(recipe.medium_steps)
        saved = io.BytesIO()
        model.save(saved)
        saved.seek(0)
        medium = PPO.load(saved, device="cpu")
        model.learn(recipe.expert_steps - model.num_timesteps, reset_num_timesteps=False)
    return medium, model


def make_medium_expert_dataset(
    env_id: str = "Acrobot-v1",
    n_steps: int = DEFAULT_N_STEPS,
    epsilon: float = DEFAULT_EPSILON,
    seed: int = 0,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    dataset_id: str | None = None,
    overwrite: bool = False,
) -> minari.MinariDataset:
    """
    Train PPO's medium and expert policies, then write ``n_steps // 2`` transitions of each (deterministic
    actions, each replaced by a random one with probability ``epsilon``) as a Minari dataset. Reference scores:
    uniformly random actions (0) and the expert without random actions (100).

    :param env_id: an environment of ``RECIPES``
    :param n_steps: transitions in all
    :param epsilon: probability of a random action at each step
    :param seed: seed of PPO's training, of the rollouts and of the reference episodes
    :param n_reference_episodes: episodes per reference score (and per return of the two policies, which the
        dataset's description gives)
    :param dataset_id: id to write (default ``medium_expert_dataset_id(env_id)``)
    :param overwrite: replace an existing dataset with the same id
    :return: the dataset
    :raises ValueError: no recipe for ``env_id``, or an argument out of range (checked before PPO trains)
    """
    if env_id not in RECIPES:
        raise ValueError(f"No medium-expert recipe for {env_id!r}: use one of {list(RECIPES)}")
    if n_steps < 2 or not 0.0 <= epsilon <= 1.0 or n_reference_episodes < 1:  # before PPO trains, not after
        raise ValueError(
            f"n_steps must be >= 2 (half from each policy), epsilon in [0, 1] and n_reference_episodes >= 1, got "
            f"{n_steps}, {epsilon} and {n_reference_episodes}"
        )
    dataset_id = medium_expert_dataset_id(env_id) if dataset_id is None else dataset_id
    check_writable(dataset_id, overwrite)
    recipe = RECIPES[env_id]
    medium, expert = train_medium_and_expert(env_id, recipe, seed=seed)
    env = gym.make(env_id)
    episodes = [
        *rollout_episodes(env, medium, n_steps=n_steps // 2, seed=seed, epsilon=epsilon),
        *rollout_episodes(env, expert, n_steps=n_steps - n_steps // 2, seed=seed + 1, epsilon=epsilon),
    ]
    episodes = [dataclasses.replace(episode, id=index) for index, episode in enumerate(episodes)]
    returns = [average_return(env, policy, n_reference_episodes, seed) for policy in (medium, expert)]
    return write_episodes(
        dataset_id,
        episodes,
        env,
        expert_policy=expert,
        n_reference_episodes=n_reference_episodes,
        seed=seed,
        algorithm_name="PPO medium-expert",
        description=(
            f"{n_steps} steps of {env_id}: half from PPO after {recipe.medium_steps} environment steps (medium, "
            f"return {returns[0]:.1f}), half after {recipe.expert_steps} (expert, return {returns[1]:.1f}), "
            f"deterministic actions, each replaced by a random one with probability {epsilon}; seed {seed}. "
            "Written by sb3_iql.datasets.medium_expert."
        ),
        overwrite=overwrite,
    )
