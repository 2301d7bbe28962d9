//! The pure planner: a snapshot of one Rollout and everything it owns, plus
//! `now`, goes in; a plan of writes, the desired status, Events and the next
//! wake-up time comes out. No I/O happens here, so every decision the
//! controller makes can be tested with plain fixtures.

pub mod adopt;
pub mod analysis;
mod bluegreen;
mod canary;
pub mod coalesce;
mod conditions;
mod ephemeral;
pub mod hash;
pub mod replicas;
pub mod restart;
mod rollback;
pub mod traffic;
pub mod webhooks;
pub mod workload;

pub use canary::weight_at;
pub use conditions::{label_selector_string, selector_string};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use kube::Resource;

use crate::api::validate::{summarize, validate_rollout};
use crate::api::{
    AnalysisRun, AnalysisTemplateSpec, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout,
    RolloutPhase, RolloutStatus, SCALE_DOWN_DEADLINE_ANNOTATION, TEMPLATE_DIGEST_ANNOTATION,
};
use conditions::Conditions;
use hash::{TemplateHash, template_hash};

/// Everything the planner may look at for one Rollout.
#[derive(Clone)]
pub struct Snapshot<'a> {
    pub rollout: &'a Rollout,
    /// ReplicaSets whose controller owner is this Rollout.
    pub replica_sets: Vec<&'a ReplicaSet>,
    /// Services the Rollout names, by name; a missing entry means "not found".
    pub services: BTreeMap<String, &'a Service>,
    /// AnalysisRuns whose controller owner is this Rollout.
    pub analysis_runs: Vec<&'a AnalysisRun>,
    /// Templates by (cluster scoped, name), for creating AnalysisRuns.
    pub analysis_templates: BTreeMap<(bool, String), &'a AnalysisTemplateSpec>,
    /// Whether runs built from ClusterAnalysisTemplates may read Secrets.
    /// Off by default: a cluster-wide template would otherwise read the
    /// Secrets of every namespace that uses it.
    pub cluster_templates_read_secrets: bool,
    /// The rollout's pods; loaded only while a restart is pending (see `restart::pending_restart`).
    pub pods: Option<Vec<PodInfo>>,
    /// The route objects `trafficRouting` names (see `traffic::referenced_routes`);
    /// a missing entry means "not found".
    pub routes: traffic::LiveRoutes<'a>,
    /// Answers the controller got from question webhooks and has not seen
    /// recorded in status yet (see `webhooks`).
    pub webhook_answers: Vec<webhooks::HookAnswer>,
    /// ReplicaSets in the Rollout's namespace with the pod-template-hash
    /// label and no controller: the planner adopts those its selector
    /// selects (see `adopt`).
    pub orphans: Vec<&'a ReplicaSet>,
    /// The ReplicaSets of the `workloadRef` Deployment, listed only while
    /// `workload::handover_pending`.
    pub workload_replica_sets: Vec<&'a ReplicaSet>,
    /// The workload `spec.workloadRef` names, as cached; None when the
    /// Rollout names none or it does not exist.
    pub workload: Option<&'a workload::Workload>,
    pub now: Timestamp,
}

/// What a restart needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub hash: String,
    pub created: Timestamp,
    pub terminating: bool,
}

/// What the controller should do, in order: ReplicaSets, Services, AnalysisRuns, status, Events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub replica_sets: Vec<ReplicaSetChange>,
    pub services: Vec<ServiceSelectorChange>,
    pub analysis_runs: Vec<AnalysisRunChange>,
    /// Traffic router changes, applied after the Services.
    pub routes: Vec<traffic::RoutePatch>,
    /// Pods to evict (restart), through the Eviction API so disruption budgets hold.
    pub evictions: Vec<String>,
    /// Role metadata to apply to the live pods of a ReplicaSet (by hash).
    pub pod_metadata: Vec<PodMetadataChange>,
    /// The full desired status, or None when it equals the observed one
    /// or its write waits (`status_deferred`).
    pub status: Option<RolloutStatus>,
    /// Only the replica counts changed, soon after the Rollout progressed:
    /// the write waits until then (`requeue_after` wakes the Rollout), and
    /// any earlier status write carries the counts (see `coalesce`).
    pub status_deferred: Option<Timestamp>,
    pub events: Vec<PlannedEvent>,
    /// When to look again even if nothing changes (timed pause, delays, deadlines).
    pub requeue_after: Option<Duration>,
    /// Add (true) or remove (false) the traffic-routing finalizer; None
    /// leaves the Rollout's finalizers as they are.
    pub finalizer: Option<bool>,
    /// Webhooks to call: questions at once, the others after the status write.
    pub webhooks: Vec<webhooks::WebhookCall>,
    /// ReplicaSets this plan must write whose snapshot copy lacks the pod
    /// template (see `hash::drop_drained_template`). The plan is incomplete:
    /// carry nothing out, plan again with these read in full.
    pub needs_templates: Vec<String>,
    /// The `workloadRef` Deployment's own replica count (`scaleDown`).
    pub workload_scale: Option<workload::WorkloadScale>,
    /// Pause the `workloadRef` Deployment of this name (before its
    /// ReplicaSet is taken over; see `workload::handover`).
    pub workload_pause: Option<String>,
    /// Take the Deployment's running ReplicaSet over.
    pub handover: Option<workload::Handover>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaSetChange {
    /// Server-side apply of the complete desired object.
    Apply(Box<ReplicaSet>),
    Delete {
        name: String,
    },
}

