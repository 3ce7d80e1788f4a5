"""
Callbacks: SB3's evaluation with D4RL-style normalized scores (from a Minari dataset's reference scores), the
progress bar of offline training, where one step is one gradient update, and the offline and online phases of
one ``learn()`` call as one training run for the callbacks.
"""

import math
import os
import sys
import time
from typing import Any, TextIO

import gymnasium as gym
import minari
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, EvalCallback, ProgressBarCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage
from tqdm.auto import tqdm

from sb3_iql import evaluation
from sb3_iql.data.minari_loader import load_dataset, recover_eval_env
from sb3_iql.evaluation import ReferenceScores, dataset_reference_scores


class NormalizedEvalCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` that also logs ``eval/normalized_score``: ``100 * (R - ref_min) / (ref_max - ref_min)``
    of the mean evaluation return ``R`` (0 = random, 100 = expert, as in D4RL), with the reference scores of a
    Minari dataset or given ones. The latest score is ``last_normalized_score`` (read by the progress bar) and
    every score goes to ``evaluations.npz`` as ``normalized_scores``, next to ``ref_min_score`` and ``ref_max_score``.

    Without reference scores (none given, none in the dataset) it behaves as ``EvalCallback``. The success rate
    (``eval/success_rate``, ``successes`` in ``evaluations.npz``) counts an episode as ``sb3_iql.evaluate`` does: its
    info's ``is_success`` or ``success`` (the mazes') true at any step.

    :param eval_env: evaluation environment (default: ``dataset``'s evaluation environment, in a ``Monitor``; one of
        the two is needed, the model being unknown when the callback is created)
    :param dataset: Minari dataset or id giving the reference scores (and the default ``eval_env``); default: the
        model's first offline dataset (``model.offline_dataset_ids[0]``), when the model has one, for the reference
        scores alone
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
        given = None
        if ref_min_score is not None and ref_max_score is not None:
            given = evaluation.checked_reference_scores((float(ref_min_score), float(ref_max_score)))
        self.dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
        #: whether the evaluation environment is built here (then wrapped as the model's own env is, at its start)
        self.builds_eval_env = eval_env is None
        if eval_env is None:
            if self.dataset is None:
                raise ValueError("NormalizedEvalCallback needs an eval_env or a dataset to recover it from")
            eval_env = Monitor(recover_eval_env(self.dataset))
        super().__init__(eval_env, **kwargs)
        self.reference_scores = given if given is not None else _usable_reference_scores(self.dataset)
        self.last_normalized_score: float | None = None
        self.evaluations_normalized_scores: list[float] = []
        self._successes: tuple[list, evaluation.SuccessRecorder] | None = None  # (the evaluation's buffer, its recorder)

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
        images = isinstance(self.training_env, VecTransposeImage)  # channel-first, as the model sees them
        if self.builds_eval_env and images and not isinstance(self.eval_env, VecTransposeImage):
            self.eval_env = VecTransposeImage(self.eval_env)  # else EvalCallback warns of another env type
        super()._init_callback()
        evaluation.check_evaluation_actions(self.model, self.eval_env)
        dataset_ids = getattr(self.model, "offline_dataset_ids", [])
        if self.reference_scores is None and self.dataset is None and dataset_ids:
            self.dataset = load_dataset(dataset_ids[0])
            self.reference_scores = _usable_reference_scores(self.dataset)

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

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """
        The episode's success as ``sb3_iql.evaluate`` counts it: ``is_success`` or ``success`` (the mazes' key) at any
        of its steps (SB3's ``EvalCallback`` reads ``is_success`` at the last step only).
        """
        if self._successes is None or self._successes[0] is not self._is_success_buffer:  # a new evaluation
            self._successes = (self._is_success_buffer, evaluation.SuccessRecorder())
        recorder = self._successes[1]
        recorder(locals_, globals_)
        if recorder.reported:  # every finished episode, those before the first report too (as evaluate's rate)
            self._is_success_buffer[:] = recorder.episodes

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


#: Updates between two refreshes of the progress bar's evaluation figures.
POSTFIX_REFRESH_UPDATES = 100
#: Percent of the planned updates between two lines of the progress bar when its output is not a terminal.
PLAIN_LINE_PERCENT = 5.0


def _in_notebook() -> bool:
    """:return: whether this runs in a Jupyter kernel, where ``tqdm.auto`` draws a widget (``sys.stderr`` is no tty)"""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class PlainLineProgress:
    """
    The progress bar's output where it is not a terminal (CI logs, files): one plain line (tqdm's format) every
    ``percent`` percent of ``total``, and the last one at the end, instead of a bar redrawn with ``\\r`` at every
    update. It has the part of ``tqdm``'s interface that the progress bar uses.

    :param total: planned updates
    :param file: the stream to write to
    :param percent: percent of ``total`` between two lines
    :param unit: unit of the counts
    """

    def __init__(self, total: int, file: TextIO, percent: float = PLAIN_LINE_PERCENT, unit: str = "upd"):
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {percent}")
        self.total, self.file, self.unit = total, file, unit
        self.lines_every = max(1, math.ceil(total * percent / 100))
        self.n = 0
        self.postfix = ""
        self._printed_n: int | None = None
        self._start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; print a line when a multiple of ``lines_every`` has been passed."""
        previous, self.n = self.n, self.n + n
        if self.n // self.lines_every > previous // self.lines_every:
            self.refresh()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Figures shown at the end of the next lines (``key=value``), as ``tqdm.set_postfix``."""
        figures = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in figures.items())
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        """Print the current line, unless it was the last one printed."""
        if self._printed_n == self.n:
            return
        line = tqdm.format_meter(
            self.n, self.total, time.perf_counter() - self._start, unit=self.unit, ascii=True, postfix=self.postfix
        )
        print(line, file=self.file, flush=True)
        self._printed_n = self.n

    def close(self) -> None:
        self.file.flush()


class UpdatesProgressBarCallback(ProgressBarCallback):
    """
    SB3's ``ProgressBarCallback`` for offline training: updates done out of planned, updates/s, and the latest mean
    evaluation return (and normalized score, when it has one) of an ``EvalCallback`` running beside it. On a
    terminal (or in a notebook) it is a ``tqdm`` bar; where the output is not a terminal (CI logs, files) it prints
    one plain line every :data:`PLAIN_LINE_PERCENT` percent (20 lines) instead of thousands of ``\\r`` redraws.

    It counts ``num_timesteps``: one per update offline, one per environment step online (as SB3's bar).

    :param eval_callback: the evaluation callback whose latest results are shown, if any
    :param file: the stream to write to (default: ``sys.stderr``, as ``tqdm``)
    :param line_percent: percent of the planned updates between two lines when ``file`` is not a terminal
    """

    pbar: "tqdm | PlainLineProgress"  # type: ignore[assignment]

    def __init__(
        self, eval_callback: EvalCallback | None = None, file: TextIO | None = None, line_percent: float = PLAIN_LINE_PERCENT
    ):
        super().__init__()
        self.eval_callback = eval_callback
        self.file = file
        self.line_percent = line_percent
        self._counted = 0  # num_timesteps already shown

    def _on_training_start(self) -> None:
        # As SB3's bar: the total of learn() / learn_offline(), without the timesteps of earlier runs.
        self._counted = self.model.num_timesteps
        total = self.locals["total_timesteps"] - self._counted
        file = sys.stderr if self.file is None else self.file
        isatty = getattr(file, "isatty", None)
        if (isatty is not None and isatty()) or (self.file is None and _in_notebook()):
            self.pbar = tqdm(total=total, unit="upd", dynamic_ncols=True, file=file)
        else:
            self.pbar = PlainLineProgress(total, file, self.line_percent)

    def _on_step(self) -> bool:
        if self.eval_callback is not None and self.n_calls % POSTFIX_REFRESH_UPDATES == 0:
            self.pbar.set_postfix(self._latest_evaluation(), refresh=False)
        self.pbar.update(self.num_timesteps - self._counted)
        self._counted = self.num_timesteps
        return True

    def _latest_evaluation(self) -> dict[str, float]:
        """:return: the newest evaluation figures (empty before the first evaluation)"""
        assert self.eval_callback is not None
        if math.isinf(self.eval_callback.last_mean_reward):  # no evaluation yet
            return {}
        figures = {"eval_return": round(float(self.eval_callback.last_mean_reward), 2)}
        score = getattr(self.eval_callback, "last_normalized_score", None)
        if score is not None:
            figures["eval_score"] = round(float(score), 1)
        return figures


# The public callbacks; the module's other names serve ``OfflineAlgorithm``'s training loops.
__all__ = ["NormalizedEvalCallback", "UpdatesProgressBarCallback"]


def _usable_reference_scores(dataset: minari.MinariDataset | None) -> ReferenceScores | None:
    """:return: the dataset's reference scores (None without dataset or scores), refused where ``ref_max <= ref_min``
    now rather than at the first evaluation"""
    scores = None if dataset is None else dataset_reference_scores(dataset)
    return None if scores is None else evaluation.checked_reference_scores(scores)


def callback_items(callback: MaybeCallback) -> list[BaseCallback]:
    """
    :return: ``callback`` (one, a list or None) as a list of callbacks, functions wrapped as SB3 wraps them; a
        ``CallbackList`` that holds a progress bar gives its callbacks in its place (it calls them in that order), so
        that the bar is found as one given alone; any other ``CallbackList`` stays itself (set up and counting its
        calls, as SAC's ``learn()`` leaves it)
    """
    items = [] if callback is None else list(callback) if isinstance(callback, list) else [callback]
    flat: list[BaseCallback] = []
    for item in items:
        # SB3's own list; a subclass (OneRunCallback) does more than call its callbacks
        if type(item) is CallbackList and _holds_progress_bar(item):
            flat.extend(callback_items(item.callbacks))
        else:
            flat.append(item if isinstance(item, BaseCallback) else ConvertCallback(item))
    return flat


def _holds_progress_bar(callbacks: CallbackList) -> bool:
    """:return: whether a ``ProgressBarCallback`` is among ``callbacks``, nested lists included"""
    return any(
        isinstance(item, ProgressBarCallback) or (isinstance(item, CallbackList) and _holds_progress_bar(item))
        for item in callbacks.callbacks
    )


def find_eval_callback(callbacks: list[BaseCallback]) -> EvalCallback | None:
    """:return: the first ``EvalCallback`` among ``callbacks``, nested ones (in a ``CallbackList``) too, else None"""
    for callback in callbacks:
        if isinstance(callback, EvalCallback):
            return callback
        if isinstance(callback, CallbackList) and (found := find_eval_callback(callback.callbacks)) is not None:
            return found
    return None


class OneRunCallback(CallbackList):
    """
    The callbacks of a ``learn()`` call that trains offline, then online. The two phases are two training loops,
    each starting and ending its callbacks; through this list the callbacks see one run, as in SAC's ``learn()``:
    one ``init_callback``, one ``on_training_start`` (the offline phase's), and one ``on_training_end``, once
    ``last_phase`` is set. ``n_calls`` and ``num_timesteps`` go on across the phases.

    :param callbacks: the callbacks of the call
    """

    def __init__(self, callbacks: list[BaseCallback]):
        super().__init__(callbacks)
        self.last_phase = False
        self._initialized = self._started = False

    def init_callback(self, model: Any) -> None:
        if not self._initialized:
            self._initialized = True
            super().init_callback(model)

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        if self._started:  # the online phase: its locals replace the offline ones, in the dict the callbacks hold
            self.locals.clear()
            self.update_locals(locals_)
            return
        self._started = True
        super().on_training_start(locals_, globals_)

    def on_training_end(self) -> None:
        if self.last_phase:
            super().on_training_end()
