"""Remediation, tried with the operator's and the agent's real pod-bound tokens: the chart's
RBAC for the calls the operator makes to run a ladder's steps, on a real API server.

A Job step reads a Job manifest from a ConfigMap in the operator's namespace (the chart ships
``navarch-gpu-reset``, ``navarch-reboot`` and ``navarch-gpu-validate``), creates the Job there,
pinned to the node, finds it again and deletes it; a template step (medik8s NodeHealthCheck's
contract) reads the template group's discovery document and the template, and creates, reads
and deletes one remediation object. The operator's token may make exactly these calls, in its
own namespace for Jobs and ConfigMaps and nowhere else, and nothing around them: no pods of its
own, no Secrets, no changes to what it reads. The agent's token may make none of them. Jobs are
created here with strict field validation, so the shipped manifests are checked as the API
server reads them; no Job runs (the control plane has no Job controller, the node no kubelet).
The label the operator sets when a ladder is spent is in test_field_ownership.py, with the
other Node writes.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from navarch import api

from .chart import (
    NO_PODS,
    NO_POLICY,
    Release,
    installed,
    node_manifest,
    pod_bound_token,
    with_token,
)
from .cluster import Cluster, eventually, namespaced_crd, unique

JOB_CONFIG_MAPS = ("navarch-gpu-reset", "navarch-reboot", "navarch-gpu-validate")
GROUP, VERSION = "remediation.test.navarch.dev", "v1alpha1"
"""A remediation API of the medik8s shape under a group of its own: the tests may run against a
real cluster (NAVARCH_KUBECONFIG) where medik8s's own CRDs must be left alone."""
TEMPLATES, REMEDIATIONS = "fakenoderemediationtemplates", "fakenoderemediations"
RBAC = "rbac.authorization.k8s.io"
WATCH = {"watch": True, "timeout_seconds": 1}
TEMPLATE_VALUES = json.dumps(
    [{"apiGroup": GROUP, "templateResource": TEMPLATES, "resource": REMEDIATIONS}]
)


CRDS = (
    namespaced_crd(GROUP, VERSION, "FakeNodeRemediationTemplate", TEMPLATES),
    namespaced_crd(GROUP, VERSION, "FakeNodeRemediation", REMEDIATIONS),
)


@dataclass(frozen=True)
class Setup:
    release: Release
    node: str
    elsewhere: str
    """Another namespace: where the remediation templates live, and no Job may go."""
    template: str
    operator: client.ApiClient
    agent: client.ApiClient


@pytest.fixture(scope="module")
def setup(crds: Cluster) -> Iterator[Setup]:
    node = unique("gpu-remedy")
    elsewhere = unique("remedy-elsewhere")
    template = unique("fake-template")
    crds.kubectl("create", "-f", "-", stdin=node_manifest(node))
    crds.kubectl("create", "namespace", elsewhere)
    for definition in CRDS:
        crds.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(definition))
        name = definition["metadata"]["name"]
        crds.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FakeNodeRemediationTemplate",
        "metadata": {"name": template, "namespace": elsewhere},
        "spec": {"template": {"spec": {"remediationStrategy": "Automatic"}}},
    }
    # Discovery of a new group can lag its Established condition by a moment.
    eventually(lambda: crds.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False))
    templates = ("--set-json", f"remediation.templates={TEMPLATE_VALUES}")
    try:
        with installed(crds, *NO_PODS, *NO_POLICY, *templates, prefix="remedy") as release:
            operator = with_token(crds, pod_bound_token(crds, release, release.operator, node))
            agent = with_token(crds, pod_bound_token(crds, release, release.agent, node))
            yield Setup(release, node, elsewhere, template, operator, agent)
    finally:
        crds.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)
        crds.kubectl("delete", "node", node, "--wait=false", check=False)
        for definition in CRDS:
            crds.kubectl("delete", "crd", definition["metadata"]["name"], check=False)


def forbidden(call: Any, *args: Any, **kwargs: Any) -> str:
    """The API server's message for a call it refuses as Forbidden."""
    with pytest.raises(client.ApiException) as denied:
        call(*args, **kwargs)
    assert denied.value.status == 403, denied.value.body
    return str(json.loads(denied.value.body)["message"])


