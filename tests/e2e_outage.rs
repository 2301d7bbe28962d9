//! Outages (issue 12), in a test binary of its own because it takes the API
//! server away from everyone: the API server is killed and restarted while a
//! canary and a blue/green rollout are mid-release, then Prometheus stops
//! while their analysis runs. A watcher checks the safety invariants on the
//! real cluster throughout. The first release must finish on the new
//! version; the second must abort to the first, never promoting on missing
//! data.

mod common;

use common::analysis::{ERRORS_ANALYSIS, Metrics, template};
use common::invariants::{Watcher, one_replica_set_per_hash};
use common::{Env, blue_green_yaml};
use ramp::api::RolloutPhase;

const CANARY_REPLICAS: i32 = 4;
/// maxSurge defaults to 25%, rounded up.
const CANARY_SURGE: i32 = 1;

async fn stable_is(env: &Env, name: &str, image: &str) -> anyhow::Result<()> {
    let rollout = env.rollout(name).await?;
    let stable = rollout.status.as_ref().and_then(|s| s.stable_rs.clone());
    anyhow::ensure!(
        stable == Some(env.hash_of(image).await?),
        "{name} should be stable on {image}, status: {:?}",
        rollout.status
    );
    Ok(())
}

#[tokio::test]
async fn api_server_restart_and_prometheus_outage_keep_rollouts_safe() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let env = Env::start("outage").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 3\n    consecutiveErrorLimit: 1",
        "result[0] < 0.05",
    ))
    .await?;
    let analysis = ERRORS_ANALYSIS;
    env.deploy_canary(
        "web",
        CANARY_REPLICAS,
        "web:1",
        &format!("[{{setWeight: 25}}, {{analysis: {analysis}}}, {{setWeight: 75}}, {{pause: {{duration: 1}}}}]"),
    )
    .await?;
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        &format!("autoPromotionSeconds: 1\n      scaleDownDelaySeconds: 1\n      abortScaleDownDelaySeconds: 1\n      prePromotionAnalysis: {analysis}"),
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let watcher = Watcher::for_canary(&env, "web-", CANARY_REPLICAS + CANARY_SURGE);

    // Release 2: the API server goes away while both analyses run.
    env.set_image("web", "web:2").await?;
    env.set_image("shop", "shop:2").await?;
    env.wait_measured("web:2").await?;
    env.wait_measured("shop:2").await?;
    env.restart_api_server().await?;
    for (name, image) in [("web", "web:2"), ("shop", "shop:2")] {
        env.wait_phase(name, RolloutPhase::Healthy).await?;
        stable_is(&env, name, image).await?;
    }
    env.wait_replicas(
        "release 2 done",
        &[
            ("web:2", CANARY_REPLICAS),
            ("web:1", 0),
            ("shop:2", 2),
            ("shop:1", 0),
        ],
    )
    .await?;

    // Release 3: Prometheus goes away mid-analysis; both abort to release 2.
    env.set_image("web", "web:3").await?;
    env.set_image("shop", "shop:3").await?;
    env.wait_measured("web:3").await?;
    env.wait_measured("shop:3").await?;
    metrics.prometheus.stop().await;
    for name in ["web", "shop"] {
        let aborted = env
            .wait_rollout(name, "aborted", |r| {
                r.status.as_ref().is_some_and(|s| s.abort)
            })
            .await?;
        let message = aborted
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        assert!(message.contains("Error"), "{name}: {message}");
    }
    env.wait_replicas(
        "everything back on release 2",
        &[
            ("web:3", 0),
            ("web:2", CANARY_REPLICAS),
            ("shop:3", 0),
            ("shop:2", 2),
        ],
    )
    .await?;
    for (name, image) in [("web", "web:2"), ("shop", "shop:2")] {
        stable_is(&env, name, image).await?;
    }
    let stable = env.hash_of("shop:2").await?;
    env.wait_selector("shop-active", &stable).await?;
    env.wait_selector("web-stable", &env.hash_of("web:2").await?)
        .await?;

    let samples = watcher.finish().await?;
    one_replica_set_per_hash(&env.client, &env.ns, &["web-", "shop-"]).await?;
    eprintln!(
        "outage: {} invariant samples ({} failed during the outage), {} violations",
        samples.taken,
        samples.failed,
        samples.violations.len()
    );
    assert!(
        samples.failed > 0,
        "the watcher saw the API server outage (else the restart did not happen)"
    );
    assert_eq!(samples.violations, Vec::<String>::new());
    env.cleanup().await;
    Ok(())
}
