"""Drains, tried as an attacker with the operator's token would: the chart's RBAC and its
``<release>-operator-pod-scope`` admission policy on a real API server, with real pod-bound
ServiceAccount tokens.

A drain lists the pods of one node, evicts them, and, only when its policy says
``onTimeout: Delete``, deletes what is left; it never moves DaemonSet pods, mirror pods or
Navarch's own. The operator's token may do exactly those calls, made here by the operator's own
client, and is refused every delete a drain would never make, each with a message that says
what and why, and every other write to pods. Admission cannot see which pod an Eviction names,
so evictions are bounded by PodDisruptionBudgets alone; that is shown too. The agent's token
may make none of these calls. No pod here runs: they are bound to a Node no kubelet serves, and
the owners they name do not exist.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from navarch import api
from navarch.errors import ApiError
from navarch.operator.kube import Kube, credentials

from .chart import (
    NO_PODS,
    NO_POLICY,
    Release,
    as_token,
    installed,
    node_manifest,
    pod_bound_token,
    with_token,
)
from .cluster import Cluster, eventually, unique

MIRROR = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class Setup:
    release: Release
    node: str
    namespace: str
    """Where the workload pods live; Navarch's own live in the release's namespace."""
    operator_kubeconfig: Path
    """The operator's pod-bound token, as the kubeconfig its client reads."""
    operator: client.CoreV1Api
    """The same token, for calls the operator's client has no method for."""
    agent: client.CoreV1Api


