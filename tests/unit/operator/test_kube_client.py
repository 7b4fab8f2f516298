"""The operator's client on its own: what it sends, what a refusal becomes, how it renews its
credentials and its session, and where its credentials come from.

Calls go to a throwaway aiohttp server on 127.0.0.1, on the test's event loop, that answers
what each test scripts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from navarch.errors import ApiError, ConfigError
from navarch.operator import kube
from navarch.operator.kube import Kube, Target
from navarch.operator.model import Event
from navarch.testing.controlplane import free_port


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Server:
    """Answers each request with the next scripted reply, or the rule's."""

    replies: list[Reply] = field(default_factory=list)
    rule: Callable[[web.Request], Reply] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": json.loads(body) if body else None,
            }
        )
        reply = self.rule(request) if self.rule else self.replies.pop(0)
        if isinstance(reply.body, bytes):
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


def served(test: Callable[[Server], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run ``test`` on a loop beside a fresh server."""

    def run() -> None:
        async def scenario() -> None:
            server = Server()
            app = web.Application()
            app.router.add_route("*", "/{path:.*}", server.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            server.url = f"http://127.0.0.1:{port}"
            try:
                await test(server)
            finally:
                await runner.cleanup()

        asyncio.run(scenario())

    run.__name__ = test.__name__
    return run


class Logins:
    """The credentials a test hands out, one after the other, the last one for good."""

    def __init__(self, server: Server, *tokens: str) -> None:
        self.server = server
        self.tokens = list(tokens)
        self.count = 0

    def __call__(self) -> kopf.ConnectionInfo:
        token = self.tokens[min(self.count, len(self.tokens) - 1)]
        self.count += 1
        return kopf.ConnectionInfo(server=self.server.url + "/", token=token)


def status_body(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "message": message, "code": code}


def errors_counted(verb: str, resource: str, code: str) -> float:
    labels = {"verb": verb, "resource": resource, "code": code}
    return REGISTRY.get_sample_value("navarch_api_errors_total", labels) or 0.0


@served
async def test_calls_send_json_with_the_credentials_and_return_the_answer(server: Server) -> None:
    server.replies = [Reply(body={"metadata": {"name": "n1"}}), Reply(body={"kind": "Node"})]
    client = Kube(Logins(server, "t0ken"), workers=2)

    assert await client.get_node("n1") == {"metadata": {"name": "n1"}}
    assert await client.patch_node("n1", {"spec": {"unschedulable": True}}) == {"kind": "Node"}
    await client.close()

    get, patch = server.requests
    assert (get["method"], get["path"]) == ("GET", "/api/v1/nodes/n1")
    assert get["headers"]["Authorization"] == "Bearer t0ken"
    assert get["headers"]["User-Agent"] == kube.USER_AGENT
    assert patch["headers"]["Content-Type"] == kube.MERGE
    assert patch["body"] == {"spec": {"unschedulable": True}}


@served
async def test_a_refusal_is_an_api_error_with_the_servers_message_and_is_counted(
    server: Server,
) -> None:
    server.replies = [
        Reply(404, status_body(404, 'nodes "n9" not found')),
        Reply(429, status_body(429, "storage is (re)initializing"), {"Retry-After": "2"}),
    ]
    seen: list[bool] = []
    client = Kube(Logins(server, "t"), workers=2)
    client.on_availability = seen.append
    before = errors_counted("get", "nodes", "404")

    with pytest.raises(ApiError) as missing:
        await client.get_node("n9")
    with pytest.raises(ApiError) as throttled:
        await client.list("nodes")
    await client.close()

    assert (missing.value.status, missing.value.message) == (404, 'nodes "n9" not found')
    assert (throttled.value.status, throttled.value.retry_after) == (429, 2.0)
    assert errors_counted("get", "nodes", "404") == before + 1
    # A 404 is an answer; a 429 means the server is not serving yet.
    assert seen == [True, False]
    assert not client.available


@served
async def test_a_budgets_refusal_names_it_and_says_nothing_of_the_servers_health(
    server: Server,
) -> None:
    refusal = status_body(429, "Cannot evict pod as it would violate the pod's disruption budget.")
    refusal["details"] = {
        "causes": [
            {
                "reason": "DisruptionBudget",
                "message": "The disruption budget serve needs 2 healthy pods and has 2 currently",
            }
        ]
    }
    server.replies = [Reply(429, refusal), Reply(201, {}), Reply(200, {})]
    seen: list[bool] = []
    client = Kube(Logins(server, "t"), workers=2)
    client.on_availability = seen.append

    with pytest.raises(ApiError) as refused:
        await client.evict("work", "serve-0", "uid-0", None)
    await client.evict("work", "serve-0", "uid-0", 30)
    await client.delete_pod("work", "serve-1", "uid-1", 0)
    await client.close()

    assert refused.value.disruption_budget
    assert "serve needs 2" in refused.value.causes[0][1]
    assert seen == [True, True, True]
    first, second, delete = server.requests
    assert (first["method"], first["path"]) == (
        "POST",
        "/api/v1/namespaces/work/pods/serve-0/eviction",
    )
    assert first["body"]["deleteOptions"] == {"preconditions": {"uid": "uid-0"}}
    assert second["body"]["deleteOptions"]["gracePeriodSeconds"] == 30
    assert (delete["method"], delete["path"]) == ("DELETE", "/api/v1/namespaces/work/pods/serve-1")
    assert delete["body"]["preconditions"] == {"uid": "uid-1"}
    assert delete["body"]["gracePeriodSeconds"] == 0


def test_an_unreachable_server_is_an_api_error_without_status() -> None:
    async def scenario() -> ApiError:
        info = kopf.ConnectionInfo(server="http://127.0.0.1:9")
        client = Kube(lambda: info, workers=1)
        try:
            with pytest.raises(ApiError) as caught:
                await client.check()
            return caught.value
        finally:
            await client.close()

    error = asyncio.run(scenario())
    assert error.status is None
    assert kube.unavailable(error)


@served
async def test_a_401_reads_the_credentials_again_and_tries_once_more_with_new_ones(
    server: Server,
) -> None:
    def rule(request: web.Request) -> Reply:
        if request.headers.get("Authorization") == "Bearer rotated":
            return Reply(body={"kind": "Node"})
        return Reply(401, status_body(401, "Unauthorized"))

    server.rule = rule
    client = Kube(Logins(server, "expired", "rotated"), workers=1)

    assert await client.get_node("n1") == {"kind": "Node"}
    await client.close()

    tokens = [r["headers"]["Authorization"] for r in server.requests]
    assert tokens == ["Bearer expired", "Bearer rotated"]


@served
async def test_a_401_with_credentials_that_did_not_change_is_not_tried_again(
    server: Server,
) -> None:
    server.replies = [Reply(401, status_body(401, "Unauthorized"))]
    client = Kube(Logins(server, "revoked"), workers=1)

    with pytest.raises(ApiError) as caught:
        await client.get_node("n1")
    await client.close()

    assert caught.value.status == 401
    assert len(server.requests) == 1


@served
async def test_kopf_and_the_client_share_one_session_until_kopf_closes_it(
    server: Server,
) -> None:
    server.rule = lambda request: Reply(body={"kind": "Node"})
    logins = Logins(server, "first", "second")
    client = Kube(logins, workers=1)

    given = client.session()
    assert given is not None
    await client.get_node("n1")
    assert client.session() == given

    # kopf closes the session it holds when the API server refuses it, then logs in again.
    await given.aiohttp_session.close()
    await client.get_node("n1")
    again = client.session()
    await client.close()

    assert again is not None
    assert again.aiohttp_session is not given.aiohttp_session
    assert [r["headers"]["Authorization"] for r in server.requests] == [
        "Bearer first",
        "Bearer second",
    ]


@served
async def test_kopf_gets_no_session_when_the_refused_credentials_are_read_again_unchanged(
    server: Server,
) -> None:
    client = Kube(Logins(server, "same"), workers=1)
    given = client.session()
    assert given is not None

    await given.aiohttp_session.close()
    again = client.session()
    await client.close()

    assert again is None


@served
async def test_an_event_names_its_object_and_keeps_to_the_apis_limits(server: Server) -> None:
    server.replies = [Reply(201)]
    client = Kube(Logins(server, "t"), workers=1)
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    await client.post_event(Target.node("n1", "uid-1"), Event("Warning", "Why", "x" * 2000), at)
    await client.close()

    (post,) = server.requests
    body = post["body"]
    assert post["path"] == "/api/v1/namespaces/default/events"
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": "n1",
        "uid": "uid-1",
    }
    assert (body["type"], body["reason"]) == ("Warning", "Why")
    assert len(body["message"]) == kube.MAX_EVENT_MESSAGE
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-01-02T03:04:05Z"


# --- credentials ---------------------------------------------------------------------------


@pytest.fixture
def outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    yield


def test_the_given_kubeconfig_is_read_by_kopfs_loader(
    tmp_path: Path, outside_a_pod: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://10.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )

    info = kube.credentials(str(path))

    assert (info.server, info.token) == ("http://10.0.0.1:6443", "t0ken")


def test_a_kubeconfig_without_a_server_is_a_config_error(
    tmp_path: Path, outside_a_pod: None
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )

    with pytest.raises(ConfigError, match="no server"):
        kube.credentials(str(path))


@pytest.mark.parametrize(
    ("host", "server"),
    [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")],
)
def test_in_a_pod_the_service_account_reaches_the_api_server_by_its_address(
    monkeypatch: pytest.MonkeyPatch, host: str, server: str
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    def service_account(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="sa-token")

    monkeypatch.setattr(kopf, "login_with_service_account", service_account)

    info = kube.credentials(None)

    assert (info.server, info.token) == (server, "sa-token")
