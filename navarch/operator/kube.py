"""The operator's Kubernetes API calls, off the event loop.

The official (synchronous) client runs in a bounded thread pool, so writes for different nodes
proceed side by side while the event loop keeps evaluating. Calls wait for a worker by
priority: a taint or cordon goes before conditions and verdicts, which go before Events, so a
burst of faults is kept out of the schedule first and reported second. Bodies go and come as
plain JSON (``_preload_content=False``): the operator works on the wire form, and skipping the
client's model classes saves most of the CPU a call costs. Every failure becomes an
:class:`~navarch.errors.ApiError` and is counted by verb and resource.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from navarch import api
from navarch.errors import ApiError, ConfigError
from navarch.operator import metrics
from navarch.operator.planner import Event
from navarch.wire import format_time

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
COMPONENT = "navarch-operator"
EVENT_NAMESPACE = "default"
"""Events about cluster-scoped objects (Nodes, our resources) live here, as kubelet's do."""
MAX_EVENT_MESSAGE = 1024
REQUEST_TIMEOUT = (5, 30)
"""Connect and read timeouts (seconds) of one call: a hung call must not hold a worker."""

URGENT, STATUS, REPORT = 0, 1, 2
"""Call priorities: Node quarantines and reads; conditions and verdicts; Events."""


class PriorityGate:
    """Lets at most ``size`` callers through at once, and at most ``caps[p]`` of priority
    ``p``; waiters go by priority, then arrival.

    The caps keep reports from taking the API server's capacity while quarantines wait.
    """

    def __init__(self, size: int, caps: dict[int, int]) -> None:
        self._free = size
        self._caps = caps
        self._running: dict[int, int] = dict.fromkeys(caps, 0)
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    async def acquire(self, priority: int) -> None:
        if not self._waiting and self._admits(priority):
            self._take(priority)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), future))
        try:
            await future
        except asyncio.CancelledError:
            # Granted just as the waiter was cancelled: hand the slot on.
            if future.done() and not future.cancelled():
                self.release(priority)
            else:
                self._waiting = [w for w in self._waiting if w[2] is not future]
                heapq.heapify(self._waiting)
            raise

    def release(self, priority: int) -> None:
        self._free += 1
        self._running[priority] -= 1
        held: list[tuple[int, int, asyncio.Future[None]]] = []
        while self._waiting and self._free:
            waiter = heapq.heappop(self._waiting)
            if waiter[2].done():
                continue
            if not self._admits(waiter[0]):
                held.append(waiter)
                continue
            self._take(waiter[0])
            waiter[2].set_result(None)
        for waiter in held:
            heapq.heappush(self._waiting, waiter)

    def _admits(self, priority: int) -> bool:
        return self._free > 0 and self._running[priority] < self._caps[priority]

    def _take(self, priority: int) -> None:
        self._free -= 1
        self._running[priority] += 1


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """The client configuration: from ``kubeconfig`` if given, else in-cluster when running in
    a Pod, else the default kubeconfig. Raises ConfigError with the loader's reason."""
    configuration = client.Configuration()
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise ConfigError("--kubeconfig", f"{kubeconfig} is not a file")
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    # The loaders raise whatever their YAML, file and base64 layers raise for a broken file;
    # all of them mean the same: this is not a usable kubeconfig.
    except Exception as err:
        raise ConfigError("--kubeconfig", str(err) or type(err).__name__) from err
    return configuration


class Kube:
    def __init__(self, configuration: client.Configuration, workers: int) -> None:
        configuration.connection_pool_maxsize = workers
        self._client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._client)
        self._custom = client.CustomObjectsApi(self._client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._gate = PriorityGate(
            workers, {URGENT: workers, STATUS: max(1, workers // 4), REPORT: max(1, workers // 16)}
        )
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]

    async def _call(
        self, verb: str, resource: str, call: Callable[[], Any], priority: int = URGENT
    ) -> Any:
        def run() -> Any:
            try:
                response = call()
                return json.loads(response.data) if response.data else {}
            except ApiException as err:
                raise ApiError(err.status, _reason(err)) from err
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise ApiError(None, str(err)) from err

        await self._gate.acquire(priority)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except ApiError as err:
            metrics.API_ERRORS.labels(verb=verb, resource=resource, code=str(err.status)).inc()
            raise
        finally:
            self._gate.release(priority)

    # --- reads -----------------------------------------------------------------------------

    async def list(self, resource: str) -> tuple[list[dict[str, Any]], str | None]:
        """All objects of ``nodes``, ``gpunodehealths`` or ``gpuhealthpolicies``, and the
        resourceVersion of the list."""
        if resource == "nodes":
            body = await self._call("list", resource, lambda: self._core.list_node(**_RAW))
        else:
            body = await self._call(
                "list",
                resource,
                lambda: self._custom.list_cluster_custom_object(
                    api.GROUP, api.VERSION, resource, **_RAW
                ),
            )
        return list(body.get("items") or []), (body.get("metadata") or {}).get("resourceVersion")

    async def get_node(self, name: str) -> dict[str, Any]:
        return dict(await self._call("get", "nodes", lambda: self._core.read_node(name, **_RAW)))

    # --- writes ----------------------------------------------------------------------------

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            await self._call(
                "patch",
                "nodes",
                lambda: self._core.patch_node(name, patch, _content_type=MERGE, **_RAW),
            )
        )

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            await self._call(
                "patch",
                "nodes/status",
                lambda: self._core.patch_node_status(name, patch, _content_type=STRATEGIC, **_RAW),
                STATUS,
            )
        )

    async def patch_status(
        self, plural: str, name: str, patch: dict[str, Any], priority: int = STATUS
    ) -> dict[str, Any]:
        return dict(
            await self._call(
                "patch",
                f"{plural}/status",
                lambda: self._custom.patch_cluster_custom_object_status(
                    api.GROUP, api.VERSION, plural, name, patch, _content_type=MERGE, **_RAW
                ),
                priority,
            )
        )

    async def post_event(self, target: Target, event: Event, now: datetime) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{target.name}.{uuid.uuid4().hex[:16]}",
                "namespace": EVENT_NAMESPACE,
            },
            "involvedObject": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "name": target.name,
                "uid": target.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": _clip(event.message),
            "firstTimestamp": _seconds(now),
            "lastTimestamp": _seconds(now),
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
        }
        await self._call(
            "create",
            "events",
            lambda: self._core.create_namespaced_event(EVENT_NAMESPACE, body, **_RAW),
            REPORT,
        )


@dataclass(frozen=True)
class Target:
    """The object an Event is about."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def node(cls, name: str, uid: str) -> Target:
        return cls("v1", "Node", name, uid)

    @classmethod
    def health(cls, name: str, uid: str) -> Target:
        return cls(api.API_VERSION, api.GNH_KIND, name, uid)

    @classmethod
    def policy(cls, name: str, uid: str) -> Target:
        return cls(api.API_VERSION, api.GHP_KIND, name, uid)


_RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}


def _reason(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "").get("message") or err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 1] + "…"


def _seconds(now: datetime) -> str:
    # core/v1 Event timestamps are metav1.Time, which has second precision on the wire.
    return format_time(now.replace(microsecond=0)).replace(".000000Z", "Z")
