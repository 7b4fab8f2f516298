"""Starts a real etcd and kube-apiserver on loopback, for tests, the demo and the simulator.

The binaries come from ``hack/build-controlplane.sh``. The API server runs as in a real
cluster: TLS with a generated CA, client-certificate authentication, RBAC, ServiceAccount
token issuing and the default admission chain (ValidatingAdmissionPolicy included). Child
processes die with their parent (PR_SET_PDEATHSIG), so an interrupted run leaves nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from navarch.errors import NavarchError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN_DIR = REPO_ROOT / ".cache" / "bin"


class ControlPlaneError(NavarchError):
    """The local control plane could not be started."""

    def __init__(self, problem: str, logs: str = "") -> None:
        super().__init__(problem + (f"\n--- component logs ---\n{logs}" if logs else ""))
        self.problem = problem
        self.logs = logs


def bin_dir() -> Path:
    return Path(os.environ.get("NAVARCH_BIN_DIR", DEFAULT_BIN_DIR))


def binary(name: str) -> str:
    path = bin_dir() / name
    if not path.exists():
        raise ControlPlaneError(f"{path} is missing: run `make testenv` to build it")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(argv: list[str]) -> list[str]:
    """Prefix ``argv`` so the kernel kills the child when its parent dies, however it dies.

    The kernel watches the *thread* that started the child: start long-lived children from a
    thread that outlives them.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


@dataclass
class Pki:
    """A CA, the API server's serving certificate, an admin client and ServiceAccount keys."""

    directory: Path

    def write(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "navarch-local-ca")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self._save("ca", ca_cert, ca_key)
        self._leaf("apiserver", "kube-apiserver", [], ca_cert, ca_key, server=True)
        self._leaf("admin", "navarch-admin", ["system:masters"], ca_cert, ca_key, server=False)
        # The users Kubernetes' bootstrap RBAC grants the scheduler's and the controller
        # manager's rights to, for the workload plane (workloads.py).
        for component in ("kube-scheduler", "kube-controller-manager"):
            self._leaf(component, f"system:{component}", [], ca_cert, ca_key, server=False)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.directory / "sa.key").write_bytes(
            sa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (self.directory / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _leaf(
        self,
        name: str,
        common_name: str,
        groups: list[str],
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        *,
        server: bool,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else None
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.ExtendedKeyUsage([usage or x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        self._save(name, builder.sign(ca_key, hashes.SHA256()), key)

    def _save(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (self.directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def path(self, name: str) -> str:
        return str(self.directory / name)


@dataclass
class Component:
    """One child process of the local cluster, logging to ``<workdir>/<name>.log``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @classmethod
    def spawn(cls, name: str, argv: list[str], workdir: Path) -> Component:
        log_path = workdir / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            die_with_parent(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return cls(name, process, log_path, log_file)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()

    def tail(self, lines: int) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"== {self.name} ({self.log_path})\n" + "\n".join(text)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver pair. Use ``with ControlPlane() as cp:``."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="navarch-cp-")))
    keep_workdir: bool = False
    components: list[Component] = field(default_factory=list)
    server: str = ""
    etcd_url: str = ""
    etcd_peer_url: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.workdir / "pki")

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        (self.workdir / "pki").mkdir(parents=True, exist_ok=True)
        self.pki.write()
        self.start_etcd(timeout)
        self.start_apiserver(timeout)
        self.write_kubeconfig()

    def start_etcd(self, timeout: float) -> None:
        """Start (or restart, keeping ports and data) etcd."""
        if not self.etcd_url:
            self.etcd_url = f"http://127.0.0.1:{free_port()}"
            self.etcd_peer_url = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                binary("etcd"),
                "--name=navarch",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={self.etcd_peer_url}",
                f"--initial-advertise-peer-urls={self.etcd_peer_url}",
                f"--initial-cluster=navarch={self.etcd_peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(f"{self.etcd_url}/health", timeout, "etcd", tls=False)

    def start_apiserver(self, timeout: float, port: int | None = None) -> None:
        """Start (or restart, keeping port and etcd data) the API server."""
        port = port or (int(self.server.rsplit(":", 1)[1]) if self.server else free_port())
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.path('apiserver.crt')}",
                f"--tls-private-key-file={pki.path('apiserver.key')}",
                f"--client-ca-file={pki.path('ca.crt')}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.path('sa.pub')}",
                f"--service-account-signing-key-file={pki.path('sa.key')}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        )
        self._wait(f"{self.server}/readyz", timeout, "kube-apiserver", tls=True)

    def stop_apiserver(self) -> None:
        """Stop only the API server (etcd keeps the data): for outage tests."""
        self._stop_component("kube-apiserver")

    def stop_etcd(self) -> None:
        """Stop only etcd, under a running API server: for outage tests."""
        self._stop_component("etcd")

    def _stop_component(self, name: str) -> None:
        for component in [c for c in self.components if c.name == name]:
            component.stop()
            self.components.remove(component)

    def install_crds(self, timeout: str = "60s") -> None:
        """Apply Navarch's CRDs and wait until the API server serves them."""
        kubectl = [binary("kubectl"), "--kubeconfig", str(self.kubeconfig)]
        for step in (
            ["apply", "--server-side", "-f", str(REPO_ROOT / "crds")],
            ["wait", "--for=condition=Established", "--timeout", timeout, "crd", "--all"],
        ):
            subprocess.run([*kubectl, *step], check=True, capture_output=True)

    def write_kubeconfig(self, user: str = "admin") -> Path:
        """Write the kubeconfig of ``user`` (a client certificate in the PKI) and return it."""
        pki = self.pki
        path = self.kubeconfig if user == "admin" else self.workdir / f"{user}.kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: local\n  cluster:\n"
            f"    server: {self.server}\n    certificate-authority: {pki.path('ca.crt')}\n"
            "users:\n- name: admin\n  user:\n"
            f"    client-certificate: {pki.path(f'{user}.crt')}\n"
            f"    client-key: {pki.path(f'{user}.key')}\n"
            "contexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\n"
            "current-context: local\n"
        )
        return path

    def logs(self, lines: int = 60) -> str:
        return "\n".join(component.tail(lines) for component in self.components)

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.components.append(Component.spawn(name, argv, self.workdir))

    def _wait(self, url: str, timeout: float, name: str, *, tls: bool) -> None:
        context = None
        if tls:
            context = ssl.create_default_context(cafile=self.pki.path("ca.crt"))
            context.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for component in self.components:
                if component.process.poll() is not None:
                    raise ControlPlaneError(
                        f"{component.name} exited with {component.process.returncode}",
                        self.logs(),
                    )
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except OSError as err:
                last = str(err)
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {timeout:.0f}s: {last}", self.logs())
