"""
IQL in the RL Baselines3 Zoo: rl-zoo3's own ``train`` and ``enjoy`` entry points with ``--algo iql`` registered.

Train on a Minari dataset with the paper's preset (``sb3_iql/hyperparams/iql.yml``), offline only
(``n_timesteps: 0``: ``learn(0)`` runs ``offline_steps`` updates) or offline then online with ``--finetune``::

    python -m sb3_iql.zoo train --dataset sb3_iql/pointmaze/umaze-stitch-v0 --eval-episodes 100 -tb tb
    python -m sb3_iql.zoo train --dataset D4RL/antmaze/large-diverse-v1 --finetune --gym-packages gymnasium_robotics
    python -m sb3_iql.zoo train --dataset mujoco/hopper/medium-v0 -params offline_steps:200000 batch_size:512

``--download`` fetches a dataset that is not stored locally from Minari's server first. Every other option is
rl-zoo's (``python -m rl_zoo3.train --help``). ``--env`` defaults to the dataset's evaluation
environment, whose constructor arguments (maze layout, fixed goal...) become the preset's ``env_kwargs``; the
training and the evaluation environments are both built with them. The run folder is rl-zoo's
(``logs/iql/<env>_<n>/``: final model, ``best_model.zip``, ``evaluations.npz``, ``config.yml``, ``args.yml``), plus a
``progress.csv`` of the training losses; ``-tb DIR`` adds TensorBoard logs. Evaluations log the normalized score
(``eval/normalized_score``) when the dataset has reference scores.

Hyperparameter search with rl-zoo's Optuna options (``sb3_iql.tuning``: the search space, the dataset's preset as the
first trial, the objective = mean normalized score of the last 3 evaluations, pruning on each evaluation counted in
updates); several workers, processes or machines, share one study through ``--storage`` (a database URL gets
heartbeats: a trial whose worker died is failed and run again)::

    python -m sb3_iql.zoo train --dataset sb3_iql/pointmaze/umaze-stitch-v0 --optimize --n-trials 50 --n-evaluations 5 \
        --storage sqlite:///iql.db --study-name umaze -params offline_steps:100000

Without ``--dataset``, ``--conf-file`` must name a hyperparameter file keyed by environment id whose entry sets
``offline_dataset`` (rl-zoo's own format).

Watch the trained agent with rl-zoo's ``enjoy``::

    python -m sb3_iql.zoo enjoy --env PointMaze_UMaze-v3 --gym-packages gymnasium_robotics -f logs --no-render
    python -m sb3_iql.zoo enjoy --dataset sb3_iql/pointmaze/umaze-stitch-v0 -f logs --load-best -n 3000
"""

import argparse
import contextlib
import difflib
import importlib
import inspect
import os
import shlex
import socket
import sys
import tempfile
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import yaml
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, ProgressBarCallback
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.utils import ConstantSchedule, configure_logger

from sb3_iql.callbacks import NormalizedEvalCallback, UpdatesProgressBarCallback
from sb3_iql.common.offline import DEFAULT_OFFLINE_STEPS, OfflineAlgorithm
from sb3_iql.data import REPLAY_BUFFER_CLASSES
from sb3_iql.data.minari_loader import DatasetNotFoundError, load_dataset, recover_eval_env, stores_environment
from sb3_iql.iql import IQL
from sb3_iql.iql.iql import HYPERPARAMETER_RULES
from sb3_iql.presets import (
    FINETUNE_SUFFIX,
    PresetNotFoundError,
    check_argument_keys,
    check_preset_keys,
    from_zoo_strings,
    known_presets,
    preset_for,
    replaced_with,
    with_overrides,
)
from sb3_iql.tuning import (
    HEARTBEAT_INTERVAL,
    PresetFirstSampler,
    ScaledSchedule,
    TrialNormalizedEvalCallback,
    convert_iql_params,
    make_storage,
    preset_trial,
    sample_iql_params,
    study_preset,
    zoo_params,
)

try:
    import optuna
    import rl_zoo3
    import rl_zoo3.enjoy
    import rl_zoo3.exp_manager
    import rl_zoo3.hyperparams_opt
    import rl_zoo3.train
    import rl_zoo3.utils
    from rl_zoo3.exp_manager import ExperimentManager
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("sb3_iql.zoo needs rl-zoo3: pip install 'sb3_iql[zoo]' (or pip install rl_zoo3)") from error

#: Name of the algorithm in rl-zoo (``--algo iql``).
ALGO_NAME = "iql"
#: TensorBoard run name, as in ``IQL.learn``.
TB_LOG_NAME = "IQL"
COMMANDS = ("train", "enjoy")
#: An offline-only run (``n_timesteps: 0``) evaluates once every so many offline updates (rl-zoo's
#: ``--eval-freq`` counts environment steps, which it does not take).
UPDATES_PER_EVALUATION = 100_000
_ZOO_MODULES = (rl_zoo3, rl_zoo3.utils, rl_zoo3.train, rl_zoo3.exp_manager, rl_zoo3.enjoy)


