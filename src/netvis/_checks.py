"""Argument checks shared by the whole library, each raising an error that names the argument.

An int here is a Python or NumPy integer and never a ``bool`` (``True`` is not a batch size).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["check_fraction", "check_int", "check_pair", "check_positive_int", "is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``int``, NumPy integers) and not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; raise unless it is an integer ``>= minimum``.

    Raises:
        ValueError: ``value`` is not an integer or is below ``minimum`` (a ``ValueError`` rather than a
            ``TypeError`` so that a command-line option gets one kind of error whatever was wrong).
    """
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int``; raise ``ValueError("<name> must be a positive int, ...")`` unless it is one."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_pair(value: int | Sequence[int], name: str, *, minimum: int = 1) -> tuple[int, int]:
    """An int ``k`` or a pair ``(a, b)`` of ints, each ``>= minimum``, as ``(a, b)`` (``k`` gives ``(k, k)``).

    Raises:
        TypeError: ``value`` is neither an int nor a pair of ints.
        ValueError: a value is below ``minimum``.
    """
    if is_int(value):
        pair: tuple[Any, ...] = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_fraction(value: Any, name: str, *, closed_low: bool = False) -> float:
    """``value`` as a ``float`` in ``(0, 1]`` (``[0, 1]`` with ``closed_low``); raise ``ValueError`` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number in {'[' if closed_low else '('}0, 1], got {value!r}")
    number = float(value)
    low_ok = number >= 0 if closed_low else number > 0
    if not (low_ok and number <= 1):
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}0, 1], got {value!r}")
    return float(value)
