//! The thin async layer: reflector stores feed the planner, and the plan is
//! carried out with server-side apply, narrow patches and status writes.

mod apply;
pub mod client;
pub mod events;
pub mod http;
pub mod index;
pub mod metrics;
mod recent;
mod rollouts;
mod routes;
mod runs;
pub mod shard;
mod triggers;
mod waiting;
mod workloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt, future};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{
    AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate, POD_TEMPLATE_HASH_LABEL, Rollout,
};
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying ReplicaSet {namespace}/{name}: {source}")]
    ApplyReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading ReplicaSet {namespace}/{name} for its pod template: {source}")]
    ReadReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("listing the workloadRef Deployment's ReplicaSets in {namespace}: {source}")]
    ListReplicaSets {
        namespace: String,
        source: kube::Error,
    },
    #[error("pausing Deployment {namespace}/{name} to take its ReplicaSet over: {source}")]
    PauseDeployment {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("taking ReplicaSet {namespace}/{name} over from its Deployment: {source}")]
    TakeReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("ReplicaSet {namespace}/{name} has no pod template even as read from the API server")]
    NoTemplate { namespace: String, name: String },
    #[error("deleting ReplicaSet {namespace}/{name}: {source}")]
    DeleteReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("pointing Service {namespace}/{name} at hash {hash}: {source}")]
    PatchService {
        namespace: String,
        name: String,
        hash: String,
        source: kube::Error,
    },
    #[error(
        "scaling Deployment {namespace}/{name} to {replicas} (workloadRef.scaleDown): {source}"
    )]
    ScaleDeployment {
        namespace: String,
        name: String,
        replicas: i32,
        source: kube::Error,
    },
    #[error("creating AnalysisRun {namespace}/{name}: {source}")]
    CreateAnalysisRun {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("terminating AnalysisRun {namespace}/{name}: {source}")]
    TerminateAnalysisRun {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting AnalysisRun {namespace}/{name}: {source}")]
    DeleteAnalysisRun {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("listing pods of a restarting rollout in {namespace}: {source}")]
    ListPods {
        namespace: String,
        source: kube::Error,
    },
    #[error("labelling pod {namespace}/{name}: {source}")]
    PatchPod {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("evicting pod {namespace}/{name}: {source}")]
    EvictPod {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing status of {kind} {namespace}/{name}: {source}")]
    WriteStatus {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "{kind} {namespace}/{name} changed while being reconciled; retrying with the new version"
    )]
    Conflict {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{kind} {name} has no namespace")]
    MissingNamespace { kind: &'static str, name: String },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        source: serde_json::Error,
    },
    #[error("patching {route}: {source}")]
    PatchRoute { route: String, source: kube::Error },
    #[error("{action} the traffic-routing finalizer of Rollout {namespace}/{name}: {source}")]
    PatchFinalizer {
        action: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("leader election: {0}")]
    LeaderElection(#[from] kube_lease_manager::LeaseManagerError),
    #[error("serving metrics and health on {address}: {source}")]
    Serve {
        address: String,
        source: std::io::Error,
    },
    #[error("building the HTTP client for metric providers: {0}")]
    HttpClient(String),
}

impl Error {
    /// Bounded label for the reconcile error metric.
    pub fn category(&self) -> &'static str {
        match self {
            Error::ApplyReplicaSet { .. }
            | Error::DeleteReplicaSet { .. }
            | Error::ReadReplicaSet { .. }
            | Error::NoTemplate { .. }
            | Error::ListReplicaSets { .. }
            | Error::TakeReplicaSet { .. } => "replicaset",
            Error::PauseDeployment { .. } => "deployment",
            Error::PatchService { .. } => "service",
            Error::ScaleDeployment { .. } => "deployment",
            Error::PatchRoute { .. } => "route",
            Error::PatchFinalizer { .. } => "finalizer",
            Error::ListPods { .. } | Error::EvictPod { .. } | Error::PatchPod { .. } => "pod",
            Error::CreateAnalysisRun { .. }
            | Error::TerminateAnalysisRun { .. }
            | Error::DeleteAnalysisRun { .. } => "analysisrun",
            Error::WriteStatus { .. } => "status",
            Error::Conflict { .. } => "conflict",
            Error::MissingNamespace { .. } | Error::Serialize { .. } => "invalid_object",
            Error::LeaderElection(_) | Error::Serve { .. } | Error::HttpClient(_) => "runtime",
        }
    }
}

/// Is this a 409 from the API server (stale resourceVersion)?
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only this namespace; None watches all.
    pub namespace: Option<String>,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub http_address: String,
    /// Rollouts reconciled at once.
    pub concurrency: u16,
    /// How often to look for route CRDs installed after startup.
    pub route_discovery_interval: Duration,
    /// Which metric addresses and Secrets analysis may reach.
    pub analysis_policy: crate::analysis::policy::AnalysisPolicy,
    /// The Rollouts this process reconciles.
    pub shard: shard::Shard,
}

