"""The chart's life on a real API server: install, upgrade, uninstall, CRD upgrades, and
rendered manifests validated by the server itself."""

from __future__ import annotations

import json
import subprocess

import pytest

from navarch.testing.controlplane import REPO_ROOT, binary

from .chart import (
    CHART,
    KUBE_VERSION,
    NO_PODS,
    NO_POLICY,
    ensure_kopf_peering_crd,
    gnh_body,
    installed,
)
from .cluster import Cluster, unique

CRDS = ("gpunodehealths.navarch.dev", "gpuhealthpolicies.navarch.dev")


def outside_the_namespace(cluster: Cluster, release: str) -> list[str]:
    """What a release creates outside its own namespace: cluster-scoped objects, and the
    operator's Event rights in the default namespace."""
    selector = f"app.kubernetes.io/instance={release}"
    cluster_scoped = cluster.kubectl(
        "get",
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
        "validatingadmissionpolicybindings",
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    in_default = cluster.kubectl(
        "get", "roles,rolebindings", "-n", "default", "-l", selector, "-o", "name"
    ).stdout.split()
    return cluster_scoped + in_default


def test_install_upgrade_uninstall(crds: Cluster) -> None:
    """The one release in the suite that owns the default policy while it upgrades it."""
    kept = unique("gpu-kept")
    with installed(crds, *NO_PODS, prefix="life") as release:
        policy = crds.get_json("ghp", "default")
        assert not policy["spec"].get("dryRun")
        generation = policy["metadata"]["generation"]
        agent, operator = release.agent, release.operator
        rbac = "rbac.authorization.k8s.io"
        admission = "admissionregistration.k8s.io"
        assert sorted(outside_the_namespace(crds, release.name)) == sorted(
            [
                f"clusterrole.{rbac}/{agent}",
                f"clusterrole.{rbac}/{operator}",
                f"clusterrole.{rbac}/{release.fullname}-metrics-reader",
                f"clusterrolebinding.{rbac}/{agent}",
                f"clusterrolebinding.{rbac}/{operator}",
                f"validatingadmissionpolicy.{admission}/{agent}-node-scope",
                f"validatingadmissionpolicybinding.{admission}/{agent}-node-scope",
                f"validatingadmissionpolicy.{admission}/{agent}-owned-fields",
                f"validatingadmissionpolicybinding.{admission}/{agent}-owned-fields",
                f"validatingadmissionpolicy.{admission}/{operator}-node-scope",
                f"validatingadmissionpolicybinding.{admission}/{operator}-node-scope",
                f"validatingadmissionpolicy.{admission}/{operator}-pod-scope",
                f"validatingadmissionpolicybinding.{admission}/{operator}-pod-scope",
                f"role.{rbac}/{operator}-events",
                f"rolebinding.{rbac}/{operator}-events",
            ]
        )

        # Policy edits from values reach the object the operator reads; so do workload edits.
        crds.helm(
            "upgrade", release.name, CHART, "--namespace", release.namespace, "--reuse-values",
            "--set", "defaultPolicy.overrides.dryRun=true",
            "--set", "defaultPolicy.overrides.maxUnhealthy=3",
            "--set", "agent.updateStrategy.maxUnavailable=2",
        )  # fmt: skip
        policy = crds.get_json("ghp", "default")
        assert policy["spec"]["dryRun"] is True
        assert policy["spec"]["maxUnhealthy"] == 3
        assert policy["metadata"]["generation"] == generation + 1
        daemonset = crds.get_json("daemonset", release.agent, "-n", release.namespace)
        assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 2
        history = crds.helm("history", release.name, "-n", release.namespace, "-o", "json")
        assert [r["status"] for r in json.loads(history.stdout)] == ["superseded", "deployed"]

        # Rolling back restores the previous policy.
        crds.helm("rollback", release.name, "1", "--namespace", release.namespace)
        assert not crds.get_json("ghp", "default")["spec"].get("dryRun")

        # Objects the agents wrote are data, not part of the release.
        crds.kubectl("create", "-f", "-", stdin=json.dumps(gnh_body(kept)))
        crds.helm("uninstall", release.name, "--namespace", release.namespace, "--wait")
        try:
            assert crds.kubectl("get", "ghp", "default", check=False).returncode != 0
            assert outside_the_namespace(crds, release.name) == []
            for crd in CRDS:
                crds.kubectl("get", "crd", crd)
            assert crds.get_json("gnh", kept)["metadata"]["name"] == kept
        finally:
            crds.kubectl("delete", "gnh", kept, "--ignore-not-found")


def server_dry_run(cluster: Cluster, namespace: str, *values: str) -> str:
    manifests = cluster.helm(
        "template", "dry", CHART, "--kube-version", KUBE_VERSION, "--namespace", namespace, *values
    ).stdout
    # Strict field validation: an unknown or misspelt field fails instead of being dropped.
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifests, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "values",
    [
        pytest.param((), id="defaults"),
        pytest.param(
            (
                "--set", "agent.privileged=true",
                "--set", "agent.runtimeClassName=nvidia",
                "--set", "agent.pollInterval=5s",
                "--set", "agent.heartbeatInterval=30s",
                "--set", "agent.expectedGpus=8",
                "--set", "agent.updateStrategy.maxUnavailable=1",
                "--set", "taintKey=example.com/gpu",
                "--set", "imagePullSecrets[0].name=regcred",
                "--set", "operator.workers=4",
                "--set", "operator.priorityClassName=system-cluster-critical",
                "--set", "defaultPolicy.overrides.dryRun=true",
                "--set", "defaultPolicy.overrides.maxUnhealthy=5%",
                "--set", "defaultPolicy.overrides.actions.unhealthy.cordon=true",
                "--set", "remediation.jobTemplates.gpuReset.runtimeClassName=nvidia",
                "--set", "remediation.jobTemplates.reboot.sentinelPath=/run/reboot-required",
                "--set-json", 'remediation.templates=[{"apiGroup": "remediation.medik8s.io", '
                '"templateResource": "selfnoderemediationtemplates", '
                '"resource": "selfnoderemediations"}]',
            ),
            id="options",
        ),
        pytest.param(
            ("--set", "agent.enabled=false", "--set", "admission.nodeScopedAgentWrites=false"),
            id="operator-only",
        ),
        pytest.param(("--set", "remediation.jobTemplates.enabled=false"), id="no-job-templates"),
        pytest.param(("--set", "operator.enabled=false"), id="agent-only"),
    ],
)  # fmt: skip
def test_rendered_manifests_pass_server_side_validation(
    crds: Cluster, values: tuple[str, ...]
) -> None:
    namespace = unique("dry")
    crds.kubectl("create", "namespace", namespace)
    try:
        out = server_dry_run(crds, namespace, *values)
        assert "(server dry run)" in out
    finally:
        crds.kubectl("delete", "namespace", namespace, "--wait=false")


