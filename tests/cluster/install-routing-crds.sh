#!/usr/bin/env bash
# Installs the upstream traffic-routing CRDs into the local cluster, straight
# from the Go modules pinned (and checksum-verified) in
# tests/cluster/routing-crds/go.mod: the Gateway API standard channel and
# Istio's networking API. Nothing is copied into this repository.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
kubeconfig="${1:-$root/target/cluster/kubeconfig}"
dir="$root/tests/cluster/routing-crds"
export GOFLAGS=-mod=readonly
(cd "$dir" && go mod download sigs.k8s.io/gateway-api istio.io/api)
gateway="$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"
istio="$(cd "$dir" && go list -m -f '{{.Dir}}' istio.io/api)"
apply() { kubectl --kubeconfig "$kubeconfig" apply --server-side --force-conflicts "$@" >/dev/null; }
apply -f "$gateway/config/crd/standard/"
apply -f "$istio/kubernetes/customresourcedefinitions.gen.yaml"
for crd in httproutes.gateway.networking.k8s.io gateways.gateway.networking.k8s.io \
           virtualservices.networking.istio.io destinationrules.networking.istio.io; do
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s "crd/$crd" >/dev/null
done
echo "routing CRDs installed: Gateway API $(basename "$gateway" | sed 's/.*@//'), Istio $(basename "$istio" | sed 's/.*@//')" >&2
