"""Roll out any SB3 model or callable policy in a Gymnasium environment and write a Minari dataset."""

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import minari
import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector.utils import concatenate, create_empty_array
from minari.data_collector import EpisodeBuffer
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_iql.datasets.storage import check_specs_storable, check_writable, write_dataset

#: A function from one observation to one action.
PolicyFn = Callable[[Any], Any]
DEFAULT_N_REFERENCE_EPISODES = 100
# Seed-sequence key that keeps the action noise independent of the environment's own generator
_ACTION_NOISE_STREAM = 1
# ... and the epsilon-random actions independent of both
_RANDOM_ACTION_STREAM = 2


@runtime_checkable
class Predictor(Protocol):
    """Anything with SB3's ``predict``: an algorithm (``SAC``, ``IQL``...) or a policy."""

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
        """SB3 ``predict``: returns ``(action, state)``."""


class PredictorPolicy:
    """
    An SB3 model or policy as a callable ``observation -> action``, which carries ``predict``'s state through an
    episode (a recurrent policy's memory: sb3-contrib's ``RecurrentPPO``); ``start_episode()`` at each reset. A
    model trained in a ``VecNormalize`` (``get_vec_normalize_env()``) acts on observations normalised with its
    statistics, as it was trained (the dataset keeps the environment's own observations).

    :param predictor: anything with SB3's ``predict``
    :param deterministic: whether to act with the deterministic action
    """

    def __init__(self, predictor: Predictor, deterministic: bool = True):
        get_vec_normalize_env = getattr(predictor, "get_vec_normalize_env", None)
        vec_normalize = None if get_vec_normalize_env is None else get_vec_normalize_env()
        self.predictor = predictor if vec_normalize is None else NormalizedPredictor(predictor, vec_normalize)
        self.deterministic = deterministic
        self.state: Any = None
        self.episode_start = True

    def start_episode(self) -> None:
        self.episode_start = True

    def __call__(self, observation: Any) -> Any:
        episode_start = np.array([self.episode_start])
        action, self.state = self.predictor.predict(
            observation, state=self.state, episode_start=episode_start, deterministic=self.deterministic
        )
        self.episode_start = False
        return action


class NormalizedPredictor:
    """
    An SB3 model (anything with ``predict``) that acts on observations normalised with a ``VecNormalize``'s
    statistics: a model trained in one and loaded from files (rl-zoo's ``vecnormalize.pkl``), whatever its number
    of environments::

        agent = NormalizedPredictor(SAC.load("sac.zip"), VecNormalize.load("vecnormalize.pkl", DummyVecEnv([make_env])))

    :param predictor: anything with SB3's ``predict``
    :param vec_normalize: the statistics (its ``normalize_obs``)
    """

    def __init__(self, predictor: Predictor, vec_normalize: VecNormalize):
        self.predictor, self.vec_normalize = predictor, vec_normalize

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
        """``predictor.predict`` on the normalised observation"""
        normalized = self.vec_normalize.normalize_obs(observation)
        return self.predictor.predict(normalized, state=state, episode_start=episode_start, deterministic=deterministic)


def as_policy_fn(policy: Predictor | PolicyFn, deterministic: bool = True) -> PolicyFn:
    """
    :param policy: An SB3 model or policy (anything with ``predict``), or a callable ``observation -> action``.
    :param deterministic: For SB3 models, whether to act with the deterministic action.
    :return: A callable ``observation -> action`` (a ``PredictorPolicy`` for an SB3 model or policy).
    """
    if isinstance(policy, Predictor):
        return PredictorPolicy(policy, deterministic)
    if callable(policy):
        return policy
    raise TypeError(f"policy must have a predict() method or be callable, got {type(policy).__name__}")


def _start_episode(policy_fn: PolicyFn) -> None:
    """Tell a ``PredictorPolicy`` that a new episode starts (nothing for a plain callable)."""
    if isinstance(policy_fn, PredictorPolicy):
        policy_fn.start_episode()


def env_action(action: Any, action_space: spaces.Space) -> Any:
    """:return: ``action`` as an array of the space's dtype, a Discrete one as a NumPy scalar (as SB3's VecEnvs step
    it: toy-text environments index tables with it; a 0-d array is unhashable)"""
    action = np.asarray(action, dtype=action_space.dtype)
    return action[()] if action.ndim == 0 else action


