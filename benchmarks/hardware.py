"""What the benchmarks ran on, for their reports."""

import os
import platform

import torch as th


def cpu_model() -> str:
    """:return: the CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows, else ``"CPU"``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def cpu_flags(names: tuple[str, ...] = ("avx", "avx2", "fma", "avx512f", "avx512_fp16", "amx_tile")) -> list[str]:
    """:return: those of ``names`` that the CPU's flags in ``/proc/cpuinfo`` (Linux) list, in order (none elsewhere)"""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return [name for name in names if name in flags]


def machine() -> dict[str, str | int | None]:
    """
    :return: What a benchmark's floating point and speed depend on: the CPU and its logical cores, torch, the
        kernels torch dispatches to on that CPU (``ATEN_CPU_CAPABILITY`` overrides them), MKL's instruction cap
        (``MKL_ENABLE_INSTRUCTIONS``) and Python.
    """
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": th.__version__,
        "torch_cpu_capability": th.backends.cpu.get_cpu_capability(),
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        "python": platform.python_version(),
    }
