"""Prometheus metrics of the operator, served on ``--metrics-port`` (see ``navarch.serving``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import REGISTRY, Counter, Enum, Gauge, Histogram

from navarch.errors import ApiError
from navarch.metrics_auth import RequestAuth
from navarch.serving import ServingCertificate, TlsFiles, listen, metrics_route

NODES = Gauge(
    "navarch_nodes",
    "Nodes by the policy that governs them and the health and action of their verdict.",
    ["policy", "health", "action"],
)
QUARANTINES = Counter(
    "navarch_quarantines_total", "Nodes Navarch quarantined (tainted or cordoned).", ["policy"]
)
RELEASES = Counter(
    "navarch_releases_total", "Nodes Navarch released from its quarantine.", ["policy"]
)
STORM = Gauge(
    "navarch_storm_protection",
    "1 while storm protection holds back new quarantines under the policy, else 0.",
    ["policy"],
)
HELD = Gauge(
    "navarch_storm_held_nodes",
    "Unhealthy nodes whose quarantine storm protection holds back.",
    ["policy"],
)
POLICY_ACCEPTED = Gauge(
    "navarch_policy_accepted",
    "1 when the policy's current generation compiled, 0 when an older one stays in force.",
    ["policy"],
)
JUDGEMENT = Histogram(
    "navarch_judgement_seconds",
    "Time to judge one node: its GpuNodeHealth status against its policy, into a verdict.",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
FAULT_TO_ACTION = Histogram(
    "navarch_fault_to_action_seconds",
    "From a verdict's fault time (e.g. the XID) to the Node patch that quarantined the node.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
API_ERRORS = Counter(
    "navarch_api_errors_total",
    "Failed Kubernetes API calls by verb, resource and HTTP status (None: unreachable).",
    ["verb", "resource", "code"],
)
WATCH_STATE = Enum(
    "navarch_watch_state",
    "State of the operator's watch of each resource: starting, live, waiting (running, but the "
    "API server does not answer) or stopped (ended for good: the liveness probe fails).",
    ["resource"],
    states=["starting", "live", "waiting", "stopped"],
)
RECONCILE_AGE = Gauge(
    "navarch_reconcile_age_seconds",
    "Seconds since the reconcile loop last completed a pass; it passes every few seconds "
    "even when idle.",
)
API_AVAILABLE = Gauge(
    "navarch_api_available",
    "1 while the API server answers the operator's calls, 0 from a call that found it "
    "unreachable, throttling or failing until one succeeds.",
)
EVICTIONS = Counter(
    "navarch_evictions_total", "Pods a drain evicted through the Eviction API.", ["policy"]
)
EVICTIONS_BLOCKED = Counter(
    "navarch_evictions_blocked_total",
    "Evictions a PodDisruptionBudget refused (each is retried with backoff).",
    ["policy"],
)
POD_DELETIONS = Counter(
    "navarch_pod_deletions_total",
    "Pods a drain deleted at its timeout because the policy says onTimeout: Delete.",
    ["policy"],
)
DRAINS = Gauge(
    "navarch_drains",
    "Nodes by the phase of their drain: Pending, Draining, Blocked, Drained, TimedOut, DryRun.",
    ["policy", "phase"],
)
DRAIN_DURATION = Histogram(
    "navarch_drain_duration_seconds",
    "From the start of a drain to its end, Drained or TimedOut.",
    ["policy"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
REMEDIATION_STEPS = Counter(
    "navarch_remediation_steps_total",
    "Remediation steps and validations that ended, by step and how: Succeeded, Failed, TimedOut.",
    ["policy", "step", "outcome"],
)
NEEDS_SERVICE = Gauge(
    "navarch_needs_service_nodes",
    "Nodes whose remediation ladder is spent and that wait for a person.",
    ["policy"],
)
TIME_TO_RECOVERY = Histogram(
    "navarch_time_to_recovery_seconds",
    "From the fault behind a quarantine to the node's release.",
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400),
)


REVIEW_TIMEOUT = 4.0
"""Seconds a review may take: a scrape may need two within the 10 s Prometheus waits for it by
default."""

Review = Callable[[str, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


class LoopReviews:
    """Creates review objects with the operator's client, from the metrics server's threads:
    each review runs on the event loop, where the client lives."""

    def __init__(self, review: Review, loop: asyncio.AbstractEventLoop) -> None:
        self._review = review
        self._loop = loop

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(self._review(path, body), self._loop)
        try:
            return future.result(REVIEW_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise ApiError(None, f"no answer to the review within {REVIEW_TIMEOUT:g}s") from None


def serve(port: int, tls: TlsFiles | None, reviews: LoopReviews) -> None:
    """Serve /metrics on ``port`` from a daemon thread, over HTTPS to authorised callers when
    ``tls`` is given. Raises ConfigError."""
    certificate = ServingCertificate(tls) if tls else None
    auth = RequestAuth(reviews) if tls else None
    routes = {"/metrics": metrics_route(REGISTRY)}
    listen(port, routes, name="metrics", flag="--metrics-port", certificate=certificate, auth=auth)
