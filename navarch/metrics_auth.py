"""Who may read /metrics: the API server vouches for the caller's token, then for its right.

The same check operators scaffolded by kubebuilder run in front of their metrics (and
kube-rbac-proxy before them): the bearer token goes to a ``TokenReview``, which names its user,
and that user to a ``SubjectAccessReview`` for the nonResourceURL path and verb asked for,
which RBAC answers (the chart's ``metrics-reader`` ClusterRole grants ``get`` on ``/metrics``).
No token or a token the API server does not accept is answered 401, a user without the right
403, and an API server that cannot be asked 503.

Both answers are cached, so a scraper costs the API server a review per cache lifetime rather
than per scrape: identities by (a hash of) the token, permissions by user, verb and path, each
with a shorter lifetime for refusals so a newly granted right takes effect soon. Reviews go out
one at a time: scrapes that miss the cache together wait for the first answer instead of each
asking again, and a review never holds up a scrape that the cache can answer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from navarch.errors import ApiError

log = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
MAX_ENTRIES = 1024
"""Per cache: far more scrapers than any cluster has, and a bound on what a caller spraying
made-up tokens can make the process hold."""


@dataclass(frozen=True)
class Lifetimes:
    """Seconds a review's answer is reused; kube-rbac-proxy's and controller-runtime's values."""

    authenticated: float = 120.0
    unauthenticated: float = 30.0
    allowed: float = 300.0
    denied: float = 30.0


class Reviews(Protocol):
    """Creates a review object on the API server and returns the server's answer.

    Raises ``ApiError`` when the server refuses or cannot be reached."""

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class User:
    """The identity a TokenReview returns, as a SubjectAccessReview takes it."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Identity:
    user: User | None
    """None: the API server did not accept the token."""
    reason: str = ""


@dataclass(frozen=True)
class Permission:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    status: int
    """200 to serve the request, else the HTTP status to answer with."""
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values that expire ``ttl`` seconds after they were put, by the injected clock.

    Holds at most ``max_entries``: a full cache first drops what has expired, then the entries
    put longest ago."""

    def __init__(self, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: dict[K, tuple[V, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, expires = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            return value

    def put(self, key: K, value: V, ttl: float) -> None:
        with self._lock:
            now = self._clock()
            self._entries.pop(key, None)
            if len(self._entries) >= self._max:
                self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (value, now + ttl)


class RequestAuth:
    """Decides whether a request may be served, from its ``Authorization`` header."""

    def __init__(
        self,
        reviews: Reviews,
        clock: Callable[[], float] = time.monotonic,
        lifetimes: Lifetimes = Lifetimes(),
    ) -> None:
        self._reviews = reviews
        self._lifetimes = lifetimes
        self._identities: TtlCache[bytes, Identity] = TtlCache(clock)
        self._permissions: TtlCache[tuple[User, str, str], Permission] = TtlCache(clock)
        self._reviewing = threading.Lock()

    def check(self, authorization: str | None, verb: str, path: str) -> Decision:
        token = bearer_token(authorization)
        if token is None:
            return Decision(401, "Unauthorized: a bearer token is required")
        try:
            identity = self._reviewed(
                self._identities, hashlib.sha256(token.encode()).digest(), lambda: self._who(token)
            )
            if identity.user is None:
                log.debug("metrics request refused: %s", identity.reason)
                return Decision(401, "Unauthorized: the token was not accepted")
            user = identity.user
            permission = self._reviewed(
                self._permissions, (user, verb, path), lambda: self._may(user, verb, path)
            )
        except ApiError as e:
            log.warning("cannot review a metrics request: %s", e)
            return Decision(503, "the API server could not review the request")
        if not permission.allowed:
            log.debug("metrics request of %s refused: %s", user.name, permission.reason)
            return Decision(403, f"Forbidden: user {user.name!r} may not {verb} {path}")
        return Decision(200)

    def _reviewed(self, cache: TtlCache[K, V], key: K, review: Callable[[], tuple[V, float]]) -> V:
        cached = cache.get(key)
        if cached is not None:
            return cached
        with self._reviewing:
            # Whoever held the lock may have just reviewed this very key.
            cached = cache.get(key)
            if cached is not None:
                return cached
            value, ttl = review()
            cache.put(key, value, ttl)
            return value

    def _who(self, token: str) -> tuple[Identity, float]:
        status = self._reviews.create(TOKEN_REVIEWS, token_review(token)).get("status") or {}
        identity = identity_of(status)
        ttl = self._lifetimes.authenticated if identity.user else self._lifetimes.unauthenticated
        return identity, ttl

    def _may(self, user: User, verb: str, path: str) -> tuple[Permission, float]:
        body = access_review(user, verb, path)
        status = self._reviews.create(ACCESS_REVIEWS, body).get("status") or {}
        allowed = status.get("allowed") is True and status.get("denied") is not True
        permission = Permission(allowed, str(status.get("reason") or ""))
        return permission, self._lifetimes.allowed if allowed else self._lifetimes.denied


def token_review(token: str) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }


def access_review(user: User, verb: str, path: str) -> dict[str, Any]:
    """Whether ``user`` may ``verb`` the nonResourceURL ``path``."""
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name,
            "uid": user.uid,
            "groups": list(user.groups),
            "extra": {key: list(values) for key, values in user.extra},
            "nonResourceAttributes": {"path": path, "verb": verb},
        },
    }


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def identity_of(status: dict[str, Any]) -> Identity:
    """The identity in a TokenReview's status."""
    user = status.get("user") or {}
    name = user.get("username")
    if status.get("authenticated") is not True or not isinstance(name, str) or not name:
        return Identity(None, str(status.get("error") or "not authenticated"))
    extra = user.get("extra") or {}
    return Identity(
        User(
            name=name,
            uid=str(user.get("uid") or ""),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(v) for v in vs)) for k, vs in extra.items())),
        )
    )
