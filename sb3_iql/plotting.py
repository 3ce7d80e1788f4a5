"""
Learning curves of a run: normalized score (or mean return) and IQL's losses against updates, as a PNG.

It reads what SB3 writes: ``evaluations.npz`` of an ``EvalCallback`` (or
:class:`~sb3_iql.callbacks.NormalizedEvalCallback`) and ``progress.csv`` of a logger with the ``"csv"`` format
(``python -m sb3_iql.zoo train`` writes both in its run folder)::

    python -m sb3_iql.plotting logs/iql/PointMaze_UMaze-v3_1 -o curves.png
    python -m sb3_iql.plotting runs/hopper --dataset mujoco/hopper/medium-v0 -o hopper.png
    python -m sb3_iql.plotting runs/custom --ref-min -20.3 --ref-max 3234.3

Reference scores, for the normalized score: ``--ref-min``/``--ref-max``, else the Minari dataset ``--dataset``, else
the ones stored in ``evaluations.npz`` by ``NormalizedEvalCallback``, else the dataset named in the run's rl-zoo
``config.yml`` (when stored locally); without any, the mean return is plotted.
"""

import argparse
import csv
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sb3_iql.data.minari_loader import load_dataset
from sb3_iql.evaluation import SCORE_SCALE, ReferenceScores, dataset_reference_scores, normalized_score

EVALUATIONS_FILE = "evaluations.npz"
PROGRESS_FILE = "progress.csv"
#: Columns of ``progress.csv`` plotted as losses, with their titles.
LOSS_COLUMNS = {
    "train/value_loss": "value loss (expectile)",
    "train/critic_loss": "Q loss",
    "train/actor_loss": "actor loss (AWR or DDPG + anchor)",
}
#: Column of ``progress.csv`` giving the x axis of the losses.
UPDATES_COLUMN = "train/n_updates"
#: Panel size in inches.
PANEL_WIDTH, PANEL_HEIGHT = 4.2, 3.4
MAX_LISTED_RUNS = 10


@dataclass
class RunLogs:
    """
    The logs of one run.

    :param folder: the run folder
    :param timesteps: ``(n_evaluations,)`` ``num_timesteps`` of each evaluation (offline: updates)
    :param returns: ``(n_evaluations, n_episodes)`` episode returns of each evaluation
    :param progress: the columns of ``progress.csv`` as float arrays (NaN where a row has no value)
    :param reference_scores: ``(ref_min_score, ref_max_score)`` or None
    :param dataset_id: the dataset the reference scores come from, when known
    """

    folder: Path
    timesteps: np.ndarray | None = None
    returns: np.ndarray | None = None
    progress: dict[str, np.ndarray] = field(default_factory=dict)
    reference_scores: ReferenceScores | None = None
    dataset_id: str | None = None

    @property
    def normalized_scores(self) -> np.ndarray | None:
        """``(n_evaluations, n_episodes)`` scores in percent (0 = random, 100 = expert), None without references"""
        if self.returns is None or self.reference_scores is None:
            return None
        return np.asarray(normalized_score(self.reference_scores, self.returns))


