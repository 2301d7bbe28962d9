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
use std::sync::{Arc, Mutex};
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
    /// The same trimming the store's watch applies, so a remembered copy
    /// looks exactly like the cached one it stands in for.
    trim: fn(&mut K),
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

/// Our copy if it is newer than the cached one. Otherwise the entry goes,
/// but only once `store` has caught up too: a caller may pass a copy it got
/// elsewhere (a fresh GET, another cache), and dropping the entry because
/// that copy is current would leave the lagging store without it.
fn pick<K>(state: &mut State<K>, store: &Store<K>, key: &ObjectRef<K>, cached: Arc<K>) -> Arc<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match state.entries.get(key) {
        Some(entry) if newer(entry.object.as_ref(), cached.as_ref()) => entry.object.clone(),
        Some(entry) => {
            let caught_up = store
                .get(key)
                .is_some_and(|stored| !newer(entry.object.as_ref(), stored.as_ref()));
            if caught_up {
                state.entries.remove(key);
            }
            cached
        }
        None => cached,
    }
}

impl<K> Recent<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn new(store: Store<K>, trim: fn(&mut K)) -> Self {
        Recent {
            store,
            trim,
            state: Mutex::new(State {
                entries: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        super::lock(&self.state)
    }

    /// Records the copy the API server returned from one of our writes.
    pub fn remember(&self, mut object: K) {
        (self.trim)(&mut object);
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
        pick(&mut self.lock(), &self.store, &key, cached)
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
                let chosen = pick(&mut state, &self.store, &key, cached);
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

    fn recent_over(cached: &[ConfigMap]) -> Recent<ConfigMap> {
        recent_and_writer(cached).0
    }

    fn recent_and_writer(
        cached: &[ConfigMap],
    ) -> (Recent<ConfigMap>, reflector::store::Writer<ConfigMap>) {
        let (store, mut writer) = reflector::store();
        for object in cached {
            writer.apply_watcher_event(&watcher::Event::Apply(object.clone()));
        }
        let recent = Recent::new(store, |map: &mut ConfigMap| map.metadata.labels = None);
        (recent, writer)
    }

    /// The resourceVersion `freshest` picks when the cache holds `cached`.
    fn freshest_version(recent: &Recent<ConfigMap>, cached: ConfigMap) -> String {
        let chosen = recent.freshest(Arc::new(cached));
        chosen.metadata.resource_version.clone().unwrap_or_default()
    }

    #[test]
    fn our_newer_write_wins_until_the_cache_catches_up() {
        let (recent, mut writer) = recent_and_writer(&[object("a", "10")]);
        recent.remember(object("a", "12"));
        assert_eq!(freshest_version(&recent, object("a", "10")), "12");
        // Another cache (the run controller's own) has caught up; the store
        // this overlay covers has not, so the entry must stay for it.
        assert_eq!(freshest_version(&recent, object("a", "15")), "15");
        assert_eq!(recent.len(), 1);
        assert_eq!(freshest_version(&recent, object("a", "10")), "12");
        writer.apply_watcher_event(&watcher::Event::Apply(object("a", "15")));
        assert_eq!(freshest_version(&recent, object("a", "15")), "15");
        assert_eq!(
            recent.len(),
            0,
            "once its own store caught up the entry goes"
        );
    }

    #[test]
    fn an_older_write_never_replaces_a_newer_one() {
        let recent = recent_over(&[]);
        recent.remember(object("a", "20"));
        recent.remember(object("a", "18"));
        assert_eq!(freshest_version(&recent, object("a", "5")), "20");
    }

    #[test]
    fn unparseable_versions_leave_the_cache_in_charge() {
        let recent = recent_over(&[]);
        recent.remember(object("a", "opaque-2"));
        assert_eq!(
            freshest_version(&recent, object("a", "opaque-1")),
            "opaque-1"
        );
    }

    #[test]
    fn overlay_adds_written_objects_the_cache_does_not_show_yet() {
        let recent = recent_over(&[object("old", "3")]);
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
    fn remembered_copies_are_trimmed_like_the_cache() {
        let recent = recent_over(&[]);
        let mut labelled = object("a", "12");
        labelled.metadata.labels = Some([("k".to_string(), "v".to_string())].into());
        recent.remember(labelled);
        let chosen = recent.freshest(Arc::new(object("a", "10")));
        assert_eq!(chosen.metadata.resource_version.as_deref(), Some("12"));
        assert_eq!(chosen.metadata.labels, None);
    }

    #[test]
    fn a_deleted_object_leaves_the_overlay() {
        let recent = recent_over(&[]);
        recent.remember(object("gone", "9"));
        recent.observe(&watcher::Event::Delete(object("gone", "10")));
        assert!(recent.overlay(Vec::new(), |_| true).is_empty());
    }
}
