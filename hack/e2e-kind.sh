#!/usr/bin/env bash
# End-to-end on kind: build the image, run the chart on a kind cluster with the agent on the
# fake NVML library, check that agents report and the operator judges, then run the
# integration suite against the same cluster (NAVARCH_KUBECONFIG).
#
# Needs docker (with BuildKit) and kind on PATH, plus what `make test` needs. Run it through
# `make e2e-kind`.
# KEEP_CLUSTER=1 leaves the cluster running afterwards; KIND_NODE_IMAGE picks the Kubernetes
# version (>= 1.30: the chart's admission policy needs node names in ServiceAccount tokens).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cluster="${KIND_CLUSTER:-navarch-e2e}"
node_image="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
image="navarch:e2e"
namespace="navarch-system"
kubeconfig="$root/.cache/kind-$cluster.kubeconfig"
kubectl="$root/.cache/bin/kubectl --kubeconfig $kubeconfig"
helm="$root/.cache/bin/helm --kubeconfig $kubeconfig"

for tool in docker kind; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool not found on PATH" >&2; exit 1; }
done

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$cluster" || true
  else
    echo "e2e-kind: cluster $cluster kept; kubeconfig $kubeconfig"
  fi
}
trap cleanup EXIT

echo "== cluster"
if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --image "$node_image" --wait 120s
fi
mkdir -p "$(dirname "$kubeconfig")"
kind get kubeconfig --name "$cluster" >"$kubeconfig"
# The agent's default nodeSelector: GPU feature discovery's label, here set by hand.
$kubectl label nodes --all nvidia.com/gpu.present=true --overwrite

echo "== image"
docker build -t navarch:base "$root"
# Test-only layer: the fake libnvidia-ml.so, compiled for the image's glibc against the same
# NVIDIA nvml.h as the tests use (the sim extra's nvidia-nvml-dev, passed as a build context).
# The production image above stays compiler-free; this one never leaves the kind cluster. Its
# source comes as a build context of its own: .dockerignore keeps navarch/testing out of the
# image's.
nvml_include="$("$root/.venv/bin/python" -c \
  'from navarch.testing.fake_nvml import nvml_include_dir; print(nvml_include_dir())')"
docker build -t "$image" --build-context nvml-include="$nvml_include" \
  --build-context fake-nvml-src="$root/navarch/testing" -f - "$root" <<'DOCKERFILE'
FROM python:3.11.13-bookworm AS fake-nvml
COPY --from=fake-nvml-src fake_nvml.c /src/fake_nvml.c
COPY --from=nvml-include nvml.h /usr/local/include/nvml.h
RUN gcc -O2 -Wall -Wextra -Wmissing-prototypes -fvisibility=hidden -shared -fPIC \
    -Wl,-soname,libnvidia-ml.so.1 -o /src/libnvidia-ml.so.1 /src/fake_nvml.c -lpthread
FROM navarch:base
COPY --from=fake-nvml /src/libnvidia-ml.so.1 /opt/fake-nvml/libnvidia-ml.so.1
DOCKERFILE
kind load docker-image "$image" --name "$cluster"

echo "== install"
$kubectl create namespace "$namespace" --dry-run=client -o yaml | $kubectl apply -f -
# Eight healthy fake GPUs per node (format: navarch/testing/FAKE_NVML.md).
$kubectl -n "$namespace" create configmap fake-nvml --from-literal=scenario="gpus 8" \
  --dry-run=client -o yaml | $kubectl apply -f -
$helm upgrade --install navarch charts/navarch --namespace "$namespace" \
  --set image.repository=navarch --set image.tag=e2e --set image.pullPolicy=Never \
  --set logFormat=text \
  --set-json 'agent.extraArgs=["--nvml-library=/opt/fake-nvml/libnvidia-ml.so.1"]' \
  --set-json 'agent.extraEnv=[{"name":"NAVARCH_FAKE_NVML_SCENARIO","value":"/etc/fake-nvml/scenario"}]' \
  --set-json 'agent.extraVolumes=[{"name":"fake-nvml","configMap":{"name":"fake-nvml"}}]' \
  --set-json 'agent.extraVolumeMounts=[{"name":"fake-nvml","mountPath":"/etc/fake-nvml","readOnly":true}]' \
  --wait --timeout 5m

echo "== agents report, the operator judges"
for node in $($kubectl get nodes -o name | cut -d/ -f2); do
  # kubectl wait needs the object to exist first.
  for _ in $(seq 60); do $kubectl get "gnh/$node" >/dev/null 2>&1 && break; sleep 2; done
  $kubectl wait --for=jsonpath='{.status.gpuCount}'=8 "gnh/$node" --timeout=120s
  $kubectl wait --for=jsonpath='{.status.verdict.health}'=Healthy "gnh/$node" --timeout=120s
done
$kubectl get gnh
$kubectl get ghp default -o yaml

# The suite starts its own operators and agents; an installed operator would act on its nodes.
$helm uninstall navarch --namespace "$namespace" --wait

echo "== integration suite"
NAVARCH_KUBECONFIG="$kubeconfig" "$root/.venv/bin/python" -m pytest tests/integration -ra