class RandomPolicy:
    """
    Uniformly random actions, reproducible by seed.

    :param action_space: The environment's action space (copied, then seeded).
    :param seed: Seed of the action sampler.
    """

    def __init__(self, action_space: spaces.Space, seed: int = 0) -> None:
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(seed)

    def __call__(self, observation: Any) -> Any:
        """:return: A random action, ignoring the observation."""
        return self.action_space.sample()


def check_reference_episodes(n_episodes: int) -> None:
    """:raises ValueError: ``n_episodes`` < 1: a reference score of no episode would be NaN"""
    if n_episodes < 1:
        raise ValueError(f"A reference score averages at least 1 episode, got {n_episodes}")


def average_return(env: gym.Env, policy: Predictor | PolicyFn, n_episodes: int, seed: int = 0) -> float:
    """
    :param env: Environment whose episodes end (terminated or truncated, e.g. by a time limit).
    :param policy: SB3 model (deterministic actions) or callable ``observation -> action``.
    :param n_episodes: Number of episodes.
    :param seed: Seed of the first reset.
    :return: Mean undiscounted episode return.
    :raises ValueError: ``n_episodes`` < 1 (a reference score of no episode would be NaN)
    """
    check_reference_episodes(n_episodes)
    policy_fn = as_policy_fn(policy)
    returns = []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed if episode == 0 else None)
        _start_episode(policy_fn)
        episode_return, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(env_action(policy_fn(observation), env.action_space))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    return float(np.mean(returns))


def as_env(env: str | EnvSpec | gym.Env) -> gym.Env:
    """
    :return: ``env`` itself, or a new environment made from an id or spec
    :raises TypeError: ``env`` is a ``VecEnv`` (episodes are collected in one environment; a model's ``VecNormalize``
        statistics are taken from the model)
    """
    if isinstance(env, VecEnv):
        raise TypeError(
            f"Episodes are collected in one environment, not a {type(env).__name__}: give a gymnasium.Env or its id. "
            "A model trained in a VecNormalize acts on observations normalised with its statistics "
            "(model.get_vec_normalize_env(); from files: NormalizedPredictor(model, VecNormalize.load(path, venv)))."
        )
    return env if isinstance(env, gym.Env) else gym.make(env)


def reference_scores(
    eval_env: str | EnvSpec | gym.Env,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    expert_policy: Predictor | PolicyFn | None = None,
    n_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    seed: int = 0,
) -> dict[str, float | int]:
    """
    Reference scores for ``minari.get_normalized_score``: given ones, or measured on ``eval_env``.

    :param eval_env: The evaluation environment (or its id / spec).
    :param ref_min_score: Return of normalized score 0; measured from uniform random actions when None.
    :param ref_max_score: Return of normalized score 1 in Minari's metadata (100 in this package's reports);
        exclusive with ``expert_policy``.
    :param expert_policy: Policy whose mean return is ``ref_max_score``.
    :param n_episodes: Episodes averaged per measured score.
    :param seed: Seed of the first reset and of the random policy.
    :return: ``ref_min_score``, ``ref_max_score`` and, where one was measured, ``num_episodes_average_score``
        (keyword arguments of ``minari.create_dataset_from_buffers``), or an empty dict when neither
        ``ref_max_score`` nor ``expert_policy`` is given.
    """
    if ref_max_score is not None and expert_policy is not None:
        raise ValueError("Pass ref_max_score or expert_policy, not both")
    if ref_max_score is None and expert_policy is None:
        if ref_min_score is not None:
            raise ValueError("ref_min_score needs ref_max_score or expert_policy")
        return {}
    env = as_env(eval_env)
    measured = ref_min_score is None or ref_max_score is None
    if ref_min_score is None:
        ref_min_score = average_return(env, RandomPolicy(env.action_space, seed), n_episodes, seed)
    if ref_max_score is None:
        ref_max_score = average_return(env, expert_policy, n_episodes, seed)
    scores: dict[str, float | int] = {"ref_min_score": ref_min_score, "ref_max_score": ref_max_score}
    return {**scores, "num_episodes_average_score": n_episodes} if measured else scores


