//! Caches of the route objects traffic routers read (Gateway API routes,
//! Istio VirtualServices and DestinationRules), one reflector per kind whose
//! CRD the API server serves, and the narrow JSON patches the planner asks for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info};

use super::index::Reference;
use super::{Context, Error, lock, trim};
use crate::api::Rollout;
use crate::planner::traffic::{LiveRoutes, RouteKind, RoutePatch, RouteRef};

/// The route caches, and what this controller last wrote to each route
/// until the cache shows it.
pub struct RouteCaches {
    client: Client,
    namespace: Option<String>,
    stores: RwLock<BTreeMap<RouteKind, (ApiResource, Store<DynamicObject>)>>,
    recent: Mutex<HashMap<RouteRef, Arc<DynamicObject>>>,
    /// Where the event stream of each newly started cache goes.
    new_streams: mpsc::UnboundedSender<RouteEvents>,
}

/// The route objects that changed, for triggering the Rollouts naming them.
pub type RouteEvents = BoxStream<'static, Result<(RouteKind, DynamicObject), watcher::Error>>;

impl RouteCaches {
    /// Finds which route kinds the API server serves and starts a cache for
    /// each. A kind whose CRD is missing is skipped for now: Rollouts naming
    /// one are told the route is not found until [`Self::discover_missing`]
    /// finds the CRD installed.
    pub async fn start(client: &Client, namespace: &Option<String>) -> (Self, RouteEvents) {
        let (sender, receiver) = mpsc::unbounded();
        let caches = RouteCaches {
            client: client.clone(),
            namespace: namespace.clone(),
            stores: RwLock::default(),
            recent: Mutex::default(),
            new_streams: sender,
        };
        caches.discover_missing().await;
        (caches, receiver.flatten_unordered(None).boxed())
    }

    /// Starts a cache for every route kind the API server serves that has
    /// none yet.
    pub async fn discover_missing(&self) {
        let missing: Vec<RouteKind> = {
            let stores = read(&self.stores);
            RouteKind::ALL
                .into_iter()
                .filter(|kind| !stores.contains_key(kind))
                .collect()
        };
        for kind in missing {
            let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), kind.kind());
            let Ok((resource, _)) = kube::discovery::pinned_kind(&self.client, &gvk).await else {
                debug!(
                    kind = kind.kind(),
                    "CRD not served; Rollouts cannot route through this kind"
                );
                continue;
            };
            // Gateways and GatewayClasses sit outside the Rollouts'
            // namespace, so they are read cluster-wide even by a namespaced
            // controller; where RBAC forbids it the cache stays empty and the
            // checks that use them do not apply.
            let api: Api<DynamicObject> = match &self.namespace {
                Some(namespace) if !kind.informational() => {
                    Api::namespaced_with(self.client.clone(), namespace, &resource)
                }
                _ => Api::all_with(self.client.clone(), &resource),
            };
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).modify(trim),
            )
            .default_backoff();
            let stream = super::triggers::settled_objects(events)
                .map_ok(move |object| (kind, object))
                .boxed();
            // The receiver lives as long as the controller; a send can only
            // fail while it shuts down.
            if self.new_streams.unbounded_send(stream).is_err() {
                return;
            }
            info!(kind = kind.kind(), "route kind served; cache started");
            write(&self.stores).insert(kind, (resource, store));
        }
    }

    pub fn ready(&self) -> bool {
        read(&self.stores)
            .iter()
            .filter(|(kind, _)| !kind.informational())
            .all(|(_, (_, store))| super::is_ready(store))
    }

    pub fn served(&self) -> Vec<RouteKind> {
        read(&self.stores).keys().copied().collect()
    }

    /// The freshest copy of a route: our own last write while the cache
    /// still holds an older generation, else the cached one. A route gone
    /// from the cache was deleted (we only patch routes that exist), so our
    /// copy goes too rather than hide the deletion.
    pub fn get(&self, reference: &RouteRef) -> Option<Arc<DynamicObject>> {
        let (resource, store) = read(&self.stores).get(&reference.kind)?.clone();
        let mut key = ObjectRef::new_with(&reference.name, resource.clone());
        // Cluster-scoped objects (GatewayClasses) have no namespace.
        if !reference.namespace.is_empty() {
            key = key.within(&reference.namespace);
        }
        let cached = store.get(&key);
        let mut recent = lock(&self.recent);
        match (recent.get(reference), cached) {
            (Some(ours), Some(cached)) if ours.metadata.generation > cached.metadata.generation => {
                Some(ours.clone())
            }
            (_, cached) => {
                recent.remove(reference);
                cached
            }
        }
    }

    fn remember(&self, reference: &RouteRef, mut object: DynamicObject) {
        trim(&mut object);
        lock(&self.recent).insert(reference.clone(), Arc::new(object));
    }

    fn resource(&self, kind: RouteKind) -> Option<ApiResource> {
        read(&self.stores)
            .get(&kind)
            .map(|(resource, _)| resource.clone())
    }
}