def find_run_folder(logdir: str | Path) -> Path:
    """
    :param logdir: a run folder, or a folder holding exactly one run (searched recursively)
    :return: the folder holding ``evaluations.npz`` and/or ``progress.csv``
    :raises FileNotFoundError: no such file under ``logdir``
    :raises ValueError: several runs under ``logdir``; the message lists them
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise FileNotFoundError(f"{logdir} is not a folder")
    if (logdir / EVALUATIONS_FILE).is_file() or (logdir / PROGRESS_FILE).is_file():
        return logdir
    folders = sorted({path.parent for name in (EVALUATIONS_FILE, PROGRESS_FILE) for path in logdir.rglob(name)})
    if not folders:
        raise FileNotFoundError(
            f"No {EVALUATIONS_FILE} (EvalCallback's log_path) or {PROGRESS_FILE} (a logger with the 'csv' format) "
            f"under {logdir}"
        )
    if len(folders) > 1:
        listed = "\n  ".join(str(folder) for folder in folders[:MAX_LISTED_RUNS])
        more = f"\n  ... and {len(folders) - MAX_LISTED_RUNS} more" if len(folders) > MAX_LISTED_RUNS else ""
        raise ValueError(f"Several runs under {logdir}, pass one of them:\n  {listed}{more}")
    return folders[0]


def read_progress(path: str | Path) -> dict[str, np.ndarray]:
    """
    :param path: a ``progress.csv`` written by SB3's CSV logger
    :return: each column as a float array, NaN where the row has no (numeric) value
    """

    def as_float(text: str | None) -> float:
        try:
            return float(text) if text else math.nan
        except ValueError:
            return math.nan

    with open(path, newline="") as file_handler:
        rows = list(csv.DictReader(file_handler))
    columns = {key for row in rows for key in row if key is not None}
    return {key: np.array([as_float(row.get(key)) for row in rows], dtype=np.float64) for key in sorted(columns)}


def _zoo_config_dataset(folder: Path) -> str | None:
    """:return: ``offline_dataset`` of an rl-zoo run's ``<env>/config.yml``, if any"""
    for config in sorted(folder.glob("*/config.yml")):
        with open(config) as file_handler:
            hyperparams = yaml.load(file_handler, Loader=yaml.UnsafeLoader)  # rl-zoo writes Python objects
        dataset = hyperparams.get("offline_dataset") if isinstance(hyperparams, dict) else None
        if isinstance(dataset, str):
            return dataset
    return None


