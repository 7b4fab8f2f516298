"""Kubeconfig and in-cluster credentials, token re-reading, and API error mapping.

Requests go to a throwaway HTTP(S) server on 127.0.0.1 that answers what each test scripts.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from navarch.errors import ApiError, ConfigError
from navarch.node_agent.kube import (
    Credentials,
    KubeClient,
    TokenSource,
    in_cluster,
    load_kubeconfig,
)
from navarch.testing.controlplane import Pki, free_port

# --- kubeconfig ----------------------------------------------------------------------------


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://other:6443"}},
            {"name": "local", "cluster": cluster},
        ],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "here", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "here",
    }
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def test_kubeconfig_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    config = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://10.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
        {"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"},
    )

    credentials = load_kubeconfig(str(config))

    assert credentials == Credentials(
        server="https://10.0.0.1:6443",
        ca_file=str(tmp_path / "pki" / "ca.crt"),
        cert_file=str(tmp_path / "pki" / "admin.crt"),
        key_file="/abs/admin.key",
    )


def test_kubeconfig_inline_data_and_tokens(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    config = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://k8s:443", "certificate-authority-data": b64("CA PEM")},
        {
            "client-certificate-data": b64("CERT"),
            "client-key-data": b64("KEY"),
            "token": "abc",
            "tokenFile": "token",
        },
    )

    credentials = load_kubeconfig(str(config))

    assert credentials.ca_data == "CA PEM"
    assert (credentials.cert_data, credentials.key_data) == (b"CERT", b"KEY")
    assert (credentials.token, credentials.token_file) == ("abc", str(tmp_path / "token"))


@pytest.mark.parametrize(
    ("cluster", "user", "problem"),
    [
        ({"server": "k8s:443"}, {}, r"server must be an http\(s\) URL"),
        ({"server": "https://k8s", "insecure-skip-tls-verify": True}, {}, "not supported"),
        ({"server": "https://k8s"}, {"exec": {"command": "aws"}}, "'exec' are not supported"),
        ({"server": "https://k8s", "certificate-authority-data": "%%%"}, {}, "not valid base64"),
    ],
)
def test_unusable_kubeconfigs_are_config_errors(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], problem: str
) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster, user)

    with pytest.raises(ConfigError, match=problem):
        load_kubeconfig(str(config))


def test_a_missing_or_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_kubeconfig(str(tmp_path / "nope"))
    (tmp_path / "bad").write_text("current-context: x\ncontexts: []\n")
    with pytest.raises(ConfigError, match="no entry named 'x'"):
        load_kubeconfig(str(tmp_path / "bad"))
    (tmp_path / "worse").write_text("{unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_kubeconfig(str(tmp_path / "worse"))


# --- in cluster ----------------------------------------------------------------------------


def service_account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("CA")
    return tmp_path


@pytest.mark.parametrize(
    ("host", "server"),
    [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")],
)
def test_in_cluster_credentials(tmp_path: Path, host: str, server: str) -> None:
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443"}

    credentials = in_cluster(env, service_account(tmp_path))

    assert credentials == Credentials(
        server=server, ca_file=str(tmp_path / "ca.crt"), token_file=str(tmp_path / "token")
    )


def test_outside_a_pod_without_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not running in a pod"):
        in_cluster({}, service_account(tmp_path))
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="token is missing"):
        in_cluster(env, tmp_path / "empty")


# --- token files ---------------------------------------------------------------------------


def test_a_rotated_token_file_is_read_again(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    source = TokenSource(path=str(token))
    assert source.current() == "first"

    token.write_text("second-and-longer\n")

    assert source.current() == "second-and-longer"


def test_a_token_swapped_through_a_symlink_is_read_again(tmp_path: Path) -> None:
    # The kubelet's projected volumes swap a "..data" symlink to a new directory.
    for name, text in (("v1", "old"), ("v2", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "token").write_text(text)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "token").symlink_to("..data/token")
    source = TokenSource(path=str(tmp_path / "token"))
    assert source.current() == "old"

    (tmp_path / "..data.tmp").symlink_to("v2")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")

    assert source.current() == "new"


def test_the_last_token_is_used_while_the_file_cannot_be_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("kept")
    source = TokenSource(path=str(token))
    source.current()
    token.unlink()

    assert source.current() == "kept"
    with pytest.raises(ApiError, match="cannot read token file"):
        TokenSource(path=str(token)).current()


# --- requests ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeApi:
    """Answers requests from a script; records what came in."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                api.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)) if length else None,
                    }
                )
                reply = api.replies.pop(0) if api.replies else Reply(200)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def do_GET(self) -> None:
                self.handle_one()

            def do_POST(self) -> None:
                self.handle_one()

            def do_PATCH(self) -> None:
                self.handle_one()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()


def status_body(code: int, message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "code": code,
        }
    ).encode()


def test_get_create_and_merge_patch_send_json_with_the_token(fake_api: FakeApi) -> None:
    fake_api.replies = [Reply(200, b'{"kind": "Node"}'), Reply(201), Reply(200)]
    client = KubeClient(Credentials(server=fake_api.url, token="t0ken"))

    assert client.get("/api/v1/nodes/n1") == {"kind": "Node"}
    client.create("/apis/x/v1/things", {"a": 1})
    client.merge_patch("/apis/x/v1/things/a/status", {"status": {"b": None}})

    get, post, patch = fake_api.requests
    assert (get["method"], get["path"]) == ("GET", "/api/v1/nodes/n1")
    assert get["headers"]["Authorization"] == "Bearer t0ken"
    assert (post["method"], post["headers"]["Content-Type"], post["body"]) == (
        "POST",
        "application/json",
        {"a": 1},
    )
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patch["body"] == {"status": {"b": None}}


