"""Metrics are not public: the chart's TLS, RBAC, ServiceMonitor and NetworkPolicy, rendered,
and the real agent and operator serving /metrics against the real API server.

The running components use the chart's own objects: the generated certificate from the
release's Secret, and tokens of the release's ServiceAccounts, so their TokenReviews and
SubjectAccessReviews succeed only through the rights the chart grants them. Scrapers are
ServiceAccounts with pod-bound tokens, as Prometheus has."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from navarch.serving import TlsFiles
from navarch.testing import fake_nvml
from navarch.testing.controlplane import die_with_parent, free_port
from navarch.testing.operator_process import OperatorProcess

from .chart import (
    CHART,
    METRICS_TLS_ARGS,
    NO_PODS,
    NO_POLICY,
    Release,
    as_token,
    find,
    installed,
    node_manifest,
    pod_bound_token,
    render,
    render_error,
)
from .cluster import Cluster, eventually, unique

MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
REVIEW_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["subjectaccessreviews"],
        "verbs": ["create"],
    },
]


def reviews(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = ("authentication.k8s.io", "authorization.k8s.io")
    return [r for r in rules if set(r.get("apiGroups", [])) & set(groups)]


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return dict(find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0])


def pod(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return dict(find(docs, kind, name)["spec"]["template"]["spec"])


# --- rendered ---------------------------------------------------------------------------------


def test_both_components_serve_metrics_over_https_by_default(cluster: Cluster) -> None:
    docs = render(cluster)
    for kind, name in (("DaemonSet", "nv-navarch-agent"), ("Deployment", "nv-navarch-operator")):
        args = container(docs, kind, name)["args"]
        assert [a for a in args if a.startswith("--metrics-")] == [
            "--metrics-port=9101" if kind == "DaemonSet" else "--metrics-port=8080",
            *METRICS_TLS_ARGS,
        ]
        volume = next(v for v in pod(docs, kind, name)["volumes"] if v["name"] == "metrics-tls")
        assert volume["secret"] == {"secretName": "nv-navarch-metrics-tls", "defaultMode": 0o440}
        rules = find(docs, "ClusterRole", name)["rules"]
        assert reviews(rules) == REVIEW_RULES
    reader = find(docs, "ClusterRole", "nv-navarch-metrics-reader")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    # Who scrapes is the cluster's choice: no binding unless metrics.readers names someone.
    bindings = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert "nv-navarch-metrics-reader" not in bindings


def test_the_agent_probes_stay_plain_on_their_own_port(cluster: Cluster) -> None:
    agent = container(render(cluster), "DaemonSet", "nv-navarch-agent")
    assert "--health-port=9102" in agent["args"]
    assert {"name": "health", "containerPort": 9102, "protocol": "TCP"} in agent["ports"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"path": path, "port": "health"}


def test_the_generated_certificate_names_both_metrics_services(cluster: Cluster) -> None:
    secret = find(render(cluster, "--namespace", "gpu-health"), "Secret", "nv-navarch-metrics-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {
        "nv-navarch-agent-metrics.gpu-health.svc",
        "nv-navarch-operator-metrics.gpu-health.svc",
    } <= set(names.get_values_for_type(x509.DNSName))
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN RSA PRIVATE KEY")


def test_turning_it_off_serves_plain_metrics_and_grants_no_reviews(cluster: Cluster) -> None:
    docs = render(
        cluster,
        *MONITORING_API,
        "--set",
        "metrics.secure=false",
        "--set",
        "serviceMonitor.enabled=true",
    )
    for kind, name in (("DaemonSet", "nv-navarch-agent"), ("Deployment", "nv-navarch-operator")):
        args = container(docs, kind, name)["args"]
        assert "--metrics-insecure" in args
        assert not [a for a in args if a.startswith(("--metrics-cert", "--metrics-key"))]
        assert "metrics-tls" not in json.dumps(pod(docs, kind, name))
        rules = find(docs, "ClusterRole", name)["rules"]
        assert reviews(rules) == []
    assert not [d for d in docs if d["kind"] == "Secret" or "reader" in d["metadata"]["name"]]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    for monitor in monitors:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s"}


def test_a_secret_of_your_own_replaces_the_generated_certificate(cluster: Cluster) -> None:
    docs = render(
        cluster,
        *MONITORING_API,
        "--set",
        "metrics.tls.secretName=navarch-metrics-cert",
        "--set",
        "serviceMonitor.enabled=true",
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    for kind, name in (("DaemonSet", "nv-navarch-agent"), ("Deployment", "nv-navarch-operator")):
        volume = next(v for v in pod(docs, kind, name)["volumes"] if v["name"] == "metrics-tls")
        assert volume["secret"]["secretName"] == "navarch-metrics-cert"
    monitor = find(docs, "ServiceMonitor", "nv-navarch-agent")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"] == {
        "secret": {"name": "navarch-metrics-cert", "key": "ca.crt"}
    }


def test_service_monitors_scrape_over_verified_https_with_prometheus_token(
    cluster: Cluster,
) -> None:
    docs = render(
        cluster,
        *MONITORING_API,
        "--namespace",
        "gpu-health",
        "--set",
        "serviceMonitor.enabled=true",
    )
    for component in ("agent", "operator"):
        (endpoint,) = find(docs, "ServiceMonitor", f"nv-navarch-{component}")["spec"]["endpoints"]
        assert endpoint == {
            "port": "metrics",
            "path": "/metrics",
            "interval": "30s",
            "scheme": "https",
            "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "tlsConfig": {
                "serverName": f"nv-navarch-{component}-metrics.gpu-health.svc",
                "ca": {"secret": {"name": "nv-navarch-metrics-tls", "key": "tls.crt"}},
            },
        }
    custom = render(
        cluster,
        *MONITORING_API,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.tlsConfig.insecureSkipVerify=true",
    )
    endpoint = find(custom, "ServiceMonitor", "nv-navarch-agent")["spec"]["endpoints"][0]
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}


def test_readers_from_values_are_bound_to_the_metrics_reader(cluster: Cluster) -> None:
    prometheus = {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    docs = render(cluster, "--set-json", f"metrics.readers=[{json.dumps(prometheus)}]")
    binding = find(docs, "ClusterRoleBinding", "nv-navarch-metrics-reader")
    assert binding["roleRef"]["name"] == "nv-navarch-metrics-reader"
    assert binding["subjects"] == [prometheus]
    error = render_error(
        cluster, "--set-json", 'metrics.readers=[{"kind":"ServiceAccount","name":"p"}]'
    )
    assert "missing property 'namespace'" in error


def test_the_network_policy_admits_only_the_chosen_scrapers(cluster: Cluster) -> None:
    assert not [d for d in render(cluster) if d["kind"] == "NetworkPolicy"]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = render(
        cluster,
        "--set",
        "metrics.networkPolicy.enabled=true",
        "--set-json",
        f"metrics.networkPolicy.from=[{json.dumps(peer)}]",
    )
    for component in ("agent", "operator"):
        policy = find(docs, "NetworkPolicy", f"nv-navarch-{component}-metrics")
        assert policy["spec"] == {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "navarch",
                    "app.kubernetes.io/instance": "nv",
                    "app.kubernetes.io/component": component,
                }
            },
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"port": "metrics", "protocol": "TCP"}]}],
        }
    error = render_error(cluster, "--set", "metrics.networkPolicy.enabled=true")
    assert "needs at least one peer in metrics.networkPolicy.from" in error


def notes(cluster: Cluster, *values: str) -> str:
    result = cluster.helm(
        "install", "nv", CHART, "--dry-run=server", "--namespace", "gpu-health", *values
    )
    return result.stdout.split("NOTES:", 1)[1]


def test_the_notes_say_how_to_let_prometheus_in_until_a_reader_is_named(crds: Cluster) -> None:
    command = (
        "kubectl create clusterrolebinding nv-navarch-metrics-reader "
        "--clusterrole=nv-navarch-metrics-reader --serviceaccount=NAMESPACE:SERVICEACCOUNT"
    )
    assert command in notes(crds)
    reader = {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    named = notes(crds, "--set-json", f"metrics.readers=[{json.dumps(reader)}]")
    assert "metrics-reader" not in named


# --- on the API server ------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One component's metrics, reached on loopback as Prometheus reaches the pod."""

    port: int
    server_name: str
    """The metrics Service's DNS name, which the certificate carries."""


