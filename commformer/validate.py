"""Validators shared by the config dataclasses and the model's input checks: each raises ValueError naming the dotted
setting (or the input) and what was expected (bool is never accepted as a number: `embed_dim: true` in YAML must not
pass as 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["require_bool", "require_choice", "require_float", "require_int", "require_shape"]


def require_int(path: str, value: object, minimum: int) -> None:
    """Raise unless ``value`` is an int (not a bool) and ``value >= minimum``."""
    # bool is a subclass of int: `embed_dim: true` in YAML must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}={value!r} ({type(value).__name__}); expected an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{path}={value}; expected an integer >= {minimum}")


def require_float(path: str, value: object) -> float:
    """Raise unless ``value`` is a finite real number (int or float, not bool); return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}={value!r} ({type(value).__name__}); expected a real number")
    if not math.isfinite(value):
        raise ValueError(f"{path}={value}; expected a finite number")
    return float(value)


def require_bool(path: str, value: object) -> None:
    """Raise unless ``value`` is a bool (YAML ``true``/``false``)."""
    if not isinstance(value, bool):
        raise ValueError(f"{path}={value!r} ({type(value).__name__}); expected true or false")


def require_choice(path: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{path}={value!r}; expected one of {expected}")


def require_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    """Raise unless the input ``name`` has ``shape == expected`` (a tensor's ``shape``, or any sequence of sizes)."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}; expected {tuple(expected)}")