def step_job(manifest: dict[str, Any], setup: Setup, step: str, namespace: str) -> dict[str, Any]:
    """The Job the operator makes of a ConfigMap's manifest for a step on ``setup.node``."""
    job = copy.deepcopy(manifest)
    labels = {api.NODE_LABEL: setup.node, api.STEP_LABEL: step, api.PART_OF_LABEL: api.PART_OF}
    job["metadata"] = {
        "name": f"navarch-{step}-{uuid.uuid4().hex[:8]}",
        "namespace": namespace,
        "labels": {**job["metadata"].get("labels", {}), **labels},
    }
    template = job["spec"]["template"]
    template["metadata"]["labels"] = {**template["metadata"].get("labels", {}), **labels}
    pod = template["spec"]
    pod["nodeName"] = setup.node
    pod["tolerations"] = [
        {"key": "navarch.dev/gpu-unhealthy", "operator": "Exists"},
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
    ]
    gpus = "GPU-00000000-0000-0000-0000-000000000001 GPU-00000000-0000-0000-0000-000000000002"
    for container in pod["containers"]:
        container["env"] = [
            *container.get("env", []),
            {"name": "NAVARCH_NODE", "value": setup.node},
            {"name": "NAVARCH_GPU_UUIDS", "value": gpus},
        ]
    return job


def shipped_manifest(setup: Setup, name: str) -> dict[str, Any]:
    """The Job manifest of a shipped ConfigMap, read with the operator's token."""
    core = client.CoreV1Api(setup.operator)
    config_map = core.read_namespaced_config_map(name, setup.release.namespace)
    manifest = yaml.safe_load(config_map.data["job.yaml"])
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    return dict(manifest)


# --- Job steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("config_map", JOB_CONFIG_MAPS)
def test_operator_runs_each_shipped_job_in_its_namespace(setup: Setup, config_map: str) -> None:
    """Read the manifest, create the Job (strictly validated: an unknown or misspelt field in a
    shipped manifest fails here), find it by get and by label, delete it as the operator does:
    in the background, so the garbage collector, not the operator, deletes its pod."""
    namespace = setup.release.namespace
    batch = client.BatchV1Api(setup.operator)
    step = config_map.removeprefix("navarch-")
    job = step_job(shipped_manifest(setup, config_map), setup, step, namespace)
    name = job["metadata"]["name"]
    created = batch.create_namespaced_job(namespace, job, field_validation="Strict")
    assert created.spec.template.spec.node_name == setup.node
    assert batch.read_namespaced_job(name, namespace).metadata.uid == created.metadata.uid
    selector = f"{api.NODE_LABEL}={setup.node},{api.STEP_LABEL}={step}"
    listed = batch.list_namespaced_job(namespace, label_selector=selector).items
    assert [j.metadata.name for j in listed] == [name]
    batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
    eventually(lambda: not batch.list_namespaced_job(namespace, label_selector=selector).items)


def test_operator_reads_job_manifests_only_by_name_and_only_in_its_namespace(
    setup: Setup,
) -> None:
    core = client.CoreV1Api(setup.operator)
    user = setup.release.user(setup.release.operator)
    namespace = setup.release.namespace
    stored = core.read_namespaced_config_map("navarch-gpu-reset", namespace)
    body = setup.operator.sanitize_for_serialization(stored)
    copy_of = {"metadata": {"name": unique("own-job")}, "data": body["data"]}
    for verb, call, args, kwargs in (
        ("list", core.list_namespaced_config_map, (namespace,), {}),
        ("watch", core.list_namespaced_config_map, (namespace,), WATCH),
        ("get", core.read_namespaced_config_map, ("navarch-gpu-reset", setup.elsewhere), {}),
        ("get", core.read_namespaced_config_map, ("kube-root-ca.crt", "kube-system"), {}),
        ("create", core.create_namespaced_config_map, (namespace, copy_of), {}),
        ("update", core.replace_namespaced_config_map, ("navarch-gpu-reset", namespace, body), {}),
        ("patch", core.patch_namespaced_config_map, ("navarch-gpu-reset", namespace, body), {}),
        ("delete", core.delete_namespaced_config_map, ("navarch-gpu-reset", namespace), {}),
    ):
        message = forbidden(call, *args, **kwargs)
        assert f'User "{user}" cannot {verb} resource "configmaps"' in message, message