/// Point the Service's `rollouts-pod-template-hash` selector key at `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSelectorChange {
    pub service: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnalysisRunChange {
    Create(Box<AnalysisRun>),
    Terminate { name: String },
    Delete { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMetadataChange {
    pub hash: String,
    pub metadata: crate::api::ReplicaSetRoleMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Observed facts about one ReplicaSet, plus what the planner wants for it.
#[derive(Debug, Clone)]
pub(crate) struct RsState<'a> {
    pub rs: Option<&'a ReplicaSet>,
    pub name: String,
    pub hash: String,
    pub revision: i64,
    pub current: i32,
    pub available: i32,
    pub ready: i32,
    pub observed_replicas: i32,
    pub deadline: Option<Timestamp>,
    pub desired: i32,
    pub desired_deadline: Option<Timestamp>,
    /// Role metadata the pods carry now, and should carry.
    pub injected: crate::api::PodMetadata,
    pub desired_injected: crate::api::PodMetadata,
}

impl RsState<'_> {
    /// Scaled to exactly `count` with every pod available.
    pub fn is_saturated(&self, count: i32) -> bool {
        self.rs.is_some() && self.current == count && self.available >= count
    }
}

/// Working state shared by the strategy planners.
pub(crate) struct Ctx<'a> {
    pub snap: &'a Snapshot<'a>,
    pub rollout: &'a Rollout,
    pub now: Timestamp,
    pub hash: TemplateHash,
    pub prev: RolloutStatus,
    pub status: RolloutStatus,
    pub conditions: Conditions,
    /// Index of the new ReplicaSet in `sets`.
    pub new: usize,
    /// Index of the stable ReplicaSet in `sets`, if one exists.
    pub stable: Option<usize>,
    pub sets: Vec<RsState<'a>>,
    pub services: BTreeMap<String, String>,
    pub analysis_runs: Vec<AnalysisRunChange>,
    /// Runs some gate asked for in this pass; any other unfinished run is terminated.
    pub wanted_runs: BTreeSet<String>,
    pub evictions: Vec<String>,
    pub events: Vec<PlannedEvent>,
    pub wake_at: Option<Timestamp>,
    /// Set when a run failed or a deadline aborted the rollout in this pass.
    pub abort_reason: Option<String>,
    /// Human-readable reason the rollout is waiting, for status.message.
    pub waiting_for: Option<String>,
    /// Pods created before spec.restartAt are still being replaced.
    pub restarting: bool,
    /// Whether this revision is a way back to one that already ran.
    pub rollback: rollback::Rollback,
    pub route_patches: Vec<traffic::RoutePatch>,
    pub webhook_calls: Vec<webhooks::WebhookCall>,
    /// A webhook gate holds the rollout in this pass.
    pub webhook_hold: bool,
}

impl<'a> Ctx<'a> {
    pub fn event(&mut self, reason: &'static str, message: impl Into<String>) {
        self.events.push(PlannedEvent {
            warning: false,
            reason,
            message: message.into(),
        });
    }

    pub fn warning(&mut self, reason: &'static str, message: impl Into<String>) {
        self.events.push(PlannedEvent {
            warning: true,
            reason,
            message: message.into(),
        });
    }

    pub fn wake_at(&mut self, at: Timestamp) {
        if self.wake_at.is_none_or(|current| at < current) {
            self.wake_at = Some(at);
        }
    }