def check_reference_scores(scores: dict[str, float | int]) -> None:
    """:raises ValueError: ``reference_scores``' ``ref_max_score`` is not above its ``ref_min_score`` (an expert no
    better than random actions): normalized scores would be inverted, or divide by 0; or either is not finite"""
    if scores and not all(math.isfinite(scores[key]) for key in ("ref_min_score", "ref_max_score")):
        raise ValueError(
            f"reference scores must be finite numbers, got ref_min_score {scores['ref_min_score']} and ref_max_score "
            f"{scores['ref_max_score']}"
        )
    if scores and scores["ref_max_score"] <= scores["ref_min_score"]:
        raise ValueError(
            f"ref_max_score ({scores['ref_max_score']:.6g}) must be above ref_min_score ({scores['ref_min_score']:.6g}, "
            "random actions when measured): normalized scores would be inverted. Pass a better expert_policy or other "
            "reference scores"
        )


def _stack(space: spaces.Space, items: list[Any]) -> Any:
    """:return: ``items`` stacked along a new first axis (a dict of arrays for Dict spaces)."""
    return concatenate(space, items, create_empty_array(space, n=len(items), fn=np.empty))


class _Noise:
    """Gaussian noise of std ``std`` times half the action range, clipped to the action bounds."""

    def __init__(self, action_space: spaces.Space, std: float, seed: int) -> None:
        if not isinstance(action_space, spaces.Box) or not action_space.is_bounded():
            raise ValueError(f"Action noise needs a bounded Box action space, got {action_space}")
        self.low, self.high = action_space.low, action_space.high
        self.scale = std * (self.high - self.low) / 2
        self.rng = np.random.default_rng((seed, _ACTION_NOISE_STREAM))

    def __call__(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action + self.scale * self.rng.standard_normal(self.scale.shape), self.low, self.high)


class _RandomActions:
    """With probability ``epsilon``, a uniformly random action from the space instead of the policy's."""

    def __init__(self, action_space: spaces.Space, epsilon: float, seed: int) -> None:
        self.epsilon = epsilon
        self.rng = np.random.default_rng((seed, _RANDOM_ACTION_STREAM))
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(int(self.rng.integers(2**31)))

    def __call__(self, action: Any) -> Any:
        return self.action_space.sample() if self.rng.random() < self.epsilon else action


def rollout_episodes(
    env: gym.Env,
    policy: Predictor | PolicyFn,
    n_steps: int | None = None,
    n_episodes: int | None = None,
    action_noise_std: float = 0.0,
    seed: int = 0,
    deterministic: bool = True,
    epsilon: float = 0.0,
) -> list[EpisodeBuffer]:
    """
    Roll out a policy; pass exactly one of ``n_steps`` and ``n_episodes``.

    :param env: The environment; ``terminated`` and ``truncated`` are taken from its ``step``.
    :param policy: SB3 model or callable ``observation -> action``.
    :param n_steps: Total number of transitions; the last episode, cut short, is marked truncated.
    :param n_episodes: Number of complete episodes.
    :param action_noise_std: Std of the Gaussian noise added to every action, in units of half the action
        range (i.e. in the [-1, 1] scaled actions of SB3); noisy actions are clipped to the bounds.
    :param seed: Seed of the first reset and of the noise.
    :param deterministic: For SB3 models, act with the deterministic action (False: sample from the policy, torch
        seeded with ``seed`` for the rollout; the caller's torch generator is left as it was).
    :param epsilon: Probability of replacing each action with a uniformly random one (any action space; applied
        after ``action_noise_std``).
    :return: The episodes: observations (T + 1, ...) (a dict of arrays for Dict spaces), actions (T, ...),
        rewards, terminations and truncations (T,).
    """
    if (n_steps is None) == (n_episodes is None):
        raise ValueError("Pass exactly one of n_steps and n_episodes")
    count = n_steps if n_steps is not None else n_episodes
    if count < 1:
        raise ValueError(f"n_steps / n_episodes must be positive, got {count}")
    if action_noise_std < 0:
        raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    policy_fn = as_policy_fn(policy, deterministic)
    noise = _Noise(env.action_space, action_noise_std, seed) if action_noise_std > 0 else None
    random_actions = _RandomActions(env.action_space, epsilon, seed) if epsilon > 0 else None
    if deterministic or not isinstance(policy, Predictor):
        return _roll_out(env, policy_fn, n_steps, n_episodes, noise, random_actions, seed)
    with th.random.fork_rng():  # the model samples with torch's generator: seeded here, restored after
        th.manual_seed(seed)
        return _roll_out(env, policy_fn, n_steps, n_episodes, noise, random_actions, seed)


