"""Scenario files: the shipped examples, defaults, durations, fault kinds, and every refusal
naming the exact path of the mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from navarch import api
from navarch.sim.scenario import (
    MAX_NODES,
    FaultKind,
    Scenario,
    ScenarioError,
    Target,
    load,
    parse,
)

REPO = Path(__file__).parents[3]
EXAMPLES = sorted((REPO / "scenarios").glob("*.yaml"))


def scenario_data(
    *,
    fleet: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A minimal valid scenario (10 nodes in one rack, one minute), with keys replaced."""
    data: dict[str, Any] = {
        "name": "test",
        "duration": "1m",
        "fleet": {"nodes": 10, **(fleet or {})},
    }
    if policy is not None:
        data["policy"] = policy
    data.update(top)
    return data


def fault(
    at: str = "1s", kind: str = "xid 79", *, recover_after: str | None = None, **target: Any
) -> dict[str, Any]:
    """A scheduled fault; one node at random unless ``target`` says otherwise."""
    data = {"at": at, "fault": kind, **(target or {"nodes": 1})}
    if recover_after is not None:
        data["recoverAfter"] = recover_after
    return data


def random_faults(**keys: Any) -> dict[str, Any]:
    return {"rate": 1, "mix": {"xid 79": 1}, **keys}


def build(**kwargs: Any) -> Scenario:
    return parse(scenario_data(**kwargs), "test")


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as caught:
        parse(data, "test")
    assert caught.value.source == "test"
    return caught.value.problem


def test_there_are_example_scenarios_to_check() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_scenario_loads(path: Path) -> None:
    scenario = load(path)

    assert scenario.name == path.stem
    assert scenario.file == str(path)
    assert 1 <= scenario.nodes <= MAX_NODES
    assert scenario.faults or scenario.random_faults


def test_defaults_apply_when_keys_are_left_out() -> None:
    scenario = build()

    assert scenario.gpus_per_node == 8
    assert scenario.racks == 1
    assert scenario.heartbeat_interval == 30.0
    assert scenario.seed == 1
    assert scenario.workers == 32
    assert scenario.restarts is None
    assert scenario.converge_timeout == 180.0
    assert scenario.settle_timeout == 600.0
    assert scenario.description == ""
    assert scenario.faults == scenario.random_faults == scenario.recoveries == ()


def test_durations_convert_to_seconds() -> None:
    scenario = build(
        duration="1h30m",
        convergeTimeout="90s",
        settleTimeout="2m",
        fleet={"heartbeatInterval": "500ms"},
        operator={"restarts": {"minInterval": "5s", "maxInterval": "1m"}},
        faults=[fault(at="1m30s", recover_after="45s")],
        randomFaults=[random_faults(start="10s", end="1h", recoverAfter="2m")],
        recoveries=[{"at": "1h15m", "all": True}],
    )

    assert scenario.duration == 5400.0
    assert scenario.converge_timeout == 90.0
    assert scenario.settle_timeout == 120.0
    assert scenario.heartbeat_interval == 0.5
    assert scenario.restarts == (5.0, 60.0)
    assert (scenario.faults[0].at, scenario.faults[0].recover_after) == (90.0, 45.0)
    source = scenario.random_faults[0]
    assert (source.start, source.end, source.recover_after) == (10.0, 3600.0, 120.0)
    assert scenario.recoveries[0].at == 4500.0


def test_random_faults_end_defaults_to_the_duration() -> None:
    scenario = build(randomFaults=[random_faults()])

    assert (scenario.random_faults[0].start, scenario.random_faults[0].end) == (0.0, 60.0)
    assert scenario.random_faults[0].recover_after is None


def test_random_fault_mix_keeps_kinds_and_weights() -> None:
    scenario = build(randomFaults=[random_faults(mix={"xid 79": 3, "ecc": 1.5})])

    assert scenario.random_faults[0].mix == ((FaultKind("xid", 79), 3.0), (FaultKind("ecc"), 1.5))


