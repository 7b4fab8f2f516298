"""Who may read /metrics, and how rarely the API server is asked: RequestAuth on a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from navarch.errors import ApiError
from navarch.metrics_auth import (
    ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    Identity,
    Lifetimes,
    RequestAuth,
    TtlCache,
    User,
    bearer_token,
    identity_of,
)

PROMETHEUS = "system:serviceaccount:monitoring:prometheus"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReviews:
    """An API server that knows some tokens and which users may get which paths."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.allowed: set[tuple[str, str, str]] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.failure: ApiError | None = None

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((path, body))
        if self.failure is not None:
            raise self.failure
        spec = body["spec"]
        if path == TOKEN_REVIEWS:
            user = self.tokens.get(spec["token"])
            if user is None:
                return {"status": {"authenticated": False, "error": "invalid bearer token"}}
            return {"status": {"authenticated": True, "user": user}}
        assert path == ACCESS_REVIEWS
        attributes = spec["nonResourceAttributes"]
        allowed = (spec["user"], attributes["verb"], attributes["path"]) in self.allowed
        return {"status": {"allowed": allowed, "reason": "RBAC" if allowed else ""}}

    def count(self, path: str) -> int:
        return sum(1 for called, _ in self.calls if called == path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reviews() -> FakeReviews:
    reviews = FakeReviews()
    reviews.tokens["good"] = {"username": PROMETHEUS, "uid": "u-1", "groups": ["g"]}
    reviews.allowed.add((PROMETHEUS, "get", "/metrics"))
    return reviews


@pytest.fixture
def auth(reviews: FakeReviews, clock: Clock) -> RequestAuth:
    return RequestAuth(reviews, clock)


def check(auth: RequestAuth, token: str | None) -> int:
    header = None if token is None else f"Bearer {token}"
    return auth.check(header, "get", "/metrics").status


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer  abc  ", "abc"),
    ],
)
def test_only_a_bearer_header_carries_a_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_request_without_a_token_is_refused_without_asking_the_api_server(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    decision = auth.check(None, "get", "/metrics")

    assert (decision.status, decision.message) == (401, "Unauthorized: a bearer token is required")
    assert reviews.calls == []


def test_a_token_the_api_server_does_not_accept_is_refused_401(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    assert check(auth, "forged") == 401
    assert reviews.count(ACCESS_REVIEWS) == 0


def test_a_user_without_the_right_is_refused_403_by_name(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    reviews.tokens["other"] = {"username": "system:serviceaccount:default:nosy"}

    decision = auth.check("Bearer other", "get", "/metrics")

    assert decision.status == 403
    assert decision.message == (
        "Forbidden: user 'system:serviceaccount:default:nosy' may not get /metrics"
    )


def test_an_allowed_user_is_served(auth: RequestAuth) -> None:
    assert check(auth, "good") == 200


def test_the_access_review_asks_for_the_reviewed_user_the_path_and_the_verb(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    reviews.tokens["good"]["extra"] = {"authentication.kubernetes.io/node-name": ["n1"]}

    check(auth, "good")

    assert reviews.calls[0] == (
        TOKEN_REVIEWS,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": "good"},
        },
    )
    assert reviews.calls[1] == (
        ACCESS_REVIEWS,
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": PROMETHEUS,
                "uid": "u-1",
                "groups": ["g"],
                "extra": {"authentication.kubernetes.io/node-name": ["n1"]},
                "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
            },
        },
    )


def test_a_scraper_every_30s_costs_a_token_review_per_2_minutes_and_an_access_review_per_5(
    auth: RequestAuth, reviews: FakeReviews, clock: Clock
) -> None:
    for _ in range(40):  # 20 minutes
        assert check(auth, "good") == 200
        clock.now += 30

    assert reviews.count(TOKEN_REVIEWS) == 10
    assert reviews.count(ACCESS_REVIEWS) == 4


def test_a_refused_token_is_asked_about_again_after_30s(
    auth: RequestAuth, reviews: FakeReviews, clock: Clock
) -> None:
    assert check(auth, "new") == 401
    reviews.tokens["new"] = {"username": PROMETHEUS}
    clock.now += 29
    assert check(auth, "new") == 401

    clock.now += 1
    assert check(auth, "new") == 200
    assert reviews.count(TOKEN_REVIEWS) == 2


def test_a_newly_granted_right_takes_effect_within_30s(
    auth: RequestAuth, reviews: FakeReviews, clock: Clock
) -> None:
    reviews.allowed.clear()
    assert check(auth, "good") == 403
    reviews.allowed.add((PROMETHEUS, "get", "/metrics"))
    clock.now += 29
    assert check(auth, "good") == 403

    clock.now += 1
    assert check(auth, "good") == 200


def test_tokens_of_one_user_share_its_access_review(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    reviews.tokens["replica-b"] = dict(reviews.tokens["good"])

    assert check(auth, "good") == 200
    assert check(auth, "replica-b") == 200

    assert (reviews.count(TOKEN_REVIEWS), reviews.count(ACCESS_REVIEWS)) == (2, 1)


def test_permissions_are_cached_per_path(auth: RequestAuth, reviews: FakeReviews) -> None:
    assert check(auth, "good") == 200

    assert auth.check("Bearer good", "get", "/debug").status == 403
    assert reviews.count(ACCESS_REVIEWS) == 2


def test_an_unreachable_api_server_answers_503_and_is_not_remembered(
    auth: RequestAuth, reviews: FakeReviews
) -> None:
    reviews.failure = ApiError(None, "connection refused")
    decision = auth.check("Bearer good", "get", "/metrics")
    assert (decision.status, decision.message) == (
        503,
        "the API server could not review the request",
    )

    reviews.failure = None
    assert check(auth, "good") == 200


def test_lifetimes_can_be_chosen(reviews: FakeReviews, clock: Clock) -> None:
    auth = RequestAuth(reviews, clock, Lifetimes(authenticated=10, allowed=10))
    check(auth, "good")
    clock.now += 10
    check(auth, "good")

    assert (reviews.count(TOKEN_REVIEWS), reviews.count(ACCESS_REVIEWS)) == (2, 2)


class BlockingReviews(FakeReviews):
    """Holds every review until released, so tests can line callers up behind one."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens["good"] = {"username": PROMETHEUS}
        self.allowed.add((PROMETHEUS, "get", "/metrics"))
        self.entered = threading.Event()
        self.release = threading.Event()

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        assert self.release.wait(timeout=60)
        return super().create(path, body)


def test_callers_that_miss_together_share_one_review(clock: Clock) -> None:
    reviews = BlockingReviews()
    auth = RequestAuth(reviews, clock)
    answers: list[int] = []
    first, second = (
        threading.Thread(target=lambda: answers.append(check(auth, "good"))) for _ in "ab"
    )
    first.start()
    assert reviews.entered.wait(timeout=10)
    second.start()
    # Time to reach the review: waiting for the first one's answer, or asking again.
    second.join(timeout=0.2)
    assert second.is_alive()
    reviews.release.set()
    first.join(timeout=10)
    second.join(timeout=10)

    assert answers == [200, 200]
    assert (reviews.count(TOKEN_REVIEWS), reviews.count(ACCESS_REVIEWS)) == (1, 1)


def test_a_cached_caller_does_not_wait_behind_a_review(clock: Clock) -> None:
    reviews = BlockingReviews()
    auth = RequestAuth(reviews, clock)
    reviews.release.set()
    assert check(auth, "good") == 200
    reviews.release.clear()
    reviews.entered.clear()
    threading.Thread(target=lambda: check(auth, "unknown"), daemon=True).start()
    assert reviews.entered.wait(timeout=10)
    answers: list[int] = []

    cached = threading.Thread(target=lambda: answers.append(check(auth, "good")), daemon=True)
    cached.start()
    cached.join(timeout=10)

    assert answers == [200]
    reviews.release.set()


def test_identity_of_a_token_review() -> None:
    status = {
        "authenticated": True,
        "user": {
            "username": PROMETHEUS,
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"b": ["2"], "a": ["1", "0"]},
        },
    }

    assert identity_of(status) == Identity(
        User(
            PROMETHEUS,
            "u-1",
            ("system:serviceaccounts", "system:authenticated"),
            (("a", ("1", "0")), ("b", ("2",))),
        )
    )


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"authenticated": False, "user": {"username": PROMETHEUS}},
        {"authenticated": True, "user": {}},
        {"authenticated": True, "user": {"username": ""}},
        {"authenticated": "true", "user": {"username": PROMETHEUS}},
    ],
)
def test_no_identity_without_an_authenticated_username(status: dict[str, Any]) -> None:
    assert identity_of(status).user is None


def test_a_cache_entry_lives_exactly_its_ttl(clock: Clock) -> None:
    cache: TtlCache[str, str] = TtlCache(clock)
    cache.put("k", "v", 30)

    clock.now += 29.9
    assert cache.get("k") == "v"
    clock.now += 0.1
    assert cache.get("k") is None


def test_a_full_cache_drops_expired_entries_first_then_the_oldest(clock: Clock) -> None:
    cache: TtlCache[str, int] = TtlCache(clock, max_entries=3)
    cache.put("short", 1, 10)
    cache.put("old", 2, 100)
    cache.put("young", 3, 100)
    clock.now += 10
    cache.put("new", 4, 100)
    assert [cache.get(k) for k in ("short", "old", "young", "new")] == [None, 2, 3, 4]

    cache.put("newer", 5, 100)
    assert [cache.get(k) for k in ("old", "young", "new", "newer")] == [None, 3, 4, 5]
