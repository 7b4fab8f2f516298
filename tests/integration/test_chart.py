"""The Helm chart installs into a real control plane."""

from __future__ import annotations

from navarch.testing.controlplane import REPO_ROOT

from .cluster import Cluster, unique

CHART = str(REPO_ROOT / "charts" / "navarch")


def test_helm_lint_is_clean(cluster: Cluster) -> None:
    result = cluster.helm("lint", "--strict", CHART)
    assert "0 chart(s) failed" in result.stdout


def test_helm_install_creates_crds_and_workloads(cluster: Cluster) -> None:
    release, namespace = unique("nv"), unique("navarch")
    cluster.helm(
        "install", release, CHART, "--namespace", namespace, "--create-namespace", "--wait=false"
    )
    try:
        for crd in ("gpunodehealths.navarch.dev", "gpuhealthpolicies.navarch.dev"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        objects = cluster.kubectl(
            "get", "deployment,daemonset,serviceaccount", "-n", namespace, "-o", "name"
        ).stdout.split()
        assert f"deployment.apps/{release}-navarch-operator" in objects
        assert f"daemonset.apps/{release}-navarch-agent" in objects
        assert f"serviceaccount/{release}-navarch-agent" in objects
        status = cluster.helm("status", release, "-n", namespace).stdout
        assert "STATUS: deployed" in status
    finally:
        cluster.helm("uninstall", release, "-n", namespace)
