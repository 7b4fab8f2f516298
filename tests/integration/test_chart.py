"""The Helm chart installs into a real control plane."""

from __future__ import annotations

import yaml

from navarch.operator.defaults import default_policy_object
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
        policy = cluster.get_json("ghp", "default")
        assert policy["spec"]["rules"] == default_policy_object()["spec"]["rules"]
    finally:
        cluster.helm("uninstall", release, "-n", namespace)


def render(cluster: Cluster, *args: str) -> list[dict[str, object]]:
    out = cluster.helm("template", "nv", CHART, "--kube-version", "1.36.3", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_chart_renders_the_builtin_default_policy_and_applies_overrides(cluster: Cluster) -> None:
    policies = [d for d in render(cluster) if d["kind"] == "GpuHealthPolicy"]
    assert [p["spec"] for p in policies] == [default_policy_object()["spec"]]
    overridden = render(
        cluster,
        "--set",
        "defaultPolicy.overrides.dryRun=true",
        "--set",
        "defaultPolicy.overrides.maxUnhealthy=5%",
    )
    spec = next(d for d in overridden if d["kind"] == "GpuHealthPolicy")["spec"]
    assert spec["dryRun"] is True and spec["maxUnhealthy"] == "5%"
    assert spec["rules"] == default_policy_object()["spec"]["rules"]
    disabled = render(cluster, "--set", "defaultPolicy.enabled=false")
    assert not [d for d in disabled if d["kind"] == "GpuHealthPolicy"]
