"""The Helm chart: what it renders, what its schema rejects, and a plain install."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from navarch import api
from navarch.operator.default_policy import (
    GPU_RESET_JOB,
    REBOOT_JOB,
    VALIDATION_JOB,
    default_policy_object,
)

from .chart import (
    CHART,
    KUBE_VERSION,
    METRICS_TLS_ARGS,
    METRICS_TLS_MOUNT,
    METRICS_TLS_VOLUME,
    find,
    installed,
    render,
    render_error,
)
from .cluster import Cluster

CHART_DIR = Path(CHART)
PEERING_API = ("--api-versions", "kopf.dev/v1/ClusterKopfPeering")
MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")


def test_helm_lint_is_clean(cluster: Cluster) -> None:
    result = cluster.helm("lint", "--strict", CHART, "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_helm_install_creates_crds_and_workloads(cluster: Cluster) -> None:
    with installed(cluster) as release:
        for crd in ("gpunodehealths.navarch.dev", "gpuhealthpolicies.navarch.dev"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        objects = cluster.kubectl(
            "get", "deployment,daemonset,serviceaccount", "-n", release.namespace, "-o", "name"
        ).stdout.split()
        assert f"deployment.apps/{release.operator}" in objects
        assert f"daemonset.apps/{release.agent}" in objects
        assert f"serviceaccount/{release.agent}" in objects
        shipped = cluster.kubectl(
            "get", "configmaps", "-n", release.namespace, "-o", "name"
        ).stdout.split()
        assert {f"configmap/{name}" for name in JOB_CONFIG_MAPS} <= set(shipped)
        status = cluster.helm("status", release.name, "-n", release.namespace).stdout
        assert "STATUS: deployed" in status
        policy = cluster.get_json("ghp", "default")
        assert policy["spec"]["rules"] == default_policy_object()["spec"]["rules"]


def test_chart_renders_the_builtin_default_policy_and_applies_overrides(cluster: Cluster) -> None:
    policies = [d for d in render(cluster) if d["kind"] == "GpuHealthPolicy"]
    assert [p["spec"] for p in policies] == [default_policy_object()["spec"]]
    overridden = render(
        cluster,
        "--set",
        "defaultPolicy.overrides.dryRun=true",
        "--set",
        "defaultPolicy.overrides.maxUnhealthy=5%",
    )
    spec = find(overridden, "GpuHealthPolicy")["spec"]
    assert spec["dryRun"] is True and spec["maxUnhealthy"] == "5%"
    assert spec["rules"] == default_policy_object()["spec"]["rules"]
    disabled = render(cluster, "--set", "defaultPolicy.enabled=false")
    assert not [d for d in disabled if d["kind"] == "GpuHealthPolicy"]


# --- agent ------------------------------------------------------------------------------------


def agent_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "DaemonSet")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_agent_daemonset_runs_restricted_except_for_reading_the_kernel_log(
    cluster: Cluster,
) -> None:
    docs = render(cluster)
    daemonset = find(docs, "DaemonSet", "nv-navarch-agent")
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0},
    }
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nv-navarch-agent"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert "runtimeClassName" not in pod
    assert {"key": "navarch.dev/gpu-unhealthy", "operator": "Exists"} in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["command"] == ["navarch-agent", "run"]
    assert container["image"] == "ghcr.io/navarch/navarch:0.1.0"
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYSLOG"]},
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
    }
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env == {
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "utility",
    }
    assert {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": True} in container["volumeMounts"]
    assert {"name": "kmsg", "hostPath": {"path": "/dev/kmsg", "type": "CharDevice"}} in pod[
        "volumes"
    ]
    assert container["args"] == [
        "--kmsg-path=/dev/kmsg",
        "--metrics-port=9101",
        *METRICS_TLS_ARGS,
        "--health-port=9102",
        "--log-format=json",
    ]
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 9101, "protocol": "TCP"},
        {"name": "health", "containerPort": 9102, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }


def test_agent_options_render_into_the_pod(cluster: Cluster) -> None:
    pod = agent_pod(
        render(
            cluster,
            "--set",
            "agent.runtimeClassName=nvidia",
            "--set",
            "agent.priorityClassName=",
            "--set",
            "agent.pollInterval=5s",
            "--set",
            "agent.heartbeatInterval=30s",
            "--set",
            "agent.expectedGpus=8",
            "--set",
            "taintKey=example.com/gpu-bad",
            "--set",
            "logFormat=text",
            "--set",
            "agent.updateStrategy.maxUnavailable=3",
        )
    )
    assert pod["runtimeClassName"] == "nvidia"
    assert "priorityClassName" not in pod
    assert {"key": "example.com/gpu-bad", "operator": "Exists"} in pod["tolerations"]
    assert pod["containers"][0]["args"] == [
        "--kmsg-path=/dev/kmsg",
        "--metrics-port=9101",
        *METRICS_TLS_ARGS,
        "--health-port=9102",
        "--log-format=text",
        "--poll-interval=5s",
        "--heartbeat-interval=30s",
        "--expected-gpus=8",
    ]


def test_custom_taint_key_reaches_both_the_policy_and_the_agent_toleration(
    cluster: Cluster,
) -> None:
    docs = render(cluster, "--set", "taintKey=example.com/gpu-bad")
    assert find(docs, "GpuHealthPolicy")["spec"]["taintKey"] == "example.com/gpu-bad"
    assert {"key": "example.com/gpu-bad", "operator": "Exists"} in agent_pod(docs)["tolerations"]


def test_privileged_agent_is_opt_in_and_replaces_the_capability(cluster: Cluster) -> None:
    container = agent_pod(render(cluster, "--set", "agent.privileged=true"))["containers"][0]
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "privileged": True,
        "runAsUser": 0,
    }


# --- operator ---------------------------------------------------------------------------------


def test_operator_is_a_single_non_root_instance_with_a_read_only_root(cluster: Cluster) -> None:
    docs = render(cluster)
    deployment = find(docs, "Deployment", "nv-navarch-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nv-navarch-operator"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["command"] == ["navarch-operator"]
    assert container["args"] == [
        "--metrics-port=8080",
        *METRICS_TLS_ARGS,
        "--health-port=8081",
        "--stall-timeout=300",
        "--log-format=json",
    ]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["env"] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, METRICS_TLS_MOUNT]
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        METRICS_TLS_VOLUME,
    ]
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
        {"name": "health", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    rules = find(docs, "ClusterRole", "nv-navarch-operator")["rules"]
    assert not [r for r in rules if "kopf.dev" in r["apiGroups"]]
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]


def test_operator_tolerates_noexecute_quarantine_and_prefers_nodes_without_gpus(
    cluster: Cluster,
) -> None:
    docs = render(cluster, "--set-json", 'admission.operatorTaintKeys=["example.com/gpu-bad"]')
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "navarch.dev/gpu-unhealthy", "operator": "Exists", "effect": "NoExecute"},
        {"key": "example.com/gpu-bad", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert pod["affinity"]["nodeAffinity"] == {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}
                    ]
                },
            }
        ]
    }
    dropped = render(cluster, "--set-json", "operator.affinity.nodeAffinity=null")
    assert "affinity" not in find(dropped, "Deployment")["spec"]["template"]["spec"]


def test_peering_adds_the_flag_the_peering_object_and_its_rbac(cluster: Cluster) -> None:
    docs = render(
        cluster,
        *PEERING_API,
        "--set",
        "operator.peering.enabled=true",
        "--set",
        "operator.workers=4",
    )
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "--metrics-port=8080",
        *METRICS_TLS_ARGS,
        "--health-port=8081",
        "--stall-timeout=300",
        "--log-format=json",
        "--peering=nv-navarch",
        "--workers=4",
    ]
    assert find(docs, "ClusterKopfPeering")["metadata"]["name"] == "nv-navarch"
    rules = find(docs, "ClusterRole", "nv-navarch-operator")["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules


# --- remediation ------------------------------------------------------------------------------

JOB_CONFIG_MAPS = {
    "navarch-gpu-reset": "gpu-reset",
    "navarch-reboot": "reboot",
    "navarch-gpu-validate": "gpu-validate",
}
"""The ConfigMaps the chart ships, named as navarch/operator/policy.py names them, and the
container of each Job."""


def job_pod(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    job = yaml.safe_load(find(docs, "ConfigMap", name)["data"]["job.yaml"])
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_chart_ships_the_remediation_jobs_the_default_policy_names(cluster: Cluster) -> None:
    assert tuple(JOB_CONFIG_MAPS) == (GPU_RESET_JOB, REBOOT_JOB, VALIDATION_JOB)
    docs = render(cluster, "--namespace", "gpu-health")
    ladder = find(docs, "GpuHealthPolicy")["spec"]["actions"]["unhealthy"]["remediate"]["steps"]
    assert {step["job"]["configMap"] for step in ladder} <= set(JOB_CONFIG_MAPS)
    for name, container in JOB_CONFIG_MAPS.items():
        config_map = find(docs, "ConfigMap", name)
        assert config_map["metadata"]["namespace"] == "gpu-health"
        assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "navarch"
        assert set(config_map["data"]) == {"job.yaml"}
        job = yaml.safe_load(config_map["data"]["job.yaml"])
        assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["automountServiceAccountToken"] is False
        # The operator pins the pod and adds tolerations, labels and its variables.
        assert "nodeName" not in pod and "tolerations" not in pod and "name" not in job["metadata"]
        assert [c["name"] for c in pod["containers"]] == [container]
        assert "runtimeClassName" not in pod

    (reset,) = job_pod(docs, "navarch-gpu-reset")["containers"]
    assert reset["image"] == "ghcr.io/navarch/navarch:0.1.0"
    assert reset["securityContext"] == {"privileged": True, "runAsUser": 0, "runAsNonRoot": False}
    assert {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"} in reset["env"]

    reboot = job_pod(docs, "navarch-reboot")
    assert reboot["securityContext"]["runAsNonRoot"] is True
    (container,) = reboot["containers"]
    assert container["image"] == "ghcr.io/navarch/navarch:0.1.0"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [
        {"name": "sentinel", "mountPath": "/navarch/reboot-required", "readOnly": True}
    ]
    assert reboot["volumes"] == [
        {
            "name": "sentinel",
            "hostPath": {"path": "/var/run/reboot-required", "type": "FileOrCreate"},
        }
    ]

    (validate,) = job_pod(docs, "navarch-gpu-validate")["containers"]
    assert validate["image"] == "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04"
    assert validate["securityContext"]["privileged"] is True
    assert "limits" not in validate["resources"]


def run_script(
    pod: dict[str, Any], tools: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run a shipped Job's shell script with stand-ins for the NVIDIA tools on PATH."""
    command = pod["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    path = f"{tools}:/usr/bin:/bin"
    return subprocess.run(
        ["/bin/sh", "-c", command[2]],
        env={"PATH": path, "NAVARCH_NODE": "gpu-a", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shipped_scripts_call_the_tools_as_their_docs_say(cluster: Cluster, tmp_path: Path) -> None:
    """nvidia-smi resets a comma-separated list of GPUs in one call (NVLink peers must go
    together), or every GPU; the diagnostic runs against a host engine the script starts and
    fails the Job when dcgmi reports a failure."""
    for tool, body in (
        ("nvidia-smi", 'echo "nvidia-smi $*"'),
        ("nv-hostengine", "exec sleep 30"),
        ("dcgmi", 'echo "dcgmi $*"; [ "$1" != diag ] || exit "${DIAG_EXIT:-0}"'),
    ):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    docs = render(cluster)
    reset = job_pod(docs, "navarch-gpu-reset")
    gpus = "GPU-11111111-1111-1111-1111-111111111111 GPU-22222222-2222-2222-2222-222222222222"
    result = run_script(reset, tmp_path, {"NAVARCH_GPU_UUIDS": gpus})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "nvidia-smi --gpu-reset -i " + gpus.replace(" ", ",")
    result = run_script(reset, tmp_path, {"NAVARCH_GPU_UUIDS": ""})
    assert result.stdout.splitlines()[-1] == "nvidia-smi --gpu-reset"

    validate = job_pod(docs, "navarch-gpu-validate")
    passed = run_script(validate, tmp_path, {"NAVARCH_GPU_UUIDS": gpus})
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.splitlines()[-1] == "dcgmi diag -r 2"
    failed = run_script(validate, tmp_path, {"NAVARCH_GPU_UUIDS": gpus, "DIAG_EXIT": "226"})
    assert failed.returncode == 226

    sentinel = tmp_path / "reboot-required"
    reboot = job_pod(docs, "navarch-reboot")
    assert run_script(reboot, tmp_path, {"NAVARCH_REBOOT_SENTINEL": str(sentinel)}).returncode
    sentinel.touch()
    result = run_script(reboot, tmp_path, {"NAVARCH_REBOOT_SENTINEL": str(sentinel)})
    assert result.returncode == 0 and "asked kured to reboot node gpu-a" in result.stdout


def test_remediation_job_values_render_into_the_manifests(cluster: Cluster) -> None:
    prefix = "remediation.jobTemplates"
    docs = render(
        cluster,
        "--set", "agent.runtimeClassName=nvidia",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", f"{prefix}.ttlSecondsAfterFinished=600",
        "--set", f"{prefix}.gpuReset.image=registry.example/tools:1",
        "--set-json", f'{prefix}.gpuReset.command=["nvidia-smi","-r"]',
        "--set-json", f'{prefix}.gpuReset.extraEnv=[{{"name":"X","value":"1"}}]',
        "--set", f"{prefix}.gpuReset.resources.limits.memory=1Gi",
        "--set", f"{prefix}.reboot.sentinelPath=/run/kured/reboot-required",
        "--set", f"{prefix}.reboot.runtimeClassName=runc",
        "--set", f"{prefix}.validate.runtimeClassName=nvidia-cdi",
        "--set", f"{prefix}.validate.image=registry.example/dcgm:4",
    )  # fmt: skip
    for name in JOB_CONFIG_MAPS:
        job = yaml.safe_load(find(docs, "ConfigMap", name)["data"]["job.yaml"])
        assert job["spec"]["ttlSecondsAfterFinished"] == 600
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    reset = job_pod(docs, "navarch-gpu-reset")
    # The reset needs the NVIDIA runtime as the agent does, and follows the agent's.
    assert reset["runtimeClassName"] == "nvidia"
    (container,) = reset["containers"]
    assert container["image"] == "registry.example/tools:1"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["nvidia-smi", "-r"]
    assert container["env"][-1] == {"name": "X", "value": "1"}
    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "1Gi"},
    }
    reboot = job_pod(docs, "navarch-reboot")
    assert reboot["runtimeClassName"] == "runc"
    assert reboot["volumes"][0]["hostPath"]["path"] == "/run/kured/reboot-required"
    validate = job_pod(docs, "navarch-gpu-validate")
    assert validate["runtimeClassName"] == "nvidia-cdi"
    assert validate["containers"][0]["image"] == "registry.example/dcgm:4"


def test_remediation_rbac_is_the_operators_namespace_and_the_listed_templates(
    cluster: Cluster,
) -> None:
    docs = render(cluster, "--namespace", "gpu-health")
    role = find(docs, "Role", "nv-navarch-operator-remediation")
    assert role["metadata"]["namespace"] == "gpu-health"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "delete"],
        },
    ]
    binding = find(docs, "RoleBinding", "nv-navarch-operator-remediation")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nv-navarch-operator", "namespace": "gpu-health"}
    ]
    rules = find(docs, "ClusterRole", "nv-navarch-operator")["rules"]
    assert not [r for r in rules if "remediation.medik8s.io" in r["apiGroups"]]
    assert not [r for r in rules if r.get("nonResourceURLs")]

    snr = {
        "apiGroup": "remediation.medik8s.io",
        "templateResource": "selfnoderemediationtemplates",
        "resource": "selfnoderemediations",
    }
    docs = render(cluster, "--set-json", f"remediation.templates=[{json.dumps(snr)}]")
    rules = find(docs, "ClusterRole", "nv-navarch-operator")["rules"]
    assert [r for r in rules if "remediation.medik8s.io" in r["apiGroups"]] == [
        {
            "apiGroups": ["remediation.medik8s.io"],
            "resources": ["selfnoderemediationtemplates"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["remediation.medik8s.io"],
            "resources": ["selfnoderemediations"],
            "verbs": ["create", "get", "delete"],
        },
    ]


def test_remediation_jobs_are_optional_and_ship_for_an_operator_run_elsewhere(
    cluster: Cluster,
) -> None:
    off = render(cluster, "--set", "remediation.jobTemplates.enabled=false")
    assert not [d for d in off if d["kind"] == "ConfigMap"]
    # Policies may still name ConfigMaps of their own.
    assert find(off, "Role", "nv-navarch-operator-remediation")
    agent_only = render(cluster, "--set", "operator.enabled=false")
    assert not [d for d in agent_only if d["kind"] in ("Role", "RoleBinding")]
    # An operator outside the cluster (make demo runs one) still finds the Jobs it runs.
    shipped = {d["metadata"]["name"] for d in agent_only if d["kind"] == "ConfigMap"}
    assert shipped == {"navarch-gpu-reset", "navarch-reboot", "navarch-gpu-validate"}


# --- images, monitoring, admission, notes --------------------------------------------------------


def test_image_tag_defaults_to_the_app_version(cluster: Cluster) -> None:
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    images = {
        c["image"]
        for d in render(cluster)
        if d["kind"] in ("DaemonSet", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"ghcr.io/navarch/navarch:{app_version}"}
    docs = render(
        cluster, "--set", "image.repository=registry.example/navarch", "--set", "image.tag=dev"
    )
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/navarch:dev"
    )


def test_service_monitors_are_optional(cluster: Cluster) -> None:
    assert not [d for d in render(cluster) if d["kind"] in ("ServiceMonitor", "Service")]
    docs = render(
        cluster,
        *MONITORING_API,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=prom",
    )
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"nv-navarch-agent", "nv-navarch-operator"}
    for component, port in (("agent", 9101), ("operator", 8080)):
        monitor = monitors[f"nv-navarch-{component}"]
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        service = find(docs, "Service", f"nv-navarch-{component}-metrics")
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": port, "targetPort": "metrics"}
        ]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )


