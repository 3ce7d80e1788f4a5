"""Evaluation of a trained model, with D4RL-style normalized scores from Minari's reference scores."""

from typing import NamedTuple

import gymnasium as gym
import minari
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from sb3_iql.data.minari_loader import load_dataset

#: Normalized scores are in percent: 0 = random policy, 100 = expert policy.
SCORE_SCALE = 100.0


class EvaluationResult(NamedTuple):
    """
    :param mean_return: mean undiscounted episode return
    :param std_return: its standard deviation over the episodes
    :param normalized_score: ``100 * (mean_return - ref_min) / (ref_max - ref_min)``, None without a dataset
    :param episode_returns: every episode's return, shape ``(n_eval_episodes,)``
    """

    mean_return: float
    std_return: float
    normalized_score: float | None
    episode_returns: np.ndarray


def normalized_score(dataset: minari.MinariDataset, returns: float | np.ndarray) -> float | np.ndarray:
    """
    D4RL-style normalized score in percent, from the dataset's ``ref_min_score`` and ``ref_max_score``.

    :raises ValueError: the dataset has no reference scores
    """
    metadata = dataset.storage.metadata
    if metadata.get("ref_min_score") is None or metadata.get("ref_max_score") is None:
        raise ValueError(
            f"Dataset '{dataset.spec.dataset_id}' has no reference scores (ref_min_score, ref_max_score): "
            "a normalized score cannot be computed; evaluate on an environment to get returns only"
        )
    return SCORE_SCALE * minari.get_normalized_score(dataset, np.asarray(returns, dtype=np.float64))


def evaluate(
    model: BaseAlgorithm,
    dataset_or_env: str | minari.MinariDataset | gym.Env | VecEnv,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
    seed: int | None = None,
) -> EvaluationResult:
    """
    Run the model's policy for ``n_eval_episodes`` episodes.

    :param model: a trained model (any SB3 algorithm)
    :param dataset_or_env: a Minari dataset or id (its evaluation environment is recovered and its reference
        scores give the normalized score), or an environment (returns only)
    :param n_eval_episodes: number of episodes
    :param deterministic: act with the policy's mean (IQL's evaluation protocol)
    :param seed: seed of the evaluation environment's first reset
    :return: mean and std return, normalized score (None for an environment), and every episode's return
    """
    dataset = None
    if isinstance(dataset_or_env, str):
        dataset_or_env = load_dataset(dataset_or_env)
    if isinstance(dataset_or_env, minari.MinariDataset):
        dataset = dataset_or_env
        normalized_score(dataset, 0.0)  # fail before the episodes are run
        env = Monitor(dataset.recover_environment(eval_env=True))
    elif isinstance(dataset_or_env, gym.Env) and not is_wrapped(dataset_or_env, Monitor):
        env = Monitor(dataset_or_env)  # episode returns as the environment reports them
    else:
        env = dataset_or_env
    if seed is not None:
        env.reset(seed=seed) if isinstance(env, gym.Env) else env.seed(seed)
    returns, _ = evaluate_policy(
        model, env, n_eval_episodes=n_eval_episodes, deterministic=deterministic, return_episode_rewards=True
    )
    returns = np.asarray(returns, dtype=np.float64)
    mean_return = float(np.mean(returns))
    score = None if dataset is None else float(normalized_score(dataset, mean_return))
    if dataset is not None:
        env.close()
    return EvaluationResult(mean_return, float(np.std(returns)), score, returns)
