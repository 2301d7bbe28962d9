//! Pod-template hashing.
//!
//! Algorithm: serialize `spec.template` with serde_json (k8s-openapi emits
//! struct fields in a fixed order and map keys sorted, so equal templates give
//! equal bytes), run 32-bit FNV-1a over the bytes, and when the Rollout's
//! `status.collisionCount` is set append it as a little-endian u32 plus four
//! zero bytes. The decimal value of the sum is spelled with the alphabet
//! `bcdfghjklmnpqrstvwxz2456789` (no vowels, so no accidental words; safe in
//! names and label values).
//!
//! 32 bits can collide, so every ReplicaSet also records a 64-bit FNV-1a
//! digest of the same bytes. A ReplicaSet whose name matches the short hash
//! but whose digest differs is a collision: the planner bumps
//! `collisionCount` and hashes again.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::POD_TEMPLATE_HASH_LABEL;

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateHash {
    /// Short hash used in names and the `rollouts-pod-template-hash` label.
    pub short: String,
    /// Long digest stored in an annotation to detect short-hash collisions.
    pub digest: String,
}

pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> TemplateHash {
    // Serializing k8s-openapi types into a Vec cannot fail: they contain no
    // maps with non-string keys and no custom fallible serializers.
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0]);
    }
    TemplateHash {
        short: encode(fnv1a32(&bytes)),
        digest: format!("{:016x}", fnv1a64(&bytes)),
    }
}

/// The pod template a ReplicaSet was created from: its own template minus
/// what Ramp added (the hash label and role metadata). `kubectl ramp undo`
/// copies this back into the Rollout.
pub fn replica_set_source_template(rs: &ReplicaSet) -> Option<PodTemplateSpec> {
    let mut template = rs.spec.as_ref()?.template.clone()?;
    let injected = super::ephemeral::injected(rs.metadata.annotations.as_ref());
    if let Some(metadata) = template.metadata.as_mut() {
        if let Some(labels) = metadata.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            for key in injected.labels.keys() {
                labels.remove(key);
            }
            if labels.is_empty() {
                metadata.labels = None;
            }
        }
        if let Some(annotations) = metadata.annotations.as_mut() {
            for key in injected.annotations.keys() {
                annotations.remove(key);
            }
            if annotations.is_empty() {
                metadata.annotations = None;
            }
        }
        if *metadata == ObjectMeta::default() {
            template.metadata = None;
        }
    }
    Some(template)
}

/// Whether `rs` runs `template`, compared by content rather than by hash:
/// after `undo` the Rollout carries the ReplicaSet's API-server-defaulted
/// template, whose hash differs from the one the ReplicaSet was named after,
/// yet it is the same revision (Argo's `PodTemplateEqualIgnoreHash`).
pub fn replica_set_runs(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let normalize = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if t.metadata
            .as_ref()
            .is_some_and(|m| *m == ObjectMeta::default())
        {
            t.metadata = None;
        }
        serde_json::to_value(t).ok()
    };
    replica_set_source_template(rs).is_some_and(|own| normalize(&own) == normalize(template))
}

pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(sum: u32) -> String {
    sum.to_string()
        .bytes()
        .map(|digit| SAFE_ALPHABET[usize::from(digit) % SAFE_ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn same_template_same_hash_and_image_change_changes_it() {
        // The same template written with its maps in another order (as a
        // user's YAML or the API server may) hashes the same.
        let reordered: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"image": "app:1", "name": "app"}]},
            "metadata": {"labels": {"b": "2", "a": "1"}}
        }))
        .expect("fixture");
        let ordered: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        }))
        .expect("fixture");
        assert_eq!(
            template_hash(&reordered, None),
            template_hash(&ordered, None)
        );
        assert_ne!(
            template_hash(&ordered, None).short,
            template_hash(&template("app:1"), None).short,
            "labels are part of the template"
        );
        assert_ne!(
            template_hash(&template("app:1"), None).short,
            template_hash(&template("app:2"), None).short
        );
    }

    #[test]
    fn collision_count_changes_short_hash_and_digest() {
        let plain = template_hash(&template("app:1"), None);
        let bumped = template_hash(&template("app:1"), Some(1));
        assert_ne!(plain.short, bumped.short);
        assert_ne!(plain.digest, bumped.digest);
    }

    #[test]
    fn hash_uses_only_the_safe_alphabet() {
        let hash = template_hash(&template("app:1"), None).short;
        assert!(
            !hash.is_empty() && hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)),
            "{hash}"
        );
    }
}
