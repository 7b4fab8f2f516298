"""The real ``navarch-operator`` as a subprocess, with its log kept in a file.

Shared by the integration tests, the fleet simulator and the benchmarks: each starts the
installed console script against a kubeconfig, waits for its liveness endpoint, and may SIGKILL
it (no cleanup handler, no drain, writes cut wherever they are) to prove a restart loses
nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
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
        metrics_tls: TlsFiles | None = None,
    ) -> None:
        """``metrics_tls``: serve metrics over HTTPS to authorised callers, as the chart does;
        without it, in plain HTTP."""
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.workers = workers
        self.metrics_tls = metrics_tls
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        running = self.process is not None and self.process.poll() is None
        return self.process.pid if running and self.process is not None else None

    def start(self, wait: bool = True) -> None:
        executable = Path(sys.executable).with_name("navarch-operator")
        self.health_port = free_port()
        self.metrics_port = free_port()
        argv = [
            str(executable),
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
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                die_with_parent(argv), stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"navarch-operator not healthy within {timeout:.0f}s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Whether the liveness endpoint answers; raises if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"navarch-operator exited with {self.process.returncode}")
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

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
