"""
Normalized scores of IQL against behaviour cloning (BC) on local Minari datasets, over training.

For each dataset, each seed and each method, a fixed budget of offline updates is run in chunks of
``--eval-every`` updates; after each chunk the deterministic policy is evaluated on the dataset's evaluation
environment and scored with the dataset's reference returns (``sb3_iql.evaluation.evaluate``, in percent).

- ``iql``: the paper's preset for the dataset's domain: mazes (ids containing ``maze``) as AntMaze
  (expectile 0.9, beta 10, reward r - 1), everything else as MuJoCo locomotion (expectile 0.7, beta 3,
  reward r / return range * 1000). Actor lr with cosine decay over the budget, as in the paper.
- ``bc``: the same model, networks, data, batches and critic training, with ``beta=0``: every AWR weight is
  exp(0) = 1, so the actor's loss is the plain negative log-likelihood of the dataset actions.

Every run is cached: finished runs in ``<out>/scores_runs.json``, unfinished ones as checkpoints (networks,
optimizers, sampling generator, curve so far) in ``--checkpoint-dir``, so a killed invocation continues where
it stopped when started again with the same options. Runs are ordered seed by seed, so that every dataset has
results early. The report (``<out>/scores.md``, ``scores.png``, ``scores.json``, ``scores.csv``) covers every
cached run (datasets of ``--datasets`` first), grouped by dataset and setting; text between
``<!-- BEGIN NOTES -->`` and ``<!-- END NOTES -->`` in an existing ``scores.md`` is kept.

PointMaze ids of this package (``sb3_iql/pointmaze/...``) are generated on first use with ``--dataset-steps``
steps; other ids must exist in ``$MINARI_DATASETS_PATH`` (e.g. ``sb3_iql/hopper/medium-replay-v0`` from
``benchmarks/make_locomotion_datasets.py``) and are skipped with a message otherwise.

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari nice -n 10 python benchmarks/scores.py \\
        --datasets sb3_iql/pointmaze/medium-stitch-v0 sb3_iql/pointmaze/large-stitch-v0 \\
        --updates 30000 --eval-every 5000 --seeds 0 1 2 --eval-episodes 20 --net-arch 128 128
    python benchmarks/scores.py --report-only   # rewrite the report from the cache

Smoke test (seconds)::

    python benchmarks/scores.py --datasets sb3_iql/pointmaze/umaze-stitch-v0 --dataset-steps 5000 --updates 20 \\
        --eval-every 10 --seeds 0 --eval-episodes 1 --net-arch 16 --out /tmp/scores --checkpoint-dir /tmp/scores/ckpt
"""

import argparse
import csv
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import minari
import numpy as np
import peers  # benchmarks/peers.py
import torch as th
from hardware import cpu_model  # benchmarks/hardware.py
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor

from sb3_iql.data.minari_loader import DatasetNotFoundError, load_dataset, load_transitions
from sb3_iql.datasets import ensure_dataset, parse_pointmaze_dataset_id
from sb3_iql.evaluation import evaluate, normalized_score
from sb3_iql.iql import IQL

matplotlib.use("Agg")
import matplotlib.pyplot as plt

#: The paper's settings per domain (IQL.md, "Per-domain settings"); BC is the same with beta = 0.
DOMAIN_PRESETS: dict[str, dict[str, Any]] = {
    "maze": {"expectile": 0.9, "beta": 10.0, "reward_transform": "antmaze"},
    "locomotion": {"expectile": 0.7, "beta": 3.0, "reward_transform": "locomotion"},
}
#: The reference implementation's choices (IQL.md), spelled out: ``iql-ref`` means them whatever the defaults are.
REFERENCE_SETTINGS: dict[str, Any] = {
    "update_order": "sequential",
    "policy_kwargs": {"log_std_parametrization": "clip", "log_std_init": 0.0, "weight_init": "orthogonal"},
}
#: Factors of the study, each added to the reference with ``+name``: d3rlpy's three choices, then ours beyond them.
FACTORS: dict[str, dict[str, Any]] = {
    "order": {"update_order": "joint"},  # Q target with V(s') from before V's step
    "logstd": {"policy_kwargs": {"log_std_parametrization": "sigmoid", "log_std_init": -1.5}},
    "init": {"policy_kwargs": {"weight_init": "pytorch"}},
    "ln": {"policy_kwargs": {"critic_layer_norm": True}},
    "dropout": {"dropout": 0.1},
}
#: ``iql``: the package's defaults; ``bc``: the reference with beta = 0; ``iql-ref[+factor...]``: the reference with
#: factors; ``d3rlpy-iql`` and ``d3rlpy-bc``: the peer (``benchmarks/peers.py``).
BASE_METHODS = ("iql", "bc", "iql-ref", "d3rlpy-iql", "d3rlpy-bc")
METHODS = ("iql", "bc")
D3RLPY_METHODS = ("d3rlpy-iql", "d3rlpy-bc")


