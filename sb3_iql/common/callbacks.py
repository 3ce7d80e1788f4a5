"""Callbacks for offline training, where one step is one gradient update."""

import math

from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from tqdm.auto import tqdm

#: Updates between two refreshes of the progress bar's evaluation figures.
POSTFIX_REFRESH_UPDATES = 100


class UpdatesProgressBarCallback(BaseCallback):
    """
    Progress bar of offline training: updates done out of planned, updates/s, and the latest mean evaluation
    return (and normalized score, when it has one) of an ``EvalCallback`` running beside it.

    :param eval_callback: the evaluation callback whose latest results are shown, if any
    """

    pbar: tqdm

    def __init__(self, eval_callback: EvalCallback | None = None):
        super().__init__()
        self.eval_callback = eval_callback

    def _on_training_start(self) -> None:
        self.pbar = tqdm(total=self.model._total_timesteps - self.model.num_timesteps, unit="upd", dynamic_ncols=True)

    def _on_step(self) -> bool:
        self.pbar.update(1)
        if self.eval_callback is not None and self.n_calls % POSTFIX_REFRESH_UPDATES == 0:
            self.pbar.set_postfix(self._latest_evaluation(), refresh=False)
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

    def _on_training_end(self) -> None:
        self.pbar.refresh()
        self.pbar.close()
