"""Remediation against the in-memory API, on an injected clock: steps climbing a ladder,
validation, NeedsService and its clearing, template steps, dry runs, restarts, release."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from navarch import api
from navarch.operator.index import Index
from navarch.operator.ladder import compile_ladder
from navarch.operator.policy import Validation
from navarch.operator.remediator import Order, Remediator
from navarch.operator.workqueue import WorkQueue
from navarch.testing.fake_kube import FakeKube

from .test_reconciler import run

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NS = "navarch-system"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
JOB_YAML = "kind: Job\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: i}]\n"
FAULT = api.MatchedRule(
    name="xid-needs-reset",
    severity="Unhealthy",
    message="XID 79",
    gpus=["GPU-7"],
    actions=["RESET_GPU"],
)


def ladder(*steps: dict[str, Any], **spec: Any) -> Any:
    return compile_ladder(api.RemediationSpec.model_validate({"steps": list(steps), **spec}))


def job_step(name: str, fixes: str = "GpuReset", timeout: str = "10m") -> dict[str, Any]:
    return {"name": name, "fixes": fixes, "job": {"configMap": name}, "timeout": timeout}


LADDER = ladder(job_step("gpu-reset"), job_step("reboot", "Reboot", "30m"))


class Rig:
    def __init__(self) -> None:
        self.now = START
        self.kube = FakeKube()
        self.index = Index(WorkQueue())
        self.remediator = Remediator(
            self.kube, self.index, lambda: self.now, NS, sleep=self.sleep, rand=lambda: 1.0
        )
        for name in ("gpu-reset", "reboot", "validate"):
            self.config_map(name, JOB_YAML)

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def config_map(self, name: str, job: str) -> None:
        path = f"/api/v1/namespaces/{NS}/configmaps/{name}"
        self.kube.objects[path] = {"metadata": {"name": name}, "data": {"job.yaml": job}}

    def node(self, name: str = "gpu-1", **status: Any) -> None:
        self.index.observe_node(self.kube.add_node(name))
        self.index.observe_health(self.kube.add_health(name, {"gpuCount": 8, **status}))

    def order(self, node: str = "gpu-1", **fields: Any) -> Order:
        base = Order(
            node=node,
            policy="p",
            action="unhealthy",
            ladder=LADDER,
            validation=None,
            max_nodes=10,
            dry_run=False,
            healthy=False,
            release_due=False,
            ready=True,
            rules=(FAULT,),
            fault_time=START,
            quarantine="2026-03-01T12:00:00Z",
            taint_key=api.DEFAULT_TAINT_KEY,
            serviced=None,
        )
        return dataclasses.replace(base, **fields)

    def sync(self, *orders: Order) -> None:
        self.remediator.sync({o.node: o for o in orders})

    def record(self, node: str = "gpu-1") -> dict[str, Any]:
        return dict(self.kube.healths[node]["status"].get("remediation") or {})

    def steps(self, node: str = "gpu-1") -> list[tuple[str, str]]:
        return [(s["name"], s["phase"]) for s in self.record(node).get("steps") or []]

    def jobs(self, step: str | None = None) -> list[dict[str, Any]]:
        found = [o for p, o in self.kube.objects.items() if p.startswith(JOBS + "/")]
        return [
            j for j in found if step is None or j["metadata"]["labels"]["navarch.dev/step"] == step
        ]

    def finish(self, step: str, condition: str = "Complete") -> None:
        for job in self.jobs(step):
            job["status"] = {"conditions": [{"type": condition, "status": "True"}]}

    def reasons(self, node: str = "gpu-1") -> list[str]:
        return [e.reason for t, e in self.kube.events if t.name == node and t.kind == "Node"]

    async def until(self, done: Callable[[], bool], steps: int = 3000) -> None:
        for _ in range(steps):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError(f"not reached; steps {self.steps()}, record {self.record()}")


@run
async def test_a_reset_job_runs_on_the_node_for_the_gpus_at_fault() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    (job,) = rig.jobs()
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "gpu-1"
    assert {"name": "NAVARCH_GPU_UUIDS", "value": "GPU-7"} in pod["containers"][0]["env"]
    assert rig.record()["gpus"] == ["GPU-7"]
    history = rig.kube.healths["gpu-1"]["status"]["history"]
    assert [(h["outcome"], h["rules"]) for h in history] == [("Open", ["xid-needs-reset"])]
    assert "RemediationStarted" in rig.reasons()
    await rig.remediator.stop()


@run
async def test_a_failed_reset_climbs_to_the_reboot_and_a_spent_ladder_needs_service() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    rig.finish("gpu-reset", "Failed")
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Failed"), ("reboot", "Running")])
    assert rig.jobs("gpu-reset") == []
    rig.finish("reboot", "Failed")
    await rig.until(lambda: rig.record().get("needsService") is True)
    labels = rig.kube.nodes["gpu-1"]["metadata"]["labels"]
    assert labels[api.NEEDS_SERVICE_LABEL] == "true"
    assert "NeedsService" in rig.reasons()
    # Nothing more runs, however long it waits.
    for _ in range(100):
        await asyncio.sleep(0)
    assert rig.jobs() == []
    await rig.remediator.stop()


@run
async def test_a_step_that_succeeds_without_healing_the_node_climbs_at_its_timeout() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    rig.finish("gpu-reset")
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Succeeded"), ("reboot", "Running")])
    assert rig.now - START >= timedelta(minutes=10)
    await rig.remediator.stop()


@run
async def test_a_step_that_gives_no_result_times_out_and_its_job_is_deleted() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps()[:1] == [("gpu-reset", "TimedOut")])
    assert rig.jobs("gpu-reset") == []
    await rig.remediator.stop()


@run
async def test_a_missing_config_map_fails_the_step_with_the_reason() -> None:
    rig = Rig()
    del rig.kube.objects[f"/api/v1/namespaces/{NS}/configmaps/gpu-reset"]
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps()[:1] == [("gpu-reset", "Failed")])
    first = rig.record()["steps"][0]
    assert "ConfigMap navarch-system/gpu-reset not found" in first["message"]
    await rig.until(lambda: rig.steps()[1:] == [("reboot", "Running")])
    await rig.remediator.stop()


@run
async def test_validation_runs_once_the_node_is_healthy_for_long_enough() -> None:
    rig = Rig()
    rig.node()
    check = Validation(api.JobTemplate(config_map="validate"), timedelta(minutes=5))
    rig.sync(rig.order(validation=check))
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    rig.finish("gpu-reset")
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Succeeded")])
    rig.sync(rig.order(validation=check, healthy=True))
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.jobs("validation") == []
    rig.sync(rig.order(validation=check, healthy=True, release_due=True))
    await rig.until(lambda: (rig.record().get("validation") or {}).get("phase") == "Running")
    rig.finish("validation")
    await rig.until(lambda: (rig.record().get("validation") or {}).get("phase") == "Succeeded")
    assert "ValidationPassed" in rig.reasons()
    await rig.remediator.stop()


@run
async def test_a_failed_validation_climbs_the_ladder() -> None:
    rig = Rig()
    rig.node()
    check = Validation(api.JobTemplate(config_map="validate"), timedelta(minutes=5))
    healthy = {"validation": check, "healthy": True, "release_due": True, "rules": ()}
    rig.sync(rig.order(**healthy))
    await rig.until(lambda: (rig.record().get("validation") or {}).get("phase") == "Running")
    (first,) = [j["metadata"]["name"] for j in rig.jobs("validation")]
    rig.finish("validation", "Failed")
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    assert rig.record().get("validation") is None
    # The step done, the node is validated again, by a Job of its own.
    rig.finish("gpu-reset")
    await rig.until(lambda: (rig.record().get("validation") or {}).get("attempt") == 2)
    (second,) = [j["metadata"]["name"] for j in rig.jobs("validation")]
    assert second != first
    await rig.remediator.stop()


@run
async def test_a_serviced_annotation_clears_needs_service() -> None:
    rig = Rig()
    rig.node()
    rig.sync(
        rig.order(ladder=ladder(job_step("gpu-reset"), startAt={"xid-needs-reset": "NeedsService"}))
    )
    await rig.until(lambda: rig.record().get("needsService") is True)
    assert rig.jobs() == []
    rig.sync(rig.order(serviced=rig.now + timedelta(seconds=1)))
    await rig.until(lambda: "Serviced" in rig.reasons())
    assert not rig.record().get("needsService")
    assert api.NEEDS_SERVICE_LABEL not in rig.kube.nodes["gpu-1"]["metadata"]["labels"]
    await rig.remediator.stop()


@run
async def test_a_template_step_creates_the_object_reads_its_condition_and_deletes_it() -> None:
    rig = Rig()
    group = "/apis/remediation.example.com/v1"
    rig.kube.objects[group] = {
        "resources": [
            {"name": "powercycletemplates", "kind": "PowerCycleTemplate"},
            {"name": "powercycles", "kind": "PowerCycle"},
        ]
    }
    rig.kube.objects[f"{group}/namespaces/ops/powercycletemplates/cycle"] = {
        "apiVersion": "remediation.example.com/v1",
        "kind": "PowerCycleTemplate",
        "metadata": {"name": "cycle", "namespace": "ops"},
        "spec": {"template": {"spec": {"strategy": "hard"}}},
    }
    template = {
        "apiVersion": "remediation.example.com/v1",
        "kind": "PowerCycleTemplate",
        "name": "cycle",
        "namespace": "ops",
    }
    rig.node()
    rig.sync(rig.order(ladder=ladder({"name": "cycle", "template": template})))
    path = f"{group}/namespaces/ops/powercycles/gpu-1"
    await rig.until(lambda: path in rig.kube.objects)
    assert rig.kube.objects[path]["spec"] == {"strategy": "hard"}
    assert rig.steps() == [("cycle", "Running")]
    rig.kube.objects[path]["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    await rig.until(lambda: rig.steps() == [("cycle", "Succeeded")])
    assert path not in rig.kube.objects
    await rig.remediator.stop()


@run
async def test_a_dry_run_records_the_plan_and_creates_nothing() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order(dry_run=True, rules=(FAULT.model_copy(update={"actions": ["RESTART_BM"]}),)))
    await rig.until(lambda: rig.steps() == [("reboot", "DryRun")])
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.jobs() == []
    assert "would run reboot" in rig.record()["message"]
    await rig.remediator.stop()


@run
async def test_a_restarted_operator_follows_the_job_it_created_and_creates_no_other() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    await rig.remediator.stop()
    before = [j["metadata"]["name"] for j in rig.jobs()]

    again = Remediator(rig.kube, rig.index, lambda: rig.now, NS, sleep=rig.sleep, rand=lambda: 1.0)
    again.sync({"gpu-1": rig.order()})
    for _ in range(50):
        await asyncio.sleep(0)
    assert [j["metadata"]["name"] for j in rig.jobs()] == before
    rig.finish("gpu-reset", "Failed")
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Failed"), ("reboot", "Running")])
    await again.stop()


@run
async def test_a_release_deletes_what_runs_and_closes_the_history() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order())
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    rig.sync()
    await rig.until(lambda: "remediation" not in rig.kube.healths["gpu-1"]["status"])
    assert rig.jobs() == []
    (closed,) = rig.kube.healths["gpu-1"]["status"]["history"]
    assert (closed["outcome"], closed["steps"]) == ("Released", ["gpu-reset:Running"])
    assert closed["releaseTime"]
    await rig.remediator.stop()


@run
async def test_at_most_max_nodes_remediate_at_once() -> None:
    rig = Rig()
    rig.node("gpu-1")
    rig.node("gpu-2")
    rig.sync(rig.order("gpu-1", max_nodes=1), rig.order("gpu-2", max_nodes=1))
    await rig.until(lambda: len(rig.jobs()) == 1)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(rig.jobs()) == 1
    first = rig.jobs()[0]["metadata"]["labels"][api.NODE_LABEL]
    other = "gpu-2" if first == "gpu-1" else "gpu-1"
    rig.finish("gpu-reset", "Failed")
    await rig.until(
        lambda: (
            (other, "gpu-reset")
            in {
                (j["metadata"]["labels"][api.NODE_LABEL], j["metadata"]["labels"][api.STEP_LABEL])
                for j in rig.jobs()
            }
            or rig.steps(other) != []
        )
    )
    await rig.remediator.stop()


@run
async def test_steps_wait_for_the_drain() -> None:
    rig = Rig()
    rig.node()
    rig.sync(rig.order(ready=False))
    for _ in range(100):
        await asyncio.sleep(0)
    assert rig.jobs() == []
    rig.sync(rig.order(ready=True))
    await rig.until(lambda: rig.steps() == [("gpu-reset", "Running")])
    await rig.remediator.stop()


@run
async def test_needs_service_survives_a_restart_and_nothing_runs_after_it() -> None:
    rig = Rig()
    rig.node()
    spent = ladder(job_step("gpu-reset"), startAt={"xid-needs-reset": "NeedsService"})
    rig.sync(rig.order(ladder=spent))
    await rig.until(lambda: rig.record().get("needsService") is True)
    await rig.remediator.stop()

    again = Remediator(rig.kube, rig.index, lambda: rig.now, NS, sleep=rig.sleep, rand=lambda: 1.0)
    again.sync({"gpu-1": rig.order(ladder=spent, healthy=True, release_due=True)})
    for _ in range(100):
        await asyncio.sleep(0)
    assert rig.record().get("needsService") is True
    assert rig.kube.nodes["gpu-1"]["metadata"]["labels"][api.NEEDS_SERVICE_LABEL] == "true"
    assert rig.jobs() == []
    await again.stop()


@run
async def test_a_restarted_operator_follows_the_validation_it_started() -> None:
    rig = Rig()
    rig.node()
    check = Validation(api.JobTemplate(config_map="validate"), timedelta(minutes=5))
    healthy = {"validation": check, "healthy": True, "release_due": True, "rules": ()}
    rig.sync(rig.order(**healthy))
    await rig.until(lambda: (rig.record().get("validation") or {}).get("phase") == "Running")
    await rig.remediator.stop()
    (job,) = rig.jobs("validation")

    again = Remediator(rig.kube, rig.index, lambda: rig.now, NS, sleep=rig.sleep, rand=lambda: 1.0)
    again.sync({"gpu-1": rig.order(**healthy)})
    for _ in range(50):
        await asyncio.sleep(0)
    assert [j["metadata"]["name"] for j in rig.jobs("validation")] == [job["metadata"]["name"]]
    rig.finish("validation")
    await rig.until(lambda: (rig.record().get("validation") or {}).get("phase") == "Succeeded")
    await again.stop()
