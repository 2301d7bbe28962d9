//! `workloadRef`: a Rollout whose pod template (and, when it has none, whose
//! selector) lives in a Deployment, ReplicaSet or PodTemplate. The planner
//! plans an effective Rollout with that template filled in; nothing of it is
//! written back to the Rollout's spec. For a Deployment it also decides the
//! Deployment's own replica count under `scaleDown`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{PodTemplate, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Plan, PlannedEvent, Snapshot};
use crate::api::validate::Problem;
use crate::api::{
    POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase, RolloutStatus, WorkloadKind, WorkloadScaleDown,
};

/// The referenced workload as the controller's cache holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// A Deployment's `spec.paused`.
    pub paused: bool,
    /// Whether the workload's own controller has acted on its latest
    /// generation (`status.observedGeneration`); always true for kinds
    /// without one.
    pub observed: bool,
    pub template: PodTemplateSpec,
    /// A PodTemplate has none.
    pub selector: Option<LabelSelector>,
    /// The Deployment's (or ReplicaSet's) own `spec.replicas`.
    pub replicas: Option<i32>,
}

impl Workload {
    pub fn from_deployment(deployment: &Deployment) -> Self {
        let spec = deployment.spec.clone().unwrap_or_default();
        let generation = deployment.metadata.generation.unwrap_or_default();
        let observed = deployment
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some_and(|seen| seen >= generation);
        Workload {
            kind: WorkloadKind::Deployment,
            name: deployment.metadata.name.clone().unwrap_or_default(),
            uid: deployment.metadata.uid.clone().unwrap_or_default(),
            generation,
            paused: spec.paused.unwrap_or(false),
            observed,
            template: spec.template,
            selector: Some(spec.selector),
            // The API server defaults an unset count to 1.
            replicas: Some(spec.replicas.unwrap_or(1)),
        }
    }

    pub fn from_replica_set(replica_set: &ReplicaSet) -> Self {
        let spec = replica_set.spec.clone().unwrap_or_default();
        Workload {
            kind: WorkloadKind::ReplicaSet,
            name: replica_set.metadata.name.clone().unwrap_or_default(),
            uid: replica_set.metadata.uid.clone().unwrap_or_default(),
            generation: replica_set.metadata.generation.unwrap_or_default(),
            paused: false,
            observed: true,
            template: spec.template.unwrap_or_default(),
            selector: Some(spec.selector),
            replicas: Some(spec.replicas.unwrap_or(1)),
        }
    }

    pub fn from_pod_template(pod_template: &PodTemplate) -> Self {
        Workload {
            kind: WorkloadKind::PodTemplate,
            name: pod_template.metadata.name.clone().unwrap_or_default(),
            uid: pod_template.metadata.uid.clone().unwrap_or_default(),
            paused: false,
            observed: true,
            // PodTemplates carry no generation; every change is a new
            // resourceVersion, and the template hash tells revisions apart.
            generation: pod_template.metadata.generation.unwrap_or_default(),
            template: pod_template.template.clone().unwrap_or_default(),
            selector: None,
            replicas: None,
        }
    }
}

/// Scale the referenced Deployment to `replicas` (only `spec.replicas` is
/// written; everything else about the Deployment stays its owner's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadScale {
    pub name: String,
    pub replicas: i32,
}

/// What the Rollout's reference resolves to.
pub(super) enum Resolved {
    /// The Rollout carries its own template.
    NotReferenced,
    /// The reference is malformed or its workload cannot be used.
    Invalid(Vec<Problem>),
    /// The Rollout with the workload's template (and selector) filled in.
    Found(Box<(Rollout, Workload)>),
}

pub(super) fn resolve(snap: &Snapshot<'_>) -> Resolved {
    let rollout = snap.rollout;
    let Some(reference) = &rollout.spec.workload_ref else {
        return Resolved::NotReferenced;
    };
    // The reference itself (kind, name, scaleDown, an empty own template)
    // is judged before the workload is looked for.
    let problems = crate::api::validate::validate_rollout(&rollout.spec);
    if !problems.is_empty() {
        return Resolved::Invalid(problems);
    }
    let Some(workload) = snap.workload else {
        return Resolved::Invalid(vec![Problem {
            field: "spec.workloadRef".into(),
            message: format!(
                "{} {:?} not found in namespace {}; create it or fix the name",
                reference.kind,
                reference.name,
                snap.namespace()
            ),
        }]);
    };
    let Some(selector) = effective_selector(rollout, Some(workload)) else {
        return Resolved::Invalid(vec![Problem {
            field: "spec.selector".into(),
            message: format!(
                "{} {:?} has no selector to take; set spec.selector",
                workload.kind.kind(),
                workload.name
            ),
        }]);
    };
    let mut effective = rollout.clone();
    effective.spec.workload_ref = None;
    effective.spec.template = workload.template.clone();
    effective.spec.selector = selector;
    Resolved::Found(Box::new((effective, workload.clone())))
}