@dataclass
class Setup:
    release: Release
    tls: TlsFiles
    installed_certificate: dict[str, str]
    """The generated Secret's data before ``helm upgrade``."""
    scraper: str
    """Pod-bound token of a ServiceAccount bound to metrics-reader through metrics.readers."""
    nosy: str
    """Pod-bound token of a ServiceAccount without that binding."""
    agent: Endpoint
    agent_health: int
    operator: Endpoint
    operator_health: int


def scrape(endpoint: Endpoint, tls: TlsFiles, token: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=tls.cert_file)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as raw:
        wrapped = context.wrap_socket(raw, server_hostname=endpoint.server_name)
        connection = http.client.HTTPConnection(endpoint.server_name, endpoint.port, timeout=10)
        connection.sock = wrapped
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()


def probe(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def secret_files(cluster: Cluster, release: Release, directory: Path) -> TlsFiles:
    secret = cluster.get_json("secret", "-n", release.namespace, f"{release.fullname}-metrics-tls")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(str(directory / "tls.crt"), str(directory / "tls.key"))
    for name, path in (("tls.crt", files.cert_file), ("tls.key", files.key_file)):
        Path(path).write_bytes(base64.b64decode(secret["data"][name]))
    return files


def start_agent(
    kubeconfig: Path, node: str, tls: TlsFiles, ports: tuple[int, int], workdir: Path
) -> subprocess.Popen[bytes]:
    library = fake_nvml.build(workdir / "fake-nvml")
    kmsg = workdir / "kmsg"
    kmsg.touch()
    scenario = fake_nvml.write_scenario(
        workdir / "scenario", fake_nvml.FakeNode(gpus=[fake_nvml.FakeGpu(index=0)], kmsg_path=kmsg)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env[fake_nvml.SCENARIO_ENV] = str(scenario)
    argv = [
        sys.executable,
        "-m",
        "navarch.node_agent.cli",
        "run",
        f"--node-name={node}",
        f"--kubeconfig={kubeconfig}",
        f"--nvml-library={library}",
        f"--kmsg-path={kmsg}",
        f"--metrics-port={ports[0]}",
        f"--metrics-cert-file={tls.cert_file}",
        f"--metrics-key-file={tls.key_file}",
        f"--health-port={ports[1]}",
    ]
    with (workdir / "agent.log").open("ab") as log:
        return subprocess.Popen(
            die_with_parent(argv), stdout=log, stderr=subprocess.STDOUT, env=env
        )


def installed_secret(cluster: Cluster, release: Release) -> dict[str, str]:
    name = f"{release.fullname}-metrics-tls"
    return dict(cluster.get_json("secret", "-n", release.namespace, name)["data"])


@pytest.fixture(scope="module")
def setup(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("metrics-auth")
    node = unique("metrics-node")
    crds.kubectl("create", "-f", "-", stdin=node_manifest(node))
    agent: subprocess.Popen[bytes] | None = None
    operator: OperatorProcess | None = None
    try:
        with installed(crds, *NO_PODS, *NO_POLICY, prefix="mtls") as release:
            for account in ("scraper", "nosy"):
                crds.kubectl("create", "serviceaccount", account, "-n", release.namespace)
            generated = installed_secret(crds, release)
            reader = {"kind": "ServiceAccount", "name": "scraper", "namespace": release.namespace}
            crds.helm(
                "upgrade",
                release.name,
                CHART,
                "--namespace",
                release.namespace,
                "--reuse-values",
                "--set-json",
                f"metrics.readers=[{json.dumps(reader)}]",
            )
            tls = secret_files(crds, release, workdir / "tls")

            def service_name(component: str) -> str:
                return f"{release.fullname}-{component}-metrics.{release.namespace}.svc"

            agent_ports = (free_port(), free_port())
            agent_token = pod_bound_token(crds, release, release.agent, node)
            agent_kubeconfig = workdir / "agent.kubeconfig"
            as_token(crds, agent_token, agent_kubeconfig)
            agent = start_agent(agent_kubeconfig, node, tls, agent_ports, workdir)
            operator_kubeconfig = workdir / "operator.kubeconfig"
            operator_token = crds.kubectl(
                "create", "token", release.operator, "-n", release.namespace
            ).stdout.strip()
            as_token(crds, operator_token, operator_kubeconfig)
            operator = OperatorProcess(
                operator_kubeconfig, workdir / "operator.log", metrics_tls=tls
            )
            operator.start()
            yield Setup(
                release=release,
                tls=tls,
                installed_certificate=generated,
                scraper=pod_bound_token(crds, release, "scraper", node),
                nosy=pod_bound_token(crds, release, "nosy", node),
                agent=Endpoint(agent_ports[0], service_name("agent")),
                agent_health=agent_ports[1],
                operator=Endpoint(operator.metrics_port, service_name("operator")),
                operator_health=operator.health_port,
            )
    finally:
        if operator is not None:
            operator.stop()
            print(f"--- operator log\n{operator.log()[-4000:]}")
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
            print(f"--- agent log\n{(workdir / 'agent.log').read_text()[-4000:]}")
        crds.kubectl("delete", "gnh", node, "--ignore-not-found", "--wait=false", check=False)
        crds.kubectl("delete", "node", node, "--wait=false", check=False)


@pytest.fixture(params=["agent", "operator"])
def endpoint(request: pytest.FixtureRequest, setup: Setup) -> Endpoint:
    found: Endpoint = getattr(setup, request.param)

    def listening() -> bool:
        try:
            scrape(found, setup.tls, None)
        except OSError:
            return False
        return True

    # The agent listens at once, the operator once it has read its configuration.
    eventually(listening, timeout=60)
    return found


def test_a_scrape_without_a_token_is_refused(setup: Setup, endpoint: Endpoint) -> None:
    assert scrape(endpoint, setup.tls, None) == (
        401,
        "Unauthorized: a bearer token is required\n",
    )


def test_a_scrape_with_a_token_the_api_server_does_not_know_is_refused(
    setup: Setup, endpoint: Endpoint
) -> None:
    assert scrape(endpoint, setup.tls, "not-a-token")[0] == 401


def test_a_scrape_with_a_token_without_the_role_is_refused(
    setup: Setup, endpoint: Endpoint
) -> None:
    user = setup.release.user("nosy")
    assert scrape(endpoint, setup.tls, setup.nosy) == (
        403,
        f"Forbidden: user {user!r} may not get /metrics\n",
    )


def test_a_scrape_with_a_token_bound_to_metrics_reader_succeeds(
    setup: Setup, endpoint: Endpoint
) -> None:
    status, body = scrape(endpoint, setup.tls, setup.scraper)

    assert status == 200
    own = "navarch_agent_api_writes_total" if endpoint is setup.agent else "navarch_nodes"
    assert own in body


def test_health_probes_answer_without_a_token(setup: Setup) -> None:
    eventually(lambda: probe(setup.agent_health, "/readyz") == 200, timeout=60)
    assert probe(setup.agent_health, "/healthz") == 200
    assert probe(setup.operator_health, "/healthz") == 200


def test_an_upgrade_keeps_the_generated_certificate(crds: Cluster, setup: Setup) -> None:
    assert installed_secret(crds, setup.release) == setup.installed_certificate