    pub fn new_set(&self) -> &RsState<'a> {
        &self.sets[self.new]
    }

    pub fn stable_set(&self) -> Option<&RsState<'a>> {
        self.stable.map(|i| &self.sets[i])
    }

    /// True when the new ReplicaSet is the stable one (nothing to roll out).
    pub fn new_is_stable(&self) -> bool {
        self.stable == Some(self.new)
    }

    /// Request a Service selector; the rule that a Service never points at a
    /// ReplicaSet without available pods is enforced here, in one place.
    pub fn route(&mut self, service: Option<&str>, set: usize) {
        let Some(service) = service else { return };
        let target = &self.sets[set];
        if target.available == 0 {
            return;
        }
        self.services
            .insert(service.to_string(), target.hash.clone());
    }

    /// The hash a Service selects after this plan: the planned change, else what it selects now.
    pub fn service_hash(&self, service: &str) -> Option<String> {
        self.services.get(service).cloned().or_else(|| {
            self.snap.services.get(service).and_then(|s| {
                s.spec
                    .as_ref()?
                    .selector
                    .as_ref()?
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
            })
        })
    }

    /// An inconclusive analysis stands: until a human promotes or aborts, no
    /// step advances, nothing scales, no Service switches and nothing is
    /// promoted, whatever timers run out meanwhile (Argo's `haltProgress`).
    pub fn halted_by_inconclusive_analysis(&self) -> bool {
        !self.status.abort
            && self
                .status
                .pause_conditions
                .iter()
                .any(|c| c.reason == crate::api::PauseReason::InconclusiveAnalysisRun)
    }

    /// Keeps every ReplicaSet at the size it has now.
    pub fn freeze_replica_sets(&mut self) {
        for set in &mut self.sets {
            set.desired = set.current;
            set.desired_deadline = set.deadline;
        }
    }

    pub fn abort(&mut self, reason: String) {
        if !self.status.abort {
            self.status.abort = true;
        }
        // Recorded in the same pass that decides the abort, so the next pass
        // sees it as an old abort and does not announce it a second time.
        if self.status.aborted_at.is_none() {
            self.status.aborted_at = Some(self.time());
        }
        self.abort_reason = Some(reason);
    }

    pub fn time(&self) -> Time {
        Time(self.now)
    }
}

/// Decide what to do for one Rollout.
pub fn plan(snap: &Snapshot<'_>) -> Plan {
    match workload::resolve(snap) {
        workload::Resolved::NotReferenced => {
            let mut plan = plan_with(snap, Vec::new());
            workload::forget_generation(snap.rollout, &mut plan);
            plan
        }
        workload::Resolved::Invalid(problems) => plan_with(snap, problems),
        workload::Resolved::Found(resolved) => {
            let (effective, found) = *resolved;
            let resolved = Snapshot {
                rollout: &effective,
                ..snap.clone()
            };
            if let Some(plan) = workload::handover(&resolved, snap.rollout, &found) {
                return plan;
            }
            let mut plan = plan_with(&resolved, Vec::new());
            workload::finish(snap.rollout, &found, &mut plan);
            plan
        }
    }
}

/// Plans the Rollout in `snap`; `found` are problems already known about it
/// (a workload reference that cannot be resolved).
fn plan_with(snap: &Snapshot<'_>, found: Vec<crate::api::validate::Problem>) -> Plan {
    let mut adopted = adopt::adoptable(snap.rollout, &snap.orphans);
    // A cache that has yet to show our adoption still lists the orphan,
    // while our own write of it is already among the Rollout's.
    adopted.retain(|orphan| {
        !snap
            .replica_sets
            .iter()
            .any(|rs| rs.metadata.name == orphan.metadata.name)
    });
    if adopted.is_empty() || !found.is_empty() {
        let mut plan = plan_rollout(snap, found);
        traffic::release::finish_plan(snap, &mut plan);
        return plan;
    }
    // Orphans are planned as the Rollout's own; the plan's write of each
    // puts the Rollout's controller reference on it.
    let mut replica_sets = snap.replica_sets.clone();
    replica_sets.extend(adopted.iter().copied());
    let with_orphans = Snapshot {
        replica_sets,
        orphans: Vec::new(),
        ..snap.clone()
    };
    let mut plan = plan_rollout(&with_orphans, found);
    traffic::release::finish_plan(&with_orphans, &mut plan);
    for orphan in adopted {
        let name = orphan.metadata.name.clone().unwrap_or_default();
        let written = plan.replica_sets.iter().any(
            |change| matches!(change, ReplicaSetChange::Apply(rs) if rs.metadata.name.as_ref() == Some(&name)),
        );
        if written {
            plan.events.push(PlannedEvent {
                warning: false,
                reason: "ReplicaSetAdopted",
                message: format!(
                    "Adopted ReplicaSet {name}, which had no controller; its pods keep running"
                ),
            });
        }
    }
    plan
}