ADMISSION_POLICIES = {
    "nodeScopedAgentWrites": ("nv-navarch-agent-node-scope", "agent"),
    "agentOwnedFields": ("nv-navarch-agent-owned-fields", "agent"),
    "operatorNodeScope": ("nv-navarch-operator-node-scope", "operator"),
    "operatorPodScope": ("nv-navarch-operator-pod-scope", "operator"),
}


@pytest.mark.parametrize("value", sorted(ADMISSION_POLICIES))
def test_admission_policy_matches_only_this_releases_account(cluster: Cluster, value: str) -> None:
    name, component = ADMISSION_POLICIES[value]
    docs = render(cluster, "--namespace", "gpu-health")
    policy = find(docs, "ValidatingAdmissionPolicy", name)
    assert policy["spec"]["matchConditions"] == [
        {
            "name": f"is-navarch-{component}",
            "expression": "request.userInfo.username == "
            f'"system:serviceaccount:gpu-health:nv-navarch-{component}"',
        }
    ]
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = find(docs, "ValidatingAdmissionPolicyBinding", name)
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    off = render(cluster, "--set", f"admission.{value}=false")
    remaining = {d["metadata"]["name"] for d in off if d["kind"] == "ValidatingAdmissionPolicy"}
    assert remaining == {n for n, _ in ADMISSION_POLICIES.values()} - {name}


