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
            // A ReplicaSet taken over from a Deployment also carries the
            // Deployment's hash label, with the same value.
            let hash = labels.remove(POD_TEMPLATE_HASH_LABEL);
            let deployment_hash = crate::planner::workload::DEPLOYMENT_HASH_LABEL;
            if hash.is_some() && labels.get(deployment_hash) == hash.as_ref() {
                labels.remove(deployment_hash);
            }
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
/// yet it is the same revision (Argo's `PodTemplateEqualIgnoreHash`). A
/// cached copy whose template was dropped (see `drop_drained_template`) is
/// compared by the fingerprint it kept instead.
///
/// A ReplicaSet's template is as the API server stored it, with defaults
/// filled in; a Rollout's usually is not. So a template also matches when
/// it equals the ReplicaSet's once the common API defaults are added (see
/// [`with_api_defaults`]), which is how a ReplicaSet left behind by Argo
/// Rollouts is recognised as running the Rollout's template.
pub fn replica_set_runs(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let defaulted = with_api_defaults(template);
    match replica_set_source_template(rs) {
        Some(own) => {
            let own = normalized(&own);
            own == normalized(template) || own == normalized(&defaulted)
        }
        None => kept_fingerprint(rs)
            .is_some_and(|kept| *kept == fingerprint(template) || *kept == fingerprint(&defaulted)),
    }
}

/// Whether a Deployment's ReplicaSet runs `template` (the Deployment's own,
/// as stored): its template is the Deployment's plus the Deployment's hash
/// label.
pub fn deployment_set_runs(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let Some(mut own) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
        return false;
    };
    if let Some(metadata) = own.metadata.as_mut()
        && let Some(labels) = metadata.labels.as_mut()
    {
        labels.remove(crate::planner::workload::DEPLOYMENT_HASH_LABEL);
    }
    normalized(&own) == normalized(template)
}

/// `template` with the defaults the API server fills into a pod template
/// (core/v1 `SetDefaults_PodSpec`, `SetDefaults_Container`, probes, ports,
/// field references, ConfigMap and Secret volume modes) wherever it leaves
/// them unset. Defaults this does not know only cost a match: the template
/// is then taken for a different one, never the other way round.
pub fn with_api_defaults(template: &PodTemplateSpec) -> PodTemplateSpec {
    use k8s_openapi::api::core::v1::{PodSecurityContext, Probe, ResourceRequirements};
    let mut template = template.clone();
    let Some(pod) = template.spec.as_mut() else {
        return template;
    };
    pod.restart_policy.get_or_insert_with(|| "Always".into());
    pod.termination_grace_period_seconds.get_or_insert(30);
    pod.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    pod.security_context
        .get_or_insert_with(PodSecurityContext::default);
    pod.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    let probe_defaults = |probe: &mut Option<Probe>| {
        if let Some(probe) = probe.as_mut() {
            probe.timeout_seconds.get_or_insert(1);
            probe.period_seconds.get_or_insert(10);
            probe.success_threshold.get_or_insert(1);
            probe.failure_threshold.get_or_insert(3);
            if let Some(get) = probe.http_get.as_mut() {
                get.scheme.get_or_insert_with(|| "HTTP".into());
            }
        }
    };
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for container in containers {
        container
            .termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        container
            .termination_message_policy
            .get_or_insert_with(|| "File".into());
        let image = container.image.clone().unwrap_or_default();
        container
            .image_pull_policy
            .get_or_insert_with(|| default_pull_policy(&image).into());
        container
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        for port in container.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
        for variable in container.env.iter_mut().flatten() {
            if let Some(field) = variable
                .value_from
                .as_mut()
                .and_then(|from| from.field_ref.as_mut())
            {
                field.api_version.get_or_insert_with(|| "v1".into());
            }
        }
        probe_defaults(&mut container.liveness_probe);
        probe_defaults(&mut container.readiness_probe);
        probe_defaults(&mut container.startup_probe);
    }
    for volume in pod.volumes.iter_mut().flatten() {
        if let Some(config_map) = volume.config_map.as_mut() {
            config_map.default_mode.get_or_insert(0o644);
        }
        if let Some(secret) = volume.secret.as_mut() {
            secret.default_mode.get_or_insert(0o644);
        }
    }
    template
}

/// `Always` for an image without a tag or tagged `latest`, else
/// `IfNotPresent`; a digest counts as a tag.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last_part = image.rsplit('/').next().unwrap_or(image);
    match last_part.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn normalized(template: &PodTemplateSpec) -> Vec<u8> {
    let mut template = template.clone();
    if template
        .metadata
        .as_ref()
        .is_some_and(|m| *m == ObjectMeta::default())
    {
        template.metadata = None;
    }
    serde_json::to_vec(&template).unwrap_or_default()
}

