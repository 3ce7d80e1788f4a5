"""
d3rlpy's IQL and BC as peers of ``sb3_iql`` on the same Minari data, with the same evaluation.

- Data: the transitions ``sb3_iql`` loads (``sb3_iql.data.load_transitions``), rewards through the same transform
  (``sb3_iql.data.rewards.make_reward_transform``), Dict observations flattened in the observation space's key order
  (the order of SB3's ``CombinedExtractor``). Actions are given as they are stored (d3rlpy does not clip them);
  every dataset here has a [-1, 1] action space, which d3rlpy's tanh mean covers without an action scaler.
  d3rlpy builds its own episodes from the terminal and timeout flags and, as it always does, drops the last
  transition of each time-limit episode (it keeps one observation per action).
- Evaluation: ``D3rlpyPredictor`` gives d3rlpy's greedy action (its tanh mean) through SB3's ``predict``
  interface, so ``sb3_iql.evaluation.evaluate`` runs it exactly as it runs an SB3 model.

Install the benchmark dependencies with ``pip install -r benchmarks/requirements.txt`` (d3rlpy pins an old
gymnasium, so it is installed without its pins).
"""

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch as th
from gymnasium import spaces

from sb3_iql import IQL
from sb3_iql.data.minari_loader import Transitions
from sb3_iql.data.rewards import RewardTransformLike, make_reward_transform

#: IQL's settings that d3rlpy's IQL takes (``make_d3rlpy_algo``).
IQL_NUMBERS = ("expectile", "beta", "max_weight", "gamma", "tau", "learning_rate")

# d3rlpy logs every epoch and every dataset it builds through structlog: keep its warnings only.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def flatten_observations(observation_space: spaces.Space, observations: Any) -> np.ndarray:
    """
    :param observations: ``(batch, *shape)`` array, or a dict of them for a Dict space
    :return: ``(batch, features)`` float32, Dict parts concatenated in the space's key order
    """
    if isinstance(observation_space, spaces.Dict):
        parts = [np.asarray(observations[key]).reshape(len(observations[key]), -1) for key in observation_space.spaces]
        return np.concatenate(parts, axis=1).astype(np.float32)
    observations = np.asarray(observations)
    return observations.reshape(len(observations), -1).astype(np.float32)


def d3rlpy_dataset(transitions: Transitions, observation_space: spaces.Space, reward_transform: RewardTransformLike) -> Any:
    """
    :return: a ``d3rlpy.dataset.MDPDataset`` of the transitions (rewards transformed as ``sb3_iql`` does)
    :raises ValueError: an episode's end is not marked as terminal or truncated
    """
    import d3rlpy

    terminals = transitions.terminations.astype(np.float32)
    timeouts = (transitions.truncations & ~transitions.terminations).astype(np.float32)
    n_ends = int((terminals + timeouts).sum())
    if n_ends != len(transitions.episode_returns) or terminals[-1] + timeouts[-1] == 0:
        raise ValueError(f"{len(transitions.episode_returns)} episodes but {n_ends} terminal or timeout flags")
    rewards = make_reward_transform(reward_transform, transitions.episode_returns)(transitions.rewards)
    return d3rlpy.dataset.MDPDataset(
        observations=flatten_observations(observation_space, transitions.observations),
        actions=transitions.actions.astype(np.float32),
        rewards=rewards.astype(np.float32).reshape(-1, 1),
        terminals=terminals,
        timeouts=timeouts,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )


