"""Each identity writes only what it owns: the chart's admission policies on a real API server,
attacked with real pod-bound ServiceAccount tokens.

The agent reports facts and may never touch the operator's judgement (``verdict``,
``conditions``) nor, after create, its object's metadata; the operator may change on a Node
only its taints, its cordon, its ``navarch.dev/`` annotations, the ``GpuHealthy`` condition
and the ``navarch.dev/needs-service`` label. Every refusal is checked for a message that names
what was refused, and every legitimate call of each component is shown to still succeed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from navarch import api

from .chart import (
    NO_PODS,
    NO_POLICY,
    Release,
    as_token,
    installed,
    pod_bound_token,
    with_token,
)
from .cluster import Cluster, eventually, unique
from .operator_env import TAINT, World, healthy_status, running_operator, stamp, xid

EXTRA_KEY = "example.com/gpu-repair"
"""A second policy taint key, listed in admission.operatorTaintKeys."""
FOREIGN = {"key": "dedicated", "value": "ml", "effect": "NoExecute"}
VERDICT = {
    "health": "Unhealthy",
    "action": "Taint",
    "reason": "Xid79",
    "message": "GPU fell off the bus",
    "since": "2026-01-01T00:00:00Z",
}
CONDITIONS = [
    {
        "type": "Healthy",
        "status": "False",
        "reason": "RuleMatched",
        "message": "xid 79",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
]


MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Setup:
    release: Release
    node: str
    node_uid: str
    agent: client.CustomObjectsApi
    """Signed in with a token bound to a Pod on ``node``, as the kubelet mounts it."""
    operator: client.CoreV1Api
    operator_cluster: Cluster
    """The same operator token, as a kubeconfig for kubectl and the real operator."""
    tmp: Path


def refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The API server's message if it refuses the call as Forbidden; empty if it allows it."""
    try:
        call(*args, **kwargs)
    except client.ApiException as err:
        if err.status != 403:
            raise
        return str(json.loads(err.body)["message"])
    return ""


def refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The API server's message for a call it refuses as Forbidden."""
    with pytest.raises(client.ApiException) as denied:
        call(*args, **kwargs)
    assert denied.value.status == 403, denied.value.body
    return str(json.loads(denied.value.body)["message"])


