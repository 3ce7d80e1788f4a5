"""
Normalized scores of sb3-iql's IQL, its variants, d3rlpy's IQL and behaviour cloning (BC) on local Minari
datasets, side by side: the same data, budget, seeds, networks, reward transform and evaluation.

For each dataset, each seed and each method, a fixed budget of offline updates is run in chunks of
``--eval-every`` updates; after each chunk the deterministic policy is evaluated on the dataset's evaluation
environment (first reset with seed 10000 + seed, for every method) and scored with the dataset's reference
returns, in percent. Sparse mazes also record the success rate, the first step at the goal and the fraction of
the time spent at the goal after it (``GoalTimes``).

Methods (``--methods``):

- ``iql``: the package's defaults with the dataset's preset (``sb3_iql.presets``, the paper's settings of the
  domain: mazes as AntMaze, expectile 0.9, beta 10, reward r - 1; locomotion: expectile 0.7, beta 3, reward
  r / return range * 1000), the budget and batch of the benchmark. Actor lr with cosine decay over the budget.
- ``iql-ref``: the same with the reference implementation's choices spelled out (``REFERENCE_SETTINGS``; the
  paper's expectile and beta of the domain and SB3's replay buffer, whatever a dataset's preset tuned), and
  ``iql-ref+FACTOR[+FACTOR...]``: with factors of ``FACTORS`` added (d3rlpy's update order, log-std
  parametrisation and init; LayerNorm; observation normalisation; actor dropout; constant actor lr;
  evaluation-goal relabelling; one image encoder for every network; random image shifts; NatureCNN's output
  layer with LayerNorm and tanh), the cells of the factorial study.
- ``bc``: the reference model, networks, data, batches and critic training, with ``beta=0``: every AWR weight is
  exp(0) = 1, so the actor's loss is the plain negative log-likelihood of the dataset actions.
- ``d3rlpy-iql`` and ``d3rlpy-bc``: d3rlpy's IQL (same expectile, beta, batch, networks) and its BC, on the same
  transitions and rewards (``benchmarks/peers.py``; ``make install-benchmarks``); ``d3rlpy-iql-cosine``: d3rlpy's
  IQL with the reference's actor schedule (cosine decay to 0 over the budget, d3rlpy's own scheduler).

Every run is cached: finished runs in ``<out>/scores_runs.json``, unfinished ones as checkpoints (networks,
optimizers, sampling generator, curve so far) in ``--checkpoint-dir``, so a killed invocation continues where
it stopped when started again with the same options. A record keeps its dataset's episode count and its
hyperparameters: a cached run on another generation of a dataset (one made again under the same id) or of a method
whose settings changed stops the invocation instead of mixing the two (``check_cached_runs``). The ``iql`` row is
the presets as they are now, whichever method trained them: an ``iql`` run is not trained again where another
method's run trained the same model (``iql-ref+ddpgawr0.01+dropout`` on a stitch maze), the report counts those
runs in the row, and ``iql`` runs of an earlier preset are kept under another key, in a row of their own.
Runs are ordered seed by seed, so that every dataset has results early; two invocations (one per core) may share
one cache. The report (``benchmarks/score_report.py``: ``<out>/scores.md``, ``scores.png``, ``scores.json``,
``scores.csv``) covers every cached run, with rliable's interquartile means, confidence intervals and
probabilities of improvement over d3rlpy.

PointMaze ids of this package (``sb3_iql/pointmaze/...``) are generated on first use with ``--dataset-steps``
steps; other ids must exist in ``$MINARI_DATASETS_PATH`` (e.g. ``sb3_iql/hopper/medium-replay-v0`` from
``benchmarks/make_locomotion_datasets.py --portable``, the generation of the report's Hopper rows) and are skipped
with a message otherwise.

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari nice -n 10 python benchmarks/scores.py \\
        --datasets sb3_iql/pointmaze/medium-stitch-v0 sb3_iql/pointmaze/large-stitch-v0 \\
        --updates 30000 --eval-every 5000 --seeds 0 1 2 3 4 --eval-episodes 30 --net-arch 256 256 \\
        --methods iql-ref iql-ref+order+logstd+init d3rlpy-iql bc --no-report
    python benchmarks/scores.py --report-only   # rewrite the report from the cache

Smoke test (seconds)::

    python benchmarks/scores.py --datasets sb3_iql/pointmaze/umaze-stitch-v0 --dataset-steps 5000 --updates 20 \\
        --eval-every 10 --seeds 0 --eval-episodes 1 --net-arch 16 --out /tmp/scores --checkpoint-dir /tmp/scores/ckpt
"""

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import minari
import numpy as np
import peers  # benchmarks/peers.py
import score_report  # benchmarks/score_report.py
import torch as th
from score_report import DEFAULTS, REPORT_STEM, RUNS_FILE, load_runs, write_json, write_report
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import is_image_space

from sb3_iql.common.arguments import non_negative_int, positive_int
from sb3_iql.data.goals import relabel_for_evaluation_goal
from sb3_iql.data.her import HerReplayBuffer
from sb3_iql.data.minari_loader import DatasetNotFoundError, check_dataset_id, load_dataset, load_transitions
from sb3_iql.datasets import ensure_dataset
from sb3_iql.datasets.generated import is_generated_id
from sb3_iql.datasets.medium_expert import parse_medium_expert_dataset_id
from sb3_iql.evaluation import SUCCESS_KEYS, checked_reference_scores, dataset_reference_scores, evaluate, normalized_score
from sb3_iql.iql import IQL
from sb3_iql.iql.multi_seed import learn_offline_together
from sb3_iql.iql.policies import IQLPolicy
from sb3_iql.presets import preset_arguments

matplotlib.use("Agg")

