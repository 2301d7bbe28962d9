//! How long a changed object waits before a reconcile picks it up.
//!
//! The reconcile histogram times the work; this times the wait before it:
//! from the watch event that changed an object to the start of the next
//! reconcile of that object. Under a burst the two tell apart a controller
//! that is slow to act from one that is slow to be told (the watch) or
//! slow to get round to it (the trigger queue, the concurrency bound).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

/// The moment each object's oldest unplanned change arrived.
pub struct Waiting<K: Resource<DynamicType = ()> + 'static> {
    since: Mutex<HashMap<ObjectRef<K>, Instant>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Default for Waiting<K> {
    fn default() -> Self {
        Waiting {
            since: Mutex::default(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Waiting<K> {
    /// Feeds one watch event, received at `now`. A change to an object
    /// already waiting keeps the older moment: the reconcile that follows
    /// answers both. A deleted object is never reconciled, so it stops
    /// waiting (otherwise its entry would stay for good).
    pub fn observe_at(&self, event: &Event<K>, now: Instant) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(object) | Event::InitApply(object) => {
                since.entry(ObjectRef::from_obj(object)).or_insert(now);
            }
            Event::Delete(object) => {
                since.remove(&ObjectRef::from_obj(object));
            }
            Event::Init | Event::InitDone => {}
        }
    }

    pub fn observe(&self, event: &Event<K>) {
        self.observe_at(event, Instant::now());
    }

    /// A reconcile of `key` starts at `now`: how long its oldest change
    /// waited, if one did (a requeue or another object's trigger can start
    /// a reconcile with nothing new from the watch).
    pub fn started_at(&self, key: &ObjectRef<K>, now: Instant) -> Option<Duration> {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        since
            .remove(key)
            .map(|arrived| now.saturating_duration_since(arrived))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object.metadata.namespace = Some("default".into());
        object
    }

    fn key(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::from_obj(&config_map(name))
    }

    #[test]
    fn a_wait_runs_from_the_oldest_unplanned_change_to_the_reconcile() {
        let waiting = Waiting::<ConfigMap>::default();
        let t0 = Instant::now();
        waiting.observe_at(&Event::Apply(config_map("a")), t0);
        waiting.observe_at(
            &Event::Apply(config_map("a")),
            t0 + Duration::from_millis(300),
        );
        waiting.observe_at(
            &Event::InitApply(config_map("b")),
            t0 + Duration::from_millis(100),
        );
        let start = t0 + Duration::from_secs(2);
        assert_eq!(
            waiting.started_at(&key("a"), start),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            waiting.started_at(&key("b"), start),
            Some(Duration::from_millis(1900))
        );
        // Each change is counted by the first reconcile after it, once.
        assert_eq!(waiting.started_at(&key("a"), start), None);
        waiting.observe_at(&Event::Apply(config_map("a")), start);
        assert_eq!(
            waiting.started_at(&key("a"), start + Duration::from_millis(5)),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn a_deleted_object_stops_waiting_and_markers_change_nothing() {
        let waiting = Waiting::<ConfigMap>::default();
        let t0 = Instant::now();
        waiting.observe_at(&Event::Apply(config_map("gone")), t0);
        waiting.observe_at(&Event::Init, t0);
        waiting.observe_at(&Event::InitDone, t0);
        assert_eq!(waiting.since.lock().map(|s| s.len()).ok(), Some(1));
        waiting.observe_at(&Event::Delete(config_map("gone")), t0);
        assert_eq!(waiting.started_at(&key("gone"), t0), None);
        assert_eq!(waiting.since.lock().map(|s| s.len()).ok(), Some(0));
    }
}