def make_d3rlpy_algo(
    method: str,
    hyperparameters: dict[str, Any],
    net_arch: list[int],
    batch_size: int,
    device: str = "cpu",
    actor_lr_decay_steps: int | None = None,
) -> Any:
    """
    :param method: ``"iql"`` (``d3rlpy.algos.IQLConfig``) or ``"bc"`` (``d3rlpy.algos.BCConfig``, d3rlpy's own
        deterministic BC with its default learning rate)
    :param hyperparameters: IQL's ``expectile``, ``beta`` (d3rlpy's ``weight_temp``), ``max_weight``, ``gamma``,
        ``tau`` and ``learning_rate`` (the actor's and the critics'), IQL's defaults for those left out
    :param device: ``"cpu"`` or ``"cuda"`` (d3rlpy's first device of that kind)
    :param actor_lr_decay_steps: IQL only: the actor's lr decays to 0 over this many updates with d3rlpy's own
        ``CosineAnnealingLRFactory`` (the reference's schedule); None: d3rlpy's constant lr
    :return: the algorithm, not yet built
    """
    import d3rlpy

    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=list(net_arch))
    defaults = inspect.signature(IQL.__init__).parameters  # IQL's, where the settings leave them out
    hyperparameters = {name: hyperparameters.get(name, defaults[name].default) for name in IQL_NUMBERS}
    if method == "iql":
        actor_optimizer = {}
        if actor_lr_decay_steps is not None:
            schedule = d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=actor_lr_decay_steps)
            actor_optimizer["actor_optim_factory"] = d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=schedule)
        return d3rlpy.algos.IQLConfig(
            batch_size=batch_size,
            expectile=hyperparameters["expectile"],
            weight_temp=hyperparameters["beta"],
            max_weight=hyperparameters["max_weight"],
            gamma=hyperparameters["gamma"],
            tau=hyperparameters["tau"],
            actor_learning_rate=hyperparameters["learning_rate"],
            critic_learning_rate=hyperparameters["learning_rate"],
            actor_encoder_factory=encoder,
            critic_encoder_factory=encoder,
            value_encoder_factory=encoder,
            **actor_optimizer,
        ).create(device=f"{device}:0")
    if method == "bc":
        return d3rlpy.algos.BCConfig(batch_size=batch_size, encoder_factory=encoder).create(device=f"{device}:0")
    raise ValueError(f"Unknown d3rlpy method {method!r}: use 'iql' or 'bc'")


def fit_steps(algo: Any, dataset: Any, n_updates: int) -> None:
    """``n_updates`` gradient steps of a built d3rlpy algorithm with its own ``fitter`` (its sampling), no logs."""
    from d3rlpy.logging import NoopAdapterFactory

    fitter = algo.fitter(
        dataset,
        n_steps=n_updates,
        n_steps_per_epoch=n_updates,
        logger_adapter=NoopAdapterFactory(),
        show_progress=False,
        save_interval=n_updates + 1,
    )
    for _ in fitter:
        pass


class D3rlpyPredictor:
    """
    SB3's ``predict`` on a d3rlpy algorithm, for ``evaluate_policy``: observations flattened as for training.

    :param algo: a built d3rlpy algorithm
    :param observation_space: the environment's observation space
    """

    def __init__(self, algo: Any, observation_space: spaces.Space):
        self.algo = algo
        self.observation_space = observation_space

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """:return: greedy actions ``(n_envs, action_dim)`` (d3rlpy's tanh mean; ``deterministic`` must be True)"""
        if not deterministic:
            raise ValueError("D3rlpyPredictor gives greedy actions only")
        return self.algo.predict(flatten_observations(self.observation_space, observation)), None


def save_d3rlpy(path: Path, algo: Any, progress: dict) -> None:
    """
    Networks and optimizers (``algo.save_model``) and the progress dict, each written atomically. The networks go to
    a file of their own update count, named by the progress file, which is written last and only then drops the
    previous networks' file: a run killed in between resumes from the networks its progress names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = th.load(path, weights_only=False)["model"] if path.exists() else None
    n_updates = progress["curve"][-1]["updates"] if progress["curve"] else 0
    model_path = path.with_suffix(f".{n_updates}.d3")
    algo.save_model(str(model_path.with_suffix(".tmp")))
    model_path.with_suffix(".tmp").replace(model_path)
    tmp = path.with_suffix(".tmp")
    th.save({"progress": progress, "model": model_path.name}, tmp)
    tmp.replace(path)
    if previous not in (None, model_path.name):
        (path.parent / previous).unlink(missing_ok=True)


def load_d3rlpy(path: Path, algo: Any) -> dict:
    """:return: the progress dict; the built ``algo`` gets the saved networks and optimizers"""
    state = th.load(path, weights_only=False)
    algo.load_model(str(path.parent / state["model"]))
    return state["progress"]