fn plan_rollout(snap: &Snapshot<'_>, found: Vec<crate::api::validate::Problem>) -> Plan {
    let rollout = snap.rollout;
    let prev = rollout.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    status.observed_generation = rollout.metadata.generation;
    let mut conditions = Conditions::new(std::mem::take(&mut status.conditions), snap.now);

    let mut problems = found;
    if problems.is_empty() {
        problems = validate_rollout(&rollout.spec);
    }
    let missing_services = problems.is_empty() && add_missing_services(snap, &mut problems);
    let route_problems = problems.is_empty() && add_route_problems(snap, &mut problems);
    let template_problems = problems
        .is_empty()
        .then(|| analysis::check_template_references(snap));
    let missing_templates = template_problems.as_ref().is_some_and(|p| !p.is_empty());
    problems.extend(template_problems.unwrap_or_default());
    if !problems.is_empty() {
        let message = format!("invalid spec: {}", summarize(&problems));
        let mut events = Vec::new();
        if conditions.set("InvalidSpec", true, "InvalidSpec", &message) {
            events.push(PlannedEvent {
                warning: true,
                reason: "InvalidSpec",
                message: message.clone(),
            });
        }
        // A Rollout that was Healthy is not any more; one that never ran
        // gets no Healthy condition, only InvalidSpec, as under Argo.
        if conditions.get("Healthy").is_some() {
            conditions.set("Healthy", false, "InvalidSpec", &message);
        }
        status.conditions = conditions.into_vec();
        status.phase = Some(RolloutPhase::Degraded);
        status.message = Some(message);
        // Services are not watched unless Ramp manages them, so look again
        // for a missing one; templates are watched, the requeue only covers
        // a missed event.
        let requeue_after = (missing_services || missing_templates || route_problems)
            .then_some(Duration::from_secs(15));
        return Plan {
            status: (status != prev).then_some(status),
            events,
            requeue_after,
            ..Plan::default()
        };
    }
    conditions.remove("InvalidSpec");

    let hash = match_existing_replica_set(
        snap,
        template_hash(&rollout.spec.template, status.collision_count),
    );
    let own_name = rollout.metadata.name.clone().unwrap_or_default();
    let new_name = format!("{own_name}-{}", hash.short);
    if let Some(existing) = snap
        .replica_sets
        .iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(&new_name))
    {
        let digest = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TEMPLATE_DIGEST_ANNOTATION));
        if digest.is_some_and(|d| *d != hash.digest) {
            let count = status.collision_count.unwrap_or(0) + 1;
            status.collision_count = Some(count);
            status.conditions = conditions.into_vec();
            let message = format!(
                "ReplicaSet {new_name} already exists with a different template; collisionCount is now {count}"
            );
            return Plan {
                status: Some(status),
                events: vec![PlannedEvent {
                    warning: false,
                    reason: "HashCollision",
                    message,
                }],
                requeue_after: Some(Duration::ZERO),
                ..Plan::default()
            };
        }
    }

    let mut sets: Vec<RsState<'_>> = snap.replica_sets.iter().map(|rs| observe(rs)).collect();
    sets.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.name.cmp(&b.name))
    });
    let max_revision = sets.iter().map(|s| s.revision).max().unwrap_or(0);
    let new = match sets.iter().position(|s| s.hash == hash.short) {
        Some(index) => index,
        None => {
            sets.push(RsState {
                rs: None,
                name: new_name,
                hash: hash.short.clone(),
                revision: max_revision + 1,
                current: 0,
                available: 0,
                ready: 0,
                observed_replicas: 0,
                deadline: None,
                desired: 0,
                desired_deadline: None,
                injected: Default::default(),
                desired_injected: Default::default(),
            });
            sets.len() - 1
        }
    };
    let stable = status
        .stable_rs
        .as_ref()
        .and_then(|h| sets.iter().position(|s| &s.hash == h));

    let mut ctx = Ctx {
        snap,
        rollout,
        now: snap.now,
        hash,
        prev: prev.clone(),
        status,
        conditions,
        new,
        stable,
        sets,
        services: BTreeMap::new(),
        analysis_runs: Vec::new(),
        wanted_runs: BTreeSet::new(),
        evictions: Vec::new(),
        events: Vec::new(),
        wake_at: None,
        abort_reason: None,
        waiting_for: None,
        restarting: false,
        rollback: rollback::Rollback::default(),
        route_patches: Vec::new(),
        webhook_calls: Vec::new(),
        webhook_hold: false,
    };
    ctx.rollback = rollback::classify(&ctx);
    // A rollback to an old template makes that ReplicaSet the newest revision again.
    if ctx.sets[ctx.new].rs.is_some()
        && ctx.sets[ctx.new].revision < max_revision
        && !ctx.new_is_stable()
    {
        ctx.sets[ctx.new].revision = max_revision + 1;
    }

    if ctx.status.current_pod_hash.as_deref() != Some(ctx.hash.short.as_str()) {
        start_new_revision(&mut ctx);
        webhooks::start_revision(&mut ctx, false);
        if ctx.rollback.fast {
            let why = if ctx.rollback.within_window {
                "within spec.rollbackWindow"
            } else {
                "still scaled up within scaleDownDelaySeconds"
            };
            ctx.event(
                "SkipSteps",
                format!(
                    "Rolling back to revision {} ({}), {why}: steps, pauses and analysis are skipped",
                    ctx.sets[ctx.new].revision, ctx.hash.short
                ),
            );
        }
    }
    check_steps_changed(&mut ctx);
    if ctx.status.promote_full || ctx.rollback.within_window {
        // A full promotion, or a rollback within the window, wins over an
        // abort and every pause (Argo clears both before it skips the
        // remaining steps).
        ctx.status.abort = false;
        ctx.status.aborted_at = None;
        ctx.status.pause_conditions.clear();
        ctx.status.controller_pause = false;
    }
    if !ctx.status.abort && ctx.status.aborted_at.is_some() {
        retry(&mut ctx);
        webhooks::start_revision(&mut ctx, true);
    }
    if ctx.status.abort && ctx.status.aborted_at.is_none() {
        ctx.status.aborted_at = Some(ctx.time());
    }
    if !ctx.status.abort {
        ctx.status.aborted_at = None;
    }

    if rollout.spec.strategy.blue_green.is_some() {
        bluegreen::plan(&mut ctx);
    } else {
        canary::plan(&mut ctx);
    }
    if !ctx.status.abort {
        restart::plan(&mut ctx);
    }
    analysis::cleanup_history(&mut ctx);
    finish(ctx)
}

