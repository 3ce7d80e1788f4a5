"""
sb3_iql's IQL against d3rlpy's, update by update (``benchmarks/d3rlpy_diff.py``): the d3rlpy-matched
configuration agrees to float precision, sb3_iql's default configuration does not.
"""

import functools
import importlib.util
import pathlib
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
N_UPDATES = 100


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def d3rlpy_diff() -> ModuleType:
    """The benchmark module, imported only when a test runs (importing d3rlpy takes seconds)."""
    pytest.importorskip("d3rlpy")
    return load_benchmark("d3rlpy_diff")


@functools.cache
def compare(module: ModuleType, config_name: str, dtype: str) -> dict[str, Any]:
    """``compare`` of the benchmark, each configuration and dtype run once for all tests."""
    return module.compare(config_name, N_UPDATES, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matched_configuration_agrees(d3rlpy_diff, dtype):
    result = compare(d3rlpy_diff, "d3rlpy-matched", dtype)
    assert sorted(result["param_diff"]) == [1, N_UPDATES]
    assert result["batch_diff"] == 0.0  # both data paths give bitwise identical batches
    assert d3rlpy_diff.disagreements(result) == []
    final = result["param_diff"][N_UPDATES]
    assert max(final.values()) <= result["tolerance"], final


def test_default_configuration_differs(d3rlpy_diff):
    result = compare(d3rlpy_diff, "default", "float32")
    tolerance = result["tolerance"]
    assert result["batch_diff"] == 0.0
    # Update 1: the value step is the same in both orders, the critics' target is not (sequential: the new V(s')),
    # the mean network's gradient is the same, the log-std's is not (clipped vs sigmoid parameter).
    grads = result["grad_diff"]
    assert grads["value"] <= tolerance * max(1.0, result["grad_scale"]["value"])
    assert grads["actor_mean"] <= tolerance * max(1.0, result["grad_scale"]["actor_mean"])
    assert grads["critic"] > 100 * tolerance and grads["actor_log_std"] > 100 * tolerance
    final = result["param_diff"][N_UPDATES]
    assert all(final[column] > tolerance for column in ("actor_mean", "actor_log_std", "critic", "value")), final
    assert max(final.values()) > 100 * tolerance
    assert d3rlpy_diff.disagreements(result)


def test_script_exit_status(d3rlpy_diff, capsys):
    assert d3rlpy_diff.main(["--updates", "2", "--dtypes", "float32"]) == 0
    assert "d3rlpy-matched: agrees within tolerance" in capsys.readouterr().out
    # float64 with expectile 0.9: d3rlpy's float32 expectile weights put the value gradients ~3e-10 apart.
    assert d3rlpy_diff.main(["--updates", "2", "--dtypes", "float64", "--float64-expectile", "0.9"]) == 1
    assert "d3rlpy-matched: DISAGREES" in capsys.readouterr().out
