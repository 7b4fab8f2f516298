"""The convergence check: what the fleet must look like once the operator has caught up."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from navarch import api
from navarch.sim.expectations import Expected, gpu_condition, mismatches

KEY = api.DEFAULT_TAINT_KEY
TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def node(
    name: str,
    *,
    taints: int = 0,
    cordoned: bool = False,
    condition: str | None = TRUE,
    other_taints: Iterable[str] = (),
) -> dict[str, Any]:
    """A Node as the API returns it: ``taints`` copies of Navarch's taint, plus others."""
    spec: dict[str, Any] = {
        "taints": [{"key": KEY, "effect": "NoSchedule"}] * taints
        + [{"key": key, "effect": "NoSchedule"} for key in other_taints]
    }
    if cordoned:
        spec["unschedulable"] = True
    conditions = [{"type": "Ready", "status": TRUE}]
    if condition is not None:
        conditions.append({"type": api.NODE_CONDITION_TYPE, "status": condition})
    return {"metadata": {"name": name}, "spec": spec, "status": {"conditions": conditions}}


def quarantined(name: str, *, cordoned: bool = False) -> dict[str, Any]:
    return node(name, taints=1, cordoned=cordoned, condition=FALSE)


def expected(
    *,
    quarantinable: Iterable[str] = (),
    silent: Iterable[str] = (),
    cap: int = 10,
    dry_run: bool = False,
    cordons: bool = False,
) -> Expected:
    return Expected(
        cap=cap,
        quarantinable=frozenset(quarantinable),
        silent=frozenset(silent),
        dry_run=dry_run,
        cordons=cordons,
        taint_key=KEY,
    )


def names(count: int, prefix: str = "sim") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


def test_converged_fleet_gives_no_mismatches() -> None:
    want = expected(quarantinable=["sim-0000", "sim-0001"], silent=["sim-0004"])
    fleet = [
        quarantined("sim-0000"),
        quarantined("sim-0001"),
        node("sim-0002"),
        node("sim-0003"),
        node("sim-0004", condition=UNKNOWN),
    ]

    assert mismatches(want, fleet) == []


def test_empty_healthy_fleet_gives_no_mismatches() -> None:
    assert mismatches(expected(), [node(n) for n in names(3)]) == []


def test_tainted_node_without_a_quarantinable_fault_is_a_mismatch() -> None:
    fleet = [node("sim-0000", taints=1)]

    assert mismatches(expected(), fleet) == [
        "1 nodes tainted, expected 0",
        "1 nodes are tainted without a quarantinable fault: sim-0000",
    ]


def test_node_carrying_the_taint_twice_is_a_mismatch() -> None:
    fleet = [node("sim-0000", taints=2, condition=FALSE)]

    assert mismatches(expected(quarantinable=["sim-0000"]), fleet) == [
        "1 nodes carry the taint twice: sim-0000"
    ]


def test_taints_of_other_keys_are_ignored() -> None:
    fleet = [node("sim-0000", other_taints=["nvidia.com/gpu", "example.com/maintenance"])]

    assert mismatches(expected(), fleet) == []


def test_too_few_tainted_when_the_cap_is_not_used_up_is_a_mismatch() -> None:
    faulty = names(3)
    fleet = [
        quarantined(faulty[0]),
        node(faulty[1], condition=FALSE),
        node(faulty[2], condition=FALSE),
    ]

    assert mismatches(expected(quarantinable=faulty, cap=5), fleet) == [
        "1 nodes tainted, expected 3"
    ]


def test_faulty_nodes_beyond_the_cap_stay_untainted() -> None:
    faulty = names(4)
    fleet = [quarantined(faulty[0]), quarantined(faulty[1])]
    fleet += [node(n, condition=FALSE) for n in faulty[2:]]

    assert mismatches(expected(quarantinable=faulty, cap=2), fleet) == []


def test_more_tainted_than_the_cap_is_a_mismatch() -> None:
    faulty = names(4)
    fleet = [quarantined(n) for n in faulty[:3]] + [node(faulty[3], condition=FALSE)]

    assert mismatches(expected(quarantinable=faulty, cap=2), fleet) == [
        "3 nodes tainted, expected 2"
    ]


def test_wrong_gpu_healthy_condition_is_a_mismatch() -> None:
    fleet = [node("sim-0000", taints=1, condition=TRUE), node("sim-0001", condition=FALSE)]

    assert mismatches(expected(quarantinable=["sim-0000"]), fleet) == [
        "1 nodes have GpuHealthy other than expected (False): sim-0000",
        "1 nodes have GpuHealthy other than expected (True): sim-0001",
    ]


def test_missing_gpu_healthy_condition_is_a_mismatch() -> None:
    fleet = [node("sim-0000", condition=None)]

    assert gpu_condition(fleet[0]) is None
    assert mismatches(expected(), fleet) == [
        "1 nodes have GpuHealthy other than expected (True): sim-0000"
    ]