def test_operator_runs_no_job_elsewhere_and_no_pod_of_its_own(setup: Setup) -> None:
    """Jobs in the operator's namespace only, and nothing more than a step needs there: no
    pods made directly, no changes to a Job once created, no CronJobs, no Secrets."""
    namespace = setup.release.namespace
    batch = client.BatchV1Api(setup.operator)
    core = client.CoreV1Api(setup.operator)
    user = setup.release.user(setup.release.operator)
    manifest = shipped_manifest(setup, "navarch-reboot")
    mine = step_job(manifest, setup, "reboot", namespace)
    batch.create_namespaced_job(namespace, mine)
    name = mine["metadata"]["name"]
    try:
        pod = dict(mine["spec"]["template"], apiVersion="v1", kind="Pod")
        pod["metadata"] = dict(pod["metadata"], name=unique("direct"))
        cron = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": unique("cron")},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": mine["spec"]}},
        }
        suspend = {"spec": {"suspend": True}}
        for verb, resource, call, args, kwargs in (
            (
                "create",
                "jobs",
                batch.create_namespaced_job,
                (setup.elsewhere, step_job(manifest, setup, "reboot", setup.elsewhere)),
                {},
            ),
            ("list", "jobs", batch.list_namespaced_job, ("kube-system",), {}),
            ("list", "jobs", batch.list_job_for_all_namespaces, (), {}),
            ("watch", "jobs", batch.list_namespaced_job, (namespace,), WATCH),
            ("patch", "jobs", batch.patch_namespaced_job, (name, namespace, suspend), {}),
            ("deletecollection", "jobs", batch.delete_collection_namespaced_job, (namespace,), {}),
            ("create", "cronjobs", batch.create_namespaced_cron_job, (namespace, cron), {}),
            ("create", "pods", core.create_namespaced_pod, (namespace, pod), {}),
            ("get", "secrets", core.read_namespaced_secret, ("any", namespace), {}),
            ("list", "secrets", core.list_namespaced_secret, (namespace,), {}),
        ):
            message = forbidden(call, *args, **kwargs)
            assert f'User "{user}" cannot {verb} resource "{resource}"' in message, message
    finally:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background")


def test_operator_cannot_delete_a_step_jobs_pod_itself(crds: Cluster, setup: Setup) -> None:
    """A step's pod carries Navarch's label, which the operator-pod-scope admission policy
    protects: deleting the Job is the operator's only way to it, and the garbage collector,
    whose identity that policy does not match, deletes the pod."""
    namespace = setup.release.namespace
    name = unique("step-pod")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {api.PART_OF_LABEL: api.PART_OF, api.STEP_LABEL: "gpu-reset"},
        },
        "spec": {
            "nodeName": setup.node,
            "serviceAccountName": setup.release.agent,
            "containers": [{"name": "main", "image": "registry.invalid/step:none"}],
        },
    }
    crds.kubectl("create", "-f", "-", stdin=json.dumps(pod))
    core = client.CoreV1Api(setup.operator)
    policy = f"{setup.release.operator}-pod-scope"

    def refused_by_policy() -> str:
        """The refusal, once the API server's policy cache has the policy; a server-side
        dry run goes through admission without deleting anything."""
        try:
            core.delete_namespaced_pod(name, namespace, dry_run="All")
        except client.ApiException as err:
            message = str(json.loads(err.body)["message"])
            return message if err.status == 403 and policy in message else ""
        return ""

    message = eventually(refused_by_policy, timeout=60)
    assert message.endswith(
        f"the Navarch operator may not delete Pod {namespace}/{name}: it is one of Navarch's "
        "own pods (app.kubernetes.io/part-of=navarch), and drains leave them in place"
    )
    assert "deletionTimestamp" not in crds.get_json("pod", name, "-n", namespace)["metadata"]


# --- template steps ---------------------------------------------------------------------------


def test_discovery_is_open_to_every_authenticated_user(crds: Cluster, setup: Setup) -> None:
    """The operator finds a template's remediation resource in the group's discovery document;
    the chart grants no rule for it because Kubernetes's system:discovery ClusterRole, bound to
    system:authenticated, covers /apis/*."""
    binding = crds.get_json("clusterrolebinding", "system:discovery")
    assert {"kind": "Group", "name": "system:authenticated", "apiGroup": RBAC} in binding[
        "subjects"
    ]
    rules = crds.get_json("clusterrole", "system:discovery")["rules"]
    assert any("/apis/*" in r.get("nonResourceURLs", []) and "get" in r["verbs"] for r in rules)
    for token in (setup.operator, setup.agent):
        resources = client.CustomObjectsApi(token).get_api_resources(GROUP, VERSION)
        assert {(r.kind, r.name) for r in resources.resources} >= {
            ("FakeNodeRemediationTemplate", TEMPLATES),
            ("FakeNodeRemediation", REMEDIATIONS),
        }
    chart_rules = [
        rule
        for kind, name in (
            ("clusterrole", setup.release.operator),
            ("role", f"{setup.release.operator}-remediation"),
        )
        for rule in crds.get_json(kind, name, "-n", setup.release.namespace)["rules"]
    ]
    assert not [rule for rule in chart_rules if rule.get("nonResourceURLs")]


