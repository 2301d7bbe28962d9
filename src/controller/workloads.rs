//! Caches of the workloads `workloadRef` names (Deployments, ReplicaSets,
//! PodTemplates), and the one write Ramp makes to them: a Deployment's
//! `spec.replicas` under `scaleDown`.
//!
//! A cache starts the first time a Rollout names its kind, so a cluster
//! where no Rollout uses `workloadRef` pays nothing for it, in memory or
//! in watches.

use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplate;
use kube::api::{Api, Patch};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use super::index::Reference;
use super::{Context, Error, recent::Recent, scoped, trim};
use crate::api::{Rollout, WorkloadKind};
use crate::planner::workload::{Workload, WorkloadScale};

/// A workload object that changed, for triggering the Rollouts naming it.
pub type WorkloadEvents =
    BoxStream<'static, Result<(WorkloadKind, String, String), watcher::Error>>;

/// What a Rollout's reference finds in the caches.
pub enum Lookup {
    /// The kind's cache is still filling; plan once it holds everything.
    NotSynced,
    Missing,
    Found(Box<Workload>),
}

/// One kind's cache: the store exists from the start (so a `Recent` can
/// sit on it); its watch starts on first use.
struct Lazy<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
}

impl<K> Lazy<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        let (store, writer) = reflector::store();
        Lazy {
            store,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Starts the watch if it has not started; true once the cache holds
    /// everything.
    fn ensure_started(
        &self,
        caches: &WorkloadCaches,
        kind: WorkloadKind,
        strip: fn(&mut K),
    ) -> bool {
        let Some(writer) = super::lock(&self.writer).take() else {
            return super::is_ready(&self.store);
        };
        let api: Api<K> = scoped(&caches.client, &caches.namespace);
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).modify(strip),
        )
        .default_backoff();
        let stream = super::triggers::settled_objects(events)
            .map_ok(move |object: K| {
                (
                    kind,
                    object.meta().namespace.clone().unwrap_or_default(),
                    object.meta().name.clone().unwrap_or_default(),
                )
            })
            .boxed();
        // The receiver lives as long as the controller; a send only fails
        // while it shuts down.
        let _ = caches.new_streams.unbounded_send(stream);
        info!(
            kind = kind.kind(),
            "a Rollout references this kind; workload cache started"
        );
        false
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }
}

pub struct WorkloadCaches {
    client: Client,
    namespace: Option<String>,
    deployments: Lazy<Deployment>,
    replica_sets: Lazy<ReplicaSet>,
    pod_templates: Lazy<PodTemplate>,
    /// Our own writes of Deployment replica counts, until the cache shows them.
    recent_deployments: Recent<Deployment>,
    new_streams: mpsc::UnboundedSender<WorkloadEvents>,
}

impl WorkloadCaches {
    pub fn new(client: &Client, namespace: &Option<String>) -> (Self, WorkloadEvents) {
        let (sender, receiver) = mpsc::unbounded();
        let deployments = Lazy::new();
        let recent_deployments = Recent::new(deployments.store.clone(), trim_deployment);
        let caches = WorkloadCaches {
            client: client.clone(),
            namespace: namespace.clone(),
            deployments,
            replica_sets: Lazy::new(),
            pod_templates: Lazy::new(),
            recent_deployments,
            new_streams: sender,
        };
        (caches, receiver.flatten_unordered(None).boxed())
    }

    /// The workload `kind`/`name` in `namespace`, starting its kind's
    /// cache if this is the first time a Rollout names it.
    pub fn lookup(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Lookup {
        let found = match kind {
            WorkloadKind::Deployment => {
                if !self.deployments.ensure_started(self, kind, trim_deployment) {
                    return Lookup::NotSynced;
                }
                self.deployments
                    .get(namespace, name)
                    .map(|d| Workload::from_deployment(&self.recent_deployments.freshest(d)))
            }
            WorkloadKind::ReplicaSet => {
                if !self
                    .replica_sets
                    .ensure_started(self, kind, trim_replica_set)
                {
                    return Lookup::NotSynced;
                }
                self.replica_sets
                    .get(namespace, name)
                    .map(|rs| Workload::from_replica_set(&rs))
            }
            WorkloadKind::PodTemplate => {
                if !self.pod_templates.ensure_started(self, kind, trim) {
                    return Lookup::NotSynced;
                }
                self.pod_templates
                    .get(namespace, name)
                    .map(|t| Workload::from_pod_template(&t))
            }
        };
        match found {
            Some(workload) => Lookup::Found(Box::new(workload)),
            None => Lookup::Missing,
        }
    }
}

/// Only the template, selector, replica count, pause and the generation
/// its controller has seen are read of a Deployment.
fn trim_deployment(deployment: &mut Deployment) {
    trim(deployment);
    deployment.metadata.labels = None;
    deployment.metadata.annotations = None;
    let observed = deployment
        .status
        .as_ref()
        .and_then(|s| s.observed_generation);
    deployment.status =
        observed.map(
            |observed_generation| k8s_openapi::api::apps::v1::DeploymentStatus {
                observed_generation: Some(observed_generation),
                ..Default::default()
            },
        );
}

fn trim_replica_set(replica_set: &mut ReplicaSet) {
    trim(replica_set);
    replica_set.metadata.labels = None;
    replica_set.metadata.annotations = None;
    replica_set.status = None;
}

/// The Rollouts to reconcile when a workload changes.
pub fn triggers(
    ctx: Arc<Context>,
    events: WorkloadEvents,
) -> impl futures::Stream<Item = ObjectRef<Rollout>> + Send + 'static {
    events
        .filter_map(|event| async move { event.ok() })
        .flat_map(move |(kind, namespace, name)| {
            futures::stream::iter(ctx.references.rollouts_naming(&Reference::Workload {
                kind,
                namespace,
                name,
            }))
        })
}

/// Sets the referenced Deployment's `spec.replicas`, and nothing else of it.
pub async fn scale(ctx: &Context, namespace: &str, change: &WorkloadScale) -> Result<(), Error> {
    let body = serde_json::json!({"spec": {"replicas": change.replicas}});
    patch_deployment(ctx, namespace, &change.name, &body)
        .await
        .map_err(|source| Error::ScaleDeployment {
            namespace: namespace.into(),
            name: change.name.clone(),
            replicas: change.replicas,
            source,
        })
}

/// Pauses the referenced Deployment (`spec.paused` only), so that it
/// creates no ReplicaSet when the Rollout takes its own over.
pub async fn pause(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let body = serde_json::json!({"spec": {"paused": true}});
    patch_deployment(ctx, namespace, name, &body)
        .await
        .map_err(|source| Error::PauseDeployment {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

/// Merge-patches the fields in `body` of a Deployment we do not own, and
/// remembers the result until the cache shows it.
async fn patch_deployment(
    ctx: &Context,
    namespace: &str,
    name: &str,
    body: &serde_json::Value,
) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let result = api
        .patch(name, &super::apply::patch_params(), &Patch::Merge(body))
        .await;
    ctx.metrics.request("patch", "Deployment", &result);
    ctx.workloads.recent_deployments.remember(result?);
    Ok(())
}

/// The name a Rollout's reference is filed under, for the trigger index.
pub fn reference(rollout: &Rollout) -> Option<Reference> {
    let reference = rollout.spec.workload_ref.as_ref()?;
    Some(Reference::Workload {
        kind: reference.workload_kind()?,
        namespace: rollout.namespace().unwrap_or_default(),
        name: reference.name.clone(),
    })
}
