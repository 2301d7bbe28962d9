//! Traffic routing through a real Gateway API data plane (issue 13): Traefik,
//! started by `make cluster-up`, forwards real HTTP requests to pods the test
//! kubelet serves on their own loopback addresses. Every assertion counts
//! answers by the version of the pod that gave them.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Env;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use ramp::api::{AnalysisPhase, Rollout, RolloutPhase};
use ramp_test_support::{Gateway, Split, wait_until};
use serde_json::Value;

/// Requests per measurement, and how far the observed canary share may be
/// from the weight.
const REQUESTS_PER_STEP: usize = 2000;
const TOLERANCE_POINTS: f64 = 5.0;

fn http_routes(env: &Env) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    Api::namespaced_with(env.client.clone(), &env.ns, &resource)
}

/// Services, an HTTPRoute on the cluster's Gateway with a rule Ramp must not
/// touch (`/legacy`), and a canary Rollout with the given steps, written the
/// way Argo's Gateway API plugin takes it.
fn manifests(env: &Env, gateway: &Gateway, host: &str, extra_canary: &str, steps: &str) -> String {
    let ns = &env.ns;
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: shop-stable}}
spec: {{selector: {{app: shop}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: shop-canary}}
spec: {{selector: {{app: shop}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: {gw}, namespace: {gw_ns}}}]
  hostnames: ["{host}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /legacy}}}}]
    backendRefs: [{{name: shop-stable, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: shop-stable, port: 80, weight: 100}}
    - {{name: shop-canary, port: 80, weight: 0}}
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: shop}}
spec:
  replicas: 5
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      containers:
      - name: app
        image: "shop:v1"
        ports: [{{containerPort: 8080}}]
  strategy:
    canary:
      canaryService: shop-canary
      stableService: shop-stable
{extra_canary}
      trafficRouting:
        managedRoutes: [{{name: beta}}]
        plugins:
          argoproj-labs/gatewayAPI:
            httpRoutes: [{{name: shop, useHeaderRoutes: true}}]
            namespace: {ns}
      steps: {steps}
"#,
        gw = gateway.name,
        gw_ns = gateway.namespace,
    )
}

/// A host name only this test's route answers for.
fn host_of(env: &Env) -> String {
    format!("shop.{}.test", env.ns)
}

/// Sends batches until one is within the tolerance of `weight` with every
/// request answered 2xx, and returns it with the first batch and how many
/// batches it took.
/// Traefik applies a route a moment after it reports it, and the
/// EndpointSlice of a new pod follows its readiness, so the first batch
/// after a change may still see the previous state.
async fn measure(
    gateway: &Gateway,
    host: &str,
    headers: &[(&str, &str)],
    canary_version: &str,
    weight: f64,
) -> anyhow::Result<(Split, Split, usize)> {
    let mut batches = 0;
    let first = Arc::new(Mutex::new(None::<Split>));
    let last = Arc::new(Mutex::new(None::<Split>));
    let result = wait_until(
        &format!("a batch of {REQUESTS_PER_STEP} requests with {weight}% ± {TOLERANCE_POINTS} on {canary_version}"),
        common::TIMEOUT,
        || {
            batches += 1;
            let (first, last) = (first.clone(), last.clone());
            async move {
                let split = gateway.send(host, "/", REQUESTS_PER_STEP, headers).await?;
                let good = split.failures() == 0
                    && (split.share(canary_version) - weight).abs() <= TOLERANCE_POINTS;
                let answer = good.then(|| split.clone());
                if let Ok(mut slot) = first.lock() {
                    slot.get_or_insert_with(|| split.clone());
                }
                if let Ok(mut slot) = last.lock() {
                    *slot = Some(split);
                }
                Ok(answer)
            }
        },
    )
    .await;
    match result {
        Ok(split) => {
            let first = first
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_default();
            Ok((split, first, batches))
        }
        Err(error) => {
            let seen = last.lock().ok().and_then(|s| s.clone());
            anyhow::bail!("{error}; last batch: {seen:?}")
        }
    }
}

