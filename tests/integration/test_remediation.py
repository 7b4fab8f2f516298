"""Remediation on a cluster where Jobs run: the real Job controller and KWOK's kubelets, which
make a Job's pod succeed or fail as its annotations say (``navarch.testing.workloads``).

Each test's ladder runs Jobs from ConfigMaps the test writes into the release's namespace; the
fake GPU stands in for what a real reset would do, so the test heals it when a reset succeeds.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from navarch import api
from navarch.operator.rules import repeat_offender
from navarch.testing.workloads import OUTCOME, RUNS_FOR
from navarch.wire import format_time

from .chart import CHART, Release
from .cluster import eventually, namespaced_crd, unique
from .workloads_env import GPU_NODES, StandIns, WorkloadCluster, governed

TIMEOUT = 90
"""Seconds a test waits for the operator to get somewhere: generous, for a loaded machine."""


def job_template(
    world: WorkloadCluster, release: Release, outcome: str = "Succeeded", runs_for: str = "1s"
) -> str:
    """A ConfigMap in the release's namespace with a Job whose pod ends as ``outcome``."""
    name = unique("step")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "metadata": {"annotations": {OUTCOME: outcome, RUNS_FOR: runs_for}},
                "spec": {"containers": [{"name": "fix", "image": "registry.invalid/fix"}]},
            }
        },
    }
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": release.namespace},
        "data": {"job.yaml": json.dumps(job)},
    }
    world.create(body)
    return name


def step(name: str, config_map: str, fixes: str = "Other", timeout: str = "60s") -> dict[str, Any]:
    return {"name": name, "fixes": fixes, "job": {"configMap": config_map}, "timeout": timeout}


