#!/usr/bin/env bash
# Builds the real control-plane binaries (kube-apiserver, kube-scheduler,
# kube-controller-manager, kubectl, etcd, helm, and KWOK for simulated kubelets) from the pinned
# Go modules under hack/controlplane/. Each module is rebuilt only when its pins change.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${NAVARCH_BIN_DIR:-$root/.cache/bin}"
mkdir -p "$bin_dir"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

command -v go >/dev/null || { echo "go not found: install Go >= 1.26 (see README)" >&2; exit 1; }

version_of() { # module path in go.mod -> pinned version
  awk -v m="$2" '{for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v/) {print $(i + 1); exit}}' "$1/go.mod"
}

build() { # name, output (file, or directory ending in /), ldflags, packages...
  local name="$1" output="$2" ldflags="$3"; shift 3
  local dir="$root/hack/controlplane/$name"
  local stamp_file="$bin_dir/.stamp-$name"
  local stamp
  # The stamp covers this module's pins, its build line and this function, not the whole
  # script, so adding a module or a command to one build leaves the others' binaries valid.
  stamp="$({ cat "$dir/go.mod" "$dir/go.sum"; declare -f build; printf '%s\n' "$@" "$ldflags"; } \
    | sha256sum | cut -c1-16)-$(go env GOVERSION)"
  if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    echo "control plane: $name up to date"
    return
  fi
  echo "control plane: building $name (first build takes several minutes)"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$output" "$@")
  echo "$stamp" >"$stamp_file"
  echo "control plane: built $name in $((SECONDS - start))s"
}

kube_version="$(version_of "$root/hack/controlplane/kube" k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
build kube "$bin_dir/" "-X k8s.io/component-base/version.gitVersion=$kube_version \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor \
  -X k8s.io/client-go/pkg/version.gitVersion=$kube_version" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager

build etcd "$bin_dir/etcd" "" go.etcd.io/etcd/server/v3

helm_version="$(version_of "$root/hack/controlplane/helm" helm.sh/helm/v3)"
build helm "$bin_dir/" "-X helm.sh/helm/v3/internal/version.version=$helm_version" helm.sh/helm/v3/cmd/helm

# KWOK carries its own version in its source, so it needs no version flags.
build kwok "$bin_dir/kwok" "" sigs.k8s.io/kwok/cmd/kwok
