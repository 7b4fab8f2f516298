"""Least privilege, proven: the chart's ServiceAccounts against a real API server's RBAC.

Each allowed and each denied action is asked twice: as an access review (`kubectl auth
can-i`) and as a real request made as the ServiceAccount (impersonation), so a rule that
reads right but does not work, or works too widely, shows up."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from .chart import (
    NO_PODS,
    NO_POLICY,
    Release,
    ensure_kopf_peering_crd,
    gnh_body,
    impersonating,
    installed,
    node_manifest,
)
from .cluster import Cluster, eventually, unique

GROUP, VERSION = "navarch.dev", "v1alpha1"


@pytest.fixture(scope="module")
def release(crds: Cluster) -> Iterator[Release]:
    with installed(crds, *NO_PODS, *NO_POLICY, prefix="rbac") as release:
        yield release


@pytest.fixture(scope="module")
def node(crds: Cluster) -> Iterator[str]:
    name = unique("rbac-node")
    crds.kubectl("create", "-f", "-", stdin=node_manifest(name))
    try:
        yield name
    finally:
        crds.kubectl("delete", "node", name, "--wait=false", check=False)


def can_i(cluster: Cluster, user: str, verb: str, resource: str, *extra: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={user}", *extra, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def as_user(cluster: Cluster, user: str, *args: str) -> tuple[bool, str]:
    """Run kubectl as ``user``; (allowed, output). Fails the test on anything but success
    or a Forbidden answer, so a typo cannot pass as a denial."""
    result = cluster.kubectl(f"--as={user}", *args, check=False)
    if result.returncode == 0:
        return True, result.stdout
    assert "Forbidden" in result.stderr, result.stderr
    return False, result.stderr


IN_RELEASE = "--namespace={release}"
"""The release's own namespace, filled in per test."""

# (verb, resource, extra can-i flags, expected)
AGENT = [
    ("get", "nodes", (), True),
    ("list", "nodes", (), False),
    ("watch", "nodes", (), False),
    ("patch", "nodes", (), False),
    ("update", "nodes", (), False),
    ("delete", "nodes", (), False),
    ("patch", "nodes", ("--subresource=status",), False),
    ("get", "gpunodehealths.navarch.dev", (), True),
    ("create", "gpunodehealths.navarch.dev", (), True),
    ("patch", "gpunodehealths.navarch.dev", (), False),
    ("get", "gpunodehealths.navarch.dev", ("--subresource=status",), False),
    ("patch", "gpunodehealths.navarch.dev", ("--subresource=status",), True),
    ("update", "gpunodehealths.navarch.dev", ("--subresource=status",), False),
    ("update", "gpunodehealths.navarch.dev", (), False),
    ("delete", "gpunodehealths.navarch.dev", (), False),
    ("list", "gpunodehealths.navarch.dev", (), False),
    ("get", "gpuhealthpolicies.navarch.dev", (), False),
    ("patch", "gpuhealthpolicies.navarch.dev", (), False),
    ("patch", "gpuhealthpolicies.navarch.dev", ("--subresource=status",), False),
    ("get", "secrets", ("--all-namespaces",), False),
    ("list", "secrets", ("--all-namespaces",), False),
    ("get", "configmaps", ("--all-namespaces",), False),
    ("create", "pods", ("--all-namespaces",), False),
    ("list", "pods", ("--all-namespaces",), False),
    ("create", "pods", ("--all-namespaces", "--subresource=eviction"), False),
    ("delete", "pods", ("--all-namespaces",), False),
    ("create", "events", ("--all-namespaces",), False),
    ("create", "serviceaccounts/token", ("--all-namespaces",), False),
    ("get", "configmaps", (IN_RELEASE,), False),
    ("create", "jobs.batch", (IN_RELEASE,), False),
    ("list", "jobs.batch", (IN_RELEASE,), False),
    ("delete", "jobs.batch", (IN_RELEASE,), False),
]

