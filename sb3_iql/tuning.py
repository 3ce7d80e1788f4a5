"""
Hyperparameter optimisation of IQL with rl-zoo's Optuna search (``python -m sb3_iql.zoo train --optimize``).

- ``sample_iql_params``: the search space (expectile, beta, learning rate, batch size, network size, actor dropout),
  registered as rl-zoo's sampler of ``--algo iql``.
- ``preset_trial``: the dataset's preset (its values in the searched parameters) as the study's first trial, which
  ``PresetFirstSampler`` gives trial number 0 (exactly once, however many workers start together).
- ``TrialNormalizedEvalCallback``: the periodic evaluations of a trial, reported to Optuna as normalized scores
  (mean return without reference scores) at the number of updates (offline) or environment steps (online) done,
  for pruning; the trial's objective is the mean of the last ``OBJECTIVE_LAST_EVALUATIONS`` of them (one
  evaluation is noisy: on the stitch mazes consecutive evaluations differ by tens of points).
- ``make_storage``: a database URL as an Optuna storage with heartbeats, so that a trial whose worker died
  is marked failed (and retried once) by the next worker that starts a trial.
"""

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from sb3_iql.callbacks import NormalizedEvalCallback

#: Hidden widths of every network, by the name the sampler draws.
NET_ARCHS: dict[str, list[int]] = {"small": [64, 64], "medium": [256, 256], "big": [512, 512]}
BATCH_SIZES = (64, 128, 256, 512)
ACTOR_DROPOUTS = (0.0, 0.1)
#: The objective of a trial: mean of the normalized scores of its last evaluations (fewer if it had fewer).
OBJECTIVE_LAST_EVALUATIONS = 3
#: Seconds between two heartbeats of a running trial; a trial silent for three of them is failed.
HEARTBEAT_INTERVAL = 60
#: How many times a trial whose worker died is run again (by another worker).
MAX_RETRY = 1
#: Workers starting together on a new database race to create its tables: the loser opens the storage again.
STORAGE_ATTEMPTS = 3


def sample_iql_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    rl-zoo's sampler of ``--algo iql`` (signature of ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``): ``expectile``
    in [0.5, 0.95], ``beta`` in [0.5, 20] (log scale), ``learning_rate`` in [1e-4, 1e-3] (log scale), ``batch_size``
    in ``BATCH_SIZES``, ``net_arch`` a name of ``NET_ARCHS`` and the actor's ``dropout`` in ``ACTOR_DROPOUTS``.

    :param additional_args: ``{"preset": preset_trial(...)}`` widens each range to hold the preset's value (the
        study's first trial), which may lie outside it
    :return: IQL constructor arguments (``convert_iql_params`` of the drawn parameters)
    """
    preset = additional_args.get("preset", {})

    def bounds(name: str, low: float, high: float) -> tuple[float, float]:
        return (min(low, preset[name]), max(high, preset[name])) if name in preset else (low, high)

    def choices(name: str, values: tuple) -> tuple:
        return values if name not in preset or preset[name] in values else (*values, preset[name])

    params = {
        "expectile": trial.suggest_float("expectile", *bounds("expectile", 0.5, 0.95)),
        "beta": trial.suggest_float("beta", *bounds("beta", 0.5, 20.0), log=True),
        "learning_rate": trial.suggest_float("learning_rate", *bounds("learning_rate", 1e-4, 1e-3), log=True),
        "batch_size": trial.suggest_categorical("batch_size", choices("batch_size", BATCH_SIZES)),
        "net_arch": trial.suggest_categorical("net_arch", choices("net_arch", tuple(NET_ARCHS))),
        "dropout": trial.suggest_categorical("dropout", choices("dropout", ACTOR_DROPOUTS)),
    }
    return convert_iql_params(params)


#: ``net_arch_name`` of no hidden layer (linear networks)
NO_HIDDEN_LAYER = "linear"


def net_arch_name(widths: list[int]) -> str:
    """:return: the name of ``NET_ARCHS`` with these hidden widths, else the widths as ``"64x32"`` (no hidden layer:
    ``NO_HIDDEN_LAYER``)"""
    names = [name for name, named_widths in NET_ARCHS.items() if named_widths == list(widths)]
    return names[0] if names else "x".join(str(width) for width in widths) or NO_HIDDEN_LAYER


def net_arch_widths(name: str) -> list[int]:
    """:return: the hidden widths of a ``net_arch_name``"""
    if name == NO_HIDDEN_LAYER:
        return []
    return list(NET_ARCHS[name]) if name in NET_ARCHS else [int(width) for width in name.split("x")]


def convert_iql_params(params: dict[str, Any]) -> dict[str, Any]:
    """
    rl-zoo's converter of ``--algo iql`` (``HYPERPARAMS_CONVERTER``, used by ``--trial-id``).

    :param params: a trial's parameters, as ``sample_iql_params`` draws them
    :return: IQL constructor arguments (``net_arch`` as ``policy_kwargs``, dropout 0 as None)
    """
    arguments = {key: value for key, value in params.items() if key not in ("net_arch", "dropout")}
    arguments["policy_kwargs"] = {"net_arch": net_arch_widths(params["net_arch"])}
    arguments["dropout"] = params["dropout"] or None
    return arguments


def _python_text(value: Any) -> str:
    """:return: ``value`` as Python that rl-zoo evaluates back (``torch.nn`` classes as ``nn.Name``, as it reads them)"""
    if isinstance(value, type) and value.__module__.startswith("torch.nn"):
        return f"nn.{value.__name__}"
    if isinstance(value, dict):
        return "dict(" + ",".join(f"{name}={_python_text(item)}" for name, item in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        items = ",".join(_python_text(item) for item in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    return repr(value)


def zoo_params(arguments: dict[str, Any]) -> list[str]:
    """:return: IQL arguments as rl-zoo's ``-params`` values (``beta:10.0``, ``policy_kwargs:dict(net_arch=[64,64])``)"""
    return [f"{key}:{_python_text(value)}".replace(" ", "") for key, value in arguments.items()]


