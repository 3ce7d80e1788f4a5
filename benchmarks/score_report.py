"""
The report of ``benchmarks/scores.py``: every cached run, grouped by setting (dataset, budget, network, ...) and
method, as the field compares algorithms.

- Per setting and method: every seed's final normalized score, mean ± std, the worst seed, and the interquartile
  mean (IQM) with a stratified-bootstrap 95% confidence interval (``rliable``).
- Per setting: the probability of improvement P(method > d3rlpy's IQL) with its 95% interval (``rliable``), for
  every method of this package.
- Sparse mazes: success rate, mean first step at the goal (episodes that reach it) and the fraction of the time
  spent at the goal from then on, all at the final evaluation: why a run fails, not only how much.
- Over the stitch settings together: IQM and probability of improvement with tasks as strata.

Files: ``scores.md`` (text between ``<!-- BEGIN NOTES -->`` and ``<!-- END NOTES -->`` is kept), ``scores.json``,
``scores.csv`` (every evaluation of every run), ``scores.png`` and ``scores_success.png`` (curves),
``bootstrap_cache.json`` (the intervals, so that the next report resamples only the rows whose scores changed).
"""

import csv
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from hardware import machine  # benchmarks/hardware.py
from rliable import library as rly
from rliable import metrics

from sb3_iql.common.offline import write_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NOTES_BEGIN, NOTES_END = "<!-- BEGIN NOTES -->", "<!-- END NOTES -->"
RUNS_FILE = "scores_runs.json"
REPORT_STEM = "scores"
#: The peer every method of this package is compared with.
PEER = "d3rlpy-iql"
#: Bootstrap resamples of the confidence intervals; NumPy's generator is seeded for each, so a report is reproducible.
BOOTSTRAP_REPS = 5000
BOOTSTRAP_SEED = 0
#: Intervals of earlier reports, beside the report: a seeded bootstrap gives the same interval for the same scores,
#: so only new or changed rows are resampled (a full report resamples ~250 intervals: over an hour on a busy 2-core
#: machine; the next one, 37 s).
INTERVAL_CACHE_FILE = "bootstrap_cache.json"
#: statistic and scores (hashed) -> (point estimate, 95% low, 95% high); see ``load_interval_cache``
_interval_cache: dict[str, list[float]] = {}
_intervals_used: set[str] = set()
#: Settings whose dataset id contains this are aggregated together ("stitch" rows).
STITCH = "stitch"
#: The row of the datasets' presets as they are now, and of ``iql`` runs trained with an earlier preset.
DEFAULTS, EARLIER_DEFAULTS = "iql", "iql-earlier"
#: Display order of the base methods; variants (``iql-ref+...``) follow ``iql-ref``.
METHOD_ORDER = (DEFAULTS, EARLIER_DEFAULTS, "iql-ref", "d3rlpy-iql", "d3rlpy-iql-cosine", "bc", "d3rlpy-bc")
METHOD_LABELS = {
    DEFAULTS: "sb3-iql IQL (defaults)",
    EARLIER_DEFAULTS: "sb3-iql IQL, an earlier preset",
    "iql-ref": "sb3-iql IQL, reference",
    "d3rlpy-iql": "d3rlpy IQL",
    "d3rlpy-iql-cosine": "d3rlpy IQL, cosine actor lr",
    "bc": "sb3-iql BC (beta 0)",
    "d3rlpy-bc": "d3rlpy BC",
}


def method_label(method: str) -> str:
    """:return: ``"sb3-iql IQL, reference + order + init"`` for ``"iql-ref+order+init"``"""
    base, *factors = method.split("+")
    return " + ".join([METHOD_LABELS.get(base, base), *factors])


def method_sort_key(method: str) -> tuple:
    base, *factors = method.split("+")
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), len(factors), method)


def is_ours(method: str) -> bool:
    return not method.startswith("d3rlpy")