/// Waits for a whole batch of requests of which exactly `share` percent
/// reach `version`: for the all-or-nothing cases (a header route, a route
/// handed back), where `measure`'s tolerance would let a straggler of the
/// previous rule through while Traefik applies the new one.
async fn measure_exact(
    gateway: &Gateway,
    host: &str,
    headers: &[(&str, &str)],
    version: &str,
    share: f64,
) -> anyhow::Result<Split> {
    let last = Arc::new(Mutex::new(None::<Split>));
    let result = wait_until(
        &format!("a batch of {REQUESTS_PER_STEP} requests with exactly {share}% on {version}"),
        common::TIMEOUT,
        || {
            let last = last.clone();
            async move {
                let split = gateway.send(host, "/", REQUESTS_PER_STEP, headers).await?;
                let exact = split.failures() == 0 && split.share(version) == share;
                let answer = exact.then(|| split.clone());
                if let Ok(mut slot) = last.lock() {
                    *slot = Some(split);
                }
                Ok(answer)
            }
        },
    )
    .await;
    result.map_err(|error| {
        let seen = last.lock().ok().and_then(|s| s.clone());
        anyhow::anyhow!("{error}; last batch: {seen:?}")
    })
}

fn verified_at(rollout: &Rollout, weight: i32) -> bool {
    let canary = rollout.status.as_ref().and_then(|s| s.canary.as_ref());
    canary.is_some_and(|c| {
        c.verified_weight == Some(weight)
            && c.weights.as_ref().and_then(|w| w.verified) == Some(true)
    })
}

