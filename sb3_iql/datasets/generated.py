"""Load a dataset by id, generating this package's own ids (PointMaze, in pixels too, medium-expert) on first use."""

import minari

from sb3_iql.datasets.collect import DEFAULT_N_REFERENCE_EPISODES
from sb3_iql.datasets.medium_expert import make_medium_expert_dataset, parse_medium_expert_dataset_id
from sb3_iql.datasets.pixels import make_pixel_pointmaze_dataset, parse_pixel_dataset_id
from sb3_iql.datasets.pointmaze import (
    DEFAULT_N_STEPS,
    check_generated_correctly,
    make_pointmaze_dataset,
    parse_pointmaze_dataset_id,
)
from sb3_iql.datasets.storage import dataset_exists


def ensure_dataset(
    dataset_id: str,
    n_steps: int | None = None,
    seed: int = 0,
    n_reference_episodes: int = DEFAULT_N_REFERENCE_EPISODES,
    download: bool = False,
) -> minari.MinariDataset:
    """
    Load a dataset, generating it first if it is one of this package's ids (PointMaze, medium-expert) and not
    stored locally.

    :param dataset_id: An id of this package (generated on first use) or any Minari id (loaded).
    :param n_steps: Number of steps to generate (default: the family's). When given, a local dataset of another
        size is an error.
    :param seed: Seed used when generating.
    :param n_reference_episodes: Episodes per reference score when generating.
    :param download: For other ids, whether to download from the Minari server when not local.
    :return: The dataset.
    """
    if dataset_exists(dataset_id):
        dataset = minari.load_dataset(dataset_id)
        if n_steps is not None and dataset.total_steps != n_steps:
            raise ValueError(
                f"Local dataset {dataset_id} has {dataset.total_steps} steps, not {n_steps}: "
                "delete it (minari.delete_dataset) or ask for its size."
            )
        check_generated_correctly(dataset)
        return dataset
    try:
        env_id = parse_medium_expert_dataset_id(dataset_id)
    except ValueError:
        pass
    else:
        steps = {} if n_steps is None else {"n_steps": n_steps}
        return make_medium_expert_dataset(env_id, seed=seed, n_reference_episodes=n_reference_episodes, **steps)
    try:
        source_id, size = parse_pixel_dataset_id(dataset_id)
    except ValueError:
        pass
    else:
        source = ensure_dataset(source_id, seed=seed, n_reference_episodes=n_reference_episodes)
        steps = {} if n_steps is None else {"n_steps": n_steps}
        return make_pixel_pointmaze_dataset(source, size, dataset_id=dataset_id, **steps)
    try:
        maze, reward, stitch, recipe = parse_pointmaze_dataset_id(dataset_id)
    except ValueError:
        return minari.load_dataset(dataset_id, download=download)
    return make_pointmaze_dataset(
        maze,
        reward,
        stitch,
        n_steps=DEFAULT_N_STEPS if n_steps is None else n_steps,
        seed=seed,
        n_reference_episodes=n_reference_episodes,
        recipe=recipe,
    )
