"""Writing Minari datasets safely: no jax needed, no half-written dataset left behind."""

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage import get_dataset_path

AUTHOR = "sb3-iql"
# Minari warns about every optional metadata field left empty; these are optional for local datasets
_OPTIONAL_METADATA_WARNING = r"`(code_permalink|author_email)` is set to None"
_METADATA_FILE = "metadata.json"


def dataset_path(dataset_id: str) -> Path:
    """
    :param dataset_id: Minari dataset id, e.g. ``sb3_iql/pointmaze/umaze-v0``.
    :return: The folder of the dataset under ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).
    """
    return get_dataset_path(dataset_id)


def dataset_exists(dataset_id: str) -> bool:
    """
    :param dataset_id: Minari dataset id.
    :return: Whether a complete dataset with this id is stored locally.
    """
    return (dataset_path(dataset_id) / "data" / _METADATA_FILE).is_file()


def check_writable(dataset_id: str, overwrite: bool = False) -> None:
    """
    Fail early, before any data is generated, if ``dataset_id`` cannot be written.

    A folder without metadata (left over by a create that failed before this package guarded against it)
    does not count as a dataset and is replaced when writing.

    :param dataset_id: Minari dataset id.
    :param overwrite: Whether an existing dataset may be replaced.
    :raises FileExistsError: If the dataset exists and ``overwrite`` is False.
    """
    parse_dataset_id(dataset_id)  # raises ValueError on a malformed id
    if dataset_exists(dataset_id) and not overwrite:
        raise FileExistsError(
            f"Dataset {dataset_id} already exists at {dataset_path(dataset_id)}. "
            "Pass overwrite=True (CLI: --overwrite) or delete it with minari.delete_dataset()."
        )


def write_dataset(
    dataset_id: str,
    episodes: Sequence[EpisodeBuffer],
    env: gym.Env,
    eval_env: str | EnvSpec | gym.Env | None = None,
    overwrite: bool = False,
    **metadata: Any,
) -> minari.MinariDataset:
    """
    Write episodes to a new local Minari dataset with ``minari.create_dataset_from_buffers``.

    On failure the partially written folder is removed, so that the id can be used again.

    :param dataset_id: Minari dataset id.
    :param episodes: The episodes; ``observations`` hold one more row than ``actions`` (the last observation).
    :param env: The environment the data comes from (its spec and spaces are stored).
    :param eval_env: The evaluation environment (spec stored for ``dataset.recover_environment(eval_env=True)``);
        defaults to the spec of ``env``.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :param metadata: Further keyword arguments of ``minari.create_dataset_from_buffers``
        (``algorithm_name``, ``ref_min_score``, ``ref_max_score``, ``description``...).
    :return: The new dataset.
    """
    check_writable(dataset_id, overwrite)
    path = dataset_path(dataset_id)
    if path.exists():
        shutil.rmtree(path)
    metadata.setdefault("author", AUTHOR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_OPTIONAL_METADATA_WARNING)
            return minari.create_dataset_from_buffers(
                dataset_id, list(episodes), env=env, eval_env=eval_env if eval_env is not None else env.spec, **metadata
            )
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
