"""The one vocabulary of config checks, and the one error type they raise.

Every config check of the project (the experiment in agents/config.py, the model's part in commformer/config.py,
each env's options in envs/options.py, the typed conversion in commformer/typed.py) goes through these functions
and raises `ConfigError`, naming the dotted setting and what was expected; bool is never accepted as a number
(`embed_dim: true` in YAML must not pass as 1). `require_shape` checks a model input, not a setting, and raises a
plain ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "MAX_DEPTH",
    "MAX_WIDTH",
    "ConfigError",
    "require_at_least",
    "require_bool",
    "require_choice",
    "require_float",
    "require_in_range",
    "require_int",
    "require_positive",
    "require_shape",
]


class ConfigError(ValueError, TypeError):
    """A configuration value was missing, unknown, of the wrong type or out of range.

    Both a ValueError and a TypeError, as a bad setting is one or the other: callers that catch either (the CLI,
    code written before this type existed) keep working, and one `except ConfigError` catches every refusal.
    """


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
        raise ConfigError(f"{path}={value!r} ({type(value).__name__}); expected {expected}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{path}={value}; expected {expected}")


def require_float(path: str, value: object) -> float:
    """Raise unless ``value`` is a finite real number (int or float, not bool); return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}={value!r} ({type(value).__name__}); expected a real number")
    if not math.isfinite(value):
        raise ConfigError(f"{path}={value}; expected a finite number")
    return float(value)


def require_positive(path: str, value: float) -> None:
    """Raise unless the number ``value > 0``."""
    if not value > 0:
        raise ConfigError(f"{path}={value}; expected a value > 0")


def require_at_least(path: str, value: float, minimum: float) -> None:
    """Raise unless the number ``value >= minimum``."""
    if not value >= minimum:
        raise ConfigError(f"{path}={value}; expected a value >= {minimum}")


def require_in_range(path: str, value: float, lo: float, hi: float) -> None:
    """Raise unless ``lo <= value <= hi``."""
    if not lo <= value <= hi:
        raise ConfigError(f"{path}={value}; expected a value in [{lo}, {hi}]")


def require_bool(path: str, value: object) -> None:
    """Raise unless ``value`` is a bool (YAML ``true``/``false``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{path}={value!r} ({type(value).__name__}); expected true or false")


def require_choice(path: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{path}={value!r}; expected one of {expected}")


def require_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    """Raise unless the input ``name`` has ``shape == expected`` (a tensor's ``shape``, or any sequence of sizes)."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}; expected {tuple(expected)}")