def test_agent_policy_guards_every_operator_owned_status_key(cluster: Cluster) -> None:
    """The keys come from the API types through the generated chart file, one rule each."""
    policy = find(render(cluster), "ValidatingAdmissionPolicy", "nv-navarch-agent-owned-fields")
    guarded = [
        key
        for key in api.OPERATOR_STATUS_KEYS
        for v in policy["spec"]["validations"]
        if f"status.{key} of GpuNodeHealth" in v["messageExpression"]
    ]
    assert guarded == list(api.OPERATOR_STATUS_KEYS)


def test_operator_policy_allows_the_configured_taint_keys(cluster: Cluster) -> None:
    docs = render(
        cluster,
        "--set",
        "taintKey=example.com/gpu",
        "--set-json",
        'admission.operatorTaintKeys=["example.com/repair","example.com/gpu"]',
    )
    policy = find(docs, "ValidatingAdmissionPolicy", "nv-navarch-operator-node-scope")
    keys = next(v for v in policy["spec"]["variables"] if v["name"] == "taintKeys")
    assert json.loads(keys["expression"]) == ["example.com/gpu", "example.com/repair"]
    error = render_error(cluster, "--set-json", 'admission.operatorTaintKeys=["not a key"]')
    assert "operatorTaintKeys" in error


