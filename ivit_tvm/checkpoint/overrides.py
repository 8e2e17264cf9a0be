"""Configuration fields given by the user (`load_checkpoint(..., num_heads=4)`, `--num-heads`,
`--config key=value,...`): checked against the configuration class and converted to its field
types, so a typo or a wrong type is refused before anything is built."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Any

from ..models import ModelConfig

FIXED = ("arch",)  # told by the file, never given


def config_fields(config_class: type[ModelConfig]) -> dict[str, Any]:
    """The fields a user may give, with their types."""
    hints = typing.get_type_hints(config_class)
    return {name: kind for name, kind in hints.items() if name not in FIXED}


def coerce_overrides(config_class: type[ModelConfig], given: Mapping[str, Any]) -> dict:
    """`given` with each value converted to its field's type (strings from the command line are
    parsed); an unknown field or a value of the wrong type is a one-line ValueError naming it."""
    fields = config_fields(config_class)
    arch = config_class().arch
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ValueError(f"unknown {arch} config field(s) {unknown}; valid: {sorted(fields)}")
    return {key: _coerce(key, value, fields[key]) for key, value in given.items()}


def _coerce(key: str, value: Any, kind: Any) -> Any:
    if kind is bool:
        return _boolean(key, value)
    if kind is int:
        return _positive_int(key, value)
    if kind is float:
        return _positive_float(key, value)
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, int | str) or not isinstance(items, typing.Iterable):
            raise ValueError(f"{key}={value!r}: give one integer per stage, e.g. {key}=3,6,12,24")
        return tuple(_positive_int(key, item) for item in items)
    raise ValueError(f"{key} cannot be given")  # a field type this module does not know


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}={value!r} is not an integer; give e.g. {key}=4")
    if value < 1:
        raise ValueError(f"{key}={value} must be at least 1")
    return value


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number; give e.g. {key}=4.0") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}={value!r} is not a number; give e.g. {key}=4.0")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key}={value} must be a positive finite number")
    return float(value)


def _boolean(key: str, value: Any) -> bool:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key}={value!r} is not a boolean; give {key}=true or {key}=false")