@pytest.fixture(scope="module")
def setup(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("ownership")
    node = unique("gpu-owned")
    crds.kubectl("create", "-f", "-", stdin=json.dumps(node_body(node)))
    keys = ("--set-json", f'admission.operatorTaintKeys=["{EXTRA_KEY}"]')
    try:
        with installed(crds, *NO_PODS, *NO_POLICY, *keys, prefix="own") as release:
            agent_token = pod_bound_token(crds, release, release.agent, node)
            operator_token = pod_bound_token(crds, release, release.operator, node)
            agent = client.CustomObjectsApi(with_token(crds, agent_token))
            operator = client.CoreV1Api(with_token(crds, operator_token))
            uid = crds.get_json("node", node)["metadata"]["uid"]
            # A new policy takes effect once the API server's policy cache has loaded it;
            # a server-side dry run goes through admission without writing anything.
            annotated = health_body(node, uid, annotations={"a": "b"})
            eventually(
                lambda: (
                    f"{release.agent}-owned-fields"
                    in refusal(agent.create_cluster_custom_object, *GNH, annotated, dry_run="All")
                ),
                timeout=60,
            )
            label = {"metadata": {"labels": {"x": "y"}}}
            eventually(
                lambda: (
                    f"{release.operator}-node-scope"
                    in refusal(operator.patch_node, node, label, dry_run="All", _content_type=MERGE)
                ),
                timeout=60,
            )
            for policy in (f"{release.agent}-owned-fields", f"{release.operator}-node-scope"):
                checked = crds.get_json("validatingadmissionpolicy", policy)["status"]
                assert not checked.get("typeChecking", {}).get("expressionWarnings"), checked
            operator_cluster = as_token(crds, operator_token, tmp / "operator-kubeconfig")
            yield Setup(release, node, uid, agent, operator, operator_cluster, tmp)
    finally:
        crds.kubectl("delete", "gnh", node, "--ignore-not-found")
        crds.kubectl("delete", "node", node, "--wait=false", check=False)


GNH = (api.GROUP, api.VERSION, api.GNH_PLURAL)


def node_body(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


def health_body(node: str, uid: str, **metadata: Any) -> dict[str, Any]:
    """The GpuNodeHealth the agent creates: named after its Node and owned by it."""
    body = api.gpu_node_health(node)
    owner = {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": False}
    body["metadata"].update(ownerReferences=[owner], **metadata)
    return body


def report(setup: Setup, status: dict[str, Any]) -> dict[str, Any]:
    """The agent's own write: a merge patch of its object's status."""
    body = {"status": status}
    return dict(
        setup.agent.patch_cluster_custom_object_status(*GNH, setup.node, body, _content_type=MERGE)
    )


@pytest.fixture
def judged(crds: Cluster, setup: Setup) -> Iterator[str]:
    """The agent's own object, created by the agent, reporting, and judged by the operator."""
    crds.kubectl("delete", "gnh", setup.node, "--ignore-not-found")
    setup.agent.create_cluster_custom_object(*GNH, health_body(setup.node, setup.node_uid))
    report(setup, healthy_status())
    judgement = {"status": {"verdict": VERDICT, "conditions": CONDITIONS}}
    crds.kubectl(
        "patch",
        "gnh",
        setup.node,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(judgement),
    )
    yield setup.node
    crds.kubectl("delete", "gnh", setup.node, "--ignore-not-found")


def stored_status(crds: Cluster, node: str) -> dict[str, Any]:
    return dict(crds.get_json("gnh", node).get("status") or {})


# --- the agent -------------------------------------------------------------------------------


def test_agent_creates_heartbeats_and_reports_xids(
    crds: Cluster, setup: Setup, judged: str
) -> None:
    report(setup, {"lastHeartbeatTime": stamp(), "gpuCount": 4})
    report(setup, {"xids": [xid(79, "RESET_GPU")], "lastXid": "Xid 79 on GPU 1"})
    status = stored_status(crds, judged)
    assert status["xids"][0]["code"] == 79
    assert status["lastXid"] == "Xid 79 on GPU 1"
    assert status["verdict"]["reason"] == "Xid79"


FORGED = dict(VERDICT, health="Healthy", action="None", since="2020-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "attack",
    [
        ({"status": {"verdict": FORGED}}, MERGE, "verdict"),
        ([{"op": "remove", "path": "/status/conditions"}], JSON_PATCH, "conditions"),
        ({"status": {"verdict": None}}, MERGE, "verdict"),
        (
            {"status": {"lastHeartbeatTime": "now", "gpuCount": 4, "verdict": FORGED}},
            MERGE,
            "verdict",
        ),
        ({"status": {"verdict": FORGED}}, APPLY, "verdict"),
    ],
    ids=[
        "merge-patch",
        "json-patch-remove",
        "merge-patch-null",
        "inside-heartbeat",
        "forced-apply",
    ],
)
def test_agent_cannot_write_the_operators_status_keys(
    crds: Cluster, setup: Setup, judged: str, attack: tuple[Any, str, str]
) -> None:
    body, content_type, key = attack
    before = stored_status(crds, judged)
    if isinstance(body, dict):
        body = copy.deepcopy(body)
        if body["status"].get("lastHeartbeatTime") == "now":
            body["status"]["lastHeartbeatTime"] = stamp()
        if content_type == APPLY:
            body = dict(api.gpu_node_health(judged), **body)
    extra = {"field_manager": "navarch-agent", "force": True} if content_type == APPLY else {}
    message = refused(
        setup.agent.patch_cluster_custom_object_status,
        *GNH,
        judged,
        body,
        _content_type=content_type,
        **extra,
    )
    assert message.endswith(
        f"the Navarch agent may not set, change or remove status.{key} of GpuNodeHealth "
        f"{judged}: the operator owns it"
    )
    after = stored_status(crds, judged)
    assert after == before


def test_agent_verdict_on_create_is_never_stored(crds: Cluster, setup: Setup) -> None:
    """The status subresource makes the API server drop ``status`` from a create before
    validating admission runs, so a verdict sent on create cannot even be seen, let alone
    stored: the object starts with no status, and the operator's keys stay its own."""
    crds.kubectl("delete", "gnh", setup.node, "--ignore-not-found")
    body = health_body(setup.node, setup.node_uid)
    body["status"] = {"verdict": dict(VERDICT, health="Healthy"), "conditions": CONDITIONS}
    setup.agent.create_cluster_custom_object(*GNH, body)
    try:
        assert "status" not in crds.get_json("gnh", setup.node)
    finally:
        crds.kubectl("delete", "gnh", setup.node, "--ignore-not-found")


@pytest.mark.parametrize(
    ("patch", "what"),
    [
        (
            {"metadata": {"annotations": {api.ACK_ANNOTATION: "2099-01-01T00:00:00Z"}}},
            "annotations",
        ),
        ({"metadata": {"finalizers": ["example.com/keep"]}}, "finalizers"),
        ({"metadata": {"ownerReferences": None}}, "owner references"),
    ],
    ids=["acknowledgement", "finalizer", "owner-reference"],
)
def test_agent_cannot_change_its_objects_metadata(
    crds: Cluster, setup: Setup, judged: str, patch: dict[str, Any], what: str
) -> None:
    """Refused twice over: RBAC gives the agent no write to the object after create, and the
    admission policy holds should a cluster admin ever widen that."""
    call = setup.agent.patch_cluster_custom_object
    message = refused(call, *GNH, judged, patch, _content_type=MERGE)
    assert "cannot patch resource" in message

    widened = unique("widen")
    crds.kubectl(
        "create", "clusterrole", widened, "--verb=patch", "--resource=gpunodehealths.navarch.dev"
    )
    crds.kubectl(
        "create",
        "clusterrolebinding",
        widened,
        f"--clusterrole={widened}",
        f"--serviceaccount={setup.release.namespace}:{setup.release.agent}",
    )
    try:
        expected = f"the Navarch agent may not change the {what} of GpuNodeHealth {judged}"
        eventually(
            lambda: refused(call, *GNH, judged, patch, _content_type=MERGE).endswith(expected)
        )
    finally:
        crds.kubectl("delete", "clusterrolebinding,clusterrole", widened, check=False)
    metadata = crds.get_json("gnh", judged)["metadata"]
    assert api.ACK_ANNOTATION not in (metadata.get("annotations") or {})
    assert not metadata.get("finalizers")
    assert metadata["ownerReferences"][0]["uid"] == setup.node_uid


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"annotations": {api.ACK_ANNOTATION: "2099-01-01T00:00:00Z"}}, "may not set annotations"),
        ({"finalizers": ["example.com/keep"]}, "may not set finalizers"),
        ({"ownerReferences": "foreign"}, "only by one non-controller owner reference to Node"),
    ],
    ids=["annotation", "finalizer", "foreign-owner"],
)
def test_agent_creates_its_object_with_nothing_but_its_own_metadata(
    crds: Cluster, setup: Setup, metadata: dict[str, Any], message: str
) -> None:
    crds.kubectl("delete", "gnh", setup.node, "--ignore-not-found")
    if metadata.get("ownerReferences") == "foreign":
        owner = {"apiVersion": "v1", "kind": "Namespace", "name": "default", "uid": "1"}
        metadata = {"ownerReferences": [owner]}
    body = health_body(setup.node, setup.node_uid)
    body["metadata"].update(metadata)
    denial = refused(setup.agent.create_cluster_custom_object, *GNH, body)
    assert message in denial and f"GpuNodeHealth {setup.node}" in denial
    assert crds.kubectl("get", "gnh", setup.node, check=False).returncode != 0


