"""Errors Navarch raises on purpose, each carrying the structured facts a caller needs."""

from __future__ import annotations

import json
from collections.abc import Mapping

NOT_FOUND = 404
CONFLICT = 409
"""HTTP statuses the API server's callers act on: the object is gone, or it changed (or already
exists) under the call."""

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

    def __init__(
        self,
        status: int | None,
        message: str,
        retry_after: float | None = None,
        causes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        prefix = f"HTTP {status}" if status is not None else "unreachable"
        super().__init__(f"Kubernetes API {prefix}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked the client to wait (``Retry-After``), if it did."""
        self.causes = causes
        """``(reason, message)`` of each cause in the Status's details, e.g. the disruption
        budget behind a refused eviction."""

    @classmethod
    def from_response(cls, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        """What an API server's refusal says: the message of its ``Status`` body (or the start
        of whatever else came back), its causes, and the delay a throttling or starting server
        asks for."""
        message, causes = _status(body)
        return cls(status, message, _retry_after(headers), causes)

    @property
    def disruption_budget(self) -> bool:
        """Whether this is an eviction refused by a PodDisruptionBudget: a 429 that says
        nothing about the API server's own load."""
        return self.status == 429 and any(r == DISRUPTION_BUDGET for r, _ in self.causes)

    @property
    def retriable(self) -> bool:
        return self.status is None or self.status in (409, 429) or self.status >= 500


DISRUPTION_BUDGET = "DisruptionBudget"
"""The cause the Eviction API gives when a PodDisruptionBudget refuses an eviction."""


def _status(body: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    try:
        decoded = json.loads(body)
    except ValueError:
        return excerpt(body) or "no response body", ()
    if not isinstance(decoded, dict) or not isinstance(decoded.get("message"), str):
        return excerpt(body), ()
    details = decoded.get("details")
    found = details.get("causes") if isinstance(details, dict) else None
    causes = tuple(
        (str(c.get("reason", "")), str(c.get("message", "")))
        for c in (found if isinstance(found, list) else [])
        if isinstance(c, dict)
    )
    return str(decoded["message"]), causes


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