def remediating(*steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """Policy settings: quarantine an Unhealthy node and climb ``steps``."""
    return {
        "actions": {
            "unhealthy": {"taint": "NoSchedule", "remediate": {"steps": list(steps), **spec}}
        }
    }


def record(world: WorkloadCluster, node: str) -> dict[str, Any]:
    return dict((world.gnh(node).get("status") or {}).get("remediation") or {})


def taken(world: WorkloadCluster, node: str) -> list[tuple[str, str]]:
    return [(s["name"], s["phase"]) for s in record(world, node).get("steps") or []]


def history(world: WorkloadCluster, node: str) -> list[dict[str, Any]]:
    return list((world.gnh(node).get("status") or {}).get("history") or [])


def jobs(world: WorkloadCluster, release: Release, node: str) -> list[dict[str, Any]]:
    found = world.cluster.get_json(
        "jobs", "-n", release.namespace, "-l", f"{api.NODE_LABEL}={node}"
    )
    return list(found["items"])


def phase(world: WorkloadCluster, node: str) -> str | None:
    return world.verdict(node).get("phase")


def serviced(world: WorkloadCluster, *nodes: str) -> None:
    """Mark the nodes serviced now: earlier quarantines stop counting, NeedsService clears."""
    stamp = format_time(datetime.now(UTC))
    for node in nodes:
        world.cluster.kubectl(
            "annotate", "gnh", node, "--overwrite", f"{api.SERVICED_ANNOTATION}={stamp}"
        )


@contextlib.contextmanager
def ladder(fleet: StandIns, *nodes: str, **spec: Any) -> Iterator[str]:
    """A policy for one test; the nodes start with a clean slate and end released, their
    quarantines closed (the remediation record folded into the history), so the next test
    reads no record of this one's."""
    serviced(fleet.world, *nodes)
    with governed(fleet, **spec) as policy:
        try:
            yield policy
        finally:
            serviced(fleet.world, *nodes)
    for node in nodes:
        eventually(lambda n=node: not record(fleet.world, n), timeout=TIMEOUT)


def test_a_reset_that_works_and_a_validation_that_passes_release_the_node(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[0]
    reset = job_template(workloads, release)
    check = job_template(workloads, release, runs_for="3s")
    spec = remediating(step("gpu-reset", reset, "GpuReset"))
    spec["validation"] = {"job": {"configMap": check}, "timeout": "60s"}
    seen: set[str] = set()

    def watch(wanted: str) -> bool:
        now = phase(workloads, sick)
        if now:
            seen.add(now)
        return now == wanted

    with ladder(fleet, sick, **spec):
        fleet.agents[sick].break_gpu()
        eventually(lambda: taken(workloads, sick) == [("gpu-reset", "Running")], timeout=TIMEOUT)
        (job,) = jobs(workloads, release, sick)
        pod = job["spec"]["template"]["spec"]
        assert pod["nodeName"] == sick
        uuids = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert uuids["NAVARCH_GPU_UUIDS"].startswith("GPU-")
        eventually(lambda: watch("Remediating"), timeout=TIMEOUT)

        eventually(lambda: taken(workloads, sick) == [("gpu-reset", "Succeeded")], timeout=TIMEOUT)
        # What the reset would have done to a real GPU.
        fleet.agents[sick].reset_gpu()
        eventually(lambda: watch("Validating"), timeout=TIMEOUT)
        assert workloads.navarch_taints(sick), "released before validation passed"
        eventually(lambda: not workloads.navarch_taints(sick), timeout=TIMEOUT)
        eventually(lambda: watch("Released"), timeout=TIMEOUT)
        assert {"Remediating", "Validating", "Released"} <= seen
        eventually(lambda: history(workloads, sick)[-1]["outcome"] == "Released", timeout=TIMEOUT)
        assert history(workloads, sick)[-1]["steps"] == [
            "gpu-reset:Succeeded",
            "validation:Succeeded",
        ]
        assert not record(workloads, sick)
        eventually(lambda: not jobs(workloads, release, sick), timeout=TIMEOUT)


def test_a_failed_reset_runs_the_reboot_and_a_step_that_hangs_times_out(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[1]
    failing = job_template(workloads, release, outcome="Failed")
    hanging = job_template(workloads, release, runs_for="1h")
    rebooting = job_template(workloads, release, runs_for="1h")
    spec = remediating(
        step("gpu-reset", failing, "GpuReset"),
        step("drain-power", hanging, timeout="5s"),
        step("reboot", rebooting, "Reboot", timeout="10m"),
    )
    with ladder(fleet, sick, **spec):
        fleet.agents[sick].break_gpu()
        eventually(
            lambda: (
                taken(workloads, sick)
                == [("gpu-reset", "Failed"), ("drain-power", "TimedOut"), ("reboot", "Running")]
            ),
            timeout=TIMEOUT,
        )
        steps = {j["metadata"]["labels"][api.STEP_LABEL] for j in jobs(workloads, release, sick)}
        assert "reboot" in steps
        assert phase(workloads, sick) == "Remediating"
        assert workloads.verdict(sick).get("step") == "reboot (attempt 1)"
        fleet.agents[sick].reset_gpu()


def test_a_spent_ladder_needs_service_and_only_a_person_releases_the_node(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[2]
    failing = job_template(workloads, release, outcome="Failed")
    with ladder(fleet, sick, **remediating(step("gpu-reset", failing, "GpuReset"))):
        fleet.agents[sick].break_gpu()
        eventually(lambda: phase(workloads, sick) == "NeedsService", timeout=TIMEOUT)
        labels = workloads.node(sick)["metadata"]["labels"]
        assert labels.get(api.NEEDS_SERVICE_LABEL) == "true"

        # The GPU recovers, and stays so for longer than healthyFor: the node stays out.
        fleet.agents[sick].reset_gpu()
        eventually(lambda: workloads.verdict(sick).get("health") == "Healthy", timeout=TIMEOUT)
        time.sleep(6)
        assert workloads.navarch_taints(sick)
        assert phase(workloads, sick) == "NeedsService"

        serviced(workloads, sick)
        eventually(lambda: not workloads.navarch_taints(sick), timeout=TIMEOUT)
        assert api.NEEDS_SERVICE_LABEL not in workloads.node(sick)["metadata"]["labels"]
        eventually(lambda: history(workloads, sick)[-1]["outcome"] == "Released", timeout=TIMEOUT)


def test_the_third_quarantine_in_a_week_goes_straight_to_needs_service(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[0]
    works = job_template(workloads, release)
    spec = remediating(
        step("gpu-reset", works, "GpuReset"), startAt={"repeat-offender": "NeedsService"}
    )
    rule = repeat_offender().model_dump(mode="json", by_alias=True, exclude_none=True)
    with ladder(fleet, sick, rules=[rule], **spec):
        for _ in range(2):
            fleet.agents[sick].break_gpu()
            eventually(
                lambda: taken(workloads, sick)[-1:] == [("gpu-reset", "Succeeded")], timeout=TIMEOUT
            )
            fleet.agents[sick].reset_gpu()
            eventually(lambda: not workloads.navarch_taints(sick), timeout=TIMEOUT)
            eventually(
                lambda: history(workloads, sick)[-1]["outcome"] == "Released", timeout=TIMEOUT
            )

        fleet.agents[sick].break_gpu()
        eventually(lambda: phase(workloads, sick) == "NeedsService", timeout=TIMEOUT)
        rules = [r["name"] for r in workloads.verdict(sick)["rules"]]
        assert "repeat-offender" in rules
        assert taken(workloads, sick) == []
        fleet.agents[sick].reset_gpu()


def test_at_most_max_nodes_remediate_at_once(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    first, second = GPU_NODES[1], GPU_NODES[2]
    hanging = job_template(workloads, release, runs_for="1h")
    spec = remediating(step("gpu-reset", hanging, "GpuReset", timeout="10m"))
    with ladder(fleet, first, second, maxUnhealthy=2, remediationLimits={"maxNodes": 1}, **spec):
        fleet.agents[first].break_gpu()
        eventually(lambda: jobs(workloads, release, first), timeout=TIMEOUT)
        fleet.agents[second].break_gpu()
        eventually(lambda: workloads.navarch_taints(second), timeout=TIMEOUT)
        time.sleep(5)
        assert not jobs(workloads, release, second)
        assert taken(workloads, second) == []
        # Healed, the first node is released; its slot goes to the second.
        fleet.agents[first].reset_gpu()
        eventually(lambda: jobs(workloads, release, second), timeout=TIMEOUT)
        fleet.agents[second].reset_gpu()


def test_an_operator_killed_while_a_step_runs_follows_that_step_without_another_job(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[2]
    slow = job_template(workloads, release, runs_for="8s")
    with ladder(fleet, sick, **remediating(step("gpu-reset", slow, "GpuReset"))):
        fleet.agents[sick].break_gpu()
        eventually(lambda: taken(workloads, sick) == [("gpu-reset", "Running")], timeout=TIMEOUT)
        (job,) = jobs(workloads, release, sick)
        fleet.kill_operator()
        fleet.sync()
        eventually(lambda: taken(workloads, sick) == [("gpu-reset", "Succeeded")], timeout=TIMEOUT)
        names = {j["metadata"]["name"] for j in jobs(workloads, release, sick)}
        assert names <= {job["metadata"]["name"]}
        fleet.agents[sick].reset_gpu()
        eventually(lambda: not workloads.navarch_taints(sick), timeout=TIMEOUT)


GROUP = "test.navarch.dev"


def remediation_kinds(world: WorkloadCluster) -> None:
    """PowerCycleTemplate and PowerCycle: a remediator's API, as medik8s's contract has it."""
    for kind in ("PowerCycleTemplate", "PowerCycle"):
        plural = kind.lower() + "s"
        world.create(namespaced_crd(GROUP, "v1", kind, plural))
        world.cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{plural}.{GROUP}", "--timeout=60s"
        )


def test_a_template_step_creates_the_remediators_object_reads_it_and_deletes_it(
    workloads: WorkloadCluster, release: Release, fleet: StandIns
) -> None:
    sick = GPU_NODES[1]
    remediation_kinds(workloads)
    grant = {
        "apiGroup": GROUP,
        "templateResource": "powercycletemplates",
        "resource": "powercycles",
    }
    workloads.cluster.helm(
        "upgrade",
        release.name,
        CHART,
        "-n",
        release.namespace,
        "--reuse-values",
        "--set-json",
        f"remediation.templates=[{json.dumps(grant)}]",
    )
    with workloads.namespace() as namespace:
        workloads.create(
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "PowerCycleTemplate",
                "metadata": {"name": "cycle", "namespace": namespace},
                "spec": {"template": {"spec": {"strategy": "hard", "delay": "5s"}}},
            }
        )
        template = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "PowerCycleTemplate",
            "name": "cycle",
            "namespace": namespace,
        }
        spec = remediating({"name": "power-cycle", "template": template, "timeout": "60s"})
        with ladder(fleet, sick, **spec):
            fleet.agents[sick].break_gpu()

            def created() -> dict[str, Any] | None:
                found = workloads.cluster.kubectl(
                    "get", f"powercycles.{GROUP}", sick, "-n", namespace, "-o", "json", check=False
                )
                return json.loads(found.stdout) if found.returncode == 0 else None

            obj = eventually(created, timeout=TIMEOUT)
            assert obj["spec"] == {"strategy": "hard", "delay": "5s"}
            assert obj["metadata"]["labels"][api.NODE_LABEL] == sick
            assert obj["metadata"]["ownerReferences"][0]["kind"] == api.GNH_KIND
            assert taken(workloads, sick) == [("power-cycle", "Running")]

            # The remediator reports success the way the contract says.
            done = {"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
            workloads.cluster.kubectl(
                "patch",
                f"powercycles.{GROUP}",
                sick,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(done),
            )
            eventually(
                lambda: taken(workloads, sick) == [("power-cycle", "Succeeded")], timeout=TIMEOUT
            )
            eventually(lambda: created() is None, timeout=TIMEOUT)
            fleet.agents[sick].reset_gpu()
