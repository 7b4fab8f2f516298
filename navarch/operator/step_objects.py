"""The objects remediation steps create, and what their status says. Pure.

A Job step's Job comes from a ConfigMap's ``job.yaml``; the operator pins its pod to the node
(``nodeName``, so no scheduler decision and no taint in the way of placing it), lets it tolerate
Navarch's taint and the cordon, labels it as Navarch's own (drains leave it alone) and tells it
the node and the GPUs at fault. Its name is derived from the node, the step, the attempt and
the quarantine, so an operator that restarts finds the Job it created rather than a second one.

A template step follows medik8s NodeHealthCheck's contract: from a ``<Kind>Template`` whose
``spec.template.spec`` describes the remediation, create a ``<Kind>`` named after the node in
the template's namespace, and read its ``Succeeded`` condition: True is success, False is
failure, absent is still running. The object is deleted when the step ends, which is how the
remediator learns it may stop.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from navarch import api

JOB_KEY = "job.yaml"
GPU_UUIDS_ENV = "NAVARCH_GPU_UUIDS"
NODE_ENV = "NAVARCH_NODE"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
SUCCEEDED = "Succeeded"
TEMPLATE_SUFFIX = "Template"


@dataclass(frozen=True)
class Owner:
    """The node's GpuNodeHealth: the owner of what its steps create, so deleting it (with the
    Node) lets the garbage collector take them too."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.GNH_KIND,
            "name": self.name,
            "uid": self.uid,
        }


def job_name(node: str, step: str, attempt: int, quarantine: str) -> str:
    """A DNS label of at most 63 characters, the same for the same step of one quarantine."""
    digest = hashlib.sha256(f"{node}/{step}/{attempt}/{quarantine}".encode()).hexdigest()[:10]
    return f"navarch-{step[:20]}-{node[:22]}".rstrip("-.").lower() + f"-{digest}"


def job_manifest(config_map: Mapping[str, Any]) -> dict[str, Any]:
    """The Job in the ConfigMap's ``job.yaml``; ValueError says what is wrong with it."""
    text = (config_map.get("data") or {}).get(JOB_KEY)
    if not text:
        raise ValueError(f"has no {JOB_KEY}")
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{JOB_KEY} is not YAML: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("kind", "Job") != "Job":
        raise ValueError(f"{JOB_KEY} is not a Job")
    pod = ((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}
    if not pod.get("containers"):
        raise ValueError(f"{JOB_KEY} has no containers")
    return manifest


def build_job(
    manifest: Mapping[str, Any],
    *,
    name: str,
    namespace: str,
    node: str,
    step: str,
    gpus: Iterable[str],
    taint_key: str,
    owner: Owner,
) -> dict[str, Any]:
    job = copy.deepcopy(dict(manifest))
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    labels = {api.NODE_LABEL: node, api.STEP_LABEL: step, api.PART_OF_LABEL: api.PART_OF}
    meta = job.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta.update(name=name, namespace=namespace, ownerReferences=[owner.reference()])
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    spec = job.setdefault("spec", {})
    spec.setdefault("backoffLimit", 0)
    template = spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    pod = template.setdefault("spec", {})
    pod["nodeName"] = node
    pod.setdefault("restartPolicy", "Never")
    pod["tolerations"] = [
        *(pod.get("tolerations") or []),
        {"key": taint_key, "operator": "Exists"},
        {"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    ]
    env = [{"name": NODE_ENV, "value": node}, {"name": GPU_UUIDS_ENV, "value": " ".join(gpus)}]
    for container in pod["containers"]:
        container["env"] = [*(container.get("env") or []), *env]
    return job


def job_outcome(job: Mapping[str, Any]) -> tuple[api.StepPhase | None, str]:
    """Succeeded or Failed once the Job's conditions say so, else None; and a message."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return api.StepPhase.SUCCEEDED, "the Job succeeded"
        if condition.get("type") in ("Failed", "FailureTarget"):
            why = condition.get("message") or condition.get("reason") or "no reason given"
            return api.StepPhase.FAILED, f"the Job failed: {why}"
    return None, "the Job is running"


def remediation_kind(template_kind: str) -> str:
    return template_kind.removesuffix(TEMPLATE_SUFFIX)


def build_object(
    template: Mapping[str, Any],
    *,
    kind: str,
    node: str,
    step: str,
    owner: Owner,
) -> dict[str, Any]:
    """The remediation object for ``node`` from a remediation template object."""
    meta = template.get("metadata") or {}
    spec = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {
        "apiVersion": template.get("apiVersion"),
        "kind": kind,
        "metadata": {
            "name": node,
            "namespace": meta.get("namespace"),
            "labels": {api.NODE_LABEL: node, api.STEP_LABEL: step},
            "annotations": {f"{api.GROUP}/template": str(meta.get("name", ""))},
            "ownerReferences": [owner.reference()],
        },
        "spec": copy.deepcopy(spec),
    }


def object_outcome(obj: Mapping[str, Any]) -> tuple[api.StepPhase | None, str]:
    """What the remediation object's ``Succeeded`` condition says (see the module docstring)."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") != SUCCEEDED:
            continue
        message = condition.get("message") or condition.get("reason") or ""
        if condition.get("status") == "True":
            return api.StepPhase.SUCCEEDED, message or "the remediator succeeded"
        if condition.get("status") == "False":
            return api.StepPhase.FAILED, message or "the remediator failed"
    return None, "the remediator is working"


def plural(discovery: Mapping[str, Any], kind: str) -> str | None:
    """The resource name of ``kind`` in an API group version's discovery document."""
    for resource in discovery.get("resources") or []:
        if resource.get("kind") == kind and "/" not in str(resource.get("name", "")):
            return str(resource["name"])
    return None


def group_version_path(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
