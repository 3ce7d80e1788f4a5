"""Save files of earlier versions still load: same deterministic actions as when they were saved."""

import io
import pathlib

import numpy as np
import pytest
import torch as th

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


@pytest.mark.parametrize("kept", [None, "image_scaling"])
def test_a_policy_pickled_whole_before_its_networks_kept_their_preprocessing_still_predicts(kept):
    model = IQL.load(DATA / f"iql_{LEGACY_COMMITS[0]}.zip", device="cpu")
    for network in (model.actor, model.critic, model.critic_target, model.value_net):
        del network.preprocessing  # as the networks were pickled before they had it
        if kept is not None:  # the versions that kept whether they scaled images, under that name
            setattr(network, kept, False)
    buffer = io.BytesIO()
    th.save(model.policy, buffer)
    buffer.seek(0)
    policy = th.load(buffer, weights_only=False)
    with np.load(DATA / f"iql_{LEGACY_COMMITS[0]}_predictions.npz") as saved:
        observations, actions = saved["observations"], saved["actions"]
    np.testing.assert_array_equal(policy.predict(observations, deterministic=True)[0], actions)
    assert all(not hasattr(network, "image_scaling") for network in (policy.actor, policy.critic, policy.value_net))