/// Shared by both reconcilers.
pub struct Context {
    pub client: Client,
    /// Publishes Events off the reconcile path.
    pub events: events::EventSink,
    pub metrics: Arc<Metrics>,
    pub rollouts: Store<Rollout>,
    pub replica_sets: Store<ReplicaSet>,
    pub services: Store<Service>,
    pub analysis_runs: Store<AnalysisRun>,
    pub templates: Store<AnalysisTemplate>,
    pub cluster_templates: Store<ClusterAnalysisTemplate>,
    /// Gateway API and Istio objects that traffic routers read.
    pub routes: routes::RouteCaches,
    /// The workloads `workloadRef` names, cached from first use.
    pub workloads: workloads::WorkloadCaches,
    /// Which Rollouts name each Service and template.
    pub references: index::ReferenceIndex,
    /// ReplicaSets and AnalysisRuns by the uid of the Rollout that controls them.
    pub owned_replica_sets: Arc<index::OwnerIndex<ReplicaSet>>,
    pub owned_runs: Arc<index::OwnerIndex<AnalysisRun>>,
    /// What this controller last wrote, until the caches show it.
    pub recent_rollouts: recent::Recent<Rollout>,
    /// When each Rollout's latest unplanned change arrived from the watch.
    pub rollouts_waiting: Arc<waiting::Waiting<Rollout>>,
    pub recent_replica_sets: Arc<recent::Recent<ReplicaSet>>,
    pub recent_services: Arc<recent::Recent<Service>>,
    pub recent_runs: Arc<recent::Recent<AnalysisRun>>,
    /// Consecutive status-write conflicts per Rollout, for backoff.
    pub conflicts: std::sync::Mutex<std::collections::HashMap<ObjectRef<Rollout>, u32>>,
    pub http: reqwest::Client,
    pub insecure_http: reqwest::Client,
    pub analysis_policy: crate::analysis::policy::AnalysisPolicy,
    /// True once every cache has synced. Planning from a half-filled cache
    /// would see "no ReplicaSets" and start over, so reconciles wait for it.
    pub synced: Arc<AtomicBool>,
    /// Sends notifications of transitions to the Rollouts' subscribers.
    pub notifier: crate::notify::deliver::Dispatcher,
    /// Calls the Rollouts' webhooks and keeps the answers for the planner.
    pub webhooks: crate::notify::hooks::WebhookRunner,
}

