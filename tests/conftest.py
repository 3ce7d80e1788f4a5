"""Shared fixtures: single-threaded torch and a temporary Minari root for every dataset a test writes."""

import pathlib

import pytest
import torch as th

th.set_num_threads(1)


@pytest.fixture
def minari_root(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Point MINARI_DATASETS_PATH at an empty temporary folder for the test."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root
