"""The Jobs and template objects remediation steps create, and how their status is read."""

from __future__ import annotations

import pytest

from navarch import api
from navarch.operator import step_objects
from navarch.operator.step_objects import Owner

JOB_YAML = """
apiVersion: batch/v1
kind: Job
metadata:
  generateName: reset-
  labels: {team: gpu}
spec:
  template:
    spec:
      tolerations: [{key: other, operator: Exists}]
      containers:
        - name: reset
          image: nvidia/cuda
          env: [{name: KEEP, value: "1"}]
"""


def test_a_job_is_pinned_to_the_node_told_the_gpus_and_marked_as_navarchs() -> None:
    manifest = step_objects.job_manifest({"data": {"job.yaml": JOB_YAML}})
    job = step_objects.build_job(
        manifest,
        name="navarch-reset-gpu-1-abc",
        namespace="navarch-system",
        node="gpu-1",
        step="gpu-reset",
        gpus=["GPU-a", "GPU-b"],
        taint_key=api.DEFAULT_TAINT_KEY,
        owner=Owner("gpu-1", "uid-1"),
    )
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == ("navarch-reset-gpu-1-abc", "navarch-system")
    assert "generateName" not in meta
    assert meta["labels"] == {
        "team": "gpu",
        api.NODE_LABEL: "gpu-1",
        api.STEP_LABEL: "gpu-reset",
        api.PART_OF_LABEL: api.PART_OF,
    }
    assert meta["ownerReferences"][0]["kind"] == api.GNH_KIND
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "gpu-1"
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["other", api.DEFAULT_TAINT_KEY, step_objects.UNSCHEDULABLE_TAINT]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {"KEEP": "1", "NAVARCH_NODE": "gpu-1", "NAVARCH_GPU_UUIDS": "GPU-a GPU-b"}
    assert job["spec"]["template"]["metadata"]["labels"][api.PART_OF_LABEL] == api.PART_OF


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "has no job.yaml"),
        ({"job.yaml": "a: [b"}, "is not YAML"),
        ({"job.yaml": "kind: Pod"}, "is not a Job"),
        ({"job.yaml": "kind: Job\nspec: {}"}, "has no containers"),
    ],
)
def test_a_bad_config_map_says_what_is_wrong(data: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        step_objects.job_manifest({"data": data})


def test_job_names_are_stable_distinct_and_dns_labels() -> None:
    name = step_objects.job_name("a" * 80, "gpu-reset", 1, "2026-01-01T00:00:00Z")
    assert len(name) <= 63 and name == name.lower()
    assert name == step_objects.job_name("a" * 80, "gpu-reset", 1, "2026-01-01T00:00:00Z")
    assert name != step_objects.job_name("a" * 80, "gpu-reset", 2, "2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("conditions", "phase"),
    [
        ([], None),
        ([{"type": "Complete", "status": "True"}], api.StepPhase.SUCCEEDED),
        ([{"type": "SuccessCriteriaMet", "status": "True"}], api.StepPhase.SUCCEEDED),
        ([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], "Failed"),
        ([{"type": "Failed", "status": "False"}], None),
    ],
)
def test_a_jobs_conditions_give_its_outcome(conditions: list[dict[str, str]], phase: str) -> None:
    assert step_objects.job_outcome({"status": {"conditions": conditions}})[0] == phase


TEMPLATE = {
    "apiVersion": "remediation.example.com/v1",
    "kind": "PowerCycleTemplate",
    "metadata": {"name": "cycle", "namespace": "ops"},
    "spec": {"template": {"spec": {"strategy": "hard"}}},
}


def test_a_template_object_is_named_after_the_node_with_the_templates_spec() -> None:
    obj = step_objects.build_object(
        TEMPLATE, kind="PowerCycle", node="gpu-1", step="cycle", owner=Owner("gpu-1", "u")
    )
    assert obj["kind"] == "PowerCycle" == step_objects.remediation_kind(TEMPLATE["kind"])
    assert (obj["metadata"]["name"], obj["metadata"]["namespace"]) == ("gpu-1", "ops")
    assert obj["spec"] == {"strategy": "hard"}
    assert obj["metadata"]["labels"][api.NODE_LABEL] == "gpu-1"


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("True", api.StepPhase.SUCCEEDED),
        ("False", api.StepPhase.FAILED),
        ("Unknown", None),
    ],
)
def test_the_succeeded_condition_is_the_outcome(status: str, phase: str | None) -> None:
    obj = {"status": {"conditions": [{"type": "Succeeded", "status": status}]}}
    assert step_objects.object_outcome(obj)[0] == phase
    assert step_objects.object_outcome({})[0] is None


def test_discovery_gives_the_plural_of_a_kind_and_not_a_subresource() -> None:
    discovery = {
        "resources": [
            {"name": "powercycles/status", "kind": "PowerCycle"},
            {"name": "powercycles", "kind": "PowerCycle"},
        ]
    }
    assert step_objects.plural(discovery, "PowerCycle") == "powercycles"
    assert step_objects.plural(discovery, "Other") is None
    assert step_objects.group_version_path("v1") == "/api/v1"
    assert step_objects.group_version_path("batch/v1") == "/apis/batch/v1"
