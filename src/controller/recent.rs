//! Read-your-own-writes: the objects this controller just wrote, kept until
//! the watch-fed caches catch up with them.
//!
//! Under load a reflector can lag the API server by seconds. Planning from
//! the lagging copy of a Rollout the controller itself has just updated
//! would repeat decisions already carried out (apply the new ReplicaSet
//! again) and send a status write whose resourceVersion precondition is
//! bound to fail; each failure then requeues into the same stale cache.
//! Overlaying the copies the API server returned from our own writes makes
//! every snapshot at least as new as what we last did, so only a genuine
//! concurrent write (a user's edit) conflicts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// How long a written copy may stand in for a cache that never shows it
/// (the object was deleted and the delete was folded into a relist).
const KEEP_FOR: Duration = Duration::from_secs(60);
/// Entries the cache has caught up with are dropped at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Entry<K> {
    object: Arc<K>,
    written: Instant,
}

struct State<K: Resource<DynamicType = ()> + 'static> {
    entries: HashMap<ObjectRef<K>, Entry<K>>,
    swept: Instant,
}

pub struct Recent<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    state: Mutex<State<K>>,
}

/// The etcd revision behind a resourceVersion. The API treats it as opaque,
/// so anything that does not parse is never preferred over the cache.
fn revision<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

/// Is `written` strictly newer than `cached`?
fn newer<K: Resource>(written: &K, cached: &K) -> bool {
    match (revision(written), revision(cached)) {
        (Some(written), Some(cached)) => written > cached,
        _ => false,
    }
}

impl<K> Recent<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn new(store: Store<K>) -> Self {
        Recent {
            store,
            state: Mutex::new(State {
                entries: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the copy the API server returned from one of our writes.
    pub fn remember(&self, object: K) {
        let key = ObjectRef::from_obj(&object);
        let now = Instant::now();
        let mut state = self.lock();
        let keep = match state.entries.get(&key) {
            Some(entry) => !newer(entry.object.as_ref(), &object),
            None => true,
        };
        if keep {
            state.entries.insert(
                key,
                Entry {
                    object: Arc::new(object),
                    written: now,
                },
            );
        }
        if now.duration_since(state.swept) >= SWEEP_EVERY {
            state.swept = now;
            let store = &self.store;
            state.entries.retain(|key, entry| {
                now.duration_since(entry.written) < KEEP_FOR
                    && store
                        .get(key)
                        .is_none_or(|cached| newer(entry.object.as_ref(), cached.as_ref()))
            });
        }
    }

    pub fn forget(&self, key: &ObjectRef<K>) {
        self.lock().entries.remove(key);
    }

    /// A deleted object must not live on in the overlay.
    pub fn observe(&self, event: &watcher::Event<K>) {
        if let watcher::Event::Delete(object) = event {
            self.forget(&ObjectRef::from_obj(object));
        }
    }

    /// The newer of the cached copy and the one we last wrote.
    pub fn freshest(&self, cached: Arc<K>) -> Arc<K> {
        let key = ObjectRef::from_obj(cached.as_ref());
        let mut state = self.lock();
        match state.entries.get(&key) {
            Some(entry) if newer(entry.object.as_ref(), cached.as_ref()) => entry.object.clone(),
            Some(_) => {
                state.entries.remove(&key);
                cached
            }
            None => cached,
        }
    }

    /// The cached objects, each replaced by our newer copy where we have
    /// one, plus the objects we wrote that `belongs` selects and the cache
    /// does not show yet.
    pub fn overlay(&self, cached: Vec<Arc<K>>, belongs: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let mut state = self.lock();
        let mut seen = std::collections::HashSet::new();
        let mut merged: Vec<Arc<K>> = cached
            .into_iter()
            .map(|cached| {
                let key = ObjectRef::from_obj(cached.as_ref());
                let chosen = match state.entries.get(&key) {
                    Some(entry) if newer(entry.object.as_ref(), cached.as_ref()) => {
                        entry.object.clone()
                    }
                    Some(_) => {
                        state.entries.remove(&key);
                        cached
                    }
                    None => cached,
                };
                seen.insert(key);
                chosen
            })
            .collect();
        for (key, entry) in &state.entries {
            if !seen.contains(key)
                && belongs(entry.object.as_ref())
                && self
                    .store
                    .get(key)
                    .is_none_or(|cached| newer(entry.object.as_ref(), cached.as_ref()))
            {
                merged.push(entry.object.clone());
            }
        }
        merged
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    fn object(name: &str, version: &str) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(name.into());
        map.metadata.namespace = Some("ns".into());
        map.metadata.resource_version = Some(version.into());
        map
    }

    fn store_with(objects: &[ConfigMap]) -> Store<ConfigMap> {
        let (store, mut writer) = reflector::store();
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(object.clone()));
        }
        store
    }

    #[test]
    fn our_newer_write_wins_until_the_cache_catches_up() {
        let recent = Recent::new(store_with(&[]));
        recent.remember(object("a", "12"));
        let stale = Arc::new(object("a", "10"));
        assert_eq!(
            recent.freshest(stale).metadata.resource_version.as_deref(),
            Some("12")
        );
        let caught_up = Arc::new(object("a", "15"));
        assert_eq!(
            recent
                .freshest(caught_up)
                .metadata
                .resource_version
                .as_deref(),
            Some("15")
        );
        assert_eq!(recent.len(), 0, "a cache that caught up drops the entry");
    }

    #[test]
    fn an_older_write_never_replaces_a_newer_one() {
        let recent = Recent::new(store_with(&[]));
        recent.remember(object("a", "20"));
        recent.remember(object("a", "18"));
        let cached = Arc::new(object("a", "5"));
        assert_eq!(
            recent.freshest(cached).metadata.resource_version.as_deref(),
            Some("20")
        );
    }

    #[test]
    fn unparseable_versions_leave_the_cache_in_charge() {
        let recent = Recent::new(store_with(&[]));
        recent.remember(object("a", "opaque-2"));
        let cached = Arc::new(object("a", "opaque-1"));
        assert_eq!(
            recent.freshest(cached).metadata.resource_version.as_deref(),
            Some("opaque-1")
        );
    }

    #[test]
    fn overlay_adds_written_objects_the_cache_does_not_show_yet() {
        let recent = Recent::new(store_with(&[object("old", "3")]));
        recent.remember(object("new", "9"));
        recent.remember(object("other-owner", "9"));
        let merged = recent.overlay(vec![Arc::new(object("old", "3"))], |o| {
            o.metadata.name.as_deref() != Some("other-owner")
        });
        let names: Vec<_> = merged
            .iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, vec!["old".to_string(), "new".to_string()]);
    }

    #[test]
    fn a_deleted_object_leaves_the_overlay() {
        let recent = Recent::new(store_with(&[]));
        recent.remember(object("gone", "9"));
        recent.observe(&watcher::Event::Delete(object("gone", "10")));
        assert!(recent.overlay(Vec::new(), |_| true).is_empty());
    }
}