#: Preset arguments the benchmark sets itself: the budget, the batch, the data.
BENCHMARK_ARGUMENTS = ("policy", "offline_dataset", "offline_steps", "batch_size")
#: The reference implementation's choices (IQL.md), spelled out: ``iql-ref`` means them whatever the defaults are.
REFERENCE_SETTINGS: dict[str, Any] = {
    "policy_extraction": "awr",
    "relabel_eval_goal": False,  # the data as stored (the goal-carrying maze presets relabel it)
    "dropout": None,  # the paper's on mazes and locomotion (its Kitchen and Adroit 0.1: no local dataset)
    "update_order": "sequential",
    "actor_lr_schedule": "cosine",
    "policy_kwargs": {"log_std_parametrization": "clip", "log_std_init": 0.0, "weight_init": "orthogonal"},
    "replay_buffer_class": None,  # the data's own goals (the goal-carrying maze presets take hindsight goals)
    "replay_buffer_kwargs": None,
}
#: The paper's expectile and beta of each domain (told apart by the preset's reward transform), for ``iql-ref`` and
#: ``bc`` whatever a dataset's preset tuned (the AntMaze-v1 replica's preset: beta 0.3).
PAPER_DOMAIN_SETTINGS: dict[str, dict[str, float]] = {
    "antmaze": {"expectile": 0.9, "beta": 10.0},
    "locomotion": {"expectile": 0.7, "beta": 3.0},
}
#: Behaviour cloning weights of the DDPG+BC factors (``+ddpgbc<weight>``).
DDPG_BC_WEIGHTS = ("0.001", "0.01", "0.1", "1")
#: Actor dropout rates of the ``+dropout<rate>`` factors (``+dropout`` alone: 0.1, the paper's Kitchen and Adroit).
DROPOUT_RATES = ("0.2", "0.3")
#: Inverse temperatures of the ``+beta<value>`` factors (the preset's beta otherwise; 0 is behaviour cloning).
BETAS = ("0.3", "1", "3")
#: Factors of the study, each added to the reference with ``+name``: d3rlpy's three choices, then ours beyond them.
FACTORS: dict[str, dict[str, Any]] = {
    "order": {"update_order": "joint"},  # Q target with V(s') from before V's step
    "logstd": {"policy_kwargs": {"log_std_parametrization": "sigmoid", "log_std_init": -1.5}},
    "init": {"policy_kwargs": {"weight_init": "pytorch"}},
    "ln": {"policy_kwargs": {"critic_layer_norm": True}},
    "obsnorm": {"policy_kwargs": {"normalize_observations": True}},
    "spread": {"policy_kwargs": {"spread_first_layer_biases": True}},  # first-layer ReLU kinks spread, not at 0
    "dropout": {"dropout": 0.1},
    **{f"dropout{rate}": {"dropout": float(rate)} for rate in DROPOUT_RATES},
    "constlr": {"actor_lr_schedule": "constant"},  # d3rlpy's constant actor lr instead of the cosine decay to 0
    "criticcos": {"critic_lr_schedule": "cosine"},  # the critics' and value net's lr decays to 0 too (the actor's)
    # DDPG+BC policy extraction instead of AWR, with the behaviour cloning weight alpha in the name
    **{f"ddpgbc{alpha}": {"policy_extraction": "ddpg_bc", "bc_weight": float(alpha)} for alpha in DDPG_BC_WEIGHTS},
    # the same with the AWR weights on the log-likelihood term
    **{f"ddpgawr{alpha}": {"policy_extraction": "ddpg_awr", "bc_weight": float(alpha)} for alpha in DDPG_BC_WEIGHTS},
    **{f"beta{beta}": {"beta": float(beta)} for beta in BETAS},
    "evalgoal": {"relabel_eval_goal": True},  # every transition rewritten for the evaluation goal (sb3_iql.data.goals)
    "evalgoalterm": {"relabel_eval_goal": "terminal"},  # the same, and terminal at the goal (D4RL's relabelled AntMaze)
    # images: one encoder for the actor, critics and value net, trained by the critics (DrQ's actor), or for the
    # critics and value net alone (the actor keeps its own); random shifts
    "shared": {"policy_kwargs": {"share_features_extractor": True}},
    "sharedcritics": {"policy_kwargs": {"share_features_extractor": "critics"}},
    "shift4": {"image_shift": 4},
    "lncnn": {"policy_kwargs": {"features_extractor_class": "LayerNormNatureCNN"}},  # LayerNorm + tanh, not ReLU
    "spatial": {"policy_kwargs": {"features_extractor_class": "SpatialSoftmaxCNN"}},  # keypoints (x, y), not units
    "feat50": {"policy_kwargs": {"features_extractor_kwargs": {"features_dim": 50}}},  # DrQ-v2's 50 features, not 512
    # hindsight relabelling (sb3_iql.HerReplayBuffer, named by a string so that the settings stay JSON)
    "her": {
        "replay_buffer_class": "HerReplayBuffer",
        "replay_buffer_kwargs": {"n_sampled_goal": 4, "goal_selection_strategy": "future"},
    },
}
#: Factors that change the data, not the learner: d3rlpy's methods take them too, so both train on the same data.
DATA_FACTORS = ("evalgoal", "evalgoalterm")
#: ``iql``: the package's defaults; ``bc``: the reference with beta = 0; ``iql-ref[+factor...]``: the reference with
#: factors; ``d3rlpy-iql`` and ``d3rlpy-bc``: the peer (``benchmarks/peers.py``).
BASE_METHODS = ("iql", "bc", "iql-ref", "d3rlpy-iql", "d3rlpy-iql-cosine", "d3rlpy-bc")
#: What d3rlpy's runs take from the IQL settings, and so record: the data's (``benchmarks/peers.py`` transforms the
#: rewards and relabels the goals as IQL does), and for its IQL the numbers ``peers.make_d3rlpy_algo`` passes. Its IQL
#: extracts the policy with AWR (no dropout, its own update order, networks and initialisation) and decays its
#: actor's lr only as ``d3rlpy-iql-cosine``; its BC (beta 0) keeps d3rlpy's own settings.
D3RLPY_DATA_SETTINGS = ("reward_transform", "relabel_eval_goal")
METHODS = ("iql", "bc")
#: The methods built on ``REFERENCE_SETTINGS`` (with ``FACTORS``).
REFERENCE_METHODS = ("iql-ref", "bc")
D3RLPY_METHODS = ("d3rlpy-iql", "d3rlpy-iql-cosine", "d3rlpy-bc")


