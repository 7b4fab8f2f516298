"""The one edge between the API models and their JSON form on the wire.

``to_wire`` writes camelCase keys and omits None. ``from_wire`` validates with pydantic and
turns its first error into an InvalidObjectError naming the exact path, so a user-edited object
is rejected with a message a person can act on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, to_jsonable_python

from navarch.errors import InvalidObjectError

ModelT = TypeVar("ModelT", bound=BaseModel)


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
    """A model (or a list or dict of them) as JSON-ready data: camelCase keys, no None."""
    return to_jsonable_python(value, by_alias=True, exclude_none=True)


def from_wire(
    cls: type[ModelT],
    data: Any,
    path: str = "",
    *,
    extra: Literal["ignore", "forbid"] | None = None,
) -> ModelT:
    """Build ``cls`` from wire data, raising InvalidObjectError at the first bad value.

    ``path`` names ``data`` in the message (``status``, ``spec.rules[0]``); ``extra="forbid"``
    refuses keys the model does not define, in nested models too.
    """
    try:
        return cls.model_validate(data, extra=extra)
    except ValidationError as err:
        first = _first(err.errors(include_url=False, include_context=False))
        raise InvalidObjectError(_where(path or cls.__name__, first), _problem(first)) from None


def _first(errors: list[ErrorDetails]) -> ErrorDetails:
    # A misspelt key is also a missing one; naming the unknown key says what to fix.
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def _where(path: str, error: ErrorDetails) -> str:
    return path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])


def _problem(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    value = error["input"]
    got = type(value).__name__ if isinstance(value, dict | list) else repr(value)
    return f"{error['msg']}, got {got}"
