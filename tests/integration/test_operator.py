"""The real operator on a real control plane: rules, quarantine, release, ownership, edge cases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from navarch import api
from navarch.operator import rules
from navarch.wire import parse_time

from .cluster import Cluster, eventually
from .operator_env import (
    TAINT,
    OperatorProcess,
    World,
    gpu,
    healthy_status,
    running_operator,
    stamp,
    xid,
)

FOREIGN = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def operator(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(crds, tmp_path_factory.mktemp("operator")) as process:
        yield process


@pytest.fixture
def world(crds: Cluster, operator: OperatorProcess) -> Iterator[World]:
    since = operator.log_size()
    w = World(crds)
    yield w
    w.cleanup()
    # pytest shows a test's captured output only when it fails.
    print(f"--- navarch-operator log during the test ---\n{operator.log(since)}")


def quarantined(w: World, name: str) -> bool:
    return len(w.navarch_taints(name)) == 1


def released(w: World, name: str) -> bool:
    return not w.navarch_taints(name)


def verdict_when(w: World, name: str, **fields: str) -> dict[str, Any]:
    """The verdict once it says ``fields``: it is written after the Node, so it may lag."""
    return dict(
        eventually(
            lambda: (v := w.verdict(name)) and all(v.get(k) == x for k, x in fields.items()) and v
        )
    )


# --- every default rule --------------------------------------------------------------------

FAULTS: dict[str, dict[str, Any]] = {
    "xid-needs-reset": {"xids": [xid(79, "RESET_GPU", mnemonic="GPU_HAS_FALLEN_OFF_THE_BUS")]},
    "xid-needs-service": {"xids": [xid(64, "CONTACT_SUPPORT")]},
    "ecc-uncorrectable": {"gpus": [gpu(0, ecc={"volatileUncorrected": 2})]},
    "row-remap-pending": {"gpus": [gpu(0, rowRemapping={"pending": True})]},
    "row-remap-failure": {"gpus": [gpu(0, rowRemapping={"failure": True})]},
    "retired-pages": {"gpus": [gpu(0, retiredPages={"singleBit": 60, "doubleBit": 4})]},
    "gpu-error": {"gpus": [gpu(0, error="GPU_IS_LOST")]},
    "gpu-missing": {"gpuCount": 3, "gpus": [gpu(i) for i in range(3)]},
    "nvlink-down": {
        "gpus": [gpu(0, nvlinks=[{"link": 0, "active": True}, {"link": 1, "active": False}])]
    },
    "nvml-unavailable": {
        "agent": {"version": "test", "nvmlError": "NVML_ERROR_DRIVER_NOT_LOADED"},
        "gpuCount": 0,
        "gpus": [],
    },
}


@pytest.mark.parametrize("rule", sorted(FAULTS))
def test_every_unhealthy_default_rule_quarantines(world: World, rule: str) -> None:
    world.policy()
    name = world.node(status=healthy_status(**FAULTS[rule]))
    eventually(lambda: quarantined(world, name))
    verdict = verdict_when(world, name, health="Unhealthy", action="Taint")
    assert rule in [r["name"] for r in verdict["rules"]]
    condition = world.node_condition(name)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "GpuUnhealthy")
    assert rule in condition["message"]
    reasons = eventually(
        lambda: set(world.reasons(name, "Node")) >= {"GpuUnhealthy", "Quarantined"}
    )
    assert reasons


def test_throttling_is_degraded_without_a_taint(world: World) -> None:
    # The default waits 5 minutes of sustained throttling; this policy retunes that one rule.
    world.policy(
        rules=[
            {
                "name": "gpu-throttled",
                "expression": rules.GPU_THROTTLED,
                "severity": "Degraded",
                "sustainedFor": "1s",
            }
        ]
    )
    name = world.node(status=healthy_status(gpus=[gpu(0, throttleReasons=["HwSlowdown"])]))
    eventually(lambda: world.verdict(name).get("health") == "Degraded", timeout=30)
    assert world.verdict(name)["action"] == "None"
    condition = eventually(lambda: world.node_condition(name))
    assert (condition["status"], condition["reason"]) == ("False", "GpuDegraded")
    assert released(world, name)


def test_application_xid_is_an_event_once_and_no_taint(world: World) -> None:
    world.policy()
    first = xid(13, "RESTART_APP", at=stamp(timedelta(seconds=-5)))
    name = world.node(status=healthy_status(xids=[first]))
    eventually(lambda: world.verdict(name).get("health") == "Healthy")
    eventually(lambda: world.reasons(name, "Node").count("XidRecorded") == 1)
    eventually(lambda: world.reasons(name, api.GNH_KIND).count("XidRecorded") == 1)
    # A second XID re-evaluates the node: only the new one is reported.
    world.report(name, {"xids": [first, xid(13, "RESTART_APP", gpuIndex=2)]})
    eventually(lambda: world.reasons(name, "Node").count("XidRecorded") == 2)
    events = [e for e in world.events(name, "Node") if e["reason"] == "XidRecorded"]
    assert len([e for e in events if "GPU 2" in e["message"]]) == 1
    assert all(e["type"] == "Normal" for e in events)
    verdict_when(world, name, health="Healthy")
    assert released(world, name)


# --- quarantine and release ----------------------------------------------------------------


def test_taint_and_cordon_are_applied_and_released(world: World) -> None:
    world.policy(actions={"unhealthy": {"taint": "NoExecute", "cordon": True}})
    name = world.node()
    eventually(lambda: (world.node_condition(name) or {}).get("status") == "True")
    world.report(name, {"xids": [xid(79, "RESET_GPU")]})
    eventually(lambda: quarantined(world, name))
    node = world.node_json(name)
    assert node["spec"]["unschedulable"] is True
    assert world.navarch_taints(name)[0]["effect"] == "NoExecute"
    annotations = node["metadata"]["annotations"]
    assert annotations[api.APPLIED_TAINT_ANNOTATION] == f"{TAINT}:NoExecute"
    assert annotations[api.APPLIED_CORDON_ANNOTATION] == "true"
    verdict_when(world, name, action="TaintAndCordon")

    world.report(name, {"xids": []})
    eventually(lambda: released(world, name))
    node = world.node_json(name)
    assert not node["spec"].get("unschedulable")
    annotations = node["metadata"].get("annotations") or {}
    assert not any(k.startswith("navarch.dev/applied") for k in annotations)
    condition = eventually(lambda: world.node_condition(name))
    eventually(lambda: (world.node_condition(name) or {}).get("status") == "True")
    assert condition
    eventually(lambda: "Released" in world.reasons(name, "Node"))


def test_admin_cordon_and_foreign_taints_survive_quarantine_and_release(world: World) -> None:
    world.policy(actions={"unhealthy": {"taint": "NoSchedule", "cordon": True}})
    name = world.node(taints=[FOREIGN], unschedulable=True)
    world.report(name, {"xids": [xid(79, "RESET_GPU")]})
    eventually(lambda: quarantined(world, name))
    annotations = world.node_json(name)["metadata"]["annotations"]
    assert api.APPLIED_CORDON_ANNOTATION not in annotations

    world.report(name, {"xids": []})
    eventually(lambda: released(world, name))
    node = world.node_json(name)
    assert node["spec"]["unschedulable"] is True
    assert FOREIGN in node["spec"]["taints"]


def test_release_waits_for_healthy_for(world: World) -> None:
    world.policy(recovery={"healthyFor": "4s"})
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, name))
    world.report(name, {"xids": []})
    eventually(lambda: (world.node_condition(name) or {}).get("reason") == "Recovering")
    assert quarantined(world, name)
    healthy_since = parse_time(verdict_when(world, name, health="Healthy")["since"])
    eventually(lambda: released(world, name), timeout=30)
    release = eventually(
        lambda: next((e for e in world.events(name, "Node") if e["reason"] == "Released"), None)
    )
    # Event times have second precision.
    assert parse_time(release["firstTimestamp"]) >= healthy_since + timedelta(seconds=3)


def test_heartbeat_loss_makes_gpu_healthy_unknown_without_quarantine(world: World) -> None:
    world.policy(heartbeatTimeout="3s")
    name = world.node()
    # The node is Unknown (NoStatus) for a moment before its first status is judged.
    condition = eventually(
        lambda: (c := world.node_condition(name)) and c["reason"] == "HeartbeatStale" and c,
        timeout=30,
    )
    assert condition["status"] == "Unknown"
    verdict_when(world, name, reason="HeartbeatStale")
    assert released(world, name)


# --- storm protection ----------------------------------------------------------------------


def test_storm_protection_holds_and_resumes_in_fault_order(world: World) -> None:
    policy = world.policy(maxUnhealthy=2)
    names = [world.node(f"n{i}") for i in range(5)]
    first, second, third, fourth, _ = names
    fault = {n: stamp(timedelta(seconds=-10 * (5 - i))) for i, n in enumerate(names)}
    for n in (first, second):
        world.report(n, {"xids": [xid(79, "RESET_GPU", at=fault[n])]})
    eventually(lambda: quarantined(world, first) and quarantined(world, second))
    # The newer fault arrives first; when room frees up, the older one still goes first.
    for n in (fourth, third):
        world.report(n, {"xids": [xid(79, "RESET_GPU", at=fault[n])]})
    eventually(lambda: world.verdict(third).get("action") == "Held")
    eventually(lambda: world.verdict(fourth).get("action") == "Held")
    assert released(world, third) and released(world, fourth)
    # Policy statuses are written at most once a second: the first may count one held node.
    status = eventually(lambda: (s := _tripped(world, policy)) and s["counts"]["held"] == 2 and s)
    assert status["counts"]["quarantined"] == 2
    eventually(lambda: "StormProtection" in world.reasons(policy, api.GHP_KIND))
    eventually(lambda: "StormProtection" in world.reasons(third, "Node"))

    world.report(first, {"xids": []})
    eventually(lambda: quarantined(world, third), timeout=60)
    assert released(world, fourth)
    assert world.verdict(fourth)["action"] == "Held"

    world.report(second, {"xids": []})
    eventually(lambda: quarantined(world, fourth), timeout=60)
    eventually(lambda: not _tripped(world, policy))


def _tripped(w: World, policy: str) -> dict[str, Any] | None:
    status = w.policy_status(policy)
    storm = next((c for c in status.get("conditions", []) if c["type"] == "StormProtection"), None)
    return status if storm and storm["status"] == "True" else None


def test_dry_run_decides_and_touches_no_node(world: World) -> None:
    world.policy(dryRun=True)
    name = world.node(taints=[FOREIGN], status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    before = world.node_json(name)
    verdict_when(world, name, health="Unhealthy", action="DryRun")
    eventually(lambda: "DryRun" in world.reasons(name, api.GNH_KIND))
    after = world.node_json(name)
    assert after["spec"] == before["spec"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert world.node_condition(name) is None


# --- policies ------------------------------------------------------------------------------


def test_invalid_policy_is_rejected_and_the_last_good_version_keeps_working(world: World) -> None:
    hot = {
        "name": "too-hot",
        "expression": "gpus.exists(g, has(g.temperatureC) && g.temperatureC > 90)",
        "severity": "Unhealthy",
        "message": "a GPU runs too hot",
    }
    policy = world.policy(includeDefaultRules=False, rules=[hot])
    eventually(lambda: _condition(world.policy_status(policy), "Accepted") == "True")
    world.patch_policy(
        policy, {"rules": [{**hot, "expression": "gpus.exists(g, g.temperatureC >"}]}
    )
    status = eventually(
        lambda: (s := world.policy_status(policy)) and _condition(s, "Accepted") == "False" and s
    )
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "InvalidPolicy"
    assert "too-hot" in accepted["message"] and "generation 1" in accepted["message"]
    assert status["observedGeneration"] == 1
    eventually(lambda: "InvalidPolicy" in world.reasons(policy, api.GHP_KIND))

    name = world.node(status=healthy_status(gpus=[gpu(0, temperatureC=95)]))
    eventually(lambda: quarantined(world, name))
    verdict = verdict_when(world, name, health="Unhealthy")
    assert verdict["rules"][0]["name"] == "too-hot"


def _condition(status: dict[str, Any], kind: str) -> str | None:
    found = next((c for c in status.get("conditions", []) if c["type"] == kind), None)
    return found["status"] if found else None


# --- edge cases ----------------------------------------------------------------------------


def test_malformed_status_is_reported_while_other_nodes_are_served(world: World) -> None:
    world.policy()
    # The API server's date-time check lets year 0 through; no datetime can hold it.
    broken = world.node("broken", status=healthy_status(lastHeartbeatTime="0000-01-01T00:00:00Z"))
    faulty = world.node("faulty", status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, faulty))
    verdict = verdict_when(world, broken, reason="InvalidStatus")
    assert verdict["health"] == "Unknown"
    assert "status.lastHeartbeatTime" in verdict["message"]
    conditions = world.health(broken)["status"]["conditions"]
    valid = world.condition(conditions, "StatusValid")
    assert valid["status"] == "False" and "status.lastHeartbeatTime" in valid["message"]
    events = eventually(
        lambda: [e for e in world.events(broken, api.GNH_KIND) if e["reason"] == "InvalidStatus"]
    )
    assert "status.lastHeartbeatTime" in events[0]["message"]
    assert released(world, broken)


def test_opted_out_node_is_released_and_left_alone(world: World) -> None:
    world.policy()
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, name))
    world.label_node(name, api.MANAGED_LABEL, "false")
    eventually(lambda: released(world, name))
    eventually(lambda: world.verdict(name).get("action") == "OptedOut")
    other = world.node(
        "other",
        labels={api.MANAGED_LABEL: "false"},
        status=healthy_status(xids=[xid(79, "RESET_GPU")]),
    )
    eventually(lambda: world.verdict(other).get("action") == "OptedOut")
    assert released(world, other)


def test_acknowledging_the_xid_releases_the_node(world: World) -> None:
    world.policy()
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU", at=stamp())]))
    eventually(lambda: quarantined(world, name))
    world.annotate_health(name, api.ACK_ANNOTATION, stamp())
    eventually(lambda: released(world, name))
    verdict_when(world, name, health="Healthy")


def test_gpu_node_health_without_node_is_reported(world: World) -> None:
    name = f"ghost-{world.case}"
    world.nodes.append(name)
    world.custom.create_cluster_custom_object(
        api.GROUP,
        api.VERSION,
        api.GNH_PLURAL,
        api.gpu_node_health(name),
    )
    verdict = eventually(lambda: world.verdict(name))
    assert (verdict["health"], verdict["reason"]) == ("Unknown", "NodeNotFound")


def test_node_no_policy_selects_is_left_alone(world: World) -> None:
    world.policy()
    name = world.node(status=healthy_status(xids=[xid(79, "RESET_GPU")]))
    eventually(lambda: quarantined(world, name))
    world.label_node(name, "navarch.test/case", "elsewhere")
    verdict = verdict_when(world, name, reason="NotGoverned")
    assert verdict["health"] == "Unknown"
    assert quarantined(world, name)
