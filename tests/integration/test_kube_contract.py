"""The operator's client and the unit tests' fake answer the same calls the same way.

Every test runs twice: against ``FakeKube`` and against ``Kube`` on the real API server. Each
makes only :class:`~navarch.operator.kube.KubeApi` calls after setting up its objects, so a
difference in what the server does (a key its status subresource drops, a conflict it raises)
fails here rather than passing unnoticed in the reconciler's unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from kubernetes import client

from navarch import api
from navarch.errors import ApiError
from navarch.operator.kube import Kube, KubeApi, Target, credentials
from navarch.operator.model import Event
from navarch.testing.fake_kube import FakeKube

from .cluster import Cluster
from .operator_env import World, healthy_status, stamp

CONDITION = "GpuHealthy"


class Backend(Protocol):
    """Sets up what the calls under test act on, and reads what only the backend knows."""

    def node(self, suffix: str, labels: dict[str, str] | None = None) -> str:
        """A Node, and its GpuNodeHealth reporting a healthy status."""

    def events_about(self, name: str) -> list[str]:
        """The reasons of the Events posted about ``name``."""

    def client(self) -> KubeApi:
        """The client under test, made on the running event loop."""

    def pod(self, name: str, node: str) -> tuple[str, str]:
        """A pod bound to ``node`` in namespace ``default``: its name and uid."""


class Fake:
    def __init__(self) -> None:
        self.kube = FakeKube()

    def node(self, suffix: str, labels: dict[str, str] | None = None) -> str:
        self.kube.add_node(suffix, labels)
        self.kube.add_health(suffix, healthy_status())
        return suffix

    def events_about(self, name: str) -> list[str]:
        return [event.reason for target, event in self.kube.events if target.name == name]

    def client(self) -> KubeApi:
        return self.kube

    def pod(self, name: str, node: str) -> tuple[str, str]:
        body = self.kube.add_pod({"metadata": {"name": name}, "spec": {"nodeName": node}})
        return name, str(body["metadata"]["uid"])


class Real:
    def __init__(self, cluster: Cluster) -> None:
        self.world = World(cluster)
        self.login = functools.partial(credentials, str(cluster.kubeconfig))
        self.pods: list[str] = []

    def node(self, suffix: str, labels: dict[str, str] | None = None) -> str:
        return self.world.node(suffix, labels=labels)

    def events_about(self, name: str) -> list[str]:
        events = self.world.core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={name}"
        )
        return [str(event.reason) for event in events.items]

    def client(self) -> KubeApi:
        return Kube(self.login, workers=4)

    def pod(self, name: str, node: str) -> tuple[str, str]:
        full = f"{name}-{self.world.case}"
        # No controller manager here makes the namespace's default ServiceAccount.
        account = {"metadata": {"name": "default"}}
        with contextlib.suppress(client.ApiException):
            self.world.core.create_namespaced_service_account("default", account)
        body = {
            "metadata": {"name": full},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "registry.invalid/c"}],
            },
        }
        created = self.world.core.create_namespaced_pod("default", body)
        self.pods.append(full)
        return full, str(created.metadata.uid)


@pytest.fixture(params=["fake", "real"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "fake":
        yield Fake()
        return
    cluster: Cluster = request.getfixturevalue("crds")
    # The client's loader points $KUBECONFIG at the file; the test's end puts it back.
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    real = Real(cluster)
    try:
        yield real
    finally:
        for pod in real.pods:
            with contextlib.suppress(client.ApiException):
                real.world.core.delete_namespaced_pod(pod, "default", grace_period_seconds=0)
        real.world.cleanup()


Scenario = Callable[[Backend, KubeApi], Coroutine[Any, Any, None]]


def against(backend: Backend, scenario: Scenario) -> None:
    async def run() -> None:
        kube = backend.client()
        try:
            await scenario(backend, kube)
        finally:
            if isinstance(kube, Kube):
                await kube.close()

    asyncio.run(run())


def condition(status: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "lastTransitionTime": stamp(),
        **fields,
    }


async def rejected(call: Coroutine[Any, Any, Any]) -> int | None:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value.status


# --- custom resources' status subresource --------------------------------------------------


def test_a_status_patch_changes_nothing_but_the_status(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("status-only")
        patch = {
            "metadata": {"labels": {"sneaked": "in"}},
            "spec": {"nodeName": "elsewhere"},
            "status": {"conditions": [condition("True", "Healthy", message="ok")]},
        }

        written = await kube.patch_status(api.GNH_PLURAL, name, patch)

        assert "sneaked" not in (written["metadata"].get("labels") or {})
        assert written["spec"] == {"nodeName": name}
        assert [c["reason"] for c in written["status"]["conditions"]] == ["Healthy"]
        assert written["status"]["gpuCount"] == 4

    against(backend, scenario)


def test_a_status_patch_drops_what_the_schema_does_not_name_and_fills_in_defaults(
    backend: Backend,
) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("pruned")
        patch = {
            "status": {
                "notInTheSchema": {"a": 1},
                "conditions": [condition("False", "GpuLost", extra="dropped")],
            }
        }

        written = await kube.patch_status(api.GNH_PLURAL, name, patch)

        assert "notInTheSchema" not in written["status"]
        (stored,) = written["status"]["conditions"]
        assert "extra" not in stored
        assert stored["message"] == ""

    against(backend, scenario)


def test_null_in_a_status_patch_deletes_the_key(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("status-null")
        conditions = {"conditions": [condition("True", "Healthy")]}
        await kube.patch_status(api.GNH_PLURAL, name, {"status": conditions})

        written = await kube.patch_status(api.GNH_PLURAL, name, {"status": {"conditions": None}})

        assert "conditions" not in written["status"]
        assert written["status"]["gpuCount"] == 4

    against(backend, scenario)


# --- Nodes ---------------------------------------------------------------------------------


def test_a_node_patch_leaves_its_status_alone(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("node-status")
        before = await kube.get_node(name)
        patch = {
            "metadata": {"labels": {"navarch.test/patched": "yes"}},
            "status": {"conditions": [condition("False", "Sneaked")]},
        }

        written = await kube.patch_node(name, patch)

        assert written["metadata"]["labels"]["navarch.test/patched"] == "yes"
        assert written["status"] == before["status"]

    against(backend, scenario)


def test_null_in_a_node_patch_deletes_the_key(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("node-null", labels={"navarch.test/a": "1", "navarch.test/b": "2"})

        written = await kube.patch_node(name, {"metadata": {"labels": {"navarch.test/a": None}}})

        labels = written["metadata"]["labels"]
        assert "navarch.test/a" not in labels
        assert labels["navarch.test/b"] == "2"

    against(backend, scenario)


def test_node_conditions_merge_by_type_and_leave_the_spec_alone(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("conditions")
        ours = condition("False", "GpuLost", message="GPU 1 is lost")
        theirs = {**condition("True", "KernelHasNoDeadlock"), "type": "KernelDeadlock"}
        await kube.patch_node_status(name, {"status": {"conditions": [ours]}})
        await kube.patch_node_status(name, {"status": {"conditions": [theirs]}})

        written = await kube.patch_node_status(
            name,
            {
                "spec": {"unschedulable": True},
                "status": {"conditions": [{"type": CONDITION, "status": "True"}]},
            },
        )

        by_type = {c["type"]: c for c in written["status"]["conditions"]}
        assert set(by_type) == {CONDITION, "KernelDeadlock"}
        # Merged, not replaced: what the patch did not name stays.
        assert by_type[CONDITION]["status"] == "True"
        assert by_type[CONDITION]["message"] == "GPU 1 is lost"
        assert not written["spec"].get("unschedulable")

    against(backend, scenario)


# --- versions, conflicts, absence ----------------------------------------------------------


def test_a_stale_resource_version_is_a_conflict(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("conflict")
        read = await kube.get_node(name)
        stale = read["metadata"]["resourceVersion"]
        changed = await kube.patch_node(name, {"metadata": {"labels": {"navarch.test/x": "1"}}})

        stale_patch = {"metadata": {"resourceVersion": stale, "labels": {"navarch.test/x": "2"}}}
        assert await rejected(kube.patch_node(name, stale_patch)) == 409

        fresh = changed["metadata"]["resourceVersion"]
        fresh_patch = {"metadata": {"resourceVersion": fresh, "labels": {"navarch.test/x": "3"}}}
        written = await kube.patch_node(name, fresh_patch)
        assert written["metadata"]["labels"]["navarch.test/x"] == "3"
        assert written["metadata"]["resourceVersion"] != fresh

    against(backend, scenario)


def test_a_patch_that_changes_nothing_keeps_the_resource_version(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("no-op")
        labelled = await kube.patch_node(name, {"metadata": {"labels": {"navarch.test/x": "1"}}})

        again = await kube.patch_node(name, {"metadata": {"labels": {"navarch.test/x": "1"}}})

        version = labelled["metadata"]["resourceVersion"]
        assert again["metadata"]["resourceVersion"] == version

    against(backend, scenario)


def test_a_missing_object_is_not_found(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        missing = "navarch-contract-missing"
        status = {"status": {"conditions": [condition("True", "Healthy")]}}

        assert await rejected(kube.get_node(missing)) == 404
        assert await rejected(kube.patch_node(missing, {"metadata": {"labels": {}}})) == 404
        assert await rejected(kube.patch_node_status(missing, status)) == 404
        assert await rejected(kube.patch_status(api.GNH_PLURAL, missing, status)) == 404

    against(backend, scenario)


# --- lists and Events ----------------------------------------------------------------------


def test_a_list_holds_every_object_and_names_its_version(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("listed")

        for resource in ("nodes", api.GNH_PLURAL):
            items, version = await kube.list(resource)
            assert name in {item["metadata"]["name"] for item in items}
            assert version

    against(backend, scenario)


def test_an_event_is_recorded_about_its_object(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("event")
        node = await kube.get_node(name)
        target = Target.node(name, node["metadata"]["uid"])

        await kube.post_event(target, Event("Warning", "Quarantined", "GPU 1 is lost"), utcnow())

        assert backend.events_about(name) == ["Quarantined"]

    against(backend, scenario)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- drains --------------------------------------------------------------------------------


def names(pods: Any) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)


def test_pods_are_listed_by_node_and_evicted_or_deleted_by_uid(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        node = backend.node("drained")
        other = backend.node("bystander")
        first, first_uid = backend.pod("first", node)
        second, second_uid = backend.pod("second", node)
        third, _ = backend.pod("third", other)
        assert names(await kube.list_pods(node)) == sorted([first, second])

        # A uid that is not the pod's refuses the call: the pod was replaced meanwhile.
        assert await rejected(kube.evict("default", first, "not-its-uid", 0)) == 409
        assert await rejected(kube.delete_pod("default", second, "not-its-uid", 0)) == 409
        assert await rejected(kube.evict("default", "no-such-pod", "uid", 0)) == 404

        await kube.evict("default", first, first_uid, 0)
        await kube.delete_pod("default", second, second_uid, 0)
        assert names(await kube.list_pods(node)) == []
        assert names(await kube.list_pods(other)) == [third]

    against(backend, scenario)


def test_a_drain_record_is_kept_whole_and_removed_by_null(backend: Backend) -> None:
    async def scenario(backend: Backend, kube: KubeApi) -> None:
        name = backend.node("record")
        record = api.DrainStatus(
            phase=api.DrainPhase.BLOCKED,
            action="unhealthy",
            policy="p",
            start_time=datetime(2026, 1, 1, tzinfo=UTC),
            pods_left=1,
            pods=["default/a"],
            blocked_by=["default/budget"],
        ).model_dump(mode="json", by_alias=True)

        written = await kube.patch_status(api.GNH_PLURAL, name, {"status": {"drain": record}})
        assert written["status"]["drain"] == {k: v for k, v in record.items() if v is not None}
        assert written["status"]["gpuCount"] == 4

        cleared = await kube.patch_status(api.GNH_PLURAL, name, {"status": {"drain": None}})
        assert "drain" not in cleared["status"]

    against(backend, scenario)