def register_iql() -> None:
    """
    Make ``--algo iql`` known to rl-zoo3: ``ALGOS["iql"] = IQL`` in every rl-zoo module that holds the table, and
    ``sb3_iql.tuning.sample_iql_params`` as its hyperparameter sampler.
    """
    for module in _ZOO_MODULES:
        algos = getattr(module, "ALGOS", None)
        if algos is not None:
            algos[ALGO_NAME] = IQL
    rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO_NAME] = sample_iql_params
    rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO_NAME] = convert_iql_params


def _ensure_registered(spec: EnvSpec) -> None:
    """Register the environment of a stored spec: import its package (e.g. gymnasium_robotics), else the spec itself."""
    if spec.id in gym.registry:
        return
    if isinstance(spec.entry_point, str):
        with contextlib.suppress(ImportError):
            gym.register_envs(importlib.import_module(spec.entry_point.split(":")[0].split(".")[0]))
    if spec.id not in gym.registry:
        gym.register(spec.id, entry_point=spec.entry_point, max_episode_steps=spec.max_episode_steps)


class NoEnvironmentSpecError(ValueError):
    """A dataset that stores no environment spec: the run needs ``--env``."""


def dataset_environment(dataset_id: str) -> tuple[str, dict[str, Any], list[dict[str, dict[str, Any]]]]:
    """
    The evaluation environment stored in a Minari dataset (its collection environment if it has none), as an
    rl-zoo ``--env`` id, ``env_kwargs`` and ``env_wrapper``; its package is imported (or the id registered) so that
    rl-zoo finds it.

    :param dataset_id: a local Minari dataset id
    :return: the registered environment id, the constructor arguments that make it the stored one
        (``max_episode_steps`` included when it differs from the registered time limit), and the wrappers the spec
        adds on top (such as the pixel mazes' renderer) in rl-zoo's ``env_wrapper`` form, ``[{"module.Class": kwargs}]``
    :raises NoEnvironmentSpecError: the dataset stores no environment spec
    """
    dataset = load_dataset(dataset_id)
    if not stores_environment(dataset):
        raise NoEnvironmentSpecError(f"Dataset {dataset_id!r} stores no environment spec: pass --env")
    env = recover_eval_env(dataset)
    spec = env.spec
    env.close()
    _ensure_registered(spec)
    env_kwargs = dict(spec.kwargs)
    if spec.max_episode_steps != gym.spec(spec.id).max_episode_steps:
        env_kwargs["max_episode_steps"] = spec.max_episode_steps
    wrappers = [{wrapper.entry_point.replace(":", "."): dict(wrapper.kwargs or {})} for wrapper in spec.additional_wrappers]
    return spec.id, env_kwargs, wrappers


def zoo_hyperparams(
    dataset_id: str, env_id: str | None = None, finetune: bool = False, presets_path: str | None = None
) -> dict[str, dict[str, Any]]:
    """
    An rl-zoo hyperparameter file for one dataset: its preset (see :func:`sb3_iql.presets.preset_for`) with
    ``offline_dataset`` set, keyed by environment id.

    :param dataset_id: Minari dataset id (stored locally)
    :param env_id: the ``--env`` of the run (default: the dataset's evaluation environment); when it is the dataset's
        environment, the stored constructor arguments are added as ``env_kwargs`` and its wrappers as ``env_wrapper``
        (needed where the dataset stores no environment)
    :param finetune: the fine-tuning preset (offline, then ``n_timesteps`` online steps)
    :param presets_path: a preset file (default: the package's)
    :return: ``{env_id: hyperparameters}``
    """
    try:
        hyperparams = preset_for(dataset_id, finetune, presets_path)
        check_preset_keys(dataset_id, IQL, finetune, presets_path)  # rl-zoo would fail in IQL's constructor
    except PresetNotFoundError:
        hyperparams = default_hyperparams(dataset_id, finetune, presets_path)
    hyperparams["offline_dataset"] = dataset_id
    try:
        dataset_env_id, env_kwargs, wrappers = dataset_environment(dataset_id)
    except NoEnvironmentSpecError:
        if env_id is None:
            raise
        return {env_id: hyperparams}  # the given --env, as it is registered
    if env_id is None or env_id == dataset_env_id:
        if env_kwargs:  # a preset's own env_kwargs go over the stored ones
            hyperparams["env_kwargs"] = {**env_kwargs, **(hyperparams.get("env_kwargs") or {})}
        if wrappers:
            hyperparams.setdefault("env_wrapper", wrappers)
        env_id = dataset_env_id
    return {env_id: hyperparams}


#: rl-zoo settings of a dataset without a preset: IQL's own defaults, offline only or with the paper's fine-tuning
#: protocol (1M online steps, constant actor lr).
DEFAULT_HYPERPARAMS: dict[str, Any] = {"policy": "MlpPolicy", "n_timesteps": 0}
DEFAULT_FINETUNE_HYPERPARAMS: dict[str, Any] = {
    "policy": "MlpPolicy",
    "n_timesteps": 1_000_000,
    "learning_starts": 0,
    "actor_lr_schedule": "constant",
}


