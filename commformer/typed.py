"""Strict conversion between plain data (YAML, JSON, CLI) and frozen config dataclasses.

No coercion beyond int -> float and a whole float -> int (`1e6` steps is 1,000,000 steps; 2.5 steps is refused):
`true` is not 1, "3" is not 3. A float must be finite: `.nan` or `.inf` as a learning rate would break a run
without stopping it. Every error names the dotted key and what was expected, so a typo in a YAML file or an
override fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from commformer.validate import ConfigError

__all__ = ["ConfigError", "Converter", "convert", "from_mapping", "to_dict"]

Converter = Callable[[Any, str], Any]
"""A custom converter for one dataclass type: (plain data, dotted path) -> instance."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(tp: Any, value: Any, path: str, converters: Mapping[type, Converter] | None = None) -> Any:
    """Checks `value` against the type hint `tp`; returns the typed value (dataclasses built recursively)."""
    converters = converters or {}
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for arg in args:
            try:
                return convert(arg, value, path, converters)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}={value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}={value!r}; expected one of: {', '.join(map(str, choices))}")
        return value
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r}; expected a mapping of names to values")
        return {
            convert(key_tp, k, path, converters): convert(value_tp, v, f"{path}.{k}", converters)
            for k, v in value.items()
        }
    if isinstance(tp, type) and tp in converters:
        return converters[tp](value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, path, converters)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # 1e6 in YAML is a float
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r}; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}={value!r}; expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{path}={value!r}; expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r}; expected a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config field {path} has an unsupported type {tp!r}")  # a bug in the dataclass, not input


def from_mapping(cls: type, data: Any, path: str, converters: Mapping[type, Converter] | None = None) -> Any:
    """Builds dataclass `cls` from a mapping, refusing unknown keys and wrong types with the dotted key.

    Range checks are the dataclass's own (`__post_init__`); their ValueErrors come back as ConfigError.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'the config'} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key '{where}{unknown[0]}'; expected one of: {', '.join(sorted(fields))}")
    kwargs = {
        name: convert(hints[name], value, f"{path}.{name}" if path else name, converters)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = str(err)
        raise ConfigError(message if not path or path in message else f"{path}: {message}") from err


def to_dict(config: Any) -> Any:
    """The plain-data twin of a config tree (what `from_mapping` reads back)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