OPERATOR = [
    ("get", "nodes", (), True),
    ("list", "nodes", (), True),
    ("watch", "nodes", (), True),
    ("patch", "nodes", (), True),
    ("patch", "nodes", ("--subresource=status",), True),
    ("update", "nodes", (), False),
    ("create", "nodes", (), False),
    ("delete", "nodes", (), False),
    ("list", "gpunodehealths.navarch.dev", (), True),
    ("watch", "gpunodehealths.navarch.dev", (), True),
    ("patch", "gpunodehealths.navarch.dev", ("--subresource=status",), True),
    ("patch", "gpunodehealths.navarch.dev", (), False),
    ("create", "gpunodehealths.navarch.dev", (), False),
    ("delete", "gpunodehealths.navarch.dev", (), False),
    ("list", "gpuhealthpolicies.navarch.dev", (), True),
    ("watch", "gpuhealthpolicies.navarch.dev", (), True),
    ("patch", "gpuhealthpolicies.navarch.dev", ("--subresource=status",), True),
    ("patch", "gpuhealthpolicies.navarch.dev", (), False),
    ("create", "gpuhealthpolicies.navarch.dev", (), False),
    ("delete", "gpuhealthpolicies.navarch.dev", (), False),
    ("create", "events", ("--namespace=default",), True),
    ("create", "events.events.k8s.io", ("--namespace=default",), True),
    ("create", "events", ("--namespace=kube-system",), False),
    ("delete", "events", ("--namespace=default",), False),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", (), True),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", (), False),
    ("get", "secrets", ("--all-namespaces",), False),
    ("list", "secrets", ("--all-namespaces",), False),
    ("get", "configmaps", ("--all-namespaces",), False),
    # Drains (test_drain_access.py): list a node's pods, evict them, delete them at a
    # timeout; admission keeps the deletes off DaemonSet, mirror and Navarch's own pods.
    ("list", "pods", ("--all-namespaces",), True),
    ("create", "pods", ("--all-namespaces", "--subresource=eviction"), True),
    ("delete", "pods", ("--all-namespaces",), True),
    ("get", "pods", ("--all-namespaces",), False),
    ("watch", "pods", ("--all-namespaces",), False),
    ("create", "pods", ("--all-namespaces",), False),
    ("patch", "pods", ("--all-namespaces",), False),
    ("update", "pods", ("--all-namespaces",), False),
    ("deletecollection", "pods", ("--all-namespaces",), False),
    ("patch", "pods", ("--all-namespaces", "--subresource=status"), False),
    ("patch", "clusterkopfpeerings.kopf.dev", (), False),
    # Remediation (test_remediation_access.py): Job manifests read from ConfigMaps by name,
    # and the Jobs made from them, in the release's namespace and nowhere else.
    ("get", "configmaps", (IN_RELEASE,), True),
    ("list", "configmaps", (IN_RELEASE,), False),
    ("watch", "configmaps", (IN_RELEASE,), False),
    ("update", "configmaps", (IN_RELEASE,), False),
    ("get", "configmaps", ("--namespace=kube-system",), False),
    ("create", "jobs.batch", (IN_RELEASE,), True),
    ("get", "jobs.batch", (IN_RELEASE,), True),
    ("list", "jobs.batch", (IN_RELEASE,), True),
    ("delete", "jobs.batch", (IN_RELEASE,), True),
    ("watch", "jobs.batch", (IN_RELEASE,), False),
    ("patch", "jobs.batch", (IN_RELEASE,), False),
    ("update", "jobs.batch", (IN_RELEASE,), False),
    ("deletecollection", "jobs.batch", (IN_RELEASE,), False),
    ("create", "jobs.batch", ("--namespace=kube-system",), False),
    ("list", "jobs.batch", ("--all-namespaces",), False),
    ("create", "cronjobs.batch", (IN_RELEASE,), False),
    ("create", "pods", (IN_RELEASE,), False),
    ("get", "secrets", (IN_RELEASE,), False),
]


Case = tuple[str, str, tuple[str, ...], bool]


def case_id(case: Case) -> str:
    verb, resource, extra, expected = case
    flags = "".join(extra).replace("--subresource=", "/").replace("--all-namespaces", "")
    flags = flags.replace("--namespace=", "-in-").replace("{release}", "release")
    return f"{'may' if expected else 'not'}-{verb}-{resource.split('.')[0]}{flags}"


