//! workloadRef on the local control plane: a Rollout takes its template from
//! a Deployment that the real Deployment controller runs, hands the
//! Deployment's pods over under `scaleDown`, and follows template changes
//! made to the Deployment. Scenarios follow Argo's TestWorkloadRef and
//! TestScaleDownProgressively (test/e2e/functional_test.go), restated.

mod common;

use common::Env;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use ramp::api::{POD_TEMPLATE_HASH_LABEL, RolloutPhase};
use ramp_test_support::wait_until;
use serde_json::json;

fn deployment_yaml(name: &str, replicas: i32, image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
"#
    )
}

/// A blue/green Rollout of `replicas` naming Deployment `name`, with no
/// template or selector of its own, and its active Service.
fn referencing_yaml(name: &str, replicas: i32, deployment: &str, scale_down: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-active}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  workloadRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {deployment}
    scaleDown: {scale_down}
  strategy:
    blueGreen:
      activeService: {name}-active
"#
    )
}

async fn deployment_replicas(env: &Env, name: &str) -> anyhow::Result<(i32, i32)> {
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let deployment = api.get(name).await?;
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let running = deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    Ok((spec, running))
}

/// Names of the pods the Deployment's own ReplicaSets run (those without
/// the Rollout's hash label).
async fn deployment_pods(env: &Env, app: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("app={app},!{POD_TEMPLATE_HASH_LABEL}")))
        .await?;
    Ok(listed
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Pod uid by name, of the ready pods with label `app`.
async fn ready_app_pods(
    env: &Env,
    app: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    ready_pods_by(env, &format!("app={app}")).await
}

/// Markdown: each pod's UID before and after an adoption.
fn uid_table(
    title: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut table = format!("{title}\n\n| pod | UID before | UID after |\n|---|---|---|\n");
    for (pod, uid) in before {
        let now = after.get(pod).map_or("(gone)", String::as_str);
        table.push_str(&format!("| {pod} | {uid} | {now} |\n"));
    }
    for (pod, uid) in after.iter().filter(|(pod, _)| !before.contains_key(*pod)) {
        table.push_str(&format!("| {pod} | (new) | {uid} |\n"));
    }
    table
}

#[tokio::test]
async fn a_rollout_takes_a_running_deployments_pods_over_without_replacing_them()
-> anyhow::Result<()> {
    let env = Env::start("workload").await?;
    env.apply(&deployment_yaml("shop", 2, "shop:1")).await?;
    let before = wait_until("the Deployment's 2 pods ready", common::TIMEOUT, || async {
        let pods = ready_app_pods(&env, "shop").await?;
        Ok((pods.len() == 2).then_some(pods))
    })
    .await?;

    env.apply(&referencing_yaml("shop", 2, "shop", "progressively"))
        .await?;
    let healthy = env.wait_phase("shop", RolloutPhase::Healthy).await?;
    // The very pods the Deployment ran, now the Rollout's first revision.
    let after = ready_app_pods(&env, "shop").await?;
    common::write_report(
        "adoption-deployment.md",
        &uid_table(
            "Deployment shop taken over by Rollout shop",
            &before,
            &after,
        ),
    );
    assert_eq!(after, before);
    assert_eq!(
        env.replica_set_count().await?,
        1,
        "no ReplicaSet of Ramp's own"
    );
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let paused = deployments.get("shop").await?.spec.and_then(|s| s.paused);
    assert_eq!(paused, Some(true), "paused so it makes no new ReplicaSet");
    env.wait_events(&["PausingDeployment", "ReplicaSetAdopted"])
        .await?;
    // The Rollout's pods run the Deployment's template.
    env.wait_replicas("the Rollout's 2 pods of shop:1", &[("shop:1", 2)])
        .await?;
    let stable = env.hash_of("shop:1").await?;
    env.wait_selector("shop-active", &stable).await?;
    // Its spec stays as written: nothing resolved from the Deployment is stored.
    assert!(healthy.spec.template.spec.is_none(), "{:?}", healthy.spec);
    assert!(healthy.spec.selector.match_labels.is_none());
    // The Deployment is drained, and its pods go.
    wait_until("the Deployment scaled to 0", common::TIMEOUT, || async {
        let (spec, _) = deployment_replicas(&env, "shop").await?;
        let pods = deployment_pods(&env, "shop").await?;
        Ok((spec == 0 && pods.is_empty()).then_some(()))
    })
    .await?;
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let generation = api.get("shop").await?.metadata.generation;
    env.wait_rollout(
        "shop",
        "status to record the Deployment's generation",
        |r| {
            r.status
                .as_ref()
                .and_then(|s| s.workload_observed_generation.clone())
                == generation.map(|g| g.to_string())
        },
    )
    .await?;
    env.wait_events(&["ScalingDeployment", "RolloutCompleted"])
        .await?;

    // A new template in the Deployment is a new revision of the Rollout;
    // the Deployment stays at 0 through it.
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}})),
    )
    .await?;
    let green = wait_until("a ReplicaSet of shop:2", common::TIMEOUT, || async {
        Ok(env.hash_of("shop:2").await.ok())
    })
    .await?;
    env.wait_selector("shop-active", &green).await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    env.wait_replicas("shop:2 took over", &[("shop:2", 2)])
        .await?;
    assert_eq!(deployment_replicas(&env, "shop").await?.0, 0);
    assert!(deployment_pods(&env, "shop").await?.is_empty());

    // `undo` writes the first revision's template back into the Deployment,
    // and the Rollout returns to that revision's ReplicaSet.
    env.ramp_ok(&["undo", "shop"]).await?;
    wait_until("the Deployment back on shop:1", common::TIMEOUT, || async {
        let deployment = api.get("shop").await?;
        let image = deployment
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
        Ok((image.as_deref() == Some("shop:1")).then_some(()))
    })
    .await?;
    env.wait_selector("shop-active", &stable).await?;
    env.wait_replicas("shop:1 back", &[("shop:1", 2)]).await?;
    assert_eq!(
        env.replica_set_count().await?,
        2,
        "the first revision's ReplicaSet came back, no third one"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_missing_deployment_degrades_the_rollout_until_it_is_created() -> anyhow::Result<()> {
    let env = Env::start("workload-missing").await?;
    env.apply(&referencing_yaml("cart", 1, "cart", "never"))
        .await?;
    let degraded = env.wait_phase("cart", RolloutPhase::Degraded).await?;
    let message = degraded.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("Deployment \"cart\" not found"),
        "{message}"
    );
    // The active Service is not pointed at anything meanwhile.
    assert_eq!(env.selector("cart-active").await?, None);

    // The Deployment arriving wakes the Rollout (no wait for a resync).
    env.apply(&deployment_yaml("cart", 1, "cart:1")).await?;
    env.wait_phase("cart", RolloutPhase::Healthy).await?;
    env.wait_replicas("the Rollout's pod of cart:1", &[("cart:1", 1)])
        .await?;
    // `never` leaves the Deployment's own pods running.
    assert_eq!(deployment_replicas(&env, "cart").await?.0, 1);
    env.cleanup().await;
    Ok(())
}