#[tokio::test]
async fn gateway_api_canary_split_matches_every_step_in_real_requests() -> anyhow::Result<()> {
    let gateway = Gateway::local()?;
    let env = Env::start("gateway").await?;
    let host = host_of(&env);
    let steps = r#"
      - setWeight: 10
      - pause: {}
      - setWeight: 25
      - setHeaderRoute: {name: beta, match: [{headerName: x-beta, headerValue: {exact: "yes"}}]}
      - pause: {}
      - setWeight: 50
      - pause: {}
      - setWeight: 80
      - pause: {}"#;
    env.apply(&manifests(&env, &gateway, &host, "", steps))
        .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let (before, _, _) = measure(&gateway, &host, &[], "v1", 100.0).await?;
    let legacy_rule = http_routes(&env).get("shop").await?.data["spec"]["rules"][0].clone();

    let mut report = String::from(
        "| step | weight | verified after | requests | v2 share | first batch after verified | batches | failures |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut verify_times = Vec::new();
    env.set_image("shop", "shop:v2").await?;
    let mut changed = Instant::now();
    for (step, weight) in [(0, 10), (2, 25), (5, 50), (7, 80)] {
        env.wait_rollout(
            "shop",
            &format!("weight {weight} verified and paused"),
            |r| {
                verified_at(r, weight)
                    && r.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Paused)
            },
        )
        .await?;
        let verified_after = changed.elapsed();
        verify_times.push(verified_after);
        let (split, first, batches) =
            measure(&gateway, &host, &[], "v2", f64::from(weight)).await?;
        let _ = writeln!(
            report,
            "| {step} | {weight} | {:.0} ms | {} | {:.1}% | {:.1}% ({} failed) | {batches} | {} |",
            verified_after.as_secs_f64() * 1000.0,
            split.total,
            split.share("v2"),
            first.share("v2"),
            first.failures(),
            split.failures()
        );
        if weight == 25 {
            // The header route sends every matching request to the canary
            // and leaves the others to the weights.
            let beta = measure_exact(&gateway, &host, &[("x-beta", "yes")], "v2", 100.0).await?;
            let (other, _, _) = measure(&gateway, &host, &[("x-beta", "no")], "v2", 25.0).await?;
            let _ = writeln!(
                report,
                "| {step} header x-beta: yes | 100 | | {} | {:.1}% | | | {} |\n| {step} header x-beta: no | 25 | | {} | {:.1}% | | | {} |",
                beta.total,
                beta.share("v2"),
                beta.failures(),
                other.total,
                other.share("v2"),
                other.failures()
            );
        }
        env.promote("shop").await?;
        changed = Instant::now();
    }
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let (after, _, _) = measure(&gateway, &host, &[], "v2", 100.0).await?;
    let route = http_routes(&env).get("shop").await?;
    assert_eq!(
        route.data["spec"]["rules"][0], legacy_rule,
        "the rule Ramp does not own is untouched"
    );
    let names: Vec<Value> = route.data["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].clone())
        .collect();
    assert!(
        !names.contains(&Value::from("beta")),
        "the header route is removed once promoted: {names:?}"
    );
    verify_times.sort();
    let _ = writeln!(
        report,
        "\nbefore: {before}\nafter promotion: {after}\nsetWeight to verified: p50 {:?}, max {:?} over {} steps",
        verify_times[verify_times.len() / 2],
        verify_times[verify_times.len() - 1],
        verify_times.len()
    );
    common::write_report("gateway-split.md", &report);
    env.cleanup().await;
    Ok(())
}

/// One batch of requests sent during an abort, and when it finished.
struct Sample {
    finished: Instant,
    split: Split,
}

#[tokio::test]
async fn gateway_api_abort_moves_all_requests_to_stable_before_a_canary_pod_goes()
-> anyhow::Result<()> {
    let gateway = Gateway::local()?;
    let env = Env::start("gateway-abort").await?;
    let host = host_of(&env);
    env.apply(&manifests(
        &env,
        &gateway,
        &host,
        "",
        "\n      - setWeight: 50\n      - pause: {}",
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    env.set_image("shop", "shop:v2").await?;
    env.wait_rollout("shop", "weight 50 verified and paused", |r| {
        verified_at(r, 50) && r.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Paused)
    })
    .await?;
    measure(&gateway, &host, &[], "v2", 50.0).await?;

    // Watch the canary's pods: the first one marked for deletion is the
    // moment the canary starts to go.
    let canary_leaving: Arc<Mutex<Option<Instant>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let watch = {
        let canary_leaving = canary_leaving.clone();
        let stream = watcher(pods, watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(pod)) = stream.next().await {
                let canary = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .any(|c| c.image.as_deref() == Some("shop:v2"));
                if canary
                    && pod.metadata.deletion_timestamp.is_some()
                    && let Ok(mut first) = canary_leaving.lock()
                {
                    first.get_or_insert_with(Instant::now);
                }
            }
        })
    };

    env.set_abort("shop", true).await?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    // Sample until the canary ReplicaSet is gone from the pods as well.
    wait_until(
        "the aborted canary to be scaled down",
        Duration::from_secs(120),
        || {
            let (gateway, host, env) = (&gateway, &host, &env);
            let (samples, canary_leaving) = (samples.clone(), canary_leaving.clone());
            async move {
                let split = gateway.send(host, "/", 500, &[]).await?;
                if let Ok(mut samples) = samples.lock() {
                    samples.push(Sample {
                        finished: Instant::now(),
                        split,
                    });
                }
                let replicas = env.replicas_by_image().await?;
                let scaled_down = replicas.get("shop:v2").is_none_or(|(spec, _)| *spec == 0);
                let left = canary_leaving.lock().is_ok_and(|t| t.is_some());
                Ok((scaled_down && left).then_some(()))
            }
        },
    )
    .await?;
    watch.abort();
    let leaving = canary_leaving
        .lock()
        .ok()
        .and_then(|t| *t)
        .ok_or_else(|| anyhow::anyhow!("no canary pod was seen leaving"))?;
    let samples = std::mem::take(
        &mut *samples
            .lock()
            .map_err(|_| anyhow::anyhow!("sample list poisoned"))?,
    );
    let first_zero = samples
        .iter()
        .position(|s| s.split.share("v2") == 0.0)
        .ok_or_else(|| anyhow::anyhow!("no batch saw 0% on the canary"))?;
    assert!(
        samples[first_zero].finished < leaving,
        "0% on the canary was observed only after a canary pod was leaving"
    );
    for sample in &samples[first_zero..] {
        assert_eq!(
            sample.split.share("v2"),
            0.0,
            "traffic came back to the canary: {}",
            sample.split
        );
    }
    for sample in &samples {
        assert_eq!(
            sample.split.failures(),
            0,
            "a request failed during the abort: {}",
            sample.split
        );
    }
    env.wait_phase("shop", RolloutPhase::Degraded).await?;
    env.cleanup().await;
    Ok(())
}

