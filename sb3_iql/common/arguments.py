"""argparse types of the command lines (``python -m sb3_iql.datasets``, the examples, the benchmarks)."""

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (steps, updates, episodes...)."""
    return _at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a seed...)."""
    return _at_least(text, 0)


def _at_least(text: str, least: int) -> int:
    value = int(text)
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value
