//! Chaos (issue 12): the controller is SIGKILLed at random moments while a
//! canary (with an analysis step) and a blue/green rollout (with
//! pre-promotion analysis) move through their steps, measured against a real
//! Prometheus. A watcher samples Services and ReplicaSets at 10 Hz and checks
//! the safety invariants on the real cluster; at the end both rollouts must
//! stand where their spec says, with one ReplicaSet per template.

mod common;

use std::time::Duration;

use common::analysis::{ERRORS_ANALYSIS, Metrics, template};
use common::invariants::{Watcher, one_replica_set_per_hash};
use common::{Env, blue_green_yaml, phase};
use kube::ResourceExt;
use ramp::api::{AnalysisPhase, POD_TEMPLATE_HASH_LABEL, RolloutPhase};

const KILLS: usize = 20;
const CANARY_REPLICAS: i32 = 4;
/// maxSurge defaults to 25%, rounded up.
const CANARY_SURGE: i32 = 1;

/// A small deterministic generator: the seed is printed, so a failing run
/// can be replayed with RAMP_CHAOS_SEED.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn killed_controller_never_breaks_the_invariants() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let mut env = Env::start("chaos").await?;
    let seed = std::env::var("RAMP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
    eprintln!("chaos seed {seed} (replay with RAMP_CHAOS_SEED={seed})");
    let mut random = Lcg(seed);

    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 2",
        "result[0] < 0.05",
    ))
    .await?;
    let analysis = ERRORS_ANALYSIS;
    env.deploy_canary(
        "web",
        CANARY_REPLICAS,
        "web:1",
        &format!("[{{setWeight: 25}}, {{pause: {{duration: 1}}}}, {{analysis: {analysis}}}, {{setWeight: 50}}, {{pause: {{duration: 1}}}}, {{setWeight: 75}}, {{pause: {{duration: 1}}}}]"),
    )
    .await?;
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        &format!("autoPromotionSeconds: 1\n      scaleDownDelaySeconds: 1\n      prePromotionAnalysis: {analysis}"),
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;

    let watcher = Watcher::for_canary(&env, "web-", CANARY_REPLICAS + CANARY_SURGE);

    // A release every few kills, so kills land in every phase of both strategies.
    let mut version = 1;
    for kill in 0..KILLS {
        if kill % 5 == 0 {
            version += 1;
            env.set_image("web", &format!("web:{version}")).await?;
            env.set_image("shop", &format!("shop:{version}")).await?;
        }
        // Chaos timing, not an assertion: the moment of the kill is random.
        tokio::time::sleep(Duration::from_millis(100 + random.next(900))).await;
        env.kill_controller().await;
        env.start_controller().await?;
    }

    for (name, image) in [
        ("web", format!("web:{version}")),
        ("shop", format!("shop:{version}")),
    ] {
        let rollout = env.wait_phase(name, RolloutPhase::Healthy).await?;
        let stable = rollout.status.as_ref().and_then(|s| s.stable_rs.clone());
        assert_eq!(
            stable,
            Some(env.hash_of(&image).await?),
            "{name} ends on {image}"
        );
        assert_eq!(phase(&rollout), Some(RolloutPhase::Healthy));
    }
    env.wait_replicas(
        "only the last release runs",
        &[
            (format!("web:{version}").as_str(), CANARY_REPLICAS),
            (format!("shop:{version}").as_str(), 2),
        ],
    )
    .await?;
    let samples = watcher.finish().await?;
    one_replica_set_per_hash(&env.client, &env.ns, &["web-", "shop-"]).await?;
    // Both final releases passed through their analysis, not around it.
    let runs = env.analysis_runs().await?;
    for image in [format!("web:{version}"), format!("shop:{version}")] {
        let hash = env.hash_of(&image).await?;
        let passed = runs.iter().any(|run| {
            run.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&hash)
                && run.status.as_ref().and_then(|s| s.phase) == Some(AnalysisPhase::Successful)
        });
        assert!(passed, "{image} has a Successful AnalysisRun");
    }
    eprintln!(
        "chaos: {KILLS} kills survived, {} invariant samples, {} violations",
        samples.taken,
        samples.violations.len()
    );
    assert!(samples.taken > KILLS, "the watcher sampled throughout");
    assert_eq!(samples.violations, Vec::<String>::new());
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}