def default_hyperparams(dataset_id: str, finetune: bool = False, presets_path: str | None = None) -> dict[str, Any]:
    """
    The configuration of a dataset no preset applies to (a user's own): IQL's defaults, with a warning that names
    the closest preset; for fine-tuning, the dataset's offline preset with the paper's protocol where it has one.

    :return: a new dict in rl-zoo format
    """
    if finetune:
        try:
            offline = preset_for(dataset_id, False, presets_path)
        except PresetNotFoundError:
            offline = None
        if offline is not None:
            warnings.warn(
                f"No IQL fine-tuning preset for dataset {dataset_id!r}: its offline preset with the paper's fine-tuning "
                "protocol (1M online steps, learning_starts 0, constant actor lr); change them with -params.",
                stacklevel=2,
            )
            protocol = {key: value for key, value in DEFAULT_FINETUNE_HYPERPARAMS.items() if key != "policy"}
            return {**offline, **protocol}
    if presets_path is not None:  # a file of the user's own: one of its entries was meant to apply
        kind, suffix = ("fine-tuning entry", f" ending in {FINETUNE_SUFFIX!r}") if finetune else ("entry", "")
        keys = [key + (FINETUNE_SUFFIX if finetune else "") for key in known_presets(finetune, presets_path)]
        raise PresetNotFoundError(
            f"No {kind} of {presets_path} applies to dataset {dataset_id!r}: key one by the id or by a pattern that "
            f"matches it ('*' for every dataset){suffix}. "
            + (f"Its keys: {', '.join(keys)}." if keys else f"It has no {kind}.")
        )
    closest = difflib.get_close_matches(dataset_id, _same_environment(dataset_id, finetune, presets_path), n=1, cutoff=0.0)
    warnings.warn(
        f"No IQL preset for dataset {dataset_id!r}: training with the package defaults (expectile 0.7, beta 3.0, "
        "no reward transform). "
        + (f"The closest preset is {closest[0]!r}: set" if closest else "Set")
        + " hyperparameters with -params, or pass a configuration with --conf-file.",
        stacklevel=2,
    )
    return dict(DEFAULT_FINETUNE_HYPERPARAMS if finetune else DEFAULT_HYPERPARAMS)


def _same_environment(dataset_id: str, finetune: bool, presets_path: str | None) -> list[str]:
    """:return: the presets whose environment (``"hopper"`` in ``"D4RL/hopper/medium-v2"``) is the dataset's or
    contains it (``"maze"``: the PointMaze and AntMaze ones): the closest id of another domain is no advice"""
    environment = _environment(dataset_id)
    if not environment:
        return []
    environments = {key: _environment(key) for key in known_presets(finetune, presets_path)}
    return [key for key, other in environments.items() if other and (environment in other or other in environment)]


def _environment(dataset_id: str) -> str:
    """:return: the environment part of a Minari id (``namespace/environment/name-vN``), or ``""``"""
    parts = dataset_id.split("/")
    return parts[-2] if len(parts) >= 3 else ""