/// Keeps requests flowing through the gateway until dropped, so Traefik's
/// request counters move while an analysis reads them.
struct Load {
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(gateway: &Gateway, host: &str) -> Load {
        let (gateway, host) = (gateway.clone(), host.to_string());
        Load {
            task: tokio::spawn(async move {
                loop {
                    // An error here (a pod going away) is what the analysis
                    // is there to see; keep sending.
                    let _ = gateway.send(&host, "/", 100, &[]).await;
                }
            }),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canary's success rate from Traefik's own per-service request
/// counters, as scraped by the real Prometheus. Traefik names a Gateway API
/// backend `<namespace>-<service>-<port name>-<port>@kubernetesgateway`. A
/// canary that answers only 500s has no series for other codes, hence the
/// `or vector(0)`; the initial delay lets the first requests reach it.
fn success_rate_template(prometheus: &str) -> String {
    format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: success-rate}}
spec:
  args: [{{name: service}}]
  metrics:
  - name: success-rate
    interval: 2s
    initialDelay: 4s
    count: 4
    failureLimit: 0
    successCondition: "result[0] >= 0.95"
    provider:
      prometheus:
        address: {prometheus}
        query: >-
          (sum(rate(traefik_service_requests_total{{service=~"{{{{args.service}}}}-.+@kubernetesgateway",code!~"5.."}}[5s])) or vector(0))
          / sum(rate(traefik_service_requests_total{{service=~"{{{{args.service}}}}-.+@kubernetesgateway"}}[5s]))
"#
    )
}

async fn analysed_rollout(canary_image: &str) -> anyhow::Result<(Env, Rollout)> {
    let gateway = Gateway::local()?;
    let prometheus = ramp_test_support::Prometheus::start(&[gateway.metrics]).await?;
    let env = Env::start("gateway-analysis").await?;
    let host = host_of(&env);
    let canary_service = format!("{}-shop-canary", env.ns);
    env.apply(&success_rate_template(&prometheus.url)).await?;
    let steps = format!(
        "\n      - setWeight: 50\n      - analysis: {{templates: [{{templateName: success-rate}}], args: [{{name: service, value: \"{canary_service}\"}}]}}"
    );
    env.apply(&manifests(&env, &gateway, &host, "", &steps))
        .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let load = Load::start(&gateway, &host);
    env.set_image("shop", canary_image).await?;
    let done = env
        .wait_rollout_for(
            "shop",
            "the analysis to decide",
            Duration::from_secs(120),
            |r| {
                let phase = r.status.as_ref().and_then(|s| s.phase);
                let current =
                    r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation;
                current && matches!(phase, Some(RolloutPhase::Healthy | RolloutPhase::Degraded))
            },
        )
        .await?;
    drop(load);
    prometheus.stop().await;
    Ok((env, done))
}

#[tokio::test]
async fn a_canary_answering_500s_is_aborted_by_traefik_metrics() -> anyhow::Result<()> {
    let (env, rollout) = analysed_rollout("shop:http-500").await?;
    let status = rollout.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(RolloutPhase::Degraded), "{status:?}");
    assert!(status.abort, "the failed analysis aborts the rollout");
    let runs = env.analysis_runs().await?;
    assert!(
        runs.iter()
            .any(|r| r.status.as_ref().and_then(|s| s.phase) == Some(AnalysisPhase::Failed)),
        "an AnalysisRun failed"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_good_canary_passes_the_same_traefik_analysis_to_healthy() -> anyhow::Result<()> {
    let (env, rollout) = analysed_rollout("shop:v2").await?;
    let status = rollout.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(RolloutPhase::Healthy), "{status:?}");
    assert_eq!(
        env.hash_of("shop:v2").await?,
        status.stable_rs.unwrap_or_default()
    );
    env.cleanup().await;
    Ok(())
}

/// (canary weight, stable weight, rule names) of the test route's rules.
async fn route_state(env: &Env) -> anyhow::Result<(Value, Value, Vec<Value>)> {
    let route = http_routes(env).get("shop").await?;
    let rules = route.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let weighted = rules
        .iter()
        .find(|r| r["backendRefs"].as_array().is_some_and(|b| b.len() == 2))
        .cloned()
        .unwrap_or_default();
    let weight = |service: &str| {
        weighted["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"] == service)
            .map(|b| b["weight"].clone())
            .unwrap_or_default()
    };
    let names = rules.iter().map(|r| r["name"].clone()).collect();
    Ok((weight("shop-canary"), weight("shop-stable"), names))
}