def test_admin_acknowledges_the_agents_xids(crds: Cluster, judged: str) -> None:
    crds.kubectl("annotate", "gnh", judged, f"{api.ACK_ANNOTATION}={stamp()}")
    annotations = crds.get_json("gnh", judged)["metadata"]["annotations"]
    assert api.ACK_ANNOTATION in annotations


# --- the operator ----------------------------------------------------------------------------


@pytest.fixture
def node(crds: Cluster, setup: Setup) -> Iterator[str]:
    """A Node with a kubelet's status and an admin's label, taint and annotation."""
    name = unique("gpu-op")
    body = node_body(name, taints=[FOREIGN])
    body["metadata"].update(labels={"team": "ml"}, annotations={"example.com/owner": "ml"})
    crds.kubectl("create", "-f", "-", stdin=json.dumps(body))
    status = {
        "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
        "capacity": {"nvidia.com/gpu": "8"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }
    crds.kubectl(
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    yield name
    crds.kubectl("delete", "node", name, "--wait=false", check=False)


def operator_patch(setup: Setup, node: str, patch: Any) -> dict[str, Any]:
    """A Node patch made as the operator makes them: merge patches of the Node, strategic
    merge of its status; a list is a JSON patch."""
    if isinstance(patch, list):
        return dict(setup.operator.patch_node(node, patch, _content_type=JSON_PATCH).to_dict())
    if "status" in patch:
        strategic = "application/strategic-merge-patch+json"
        return dict(
            setup.operator.patch_node_status(node, patch, _content_type=strategic).to_dict()
        )
    return dict(setup.operator.patch_node(node, patch, _content_type=MERGE).to_dict())


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"metadata": {"labels": {"team": None}}},
            f"may change only the label {api.NEEDS_SERVICE_LABEL} of Node",
        ),
        (
            {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: "true", "team": "gpu"}}},
            f"may change only the label {api.NEEDS_SERVICE_LABEL} of Node",
        ),
        (
            {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: "false"}}},
            'only to "true", not "false"',
        ),
        (
            {"metadata": {"annotations": {"example.com/owner": "navarch"}}},
            "may change only navarch.dev/ annotations of Node",
        ),
        (
            [{"op": "add", "path": "/spec/taints/-", "value": dict(FOREIGN, key="evict-all")}],
            "may add, change or remove only taints with the keys of its policies",
        ),
        (
            [{"op": "remove", "path": "/spec/taints/0"}],
            "may add, change or remove only taints with the keys of its policies",
        ),
        ({"spec": {"unschedulable": True}}, "only together with its navarch.dev/applied-cordon"),
        ({"spec": {"providerID": "aws:///i-0"}}, "may not change spec.providerID"),
        (
            {"status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}]}},
            "may not change status.addresses of Node",
        ),
        (
            {"status": {"capacity": {"nvidia.com/gpu": "0"}}},
            "may not change status.capacity of Node",
        ),
    ],
    ids=[
        "label",
        "label-beside-needs-service",
        "needs-service-false",
        "foreign-annotation",
        "foreign-taint",
        "remove-foreign-taint",
        "bare-cordon",
        "provider-id",
        "addresses",
        "capacity",
    ],
)
def test_operator_cannot_change_what_navarch_does_not_own(
    crds: Cluster, setup: Setup, node: str, patch: Any, message: str
) -> None:
    before = crds.get_json("node", node)
    denial = refused(operator_patch, setup, node, patch)
    assert "the Navarch operator may" in denial
    assert message in denial and node in denial
    after = crds.get_json("node", node)
    for part in ("spec", "status"):
        assert after[part] == before[part]
    for key in ("labels", "annotations"):
        assert after["metadata"].get(key) == before["metadata"].get(key)


