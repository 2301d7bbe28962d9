#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager, the test kubelet (which makes pods Ready and serves
# HTTP on their loopback addresses), metrics-server (the resource metrics API
# behind the HPA controller) and Traefik as the Gateway API data plane.
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

if alive etcd && alive kube-apiserver && alive kube-controller-manager && alive test-kubelet && alive metrics-server && alive traefik; then
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
# A free TCP port on the given address (127.0.0.1 unless named).
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1]); s.close()' "${1:-127.0.0.1}"; }
etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

openssl genrsa -out "$run/pki/sa.key" 2048 2>/dev/null
# The aggregation layer: the API server proxies metrics.k8s.io to
# metrics-server, proving itself with a client certificate from this CA, and
# metrics-server trusts the user it names in X-Remote-User.
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=ramp-front-proxy-ca \
  -keyout "$run/pki/front-proxy-ca.key" -out "$run/pki/front-proxy-ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=front-proxy-client \
  -keyout "$run/pki/front-proxy-client.key" -out "$run/pki/front-proxy-client.csr" 2>/dev/null
# Clients authenticate by token; the client CA exists because aggregated API
# servers read it from kube-system/extension-apiserver-authentication and
# log an error every few seconds while it is missing. Nothing holds a
# certificate it signed.
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=ramp-client-ca \
  -keyout "$run/pki/client-ca.key" -out "$run/pki/client-ca.crt" 2>/dev/null
openssl x509 -req -days 365 -in "$run/pki/front-proxy-client.csr" \
  -CA "$run/pki/front-proxy-ca.crt" -CAkey "$run/pki/front-proxy-ca.key" -CAcreateserial \
  -extfile <(printf 'extendedKeyUsage=clientAuth') -out "$run/pki/front-proxy-client.crt" 2>/dev/null
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
  --client-ca-file="$run/pki/client-ca.crt" \
  --requestheader-client-ca-file="$run/pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$run/pki/front-proxy-client.crt" --proxy-client-key-file="$run/pki/front-proxy-client.key" \
  --enable-aggregator-routing=true \
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
  --controllers=replicaset-controller,job-controller,garbage-collector-controller,serviceaccount-controller,namespace-controller,deployment-controller,pod-garbage-collector-controller,endpointslice-controller,endpointslice-mirroring-controller,horizontal-pod-autoscaler-controller \
  --horizontal-pod-autoscaler-sync-period=2s \
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

# metrics-server scrapes the test kubelet's /metrics/resource (plain HTTP on
# 127.0.0.1, at the port the Node reports) and serves metrics.k8s.io. The API
# server reaches it through an EndpointSlice (--enable-aggregator-routing; no
# kube-proxy here), and EndpointSlices refuse loopback addresses, so it
# listens on 10.244.0.2, in the pod network on lo but below the pods' range.
metrics_address=10.244.0.2
metrics_server_port="$(free_port "$metrics_address")"
start metrics-server "$bin/metrics-server" \
  --kubeconfig="$state/kubeconfig" --authentication-kubeconfig="$state/kubeconfig" \
  --authorization-kubeconfig="$state/kubeconfig" \
  --bind-address="$metrics_address" --secure-port="$metrics_server_port" --cert-dir="$run/metrics-server" \
  --deprecated-kubelet-completely-insecure --kubelet-use-node-status-port \
  --kubelet-preferred-address-types=InternalIP --metric-resolution=10s --kubelet-request-timeout=5s
kubectl --kubeconfig "$state/kubeconfig" apply --server-side -f - >/dev/null <<MS
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: $metrics_server_port}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {kubernetes.io/service-name: metrics-server, endpointslice.kubernetes.io/managed-by: ramp-test-cluster}
addressType: IPv4
ports: [{name: https, port: $metrics_server_port, protocol: TCP}]
endpoints: [{addresses: ["$metrics_address"], conditions: {ready: true}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
MS

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
# While metrics.k8s.io is registered but unavailable, namespace deletion and
# garbage collection stall on discovery; no test may start before it serves.
for _ in $(seq 1 600); do
  available="$(kubectl --kubeconfig "$state/kubeconfig" get apiservice v1beta1.metrics.k8s.io \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null || true)"
  [[ "$available" == True ]] && break
  if ! alive metrics-server; then echo "metrics-server exited during startup; log follows:" >&2; tail -30 "$run/logs/metrics-server.log" >&2; exit 1; fi
  sleep 0.1
done
if [[ "$available" != True ]]; then echo "APIService v1beta1.metrics.k8s.io not Available after 60 s; see $run/logs/metrics-server.log" >&2; exit 1; fi
cat > "$state/gateway.json" <<JSON
{"url": "http://127.0.0.1:$gateway_port", "namespace": "ramp-gateway", "name": "ramp", "metrics": "127.0.0.1:$metrics_port"}
JSON
finished=$(date +%s%N)
echo "cluster up in $(( (finished - started) / 1000000 )) ms: https://127.0.0.1:$api_port (kubeconfig: $state/kubeconfig), gateway http://127.0.0.1:$gateway_port" >&2
