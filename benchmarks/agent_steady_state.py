"""Resident memory and CPU of ``navarch-agent run`` at steady state, on 8 fake GPUs.

Run: python benchmarks/agent_steady_state.py [--seconds 180] [--warmup 20] [--plain-metrics]

Starts the local control plane (etcd + kube-apiserver), applies the CRDs, creates a Node and
runs the real agent with default intervals (poll 10 s, heartbeat 30 s) on the fake
libnvidia-ml.so with 8 healthy GPUs and a kernel-log file. Its metrics are served as the chart
serves them, over HTTPS with the chart's generated certificate and behind the token check, and
scraped every 30 s with a ServiceAccount token, as Prometheus does (``--plain-metrics``: plain
HTTP without checks, to see what they cost). Every second it samples the agent's VmRSS and
utime+stime from /proc. CPU is averaged over the steady-state window, which leaves out the first
``--warmup`` seconds (imports, NVML set-up, the first writes); status writes per minute come
from the agent's own ``navarch_agent_api_writes_total``.

The fake library's ``nvmlEventSetWait`` cannot block in a driver: it wakes every 20 ms to
check its scenario file. That cost lands in the agent's process but does not exist on a real
node, so the same wait loop is also measured alone, in a second process, and reported as the
fake's share. Targets: RSS <= 50 MiB, CPU <= 5 millicores.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Runnable from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navarch.serving import TlsFiles
from navarch.testing import fake_nvml
from navarch.testing.controlplane import (
    REPO_ROOT,
    ControlPlane,
    binary,
    die_with_parent,
    free_port,
)

TARGET_RSS_MIB = 50.0
TARGET_MILLICORES = 5.0
GPUS = 8
NODE = "bench-gpu-node"
SCRAPE_INTERVAL = 30.0
"""The chart's ServiceMonitor default."""
SERVER_NAME = "bench-navarch-agent-metrics.default.svc"
"""A name the chart's generated certificate carries, for release ``bench``."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The agent's NVML event thread alone: the same pynvml calls on the same fake library.
EVENT_WAIT_ALONE = """
from navarch.node_agent.nvml import NvmlSession, NvmlXidWatcher
import sys
watcher = NvmlXidWatcher(NvmlSession(sys.argv[1]))
while True:
    watcher.wait(1.0)
