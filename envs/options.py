"""Strict checking of environment option dataclasses.

Every environment in `envs.registry` has a frozen dataclass of options (`SpreadOptions`, `SignalOptions`,
...). The config layer hands us plain mappings read from YAML and the CLI; this module turns such a mapping
into the dataclass and checks it, so that a typo or a wrong type fails before Ray starts, naming the key
(`env.options.<field>`, the key's path in the experiment config).

Type rules (the same as the rest of the config tree): `bool` is not accepted where an `int` is expected
(YAML `yes` must not silently become 1); an `int` is accepted where a `float` is expected, stored as a float.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

OPTIONS_PREFIX = "env.options"
"""Path of the options in the experiment config; every error names the field below it."""

T = TypeVar("T")


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
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    raise TypeError(f"option annotation {expected!r} is not supported; use bool, int, float, str or X | None")


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
        TypeError: naming `env.options.<field>`, the expected type and the value given.
    """
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        expected = hints[field.name]
        value = getattr(options, field.name)
        if not _matches(value, expected):
            raise TypeError(
                f"{field_path(field.name)} must be {_type_name(expected)}, got {value!r} of type {type(value).__name__}"
            )
        if expected is float and isinstance(value, int):
            object.__setattr__(options, field.name, float(value))


def require(condition: bool, name: str, expected: str, value: Any) -> None:
    """Raise `ValueError("env.options.<name> must be <expected>, got <value>")` unless `condition` holds."""
    if not condition:
        raise ValueError(f"{field_path(name)} must be {expected}, got {value!r}")


def options_from_mapping(options_cls: type[T], values: Mapping[str, Any], *, env_name: str) -> T:
    """Build the options dataclass `options_cls` from a mapping, strictly.

    Args:
        options_cls: a dataclass whose `__post_init__` calls `check_field_types` and checks ranges.
        values: option name -> value; keys left out take the dataclass defaults.
        env_name: the registry name of the environment, for the error messages.

    Raises:
        ValueError: an unknown key (the message lists the valid keys) or an out-of-range value.
        TypeError: a non-string key, or a value of the wrong type.
    """
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"options class {options_cls!r} of env '{env_name}' is not a dataclass")
    valid = [field.name for field in dataclasses.fields(options_cls)]
    for key in values:
        if not isinstance(key, str):
            raise TypeError(f"option keys of env '{env_name}' must be strings, got {key!r}")
        if key not in valid:
            raise ValueError(f"unknown option {field_path(key)} for env '{env_name}'; valid keys: {', '.join(valid)}")
    return options_cls(**values)
