"""Prometheus metrics of the operator, served on ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
EVALUATION = Histogram(
    "navarch_policy_evaluation_seconds",
    "Time to evaluate one node against its policy.",
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


def serve(port: int) -> None:
    """Serve /metrics on ``port`` from a daemon thread; 0 turns it off."""
    if port:
        start_http_server(port)