def filled(release: Release, extra: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(flag.replace("{release}", release.namespace) for flag in extra)


@pytest.mark.parametrize("case", AGENT, ids=case_id)
def test_agent_access_review(crds: Cluster, release: Release, case: Case) -> None:
    verb, resource, extra, expected = case
    user = release.user(release.agent)
    assert can_i(crds, user, verb, resource, *filled(release, extra)) is expected


@pytest.mark.parametrize("case", OPERATOR, ids=case_id)
def test_operator_access_review(crds: Cluster, release: Release, case: Case) -> None:
    verb, resource, extra, expected = case
    user = release.user(release.operator)
    assert can_i(crds, user, verb, resource, *filled(release, extra)) is expected


def test_agent_real_requests(crds: Cluster, release: Release, node: str) -> None:
    agent = release.user(release.agent)
    allowed, out = as_user(crds, agent, "get", "node", node, "-o", "name")
    assert allowed and out.strip() == f"node/{node}"
    label = json.dumps({"metadata": {"labels": {"navarch.dev/test": "x"}}})
    for args in (
        ("patch", "node", node, "--type=merge", "-p", label),
        ("delete", "node", node, "--dry-run=server"),
        ("get", "secrets", "-n", release.namespace),
        ("get", "secrets", "-n", "kube-system"),
        ("get", "gnh"),
        ("patch", "ghp", "any", "--type=merge", "-p", '{"spec":{"dryRun":true}}'),
        ("delete", "gnh", node, "--dry-run=server"),
    ):
        allowed, message = as_user(crds, agent, *args)
        assert not allowed, f"agent may {' '.join(args)}"
        assert f'User "{agent}" cannot' in message
    # kubectl reads nodes/status before patching it; the operator and agent patch directly.
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(impersonating(crds, agent)).patch_node_status(node, {"status": {}})
    assert denied.value.status == 403

    # Create, get and patch of its own GpuNodeHealth and its status, with the node name a
    # kubelet-mounted token carries (the admission policy requires it; test_admission.py).
    api = client.CustomObjectsApi(impersonating(crds, agent, node_name=node))
    eventually(
        lambda: api.create_cluster_custom_object(GROUP, VERSION, "gpunodehealths", gnh_body(node))
    )
    try:
        assert api.get_cluster_custom_object(GROUP, VERSION, "gpunodehealths", node)
        patched = api.patch_cluster_custom_object_status(
            GROUP, VERSION, "gpunodehealths", node, {"status": {"gpuCount": 8}}
        )
        assert patched["status"]["gpuCount"] == 8
        # After create the object itself is not the agent's to write, even its own: no
        # patch, no update (PUT); and no update of its status either, only patches.
        labels = {"metadata": {"labels": {"x": "y"}}}
        for call, body in (
            (api.patch_cluster_custom_object, labels),
            (api.replace_cluster_custom_object, patched),
            (api.replace_cluster_custom_object_status, patched),
        ):
            with pytest.raises(client.ApiException) as denied:
                call(GROUP, VERSION, "gpunodehealths", node, body)
            assert denied.value.status == 403
            assert f'User "{agent}" cannot' in json.loads(denied.value.body)["message"]
    finally:
        crds.kubectl("delete", "gnh", node, "--ignore-not-found")


def test_operator_real_requests(crds: Cluster, release: Release, node: str) -> None:
    """Every call the operator makes, made the way it makes them (Python client, no read
    before a patch), then what it must not do."""
    operator = release.user(release.operator)
    policy = unique("rbac-policy")
    policy_body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GpuHealthPolicy",
        "metadata": {"name": policy},
        # Governs no real node, so no operator that happens to run acts on it.
        "spec": {"nodeSelector": {"matchLabels": {"navarch.dev/test-only": policy}}},
    }
    crds.kubectl("create", "-f", "-", stdin=json.dumps(policy_body))
    crds.kubectl("create", "-f", "-", stdin=json.dumps(gnh_body(node)))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": unique("rbac-event")},
        "involvedObject": {"kind": "Node", "name": node, "apiVersion": "v1"},
        "reason": "Quarantined",
        "message": "rbac test",
        "type": "Normal",
    }
    try:
        api = impersonating(crds, operator)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        assert node in [n.metadata.name for n in core.list_node().items]
        # The whole taint list, as read: admission refuses the operator any change to a
        # taint that is not its own (test_field_ownership.py).
        taints = api.sanitize_for_serialization(core.read_node(node).spec.taints or [])
        taint = {"key": "navarch.dev/gpu-unhealthy", "effect": "NoSchedule"}
        core.patch_node(node, {"spec": {"taints": [*taints, taint]}})
        condition = {"type": "GpuHealthy", "status": "False", "reason": "Xid79", "message": "t"}
        patched = core.patch_node_status(node, {"status": {"conditions": [condition]}})
        assert [c.type for c in patched.status.conditions] == ["GpuHealthy"]
        custom.list_cluster_custom_object(GROUP, VERSION, "gpunodehealths")
        custom.list_cluster_custom_object(GROUP, VERSION, "gpuhealthpolicies")
        verdict = {"health": "Unhealthy", "action": "Taint", "reason": "Xid79"}
        custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "gpunodehealths", node, {"status": {"verdict": verdict}}
        )
        custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "gpuhealthpolicies", policy, {"status": {"observedGeneration": 1}}
        )
        # Events about cluster-scoped objects live in the default namespace.
        core.create_namespaced_event("default", dict(event, metadata=dict(event["metadata"])))

        elsewhere = dict(event, metadata={"name": unique("rbac-event")})
        for args, stdin in (
            (("get", "secrets", "-n", release.namespace), None),
            (("get", "secrets", "-n", "kube-system"), None),
            (("delete", "node", node, "--dry-run=server"), None),
            (("create", "-f", "-"), json.dumps(gnh_body(unique("rbac-gnh")))),
            (("delete", "gnh", node, "--dry-run=server"), None),
            (("delete", "ghp", policy, "--dry-run=server"), None),
            (("patch", "ghp", policy, "--type=merge", "-p", '{"spec":{"dryRun":true}}'), None),
            (
                ("patch", "gnh", node, "--type=merge", "-p", '{"metadata":{"labels":{"a":"b"}}}'),
                None,
            ),
            (("create", "-n", release.namespace, "-f", "-"), json.dumps(elsewhere)),
        ):
            result = crds.kubectl(f"--as={operator}", *args, stdin=stdin, check=False)
            assert result.returncode != 0, f"operator may {' '.join(args)}"
            assert f'User "{operator}" cannot' in result.stderr
    finally:
        crds.kubectl("delete", "gnh", node, "--ignore-not-found")
        crds.kubectl("delete", "ghp", policy, "--ignore-not-found")
        crds.kubectl("delete", "event", "-n", "default", event["metadata"]["name"], check=False)
        crds.kubectl("taint", "node", node, "navarch.dev/gpu-unhealthy-", check=False)


