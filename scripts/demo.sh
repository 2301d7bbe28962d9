#!/usr/bin/env bash
# The Ramp demo: local control plane with Traefik as the Gateway API data
# plane, Prometheus, the controller; a canary whose HTTPRoute weights are
# walked through their steps while real requests show the live split; then a
# canary gated by Prometheus analysis, and a bad release that rolls itself
# back. Everything it starts is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
state="$root/target/demo"
mkdir -p "$state"
export KUBECONFIG="$root/target/cluster/kubeconfig"
export PATH="$root/target/debug:$PATH"
ns=ramp-demo
pids=()
started_cluster=false

say() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
cleanup() {
  set +e
  say "cleaning up"
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if $started_cluster; then tests/cluster/down.sh; fi
}
trap cleanup EXIT
# A signal (Ctrl-C, a closed pipe) must still run the cleanup above.
trap 'exit 130' INT TERM HUP PIPE

# Leave a cluster that was already running as it was; stop one the demo started.
if [[ ! -f "$root/target/cluster/run/kube-apiserver.pid" ]] || ! kill -0 "$(cat "$root/target/cluster/run/kube-apiserver.pid")" 2>/dev/null; then
  started_cluster=true
fi
say "starting the local control plane (etcd, kube-apiserver, kube-controller-manager, test kubelet, Traefik)"
tests/cluster/up.sh
kubectl apply --server-side --force-conflicts -k crds/ >/dev/null

say "starting a metrics endpoint and Prometheus"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
target_port="$(free_port)"; prom_port="$(free_port)"; ctl_port="$(free_port)"
target/debug/metrics-target "127.0.0.1:$target_port" > "$state/metrics-target.log" 2>&1 & pids+=($!)
set_ratio() { curl -fsS -X POST "http://127.0.0.1:$target_port/set?series=app_errors_ratio%7Bservice%3D%22api-canary%22%7D&value=$1" >/dev/null; }
# Wait for the endpoint to answer rather than for a fixed time.
for _ in $(seq 1 100); do set_ratio 0.01 2>/dev/null && break; sleep 0.2; done
set_ratio 0.01
cat > "$state/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: demo-app
  static_configs: [{targets: ['127.0.0.1:$target_port']}]
- job_name: ramp-controller
  static_configs: [{targets: ['127.0.0.1:$ctl_port']}]
YAML
rm -rf "$state/prometheus-data"
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$state/prometheus.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
echo "Prometheus: http://127.0.0.1:$prom_port   controller metrics: http://127.0.0.1:$ctl_port/metrics"

say "starting ramp-controller (log: target/demo/controller.log)"
target/debug/ramp-controller --leader-elect=false --http-address "127.0.0.1:$ctl_port" > "$state/controller.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$ctl_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$ns" >/dev/null
for _ in $(seq 1 100); do kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done

gateway="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$root/target/cluster/gateway.json")"
# Sends requests for store.example.test through the gateway and prints who
# answered, by version (the test kubelet's pods answer with their image tag).
split() {
  python3 - "$gateway" "$@" <<'PY'
import collections, json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, headers = sys.argv[1], dict(h.split(": ", 1) for h in sys.argv[2:])
headers["Host"] = "store.example.test"
def one(_):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return json.load(r)["version"]
    except Exception as e:
        return "error(%s)" % getattr(e, "code", "no answer")
with ThreadPoolExecutor(8) as pool:
    counts = collections.Counter(pool.map(one, range(200)))
print("  ".join("%s %3.0f%%" % (v, 100.0 * n / 200) for v, n in sorted(counts.items())))
PY
}

say "deploying examples/canary-gateway-api.yaml: an HTTPRoute on the Gateway ramp-gateway/ramp (Traefik at $gateway)"
kubectl -n "$ns" apply -f examples/canary-gateway-api.yaml
kubectl ramp -n "$ns" status store --timeout 2m
echo "live split of 200 requests: $(split)"

say "releasing store:2.0.0; each line: phase, step, weight asked / weight verified on the route, live split of 200 requests"
kubectl ramp -n "$ns" set image store store=ghcr.io/example/store:2.0.0
promoted=false
while true; do
  line="$(kubectl -n "$ns" get rollout store -o jsonpath='{.status.phase} step={.status.currentStepIndex} weight={.status.canary.weights.canary.weight}/{.status.canary.verifiedWeight}')"
  echo "  $line   $(split)"
  if [[ "$line" == Paused* ]] && ! $promoted; then
    echo "  paused with a header route: requests with x-beta: true -> $(split 'x-beta: true')"
    kubectl ramp -n "$ns" get rollout store | sed -n '/Step:/,/Pods:/p'
    kubectl ramp -n "$ns" promote store
    promoted=true
  fi
  generations="$(kubectl -n "$ns" get rollout store -o jsonpath='{.metadata.generation}/{.status.observedGeneration}')"
  [[ "$line" == Healthy* && "${generations%/*}" == "${generations#*/}" ]] && break
  sleep 1
done
kubectl ramp -n "$ns" get rollout store

say "deploying examples/canary-analysis.yaml into namespace $ns"
sed "s|http://prometheus.monitoring:9090|http://127.0.0.1:$prom_port|" examples/canary-analysis.yaml | kubectl -n "$ns" apply -f -
kubectl ramp -n "$ns" status api --timeout 2m
kubectl ramp -n "$ns" get rollout api

say "releasing api:2.0.0 with healthy metrics (error ratio 1%)"
kubectl ramp -n "$ns" set image api api=ghcr.io/example/api:2.0.0
last=""
while true; do
  line="$(kubectl -n "$ns" get rollout api -o jsonpath='{.status.phase} step={.status.currentStepIndex} {.status.message}')"
  if [[ "$line" != "$last" ]]; then echo "  $line"; last="$line"; fi
  [[ "$line" == Healthy* ]] && break
  sleep 0.5
done
kubectl ramp -n "$ns" get rollout api

say "releasing api:3.0.0 while the error ratio is 40%: analysis fails and the rollout returns to stable by itself"
set_ratio 0.4
sleep 3
kubectl ramp -n "$ns" set image api api=ghcr.io/example/api:3.0.0
if kubectl ramp -n "$ns" status api --timeout 2m; then
  echo "unexpected: the bad release was promoted" >&2
  exit 1
fi
kubectl ramp -n "$ns" get rollout api
kubectl -n "$ns" get analysisruns
echo
sleep 2
echo "Prometheus recorded the phases: $(curl -fsS "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=count by (phase) (max_over_time(ramp_rollout_info{name=\"api\"}[10m]))" | python3 -c 'import json,sys; print(", ".join(r["metric"]["phase"] for r in json.load(sys.stdin)["data"]["result"]))')"
say "demo finished: traffic moved through the gateway step by step, the analysed release was promoted, the bad one rolled back without a human"