/// The live routes a Rollout names, for its snapshot, with the Gateways
/// they attach to and those Gateways' classes where they are cached.
pub fn live_routes(ctx: &Context, rollout: &Rollout) -> Vec<(RouteRef, Arc<DynamicObject>)> {
    let mut found: Vec<(RouteRef, Arc<DynamicObject>)> =
        crate::planner::traffic::referenced_routes(rollout)
            .into_iter()
            .filter_map(|reference| {
                let object = ctx.routes.get(&reference)?;
                Some((reference, object))
            })
            .collect();
    let gateways: Vec<RouteRef> = found
        .iter()
        .flat_map(|(reference, object)| crate::planner::traffic::parent_gateways(reference, object))
        .collect();
    for gateway in gateways {
        if found.iter().any(|(r, _)| *r == gateway) {
            continue;
        }
        let Some(object) = ctx.routes.get(&gateway) else {
            continue;
        };
        let class = crate::planner::traffic::gateway_class(&object)
            .and_then(|class| Some((class.clone(), ctx.routes.get(&class)?)));
        found.push((gateway, object));
        if let Some(class) = class
            && !found.iter().any(|(r, _)| *r == class.0)
        {
            found.push(class);
        }
    }
    found
}

pub fn as_live<'a>(routes: &'a [(RouteRef, Arc<DynamicObject>)]) -> LiveRoutes<'a> {
    routes
        .iter()
        .map(|(reference, object)| (reference.clone(), object.as_ref()))
        .collect()
}

/// The Rollouts to reconcile when a route changes.
pub fn triggers(
    ctx: Arc<Context>,
    events: RouteEvents,
) -> impl Stream<Item = ObjectRef<Rollout>> + Send + 'static {
    events
        .filter_map(|event| async move { event.ok() })
        .flat_map(move |(kind, object)| {
            let reference = Reference::Route {
                kind,
                namespace: object.namespace().unwrap_or_default(),
                name: object.name_any(),
            };
            futures::stream::iter(ctx.references.rollouts_naming(&reference))
        })
}

/// Applies the planner's route patches. A failed `test` (someone edited the
/// route since the cache saw it) is a 422; the route's watch event brings
/// the new version and plans again.
pub async fn execute(ctx: &Context, patches: &[RoutePatch]) -> Result<(), Error> {
    for change in patches {
        let target = &change.target;
        let Some(resource) = ctx.routes.resource(target.kind) else {
            continue;
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &target.namespace, &resource);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(
            change.operations.clone(),
        ))
        .map_err(|source| Error::Serialize {
            what: format!("patch for {target}"),
            source,
        })?;
        let result = api
            .patch(
                &target.name,
                &super::apply::patch_params(),
                &Patch::Json::<()>(patch),
            )
            .await;
        ctx.metrics.request("patch", target.kind.kind(), &result);
        let patched = result.map_err(|source| Error::PatchRoute {
            route: target.to_string(),
            source,
        })?;
        ctx.routes.remember(target, patched);
    }
    Ok(())
}

/// The lock's data even if a panic elsewhere poisoned it: the map stays
/// consistent because every write is a single insert.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
