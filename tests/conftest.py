"""Shared fixtures: single-threaded torch and a temporary Minari root for every dataset a test writes."""

import pathlib

import pytest
import stable_baselines3.common.policies
import torch as th

import sb3_iql.iql.policies

th.set_num_threads(1)


@pytest.fixture
def minari_root(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Point MINARI_DATASETS_PATH at an empty temporary folder for the test."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> th.dtype:
    """Let float64 observations through SB3's preprocessing and ours (they cast Box observations to float32)."""
    keep = lambda obs, *args, **kwargs: obs  # noqa: E731
    monkeypatch.setattr(stable_baselines3.common.policies, "preprocess_obs", keep)
    monkeypatch.setattr(sb3_iql.iql.policies, "preprocess_observations", keep)
    return th.float64