"""


@dataclass
class Samples:
    pid: int
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    cpu_seconds: list[tuple[float, float]] = field(default_factory=list)

    def take(self, now: float) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            self.rss_mib.append((now, int(match[1]) / 1024))
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        self.cpu_seconds.append((now, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS))

    def millicores(self, since: float) -> float:
        window = [(t, c) for t, c in self.cpu_seconds if t >= since]
        (t0, c0), (t1, c1) = window[0], window[-1]
        return (c1 - c0) / (t1 - t0) * 1000


@dataclass
class Scraper:
    """Reads the agent's metrics as Prometheus does; ``tls`` None: in plain HTTP."""

    port: int
    tls: TlsFiles | None = None
    token: str | None = None

    def writes(self) -> float:
        connection = http.client.HTTPConnection(SERVER_NAME, self.port, timeout=10)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls is None:
            connection.sock = raw
        else:
            context = ssl.create_default_context(cafile=self.tls.cert_file)
            connection.sock = context.wrap_socket(raw, server_hostname=SERVER_NAME)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            connection.request("GET", "/metrics", headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"scrape answered {response.status}: {text.strip()}")
        match = re.search(r"^navarch_agent_api_writes_total (\S+)$", text, re.MULTILINE)
        return float(match[1]) if match else 0.0


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [binary("kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
    ).stdout


def metrics_setup(
    plane: ControlPlane, directory: Path, port: int, *, plain: bool
) -> tuple[Scraper, list[str]]:
    """How Prometheus will scrape the agent, and the agent's metrics flags for it."""
    if plain:
        return Scraper(port), ["--metrics-insecure"]
    tls, token = metrics_credentials(plane, directory)
    flags = [f"--metrics-cert-file={tls.cert_file}", f"--metrics-key-file={tls.key_file}"]
    return Scraper(port, tls, token), flags


def metrics_credentials(plane: ControlPlane, directory: Path) -> tuple[TlsFiles, str]:
    """The chart's generated serving certificate, and the token of a ServiceAccount that may
    get /metrics, as a Prometheus bound to the chart's metrics-reader ClusterRole holds."""
    rendered = subprocess.run(
        [
            binary("helm"),
            "template",
            "bench",
            str(REPO_ROOT / "charts" / "navarch"),
            "--show-only",
            "templates/metrics-auth.yaml",
            # Any version the chart supports: the certificate does not depend on it.
            "--kube-version=1.30.0",
        ],
        text=True,
        check=True,
        capture_output=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")
    tls = TlsFiles(str(directory / "tls.crt"), str(directory / "tls.key"))
    for key, path in (("tls.crt", tls.cert_file), ("tls.key", tls.key_file)):
        Path(path).write_bytes(base64.b64decode(secret["data"][key]))
    reader = next(d for d in docs if d["kind"] == "ClusterRole")
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(reader))
    kubectl(plane, "create", "serviceaccount", "scraper", "-n", "default")
    kubectl(
        plane,
        "create",
        "clusterrolebinding",
        "bench-scraper",
        f"--clusterrole={reader['metadata']['name']}",
        "--serviceaccount=default:scraper",
    )
    token = kubectl(plane, "create", "token", "scraper", "-n", "default", "--duration=1h")
    return tls, token.strip()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            die_with_parent(argv), stdout=out, stderr=subprocess.STDOUT, env=env
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report(
    args: argparse.Namespace,
    samples: Samples,
    fake: Samples,
    steady: float,
    writes_per_minute: float,
) -> None:
    rss = [value for _, value in samples.rss_mib]
    steady_rss = [value for t, value in samples.rss_mib if t >= steady]
    cpu = samples.millicores(steady)
    fake_share = fake.millicores(steady)
    metrics = "plain HTTP" if args.plain_metrics else "HTTPS with token checks"
    print(
        f"agent on {GPUS} fake GPUs, default intervals, {args.seconds:.0f} s "
        f"(steady state after {args.warmup:.0f} s), {os.cpu_count()} CPUs, metrics in "
        f"{metrics} scraped every {SCRAPE_INTERVAL:.0f} s"
    )
    print(
        f"RSS: peak {max(rss):.1f} MiB, mean {sum(steady_rss) / len(steady_rss):.1f} MiB "
        f"(target <= {TARGET_RSS_MIB:.0f} MiB)"
    )
    print(
        f"CPU: {cpu:.2f} millicores on average (target <= {TARGET_MILLICORES:.0f}), of which "
        f"the fake library's event polling alone takes {fake_share:.2f}: "
        f"{max(0.0, cpu - fake_share):.2f} for the agent itself"
    )
    print(f"status writes: {writes_per_minute:.1f} per minute")
    met = max(rss) <= TARGET_RSS_MIB and cpu <= TARGET_MILLICORES
    print("targets met" if met else "TARGETS MISSED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the agent runs")
    parser.add_argument("--warmup", type=float, default=20.0, help="left out of the CPU average")
    parser.add_argument(
        "--plain-metrics",
        action="store_true",
        help="serve metrics in plain HTTP without token checks, to see what those cost",
    )
    args = parser.parse_args()
    if args.seconds < args.warmup + 30:
        parser.error("--seconds must leave at least 30 s after --warmup")

    workdir = Path(tempfile.mkdtemp(prefix="navarch-bench-"))
    library = fake_nvml.build(workdir / "lib")
    kmsg = workdir / "kmsg"
    kmsg.touch()
    scenario = fake_nvml.write_scenario(
        workdir / "scenario",
        fake_nvml.FakeNode(gpus=[fake_nvml.FakeGpu(index=i) for i in range(GPUS)], kmsg_path=kmsg),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env[fake_nvml.SCENARIO_ENV] = str(scenario)
    env["PYTHONPATH"] = str(REPO_ROOT)
    port = free_port()

    with ControlPlane() as plane:
        kubectl(plane, "apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        kubectl(plane, "wait", "--for=condition=Established", "crd/gpunodehealths.navarch.dev")
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"nvidia.com/gpu.count": str(GPUS)}},
        }
        kubectl(plane, "create", "-f", "-", stdin=json.dumps(node))
        scraper, metrics_flags = metrics_setup(plane, workdir, port, plain=args.plain_metrics)
        agent = start(
            [
                sys.executable,
                "-m",
                "navarch.node_agent.cli",
                "run",
                f"--node-name={NODE}",
                f"--kubeconfig={plane.kubeconfig}",
                f"--nvml-library={library}",
                f"--kmsg-path={kmsg}",
                f"--metrics-port={port}",
                *metrics_flags,
                "--health-port=0",
            ],
            env,
            workdir / "agent.log",
        )
        alone = start(
            [sys.executable, "-c", EVENT_WAIT_ALONE, str(library)], env, workdir / "alone.log"
        )
        try:
            began = time.monotonic()
            steady = began + args.warmup
            samples, fake = Samples(agent.pid), Samples(alone.pid)
            writes_at_steady: float | None = None
            next_scrape = began + SCRAPE_INTERVAL
            while (now := time.monotonic()) < began + args.seconds:
                if agent.poll() is not None:
                    print((workdir / "agent.log").read_text(), file=sys.stderr)
                    print(f"the agent exited with {agent.returncode}", file=sys.stderr)
                    return 1
                samples.take(now)
                fake.take(now)
                if writes_at_steady is None and now >= steady:
                    writes_at_steady, steady = scraper.writes(), now
                elif now >= next_scrape:
                    scraper.writes()
                    next_scrape += SCRAPE_INTERVAL
                time.sleep(1.0)
            minutes = (time.monotonic() - steady) / 60
            writes_per_minute = (scraper.writes() - (writes_at_steady or 0.0)) / minutes
        finally:
            stop(alone)
            stop(agent)

    report(args, samples, fake, steady, writes_per_minute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