/// What an Argo Rollout named `web` leaves behind when it is deleted with
/// `--cascade=orphan`: its Services pointed at its hash, and its ReplicaSet,
/// running, with no owner.
fn argo_leftovers(hash: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web-stable}}
spec: {{selector: {{app: web, rollouts-pod-template-hash: "{hash}"}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-canary}}
spec: {{selector: {{app: web, rollouts-pod-template-hash: "{hash}"}}, ports: [{{port: 80}}]}}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-{hash}
  labels: {{app: web, rollouts-pod-template-hash: "{hash}"}}
  annotations: {{rollout.argoproj.io/revision: "4"}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web, rollouts-pod-template-hash: "{hash}"}}}}
  template:
    metadata: {{labels: {{app: web, rollouts-pod-template-hash: "{hash}"}}}}
    spec: {{containers: [{{name: app, image: "web:1"}}]}}
"#
    )
}

const WEB_ROLLOUT: &str = r#"
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: "web:1"}]}
  strategy:
    canary:
      canaryService: web-canary
      stableService: web-stable
      steps: [{setWeight: 50}, {pause: {}}]
"#;

/// Pod uid by name, of the pods of `hash` that are Ready.
async fn ready_pods(
    env: &Env,
    hash: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    ready_pods_by(env, &format!("{POD_TEMPLATE_HASH_LABEL}={hash}")).await
}

