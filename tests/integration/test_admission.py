"""Node-scoped agent writes: the chart's ValidatingAdmissionPolicy on a real API server.

RBAC lets the agent's ServiceAccount write GpuNodeHealth objects; the policy narrows that to
the object named after the node in the agent's token. Requests carry that node name either
through impersonation (the Impersonate-Extra header) or, as on a real node, through a token
the API server binds to a pod scheduled on the node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from .chart import (
    NO_PODS,
    NO_POLICY,
    Release,
    gnh_body,
    impersonating,
    installed,
    node_manifest,
    pod_bound_token,
    with_token,
)
from .cluster import Cluster, eventually, unique

GROUP, VERSION, PLURAL = "navarch.dev", "v1alpha1", "gpunodehealths"


@dataclass(frozen=True)
class Setup:
    release: Release
    own: str
    other: str


def denial(release: Release) -> str:
    policy = f"{release.agent}-node-scope"
    return f"ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: "


@pytest.fixture(scope="module")
def setup(crds: Cluster) -> Iterator[Setup]:
    own, other = unique("gpu-own"), unique("gpu-other")
    for node in (own, other):
        crds.kubectl("create", "-f", "-", stdin=node_manifest(node))
    try:
        with installed(crds, *NO_PODS, *NO_POLICY, prefix="vap") as release:
            # A new policy takes effect once the API server's policy cache has loaded it; a
            # server-side dry run goes through admission without writing anything.
            agent = release.user(release.agent)

            def effective() -> bool:
                result = crds.kubectl(
                    f"--as={agent}",
                    "create",
                    "--dry-run=server",
                    "-f",
                    "-",
                    stdin=json.dumps(gnh_body(own)),
                    check=False,
                )
                return denial(release) in result.stderr

            eventually(effective, timeout=60)
            yield Setup(release, own, other)
    finally:
        crds.kubectl("delete", "gnh", own, other, "--ignore-not-found")
        crds.kubectl("delete", "node", own, other, "--wait=false", check=False)


def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def forbidden(call: Any, *args: Any) -> str:
    with pytest.raises(client.ApiException) as denied:
        call(*args)
    assert denied.value.status == 403, denied.value.body
    return str(json.loads(denied.value.body)["message"])


def test_agent_writes_the_object_of_its_own_node(crds: Cluster, setup: Setup) -> None:
    crds.kubectl("delete", "gnh", setup.own, "--ignore-not-found")
    agent = objects(impersonating(crds, setup.release.user(setup.release.agent), setup.own))
    created = agent.create_cluster_custom_object(GROUP, VERSION, PLURAL, gnh_body(setup.own))
    assert created["metadata"]["name"] == setup.own
    patched = agent.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, setup.own, {"status": {"gpuCount": 8, "expectedGpuCount": 8}}
    )
    assert patched["status"]["gpuCount"] == 8


def test_agent_cannot_write_another_nodes_object(crds: Cluster, setup: Setup) -> None:
    release = setup.release
    agent = objects(impersonating(crds, release.user(release.agent), setup.own))
    expected = (
        f"{denial(release)}the Navarch agent on node {setup.own} may write only GpuNodeHealth "
        f"{setup.own}, not {setup.other}"
    )
    message = forbidden(
        agent.create_cluster_custom_object, GROUP, VERSION, PLURAL, gnh_body(setup.other)
    )
    assert message.endswith(expected)
    # The other node's object, created by its own agent (here: an admin), stays out of reach:
    # neither its status (marking the node healthy or unhealthy) nor its metadata (which RBAC
    # already refuses the agent on every object after create).
    crds.kubectl("apply", "-f", "-", stdin=json.dumps(gnh_body(setup.other)))
    status = {"status": {"gpuCount": 0, "expectedGpuCount": 8}}
    message = forbidden(
        agent.patch_cluster_custom_object_status, GROUP, VERSION, PLURAL, setup.other, status
    )
    assert message.endswith(expected)
    labels = {"metadata": {"labels": {"navarch.dev/test": "x"}}}
    message = forbidden(
        agent.patch_cluster_custom_object, GROUP, VERSION, PLURAL, setup.other, labels
    )
    assert "cannot patch resource" in message
    assert "status" not in crds.get_json("gnh", setup.other)


def test_agent_without_a_node_bound_token_is_refused(crds: Cluster, setup: Setup) -> None:
    release = setup.release
    agent = release.user(release.agent)
    result = crds.kubectl(
        f"--as={agent}",
        "--as-group=system:serviceaccounts",
        f"--as-group=system:serviceaccounts:{release.namespace}",
        "--as-group=system:authenticated",
        "create",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps(gnh_body(setup.own)),
        check=False,
    )
    assert result.returncode != 0
    assert (
        f"{denial(release)}the Navarch agent ({agent}) may write GpuNodeHealth {setup.own} only "
        "with a pod-bound ServiceAccount token that names its node (user info extra "
        "authentication.kubernetes.io/node-name is missing)"
    ) in result.stderr


def test_real_pod_bound_token_carries_the_node_and_is_held_to_it(
    crds: Cluster, setup: Setup
) -> None:
    """The same check with the credential a kubelet gives the agent: a token the API server
    binds to a pod on the node. No impersonation involved."""
    release = setup.release
    token = pod_bound_token(crds, release, release.agent, setup.own)
    api = with_token(crds, token)
    who = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert who.status.user_info.username == release.user(release.agent)
    assert who.status.user_info.extra["authentication.kubernetes.io/node-name"] == [setup.own]

    agent = objects(api)
    crds.kubectl("apply", "-f", "-", stdin=json.dumps(gnh_body(setup.own)))
    patched = agent.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, setup.own, {"status": {"gpuCount": 4}}
    )
    assert patched["status"]["gpuCount"] == 4
    third = unique("gpu-third")
    message = forbidden(agent.create_cluster_custom_object, GROUP, VERSION, PLURAL, gnh_body(third))
    assert message.endswith(
        f"the Navarch agent on node {setup.own} may write only GpuNodeHealth {setup.own}, "
        f"not {third}"
    )


def test_operator_and_admins_are_not_affected(crds: Cluster, setup: Setup) -> None:
    release = setup.release
    for name in (setup.own, setup.other):
        crds.kubectl("apply", "-f", "-", stdin=json.dumps(gnh_body(name)))
    verdict = {"status": {"verdict": {"health": "Unhealthy", "action": "Taint", "reason": "Xid"}}}
    operator = objects(impersonating(crds, release.user(release.operator)))
    # Even with a node name in its user info: the policy matches the agent only.
    on_a_node = objects(impersonating(crds, release.user(release.operator), setup.own))
    for api in (operator, on_a_node):
        for name in (setup.own, setup.other):
            patched = api.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, verdict)
            assert patched["status"]["verdict"]["health"] == "Unhealthy"
    admin = objects(crds.api_client())
    third = unique("gpu-admin")
    admin.create_cluster_custom_object(GROUP, VERSION, PLURAL, gnh_body(third))
    admin.delete_cluster_custom_object(GROUP, VERSION, PLURAL, third)


def test_another_releases_agent_is_held_by_its_own_policy_only(crds: Cluster, setup: Setup) -> None:
    """The match is on the exact ServiceAccount: a same-named account in another namespace is
    not this release's agent (and has no RBAC from this release either)."""
    stranger = f"system:serviceaccount:{unique('elsewhere')}:{setup.release.agent}"
    api = objects(impersonating(crds, stranger, setup.own))
    message = forbidden(api.get_cluster_custom_object, GROUP, VERSION, PLURAL, setup.own)
    assert "cannot get resource" in message and "ValidatingAdmissionPolicy" not in message