def test_rendered_peering_manifests_pass_server_side_validation(crds: Cluster) -> None:
    ensure_kopf_peering_crd(crds)
    namespace = unique("dry")
    crds.kubectl("create", "namespace", namespace)
    try:
        out = server_dry_run(
            crds, namespace,
            "--api-versions", "kopf.dev/v1/ClusterKopfPeering",
            "--set", "operator.peering.enabled=true",
        )  # fmt: skip
        assert "clusterkopfpeering.kopf.dev/dry-navarch created (server dry run)" in out
    finally:
        crds.kubectl("delete", "namespace", namespace, "--wait=false")


def test_crd_upgrade_applies_over_existing_crds_and_keeps_objects(crds: Cluster) -> None:
    """Helm installs crds/ once and never upgrades them; `make crds-apply` does.

    An older CRD is simulated by another field manager owning a changed description, as
    when Helm created the CRDs at install. Plain server-side apply then reports a conflict;
    the documented command takes the fields over and leaves existing objects alone."""
    crd = "gpunodehealths.navarch.dev"
    path = "/spec/versions/0/schema/openAPIV3Schema/description"
    jsonpath = "{.spec.versions[0].schema.openAPIV3Schema.description}"
    current = crds.kubectl("get", "crd", crd, "-o", f"jsonpath={jsonpath}").stdout
    kept = unique("gpu-kept")
    crds.kubectl("create", "-f", "-", stdin=json.dumps(gnh_body(kept)))
    try:
        crds.kubectl(
            "patch", "crd", crd, "--field-manager=helm", "--type=json",
            "-p", json.dumps([{"op": "replace", "path": path, "value": "an older release"}]),
        )  # fmt: skip
        plain = crds.kubectl("apply", "--server-side", "-f", "charts/navarch/crds/", check=False)
        assert plain.returncode != 0 and 'conflict with "helm"' in plain.stderr

        kubectl = f"{binary('kubectl')} --kubeconfig {crds.kubeconfig}"
        make = subprocess.run(
            ["make", "--no-print-directory", "crds-apply", f"KUBECTL={kubectl}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert make.returncode == 0, make.stdout + make.stderr
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd} serverside-applied" in (
            make.stdout
        )
        assert crds.kubectl("get", "crd", crd, "-o", f"jsonpath={jsonpath}").stdout == current
        crds.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        assert crds.get_json("gnh", kept)["spec"]["nodeName"] == kept
    finally:
        crds.kubectl("delete", "gnh", kept, "--ignore-not-found")
        # Whatever happened above, leave the suite's CRDs as the chart defines them.
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", "charts/navarch/crds/")


def test_install_into_a_cluster_that_already_has_the_crds(crds: Cluster) -> None:
    """Upgrades of Navarch re-run `helm install` or `helm upgrade` over existing CRDs (from
    `make crds-apply` or an earlier release): Helm leaves them be and installs the rest."""
    with installed(crds, *NO_PODS, *NO_POLICY, "--skip-crds", prefix="skip") as release:
        status = crds.helm("status", release.name, "-n", release.namespace).stdout
        assert "STATUS: deployed" in status