impl Context {
    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// This shard's watch of a kind it splits with the other shards (Rollouts
/// and what they control), trimmed as it arrives.
fn shard_watch<K>(
    client: &Client,
    settings: &Settings,
    config: watcher::Config,
    trim: fn(&mut K),
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    settings
        .shard
        .filter(watcher(scoped::<K>(client, &settings.namespace), config).modify(trim))
}

/// Drops what the controller never reads, so the caches stay small.
fn trim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// A poisoned lock only means another reconcile panicked mid-update; the
/// maps behind these locks stay usable, so carry on with them.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// ReplicaSets drained to 0 are cached without their pod template (a
/// fingerprint stays): a Rollout keeps up to `revisionHistoryLimit` of them,
/// and the template is most of each. Plans that must write one read it first.
fn trim_replica_set(rs: &mut ReplicaSet) {
    trim(rs);
    crate::planner::hash::drop_drained_template(rs);
}

/// Services are cached (and remembered after our writes) with only their
/// selector: the planner reads nothing else.
fn trim_service(svc: &mut Service) {
    trim(svc);
    if let Some(spec) = svc.spec.as_mut() {
        let selector = spec.selector.take();
        *spec = Default::default();
        spec.selector = selector;
    }
    svc.status = None;
}

/// Events go through their own client, with a rate limit of their own: a
/// burst of Events (several per transition, across a thousand Rollouts) must
/// not queue ahead of the writes that move the rollouts.
pub struct Clients {
    pub api: Client,
    pub events: Client,
}

/// Runs the controller until SIGTERM/SIGINT, or until leadership is lost.
pub async fn run(clients: Clients, settings: Settings, metrics: Arc<Metrics>) -> Result<(), Error> {
    let Clients {
        api: client,
        events: events_client,
    } = clients;
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested; finishing in-flight reconciles");
        let _ = shutdown_tx.send(true);
    });
    // A standby replica is healthy and ready; it only waits for the lease.
    let standby = Arc::new(AtomicBool::new(settings.leader_election));
    let server = http::serve(
        &settings.http_address,
        metrics.clone(),
        ready.clone(),
        standby.clone(),
    )
    .await?;
    tokio::spawn(server);

    let lease = if settings.leader_election {
        match acquire_leadership(&client, &settings, shutdown_rx.clone()).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        }
    } else {
        None
    };
    metrics.set_leader(true);
    standby.store(false, Ordering::SeqCst);
    let lost = lease.as_ref().map(|(rx, _)| rx.clone());
    let stop = {
        let mut shutdown = shutdown_rx.clone();
        async move {
            let lost_leadership = async {
                match lost {
                    Some(mut rx) => {
                        let _ = rx.wait_for(|leading| !*leading).await;
                        warn!("lost the leader lease; stopping so another replica can take over");
                    }
                    None => future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {}
                _ = lost_leadership => {}
            }
        }
    };
    let stop = stop.shared();

    start_controllers(
        client,
        events_client,
        &settings,
        metrics.clone(),
        ready,
        stop,
    )
    .await?;
    metrics.set_leader(false);

    if let Some((rx, task)) = lease {
        drop(rx);
        if let Ok(Ok(manager)) = task.await
            && let Err(error) = manager.release().await
        {
            warn!(%error, "releasing the leader lease failed; it will expire on its own");
        }
        info!("released the leader lease");
    }
    Ok(())
}

type LeaseTask = tokio::task::JoinHandle<
    Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
>;

async fn acquire_leadership(
    client: &Client,
    settings: &Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<(watch::Receiver<bool>, LeaseTask)>, Error> {
    let seconds = settings.lease_duration.as_secs().max(2);
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.lease_namespace)
            .with_identity(&settings.identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .build()
            .await?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %settings.lease_name, identity = %settings.identity, "waiting to become leader");
    tokio::select! {
        result = leading.wait_for(|l| *l) => {
            if result.is_err() {
                return Ok(None);
            }
        }
        _ = shutdown.wait_for(|s| *s) => return Ok(None),
    }
    info!(identity = %settings.identity, "became leader");
    Ok(Some((leading, task)))
}