def parse_method(method: str) -> tuple[str, list[str]]:
    """:return: the base method and its factors (``"iql-ref+order+init"`` -> ``("iql-ref", ["order", "init"])``)"""
    base, *factors = method.split("+")
    allowed = FACTORS if base in REFERENCE_METHODS else DATA_FACTORS if base in D3RLPY_METHODS else ()
    if base not in BASE_METHODS or any(f not in allowed for f in factors):
        raise ValueError(
            f"Unknown method {method!r}: use one of {BASE_METHODS}, or iql-ref+FACTOR[+FACTOR...] (bc+FACTOR too) "
            f"with factors {list(FACTORS)}; d3rlpy's methods take the data factors {DATA_FACTORS}"
        )
    if "evalgoalterm" in factors and "her" in factors:  # IQL refuses it: terminals of the goal with hindsight goals
        raise ValueError(f"Method {method!r}: evalgoalterm cannot go with her (use evalgoal with her)")
    return base, factors


def method_settings(method: str) -> dict[str, Any]:
    """:return: the IQL constructor arguments of a method beyond the domain preset (d3rlpy: its data factors only)"""
    base, factors = parse_method(method)
    if base in D3RLPY_METHODS:  # the data as stored unless a data factor says otherwise
        return {"relabel_eval_goal": False, **{key: value for factor in factors for key, value in FACTORS[factor].items()}}
    if base == "iql":
        return {}
    settings = {**REFERENCE_SETTINGS, "policy_kwargs": dict(REFERENCE_SETTINGS["policy_kwargs"])}
    if base == "bc":
        settings["beta"] = 0.0
    for factor in factors:
        for key, value in FACTORS[factor].items():
            if key == "policy_kwargs":
                settings["policy_kwargs"].update(value)
            else:
                settings[key] = value
    return settings


#: The evaluation environment of run seed s is first reset with seed EVAL_SEED_OFFSET + s (same for both methods).
EVAL_SEED_OFFSET = 10_000


