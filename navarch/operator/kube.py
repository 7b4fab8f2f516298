"""The operator's Kubernetes API calls, on kopf's own HTTP stack.

One aiohttp session serves the whole process: kopf's watches run on it (the login handler
hands it to kopf) and so do the operator's own calls, so there is one connection pool and one
TLS setup, and no thread pool beside the event loop. The credentials come from kopf's loaders:
the Pod's ServiceAccount, else the kubeconfig.

Credentials are read again whenever they stop working. A call here that the API server
answers 401 reads them again and, if they changed (the kubelet rotates ServiceAccount tokens
about hourly), tries once more; kopf, when one of its requests is answered 401, closes the
session and logs in again, which opens a new one with what is on disk then.

Calls wait for a slot by priority: a taint or cordon goes before conditions and verdicts,
which go before Events, so a burst of faults is kept out of the schedule first and reported
second. Requests and answers are plain JSON: the operator works on the wire form. Every
failure becomes an :class:`~navarch.errors.ApiError` and is counted by verb and resource.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import kopf

from navarch import __version__, api
from navarch.errors import ApiError, ConfigError, NavarchError
from navarch.operator import metrics
from navarch.operator.model import Event
from navarch.wire import format_time

JSON = "application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
COMPONENT = "navarch-operator"
USER_AGENT = f"{COMPONENT}/{__version__}"
EVENT_NAMESPACE = "default"
"""Events about cluster-scoped objects (Nodes, our resources) live here, as kubelet's do."""
MAX_EVENT_MESSAGE = 1024
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
"""A hung call must not hold a slot."""
KEEPALIVE = 60.0
"""Seconds an idle connection is kept: across the quiet between bursts of faults, so a burst
does not wait for new TLS handshakes, and under the API server's own idle timeout (90 s)."""
PARSE_OFF_LOOP = 1 << 20
"""Answers larger than this (lists of the fleet) are parsed in a thread: parsing megabytes
would hold the event loop, and with it the probes and kopf's watches, for tenths of a second."""

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