def parse_method(method: str) -> tuple[str, list[str]]:
    """:return: the base method and its factors (``"iql-ref+order+init"`` -> ``("iql-ref", ["order", "init"])``)"""
    base, *factors = method.split("+")
    if base not in BASE_METHODS or (factors and base != "iql-ref") or any(f not in FACTORS for f in factors):
        raise ValueError(
            f"Unknown method {method!r}: use one of {BASE_METHODS}, or iql-ref+FACTOR[+FACTOR...] with factors {list(FACTORS)}"
        )
    return base, factors


def method_settings(method: str) -> dict[str, Any]:
    """:return: the IQL constructor arguments of a method beyond the domain preset (none for d3rlpy and ``iql``)"""
    base, factors = parse_method(method)
    if base in ("iql", *D3RLPY_METHODS):
        return {}
    settings = {"update_order": REFERENCE_SETTINGS["update_order"], "policy_kwargs": dict(REFERENCE_SETTINGS["policy_kwargs"])}
    if base == "bc":
        settings["beta"] = 0.0
    for factor in factors:
        for key, value in FACTORS[factor].items():
            if key == "policy_kwargs":
                settings["policy_kwargs"].update(value)
            else:
                settings[key] = value
    return settings


METHOD_LABELS = {"iql": "IQL", "bc": "BC"}
METHOD_COLORS = {"iql": "tab:blue", "bc": "tab:orange"}
#: The evaluation environment of run seed s is first reset with seed EVAL_SEED_OFFSET + s (same for both methods).
EVAL_SEED_OFFSET = 10_000
NOTES_BEGIN, NOTES_END = "<!-- BEGIN NOTES -->", "<!-- END NOTES -->"
RUNS_FILE = "scores_runs.json"
REPORT_STEM = "scores"


