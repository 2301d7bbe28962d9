//! Traffic routing against the real API server (issue 13). Istio has no data
//! plane here, so its tests assert on the real VirtualService and
//! DestinationRule objects, installed from the upstream CRDs, as they are
//! patched by the controller and edited concurrently by someone else.

mod common;

use common::Env;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ramp::api::{POD_TEMPLATE_HASH_LABEL, RolloutPhase};
use ramp_test_support::wait_until;
use serde_json::{Value, json};

fn istio(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", kind))
}

fn objects(env: &Env, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(env.client.clone(), &env.ns, &istio(kind))
}

const ROUTES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - name: legacy
    match: [{uri: {prefix: /legacy}}]
    route: [{destination: {host: legacy}}]
  - name: primary
    route:
    - {destination: {host: shop, subset: stable}, weight: 100}
    - {destination: {host: shop, subset: canary}, weight: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop
  subsets:
  - {name: stable, labels: {app: shop}}
  - {name: canary, labels: {app: shop}}
"#;

fn rollout_yaml(virtual_service: &str) -> String {
    format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: shop}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec: {{containers: [{{name: app, image: "shop:1"}}]}}
  strategy:
    canary:
      trafficRouting:
        managedRoutes: [{{name: beta}}]
        istio:
          virtualService: {{name: {virtual_service}, routes: [primary]}}
          destinationRule: {{name: shop, canarySubsetName: canary, stableSubsetName: stable}}
      steps:
      - setWeight: 25
      - setHeaderRoute: {{name: beta, match: [{{headerName: x-beta, headerValue: {{exact: "yes"}}}}]}}
      - pause: {{}}
      - setWeight: 75
      - pause: {{}}
"#
    )
}

/// (name, stable weight, canary weight) of each http route.
fn http_routes(vs: &DynamicObject) -> Vec<(String, i64, i64)> {
    vs.data["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|route| {
            let weight = |subset: &str| {
                route["route"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["destination"]["subset"] == subset)
                    .and_then(|d| d["weight"].as_i64())
                    .unwrap_or(-1)
            };
            (
                route["name"].as_str().unwrap_or_default().to_string(),
                weight("stable"),
                weight("canary"),
            )
        })
        .collect()
}

async fn wait_routes(env: &Env, expected: &[(&str, i64, i64)]) -> anyhow::Result<DynamicObject> {
    let api = objects(env, "VirtualService");
    let wanted: Vec<(String, i64, i64)> = expected
        .iter()
        .map(|(n, s, c)| (n.to_string(), *s, *c))
        .collect();
    wait_until(
        &format!("VirtualService routes {expected:?}"),
        common::TIMEOUT,
        || async {
            let vs = api.get("shop").await?;
            Ok((http_routes(&vs) == wanted).then_some(vs))
        },
    )
    .await
}

fn subset_hash(rule: &DynamicObject, subset: &str) -> Option<String> {
    rule.data["spec"]["subsets"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == subset)?["labels"][POD_TEMPLATE_HASH_LABEL]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn istio_weights_subsets_and_header_route_survive_a_concurrent_edit() -> anyhow::Result<()> {
    let env = Env::start("istio").await?;
    env.apply(ROUTES).await?;
    env.apply(&rollout_yaml("shop")).await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    wait_routes(&env, &[("legacy", -1, -1), ("primary", 100, 0)]).await?;
    let v1 = env.hash_of("shop:1").await?;

    env.set_image("shop", "shop:2").await?;
    env.wait_phase("shop", RolloutPhase::Paused).await?;
    let vs = wait_routes(
        &env,
        &[("beta", -1, 100), ("legacy", -1, -1), ("primary", 75, 25)],
    )
    .await?;
    assert_eq!(
        vs.data["spec"]["http"][0]["match"],
        json!([{"headers": {"x-beta": {"exact": "yes"}}}])
    );
    assert_eq!(
        vs.data["spec"]["http"][1],
        json!({"name": "legacy", "match": [{"uri": {"prefix": "/legacy"}}], "route": [{"destination": {"host": "legacy"}}]}),
        "a route Ramp does not own is untouched"
    );
    let v2 = env.hash_of("shop:2").await?;
    let rules = objects(&env, "DestinationRule");
    let rule = rules.get("shop").await?;
    assert_eq!(subset_hash(&rule, "stable"), Some(v1.clone()));
    assert_eq!(subset_hash(&rule, "canary"), Some(v2.clone()));
    assert_eq!(rule.data["spec"]["subsets"][0]["labels"]["app"], "shop");
    let rollout = env.rollout("shop").await?;
    let canary = rollout.status.and_then(|s| s.canary).unwrap_or_default();
    assert_eq!(canary.verified_weight, Some(25));
    assert_eq!(canary.weights.and_then(|w| w.verified), Some(true));

    // Someone else adds a route while the rollout is paused; Ramp's patches
    // must leave it in place.
    let teammate = json!([{"op": "add", "path": "/spec/http/-", "value": {
        "name": "teammate", "route": [{"destination": {"host": "teammate"}}]}}]);
    objects(&env, "VirtualService")
        .patch(
            "shop",
            &PatchParams {
                field_manager: Some("teammate".into()),
                ..PatchParams::default()
            },
            &Patch::Json::<()>(serde_json::from_value(teammate)?),
        )
        .await?;

    env.promote("shop").await?;
    wait_routes(
        &env,
        &[
            ("beta", -1, 100),
            ("legacy", -1, -1),
            ("primary", 25, 75),
            ("teammate", -1, -1),
        ],
    )
    .await?;
    env.wait_phase("shop", RolloutPhase::Paused).await?;
    env.promote("shop").await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    // Promoted: the managed route is gone, all weight is on the stable
    // subset, which now selects the new pods.
    wait_routes(
        &env,
        &[
            ("legacy", -1, -1),
            ("primary", 100, 0),
            ("teammate", -1, -1),
        ],
    )
    .await?;
    let rule = wait_until("stable subset on the new hash", common::TIMEOUT, || async {
        let rule = rules.get("shop").await?;
        Ok((subset_hash(&rule, "stable").as_deref() == Some(v2.as_str())).then_some(rule))
    })
    .await?;
    assert_eq!(subset_hash(&rule, "canary"), Some(v2));
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_missing_virtual_service_is_invalid_spec_and_nothing_is_created() -> anyhow::Result<()> {
    let env = Env::start("istio-missing").await?;
    env.apply(ROUTES).await?;
    env.apply(&rollout_yaml("nowhere")).await?;
    let rollout = env
        .wait_rollout("shop", "InvalidSpec naming the VirtualService", |r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "InvalidSpec"
                        && c.message.as_deref().is_some_and(|m| {
                            m.contains("trafficRouting.istio.virtualServices[0]")
                                && m.contains("VirtualService")
                                && m.contains("nowhere not found")
                        })
                })
            })
        })
        .await?;
    assert_eq!(
        rollout.status.and_then(|s| s.phase),
        Some(RolloutPhase::Degraded)
    );
    assert_eq!(env.replica_set_count().await?, 0);
    env.wait_events(&["InvalidSpec"]).await?;
    let vs: Value = serde_json::to_value(objects(&env, "VirtualService").get("shop").await?)?;
    assert_eq!(vs["spec"]["http"][1]["route"][0]["weight"], 100);
    env.cleanup().await;
    Ok(())
}
