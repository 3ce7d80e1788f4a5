"""Shared fixtures: single-threaded torch and a temporary Minari root for every dataset a test writes."""

import pathlib

import pytest
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
    """Let float64 observations through the networks' preprocessing (SB3's casts Box observations to float32)."""
    monkeypatch.setattr(sb3_iql.iql.policies, "preprocess_observations", lambda obs, *args, **kwargs: obs)
    return th.float64