def preset_trial(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    The sampler's parameters that reproduce a configuration (the dataset's preset): the first trial of a study.

    :param hyperparams: IQL arguments of the run (missing ones: IQL's defaults); a learning rate schedule counts
        as its initial value (rl-zoo's ``lin_X``: X, whose schedule the study's trials keep, from their own value)
    :return: ``{parameter name: value}`` in ``sample_iql_params``'s names
    """
    net_arch = (hyperparams.get("policy_kwargs") or {}).get("net_arch", NET_ARCHS["medium"])
    learning_rate = hyperparams.get("learning_rate", 3e-4)
    return {
        "expectile": float(hyperparams.get("expectile", 0.7)),
        "beta": float(hyperparams.get("beta", 3.0)),
        "learning_rate": float(learning_rate(1.0) if callable(learning_rate) else learning_rate),
        "batch_size": int(hyperparams.get("batch_size", 256)),
        "net_arch": net_arch_name(net_arch),
        "dropout": float(hyperparams.get("dropout") or 0.0),
    }


#: The study's user attribute that holds its trial 0's parameters (``study_preset``)
STUDY_PRESET_ATTR = "preset"


def study_preset(study: optuna.Study, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    The parameters of the study's trial 0, which ``sample_iql_params`` widens its ranges and choices with: stored
    with the study by the run that opened it first, so that they stay the study's own (Optuna refuses other
    categorical choices under a name it has seen: a run with other ``-params`` could not add a trial).

    :param hyperparams: this run's IQL arguments; their ``preset_trial`` is stored where the study holds none
    :return: the stored parameters (with a warning where this run's configuration gives others)
    """
    run = preset_trial(hyperparams)
    stored = study.user_attrs.get(STUDY_PRESET_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_PRESET_ATTR, run)
        return run
    if stored != run:
        warnings.warn(
            f"Study {study.study_name!r} was opened first with a configuration whose searched parameters are {stored} "
            f"(its trial 0); this run's give {run}. The search keeps the study's ranges and choices; the trials train "
            "with this run's other settings. Use another --study-name for another configuration.",
            stacklevel=2,
        )
    return stored


class ScaledSchedule:
    """
    A learning-rate schedule scaled to start at another rate, as trials draw it: ``schedule(p) * start / schedule(1)``.

    :param schedule: SB3 schedule of the progress remaining (1 at the start, 0 at the end)
    :param start: the rate at the start
    """

    def __init__(self, schedule: Callable[[float], float], start: float):
        self.schedule, self.start = schedule, start

    def __call__(self, progress_remaining: float) -> float:
        return self.schedule(progress_remaining) * self.start / self.schedule(1.0)


class PresetFirstSampler(optuna.samplers.BaseSampler):
    """
    Trial number 0 of the study takes the preset's parameters; every other trial comes from ``base``. The storage
    numbers trials atomically, so the preset runs exactly once however many workers open the study at the same
    time (``enqueue_trial(skip_if_exists=True)`` is not atomic: two workers starting together enqueued it twice).

    :param base: the study's sampler (rl-zoo's TPE, random...)
    :param preset: ``{parameter name: value}`` of the first trial (``preset_trial``)
    """

    def __init__(self, base: optuna.samplers.BaseSampler, preset: dict[str, Any]):
        self.base = base
        self.preset = preset

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {} if trial.number == 0 else self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return {} if trial.number == 0 else self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        if trial.number == 0 and param_name in self.preset:
            return self.preset[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL) -> RDBStorage:
    """
    :param url: a database URL (``sqlite:///study.db``, ``postgresql+psycopg2://user:password@host/db``); rl-zoo opens
        a ``.log`` journal file itself, without heartbeats (a dead worker's trial stays RUNNING there)
    :param heartbeat_interval: seconds between heartbeats (grace period: three of them)
    :return: the storage, with heartbeats, retrying a dead worker's trial ``MAX_RETRY`` times
    """
    for _ in range(STORAGE_ATTEMPTS - 1):
        try:
            return _database_storage(url, heartbeat_interval)
        # Another worker created the same tables at the same time: a duplicate row (IntegrityError), SQLite's
        # "table ... already exists" / "database is locked" (OperationalError), or PostgreSQL's
        # 'type "studydirection" already exists' (ProgrammingError). A real error is raised by the last attempt.
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            time.sleep(1.0)
    return _database_storage(url, heartbeat_interval)


def _database_storage(url: str, heartbeat_interval: int) -> RDBStorage:
    return RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval,
        grace_period=max(3 * heartbeat_interval, heartbeat_interval + 1),
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
    )


