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
from collections.abc import Callable
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
    try:
        return typing.cast(T, converter(typing.cast(Any, cls))(data))
    except _Invalid as err:
        where = (path or cls.__name__) + "".join(reversed(err.where))
        raise InvalidObjectError(where, err.problem) from None


_ABSENT = object()


class _Invalid(Exception):  # noqa: N818 - internal signal, never escapes from_wire
    """Raised inside converters; the path is collected on the way out, only on failure."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []


Converter = Callable[[Any], Any]


@functools.cache
def converter(hint: Any) -> Converter:
    """A checking converter for ``hint``, built once per type: statuses are read in bulk."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is list:
        return _list(converter(args[0]))
    if origin is dict:
        return _dict(converter(args[1]))
    if origin is Literal:
        return _literal(args)
    if dataclasses.is_dataclass(hint):
        return _dataclass(typing.cast(type, hint))
    if hint is datetime:
        return _time
    if hint in SCALAR_TYPES:
        return _scalar(hint)
    if hint is Any:
        return lambda data: data
    raise TypeError(f"unsupported type {hint!r}")


def _union(args: tuple[Any, ...]) -> Converter:
    nullable = type(None) in args
    hints = [a for a in args if a is not type(None)]
    if len(hints) == 1 and hints[0] in SCALAR_TYPES:
        return _scalar(hints[0], nullable=nullable)
    options = [converter(a) for a in hints]
    if len(options) == 1:
        only = options[0]

        def optional(data: Any) -> Any:
            return None if data is None and nullable else only(data)

        return optional

    def convert(data: Any) -> Any:
        if data is None and nullable:
            return None
        problems = []
        for option in options:
            try:
                return option(data)
            except _Invalid as err:
                problems.append(err.problem)
        raise _Invalid(" or ".join(problems))

    return convert


def _list(item: Converter) -> Converter:
    def convert(data: Any) -> Any:
        if not isinstance(data, list):
            raise _Invalid(f"expected a list, got {_kind(data)}")
        out = []
        for i, value in enumerate(data):
            try:
                out.append(item(value))
            except _Invalid as err:
                err.where.append(f"[{i}]")
                raise
        return out

    return convert


def _dict(item: Converter) -> Converter:
    def convert(data: Any) -> Any:
        if not isinstance(data, dict):
            raise _Invalid(f"expected an object, got {_kind(data)}")
        out = {}
        for key, value in data.items():
            try:
                out[str(key)] = item(value)
            except _Invalid as err:
                err.where.append(f".{key}")
                raise
        return out

    return convert


def _literal(allowed: tuple[Any, ...]) -> Converter:
    choices = frozenset(allowed)
    listed = ", ".join(map(str, allowed))

    def convert(data: Any) -> Any:
        if isinstance(data, str) and data in choices:
            return data
        raise _Invalid(f"must be one of {listed}, got {data!r}")

    return convert


def _dataclass(cls: type) -> Converter:
    """A converter with one straight-line step per field, generated like dataclasses' own
    ``__init__``: a loop over the fields costs more than the checks themselves."""
    hints = type_hints(cls)
    scope: dict[str, Any] = {"cls": cls, "ABSENT": _ABSENT, "Invalid": _Invalid}
    scope["not_object"] = _not_object
    scope["missing"] = _missing
    body = [
        "def convert(data):",
        "    if type(data) is not dict:",
        "        raise not_object(data)",
    ]
    steps = []
    for i, f in enumerate(dataclasses.fields(cls)):
        key = camel(f.name)
        scope[f"convert_{i}"] = converter(hints[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            body += [f"    if {key!r} not in data:", f"        raise missing({key!r})"]
        steps += [
            f"        value = get({key!r}, ABSENT)",
            "        if value is not ABSENT:",
            f"            key = {key!r}",
            f"            kwargs[{f.name!r}] = convert_{i}(value)",
        ]
    body += ["    get = data.get", "    kwargs = {}", "    key = ''", "    try:", *steps]
    body += [
        "    except Invalid as err:",
        "        err.where.append('.' + key)",
        "        raise",
        "    return cls(**kwargs)",
    ]
    exec("\n".join(body), scope)
    return typing.cast(Converter, scope["convert"])


def _not_object(data: Any) -> _Invalid:
    return _Invalid(
        "must not be null" if data is None else f"expected an object, got {_kind(data)}"
    )


def _missing(key: str) -> _Invalid:
    err = _Invalid("is required")
    err.where.append(f".{key}")
    return err


def _time(data: Any) -> datetime:
    if isinstance(data, str):
        try:
            return parse_time(data)
        except ValueError:
            pass
    raise _Invalid(f"expected an RFC 3339 time, got {data!r}")


SCALAR_TYPES = (bool, int, float, str)


def _scalar(hint: type, *, nullable: bool = False) -> Converter:
    # Exact type checks: bool is an int subclass, and JSON never yields other subclasses.
    accepted = (int, float) if hint is float else (hint,)
    as_float = hint is float

    def convert(data: Any) -> Any:
        kind = type(data)
        if kind in accepted:
            return float(data) if as_float else data
        if data is None:
            if nullable:
                return None
            raise _Invalid("must not be null")
        raise _Invalid(f"expected {hint.__name__}, got {kind.__name__} {data!r}")

    return convert


def _kind(data: Any) -> str:
    return type(data).__name__
