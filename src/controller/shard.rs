//! Sharding: several controller processes split the Rollouts between them
//! by a stable hash of namespace/name. Each one caches and reconciles only
//! its own Rollouts and the ReplicaSets and AnalysisRuns they control, so
//! memory and API load divide with the shard count. A shard is made highly
//! available the usual way: two replicas with the same `--shard-index`
//! compete for that shard's Lease.

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::watcher::{Error, Event};

/// This process's share of the Rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    count: u32,
    index: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { count: 1, index: 0 }
    }
}

impl Shard {
    pub fn new(count: u32, index: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("--shards must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "--shard-index {index} is out of range for --shards {count}; use 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { count, index })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Which shard reconciles the Rollout `namespace/name`. FNV-1a, so the
    /// answer never changes between versions or processes (the standard
    /// hasher is randomly seeded).
    pub fn of(count: u32, namespace: &str, name: &str) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % u64::from(count.max(1))) as u32
    }

    pub fn owns_rollout(&self, namespace: &str, name: &str) -> bool {
        self.count == 1 || Shard::of(self.count, namespace, name) == self.index
    }

    /// For the Rollout itself, and for what a Rollout controls (ReplicaSets,
    /// AnalysisRuns): the shard of the controlling Rollout. An object no
    /// Rollout controls (a hand-made AnalysisRun) goes by its own name.
    pub fn owns<K: Resource>(&self, object: &K) -> bool {
        if self.count == 1 {
            return true;
        }
        let meta = object.meta();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let rollout = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true) && r.kind == "Rollout")
            .map(|r| r.name.as_str());
        let own_name = meta.name.as_deref().unwrap_or_default();
        // A ReplicaSet without a controller, named `<rollout>-<hash>` as
        // Rollouts name theirs, goes to the shard of the Rollout that would
        // adopt it.
        let orphan_of = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::api::POD_TEMPLATE_HASH_LABEL))
            .and_then(|hash| own_name.strip_suffix(hash.as_str()))
            .and_then(|prefix| prefix.strip_suffix('-'));
        let name = rollout.or(orphan_of).unwrap_or(own_name);
        self.owns_rollout(namespace, name)
    }

    /// The watch events of objects this shard owns; the rest never reach
    /// the cache.
    pub fn filter<K, S>(self, events: S) -> impl Stream<Item = Result<Event<K>, Error>> + Send
    where
        K: Resource + Send + 'static,
        S: Stream<Item = Result<Event<K>, Error>> + Send,
    {
        events.filter(move |event| {
            let keep = match event {
                Ok(Event::Apply(object) | Event::InitApply(object) | Event::Delete(object)) => {
                    self.owns(object)
                }
                Ok(Event::Init | Event::InitDone) | Err(_) => true,
            };
            futures::future::ready(keep)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AnalysisRun;
    use serde_json::json;

    #[test]
    fn the_shard_of_a_rollout_is_stable_and_spreads() {
        // Pinned values: a change here would move every Rollout to another
        // shard on upgrade.
        // (FNV-1a 64 of "namespace/name", modulo the count.)
        assert_eq!(Shard::of(4, "shop", "web"), 0);
        assert_eq!(Shard::of(16, "default", "checkout"), 15);
        assert_eq!(Shard::of(16, "payments", "api"), 9);
        let spread: Vec<u32> = (0..1000)
            .map(|i| Shard::of(4, "ns", &format!("app-{i}")))
            .collect();
        for shard in 0..4 {
            let share = spread.iter().filter(|s| **s == shard).count();
            assert!(
                (200..=300).contains(&share),
                "shard {shard} got {share} of 1000"
            );
        }
        assert_eq!(Shard::of(1, "a", "b"), 0);
        assert_ne!(
            (0..64)
                .map(|i| Shard::of(2, "a", &i.to_string()))
                .collect::<Vec<_>>(),
            (0..64)
                .map(|i| Shard::of(2, "b", &i.to_string()))
                .collect::<Vec<_>>(),
            "the namespace takes part in the hash"
        );
    }

    #[test]
    fn owned_objects_follow_their_rollout() {
        let name = (0..100)
            .map(|i| format!("web-{i}"))
            // Its orphan's own name must hash elsewhere, so the test below
            // tells the orphan's adopter from its own name.
            .find(|n| {
                Shard::of(2, "shop", n) == 1 && Shard::of(2, "shop", &format!("{n}-7c9d8e")) == 0
            })
            .expect("some name hashes to shard 1");
        let run = |owner: Option<&str>| -> AnalysisRun {
            let mut value = json!({
                "apiVersion": "ramp.dev/v1alpha1", "kind": "AnalysisRun",
                "metadata": {"name": format!("{name}-abc-1"), "namespace": "shop"},
                "spec": {"metrics": []}
            });
            if let Some(owner) = owner {
                value["metadata"]["ownerReferences"] = json!([{"apiVersion": "ramp.dev/v1alpha1",
                    "kind": "Rollout", "name": owner, "uid": "u", "controller": true}]);
            }
            serde_json::from_value(value).expect("fixture")
        };
        let (zero, one) = (
            Shard::new(2, 0).expect("valid"),
            Shard::new(2, 1).expect("valid"),
        );
        assert!(one.owns(&run(Some(&name))) && !zero.owns(&run(Some(&name))));
        // Without an owner the run's own name decides; exactly one shard has it.
        let orphan = run(None);
        assert!(zero.owns(&orphan) != one.owns(&orphan));
        assert!(Shard::default().owns(&run(Some(&name))));

        // An orphaned ReplicaSet `<rollout>-<hash>` goes where its adopter is.
        let orphan: k8s_openapi::api::apps::v1::ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-7c9d8e"), "namespace": "shop",
                "labels": {crate::api::POD_TEMPLATE_HASH_LABEL: "7c9d8e"}}
        }))
        .expect("fixture");
        assert!(one.owns(&orphan) && !zero.owns(&orphan));
    }

    #[test]
    fn bad_flags_say_what_to_use() {
        assert_eq!(
            Shard::new(2, 2),
            Err("--shard-index 2 is out of range for --shards 2; use 0 to 1".into())
        );
        assert!(Shard::new(0, 0).is_err());
    }
}
