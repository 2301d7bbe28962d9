//! The Rollout reconciler: snapshot from the caches, plan, apply.

use std::collections::BTreeMap;
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

use super::{Context, Error, apply};
use crate::api::POD_TEMPLATE_HASH_LABEL;
use crate::api::{
    AnalysisRun, AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate, Rollout,
};
use crate::planner::{self, PodInfo, Snapshot, referenced_services};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const CONTROLLER: &str = "rollout";

pub(super) fn build(api: Api<Rollout>) -> Controller<Rollout> {
    Controller::new(api, kube::runtime::watcher::Config::default())
}

type Watched<K> = BoxStream<'static, Result<K, kube::runtime::watcher::Error>>;

/// The shared reflectors' event streams that wake the Rollout controller.
pub(super) struct Triggers {
    pub replica_sets: Watched<ReplicaSet>,
    pub services: Watched<Service>,
    pub runs: Watched<AnalysisRun>,
    pub templates: Watched<AnalysisTemplate>,
    pub cluster_templates: Watched<ClusterAnalysisTemplate>,
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
    } = triggers;
    let store = controller.store();
    let lookup = store.clone();
    let template_lookup = store.clone();
    let cluster_template_lookup = store.clone();
    let pruner = tokio::spawn(prune_metrics(ctx.clone(), store));
    controller
        .owns_stream(replica_sets)
        .owns_stream(runs)
        .watches_stream(services, move |service: Service| {
            rollouts_using(&lookup, &service)
        })
        // A template that appears, changes or disappears changes the verdict
        // on every Rollout naming it, so they are planned again at once.
        .watches_stream(templates, move |template: AnalysisTemplate| {
            rollouts_referencing_template(
                &template_lookup,
                template.namespace().as_deref(),
                &template.name_any(),
            )
        })
        .watches_stream(
            cluster_templates,
            move |template: ClusterAnalysisTemplate| {
                rollouts_referencing_template(&cluster_template_lookup, None, &template.name_any())
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| super::log_stream_error(result, "rollout controller"))
        .await;
    pruner.abort();
}

/// Rollouts in the Service's namespace that name it.
fn rollouts_using(store: &Store<Rollout>, service: &Service) -> Vec<ObjectRef<Rollout>> {
    let namespace = service.namespace();
    let name = service.name_any();
    store
        .state()
        .iter()
        .filter(|r| {
            r.namespace() == namespace && referenced_services(r).iter().any(|(_, s)| *s == name)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Rollouts that reference the template: a namespaced one (`namespace` is
/// Some) from Rollouts in its namespace, a cluster one from any Rollout that
/// sets `clusterScope: true`.
fn rollouts_referencing_template(
    store: &Store<Rollout>,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Rollout>> {
    let cluster = namespace.is_none();
    store
        .state()
        .iter()
        .filter(|r| cluster || r.namespace().as_deref() == namespace)
        .filter(|r| {
            planner::analysis::declared_analyses(r)
                .iter()
                .flat_map(|(_, analysis, _)| &analysis.templates)
                .any(|t| t.cluster_scope.unwrap_or(false) == cluster && t.template_name == name)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
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
    let name = rollout.name_any();
    let namespace = rollout.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "Rollout",
        name: name.clone(),
    })?;
    if rollout.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_rollout(&namespace, &name);
        return Ok(Action::await_change());
    }
    let uid = rollout.uid().unwrap_or_default();
    let same_namespace = |other: &Option<String>| other.as_deref() == Some(namespace.as_str());
    let replica_sets: Vec<Arc<ReplicaSet>> = ctx
        .replica_sets
        .state()
        .into_iter()
        .filter(|rs| {
            same_namespace(&rs.metadata.namespace) && owned_by(&rs.metadata.owner_references, &uid)
        })
        .collect();
    let runs: Vec<Arc<AnalysisRun>> = ctx
        .analysis_runs
        .state()
        .into_iter()
        .filter(|run| {
            same_namespace(&run.metadata.namespace)
                && owned_by(&run.metadata.owner_references, &uid)
        })
        .collect();
    let services: Vec<(String, Arc<Service>)> = referenced_services(&rollout)
        .into_iter()
        .filter_map(|(_, service)| {
            let found = ctx
                .services
                .get(&ObjectRef::new(&service).within(&namespace))?;
            Some((service, found))
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

    let now = Timestamp::now();
    // Pods are not cached (that would dominate memory); they are listed only while a restart is due.
    let pods = match planner::restart::pending_restart(&rollout, now) {
        Some(_) => Some(list_pods(&ctx, &rollout, &namespace).await?),
        None => None,
    };
    let snapshot = Snapshot {
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
        pods,
        now,
    };
    let plan = planner::plan(&snapshot);
    if let Some(status) = &plan.status
        && status.phase != rollout.status.as_ref().and_then(|s| s.phase)
    {
        info!(rollout = %name, namespace = %namespace, phase = ?status.phase, message = ?status.message, "phase changed");
    }
    apply::execute(&ctx, &rollout, &namespace, &plan).await?;

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

fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    match error {
        // The watch will deliver the newer object in a moment.
        Error::Conflict { .. } => Action::requeue(Duration::from_millis(500)),
        _ => {
            warn!(rollout = %rollout.name_any(), namespace = ?rollout.namespace(), %error, "reconcile failed; retrying in 5s");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

async fn list_pods(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
) -> Result<Vec<PodInfo>, Error> {
    let selector = crate::planner::selector_string(rollout);
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

/// Drops metric series of rollouts that no longer exist. Reads only the
/// cache, so it costs no API requests.
async fn prune_metrics(ctx: Arc<Context>, store: Store<Rollout>) {
    let mut known: Vec<(String, String)> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let live: Vec<(String, String)> = store
            .state()
            .iter()
            .map(|r| (r.namespace().unwrap_or_default(), r.name_any()))
            .collect();
        for gone in known.iter().filter(|k| !live.contains(k)) {
            ctx.metrics.forget_rollout(&gone.0, &gone.1);
        }
        known = live;
    }
}
