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

/// Argo's TestRolloutScalingWhenPaused: scaling a paused canary keeps the
/// weight's share, and one replica at 25% still gets a canary pod.
#[tokio::test]
async fn scaling_while_paused_keeps_the_weight_share() -> anyhow::Result<()> {
    let env = Env::start("conf-scale-paused").await?;
    env.deploy_canary("web", 1, "web:1", "[{setWeight: 25}, {pause: {}}]")
        .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("1 canary beside 1 stable", &[("web:2", 1), ("web:1", 1)])
        .await?;
    env.scale("web", 8).await?;
    env.wait_replicas("25% of 8", &[("web:2", 2), ("web:1", 6)])
        .await?;
    env.scale("web", 4).await?;
    env.wait_replicas("25% of 4", &[("web:2", 1), ("web:1", 3)])
        .await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.cleanup().await;
    Ok(())
}

/// Rule 6, with the counts of Argo's TestRolloutScalingDuringUpdate: the
/// canary never becomes available, maxUnavailable 0 keeps every stable pod,
/// and the canary gets only what maxSurge leaves, up and down again.
#[tokio::test]
async fn max_surge_caps_the_total_while_replicas_change_mid_update() -> anyhow::Result<()> {
    let env = Env::start("conf-surge").await?;
    env.deploy_canary(
        "web",
        4,
        "web:1",
        "[]\n      maxSurge: 2\n      maxUnavailable: 0",
    )
    .await?;
    env.set_image("web", "web:never-ready").await?;
    env.wait_scaled(
        "2 canary, 4 stable",
        &[("web:never-ready", 2), ("web:1", 4)],
    )
    .await?;
    env.scale("web", 8).await?;
    env.wait_scaled(
        "6 canary, 4 stable",
        &[("web:never-ready", 6), ("web:1", 4)],
    )
    .await?;
    env.scale("web", 4).await?;
    env.wait_scaled("back to 2 canary", &[("web:never-ready", 2), ("web:1", 4)])
        .await?;
    let rollout = env
        .wait_rollout("web", "status counting 6 pods", |r| {
            r.status.as_ref().is_some_and(|s| s.replicas == 6)
        })
        .await?;
    assert_eq!(rollout.status.map(|s| s.available_replicas), Some(4));
    env.cleanup().await;
    Ok(())
}

/// Rule 7: a setCanaryScale stays in force through later setWeight steps
/// until one says matchTrafficWeight.
#[tokio::test]
async fn set_canary_scale_holds_until_match_traffic_weight() -> anyhow::Result<()> {
    let env = Env::start("conf-canary-scale").await?;
    env.deploy_canary(
        "web",
        4,
        "web:1",
        "[{setCanaryScale: {replicas: 1}}, {setWeight: 50}, {pause: {}}, {setCanaryScale: {matchTrafficWeight: true}}, {pause: {}}]",
    )
    .await?;
    env.set_image("web", "web:2").await?;
    env.wait_rollout("web", "paused at step 3", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(2)
            && phase(r) == Some(RolloutPhase::Paused)
    })
    .await?;
    env.wait_replicas(
        "scale 1 holds through setWeight 50",
        &[("web:2", 1), ("web:1", 2)],
    )
    .await?;
    env.promote("web").await?;
    env.wait_rollout("web", "paused at step 5", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(4)
            && phase(r) == Some(RolloutPhase::Paused)
    })
    .await?;
    env.wait_replicas("back to the weight's share", &[("web:2", 2), ("web:1", 2)])
        .await?;
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("promoted", &[("web:2", 4), ("web:1", 0)])
        .await?;
    env.cleanup().await;
    Ok(())
}
