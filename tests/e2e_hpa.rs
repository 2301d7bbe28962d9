//! The real HorizontalPodAutoscaler controller (in kube-controller-manager)
//! scaling a Rollout mid-canary through its scale subresource. The CPU it
//! acts on is real in the sense that matters here: the test kubelet reports
//! per-container usage on `/metrics/resource`, the real metrics-server
//! scrapes it and serves `metrics.k8s.io`, and the HPA reads that API through
//! the API server's aggregation layer, selecting pods by the selector the
//! Rollout publishes in `status.selector`. See `tests/cluster/up.sh`.

mod common;

use common::Env;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use ramp::api::{Rollout, RolloutPhase};
use ramp_test_support::{CPU_MILLICORES_ANNOTATION, wait_until};
use serde_json::json;
use std::time::Duration;

/// The HPA waits for two metrics-server scrapes (10 s apart) of the new
/// load, then syncs every 2 s; the default minute is too close to that.
const HPA_TIMEOUT: Duration = Duration::from_secs(120);

/// Marks every running pod of the app as busy, as traffic would.
async fn load_pods(env: &Env, app: &str, millicores: u32) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let patch =
        json!({"metadata": {"annotations": {CPU_MILLICORES_ANNOTATION: millicores.to_string()}}});
    let mut loaded = Vec::new();
    for pod in pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
    {
        let name = pod.metadata.name.unwrap_or_default();
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        loaded.push(name);
    }
    Ok(loaded)
}

/// The pods' average CPU as the HPA last read it from metrics.k8s.io.
fn average_cpu(hpa: &HorizontalPodAutoscaler) -> Option<String> {
    hpa.status
        .as_ref()?
        .current_metrics
        .as_ref()?
        .iter()
        .filter_map(|m| m.resource.as_ref())
        .find(|r| r.name == "cpu")?
        .current
        .average_value
        .as_ref()
        .map(|q| q.0.clone())
}

fn step_index(rollout: &Rollout) -> Option<i32> {
    rollout.status.as_ref().and_then(|s| s.current_step_index)
}

/// `.status.selector` of the Rollout's scale subresource, as the HPA reads it.
async fn scale_selector(env: &Env, name: &str) -> anyhow::Result<Option<String>> {
    let scale = env.rollouts().get_scale(name).await?;
    Ok(scale.status.and_then(|s| s.selector))
}

fn condition(hpa: &HorizontalPodAutoscaler, kind: &str) -> Option<(String, String)> {
    hpa.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
}

#[tokio::test]
async fn the_hpa_scales_a_rollout_mid_canary_and_the_step_split_holds() -> anyhow::Result<()> {
    let env = Env::start("hpa").await?;
    env.apply(&common::canary_yaml(
        "web",
        2,
        "web:1",
        "[{setWeight: 50}, {pause: {}}]",
    ))
    .await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("2 stable pods", &[("web:1", 2)]).await?;
    assert_eq!(
        scale_selector(&env, "web").await?.as_deref(),
        Some("app=web"),
        "the scale subresource publishes the Rollout's selector for the HPA"
    );

    env.set_image("web", "web:2").await?;
    env.wait_rollout("web", "paused at the 50% step", |r| {
        step_index(r) == Some(1)
    })
    .await?;
    env.wait_replicas(
        "50% of 2: one canary pod, one stable pod",
        &[("web:1", 1), ("web:2", 1)],
    )
    .await?;

    // Scale-down is disabled so that pods started idle by the scale-up
    // cannot pull the average back under the target while the test reads.
    env.apply(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: ramp.dev/v1alpha1, kind: Rollout, name: web}
  minReplicas: 2
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: AverageValue, averageValue: 100m}}
  behavior:
    scaleDown: {selectPolicy: Disabled}
