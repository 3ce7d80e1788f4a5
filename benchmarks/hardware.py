"""What the benchmarks ran on, for their reports."""

import platform


def cpu_model() -> str:
    """:return: the CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows, else ``"CPU"``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"
