"""Validators shared by the config dataclasses and the model's input checks: each raises ValueError naming the dotted
setting (or the input) and what was expected (bool is never accepted as a number: `embed_dim: true` in YAML must not
pass as 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAX_DEPTH", "MAX_WIDTH", "require_bool", "require_choice", "require_float", "require_int", "require_shape"]


MAX_WIDTH = 4096
"""The widest layer a config may ask for (embed_dim, expert hidden width): one 4096 x 4096 weight is 64 MB in
float32, and a block holds a dozen; anything wider is a typo, refused before a model is built."""
MAX_DEPTH = 64
"""The most stacked blocks (encoder, decoder) a config may ask for."""


def require_int(path: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Raise unless ``value`` is an int (not a bool) and ``minimum <= value`` (``<= maximum`` when given)."""
    # bool is a subclass of int: `embed_dim: true` in YAML must not pass as 1.
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}={value!r} ({type(value).__name__}); expected {expected}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{path}={value}; expected {expected}")


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
