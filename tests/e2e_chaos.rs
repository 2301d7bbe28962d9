//! Chaos (issue 12): the controller is SIGKILLed at random moments while a
//! canary and a blue/green rollout move through their steps. A watcher
//! samples Services and ReplicaSets at 10 Hz and checks the safety
//! invariants on the real cluster; at the end both rollouts must stand where
//! their spec says, with one ReplicaSet per template.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Env, blue_green_yaml, phase};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use ramp::api::{POD_TEMPLATE_HASH_LABEL, RolloutPhase};

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

#[derive(Default)]
struct Samples {
    taken: usize,
    violations: Vec<String>,
}

/// Available pods per hash, with a description for failure messages.
async fn availability(
    replica_sets: &Api<ReplicaSet>,
) -> anyhow::Result<(Vec<ReplicaSet>, BTreeMap<String, i32>)> {
    let sets = replica_sets
        .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
        .await?
        .items;
    let available = sets
        .iter()
        .filter_map(|rs| {
            let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
            Some((hash, rs.status.as_ref()?.available_replicas.unwrap_or(0)))
        })
        .collect();
    Ok((sets, available))
}

/// One look at the namespace: every hash a Service selects has available
/// pods, and the canary never runs more than replicas + maxSurge pods.
/// The Services are read between two ReplicaSet lists; a hash counts as
/// unserved only when both lists agree, since one list may predate the
/// Service change and the other may follow a later scale-down.
async fn sample(client: &Client, ns: &str, samples: &mut Samples) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let (_, before) = availability(&replica_sets).await?;
    let services = services.list(&ListParams::default()).await?.items;
    let (sets, after) = availability(&replica_sets).await?;
    for service in services {
        let selected = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL))
            .cloned();
        let Some(hash) = selected else { continue };
        let served = |counts: &BTreeMap<String, i32>| counts.get(&hash).copied().unwrap_or(0) > 0;
        if !served(&before) && !served(&after) {
            samples.violations.push(format!(
                "Service {} (resourceVersion {:?}) selects {hash}, which has no available pods: {:?}",
                service.name_any(),
                service.resource_version(),
                sets.iter()
                    .map(|rs| (
                        rs.name_any(),
                        rs.spec.as_ref().and_then(|s| s.replicas),
                        rs.status.as_ref().and_then(|s| s.available_replicas),
                        rs.status.as_ref().and_then(|s| s.observed_generation),
                    ))
                    .collect::<Vec<_>>()
            ));
        }
    }
    let canary_pods: i32 = sets
        .iter()
        .filter(|rs| rs.name_any().starts_with("web-"))
        .filter_map(|rs| rs.spec.as_ref()?.replicas)
        .sum();
    if canary_pods > CANARY_REPLICAS + CANARY_SURGE {
        samples.violations.push(format!(
            "canary runs {canary_pods} pods, more than {CANARY_REPLICAS} + {CANARY_SURGE}"
        ));
    }
    samples.taken += 1;
    Ok(())
}

fn one_replica_set_per_hash(sets: &[ReplicaSet]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for rs in sets {
        let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
        if !seen.insert(hash.clone()) {
            return Err(format!("two ReplicaSets for hash {hash:?}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn killed_controller_never_breaks_the_invariants() -> anyhow::Result<()> {
    let mut env = Env::start("chaos").await?;
    let seed = std::env::var("RAMP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
    eprintln!("chaos seed {seed} (replay with RAMP_CHAOS_SEED={seed})");
    let mut random = Lcg(seed);

    env.deploy_canary(
        "web",
        CANARY_REPLICAS,
        "web:1",
        "[{setWeight: 25}, {pause: {duration: 1}}, {setWeight: 50}, {pause: {duration: 1}}, {setWeight: 75}, {pause: {duration: 1}}]",
    )
    .await?;
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        "autoPromotionSeconds: 1\n      scaleDownDelaySeconds: 1",
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, ns, stop) = (env.client.clone(), env.ns.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = Samples::default();
            while !stop.load(Ordering::SeqCst) {
                if let Err(error) = sample(&client, &ns, &mut samples).await {
                    eprintln!("sample failed (API busy?): {error:#}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

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
    stop.store(true, Ordering::SeqCst);
    let samples = watcher.await?;

    let sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    let sets = sets.list(&ListParams::default()).await?.items;
    for prefix in ["web-", "shop-"] {
        let mine: Vec<ReplicaSet> = sets
            .iter()
            .filter(|rs| rs.name_any().starts_with(prefix))
            .cloned()
            .collect();
        one_replica_set_per_hash(&mine).map_err(anyhow::Error::msg)?;
    }
    eprintln!(
        "chaos: {KILLS} kills survived, {} invariant samples, {} violations",
        samples.taken,
        samples.violations.len()
    );
    assert!(samples.taken > KILLS, "the watcher sampled throughout");
    assert_eq!(samples.violations, Vec::<String>::new());
    env.cleanup().await;
    Ok(())
}
