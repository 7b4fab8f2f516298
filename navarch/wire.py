"""Conversion between the API dataclasses and their JSON form on the wire.

``to_wire`` writes camelCase keys and omits None. ``from_wire`` checks every value against
the dataclass type hints and names the exact path of the first problem, so a user-edited
object is rejected with a message a person can act on.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from navarch.errors import InvalidObjectError

T = TypeVar("T")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a Z suffix, the form the API server accepts for date-time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is not None:
                out[camel(f.name)] = to_wire(item)
        return out
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_wire(cls: type[T], data: Any, path: str = "") -> T:
    """Build ``cls`` from wire data, raising InvalidObjectError at the first bad value."""
    return typing.cast(T, _convert(cls, data, path or cls.__name__))


def _convert(hint: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, data, path)
            except InvalidObjectError as err:
                errors.append(err.problem)
        raise InvalidObjectError(path, " or ".join(errors))
    if data is None:
        raise InvalidObjectError(path, "must not be null")
    if origin is list:
        if not isinstance(data, list):
            raise InvalidObjectError(path, f"expected a list, got {type(data).__name__}")
        return [_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise InvalidObjectError(path, f"expected an object, got {type(data).__name__}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in data.items()}
    if origin is Literal:
        if data not in args:
            allowed = ", ".join(map(str, args))
            raise InvalidObjectError(path, f"must be one of {allowed}, got {data!r}")
        return data
    if dataclasses.is_dataclass(hint):
        return _convert_dataclass(typing.cast(type, hint), data, path)
    return _convert_scalar(hint, data, path)


def _convert_dataclass(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidObjectError(path, f"expected an object, got {type(data).__name__}")
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = camel(f.name)
        if key in data:
            kwargs[f.name] = _convert(hints[f.name], data[key], f"{path}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidObjectError(f"{path}.{key}", "is required")
    return cls(**kwargs)


def _convert_scalar(hint: Any, data: Any, path: str) -> Any:
    if hint is datetime:
        if isinstance(data, str):
            try:
                return parse_time(data)
            except ValueError:
                pass
        raise InvalidObjectError(path, f"expected an RFC 3339 time, got {data!r}")
    if hint is bool:
        if isinstance(data, bool):
            return data
    elif hint is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
    elif hint is float:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
    elif hint is str:
        if isinstance(data, str):
            return data
    elif hint is Any:
        return data
    else:
        raise TypeError(f"{path}: unsupported type {hint!r}")
    raise InvalidObjectError(path, f"expected {hint.__name__}, got {type(data).__name__} {data!r}")
