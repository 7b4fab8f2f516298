"""What each kind of write Navarch makes costs the API server, in CPU time per request.

Run: python benchmarks/apiserver_write_cost.py [--requests N]

It starts a local etcd and kube-apiserver with Navarch's CRDs, then makes N requests of each
kind one after another, the way the agent and the operator make them, and divides the API
server's CPU time (from /proc) over those requests by N. No operator or watch runs, so these
are the server's own costs, the floor under any fault-to-taint latency on the same machine.

- the agent's status write: a full eight-GPU GpuNodeHealth status, as a merge patch;
- the same write carrying only a new heartbeat time (the server still handles the whole object);
- the operator's taint: a merge patch of a Node's taints and annotations;
- the operator's GpuHealthy condition: a strategic merge patch of a Node's status;
- an Event;
- the TokenReview and the SubjectAccessReview the agent and the operator send when a scraper's
  answer is not cached (nothing is stored).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# Runnable from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navarch import api
from navarch.metrics_auth import (
    ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    access_review,
    identity_of,
    token_review,
)
from navarch.node_agent.kube import KubeClient, load_kubeconfig
from navarch.node_agent.status import merge_patch
from navarch.node_agent.writer import GNH_COLLECTION, NODE_COLLECTION, StatusWriter
from navarch.sim.agents import SimNode
from navarch.sim.probes import cpu_seconds
from navarch.testing.controlplane import ControlPlane
from navarch.wire import format_time

WARM_UP = 20
NAME = "cost-0"


def measure(pid: int, requests: int, call: Callable[[int], None]) -> float:
    """Milliseconds of the API server's CPU per call."""
    for i in range(WARM_UP):
        call(i)
    before = cpu_seconds(pid) or 0.0
    for i in range(requests):
        call(i)
    return ((cpu_seconds(pid) or 0.0) - before) / requests * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with ControlPlane() as plane:
        plane.install_crds()
        pid = next(c.process.pid for c in plane.components if c.name == "kube-apiserver")
        client = KubeClient(load_kubeconfig(str(plane.kubeconfig)))
        client.create(NODE_COLLECTION, {"metadata": {"name": NAME}})
        node = SimNode(NAME, 0, 0, 8, random.Random(0))
        writer = StatusWriter(client, NAME)

        def status(_: int) -> None:
            now = datetime.now(UTC)
            writer.patch_status(
                merge_patch(node.state.status(node.identity, kmsg_error=None, expected=8, now=now))
            )

        def heartbeat(_: int) -> None:
            stamp = format_time(datetime.now(UTC))
            client.merge_patch(
                f"{GNH_COLLECTION}/{NAME}/status", {"status": {"lastHeartbeatTime": stamp}}
            )

        def taint(i: int) -> None:
            taints = [{"key": api.DEFAULT_TAINT_KEY, "effect": "NoSchedule"}] if i % 2 else None
            client.merge_patch(
                f"{NODE_COLLECTION}/{NAME}",
                {
                    "metadata": {"annotations": {api.APPLIED_TAINT_ANNOTATION: str(i)}},
                    "spec": {"taints": taints},
                },
            )

        def condition(i: int) -> None:
            client.merge_patch(
                f"{NODE_COLLECTION}/{NAME}/status",
                {
                    "status": {
                        "conditions": [
                            {"type": api.NODE_CONDITION_TYPE, "status": "True", "reason": f"R{i}"}
                        ]
                    }
                },
            )

        account = "/api/v1/namespaces/default/serviceaccounts"
        client.create(account, {"metadata": {"name": "scraper"}})
        token = client.create(f"{account}/scraper/token", {"spec": {}})["status"]["token"]
        user = identity_of(client.create(TOKEN_REVIEWS, token_review(token))["status"]).user
        assert user is not None

        def authentication(_: int) -> None:
            client.create(TOKEN_REVIEWS, token_review(token))

        def authorization(_: int) -> None:
            client.create(ACCESS_REVIEWS, access_review(user, "get", "/metrics"))

        names = itertools.count()

        def event(_: int) -> None:
            client.create(
                "/api/v1/namespaces/default/events",
                {
                    "metadata": {"name": f"{NAME}.{next(names):08d}"},
                    "involvedObject": {"kind": "Node", "name": NAME},
                    "reason": "GpuUnhealthy",
                    "message": "benchmark",
                    "type": "Warning",
                },
            )

        print(
            f"API server CPU per request, {args.requests} requests each, after {WARM_UP} warm-up:"
        )
        for label, call in (
            ("GpuNodeHealth status, full agent status (8 GPUs)", status),
            ("GpuNodeHealth status, heartbeat time only", heartbeat),
            ("Node taint (merge patch)", taint),
            ("Node GpuHealthy condition (status patch)", condition),
            ("Event", event),
            ("metrics TokenReview (ServiceAccount token)", authentication),
            ("metrics SubjectAccessReview (RBAC)", authorization),
        ):
            started = time.monotonic()
            cost = measure(pid, args.requests, call)
            wall = (time.monotonic() - started) / (args.requests + WARM_UP) * 1000
            print(f"  {label}: {cost:.1f} ms CPU ({wall:.1f} ms wall per request)", flush=True)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
