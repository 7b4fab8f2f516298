"""The agent's small Kubernetes REST client: credentials, then get, create, merge-patch, watch.

The agent runs on every GPU node and must stay under ~50 MiB resident. Importing the
``kubernetes`` package alone costs about 34 MiB of RSS (CPython 3.11, x86-64: 11 MiB for a bare
interpreter, 45 MiB after ``import kubernetes.client``), while urllib3, which it is built on,
costs about 12 MiB and brings the TLS stack the agent needs anyway. So this module speaks the
REST calls the agent (and the simulator's taint watch) makes directly over urllib3.

Credentials come from a kubeconfig (server, CA file or data, client certificate and key as files
or data, bearer token or token file) or from the in-cluster ServiceAccount. Token files are
re-read whenever they change, because bound ServiceAccount tokens are rotated by the kubelet
about hourly and an agent that kept the first one would be locked out after it expires. No
library loads them cheaply enough: on top of the agent's own imports (39.5 MiB),
``kubernetes.config`` adds 9.0 MiB (it imports the whole generated client), lightkube 6.6 MiB
and pykube-ng 5.9 MiB (each with its own HTTP stack, httpx or requests), kr8s 23 MiB.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from navarch.errors import ApiError, ConfigError, excerpt

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
_MERGE_PATCH = "application/merge-patch+json"
_JSON = "application/json"


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    ca_data: str | None = None
    """PEM text."""
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None


def load_kubeconfig(path: str) -> Credentials:
    """The credentials of the current context of the kubeconfig at ``path``.

    Relative file names in it are relative to the kubeconfig's directory, as kubectl reads
    them. Raises ConfigError for anything the agent cannot use.
    """
    # Only the kubeconfig path needs YAML; the in-cluster path, which DaemonSets use, does not.
    import yaml

    setting = f"kubeconfig {path}"
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except OSError as e:
        raise ConfigError(setting, f"cannot read it: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(setting, f"not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(setting, "not a kubeconfig (expected a mapping)")
    context_name = document.get("current-context")
    if not context_name:
        raise ConfigError(setting, "no current-context")
    context = _named(document, "contexts", context_name, "context", setting)
    cluster = _named(document, "clusters", context.get("cluster"), "cluster", setting)
    user = _named(document, "users", context.get("user"), "user", setting)
    base = Path(path).resolve().parent

    def file(value: Any) -> str | None:
        return str(base / value) if value else None

    if cluster.get("insecure-skip-tls-verify"):
        raise ConfigError(setting, "insecure-skip-tls-verify is not supported; give the CA")
    for unsupported in ("exec", "auth-provider", "username"):
        if user.get(unsupported):
            raise ConfigError(setting, f"user credentials by {unsupported!r} are not supported")
    ca_data = _decode(cluster.get("certificate-authority-data"), setting)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ConfigError(setting, f"cluster server must be an http(s) URL, got {server!r}")
    return Credentials(
        server=server.rstrip("/"),
        ca_file=file(cluster.get("certificate-authority")),
        ca_data=ca_data.decode("ascii", errors="replace") if ca_data else None,
        cert_file=file(user.get("client-certificate")),
        key_file=file(user.get("client-key")),
        cert_data=_decode(user.get("client-certificate-data"), setting),
        key_data=_decode(user.get("client-key-data"), setting),
        token=user.get("token") or None,
        token_file=file(user.get("tokenFile")),
    )


def in_cluster(
    env: dict[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
) -> Credentials:
    """The pod's ServiceAccount credentials, as every in-cluster client finds them."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError(
            "cluster access",
            "no --kubeconfig given and not running in a pod "
            "(KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set)",
        )
    token_file = directory / "token"
    ca_file = directory / "ca.crt"
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise ConfigError("cluster access", f"{needed} is missing (no ServiceAccount token?)")
    # An IPv6 service address needs brackets in a URL.
    host = f"[{host}]" if ":" in host else host
    return Credentials(
        server=f"https://{host}:{port}", ca_file=str(ca_file), token_file=str(token_file)
    )


def _named(
    document: dict[str, Any], section: str, name: Any, key: str, setting: str
) -> dict[str, Any]:
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            return value if isinstance(value, dict) else {}
    raise ConfigError(setting, f"{section} has no entry named {name!r}")