@pytest.mark.parametrize(
    ("reply", "status", "message"),
    [
        (
            Reply(404, status_body(404, 'gpunodehealths "n1" not found')),
            404,
            'gpunodehealths "n1" not found',
        ),
        (
            Reply(409, status_body(409, "the object has been modified")),
            409,
            "the object has been modified",
        ),
        (Reply(429, status_body(429, "too many requests")), 429, "too many requests"),
        (
            Reply(503, b"<html>upstream unavailable</html>"),
            503,
            "<html>upstream unavailable</html>",
        ),
        (Reply(500, b""), 500, "no response body"),
    ],
)
def test_error_statuses_become_api_errors_with_the_servers_message(
    fake_api: FakeApi, reply: Reply, status: int, message: str
) -> None:
    fake_api.replies = [reply]
    client = KubeClient(Credentials(server=fake_api.url))

    with pytest.raises(ApiError) as caught:
        client.get("/x")

    assert (caught.value.status, caught.value.message) == (status, message)
    assert caught.value.retriable is (status != 404)


@pytest.mark.parametrize(("header", "retry_after"), [("1", 1.0), ("2.5", 2.5), ("soon", None)])
def test_a_starting_servers_429_carries_when_to_come_back(
    fake_api: FakeApi, header: str, retry_after: float | None
) -> None:
    body = status_body(429, "storage is (re)initializing")
    fake_api.replies = [Reply(429, body, {"Retry-After": header})]
    client = KubeClient(Credentials(server=fake_api.url))

    with pytest.raises(ApiError) as caught:
        client.merge_patch("/x/status", {"status": {}})

    assert caught.value.status == 429
    assert caught.value.retry_after == retry_after


def test_an_unreachable_server_is_an_api_error_without_status() -> None:
    client = KubeClient(Credentials(server=f"http://127.0.0.1:{free_port()}"), connect_timeout=1)

    with pytest.raises(ApiError) as caught:
        client.get("/x")

    assert caught.value.status is None
    assert caught.value.retriable


def test_a_401_re_reads_the_token_file_and_tries_once_more(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("expired")
    client = KubeClient(Credentials(server=fake_api.url, token_file=str(token)))
    client.get("/warm-up")
    # Rotated with the same size and within the file system's timestamp resolution: only a
    # 401 tells the client to look again.
    stat = token.stat()
    token.write_text("rotated")
    os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fake_api.replies = [Reply(401, status_body(401, "Unauthorized")), Reply(200)]

    client.get("/x")

    assert [r["headers"]["Authorization"] for r in fake_api.requests[1:]] == [
        "Bearer expired",
        "Bearer rotated",
    ]


def watch_lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def test_a_watch_yields_each_event_until_the_server_ends_it(fake_api: FakeApi) -> None:
    added = {"type": "ADDED", "object": {"metadata": {"name": "n1", "resourceVersion": "7"}}}
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    fake_api.replies = [Reply(200, watch_lines(added, bookmark) + b"\n")]
    client = KubeClient(Credentials(server=fake_api.url, token="t0ken"))

    events = list(client.watch("/api/v1/nodes?watch=true&resourceVersion=5"))

    assert events == [added, bookmark]
    (request,) = fake_api.requests
    assert request["path"] == "/api/v1/nodes?watch=true&resourceVersion=5"
    assert request["headers"]["Authorization"] == "Bearer t0ken"


def test_a_watch_from_a_version_too_old_is_an_api_error_gone(fake_api: FakeApi) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    fake_api.replies = [Reply(200, watch_lines(gone))]
    client = KubeClient(Credentials(server=fake_api.url))

    with pytest.raises(ApiError) as caught:
        list(client.watch("/api/v1/nodes?watch=true&resourceVersion=1"))

    assert (caught.value.status, caught.value.message) == (410, "too old")


def test_a_refused_watch_is_an_api_error(fake_api: FakeApi) -> None:
    fake_api.replies = [Reply(403, status_body(403, "nodes is forbidden"))]
    client = KubeClient(Credentials(server=fake_api.url))

    with pytest.raises(ApiError) as caught:
        list(client.watch("/api/v1/nodes?watch=true"))

    assert (caught.value.status, caught.value.message) == (403, "nodes is forbidden")


def test_tls_with_the_clusters_ca_and_a_client_certificate_from_data(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.write()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi().handler())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.path("ca.crt"))
    context.load_cert_chain(pki.path("apiserver.crt"), pki.path("apiserver.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        credentials = Credentials(
            server=f"https://127.0.0.1:{server.server_address[1]}",
            ca_data=Path(pki.path("ca.crt")).read_text(),
            cert_data=Path(pki.path("admin.crt")).read_bytes(),
            key_data=Path(pki.path("admin.key")).read_bytes(),
        )
        assert KubeClient(credentials).get("/x") == {}
        without_cert = Credentials(server=credentials.server, ca_file=pki.path("ca.crt"))
        with pytest.raises(ApiError) as caught:
            KubeClient(without_cert).get("/x")
        assert caught.value.status is None
    finally:
        server.shutdown()
        server.server_close()


def test_unusable_tls_material_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS"):
        KubeClient(Credentials(server="https://127.0.0.1:1", ca_file=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="TLS"):
        KubeClient(
            Credentials(server="https://127.0.0.1:1", cert_data=b"not a cert", key_data=b"no key")
        )
