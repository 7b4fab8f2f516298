"""Integration fixtures: a real kube-apiserver + etcd, or the cluster NAVARCH_KUBECONFIG names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from navarch.testing import fake_nvml
from navarch.testing.controlplane import REPO_ROOT, ControlPlane
from navarch.testing.workloads import WorkloadPlane

from .chart import NO_POLICY, Release, installed
from .cluster import Cluster, eventually
from .workloads_env import CPU_NODES, GPU_NODES, StandIns, WorkloadCluster, rolled_out

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


@pytest.fixture(scope="session")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadCluster]:
    """A local cluster of its own where pods run: scheduler, controller manager and fake GPU
    and CPU nodes played by KWOK. Local even under NAVARCH_KUBECONFIG: its tests set the node
    lifecycle timings and stop nodes' kubelets."""
    workdir = tmp_path_factory.mktemp("workloads")
    library = fake_nvml.build(workdir / "fake-nvml")
    with ControlPlane() as plane, WorkloadPlane(plane) as workload_plane:
        for name in GPU_NODES:
            workload_plane.add_node(name)
        for name in CPU_NODES:
            workload_plane.add_node(name, gpus=0)
        yield WorkloadCluster(Cluster(plane.kubeconfig, plane), workload_plane, workdir, library)


@pytest.fixture(scope="module")
def release(workloads: WorkloadCluster) -> Iterator[Release]:
    with installed(workloads.cluster, *NO_POLICY, prefix="wl") as release:
        rolled_out(workloads, release)
        yield release


@pytest.fixture(scope="module")
def stand_ins(
    workloads: WorkloadCluster, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StandIns]:
    processes = StandIns(workloads, release, tmp_path_factory.mktemp("stand-ins"))
    try:
        processes.sync()
        for node in GPU_NODES:
            eventually(lambda n=node: workloads.reported_since(n, None), timeout=60)
        yield processes
    finally:
        processes.stop()


@pytest.fixture
def fleet(stand_ins: StandIns) -> Iterator[StandIns]:
    """The stand-ins in step with the release's pods."""
    stand_ins.sync()
    yield stand_ins
    # pytest shows a test's captured output only when it fails.
    print(f"--- stand-in logs ---\n{stand_ins.logs()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        plane = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(plane, Cluster) and plane.plane is not None:
            report.sections.append(("control-plane logs", plane.plane.logs()))
    if report.failed and "workloads" in getattr(item, "fixturenames", ()):
        world = item.funcargs.get("workloads") if hasattr(item, "funcargs") else None
        if isinstance(world, WorkloadCluster) and world.cluster.plane is not None:
            logs = world.cluster.plane.logs() + "\n" + world.plane.logs()
            report.sections.append(("workload cluster logs", logs))
