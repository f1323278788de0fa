"""JSON overrides for a model's config dataclass (``--config NAME=FILE``).

The file is a JSON object whose keys are config fields; lists become tuples. Unknown fields,
wrong types and values the config rejects all raise :class:`ConfigError` naming the problem,
so the CLI can answer with a message instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from export.errors import ConfigError


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` (from JSON) as the type ``hint`` names, or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {json.dumps(value)}")
        return tuple(_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {json.dumps(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {json.dumps(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {json.dumps(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {json.dumps(value)}")
        return value
    raise ConfigError(f"{where}: unsupported field type {hint}")


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the dataclass ``config`` with ``overrides`` applied and validated."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(unknown)} for {type(config).__name__}; "
            f"known fields: {', '.join(sorted(fields))}"
        )
    values = {k: _coerce(hints[k], v, k) for k, v in overrides.items()}
    try:
        return dataclasses.replace(config, **values)
    except ValueError as exc:
        raise ConfigError(f"invalid {type(config).__name__}: {exc}") from None


def load_overrides(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of field overrides")
    return data
