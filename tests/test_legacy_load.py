"""Save files of earlier versions still load: same deterministic actions as when they were saved."""

import pathlib

import numpy as np
import pytest

from sb3_iql import IQL

DATA = pathlib.Path(__file__).parent / "data"
#: Commits whose save files are in ``tests/data`` (written by ``tests/data/make_legacy_model.py``).
LEGACY_COMMITS = ["1a48893"]


@pytest.mark.parametrize("commit", LEGACY_COMMITS)
def test_a_model_saved_by_an_earlier_version_predicts_as_it_did(commit):
    model = IQL.load(DATA / f"iql_{commit}.zip", device="cpu")
    with np.load(DATA / f"iql_{commit}_predictions.npz") as saved:
        observations, actions = saved["observations"], saved["actions"]
    assert observations.shape == (8, 2)
    np.testing.assert_array_equal(model.predict(observations, deterministic=True)[0], actions)
