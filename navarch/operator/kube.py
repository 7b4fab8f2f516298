"""The operator's Kubernetes API calls, off the event loop.

Calls run in a bounded thread pool, so writes for different nodes proceed side by side while
the event loop keeps evaluating. Calls wait for a worker by priority: a taint or cordon goes
before conditions and verdicts, which go before Events, so a burst of faults is kept out of the
schedule first and reported second. Requests go straight to the client's connection pool as
plain JSON: the operator works on the wire form, and the generated API methods (argument
validation, model serialisation, header negotiation) cost more CPU than the HTTP exchange
itself. Every failure becomes an :class:`~navarch.errors.ApiError` and is counted by verb and
resource.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config

from navarch import api
from navarch.errors import ApiError, ConfigError
from navarch.operator import metrics
from navarch.operator.model import Event
from navarch.wire import format_time

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
COMPONENT = "navarch-operator"
EVENT_NAMESPACE = "default"
"""Events about cluster-scoped objects (Nodes, our resources) live here, as kubelet's do."""
MAX_EVENT_MESSAGE = 1024
REQUEST_TIMEOUT = urllib3.Timeout(connect=5, read=30)
"""A hung call must not hold a worker."""

URGENT, STATUS, REPORT = 0, 1, 2
"""Call priorities: Node quarantines and reads; conditions and verdicts; Events."""

CALM = 0.25
"""Seconds without urgent calls before the others go: a burst of faults arrives spread over
the time the API server takes to accept it, and the gaps between its quarantines must not be
filled with verdicts and Events that compete with the next quarantine for the API server."""


