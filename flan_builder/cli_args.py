"""Argument types shared by the ``flan`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse


def comma_list(value: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in value.split(",") if v.strip()]


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def int_list(value: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        return [int(v) for v in comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma list of whole numbers") from None


def batch_size(value: str) -> int | str:
    """A whole number >= 1, or 'auto' (batches sized by a token budget)."""
    return value if value == "auto" else positive_int(value)


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number != number or number < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number