def test_silent_node_needs_unknown() -> None:
    want = expected(silent=["sim-0000"])

    assert mismatches(want, [node("sim-0000", condition=UNKNOWN)]) == []
    assert mismatches(want, [node("sim-0000", condition=TRUE)]) == [
        "1 nodes have GpuHealthy other than expected (Unknown): sim-0000"
    ]


def test_silent_node_that_is_quarantined_still_needs_unknown() -> None:
    want = expected(quarantinable=["sim-0000"], silent=["sim-0000"])

    assert mismatches(want, [node("sim-0000", taints=1, condition=UNKNOWN)]) == []
    assert mismatches(want, [quarantined("sim-0000")]) == [
        "1 nodes have GpuHealthy other than expected (Unknown): sim-0000"
    ]


def test_policy_that_cordons_expects_quarantined_nodes_cordoned() -> None:
    want = expected(quarantinable=["sim-0000", "sim-0001"], cordons=True)

    assert (
        mismatches(
            want, [quarantined("sim-0000", cordoned=True), quarantined("sim-0001", cordoned=True)]
        )
        == []
    )
    assert mismatches(want, [quarantined("sim-0000", cordoned=True), quarantined("sim-0001")]) == [
        "1 nodes are quarantined but not cordoned: sim-0001"
    ]


def test_policy_that_cordons_still_leaves_untainted_nodes_schedulable() -> None:
    want = expected(quarantinable=["sim-0000", "sim-0001"], cap=1, cordons=True)
    fleet = [
        quarantined("sim-0000", cordoned=True),
        node("sim-0001", cordoned=True, condition=FALSE),
    ]

    assert mismatches(want, fleet) == ["1 nodes are cordoned but should not be: sim-0001"]


def test_policy_that_does_not_cordon_expects_no_cordons() -> None:
    want = expected(quarantinable=["sim-0000"])
    fleet = [quarantined("sim-0000", cordoned=True), node("sim-0001", cordoned=True)]

    assert mismatches(want, fleet) == ["2 nodes are cordoned but should not be: sim-0000, sim-0001"]


def test_dry_run_expects_no_taints() -> None:
    want = expected(quarantinable=["sim-0000"], dry_run=True)

    assert mismatches(want, [node("sim-0000")]) == []
    assert mismatches(want, [quarantined("sim-0000")]) == ["1 nodes tainted, expected 0"]


def test_dry_run_ignores_conditions() -> None:
    want = expected(quarantinable=["sim-0000"], silent=["sim-0001"], dry_run=True)
    fleet = [
        node("sim-0000", condition=None),
        node("sim-0001", condition=TRUE),
        node("sim-0002", condition=FALSE),
    ]

    assert mismatches(want, fleet) == []


def test_long_lists_are_abbreviated_with_the_rest_counted() -> None:
    fleet = [node(n, taints=1) for n in reversed(names(8))]

    problems = mismatches(expected(), fleet)

    assert problems == [
        "8 nodes tainted, expected 0",
        "8 nodes are tainted without a quarantinable fault: "
        "sim-0000, sim-0001, sim-0002, sim-0003, sim-0004 and 3 more",
    ]


def test_exactly_five_names_are_shown_without_abbreviation() -> None:
    problems = mismatches(expected(), [node(n, cordoned=True) for n in names(5)])

    assert problems == [
        "5 nodes are cordoned but should not be: sim-0000, sim-0001, sim-0002, sim-0003, sim-0004"
    ]


def test_nodes_without_spec_or_status_are_read_as_untainted_and_unconditioned() -> None:
    bare = {"metadata": {"name": "sim-0000"}}

    assert mismatches(expected(dry_run=True), [bare]) == []
    assert mismatches(expected(), [bare]) == [
        "1 nodes have GpuHealthy other than expected (True): sim-0000"
    ]


def needing_service(name: str, *, condition: str = TRUE) -> dict[str, Any]:
    """A quarantined Node whose remediation ladder is spent."""
    spent = node(name, taints=1, condition=condition)
    spent["metadata"]["labels"] = {api.NEEDS_SERVICE_LABEL: "true"}
    return spent


def test_a_node_that_needs_service_stays_tainted_though_healthy() -> None:
    fleet = [needing_service("sim-0000"), node("sim-0001")]

    assert mismatches(expected(), fleet) == []


def test_a_node_that_needs_service_counts_once_against_the_cap_with_a_fault_or_without() -> None:
    fleet = [
        needing_service("sim-0000", condition=FALSE),
        needing_service("sim-0001"),
        quarantined("sim-0002"),
        node("sim-0003", condition=FALSE),
    ]
    want = expected(quarantinable=["sim-0000", "sim-0002", "sim-0003"], cap=3)

    assert mismatches(want, fleet) == []


def test_a_released_node_labelled_needs_service_is_still_expected_tainted() -> None:
    fleet = [node("sim-0000")]
    fleet[0]["metadata"]["labels"] = {api.NEEDS_SERVICE_LABEL: "true"}

    assert mismatches(expected(), fleet) == ["0 nodes tainted, expected 1"]