fn fingerprint(template: &PodTemplateSpec) -> String {
    format!("{:016x}", fnv1a64(&normalized(template)))
}

/// Where a cached ReplicaSet without its template keeps the fingerprint of
/// the template it ran. Only ever on cached copies: plans build ReplicaSets
/// from scratch, so it is never written to the API server.
const KEPT_FINGERPRINT_ANNOTATION: &str = "cache.ramp.dev/template-fingerprint";

fn kept_fingerprint(rs: &ReplicaSet) -> Option<&String> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(KEPT_FINGERPRINT_ANNOTATION)
}

/// Whether a (cached) ReplicaSet still carries its pod template.
pub fn has_template(rs: &ReplicaSet) -> bool {
    rs.spec.as_ref().is_some_and(|s| s.template.is_some())
}

/// Drops the pod template of a ReplicaSet that is scaled to 0 and has no
/// pods left, keeping a fingerprint of it; the controller's cache holds old
/// ReplicaSets this way (the template is most of a ReplicaSet, and a Rollout
/// keeps up to `revisionHistoryLimit` drained ones). A plan that must write
/// such a ReplicaSet asks for it in full (`Plan::needs_templates`), except the
/// Rollout's own revision, whose template the Rollout carries.
pub fn drop_drained_template(rs: &mut ReplicaSet) {
    let drained = rs.spec.as_ref().and_then(|s| s.replicas) == Some(0)
        && rs.status.as_ref().is_none_or(|s| s.replicas == 0);
    if !drained || !has_template(rs) {
        return;
    }
    let Some(source) = replica_set_source_template(rs) else {
        return;
    };
    let kept = fingerprint(&source);
    if let Some(spec) = rs.spec.as_mut() {
        spec.template = None;
    }
    rs.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(KEPT_FINGERPRINT_ANNOTATION.to_string(), kept);
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

    /// A ReplicaSet's template as the API server stores it, defaults and
    /// all, next to the Rollout template it was created from.
    #[test]
    fn a_template_matches_its_api_server_defaulted_copy() {
        let stored: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH_LABEL: "h1"}},
            "spec": {
                "containers": [{
                    "name": "app", "image": "web:1", "imagePullPolicy": "IfNotPresent",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"},
                        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"
                }],
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                "schedulerName": "default-scheduler", "securityContext": {},
                "terminationGracePeriodSeconds": 30
            }
        }))
        .expect("fixture");
        let written: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "app", "image": "web:1",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}
            }]}
        }))
        .expect("fixture");
        let mut rs = replica_set("web:1", 1, 1);
        if let Some(spec) = rs.spec.as_mut() {
            spec.template = Some(stored);
        }
        assert!(replica_set_runs(&rs, &written));
        // A field the user set differently is a different template.
        let mut other = written.clone();
        if let Some(pod) = other.spec.as_mut() {
            pod.termination_grace_period_seconds = Some(5);
        }
        assert!(!replica_set_runs(&rs, &other));
        assert_eq!(default_pull_policy("registry:5000/web"), "Always");
        assert_eq!(default_pull_policy("web:latest"), "Always");
        assert_eq!(default_pull_policy("registry:5000/web:2"), "IfNotPresent");
        assert_eq!(default_pull_policy("web@sha256:ab"), "IfNotPresent");
    }

    fn replica_set(image: &str, replicas: i32, pods: i32) -> ReplicaSet {
        let mut template = template(image);
        template.metadata = Some(ObjectMeta {
            labels: Some([(POD_TEMPLATE_HASH_LABEL.to_string(), "h1".to_string())].into()),
            ..Default::default()
        });
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-h1".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(template),
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
                replicas: pods,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_drained_replica_sets_lose_their_template() {
        for (replicas, pods) in [(1, 1), (0, 1), (1, 0)] {
            let mut rs = replica_set("web:1", replicas, pods);
            drop_drained_template(&mut rs);
            assert!(has_template(&rs), "{replicas} replicas, {pods} pods");
        }
        let mut drained = replica_set("web:1", 0, 0);
        drop_drained_template(&mut drained);
        assert!(!has_template(&drained));
    }

    #[test]
    fn a_drained_replica_set_still_matches_its_template_by_content() {
        let mut drained = replica_set("web:1", 0, 0);
        assert!(replica_set_runs(&drained, &template("web:1")));
        drop_drained_template(&mut drained);
        assert!(replica_set_runs(&drained, &template("web:1")));
        assert!(!replica_set_runs(&drained, &template("web:2")));
        // Dropping twice keeps the fingerprint of the real template.
        drop_drained_template(&mut drained);
        assert!(replica_set_runs(&drained, &template("web:1")));
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