/// When no ReplicaSet carries the template's hash, one may still run the
/// same template (after `undo`, the Rollout holds that ReplicaSet's defaulted
/// copy): it is reused under its own hash instead of creating a duplicate.
fn match_existing_replica_set(snap: &Snapshot<'_>, computed: TemplateHash) -> TemplateHash {
    let hash_of = |rs: &ReplicaSet| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            .cloned()
    };
    if snap
        .replica_sets
        .iter()
        .any(|rs| hash_of(rs).as_deref() == Some(computed.short.as_str()))
    {
        return computed;
    }
    snap.replica_sets
        .iter()
        .filter(|rs| hash::replica_set_runs(rs, &snap.rollout.spec.template))
        .find_map(|rs| {
            Some(TemplateHash {
                short: hash_of(rs)?,
                // An adopted ReplicaSet (see `adopt`) has no digest of ours.
                digest: rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TEMPLATE_DIGEST_ANNOTATION))
                    .cloned()
                    .unwrap_or_else(|| computed.digest.clone()),
            })
        })
        .unwrap_or(computed)
}

/// The Services a Rollout names, with the field that names them.
pub fn referenced_services(rollout: &Rollout) -> Vec<(&'static str, String)> {
    let strategy = &rollout.spec.strategy;
    let mut names = Vec::new();
    if let Some(canary) = &strategy.canary {
        names.extend(
            canary
                .canary_service
                .clone()
                .map(|n| ("spec.strategy.canary.canaryService", n)),
        );
        names.extend(
            canary
                .stable_service
                .clone()
                .map(|n| ("spec.strategy.canary.stableService", n)),
        );
    }
    if let Some(bg) = &strategy.blue_green {
        names.push((
            "spec.strategy.blueGreen.activeService",
            bg.active_service.clone(),
        ));
        names.extend(
            bg.preview_service
                .clone()
                .map(|n| ("spec.strategy.blueGreen.previewService", n)),
        );
    }
    names
}

impl Snapshot<'_> {
    /// The Rollout's namespace, for messages that tell the user where to look.
    pub(crate) fn namespace(&self) -> &str {
        self.rollout
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }
}

fn add_missing_services(
    snap: &Snapshot<'_>,
    problems: &mut Vec<crate::api::validate::Problem>,
) -> bool {
    let namespace = snap.namespace();
    let before = problems.len();
    for (field, name) in referenced_services(snap.rollout) {
        if !snap.services.contains_key(&name) {
            problems.push(crate::api::validate::Problem {
                field: field.to_string(),
                message: format!(
                    "Service {name:?} not found in namespace {namespace}; create it or fix the name"
                ),
            });
        }
    }
    problems.len() > before
}