def _roll_out(
    env: gym.Env,
    policy_fn: PolicyFn,
    n_steps: int | None,
    n_episodes: int | None,
    noise: _Noise | None,
    random_actions: _RandomActions | None,
    seed: int,
) -> list[EpisodeBuffer]:
    """The rollout of ``rollout_episodes``, its arguments checked and turned into callables."""
    episodes: list[EpisodeBuffer] = []
    total_steps = 0
    observation, _ = env.reset(seed=seed)
    while True:
        _start_episode(policy_fn)
        observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
        done = out_of_steps = False
        while not (done or out_of_steps):
            action = np.asarray(policy_fn(observation), dtype=env.action_space.dtype)
            if noise is not None:
                action = noise(action).astype(env.action_space.dtype)
            if random_actions is not None:
                action = np.asarray(random_actions(action), dtype=env.action_space.dtype)
            observation, reward, terminated, truncated, _ = env.step(env_action(action, env.action_space))
            total_steps += 1
            done = terminated or truncated
            out_of_steps = n_steps is not None and total_steps >= n_steps
            observations.append(observation)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated) or (out_of_steps and not terminated))
        episodes.append(
            EpisodeBuffer(
                id=len(episodes),
                seed=seed if not episodes else None,
                observations=_stack(env.observation_space, observations),
                actions=_stack(env.action_space, actions),
                rewards=np.array(rewards),
                terminations=np.array(terminations),
                truncations=np.array(truncations),
                infos={},
            )
        )
        if out_of_steps or len(episodes) == n_episodes:
            return episodes
        observation, _ = env.reset()


def write_episodes(
    dataset_id: str,
    episodes: list[EpisodeBuffer],
    env: gym.Env,
    eval_env: str | EnvSpec | gym.Env | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    expert_policy: Predictor | PolicyFn | None = None,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    seed: int = 0,
    algorithm_name: str = "unknown",
    description: str | None = None,
    overwrite: bool = False,
    jpeg_encoding: bool = False,
) -> minari.MinariDataset:
    """
    Write episodes as a local Minari dataset with the evaluation environment's spec and reference scores (left out,
    with a warning, where ``check_reference_scores`` refuses them).

    :param dataset_id: Minari id to write.
    :param episodes: The episodes (observations have one more row than actions).
    :param env: The environment the data comes from (spec and spaces are stored).
    :param eval_env: Evaluation environment (or id / spec) stored in the dataset; default ``env``'s spec.
    :param ref_min_score: Return of score 0; measured from random actions when reference scores are written.
    :param ref_max_score: Return of normalized score 1 in Minari's metadata (100 in this package's reports;
        exclusive with ``expert_policy``).
    :param expert_policy: Policy whose mean return on the evaluation environment is ``ref_max_score``.
    :param n_reference_episodes: Episodes averaged per measured reference score.
    :param seed: Seed of the reference rollouts.
    :param algorithm_name: How the data was produced (stored in the metadata).
    :param description: Stored in the metadata.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :param jpeg_encoding: Store image observations as JPEG (Minari's default; lossy and smaller, RGB or
        single-channel 2-D frames only). Off by default: frames are stored as given and load back exactly.
    :return: The new dataset.
    """
    eval_env = eval_env if eval_env is not None else env.spec
    scores = reference_scores(
        eval_env if eval_env is not None else env, ref_min_score, ref_max_score, expert_policy, n_reference_episodes, seed
    )
    try:
        check_reference_scores(scores)
    except ValueError as error:  # the episodes are kept
        warnings.warn(f"{error}. The dataset is written without reference scores.", stacklevel=2)
        scores = {}
    return _write_scored(dataset_id, episodes, env, eval_env, scores, algorithm_name, description, overwrite, jpeg_encoding)


