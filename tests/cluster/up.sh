#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager, the test kubelet (which makes pods Ready and serves
# HTTP on their loopback addresses) and Traefik as the Gateway API data plane.
# Writes target/cluster/kubeconfig, and target/cluster/gateway.json with the
# Gateway's address and Traefik's metrics endpoint. If a cluster from this checkout is already
# running it is reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="$root/target/cluster"
bin="$state/bin"
run="$state/run"
mkdir -p "$state"

alive() { [[ -f "$run/$1.pid" ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

if alive etcd && alive kube-apiserver && alive kube-controller-manager && alive test-kubelet && alive traefik; then
  echo "cluster already running; reusing it (kubeconfig: $state/kubeconfig). Run 'make cluster-down' to stop it." >&2
  exit 0
fi
if alive kube-apiserver; then
  echo "a previous cluster is only partly running; restarting it" >&2
fi
# Leftovers from a crashed run would hold ports or data; clear them first.
"$root/tests/cluster/down.sh" >/dev/null 2>&1 || true

"$root/tests/cluster/build.sh"
kubelet="${RAMP_TEST_KUBELET:-$root/target/debug/test-kubelet}"
if [[ ! -x "$kubelet" ]]; then
  (cd "$root" && cargo build --quiet -p ramp-test-support --bin test-kubelet)
fi

# Pods get addresses in 10.244.0.0/16 on the loopback interface, where the
# test kubelet serves them. (127.0.0.0/8 would be simpler, but the API server
# refuses loopback-range addresses in EndpointSlices.) Adding 10.244.0.1/16
# to lo makes the kernel treat the whole /16 as local; it stays after
# cluster-down, harmlessly, for the next run.
if ! ip -4 addr show dev lo | grep -q 'inet 10\.244\.0\.1/16'; then
  sudo_cmd=""; [[ "$(id -u)" == 0 ]] || sudo_cmd=sudo
  $sudo_cmd ip addr add 10.244.0.1/16 dev lo || { echo "cannot add the pod network 10.244.0.0/16 to lo (needs root or sudo)" >&2; exit 1; }
fi

rm -rf "$run"
mkdir -p "$run/pki" "$run/etcd" "$run/logs"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

openssl genrsa -out "$run/pki/sa.key" 2048 2>/dev/null
printf '%s,admin,admin-uid,"system:masters"\n' "$token" > "$run/pki/tokens.csv"

start() { # name, then the command
  local name="$1"; shift
  setsid "$@" > "$run/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/$name.pid"
}

started=$(date +%s%N)
start etcd "$bin/etcd" --name=ramp --data-dir="$run/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="ramp=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level=warn

start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none --cert-dir="$run/pki" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$run/pki/sa.key" --service-account-signing-key-file="$run/pki/sa.key" \
  --token-auth-file="$run/pki/tokens.csv" --authorization-mode=RBAC --allow-privileged=true \
  --profiling=false

cat > "$state/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ramp-local
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: ramp-local
  context: {cluster: ramp-local, user: admin, namespace: default}
current-context: ramp-local
KC
chmod 600 "$state/kubeconfig"

wait_ready() {
  for _ in $(seq 1 600); do
    if curl -fsk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then return 0; fi
    if ! alive "$1"; then echo "$1 exited during startup; log follows:" >&2; tail -30 "$run/logs/$1.log" >&2; return 1; fi
    sleep 0.1
  done
  echo "kube-apiserver not ready after 60s; see $run/logs" >&2; return 1
}
wait_ready kube-apiserver

start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$state/kubeconfig" --leader-elect=false --secure-port=0 \
  --controllers=replicaset-controller,job-controller,garbage-collector-controller,serviceaccount-controller,namespace-controller,deployment-controller,pod-garbage-collector-controller,endpointslice-controller,endpointslice-mirroring-controller \
  --service-account-private-key-file="$run/pki/sa.key" --use-service-account-credentials=false \
  --concurrent-replicaset-syncs=10 --kube-api-qps=200 --kube-api-burst=400

KUBECONFIG="$state/kubeconfig" start test-kubelet "$kubelet"

# The default ServiceAccount must exist before pods can be admitted.
for _ in $(seq 1 300); do
  if kubectl --kubeconfig "$state/kubeconfig" get serviceaccount default -n default >/dev/null 2>&1; then break; fi
  for p in kube-controller-manager test-kubelet; do
    if ! alive "$p"; then echo "$p exited during startup; log follows:" >&2; tail -30 "$run/logs/$p.log" >&2; exit 1; fi
  done
  sleep 0.1
done
# Traffic routers' CRDs (Gateway API, Istio), from their upstream Go modules.
"$root/tests/cluster/install-routing-crds.sh" "$state/kubeconfig"

# Traefik reads Gateways, HTTPRoutes and EndpointSlices from the API server
# and forwards to the pods' loopback addresses. Its listener port must be the
# port the Gateway's listener names, so the Gateway is written after it.
gateway_port="$(free_port)"; metrics_port="$(free_port)"
KUBECONFIG="$state/kubeconfig" start traefik "$bin/traefik" \
  --global.checkNewVersion=false --global.sendAnonymousUsage=false \
  --entryPoints.web.address="127.0.0.1:$gateway_port" \
  --entryPoints.metrics.address="127.0.0.1:$metrics_port" \
  --providers.kubernetesGateway=true --providers.providersThrottleDuration=100ms \
  --metrics.prometheus=true --metrics.prometheus.entryPoint=metrics \
  --metrics.prometheus.addServicesLabels=true --metrics.prometheus.addRoutersLabels=true \
  --log.level=INFO
kubectl --kubeconfig "$state/kubeconfig" apply --server-side -f - >/dev/null <<GW
apiVersion: v1
kind: Namespace
metadata: {name: ramp-gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: traefik}
spec: {controllerName: traefik.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ramp, namespace: ramp-gateway}
spec:
  gatewayClassName: traefik
  listeners:
  - {name: web, protocol: HTTP, port: $gateway_port, allowedRoutes: {namespaces: {from: All}}}
GW
for _ in $(seq 1 600); do
  programmed="$(kubectl --kubeconfig "$state/kubeconfig" get gateway ramp -n ramp-gateway \
    -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status}' 2>/dev/null || true)"
  [[ "$programmed" == True ]] && break
  if ! alive traefik; then echo "traefik exited during startup; log follows:" >&2; tail -30 "$run/logs/traefik.log" >&2; exit 1; fi
  sleep 0.1
done
if [[ "$programmed" != True ]]; then echo "Gateway ramp-gateway/ramp not Programmed by Traefik after 60 s; see $run/logs/traefik.log" >&2; exit 1; fi
cat > "$state/gateway.json" <<JSON
{"url": "http://127.0.0.1:$gateway_port", "namespace": "ramp-gateway", "name": "ramp", "metrics": "127.0.0.1:$metrics_port"}
JSON
finished=$(date +%s%N)
echo "cluster up in $(( (finished - started) / 1000000 )) ms: https://127.0.0.1:$api_port (kubeconfig: $state/kubeconfig), gateway http://127.0.0.1:$gateway_port" >&2