"#,
    )
    .await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(env.client.clone(), &env.ns);
    // Idle pods (1m each) are under the target: the HPA reads metrics and
    // keeps the Rollout at its minimum.
    let reading = wait_until(
        "the HPA to read the pods' CPU from metrics.k8s.io",
        HPA_TIMEOUT,
        || async {
            let hpa = hpas.get("web").await?;
            let active = condition(&hpa, "ScalingActive");
            Ok((active.as_ref().map(|c| c.0.as_str()) == Some("True")).then_some(hpa))
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}; is metrics-server serving? see target/cluster/run/logs/metrics-server.log"
        )
    })?;
    assert_eq!(env.rollout("web").await?.spec.replicas, Some(2));
    let idle_cpu = average_cpu(&reading).ok_or_else(|| {
        anyhow::anyhow!(
            "ScalingActive without a current CPU metric: {:?}",
            reading.status
        )
    })?;

    // 400m per pod against a 100m target wants 8 pods; the HPA stops at 4.
    let loaded = load_pods(&env, "web", 400).await?;
    let load_started = std::time::Instant::now();
    assert_eq!(loaded.len(), 2, "pods loaded: {loaded:?}");
    env.wait_rollout_for(
        "web",
        "the HPA to scale the Rollout to 4",
        HPA_TIMEOUT,
        |r| r.spec.replicas == Some(4),
    )
    .await?;
    let scaled_after = load_started.elapsed();
    // The step's split scales with it: 50% of 4 on each side, still paused.
    env.wait_replicas(
        "50% of 4: two canary pods, two stable pods",
        &[("web:1", 2), ("web:2", 2)],
    )
    .await?;
    // The controller may not have seen the last ReplicaSet change yet.
    let rollout = env
        .wait_rollout("web", "status to count the 4 pods", |r| {
            r.status.as_ref().map(|s| s.replicas) == Some(4)
        })
        .await?;
    assert_eq!(step_index(&rollout), Some(1), "still at the paused step");
    // The HPA records its decision after the scale write that showed it.
    let hpa = wait_until(
        "the HPA to report 4 desired, limited by maxReplicas (8 wanted)",
        common::TIMEOUT,
        || async {
            let hpa = hpas.get("web").await?;
            let desired = hpa.status.as_ref().map(|s| s.desired_replicas);
            let limited = condition(&hpa, "ScalingLimited").map(|c| c.0);
            Ok((desired == Some(4) && limited.as_deref() == Some("True")).then_some(hpa))
        },
    )
    .await?;
    let hpa_status = hpa.status.as_ref();
    // The HPA wrote spec.replicas through the scale subresource and owns
    // it now; Ramp (field manager ramp-controller) never wrote it back.
    let owners = owners_of_replicas(&rollout);
    assert_eq!(
        owners,
        vec![(
            "kube-controller-manager".to_string(),
            Some("scale".to_string())
        )],
        "managers of spec.replicas"
    );

    let loaded_cpu = average_cpu(&hpa)
        .ok_or_else(|| anyhow::anyhow!("no current CPU metric after scaling: {hpa_status:?}"))?;
    common::write_report(
        "hpa.md",
        &format!(
            "| moment | Rollout spec.replicas | web:1 (stable) | web:2 (canary) | HPA average CPU (target 100m) |\n\
             |---|---|---|---|---|\n\
             | paused at 50%, pods idle | 2 | 1 | 1 | {idle_cpu} |\n\
             | pods loaded to 400m | 4, the HPA's max, {scaled_after:.1?} after the load | 2 | 2 | {loaded_cpu} |\n"
        ),
    );

    // Promotion finishes at the HPA's size, not the manifest's 2.
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("4 pods of the new revision", &[("web:1", 0), ("web:2", 4)])
        .await?;
    assert_eq!(env.rollout("web").await?.spec.replicas, Some(4));
    env.cleanup().await;
    Ok(())
}

/// (manager, subresource) of every managedFields entry owning spec.replicas.
fn owners_of_replicas(rollout: &Rollout) -> Vec<(String, Option<String>)> {
    rollout
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.pointer("/f:spec/f:replicas"))
                .is_some()
        })
        .map(|entry| {
            (
                entry.manager.clone().unwrap_or_default(),
                entry.subresource.clone(),
            )
        })
        .collect()
}
