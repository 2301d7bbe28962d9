//! The Rollout reconciler: snapshot from the caches, plan, apply.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use super::index::Reference;
use super::{Context, Error, apply, lock};
use crate::api::POD_TEMPLATE_HASH_LABEL;
use crate::api::{
    AnalysisRun, AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate, Rollout,
};
use crate::planner::{self, PodInfo, Snapshot, referenced_services};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const CONTROLLER: &str = "rollout";

/// The Rollout controller over its own cache; `rollouts` triggers it only
/// once `store` holds what it triggers for (see `triggers`).
pub(super) fn build(
    rollouts: Watched<Rollout>,
    store: Store<Rollout>,
    concurrency: u16,
) -> Controller<Rollout> {
    Controller::for_stream(rollouts, store)
        .trigger_backoff(super::triggers::TriggerPause)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
}

pub(super) type Watched<K> = BoxStream<'static, Result<K, kube::runtime::watcher::Error>>;

/// The shared reflectors' event streams that wake the Rollout controller.
pub(super) struct Triggers {
    pub replica_sets: Watched<ReplicaSet>,
    pub services: Watched<Service>,
    pub runs: Watched<AnalysisRun>,
    pub templates: Watched<AnalysisTemplate>,
    pub cluster_templates: Watched<ClusterAnalysisTemplate>,
    pub routes: super::routes::RouteEvents,
    pub workloads: super::workloads::WorkloadEvents,
    /// Rollouts whose webhook just answered.
    pub webhook_answers: tokio::sync::mpsc::Receiver<crate::notify::hooks::Subject>,
}

pub(super) async fn run(
    controller: Controller<Rollout>,
    ctx: Arc<Context>,
    triggers: Triggers,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Triggers {
        replica_sets,
        services,
        runs,
        templates,
        cluster_templates,
        routes,
        workloads,
        webhook_answers,
    } = triggers;
    let answered = futures::stream::unfold(webhook_answers, |mut answers| async move {
        let subject = answers.recv().await?;
        Some((
            ObjectRef::<Rollout>::new(&subject.name).within(&subject.namespace),
            answers,
        ))
    });
    let store = controller.store();
    let pruner = tokio::spawn(prune(ctx.clone(), store));
    let (by_service, by_template, by_cluster_template) = (ctx.clone(), ctx.clone(), ctx.clone());
    controller
        .owns_stream(replica_sets)
        .owns_stream(runs)
        .watches_stream(services, move |service: Service| {
            by_service.references.rollouts_naming(&Reference::Service {
                namespace: service.namespace().unwrap_or_default(),
                name: service.name_any(),
            })
        })
        // A template that appears, changes or disappears changes the verdict
        // on every Rollout naming it, so they are planned again at once.
        .watches_stream(templates, move |template: AnalysisTemplate| {
            by_template
                .references
                .rollouts_naming(&Reference::Template {
                    namespace: template.namespace().unwrap_or_default(),
                    name: template.name_any(),
                })
        })
        .watches_stream(
            cluster_templates,
            move |template: ClusterAnalysisTemplate| {
                by_cluster_template
                    .references
                    .rollouts_naming(&Reference::ClusterTemplate {
                        name: template.name_any(),
                    })
            },
        )
        // A route's status (its gateway accepting a new weight) is what a
        // step waits for, so route changes plan the Rollouts naming them.
        .reconcile_on(super::routes::triggers(ctx.clone(), routes))
        // A workload's template is the Rollout's template.
        .reconcile_on(super::workloads::triggers(ctx.clone(), workloads))
        // A webhook's answer is what a gate waits for.
        .reconcile_on(answered)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| super::log_stream_error(result, "rollout controller"))
        .await;
    pruner.abort();
}

/// The cached objects the owner index names, as the store has them now;
/// the check runs again on the cached copy because the index is fed just
/// before the store is.
fn owned<K>(
    store: &Store<K>,
    refs: Vec<ObjectRef<K>>,
    still_owned: impl Fn(&K) -> bool,
) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut found: Vec<Arc<K>> = refs
        .iter()
        .filter_map(|r| store.get(r))
        .filter(|object| still_owned(object))
        .collect();
    // Store order is arbitrary; a stable order keeps plans reproducible.
    found.sort_by_key(|object| object.meta().name.clone());
    found
}