async fn paused_with_header_route(env: &Env, gateway: &Gateway) -> anyhow::Result<()> {
    let host = host_of(env);
    let steps = r#"
      - setWeight: 30
      - setHeaderRoute: {name: beta, match: [{headerName: x-beta, headerValue: {exact: "yes"}}]}
      - pause: {}"#;
    env.apply(&manifests(env, gateway, &host, "", steps))
        .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    env.set_image("shop", "shop:v2").await?;
    env.wait_rollout("shop", "weight 30 and the header route verified", |r| {
        verified_at(r, 30)
            && r.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Paused)
            && r.status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|c| c.header_routes.len() == 1)
    })
    .await?;
    measure(gateway, &host, &[("x-beta", "yes")], "v2", 100.0).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_routed_rollout_hands_the_route_back_first() -> anyhow::Result<()> {
    let gateway = Gateway::local()?;
    let env = Env::start("gateway-delete").await?;
    paused_with_header_route(&env, &gateway).await?;
    let rollout = env.rollout("shop").await?;
    assert!(
        rollout
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == ramp::api::TRAFFIC_ROUTING_FINALIZER),
        "a routed Rollout carries the finalizer"
    );
    env.rollouts()
        .delete("shop", &kube::api::DeleteParams::default())
        .await?;
    wait_until("the Rollout to be gone", common::TIMEOUT, || async {
        Ok(env
            .rollouts()
            .get_opt("shop")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let (canary, stable, names) = route_state(&env).await?;
    assert_eq!((canary, stable), (Value::from(0), Value::from(100)));
    assert!(
        !names.contains(&Value::from("beta")),
        "the managed rule is removed: {names:?}"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn removing_traffic_routing_hands_the_route_back() -> anyhow::Result<()> {
    let gateway = Gateway::local()?;
    let env = Env::start("gateway-unroute").await?;
    paused_with_header_route(&env, &gateway).await?;
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "remove", "path": "/spec/strategy/canary/trafficRouting"}
    ]))?;
    env.rollouts()
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await?;
    let rollout = env
        .wait_rollout("shop", "the routing record and the finalizer to go", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.applied_traffic_routing.is_none())
                && r.metadata.finalizers.iter().flatten().next().is_none()
        })
        .await?;
    assert!(
        rollout
            .spec
            .strategy
            .canary
            .as_ref()
            .is_some_and(|c| c.traffic_routing.is_none())
    );
    let (canary, stable, names) = route_state(&env).await?;
    assert_eq!((canary, stable), (Value::from(0), Value::from(100)));
    assert!(
        !names.contains(&Value::from("beta")),
        "the managed rule is removed: {names:?}"
    );
    // Header-matched requests now go by the weights, which are all stable.
    measure_exact(&gateway, &host_of(&env), &[("x-beta", "yes")], "v2", 0.0).await?;
    env.wait_events(&["TrafficRoutingReleased"]).await?;
    env.cleanup().await;
    Ok(())
}

/// Traefik 3.6 does not implement RequestMirror: given a mirror rule it
/// reports the route Accepted and answers the matching requests with 500s.
/// Its GatewayClass says so in status.supportedFeatures, and Ramp refuses the
/// rollout up front instead of breaking those requests halfway through.
#[tokio::test]
async fn a_mirror_step_through_a_gateway_that_cannot_mirror_is_refused_before_anything_moves()
-> anyhow::Result<()> {
    let gateway = Gateway::local()?;
    let env = Env::start("gateway-mirror").await?;
    let host = host_of(&env);
    let steps = r#"
      - setWeight: 20
      - setMirrorRoute: {name: beta, percentage: 50, match: [{method: {exact: GET}}]}
      - pause: {}"#;
    env.apply(&manifests(&env, &gateway, &host, "", steps))
        .await?;
    let rollout = env
        .wait_rollout(
            "shop",
            "InvalidSpec naming the mirror step and the GatewayClass",
            |r| {
                r.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "InvalidSpec"
                            && c.message.as_deref().is_some_and(|m| {
                                m.contains("steps[1].setMirrorRoute")
                                    && m.contains("GatewayClass traefik")
                                    && m.contains("HTTPRouteRequestMirror")
                            })
                    })
                })
            },
        )
        .await?;
    assert_eq!(
        rollout.status.and_then(|s| s.phase),
        Some(RolloutPhase::Degraded)
    );
    let (canary, stable, names) = route_state(&env).await?;
    assert_eq!(
        (canary, stable),
        (Value::from(0), Value::from(100)),
        "no weight changed"
    );
    assert!(
        !names.contains(&Value::from("beta")),
        "no mirror rule was written: {names:?}"
    );
    env.cleanup().await;
    Ok(())
}
