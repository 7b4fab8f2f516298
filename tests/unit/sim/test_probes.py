"""What the simulator measures: API server request counters, a process's CPU and memory."""

from __future__ import annotations

import os
from collections import Counter

from navarch.node_agent.kube import Credentials
from navarch.sim.probes import (
    RequestCounter,
    RunningTotals,
    cpu_seconds,
    parse_request_counts,
    request_key,
    rss_mib,
)

GONE_PID = 2**31 - 1
"""Above any pid_max Linux allows, so never a live process."""


def sample(metric: str, value: str, **labels: str) -> str:
    """One exposition line of an API server request metric, with its usual labels."""
    full = {
        "component": "apiserver",
        "dry_run": "",
        "group": "",
        "scope": "resource",
        "subresource": "",
        "version": "v1",
        **labels,
    }
    text = ",".join(f'{key}="{val}"' for key, val in sorted(full.items()))
    return f"{metric}{{{text}}} {value}"


def requests(code: str, verb: str, resource: str, value: str, **labels: str) -> str:
    return sample(
        "apiserver_request_total", value, code=code, verb=verb, resource=resource, **labels
    )


NAVARCH = {"group": "navarch.io", "version": "v1alpha1"}
METRICS = "\n".join(
    [
        "# HELP apiserver_request_duration_seconds [STABLE] Response latency distribution.",
        "# TYPE apiserver_request_duration_seconds histogram",
        sample("apiserver_request_duration_seconds_bucket", "811", verb="GET", le="0.005"),
        sample("apiserver_request_duration_seconds_count", "900", verb="GET", resource="nodes"),
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for "
        "each verb, dry run value, group, version, resource, scope, component, and HTTP "
        "response code.",
        "# TYPE apiserver_request_total counter",
        requests("200", "GET", "nodes", "900"),
        requests("404", "GET", "nodes", "12"),
        requests("200", "PATCH", "nodes", "35"),
        requests("200", "PATCH", "gpunodehealths", "1.234567e+06", subresource="status", **NAVARCH),
        requests("404", "PATCH", "gpunodehealths", "20", subresource="status", **NAVARCH),
        requests("500", "PATCH", "gpunodehealths", "3", subresource="status", **NAVARCH),
        requests("201", "POST", "gpunodehealths", "20", **NAVARCH),
        requests("200", "WATCH", "gpunodehealths", "4", scope="cluster", **NAVARCH),
        sample("apiserver_request_total_created", "1.7e+09", code="200", verb="GET"),
        sample("apiserver_response_sizes_sum", "123456", verb="GET", resource="nodes"),
        "process_cpu_seconds_total 41.5",
        "",
    ]
)


def test_request_counts_are_summed_by_verb_and_resource() -> None:
    assert parse_request_counts(METRICS) == Counter(
        {
            "GET nodes": 912,
            "PATCH nodes": 35,
            "PATCH gpunodehealths/status": 1_234_590,
            "POST gpunodehealths": 20,
            "WATCH gpunodehealths": 4,
        }
    )


def test_request_counts_ignore_other_metrics_and_comments() -> None:
    others = "\n".join(
        line for line in METRICS.splitlines() if not line.startswith("apiserver_request_total{")
    )

    assert parse_request_counts(others) == Counter()


def test_request_counts_of_empty_text_are_empty() -> None:
    assert parse_request_counts("") == Counter()


def test_request_key_names_the_subresource_and_falls_back_to_the_group() -> None:
    assert request_key({"verb": "PATCH", "resource": "nodes", "subresource": ""}) == "PATCH nodes"
    assert request_key({"verb": "PATCH", "resource": "pods", "subresource": "status"}) == (
        "PATCH pods/status"
    )
    assert request_key({"verb": "GET", "group": "navarch.io"}) == "GET navarch.io"
    assert request_key({}) == "? ?"


def test_cpu_seconds_of_this_process_is_positive() -> None:
    # Importing pytest and the code under test alone takes well over one clock tick.
    seconds = cpu_seconds(os.getpid())

    assert seconds is not None
    assert seconds > 0


def test_rss_of_this_process_is_positive() -> None:
    mib = rss_mib(os.getpid())

    assert mib is not None
    assert 1 < mib < 100_000


def test_cpu_and_memory_of_a_missing_process_are_none() -> None:
    assert cpu_seconds(GONE_PID) is None
    assert rss_mib(GONE_PID) is None


def test_request_counter_without_a_readable_token_or_server_reads_nothing() -> None:
    for credentials in (
        Credentials(server="http://127.0.0.1:1", token_file="/nonexistent/token"),
        Credentials(server="http://127.0.0.1:1", token="t"),
    ):
        counter = RequestCounter(credentials)
        try:
            assert counter.read() is None
        finally:
            counter.close()


def test_counts_carry_over_a_restart_of_the_api_server() -> None:
    totals = RunningTotals()
    assert totals.add(Counter({"PATCH nodes": 10, "GET nodes": 5})) == {
        "PATCH nodes": 10,
        "GET nodes": 5,
    }
    assert totals.add(Counter({"PATCH nodes": 12, "GET nodes": 5})) == {
        "PATCH nodes": 12,
        "GET nodes": 5,
    }
    # Restarted: it counts from zero again.
    assert totals.add(Counter({"PATCH nodes": 3, "LIST nodes": 1})) == {
        "PATCH nodes": 15,
        "GET nodes": 5,
        "LIST nodes": 1,
    }
    assert totals.add(Counter({"PATCH nodes": 4, "LIST nodes": 1}))["PATCH nodes"] == 16
