"""Which nodes drain and which remediate this pass, from the index and the latest verdicts.

Only nodes Navarch holds in quarantine get orders, so storm protection bounds drains and
remediations as it bounds quarantines; under a dry-run policy, the nodes it would quarantine
get orders that only list what would be done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime

from navarch import api
from navarch.operator.drainer import FINISHED
from navarch.operator.drainer import Order as DrainOrder
from navarch.operator.index import Index
from navarch.operator.policy import action_key, storm_limit
from navarch.operator.remediator import Order as RemediationOrder
from navarch.wire import parse_time


def drain_orders(
    index: Index, verdicts: Mapping[str, api.Verdict], dry_runs: Iterable[str]
) -> dict[str, DrainOrder]:
    """The nodes that drain now, from the index and the latest verdicts.

    A node drains while Navarch holds it in quarantine and the action for its verdict drains;
    once the node is healthy again and only waits for its release, the drain it began goes on
    under the action that began it. ``dry_runs`` are the nodes a dry-run policy would
    quarantine: their drain only lists.
    """
    found: dict[str, DrainOrder] = {}
    for name in {*index.quarantined, *dry_runs}:
        verdict = verdicts.get(name)
        policy = index.governor(name)
        if verdict is None or policy is None:
            continue
        quarantined = name in index.quarantined
        if not quarantined and verdict.action != api.Action.DRY_RUN:
            continue
        chosen = policy.drain_for(verdict.health, verdict.reason)
        entry = index.healths.get(name)
        if chosen is None and quarantined and entry is not None and entry.drain is not None:
            rule = policy.drains.get(entry.drain.action)
            chosen = (entry.drain.action, rule) if rule is not None else None
        if chosen is None:
            continue
        limits = policy.drain_limits
        governed = len(index.governed().get(policy.name, ()))
        found[name] = DrainOrder(
            node=name,
            policy=policy.name,
            action=chosen[0],
            rule=chosen[1],
            dry_run=policy.dry_run,
            max_nodes=max(1, storm_limit(limits.max_nodes, governed)),
            rate=limits.evictions_per_second,
        )
    return found


def remediation_orders(
    index: Index,
    verdicts: Mapping[str, api.Verdict],
    drains: Mapping[str, DrainOrder],
    dry_runs: Iterable[str],
    now: datetime,
) -> dict[str, RemediationOrder]:
    """Every quarantined node under its policy (and, under a dry-run policy, the nodes it would
    quarantine); ``drains`` are this pass's drain orders, which a node's steps wait for."""
    found: dict[str, RemediationOrder] = {}
    for name in {*index.quarantined, *dry_runs}:
        verdict = verdicts.get(name)
        policy = index.governor(name)
        node = index.nodes.get(name)
        entry = index.healths.get(name)
        if verdict is None or policy is None or node is None or entry is None:
            continue
        action = action_key(verdict.health, verdict.reason)
        if action is None and entry.remediation is not None:
            action = entry.remediation.action
        drain = drains.get(name)
        ready = drain is None or (entry.drain is not None and entry.drain.phase in FINISHED)
        healthy = verdict.health == api.Health.HEALTHY
        due = healthy and verdict.since is not None and now >= verdict.since + policy.healthy_for
        governed = len(index.governed().get(policy.name, ()))
        serviced = None
        with contextlib.suppress(ValueError):
            mark = entry.annotations.get(api.SERVICED_ANNOTATION)
            serviced = parse_time(mark) if mark else None
        found[name] = RemediationOrder(
            node=name,
            policy=policy.name,
            action=action or "",
            ladder=policy.ladder_for(action) if action else None,
            validation=policy.validation,
            max_nodes=max(1, storm_limit(policy.remediation_limits.max_nodes, governed)),
            dry_run=policy.dry_run,
            healthy=healthy,
            release_due=due,
            ready=ready,
            rules=tuple(verdict.rules),
            fault_time=verdict.fault_time,
            quarantine=node.annotations.get(api.APPLIED_AT_ANNOTATION, ""),
            taint_key=policy.taint_key,
            serviced=serviced,
        )
    return found