def test_operator_marks_a_node_for_service_and_unmarks_it(
    crds: Cluster, setup: Setup, node: str
) -> None:
    """The one label the operator owns: navarch.dev/needs-service, set to "true" when a
    ladder is spent and removed at release, by merge patch as the operator writes it; a value
    someone else set stays where it is, and the operator may still write the rest of the
    Node around it, or remove it."""
    mark = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: "true"}}}
    labels = operator_patch(setup, node, mark)["metadata"]["labels"]
    assert labels == {"team": "ml", api.NEEDS_SERVICE_LABEL: "true"}
    unmark = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: None}}}
    assert operator_patch(setup, node, unmark)["metadata"]["labels"] == {"team": "ml"}

    # An admin's value: the operator's other writes leave it be, and it may not rewrite it.
    crds.kubectl("label", "node", node, f"{api.NEEDS_SERVICE_LABEL}=false")
    taints = [
        *crds.get_json("node", node)["spec"]["taints"],
        {"key": TAINT, "effect": "NoSchedule"},
    ]
    tainted = operator_patch(setup, node, {"spec": {"taints": taints}})
    assert tainted["metadata"]["labels"][api.NEEDS_SERVICE_LABEL] == "false"
    policy = f"{setup.release.operator}-node-scope"
    maybe = {"metadata": {"labels": {api.NEEDS_SERVICE_LABEL: "maybe"}}}
    denial = refused(operator_patch, setup, node, maybe)
    assert denial.endswith(
        f"ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: "
        f"the Navarch operator may set the label {api.NEEDS_SERVICE_LABEL} of Node {node} "
        'only to "true", not "maybe"'
    )
    other = {"metadata": {"labels": {"team": "infra"}}}
    assert refused(operator_patch, setup, node, other).endswith(
        f"denied request: the Navarch operator may change only the label "
        f"{api.NEEDS_SERVICE_LABEL} of Node {node}"
    )
    assert operator_patch(setup, node, unmark)["metadata"]["labels"] == {"team": "ml"}