class TrialNormalizedEvalCallback(NormalizedEvalCallback):
    """
    The evaluations of one Optuna trial: each normalized score (the mean return without reference scores) is
    reported to the trial at its evaluation's number (1, 2...), as rl-zoo's ``TrialEvalCallback`` does, which its
    pruners count (the median pruner's warm-up is a third of the evaluations); the ``model.num_timesteps`` of each
    (updates offline, environment steps online) go in the trial's user attribute ``evaluation_timesteps``.
    Training stops when Optuna prunes the trial.

    :param trial: the trial
    :param kwargs: ``NormalizedEvalCallback`` arguments (``eval_env``, ``dataset``, ``eval_freq``...)
    """

    def __init__(self, trial: optuna.Trial, **kwargs: Any):
        super().__init__(**kwargs)
        self.trial = trial
        self.scores: list[float] = []
        self.timesteps: list[int] = []
        self.is_pruned = False

    def _on_step(self) -> bool:
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return True
        continue_training = super()._on_step()
        score = self.last_normalized_score if self.last_normalized_score is not None else float(self.last_mean_reward)
        self.scores.append(score)
        self.timesteps.append(self.num_timesteps)
        self.trial.report(score, len(self.scores))
        self.trial.set_user_attr("evaluation_timesteps", self.timesteps)
        if self.trial.should_prune():
            self.is_pruned = True
            return False
        return continue_training

    def objective(self) -> float:
        """:return: the mean of the last ``OBJECTIVE_LAST_EVALUATIONS`` scores (the trial's value)"""
        if not self.scores:
            raise RuntimeError("The trial ran no evaluation: set --n-evaluations and a budget that reaches one")
        last = self.scores[-OBJECTIVE_LAST_EVALUATIONS:]
        return sum(last) / len(last)