def test_fault_targets_resolve_to_count_rack_or_names() -> None:
    scenario = build(
        fleet={"racks": 2},
        faults=[
            fault(nodes=3),
            fault(rack=1),
            fault(names=["sim-0002", "sim-0009"]),
        ],
    )

    assert [f.target for f in scenario.faults] == [
        Target(count=3),
        Target(rack=1),
        Target(names=("sim-0002", "sim-0009")),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("xid 79", FaultKind("xid", 79)),
        ("xid 13", FaultKind("xid", 13)),
        ("ecc", FaultKind("ecc")),
        ("gpu-lost", FaultKind("gpu-lost")),
        ("silence", FaultKind("silence")),
        ("  ecc ", FaultKind("ecc")),
    ],
)
def test_fault_strings_parse(text: str, expected: FaultKind) -> None:
    assert FaultKind.parse(text) == expected


@pytest.mark.parametrize("text", ["xid 79", "ecc", "gpu-lost", "silence"])
def test_fault_kind_prints_as_it_is_written(text: str) -> None:
    assert str(FaultKind.parse(text)) == text


@pytest.mark.parametrize("text", ["xid", "xid seventy", "XID 79", "ecc 1", "power", "", 79])
def test_bad_fault_strings_are_refused(text: Any) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FaultKind.parse(text)


def test_bad_fault_in_a_scenario_is_refused_naming_its_path() -> None:
    problem = refusal(scenario_data(faults=[fault(), fault(kind="xid seventy-nine")]))

    assert problem.startswith("scenario.faults[1].fault: unknown fault 'xid seventy-nine'")


def test_bad_fault_in_a_random_mix_is_refused_naming_its_key() -> None:
    problem = refusal(scenario_data(randomFaults=[random_faults(mix={"ecc": 1, "boom": 2})]))

    assert problem.startswith("scenario.randomFaults[0].mix.boom: unknown fault")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (scenario_data(nmae="typo"), "scenario.nmae"),
        (scenario_data(fleet={"rackz": 2}), "scenario.fleet.rackz"),
        (scenario_data(faults=[fault(), fault(nodez=2)]), "scenario.faults[1].nodez"),
        (
            scenario_data(
                operator={"restarts": {"minInterval": "1s", "maxInterval": "2s", "x": 1}}
            ),
            "scenario.operator.restarts.x",
        ),
        (scenario_data(randomFaults=[random_faults(stop="30s")]), "scenario.randomFaults[0].stop"),
        (
            scenario_data(recoveries=[{"at": "5s", "all": True, "every": 1}]),
            "scenario.recoveries[0].every",
        ),
    ],
)
def test_unknown_keys_are_refused_naming_the_exact_path(data: dict[str, Any], path: str) -> None:
    assert refusal(data) == f"{path}: unknown key"


def test_scenario_error_message_starts_with_the_source() -> None:
    with pytest.raises(ScenarioError, match=r"^my-file\.yaml: scenario\.nmae: unknown key$"):
        parse(scenario_data(nmae=1), "my-file.yaml")


@pytest.mark.parametrize(
    "target",
    [{}, {"nodes": 1, "rack": 0}, {"rack": 0, "names": ["sim-0001"]}],
    ids=["none", "nodes-and-rack", "rack-and-names"],
)
def test_fault_target_needs_exactly_one_of_nodes_rack_names(target: dict[str, Any]) -> None:
    data = scenario_data(faults=[{"at": "1s", "fault": "ecc", **target}])

    assert refusal(data) == "scenario.faults[0]: needs exactly one of 'nodes', 'rack', 'names'"


def test_recovery_accepts_all_true() -> None:
    scenario = build(recoveries=[{"at": "30s", "all": True}])

    assert scenario.recoveries[0].target == Target(every=True)


