"""Evaluation of a trained model, with D4RL-style normalized scores from Minari's reference scores."""

import math
import numbers
from typing import NamedTuple

import gymnasium as gym
import minari
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_iql.data.minari_loader import load_dataset, recover_eval_env, spaces_match

#: Normalized scores are in percent: 0 = random policy, 100 = expert policy.
SCORE_SCALE = 100.0
#: ``(ref_min_score, ref_max_score)``: the returns of normalized score 0 and 100.
ReferenceScores = tuple[float, float]
#: The metadata keys of a Minari dataset's reference scores, in the order of ``ReferenceScores``
REFERENCE_SCORE_KEYS = ("ref_min_score", "ref_max_score")


class EvaluationResult(NamedTuple):
    """
    :param mean_return: mean undiscounted episode return
    :param std_return: its standard deviation over the episodes
    :param normalized_score: ``100 * (mean_return - ref_min) / (ref_max - ref_min)``, None without a dataset
    :param episode_returns: every episode's return, shape ``(n_eval_episodes,)``
    :param success_rate: fraction of the episodes in which the environment reported success at some step
        (``info["success"]`` of the goal environments, or ``info["is_success"]``); None if it never reports it
    """

    mean_return: float
    std_return: float
    normalized_score: float | None
    episode_returns: np.ndarray
    success_rate: float | None = None


#: The info keys through which environments report reaching the goal (Gymnasium-Robotics, SB3's HER envs).
SUCCESS_KEYS = ("success", "is_success")


class SuccessRecorder:
    """``evaluate_policy`` callback: whether each finished episode reported success at any of its steps."""

    def __init__(self) -> None:
        self.episodes: list[bool] = []
        self.reported = False
        self._current: dict[int, bool] = {}

    def __call__(self, locals_: dict, globals_: dict) -> None:
        env_index, info = locals_["i"], locals_["info"]
        reached = False
        for key in SUCCESS_KEYS:
            if key in info:
                self.reported = True
                reached = bool(info[key])
        self._current[env_index] = self._current.get(env_index, False) or reached
        if locals_["done"]:
            self.episodes.append(self._current.pop(env_index))

    def rate(self) -> float | None:
        return float(np.mean(self.episodes)) if self.reported and self.episodes else None


def check_evaluation_actions(model: BaseAlgorithm, env: gym.Env | VecEnv) -> None:
    """
    :raises ValueError: the environment takes other actions than the model's (other bounds: SB3's ``predict`` gives
        actions within the model's, which would mean others; another space: a failure inside the env's ``step``)
    """
    model_space = getattr(model, "action_space", None)  # any object with SB3's predict is evaluated
    if model_space is not None and not spaces_match(env.action_space, model_space, check_bounds=True):
        raise ValueError(
            f"The evaluation environment takes actions {env.action_space}; the model's are {model_space}: "
            "evaluate on the environment of the model's data"
        )


def checked_reference_scores(scores: ReferenceScores) -> ReferenceScores:
    """
    :return: ``scores``
    :raises ValueError: ``ref_max <= ref_min``, or a score that is not finite: no normalized score (the dataset
        writers refuse such scores too)
    """
    ref_min, ref_max = scores
    if not (math.isfinite(ref_min) and math.isfinite(ref_max)):
        raise ValueError(f"reference scores must be finite numbers, got ref_min {ref_min} and ref_max {ref_max}")
    if ref_max <= ref_min:
        raise ValueError(f"ref_max_score must exceed ref_min_score, got ref_min {ref_min} and ref_max {ref_max}")
    return scores


def dataset_reference_scores(dataset: minari.MinariDataset) -> ReferenceScores | None:
    """
    The one reader of a Minari dataset's reference scores (its metadata's ``ref_min_score`` and ``ref_max_score``).

    :return: ``(ref_min_score, ref_max_score)``, or None when the dataset has none
    """
    metadata = dataset.storage.metadata
    ref_min, ref_max = (metadata.get(key) for key in REFERENCE_SCORE_KEYS)
    if ref_min is None or ref_max is None:
        return None
    return float(ref_min), float(ref_max)


def normalized_score(
    dataset_or_scores: str | minari.MinariDataset | ReferenceScores, returns: float | np.ndarray
) -> float | np.ndarray:
    """
    D4RL-style normalized score in percent: ``100 * (returns - ref_min) / (ref_max - ref_min)``
    (0 = random policy, 100 = expert policy).

    :param dataset_or_scores: a Minari dataset or its id (its reference scores), or the reference scores
        ``(ref_min, ref_max)``
    :param returns: one return, or returns of any shape
    :return: the score of one return as a float, else an array of the shape of ``returns``
    :raises ValueError: the dataset has no reference scores, or ``ref_max <= ref_min``
    """
    if isinstance(dataset_or_scores, str):
        dataset_or_scores = load_dataset(dataset_or_scores)
    if isinstance(dataset_or_scores, minari.MinariDataset):
        reference_scores = dataset_reference_scores(dataset_or_scores)
        if reference_scores is None:
            raise ValueError(
                f"Dataset '{dataset_or_scores.spec.dataset_id}' has no reference scores (ref_min_score, ref_max_score): "
                "a normalized score cannot be computed; evaluate on an environment to get returns only"
            )
    else:
        reference_scores = dataset_or_scores
    ref_min, ref_max = checked_reference_scores(reference_scores)
    scores = SCORE_SCALE * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(scores) if scores.ndim == 0 else scores


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
    :param seed: seed of the evaluation environment's first reset: the first episode starts there, for an
        environment, a dataset's or a ``VecEnv`` alike (SB3's ``VecEnv.seed``)
    :return: mean and std return, normalized score (None for an environment), every episode's return and the
        success rate (for environments that report success)
    :raises ValueError: ``n_eval_episodes`` is not a whole number >= 1 (no episode gives no score, not a NaN)
    """
    if isinstance(n_eval_episodes, bool) or not isinstance(n_eval_episodes, numbers.Integral) or n_eval_episodes < 1:
        raise ValueError(f"n_eval_episodes must be a whole number >= 1 (no episode gives no score), got {n_eval_episodes!r}")
    dataset = None
    if isinstance(dataset_or_env, str):
        dataset_or_env = load_dataset(dataset_or_env)
    if isinstance(dataset_or_env, minari.MinariDataset):
        dataset = dataset_or_env
        normalized_score(dataset, 0.0)  # fail before the episodes are run
        env = Monitor(recover_eval_env(dataset))
    elif isinstance(dataset_or_env, gym.Env) and not is_wrapped(dataset_or_env, Monitor):
        env = Monitor(dataset_or_env)  # episode returns as the environment reports them
    else:
        env = dataset_or_env
    check_evaluation_actions(model, env)
    if seed is not None:
        if isinstance(env, gym.Env):  # evaluate_policy resets a VecEnv before its first episode: the seed goes there
            env = DummyVecEnv([lambda env=env: env])
        env.seed(seed)
    successes = SuccessRecorder()
    returns, _ = evaluate_policy(
        model,
        env,
        n_eval_episodes=n_eval_episodes,
        deterministic=deterministic,
        return_episode_rewards=True,
        callback=successes,
    )
    returns = np.asarray(returns, dtype=np.float64)
    mean_return = float(np.mean(returns))
    score = None if dataset is None else float(normalized_score(dataset, mean_return))
    if dataset is not None:
        env.close()
    return EvaluationResult(mean_return, float(np.std(returns)), score, returns, successes.rate())