class PriorityGate:
    """Lets at most ``size`` callers through at once, and at most ``caps[p]`` of priority
    ``p``; waiters go by priority, then arrival.

    The caps keep reports from taking the API server's capacity while quarantines wait. Every
    priority but URGENT also waits while an URGENT call runs or waits, and ``calm`` seconds
    after the last one: on a busy API server each report slows the quarantines running beside
    it, and none of them is worth that.
    """

    def __init__(self, size: int, caps: dict[int, int], calm: float = 0.0) -> None:
        self._free = size
        self._caps = caps
        self._calm = calm
        self._calm_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._running: dict[int, int] = dict.fromkeys(caps, 0)
        self._waiting: dict[int, deque[asyncio.Future[None]]] = {p: deque() for p in sorted(caps)}

    async def acquire(self, priority: int) -> None:
        if self._admits(priority) and not any(
            self._waiting[p] for p in self._waiting if p <= priority
        ):
            self._take(priority)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(future)
        try:
            await future
        except asyncio.CancelledError:
            # Granted just as the waiter was cancelled: hand the slot on.
            if future.done() and not future.cancelled():
                self.release(priority)
            # A cancelled waiter may already have been skipped and dropped by a grant.
            elif future in self._waiting[priority]:
                self._waiting[priority].remove(future)
                # Callers that queued behind it, while the gate was free, go now.
                self._grant()
            raise

    def release(self, priority: int) -> None:
        self._free += 1
        self._running[priority] -= 1
        if priority == URGENT and self._calm and not self._urgent():
            loop = asyncio.get_running_loop()
            self._calm_at = loop.time() + self._calm
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._calm_at, self._grant)
        self._grant()

    def _grant(self) -> None:
        for priority, waiters in self._waiting.items():
            while waiters and self._admits(priority):
                waiter = waiters.popleft()
                if not waiter.done():
                    self._take(priority)
                    waiter.set_result(None)

    def _urgent(self) -> bool:
        return bool(self._running[URGENT] or self._waiting[URGENT])

    def _admits(self, priority: int) -> bool:
        if self._free <= 0 or self._running[priority] >= self._caps[priority]:
            return False
        if priority == URGENT:
            return True
        return not self._urgent() and asyncio.get_running_loop().time() >= self._calm_at

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
        self._configuration = configuration
        self._client = client.ApiClient(configuration)
        # The generated client's pool carries the TLS, proxy and retry settings of the
        # configuration; the operator sends its own requests through it.
        self._http: urllib3.PoolManager = self._client.rest_client.pool_manager
        self._host = configuration.host.rstrip("/")
        self._headers = {"Accept": "application/json", **self._client.default_headers}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._gate = PriorityGate(
            workers,
            {URGENT: workers, STATUS: max(1, workers // 4), REPORT: max(1, workers // 16)},
            CALM,
        )
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.available = True
        """Whether the API server answered the last call (any answer but 429 or 5xx)."""
        self.on_availability: Callable[[bool], None] | None = None
        """Called on the event loop after every call with what it showed of ``available``."""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]

    def _request(self, method: str, path: str, body: Any | None, content_type: str | None) -> Any:
        headers = dict(self._headers)
        # Asked for on every call: it runs the configuration's token refresh (in-cluster
        # ServiceAccount tokens rotate).
        token = self._configuration.auth_settings().get("BearerToken")
        if token:
            headers[token["key"]] = token["value"]
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body)
        try:
            response = self._http.request(
                method, self._host + path, body=data, headers=headers, timeout=REQUEST_TIMEOUT
            )
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(None, str(err)) from err
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _reason(response))
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            return {}
        return json.loads(response.data) if response.data else {}

    async def _call(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        *,
        body: Any | None = None,
        content_type: str | None = None,
        priority: int = URGENT,
    ) -> Any:
        await self._gate.acquire(priority)
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._request, method, path, body, content_type
            )
        except ApiError as err:
            metrics.API_ERRORS.labels(verb=verb, resource=resource, code=str(err.status)).inc()
            self._answered(not unavailable(err))
            raise
        finally:
            self._gate.release(priority)
        self._answered(True)
        return result

    def _answered(self, available: bool) -> None:
        self.available = available
        if self.on_availability is not None:
            self.on_availability(available)

    # --- reads -----------------------------------------------------------------------------

    async def check(self) -> None:
        """Ask the API server whether it is ready to serve, etcd included (``/readyz``, open to
        every client by Kubernetes' default RBAC); raises ApiError when it is not."""
        await self._call("get", "readyz", "GET", "/readyz")

    async def list(self, resource: str) -> tuple[list[dict[str, Any]], str | None]:
        """All objects of ``nodes``, ``gpunodehealths`` or ``gpuhealthpolicies``, and the
        resourceVersion of the list."""
        path = "/api/v1/nodes" if resource == "nodes" else _custom(resource)
        body = await self._call("list", resource, "GET", path)
        return list(body.get("items") or []), (body.get("metadata") or {}).get("resourceVersion")

    async def get_node(self, name: str) -> dict[str, Any]:
        return dict(await self._call("get", "nodes", "GET", _node(name)))

    # --- writes ----------------------------------------------------------------------------

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            await self._call("patch", "nodes", "PATCH", _node(name), body=patch, content_type=MERGE)
        )

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        path = _node(name) + "/status"
        return dict(
            await self._call(
                "patch",
                "nodes/status",
                "PATCH",
                path,
                body=patch,
                content_type=STRATEGIC,
                priority=STATUS,
            )
        )

    async def patch_status(
        self, plural: str, name: str, patch: dict[str, Any], priority: int = STATUS
    ) -> dict[str, Any]:
        path = f"{_custom(plural)}/{quote(name, safe='')}/status"
        return dict(
            await self._call(
                "patch",
                f"{plural}/status",
                "PATCH",
                path,
                body=patch,
                content_type=MERGE,
                priority=priority,
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
        path = f"/api/v1/namespaces/{EVENT_NAMESPACE}/events"
        await self._call("create", "events", "POST", path, body=body, priority=REPORT)


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


def unavailable(err: ApiError) -> bool:
    """Whether a failed call means the API server is not serving: unreachable, throttling
    (a starting server answers 429 while its storage initialises) or failing (5xx: a server
    without etcd answers 500 or 504)."""
    return err.status is None or err.status == 429 or err.status >= 500


def _node(name: str) -> str:
    return f"/api/v1/nodes/{quote(name, safe='')}"


def _custom(plural: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/{plural}"


def _reason(response: urllib3.BaseHTTPResponse) -> str:
    """The API server's message for a failed call (its Status object), else the HTTP reason."""
    try:
        return str(json.loads(response.data or b"").get("message") or response.reason)
    except (ValueError, AttributeError):
        return str(response.reason)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 1] + "…"


def _seconds(now: datetime) -> str:
    # core/v1 Event timestamps are metav1.Time, which has second precision on the wire.
    return format_time(now.replace(microsecond=0)).replace(".000000Z", "Z")
