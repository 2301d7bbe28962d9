//! Secondary indexes over the caches, so a reconcile or a watch event finds
//! the objects it needs by key instead of scanning every cached object:
//! which Rollouts name a Service or an AnalysisTemplate, and which cached
//! objects (ReplicaSets, AnalysisRuns) a Rollout controls.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::Rollout;
use crate::planner::{self, referenced_services};

/// Something a Rollout names by reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Service {
        namespace: String,
        name: String,
    },
    Template {
        namespace: String,
        name: String,
    },
    ClusterTemplate {
        name: String,
    },
    Route {
        kind: crate::planner::traffic::RouteKind,
        namespace: String,
        name: String,
    },
    Workload {
        kind: crate::api::WorkloadKind,
        namespace: String,
        name: String,
    },
}

/// Every Service and template the Rollout names.
pub fn references(rollout: &Rollout) -> HashSet<Reference> {
    let namespace = rollout.namespace().unwrap_or_default();
    let mut found: HashSet<Reference> = referenced_services(rollout)
        .into_iter()
        .map(|(_, name)| Reference::Service {
            namespace: namespace.clone(),
            name,
        })
        .collect();
    for route in planner::traffic::referenced_routes(rollout) {
        found.insert(Reference::Route {
            kind: route.kind,
            namespace: route.namespace,
            name: route.name,
        });
    }
    found.extend(super::workloads::reference(rollout));
    for (_, analysis, _) in planner::analysis::declared_analyses(rollout) {
        for template in &analysis.templates {
            found.insert(if template.cluster_scope.unwrap_or(false) {
                Reference::ClusterTemplate {
                    name: template.template_name.clone(),
                }
            } else {
                Reference::Template {
                    namespace: namespace.clone(),
                    name: template.template_name.clone(),
                }
            });
        }
    }
    found
}

/// A many-to-many index kept in both directions, so an entry can be
/// replaced or dropped without a scan.
#[derive(Debug)]
struct Multimap<K, V> {
    forward: HashMap<K, HashSet<V>>,
    backward: HashMap<V, HashSet<K>>,
}

impl<K, V> Default for Multimap<K, V> {
    fn default() -> Self {
        Multimap {
            forward: HashMap::new(),
            backward: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash, V: Clone + Eq + Hash> Multimap<K, V> {
    /// Makes `keys` the complete set of keys `value` is filed under.
    fn set(&mut self, value: &V, keys: HashSet<K>) {
        self.remove(value);
        for key in &keys {
            self.forward
                .entry(key.clone())
                .or_default()
                .insert(value.clone());
        }
        if !keys.is_empty() {
            self.backward.insert(value.clone(), keys);
        }
    }

    fn remove(&mut self, value: &V) {
        for key in self.backward.remove(value).unwrap_or_default() {
            if let Some(values) = self.forward.get_mut(&key) {
                values.remove(value);
                if values.is_empty() {
                    self.forward.remove(&key);
                }
            }
        }
    }

    fn get(&self, key: &K) -> Vec<V> {
        self.forward
            .get(key)
            .map(|values| values.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn values(&self) -> Vec<V> {
        self.backward.keys().cloned().collect()
    }
}

/// Which Rollouts name each Service and template. The reconciler records a
/// Rollout's references before it reads the template and Service caches, so
/// an object that arrives later finds the Rollout here, and one that arrived
/// earlier is already in the cache the reconcile reads.
#[derive(Debug, Default)]
pub struct ReferenceIndex {
    map: RwLock<Multimap<Reference, ObjectRef<Rollout>>>,
}

impl ReferenceIndex {
    pub fn record(&self, rollout: &Rollout) {
        let key = ObjectRef::from_obj(rollout);
        let refs = references(rollout);
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set(&key, refs);
    }

    pub fn forget(&self, rollout: &ObjectRef<Rollout>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(rollout);
    }

    pub fn rollouts_naming(&self, reference: &Reference) -> Vec<ObjectRef<Rollout>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(reference)
    }

    /// Drops Rollouts that no longer exist (they are never reconciled again).
    pub fn retain(&self, live: impl Fn(&ObjectRef<Rollout>) -> bool) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        for rollout in map.values() {
            if !live(&rollout) {
                map.remove(&rollout);
            }
        }
    }
}

/// Cached objects by the uid of their controlling owner, kept in step with
/// a watch stream: fed each event before the reflector stores it, so a
/// lookup names at most a moment's worth of objects the store has yet to
/// show (the caller skips those).
#[derive(Debug)]
pub struct OwnerIndex<K: Resource<DynamicType = ()>> {
    state: RwLock<OwnerState<K>>,
}

#[derive(Debug)]
struct OwnerState<K: Resource<DynamicType = ()>> {
    live: Multimap<String, ObjectRef<K>>,
    /// A relist in progress: what it has delivered so far.
    relist: Option<Multimap<String, ObjectRef<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for OwnerIndex<K> {
    fn default() -> Self {
        OwnerIndex {
            state: RwLock::new(OwnerState {
                live: Multimap::default(),
                relist: None,
            }),
        }
    }
}

/// The key an object is filed under: its controller's uid, or for an
/// object without a controller, its namespace's orphan key.
fn controller_uid<K: Resource>(object: &K) -> HashSet<String> {
    let owners: HashSet<String> = object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
        .collect();
    if owners.is_empty() {
        let namespace = object.meta().namespace.as_deref().unwrap_or_default();
        return HashSet::from([orphan_key(namespace)]);
    }
    owners
}

/// No uid contains a slash, so this never names a real owner.
fn orphan_key(namespace: &str) -> String {
    format!("orphan/{namespace}")
}

impl<K: Resource<DynamicType = ()>> OwnerIndex<K> {
    pub fn observe(&self, event: &watcher::Event<K>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(object) => {
                state
                    .live
                    .set(&ObjectRef::from_obj(object), controller_uid(object));
            }
            watcher::Event::Delete(object) => state.live.remove(&ObjectRef::from_obj(object)),
            watcher::Event::Init => state.relist = Some(Multimap::default()),
            watcher::Event::InitApply(object) => {
                if let Some(relist) = state.relist.as_mut() {
                    relist.set(&ObjectRef::from_obj(object), controller_uid(object));
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.live = relist;
                }
            }
        }
    }

    /// The objects whose controller has this uid.
    pub fn owned_by(&self, uid: &str) -> Vec<ObjectRef<K>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .get(&uid.to_string())
    }

    /// The objects in `namespace` that have no controller.
    pub fn orphans_in(&self, namespace: &str) -> Vec<ObjectRef<K>> {
        self.owned_by(&orphan_key(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AnalysisRun;
    use serde_json::json;

    fn rollout(name: &str, template: &str, cluster: bool) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "strategy": {"canary": {"stableService": format!("{name}-stable"), "steps": [
                    {"analysis": {"templates": [{"templateName": template, "clusterScope": cluster}]}}
                ]}}
            }
        }))
        .expect("fixture rollout is valid")
    }

