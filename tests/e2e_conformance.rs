//! Argo conformance on the local control plane (issue 11): each test checks
//! one of Argo Rollouts' documented rules end to end, with the counts and
//! selectors Argo's own e2e suite expects for the same feature.

mod common;

use common::{Env, blue_green_yaml, phase};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams};
use ramp::api::{POD_TEMPLATE_HASH_LABEL, RolloutPhase};
use ramp_test_support::wait_until;
use serde_json::json;

/// Revisions are ordered by creationTimestamp, which the API server keeps at
/// whole seconds: before the next release, wait until the clock has left the
/// second the newest ReplicaSet was created in.
async fn wait_for_a_new_second(env: &Env) -> anyhow::Result<()> {
    let api: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    let newest = api
        .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
        .await?
        .items
        .iter()
        .filter_map(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .max();
    let Some(newest) = newest else { return Ok(()) };
    wait_until(
        "the clock to pass the newest ReplicaSet's creation second",
        common::TIMEOUT,
        || async { Ok((jiff::Timestamp::now().as_second() > newest.as_second()).then_some(())) },
    )
    .await
}

async fn release(env: &Env, rollout: &str, image: &str) -> anyhow::Result<()> {
    wait_for_a_new_second(env).await?;
    env.set_image(rollout, image).await
}

#[tokio::test]
async fn blue_green_counts_the_active_replica_set_and_preview_stays_on_abort() -> anyhow::Result<()>
{
    let env = Env::start("conf-bg-counts").await?;
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        "autoPromotionEnabled: false",
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let blue = env.hash_of("shop:1").await?;
    env.set_image("shop", "shop:2").await?;
    env.wait_phase("shop", RolloutPhase::Paused).await?;
    env.wait_replicas("both versions up", &[("shop:1", 2), ("shop:2", 2)])
        .await?;
    let green = env.hash_of("shop:2").await?;

    // Rule 1: ready/available/selector describe what the active Service selects.
    let rollout = env
        .wait_rollout("shop", "status counts for both ReplicaSets", |r| {
            r.status.as_ref().is_some_and(|s| s.replicas == 4)
        })
        .await?;
    let status = rollout.status.unwrap_or_default();
    assert_eq!(status.updated_replicas, 2);
    assert_eq!(status.ready_replicas, 2, "active pods only");
    assert_eq!(status.available_replicas, 2, "active pods only");
    let selector = status.selector.unwrap_or_default();
    assert!(
        selector.contains(&format!("{POD_TEMPLATE_HASH_LABEL}={blue}")),
        "{selector}"
    );

    // Rule 2: abort moves only the active Service back.
    env.set_abort("shop", true).await?;
    env.wait_phase("shop", RolloutPhase::Degraded).await?;
    env.wait_selector("shop-active", &blue).await?;
    env.wait_selector("shop-preview", &green).await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn weights_become_the_closest_split_with_a_surge_pod() -> anyhow::Result<()> {
    let env = Env::start("conf-split").await?;
    env.deploy_canary("web", 3, "web:1", "[{setWeight: 20}, {pause: {}}]")
        .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    // 20% of 3 (+1 surge pod): 1 canary beside 3 stable, as in Argo.
    env.wait_replicas("1 canary, 3 stable", &[("web:2", 1), ("web:1", 3)])
        .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn promote_full_finishes_an_aborted_rollout() -> anyhow::Result<()> {
    let env = Env::start("conf-full").await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.set_abort("web", true).await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    env.ramp_ok(&["promote", "web", "--full"]).await?;
    let rollout = env.wait_phase("web", RolloutPhase::Healthy).await?;
    let status = rollout.status.unwrap_or_default();
    assert!(!status.abort);
    assert_eq!(status.stable_rs, Some(env.hash_of("web:2").await?));
    env.wait_replicas("promoted", &[("web:2", 2), ("web:1", 0)])
        .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn undo_reuses_the_earlier_replica_set() -> anyhow::Result<()> {
    let env = Env::start("conf-undo").await?;
    env.deploy_canary("web", 2, "web:1", "[]").await?;
    let first = env.hash_of("web:1").await?;
    env.set_image("web", "web:2").await?;
    env.wait_replicas("v2 promoted", &[("web:2", 2), ("web:1", 0)])
        .await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;

    env.ramp_ok(&["undo", "web"]).await?;
    let rollout = env
        .wait_rollout("web", "stable back on the first ReplicaSet", |r| {
            r.status.as_ref().and_then(|s| s.stable_rs.as_deref()) == Some(first.as_str())
                && phase(r) == Some(RolloutPhase::Healthy)
        })
        .await?;
    assert_eq!(rollout.status.and_then(|s| s.current_pod_hash), Some(first));
    env.wait_replicas("v1 back", &[("web:1", 2), ("web:2", 0)])
        .await?;
    assert_eq!(env.replica_set_count().await?, 2, "no third ReplicaSet");
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn rollback_within_the_window_skips_steps() -> anyhow::Result<()> {
    let env = Env::start("conf-window").await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    let patch = json!({"spec": {"rollbackWindow": {"revisions": 1}}});
    env.rollouts()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    release(&env, "web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    release(&env, "web", "web:3").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;

    // Back to v1: nothing was created between v1 and stable v2.
    release(&env, "web", "web:1").await?;
    let rollout = env.wait_phase("web", RolloutPhase::Healthy).await?;
    assert_eq!(
        rollout.status.and_then(|s| s.stable_rs),
        Some(env.hash_of("web:1").await?)
    );
    env.wait_replicas("v1 everywhere", &[("web:1", 2), ("web:2", 0), ("web:3", 0)])
        .await?;
    env.wait_events(&["SkipSteps"]).await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn blue_green_fast_rollback_within_the_scale_down_delay() -> anyhow::Result<()> {
    let env = Env::start("conf-fast").await?;
    // A delay far longer than the test: the old ReplicaSet is still up.
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        "autoPromotionEnabled: false\n      scaleDownDelaySeconds: 3600",
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let blue = env.hash_of("shop:1").await?;
    release(&env, "shop", "shop:2").await?;
    env.wait_phase("shop", RolloutPhase::Paused).await?;
    env.promote("shop").await?;
    env.wait_rollout("shop", "green active", |r| {
        r.status.as_ref().and_then(|s| s.stable_rs.as_deref()) != Some(blue.as_str())
            && phase(r) == Some(RolloutPhase::Healthy)
    })
    .await?;
    env.wait_replicas("blue waits out its delay", &[("shop:1", 2), ("shop:2", 2)])
        .await?;

    // Going back to blue needs no pause and no promotion.
    env.set_image("shop", "shop:1").await?;
    env.wait_rollout("shop", "blue active and stable again", |r| {
        r.status.as_ref().and_then(|s| s.stable_rs.as_deref()) == Some(blue.as_str())
            && phase(r) == Some(RolloutPhase::Healthy)
    })
    .await?;
    env.wait_selector("shop-active", &blue).await?;
    env.wait_selector("shop-preview", &blue).await?;
    env.wait_events(&["SkipSteps"]).await?;
    env.cleanup().await;
    Ok(())
}
