"""The real ``navarch-operator`` as a subprocess, with its log kept in a file.

Shared by the integration tests, the fleet simulator and the benchmarks: each starts the
installed console script against a kubeconfig, waits for its readiness probe, and may SIGKILL
it (no cleanup handler, no waiting for writes in flight, writes cut wherever they are) to prove
a restart loses nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from navarch.serving import TlsFiles
from navarch.testing.controlplane import die_with_parent, free_port

START_TIMEOUT = 60.0


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        workers: int | None = None,
        *,
        metrics_tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        """``metrics_tls``: serve metrics over HTTPS to authorised callers, as the chart does;
        without it, in plain HTTP. ``command`` runs instead of the installed console script
        (a test's own entry point), with the same arguments."""
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.workers = workers
        self.metrics_tls = metrics_tls
        self.extra_args = list(extra_args)
        self.command = list(command or [str(Path(sys.executable).with_name("navarch-operator"))])
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        running = self.process is not None and self.process.poll() is None
        return self.process.pid if running and self.process is not None else None

    def start(self, wait: bool = True) -> None:
        """Start the operator; with ``wait``, until it is ready to act."""
        self.health_port = free_port()
        self.metrics_port = free_port()
        argv = [
            *self.command,
            "--kubeconfig",
            str(self.kubeconfig),
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
        ]
        if self.metrics_tls is None:
            argv.append("--metrics-insecure")
        else:
            argv += [
                f"--metrics-cert-file={self.metrics_tls.cert_file}",
                f"--metrics-key-file={self.metrics_tls.key_file}",
            ]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        argv += self.extra_args
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                die_with_parent(argv), stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"navarch-operator not ready within {timeout:.0f}s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Whether the liveness probe passes; raises if the process has exited."""
        return self.probe("/healthz")[0] == 200

    def ready(self) -> bool:
        """Whether the readiness probe passes; raises if the process has exited."""
        return self.probe("/readyz")[0] == 200

    def probe(self, path: str) -> tuple[int | None, str]:
        """A probe's HTTP status and answer; None while nothing answers. Raises if the process
        has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"navarch-operator exited with {self.process.returncode}")
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return None, ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self, since: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[since:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0
