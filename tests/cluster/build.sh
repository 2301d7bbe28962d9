#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, metrics-server (the
# resource metrics API the HPA controller reads), Traefik (the Gateway API
# data plane), Helm (for the chart's tests) and crane (OCI images without a
# Docker engine) from the upstream Go modules pinned in
# tests/cluster/{etcd,k8s,metrics-server,traefik,helm,crane}/go.mod. Output goes to
# target/cluster/bin; a stamp of the go.mod/go.sum contents means a second run
# with unchanged modules does nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/cluster/bin"
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
# Go's build cache lives under target/ too, so `make clean` style wipes are complete
# and CI reuses it between runs on the same machine.
export GOCACHE="${GOCACHE:-$root/target/go-cache}"

stamp_of() { cat "$1/go.mod" "$1/go.sum" | sha256sum | cut -d' ' -f1; }

build_etcd() {
  local dir="$root/tests/cluster/etcd" stamp
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/etcd" && "$(cat "$bin/.etcd.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  echo "building etcd (first build takes a few minutes)" >&2
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  echo "$stamp" > "$bin/.etcd.stamp"
}

build_k8s() {
  local dir="$root/tests/cluster/k8s" stamp version minor
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && "$(cat "$bin/.k8s.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  version="$(cd "$dir" && go list -m -f "{{.Version}}" k8s.io/kubernetes)"
  minor="$(echo "$version" | cut -d. -f2)"
  echo "building kube-apiserver and kube-controller-manager $version (first build takes 10-20 minutes)" >&2
  local pkg=k8s.io/component-base/version
  (cd "$dir" && go build -trimpath \
      -ldflags "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
      -o "$bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  echo "$stamp" > "$bin/.k8s.stamp"
}

build_metrics_server() {
  local dir="$root/tests/cluster/metrics-server" stamp
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/metrics-server" && "$(cat "$bin/.metrics-server.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  echo "building metrics-server, for the HPA test (first build takes a few minutes)" >&2
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server)
  echo "$stamp" > "$bin/.metrics-server.stamp"
}

build_traefik() {
  local dir="$root/tests/cluster/traefik" stamp
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/traefik" && "$(cat "$bin/.traefik.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  echo "building traefik, the Gateway API data plane (first build takes about 6 minutes)" >&2
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/traefik" github.com/traefik/traefik/v3/cmd/traefik)
  echo "$stamp" > "$bin/.traefik.stamp"
}

build_helm() {
  local dir="$root/tests/cluster/helm" stamp
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/helm" && "$(cat "$bin/.helm.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  echo "building helm, for the chart's tests (first build takes a few minutes)" >&2
  local version
  version="$(cd "$dir" && go list -m -f "{{.Version}}" helm.sh/helm/v3)"
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
      -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
  echo "$stamp" > "$bin/.helm.stamp"
}

build_crane() {
  local dir="$root/tests/cluster/crane" stamp
  stamp="$(stamp_of "$dir")"
  if [[ -x "$bin/crane" && "$(cat "$bin/.crane.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  echo "building crane, for the release image" >&2
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/crane" github.com/google/go-containerregistry/cmd/crane)
  echo "$stamp" > "$bin/.crane.stamp"
}

command -v go >/dev/null || { echo "go is required to build the local control plane (Go >= 1.26)" >&2; exit 1; }
build_etcd
build_k8s
build_metrics_server
build_traefik
build_helm
build_crane