@pytest.mark.parametrize(
    "recovery",
    [{"at": "30s"}, {"at": "30s", "all": True, "nodes": 2}, {"at": "30s", "all": False}],
    ids=["none", "all-and-nodes", "all-false-alone"],
)
def test_recovery_target_needs_exactly_one_including_all(recovery: dict[str, Any]) -> None:
    problem = refusal(scenario_data(recoveries=[recovery]))

    assert problem == (
        "scenario.recoveries[0]: needs exactly one of 'nodes', 'rack', 'names' or 'all: true'"
    )


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (scenario_data(fleet={"racks": 2}, faults=[fault(rack=2)]), "scenario.faults[0].rack"),
        (scenario_data(faults=[fault(rack=-1)]), "scenario.faults[0].rack"),
        (scenario_data(recoveries=[{"at": "1s", "rack": 1}]), "scenario.recoveries[0].rack"),
        (scenario_data(faults=[fault(nodes=11)]), "scenario.faults[0].nodes"),
        (scenario_data(faults=[fault(nodes=0)]), "scenario.faults[0].nodes"),
        (scenario_data(recoveries=[{"at": "1s", "nodes": 11}]), "scenario.recoveries[0].nodes"),
        (scenario_data(faults=[fault(names=["sim-0010"])]), "scenario.faults[0].names"),
        (
            scenario_data(recoveries=[{"at": "1s", "names": ["node-1"]}]),
            "scenario.recoveries[0].names",
        ),
        (scenario_data(policy={"nodeSelector": {}}), "scenario.policy.nodeSelector"),
        (scenario_data(policy={"maxUnhealthy": "150%"}), "scenario.policy.maxUnhealthy"),
        (scenario_data(policy={"maxUnhealthy": -1}), "scenario.policy.maxUnhealthy"),
        (scenario_data(policy={"maxUnhealthy": "ten"}), "scenario.policy.maxUnhealthy"),
        (scenario_data(faults=[fault(at="61s")]), "scenario.faults[0].at"),
        (scenario_data(policy={"heartbeatTimeout": "59s"}), "scenario.policy.heartbeatTimeout"),
        (scenario_data(randomFaults=[random_faults(end="2m")]), "scenario.randomFaults[0]"),
        (scenario_data(randomFaults=[random_faults(start="1m")]), "scenario.randomFaults[0]"),
        (scenario_data(randomFaults=[random_faults(rate=0)]), "scenario.randomFaults[0].rate"),
        (scenario_data(randomFaults=[random_faults(rate=-2)]), "scenario.randomFaults[0].rate"),
        (
            scenario_data(randomFaults=[random_faults(mix={"ecc": 0})]),
            "scenario.randomFaults[0].mix",
        ),
        (
            scenario_data(randomFaults=[random_faults(mix={"ecc": -1})]),
            "scenario.randomFaults[0].mix",
        ),
        (scenario_data(randomFaults=[random_faults(mix={})]), "scenario.randomFaults[0].mix"),
        (scenario_data(fleet={"nodes": MAX_NODES + 1}), "scenario.fleet.nodes"),
        (scenario_data(fleet={"nodes": 0}), "scenario.fleet.nodes"),
        (scenario_data(fleet={"nodes": "ten"}), "scenario.fleet.nodes"),
        (scenario_data(fleet={"racks": 11}), "scenario.fleet.racks"),
        (scenario_data(fleet={"gpusPerNode": 0}), "scenario.fleet.gpusPerNode"),
        (scenario_data(fleet={"heartbeatInterval": "0s"}), "scenario.fleet.heartbeatInterval"),
        (scenario_data(duration="ten minutes"), "scenario.duration"),
        (scenario_data(operator={"workers": 0}), "scenario.operator.workers"),
        (
            scenario_data(operator={"restarts": {"minInterval": "20s", "maxInterval": "5s"}}),
            "scenario.operator.restarts",
        ),
        (
            scenario_data(apiServer={"restarts": [{"at": "61s", "down": "5s"}]}),
            "scenario.apiServer.restarts[0].at",
        ),
        (
            scenario_data(apiServer={"restarts": [{"at": "10s", "down": "0s"}]}),
            "scenario.apiServer.restarts[0].down",
        ),
        (
            scenario_data(
                apiServer={"restarts": [{"at": "10s", "down": "20s"}, {"at": "25s", "down": "5s"}]}
            ),
            "scenario.apiServer.restarts[1].at",
        ),
    ],
    ids=[
        "rack-past-last",
        "rack-negative",
        "recovery-rack-past-last",
        "nodes-over-fleet",
        "nodes-zero",
        "recovery-nodes-over-fleet",
        "unknown-name",
        "recovery-unknown-name",
        "node-selector",
        "max-unhealthy-over-100-percent",
        "max-unhealthy-negative",
        "max-unhealthy-not-a-number",
        "fault-after-duration",
        "heartbeat-timeout-under-twice-interval",
        "random-end-after-duration",
        "random-start-at-duration",
        "random-rate-zero",
        "random-rate-negative",
        "random-weight-zero",
        "random-weight-negative",
        "random-mix-empty",
        "fleet-over-max",
        "fleet-empty",
        "fleet-nodes-not-int",
        "more-racks-than-nodes",
        "no-gpus",
        "zero-heartbeat",
        "bad-duration",
        "no-workers",
        "restart-interval-reversed",
        "api-server-restart-after-duration",
        "api-server-down-for-nothing",
        "api-server-restarts-overlap",
    ],
)
def test_unrunnable_scenario_is_refused_naming_the_offending_path(
    data: dict[str, Any], path: str
) -> None:
    assert refusal(data).startswith(f"{path}: ")


