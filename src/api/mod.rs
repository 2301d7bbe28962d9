//! Ramp's API types and the pure rules about them (defaults, durations,
//! validation). Nothing here does I/O, so the controller, the planner and the
//! kubectl plugin can all share it.

pub mod analysis;
pub mod duration;
pub mod rollout;
pub mod validate;

pub use analysis::*;
pub use rollout::*;

/// Label that ties ReplicaSets, pods and Service selectors to one pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";
/// Revision number of a ReplicaSet within its Rollout (1, 2, ...).
pub const REVISION_ANNOTATION: &str = "rollout.ramp.dev/revision";
/// RFC 3339 time after which an old ReplicaSet is scaled to zero.
pub const SCALE_DOWN_DEADLINE_ANNOTATION: &str = "rollout.ramp.dev/scale-down-deadline";
/// Full-length digest of the pod template, used to detect short-hash collisions.
pub const TEMPLATE_DIGEST_ANNOTATION: &str = "rollout.ramp.dev/template-digest";
/// Set on Services whose selector Ramp manages; the value is the Rollout name.
pub const MANAGED_BY_ANNOTATION: &str = "rollout.ramp.dev/managed-by-rollouts";
/// AnalysisRun labels that say which part of a rollout created the run.
pub const ANALYSIS_TYPE_LABEL: &str = "rollout.ramp.dev/analysis-type";
pub const ANALYSIS_STEP_LABEL: &str = "rollout.ramp.dev/step-index";
/// Field manager for every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "ramp-controller";
/// Field manager the kubectl plugin uses for its patches.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-ramp";

pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
pub const DEFAULT_BLUE_GREEN_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
pub const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i32 = 30;
pub const DEFAULT_ANALYSIS_HISTORY_LIMIT: i32 = 5;
