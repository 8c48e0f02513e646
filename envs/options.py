"""Strict checking of environment option dataclasses.

Every environment in `envs.registry` has a frozen dataclass of options (`SpreadOptions`, `SignalOptions`,
...). The config layer hands us plain mappings read from YAML and the CLI; this module turns such a mapping
into the dataclass and checks it, so that a typo or a wrong type fails before Ray starts, naming the key
(`env.options.<field>`, the key's path in the experiment config).

Type rules (the same as the rest of the config tree): `bool` is not accepted where an `int` is expected
(YAML `yes` must not silently become 1); an `int` is accepted where a `float` is expected, stored as a float,
and a whole float where an `int` is expected (`1e3`), stored as an int; a float must be finite.

Team sizes are bounded by `MAX_AGENTS`: the probe that checks a config builds the env once before Ray starts,
and an absurd count (10,000 mpe agents took over two minutes and 1.45 GB just to be checked) must be refused
with a sentence, not attempted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from commformer.validate import ConfigError

OPTIONS_PREFIX = "env.options"
"""Path of the options in the experiment config; every error names the field below it."""

T = TypeVar("T")

MAX_AGENTS = 1024
"""The most agents a team (or one side) may have: the largest teams this library is built for are MAgent2
battles of 1,000 a side; the policy's attention and every env here grow at least linearly in it."""

MAX_GRID = 1024
"""The longest side of a grid world (predator-prey, traffic junction, MAgent2 maps): its cells are arrays in memory."""


def field_path(name: str) -> str:
    """The dotted config path of option `name`, as errors print it."""
    return f"{OPTIONS_PREFIX}.{name}"


def _matches(value: Any, expected: Any) -> bool:
    """Whether `value` fits the annotation `expected` (bool, int, float, str, None or a union of these)."""
    if expected is type(None) or expected is None:
        return value is None
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        # bool subclasses int; a YAML `true` where a count is expected is a mistake, not 1.
        return (isinstance(value, int) and not isinstance(value, bool)) or _whole(value)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    raise TypeError(f"option annotation {expected!r} is not supported; use bool, int, float, str or X | None")


def _whole(value: Any) -> bool:
    """A float that is a whole number (YAML reads `1e3` as 1000.0)."""
    return isinstance(value, float) and value.is_integer()


def _type_name(expected: Any) -> str:
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return "None"
    return getattr(expected, "__name__", repr(expected))


def check_field_types(options: Any) -> None:
    """Check every field of the dataclass instance `options` against its annotation.

    Called from the `__post_init__` of each options class, so a direct construction in Python is as strict as
    one from YAML. An `int` in a `float` field is converted to `float` in place (the dataclasses are frozen,
    hence `object.__setattr__`), so that equality and printing do not depend on how the value was written.

    Raises:
        ConfigError: naming `env.options.<field>`, the expected type and the value given, or a float that is not
            finite (nan, inf).
    """
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        expected = hints[field.name]
        value = getattr(options, field.name)
        if not _matches(value, expected):
            raise ConfigError(
                f"{field_path(field.name)} must be {_type_name(expected)}, got {value!r} of type {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field_path(field.name)} must be finite, got {value!r}")
        if expected is float and isinstance(value, int):
            object.__setattr__(options, field.name, float(value))
        elif _whole(value) and expected is not float and float not in typing.get_args(expected):
            object.__setattr__(options, field.name, int(value))  # a count written as 1e3


def require_grid(name: str, value: int) -> None:
    """Raise unless the grid side option `name` is at most MAX_GRID (its lower bound is the env's own check)."""
    require(value <= MAX_GRID, name, f"<= {MAX_GRID} (MAX_GRID, envs/options.py)", value)


def require_agents(name: str, value: int, least: int = 1) -> None:
    """Raise unless the team size option `name` is in [least, MAX_AGENTS]."""
    require(least <= value <= MAX_AGENTS, name, f"in [{least}, {MAX_AGENTS}] (MAX_AGENTS, envs/options.py)", value)


def require(condition: bool, name: str, expected: str, value: Any) -> None:
    """Raise `ConfigError("env.options.<name> must be <expected>, got <value>")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field_path(name)} must be {expected}, got {value!r}")


def options_from_mapping(options_cls: type[T], values: Mapping[str, Any], *, env_name: str) -> T:
    """Build the options dataclass `options_cls` from a mapping, strictly.

    Args:
        options_cls: a dataclass whose `__post_init__` calls `check_field_types` and checks ranges.
        values: option name -> value; keys left out take the dataclass defaults.
        env_name: the registry name of the environment, for the error messages.

    Raises:
        ConfigError: an unknown key (the message lists the valid keys), a non-string key, a value of the wrong type
            or out of range.
        TypeError: `options_cls` is not a dataclass (a bug in the env, not input).
    """
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"options class {options_cls!r} of env '{env_name}' is not a dataclass")
    valid = [field.name for field in dataclasses.fields(options_cls)]
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"option keys of env '{env_name}' must be strings, got {key!r}")
        if key not in valid:
            raise ConfigError(f"unknown option {field_path(key)} for env '{env_name}'; valid keys: {', '.join(valid)}")
    return options_cls(**values)
