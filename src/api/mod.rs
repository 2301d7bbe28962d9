//! Ramp's API types and the pure rules about them (defaults, durations,
//! validation). Nothing here does I/O, so the controller, the planner and the
//! kubectl plugin can all share it.

pub mod analysis;
pub mod duration;
pub mod merge;
pub mod rollout;
pub mod traffic;
pub mod validate;
pub mod webhook;

pub use analysis::*;
pub use rollout::*;
pub use traffic::*;
pub use webhook::*;

/// Label that ties ReplicaSets, pods and Service selectors to one pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";
/// Revision number of a ReplicaSet within its Rollout (1, 2, ...).
pub const REVISION_ANNOTATION: &str = "rollout.ramp.dev/revision";
/// RFC 3339 time after which an old ReplicaSet is scaled to zero.
pub const SCALE_DOWN_DEADLINE_ANNOTATION: &str = "rollout.ramp.dev/scale-down-deadline";
/// Full-length digest of the pod template, used to detect short-hash collisions.
pub const TEMPLATE_DIGEST_ANNOTATION: &str = "rollout.ramp.dev/template-digest";
/// JSON record of the role labels/annotations injected into a ReplicaSet's pods.
pub const EPHEMERAL_METADATA_ANNOTATION: &str = "rollout.ramp.dev/ephemeral-metadata";
/// Set on Services whose selector Ramp manages; the value is the Rollout name.
pub const MANAGED_BY_ANNOTATION: &str = "rollout.ramp.dev/managed-by-rollouts";
/// AnalysisRun labels that say which part of a rollout created the run.
pub const ANALYSIS_TYPE_LABEL: &str = "rollout.ramp.dev/analysis-type";
pub const ANALYSIS_STEP_LABEL: &str = "rollout.ramp.dev/step-index";
/// Field manager for every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "ramp-controller";
/// Field manager the kubectl plugin uses for its patches.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-ramp";

/// Role metadata to put on a ReplicaSet's live pods: keys to set and keys to drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaSetRoleMetadata {
    pub set: PodMetadata,
    pub removed_labels: Vec<String>,
    pub removed_annotations: Vec<String>,
}

pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
pub const DEFAULT_BLUE_GREEN_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
pub const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
pub const DEFAULT_ANALYSIS_HISTORY_LIMIT: i32 = 5;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD Ramp defines, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Rollout::crd(),
        AnalysisTemplate::crd(),
        ClusterAnalysisTemplate::crd(),
        AnalysisRun::crd(),
    ]
}

/// The file name under `crds/` for a CRD, e.g. `rollouts.ramp.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default())
}

/// One YAML document for a CRD, as committed under `crds/`.
pub fn crd_document(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from the Rust types by `make crds`; do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}

/// All CRDs as one multi-document YAML stream.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let documents = crds()
        .iter()
        .map(crd_document)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}

#[cfg(test)]
mod crd_tests {
    use super::*;

    /// The committed YAML under crds/ and in the Helm chart's crds/ must
    /// match the Rust types.
    #[test]
    fn committed_crds_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in [root.join("crds"), root.join("deploy/helm/ramp/crds")] {
            for crd in crds() {
                let path = dir.join(crd_file_name(&crd));
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                let generated = crd_document(&crd).expect("CRDs serialize to YAML");
                assert!(
                    committed == generated,
                    "{} is out of date with the Rust types; regenerate it with `make crds` and commit the result",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn rollout_crd_has_subresources_and_columns() {
        let crd = Rollout::crd();
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            [
                "Desired",
                "Current",
                "Up-to-date",
                "Available",
                "Phase",
                "Age"
            ]
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["ro".to_string()]));
    }
}