/// Route objects that cannot carry the split (missing, no backends for the
/// two Services, no subsets) stop the rollout before any weight moves.
fn add_route_problems(
    snap: &Snapshot<'_>,
    problems: &mut Vec<crate::api::validate::Problem>,
) -> bool {
    let Some(canary) = &snap.rollout.spec.strategy.canary else {
        return false;
    };
    let Some(routing) = traffic::Routing::new(canary, snap.namespace(), &snap.routes) else {
        return false;
    };
    let found = routing.check(&routing.desired(0, None, "", ""));
    let any = !found.is_empty();
    problems.extend(found);
    any
}

fn observe(rs: &ReplicaSet) -> RsState<'_> {
    let annotations = rs.metadata.annotations.as_ref();
    let revision = annotations
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let deadline = annotations
        .and_then(|a| a.get(SCALE_DOWN_DEADLINE_ANNOTATION))
        .and_then(|d| d.parse::<Timestamp>().ok());
    let hash = rs
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
        .cloned()
        .unwrap_or_default();
    let current = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = rs.status.as_ref();
    // Right after a scale-down the status still counts pods being removed.
    let available = status
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(current);
    RsState {
        rs: Some(rs),
        name: rs.metadata.name.clone().unwrap_or_default(),
        hash,
        revision,
        current,
        available,
        ready: status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            .min(current),
        observed_replicas: status.map(|s| s.replicas).unwrap_or(0),
        deadline,
        desired: current,
        desired_deadline: deadline,
        injected: ephemeral::injected(rs.metadata.annotations.as_ref()),
        desired_injected: ephemeral::injected(rs.metadata.annotations.as_ref()),
    }
}

fn start_new_revision(ctx: &mut Ctx<'_>) {
    let previous = ctx.status.current_pod_hash.replace(ctx.hash.short.clone());
    let status = &mut ctx.status;
    status.current_step_index = Some(0);
    status.pause_conditions.clear();
    status.controller_pause = false;
    status.abort = false;
    status.aborted_at = None;
    status.promote_full = false;
    status.retry_count = 0;
    if let Some(bg) = status.blue_green.as_mut() {
        bg.scale_up_preview_check_point = false;
        bg.pre_promotion_analysis_run_status = None;
        bg.post_promotion_analysis_run_status = None;
    }
    if let Some(canary) = status.canary.as_mut() {
        canary.current_step_analysis_run_status = None;
        canary.current_background_analysis_run_status = None;
    }
    ctx.conditions.remove("Completed");
    if let Some(previous) = previous {
        ctx.event(
            "RolloutUpdated",
            format!(
                "Pod template changed: rolling out revision {} (hash {} replaces {previous})",
                ctx.sets[ctx.new].revision, ctx.hash.short
            ),
        );
    }
}

/// `kubectl ramp retry` cleared `status.abort`: run the steps again with fresh AnalysisRuns.
fn retry(ctx: &mut Ctx<'_>) {
    ctx.status.retry_count += 1;
    ctx.status.current_step_index = Some(0);
    ctx.status.pause_conditions.clear();
    ctx.status.controller_pause = false;
    if let Some(bg) = ctx.status.blue_green.as_mut() {
        bg.scale_up_preview_check_point = false;
    }
    ctx.event(
        "RolloutRetry",
        format!(
            "Retrying the rollout of revision {} (attempt {})",
            ctx.sets[ctx.new].revision,
            ctx.status.retry_count + 1
        ),
    );
}

fn check_steps_changed(ctx: &mut Ctx<'_>) {
    let steps = ctx
        .rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map(|c| serde_json::to_vec(&c.steps).unwrap_or_default());
    let step_hash = steps.map(|bytes| format!("{:08x}", hash::fnv1a32(&bytes)));
    if step_hash != ctx.status.current_step_hash {
        if ctx.status.current_step_hash.is_some() && !ctx.new_is_stable() {
            ctx.status.current_step_index = Some(0);
            ctx.status.pause_conditions.clear();
            ctx.status.controller_pause = false;
            ctx.event(
                "RolloutUpdated",
                "Canary steps changed: restarting from step 0",
            );
        }
        ctx.status.current_step_hash = step_hash;
    }
}