async fn ready_pods_by(
    env: &Env,
    selector: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let listed = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(listed
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
        .collect())
}

#[tokio::test]
async fn replica_sets_an_argo_rollout_left_behind_are_adopted_with_their_pods() -> anyhow::Result<()>
{
    let env = Env::start("adopt").await?;
    let hash = "7c9d8f";
    env.apply(&argo_leftovers(hash)).await?;
    let before = wait_until(
        "the orphaned ReplicaSet's 2 pods ready",
        common::TIMEOUT,
        || async {
            let pods = ready_pods(&env, hash).await?;
            Ok((pods.len() == 2).then_some(pods))
        },
    )
    .await?;

    env.apply(WEB_ROLLOUT).await?;
    let healthy = env.wait_phase("web", RolloutPhase::Healthy).await?;
    assert_eq!(
        healthy.status.as_ref().and_then(|s| s.stable_rs.as_deref()),
        Some(hash)
    );
    let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(env.client.clone(), &env.ns);
    let adopted = replica_sets.get(&format!("web-{hash}")).await?;
    let owner = adopted
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    assert_eq!(owner.map(|o| &o.uid), healthy.metadata.uid.as_ref());
    assert_eq!(
        env.replica_set_count().await?,
        1,
        "no ReplicaSet of Ramp's own hash"
    );
    // The same pods, never replaced, and the Services never moved.
    let after = ready_pods(&env, hash).await?;
    common::write_report(
        "adoption-argo.md",
        &uid_table(
            &format!("Argo Rollout's orphaned ReplicaSet web-{hash} adopted by Rollout web"),
            &before,
            &after,
        ),
    );
    assert_eq!(after, before);
    assert_eq!(env.selector("web-stable").await?.as_deref(), Some(hash));
    assert_eq!(env.selector("web-canary").await?.as_deref(), Some(hash));
    env.wait_events(&["ReplicaSetAdopted"]).await?;

    // The adopted revision is the stable one of an ordinary canary.
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("50%: one pod each", &[("web:2", 1), ("web:1", 1)])
        .await?;
    assert_eq!(env.selector("web-stable").await?.as_deref(), Some(hash));
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("web:2 took over", &[("web:2", 2), ("web:1", 0)])
        .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn the_workload_ref_example_hands_over_and_rolls_out_a_deployment_change()
-> anyhow::Result<()> {
    let env = Env::start("workload-example").await?;
    let example =
        std::fs::read_to_string(ramp_test_support::repo_root().join("examples/workload-ref.yaml"))?;
    env.apply(&example).await?;
    env.wait_phase("cart", RolloutPhase::Healthy).await?;
    env.wait_replicas("the Rollout's 3 pods", &[("ghcr.io/example/cart:1.0.0", 3)])
        .await?;
    wait_until("the Deployment drained", common::TIMEOUT, || async {
        Ok((deployment_replicas(&env, "cart").await?.0 == 0).then_some(()))
    })
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .patch(
            "cart",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "cart", "image": "ghcr.io/example/cart:1.1.0"}]}}}})),
        )
        .await?;
    env.wait_replicas(
        "the change rolled out",
        &[
            ("ghcr.io/example/cart:1.1.0", 3),
            ("ghcr.io/example/cart:1.0.0", 0),
        ],
    )
    .await?;
    env.wait_rollout("cart", "the new revision to be stable", |r| {
        r.status.as_ref().is_some_and(|s| {
            s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
        })
    })
    .await?;
    // It went through the steps (the first deploy skips them): the timed
    // pause was entered and left.
    env.wait_events(&["RolloutPaused", "RolloutStepCompleted"])
        .await?;
    assert_eq!(deployment_replicas(&env, "cart").await?.0, 0);
    env.cleanup().await;
    Ok(())
}