    fn template(name: &str) -> Reference {
        Reference::Template {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn rollouts_are_found_by_the_services_and_templates_they_name() {
        let index = ReferenceIndex::default();
        index.record(&rollout("web", "errors", false));
        index.record(&rollout("api", "errors", false));
        index.record(&rollout("job", "latency", true));
        let mut naming_errors: Vec<String> = index
            .rollouts_naming(&template("errors"))
            .into_iter()
            .map(|r| r.name)
            .collect();
        naming_errors.sort();
        assert_eq!(naming_errors, ["api", "web"]);
        assert!(index.rollouts_naming(&template("latency")).is_empty());
        let cluster = Reference::ClusterTemplate {
            name: "latency".into(),
        };
        assert_eq!(index.rollouts_naming(&cluster).len(), 1);
        let service = Reference::Service {
            namespace: "shop".into(),
            name: "web-stable".into(),
        };
        assert_eq!(index.rollouts_naming(&service).len(), 1);
    }

    #[test]
    fn a_changed_or_deleted_rollout_leaves_no_stale_entries() {
        let index = ReferenceIndex::default();
        index.record(&rollout("web", "errors", false));
        index.record(&rollout("web", "latency", false));
        assert!(index.rollouts_naming(&template("errors")).is_empty());
        assert_eq!(index.rollouts_naming(&template("latency")).len(), 1);
        index.record(&rollout("api", "latency", false));
        index.retain(|r| r.name == "api");
        assert_eq!(index.rollouts_naming(&template("latency")).len(), 1);
        index.forget(&ObjectRef::new("api").within("shop"));
        assert!(index.rollouts_naming(&template("latency")).is_empty());
        assert!(index.map.read().expect("not poisoned").forward.is_empty());
    }

    fn run(name: &str, owner: &str) -> AnalysisRun {
        serde_json::from_value(json!({
            "apiVersion": "ramp.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "namespace": "shop", "ownerReferences": [
                {"apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout", "name": "web", "uid": owner, "controller": true}
            ]},
            "spec": {"metrics": []}
        }))
        .expect("fixture run is valid")
    }

    #[test]
    fn owned_objects_follow_the_watch_including_a_relist() {
        let index = OwnerIndex::<AnalysisRun>::default();
        index.observe(&watcher::Event::Apply(run("a", "uid-1")));
        index.observe(&watcher::Event::Apply(run("b", "uid-1")));
        index.observe(&watcher::Event::Apply(run("c", "uid-2")));
        assert_eq!(index.owned_by("uid-1").len(), 2);
        index.observe(&watcher::Event::Delete(run("a", "uid-1")));
        assert_eq!(index.owned_by("uid-1").len(), 1);

        // A relist replaces everything only once it is complete.
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(run("c", "uid-2")));
        assert_eq!(index.owned_by("uid-1").len(), 1, "still the old view");
        index.observe(&watcher::Event::InitDone);
        assert!(index.owned_by("uid-1").is_empty(), "b went while unwatched");
        assert_eq!(index.owned_by("uid-2").len(), 1);
    }
}