/// Turns the working state into a Plan: ReplicaSet writes for every changed
/// set, Service changes, status, and the nearest wake-up.
fn finish(mut ctx: Ctx<'_>) -> Plan {
    let mut plan = Plan::default();
    let rollout = ctx.rollout;
    cleanup_old_replica_sets(&mut ctx, &mut plan);
    ephemeral::assign(&mut ctx);
    // Scale-downs are written before scale-ups: a controller that dies
    // between two writes then leaves fewer pods, never more than
    // replicas + maxSurge.
    let mut scale_ups = Vec::new();
    for index in 0..ctx.sets.len() {
        let set = &ctx.sets[index];
        let desired_annotation = set.desired_deadline.map(|d| d.to_string());
        let observed_annotation = set.deadline.map(|d| d.to_string());
        let revision_changed = set.rs.is_some_and(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                != Some(&set.revision.to_string())
        });
        let relabel = set.desired_injected != set.injected;
        if set.rs.is_some() && relabel {
            plan.pod_metadata.push(PodMetadataChange {
                hash: set.hash.clone(),
                metadata: ephemeral::difference(&set.injected, &set.desired_injected),
            });
        }
        if set.rs.is_some()
            && set.desired == set.current
            && desired_annotation == observed_annotation
            && !revision_changed
            && !relabel
        {
            continue;
        }
        if set.rs.is_none() && index != ctx.new {
            continue;
        }
        let verb = if set.rs.is_none() {
            "Created"
        } else if set.desired > set.current {
            "Scaled up"
        } else if set.desired < set.current {
            "Scaled down"
        } else {
            ""
        };
        let message = match verb {
            "Created" => Some((
                "NewReplicaSetCreated",
                format!(
                    "Created ReplicaSet {} (revision {}) with {} replicas",
                    set.name, set.revision, set.desired
                ),
            )),
            "" => None,
            verb => Some((
                "ScalingReplicaSet",
                format!(
                    "{verb} ReplicaSet {} (revision {}) from {} to {}",
                    set.name, set.revision, set.current, set.desired
                ),
            )),
        };
        let Some(desired) = desired_replica_set(rollout, set, &ctx.hash, index == ctx.new) else {
            plan.needs_templates.push(set.name.clone());
            continue;
        };
        let change = ReplicaSetChange::Apply(Box::new(desired));
        if set.rs.is_some() && set.desired < set.current {
            plan.replica_sets.push(change);
        } else {
            scale_ups.push(change);
        }
        if let Some((reason, message)) = message {
            ctx.event(reason, message);
        }
    }
    plan.replica_sets.extend(scale_ups);
    // Cloned, not taken: the status computed below reads the planned
    // selectors (a blue/green switch reports the new active set at once).
    for (service, hash) in ctx.services.clone() {
        let current = ctx.snap.services.get(&service).and_then(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .and_then(|sel| sel.get(POD_TEMPLATE_HASH_LABEL))
                .cloned()
        });
        if current.as_deref() == Some(hash.as_str()) {
            continue;
        }
        let from = current.unwrap_or_else(|| "(none)".into());
        ctx.event(
            "SwitchService",
            format!("Switched selector for Service {service} from {from} to {hash}"),
        );
        plan.services.push(ServiceSelectorChange { service, hash });
    }
    if !ctx.webhook_hold {
        webhooks::release(&mut ctx);
    }
    conditions::finish_status(&mut ctx);
    plan.webhooks = webhooks::finish(&mut ctx);
    plan.analysis_runs = std::mem::take(&mut ctx.analysis_runs);
    plan.evictions = std::mem::take(&mut ctx.evictions);
    plan.routes = std::mem::take(&mut ctx.route_patches);
    plan.events = std::mem::take(&mut ctx.events);
    let mut status = ctx.status;
    status.conditions = ctx.conditions.into_vec();
    // A pass that announces something (an Event, a webhook told after the
    // write) writes its status at once; only silent count changes wait.
    let silent = plan.events.is_empty() && plan.webhooks.is_empty();
    let pods_settling = ctx.sets.iter().any(|set| {
        set.rs.is_some() && (set.observed_replicas != set.current || set.available < set.current)
    });
    plan.status = match coalesce::decide(rollout.status.as_ref(), &status, ctx.now, pods_settling) {
        coalesce::StatusWrite::Unchanged => None,
        coalesce::StatusWrite::After(due) if silent => {
            ctx.wake_at = Some(ctx.wake_at.map_or(due, |at| at.min(due)));
            plan.status_deferred = Some(due);
            None
        }
        coalesce::StatusWrite::After(_) | coalesce::StatusWrite::Now => Some(status),
    };
    if let Some(at) = ctx.wake_at {
        let wait = at.duration_since(ctx.now);
        plan.requeue_after = Some(
            Duration::try_from(wait)
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(100)),
        );
    }
    plan
}

