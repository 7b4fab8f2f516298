"""The endpoint servers: plain probes, metrics over HTTPS behind the token check, renewed
certificates served without a restart, and the flags that choose between HTTPS and plain."""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from navarch.errors import ConfigError
from navarch.metrics_auth import ACCESS_REVIEWS, RequestAuth
from navarch.serving import (
    EndpointServer,
    ServingCertificate,
    TlsFiles,
    metrics_route,
    metrics_tls,
    probe_route,
)

SERVER_NAME = "navarch-metrics.test"


def write_certificate(directory: Path, common_name: str = SERVER_NAME) -> TlsFiles:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(str(directory / "tls.crt"), str(directory / "tls.key"))
    Path(files.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class Reviews:
    """Knows one token, whose user may get /metrics."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(path)
        if path == ACCESS_REVIEWS:
            return {"status": {"allowed": body["spec"]["user"] == "reader"}}
        user = {"good": "reader", "other": "someone"}.get(body["spec"]["token"])
        return {"status": {"authenticated": user is not None, "user": {"username": user}}}


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("navarch_test_scrapes", "Test counter.", registry=registry).inc()
    return registry


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return write_certificate(tmp_path / "certs")


@pytest.fixture
def reviews() -> Reviews:
    return Reviews()


@pytest.fixture
def secure(
    registry: CollectorRegistry, tls: TlsFiles, reviews: Reviews
) -> Iterator[EndpointServer]:
    server = EndpointServer(
        0,
        {"/metrics": metrics_route(registry)},
        name="metrics",
        certificate=ServingCertificate(tls),
        auth=RequestAuth(reviews),
    )
    server.start()
    yield server
    server.stop()


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tls.cert_file)


def get(
    port: int,
    path: str,
    *,
    tls: TlsFiles | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], str]:
    connection: http.client.HTTPConnection
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        # The certificate names SERVER_NAME; connect to loopback and check that name.
        connection = http.client.HTTPSConnection(
            SERVER_NAME, port, timeout=5, context=client_context(tls)
        )
        connection.sock = client_context(tls).wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5),
            server_hostname=SERVER_NAME,
        )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def served_certificate(port: int, tls: TlsFiles) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_context(tls).wrap_socket(raw, server_hostname=SERVER_NAME) as wrapped,
    ):
        certificate = wrapped.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def test_probes_answer_in_plain_http_without_a_token() -> None:
    ready = [False]
    server = EndpointServer(
        0,
        {
            "/healthz": probe_route(lambda: (True, "ok")),
            "/readyz": probe_route(lambda: (ready[0], "no status written yet")),
        },
        name="probes",
    )
    server.start()
    try:
        assert get(server.port, "/healthz")[::2] == (200, "ok\n")
        assert get(server.port, "/readyz")[::2] == (503, "no status written yet\n")
        ready[0] = True
        assert get(server.port, "/readyz")[0] == 200
        assert get(server.port, "/metrics")[0] == 404
    finally:
        server.stop()


def test_metrics_without_a_token_are_refused_401_with_a_bearer_challenge(
    secure: EndpointServer, tls: TlsFiles, reviews: Reviews
) -> None:
    status, headers, body = get(secure.port, "/metrics", tls=tls)

    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert body == "Unauthorized: a bearer token is required\n"
    assert reviews.calls == []


def test_metrics_with_an_unknown_token_are_refused_401(
    secure: EndpointServer, tls: TlsFiles
) -> None:
    assert get(secure.port, "/metrics", tls=tls, token="forged")[0] == 401


def test_metrics_for_a_user_without_the_right_are_refused_403(
    secure: EndpointServer, tls: TlsFiles
) -> None:
    status, _, body = get(secure.port, "/metrics", tls=tls, token="other")

    assert status == 403
    assert body == "Forbidden: user 'someone' may not get /metrics\n"


def test_metrics_are_served_to_an_authorised_caller_over_tls(
    secure: EndpointServer, tls: TlsFiles
) -> None:
    status, headers, body = get(secure.port, "/metrics?x=1", tls=tls, token="good")

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert "navarch_test_scrapes_total 1.0" in body


def test_an_unknown_path_is_404_without_a_review(
    secure: EndpointServer, tls: TlsFiles, reviews: Reviews
) -> None:
    assert get(secure.port, "/debug/pprof", tls=tls, token="good")[0] == 404
    assert reviews.calls == []


def test_plain_http_to_the_tls_port_gets_nothing_and_leaves_it_serving(
    secure: EndpointServer, tls: TlsFiles
) -> None:
    with pytest.raises((http.client.HTTPException, OSError)):
        get(secure.port, "/metrics", token="good")

    assert get(secure.port, "/metrics", tls=tls, token="good")[0] == 200


def test_a_renewed_certificate_is_served_to_new_connections(
    secure: EndpointServer, tls: TlsFiles, tmp_path: Path
) -> None:
    before = served_certificate(secure.port, tls)
    renewed = write_certificate(tmp_path / "renewed")
    Path(tls.cert_file).write_bytes(Path(renewed.cert_file).read_bytes())
    Path(tls.key_file).write_bytes(Path(renewed.key_file).read_bytes())

    after = served_certificate(secure.port, tls)

    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(Path(renewed.cert_file).read_text())


def test_a_broken_renewal_keeps_the_last_certificate(secure: EndpointServer, tls: TlsFiles) -> None:
    before = served_certificate(secure.port, tls)
    Path(tls.key_file).write_text("not a key\n")

    assert served_certificate(secure.port, tls) == before


def test_an_unusable_certificate_stops_start_up(tls: TlsFiles) -> None:
    Path(tls.key_file).write_text("not a key\n")

    with pytest.raises(ConfigError, match="invalid --metrics-cert-file: cannot load"):
        ServingCertificate(tls)


@pytest.mark.parametrize(
    ("cert", "key", "insecure", "message"),
    [
        (None, None, False, "invalid --metrics-cert-file: metrics are served over HTTPS"),
        ("tls.crt", None, False, "invalid --metrics-key-file: metrics are served over HTTPS"),
        ("tls.crt", "tls.key", True, "invalid --metrics-insecure: it serves plain HTTP"),
        ("missing.crt", "tls.key", False, "missing.crt does not exist"),
    ],
)
def test_metrics_flags_that_cannot_work_stop_start_up(
    tls: TlsFiles, cert: str | None, key: str | None, insecure: bool, message: str
) -> None:
    directory = Path(tls.cert_file).parent

    def path(name: str | None) -> str | None:
        return str(directory / name) if name else None

    with pytest.raises(ConfigError, match=message):
        metrics_tls(path(cert), path(key), insecure=insecure)


def test_metrics_flags_choose_https_or_plain(tls: TlsFiles) -> None:
    assert metrics_tls(tls.cert_file, tls.key_file, insecure=False) == tls
    assert metrics_tls(None, None, insecure=True) is None
