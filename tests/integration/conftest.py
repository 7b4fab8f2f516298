"""Integration fixtures: a real kube-apiserver + etcd, or the cluster NAVARCH_KUBECONFIG names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from navarch.testing.controlplane import REPO_ROOT, ControlPlane

from .cluster import Cluster, eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("NAVARCH_KUBECONFIG")
    if external:
        yield Cluster(Path(external), None)
        return
    with ControlPlane() as plane:
        yield Cluster(plane.kubeconfig, plane)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    for name in ("gpunodehealths.navarch.dev", "gpuhealthpolicies.navarch.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    # Discovery can lag the Established condition by a moment.
    eventually(lambda: cluster.kubectl("get", "gnh", check=False).returncode == 0)
    return cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        plane = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(plane, Cluster) and plane.plane is not None:
            report.sections.append(("control-plane logs", plane.plane.logs()))
