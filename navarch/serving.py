"""The components' HTTP endpoints: probes in plain HTTP, metrics over HTTPS behind a token check.

Probes stay plain and open because the kubelet calls them without credentials. Metrics are
served over TLS with the certificate and key the flags name, and only to callers that
``RequestAuth`` lets through; ``--metrics-insecure`` serves them in plain HTTP to anyone, for
clusters that protect the scrape some other way.

The certificate files are looked at again on every new connection and reloaded when they
changed, so a renewed certificate (cert-manager, or a Secret the chart regenerated, which the
kubelet updates in the mounted volume) is served without a restart.

Built on the standard library's threading HTTP server: the agent must stay small, and a scrape
every few tens of seconds needs nothing more.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from navarch.errors import ConfigError
from navarch.metrics_auth import RequestAuth

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]
"""Answers a GET: HTTP status, content type, body."""

CONNECTION_TIMEOUT = 10.0
"""A caller that stalls the TLS handshake or its request gives up its thread after this."""
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str


def metrics_tls(cert_file: str | None, key_file: str | None, *, insecure: bool) -> TlsFiles | None:
    """What the metrics flags ask for: HTTPS with these files, or None for plain HTTP.

    Secure unless told otherwise, so forgotten flags cannot publish metrics to the network.
    Raises ConfigError naming the flag to fix."""
    if insecure:
        if cert_file or key_file:
            raise ConfigError(
                "--metrics-insecure",
                "it serves plain HTTP without a certificate; drop it or the --metrics-*-file flags",
            )
        return None
    if not cert_file or not key_file:
        raise ConfigError(
            "--metrics-cert-file" if not cert_file else "--metrics-key-file",
            "metrics are served over HTTPS to authorised callers only and need "
            "--metrics-cert-file and --metrics-key-file; pass --metrics-insecure to serve "
            "them in plain HTTP to anyone, or --metrics-port=0 for none",
        )
    for flag, path in (("--metrics-cert-file", cert_file), ("--metrics-key-file", key_file)):
        if not os.path.isfile(path):
            raise ConfigError(flag, f"{path} does not exist or is not a file")
    return TlsFiles(cert_file, key_file)


class ServingCertificate:
    """A server TLS context from the files, rebuilt when either of them changes."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        try:
            self._signature = self._stat()
            self._context = self._load()
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                "--metrics-cert-file", f"cannot load {files.cert_file} and {files.key_file}: {e}"
            ) from None

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                signature = self._stat()
                if signature != self._signature:
                    self._context = self._load()
                    self._signature = signature
                    log.info("loaded the renewed metrics certificate %s", self._files.cert_file)
            except (OSError, ssl.SSLError) as e:
                # Caught between the writes of a renewal, or broken: keep serving the last one.
                log.warning("cannot reload the metrics certificate, keeping the last: %s", e)
            return self._context

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        # A Secret volume swaps its files through a symlink, which changes the inode.
        stats = (os.stat(self._files.cert_file), os.stat(self._files.key_file))
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._files.cert_file, self._files.key_file)
        return context


def metrics_route(registry: CollectorRegistry) -> Route:
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))


def probe_route(check: Callable[[], tuple[bool, str]]) -> Route:
    """A probe: 200 when ``check`` holds, else 503, with its line as the body."""

    def answer() -> tuple[int, str, bytes]:
        ok, why = check()
        return (200 if ok else 503), _TEXT, (why + "\n").encode()

    return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        certificate: ServingCertificate | None,
    ) -> None:
        self.certificate = certificate
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.certificate is None:
            return connection, address
        # The handshake happens in the request's own thread, so a slow caller holds up no one.
        wrapped = self.certificate.context().wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Callers that speak plain HTTP to the TLS port, or hang up, are theirs to fix.
        log.debug("request from %s failed", client_address, exc_info=True)


class EndpointServer:
    """Serves ``routes`` to GET requests on ``port`` from its own thread.

    With ``certificate`` it speaks TLS; with ``auth`` each request must pass it first."""

    def __init__(
        self,
        port: int,
        routes: Mapping[str, Route],
        *,
        name: str,
        certificate: ServingCertificate | None = None,
        auth: RequestAuth | None = None,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = CONNECTION_TIMEOUT

            def setup(self) -> None:
                super().setup()
                if isinstance(self.connection, ssl.SSLSocket):
                    self.connection.do_handshake()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                route = routes.get(path)
                if route is None:
                    self._answer(404, _TEXT, b"not found\n")
                    return
                if auth is not None:
                    decision = auth.check(self.headers.get("Authorization"), "get", path)
                    if not decision.allowed:
                        self._answer(decision.status, _TEXT, (decision.message + "\n").encode())
                        return
                self._answer(*route())

            def _answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                if code == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug(name + ": " + format, *args)

        self._server = _Server(("", port), Handler, certificate)
        # The poll interval only bounds how long ``stop`` waits; a short one costs wake-ups.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(1.0,), name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def listen(
    port: int,
    routes: Mapping[str, Route],
    *,
    name: str,
    flag: str,
    certificate: ServingCertificate | None = None,
    auth: RequestAuth | None = None,
) -> EndpointServer:
    """A started server; ConfigError naming ``flag`` when the port cannot be had."""
    try:
        server = EndpointServer(port, routes, name=name, certificate=certificate, auth=auth)
    except OSError as e:
        raise ConfigError(flag, f"cannot listen on port {port}: {e.strerror or e}") from None
    server.start()
    return server