def test_api_server_restarts_convert_to_seconds() -> None:
    scenario = build(
        apiServer={"restarts": [{"at": "10s", "down": "15s"}, {"at": "50s", "down": "1m"}]}
    )

    assert [(o.at, o.down) for o in scenario.api_server_outages] == [(10, 15), (50, 60)]
    assert build().api_server_outages == ()


def test_fleet_of_exactly_the_maximum_is_accepted() -> None:
    assert build(fleet={"nodes": MAX_NODES}).nodes == MAX_NODES


def test_heartbeat_timeout_of_exactly_twice_the_interval_is_accepted() -> None:
    scenario = build(fleet={"heartbeatInterval": "10s"}, policy={"heartbeatTimeout": "20s"})

    assert scenario.heartbeat_interval == 10.0
    assert scenario.policy_spec.heartbeat_timeout == "20s"


def test_fault_exactly_at_the_duration_is_accepted() -> None:
    assert build(faults=[fault(at="1m")]).faults[0].at == 60.0


def test_policy_is_kept_as_written_and_typed() -> None:
    policy = {"maxUnhealthy": "5%", "dryRun": True, "recovery": {"healthyFor": "20s"}}
    scenario = build(policy=policy)

    assert scenario.policy == policy
    assert scenario.policy_spec.max_unhealthy == "5%"
    assert scenario.policy_spec.dry_run is True
    assert scenario.healthy_for == "20s"


def test_stale_action_and_cordons_come_from_the_policy_actions() -> None:
    plain = build()
    strict = build(
        policy={"actions": {"stale": {"taint": "NoExecute"}, "unhealthy": {"cordon": True}}}
    )

    assert plain.stale_action == api.ActionSpec(taint="None", cordon=False)
    assert plain.cordons is False
    assert strict.stale_action == api.ActionSpec(taint="NoExecute", cordon=False)
    assert strict.cordons is True


@pytest.mark.parametrize(
    "data",
    [[1, 2], None, "name: quick"],
    ids=["list", "null", "string"],
)
def test_a_document_that_is_not_a_mapping_is_refused(data: Any) -> None:
    assert refusal(data).startswith("scenario: ")


