"""Evaluation callback that also reports D4RL-style normalized scores from a Minari dataset's reference scores."""

import os
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from sb3_iql import evaluation
from sb3_iql.data.minari_loader import load_dataset
from sb3_iql.evaluation import ReferenceScores, dataset_reference_scores


class NormalizedEvalCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` that also logs ``eval/normalized_score``: ``100 * (R - ref_min) / (ref_max - ref_min)``
    of the mean evaluation return ``R`` (0 = random, 100 = expert, as in D4RL), with the reference scores of a
    Minari dataset or given ones. The latest score is ``last_normalized_score`` (read by the progress bar) and
    every score goes to ``evaluations.npz`` as ``normalized_scores``, next to ``ref_min_score`` and ``ref_max_score``.

    Without reference scores (none given, none in the dataset) it behaves as ``EvalCallback``.

    :param eval_env: evaluation environment (default: the dataset's evaluation environment, in a ``Monitor``)
    :param dataset: Minari dataset or id giving the reference scores (and the default ``eval_env``); default: the
        model's first offline dataset (``model.offline_dataset_ids[0]``), when the model has one
    :param ref_min_score: return of score 0 (takes precedence over the dataset's; needs ``ref_max_score``)
    :param ref_max_score: return of score 100
    :param kwargs: ``EvalCallback`` arguments (``eval_freq``, ``n_eval_episodes``, ``log_path``,
        ``best_model_save_path``, ``deterministic``, ``callback_on_new_best``, ``verbose``...)
    """

    def __init__(
        self,
        eval_env: gym.Env | VecEnv | None = None,
        dataset: str | minari.MinariDataset | None = None,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        **kwargs: Any,
    ):
        if (ref_min_score is None) != (ref_max_score is None):
            raise ValueError("Pass both ref_min_score and ref_max_score, or neither")
        if ref_min_score is not None and ref_max_score == ref_min_score:
            raise ValueError(f"ref_max_score must differ from ref_min_score, both are {ref_min_score}")
        self.dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
        if eval_env is None:
            if self.dataset is None:
                raise ValueError("NormalizedEvalCallback needs an eval_env or a dataset to recover it from")
            eval_env = Monitor(self.dataset.recover_environment(eval_env=True))
        super().__init__(eval_env, **kwargs)
        self.reference_scores: ReferenceScores | None = None
        if ref_min_score is not None and ref_max_score is not None:
            self.reference_scores = (float(ref_min_score), float(ref_max_score))
        elif self.dataset is not None:
            self.reference_scores = dataset_reference_scores(self.dataset)
        self.last_normalized_score: float | None = None
        self.evaluations_normalized_scores: list[float] = []

    @classmethod
    def from_eval_callback(
        cls,
        callback: EvalCallback,
        dataset: str | minari.MinariDataset | None = None,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
    ) -> "NormalizedEvalCallback":
        """
        The same evaluation as an ``EvalCallback`` not yet started (environment, frequency, episodes, paths), with
        normalized scores.

        :param callback: the callback to replace
        :param dataset: as in the constructor
        :param ref_min_score: as in the constructor
        :param ref_max_score: as in the constructor
        """
        return cls(
            callback.eval_env,
            dataset=dataset,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            callback_on_new_best=callback.callback_on_new_best,
            callback_after_eval=callback.callback,
            n_eval_episodes=callback.n_eval_episodes,
            eval_freq=callback.eval_freq,
            log_path=None if callback.log_path is None else os.path.dirname(callback.log_path),
            best_model_save_path=callback.best_model_save_path,
            deterministic=callback.deterministic,
            render=callback.render,
            verbose=callback.verbose,
            warn=callback.warn,
        )

    def _init_callback(self) -> None:
        super()._init_callback()
        dataset_ids = getattr(self.model, "offline_dataset_ids", [])
        if self.reference_scores is None and self.dataset is None and dataset_ids:
            self.dataset = load_dataset(dataset_ids[0])
            self.reference_scores = dataset_reference_scores(self.dataset)

    def normalized_score(self, mean_return: float) -> float | None:
        """:return: the normalized score of a mean return in percent, None without reference scores"""
        if self.reference_scores is None:
            return None
        return float(evaluation.normalized_score(self.reference_scores, mean_return))

    def _on_step(self) -> bool:
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0) or self.reference_scores is None:
            return super()._on_step()
        # EvalCallback records the evaluation and dumps the logger in one go: the score is recorded just before
        # that dump, so that it lands in the same row (CSV) and at the same step (TensorBoard).
        logger = self.logger
        dump = logger.dump

        def dump_with_score(step: int = 0) -> None:
            self.last_normalized_score = self.normalized_score(self.last_mean_reward)
            logger.record("eval/normalized_score", self.last_normalized_score)
            dump(step)

        logger.dump = dump_with_score  # type: ignore[method-assign]
        try:
            continue_training = super()._on_step()
        finally:
            del logger.dump  # back to the class method
        assert self.last_normalized_score is not None
        self.evaluations_normalized_scores.append(self.last_normalized_score)
        if self.verbose >= 1:
            print(f"Normalized score: {self.last_normalized_score:.2f}")
        if self.log_path is not None:
            self._save_evaluations()
        return continue_training

    def _save_evaluations(self) -> None:
        """Rewrite ``evaluations.npz`` with the normalized scores and the reference scores added."""
        assert self.log_path is not None and self.reference_scores is not None
        extra: dict[str, Any] = {}
        if self.evaluations_successes:
            extra["successes"] = self.evaluations_successes
        np.savez(
            self.log_path,
            timesteps=self.evaluations_timesteps,
            results=self.evaluations_results,
            ep_lengths=self.evaluations_length,
            normalized_scores=self.evaluations_normalized_scores,
            ref_min_score=self.reference_scores[0],
            ref_max_score=self.reference_scores[1],
            **extra,
        )


__all__ = ["NormalizedEvalCallback"]