def _decode(value: Any, setting: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(setting, "a *-data field is not valid base64") from None


def ssl_context(credentials: Credentials) -> ssl.SSLContext:
    """A verifying TLS context with the cluster's CA and the client certificate, if any."""
    try:
        context = ssl.create_default_context(cafile=credentials.ca_file, cadata=credentials.ca_data)
        if credentials.cert_file or credentials.cert_data:
            _load_client_certificate(context, credentials)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("cluster TLS credentials", str(e)) from None
    return context


def _load_client_certificate(context: ssl.SSLContext, credentials: Credentials) -> None:
    if credentials.cert_file and not credentials.cert_data and not credentials.key_data:
        context.load_cert_chain(credentials.cert_file, credentials.key_file)
        return
    # The ssl module loads certificates from files only; the key lives on disk for an instant,
    # in a directory only this user can read.
    with tempfile.TemporaryDirectory(prefix="navarch-agent-") as directory:
        cert = Path(directory, "client.crt")
        key = Path(directory, "client.key")
        cert.write_bytes(credentials.cert_data or Path(credentials.cert_file or "").read_bytes())
        key.write_bytes(credentials.key_data or Path(credentials.key_file or "").read_bytes())
        context.load_cert_chain(str(cert), str(key))


class TokenSource:
    """The bearer token: fixed, or read from a file and read again whenever the file changes."""

    def __init__(self, token: str | None = None, path: str | None = None) -> None:
        self._token = token
        self._path = path
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        if self._path is None:
            return self._token
        with self._lock:
            try:
                # The kubelet swaps projected tokens through a symlink, which changes the inode.
                info = os.stat(self._path)
                signature = (info.st_ino, info.st_mtime_ns, info.st_size)
                if signature != self._signature:
                    with open(self._path, encoding="utf-8") as stream:
                        self._token = stream.read().strip()
                    if self._signature is not None:
                        log.info("re-read the API token from %s", self._path)
                    self._signature = signature
            except OSError as e:
                if self._token is None:
                    raise ApiError(None, f"cannot read token file {self._path}: {e}") from None
                log.warning("cannot re-read token file %s: %s; using the last token", self._path, e)
            return self._token

    def invalidate(self) -> None:
        """Forget the file's signature, so the next request reads the token file again."""
        with self._lock:
            self._signature = None

    @property
    def from_file(self) -> bool:
        return self._path is not None


def connection_pool(
    credentials: Credentials, connect_timeout: float, read_timeout: float, connections: int = 1
) -> urllib3.PoolManager:
    """Kept-alive connections to the API server, verified with the cluster's CA and
    authenticated with the client certificate, if any; no automatic retries."""
    context = ssl_context(credentials) if credentials.server.startswith("https://") else None
    return urllib3.PoolManager(
        num_pools=1,
        maxsize=connections,
        ssl_context=context,
        retries=False,
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
    )


class KubeClient:
    """JSON requests to the Kubernetes API; every failure is an ``ApiError``.

    Not thread-safe by design: one thread (the agent's writer) makes all calls.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self._server = credentials.server
        self._tokens = TokenSource(credentials.token, credentials.token_file)
        self._pool = connection_pool(credentials, connect_timeout, read_timeout)

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body, _JSON)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", path, body, _MERGE_PATCH)

    def watch(self, path: str) -> Iterator[dict[str, Any]]:
        """The events of a watch of ``path`` (which asks for ``watch=true``) as they arrive,
        until the server ends it. An ``ERROR`` event (410 Gone: the version is too old) and a
        broken stream are ApiErrors."""
        response = self._send("GET", path, None, None, stream=True)
        try:
            if response.status != 200:
                raise ApiError.from_response(response.status, response.read(), response.headers)
            pending = b""
            for chunk in response.stream(decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(status.get("code"), status.get("message") or "watch error")
                    yield event
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(None, f"watch {path}: {e}") from None
        finally:
            response.release_conn()

    def close(self) -> None:
        self._pool.clear()

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        response = self._send(method, path, payload, content_type)
        if response.status == 401 and self._tokens.from_file:
            # The token may have been rotated between our last look and now.
            self._tokens.invalidate()
            response = self._send(method, path, payload, content_type)
        status, data = response.status, response.data
        if not 200 <= status < 300:
            raise ApiError.from_response(status, data, response.headers)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise ApiError(status, f"response is not JSON: {excerpt(data)}") from None
        if not isinstance(decoded, dict):
            raise ApiError(status, f"expected a JSON object, got {type(decoded).__name__}")
        return decoded

    def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        content_type: str | None,
        *,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": _JSON, "User-Agent": "navarch-agent"}
        token = self._tokens.current()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            response = self._pool.request(
                method,
                self._server + path,
                body=payload,
                headers=headers,
                redirect=False,
                preload_content=not stream,
            )
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(None, f"{method} {path}: {e}") from None
        return response