def pod_body(
    namespace: str,
    node: str,
    *,
    owner: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    account: str | None = None,
) -> dict[str, Any]:
    """A Pod bound to ``node``, controlled by a made-up ``owner`` kind if given."""
    metadata: dict[str, Any] = {"name": unique((owner or "bare").lower()), "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner,
                "name": unique(owner.lower()),
                "uid": str(uuid.uuid4()),
                "controller": True,
            }
        ]
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [{"name": "main", "image": "registry.invalid/workload:none"}],
    }
    if account is not None:
        spec["serviceAccountName"] = account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def create(crds: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    """Create ``body`` as an admin; the stored pod."""
    crds.kubectl("create", "-f", "-", stdin=json.dumps(body))
    meta = body["metadata"]
    return dict(crds.get_json("pod", meta["name"], "-n", meta["namespace"]))


def exists(crds: Cluster, pod: dict[str, Any]) -> bool:
    meta = pod["metadata"]
    found = crds.kubectl("get", "pod", meta["name"], "-n", meta["namespace"], check=False)
    return found.returncode == 0


def where(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


@pytest.fixture(scope="module")
def setup(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    node = unique("gpu-drain")
    namespace = unique("drain-workloads")
    crds.kubectl("create", "-f", "-", stdin=node_manifest(node))
    crds.kubectl("create", "namespace", namespace)
    # The ServiceAccount admission plugin gives a pod the namespace's default account and
    # refuses it if that does not exist; a bare control plane runs no controller to make it.
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}
    crds.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(account))
    try:
        with installed(crds, *NO_PODS, *NO_POLICY, prefix="drain") as release:
            operator_token = pod_bound_token(crds, release, release.operator, node)
            agent_token = pod_bound_token(crds, release, release.agent, node)
            operator = client.CoreV1Api(with_token(crds, operator_token))
            agent = client.CoreV1Api(with_token(crds, agent_token))
            kubeconfig = tmp_path_factory.mktemp("drain") / "operator-kubeconfig"
            as_token(crds, operator_token, kubeconfig)
            # A new policy takes effect once the API server's policy cache has loaded it; a
            # server-side dry run goes through admission without deleting anything.
            probe = create(crds, pod_body(namespace, node, owner="DaemonSet"))

            def effective() -> bool:
                try:
                    operator.delete_namespaced_pod(
                        probe["metadata"]["name"], namespace, dry_run="All"
                    )
                except client.ApiException as err:
                    return err.status == 403 and f"{release.operator}-pod-scope" in str(err.body)
                return False

            eventually(effective, timeout=60)
            checked = crds.get_json("validatingadmissionpolicy", f"{release.operator}-pod-scope")
            assert not checked.get("status", {}).get("typeChecking", {}).get("expressionWarnings")
            yield Setup(release, node, namespace, kubeconfig, operator, agent)
    finally:
        crds.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        crds.kubectl("delete", "node", node, "--wait=false", check=False)


def as_operator(setup: Setup, monkeypatch: pytest.MonkeyPatch, call: Any, *args: Any) -> Any:
    """Run one call of the operator's own client (``Kube``), signed in with its token."""
    # The client's loader points $KUBECONFIG at the file; the test's end puts it back.
    monkeypatch.setenv("KUBECONFIG", str(setup.operator_kubeconfig))

    async def run() -> Any:
        kube = Kube(functools.partial(credentials, str(setup.operator_kubeconfig)), workers=4)
        try:
            coroutine: Coroutine[Any, Any, Any] = call(kube, *args)
            return await coroutine
        finally:
            await kube.close()

    return asyncio.run(run())


def refused(setup: Setup, monkeypatch: pytest.MonkeyPatch, call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        as_operator(setup, monkeypatch, call, *args)
    return caught.value


def forbidden(call: Any, *args: Any, **kwargs: Any) -> str:
    """The API server's message for a call it refuses as Forbidden."""
    with pytest.raises(client.ApiException) as denied:
        call(*args, **kwargs)
    assert denied.value.status == 403, denied.value.body
    return str(json.loads(denied.value.body)["message"])


# --- what a drain does -----------------------------------------------------------------------


def test_operator_lists_evicts_and_deletes_the_pods_a_drain_moves(
    crds: Cluster, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer's three calls, made by the operator's client with its own token."""
    evictee = create(crds, pod_body(setup.namespace, setup.node, owner="ReplicaSet"))
    owned = create(crds, pod_body(setup.namespace, setup.node, owner="ReplicaSet"))
    bare = create(crds, pod_body(setup.namespace, setup.node))
    elsewhere = create(crds, pod_body(setup.namespace, unique("gpu-elsewhere")))

    listed = as_operator(setup, monkeypatch, Kube.list_pods, setup.node)
    names = {where(p) for p in listed}
    assert {where(evictee), where(owned), where(bare)} <= names
    assert where(elsewhere) not in names
    assert {p["spec"]["nodeName"] for p in listed} == {setup.node}

    # Grace 0: no kubelet serves the node to finish a graceful termination.
    uid = evictee["metadata"]["uid"]
    as_operator(
        setup, monkeypatch, Kube.evict, setup.namespace, evictee["metadata"]["name"], uid, 0
    )
    assert not exists(crds, evictee)

    # The uid precondition: a pod of the same name that the drain has not seen stays.
    stale = refused(
        setup, monkeypatch, Kube.delete_pod, setup.namespace, owned["metadata"]["name"], "0", 0
    )
    assert stale.status == 409
    assert exists(crds, owned)
    for pod in (owned, bare):
        meta = pod["metadata"]
        as_operator(
            setup, monkeypatch, Kube.delete_pod, setup.namespace, meta["name"], meta["uid"], 0
        )
        assert not exists(crds, pod)


@pytest.mark.parametrize(
    "kind",
    ["daemonset", "mirror", "navarch"],
)
def test_operator_cannot_delete_the_pods_drains_leave_in_place(
    crds: Cluster, setup: Setup, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A stolen operator token, deleting at once (grace 0) what no drain ever deletes."""
    release = setup.release
    if kind == "daemonset":
        pod = create(crds, pod_body(setup.namespace, setup.node, owner="DaemonSet"))
        owner = pod["metadata"]["ownerReferences"][0]["name"]
        why = f"DaemonSet {owner} controls it, and drains leave DaemonSet pods in place"
    elif kind == "mirror":
        pod = create(crds, pod_body(setup.namespace, setup.node, annotations={MIRROR: "x"}))
        why = (
            "it is the mirror of a static pod the kubelet runs, and drains leave mirror pods "
            "in place"
        )
    else:
        # The operator's own pod, as the chart makes it: a Deployment's, in the release's
        # namespace, labelled part of Navarch.
        labels = {api.PART_OF_LABEL: api.PART_OF, "app.kubernetes.io/component": "operator"}
        body = pod_body(
            release.namespace,
            setup.node,
            owner="ReplicaSet",
            labels=labels,
            account=release.operator,
        )
        pod = create(crds, body)
        why = (
            "it is one of Navarch's own pods (app.kubernetes.io/part-of=navarch), and drains "
            "leave them in place"
        )
    meta = pod["metadata"]
    denial = refused(
        setup, monkeypatch, Kube.delete_pod, meta["namespace"], meta["name"], meta["uid"], 0
    )
    assert denial.status == 403
    policy = f"{release.operator}-pod-scope"
    assert denial.message.endswith(
        f"ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: "
        f"the Navarch operator may not delete Pod {where(pod)}: {why}"
    )
    stored = crds.get_json("pod", meta["name"], "-n", meta["namespace"])
    assert "deletionTimestamp" not in stored["metadata"]


def test_an_eviction_is_bounded_by_the_pods_disruption_budget(
    crds: Cluster, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission sees an Eviction, not the pod it names, and the API server deletes the pod
    without admitting a DELETE: the operator's token evicts a DaemonSet's pod that nothing
    protects. A PodDisruptionBudget holds against it as against anyone."""
    app = unique("guarded")
    guarded = create(
        crds, pod_body(setup.namespace, setup.node, owner="DaemonSet", labels={"app": app})
    )
    unguarded = create(crds, pod_body(setup.namespace, setup.node, owner="DaemonSet"))
    # Pending pods are evicted whatever their budget says; these two count as running.
    for pod in (guarded, unguarded):
        crds.kubectl(
            "patch",
            "pod",
            pod["metadata"]["name"],
            "-n",
            setup.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": "Running"}}),
        )
    crds.kubectl(
        "create", "pdb", app, "-n", setup.namespace, f"--selector=app={app}", "--min-available=1"
    )

    meta = guarded["metadata"]
    blocked = refused(setup, monkeypatch, Kube.evict, setup.namespace, meta["name"], meta["uid"], 0)
    assert blocked.status == 429 and blocked.disruption_budget
    assert exists(crds, guarded)

    meta = unguarded["metadata"]
    as_operator(setup, monkeypatch, Kube.evict, setup.namespace, meta["name"], meta["uid"], 0)
    assert not exists(crds, unguarded)


# --- what it may not do ----------------------------------------------------------------------


def test_operator_has_no_other_way_to_pods_or_secrets(crds: Cluster, setup: Setup) -> None:
    """Everything but list, evict and delete of single pods is refused by RBAC: reading one
    pod or watching them, creating, changing (which could strip the label or owner that
    protects a pod from deletion), deleting a whole collection, and reading Secrets."""
    operator = setup.operator
    user = setup.release.user(setup.release.operator)
    pod = create(crds, pod_body(setup.namespace, setup.node, owner="DaemonSet"))
    name = pod["metadata"]["name"]
    strip = {"metadata": {"ownerReferences": None, "labels": {"x": "y"}}}
    stored = operator.api_client.sanitize_for_serialization(
        client.CoreV1Api(crds.api_client()).read_namespaced_pod(name, setup.namespace)
    )
    new = pod_body(setup.namespace, setup.node)
    for verb, call, args, kwargs in (
        ("get", operator.read_namespaced_pod, (name, setup.namespace), {}),
        ("watch", operator.list_pod_for_all_namespaces, (), {"watch": True, "timeout_seconds": 1}),
        ("create", operator.create_namespaced_pod, (setup.namespace, new), {}),
        ("patch", operator.patch_namespaced_pod, (name, setup.namespace, strip), {}),
        ("update", operator.replace_namespaced_pod, (name, setup.namespace, stored), {}),
        ("deletecollection", operator.delete_collection_namespaced_pod, (setup.namespace,), {}),
        ("get", operator.read_namespaced_secret, ("any", setup.release.namespace), {}),
        ("list", operator.list_namespaced_secret, ("kube-system",), {}),
    ):
        message = forbidden(call, *args, **kwargs)
        assert f'User "{user}" cannot {verb} resource' in message, message
    assert crds.get_json("pod", name, "-n", setup.namespace)["metadata"]["ownerReferences"]


def test_agent_can_make_none_of_the_drains_calls(crds: Cluster, setup: Setup) -> None:
    agent = setup.agent
    user = setup.release.user(setup.release.agent)
    pod = create(crds, pod_body(setup.namespace, setup.node, owner="ReplicaSet"))
    name = pod["metadata"]["name"]
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": setup.namespace},
    }
    selector = f"spec.nodeName={setup.node}"
    for verb, call, args, kwargs in (
        ("list", agent.list_pod_for_all_namespaces, (), {"field_selector": selector}),
        ("list", agent.list_namespaced_pod, (setup.namespace,), {}),
        ("create", agent.create_namespaced_pod_eviction, (name, setup.namespace, eviction), {}),
        ("delete", agent.delete_namespaced_pod, (name, setup.namespace), {}),
        ("deletecollection", agent.delete_collection_namespaced_pod, (setup.namespace,), {}),
    ):
        message = forbidden(call, *args, **kwargs)
        assert f'User "{user}" cannot {verb} resource' in message, message
    assert exists(crds, pod)