fn owned_by(references: &Option<Vec<OwnerReference>>, uid: &str) -> bool {
    references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.synced.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let started = Instant::now();
    if let Some(waited) = ctx
        .rollouts_waiting
        .started_at(&ObjectRef::from_obj(rollout.as_ref()), started)
    {
        ctx.metrics.reconcile_waited(CONTROLLER, waited);
    }
    // Plan from our own last write when the watch has not delivered it yet:
    // the stale copy would repeat what was done and conflict on the write.
    let rollout = ctx.recent_rollouts.freshest(rollout);
    let name = rollout.name_any();
    let namespace = rollout.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "Rollout",
        name: name.clone(),
    })?;
    if rollout.metadata.deletion_timestamp.is_some() {
        if planner::traffic::release::has_finalizer(&rollout) {
            // Hand the routes back before the Rollout (and, through owner
            // references, its pods) goes. The route watch brings the patched
            // routes back; the requeue covers a missed event.
            let routes = super::routes::live_routes(&ctx, &rollout);
            let patches = planner::traffic::release::release_on_delete(
                &rollout,
                &super::routes::as_live(&routes),
            );
            if !patches.is_empty() {
                super::routes::execute(&ctx, &patches).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            super::apply::set_finalizer(&ctx, &rollout, &namespace, false).await?;
        }
        ctx.metrics.forget_rollout(&namespace, &name);
        ctx.references
            .forget(&ObjectRef::from_obj(rollout.as_ref()));
        return Ok(Action::await_change());
    }
    // Recorded before the caches are read: see ReferenceIndex.
    ctx.references.record(&rollout);
    let uid = rollout.uid().unwrap_or_default();
    let same_namespace = |other: &Option<String>| other.as_deref() == Some(namespace.as_str());
    let controlled = |meta: &kube::api::ObjectMeta| {
        same_namespace(&meta.namespace) && owned_by(&meta.owner_references, &uid)
    };
    let rs_owned = |rs: &ReplicaSet| controlled(&rs.metadata);
    let mut replica_sets: Vec<Arc<ReplicaSet>> = ctx.recent_replica_sets.overlay(
        owned(
            &ctx.replica_sets,
            ctx.owned_replica_sets.owned_by(&uid),
            rs_owned,
        ),
        rs_owned,
    );
    // ReplicaSets without a controller, for the planner to adopt those the
    // Rollout's selector selects (a workload deleted with --cascade=orphan).
    let orphaned = |rs: &ReplicaSet| {
        same_namespace(&rs.metadata.namespace)
            && rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .all(|r| r.controller != Some(true))
    };
    let orphans: Vec<Arc<ReplicaSet>> = owned(
        &ctx.replica_sets,
        ctx.owned_replica_sets.orphans_in(&namespace),
        orphaned,
    );
    let run_owned = |run: &AnalysisRun| controlled(&run.metadata);
    let runs: Vec<Arc<AnalysisRun>> = ctx.recent_runs.overlay(
        owned(&ctx.analysis_runs, ctx.owned_runs.owned_by(&uid), run_owned),
        run_owned,
    );
    let services: Vec<(String, Arc<Service>)> = referenced_services(&rollout)
        .into_iter()
        .filter_map(|(_, service)| {
            let found = ctx
                .services
                .get(&ObjectRef::new(&service).within(&namespace))?;
            Some((service, ctx.recent_services.freshest(found)))
        })
        .collect();
    let mut templates: Vec<((bool, String), AnalysisTemplateSpec)> = Vec::new();
    for (_, analysis, _) in planner::analysis::declared_analyses(&rollout) {
        for reference in &analysis.templates {
            let cluster = reference.cluster_scope.unwrap_or(false);
            let key = (cluster, reference.template_name.clone());
            let spec = if cluster {
                ctx.cluster_templates
                    .get(&ObjectRef::new(&reference.template_name))
                    .map(|t| t.spec.template.clone())
            } else {
                ctx.templates
                    .get(&ObjectRef::new(&reference.template_name).within(&namespace))
                    .map(|t| t.spec.clone())
            };
            if let Some(spec) = spec {
                templates.push((key, spec));
            }
        }
    }

    let workload = match &rollout.spec.workload_ref {
        Some(reference) => match reference.workload_kind() {
            Some(kind) => match ctx.workloads.lookup(kind, &namespace, &reference.name) {
                // Planning now would call an existing workload missing.
                super::workloads::Lookup::NotSynced => {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                super::workloads::Lookup::Missing => None,
                super::workloads::Lookup::Found(workload) => Some(*workload),
            },
            // The planner says what is wrong with the reference.
            None => None,
        },
        None => None,
    };

    // A Deployment's ReplicaSets are not cached; they are listed only while
    // the Rollout may take them over.
    let workload_replica_sets = match &workload {
        Some(found)
            if planner::workload::handover_pending(&rollout, replica_sets.len(), Some(found)) =>
        {
            list_workload_replica_sets(&ctx, &namespace, found).await?
        }
        _ => Vec::new(),
    };

    let now = Timestamp::now();
    // Pods are not cached (that would dominate memory); they are listed only while a restart is due.
    let pods = match planner::restart::pending_restart(&rollout, now) {
        Some(_) => {
            let selector = planner::workload::effective_selector(&rollout, workload.as_ref())
                .unwrap_or_default();
            Some(list_pods(&ctx, &selector, &namespace).await?)
        }
        None => None,
    };
    let live_routes = super::routes::live_routes(&ctx, &rollout);
    let webhook_answers = ctx.webhooks.answers_for(&uid);
    let plan_from = |replica_sets: &[Arc<ReplicaSet>]| {
        planner::plan(&Snapshot {
            rollout: &rollout,
            replica_sets: replica_sets.iter().map(AsRef::as_ref).collect(),
            services: services
                .iter()
                .map(|(name, svc)| (name.clone(), svc.as_ref()))
                .collect::<BTreeMap<_, _>>(),
            analysis_runs: runs.iter().map(AsRef::as_ref).collect(),
            analysis_templates: templates
                .iter()
                .map(|(key, spec)| (key.clone(), spec))
                .collect(),
            cluster_templates_read_secrets: ctx.analysis_policy.cluster_templates_read_secrets,
            pods: pods.clone(),
            routes: super::routes::as_live(&live_routes),
            webhook_answers: webhook_answers.clone(),
            orphans: orphans.iter().map(AsRef::as_ref).collect(),
            workload_replica_sets: workload_replica_sets.iter().collect(),
            workload: workload.as_ref(),
            now,
        })
    };
    let mut plan = plan_from(&replica_sets);
    if !plan.needs_templates.is_empty() {
        // Drained ReplicaSets are cached without their templates; this plan
        // writes one (an abort scaling a drained stable back up), so read
        // those in full and plan again, carrying out only the second plan.
        read_templates(&ctx, &namespace, &plan.needs_templates, &mut replica_sets).await?;
        plan = plan_from(&replica_sets);
        if let Some(missing) = plan.needs_templates.first() {
            return Err(Error::NoTemplate {
                namespace,
                name: missing.clone(),
            });
        }
    }
    if let Some(status) = &plan.status
        && status.phase != rollout.status.as_ref().and_then(|s| s.phase)
    {
        info!(rollout = %name, namespace = %namespace, phase = ?status.phase, message = ?status.message, "phase changed");
    }
    let key = ObjectRef::from_obj(rollout.as_ref());
    match apply::execute(&ctx, &rollout, &namespace, &plan).await {
        Ok(()) => {
            lock(&ctx.conflicts).remove(&key);
        }
        Err(error @ Error::Conflict { .. }) => {
            // Someone else wrote the Rollout since our copy. Fetch it so the
            // retry plans from it even while the watch lags; the writes done
            // before the status are remembered and not repeated.
            let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), &namespace);
            let fetched = api.get(&name).await;
            ctx.metrics.request("get", "Rollout", &fetched);
            if let Ok(fetched) = fetched {
                ctx.recent_rollouts.remember(fetched);
            }
            return Err(error);
        }
        Err(error) => return Err(error),
    }

    let status = plan.status.as_ref().or(rollout.status.as_ref());
    if let Some(status) = status {
        let phase = status.phase.map(|p| p.as_str()).unwrap_or("Unknown");
        ctx.metrics.observe_rollout(
            &namespace,
            &name,
            rollout.strategy_name(),
            phase,
            [
                ("desired", i64::from(rollout.replicas())),
                ("available", i64::from(status.available_replicas)),
                ("updated", i64::from(status.updated_replicas)),
            ],
        );
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// The ReplicaSets a Deployment controls, listed by its selector.
async fn list_workload_replica_sets(
    ctx: &Context,
    namespace: &str,
    workload: &planner::workload::Workload,
) -> Result<Vec<ReplicaSet>, Error> {
    let Some(selector) = &workload.selector else {
        return Ok(Vec::new());
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&planner::label_selector_string(selector)))
        .await;
    ctx.metrics.request("list", "ReplicaSet", &listed);
    let listed = listed.map_err(|source| Error::ListReplicaSets {
        namespace: namespace.into(),
        source,
    })?;
    Ok(listed
        .items
        .into_iter()
        .filter(|rs| owned_by(&rs.metadata.owner_references, &workload.uid))
        .collect())
}