def code_version() -> str:
    """:return: a short hash of the ``sb3_iql`` sources imported by this process (runs of different code differ)."""
    import sb3_iql

    digest = hashlib.sha1()
    for path in sorted(Path(sb3_iql.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


#: Computed at import: the code a run trained with, even if the files change while this process runs.
CODE_VERSION = code_version()


def preset_hyperparameters(dataset_id: str) -> dict[str, Any]:
    """:return: the package's preset for the dataset (``sb3_iql.presets``), without the benchmark's own arguments"""
    arguments = preset_arguments(dataset_id)
    return {key: value for key, value in arguments.items() if key not in BENCHMARK_ARGUMENTS}


def _defaults(function: Any) -> dict[str, Any]:
    """:return: the keyword defaults of ``function`` (a constructor)"""
    parameters = inspect.signature(function).parameters.values()
    return {parameter.name: parameter.default for parameter in parameters if parameter.default is not inspect.Parameter.empty}


#: What a record's hyperparameters leave out: IQL's constructor defaults and its policy's.
IQL_DEFAULTS, POLICY_DEFAULTS = _defaults(IQL.__init__), _defaults(IQLPolicy.__init__)


def canonical_hyperparameters(hyperparameters: dict[str, Any]) -> str:
    """
    :return: the IQL arguments as sorted JSON with IQL's and its policy's defaults filled in: the same string for two
        runs that trained the same model, whichever method named it (``iql`` with the stitch preset and
        ``iql-ref+ddpgawr0.01+dropout``, for example)
    """
    full = {**IQL_DEFAULTS, **{key: value for key, value in hyperparameters.items() if value is not None}}
    full["policy_kwargs"] = {**POLICY_DEFAULTS, **(hyperparameters.get("policy_kwargs") or {})}
    if full["policy_extraction"] == "awr":
        full.pop("bc_weight")  # the DDPG extractions' weight
    return json.dumps(full, sort_keys=True, default=repr)


def trains_the_preset(record: dict) -> bool:
    """:return: whether a cached run of this package trained its dataset's preset as it is now (the ``iql`` row)."""
    config = record["config"]
    if not score_report.is_ours(config["method"]):
        return False
    preset = RunConfig(**{**config, "method": "iql", "net_arch": tuple(config["net_arch"])})
    return preset.trains(record["hyperparameters"])


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: a dataset, a method, a seed, and the shared budget and network."""

    dataset_id: str
    dataset_steps: int
    method: str
    seed: int
    updates: int
    eval_every: int
    eval_episodes: int
    net_arch: tuple[int, ...]
    batch_size: int

    @property
    def key(self) -> str:
        net = "x".join(map(str, self.net_arch))
        return (
            f"{self.dataset_id}|{self.dataset_steps}steps|{self.method}|seed{self.seed}|{self.updates}updates"
            f"|every{self.eval_every}|{self.eval_episodes}episodes|net{net}|batch{self.batch_size}"
        )

    @property
    def base_method(self) -> str:
        """The method without its factors (``"d3rlpy-iql+evalgoalterm"`` -> ``"d3rlpy-iql"``)."""
        return parse_method(self.method)[0]

    @property
    def setting(self) -> tuple:
        """Everything but the method and the seed: runs of one setting are aggregated together."""
        return (
            self.dataset_id,
            self.dataset_steps,
            self.updates,
            self.eval_every,
            self.eval_episodes,
            self.net_arch,
            self.batch_size,
        )

    @property
    def has_success(self) -> bool:
        """Sparse-reward mazes: an episode's return is positive exactly when the goal was reached."""
        return preset_hyperparameters(self.dataset_id).get("reward_transform") == "antmaze" and "dense" not in self.dataset_id

    def is_complete(self, record: dict) -> bool:
        """:return: whether a cached record has every metric this version records (success rates of mazes)."""
        return not self.has_success or all("success_rate" in point for point in record["curve"])

    def hyperparameters(self) -> dict[str, Any]:
        """:return: the IQL constructor arguments of the method (the dataset's preset, then ``method_settings``)."""
        preset = preset_hyperparameters(self.dataset_id)
        if self.base_method == "d3rlpy-bc":
            preset["beta"] = 0.0
        paper = PAPER_DOMAIN_SETTINGS.get(preset.get("reward_transform"), {}) if self.base_method in REFERENCE_METHODS else {}
        settings = {**preset, **paper, **method_settings(self.method)}
        if self.base_method in D3RLPY_METHODS:
            return d3rlpy_settings(self.base_method, settings)
        for key in ("dropout", "replay_buffer_class", "replay_buffer_kwargs"):
            if settings.get(key) is None:
                settings.pop(key, None)  # IQL's defaults: no dropout, SB3's replay buffer
        if settings.get("policy_extraction", "awr") == "awr":
            settings.pop("bc_weight", None)  # the DDPG extractions' weight
        return settings

    def trains(self, hyperparameters: dict[str, Any]) -> bool:
        """:return: whether a run of ``hyperparameters`` (a record's, a checkpoint's) trains this configuration's
        model (``canonical_hyperparameters``: the same string)"""
        return canonical_hyperparameters(hyperparameters) == canonical_hyperparameters(self.hyperparameters())


def d3rlpy_settings(base_method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """:return: the settings a d3rlpy run takes from ``settings`` (the IQL arguments), as its record keeps them"""
    kept = D3RLPY_DATA_SETTINGS if base_method == "d3rlpy-bc" else D3RLPY_DATA_SETTINGS + peers.IQL_NUMBERS
    taken = {key: settings[key] for key in kept if key in settings}
    if base_method == "d3rlpy-bc":
        return {**taken, "beta": 0.0}
    return {**taken, "actor_lr_schedule": "cosine" if base_method.endswith("-cosine") else "constant"}


def is_generated(dataset_id: str) -> bool:
    """
    :return: whether the id is a PointMaze dataset of this package, in states or in pixels (generated here with
        ``--dataset-steps``; a medium-expert one is loaded as stored, whatever its size)
    """
    try:
        parse_medium_expert_dataset_id(dataset_id)
    except ValueError:
        return is_generated_id(dataset_id)
    return False


def get_dataset(dataset_id: str, n_steps: int) -> minari.MinariDataset | None:
    """
    :param n_steps: transitions of a generated dataset (pixel ones: the first ``n_steps`` of their state dataset)
    :return: the dataset (PointMaze ids of this package are generated if missing), or None if not local.
    :raises SystemExit: a local dataset that cannot give scores (another size than ``n_steps``, no reference scores),
        before anything trains on it
    """
    try:
        dataset = ensure_dataset(dataset_id, n_steps=n_steps) if is_generated(dataset_id) else load_dataset(dataset_id)
    except DatasetNotFoundError:
        return None
    except ValueError as error:  # a stored dataset of another size (--dataset-steps)
        raise SystemExit(f"scores.py: error: {error}") from None
    reference_scores = dataset_reference_scores(dataset)
    try:  # what each evaluation computes: ref_max_score above ref_min_score
        if reference_scores is None:
            raise ValueError("it has no reference scores (ref_min_score, ref_max_score)")
        checked_reference_scores(reference_scores)
    except ValueError as error:
        raise SystemExit(f"scores.py: error: dataset {dataset_id!r}: {error}; the report's scores are normalized") from None
    return dataset


def set_aside_earlier_presets(runs: dict[str, dict], configs: list[RunConfig], dataset: minari.MinariDataset) -> bool:
    """
    Keep the cached ``iql`` runs of a preset that has changed since, under ``<key>|preset-before-<date>``: the
    configs' keys are free for the preset as it is now, and the report shows the earlier runs in a row of their own.
    Runs on another generation of the dataset stay where they are, for ``check_cached_runs`` to refuse.

    :return: whether a run was moved (``runs`` is changed in place)
    """
    moved = False
    for config in configs:
        record = runs.get(config.key)
        if record is None or record.get("dataset_episodes", dataset.total_episodes) != dataset.total_episodes:
            continue
        if config.method == DEFAULTS and not trains_the_preset(record):
            runs[f"{config.key}|preset-before-{record['finished'][:10]}"] = runs.pop(config.key)
            print(f"Set aside {config.key}: trained with {record['hyperparameters']}, an earlier preset", flush=True)
            moved = True
    return moved


def check_cached_runs(runs: dict[str, dict], configs: list[RunConfig], dataset: minari.MinariDataset) -> None:
    """
    Refuse to mix runs that share a key but not their data or settings. A regenerated dataset (SAC training is not
    bit-reproducible, so a locomotion dataset made again differs) keeps its id and often its steps; a method whose
    settings changed (``REFERENCE_SETTINGS``, a factor) trains another model under the same name. Records store the
    dataset's episode count and their hyperparameters; a cached one that differs from this invocation's stops it
    (records from before the episode count are checked for their hyperparameters only). ``iql`` runs of an earlier
    preset are set aside first (``set_aside_earlier_presets``).

    :raises SystemExit: a cached run of ``configs`` was trained on another generation of the dataset, or with
        other hyperparameters
    """
    for config in configs:
        record = runs.get(config.key)
        if record is None:
            continue
        if record.get("dataset_episodes", dataset.total_episodes) != dataset.total_episodes:
            reason = (
                f"was trained on {record['dataset_episodes']} episodes of {config.dataset_id}; the local dataset has "
                f"{dataset.total_episodes}, another generation of it"
            )
        elif not config.trains(record["hyperparameters"]):
            reason = f"was trained with {record['hyperparameters']}, not {config.hyperparameters()} (its method changed?)"
        else:
            continue
        raise SystemExit(
            f"The cached run {config.key} {reason}. Move the earlier runs out of {RUNS_FILE} "
            f"(results/scores_runs_superseded.json keeps them, with the reason) before running again."
        )


def cached_run(runs: dict[str, dict], config: RunConfig) -> dict | None:
    """
    :return: the complete cached run of ``config``; for ``iql``, also a run of another method that trained the
        dataset's preset as it is now in the same setting and seed (no need to train it twice). None if neither.
    """
    candidates = [runs.get(config.key)]
    if config.method == DEFAULTS:
        candidates += [
            record
            for key, record in sorted(runs.items())
            if record["config"]["seed"] == config.seed
            and score_report.setting_of(record) == config.setting
            and trains_the_preset(record)
        ]
    return next((record for record in candidates if record is not None and config.is_complete(record)), None)


def _checkpoint_path(checkpoint_dir: Path, config: RunConfig) -> Path:
    """
    :return: ``<checkpoint_dir>/<run key>.zip``; the progress beside it as ``.json`` (d3rlpy: ``.pt`` and ``.d3``);
        ``.rng``: torch's global random state (actor dropout's masks) of checkpoints of earlier versions, whose model
        files did not carry it
    """
    name = "".join(character if character.isalnum() or character in "-_." else "_" for character in config.key)
    return checkpoint_dir / f"{name}.zip"


def restore_global_rng(path: Path) -> None:
    """Restore torch's global random states (CPU and CUDA) saved by earlier versions beside their checkpoints, if
    there is such a file (the model file carries them since: ``IQL.load`` restores them)."""
    if path.exists():
        states = th.load(path)
        th.set_rng_state(states["cpu"])
        if states["cuda"] and th.cuda.is_available():
            th.cuda.set_rng_state_all(states["cuda"])


class GoalTimes(gym.Wrapper):
    """
    Records, for each finished episode of a goal environment (``SUCCESS_KEYS`` in its info), the first step at the
    goal (None if never) and the fraction of the steps from then on spent at the goal: why a run fails (never
    reaches the goal) or scores low (reaches it, then drifts away).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.episodes: list[dict[str, Any]] = []
        self._steps, self._first_success, self._steps_at_goal = 0, None, 0

    def reset(self, **kwargs: Any) -> Any:
        self._steps, self._first_success, self._steps_at_goal = 0, None, 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        if any(info.get(key, False) for key in SUCCESS_KEYS):
            self._steps_at_goal += 1
            if self._first_success is None:
                self._first_success = self._steps
        if terminated or truncated:
            after = self._steps - self._first_success + 1 if self._first_success is not None else 0
            self.episodes.append(
                {
                    "first_success_step": self._first_success,
                    "fraction_at_goal_after": self._steps_at_goal / after if after else 0.0,
                }
            )
        return observation, reward, terminated, truncated, info


def evaluate_point(model: Any, dataset: minari.MinariDataset, config: RunConfig, n_updates: int) -> dict:
    """
    Evaluate ``model`` (an SB3 model or ``peers.D3rlpyPredictor``) on the dataset's evaluation environment, reset
    with seed ``EVAL_SEED_OFFSET + seed`` before the episodes (which start at the resets after it: the protocol of
    every stored run).

    :return: a curve point: updates, normalized score, returns, and for sparse mazes the success rate, the mean
        first step at the goal (over the episodes that reach it) and the mean fraction of time at the goal after
    """
    env = GoalTimes(Monitor(dataset.recover_environment(eval_env=True)))
    env.reset(seed=EVAL_SEED_OFFSET + config.seed)
    result = evaluate(model, env, n_eval_episodes=config.eval_episodes)
    env.close()
    point = {
        "updates": n_updates,
        "normalized_score": float(normalized_score(dataset, result.mean_return)),
        "mean_return": result.mean_return,
        "std_return": result.std_return,
        "episode_returns": [round(float(value), 4) for value in result.episode_returns],
    }
    if config.has_success:
        firsts = [episode["first_success_step"] for episode in env.episodes[: config.eval_episodes]]
        reached = [first for first in firsts if first is not None]
        point["success_rate"] = result.success_rate
        point["first_success_step"] = float(np.mean(reached)) if reached else None
        point["fraction_at_goal_after"] = float(
            np.mean([episode["fraction_at_goal_after"] for episode in env.episodes[: config.eval_episodes]])
        )
    return point


def _print_point(point: dict, updates_per_s: float) -> None:
    success = (
        f", success {point['success_rate']:.2f}, at goal {point['fraction_at_goal_after']:.2f}"
        if "success_rate" in point
        else ""
    )
    print(
        f"  {point['updates']:>7} updates: normalized score {point['normalized_score']:6.1f} "
        f"(return {point['mean_return']:.1f} ± {point['std_return']:.1f}{success}), {updates_per_s:.0f} updates/s",
        flush=True,
    )


def run(
    config: RunConfig,
    dataset: minari.MinariDataset,
    checkpoint_dir: Path,
    save_dir: Path | None = None,
    device: str = "cpu",
    compile_update: bool = False,
) -> dict:
    """
    Train one model for ``config.updates`` offline updates, evaluating every ``config.eval_every`` updates.

    :param save_dir: where to save the final model (``<run key>.zip``, without replay buffer); None: not saved
    :param device: where to train (``"cpu"`` or ``"cuda"``)
    :param compile_update: sb3-iql runs: ``IQL(compile_update=True)`` (the same math, compiled)
    :return: the run record (``run_record``)
    """
    if config.base_method in D3RLPY_METHODS:
        return run_record(config, train_d3rlpy(config, dataset, checkpoint_dir, save_dir, device))
    return run_record(config, train_iql(config, dataset, checkpoint_dir, save_dir, device, compile_update))


def run_record(config: RunConfig, progress: dict) -> dict:
    """
    :return: the record of a finished run: config, curve (updates, normalized score, mean and std return, every
        episode's return, success diagnostics for sparse mazes), timings
    """
    scores = [point["normalized_score"] for point in progress["curve"]]
    return {
        "config": dataclasses.asdict(config),
        "hyperparameters": config.hyperparameters(),
        "curve": progress["curve"],
        "final": scores[-1],
        "best": max(scores),
        "final_success": progress["curve"][-1].get("success_rate"),
        "code_version": CODE_VERSION,
        "peer_version": progress.get("peer_version"),
        "trained_together": progress.get("trained_together", 1),
        "compiled": progress.get("compiled", False),
        "train_s": progress["train_s"],
        "eval_s": progress["eval_s"],
        "updates_per_s": config.updates / max(progress["train_s"], 1e-9),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def iql_model(
    config: RunConfig, dataset: minari.MinariDataset, checkpoint_dir: Path, device: str, compile_update: bool = False
) -> tuple[IQL, dict]:
    """
    :param compile_update: train with ``IQL(compile_update=True)`` (else ``False``: eager, as the runs before it)
    :return: the model of an ``sb3_iql`` run and its progress dict (curve, train_s, eval_s, compiled), resumed from
        its checkpoint if there is one: the model saved with ``model.save`` after each evaluation (the replay buffer
        is the dataset, added again) and the progress as JSON; a resumed run reaches the same parameters as an
        uninterrupted one
    """
    checkpoint = _checkpoint_path(checkpoint_dir, config)
    progress_file = checkpoint.with_suffix(".json")
    if checkpoint.exists() and progress_file.exists():
        model = IQL.load(checkpoint, device=device)
        if isinstance(model.replay_buffer, HerReplayBuffer):  # its reward rule comes from the environment
            model.replay_buffer.set_env(dataset.recover_environment(eval_env=True))
        model.reload_offline_dataset()  # relabelled as the run's model was (relabel_eval_goal)
        restore_global_rng(checkpoint.with_suffix(".rng"))  # after loading, which draws initial weights
        progress = json.loads(progress_file.read_text())
        check_resumable(progress, config, checkpoint)
        print(f"  resumed at {model.num_timesteps} updates", flush=True)
        if model.num_timesteps > (progress["curve"][-1]["updates"] if progress["curve"] else 0):
            # killed between saving the model and its progress: the evaluation of this point is written again, the
            # random state kept as it was saved (after the evaluation that the uninterrupted run made)
            state = th.get_rng_state()
            evaluate_and_checkpoint(model, config, dataset, progress, checkpoint_dir)
            th.set_rng_state(state)
    else:
        model = IQL(
            preset_arguments(config.dataset_id)["policy"],  # CnnPolicy for pixels; Dict observations: MultiInputPolicy
            env=None,
            offline_dataset=dataset,
            offline_steps=config.updates,
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
            **_iql_arguments(config.hyperparameters(), config.net_arch),
        )
        progress = {"curve": [], "train_s": 0.0, "eval_s": 0.0, "hyperparameters": config.hyperparameters()}
    # The evaluation interval is below "auto"'s compilation threshold: eager unless asked. Asked on CUDA: "auto",
    # which captures the update in a CUDA graph for each interval (6x the compiled update alone on an H200).
    model.compile_update = ("auto" if model.device.type == "cuda" else True) if compile_update else False
    progress["compiled"] = progress.get("compiled", False) or compile_update
    model.set_logger(Logger(folder=None, output_formats=[]))  # no per-call temporary log folders
    return model, progress


def check_resumable(progress: dict, config: RunConfig, checkpoint: Path) -> None:
    """
    :raises SystemExit: the checkpoint's run was started with other hyperparameters than ``config`` has now (a
        method's settings changed since): resumed, it would end as a mix of both under the new ones' record
    """
    started = progress.get("hyperparameters")  # checkpoints of earlier versions did not keep them
    if started is not None and not config.trains(started):
        raise SystemExit(
            f"The checkpoint {checkpoint} of {config.key} was started with {started}, not {config.hyperparameters()} "
            "(its method changed since): delete its files to train the run again"
        )


def evaluate_and_checkpoint(
    model: IQL, config: RunConfig, dataset: minari.MinariDataset, progress: dict, checkpoint_dir: Path
) -> None:
    """Evaluate the model at its number of updates, add the point to the progress, save both."""
    start = time.perf_counter()
    point = evaluate_point(model, dataset, config, model.num_timesteps)
    progress["eval_s"] += time.perf_counter() - start
    progress["curve"].append(point)
    _print_point(point, model.num_timesteps / max(progress["train_s"], 1e-9))
    checkpoint = _checkpoint_path(checkpoint_dir, config)
    checkpoint.with_suffix(".rng").unlink(missing_ok=True)  # an earlier version's: the model file carries it now
    model.save(checkpoint)  # with torch's global random state (actor dropout's masks)
    write_json(checkpoint.with_suffix(".json"), progress)  # last: a checkpoint is complete once its progress is


def train_alone(
    model: IQL, config: RunConfig, dataset: minari.MinariDataset, progress: dict, checkpoint_dir: Path, until: int
) -> None:
    """Train ``model`` up to ``until`` updates, evaluating and checkpointing at every multiple of ``eval_every``."""
    while model.num_timesteps < until:  # offline, num_timesteps counts updates
        n_updates = min(config.eval_every - model.num_timesteps % config.eval_every, until - model.num_timesteps)
        start = time.perf_counter()
        model.learn_offline(n_updates, log_interval=0, reset_num_timesteps=False)
        progress["train_s"] += time.perf_counter() - start
        evaluate_and_checkpoint(model, config, dataset, progress, checkpoint_dir)


def train_iql(
    config: RunConfig,
    dataset: minari.MinariDataset,
    checkpoint_dir: Path,
    save_dir: Path | None,
    device: str = "cpu",
    compile_update: bool = False,
) -> dict:
    """:return: the progress dict of an ``sb3_iql`` run (``iql_model``), trained to ``config.updates``"""
    model, progress = iql_model(config, dataset, checkpoint_dir, device, compile_update)
    train_alone(model, config, dataset, progress, checkpoint_dir, config.updates)
    if save_dir is not None:
        model.save(save_dir / _checkpoint_path(checkpoint_dir, config).name)
    return progress


def train_iql_together(
    configs: list[RunConfig],
    dataset: minari.MinariDataset,
    checkpoint_dir: Path,
    save_dir: Path | None,
    device: str = "cpu",
    compile_update: bool = False,
) -> list[dict]:
    """
    The runs of ``configs`` (one method, several seeds) as one batched computation (``learn_offline_together``:
    each learner reaches the parameters of its own run, to float tolerance), each evaluated and checkpointed as
    ``train_iql`` does. Runs resumed at different points first train alone up to the furthest one.

    :param compile_update: compile the batched update (``learn_offline_together(compile_update=True)``: the same
        math), and the single runs' (``IQL(compile_update=True)``) while they catch up
    :return: the progress dict of each run; ``train_s`` is the shared training time divided by the number of runs
    """
    models, progresses = zip(*(iql_model(config, dataset, checkpoint_dir, device, compile_update) for config in configs))
    furthest = max(model.num_timesteps for model in models)
    for model, config, progress in zip(models, configs, progresses):
        train_alone(model, config, dataset, progress, checkpoint_dir, furthest)
    first = configs[0]
    while models[0].num_timesteps < first.updates:
        n_updates = min(first.eval_every, first.updates - models[0].num_timesteps)
        start = time.perf_counter()
        learn_offline_together(models, n_updates, log_interval=0, reset_num_timesteps=False, compile_update=compile_update)
        share = (time.perf_counter() - start) / len(models)
        for model, config, progress in zip(models, configs, progresses):
            progress["train_s"] += share
            progress["trained_together"] = len(models)
            print(f"  {config.key}", flush=True)
            evaluate_and_checkpoint(model, config, dataset, progress, checkpoint_dir)
    if save_dir is not None:
        for model, config in zip(models, configs):
            model.save(save_dir / _checkpoint_path(checkpoint_dir, config).name)
    return list(progresses)


def _iql_arguments(hyperparameters: dict[str, Any], net_arch: tuple[int, ...]) -> dict[str, Any]:
    """:return: the IQL arguments, ``net_arch`` in the policy's (a buffer class stays named: IQL resolves it)"""
    policy_kwargs = {**hyperparameters.get("policy_kwargs", {}), "net_arch": list(net_arch)}
    return {**hyperparameters, "policy_kwargs": policy_kwargs}


def train_d3rlpy(
    config: RunConfig, dataset: minari.MinariDataset, checkpoint_dir: Path, save_dir: Path | None, device: str = "cpu"
) -> dict:
    """
    :return: the progress dict of a d3rlpy run (``benchmarks/peers.py``), resumed from its checkpoint (networks
        and optimizers; the sampling stream restarts from a seed of its own, so a resumed run is not bit-identical)
    """
    import d3rlpy

    observation_space = dataset.observation_space
    hyperparameters = config.hyperparameters()
    transitions = load_transitions([dataset])
    relabel = hyperparameters.get("relabel_eval_goal", False)
    if relabel:  # the data factors, as IQL(relabel_eval_goal=...) applies them
        transitions = relabel_for_evaluation_goal(transitions, dataset.recover_environment(eval_env=True), relabel)
    mdp_dataset = peers.d3rlpy_dataset(transitions, observation_space, hyperparameters["reward_transform"])
    d3rlpy.seed(config.seed)
    algo = peers.make_d3rlpy_algo(
        config.base_method.removeprefix("d3rlpy-").removesuffix("-cosine"),
        hyperparameters,
        list(config.net_arch),
        config.batch_size,
        device=device,
        actor_lr_decay_steps=config.updates if config.base_method.endswith("-cosine") else None,
    )
    algo.build_with_dataset(mdp_dataset)
    checkpoint = _checkpoint_path(checkpoint_dir, config).with_suffix(".pt")
    progress = {"curve": [], "train_s": 0.0, "eval_s": 0.0, "peer_version": f"d3rlpy {d3rlpy.__version__}"}
    progress["hyperparameters"] = hyperparameters
    if checkpoint.exists():
        progress = peers.load_d3rlpy(checkpoint, algo)
        check_resumable(progress, config, checkpoint)
        d3rlpy.seed(config.seed + 1 + len(progress["curve"]))
        print(f"  resumed at {progress['curve'][-1]['updates']} updates", flush=True)
    done = progress["curve"][-1]["updates"] if progress["curve"] else 0
    predictor = peers.D3rlpyPredictor(algo, observation_space)
    while done < config.updates:
        n_updates = min(config.eval_every, config.updates - done)
        start = time.perf_counter()
        peers.fit_steps(algo, mdp_dataset, n_updates)
        progress["train_s"] += time.perf_counter() - start
        done += n_updates
        start = time.perf_counter()
        point = evaluate_point(predictor, dataset, config, done)
        progress["eval_s"] += time.perf_counter() - start
        progress["curve"].append(point)
        _print_point(point, done / max(progress["train_s"], 1e-9))
        peers.save_d3rlpy(checkpoint, algo, progress)
    if save_dir is not None:
        algo.save(str(_checkpoint_path(save_dir, config).with_suffix(".d3")))
    return progress


# ----------------------------------------------------------------------------------------------- main


def _method_argument(method: str) -> str:
    try:
        parse_method(method)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return method


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=[
            "sb3_iql/pointmaze/medium-stitch-v0",
            "sb3_iql/pointmaze/large-stitch-v0",
            "sb3_iql/pointmaze/medium-v0",
            "sb3_iql/pointmaze/large-v0",
            "sb3_iql/hopper/medium-replay-v0",
        ],
        help="Minari dataset ids (PointMaze ids of this package are generated when missing)",
    )
    parser.add_argument("--updates", type=positive_int, default=30_000, help="offline updates per run (the budget)")
    parser.add_argument("--eval-every", type=positive_int, default=5_000, help="updates between evaluations")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=positive_int, default=20, help="episodes per evaluation")
    parser.add_argument("--net-arch", type=positive_int, nargs="+", default=[256, 256], help="hidden widths of every network")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument(
        "--methods",
        nargs="+",
        type=_method_argument,
        default=list(METHODS),
        help=f"methods: {', '.join(BASE_METHODS)}, or iql-ref+FACTOR[+FACTOR...] with factors {', '.join(FACTORS)}",
    )
    parser.add_argument("--no-report", action="store_true", help="train only; write the report later with --report-only")
    parser.add_argument("--dataset-steps", type=positive_int, default=1_000_000, help="size of generated PointMaze datasets")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of the cache and the report")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("/tmp/sb3iql_scores/checkpoints"), help="checkpoints of unfinished runs"
    )
    parser.add_argument("--save-models", type=Path, default=None, help="folder to save each final model in (default: none)")
    parser.add_argument("--torch-threads", type=positive_int, default=1)
    parser.add_argument(
        "--device", default="cpu", type=_device, help="where to train: cpu or cuda (runs are keyed without it)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train sb3-iql runs with compile_update=True (the same math: ~1.4x the updates/s on CPU after ~30 s of "
        "compilation per run; on CUDA 'auto': the update in a CUDA graph; runs are keyed without it)",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the cache, train nothing")
    parser.add_argument(
        "--bootstrap-reps",
        type=int,
        default=score_report.BOOTSTRAP_REPS,
        help="bootstrap resamples of each confidence interval (fewer: a quicker, rougher report)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="train the seeds of each sb3-iql method as one batched computation (sb3_iql.iql.multi_seed: the same "
        "parameters as separate runs; faster on a GPU, not on a CPU); d3rlpy runs stay one by one",
    )
    args = parser.parse_args()
    for dataset_id in args.datasets:
        try:
            check_dataset_id(dataset_id)
        except ValueError as error:
            parser.error(str(error))
    if args.report_only and not (args.out / RUNS_FILE).exists():
        parser.error(f"--report-only: no runs in {args.out / RUNS_FILE} (is --out right?)")
    return args


def _device(text: str) -> str:
    """An argparse type: a torch device name."""
    try:
        th.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


@contextlib.contextmanager
def runs_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.scores_runs.lock`` (``fcntl.flock``): invocations sharing ``--out`` read, merge and write the
    cache one at a time, so that none writes over runs another one added."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".scores_runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_runs(out: Path, checkpoint_dir: Path, configs: list[RunConfig], records: list[dict], n_episodes: int) -> None:
    """Add finished runs to the cache (read again under the lock: another invocation may have added runs
    meanwhile), then delete their checkpoints: a kill in between keeps the finished checkpoints, not the work."""
    with runs_lock(out):
        runs = load_runs(out)
        for config, record in zip(configs, records):
            runs[config.key] = {**record, "dataset_episodes": n_episodes}
        write_json(out / RUNS_FILE, {"runs": runs})
    for config in configs:
        for suffix in (".zip", ".json", ".rng", ".pt", ".d3"):
            _checkpoint_path(checkpoint_dir, config).with_suffix(suffix).unlink(missing_ok=True)


def main() -> None:
    args = parse_args()
    th.set_num_threads(args.torch_threads)
    score_report.BOOTSTRAP_REPS = args.bootstrap_reps
    if args.report_only:
        write_report(args.out, args.datasets, args.torch_threads, trains_the_preset, canonical_hyperparameters)
        return
    start = time.perf_counter()
    # each one checked before any training (a dataset that cannot give scores stopped the run after others trained)
    datasets: dict[str, minari.MinariDataset | None] = {
        dataset_id: get_dataset(dataset_id, args.dataset_steps) for dataset_id in args.datasets
    }
    # Seed by seed, so that every dataset has results early; with --together, all seeds of a method at once.
    seed_groups = [list(args.seeds)] if args.together else [[seed] for seed in args.seeds]
    for seeds in seed_groups:
        for dataset_id in args.datasets:
            if datasets.get(dataset_id) is None:  # missing datasets are looked for again at the next seed
                datasets[dataset_id] = get_dataset(dataset_id, args.dataset_steps)
            dataset = datasets[dataset_id]
            if dataset is None:
                print(f"Skipping {dataset_id} for seeds {seeds}: not in the local Minari datasets (yet)", flush=True)
                continue
            for method in args.methods:
                is_peer = parse_method(method)[0] in D3RLPY_METHODS
                if is_peer and is_image_space(dataset.observation_space):
                    print(f"Skipping {method} on {dataset_id}: the d3rlpy runs here take vector observations", flush=True)
                    continue
                configs = [
                    RunConfig(
                        dataset_id,
                        dataset.total_steps,
                        method,
                        seed,
                        args.updates,
                        args.eval_every,
                        args.eval_episodes,
                        tuple(args.net_arch),
                        args.batch_size,
                    )
                    for seed in seeds
                ]
                with runs_lock(args.out):
                    runs = load_runs(args.out)
                    if set_aside_earlier_presets(runs, configs, dataset):
                        write_json(args.out / RUNS_FILE, {"runs": runs})
                check_cached_runs(runs, configs, dataset)
                configs = [config for config in configs if cached_run(runs, config) is None]
                if not configs:
                    continue
                print("\n".join(config.key for config in configs), flush=True)
                if len(configs) > 1 and not is_peer:
                    progresses = train_iql_together(
                        configs, dataset, args.checkpoint_dir, args.save_models, args.device, args.compile
                    )
                    records = [run_record(config, progress) for config, progress in zip(configs, progresses)]
                else:
                    records = [
                        run(config, dataset, args.checkpoint_dir, args.save_models, args.device, args.compile)
                        for config in configs
                    ]
                record_runs(args.out, args.checkpoint_dir, configs, records, dataset.total_episodes)
                if not args.no_report:
                    write_report(args.out, args.datasets, args.torch_threads, trains_the_preset, canonical_hyperparameters)
    if not args.no_report:
        write_report(args.out, args.datasets, args.torch_threads, trains_the_preset, canonical_hyperparameters)
    report = "" if args.no_report else f"; report in {args.out / (REPORT_STEM + '.md')}"
    print(f"Done in {(time.perf_counter() - start) / 60:.1f} min{report}", flush=True)


if __name__ == "__main__":
    main()