def setting_of(record: dict) -> tuple:
    """Everything but the method and the seed: runs of one setting are compared with each other."""
    config = record["config"]
    return (
        config["dataset_id"],
        config["dataset_steps"],
        config["updates"],
        config["eval_every"],
        config["eval_episodes"],
        tuple(config["net_arch"]),
        config["batch_size"],
    )


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so that a killed run never leaves a truncated cache or report."""
    write_atomically(path, "json", lambda target: Path(target).write_text(json.dumps(data, indent=1) + "\n"))


def load_runs(out: Path) -> dict[str, dict]:
    path = out / RUNS_FILE
    return json.loads(path.read_text())["runs"] if path.exists() else {}


def group_runs(
    runs: dict[str, dict], dataset_ids: list[str] | None, trains_the_preset: Callable[[dict], bool] | None = None
) -> dict[tuple, dict[str, list[dict]]]:
    """
    :param trains_the_preset: whether a record trained its dataset's preset as it is now (``scores.trains_the_preset``).
        Given, the defaults row (``iql``) also takes the seeds it lacks from the other methods' runs that trained the
        preset (``iql-ref+ddpgawr0.01+dropout`` on a stitch maze, say), and ``iql`` runs of an earlier preset get a
        row of their own; None: rows by the methods' names alone.
    :return: setting -> method -> records sorted by seed; settings of ``dataset_ids`` first, in that order
    """
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    preset_twins: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for key in sorted(runs):
        record, method = runs[key], runs[key]["config"]["method"]
        if trains_the_preset is not None and method == DEFAULTS and not trains_the_preset(record):
            method = EARLIER_DEFAULTS
        elif trains_the_preset is not None and method != DEFAULTS and trains_the_preset(record):
            preset_twins[setting_of(record)].setdefault(record["config"]["seed"], record)
        groups[setting_of(record)][method].append(record)
    for setting, twins in preset_twins.items():
        seeds = {record["config"]["seed"] for record in groups[setting][DEFAULTS]}
        groups[setting][DEFAULTS] += [record for seed, record in twins.items() if seed not in seeds]
    order = {dataset_id: index for index, dataset_id in enumerate(dataset_ids or [])}

    def sort_key(setting: tuple) -> tuple:
        return (order.get(setting[0], len(order)), setting[0], setting[5], setting[2])

    return {
        setting: {
            method: sorted(groups[setting][method], key=lambda record: record["config"]["seed"])
            for method in sorted(groups[setting], key=method_sort_key)
        }
        for setting in sorted(groups, key=sort_key)
    }


def load_interval_cache(path: Path) -> None:
    """Start a report with the intervals of the last one (``path``: its ``INTERVAL_CACHE_FILE``, if any)."""
    _interval_cache.clear()
    _intervals_used.clear()
    if path.exists():
        _interval_cache.update(json.loads(path.read_text()))


def save_interval_cache(path: Path) -> None:
    """Keep the intervals this report used (and only those) for the next one."""
    write_json(path, {key: _interval_cache[key] for key in sorted(_intervals_used)})


def _interval(statistic: str, scores: tuple[np.ndarray, ...], func: Any) -> tuple[float, float, float]:
    """
    :param statistic: the name of ``func`` (part of the cache key)
    :param scores: ``func``'s arguments, each of shape ``(n_seeds, n_tasks)``
    :return: (point estimate, 95% low, 95% high) from rliable's stratified bootstrap, or from the cache when these
        exact scores were resampled before with the same number of resamples and seed
    """
    exact = [statistic, BOOTSTRAP_REPS, BOOTSTRAP_SEED, [np.asarray(x, dtype=float).tolist() for x in scores]]
    key = hashlib.sha256(json.dumps(exact).encode()).hexdigest()
    if key not in _interval_cache:
        # rliable 1.2 draws its resamples from NumPy's global generator (its random_state argument only reaches
        # arch, which it bypasses): seeded here, so that an interval depends on its scores alone
        global_state = np.random.get_state()
        np.random.seed(BOOTSTRAP_SEED)
        try:
            points, intervals = rly.get_interval_estimates(
                {"x": scores if len(scores) > 1 else scores[0]}, func, reps=BOOTSTRAP_REPS
            )
        finally:
            np.random.set_state(global_state)
        _interval_cache[key] = [float(np.ravel(points["x"])[0]), *map(float, np.ravel(intervals["x"])[:2])]
    _intervals_used.add(key)
    point, low, high = _interval_cache[key]
    return point, low, high


def iqm_with_ci(scores: np.ndarray) -> tuple[float, float, float] | None:
    """
    :param scores: final normalized scores, shape ``(n_seeds, n_tasks)``
    :return: interquartile mean and its 95% interval, or None with fewer than 2 seeds
    """
    if scores.shape[0] < 2:
        return None
    return _interval("iqm", (scores,), lambda x: np.array([metrics.aggregate_iqm(x)]))


def improvement_with_ci(ours: np.ndarray, peer: np.ndarray) -> tuple[float, float, float] | None:
    """
    :param ours: scores ``(n_seeds, n_tasks)``; :param peer: scores ``(n_peer_seeds, n_tasks)``
    :return: P(ours > peer) (Mann-Whitney, averaged over tasks) and its 95% interval, or None with < 2 seeds
    """
    if ours.shape[0] < 2 or peer.shape[0] < 2:
        return None
    return _interval("probability_of_improvement", (ours, peer), metrics.probability_of_improvement)


def _final_point_mean(records: list[dict], field: str) -> float | None:
    values = [record["curve"][-1].get(field) for record in records]
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


def method_summary(records: list[dict]) -> dict[str, Any]:
    finals = [record["final"] for record in records]
    return {
        "seeds": [record["config"]["seed"] for record in records],
        "final": finals,
        "mean": float(np.mean(finals)),
        "std": float(np.std(finals)),
        "worst": float(np.min(finals)),
        "iqm": iqm_with_ci(np.array(finals)[:, None]),
        "success_pct": None
        if _final_point_mean(records, "success_rate") is None
        else 100 * _final_point_mean(records, "success_rate"),
        "first_success_step": _final_point_mean(records, "first_success_step"),
        "fraction_at_goal_after": _final_point_mean(records, "fraction_at_goal_after"),
        "updates_per_s": float(np.mean([record["updates_per_s"] for record in records])),
        "wall_s": float(sum(record["train_s"] + record["eval_s"] for record in records)),
        "code_versions": sorted({record["code_version"] for record in records if record.get("code_version")}),
        "peer_versions": sorted({record["peer_version"] for record in records if record.get("peer_version")}),
    }


def summary_rows(groups: dict[tuple, dict[str, list[dict]]]) -> list[dict]:
    rows = []
    for setting, methods in groups.items():
        dataset_id, dataset_steps, updates, eval_every, eval_episodes, net_arch, batch_size = setting
        summaries = {method: method_summary(records) for method, records in methods.items()}
        if PEER in summaries:
            peer = np.array(summaries[PEER]["final"])[:, None]
            for method, summary in summaries.items():
                if is_ours(method):
                    summary["p_improvement_over_peer"] = improvement_with_ci(np.array(summary["final"])[:, None], peer)
        rows.append(
            {
                "dataset": dataset_id,
                "dataset_steps": dataset_steps,
                "updates": updates,
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "net_arch": list(net_arch),
                "batch_size": batch_size,
                "methods": summaries,
            }
        )
    return rows


def _final_success_pct(record: dict) -> float:
    """:return: the % of final-evaluation episodes that reached the goal (D4RL AntMaze's score); NaN if not recorded"""
    return 100.0 * record["curve"][-1].get("success_rate", np.nan)


def _final_matrix(
    groups: dict[tuple, dict[str, list[dict]]],
    settings: list[tuple],
    method: str,
    seeds: list[int],
    metric: str = "final",
) -> np.ndarray:
    """
    :param metric: ``"final"`` (normalized score) or ``"success"`` (% of episodes reaching the goal)
    :return: final values of ``method``, shape ``(len(seeds), len(settings))``
    """
    columns = []
    for setting in settings:
        by_seed = {
            record["config"]["seed"]: record["final"] if metric == "final" else _final_success_pct(record)
            for record in groups[setting][method]
        }
        columns.append([by_seed[seed] for seed in seeds])
    return np.array(columns).T


def stitch_aggregate(groups: dict[tuple, dict[str, list[dict]]]) -> dict[tuple, dict[str, Any]]:
    """
    Over the stitch settings that differ only in the dataset (budget, network, batch, evaluation): per method, IQM
    and P(method > d3rlpy) with tasks as strata, on the seeds every task has; the same on the success rate (D4RL
    AntMaze's score: reaching the goal, not staying there), with its worst run, where every run recorded it.

    :return: the setting without its dataset (dataset steps, updates, eval every, eval episodes, net_arch, batch)
        -> {"tasks": [...], "seeds": [...], "methods": {method: {"iqm", "p_improvement",
        "success_iqm", "success_worst", "success_p_improvement"}}}
    """
    by_budget: dict[tuple, list[tuple]] = defaultdict(list)
    for setting in groups:
        if STITCH in setting[0]:
            by_budget[setting[1:]].append(setting)
    aggregates = {}
    for budget, settings in by_budget.items():
        if len(settings) < 2:
            continue
        common_seeds = {}
        for method in set.intersection(*(set(groups[setting]) for setting in settings)):
            seeds = set.intersection(*({r["config"]["seed"] for r in groups[setting][method]} for setting in settings))
            if len(seeds) >= 2:
                common_seeds[method] = sorted(seeds)

        entry: dict[str, Any] = {"tasks": [setting[0] for setting in settings], "methods": {}}
        if PEER in common_seeds:
            peer = _final_matrix(groups, settings, PEER, common_seeds[PEER])
            peer_success = _final_matrix(groups, settings, PEER, common_seeds[PEER], "success")
        for method in sorted(common_seeds, key=method_sort_key):
            scores = _final_matrix(groups, settings, method, common_seeds[method])
            success = _final_matrix(groups, settings, method, common_seeds[method], "success")
            recorded = not np.isnan(success).any()
            result: dict[str, Any] = {
                "seeds": common_seeds[method],
                "iqm": iqm_with_ci(scores),
                "success_iqm": iqm_with_ci(success) if recorded else None,
                "success_worst": float(success.min()) if recorded else None,
            }
            if PEER in common_seeds and is_ours(method):
                result["p_improvement"] = improvement_with_ci(scores, peer)
                if recorded and not np.isnan(peer_success).any():
                    result["success_p_improvement"] = improvement_with_ci(success, peer_success)
            entry["methods"][method] = result
        aggregates[budget] = entry
    return aggregates


def _short(dataset_id: str) -> str:
    return dataset_id.removeprefix("sb3_iql/")


def _net(net_arch: list[int] | tuple[int, ...]) -> str:
    return "x".join(map(str, net_arch))


def _ci(value: tuple[float, float, float] | None, decimals: int = 1) -> str:
    return "n/a" if value is None else f"{value[0]:.{decimals}f} [{value[1]:.{decimals}f}, {value[2]:.{decimals}f}]"


def _optional(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def write_markdown(
    path: Path, rows: list[dict], aggregates: dict[tuple, dict], torch_threads: int, total_wall_s: float
) -> None:
    """:param total_wall_s: training and evaluation time of every cached run, each counted once (s)"""
    hardware = machine()
    lines = [
        "# sb3-iql against d3rlpy and behaviour cloning: normalized scores",
        "",
        "Generated by `benchmarks/scores.py` (do not edit by hand, except between the NOTES markers).",
        "Normalized score in percent: 0 = random actions, 100 = the dataset's reference (expert) return, at the",
        "**final** evaluation of each run (deterministic policy, the same reset seeds for every method: 10000 + seed).",
        "IQM = interquartile mean over seeds with a stratified-bootstrap 95% interval; P(> d3rlpy) = probability that a",
        "run of the method scores higher than a run of d3rlpy's IQL (Mann-Whitney), with its 95% interval; both from",
        f"`rliable` ({BOOTSTRAP_REPS} resamples).",
        "Methods: sb3-iql with the paper's preset of the domain (mazes: expectile 0.9, beta 10, r - 1; locomotion:",
        "expectile 0.7, beta 3, r / return range x 1000), actor lr cosine-decayed over the budget; `reference` = the",
        "reference implementation's choices; `+ order` = Q target with V(s') from before V's step (d3rlpy), `+ logstd` =",
        "log std = -5 + 7 sigmoid(raw), starting at -1.5 (d3rlpy), `+ init` = PyTorch's default init (d3rlpy), `+ ln` =",
        "LayerNorm in critics and value net, `+ obsnorm` = observations normalised with the dataset's mean and std,",
        "`+ dropout` = actor dropout 0.1, `+ constlr` = constant actor lr (d3rlpy), `+ shared` = one image encoder for",
        "the actor, critics and value net, trained by the critics, `+ sharedcritics` = one for the critics and value net",
        "alone (the actor keeps its own), `+ shift4` = random image shifts of up to 4 pixels",
        "(DrQ), `+ lncnn` = NatureCNN's output layer with LayerNorm and tanh instead of ReLU (`LayerNormNatureCNN`),",
        "`+ feat50` = 50 image features instead of 512 (DrQ-v2's; the critics' actions are 2 of 52 inputs, not of 514),",
        "`+ spatial` = `SpatialSoftmaxCNN` (convolutions ending in a spatial softmax: 32 keypoints' x and y),",
        "`+ evalgoal` (`+ evalgoalterm`) =",
        "every transition relabelled for the evaluation goal (and terminal there), `+ ddpgbcW` = DDPG+BC policy",
        "extraction instead of AWR (the smaller critic at the mean action over its batch mean |Q|, plus W times the",
        "log-likelihood of the dataset actions; Park et al., 2024). d3rlpy IQL: its `IQLConfig` with the same",
        "expectile, beta, batch and networks (constant lr; `cosine actor lr`: decayed to 0 over the budget by its own "
        "`CosineAnnealingLRFactory`; `+ evalgoalterm`: the same relabelled transitions as ours; it drops the last "
        "transition of each time-limit episode, 0.1-0.3% of the stitch mazes' transitions, and takes the dataset "
        "actions unclipped, ours clipped to +-(1 - 1e-5)); d3rlpy BC: its",
        "deterministic `BCConfig`. BC = sb3-iql with beta = 0. `defaults` = the dataset's preset (PointMaze: DDPG +",
        "AWR, 0.01, the stitch mazes with actor dropout 0.1, the sparse goal-carrying mazes with hindsight goals (the",
        "AntMaze-v1 replica: beta 0.3 on the stored goals); Hopper medium: AWR + order + logstd + init + constlr +",
        "obsnorm; medium-replay: the same with ln instead of obsnorm), with every run that trained it, whichever method",
        "named it (a stitch maze's `reference + ddpgawr0.01 + dropout` runs count there too); `an earlier preset`",
        "= `defaults` runs from before their preset changed;",
        "`reference`, BC and d3rlpy train on the data as stored unless `+ evalgoal*` is named.",
        "Sparse mazes: success = % of final-evaluation episodes that reach the goal; first reach = mean step of the",
        "first arrival (episodes that arrive); at goal = fraction of the steps from the first arrival on spent within",
        "0.45 m of the goal.",
        "Runs on an earlier generation of a dataset (the same id made again, other episodes) are kept, out of this",
        "report, in `scores_runs_superseded.json`, with the reason. The Hopper rows are on the portable generation",
        "(`make_locomotion_datasets.py --portable`: medium-v0 373 episodes, medium-replay-v0 1,480).",
        "",
        "| dataset | updates | net | batch | method | seeds | final per seed | mean ± std | worst | IQM [95% CI] "
        "| P(> d3rlpy) [95% CI] | success % | first reach | at goal | updates/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for method, summary in row["methods"].items():
            per_seed = " / ".join(f"{value:.1f}" for value in summary["final"])
            poi = _ci(summary.get("p_improvement_over_peer"), 2) if "p_improvement_over_peer" in summary else ""
            lines.append(
                f"| {_short(row['dataset'])} | {row['updates']:,} | {_net(row['net_arch'])} | {row['batch_size']} "
                f"| {method_label(method)} "
                f"| {len(summary['seeds'])} | {per_seed} | {summary['mean']:.1f} ± {summary['std']:.1f} "
                f"| {summary['worst']:.1f} "
                f"| {_ci(summary['iqm'])} | {poi} | {_optional(summary['success_pct'], '.0f')} "
                f"| {_optional(summary['first_success_step'], '.0f')} | {_optional(summary['fraction_at_goal_after'], '.2f')} "
                f"| {summary['updates_per_s']:.0f} |"
            )
    if aggregates:
        lines += [
            "",
            "## Stitch mazes together",
            "",
            "Tasks as bootstrap strata, seeds that every task has. Success: % of final-evaluation episodes that reach",
            "the goal (D4RL AntMaze's score; the normalized score also counts the time spent there after).",
            "",
            "| updates | net | batch | tasks | method | seeds | IQM [95% CI] | P(> d3rlpy) [95% CI] "
            "| success IQM [95% CI] | worst success | success P(> d3rlpy) [95% CI] |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (_, updates, _, _, net_arch, batch_size), entry in aggregates.items():
            tasks = ", ".join(_short(task) for task in entry["tasks"])
            for method, result in entry["methods"].items():
                poi = _ci(result.get("p_improvement"), 2) if "p_improvement" in result else ""
                success_poi = _ci(result.get("success_p_improvement"), 2) if "success_p_improvement" in result else ""
                lines.append(
                    f"| {updates:,} | {_net(net_arch)} | {batch_size} | {tasks} | {method_label(method)} "
                    f"| {len(result['seeds'])} | {_ci(result['iqm'])} | {poi} | {_ci(result['success_iqm'], 0)} "
                    f"| {_optional(result['success_worst'], '.0f')} | {success_poi} |"
                )
    code_versions = sorted({v for row in rows for s in row["methods"].values() for v in s["code_versions"]})
    peer_versions = sorted({v for row in rows for s in row["methods"].values() for v in s["peer_versions"]})
    lines += [
        "",
        "![normalized score against updates](scores.png)",
        "",
        "![success rate against updates](scores_success.png)",
        "",
        "## Budget and hardware",
        "",
        f"- CPU of the machine that wrote this report (the Findings name each session's machine): {hardware['cpu']},",
        f"  {hardware['logical_cores']} logical cores, shared by two training processes at a time;",
        f"  torch {hardware['torch']} ({hardware['torch_cpu_capability']} kernels) with {torch_threads} thread(s) per",
        f"  process, Python {hardware['python']}.",
        f"- Peer: {', '.join(peer_versions) or 'n/a'}.",
        f"- Code: hash of the `sb3_iql` sources each run trained with (`code_version` in `{RUNS_FILE}`): "
        f"{', '.join(code_versions) or 'n/a'}; runs without it predate the field.",
        f"- Wall time, training + evaluation, all runs in this report: {total_wall_s / 3600:.2f} h.",
        "- The paper trains 1M updates with 256x256 networks; these budgets are far smaller (CPU time): scores of short",
        "  training, not a reproduction of the paper's numbers.",
    ]
    notes = ""
    if path.exists():
        text = path.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            notes = text[text.index(NOTES_BEGIN) : text.index(NOTES_END) + len(NOTES_END)]
    lines += ["", "## Findings", "", notes or f"{NOTES_BEGIN}\n{NOTES_END}", ""]
    write_atomically(path, "md", lambda target: Path(target).write_text("\n".join(lines)))


def write_plot(path: Path, groups: dict[tuple, dict[str, list[dict]]], metric: str = "normalized_score") -> None:
    """
    One subplot per setting: mean ± std over seeds of ``metric`` against updates, one curve per method.

    :param metric: ``"normalized_score"`` (percent) or ``"success_rate"`` (plotted in percent; settings without it
        are left out)
    """
    scale, label = (100.0, "success rate (%)") if metric == "success_rate" else (1.0, "normalized score (%)")

    def with_metric(records: list[dict]) -> list[dict]:
        return [record for record in records if all(point.get(metric) is not None for point in record["curve"])]

    groups = {
        setting: {method: with_metric(records) for method, records in methods.items() if with_metric(records)}
        for setting, methods in groups.items()
    }
    groups = {setting: methods for setting, methods in groups.items() if methods}
    n_plots = max(len(groups), 1)
    n_columns = min(n_plots, 3)
    n_rows = (n_plots + n_columns - 1) // n_columns
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(5.5 * n_columns, 4 * n_rows), squeeze=False)
    for axis, (setting, methods) in zip(axes.flat, groups.items()):
        dataset_id, dataset_steps, updates, _, _, net_arch, batch_size = setting
        for method, records in methods.items():
            n_points = min(len(record["curve"]) for record in records)
            x = [point["updates"] for point in records[0]["curve"][:n_points]]
            values = scale * np.array([[point[metric] for point in record["curve"][:n_points]] for record in records])
            mean, std = values.mean(axis=0), values.std(axis=0)
            (line,) = axis.plot(x, mean, marker="o", markersize=3, label=f"{method_label(method)} ({len(records)})")
            axis.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        axis.set_title(
            f"{_short(dataset_id)} ({dataset_steps:,} steps)\n{updates:,} updates, net {_net(net_arch)}, batch {batch_size}",
            fontsize=10,
        )
        axis.set_xlabel("updates")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(groups) :]:
        axis.set_visible(False)
    figure.suptitle(f"{label}, mean ± std over seeds (seeds in brackets)", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title above the first row
    write_atomically(path, "png", lambda target: figure.savefig(target, dpi=110, format=path.suffix[1:]))
    plt.close(figure)


CSV_FIELDS = ("normalized_score", "mean_return", "std_return", "success_rate", "first_success_step", "fraction_at_goal_after")


def write_csv(path: Path, groups: dict[tuple, dict[str, list[dict]]]) -> None:
    write_atomically(path, "csv", lambda target: _write_csv(Path(target), groups))


def _write_csv(path: Path, groups: dict[tuple, dict[str, list[dict]]]) -> None:
    with open(path, "w", newline="") as file_handler:
        writer = csv.writer(file_handler)
        writer.writerow(
            ["dataset", "dataset_steps", "net_arch", "batch_size", "budget", "method", "seed", "updates", *CSV_FIELDS]
        )
        for methods in groups.values():
            for method, records in methods.items():
                for record in records:
                    config = record["config"]
                    for point in record["curve"]:
                        values = ["" if point.get(field) is None else f"{point[field]:.3f}" for field in CSV_FIELDS]
                        writer.writerow(
                            [
                                config["dataset_id"],
                                config["dataset_steps"],
                                _net(config["net_arch"]),
                                config["batch_size"],
                                config["updates"],
                                method,
                                config["seed"],
                                point["updates"],
                                *values,
                            ]
                        )


def check_one_model_per_row(groups: dict[tuple, dict[str, list[dict]]], canonical: Callable[[dict], str]) -> None:
    """
    :param canonical: a record's hyperparameters as one string, equal for two runs that trained the same model
        (``scores.canonical_hyperparameters``)
    :raises SystemExit: a row would average runs of different hyperparameters (a method's settings changed between
        its runs), naming them
    """
    for setting, methods in groups.items():
        for method, records in methods.items():
            trained = {canonical(record["hyperparameters"]): record for record in records}
            if len(trained) > 1:
                examples = "; ".join(
                    f"seed {record['config']['seed']}: {record['hyperparameters']}" for record in trained.values()
                )
                raise SystemExit(
                    f"The row of {method} on {setting[0]} ({setting[2]:,} updates) holds runs of different "
                    f"hyperparameters ({examples}): move the ones of the earlier settings to "
                    "scores_runs_superseded.json"
                )


def write_report(
    out: Path,
    dataset_ids: list[str] | None,
    torch_threads: int,
    trains_the_preset: Callable[[dict], bool] | None = None,
    canonical: Callable[[dict], str] | None = None,
) -> None:
    """
    Write every report file of the cached runs in ``out`` (``trains_the_preset``: as in ``group_runs``; given
    ``canonical``, ``check_one_model_per_row`` first).
    """
    load_interval_cache(out / INTERVAL_CACHE_FILE)
    runs = load_runs(out)
    groups = group_runs(runs, dataset_ids, trains_the_preset)
    if canonical is not None:
        check_one_model_per_row(groups, canonical)
    rows = summary_rows(groups)
    aggregates = stitch_aggregate(groups)
    aggregates_json = [
        {"updates": updates, "eval_episodes": episodes, "net_arch": list(net_arch), "batch_size": batch, **entry}
        for (_, updates, _, episodes, net_arch, batch), entry in aggregates.items()
    ]
    data = {"hardware": machine(), "torch_threads": torch_threads, "rows": rows, "stitch_aggregates": aggregates_json}
    write_json(out / f"{REPORT_STEM}.json", data)
    write_csv(out / f"{REPORT_STEM}.csv", groups)
    write_plot(out / f"{REPORT_STEM}.png", groups)
    write_plot(out / f"{REPORT_STEM}_success.png", groups, metric="success_rate")
    total_wall_s = sum(record["train_s"] + record["eval_s"] for record in runs.values())
    write_markdown(out / f"{REPORT_STEM}.md", rows, aggregates, torch_threads, total_wall_s)
    save_interval_cache(out / INTERVAL_CACHE_FILE)