def test_operator_follows_a_remediation_template(setup: Setup) -> None:
    """Read the template, create the remediation object named after the node in the
    template's namespace, read its status, delete it when the step ends."""
    custom = client.CustomObjectsApi(setup.operator)
    where = (GROUP, VERSION, setup.elsewhere)
    template = custom.get_namespaced_custom_object(*where, TEMPLATES, setup.template)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FakeNodeRemediation",
        "metadata": {
            "name": setup.node,
            "namespace": setup.elsewhere,
            "labels": {api.NODE_LABEL: setup.node, api.STEP_LABEL: "fake-remediation"},
        },
        "spec": template["spec"]["template"]["spec"],
    }
    created = custom.create_namespaced_custom_object(*where, REMEDIATIONS, body)
    assert created["spec"] == {"remediationStrategy": "Automatic"}
    assert custom.get_namespaced_custom_object(*where, REMEDIATIONS, setup.node)
    custom.delete_namespaced_custom_object(*where, REMEDIATIONS, setup.node)
    with pytest.raises(client.ApiException) as gone:
        custom.get_namespaced_custom_object(*where, REMEDIATIONS, setup.node)
    assert gone.value.status == 404


def test_operator_changes_no_template_and_lists_no_remediations(setup: Setup) -> None:
    custom = client.CustomObjectsApi(setup.operator)
    user = setup.release.user(setup.release.operator)
    where = (GROUP, VERSION, setup.elsewhere)
    template = custom.get_namespaced_custom_object(*where, TEMPLATES, setup.template)
    forged = dict(template, metadata={"name": unique("forged"), "namespace": setup.elsewhere})
    change = {"spec": {"template": {"spec": {"remediationStrategy": "Forged"}}}}
    for verb, resource, call, args in (
        ("create", TEMPLATES, custom.create_namespaced_custom_object, (forged,)),
        ("patch", TEMPLATES, custom.patch_namespaced_custom_object, (setup.template, change)),
        ("delete", TEMPLATES, custom.delete_namespaced_custom_object, (setup.template,)),
        ("list", TEMPLATES, custom.list_namespaced_custom_object, ()),
        ("list", REMEDIATIONS, custom.list_namespaced_custom_object, ()),
        ("patch", REMEDIATIONS, custom.patch_namespaced_custom_object, (setup.node, change)),
    ):
        message = forbidden(call, *where, resource, *args)
        expected = f'User "{user}" cannot {verb} resource "{resource}" in API group "{GROUP}"'
        assert expected in message, message


# --- the agent --------------------------------------------------------------------------------


def test_agent_can_make_none_of_the_remediation_calls(setup: Setup) -> None:
    namespace = setup.release.namespace
    core = client.CoreV1Api(setup.agent)
    batch = client.BatchV1Api(setup.agent)
    custom = client.CustomObjectsApi(setup.agent)
    user = setup.release.user(setup.release.agent)
    job = step_job(shipped_manifest(setup, "navarch-gpu-reset"), setup, "gpu-reset", namespace)
    where = (GROUP, VERSION, setup.elsewhere)
    remediation = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FakeNodeRemediation",
        "metadata": {"name": setup.node},
    }
    mark = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: "true"}}}
    for verb, resource, call, args in (
        ("get", "configmaps", core.read_namespaced_config_map, ("navarch-gpu-reset", namespace)),
        ("create", "jobs", batch.create_namespaced_job, (namespace, job)),
        ("get", "jobs", batch.read_namespaced_job, ("any", namespace)),
        ("list", "jobs", batch.list_namespaced_job, (namespace,)),
        ("delete", "jobs", batch.delete_namespaced_job, ("any", namespace)),
        ("get", TEMPLATES, custom.get_namespaced_custom_object, (*where, TEMPLATES, "any")),
        (
            "create",
            REMEDIATIONS,
            custom.create_namespaced_custom_object,
            (*where, REMEDIATIONS, remediation),
        ),
        (
            "delete",
            REMEDIATIONS,
            custom.delete_namespaced_custom_object,
            (*where, REMEDIATIONS, "any"),
        ),
        ("patch", "nodes", core.patch_node, (setup.node, mark)),
    ):
        message = forbidden(call, *args)
        assert f'User "{user}" cannot {verb} resource "{resource}"' in message, message