def test_peering_grants_exactly_the_peering_objects(crds: Cluster) -> None:
    ensure_kopf_peering_crd(crds)
    peering = ("--set", "operator.peering.enabled=true", "--set", "agent.enabled=false")
    with installed(crds, *NO_PODS, *NO_POLICY, *peering, prefix="peer") as release:
        operator = release.user(release.operator)
        name = release.fullname
        assert crds.get_json("clusterkopfpeering", name)["metadata"]["name"] == name
        assert can_i(crds, operator, "patch", "clusterkopfpeerings.kopf.dev")
        assert can_i(crds, operator, "watch", "clusterkopfpeerings.kopf.dev")
        assert not can_i(crds, operator, "delete", "clusterkopfpeerings.kopf.dev")
        assert not can_i(crds, operator, "patch", "kopfpeerings.kopf.dev", "--all-namespaces")
        announce = json.dumps({"status": {"navarch-test": {"priority": 0, "lifetime": 60}}})
        result = crds.kubectl(
            f"--as={operator}", "patch", "clusterkopfpeering", name, "--type=merge", "-p", announce
        )
        assert result.returncode == 0
        args = crds.get_json("deployment", release.operator, "-n", release.namespace)["spec"][
            "template"
        ]["spec"]["containers"][0]["args"]
        assert f"--peering={name}" in args