def test_notes_tell_how_to_inspect(cluster: Cluster) -> None:
    result = cluster.helm(
        "install",
        "nv",
        CHART,
        "--dry-run=server",
        "--namespace",
        "gpu-health",
        "--set",
        "defaultPolicy.overrides.dryRun=true",
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    for command in (
        "kubectl get gnh",
        "kubectl describe gnh NODE",
        "kubectl get ghp default -o yaml",
    ):
        assert command in notes
    assert "dryRun is on" in notes


# --- values: schema and impossible combinations -------------------------------------------

BAD_VALUES = [
    pytest.param(
        ("--set", "agent.resources=lots"),
        "at '/agent/resources': got string, want object",
        id="resources-type",
    ),
    pytest.param(
        ("--set", "agent.tolerations[0].key=x", "--set", "agent.tolerations[0].effect=NoScheduled"),
        "at '/agent/tolerations/0/effect': value must be one of "
        "'', 'NoSchedule', 'PreferNoSchedule', 'NoExecute'",
        id="toleration-effect",
    ),
    pytest.param(
        ("--set", "defaultPolicy.overrides.actions.unhealthy.taint=NoSchedul"),
        "at '/defaultPolicy/overrides/actions/unhealthy/taint': value must be one of "
        "'NoSchedule', 'NoExecute', 'None'",
        id="policy-taint-effect",
    ),
    pytest.param(
        ("--set", "agent.updateStrategy.maxUnavailable=-1"),
        "at '/agent/updateStrategy/maxUnavailable': minimum: got -1, want 1",
        id="negative-max-unavailable",
    ),
    pytest.param(
        ("--set", "agent.updateStrategy.maxUnavailable=0%"),
        "at '/agent/updateStrategy/maxUnavailable'",
        id="zero-percent-max-unavailable",
    ),
    pytest.param(
        ("--set", "agent.metricsPort=70000"),
        "at '/agent/metricsPort': maximum: got 70,000, want 65,535",
        id="port",
    ),
    pytest.param(
        ("--set", "logFormat=xml"),
        "at '/logFormat': value must be one of 'text', 'json'",
        id="log-format",
    ),
    pytest.param(("--set", "agent.pollInterval=soon"), "at '/agent/pollInterval'", id="interval"),
    pytest.param(
        ("--set", "agnet.enabled=false"), "additional properties 'agnet' not allowed", id="typo"
    ),
    pytest.param(
        ("--set", "image.pullPolicy=Sometimes"),
        "at '/image/pullPolicy': value must be one of",
        id="pull-policy",
    ),
    pytest.param(
        ("--set", "operator.replicas=2"),
        "additional properties 'replicas' not allowed",
        id="no-replicas",
    ),
    pytest.param(
        ("--set", "operator.stallTimeout=5"),
        "at '/operator/stallTimeout': minimum: got 5, want 15",
        id="stall-timeout",
    ),
    pytest.param(
        ("--set", "remediation.jobTemplates.reboot.sentinelPath=reboot-required"),
        "at '/remediation/jobTemplates/reboot/sentinelPath'",
        id="relative-sentinel",
    ),
    pytest.param(
        ("--set", "remediation.jobTemplates.gpuReset.privileged=false"),
        "additional properties 'privileged' not allowed",
        id="job-privileged",
    ),
    pytest.param(
        (
            "--set-json",
            'remediation.templates=[{"apiGroup":"remediation.medik8s.io",'
            '"templateResource":"selfnoderemediationtemplates"}]',
        ),
        "at '/remediation/templates/0': missing property 'resource'",
        id="template-without-resource",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_schema_rejects_bad_values_in_template_and_lint(
    cluster: Cluster, values: tuple[str, ...], message: str
) -> None:
    assert message in render_error(cluster, *values)
    lint = cluster.helm(
        "lint", "--strict", CHART, "--kube-version", KUBE_VERSION, *values, check=False
    )
    assert lint.returncode != 0
    assert message in lint.stdout + lint.stderr


IMPOSSIBLE = [
    pytest.param(
        (
            "--set",
            "agent.enabled=false",
            "--set",
            "operator.enabled=false",
            "--set",
            "defaultPolicy.enabled=false",
        ),
        "agent.enabled, operator.enabled and defaultPolicy.enabled are all false",
        id="nothing-enabled",
    ),
    pytest.param(
        ("--set", "operator.peering.enabled=true"),
        "needs kopf's ClusterKopfPeering CRD (clusterkopfpeerings.kopf.dev)",
        id="peering-without-crd",
    ),
    pytest.param(
        ("--set", "serviceMonitor.enabled=true"),
        "needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1)",
        id="servicemonitor-without-crd",
    ),
    pytest.param(
        ("--set", "defaultPolicy.overrides.taintKey=example.com/x"),
        "set the top-level taintKey instead of defaultPolicy.overrides.taintKey",
        id="policy-taint-key",
    ),
]


@pytest.mark.parametrize(("values", "message"), IMPOSSIBLE)
def test_impossible_combinations_fail_with_a_clear_message(
    cluster: Cluster, values: tuple[str, ...], message: str
) -> None:
    assert message in render_error(cluster, *values)


def test_schema_overrides_match_the_policy_crd() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    overrides = schema["properties"]["defaultPolicy"]["properties"]["overrides"]
    crd = yaml.safe_load((CHART_DIR / "crds" / "gpuhealthpolicies.navarch.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(overrides["properties"]) == set(spec["properties"])
    action = schema["definitions"]["action"]["properties"]
    for severity in spec["properties"]["actions"]["properties"].values():
        assert set(action) == set(severity["properties"])
        assert action["taint"]["enum"] == severity["properties"]["taint"]["enum"]
    limits = overrides["properties"]["drainLimits"]["properties"]
    assert set(limits) == set(spec["properties"]["drainLimits"]["properties"])


def test_every_value_is_documented_where_it_is_defined() -> None:
    """Each key of a chart-defined section has a comment above it and a schema description.

    Keys below a free-form Kubernetes shape (resources, nodeSelector, tolerations) are data,
    documented by the comment on the shape itself."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    undocumented: list[str] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.\-/]*):", line)
        if match and not line.lstrip().startswith("-"):
            indent, key = len(match[1]), match[2]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            node: Any = schema
            for _, parent in stack:
                node = node.get("properties", {}).get(parent, {}) if node is not None else None
            if node is not None and "properties" in node:
                path = ".".join([k for _, k in stack] + [key])
                described = node["properties"].get(key, {})
                if not previous.lstrip().startswith("#") or not described.get("description"):
                    undocumented.append(path)
            stack.append((indent, key))
        if line.strip():
            previous = line
    assert undocumented == []


# --- flags the templates pass exist in the CLIs -------------------------------------------


@pytest.mark.parametrize(
    ("module", "command", "kind"),
    [
        ("navarch.node_agent.cli", ["navarch-agent", "run"], "DaemonSet"),
        ("navarch.operator.cli", ["navarch-operator"], "Deployment"),
    ],
)
def test_rendered_flags_exist_in_the_cli(
    cluster: Cluster, module: str, command: list[str], kind: str
) -> None:
    script = Path(sys.executable).with_name(command[0])
    assert importlib.util.find_spec(module) is not None
    assert script.exists(), f"{script} is not installed"
    docs = render(
        cluster,
        *PEERING_API,
        "--set",
        "operator.peering.enabled=true",
        "--set",
        "operator.workers=2",
        "--set",
        "agent.pollInterval=5s",
        "--set",
        "agent.heartbeatInterval=30s",
        "--set",
        "agent.expectedGpus=8",
    )
    args = find(docs, kind)["spec"]["template"]["spec"]["containers"][0]["args"]
    usage = subprocess.run(
        [str(script), *command[1:], "--help"], capture_output=True, text=True, check=True
    ).stdout
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"{re.escape(flag)}\b", usage), (
            f"{flag} is not in `{' '.join(command)} --help`"
        )