/// The selector the Rollout's pods are found by: its own, or when it has
/// none, that of the workload it references. None when neither has one.
pub fn effective_selector(rollout: &Rollout, workload: Option<&Workload>) -> Option<LabelSelector> {
    let own = &rollout.spec.selector;
    let has_own = own.match_labels.as_ref().is_some_and(|l| !l.is_empty())
        || own
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty());
    match workload {
        Some(workload) if !has_own => workload.selector.clone(),
        _ => Some(own.clone()),
    }
}

/// Records which generation of the workload the status describes and
/// decides the Deployment's replica count. `plan` was made for the
/// effective Rollout; `rollout` is the Rollout as stored.
pub(super) fn finish(rollout: &Rollout, workload: &Workload, plan: &mut Plan) {
    let observed = workload.generation.to_string();
    let prev = rollout.status.clone().unwrap_or_default();
    let current = plan.status.as_ref().unwrap_or(&prev);
    if current.workload_observed_generation.as_deref() != Some(observed.as_str()) {
        plan.status
            .get_or_insert_with(|| prev.clone())
            .workload_observed_generation = Some(observed);
    }
    let status = plan.status.as_ref().unwrap_or(&prev);
    let Some(reference) = &rollout.spec.workload_ref else {
        return;
    };
    let mode = reference
        .scale_down_mode()
        .unwrap_or(WorkloadScaleDown::Never);
    let Some(current) = workload.replicas else {
        return;
    };
    if workload.kind != WorkloadKind::Deployment {
        return;
    }
    let Some(target) = deployment_target(mode, rollout.replicas(), current, status) else {
        return;
    };
    if target == current {
        return;
    }
    plan.events.push(PlannedEvent {
        warning: false,
        reason: "ScalingDeployment",
        message: format!(
            "Scaled Deployment {} from {current} to {target} (workloadRef.scaleDown: {})",
            workload.name,
            match mode {
                WorkloadScaleDown::Never => "never",
                WorkloadScaleDown::OnSuccess => "onsuccess",
                WorkloadScaleDown::Progressively => "progressively",
            }
        ),
    });
    plan.workload_scale = Some(WorkloadScale {
        name: workload.name.clone(),
        replicas: target,
    });
}

/// The referenced Deployment's replica count under `mode`, or None to
/// leave it as it is.
///
/// `onsuccess` drains it once the Rollout is Healthy. `progressively` hands
/// over pod by pod while the Rollout's first revision comes up: the
/// Deployment keeps what the Rollout still lacks of its desired ready pods.
/// Once the Rollout has a stable revision it has taken over, and the
/// Deployment stays at 0 through later updates. Unlike Argo, the Deployment
/// is never scaled *up*: a Deployment someone scaled to 0 by hand is not
/// revived because the Rollout's pods are not ready yet.
fn deployment_target(
    mode: WorkloadScaleDown,
    desired: i32,
    current: i32,
    status: &RolloutStatus,
) -> Option<i32> {
    let healthy = status.phase == Some(RolloutPhase::Healthy);
    match mode {
        WorkloadScaleDown::Never => None,
        WorkloadScaleDown::OnSuccess => healthy.then_some(0),
        WorkloadScaleDown::Progressively if healthy || status.stable_rs.is_some() => Some(0),
        WorkloadScaleDown::Progressively => {
            let lacking = desired.saturating_sub(status.ready_replicas).max(0);
            Some(lacking.min(current))
        }
    }
}

/// The label the Deployment controller puts on its ReplicaSets and pods.
pub const DEPLOYMENT_HASH_LABEL: &str = "pod-template-hash";

/// Taking a running Deployment's ReplicaSet over as the Rollout's first
/// revision, so that adopting a Deployment replaces no pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    pub replica_set: String,
    /// Pods to label with the Rollout's hash before the ReplicaSet changes
    /// hands (label selector).
    pub pods: String,
    pub hash: String,
    /// Merge patch for the ReplicaSet: the Rollout as its controller, the
    /// hash label on it and its template, preconditioned on its version.
    pub patch: serde_json::Value,
}

/// Whether the Rollout may take the pods of its Deployment over: a
/// Deployment with `scaleDown` other than `never` (a Rollout told to leave
/// the Deployment alone does not take its ReplicaSet either) and a Rollout
/// that has no ReplicaSet and no stable revision yet. The controller then
/// lists the Deployment's ReplicaSets into `Snapshot::workload_replica_sets`.
pub fn handover_pending(rollout: &Rollout, owned: usize, workload: Option<&Workload>) -> bool {
    let Some(workload) = workload else {
        return false;
    };
    let mode = rollout
        .spec
        .workload_ref
        .as_ref()
        .and_then(|r| r.scale_down_mode().ok())
        .unwrap_or(WorkloadScaleDown::Never);
    workload.kind == WorkloadKind::Deployment
        && mode != WorkloadScaleDown::Never
        && owned == 0
        && rollout
            .status
            .as_ref()
            .is_none_or(|s| s.stable_rs.is_none())
}