def _write_scored(
    dataset_id: str,
    episodes: list[EpisodeBuffer],
    env: gym.Env,
    eval_env: str | EnvSpec | gym.Env | None,
    scores: dict[str, float | int],
    algorithm_name: str,
    description: str | None,
    overwrite: bool,
    jpeg_encoding: bool,
) -> minari.MinariDataset:
    """``write_episodes`` with its reference scores (``reference_scores``: with the count averaged, where measured)"""
    n_steps = sum(len(episode) for episode in episodes)
    return write_dataset(
        dataset_id,
        episodes,
        env=env,
        eval_env=eval_env,
        overwrite=overwrite,
        algorithm_name=algorithm_name,
        description=description or f"{n_steps} steps of {algorithm_name}. Written by sb3_iql.datasets.",
        jpeg_encoding=jpeg_encoding,
        **scores,
    )


def collect(
    env: str | gym.Env,
    policy: Predictor | PolicyFn,
    dataset_id: str,
    n_steps: int | None = None,
    n_episodes: int | None = None,
    action_noise_std: float = 0.0,
    seed: int = 0,
    deterministic: bool = True,
    epsilon: float = 0.0,
    eval_env: str | EnvSpec | gym.Env | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    expert_policy: Predictor | PolicyFn | None = None,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    algorithm_name: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
    jpeg_encoding: bool = False,
) -> minari.MinariDataset:
    """
    Roll out a policy in an environment and write the transitions as a local Minari dataset (no jax needed).

    Works for any observation space Gymnasium can stack (Box, Dict...). Reference scores are written when
    ``ref_max_score`` or ``expert_policy`` is given, so that ``minari.get_normalized_score`` works.

    :param env: The environment or its id; its spec is stored.
    :param policy: SB3 model or callable ``observation -> action``.
    :param dataset_id: Minari id to write, e.g. ``"sb3_iql/hopper/medium-v0"``.
    :param n_steps: Total number of transitions; the last episode, cut short, is marked truncated.
    :param n_episodes: Number of complete episodes (exclusive with ``n_steps``).
    :param action_noise_std: Std of Gaussian action noise, in units of half the action range; noisy
        actions are clipped to the bounds.
    :param seed: Seed of the first reset, of the noise and of the reference rollouts.
    :param deterministic: For SB3 models, act with the deterministic action (False: sample from the policy,
        seeded by ``torch.manual_seed``).
    :param epsilon: Probability of replacing each action with a uniformly random one (e.g. for Discrete actions).
    :param eval_env: Evaluation environment (or id / spec) stored in the dataset; default ``env``'s spec.
    :param ref_min_score: Return of score 0; measured from random actions when reference scores are written.
    :param ref_max_score: Return of normalized score 1 in Minari's metadata (100 in this package's reports;
        exclusive with ``expert_policy``).
    :param expert_policy: Policy whose mean return on the evaluation environment is ``ref_max_score``
        (deterministic actions for SB3 models).
    :param n_reference_episodes: Episodes averaged per measured reference score.
    :param algorithm_name: Stored in the metadata; default the policy's class name.
    :param description: Stored in the metadata.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :param jpeg_encoding: Store image observations as JPEG (lossy; see ``write_episodes``). Off by default.
    :return: The new dataset.
    """
    check_writable(dataset_id, overwrite)
    check_reference_episodes(n_reference_episodes)
    env = as_env(env)
    check_specs_storable(env, eval_env)  # as the scores below: before the rollouts, so that it costs no data
    # measured before the rollouts, so that reference scores refused cost no collected data
    scores = reference_scores(
        eval_env if eval_env is not None else (env.spec or env),
        ref_min_score,
        ref_max_score,
        expert_policy,
        n_reference_episodes,
        seed,
    )
    check_reference_scores(scores)
    episodes = rollout_episodes(env, policy, n_steps, n_episodes, action_noise_std, seed, deterministic, epsilon)
    algorithm_name = algorithm_name or type(policy).__name__
    description = description or (
        f"{algorithm_name} ({'deterministic' if deterministic else 'stochastic'}) with action noise std "
        f"{action_noise_std}, random actions with probability {epsilon}, seed {seed}."
    )
    return _write_scored(dataset_id, episodes, env, eval_env, scores, algorithm_name, description, overwrite, jpeg_encoding)