async fn start_controllers(
    client: Client,
    events_client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> Result<(), Error> {
    let namespace = &settings.namespace;
    let (replica_sets, rs_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (analysis_runs, run_writer) = reflector::store();
    let (templates, template_writer) = reflector::store();
    let (cluster_templates, cluster_template_writer) = reflector::store();

    // The Rollout controller keeps its own cache of Rollouts; the others are shared with the planner.
    let (rollouts, rollout_writer) = reflector::store();
    let rollouts_waiting = Arc::new(waiting::Waiting::default());
    let rollout_stream = triggers::settled_applied(
        reflector::reflector(
            rollout_writer,
            shard_watch(
                &client,
                settings,
                watcher::Config::default(),
                trim::<Rollout>,
            )
            .inspect_ok({
                let waiting = rollouts_waiting.clone();
                move |event| waiting.observe(event)
            }),
        )
        .default_backoff(),
    );
    let rollout_controller = rollouts::build(
        rollout_stream.boxed(),
        rollouts.clone(),
        settings.concurrency,
    );
    let owned_replica_sets = Arc::new(index::OwnerIndex::<ReplicaSet>::default());
    let owned_runs = Arc::new(index::OwnerIndex::<AnalysisRun>::default());
    let recent_replica_sets = Arc::new(recent::Recent::new(replica_sets.clone(), trim_replica_set));
    let recent_services = Arc::new(recent::Recent::new(services.clone(), trim_service));
    let recent_runs = Arc::new(recent::Recent::new(analysis_runs.clone(), trim));
    // Only ReplicaSets carrying the hash label can belong to a Rollout.
    let rs_stream = triggers::settled_objects(
        reflector::reflector(
            rs_writer,
            shard_watch(
                &client,
                settings,
                watcher::Config::default().labels(POD_TEMPLATE_HASH_LABEL),
                trim_replica_set,
            )
            .inspect_ok({
                let (index, recent) = (owned_replica_sets.clone(), recent_replica_sets.clone());
                move |event| {
                    index.observe(event);
                    recent.observe(event);
                }
            }),
        )
        .default_backoff(),
    );
    let service_stream = triggers::settled_objects(
        reflector::reflector(
            service_writer,
            watcher(
                scoped::<Service>(&client, namespace),
                watcher::Config::default(),
            )
            .modify(trim_service)
            .inspect_ok({
                let recent = recent_services.clone();
                move |event| recent.observe(event)
            }),
        )
        .default_backoff(),
    );
    // One cache and one watch of AnalysisRuns serve both controllers.
    let (run_events, run_controller_events) = triggers::fan_out(
        reflector::reflector(
            run_writer,
            shard_watch(
                &client,
                settings,
                watcher::Config::default(),
                trim::<AnalysisRun>,
            )
            .inspect_ok({
                let (index, recent) = (owned_runs.clone(), recent_runs.clone());
                move |event| {
                    index.observe(event);
                    recent.observe(event);
                }
            }),
        )
        .default_backoff(),
        stop.clone(),
    );
    let run_stream = triggers::settled_objects(run_events);
    let template_stream = triggers::settled_objects(
        reflector::reflector(
            template_writer,
            watcher(
                scoped::<AnalysisTemplate>(&client, namespace),
                watcher::Config::default(),
            )
            .modify(trim),
        )
        .default_backoff(),
    );
    let cluster_template_stream = triggers::settled_objects(
        reflector::reflector(
            cluster_template_writer,
            watcher(
                Api::<ClusterAnalysisTemplate>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(trim),
        )
        .default_backoff(),
    );

    let (route_caches, route_streams) = routes::RouteCaches::start(&client, namespace).await;
    info!(kinds = ?route_caches.served(), "route kinds served");
    let (workload_caches, workload_streams) = workloads::WorkloadCaches::new(&client, namespace);
    let events = events::EventSink::start(
        events_client,
        events::Reporter {
            controller: crate::api::FIELD_MANAGER.into(),
            instance: settings.identity.clone(),
        },
        metrics.clone(),
    );
    // With an allow-list, a redirect could lead an allowed address to any
    // other host, so redirects are not followed then.
    let redirects = || match settings.analysis_policy.allowed_addresses {
        Some(_) => reqwest::redirect::Policy::none(),
        None => reqwest::redirect::Policy::default(),
    };
    let http = reqwest::Client::builder()
        .redirect(redirects())
        .build()
        .map_err(|e| Error::HttpClient(e.to_string()))?;
    let insecure_http = reqwest::Client::builder()
        .redirect(redirects())
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| Error::HttpClient(e.to_string()))?;
    let metrics_for_notifications = metrics.clone();
    // Notification receivers are whatever the ConfigMap names; no redirects.
    let notification_http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::HttpClient(e.to_string()))?;
    // Webhooks go where the Rollout says, within the same allow-list as
    // metric providers; no redirects, like notifications.
    let (webhooks, webhook_answers) = {
        let counted = metrics.clone();
        let webhook_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        crate::notify::hooks::WebhookRunner::start(
            webhook_http,
            settings.analysis_policy.allowed_addresses.clone(),
            Arc::new(move |hook_type, outcome| counted.webhook(hook_type, outcome)),
        )
    };
    let context = Arc::new(Context {
        client: client.clone(),
        events,
        metrics,
        rollouts: rollouts.clone(),
        replica_sets: replica_sets.clone(),
        services: services.clone(),
        analysis_runs: analysis_runs.clone(),
        templates: templates.clone(),
        cluster_templates: cluster_templates.clone(),
        routes: route_caches,
        workloads: workload_caches,
        references: index::ReferenceIndex::default(),
        owned_replica_sets,
        owned_runs,
        recent_rollouts: recent::Recent::new(rollouts.clone(), trim),
        rollouts_waiting,
        recent_replica_sets,
        recent_services,
        recent_runs,
        conflicts: Default::default(),
        http,
        insecure_http,
        analysis_policy: settings.analysis_policy.clone(),
        synced: ready.clone(),
        notifier: {
            let counted = metrics_for_notifications.clone();
            crate::notify::deliver::Dispatcher::start(
                client.clone(),
                notification_http,
                Arc::new(move |kind, outcome| counted.notified(kind, outcome)),
            )
        },
        webhooks,
    });

    let readiness = {
        let routes_context = context.clone();
        let (r, rs, svc, runs, t, ct) = (
            rollouts.clone(),
            replica_sets.clone(),
            services.clone(),
            analysis_runs.clone(),
            templates.clone(),
            cluster_templates.clone(),
        );
        async move {
            // Poll rather than await each store's readiness future: a waiter
            // registered while the store initialises was seen to miss its wake-up.
            loop {
                let pending: Vec<&str> = [
                    ("Rollout", is_ready(&r)),
                    ("ReplicaSet", is_ready(&rs)),
                    ("Service", is_ready(&svc)),
                    ("AnalysisRun", is_ready(&runs)),
                    ("AnalysisTemplate", is_ready(&t)),
                    ("ClusterAnalysisTemplate", is_ready(&ct)),
                    ("routes", routes_context.routes.ready()),
                ]
                .into_iter()
                .filter(|(_, ready)| !ready)
                .map(|(name, _)| name)
                .collect();
                if pending.is_empty() {
                    break;
                }
                debug!(?pending, "waiting for caches");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ready.store(true, Ordering::SeqCst);
            info!("caches synced; ready");
        }
    };
    tokio::spawn(readiness);
    // Route CRDs installed after startup (Istio or Gateway API added to a
    // running cluster) get their caches without a restart.
    {
        let context = context.clone();
        let interval = settings.route_discovery_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                context.routes.discover_missing().await;
            }
        });
    }

    let rollout_controller = rollouts::run(
        rollout_controller,
        context.clone(),
        rollouts::Triggers {
            replica_sets: rs_stream.boxed(),
            services: service_stream.boxed(),
            runs: run_stream.boxed(),
            templates: template_stream.boxed(),
            cluster_templates: cluster_template_stream.boxed(),
            routes: route_streams,
            workloads: workload_streams,
            webhook_answers,
        },
        stop.clone(),
    );
    let run_controller = runs::controller(
        context.clone(),
        triggers::settled_applied(run_controller_events).boxed(),
        stop.clone(),
    );
    tokio::join!(rollout_controller, run_controller);
    // The last reconciles' transitions are announced before the process
    // goes, within a bound a pod's termination grace period allows.
    if !context.events.flush(EVENT_FLUSH_DEADLINE).await {
        warn!("some Events were still queued at shutdown and are lost");
    }
    Ok(())
}

const EVENT_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Reconciler failures are logged by the error policy; anything else the
/// controller stream reports (watch errors, queue errors) is logged here.
async fn log_stream_error<T, E: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<Error, E>>,
    controller: &'static str,
) {
    if let Err(error) = result
        && !matches!(
            error,
            kube::runtime::controller::Error::ReconcilerFailed(..)
        )
    {
        warn!(%error, controller, "controller stream error");
    }
}

fn is_ready<K: Resource + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