def load_run(
    logdir: str | Path,
    dataset: str | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> RunLogs:
    """
    Read a run's ``evaluations.npz`` and ``progress.csv`` and find its reference scores (see the module docstring).

    :param logdir: the run folder (or a folder holding one run)
    :param dataset: Minari dataset id whose reference scores normalize the returns
    :param ref_min_score: return of score 0 (with ``ref_max_score``; takes precedence over ``dataset``)
    :param ref_max_score: return of score 100
    :return: the logs
    """
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("Pass both ref_min_score and ref_max_score, or neither")
    run = RunLogs(find_run_folder(logdir))
    stored_scores = None
    if (run.folder / EVALUATIONS_FILE).is_file():
        try:
            with np.load(run.folder / EVALUATIONS_FILE) as evaluations:
                if len(evaluations["timesteps"]) > 0:  # none yet: the losses alone, if any
                    run.timesteps = np.asarray(evaluations["timesteps"], dtype=np.int64)
                    run.returns = np.asarray(evaluations["results"], dtype=np.float64).reshape(len(run.timesteps), -1)
                if "ref_min_score" in evaluations and "ref_max_score" in evaluations:
                    stored_scores = (float(evaluations["ref_min_score"]), float(evaluations["ref_max_score"]))
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:  # rewritten at each evaluation
            raise ValueError(
                f"{run.folder / EVALUATIONS_FILE} cannot be read ({type(error).__name__}: {error}): a run writing it "
                "at this moment (plot again), one killed while writing it, or not an EvalCallback's file"
            ) from error
    if (run.folder / PROGRESS_FILE).is_file():
        run.progress = read_progress(run.folder / PROGRESS_FILE)
        if run.returns is None and "eval/mean_reward" in run.progress:  # evaluations logged, not saved
            rows = ~np.isnan(run.progress["eval/mean_reward"])
            run.timesteps = run.progress.get("time/total_timesteps", np.arange(len(rows)))[rows].astype(np.int64)
            run.returns = run.progress["eval/mean_reward"][rows, None]
    if ref_min_score is not None and ref_max_score is not None:
        run.reference_scores = (float(ref_min_score), float(ref_max_score))
    elif dataset is not None:
        run.reference_scores, run.dataset_id = dataset_reference_scores(load_dataset(dataset)), dataset
        if run.reference_scores is None:
            raise ValueError(f"Dataset {dataset!r} has no reference scores (ref_min_score, ref_max_score)")
    elif stored_scores is not None:
        run.reference_scores, run.dataset_id = stored_scores, _zoo_config_dataset(run.folder)
    else:
        run.dataset_id = _zoo_config_dataset(run.folder)
        if run.dataset_id is not None:
            try:
                run.reference_scores = dataset_reference_scores(load_dataset(run.dataset_id))
            except FileNotFoundError:  # the dataset is not stored on this machine: plot returns
                run.reference_scores = None
    return run


def plot_run(
    logdir: str | Path,
    output: str | Path | None = None,
    dataset: str | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    title: str | None = None,
) -> Path:
    """
    Plot a run's evaluations (normalized score when reference scores are known, else mean return, with the standard
    deviation over episodes) and its losses against updates, one panel each, into a PNG.

    :param logdir: the run folder (or a folder holding one run)
    :param output: the PNG to write (default: ``<run folder>/curves.png``; ``curves.png`` in a folder given, ``.png``
        added to a name without suffix)
    :param dataset: Minari dataset id whose reference scores normalize the returns
    :param ref_min_score: return of score 0 (with ``ref_max_score``)
    :param ref_max_score: return of score 100
    :param title: figure title (default: the run folder's name, and the dataset id when known)
    :return: the path of the PNG
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("Plotting needs matplotlib: pip install 'sb3_iql[plots]'") from error

    run = load_run(logdir, dataset, ref_min_score, ref_max_score)
    losses = {
        key: name
        for key, name in LOSS_COLUMNS.items()
        if key in run.progress and UPDATES_COLUMN in run.progress and np.isfinite(run.progress[key]).any()
    }
    n_panels = int(run.returns is not None) + len(losses)
    if n_panels == 0:
        raise ValueError(f"Nothing to plot in {run.folder}: no evaluations and no {', '.join(LOSS_COLUMNS)} values")
    figure = Figure(figsize=(PANEL_WIDTH * n_panels, PANEL_HEIGHT), layout="constrained")
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    panels = iter(axes)
    if run.returns is not None and run.timesteps is not None:
        _plot_evaluations(next(panels), run)
    for key, name in losses.items():
        _plot_column(next(panels), run.progress[UPDATES_COLUMN], run.progress[key], name)
    figure.suptitle(title or " - ".join(part for part in (run.folder.name, run.dataset_id) if part))
    output = Path(output) if output is not None else run.folder / "curves.png"
    if output.is_dir():
        output = output / "curves.png"
    elif output.suffix == "":
        output = output.with_suffix(".png")  # as matplotlib writes it: the path returned is the one written
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    return output


def _plot_evaluations(ax: Any, run: RunLogs) -> None:
    assert run.returns is not None and run.timesteps is not None
    scores = run.normalized_scores
    values = scores if scores is not None else run.returns
    mean, std = np.nanmean(values, axis=1), np.nanstd(values, axis=1)  # an episode of NaN return left out
    ax.plot(run.timesteps, mean, marker="o", markersize=3)
    ax.fill_between(run.timesteps, mean - std, mean + std, alpha=0.25)
    if scores is not None:
        ax.axhline(SCORE_SCALE, color="gray", linestyle="--", linewidth=1)
        ax.set_ylabel("normalized score (100 = expert)")
    else:
        ax.set_ylabel("mean episode return")
    ax.set_xlabel("num_timesteps (offline: updates)")
    ax.set_title("evaluation")
    ax.grid(alpha=0.3)


#: Below this many logged values a loss is drawn with markers (one point alone is no line).
FEW_POINTS = 10


def _plot_column(ax: Any, updates: np.ndarray, values: np.ndarray, name: str) -> None:
    rows = ~(np.isnan(updates) | np.isnan(values))
    ax.plot(updates[rows], values[rows], marker="o" if rows.sum() < FEW_POINTS else None, markersize=3)
    ax.set_xlabel("updates")
    ax.set_title(name)
    ax.grid(alpha=0.3)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m sb3_iql.plotting``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb3_iql.plotting", description="Plot a run's evaluations and IQL losses into a PNG."
    )
    parser.add_argument("logdir", help="run folder (holding evaluations.npz and/or progress.csv), or a folder with one run")
    parser.add_argument("-o", "--output", help="PNG to write (default: <run folder>/curves.png)")
    parser.add_argument("--dataset", help="Minari dataset id whose reference scores normalize the returns")
    parser.add_argument("--ref-min", type=float, help="return of normalized score 0")
    parser.add_argument("--ref-max", type=float, help="return of normalized score 100")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    try:
        output = plot_run(args.logdir, args.output, args.dataset, args.ref_min, args.ref_max, args.title)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"Saved {output}")


if __name__ == "__main__":
    main()
