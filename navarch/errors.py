"""Errors Navarch raises on purpose, each carrying the structured facts a caller needs."""

from __future__ import annotations

import json
from collections.abc import Mapping

MAX_MESSAGE = 300
"""Characters kept of an error body that is not a Kubernetes Status."""


class NavarchError(Exception):
    """Base of every error Navarch raises deliberately."""


class ConfigError(NavarchError):
    """Invalid configuration: the program stops with this one message."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class InvalidObjectError(NavarchError):
    """A custom resource (or part of one) does not match the API types."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class PolicyError(NavarchError):
    """A GpuHealthPolicy cannot be used, e.g. a rule's CEL does not compile."""

    def __init__(self, policy: str, problem: str, rule: str | None = None) -> None:
        where = f"rule {rule!r} of policy {policy!r}" if rule else f"policy {policy!r}"
        super().__init__(f"{where}: {problem}")
        self.policy = policy
        self.rule = rule
        self.problem = problem


class NvmlUnavailableError(NavarchError):
    """NVML could not be loaded or initialised on this node."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"NVML unavailable: {problem}")
        self.problem = problem


class ApiError(NavarchError):
    """The Kubernetes API answered with an error status or could not be reached."""

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        prefix = f"HTTP {status}" if status is not None else "unreachable"
        super().__init__(f"Kubernetes API {prefix}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked the client to wait (``Retry-After``), if it did."""

    @classmethod
    def from_response(cls, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        """What an API server's refusal says: the message of its ``Status`` body (or the start
        of whatever else came back), and the delay a throttling or starting server asks for."""
        return cls(status, _status_message(body), _retry_after(headers))

    @property
    def retriable(self) -> bool:
        return self.status is None or self.status in (409, 429) or self.status >= 500


def _status_message(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return excerpt(body) or "no response body"
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    return excerpt(body)


def excerpt(body: bytes) -> str:
    """The start of a response body, for an error message."""
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds; an HTTP date is not what the API server sends."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None
