"""Checked argparse types for the command line: a bad number is refused up front, with the
flag's name (argparse prefixes it), before any model loads; 0 is a value, never "unset"."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "non_negative_int", "ratio", "non_negative_float"]


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an int' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: a positive int (1 or more)")
    return int(value)


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: an int of 0 or more")
    return int(value)


def ratio(text: str) -> float:
    """A fraction in [0, 1)."""
    value = float(_number(text, float))
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range [0, 1)")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is invalid: a number of 0 or more")
    return value