/// The plan that hands the Deployment's running ReplicaSet over, or None
/// when there is nothing to take (the Rollout then starts its own pods and
/// `scaleDown` drains the Deployment).
///
/// Two passes. First the Deployment is paused: a Deployment that loses its
/// ReplicaSet would otherwise create a new one at once. Once its controller
/// has seen the pause, the ReplicaSet's pods get the Rollout's hash label
/// (the ReplicaSet's own `pod-template-hash`), and then the ReplicaSet
/// itself gets the Rollout as its controller (never passing through having
/// none, which the Deployment controller would re-adopt) and the label.
/// From the next pass it is the Rollout's first revision, by content.
/// `snap` holds the resolved Rollout; `rollout` is the Rollout as stored
/// (its `workloadRef` says the scale-down mode).
pub(super) fn handover(
    snap: &Snapshot<'_>,
    rollout: &Rollout,
    workload: &Workload,
) -> Option<Plan> {
    if !handover_pending(rollout, snap.replica_sets.len(), Some(workload)) {
        return None;
    }
    let running = snap.workload_replica_sets.iter().find(|rs| {
        let controlled = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == workload.uid);
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        controlled && replicas > 0 && super::hash::deployment_set_runs(rs, &workload.template)
    })?;
    let hash = running
        .metadata
        .labels
        .as_ref()?
        .get(DEPLOYMENT_HASH_LABEL)?
        .clone();
    let name = running.metadata.name.clone()?;
    if !workload.paused {
        return Some(Plan {
            workload_pause: Some(workload.name.clone()),
            events: vec![PlannedEvent {
                warning: false,
                reason: "PausingDeployment",
                message: format!(
                    "Paused Deployment {} to take its ReplicaSet {name} over with its pods",
                    workload.name
                ),
            }],
            // The Deployment's watch brings the pause back; this covers a
            // missed event.
            requeue_after: Some(std::time::Duration::from_secs(2)),
            ..Plan::default()
        });
    }
    if !workload.observed {
        // Its controller may still act on the unpaused spec.
        return Some(Plan {
            requeue_after: Some(std::time::Duration::from_secs(1)),
            ..Plan::default()
        });
    }
    let selector = running
        .spec
        .as_ref()
        .map(|s| super::label_selector_string(&s.selector))
        .unwrap_or_default();
    let owner = super::owner_reference(rollout)?;
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": running.metadata.resource_version,
            "ownerReferences": [owner],
            "labels": {POD_TEMPLATE_HASH_LABEL: hash},
        },
        "spec": {"template": {"metadata": {"labels": {POD_TEMPLATE_HASH_LABEL: hash}}}},
    });
    Some(Plan {
        handover: Some(Handover {
            replica_set: name.clone(),
            pods: selector,
            hash: hash.clone(),
            patch,
        }),
        events: vec![PlannedEvent {
            warning: false,
            reason: "ReplicaSetAdopted",
            message: format!(
                "Took ReplicaSet {name} over from Deployment {}; its pods keep running",
                workload.name
            ),
        }],
        ..Plan::default()
    })
}

/// A Rollout that no longer references a workload drops the generation it
/// recorded for one.
pub(super) fn forget_generation(rollout: &Rollout, plan: &mut Plan) {
    let prev = rollout.status.clone().unwrap_or_default();
    let current = plan.status.as_ref().unwrap_or(&prev);
    if current.workload_observed_generation.is_some() {
        plan.status
            .get_or_insert_with(|| prev.clone())
            .workload_observed_generation = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: RolloutPhase, ready: i32, stable: Option<&str>) -> RolloutStatus {
        RolloutStatus {
            phase: Some(phase),
            ready_replicas: ready,
            stable_rs: stable.map(String::from),
            ..RolloutStatus::default()
        }
    }

    #[test]
    fn progressively_keeps_what_the_first_revision_still_lacks() {
        let mode = WorkloadScaleDown::Progressively;
        let progressing = |ready| status(RolloutPhase::Progressing, ready, None);
        assert_eq!(deployment_target(mode, 4, 4, &progressing(0)), Some(4));
        assert_eq!(deployment_target(mode, 4, 4, &progressing(1)), Some(3));
        assert_eq!(deployment_target(mode, 4, 3, &progressing(4)), Some(0));
        // Never above what the Deployment runs now.
        assert_eq!(deployment_target(mode, 4, 1, &progressing(0)), Some(1));
        // Healthy, or any later revision: drained.
        let healthy = status(RolloutPhase::Healthy, 4, Some("abc"));
        assert_eq!(deployment_target(mode, 4, 2, &healthy), Some(0));
        let later = status(RolloutPhase::Progressing, 1, Some("abc"));
        assert_eq!(deployment_target(mode, 4, 0, &later), Some(0));
    }

    #[test]
    fn onsuccess_waits_for_healthy_and_never_leaves_alone() {
        let progressing = status(RolloutPhase::Progressing, 3, None);
        let healthy = status(RolloutPhase::Healthy, 4, Some("abc"));
        let on_success = WorkloadScaleDown::OnSuccess;
        assert_eq!(deployment_target(on_success, 4, 4, &progressing), None);
        assert_eq!(deployment_target(on_success, 4, 4, &healthy), Some(0));
        let never = WorkloadScaleDown::Never;
        assert_eq!(deployment_target(never, 4, 4, &healthy), None);
    }
}
