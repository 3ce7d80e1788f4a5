"""argparse types of the command lines (``python -m sb3_iql.datasets``, the examples, the benchmarks)."""

import argparse
from collections.abc import Callable


def int_at_least(least: int) -> Callable[[str], int]:
    """:return: an argparse type: an integer of at least ``least``"""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = f"integer >= {least}"  # argparse names the type in its "invalid ..." messages
    return parse


#: An integer of at least 1 (steps, updates, episodes...).
positive_int = int_at_least(1)
#: An integer of at least 0 (a seed...).
non_negative_int = int_at_least(0)
