"""Installing and rendering the Helm chart in tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from navarch.testing.controlplane import REPO_ROOT

from .cluster import Cluster, unique

CHART = str(REPO_ROOT / "charts" / "navarch")
KUBE_VERSION = "1.36.3"
"""`helm template` assumes an old Kubernetes unless told; Chart.yaml requires >= 1.30."""

NO_PODS = (
    "--set-string",
    "agent.nodeSelector.navarch\\.dev/test-only=none",
    "--set-string",
    "operator.nodeSelector.navarch\\.dev/test-only=none",
)
"""Values that keep a release's pods off every node, so tests that only need the chart's API
objects behave the same on a real cluster (NAVARCH_KUBECONFIG) as on the bare control plane."""

NO_POLICY = ("--set", "defaultPolicy.enabled=false")
"""The default policy is a cluster-scoped object with a fixed name: one release at a time."""

KOPF_PEERING_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusterkopfpeerings.kopf.dev
spec:
  scope: Cluster
  group: kopf.dev
  names:
    kind: ClusterKopfPeering
    plural: clusterkopfpeerings
    singular: clusterkopfpeering
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""
"""kopf's peering CRD as kopf's peering.yaml defines it; users install it, the chart does not."""


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-navarch"

    @property
    def agent(self) -> str:
        return f"{self.fullname}-agent"

    @property
    def operator(self) -> str:
        return f"{self.fullname}-operator"

    def user(self, account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{account}"


@contextlib.contextmanager
def installed(cluster: Cluster, *values: str, prefix: str = "nv") -> Iterator[Release]:
    """A fresh release in a fresh namespace, uninstalled (namespace and all) afterwards."""
    release = Release(unique(prefix), unique("navarch"))
    cluster.helm(
        "install",
        release.name,
        CHART,
        "--namespace",
        release.namespace,
        "--create-namespace",
        "--wait=false",
        *values,
    )
    try:
        yield release
    finally:
        cluster.helm("uninstall", release.name, "--namespace", release.namespace, check=False)
        cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def render(cluster: Cluster, *args: str, release: str = "nv") -> list[dict[str, Any]]:
    out = cluster.helm("template", release, CHART, "--kube-version", KUBE_VERSION, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(cluster: Cluster, *args: str) -> str:
    """The error `helm template` stops with; fails the test if rendering succeeds."""
    result = cluster.helm(
        "template", "nv", CHART, "--kube-version", KUBE_VERSION, *args, check=False
    )
    assert result.returncode != 0, f"rendered despite {args}:\n{result.stdout[:2000]}"
    return result.stderr


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def ensure_kopf_peering_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=KOPF_PEERING_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
    )


NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
"""User-info extra the API server derives from a pod-bound ServiceAccount token."""


def impersonating(cluster: Cluster, user: str, node_name: str | None = None) -> client.ApiClient:
    """A client whose requests the API server authorises as ``user``, optionally carrying the
    node-name extra a kubelet-mounted token would carry. kubectl has no flag for extras.

    No Impersonate-Group: for a ServiceAccount the API server adds its groups itself."""
    api = cluster.api_client()
    api.set_default_header("Impersonate-User", user)
    if node_name is not None:
        # Header names cannot hold "/", so the key is percent-encoded.
        key = NODE_NAME_EXTRA.replace("/", "%2F")
        api.set_default_header(f"Impersonate-Extra-{key}", node_name)
    return api


def with_token(cluster: Cluster, token: str) -> client.ApiClient:
    """A client that authenticates with ``token`` alone, not the admin certificate."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def pod_bound_token(cluster: Cluster, release: Release, account: str, node: str) -> str:
    """A token for ServiceAccount ``account`` bound to a new Pod on ``node``: the credential a
    kubelet mounts, which carries the node's name. The Pod never runs (no kubelet serves the
    node); the token only needs the binding."""
    pod = unique(f"{account[-8:]}-pod")
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": release.namespace},
        "spec": {
            "serviceAccountName": account,
            "nodeName": node,
            "containers": [{"name": "main", "image": "registry.invalid/navarch:none"}],
        },
    }
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    return cluster.kubectl(
        "create",
        "token",
        account,
        "-n",
        release.namespace,
        "--bound-object-kind=Pod",
        f"--bound-object-name={pod}",
        "--duration=30m",
    ).stdout.strip()


def as_token(cluster: Cluster, token: str, path: Path) -> Cluster:
    """The same cluster reached with ``token`` alone (no admin certificate), through a
    kubeconfig written to ``path``: for kubectl and for processes under test."""
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    user = kubeconfig["contexts"][0]["context"]["user"]
    kubeconfig["users"] = [{"name": user, "user": {"token": token}}]
    kubeconfig["current-context"] = kubeconfig["contexts"][0]["name"]
    kubeconfig["contexts"] = kubeconfig["contexts"][:1]
    path.write_text(yaml.safe_dump(kubeconfig))
    return Cluster(path, None)


def gnh_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "navarch.dev/v1alpha1",
        "kind": "GpuNodeHealth",
        "metadata": {"name": name},
        "spec": {"nodeName": name},
    }


def node_manifest(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})


METRICS_TLS_ARGS = [
    "--metrics-cert-file=/etc/navarch/metrics-tls/tls.crt",
    "--metrics-key-file=/etc/navarch/metrics-tls/tls.key",
]
"""What the components get by default: metrics over HTTPS behind the token check."""
METRICS_TLS_MOUNT = {
    "name": "metrics-tls",
    "mountPath": "/etc/navarch/metrics-tls",
    "readOnly": True,
}
METRICS_TLS_VOLUME = {
    "name": "metrics-tls",
    "secret": {"secretName": "nv-navarch-metrics-tls", "defaultMode": 0o440},
}
