"""Writing Minari datasets safely: no jax needed, no half-written dataset left behind, even after a crash."""

import contextlib
import errno
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_storage import is_image_space
from minari.storage import get_dataset_path

from sb3_iql.data.minari_loader import check_dataset_id, row_shape_fits
from sb3_iql.evaluation import REFERENCE_SCORE_KEYS

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
    :raises ValueError: If ``dataset_id`` is not of the form ``[namespace/]name-vN``.
    :raises FileExistsError: If the dataset exists and ``overwrite`` is False.
    """
    check_dataset_id(dataset_id)
    if dataset_exists(dataset_id) and not overwrite:
        raise FileExistsError(
            f"Dataset {dataset_id} already exists at {dataset_path(dataset_id)}. "
            "Pass overwrite=True (CLI: --overwrite) or delete it with minari.delete_dataset()."
        )


def check_specs_storable(*envs: str | EnvSpec | gym.Env | None) -> None:
    """
    Fail early, before any data is generated, if an environment's spec cannot be stored in a dataset's metadata
    (Minari serialises it with ``EnvSpec.to_json``).

    :param envs: environments, their specs or ids (None and environments without a spec are skipped)
    :raises ValueError: a spec that does not serialise, e.g. one registered with a callable entry point
    """
    for env in envs:
        spec = gym.spec(env) if isinstance(env, str) else env if isinstance(env, EnvSpec) else getattr(env, "spec", None)
        if spec is None:
            continue
        try:
            spec.to_json()
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"The spec of environment {spec.id} cannot be stored in the dataset ({error}): register it with an "
                "entry point string, 'module:Class', and keyword arguments that JSON can hold"
            ) from error


def write_dataset(
    dataset_id: str,
    episodes: Sequence[EpisodeBuffer],
    env: gym.Env,
    eval_env: str | EnvSpec | gym.Env | None = None,
    overwrite: bool = False,
    jpeg_encoding: bool = False,
    **metadata: Any,
) -> minari.MinariDataset:
    """
    Write episodes to a new local Minari dataset with ``minari.create_dataset_from_buffers``.

    The dataset is written in a staging folder and moved into place when complete: on failure, and after a crash,
    nothing is left under the id, which can be used again.

    :param dataset_id: Minari dataset id.
    :param episodes: The episodes; ``observations`` hold one more row than ``actions`` (the last observation).
    :param env: The environment the data comes from (its spec and spaces are stored).
    :param eval_env: The evaluation environment (spec stored for ``dataset.recover_environment(eval_env=True)``);
        defaults to the spec of ``env``.
    :param overwrite: Whether to replace an existing dataset with the same id.
    :param jpeg_encoding: Store image observations (uint8 frames of at least 32x32 pixels) as JPEG, Minari's
        default: lossy, and only for 2-D or RGB ``(H, W, 3)`` frames. Off by default: frames load back exactly.
    :param metadata: Further keyword arguments of ``minari.create_dataset_from_buffers``
        (``algorithm_name``, ``ref_min_score``, ``ref_max_score``, ``description``...).
    :return: The new dataset.
    """
    check_writable(dataset_id, overwrite)
    episodes = list(episodes)  # read twice (a generator once only)
    check_episodes(episodes, env.observation_space)
    if jpeg_encoding:
        check_jpeg_frames(env.observation_space)
    path = dataset_path(dataset_id)
    metadata.setdefault("author", AUTHOR)
    # Written in a staging root beside the datasets root, then moved into place: a crash mid-write (even a killed
    # process) leaves no half-written dataset under the id, only a staging folder outside Minari's root.
    # absolute: Minari joins a relative MINARI_DATASETS_PATH (the staging root, here) to the working folder again,
    # and the parent of "." is "." (the staging folder would be inside the datasets root)
    beside_root = Path(get_dataset_path()).resolve().parent
    remove_crashed_staging(beside_root)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(os.getpid()), dir=beside_root))
    try:
        with _datasets_root(staging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_OPTIONAL_METADATA_WARNING)
            written = minari.create_dataset_from_buffers(
                dataset_id,
                episodes,
                env=env,
                eval_env=eval_env if eval_env is not None else env.spec,
                jpeg_encoding=jpeg_encoding,
                **metadata,
            )
            # Minari keeps reference scores only with an environment spec (to measure a missing minimum): kept here
            scores = {key: metadata[key] for key in REFERENCE_SCORE_KEYS if metadata.get(key) is not None}
            if scores.keys() - written.storage.metadata.keys():
                written.storage.update_metadata(scores)
        _move_into_place(staging, dataset_id, path, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return minari.load_dataset(dataset_id)


#: Where a staging folder keeps the dataset it replaces until the new one is in place (``_move_into_place``).
_REPLACED = "replaced"


def _move_into_place(staging: Path, dataset_id: str, path: Path, overwrite: bool) -> None:
    """
    Move the dataset written under ``staging`` to ``path``, by renaming (atomic on one file system). A dataset already
    there is kept where it is another process's, written meanwhile (``overwrite`` False: checked before, at the
    start); it is replaced where ``overwrite`` (or where it is a folder without metadata): moved into the staging
    folder first and deleted only once the new one is in place, moved back where the move fails, and restored by
    ``remove_crashed_staging`` where the process dies in between.

    :raises FileExistsError: another process wrote the dataset meanwhile (kept), and ``overwrite`` is False
    """
    raced = FileExistsError(f"Dataset {dataset_id} was written by another process meanwhile: it is kept, not this one")
    replaced = staging / _REPLACED / dataset_id
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if dataset_exists(dataset_id) and not overwrite:
            raise raced
        replaced.parent.mkdir(parents=True, exist_ok=True)
        _rename(path, replaced)
    try:
        _rename(staging / dataset_id, path)
    except OSError as error:
        if replaced.exists() and not path.exists():
            _rename(replaced, path)
        if isinstance(error, FileExistsError) or error.errno == errno.ENOTEMPTY:  # another process's, since
            raise raced from error
        raise


def _rename(source: Path, target: Path) -> None:
    """``os.rename`` (a target folder that is not empty refuses it), across file systems as a copy"""
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        if target.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from error
        shutil.move(source, target)


def check_episodes(episodes: Sequence[EpisodeBuffer], observation_space: gym.Space) -> None:
    """
    Refuse episodes Minari would write but not read back (or fail on mid-write, naming nothing).

    :param episodes: the episodes to write
    :param observation_space: the environment's observation space
    :raises ValueError: an episode without steps, with other than one observation more than its actions, or
        observations of another structure or shape than the space's, naming the episode
    """
    for index, episode in enumerate(episodes):
        n_steps = len(episode.actions)
        where = f"Episode {index} (id {episode.id})"
        if n_steps == 0:
            raise ValueError(f"{where} holds no step: leave it out")
        for field in ("rewards", "terminations", "truncations"):
            if len(getattr(episode, field)) != n_steps:
                raise ValueError(f"{where}: {field} holds {len(getattr(episode, field))} steps for {n_steps} actions")
        _check_observations(f"{where}: observations", episode.observations, observation_space, n_steps + 1)


def _check_observations(where: str, values: Any, space: gym.Space, n_rows: int) -> None:
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(values, dict) or set(values) != set(space.spaces):
            keys = sorted(values) if isinstance(values, dict) else f"a {type(values).__name__}"
            raise ValueError(f"{where} have keys {keys}; the observation space has {sorted(space.spaces)}")
        for key, subspace in space.spaces.items():
            _check_observations(f"{where}[{key!r}]", values[key], subspace, n_rows)
        return
    shape = np.shape(values) if not isinstance(values, dict) else None
    if shape is None or shape[:1] != (n_rows,) or not row_shape_fits(shape[1:], space):  # rows the loader takes
        raise ValueError(
            f"{where} have shape {shape if shape is not None else 'of a dict'}: expected {(n_rows, *space.shape)} "
            f"(one row per step and the last observation, each of {space})"
        )


def check_jpeg_frames(space: gym.Space) -> None:
    """
    Refuse JPEG storage for image observations JPEG cannot hold (PIL fails on them mid-write).

    :param space: Observation space; Dict spaces are checked key by key.
    :raises ValueError: For an image space (as Minari detects them) of shape ``(H, W, C)`` with ``C`` other than 3.
    """
    if isinstance(space, gym.spaces.Dict):
        for subspace in space.spaces.values():
            check_jpeg_frames(subspace)
    elif is_image_space(space) and len(space.shape) == 3 and space.shape[-1] != 3:
        raise ValueError(
            f"JPEG stores 2-D or RGB (H, W, 3) frames, not frames of shape {space.shape}: "
            "pass jpeg_encoding=False (lossless, the default)"
        )


#: Staging folders of datasets being written, beside the datasets root (``write_dataset``), named after the host
#: and the process writing them: ``.sb3_iql-writing-<host>-<pid>-<random>``.
_STAGING_PREFIX = ".sb3_iql-writing-"


def _host_prefix() -> str:
    return f"{_STAGING_PREFIX}{socket.gethostname()}-"


def _staging_prefix(pid: int) -> str:
    return f"{_host_prefix()}{pid}-"


def remove_crashed_staging(folder: Path) -> list[Path]:
    """
    Remove the staging folders that writers on this host left behind when they died mid-write (their process is
    gone), with a warning naming each: a crashed generation leaves no trace the next one trips on.

    :param folder: the folder holding the staging folders (beside the datasets root)
    :return: the folders removed
    """
    removed = []
    for staging in folder.glob(f"{_host_prefix()}*"):
        pid_text = staging.name.removeprefix(_host_prefix()).split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        _restore_replaced(staging / _REPLACED)
        shutil.rmtree(staging, ignore_errors=True)
        warnings.warn(f"Removed {staging}: a dataset generation (process {pid_text}) crashed while writing it", stacklevel=3)
        removed.append(staging)
    return removed


def _restore_replaced(replaced: Path) -> None:
    """Put back the datasets a writer had moved aside to replace them (``_move_into_place``) when it died before the
    new one was in place (nothing at their id)."""
    for metadata in list(replaced.glob(f"**/data/{_METADATA_FILE}")):  # listed first: folders move
        folder = metadata.parent.parent
        dataset_id = folder.relative_to(replaced).as_posix()
        if not dataset_path(dataset_id).exists():
            dataset_path(dataset_id).parent.mkdir(parents=True, exist_ok=True)
            _rename(folder, dataset_path(dataset_id))
            warnings.warn(f"Restored dataset {dataset_id}: a writer replacing it crashed", stacklevel=4)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def _datasets_root(root: Path) -> Iterator[None]:
    """Within the block, Minari reads and writes datasets under ``root`` (``MINARI_DATASETS_PATH``)."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
