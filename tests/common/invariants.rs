//! The safety invariants checked on the real cluster while chaos happens: a
//! watcher samples Services and ReplicaSets at 10 Hz and records every
//! violation it sees.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use ramp::api::POD_TEMPLATE_HASH_LABEL;

#[derive(Default, Debug)]
pub struct Samples {
    pub taken: usize,
    /// Samples that could not be taken (the API server down, say).
    pub failed: usize,
    pub violations: Vec<String>,
}

/// A pod ceiling: ReplicaSets whose name starts with `prefix` together never
/// ask for more than `max_pods` (replicas + maxSurge).
#[derive(Clone)]
pub struct PodCeiling {
    pub prefix: &'static str,
    pub max_pods: i32,
}

pub struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

impl Watcher {
    pub fn start(client: Client, ns: String, ceilings: Vec<PodCeiling>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while !stop.load(Ordering::SeqCst) {
                    if let Err(error) = sample(&client, &ns, &ceilings, &mut samples).await {
                        samples.failed += 1;
                        eprintln!("invariant sample failed (API busy or down?): {error:#}");
                    }
                    // The sampling rate, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                samples
            })
        };
        Watcher { stop, task }
    }

    /// The watcher for one canary whose ReplicaSets start with `prefix`.
    pub fn for_canary(env: &super::Env, prefix: &'static str, max_pods: i32) -> Watcher {
        Watcher::start(
            env.client.clone(),
            env.ns.clone(),
            vec![PodCeiling { prefix, max_pods }],
        )
    }

    pub async fn finish(self) -> anyhow::Result<Samples> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// Available pods per hash, with the ReplicaSets for failure messages.
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
/// pods, and no rollout asks for more pods than its ceiling. The Services are
/// read between two ReplicaSet lists; a hash counts as unserved only when
/// both lists agree, since one list may predate the Service change and the
/// other may follow a later scale-down.
async fn sample(
    client: &Client,
    ns: &str,
    ceilings: &[PodCeiling],
    samples: &mut Samples,
) -> anyhow::Result<()> {
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
    for ceiling in ceilings {
        let pods: i32 = sets
            .iter()
            .filter(|rs| rs.name_any().starts_with(ceiling.prefix))
            .filter_map(|rs| rs.spec.as_ref()?.replicas)
            .sum();
        if pods > ceiling.max_pods {
            samples.violations.push(format!(
                "{}* asks for {pods} pods, more than its ceiling of {}",
                ceiling.prefix, ceiling.max_pods
            ));
        }
    }
    samples.taken += 1;
    Ok(())
}

/// No two ReplicaSets of the rollouts named by `prefixes` share a hash.
pub async fn one_replica_set_per_hash(
    client: &Client,
    ns: &str,
    prefixes: &[&str],
) -> anyhow::Result<()> {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let sets = sets.list(&ListParams::default()).await?.items;
    for prefix in prefixes {
        let mut seen = BTreeSet::new();
        for rs in sets.iter().filter(|rs| rs.name_any().starts_with(prefix)) {
            let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
            if !seen.insert(hash.clone()) {
                anyhow::bail!("two ReplicaSets of {prefix}* for hash {hash:?}");
            }
        }
    }
    Ok(())
}
