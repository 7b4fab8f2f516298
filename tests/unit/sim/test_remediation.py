"""The simulator's remediation: the steps' ConfigMaps, the simulated Job controller's draws,
status writes and bookkeeping, and the arithmetic of time to recovery, step outcomes and time
in each lifecycle phase."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest

from navarch import api
from navarch.errors import ApiError
from navarch.node_agent.kube import Credentials
from navarch.operator import step_objects
from navarch.sim import jobs, remediation
from navarch.sim.jobs import JobController, JobRecord, gpu_uuids, status_patch, succeeds
from navarch.sim.remediation import Fault, Recovery, phase_times, recoveries, step_outcomes
from navarch.sim.scenario import JobBehaviour, Remediation

RESET = JobBehaviour("gpu-reset", api.StepFix.GPU_RESET, 10.0, 0.3, "sim-step-gpu-reset")
REBOOT = JobBehaviour("reboot", api.StepFix.REBOOT, 30.0, 0.0, "sim-step-reboot")
VALIDATION = JobBehaviour("validation", None, 15.0, 1.0, "sim-validation")
LADDER = Remediation((RESET, REBOOT), VALIDATION)
T0 = 1_800_000_000.0


# --- the ConfigMaps ------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [RESET, REBOOT, VALIDATION], ids=lambda b: b.name)
def test_each_config_map_holds_a_job_the_operator_accepts_and_builds(
    behaviour: JobBehaviour,
) -> None:
    config_map = remediation.config_map(behaviour, {"navarch.dev/sim": "run"})
    manifest = step_objects.job_manifest(config_map)
    job = step_objects.build_job(
        manifest,
        name="navarch-x",
        namespace="ns",
        node="sim-0001",
        step=behaviour.name,
        gpus=["GPU-1"],
        taint_key=api.DEFAULT_TAINT_KEY,
        owner=step_objects.Owner("sim-0001", "uid"),
    )

    assert config_map["metadata"]["name"] == behaviour.config_map
    assert job["metadata"]["labels"][api.STEP_LABEL] == behaviour.name
    assert job["spec"]["template"]["spec"]["nodeName"] == "sim-0001"
    assert gpu_uuids(job) == {"GPU-1"}


# --- the simulated Job controller's pure parts ---------------------------------------------------


def test_a_draw_depends_on_seed_node_step_and_attempt_not_on_when_it_is_made() -> None:
    draws = [succeeds(7, "sim-0001", "reboot", attempt, 0.5) for attempt in range(1, 200)]

    assert draws == [succeeds(7, "sim-0001", "reboot", a, 0.5) for a in range(1, 200)]
    assert draws != [succeeds(8, "sim-0001", "reboot", a, 0.5) for a in range(1, 200)]
    assert draws != [succeeds(7, "sim-0002", "reboot", a, 0.5) for a in range(1, 200)]


def test_the_failure_rate_is_the_share_of_draws_that_fail() -> None:
    failed = sum(not succeeds(1, f"sim-{i:04d}", "gpu-reset", 1, 0.2) for i in range(5000))

    assert 900 < failed < 1100
    assert all(succeeds(1, f"sim-{i:04d}", "s", 1, 0.0) for i in range(500))
    assert not any(succeeds(1, f"sim-{i:04d}", "s", 1, 1.0) for i in range(500))


def test_gpu_uuids_are_read_from_the_jobs_environment_and_empty_without_it() -> None:
    def job(env: list[dict[str, str]]) -> dict[str, Any]:
        return {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": env}]}}}}

    named = job([{"name": "OTHER", "value": "x"}, {"name": "NAVARCH_GPU_UUIDS", "value": "A B"}])

    assert gpu_uuids(named) == {"A", "B"}
    assert gpu_uuids(job([{"name": "NAVARCH_GPU_UUIDS", "value": ""}])) == set()
    assert gpu_uuids({}) == set()


def test_a_success_is_complete_with_success_criteria_met_and_reads_as_succeeded() -> None:
    started = datetime(2026, 11, 29, 12, 0, 0, 600000, tzinfo=UTC)
    ended = datetime(2026, 11, 29, 12, 0, 10, 200000, tzinfo=UTC)

    patch = status_patch(True, started, ended, "simulated success")

    status = patch["status"]
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert (status["startTime"], status["completionTime"]) == (
        "2026-11-29T12:00:00Z",
        "2026-11-29T12:00:10Z",
    )
    assert status["succeeded"] == 1
    assert step_objects.job_outcome(patch)[0] == api.StepPhase.SUCCEEDED
    assert jobs.finished(patch)


def test_a_failure_has_its_failure_target_and_reads_as_failed_with_its_message() -> None:
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    patch = status_patch(False, at, at, "simulated failure (failureRate 0.3)")

    assert [c["type"] for c in patch["status"]["conditions"]] == ["FailureTarget", "Failed"]
    assert "completionTime" not in patch["status"]
    assert step_objects.job_outcome(patch) == (
        api.StepPhase.FAILED,
        "the Job failed: simulated failure (failureRate 0.3)",
    )
    assert jobs.finished(patch)
    assert not jobs.finished({"status": {"conditions": [{"type": "Complete", "status": "False"}]}})


def record(step: str, outcome: str | None) -> JobRecord:
    return JobRecord("uid", "name", "sim-0001", step, 1, T0, T0 + 1, True, outcome=outcome)


def test_outcomes_count_each_steps_jobs_by_how_they_ended() -> None:
    records = [
        record("gpu-reset", "Succeeded"),
        record("gpu-reset", "Failed"),
        record("gpu-reset", "Succeeded"),
        record("reboot", None),
        record("validation", jobs.DELETED),
    ]

    assert jobs.outcomes(records) == {
        "gpu-reset": {"Failed": 1, "Succeeded": 2},
        "reboot": {"Running": 1},
        "validation": {"DeletedBeforeEnd": 1},
    }


# --- the Job controller's bookkeeping, against a fake API client ---------------------------------


class FakeClient:
    def __init__(self, error: ApiError | None = None) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.patches.append((path, body))
        return body


def job(name: str, node: str, step: str, *, uid: str | None = None) -> dict[str, Any]:
    env = [{"name": step_objects.GPU_UUIDS_ENV, "value": "GPU-a"}]
    return {
        "metadata": {
            "name": name,
            "uid": uid or name,
            "labels": {api.NODE_LABEL: node, api.STEP_LABEL: step},
        },
        "spec": {"template": {"spec": {"containers": [{"name": "c", "env": env}]}}},
    }


def controller(healed: list[tuple[str, str, set[str]]], failure_rate: float = 0.0) -> JobController:
    reset = JobBehaviour("gpu-reset", api.StepFix.GPU_RESET, 10.0, failure_rate, "c")
    return JobController(
        Credentials(server="https://127.0.0.1:1"),
        "ns",
        Remediation((reset, REBOOT), VALIDATION),
        seed=3,
        heal=lambda node, step, gpus: healed.append((node, step.name, gpus)),
        clock=lambda: T0,
    )


def test_a_new_job_is_due_after_its_steps_duration_and_counts_its_attempts() -> None:
    c = controller([])
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    c._see(job("b", "sim-0001", "gpu-reset"), T0 + 20)
    c._see(job("c", "sim-0002", "gpu-reset"), T0 + 20)
    c._see(job("a", "sim-0001", "gpu-reset"), T0 + 30)  # seen again: no second record

    records = c.records
    assert [(r.name, r.attempt, r.due) for r in records] == [
        ("a", 1, T0 + 10),
        ("b", 2, T0 + 30),
        ("c", 1, T0 + 30),
    ]
    assert all(r.gpus == {"GPU-a"} for r in records)
    assert c.running == 3


def test_jobs_of_unknown_steps_and_jobs_already_finished_are_left_alone() -> None:
    c = controller([])
    done = job("done", "sim-0001", "gpu-reset")
    done["status"] = status_patch(True, datetime.now(UTC), datetime.now(UTC), "x")["status"]
    c._see(job("x", "sim-0001", "drain-check"), T0)
    c._see(done, T0)

    assert c.records == []


def test_a_success_heals_the_node_then_writes_the_jobs_status() -> None:
    healed: list[tuple[str, str, set[str]]] = []
    c = controller(healed)
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    client = FakeClient()

    c._end(client, "a")  # type: ignore[arg-type]

    assert healed == [("sim-0001", "gpu-reset", {"GPU-a"})]
    path, body = client.patches[0]
    assert path == "/apis/batch/v1/namespaces/ns/jobs/a/status"
    assert step_objects.job_outcome(body)[0] == api.StepPhase.SUCCEEDED
    assert [(r.outcome, r.ended) for r in c.records] == [("Succeeded", T0)]


def test_a_failure_heals_nothing() -> None:
    healed: list[tuple[str, str, set[str]]] = []
    c = controller(healed, failure_rate=1.0)
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    client = FakeClient()

    c._end(client, "a")  # type: ignore[arg-type]

    assert healed == []
    assert step_objects.job_outcome(client.patches[0][1])[0] == api.StepPhase.FAILED
    assert c.records[0].outcome == "Failed"


def test_a_job_deleted_first_is_neither_healed_nor_written() -> None:
    healed: list[tuple[str, str, set[str]]] = []
    c = controller(healed)
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    c._event("DELETED", job("a", "sim-0001", "gpu-reset"), T0 + 3)
    client = FakeClient()

    c._end(client, "a")  # type: ignore[arg-type]

    assert (healed, client.patches) == ([], [])
    assert [(r.outcome, r.ended) for r in c.records] == [(jobs.DELETED, T0 + 3)]


def test_a_job_missing_from_a_new_list_was_deleted_while_no_watch_was_open() -> None:
    c = controller([])
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    c._see(job("b", "sim-0002", "gpu-reset"), T0)

    c._listed([job("b", "sim-0002", "gpu-reset")], T0 + 5)

    assert [(r.name, r.outcome) for r in c.records] == [("a", jobs.DELETED), ("b", None)]


def test_a_status_write_the_server_did_not_answer_is_tried_again_without_healing_twice() -> None:
    healed: list[tuple[str, str, set[str]]] = []
    c = controller(healed)
    c._see(job("a", "sim-0001", "gpu-reset"), T0)
    c._queue.clear()

    c._end(FakeClient(ApiError(None, "connection refused")), "a")  # type: ignore[arg-type]
    assert c.records[0].outcome is None
    assert [uid for _, _, uid in c._queue] == ["a"]
    c._end(FakeClient(), "a")  # type: ignore[arg-type]

    assert len(healed) == 1
    assert c.records[0].outcome == "Succeeded"
    assert c.write_errors == 1


def test_a_status_write_to_a_job_gone_meanwhile_records_it_deleted() -> None:
    c = controller([])
    c._see(job("a", "sim-0001", "gpu-reset"), T0)

    c._end(FakeClient(ApiError(404, "not found")), "a")  # type: ignore[arg-type]

    assert c.records[0].outcome == jobs.DELETED


# --- time to recovery ----------------------------------------------------------------------------


def taints(*changes: tuple[float, bool]) -> list[tuple[float, bool]]:
    return [(T0 + t, on) for t, on in changes]


def test_time_to_recovery_runs_from_the_fault_to_the_release_of_its_quarantine() -> None:
    found = recoveries(
        [Fault("a", T0 + 1), Fault("b", T0 + 2)],
        {"a": taints((1.2, True), (40.0, False)), "b": taints((2.5, True))},
    )

    assert found == [
        Recovery("a", T0 + 1, T0 + 1.2, T0 + 40),
        Recovery("b", T0 + 2, T0 + 2.5, None),
    ]
    assert found[0].seconds == pytest.approx(39.0)
    assert found[1].seconds is None


def test_several_faults_before_one_taint_count_one_quarantine_from_the_first() -> None:
    found = recoveries(
        [Fault("a", T0 + 2), Fault("a", T0 + 1)],
        {"a": taints((3.0, True), (50.0, False))},
    )

    assert [(r.fault, r.released) for r in found] == [(T0 + 1, T0 + 50)]


def test_a_fault_healed_before_any_taint_begins_no_quarantine() -> None:
    found = recoveries(
        [Fault("a", T0 + 1, recovered_at=T0 + 5), Fault("a", T0 + 60)],
        {"a": taints((61.0, True), (90.0, False))},
    )

    assert [(r.fault, r.quarantined) for r in found] == [(T0 + 60, T0 + 61)]


def test_a_node_quarantined_twice_has_two_recoveries() -> None:
    found = recoveries(
        [Fault("a", T0 + 1), Fault("a", T0 + 100)],
        {"a": taints((2.0, True), (30.0, False), (101.0, True), (140.0, False))},
    )

    assert [r.seconds for r in found] == [pytest.approx(29.0), pytest.approx(40.0)]


def test_a_fault_never_followed_by_a_taint_has_no_recovery() -> None:
    assert recoveries([Fault("a", T0 + 1)], {}) == []


# --- step outcomes and lifecycle phases ----------------------------------------------------------


def test_step_outcomes_count_each_steps_records_by_phase() -> None:
    counts = step_outcomes(
        [
            ("gpu-reset", "Failed"),
            ("reboot", "Succeeded"),
            ("gpu-reset", "Succeeded"),
            ("gpu-reset", "Failed"),
            ("validation", "TimedOut"),
        ]
    )

    assert counts == {
        "gpu-reset": {"Failed": 2, "Succeeded": 1},
        "reboot": {"Succeeded": 1},
        "validation": {"TimedOut": 1},
    }


def phases(*changes: tuple[float, str | None]) -> list[tuple[float, str | None]]:
    return [(T0 + t, phase) for t, phase in changes]


def test_time_in_each_phase_sums_the_stays_from_one_change_to_the_next() -> None:
    times = phase_times(
        {
            "a": phases(
                (0, None),
                (1, "Quarantined"),
                (5, "Draining"),
                (7, "Remediating"),
                (30, "Validating"),
                (45, "Released"),
            ),
            "b": phases((2, "Quarantined"), (6, "Remediating"), (70, "NeedsService")),
        },
        end=T0 + 100,
    )

    assert list(times) == ["Quarantined", "Draining", "Remediating", "Validating", "NeedsService"]
    assert (times["Quarantined"]["count"], times["Quarantined"]["max"]) == (2, 4.0)
    assert times["Remediating"]["p50"] == 23.0
    assert times["Remediating"]["max"] == 64.0
    assert (times["NeedsService"]["count"], times["NeedsService"]["open"]) == (0, 1)
    assert times["NeedsService"]["totalSeconds"] == 30.0
    assert times["Validating"]["totalSeconds"] == 15.0


def test_phases_never_entered_are_left_out() -> None:
    assert phase_times({"a": phases((0, None), (3, "Released"))}, end=T0 + 10) == {}


# --- which nodes are still on the ladder ---------------------------------------------------------


def node(name: str, *, spent: bool = False) -> dict[str, Any]:
    labels = {api.NEEDS_SERVICE_LABEL: "true"} if spent else {}
    return {"metadata": {"name": name, "labels": labels}}


def health(name: str, verdict: str = "Unhealthy") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"verdict": {"health": verdict, "reason": "x"}}}


def test_nodes_still_remediating_are_the_tainted_unhealthy_ones_not_needing_service() -> None:
    nodes = [node("a"), node("b", spent=True), node("c"), node("d")]
    healths = [health("a"), health("b"), health("c"), health("d", "Healthy")]

    waiting = remediation.unfinished(nodes, healths, ["a", "b", "d"])

    assert waiting == ["a"]


# --- the result section --------------------------------------------------------------------------


def summarized(found: Iterable[Recovery]) -> dict[str, Any]:
    return remediation.summarize(
        LADDER,
        list(found),
        spent=["sim-0009"],
        operator_steps={"gpu-reset": {"Succeeded": 2}},
        jobs={"gpu-reset": {"Succeeded": 2}},
        phases={},
        taken={
            "a": [(T0 + 20, "validation:Succeeded"), (T0 + 5, "gpu-reset:Succeeded")],
            "sim-0009": [(T0 - 50, "reboot:Succeeded"), (T0 + 4, "reboot:Failed")],
        },
        t0=T0,
    )


def test_the_summary_gives_time_to_recovery_of_the_released_and_counts_the_rest() -> None:
    section = summarized(
        [
            Recovery("a", T0 + 1, T0 + 1.5, T0 + 31),
            Recovery("b", T0 + 2, T0 + 2.5, T0 + 62),
            Recovery("sim-0009", T0 + 3, T0 + 3.5, None),
        ]
    )

    assert (section["quarantines"], section["released"], section["notReleased"]) == (3, 2, 1)
    assert section["needsService"] == ["sim-0009"]
    assert section["timeToRecovery"]["count"] == 2
    assert section["timeToRecovery"]["max"] == pytest.approx(60.0)
    assert section["timeToRecovery"]["samples"] == [30.0, 60.0]
    assert section["nodes"][2] == {
        "node": "sim-0009",
        "faultAt": 3.0,
        "quarantinedAt": 3.5,
        "releasedAt": None,
        "timeToRecovery": None,
        "steps": ["reboot:Failed"],
    }
    assert section["nodes"][0]["steps"] == ["gpu-reset:Succeeded", "validation:Succeeded"]
    assert section["nodes"][1]["steps"] == []
    assert [s["name"] for s in section["steps"]] == ["gpu-reset", "reboot"]
    assert section["validation"] == {
        "name": "validation",
        "fixes": None,
        "durationSeconds": 15.0,
        "failureRate": 1.0,
    }