def code_version() -> str:
    """:return: a short hash of the ``sb3_iql`` sources imported by this process (runs of different code differ)."""
    import sb3_iql

    digest = hashlib.sha1()
    for path in sorted(Path(sb3_iql.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


#: Computed at import: the code a run trained with, even if the files change while this process runs.
CODE_VERSION = code_version()


def domain_of(dataset_id: str) -> str:
    """:return: ``"maze"`` for maze datasets (``.../pointmaze/...``, ``D4RL/antmaze/...``), else ``"locomotion"``."""
    parts = dataset_id.split("/")
    return "maze" if any("maze" in part for part in parts[:-1]) else "locomotion"


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
        return domain_of(self.dataset_id) == "maze" and "dense" not in self.dataset_id

    def is_complete(self, record: dict) -> bool:
        """:return: whether a cached record has every metric this version records (success rates of mazes)."""
        return not self.has_success or all("success_rate" in point for point in record["curve"])

    def hyperparameters(self) -> dict[str, Any]:
        """:return: the IQL constructor arguments of the method (domain preset, then ``method_settings``)."""
        preset = dict(DOMAIN_PRESETS[domain_of(self.dataset_id)])
        if self.method == "d3rlpy-bc":
            preset["beta"] = 0.0
        return {**preset, **method_settings(self.method)}


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so that a killed run never leaves a truncated cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def load_runs(out: Path) -> dict[str, dict]:
    path = out / RUNS_FILE
    return json.loads(path.read_text())["runs"] if path.exists() else {}


def get_dataset(dataset_id: str, n_steps: int) -> minari.MinariDataset | None:
    """:return: the dataset (PointMaze ids of this package are generated if missing), or None if not local."""
    try:
        parse_pointmaze_dataset_id(dataset_id)
    except ValueError:
        try:
            return load_dataset(dataset_id)
        except DatasetNotFoundError:
            return None
    return ensure_dataset(dataset_id, n_steps=n_steps)


def _optimizers(model: IQL) -> dict[str, th.optim.Optimizer]:
    return {"actor": model.actor.optimizer, "critic": model.critic.optimizer, "value": model.value_net.optimizer}


def _save_checkpoint(path: Path, model: IQL, progress: dict) -> None:
    state = {
        "policy": model.policy.state_dict(),
        "optimizers": {name: optimizer.state_dict() for name, optimizer in _optimizers(model).items()},
        "generator": model.sampling_generator.get_state(),
        "n_offline_updates": model._n_offline_updates,
        "n_updates": model._n_updates,
        "progress": progress,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    th.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model: IQL) -> dict:
    state = th.load(path, weights_only=False)
    model.policy.load_state_dict(state["policy"])
    for name, optimizer in _optimizers(model).items():
        optimizer.load_state_dict(state["optimizers"][name])
    model.sampling_generator.set_state(state["generator"])
    model._n_offline_updates = state["n_offline_updates"]
    model._n_updates = state["n_updates"]
    return state["progress"]


def _checkpoint_path(checkpoint_dir: Path, config: RunConfig) -> Path:
    name = "".join(character if character.isalnum() or character in "-_." else "_" for character in config.key)
    return checkpoint_dir / f"{name}.pt"


class GoalTimes(gym.Wrapper):
    """
    Records, for each finished episode of a goal environment (``info["success"]``), the first step at the goal
    (None if never) and the fraction of the steps from then on spent at the goal: why a run fails (never reaches
    the goal) or scores low (reaches it, then drifts away).
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
        if info.get("success", False):
            self._steps_at_goal += 1
            if self._first_success is None:
                self._first_success = self._steps
        if terminated or truncated:
            after = self._steps - self._first_success + 1 if self._first_success is not None else 0
            self.episodes.append(
                {"first_success_step": self._first_success, "fraction_at_goal_after": self._steps_at_goal / after if after else 0.0}
            )
        return observation, reward, terminated, truncated, info


def evaluate_point(model: Any, dataset: minari.MinariDataset, config: RunConfig, n_updates: int) -> dict:
    """
    Evaluate ``model`` (an SB3 model or ``peers.D3rlpyPredictor``) on the dataset's evaluation environment,
    first reset with seed ``EVAL_SEED_OFFSET + seed``.

    :return: a curve point: updates, normalized score, returns, and for sparse mazes the success rate, the mean
        first step at the goal (over the episodes that reach it) and the mean fraction of time at the goal after
    """
    env = GoalTimes(Monitor(dataset.recover_environment(eval_env=True)))
    result = evaluate(model, env, n_eval_episodes=config.eval_episodes, seed=EVAL_SEED_OFFSET + config.seed)
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
        point["success_rate"] = float(np.mean(result.episode_returns > 0))
        point["first_success_step"] = float(np.mean(reached)) if reached else None
        point["fraction_at_goal_after"] = float(
            np.mean([episode["fraction_at_goal_after"] for episode in env.episodes[: config.eval_episodes]])
        )
    return point


def _print_point(point: dict, updates_per_s: float) -> None:
    success = f", success {point['success_rate']:.2f}, at goal {point['fraction_at_goal_after']:.2f}" if "success_rate" in point else ""
    print(
        f"  {point['updates']:>7} updates: normalized score {point['normalized_score']:6.1f} "
        f"(return {point['mean_return']:.1f} ± {point['std_return']:.1f}{success}), {updates_per_s:.0f} updates/s",
        flush=True,
    )


def run(config: RunConfig, dataset: minari.MinariDataset, checkpoint_dir: Path, save_dir: Path | None = None) -> dict:
    """
    Train one model for ``config.updates`` offline updates, evaluating every ``config.eval_every`` updates.

    :param save_dir: where to save the final model (``<run key>.zip``, without replay buffer); None: not saved
    :return: the run record: config, curve (updates, normalized score, mean and std return, every episode's
        return, success diagnostics for sparse mazes), timings
    """
    train = train_d3rlpy if config.method in D3RLPY_METHODS else train_iql
    progress = train(config, dataset, checkpoint_dir, save_dir)
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
        "train_s": progress["train_s"],
        "eval_s": progress["eval_s"],
        "updates_per_s": config.updates / max(progress["train_s"], 1e-9),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def train_iql(config: RunConfig, dataset: minari.MinariDataset, checkpoint_dir: Path, save_dir: Path | None) -> dict:
    """:return: the progress dict (curve, train_s, eval_s) of an ``sb3_iql`` run, resumed from its checkpoint"""
    model = IQL(
        "MlpPolicy",  # IQL switches to MultiInputPolicy (same MLPs) for Dict observations
        env=None,
        offline_dataset=dataset,
        offline_steps=config.updates,
        batch_size=config.batch_size,
        seed=config.seed,
        device="cpu",
        **_with_net_arch(config.hyperparameters(), config.net_arch),
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # no per-call temporary log folders
    checkpoint = _checkpoint_path(checkpoint_dir, config)
    progress = {"curve": [], "train_s": 0.0, "eval_s": 0.0}
    if checkpoint.exists():
        progress = _load_checkpoint(checkpoint, model)
        print(f"  resumed at {model._n_offline_updates} updates", flush=True)
    while model._n_offline_updates < config.updates:
        n_updates = min(config.eval_every, config.updates - model._n_offline_updates)
        start = time.perf_counter()
        model.learn_offline(n_updates, log_interval=0, reset_num_timesteps=False)
        progress["train_s"] += time.perf_counter() - start
        start = time.perf_counter()
        point = evaluate_point(model, dataset, config, model._n_offline_updates)
        progress["eval_s"] += time.perf_counter() - start
        progress["curve"].append(point)
        _print_point(point, model._n_offline_updates / max(progress["train_s"], 1e-9))
        _save_checkpoint(checkpoint, model, progress)
    if save_dir is not None:
        model.save(save_dir / _checkpoint_path(save_dir, config).with_suffix(".zip").name)
    return progress


def _with_net_arch(hyperparameters: dict[str, Any], net_arch: tuple[int, ...]) -> dict[str, Any]:
    policy_kwargs = {**hyperparameters.get("policy_kwargs", {}), "net_arch": list(net_arch)}
    return {**hyperparameters, "policy_kwargs": policy_kwargs}


def train_d3rlpy(config: RunConfig, dataset: minari.MinariDataset, checkpoint_dir: Path, save_dir: Path | None) -> dict:
    """
    :return: the progress dict of a d3rlpy run (``benchmarks/peers.py``), resumed from its checkpoint (networks
        and optimizers; the sampling stream restarts from a seed of its own, so a resumed run is not bit-identical)
    """
    import d3rlpy
    from d3rlpy.logging import NoopAdapterFactory

    observation_space = dataset.observation_space
    hyperparameters = config.hyperparameters()
    mdp_dataset = peers.d3rlpy_dataset(load_transitions([dataset]), observation_space, hyperparameters["reward_transform"])
    d3rlpy.seed(config.seed)
    algo = peers.make_d3rlpy_algo(config.method.removeprefix("d3rlpy-"), hyperparameters, list(config.net_arch), config.batch_size)
    algo.build_with_dataset(mdp_dataset)
    checkpoint = _checkpoint_path(checkpoint_dir, config)
    progress = {"curve": [], "train_s": 0.0, "eval_s": 0.0, "peer_version": f"d3rlpy {d3rlpy.__version__}"}
    if checkpoint.exists():
        progress = peers.load_d3rlpy(checkpoint, algo)
        d3rlpy.seed(config.seed + 1 + len(progress["curve"]))
        print(f"  resumed at {progress['curve'][-1]['updates']} updates", flush=True)
    done = progress["curve"][-1]["updates"] if progress["curve"] else 0
    predictor = peers.D3rlpyPredictor(algo, observation_space)
    while done < config.updates:
        n_updates = min(config.eval_every, config.updates - done)
        start = time.perf_counter()
        for _ in algo.fitter(
            mdp_dataset,
            n_steps=n_updates,
            n_steps_per_epoch=n_updates,
            logger_adapter=NoopAdapterFactory(),
            show_progress=False,
            save_interval=n_updates + 1,
        ):
            pass
        progress["train_s"] += time.perf_counter() - start
        done += n_updates
        start = time.perf_counter()
        point = evaluate_point(predictor, dataset, config, done)
        progress["eval_s"] += time.perf_counter() - start
        progress["curve"].append(point)
        _print_point(point, done / max(progress["train_s"], 1e-9))
        peers.save_d3rlpy(checkpoint, algo, progress)
    if save_dir is not None:
        algo.save(str(save_dir / _checkpoint_path(save_dir, config).with_suffix(".d3").name))
    return progress


# ----------------------------------------------------------------------------------------------- report


def _config_of(record: dict) -> RunConfig:
    values = dict(record["config"])
    values["net_arch"] = tuple(values["net_arch"])
    return RunConfig(**values)


def group_runs(runs: dict[str, dict], dataset_ids: list[str] | None) -> dict[tuple, dict[str, list[dict]]]:
    """:return: setting -> method -> records sorted by seed, for every cached run; ``dataset_ids`` first, in order."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in runs.values():
        config = _config_of(record)
        groups[config.setting][config.method].append(record)
    order = {dataset_id: index for index, dataset_id in enumerate(dataset_ids or [])}

    def sort_key(setting: tuple) -> tuple:
        return (order.get(setting[0], len(order)), setting[0], setting[2], setting[5])

    return {
        setting: {method: sorted(records, key=lambda r: r["config"]["seed"]) for method, records in groups[setting].items()}
        for setting in sorted(groups, key=sort_key)
    }


def _mean_std(values: list[float], decimals: int = 1) -> str:
    return f"{np.mean(values):.{decimals}f} ± {np.std(values):.{decimals}f}" if values else "n/a"


def _final_cells(bc: list[float], iql: list[float]) -> tuple[str, str]:
    """:return: the BC and IQL final-score cells, the higher mean in bold (neither when one is missing)."""
    cells = [_mean_std(bc), _mean_std(iql)]
    if bc and iql:
        better = int(np.mean(iql) > np.mean(bc))
        cells[better] = f"**{cells[better]}**"
    return cells[0], cells[1]


def _paired_difference(iql: list[dict], bc: list[dict], field: str) -> tuple[str, list[int]]:
    """:return: mean ± std over seeds of IQL - BC (seeds present in both), and those seeds."""
    bc_by_seed = {record["config"]["seed"]: record[field] for record in bc}
    seeds = [record["config"]["seed"] for record in iql if record["config"]["seed"] in bc_by_seed]
    differences = [
        record[field] - bc_by_seed[record["config"]["seed"]] for record in iql if record["config"]["seed"] in bc_by_seed
    ]
    if not differences:
        return "n/a", []
    wins = sum(difference > 0 for difference in differences)
    return f"{np.mean(differences):+.1f} ± {np.std(differences):.1f} ({wins}/{len(differences)} seeds)", seeds


def summary_rows(groups: dict[tuple, dict[str, list[dict]]]) -> list[dict]:
    rows = []
    for setting, methods in groups.items():
        dataset_id, dataset_steps, updates, eval_every, eval_episodes, net_arch, batch_size = setting
        iql, bc = methods.get("iql", []), methods.get("bc", [])
        row = {
            "dataset": dataset_id,
            "dataset_steps": dataset_steps,
            "updates": updates,
            "eval_every": eval_every,
            "eval_episodes": eval_episodes,
            "net_arch": list(net_arch),
            "batch_size": batch_size,
            "preset": DOMAIN_PRESETS[domain_of(dataset_id)],
        }
        for method, records in (("iql", iql), ("bc", bc)):
            row[method] = {
                "seeds": [record["config"]["seed"] for record in records],
                "final": [record["final"] for record in records],
                "best": [record["best"] for record in records],
                # percent of the final evaluation's episodes that reached the goal (sparse mazes; None elsewhere)
                "final_success": [
                    100 * record["final_success"] for record in records if record.get("final_success") is not None
                ],
                "updates_per_s": [record["updates_per_s"] for record in records],
                "code_versions": sorted({record["code_version"] for record in records if "code_version" in record}),
                "wall_s": [record["train_s"] + record["eval_s"] for record in records],
            }
        row["iql_minus_bc_final"], _ = _paired_difference(iql, bc, "final")
        row["iql_minus_bc_best"], _ = _paired_difference(iql, bc, "best")
        rows.append(row)
    return rows


def _hardware() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": th.__version__,
        "python": platform.python_version(),
    }


def _short(dataset_id: str) -> str:
    return dataset_id.removeprefix("sb3_iql/")


def _net(net_arch: list[int] | tuple[int, ...]) -> str:
    return "x".join(map(str, net_arch))


def write_markdown(path: Path, rows: list[dict], torch_threads: int) -> None:
    hardware = _hardware()
    code_versions = {version for row in rows for method in METHODS for version in row[method]["code_versions"]}
    total_wall = sum(sum(row[method]["wall_s"]) for row in rows for method in METHODS)
    lines = [
        "# IQL against behaviour cloning: normalized scores",
        "",
        "Generated by `benchmarks/scores.py` (do not edit by hand, except between the NOTES markers).",
        "Normalized score in percent: 0 = random actions, 100 = the dataset's reference (expert) return.",
        "Mean ± std over seeds. **Final** = the evaluation after the last update (the number to compare; the higher one",
        "in bold).",
        "**Best** = the best evaluation over training, per seed, then averaged: optimistic, for reference only.",
        "IQL - BC = per-seed paired difference (same seed: same initial networks, same batches, same evaluation starts).",
        "IQL uses the paper's preset of the domain (mazes: AntMaze's expectile 0.9, beta 10, r - 1; locomotion: expectile",
        "0.7, beta 3, r / return range x 1000), Adam 3e-4, actor lr cosine-decayed to 0 over the budget, batch size below.",
        "BC is the same model with beta = 0 (every AWR weight is 1: plain maximum likelihood of the dataset actions).",
        "",
        "Success = percent of the final evaluation's episodes that reach the goal at all (sparse mazes only; the normalized",
        "score instead counts the steps spent within 0.45 m of the goal, so it also needs the policy to stop there).",
        "",
        "| dataset | data steps | updates | net | eval eps | seeds | BC final | IQL final | IQL - BC final (paired) "
        "| BC best | IQL best | BC success | IQL success | updates/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        iql, bc = row["iql"], row["bc"]
        seeds = sorted(set(iql["seeds"]) | set(bc["seeds"]))
        speed = np.mean(iql["updates_per_s"] + bc["updates_per_s"]) if iql["updates_per_s"] + bc["updates_per_s"] else 0
        seed_text = (
            f"{len(iql['seeds'])} IQL / {len(bc['seeds'])} BC" if len(iql["seeds"]) != len(bc["seeds"]) else str(len(seeds))
        )
        bc_final, iql_final = _final_cells(bc["final"], iql["final"])
        lines.append(
            f"| {_short(row['dataset'])} | {row['dataset_steps']:,} | {row['updates']:,} | {_net(row['net_arch'])} "
            f"| {row['eval_episodes']} | {seed_text} | {bc_final} | {iql_final} "
            f"| {row['iql_minus_bc_final']} | {_mean_std(bc['best'])} | {_mean_std(iql['best'])} "
            f"| {_mean_std(bc['final_success'], 0)} | {_mean_std(iql['final_success'], 0)} | {speed:.0f} |"
        )
    lines += [
        "",
        f"Evaluation every `eval_every` updates (see `{REPORT_STEM}.csv`), deterministic policy (mean action);",
        "the evaluation environment of seed s starts from reset seed 10000 + s for both methods.",
        "",
        "![normalized score against updates](scores.png)",
        "",
        "![success rate against updates](scores_success.png)",
        "",
        "## Budget and hardware",
        "",
        f"- CPU: {hardware['cpu']}, {hardware['logical_cores']} logical cores, **shared with other jobs** "
        f"(updates/s above are as measured under that load); torch {hardware['torch']} with {torch_threads} thread(s), "
        f"one training process at a time, Python {hardware['python']}.",
        f"- Code: hash of the `sb3_iql` sources each run trained with (`code_version` in `{RUNS_FILE}`): "
        f"{', '.join(sorted(code_versions)) or 'n/a'}; runs without it predate the field.",
        f"- Wall time, training + evaluation, all runs in this report: {total_wall / 3600:.2f} h ({total_wall / 60:.0f} min).",
    ]
    for row in rows:
        wall = sum(row["iql"]["wall_s"]) + sum(row["bc"]["wall_s"])
        lines.append(
            f"  - {_short(row['dataset'])}, {row['updates']:,} updates, net {_net(row['net_arch'])}: {wall / 60:.0f} min "
            f"for {len(row['iql']['seeds']) + len(row['bc']['seeds'])} runs"
        )
    lines.append(
        "- The paper trains 1M updates with 256x256 networks; these budgets are far smaller (CPU time), so scores are "
        "those of short training, not a reproduction of the paper's numbers."
    )
    notes = ""
    if path.exists():
        text = path.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            notes = text[text.index(NOTES_BEGIN) : text.index(NOTES_END) + len(NOTES_END)]
    lines += ["", "## Findings", "", notes or f"{NOTES_BEGIN}\n{NOTES_END}", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, groups: dict[tuple, dict[str, list[dict]]], metric: str = "normalized_score") -> None:
    """
    One subplot per dataset and setting: mean ± std over seeds of ``metric`` against updates, IQL and BC.

    :param metric: ``"normalized_score"`` (percent) or ``"success_rate"`` (plotted in percent; groups without it are left out)
    """
    scale, label = (100.0, "success rate (%)") if metric == "success_rate" else (1.0, "normalized score (%)")

    def with_metric(records: list[dict]) -> list[dict]:
        return [record for record in records if all(metric in point for point in record["curve"])]

    groups = {
        setting: {method: with_metric(records) for method, records in methods.items() if with_metric(records)}
        for setting, methods in groups.items()
    }
    groups = {setting: methods for setting, methods in groups.items() if methods}
    n_plots = max(len(groups), 1)
    n_columns = min(n_plots, 3)
    n_rows = (n_plots + n_columns - 1) // n_columns
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(5 * n_columns, 3.8 * n_rows), squeeze=False)
    for axis, (setting, methods) in zip(axes.flat, groups.items()):
        dataset_id, dataset_steps, updates, _, _, net_arch, _ = setting
        for method in METHODS:
            records = methods.get(method, [])
            if not records:
                continue
            n_points = min(len(record["curve"]) for record in records)
            x = [point["updates"] for point in records[0]["curve"][:n_points]]
            values = scale * np.array([[point[metric] for point in record["curve"][:n_points]] for record in records])
            mean, std = values.mean(axis=0), values.std(axis=0)
            axis.plot(
                x,
                mean,
                marker="o",
                markersize=3,
                color=METHOD_COLORS[method],
                label=f"{METHOD_LABELS[method]} ({len(records)} seeds)",
            )
            axis.fill_between(x, mean - std, mean + std, color=METHOD_COLORS[method], alpha=0.2)
        axis.set_title(
            f"{_short(dataset_id)} ({dataset_steps:,} steps)\n{updates:,} updates, net {_net(net_arch)}", fontsize=10
        )
        axis.set_xlabel("updates")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(groups) :]:
        axis.set_visible(False)
    figure.suptitle(f"IQL vs BC: {label}, mean ± std over seeds", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_csv(path: Path, groups: dict[tuple, dict[str, list[dict]]]) -> None:
    with open(path, "w", newline="") as file_handler:
        writer = csv.writer(file_handler)
        writer.writerow(
            [
                "dataset",
                "dataset_steps",
                "net_arch",
                "budget",
                "method",
                "seed",
                "updates",
                "normalized_score",
                "mean_return",
                "std_return",
                "success_rate",
            ]
        )
        for methods in groups.values():
            for method, records in methods.items():
                for record in records:
                    config = record["config"]
                    for point in record["curve"]:
                        writer.writerow(
                            [
                                config["dataset_id"],
                                config["dataset_steps"],
                                _net(config["net_arch"]),
                                config["updates"],
                                method,
                                config["seed"],
                                point["updates"],
                                f"{point['normalized_score']:.3f}",
                                f"{point['mean_return']:.3f}",
                                f"{point['std_return']:.3f}",
                                "" if point.get("success_rate") is None else f"{point['success_rate']:.3f}",
                            ]
                        )


def write_report(out: Path, dataset_ids: list[str] | None, torch_threads: int) -> None:
    groups = group_runs(load_runs(out), dataset_ids)
    rows = summary_rows(groups)
    _write_json(out / f"{REPORT_STEM}.json", {"hardware": _hardware(), "torch_threads": torch_threads, "rows": rows})
    write_csv(out / f"{REPORT_STEM}.csv", groups)
    write_plot(out / f"{REPORT_STEM}.png", groups)
    write_plot(out / f"{REPORT_STEM}_success.png", groups, metric="success_rate")
    write_markdown(out / f"{REPORT_STEM}.md", rows, torch_threads)


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
    parser.add_argument("--updates", type=int, default=30_000, help="offline updates per run (the budget)")
    parser.add_argument("--eval-every", type=int, default=5_000, help="updates between evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation")
    parser.add_argument("--net-arch", type=int, nargs="+", default=[256, 256], help="hidden widths of every network")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--methods",
        nargs="+",
        type=_method_argument,
        default=list(METHODS),
        help=f"methods: {', '.join(BASE_METHODS)}, or iql-ref+FACTOR[+FACTOR...] with factors {', '.join(FACTORS)}",
    )
    parser.add_argument("--no-report", action="store_true", help="train only; write the report later with --report-only")
    parser.add_argument("--dataset-steps", type=int, default=1_000_000, help="size of generated PointMaze datasets")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of the cache and the report")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("/tmp/sb3iql_scores/checkpoints"), help="checkpoints of unfinished runs"
    )
    parser.add_argument("--save-models", type=Path, default=None, help="folder to save each final model in (default: none)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the cache, train nothing")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    th.set_num_threads(args.torch_threads)
    if args.report_only:
        write_report(args.out, args.datasets, args.torch_threads)
        return
    start = time.perf_counter()
    datasets: dict[str, minari.MinariDataset | None] = {}
    for seed in args.seeds:
        for dataset_id in args.datasets:
            if datasets.get(dataset_id) is None:  # missing datasets are looked for again at the next seed
                datasets[dataset_id] = get_dataset(dataset_id, args.dataset_steps)
            dataset = datasets[dataset_id]
            if dataset is None:
                print(f"Skipping {dataset_id} for seed {seed}: not in the local Minari datasets (yet)", flush=True)
                continue
            for method in args.methods:
                config = RunConfig(
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
                runs = load_runs(args.out)
                if config.key in runs and config.is_complete(runs[config.key]):
                    continue
                print(f"{config.key}", flush=True)
                record = run(config, dataset, args.checkpoint_dir, args.save_models)
                runs = load_runs(args.out)  # another invocation may have added runs meanwhile
                runs[config.key] = record
                _write_json(args.out / RUNS_FILE, {"runs": runs})
                _checkpoint_path(args.checkpoint_dir, config).unlink(missing_ok=True)
                if not args.no_report:
                    write_report(args.out, args.datasets, args.torch_threads)
    if not args.no_report:
        write_report(args.out, args.datasets, args.torch_threads)
    print(f"Done in {(time.perf_counter() - start) / 60:.1f} min; report in {args.out / (REPORT_STEM + '.md')}")


if __name__ == "__main__":
    main()