/// Replaces the named ReplicaSets in `replica_sets` by copies read from the
/// API server, templates included.
async fn read_templates(
    ctx: &Context,
    namespace: &str,
    names: &[String],
    replica_sets: &mut [Arc<ReplicaSet>],
) -> Result<(), Error> {
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), namespace);
    for name in names {
        let read = api.get(name).await;
        ctx.metrics.request("get", "ReplicaSet", &read);
        let read = read.map_err(|source| Error::ReadReplicaSet {
            namespace: namespace.into(),
            name: name.clone(),
            source,
        })?;
        if let Some(slot) = replica_sets
            .iter_mut()
            .find(|rs| rs.metadata.name.as_ref() == Some(name))
        {
            *slot = Arc::new(read);
        }
    }
    Ok(())
}

/// Retry delay after the `attempt`-th conflict in a row: doubling from
/// 100 ms up to 5 s, spread by ±50 % so Rollouts that conflicted together
/// do not retry together.
fn conflict_backoff(attempt: u32, spread: u64) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(5_000);
    let jitter = spread % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    match error {
        Error::Conflict { .. } => {
            let attempt = {
                let mut conflicts = lock(&ctx.conflicts);
                let attempt = conflicts
                    .entry(ObjectRef::from_obj(rollout.as_ref()))
                    .or_insert(0);
                *attempt = attempt.saturating_add(1);
                *attempt
            };
            let spread = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                Instant::now(),
            );
            Action::requeue(conflict_backoff(attempt, spread))
        }
        _ => {
            warn!(rollout = %rollout.name_any(), namespace = ?rollout.namespace(), %error, "reconcile failed; retrying in 5s");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

async fn list_pods(
    ctx: &Context,
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    namespace: &str,
) -> Result<Vec<PodInfo>, Error> {
    let selector = crate::planner::label_selector_string(selector);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await;
    ctx.metrics.request("list", "Pod", &listed);
    let listed = listed.map_err(|source| Error::ListPods {
        namespace: namespace.into(),
        source,
    })?;
    Ok(listed
        .items
        .into_iter()
        .map(|pod| PodInfo {
            hash: pod
                .labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default(),
            name: pod.name_any(),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        })
        .collect())
}

/// Forgets metric series and index entries of Rollouts that are gone (a
/// deleted Rollout is never reconciled again). Reads only the cache, so it
/// costs no API requests.
async fn prune(ctx: Arc<Context>, store: Store<Rollout>) {
    let mut known: HashSet<(String, String)> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let live: HashSet<(String, String)> = store
            .state()
            .iter()
            .map(|r| (r.namespace().unwrap_or_default(), r.name_any()))
            .collect();
        for gone in known.iter().filter(|k| !live.contains(k)) {
            ctx.metrics.forget_rollout(&gone.0, &gone.1);
        }
        ctx.references.retain(|r| store.get(r).is_some());
        lock(&ctx.conflicts).retain(|r, _| store.get(r).is_some());
        known = live;
    }
}

#[cfg(test)]
mod tests {
    use super::conflict_backoff;
    use std::time::Duration;

    #[test]
    fn conflict_backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(conflict_backoff(1, 0), Duration::from_millis(50));
        assert_eq!(conflict_backoff(1, 100), Duration::from_millis(150));
        assert_eq!(conflict_backoff(2, 0), Duration::from_millis(100));
        assert_eq!(conflict_backoff(3, 400), Duration::from_millis(600));
        assert_eq!(conflict_backoff(40, 0), Duration::from_millis(2_500));
        assert_eq!(conflict_backoff(40, 5_000), Duration::from_millis(7_500));
        assert!(conflict_backoff(40, u64::MAX) <= Duration::from_millis(7_500));
    }
}