def test_malformed_yaml_gives_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nfleet: {nodes: [1, 2\n")

    with pytest.raises(ScenarioError, match="not valid YAML") as caught:
        load(path)
    assert caught.value.source == str(path)


def test_missing_file_gives_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ScenarioError, match="cannot read") as caught:
        load(path)
    assert caught.value.source == str(path)


def test_a_valid_file_loads_with_its_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text("name: small\nduration: 30s\nfleet:\n  nodes: 4\n  racks: 2\n")

    scenario = load(path)

    assert (scenario.name, scenario.nodes, scenario.racks, scenario.duration) == (
        "small",
        4,
        2,
        30.0,
    )
    assert scenario.file == str(path)


def test_errors_in_a_file_name_the_file_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nduration: 30s\nfleet:\n  nodes: 4\n  rakcs: 2\n")

    with pytest.raises(ScenarioError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: scenario.fleet.rakcs: unknown key"


NO_STALE_ACTION = api.ActionSpec(taint="None", cordon=False)


@pytest.mark.parametrize(
    ("text", "quarantines"),
    [
        ("xid 79", True),
        ("xid 48", True),
        ("xid 13", False),
        ("xid 999", False),
        ("ecc", True),
        ("gpu-lost", True),
    ],
)
def test_fault_quarantines_by_nvidia_catalog_and_kind(text: str, quarantines: bool) -> None:
    assert FaultKind.parse(text).quarantines(NO_STALE_ACTION) is quarantines


@pytest.mark.parametrize(
    ("stale", "quarantines"),
    [
        (api.ActionSpec(taint="None", cordon=False), False),
        (api.ActionSpec(taint="NoSchedule", cordon=False), True),
        (api.ActionSpec(taint="NoExecute", cordon=False), True),
        (api.ActionSpec(taint="None", cordon=True), True),
    ],
    ids=["nothing", "taints", "taints-noexecute", "cordons-only"],
)
def test_silence_quarantines_only_when_the_stale_action_taints_or_cordons(
    stale: api.ActionSpec, quarantines: bool
) -> None:
    assert FaultKind.parse("silence").quarantines(stale) is quarantines


def test_node_names_are_unique_and_zero_padded() -> None:
    assert build(fleet={"nodes": 3}).node_names() == ["sim-0000", "sim-0001", "sim-0002"]
    names = build(fleet={"nodes": MAX_NODES}).node_names()
    assert len(set(names)) == MAX_NODES
    assert names[-1] == "sim-4999"


def test_rack_of_splits_nodes_into_equal_contiguous_racks() -> None:
    scenario = build(fleet={"nodes": 12, "racks": 3})

    assert [scenario.rack_of(i) for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4


def test_rack_of_keeps_racks_contiguous_and_within_one_node_of_each_other() -> None:
    scenario = build(fleet={"nodes": 10, "racks": 3})
    racks = [scenario.rack_of(i) for i in range(10)]

    assert racks == sorted(racks)
    assert set(racks) == {0, 1, 2}
    sizes = [racks.count(r) for r in range(3)]
    assert max(sizes) - min(sizes) <= 1


def test_single_rack_holds_every_node() -> None:
    scenario = build(fleet={"nodes": 7})

    assert {scenario.rack_of(i) for i in range(7)} == {0}


def drain_policy(**drain: Any) -> dict[str, Any]:
    return {"actions": {"unhealthy": {"taint": "NoSchedule", "drain": drain}}}


def test_pods_per_node_defaults_to_none_and_no_drain() -> None:
    scenario = build()

    assert scenario.pods_per_node == 0
    assert scenario.drains is False
    assert scenario.drain_for("unhealthy") is None


def test_pods_per_node_and_the_policys_drain_are_read() -> None:
    scenario = build(
        fleet={"podsPerNode": 8},
        policy={
            **drain_policy(timeout="5m"),
            "drainLimits": {"maxNodes": "100%", "evictionsPerSecond": 100},
        },
    )

    assert scenario.pods_per_node == 8
    assert scenario.drains is True
    drain = scenario.drain_for("unhealthy")
    assert drain is not None and drain.timeout == "5m"
    assert scenario.drain_for("stale") is None
    limits = scenario.policy_spec.drain_limits
    assert limits is not None
    assert (limits.max_nodes, limits.evictions_per_second) == ("100%", 100.0)


def test_a_dry_run_policy_does_not_drain() -> None:
    assert build(policy={**drain_policy(), "dryRun": True}).drains is False


def test_as_many_pods_as_gpus_is_accepted() -> None:
    assert build(fleet={"gpusPerNode": 4, "podsPerNode": 4}).pods_per_node == 4


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (scenario_data(fleet={"podsPerNode": 9}), "scenario.fleet.podsPerNode"),
        (scenario_data(fleet={"podsPerNode": -1}), "scenario.fleet.podsPerNode"),
        (
            scenario_data(fleet={"gpusPerNode": 2, "podsPerNode": 3}),
            "scenario.fleet.podsPerNode",
        ),
        (
            scenario_data(policy=drain_policy(timeout="soon")),
            "scenario.policy.actions.unhealthy.drain.timeout",
        ),
        (
            scenario_data(policy=drain_policy(gracePeriod="-")),
            "scenario.policy.actions.unhealthy.drain.gracePeriod",
        ),
        (
            scenario_data(policy=drain_policy(gpuResources=[])),
            "scenario.policy.actions.unhealthy.drain.gpuResources",
        ),
        (
            scenario_data(
                policy={"actions": {"unhealthy": {"taint": "None", "drain": {"timeout": "1m"}}}}
            ),
            "scenario.policy.actions.unhealthy.drain",
        ),
        (
            scenario_data(policy={"drainLimits": {"maxNodes": "200%"}}),
            "scenario.policy.drainLimits.maxNodes",
        ),
        (
            scenario_data(policy={"drainLimits": {"evictionsPerSecond": 0}}),
            "scenario.policy.drainLimits.evictionsPerSecond",
        ),
    ],
    ids=[
        "more-pods-than-gpus",
        "negative-pods",
        "more-pods-than-fewer-gpus",
        "drain-timeout",
        "drain-grace-period",
        "gpu-pods-without-resources",
        "drain-without-taint-or-cordon",
        "drain-max-nodes",
        "drain-rate-zero",
    ],
)
def test_unrunnable_pods_or_drains_are_refused_naming_the_path(
    data: dict[str, Any], path: str
) -> None:
    assert refusal(data).startswith(f"{path}: ")


def ladder(**keys: Any) -> dict[str, Any]:
    """A scenario's remediation: a GPU reset, a reboot and a validation, with keys replaced."""
    return {
        "steps": [
            {"name": "gpu-reset", "fixes": "GpuReset", "duration": "20s", "failureRate": 0.2},
            {"name": "reboot", "fixes": "Reboot", "duration": "1m", "timeout": "5m"},
        ],
        "validation": {"duration": "30s", "failureRate": 0.05, "timeout": "2m"},
        **keys,
    }


def test_no_remediation_leaves_the_policy_without_ladder_or_validation() -> None:
    scenario = build()

    assert scenario.remediation is None
    assert scenario.remediates is False
    assert (scenario.policy_spec.actions or api.Actions()).unhealthy.remediate is None
    assert scenario.policy_spec.validation is None


def test_remediation_becomes_the_unhealthy_actions_ladder_of_job_steps_and_a_validation() -> None:
    scenario = build(
        policy={"actions": {"unhealthy": {"taint": "NoExecute"}}},
        remediation=ladder(startAt={"xid-needs-reset": "reboot"}),
    )

    actions = scenario.policy_spec.actions
    assert actions is not None and actions.unhealthy.taint == "NoExecute"
    remediate = actions.unhealthy.remediate
    assert remediate is not None
    assert [(s.name, s.fixes, s.timeout, s.attempts) for s in remediate.steps] == [
        ("gpu-reset", api.StepFix.GPU_RESET, "15m", 1),
        ("reboot", api.StepFix.REBOOT, "5m", 1),
    ]
    assert [s.job.config_map for s in remediate.steps if s.job] == [
        "sim-step-gpu-reset",
        "sim-step-reboot",
    ]
    assert remediate.start_at == {"xid-needs-reset": "reboot"}
    validation = scenario.policy_spec.validation
    assert validation is not None
    assert (validation.job.config_map, validation.timeout) == ("sim-validation", "2m")
    # What the simulator creates is what it checked.
    assert scenario.policy["actions"]["unhealthy"]["remediate"]["steps"][0]["job"] == {
        "configMap": "sim-step-gpu-reset"
    }
    assert scenario.remediates is True


def test_each_steps_jobs_behave_as_the_scenario_says() -> None:
    remediation = build(remediation=ladder()).remediation

    assert remediation is not None
    reset, reboot = remediation.steps
    assert (reset.fixes, reset.duration, reset.failure_rate) == (api.StepFix.GPU_RESET, 20.0, 0.2)
    assert (reboot.fixes, reboot.duration, reboot.failure_rate) == (api.StepFix.REBOOT, 60.0, 0.0)
    assert remediation.validation is not None
    assert (remediation.validation.duration, remediation.validation.failure_rate) == (30.0, 0.05)
    assert remediation.behaviour("reboot") is reboot
    assert remediation.behaviour("validation") is remediation.validation
    assert remediation.behaviour("drain-check") is None
    assert [j.name for j in remediation.jobs] == ["gpu-reset", "reboot", "validation"]


def test_a_validation_alone_is_a_remediation_without_steps() -> None:
    scenario = build(remediation={"validation": {"duration": "5s"}})

    assert scenario.remediation is not None
    assert scenario.remediation.steps == ()
    assert scenario.policy_spec.validation is not None


def test_a_dry_run_policy_lists_its_steps_but_the_simulator_runs_no_job() -> None:
    assert build(policy={"dryRun": True}, remediation=ladder()).remediates is False


def steps(*changed: dict[str, Any]) -> dict[str, Any]:
    return ladder(steps=[{"name": "gpu-reset", "fixes": "GpuReset", **c} for c in changed])


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (scenario_data(remediation={}), "scenario.remediation"),
        (
            scenario_data(remediation=steps({"failureRate": 1.5})),
            "remediation.steps[0].failureRate",
        ),
        (
            scenario_data(remediation=steps({"failureRate": -0.1})),
            "remediation.steps[0].failureRate",
        ),
        (scenario_data(remediation=steps({"duration": "soon"})), "remediation.steps[0].duration"),
        (scenario_data(remediation=steps({"timeout": "1 day"})), "remediation.steps[0].timeout"),
        (scenario_data(remediation=steps({"attempts": 6})), "remediation.steps[0].attempts"),
        (scenario_data(remediation=steps({"fixes": "Other"})), "remediation.steps[0].fixes"),
        (scenario_data(remediation=steps({"name": "validation"})), "remediation.steps[0].name"),
        (scenario_data(remediation=steps({}, {})), "scenario.remediation.steps[1].name"),
        (
            scenario_data(remediation=ladder(startAt={"xid-needs-reset": "nap"})),
            "scenario.remediation.startAt.xid-needs-reset",
        ),
        (
            scenario_data(remediation=ladder(validation={"failureRate": 2})),
            "scenario.remediation.validation.failureRate",
        ),
        (
            scenario_data(remediation=ladder(validation={"timeout": "-"})),
            "scenario.remediation.validation.timeout",
        ),
        (
            scenario_data(
                policy={"actions": {"unhealthy": {"taint": "None"}}}, remediation=ladder()
            ),
            "scenario.policy.actions.unhealthy",
        ),
        (
            scenario_data(policy={"actions": {"unhealthy": {"remediate": {"steps": []}}}}),
            "scenario.policy.actions.unhealthy.remediate",
        ),
        (
            scenario_data(policy={"validation": {"job": {"configMap": "x"}}}),
            "scenario.policy.validation",
        ),
        (
            scenario_data(policy={"remediationLimits": {"maxNodes": "150%"}}),
            "scenario.policy.remediationLimits.maxNodes",
        ),
    ],
    ids=[
        "nothing-to-do",
        "failure-rate-above-one",
        "failure-rate-negative",
        "duration",
        "timeout",
        "attempts",
        "fixes-other",
        "named-validation",
        "name-twice",
        "start-at-unknown-step",
        "validation-failure-rate",
        "validation-timeout",
        "no-taint-or-cordon",
        "policy-remediate",
        "policy-validation",
        "remediation-max-nodes",
    ],
)
def test_unrunnable_remediation_is_refused_naming_the_path(data: dict[str, Any], path: str) -> None:
    problem = refusal(data)
    assert problem.startswith(f"{path}: ") or problem.startswith(f"scenario.{path}: "), problem