def credentials(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """The operator's credentials, read by kopf's own loaders: from ``kubeconfig`` if given,
    else the ServiceAccount's when running in a Pod, else ``$KUBECONFIG`` or ``~/.kube/config``.
    Raises ConfigError with the loader's reason."""
    settings = kopf.OperatorSettings()
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    try:
        if kubeconfig is None and host and port:
            info = kopf.login_with_service_account(settings=settings)
            if info is None:
                raise ConfigError("cluster access", "no ServiceAccount token in this Pod")
            # kopf names the API server by its DNS name; the environment has its address, as
            # every in-cluster client uses it, so cluster DNS is not needed to reach it.
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        else:
            if kubeconfig is not None:
                if not os.path.isfile(kubeconfig):
                    raise ConfigError("--kubeconfig", f"{kubeconfig} is not a file")
                # kopf's loader takes the path from the environment only.
                os.environ["KUBECONFIG"] = kubeconfig
            info = kopf.login_with_kubeconfig(settings=settings)
            if info is None:
                raise ConfigError(
                    "--kubeconfig", "none given, not in a Pod, and no $KUBECONFIG or ~/.kube/config"
                )
            if not info.server:
                raise ConfigError("--kubeconfig", "the current context's cluster has no server")
        # Built once here so that unusable TLS material stops the operator at start.
        info.as_ssl_context()
    except NavarchError:
        raise
    # The loader raises whatever its YAML, file, base64 and TLS layers raise for a broken
    # file; all of them mean the same: these are not usable credentials.
    except Exception as err:
        raise ConfigError("--kubeconfig", str(err) or type(err).__name__) from err
    return info


class _SessionClosedError(Exception):
    """The session was closed while a call was on it."""


class KubeApi(Protocol):
    """The API calls the reconcile loop makes: :class:`Kube`, and the unit tests' fake."""

    available: bool
    """Whether the API server answered the last call (any answer but 429 or 5xx)."""
    on_availability: Callable[[bool], None] | None
    """Called on the event loop after every call with what it showed of ``available``."""

    async def check(self) -> None: ...

    async def list(self, resource: str) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_node(self, name: str) -> dict[str, Any]: ...

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    async def patch_status(
        self, plural: str, name: str, patch: dict[str, Any], priority: int = STATUS
    ) -> dict[str, Any]: ...

    async def post_event(self, target: Target, event: Event, now: datetime) -> None: ...

    async def list_pods(self, node: str) -> Sequence[dict[str, Any]]: ...

    async def evict(self, namespace: str, name: str, uid: str, grace: int | None) -> None: ...

    async def delete_pod(self, namespace: str, name: str, uid: str, grace: int | None) -> None: ...

    async def get(self, path: str, resource: str) -> dict[str, Any]: ...

    async def create(self, path: str, body: dict[str, Any], resource: str) -> dict[str, Any]: ...

    async def delete(self, path: str, resource: str) -> None: ...


class Kube(KubeApi):
    """The operator's client; see the module's description."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], workers: int) -> None:
        """``login`` reads the credentials (``credentials``, bound to the operator's flags);
        it is called again whenever they stop working."""
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._opened_with: kopf.ConnectionInfo | None = None
        self._server = ""
        self._authorization: dict[str, str] = {}
        """Sent with every call here: the newest credentials, which a 401 may have renewed
        since the session was opened."""
        self._gate = PriorityGate(
            workers,
            {URGENT: workers, STATUS: max(1, workers // 4), REPORT: max(1, workers // 16)},
            CALM,
        )
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.available = True
        self.on_availability: Callable[[bool], None] | None = None

    # --- the session -----------------------------------------------------------------------

    def session(self) -> kopf.AiohttpSession | None:
        """The session for kopf's login handler, opened if there is none (kopf closes the one
        it holds when the API server refuses it). None, which stops kopf as its own login
        does, when credentials read again are the same as those just refused."""
        refused = self._session is not None and self._session.closed
        before = self._opened_with
        session = self._open()
        if refused and self._opened_with == before:
            return None
        return kopf.AiohttpSession(server=self._server, aiohttp_session=session)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is not None and not self._session.closed:
            return self._session
        try:
            info = self._login()
            tls = info.as_ssl_context()
        except (NavarchError, OSError, ValueError) as err:
            raise ApiError(None, f"cannot read the credentials: {err}") from err
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls, keepalive_timeout=KEEPALIVE),
            headers={**info.as_http_headers(), "Accept": JSON, "User-Agent": USER_AGENT},
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )
        self._opened_with = info
        self._server = info.server.rstrip("/")
        self._authorization = info.as_http_headers()
        return self._session

    def _renewed(self) -> bool:
        """Read the credentials again; whether they now say something else."""
        try:
            authorization = self._login().as_http_headers()
        except (NavarchError, OSError, ValueError):
            return False
        if authorization == self._authorization:
            return False
        self._authorization = authorization
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # --- requests --------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: Any | None = None, content_type: str = JSON
    ) -> Any:
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            session = self._open()
            try:
                status, answer, headers = await self._exchange(
                    session, method, path, data, content_type
                )
            except _SessionClosedError as err:
                # kopf closed the session under this call, to log in again: once more, on a
                # session opened with the credentials as they are now.
                if attempt == 1:
                    continue
                raise ApiError(None, "the session closed under the call twice") from err
            if status == 401 and attempt == 1 and self._renewed():
                continue
            break
        if not 200 <= status < 300:
            raise ApiError.from_response(status, answer, headers)
        if not answer or not headers.get("Content-Type", "").startswith(JSON):
            return {}
        if len(answer) > PARSE_OFF_LOOP:
            return await asyncio.to_thread(json.loads, answer)
        return json.loads(answer)

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        data: str | None,
        content_type: str,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        headers = dict(self._authorization)
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            async with session.request(
                method, self._server + path, data=data, headers=headers, timeout=REQUEST_TIMEOUT
            ) as response:
                return response.status, await response.read(), response.headers
        # aiohttp refuses a request on a closed session with RuntimeError.
        except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as err:
            if session.closed:
                raise _SessionClosedError from err
            if isinstance(err, RuntimeError):
                raise
            raise ApiError(None, str(err) or type(err).__name__) from err

    async def _call(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        *,
        body: Any | None = None,
        content_type: str = JSON,
        priority: int = URGENT,
    ) -> Any:
        await self._gate.acquire(priority)
        try:
            result = await self._request(method, path, body, content_type)
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

    # --- drains ----------------------------------------------------------------------------

    async def list_pods(self, node: str) -> Sequence[dict[str, Any]]:
        """The pods bound to ``node``, by field selector: the operator keeps no cache of the
        cluster's pods, and a drain needs only the node's."""
        selector = quote(f"spec.nodeName={node}", safe="")
        body = await self._call(
            "list", "pods", "GET", f"/api/v1/pods?fieldSelector={selector}", priority=STATUS
        )
        return list(body.get("items") or [])

    async def evict(self, namespace: str, name: str, uid: str, grace: int | None) -> None:
        """Evict one pod (policy/v1 Eviction). The uid precondition keeps a pod recreated under
        the same name, which the drain has not looked at, from being evicted in its place."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": _delete_options(uid, grace),
        }
        await self._call(
            "create",
            "pods/eviction",
            "POST",
            _pod(namespace, name) + "/eviction",
            body=body,
            priority=STATUS,
        )

    async def delete_pod(self, namespace: str, name: str, uid: str, grace: int | None) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", **_delete_options(uid, grace)}
        await self._call(
            "delete", "pods", "DELETE", _pod(namespace, name), body=body, priority=STATUS
        )

    # --- remediation: Jobs, templates and their objects, by path ----------------------------

    async def get(self, path: str, resource: str) -> dict[str, Any]:
        """GET ``path`` (an object, or a discovery document); ``resource`` names it in metrics."""
        return dict(await self._call("get", resource, "GET", path, priority=STATUS))

    async def create(self, path: str, body: dict[str, Any], resource: str) -> dict[str, Any]:
        """POST ``body`` to the collection at ``path``."""
        return dict(await self._call("create", resource, "POST", path, body=body, priority=STATUS))

    async def delete(self, path: str, resource: str) -> None:
        """DELETE ``path``, its dependents (a Job's pods) in the background."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        await self._call("delete", resource, "DELETE", path, body=body, priority=STATUS)

    async def review(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a TokenReview or SubjectAccessReview and return the server's answer. Not
        gated: a metrics scrape must not wait behind a burst of quarantines."""
        resource = path.rsplit("/", 1)[-1]
        try:
            return dict(await self._request("POST", path, body))
        except ApiError as err:
            metrics.API_ERRORS.labels(verb="create", resource=resource, code=str(err.status)).inc()
            raise


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
    if err.disruption_budget:
        return False
    return err.status is None or err.status == 429 or err.status >= 500


def _node(name: str) -> str:
    return f"/api/v1/nodes/{quote(name, safe='')}"


def _pod(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def _delete_options(uid: str, grace: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"preconditions": {"uid": uid}}
    if grace is not None:
        options["gracePeriodSeconds"] = grace
    return options


def _custom(plural: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/{plural}"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 1] + "…"


def _seconds(now: datetime) -> str:
    # core/v1 Event timestamps are metav1.Time, which has second precision on the wire.
    return format_time(now.replace(microsecond=0)).replace(".000000Z", "Z")