def test_operator_cannot_rewrite_another_condition(crds: Cluster, setup: Setup, node: str) -> None:
    ready_false = {"type": "Ready", "status": "False", "reason": "Forged"}
    denial = refused(operator_patch, setup, node, {"status": {"conditions": [ready_false]}})
    assert "may change only the GpuHealthy condition of Node" in denial
    kubelet = crds.get_json("node", node)["status"]["conditions"]
    assert [(c["type"], c["status"]) for c in kubelet] == [("Ready", "True")]


def test_operator_taints_cordons_annotates_and_releases(
    crds: Cluster, setup: Setup, node: str
) -> None:
    """What the operator writes, in the planner's own shapes: quarantine, then release."""
    current = crds.get_json("node", node)
    # The full list as read: the API server stamped the foreign NoExecute taint's timeAdded.
    foreign = current["spec"]["taints"]
    taints = [*foreign, {"key": TAINT, "effect": "NoExecute", "timeAdded": stamp()}]
    quarantine = {
        "metadata": {
            "resourceVersion": current["metadata"]["resourceVersion"],
            "annotations": {
                api.APPLIED_TAINT_ANNOTATION: f"{TAINT}:NoExecute",
                api.APPLIED_CORDON_ANNOTATION: "true",
                api.APPLIED_AT_ANNOTATION: stamp(),
                api.APPLIED_REASON_ANNOTATION: "Xid79",
            },
        },
        "spec": {"taints": [*taints, {"key": EXTRA_KEY, "effect": "NoSchedule"}]},
    }
    operator_patch(setup, node, quarantine)
    operator_patch(setup, node, {"spec": {"unschedulable": True}})
    condition = {"type": "GpuHealthy", "status": "False", "reason": "Xid79", "message": "x"}
    operator_patch(setup, node, {"status": {"conditions": [condition]}})
    quarantined = crds.get_json("node", node)
    assert quarantined["spec"]["unschedulable"] is True
    keys = [t["key"] for t in quarantined["spec"]["taints"]]
    assert keys == [t["key"] for t in foreign] + [TAINT, EXTRA_KEY]

    release = {
        "metadata": {"annotations": dict.fromkeys(quarantine["metadata"]["annotations"])},
        "spec": {"taints": foreign, "unschedulable": False},
    }
    operator_patch(setup, node, release)
    released = crds.get_json("node", node)
    assert released["spec"]["taints"] == foreign
    assert not released["spec"].get("unschedulable")
    assert released["metadata"]["labels"]["team"] == "ml"
    assert released["metadata"]["annotations"] == {"example.com/owner": "ml"}


def gpu_healthy(world: World, name: str) -> str | None:
    return (world.node_condition(name) or {}).get("status")


def test_real_operator_quarantines_and_releases_with_its_own_token(
    crds: Cluster, setup: Setup
) -> None:
    """The real navarch-operator, signed in as its ServiceAccount with a pod-bound token,
    under the chart's RBAC and admission: every write its code makes is allowed."""
    world = World(crds)
    try:
        world.policy(actions={"unhealthy": {"taint": "NoExecute", "cordon": True}})
        name = world.node()
        workdir = setup.tmp / unique("op")
        workdir.mkdir()
        with running_operator(setup.operator_cluster, workdir) as operator:
            eventually(lambda: gpu_healthy(world, name) == "True", timeout=60)
            world.report(name, {"xids": [xid(79, "RESET_GPU")]})
            eventually(lambda: world.node_json(name)["spec"].get("unschedulable"), timeout=60)
            assert [t["effect"] for t in world.navarch_taints(name)] == ["NoExecute"]
            eventually(lambda: world.verdict(name).get("action") == "TaintAndCordon")
            eventually(lambda: gpu_healthy(world, name) == "False")
            world.report(name, {"xids": []})
            eventually(lambda: not world.navarch_taints(name), timeout=60)
            assert not world.node_json(name)["spec"].get("unschedulable")
            eventually(lambda: gpu_healthy(world, name) == "True")
            log = operator.log()
            assert "denied request" not in log and "Forbidden" not in log, log
    finally:
        world.cleanup()