/// Deletes scaled-down ReplicaSets beyond revisionHistoryLimit, oldest first.
fn cleanup_old_replica_sets(ctx: &mut Ctx<'_>, plan: &mut Plan) {
    let limit = ctx
        .rollout
        .spec
        .revision_history_limit
        .unwrap_or(crate::api::DEFAULT_REVISION_HISTORY_LIMIT)
        .max(0) as usize;
    let removable: Vec<usize> = (0..ctx.sets.len())
        .filter(|&i| i != ctx.new && Some(i) != ctx.stable)
        .filter(|&i| {
            let set = &ctx.sets[i];
            set.rs.is_some() && set.desired == 0 && set.current == 0 && set.observed_replicas == 0
        })
        .collect();
    let excess = removable.len().saturating_sub(limit);
    for &index in removable.iter().take(excess) {
        let name = ctx.sets[index].name.clone();
        plan.replica_sets
            .push(ReplicaSetChange::Delete { name: name.clone() });
        ctx.event(
            "ReplicaSetDeleted",
            format!("Deleted old ReplicaSet {name} (beyond revisionHistoryLimit {limit})"),
        );
    }
}

/// The complete ReplicaSet the controller applies. The pod template is the
/// Rollout's (new ReplicaSet) or the observed one (older ReplicaSets), so an
/// apply never rewrites what pods run. None when an older ReplicaSet's
/// template is not in the snapshot.
fn desired_replica_set(
    rollout: &Rollout,
    set: &RsState<'_>,
    hash: &TemplateHash,
    is_new: bool,
) -> Option<ReplicaSet> {
    let mut annotations = BTreeMap::new();
    annotations.insert(REVISION_ANNOTATION.to_string(), set.revision.to_string());
    if let Some(deadline) = set.desired_deadline {
        annotations.insert(
            SCALE_DOWN_DEADLINE_ANNOTATION.to_string(),
            deadline.to_string(),
        );
    }
    // The Rollout's template as this set's pods run it: with the hash label.
    let from_rollout = || {
        let mut template: PodTemplateSpec = rollout.spec.template.clone();
        let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), set.hash.clone());
        template
    };
    let (template, selector, digest) = match set.rs {
        Some(rs) => {
            let spec = rs.spec.clone().unwrap_or_default();
            let digest = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TEMPLATE_DIGEST_ANNOTATION))
                .cloned();
            let template = match spec.template {
                Some(template) => template,
                // The new set runs the Rollout's template (by hash, or by
                // content after an undo): the snapshot needs no copy of it.
                None if is_new => from_rollout(),
                None => return None,
            };
            (template, spec.selector, digest)
        }
        None => {
            let mut selector: LabelSelector = rollout.spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(POD_TEMPLATE_HASH_LABEL.into(), set.hash.clone());
            (from_rollout(), selector, Some(hash.digest.clone()))
        }
    };
    if let Some(digest) = digest {
        annotations.insert(TEMPLATE_DIGEST_ANNOTATION.to_string(), digest);
    }
    let mut template = template;
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    let change = ephemeral::difference(&set.injected, &set.desired_injected);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    for key in &change.removed_labels {
        labels.remove(key);
    }
    labels.extend(change.set.labels.clone());
    let pod_annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    for key in &change.removed_annotations {
        pod_annotations.remove(key);
    }
    pod_annotations.extend(change.set.annotations.clone());
    if pod_annotations.is_empty() {
        metadata.annotations = None;
    }
    if set.desired_injected != crate::api::PodMetadata::default() {
        annotations.insert(
            crate::api::EPHEMERAL_METADATA_ANNOTATION.to_string(),
            serde_json::to_string(&set.desired_injected).unwrap_or_default(),
        );
    }
    // The ReplicaSet's own labels are the template's minus the role labels,
    // so the role never changes what selects the ReplicaSet itself.
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .map(|mut labels| {
            for key in set.desired_injected.labels.keys() {
                labels.remove(key);
            }
            labels
        });
    Some(ReplicaSet {
        metadata: ObjectMeta {
            name: Some(set.name.clone()),
            namespace: rollout.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: owner_reference(rollout).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(set.desired),
            min_ready_seconds: rollout.spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    })
}

/// Controller owner reference to the Rollout, so garbage collection removes
/// what it owns and watches map children back to it.
pub fn owner_reference(rollout: &Rollout) -> Option<OwnerReference> {
    let mut reference = rollout.controller_owner_ref(&())?;
    reference.block_owner_deletion = Some(true);
    Some(reference)
}

#[cfg(test)]
mod tests;
