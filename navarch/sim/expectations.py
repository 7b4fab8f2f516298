"""What the fleet must look like once the operator has caught up, judged from the simulator's
own knowledge of which nodes it broke. Pure.

Per the policy: the nodes carrying Navarch's taint are faulty nodes whose fault the policy
quarantines for, exactly as many as there are such nodes or as storm protection allows,
whichever is fewer; no node carries the taint twice; a node is cordoned only if the policy
cordons and it is quarantined; and the ``GpuHealthy`` condition says ``False`` for a node with
a quarantinable fault, ``Unknown`` for one whose agent went silent, and ``True`` for the rest.
A node whose remediation ladder is spent (labelled ``navarch.dev/needs-service``) stays
quarantined whatever its health, until a person services it: it counts as one that must be
tainted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from navarch import api

SHOWN = 5
"""Mismatches named in a report line before the rest are counted."""


@dataclass(frozen=True)
class Expected:
    cap: int
    quarantinable: frozenset[str]
    silent: frozenset[str]
    dry_run: bool
    cordons: bool
    taint_key: str

    def condition(self, name: str) -> str:
        if name in self.silent:
            return api.ConditionStatus.UNKNOWN.value
        if name in self.quarantinable:
            return api.ConditionStatus.FALSE.value
        return api.ConditionStatus.TRUE.value


def gpu_condition(node: Mapping[str, Any]) -> str | None:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == api.NODE_CONDITION_TYPE:
            return str(condition.get("status"))
    return None


def needs_service(node: Mapping[str, Any]) -> bool:
    """Whether the operator marked the Node NeedsService: its remediation ladder is spent."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return labels.get(api.NEEDS_SERVICE_LABEL) == "true"


def mismatches(expected: Expected, nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every way ``nodes`` differ from ``expected``; empty when the fleet is as it should be."""
    problems: dict[str, list[str]] = {}

    def note(kind: str, name: str) -> None:
        problems.setdefault(kind, []).append(name)

    tainted: set[str] = set()
    held = set(expected.quarantinable)
    for node in nodes:
        name = node["metadata"]["name"]
        if needs_service(node):
            held.add(name)
        taints = [
            t
            for t in (node.get("spec") or {}).get("taints") or []
            if t.get("key") == expected.taint_key
        ]
        if len(taints) > 1:
            note("carry the taint twice", name)
        if taints:
            tainted.add(name)
            if name not in expected.quarantinable and not needs_service(node):
                note("are tainted without a quarantinable fault", name)
        cordoned = bool((node.get("spec") or {}).get("unschedulable"))
        if cordoned and not (expected.cordons and name in tainted):
            note("are cordoned but should not be", name)
        if expected.cordons and name in tainted and not cordoned:
            note("are quarantined but not cordoned", name)
        condition = gpu_condition(node)
        # A dry run touches no Node, its condition included.
        if not expected.dry_run and condition != expected.condition(name):
            note(f"have GpuHealthy other than expected ({expected.condition(name)})", name)
    want = 0 if expected.dry_run else min(len(held), expected.cap)
    out = []
    if len(tainted) != want:
        out.append(f"{len(tainted)} nodes tainted, expected {want}")
    for kind, names in problems.items():
        shown = ", ".join(sorted(names)[:SHOWN])
        more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
        out.append(f"{len(names)} nodes {kind}: {shown}{more}")
    return out