class IQLExperimentManager(ExperimentManager):
    """
    rl-zoo's ``ExperimentManager`` with what offline training needs: the evaluation reports normalized scores
    (:class:`~sb3_iql.callbacks.NormalizedEvalCallback` with the dataset's reference scores), the evaluation
    environment gets the configuration's ``env_kwargs`` (rl-zoo passes them only when they come from the command
    line), the progress bar counts offline updates, and the losses also go to ``progress.csv`` in the run folder.
    """

    offline_dataset: str | None = None
    #: Seconds between heartbeats of a trial in a database storage (``--heartbeat-interval``).
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    #: Options of the run's command line that name its configuration and environment (``--dataset`` or
    #: ``--conf-file``, ``--env``, ``--env-kwargs``, ``--finetune``, ``--presets``...), for ``retrain_command``.
    retrain_options: tuple[str, ...] = ()
    #: The searched parameters of the study's trial 0 (``sb3_iql.tuning.study_preset``), set when the study opens.
    _study_preset: dict[str, Any]
    #: Whether ``-params`` apply to the configuration as ``IQL.from_preset``'s overrides do (a run from a dataset's
    #: preset: ``policy_kwargs`` merged, what goes with a replaced setting dropped) instead of rl-zoo's replacing.
    params_as_overrides: bool = False

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # rl-zoo's --trial-id replaces the configuration's policy_kwargs and schedule with the trial's parameters
        # (net_arch only, a constant rate), and -params then replace those: applied here as the trial trained
        # a typo in -params failed in IQL's constructor (one line through setup_experiment, which calls this)
        check_argument_keys(IQL, self.custom_hyperparams or {}, "-params")
        trial_id, self.trial_id = self.trial_id, None
        try:
            hyperparams, saved_hyperparams = super().read_hyperparameters()
        finally:
            self.trial_id = trial_id
        given = dict(self.custom_hyperparams or {})
        configured: dict[str, Any] = {}
        if self.params_as_overrides:  # a run from a dataset's preset (zoo_hyperparams' file)
            with open(self.config) as file_handler:
                configured = yaml.safe_load(file_handler)[self.env_name.gym_id]
        stored_env_kwargs = configured.get("env_kwargs") or {}
        if stored_env_kwargs and hyperparams.get("env_kwargs") is not None:
            # the dataset's environment arguments (its maze, its goal) with the given ones over them: rl-zoo's
            # --env-kwargs and -params env_kwargs replace the whole dict
            merged = {**stored_env_kwargs, **hyperparams["env_kwargs"]}
            hyperparams["env_kwargs"] = saved_hyperparams["env_kwargs"] = merged
            if self.args.env_kwargs is not None:  # args.yml's, which rl-zoo's enjoy puts in place of config.yml's
                self.args.env_kwargs = merged
            given_eval = self._eval_env_kwargs_args  # over the dataset's own too (its maze, its goal)
            self.eval_env_kwargs = merged if given_eval is None else {**stored_env_kwargs, **given_eval}
        if self.params_as_overrides and given:  # from_preset's rules over the preset (-params replaced its values)
            given_kwargs = isinstance(given.get("policy_kwargs"), dict)
            if given_kwargs or "dropout" in given:
                preset_kwargs = from_zoo_strings({"policy_kwargs": configured.get("policy_kwargs")})
                overrides = {key: given[key] for key in ("policy_kwargs", "dropout") if key in given}
                merged = with_overrides(preset_kwargs, overrides).get("policy_kwargs")
                if given_kwargs or merged != preset_kwargs["policy_kwargs"]:  # or a dropout replaced actor_dropout
                    hyperparams["policy_kwargs"] = saved_hyperparams["policy_kwargs"] = merged
            for key in replaced_with(configured, given):
                hyperparams.pop(key, None)
                saved_hyperparams.pop(key, None)
        if self.storage and self.study_name and trial_id is not None:
            print(f"Loading trial {trial_id} of the Optuna study...")
            trial = self.load_trial(self.storage, self.study_name, trial_id)
            hyperparams = _as_trained(hyperparams, trial, raw=True)  # over -params, as in the study
            saved_hyperparams = OrderedDict((key, hyperparams[key]) for key in sorted(hyperparams))
        dataset = hyperparams.get("offline_dataset")
        self.offline_dataset = dataset if isinstance(dataset, str) else None
        online_steps = self.n_timesteps if self.n_timesteps > 0 else int(float(hyperparams.get("n_timesteps", 0)))
        if dataset is None and online_steps == 0 and not self.continue_training:
            raise SystemExit(
                f"sb3_iql.zoo: error: the configuration of {self.env_name.gym_id} has no offline_dataset and "
                "n_timesteps 0: nothing to train. Add offline_dataset: ID to its entry, or use --dataset ID."
            )
        return hyperparams, saved_hyperparams

    def create_callbacks(self) -> None:
        # rl-zoo divides --eval-freq and --save-freq by n_envs, as each online callback step is n_envs steps; an
        # offline step is one update, so an offline-only run keeps them whole.
        with _replaced(self, "n_envs", 1 if self.n_timesteps == 0 else self.n_envs):
            super().create_callbacks()
        evaluations = [callback for callback in self.callbacks if type(callback) is EvalCallback]
        evaluation = NormalizedEvalCallback.from_eval_callback(evaluations[0], self.offline_dataset) if evaluations else None
        callbacks: list[BaseCallback] = []
        for callback in self.callbacks:
            if type(callback) is EvalCallback:
                assert evaluation is not None
                callbacks.append(evaluation)
            elif isinstance(callback, ProgressBarCallback):
                # SB3's bar, counting updates offline, with the evaluation figures and plain lines in log files.
                callbacks.append(UpdatesProgressBarCallback(evaluation))
            else:
                callbacks.append(callback)
        self.callbacks = callbacks

    def make_logger(self, model: BaseAlgorithm) -> Logger:
        """:return: the logger ``learn()`` would make (stdout, TensorBoard), plus ``progress.csv`` in the run folder"""
        logger = configure_logger(self.verbose, model.tensorboard_log, TB_LOG_NAME, reset_num_timesteps=True)
        logger.output_formats.append(make_output_format("csv", self.save_path))
        return logger

    def learn(self, model: BaseAlgorithm) -> None:
        """
        rl-zoo's ``learn``; a model resumed with ``-i`` first runs what is left of its ``offline_steps`` (the rest of
        an interrupted run, or of a larger ``offline_steps`` given with ``-params``; the configuration's own, which
        rl-zoo loads the model with, does not reopen a finished offline phase), then the online steps if any, in one
        ``learn()`` call whose ``num_timesteps`` goes on from the checkpoint's (rl-zoo's own starts again from 0).
        An offline-only run's ``--log-interval`` counts updates between logs (not saved with the model).

        :raises SystemExit: a resumed model with nothing left to train (its offline phase done and ``-n 0``)
        """
        model.set_logger(self.make_logger(model))
        if isinstance(model, OfflineAlgorithm) and self.n_timesteps == 0 and self.log_interval > 0:
            model.offline_log_interval = self.log_interval  # not saved with the model
        if isinstance(model, OfflineAlgorithm) and model._n_offline_updates > 0:  # resumed with -i
            if "offline_steps" in (self.custom_hyperparams or {}) and model.offline_updates_left > 0:
                model._offline_phase_unfinished = True  # -params offline_steps:N: on from the updates done
            offline_left = model._offline_phase_unfinished and model.offline_updates_left > 0
            if not offline_left and self.n_timesteps == 0:
                raise SystemExit(
                    f"sb3_iql.zoo: error: the model loaded with -i has finished its offline phase "
                    f"({model._n_offline_updates:,} updates) and -n is 0: nothing to train. Give more offline updates "
                    "with -params offline_steps:N, or online steps with -n."
                )
            model = _CountingOn(model)  # type: ignore[assignment]
        super().learn(model)

    def _save_config(self, saved_hyperparams: dict[str, Any]) -> None:
        """rl-zoo's ``config.yml`` and ``args.yml``; a run of ``--dataset`` records it there, not the temporary
        configuration file made from its preset (deleted after the run)."""
        if not self.params_as_overrides:
            return super()._save_config(saved_hyperparams)
        with _replaced(self.args, "conf_file", None):
            self.args.dataset = self.offline_dataset
            try:
                return super()._save_config(saved_hyperparams)
            finally:
                del self.args.dataset

    def setup_experiment(self) -> Any:
        """rl-zoo's; a configuration the model refuses (``-params normalize:True`` with offline data...) is one line."""
        with _one_line_errors(ValueError, only_this_package=True):  # rl-zoo's, an env's...: with their traceback
            return super().setup_experiment()

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: Any) -> BaseAlgorithm:
        """
        rl-zoo's ``-i`` (continue training a saved model, e.g. a ``--save-freq`` checkpoint of the run folder): a model
        saved without its replay buffer gets its offline datasets again (``reload_offline_dataset``), so that an
        interrupted offline run continues to the parameters of an uninterrupted one.
        """
        model = super()._load_pretrained_agent(hyperparams, env)
        if isinstance(model, OfflineAlgorithm) and model.replay_buffer.size() == 0 and model.offline_dataset_ids:
            model.reload_offline_dataset()
        return model

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, list[BaseCallback], Any]:
        # rl-zoo derives the evaluations of a trial from n_timesteps, 0 offline: 1 per 100k offline updates instead.
        derive = self.n_evaluations is None and self.optimize_hyperparameters
        # rl-zoo evaluates a buffer's name in its own module, where "HerReplayBuffer" is SB3's, which cannot take
        # offline data: the package's buffers are resolved here first.
        if hyperparams.get("replay_buffer_class") in REPLAY_BUFFER_CLASSES:
            hyperparams["replay_buffer_class"] = REPLAY_BUFFER_CLASSES[hyperparams["replay_buffer_class"]]
        processed = super()._preprocess_hyperparams(hyperparams)
        if self._eval_env_kwargs_args is None:
            self.eval_env_kwargs = self.env_kwargs
        if derive and self.n_timesteps == 0:
            offline_steps = int(hyperparams.get("offline_steps", DEFAULT_OFFLINE_STEPS))
            self.n_evaluations = max(1, offline_steps // UPDATES_PER_EVALUATION)
            print(
                f"Offline: {self.n_evaluations} intermediate evaluations instead "
                f"(1 every {UPDATES_PER_EVALUATION:,} offline updates)"
            )
        return processed

    def objective(self, trial: optuna.Trial) -> float:
        """
        One Optuna trial: IQL with ``sb3_iql.tuning.sample_iql_params``'s draw, seeded with ``--seed``, trained
        ``offline_steps`` updates offline, evaluated ``--n-evaluations`` times evenly over them (with ``--finetune``:
        offline, then evaluated over the ``n_timesteps`` online steps), pruned on those evaluations.

        :return: the mean normalized score of the last evaluations (``TrialNormalizedEvalCallback.objective``)
        """
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        search = {"preset": self._study_preset}  # the ranges hold the study's trial 0
        arguments = _as_trained(self._hyperparams, sample_iql_params(trial, self.n_actions, 1, search))
        env, eval_env = self.create_envs(self.n_envs, no_log=True), self.create_envs(self.n_eval_envs, eval_env=True)
        model = IQL(env=env, tensorboard_log=None, seed=self.seed, verbose=0, device=self.device, **arguments)
        finetune = self.n_timesteps > 0
        # each online callback step is n_envs environment steps (as rl-zoo counts them), each offline step one update
        budget = self.n_timesteps // self.n_envs if finetune else model.offline_steps
        path = (
            None if self.optimization_log_path is None else os.path.join(self.optimization_log_path, f"trial_{trial.number}")
        )
        evaluation = TrialNormalizedEvalCallback(
            trial,
            eval_env=eval_env,
            dataset=self.offline_dataset,
            n_eval_episodes=self.n_eval_episodes,
            eval_freq=max(budget // self.n_evaluations, 1),
            log_path=path,
            best_model_save_path=path,
            deterministic=self.deterministic_eval,
        )
        configured = rl_zoo3.utils.get_callback_list({"callback": self.specified_callbacks})  # as rl-zoo's trials
        try:
            if finetune:  # the online phase is what is optimised: evaluations count environment steps
                model.learn_offline(model.offline_steps, callback=configured)
                model.learn(self.n_timesteps, callback=[*configured, evaluation], reset_num_timesteps=False)
            else:
                model.learn_offline(model.offline_steps, callback=[*configured, evaluation])
        except (AssertionError, ValueError) as error:  # e.g. NaN losses of extreme settings, as rl-zoo prunes them
            print(f"Trial {trial.number} pruned: {error}")
            raise optuna.TrialPruned() from error
        finally:
            env.close()
            eval_env.close()
        if evaluation.is_pruned:
            raise optuna.TrialPruned()
        return evaluation.objective()

    def hyperparameters_optimization(self) -> None:
        """
        rl-zoo's study, with a storage URL opened by ``sb3_iql.tuning.make_storage`` (heartbeats: a dead worker's
        trial is failed and retried), the dataset's preset as the first trial, and the command that trains the best
        trial's settings again printed at the end.
        """
        with _one_line_errors(ValueError):  # before the study: trial 0 (the preset) would fail, and stay failed in it
            _check_trial_arguments(_as_trained(self._hyperparams, convert_iql_params(preset_trial(self._hyperparams))))
        create_study = optuna.create_study
        studies: list[optuna.Study] = []

        def create_iql_study(*args: Any, storage: Any = None, sampler: Any = None, **kwargs: Any) -> optuna.Study:
            base = sampler or optuna.samplers.TPESampler()
            study = create_study(
                *args,
                storage=make_storage(storage, self.heartbeat_interval) if isinstance(storage, str) else storage,
                sampler=base,
                **kwargs,
            )
            if study.trials:  # a study resumed, or joined late: --seed would draw its first trials' parameters again
                base.reseed_rng()
            self._study_preset = study_preset(study, self._hyperparams)  # read once: every trial widens with it
            study.sampler = PresetFirstSampler(base, self._study_preset)
            studies.append(study)
            return study

        with _replaced(optuna, "create_study", create_iql_study):
            super().hyperparameters_optimization()
        completed = [trial for trial in studies[0].trials if trial.state == optuna.trial.TrialState.COMPLETE]
        if completed:
            best = max(completed, key=lambda trial: trial.value)
            print(f"Train the best trial ({best.number}, objective {best.value:.2f}) again:")
            print(shlex.join(self.retrain_command(best.params)))
            if isinstance(_as_trained(self._hyperparams, convert_iql_params(best.params))["learning_rate"], ScaledSchedule):
                print(
                    "(-params cannot write the configuration's Python learning-rate schedule: the command trains a constant "
                    f"rate; --storage ... --study-name ... --trial-id {best.number} keeps the schedule)"
                )

    def retrain_command(self, params: dict[str, Any]) -> list[str]:
        """
        :return: the ``python -m sb3_iql.zoo train`` command line that trains a trial's settings again: this run's
            options (``retrain_options``, online steps, seed), its ``-params`` and the trial's parameters, with the
            ``policy_kwargs`` the trial had (merged into the preset's, which rl-zoo's ``-params`` would replace)
        """
        if self.retrain_options:
            source = []
        else:  # a manager made outside train()
            source = ["--dataset", self.offline_dataset] if self.offline_dataset else ["--env", self.env_name.gym_id]
        online_steps = ["-n", str(self.n_timesteps)] if self.n_timesteps > 0 else []
        trained = _as_trained(self._hyperparams, convert_iql_params(params))
        trial_arguments = {key: trained[key] for key in (*convert_iql_params(params), "policy_kwargs")}
        learning_rate = trial_arguments["learning_rate"]
        if isinstance(learning_rate, rl_zoo3.utils.SimpleLinearSchedule):  # as -params reads it
            trial_arguments["learning_rate"] = f"lin_{learning_rate.initial_value}"
        elif isinstance(learning_rate, ScaledSchedule):  # not writable as -params (said where it is printed)
            trial_arguments["learning_rate"] = learning_rate.start
        given = dict(self.custom_hyperparams or {})
        return [
            "python", "-m", "sb3_iql.zoo", "train", *source, *self.retrain_options, *online_steps, "--seed", str(self.seed),
            "-params", *zoo_params({**given, **trial_arguments}),
        ]  # fmt: skip


class _CountingOn:
    """A model, as rl-zoo's ``learn`` sees it: its ``learn()`` goes on from ``num_timesteps`` instead of 0."""

    def __init__(self, model: BaseAlgorithm):
        self._model = model

    def learn(self, *args: Any, **kwargs: Any) -> BaseAlgorithm:
        return self._model.learn(*args, reset_num_timesteps=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextlib.contextmanager
def _one_line_errors(*errors: type[Exception], only_this_package: bool = False) -> Iterator[None]:
    """
    A user's mistake, said in one line: ``errors`` raised in the block become ``SystemExit`` with their message.

    :param only_this_package: only those raised in this package's code (``_raised_by_this_package``); others keep
        their traceback
    """
    try:
        yield
    except errors as error:
        if only_this_package and not _raised_by_this_package(error):
            raise
        raise SystemExit(f"sb3_iql.zoo: error: {error}") from None


def _raised_by_this_package(error: BaseException) -> bool:
    """:return: whether ``error`` was raised in this package's code (its innermost frame)"""
    frames = traceback.extract_tb(error.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package + os.sep)


def _check_trial_arguments(arguments: dict[str, Any]) -> None:
    """
    :param arguments: IQL arguments of a trial (``_as_trained``); those not given take IQL's defaults
    :raises ValueError: a hyperparameter out of its range (``IQL._check_hyperparameters``)
    """
    defaults = {name: parameter.default for name, parameter in inspect.signature(IQL.__init__).parameters.items()}
    IQL._check_hyperparameters({name: arguments.get(name, defaults[name]) for name in HYPERPARAMETER_RULES})


def _as_trained(hyperparams: dict[str, Any], trial_arguments: dict[str, Any], raw: bool = False) -> dict[str, Any]:
    """
    :param hyperparams: the run's IQL arguments (the dataset's preset, ``-params``)
    :param trial_arguments: a trial's arguments (``convert_iql_params``)
    :param raw: ``hyperparams`` as read from the file, before rl-zoo's preprocessing: ``policy_kwargs`` may be
        Python text and schedules ``"lin_X"`` (any ``"name_X"``, which rl-zoo reads as linear)
    :return: the arguments the trial trains with: its ``policy_kwargs`` merged into the run's, and its learning rate
        on the run's schedule where it has one (scaled to start at the trial's value)
    """
    policy_kwargs = hyperparams.get("policy_kwargs")
    if isinstance(policy_kwargs, str):  # Python text that rl-zoo evaluates later: the trial's added to it
        arguments = {
            **hyperparams,
            **trial_arguments,
            "policy_kwargs": f"dict({policy_kwargs}, **{trial_arguments['policy_kwargs']!r})",
        }
    else:
        arguments = with_overrides(hyperparams, trial_arguments)
    schedule, learning_rate = hyperparams.get("learning_rate"), trial_arguments["learning_rate"]
    if raw and isinstance(schedule, str):
        arguments["learning_rate"] = f"lin_{learning_rate}"
    elif isinstance(schedule, ConstantSchedule):  # rl-zoo's wrapping of a constant rate: the trial's rate, constant
        arguments["learning_rate"] = learning_rate
    elif isinstance(schedule, rl_zoo3.utils.SimpleLinearSchedule):
        arguments["learning_rate"] = rl_zoo3.utils.SimpleLinearSchedule(learning_rate)
    elif callable(schedule):
        arguments["learning_rate"] = ScaledSchedule(schedule, learning_rate)
    return arguments


@contextlib.contextmanager
def _replaced(target: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``target.name = value`` for the duration of the block."""
    previous = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, previous)


def _peek_parser() -> argparse.ArgumentParser:
    """The options this module reads before handing the command line to rl-zoo."""
    parser = argparse.ArgumentParser(
        prog="python -m sb3_iql.zoo {train,enjoy}", usage=argparse.SUPPRESS, add_help=False, allow_abbrev=False
    )
    ours = parser.add_argument_group("sb3_iql.zoo options (the others below are rl-zoo's)")
    ours.add_argument("--dataset", help="Minari dataset id: its preset and environment are used")
    ours.add_argument(
        "--download", action="store_true", help="download --dataset from Minari's server first if it is not stored"
    )
    ours.add_argument("--finetune", action="store_true", help="the fine-tuning preset: offline, then online")
    ours.add_argument("--presets", help="a preset file to use instead of the package's hyperparams/iql.yml")
    # read here too, listed by rl-zoo (whose parser also takes --conf, an abbreviation of --conf-file)
    for rl_zoo_option in (["--env"], ["--algo"], ["-conf", "--conf-file", "--conf"]):
        parser.add_argument(*rl_zoo_option, help=argparse.SUPPRESS)
    parser.add_argument("--gym-packages", nargs="+", default=[], help=argparse.SUPPRESS)
    ours.add_argument(
        "--heartbeat-interval",
        type=int,
        default=HEARTBEAT_INTERVAL,
        help="--optimize with a database --storage: seconds between heartbeats of a running trial; a trial silent for "
        "three of them (its worker died) is marked failed and run again",
    )
    parser.add_argument("-h", "--help", action="store_true", help=argparse.SUPPRESS)
    return parser


def _read_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """:return: this module's options (the dataset downloaded where asked) and the command line left for rl-zoo"""
    parser = _peek_parser()
    args, rest = parser.parse_known_args(sys.argv[2:] if argv is None else argv)
    if args.help:
        print(__doc__)
        print(parser.format_help())
    if args.dataset is not None:  # here, so that a missing or malformed id is one line, not a traceback
        with _one_line_errors(ValueError, DatasetNotFoundError):
            load_dataset(args.dataset, download=args.download)
    register_iql()
    _import_packages(args.gym_packages)
    return args, rest


def _import_packages(packages: Sequence[str]) -> None:
    for package in packages:
        importlib.import_module(package)


def _rl_zoo_argv(args: argparse.Namespace, rest: list[str], env_id: str | None, conf_file: str | None) -> list[str]:
    argv = [*rest, "--algo", args.algo or ALGO_NAME]
    if env_id is not None:
        argv += ["--env", env_id]
    if conf_file is not None:
        argv += ["--conf-file", conf_file]
    if args.gym_packages:
        argv += ["--gym-packages", *args.gym_packages]
    if args.help:
        argv.append("--help")
    return argv


def _as_given_or_absolute(conf_file: str) -> str:
    """:return: the absolute path of a configuration file, or the name of a Python module as given (rl-zoo takes both)"""
    return os.path.abspath(conf_file) if os.path.exists(conf_file) else conf_file


def _option_tokens(argv: Sequence[str], option: str) -> list[str]:
    """:return: ``option`` and its ``key:value`` arguments in ``argv`` (rl-zoo's ``StoreDict`` options), or nothing"""
    if option not in argv:
        return []
    start = list(argv).index(option) + 1
    end = next((index for index in range(start, len(argv)) if ":" not in argv[index]), len(argv))
    return [option, *argv[start:end]]


def train(argv: Sequence[str] | None = None) -> None:
    """
    ``rl_zoo3.train.train()`` with IQL registered and, given ``--dataset``, the dataset's preset as configuration.

    :param argv: the command line after ``train`` (default: ``sys.argv[2:]``)
    """
    args, rest = _read_args(argv)
    with tempfile.TemporaryDirectory(prefix="sb3_iql_zoo_") as folder:
        env_id, conf_file = args.env, args.conf_file
        if args.dataset is not None:
            if conf_file is not None:
                raise SystemExit(
                    "--dataset builds the configuration from its preset: change it with -params, or drop --dataset"
                )
            # a preset file missing, a typo in it, or none of its entries for the dataset
            with _one_line_errors(OSError, ValueError, PresetNotFoundError):
                hyperparams = zoo_hyperparams(args.dataset, args.env, args.finetune, args.presets)
            env_id = next(iter(hyperparams))
            conf_file = os.path.join(folder, "iql.yml")
            with open(conf_file, "w") as file_handler:
                yaml.safe_dump(hyperparams, file_handler)
        elif conf_file is None and not args.help:
            raise SystemExit("python -m sb3_iql.zoo train needs --dataset ID (a preset) or --conf-file FILE (rl-zoo format)")
        elif env_id is None and not args.help:  # rl-zoo would look for CartPole-v1's entry
            raise SystemExit("sb3_iql.zoo: error: --conf-file needs --env ENV_ID, the key of its entry")
        if args.algo not in (None, ALGO_NAME):
            raise SystemExit(f"sb3_iql.zoo: error: it trains IQL (--algo {ALGO_NAME}); use rl_zoo3 for --algo {args.algo}")
        if env_id is not None and env_id not in gym.registry and not args.help:
            raise SystemExit(
                f"sb3_iql.zoo: error: environment {env_id!r} is not registered: name the package that registers it "
                "with --gym-packages PACKAGE"
            )
        zoo_argv = [f"{sys.argv[0]} train", *_rl_zoo_argv(args, rest, env_id, conf_file)]
        retrain_options = (
            *(["--dataset", args.dataset] if args.dataset is not None else []),
            *(["--conf-file", _as_given_or_absolute(args.conf_file)] if args.conf_file else []),
            *(["--env", args.env] if args.env else []),
            *_option_tokens(rest, "--env-kwargs"),
            *_option_tokens(rest, "--eval-env-kwargs"),
            *(["--finetune"] if args.finetune else []),
            *(["--presets", args.presets] if args.presets else []),
            *(["--gym-packages", *args.gym_packages] if args.gym_packages else []),
        )
        manager = type(
            "IQLExperimentManager",
            (IQLExperimentManager,),
            {
                "heartbeat_interval": args.heartbeat_interval,
                "retrain_options": retrain_options,
                "params_as_overrides": args.dataset is not None,
            },
        )
        with _replaced(sys, "argv", zoo_argv), _replaced(rl_zoo3.train, "ExperimentManager", manager):
            rl_zoo3.train.train()


def enjoy(argv: Sequence[str] | None = None) -> None:
    """
    ``rl_zoo3.enjoy.enjoy()`` with IQL registered; ``--dataset`` sets ``--env`` to the dataset's environment.

    :param argv: the command line after ``enjoy`` (default: ``sys.argv[2:]``)
    """
    args, rest = _read_args(argv)
    env_id = args.env
    if args.dataset is not None and env_id is None:
        env_id, _, _ = dataset_environment(args.dataset)
    zoo_argv = [f"{sys.argv[0]} enjoy", *_rl_zoo_argv(args, rest, env_id, None)]
    with _replaced(sys, "argv", zoo_argv):
        rl_zoo3.enjoy.enjoy()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m sb3_iql.zoo {train,enjoy} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        usage = f"usage: python -m sb3_iql.zoo {{{','.join(COMMANDS)}}} [options]"
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return
        raise SystemExit(usage)
    {"train": train, "enjoy": enjoy}[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
