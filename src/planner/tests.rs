//! Planner tests. `World` is a tiny in-memory cluster: it applies a plan the
//! way the API server and ReplicaSet controller would (ReplicaSets scale,
//! pods become available unless told otherwise, Services switch, status is
//! stored) so multi-step rollouts can be walked through synchronously.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::*;
use crate::api::{AnalysisPhase, AnalysisRunStatus, PauseReason, RolloutStatus};

fn rollout(strategy: Value, replicas: i32) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "ramp.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]}
            },
            "strategy": strategy
        }
    }))
    .expect("fixture rollout is valid")
}

fn canary(steps: Value) -> Value {
    json!({"canary": {"canaryService": "web-canary", "stableService": "web-stable", "steps": steps}})
}

fn blue_green(extra: Value) -> Value {
    let mut strategy = json!({"activeService": "web-active", "previewService": "web-preview"});
    if let (Some(target), Some(source)) = (strategy.as_object_mut(), extra.as_object()) {
        target.extend(source.clone());
    }
    json!({"blueGreen": strategy})
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .expect("fixture service is valid")
}

struct World {
    rollout: Rollout,
    replica_sets: BTreeMap<String, ReplicaSet>,
    services: BTreeMap<String, Service>,
    runs: BTreeMap<String, AnalysisRun>,
    templates: BTreeMap<(bool, String), AnalysisTemplateSpec>,
    now: Timestamp,
    /// Hashes whose pods never become available.
    broken: Vec<String>,
    events: Vec<PlannedEvent>,
    /// Index into `events` where the last user action (image change,
    /// promote, abort, retry, time passing) happened; `has_event` looks only
    /// at what came after it, so an Event from an earlier step cannot pass.
    events_mark: usize,
    last_plan: Plan,
    pods: Option<Vec<PodInfo>>,
    relabelled: Vec<PodMetadataChange>,
    cluster_templates_read_secrets: bool,
    /// Route objects, patched as the API server would (generation bumps on
    /// a spec change); while `gateway_accepts`, the gateway then reports
    /// the new generation Accepted and ResolvedRefs.
    routes: BTreeMap<crate::planner::traffic::RouteRef, kube::api::DynamicObject>,
    gateway_accepts: bool,
    route_patches: Vec<crate::planner::traffic::RoutePatch>,
    /// What each webhook (by name) answers; a hook without an entry never
    /// answers (its question stays in flight).
    webhook_replies: BTreeMap<String, crate::planner::webhooks::HookOutcome>,
    webhook_answers: Vec<crate::planner::webhooks::HookAnswer>,
    /// Questions asked, in order, and hooks told (only after a status write, as the controller does).
    asked: Vec<crate::planner::webhooks::WebhookCall>,
    told: Vec<crate::planner::webhooks::WebhookCall>,
    /// The workload `workloadRef` names, if it exists; the planner's scale
    /// changes to a Deployment are applied to it and recorded in order.
    workload: Option<crate::planner::workload::Workload>,
    workload_scales: Vec<i32>,
    /// ReplicaSets with no controller in the namespace (adoption).
    orphans: Vec<ReplicaSet>,
    /// The `workloadRef` Deployment's own ReplicaSets.
    deployment_sets: Vec<ReplicaSet>,
}

impl World {
    fn new(rollout: Rollout) -> Self {
        let mut services = BTreeMap::new();
        for name in ["web-canary", "web-stable", "web-active", "web-preview"] {
            services.insert(name.to_string(), service(name));
        }
        World {
            rollout,
            replica_sets: BTreeMap::new(),
            services,
            runs: BTreeMap::new(),
            templates: BTreeMap::new(),
            now: "2026-01-01T00:00:00Z".parse().expect("valid time"),
            broken: Vec::new(),
            events: Vec::new(),
            events_mark: 0,
            last_plan: Plan::default(),
            pods: None,
            relabelled: Vec::new(),
            cluster_templates_read_secrets: false,
            routes: BTreeMap::new(),
            gateway_accepts: true,
            route_patches: Vec::new(),
            webhook_replies: BTreeMap::new(),
            webhook_answers: Vec::new(),
            asked: Vec::new(),
            told: Vec::new(),
            workload: None,
            workload_scales: Vec::new(),
            orphans: Vec::new(),
            deployment_sets: Vec::new(),
        }
    }

    /// Plans as the controller does: from a cache in which drained
    /// ReplicaSets have no template, reading in full those a plan needs.
    fn plan(&self) -> Plan {
        let cached = self.cached_replica_sets();
        let plan = self.plan_from(&cached);
        if plan.needs_templates.is_empty() {
            return plan;
        }
        let filled: Vec<ReplicaSet> = cached
            .into_iter()
            .map(|rs| {
                let name = rs.metadata.name.clone().unwrap_or_default();
                match plan.needs_templates.contains(&name) {
                    true => self.replica_sets.get(&name).cloned().unwrap_or(rs),
                    false => rs,
                }
            })
            .collect();
        let plan = self.plan_from(&filled);
        assert!(
            plan.needs_templates.is_empty(),
            "a plan with every template it asked for asks again: {:?}",
            plan.needs_templates
        );
        plan
    }

    /// The ReplicaSets as the controller's cache holds them.
    fn cached_replica_sets(&self) -> Vec<ReplicaSet> {
        self.replica_sets
            .values()
            .map(|rs| {
                let mut rs = rs.clone();
                crate::planner::hash::drop_drained_template(&mut rs);
                rs
            })
            .collect()
    }

    fn plan_from(&self, replica_sets: &[ReplicaSet]) -> Plan {
        let snapshot = Snapshot {
            rollout: &self.rollout,
            replica_sets: replica_sets.iter().collect(),
            services: self.services.iter().map(|(k, v)| (k.clone(), v)).collect(),
            analysis_runs: self.runs.values().collect(),
            analysis_templates: self.templates.iter().map(|(k, v)| (k.clone(), v)).collect(),
            cluster_templates_read_secrets: self.cluster_templates_read_secrets,
            pods: self.pods.clone(),
            routes: self.routes.iter().map(|(k, v)| (k.clone(), v)).collect(),
            webhook_answers: self.webhook_answers.clone(),
            orphans: self.orphans.iter().collect(),
            // Listed only while a takeover is possible, as the controller does.
            workload_replica_sets: match crate::planner::workload::handover_pending(
                &self.rollout,
                replica_sets.len(),
                self.workload.as_ref(),
            ) {
                true => self.deployment_sets.iter().collect(),
                false => Vec::new(),
            },
            workload: self.workload.as_ref(),
            now: self.now,
        };
        plan(&snapshot)
    }

    /// Plans once and applies the plan; returns whether anything changed.
    fn step(&mut self) -> bool {
        let plan = self.plan();
        self.apply(plan)
    }

    /// Carries a plan out the way the API server would (pods of healthy
    /// hashes become available at once); returns whether anything changed.
    fn apply(&mut self, plan: Plan) -> bool {
        let answered = self.answer_webhooks(&plan);
        let changed = answered
            || !plan.replica_sets.is_empty()
            || plan.finalizer.is_some()
            || !plan.services.is_empty()
            || !plan.analysis_runs.is_empty()
            || !plan.routes.is_empty()
            || plan.workload_scale.is_some()
            || plan.workload_pause.is_some()
            || plan.handover.is_some()
            || plan.status.is_some();
        if let (Some(_), Some(workload)) = (&plan.workload_pause, self.workload.as_mut()) {
            workload.paused = true;
            workload.generation += 1;
            // Its controller has yet to see the pause; a test says when.
            workload.observed = false;
        }
        if let Some(handover) = &plan.handover {
            let index = self
                .deployment_sets
                .iter()
                .position(|rs| rs.metadata.name.as_ref() == Some(&handover.replica_set))
                .expect("the taken ReplicaSet is the Deployment's");
            let rs = self.deployment_sets.remove(index);
            let mut document = serde_json::to_value(&rs).expect("serializes");
            json_patch::merge(&mut document, &handover.patch);
            let taken: ReplicaSet = serde_json::from_value(document).expect("deserializes");
            self.replica_sets
                .insert(handover.replica_set.clone(), taken);
        }
        if let (Some(change), Some(workload)) = (&plan.workload_scale, self.workload.as_mut()) {
            assert_eq!(
                change.name, workload.name,
                "only the referenced Deployment is scaled"
            );
            workload.replicas = Some(change.replicas);
            // A change of spec.replicas is a new generation of a Deployment.
            workload.generation += 1;
            self.workload_scales.push(change.replicas);
        }
        for change in &plan.routes {
            self.patch_route(change);
        }
        for change in &plan.replica_sets {
            match change {
                ReplicaSetChange::Apply(rs) => {
                    let mut rs = (**rs).clone();
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    let hash = rs
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
                        .cloned()
                        .unwrap_or_default();
                    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    let available = if self.broken.contains(&hash) {
                        0
                    } else {
                        replicas
                    };
                    // The API server stamps creation once; a later apply keeps it.
                    rs.metadata.creation_timestamp = self
                        .replica_sets
                        .get(&name)
                        .and_then(|old| old.metadata.creation_timestamp.clone())
                        .or(Some(Time(self.now)));
                    rs.status = Some(ReplicaSetStatus {
                        replicas,
                        ready_replicas: Some(available),
                        available_replicas: Some(available),
                        ..Default::default()
                    });
                    // An adopted orphan is the Rollout's from now on.
                    self.orphans
                        .retain(|o| o.metadata.name.as_ref() != Some(&name));
                    self.replica_sets.insert(name, rs);
                }
                ReplicaSetChange::Delete { name } => {
                    self.replica_sets.remove(name);
                }
            }
        }
        for change in &plan.services {
            let selector = self
                .services
                .get_mut(&change.service)
                .and_then(|s| s.spec.as_mut())
                .and_then(|s| s.selector.as_mut());
            if let Some(selector) = selector {
                selector.insert(POD_TEMPLATE_HASH_LABEL.to_string(), change.hash.clone());
            }
        }
        for change in &plan.analysis_runs {
            match change {
                AnalysisRunChange::Create(run) => {
                    let mut run = (**run).clone();
                    run.metadata.creation_timestamp = Some(Time(self.now));
                    self.runs
                        .insert(run.metadata.name.clone().unwrap_or_default(), run);
                }
                AnalysisRunChange::Terminate { name } => {
                    if let Some(run) = self.runs.get_mut(name) {
                        run.spec.terminate = Some(true);
                    }
                }
                AnalysisRunChange::Delete { name } => {
                    self.runs.remove(name);
                }
            }
        }
        if let Some(status) = &plan.status {
            self.rollout.status = Some(status.clone());
        }
        if let Some(present) = plan.finalizer {
            let finalizers = self
                .rollout
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new);
            finalizers.retain(|f| f != crate::api::TRAFFIC_ROUTING_FINALIZER);
            if present {
                finalizers.push(crate::api::TRAFFIC_ROUTING_FINALIZER.to_string());
            }
        }
        self.events.extend(plan.events.iter().cloned());
        self.relabelled.extend(plan.pod_metadata.iter().cloned());
        self.last_plan = plan;
        changed
    }

    /// Questions are answered by `webhook_replies` (once per attempt, as
    /// the controller's runner does); the rest are told only when the
    /// plan's status write happens. Returns whether a new answer arrived.
    fn answer_webhooks(&mut self, plan: &Plan) -> bool {
        let mut answered = false;
        for call in &plan.webhooks {
            if !call.is_question() {
                if plan.status.is_some() {
                    self.told.push(call.clone());
                }
                continue;
            }
            // Like the controller's runner: each attempt is sent once.
            let sent = self.asked.iter().any(|a| {
                a.hook.name == call.hook.name
                    && a.pod_template_hash == call.pod_template_hash
                    && a.round == call.round
                    && a.attempt == call.attempt
            });
            if sent {
                continue;
            }
            self.asked.push(call.clone());
            if let Some(outcome) = self.webhook_replies.get(&call.hook.name) {
                self.webhook_answers
                    .push(crate::planner::webhooks::HookAnswer {
                        hook: call.hook.name.clone(),
                        pod_template_hash: call.pod_template_hash.clone(),
                        round: call.round.clone(),
                        attempt: call.attempt,
                        at: self.now,
                        outcome: outcome.clone(),
                    });
                answered = true;
            }
        }
        answered
    }

    fn patch_route(&mut self, change: &crate::planner::traffic::RoutePatch) {
        let object = self
            .routes
            .get_mut(&change.target)
            .expect("patched route exists");
        let mut document = serde_json::to_value(&*object).expect("route serializes");
        let operations: json_patch::Patch =
            serde_json::from_value(Value::Array(change.operations.clone())).expect("valid patch");
        json_patch::patch(&mut document, &operations).expect("patch tests hold");
        let before = object.data["spec"].clone();
        let mut patched: kube::api::DynamicObject =
            serde_json::from_value(document).expect("route deserializes");
        if patched.data["spec"] != before {
            patched.metadata.generation = Some(patched.metadata.generation.unwrap_or(1) + 1);
        }
        self.route_patches.push(change.clone());
        *object = patched;
        if self.gateway_accepts {
            accept_route(object);
        }
    }

    /// Steps until nothing changes (bounded, so a livelock fails the test).
    /// A status write the planner defers happens when the controller's
    /// requeue comes, so the clock moves on to it.
    fn settle(&mut self) {
        for _ in 0..50 {
            if !self.step() {
                match self.last_plan.status_deferred {
                    Some(due) => self.now = due,
                    None => return,
                }
            }
        }
        panic!("planner did not settle; last plan: {:#?}", self.last_plan);
    }

    /// Starts a new window for `has_event`.
    fn mark(&mut self) {
        self.events_mark = self.events.len();
    }

    fn advance(&mut self, seconds: i64) {
        self.mark();
        self.now = self
            .now
            .checked_add(SignedDuration::from_secs(seconds))
            .expect("time in range");
    }

    fn status(&self) -> RolloutStatus {
        self.rollout.status.clone().unwrap_or_default()
    }

    fn phase(&self) -> RolloutPhase {
        self.status().phase.expect("phase is always set")
    }

    fn set_image(&mut self, image: &str) {
        self.mark();
        if let Some(spec) = self.rollout.spec.template.spec.as_mut() {
            spec.containers[0].image = Some(image.into());
        }
        self.rollout.metadata.generation = self.rollout.metadata.generation.map(|g| g + 1);
    }

    fn hash_for(&self, image: &str) -> String {
        let mut template = self.rollout.spec.template.clone();
        if let Some(spec) = template.spec.as_mut() {
            spec.containers[0].image = Some(image.into());
        }
        hash::template_hash(&template, None).short
    }

    fn replicas_of(&self, image: &str) -> i32 {
        let hash = self.hash_for(image);
        self.replica_sets
            .values()
            .find(|rs| {
                rs.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
                    == Some(&hash)
            })
            .and_then(|rs| rs.spec.as_ref()?.replicas)
            .unwrap_or(0)
    }

    fn selector(&self, service: &str) -> Option<String> {
        self.services[service]
            .spec
            .as_ref()?
            .selector
            .as_ref()?
            .get(POD_TEMPLATE_HASH_LABEL)
            .cloned()
    }

    fn promote(&mut self) {
        self.mark();
        if let Some(status) = self.rollout.status.as_mut() {
            status.pause_conditions.clear();
        }
        self.rollout.spec.paused = None;
    }

    fn abort(&mut self) {
        self.mark();
        if let Some(status) = self.rollout.status.as_mut() {
            status.abort = true;
        }
    }

    fn retry(&mut self) {
        self.mark();
        if let Some(status) = self.rollout.status.as_mut() {
            status.abort = false;
        }
    }

    /// An Event with this reason since the last user action.
    fn has_event(&self, reason: &str) -> bool {
        self.recent_events().any(|e| e.reason == reason)
    }

    fn has_warning(&self, reason: &str) -> bool {
        self.recent_events()
            .any(|e| e.reason == reason && e.warning)
    }

    fn recent_events(&self) -> impl Iterator<Item = &PlannedEvent> {
        self.events[self.events_mark..].iter()
    }

    fn set_run_phase(&mut self, name_suffix: &str, phase: AnalysisPhase) {
        let run = self.runs.values_mut().find(|r| {
            r.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with(name_suffix))
        });
        let run = run.unwrap_or_else(|| panic!("no AnalysisRun ending in {name_suffix}"));
        run.status = Some(AnalysisRunStatus {
            phase: Some(phase),
            message: Some(format!("metric says {phase:?}")),
            ..Default::default()
        });
    }
}

fn deployed(world: &mut World) {
    world.settle();
    assert_eq!(
        world.phase(),
        RolloutPhase::Healthy,
        "{:#?}",
        world.status()
    );
}

// ---------- canary ----------

fn standard_canary() -> World {
    let steps =
        json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "5s"}}]);
    World::new(rollout(canary(steps), 5))
}

#[test]
fn initial_canary_deploy_skips_steps_and_points_both_services_at_the_new_hash() {
    let mut world = standard_canary();
    deployed(&mut world);
    let hash = world.hash_for("web:1");
    assert_eq!(world.replicas_of("web:1"), 5);
    assert_eq!(world.status().stable_rs.as_deref(), Some(hash.as_str()));
    assert_eq!(world.selector("web-stable"), Some(hash.clone()));
    assert_eq!(world.selector("web-canary"), Some(hash));
    assert_eq!(world.status().current_step_index, Some(4));
    assert!(world.has_event("NewReplicaSetCreated"));
    assert!(world.has_event("RolloutCompleted"));
}

#[test]
fn canary_walks_its_steps_with_documented_counts() {
    let mut world = standard_canary();
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (1, 4)
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(
        world.status().pause_conditions[0].reason,
        PauseReason::CanaryPauseStep
    );
    assert_eq!(world.selector("web-canary"), Some(world.hash_for("web:2")));
    assert_eq!(world.selector("web-stable"), Some(world.hash_for("web:1")));
    assert_eq!(
        world
            .status()
            .canary
            .and_then(|c| c.weights)
            .map(|w| w.canary.weight),
        Some(20)
    );

    world.promote();
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (3, 2)
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(world.status().current_step_index, Some(3));
    let wait = world.last_plan.requeue_after;
    assert!(
        wait.is_some_and(|w| w <= Duration::from_secs(5)),
        "timed pause must requeue: {wait:?}"
    );

    world.advance(5);
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (5, 0)
    );
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:2")));
    assert_eq!(world.selector("web-stable"), Some(world.hash_for("web:2")));
    assert!(world.has_event("RolloutStepCompleted"));
    assert!(world.has_event("RolloutResumed"));
}

#[test]
fn timed_pause_does_not_resume_early() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 40}, {"pause": {"duration": 30}}])),
        5,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.advance(29);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    world.advance(1);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
}

#[test]
fn abort_returns_replicas_and_services_to_stable_and_retry_runs_steps_again() {
    let mut world = standard_canary();
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.promote();
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (3, 2)
    );

    world.abort();
    world.settle();
    let stable = world.hash_for("web:1");
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (0, 5)
    );
    assert_eq!(world.selector("web-canary"), Some(stable.clone()));
    assert_eq!(world.selector("web-stable"), Some(stable));
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(
        world
            .status()
            .message
            .unwrap_or_default()
            .contains("RolloutAborted")
    );
    assert!(world.has_warning("RolloutAborted"));

    world.retry();
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (1, 4)
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(world.status().current_step_index, Some(1));
    assert!(world.has_event("RolloutRetry"));
}

#[test]
fn promote_full_skips_remaining_steps() {
    let mut world = standard_canary();
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    if let Some(status) = world.rollout.status.as_mut() {
        status.promote_full = true;
    }
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (5, 0)
    );
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(!world.status().promote_full);
}

#[test]
fn new_template_mid_rollout_supersedes_the_old_canary() {
    let mut world = standard_canary();
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.set_image("web:3");
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 0);
    assert_eq!(
        (world.replicas_of("web:3"), world.replicas_of("web:1")),
        (1, 4)
    );
    assert_eq!(world.status().current_step_index, Some(1));
    assert_eq!(world.selector("web-canary"), Some(world.hash_for("web:3")));
}

#[test]
fn canary_that_never_becomes_available_hits_the_progress_deadline() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"pause": {}}])),
        5,
    ));
    world.rollout.spec.progress_deadline_seconds = Some(60);
    deployed(&mut world);
    let bad = world.hash_for("web:bad");
    world.broken.push(bad.clone());
    world.set_image("web:bad");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Progressing);
    assert_eq!(world.status().current_step_index, Some(0));
    // The canary Service never points at pods that are not available.
    assert_eq!(world.selector("web-canary"), Some(world.hash_for("web:1")));
    assert!(world.last_plan.requeue_after.is_some());
    world.advance(61);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(
        world
            .status()
            .message
            .unwrap_or_default()
            .contains("ProgressDeadlineExceeded")
    );
    assert!(world.has_event("ProgressDeadlineExceeded"));
    assert_eq!(world.replicas_of("web:1"), 4, "stable keeps serving");
    assert!(!world.status().abort);
}

#[test]
fn progress_deadline_abort_returns_to_stable() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"pause": {}}])),
        5,
    ));
    world.rollout.spec.progress_deadline_seconds = Some(60);
    world.rollout.spec.progress_deadline_abort = Some(true);
    deployed(&mut world);
    let bad = world.hash_for("web:bad");
    world.broken.push(bad);
    world.set_image("web:bad");
    world.settle();
    world.advance(61);
    world.settle();
    assert!(world.status().abort);
    assert_eq!(
        (world.replicas_of("web:bad"), world.replicas_of("web:1")),
        (0, 5)
    );
    assert_eq!(world.phase(), RolloutPhase::Degraded);
}

#[test]
fn manual_pause_freezes_and_resume_continues() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"setWeight": 60}])),
        5,
    ));
    deployed(&mut world);
    world.rollout.spec.paused = Some(true);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(world.status().message.as_deref(), Some("manually paused"));
    world.rollout.spec.paused = None;
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.replicas_of("web:2"), 5);
}

#[test]
fn set_canary_scale_overrides_the_canary_count_only() {
    let steps = json!([{"setWeight": 20}, {"setCanaryScale": {"replicas": 3}}, {"pause": {}}]);
    let mut world = World::new(rollout(canary(steps), 5));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (3, 4)
    );
}

#[test]
fn no_writes_when_everything_is_in_the_desired_state() {
    let mut world = standard_canary();
    deployed(&mut world);
    let plan = world.plan();
    assert_eq!(
        plan,
        Plan {
            requeue_after: plan.requeue_after,
            ..Plan::default()
        }
    );
    world.set_image("web:2");
    world.settle();
    let plan = world.plan();
    assert!(
        plan.replica_sets.is_empty() && plan.services.is_empty() && plan.status.is_none(),
        "{plan:#?}"
    );
}

/// The bench's update (no steps, one replica): the pod of the new set is
/// created before it is ready. That count change alone waits, and the
/// promotion a moment later writes it along with everything else.
#[test]
fn a_count_change_right_after_progress_rides_on_the_next_write() {
    let mut world = World::new(rollout(canary(json!([])), 1));
    deployed(&mut world);
    let new = world.hash_for("web:2");
    world.broken.push(new.clone());
    world.set_image("web:2");
    assert!(world.step(), "the new ReplicaSet and status are written");
    assert_eq!(world.status().updated_replicas, 0);

    // Its pod exists, not ready yet: counts only.
    let plan = world.plan();
    assert!(
        plan.status.is_none() && plan.replica_sets.is_empty(),
        "{plan:#?}"
    );
    let due = plan.status_deferred.expect("the count write waits");
    assert_eq!(due.duration_since(world.now).as_secs(), 10);
    assert!(
        plan.requeue_after
            .is_some_and(|d| d <= Duration::from_secs(10))
    );

    // The pod becomes ready before then: one write carries the counts and
    // the promotion.
    world.broken.clear();
    world.apply(Plan::default());
    for rs in world.replica_sets.values_mut() {
        if let Some(status) = rs.status.as_mut() {
            status.ready_replicas = Some(status.replicas);
            status.available_replicas = Some(status.replicas);
        }
    }
    let plan = world.plan();
    let status = plan.status.clone().expect("promotion writes status");
    assert_eq!(status.stable_rs.as_deref(), Some(new.as_str()));
    assert_eq!(status.updated_replicas, 1);
    assert_eq!(status.replicas, 2);
    assert!(plan.status_deferred.is_none());

    // The old set drains; with every ReplicaSet settled no later change
    // would carry the final counts, so they go out at once.
    world.apply(plan);
    let plan = world.plan();
    assert_eq!(plan.status.map(|s| s.replicas), Some(1));
    assert!(plan.status_deferred.is_none());
}

/// A pod that never becomes ready: the counts are written once the delay
/// has passed, so status never hides a pod for long.
#[test]
fn a_count_change_is_written_after_the_delay_when_nothing_follows() {
    let mut world = World::new(rollout(canary(json!([])), 1));
    deployed(&mut world);
    world.broken.push(world.hash_for("web:2"));
    world.set_image("web:2");
    world.step();
    let due = world.plan().status_deferred.expect("deferred");
    world.now = due;
    let plan = world.plan();
    let status = plan.status.expect("written at the deadline");
    assert_eq!((status.replicas, status.updated_replicas), (2, 1));
}

#[test]
fn old_replica_sets_beyond_history_limit_are_deleted() {
    let mut world = World::new(rollout(canary(json!([])), 2));
    world.rollout.spec.revision_history_limit = Some(1);
    deployed(&mut world);
    for image in ["web:2", "web:3", "web:4"] {
        world.set_image(image);
        world.settle();
    }
    assert_eq!(
        world.replica_sets.len(),
        2,
        "{:?}",
        world.replica_sets.keys().collect::<Vec<_>>()
    );
    assert!(world.has_event("ReplicaSetDeleted"));
}

#[test]
fn replica_set_carries_hash_revision_owner_and_digest() {
    let mut world = standard_canary();
    deployed(&mut world);
    let hash = world.hash_for("web:1");
    let rs = &world.replica_sets[&format!("web-{hash}")];
    let labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref()?.metadata.as_ref()?.labels.clone())
        .unwrap_or_default();
    assert_eq!(template_labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
    let annotations = rs.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(REVISION_ANNOTATION).map(String::as_str),
        Some("1")
    );
    assert!(annotations.contains_key(TEMPLATE_DIGEST_ANNOTATION));
    let owner = &rs
        .metadata
        .owner_references
        .as_ref()
        .expect("owner reference")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Rollout", Some(true))
    );
}

#[test]
fn hash_collision_bumps_collision_count() {
    let mut world = standard_canary();
    let hash = world.hash_for("web:1");
    let impostor: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": format!("web-{hash}"), "namespace": "shop",
            "labels": {POD_TEMPLATE_HASH_LABEL: hash},
            "annotations": {TEMPLATE_DIGEST_ANNOTATION: "0000000000000000", REVISION_ANNOTATION: "1"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .expect("fixture");
    world.replica_sets.insert(format!("web-{hash}"), impostor);
    world.step();
    assert_eq!(world.status().collision_count, Some(1));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_ne!(world.status().stable_rs, Some(hash));
}

// ---------- invalid specs ----------

#[test]
fn invalid_spec_sets_condition_and_touches_nothing() {
    let mut world = standard_canary();
    deployed(&mut world);
    let before = world.replica_sets.clone();
    world.rollout.spec.strategy.blue_green =
        Some(serde_json::from_value(json!({"activeService": "web-active"})).expect("fixture"));
    let plan = world.plan();
    assert!(plan.replica_sets.is_empty() && plan.services.is_empty());
    world.step();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let condition = world
        .status()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "InvalidSpec")
        .expect("InvalidSpec condition");
    assert!(
        condition
            .message
            .unwrap_or_default()
            .contains("keep exactly one strategy")
    );
    assert!(
        world
            .events
            .iter()
            .any(|e| e.reason == "InvalidSpec" && e.warning)
    );
    assert_eq!(world.replica_sets, before);
    // The Event is emitted once, not on every pass.
    let again = world.plan();
    assert!(again.events.is_empty() && again.status.is_none());
}

#[test]
fn missing_service_is_reported_and_retried() {
    let mut world = standard_canary();
    world.services.remove("web-canary");
    world.step();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("web-canary") && message.contains("not found"),
        "{message}"
    );
    assert!(world.replica_sets.is_empty());
    assert!(world.last_plan.requeue_after.is_some());
    world
        .services
        .insert("web-canary".into(), service("web-canary"));
    deployed(&mut world);
}

#[test]
fn validation_messages_name_the_field_and_the_fix() {
    let cases: &[(Value, &str)] = &[
        (
            canary(json!([{"setWeight": 120}])),
            "spec.strategy.canary.steps[0].setWeight: 120 is not a percentage",
        ),
        (
            canary(json!([{"pause": {"duration": "5x"}}])),
            "steps[0].pause.duration: invalid duration \"5x\"",
        ),
        (
            canary(json!([{"experiment": {}}])),
            "unknown step \"experiment\"",
        ),
        (
            canary(json!([{"setWeight": 10, "pause": {}}])),
            "found setWeight and pause",
        ),
        (
            json!({"canary": {"canaryService": "a", "stableService": "a"}}),
            "use two different Services",
        ),
        (
            json!({"canary": {"maxSurge": "1"}}),
            "\"1%\" for a percentage",
        ),
        (json!({}), "set either canary or blueGreen"),
        (
            json!({"canary": {"antiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": {"weight": 1}}}}),
            "spec.strategy.canary.antiAffinity: not supported yet",
        ),
        (
            json!({"canary": {"minPodsPerReplicaSet": 2}}),
            "spec.strategy.canary.minPodsPerReplicaSet: not supported yet",
        ),
        (
            blue_green(json!({"activeService": "web-active", "maxUnavailable": 1})),
            "spec.strategy.blueGreen.maxUnavailable: not supported yet",
        ),
        (
            blue_green(json!({"activeService": "web-preview"})),
            "same Service as activeService",
        ),
    ];
    for (strategy, expected) in cases {
        let problems = crate::api::validate::validate_rollout(&rollout(strategy.clone(), 3).spec);
        let text = summarize(&problems);
        assert!(text.contains(expected), "expected {expected:?} in {text:?}");
    }
    // A Rollout written for workloadRef has no template to judge yet: only
    // its reference is looked at.
    let mut referencing = rollout(canary(json!([])), 3);
    referencing.spec.template = Default::default();
    referencing.spec.selector = Default::default();
    referencing.spec.workload_ref = Some(crate::api::WorkloadRef {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        scale_down: None,
    });
    let problems = crate::api::validate::validate_rollout(&referencing.spec);
    assert!(problems.is_empty(), "{problems:?}");
    let mut bad_selector = rollout(canary(json!([])), 3);
    bad_selector.spec.selector.match_labels =
        Some(BTreeMap::from([("app".to_string(), "other".to_string())]));
    let text = summarize(&crate::api::validate::validate_rollout(&bad_selector.spec));
    assert!(
        text.contains("spec.selector.matchLabels.app") && text.contains("make them equal"),
        "{text}"
    );
}

// ---------- blue/green ----------

#[test]
fn blue_green_preview_then_manual_promotion_then_delayed_scale_down() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionEnabled": false, "scaleDownDelaySeconds": 10})),
        3,
    ));
    deployed(&mut world);
    let old = world.hash_for("web:1");
    assert_eq!(world.selector("web-active"), Some(old.clone()));
    assert_eq!(world.selector("web-preview"), Some(old.clone()));

    world.set_image("web:2");
    world.settle();
    let new = world.hash_for("web:2");
    assert_eq!(world.selector("web-preview"), Some(new.clone()));
    assert_eq!(world.selector("web-active"), Some(old.clone()));
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (3, 3)
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(
        world.status().pause_conditions[0].reason,
        PauseReason::BlueGreenPause
    );

    world.promote();
    world.settle();
    assert_eq!(world.selector("web-active"), Some(new.clone()));
    assert!(world.has_event("SwitchService"));
    assert_eq!(world.status().stable_rs, Some(new.clone()));
    assert_eq!(
        world.replicas_of("web:1"),
        3,
        "old ReplicaSet waits for its delay"
    );
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let blue_green = world.status().blue_green.expect("blue/green status");
    assert_eq!(blue_green.active_selector, Some(new.clone()));

    world.advance(10);
    world.settle();
    assert_eq!(world.replicas_of("web:1"), 0);
    assert!(world.has_event("ScalingReplicaSet"));
}

#[test]
fn blue_green_auto_promotion_after_seconds() {
    let mut world = World::new(rollout(blue_green(json!({"autoPromotionSeconds": 20})), 2));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    world.advance(20);
    world.settle();
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:2")));
}

/// Steps until nothing changes, recording the phase after every step.
fn settle_recording(world: &mut World) -> Vec<RolloutPhase> {
    let mut phases = Vec::new();
    for _ in 0..50 {
        if !world.step() {
            return phases;
        }
        phases.push(world.phase());
    }
    panic!("planner did not settle; last plan: {:#?}", world.last_plan);
}

#[test]
fn a_finished_blue_green_stays_healthy_while_its_old_set_is_scaled_down() {
    let mut world = World::new(rollout(blue_green(json!({"scaleDownDelaySeconds": 5})), 2));
    deployed(&mut world);
    world.set_image("web:2");
    let new = world.hash_for("web:2");
    let mut switched = Vec::new();
    while world.selector("web-active").as_deref() != Some(new.as_str()) {
        assert!(world.step(), "the active Service switches to {new}");
        switched.push(world.phase());
    }
    // The switch and the status describing the new active set are one write.
    assert_eq!(
        world.status().selector,
        Some(format!("app=web,rollouts-pod-template-hash={new}"))
    );
    switched.extend(settle_recording(&mut world));
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(
        world.replicas_of("web:1"),
        2,
        "the old set waits for its delay"
    );
    world.advance(5);
    let scaled_down = settle_recording(&mut world);
    assert_eq!(world.replicas_of("web:1"), 0);
    let first_healthy = switched
        .iter()
        .position(|p| *p == RolloutPhase::Healthy)
        .expect("the rollout became Healthy");
    let after: Vec<_> = switched[first_healthy..]
        .iter()
        .chain(&scaled_down)
        .collect();
    assert!(
        after.iter().all(|p| **p == RolloutPhase::Healthy),
        "once Healthy, scaling the old set down keeps it Healthy: {switched:?} then {scaled_down:?}"
    );
    let completed = world
        .events
        .iter()
        .filter(|e| e.reason == "RolloutCompleted")
        .count();
    assert_eq!(completed, 2, "one RolloutCompleted per deployment");
}

#[test]
fn a_drained_stable_is_read_in_full_before_an_abort_scales_it_back() {
    let steps = json!([{"setWeight": 100}, {"pause": {}}]);
    let mut world = World::new(rollout(canary(steps), 2));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.replicas_of("web:1"), 0, "setWeight 100 drains stable");
    let stable = format!("web-{}", world.hash_for("web:1"));
    world.abort();
    // From the cache, where the drained stable has no template, the plan
    // cannot write it and says so.
    let cached = world.cached_replica_sets();
    let from_cache = world.plan_from(&cached);
    assert_eq!(from_cache.needs_templates, vec![stable.clone()]);
    world.settle();
    assert_eq!(world.replicas_of("web:1"), 2);
    let image = world.replica_sets[&stable]
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(
        image.as_deref(),
        Some("web:1"),
        "its template came back intact"
    );
}

#[test]
fn going_back_to_a_drained_revision_needs_no_copy_of_its_template() {
    let mut world = World::new(rollout(canary(json!([])), 2));
    deployed(&mut world);
    world.set_image("web:2");
    deployed(&mut world);
    assert_eq!(world.replicas_of("web:1"), 0);
    world.set_image("web:1");
    let cached = world.cached_replica_sets();
    let plan = world.plan_from(&cached);
    assert!(
        plan.needs_templates.is_empty(),
        "{:?}",
        plan.needs_templates
    );
    deployed(&mut world);
    assert_eq!(world.replicas_of("web:1"), 2);
    assert_eq!(world.replicas_of("web:2"), 0);
}

#[test]
fn blue_green_preview_replica_count_scales_up_before_the_switch() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionEnabled": false, "previewReplicaCount": 1})),
        4,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 1);
    world.promote();
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 4);
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:2")));
}

#[test]
fn blue_green_abort_moves_only_active_back_and_preview_keeps_the_newest_replica_set() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionEnabled": false, "abortScaleDownDelaySeconds": 5})),
        2,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.abort();
    world.settle();
    let old = world.hash_for("web:1");
    assert_eq!(world.selector("web-active"), Some(old.clone()));
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:2")));
    assert_eq!(world.replicas_of("web:2"), 2);
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    world.advance(5);
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 0);
    assert_eq!(
        world.selector("web-preview"),
        Some(old),
        "once the aborted pods go, the preview returns to stable pods"
    );
}

#[test]
fn a_superseded_preview_hands_the_preview_service_back_to_stable() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionEnabled": false})),
        2,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:2")));
    let bad = world.hash_for("web:3");
    world.broken.push(bad);
    world.set_image("web:3");
    world.settle();
    assert_eq!(
        world.replicas_of("web:2"),
        0,
        "superseded preview scaled down"
    );
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:1")));
}

#[test]
fn blue_green_never_switches_preview_to_unavailable_pods() {
    let mut world = World::new(rollout(blue_green(json!({})), 2));
    deployed(&mut world);
    let bad = world.hash_for("web:bad");
    world.broken.push(bad);
    world.set_image("web:bad");
    world.settle();
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:1")));
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:1")));
}

// ---------- analysis gates ----------

fn with_template(world: &mut World) {
    let template: AnalysisTemplateSpec = serde_json::from_value(json!({
        "args": [{"name": "service"}],
        "metrics": [{"name": "errors", "successCondition": "result < 0.05",
            "provider": {"prometheus": {"query": "errors{service=\"{{args.service}}\"}"}}}]
    }))
    .expect("fixture");
    world
        .templates
        .insert((false, "error-rate".into()), template);
}

fn analysis_step() -> Value {
    json!({"analysis": {"templates": [{"templateName": "error-rate"}], "args": [{"name": "service", "value": "web"}]}})
}

#[test]
fn analysis_step_blocks_until_the_run_succeeds() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, analysis_step(), {"setWeight": 60}])),
        5,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.runs.len(), 1);
    let run = world.runs.values().next().expect("run");
    assert!(
        run.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with("-2-1")),
        "{:?}",
        run.metadata.name
    );
    assert_eq!(run.spec.args[0].value.as_deref(), Some("web"));
    assert_eq!(world.status().current_step_index, Some(1));
    assert_eq!(world.phase(), RolloutPhase::Progressing);
    world.set_run_phase("-1", AnalysisPhase::Successful);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
}

#[test]
fn failed_analysis_aborts_back_to_stable() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, analysis_step(), {"setWeight": 60}])),
        5,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.mark();
    world.set_run_phase("-1", AnalysisPhase::Failed);
    world.settle();
    assert!(world.status().abort);
    // One transition, one Event (notifications follow Events one for one).
    let aborted = world
        .recent_events()
        .filter(|e| e.reason == "RolloutAborted")
        .count();
    assert_eq!(aborted, 1);
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (0, 5)
    );
    assert_eq!(world.selector("web-canary"), Some(world.hash_for("web:1")));
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("Failed") && message.contains("metric says"),
        "{message}"
    );
    // Retrying creates a fresh run rather than reusing the failed one.
    world.retry();
    world.settle();
    assert!(
        world.runs.keys().any(|n| n.ends_with("-try2")),
        "{:?}",
        world.runs.keys().collect::<Vec<_>>()
    );
    assert_eq!(world.phase(), RolloutPhase::Progressing);
}

#[test]
fn inconclusive_analysis_pauses_for_a_human() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, analysis_step()])),
        5,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.set_run_phase("-1", AnalysisPhase::Inconclusive);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(
        world.status().pause_conditions[0].reason,
        PauseReason::InconclusiveAnalysisRun
    );
    world.promote();
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
}

fn invalid_spec_message(world: &World) -> Option<String> {
    world
        .status()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "InvalidSpec")
        .map(|c| c.message.unwrap_or_default())
}

#[test]
fn rule_missing_analysis_template_is_invalid_spec_until_it_is_created() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, analysis_step()])),
        5,
    ));
    let plan = world.plan();
    assert!(plan.replica_sets.is_empty(), "nothing is created");
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(15)));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(world.replica_sets.is_empty());
    let message = invalid_spec_message(&world).expect("InvalidSpec condition");
    assert!(
        message.contains("spec.strategy.canary.steps[1].analysis.templates[0].templateName")
            && message.contains("AnalysisTemplate \"error-rate\" not found in namespace shop"),
        "{message}"
    );
    assert!(world.has_warning("InvalidSpec"));

    with_template(&mut world);
    world.mark();
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(invalid_spec_message(&world).is_none(), "condition removed");

    // Deleting the template mid-life blocks the next update before it starts.
    world.templates.clear();
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert_eq!(world.replica_sets.len(), 1, "no canary ReplicaSet yet");
}

#[test]
fn rule_gating_metric_with_an_interval_but_no_count_runs_indefinitely() {
    let endless = |world: &mut World| {
        let template: AnalysisTemplateSpec = serde_json::from_value(json!({
            "metrics": [{"name": "errors", "interval": "1m", "successCondition": "result < 0.05",
                "provider": {"prometheus": {"query": "errors"}}}]
        }))
        .expect("fixture");
        world.templates.insert((false, "endless".into()), template);
    };
    let step = json!({"analysis": {"templates": [{"templateName": "endless"}]}});
    let mut world = World::new(rollout(canary(json!([{"setWeight": 20}, step])), 5));
    endless(&mut world);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let message = invalid_spec_message(&world).expect("InvalidSpec condition");
    assert!(message.contains("runs indefinitely"), "{message}");

    // The same template in background analysis is fine: it runs until the rollout ends.
    let mut strategy = canary(json!([{"setWeight": 20}, {"pause": {}}]));
    strategy["canary"]["analysis"] = json!({"templates": [{"templateName": "endless"}]});
    let mut world = World::new(rollout(strategy, 5));
    endless(&mut world);
    deployed(&mut world);

    // Blue/green pre-promotion analysis gates too.
    let mut world = World::new(rollout(
        blue_green(json!({"prePromotionAnalysis": {"templates": [{"templateName": "endless"}]}})),
        2,
    ));
    endless(&mut world);
    world.settle();
    let message = invalid_spec_message(&world).expect("InvalidSpec condition");
    assert!(
        message.contains("spec.strategy.blueGreen.prePromotionAnalysis"),
        "{message}"
    );
}

#[test]
fn a_provider_ramp_does_not_implement_is_refused_before_the_update_starts() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "dd"}]}}])),
        5,
    ));
    let template: AnalysisTemplateSpec = serde_json::from_value(json!({
        "metrics": [{"name": "errors", "successCondition": "result < 0.05",
            "provider": {"datadog": {"query": "errors"}}}]
    }))
    .expect("fixture");
    world.templates.insert((false, "dd".into()), template);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(world.replica_sets.is_empty(), "nothing is created");
    let message = invalid_spec_message(&world).expect("InvalidSpec condition");
    assert!(
        message.contains("spec.strategy.canary.steps[1].analysis.templates[0].templateName")
            && message.contains("uses provider \"datadog\", which Ramp does not implement"),
        "{message}"
    );
}

#[test]
fn template_field_ref_arguments_are_resolved_from_the_rollout() {
    let mut world = World::new(rollout(
        canary(
            json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "by-app"}]}}]),
        ),
        5,
    ));
    let template: AnalysisTemplateSpec = serde_json::from_value(json!({
        "args": [{"name": "app", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}],
        "metrics": [{"name": "errors", "successCondition": "result < 0.05",
            "provider": {"prometheus": {"query": "errors{app=\"{{args.app}}\"}"}}}]
    }))
    .expect("fixture");
    world.templates.insert((false, "by-app".into()), template);
    world
        .rollout
        .metadata
        .labels
        .get_or_insert_default()
        .insert("app".into(), "checkout".into());
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    let run = world.runs.values().next().expect("a run");
    let arg = run
        .spec
        .args
        .iter()
        .find(|a| a.name == "app")
        .expect("app arg");
    assert_eq!(arg.value.as_deref(), Some("checkout"));
    assert_eq!(
        arg.value_from, None,
        "the run carries the value, not the reference"
    );
}

#[test]
fn required_argument_without_value_is_an_error() {
    let mut world = World::new(rollout(
        canary(
            json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "error-rate"}]}}]),
        ),
        5,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("argument \"service\" is required"),
        "{message}"
    );
}

#[test]
fn cluster_template_reading_a_secret_needs_the_operator_s_consent() {
    let secret_reading = |world: &mut World| {
        let template: AnalysisTemplateSpec = serde_json::from_value(json!({
            "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "prom", "key": "token"}}}],
            "metrics": [{"name": "errors", "successCondition": "result < 0.05",
                "provider": {"prometheus": {"query": "errors{token=\"{{args.token}}\"}"}}}]
        }))
        .expect("fixture");
        world.templates.insert((true, "shared".into()), template);
    };
    let step =
        json!({"analysis": {"templates": [{"templateName": "shared", "clusterScope": true}]}});
    let mut world = World::new(rollout(canary(json!([{"setWeight": 20}, step])), 5));
    secret_reading(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert!(world.runs.is_empty(), "no run is created");
    assert!(
        world.status().abort,
        "the gate errors and the rollout aborts"
    );
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (0, 5)
    );
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("ClusterAnalysisTemplate \"shared\" reads Secret \"prom\" (spec.args[0].valueFrom.secretKeyRef)")
            && message.contains("--allow-cluster-template-secrets"),
        "{message}"
    );

    // With the operator's consent the same template gates normally.
    let mut world = World::new(rollout(canary(json!([{"setWeight": 20}, step])), 5));
    world.cluster_templates_read_secrets = true;
    secret_reading(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.runs.len(), 1);
    assert!(!world.status().abort);

    // A namespaced template may read its own namespace's Secrets.
    let mut world = World::new(rollout(
        canary(
            json!([{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "shared"}]}}]),
        ),
        5,
    ));
    secret_reading(&mut world);
    let shared = world
        .templates
        .remove(&(true, "shared".into()))
        .expect("fixture");
    world.templates.insert((false, "shared".into()), shared);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.runs.len(), 1);
}

#[test]
fn background_analysis_failure_aborts_mid_rollout_and_completion_terminates_it() {
    let mut strategy =
        canary(json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]));
    strategy["canary"]["analysis"] = json!({"templates": [{"templateName": "error-rate"}], "args": [{"name": "service", "value": "web"}], "startingStep": 1});
    let mut world = World::new(rollout(strategy.clone(), 5));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.runs.len(), 1, "background run starts at step 1");
    world.promote();
    world.settle();
    world.set_run_phase("-2", AnalysisPhase::Failed);
    world.settle();
    assert!(world.status().abort);
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (0, 5)
    );

    let mut world = World::new(rollout(strategy, 5));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    if let Some(status) = world.rollout.status.as_mut() {
        status.promote_full = true;
    }
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(
        world.runs.values().all(|r| r.spec.terminate == Some(true)),
        "background run terminated on completion"
    );
}

#[test]
fn blue_green_pre_promotion_failure_never_switches_active() {
    let mut world = World::new(rollout(
        blue_green(
            json!({"prePromotionAnalysis": {"templates": [{"templateName": "error-rate"}], "args": [{"name": "service", "value": "web"}]}}),
        ),
        2,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.runs.len(), 1);
    world.set_run_phase("-pre", AnalysisPhase::Failed);
    world.settle();
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:1")));
    assert_eq!(world.phase(), RolloutPhase::Degraded);
}

#[test]
fn blue_green_post_promotion_failure_switches_active_back() {
    let mut world = World::new(rollout(
        blue_green(
            json!({"postPromotionAnalysis": {"templates": [{"templateName": "error-rate"}], "args": [{"name": "service", "value": "web"}]}}),
        ),
        2,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        world.selector("web-active"),
        Some(world.hash_for("web:2")),
        "switched before post analysis"
    );
    assert_eq!(
        world.replicas_of("web:1"),
        2,
        "old stays up during verification"
    );
    world.set_run_phase("-post", AnalysisPhase::Failed);
    world.settle();
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:1")));
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:1")));
}

#[test]
fn analysis_history_is_bounded() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, analysis_step()])),
        2,
    ));
    world.rollout.spec.analysis =
        Some(serde_json::from_value(json!({"successfulRunHistoryLimit": 1})).expect("fixture"));
    with_template(&mut world);
    deployed(&mut world);
    for (revision, image) in [(2, "web:2"), (3, "web:3"), (4, "web:4")] {
        // Runs are ordered by creation time; give each revision its own second.
        world.advance(1);
        world.set_image(image);
        world.settle();
        world.set_run_phase(&format!("-{revision}-1"), AnalysisPhase::Successful);
        world.settle();
    }
    // Only the newest successful run survives the limit of 1.
    let newest = format!("web-{}-4-1", world.hash_for("web:4"));
    assert_eq!(
        world.runs.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![newest.as_str()],
    );
}

#[test]
fn field_ref_arguments_resolve_against_the_rollout() {
    let mut ro = rollout(canary(json!([])), 1);
    ro.metadata.labels = Some(BTreeMap::from([("region".to_string(), "eu-1".to_string())]));
    assert_eq!(
        analysis::resolve_field_path(&ro, "metadata.labels['region']").as_deref(),
        Ok("eu-1")
    );
    assert_eq!(
        analysis::resolve_field_path(&ro, "metadata.name").as_deref(),
        Ok("web")
    );
    assert_eq!(
        analysis::resolve_field_path(&ro, "spec.replicas").as_deref(),
        Ok("1")
    );
    assert!(
        analysis::resolve_field_path(&ro, "metadata.labels['zone']")
            .unwrap_err()
            .contains("does not exist")
    );
}

// ---------- restart ----------

#[test]
fn restart_evicts_one_old_pod_at_a_time_then_records_completion() {
    let mut world = World::new(rollout(canary(json!([])), 3));
    deployed(&mut world);
    let hash = world.hash_for("web:1");
    let created = world.now;
    world.advance(60);
    world.rollout.spec.restart_at = Some(Time(world.now));
    let pod = |name: &str, at: Timestamp, terminating: bool| PodInfo {
        name: name.into(),
        hash: hash.clone(),
        created: at,
        terminating,
    };
    world.pods = Some(vec![
        pod("a", created, false),
        pod("b", created, false),
        pod("c", created, false),
    ]);
    let plan = world.plan();
    assert_eq!(plan.evictions, vec!["a".to_string()]);
    assert_eq!(
        plan.status.and_then(|s| s.phase),
        Some(RolloutPhase::Progressing)
    );

    // While a pod is terminating nothing else is evicted.
    world.pods = Some(vec![
        pod("a", created, true),
        pod("b", created, false),
        pod("c", created, false),
    ]);
    assert!(world.plan().evictions.is_empty());

    let later = world.now;
    world.pods = Some(vec![
        pod("a2", later, false),
        pod("b2", later, false),
        pod("c2", later, false),
    ]);
    world.step();
    assert_eq!(world.status().restarted_at.map(|t| t.0), Some(later));
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(world.has_event("RolloutRestarted"));
    assert!(restart::pending_restart(&world.rollout, world.now).is_none());
}

#[test]
fn restart_in_the_future_only_schedules_a_wake_up() {
    let mut world = World::new(rollout(canary(json!([])), 1));
    deployed(&mut world);
    let at = world
        .now
        .checked_add(SignedDuration::from_secs(30))
        .expect("time");
    world.rollout.spec.restart_at = Some(Time(at));
    let plan = world.plan();
    assert!(plan.evictions.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
}

// ---------- ephemeral metadata ----------

fn pod_labels(world: &World, image: &str) -> BTreeMap<String, String> {
    let hash = world.hash_for(image);
    world
        .replica_sets
        .values()
        .find(|rs| {
            rs.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
                == Some(&hash)
        })
        .and_then(|rs| {
            rs.spec
                .as_ref()?
                .template
                .as_ref()?
                .metadata
                .as_ref()?
                .labels
                .clone()
        })
        .unwrap_or_default()
}

#[test]
fn canary_and_stable_metadata_follow_the_role() {
    let mut strategy = canary(json!([{"setWeight": 20}, {"pause": {}}]));
    strategy["canary"]["canaryMetadata"] = json!({"labels": {"role": "canary"}});
    strategy["canary"]["stableMetadata"] = json!({"labels": {"role": "stable"}});
    let mut world = World::new(rollout(strategy, 5));
    deployed(&mut world);
    assert_eq!(
        pod_labels(&world, "web:1").get("role").map(String::as_str),
        Some("stable")
    );
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        pod_labels(&world, "web:2").get("role").map(String::as_str),
        Some("canary")
    );
    world.promote();
    world.settle();
    let relabel = world.relabelled.clone();
    assert_eq!(
        pod_labels(&world, "web:2").get("role").map(String::as_str),
        Some("stable")
    );
    let change = relabel
        .iter()
        .find(|c| c.hash == world.hash_for("web:2"))
        .expect("live canary pods relabelled on promotion");
    assert_eq!(
        change.metadata.set.labels.get("role").map(String::as_str),
        Some("stable")
    );
    // The ReplicaSet's own labels do not carry the role.
    let hash = world.hash_for("web:2");
    let rs = &world.replica_sets[&format!("web-{hash}")];
    assert!(
        !rs.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .contains_key("role")
    );
    // Once settled nothing is relabelled again.
    assert!(world.plan().pod_metadata.is_empty());
}

#[test]
fn role_labels_may_not_reuse_template_labels() {
    let mut strategy = canary(json!([]));
    strategy["canary"]["canaryMetadata"] = json!({"labels": {"app": "x"}});
    let problems = crate::api::validate::validate_rollout(&rollout(strategy, 1).spec);
    assert!(
        summarize(&problems).contains("canaryMetadata.labels.app"),
        "{problems:?}"
    );
}

// ---------- Argo conformance (issue 11): one test per rule ----------

/// Pods in every ReplicaSet of the world, whatever their role.
fn total_pods(world: &World) -> i32 {
    world
        .replica_sets
        .values()
        .filter_map(|rs| rs.spec.as_ref()?.replicas)
        .sum()
}

#[test]
fn rule_blue_green_status_counts_describe_the_active_replica_set() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionEnabled": false})),
        3,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    let status = world.status();
    // Both ReplicaSets run 3 pods; the active Service still selects web:1.
    assert_eq!(status.replicas, 6, "replicas stays the total");
    assert_eq!(status.updated_replicas, 3, "updated is the new ReplicaSet");
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(status.available_replicas, 3);
    let active = world.hash_for("web:1");
    assert_eq!(
        status.selector.as_deref(),
        Some(format!("app=web,rollouts-pod-template-hash={active}").as_str())
    );

    world.promote();
    world.settle();
    let new = world.hash_for("web:2");
    assert_eq!(
        world.status().selector.as_deref(),
        Some(format!("app=web,rollouts-pod-template-hash={new}").as_str())
    );
}

#[test]
fn rule_canary_status_selector_is_the_rollout_selector() {
    let mut world = standard_canary();
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    let status = world.status();
    assert_eq!(status.selector.as_deref(), Some("app=web"));
    assert_eq!(status.available_replicas, 5, "canary counts every pod");
}

fn background_analysis(world: &mut World, starting_step: i32) {
    with_template(world);
    if let Some(canary) = world.rollout.spec.strategy.canary.as_mut() {
        canary.analysis = Some(
            serde_json::from_value(json!({
                "templates": [{"templateName": "error-rate"}],
                "args": [{"name": "service", "value": "web"}],
                "startingStep": starting_step
            }))
            .expect("fixture"),
        );
    }
}

#[test]
fn rule_inconclusive_analysis_halts_steps_scaling_and_promotion_even_after_a_timed_pause() {
    let steps = json!([{"setWeight": 20}, {"pause": {"duration": 10}}, {"setWeight": 60}]);
    let mut world = World::new(rollout(canary(steps), 5));
    background_analysis(&mut world, 0);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.status().current_step_index, Some(1));
    world.set_run_phase("-2", AnalysisPhase::Inconclusive);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);

    // The timed pause runs out, and someone scales the stable ReplicaSet:
    // nothing advances, nothing is scaled back, no Service moves.
    world.advance(30);
    let stable = world.hash_for("web:1");
    let stable_name = format!("web-{stable}");
    if let Some(spec) = world
        .replica_sets
        .get_mut(&stable_name)
        .and_then(|rs| rs.spec.as_mut())
    {
        spec.replicas = Some(6);
    }
    world.settle();
    assert_eq!(world.status().current_step_index, Some(1));
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (1, 6)
    );
    assert_eq!(world.status().stable_rs, Some(stable.clone()));
    assert_eq!(world.selector("web-stable"), Some(stable));
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert!(!world.has_event("RolloutStepCompleted"));
    assert!(world.last_plan.replica_sets.is_empty());

    // A human's promote releases it.
    world.promote();
    world.settle();
    assert_eq!(world.status().current_step_index, Some(3));
}

#[test]
fn rule_inconclusive_pre_promotion_analysis_keeps_active_and_preview_where_they_are() {
    let mut world = World::new(rollout(
        blue_green(json!({"autoPromotionSeconds": 5, "prePromotionAnalysis": {
            "templates": [{"templateName": "error-rate"}],
            "args": [{"name": "service", "value": "web"}]}})),
        2,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.set_run_phase("-pre", AnalysisPhase::Inconclusive);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    world.advance(60);
    world.settle();
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:1")));
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:2")));
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:1")));
    assert!(world.last_plan.replica_sets.is_empty());
}

#[test]
fn rule_progress_deadline_abort_is_evaluated_on_every_reconcile() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"pause": {}}])),
        5,
    ));
    world.rollout.spec.progress_deadline_seconds = Some(60);
    deployed(&mut world);
    world.broken.push(world.hash_for("web:bad"));
    world.set_image("web:bad");
    world.settle();
    world.advance(61);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(!world.status().abort, "no abort while the flag is off");

    // Turned on after the deadline passed: the next reconcile aborts.
    world.mark();
    world.rollout.spec.progress_deadline_abort = Some(true);
    world.settle();
    assert!(world.status().abort);
    assert!(world.has_warning("RolloutAborted"));
    assert_eq!(
        (world.replicas_of("web:bad"), world.replicas_of("web:1")),
        (0, 5)
    );
}

#[test]
fn rule_weights_become_the_closest_replica_split_with_a_surge_pod() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 20}, {"pause": {}}])),
        3,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (1, 3)
    );
}

#[test]
fn rule_max_surge_caps_the_total_when_replicas_drop_mid_rollout() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 50}, {"pause": {}}])),
        10,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (5, 5)
    );
    // Half the canary's pods stop being available, then replicas drop to 4
    // (maxSurge 25% → 1): every pass stays within 4 + 1 pods.
    world.broken.push(world.hash_for("web:2"));
    world.rollout.spec.replicas = Some(4);
    for _ in 0..20 {
        let changed = world.step();
        assert!(total_pods(&world) <= 5, "{} pods", total_pods(&world));
        if !changed {
            break;
        }
    }
    assert!(total_pods(&world) <= 5);
}

#[test]
fn rule_set_canary_scale_stays_in_force_until_match_traffic_weight() {
    let steps = json!([
        {"setCanaryScale": {"replicas": 2}},
        {"setWeight": 20},
        {"pause": {}},
        {"setWeight": 40},
        {"pause": {}},
        {"setCanaryScale": {"matchTrafficWeight": true}},
        {"pause": {}}
    ]);
    let mut world = World::new(rollout(canary(steps), 10));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.status().current_step_index, Some(2));
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (2, 8),
        "setCanaryScale 2 holds through setWeight 20"
    );
    world.promote();
    world.settle();
    assert_eq!(world.status().current_step_index, Some(4));
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (2, 6),
        "and through setWeight 40"
    );
    world.promote();
    world.settle();
    assert_eq!(world.status().current_step_index, Some(6));
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (4, 6),
        "matchTrafficWeight returns to the weight's share"
    );
}

#[test]
fn rule_promote_full_on_an_aborted_rollout_clears_abort_and_starts_no_analysis() {
    let steps = json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}]);
    let mut world = World::new(rollout(canary(steps), 5));
    background_analysis(&mut world, 0);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.set_run_phase("-2", AnalysisPhase::Failed);
    world.settle();
    assert!(world.status().abort);
    let runs_before = world.runs.len();

    if let Some(status) = world.rollout.status.as_mut() {
        status.promote_full = true;
    }
    world.mark();
    world.settle();
    let status = world.status();
    assert!(!status.abort);
    assert!(status.pause_conditions.is_empty());
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(status.stable_rs, Some(world.hash_for("web:2")));
    assert_eq!(world.runs.len(), runs_before, "no new AnalysisRun");
    assert!(!world.has_event("AnalysisRunCreated"));
    assert!(!world.has_event("RolloutRetry"));
}

#[test]
fn rule_restart_at_is_compared_at_the_precision_the_api_stores() {
    let mut world = World::new(rollout(canary(json!([])), 2));
    deployed(&mut world);
    let hash = world.hash_for("web:1");
    let created = world.now;
    world.advance(60);
    // A restartAt with a fraction, as a client other than kubectl-ramp may write it.
    let at = world
        .now
        .checked_add(SignedDuration::from_millis(400))
        .expect("time");
    world.rollout.spec.restart_at = Some(Time(at));
    world.advance(1);
    let fresh = world.now;
    world.pods = Some(vec![
        PodInfo {
            name: "a".into(),
            hash: hash.clone(),
            created: fresh,
            terminating: false,
        },
        PodInfo {
            name: "b".into(),
            hash,
            created: fresh,
            terminating: false,
        },
    ]);
    assert!(created < fresh);
    world.settle();
    // Stored and read back as the API server does (whole seconds).
    let stored: RolloutStatus =
        serde_json::from_value(serde_json::to_value(world.status()).expect("json"))
            .expect("status");
    world.rollout.status = Some(stored);
    assert!(restart::pending_restart(&world.rollout, world.now).is_none());
    assert!(world.plan().status.is_none(), "nothing left to write");
}

#[test]
fn rule_undo_reuses_the_earlier_replica_set_at_the_next_revision() {
    let mut world = World::new(rollout(canary(json!([{"setWeight": 50}])), 2));
    deployed(&mut world);
    let first = world.hash_for("web:1");
    let first_name = format!("web-{first}");
    // The API server defaults what the ReplicaSet's template left out.
    if let Some(container) = world
        .replica_sets
        .get_mut(&first_name)
        .and_then(|rs| rs.spec.as_mut()?.template.as_mut()?.spec.as_mut())
        .and_then(|spec| spec.containers.first_mut())
    {
        container.image_pull_policy = Some("IfNotPresent".into());
        container.termination_message_path = Some("/dev/termination-log".into());
    }
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.replica_sets.len(), 2);
    let second_name = format!("web-{}", world.hash_for("web:2"));

    // `kubectl ramp undo` copies the first ReplicaSet's (defaulted) template back.
    let template =
        hash::replica_set_source_template(&world.replica_sets[&first_name]).expect("template");
    assert_ne!(hash::template_hash(&template, None).short, first);
    world.rollout.spec.template = template;
    world.mark();
    world.settle();
    assert_eq!(world.replica_sets.len(), 2, "no third ReplicaSet");
    assert_eq!(world.status().current_pod_hash, Some(first.clone()));
    assert_eq!(world.status().stable_rs, Some(first.clone()));
    let revision = world.replica_sets[&first_name]
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .cloned();
    assert_eq!(revision.as_deref(), Some("3"));
    assert_eq!(
        world.replica_sets[&second_name]
            .spec
            .as_ref()
            .and_then(|s| s.replicas),
        Some(0)
    );
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    // Settled: planning again writes nothing.
    assert_eq!(
        world.plan(),
        Plan {
            requeue_after: world.plan().requeue_after,
            ..Plan::default()
        }
    );
}

/// Releases v{from}..=v{to} one after another, each fully promoted, a
/// minute apart so creation order is clear.
fn release_promoted(world: &mut World, versions: std::ops::RangeInclusive<u32>) {
    for version in versions {
        world.advance(60);
        world.set_image(&format!("web:{version}"));
        world.settle();
        world.promote();
        world.settle();
        assert_eq!(world.phase(), RolloutPhase::Healthy, "v{version} promoted");
    }
}

fn canary_with_window(revisions: i32) -> World {
    let mut strategy = canary(json!([{"setWeight": 50}, {"pause": {}}]));
    strategy["canary"]["analysis"] = json!({"templates": [{"templateName": "error-rate"}],
        "args": [{"name": "service", "value": "web"}]});
    let mut world = World::new(rollout(strategy, 2));
    world.rollout.spec.rollback_window = Some(crate::api::RollbackWindow {
        revisions: Some(revisions),
    });
    with_template(&mut world);
    deployed(&mut world);
    world
}

#[test]
fn rule_rollback_within_window_skips_steps_pauses_and_analysis() {
    // Argo's e2e: v1, v2 promoted, v3 paused mid-rollout, back to v1 with
    // revisions: 1 (nothing was created between v1 and stable v2).
    let mut world = canary_with_window(1);
    release_promoted(&mut world, 2..=2);
    world.advance(60);
    world.set_image("web:3");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    let runs_before = world.runs.len();

    world.advance(60);
    world.set_image("web:1");
    world.settle();
    assert_eq!(
        world.phase(),
        RolloutPhase::Healthy,
        "{:#?}",
        world.status()
    );
    assert!(world.has_event("SkipSteps"));
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:1")));
    assert_eq!(world.replicas_of("web:1"), 2);
    assert_eq!(world.replicas_of("web:3"), 0);
    assert_eq!(world.selector("web-stable"), Some(world.hash_for("web:1")));
    assert_eq!(world.runs.len(), runs_before, "no new AnalysisRun");
    assert!(
        world.runs.values().all(|r| r.spec.terminate == Some(true)
            || r.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_completed())),
        "v3's background run is stopped"
    );
}

#[test]
fn rule_rollback_outside_window_runs_the_steps_again() {
    // v1, v2, v3 promoted, v4 paused, back to v1: v2 lies between v1 and
    // stable v3, so with revisions: 1 this is an ordinary update.
    let mut world = canary_with_window(1);
    release_promoted(&mut world, 2..=3);
    world.advance(60);
    world.set_image("web:4");
    world.settle();
    world.advance(60);
    world.set_image("web:1");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert!(!world.has_event("SkipSteps"));
    assert_eq!(world.replicas_of("web:1"), 1, "setWeight 50 of 2");

    // The window counts revisions between: revisions: 2 takes v1 back at once.
    let mut world = canary_with_window(2);
    release_promoted(&mut world, 2..=3);
    world.advance(60);
    world.set_image("web:1");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(world.has_event("SkipSteps"));
}

#[test]
fn rule_rollback_within_window_clears_an_abort() {
    let mut world = canary_with_window(1);
    release_promoted(&mut world, 2..=2);
    world.advance(60);
    world.set_image("web:3");
    world.settle();
    world.abort();
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    world.advance(60);
    world.set_image("web:1");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(!world.status().abort);
}

fn blue_green_manual(delay: i32) -> World {
    let mut world = World::new(rollout(
        blue_green(
            json!({"autoPromotionEnabled": false, "scaleDownDelaySeconds": delay,
            "prePromotionAnalysis": {"templates": [{"templateName": "error-rate"}],
                "args": [{"name": "service", "value": "web"}]}}),
        ),
        2,
    ));
    with_template(&mut world);
    deployed(&mut world);
    world
}

#[test]
fn rule_blue_green_fast_rollback_within_scale_down_delay_skips_pause_and_analysis() {
    let mut world = blue_green_manual(30);
    world.advance(60);
    world.set_image("web:2");
    world.settle();
    world.set_run_phase("-pre", AnalysisPhase::Successful);
    world.settle();
    world.promote();
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(
        world.replicas_of("web:1"),
        2,
        "old active waits for its delay"
    );
    let runs_before = world.runs.len();

    world.advance(10);
    world.set_image("web:1");
    world.settle();
    assert_eq!(
        world.phase(),
        RolloutPhase::Healthy,
        "{:#?}",
        world.status()
    );
    assert!(world.has_event("SkipSteps"));
    let v1 = world.hash_for("web:1");
    assert_eq!(world.selector("web-active"), Some(v1.clone()));
    assert_eq!(world.selector("web-preview"), Some(v1.clone()));
    assert_eq!(world.status().stable_rs, Some(v1));
    assert_eq!(world.runs.len(), runs_before, "no pre-promotion run");
    // The replaced revision now waits out its own delay.
    assert_eq!(world.replicas_of("web:2"), 2);
    world.advance(31);
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 0);
}

#[test]
fn rule_blue_green_rollback_after_the_delay_is_an_ordinary_update() {
    let mut world = blue_green_manual(30);
    world.advance(60);
    world.set_image("web:2");
    world.settle();
    world.set_run_phase("-pre", AnalysisPhase::Successful);
    world.settle();
    world.promote();
    world.settle();
    world.advance(31);
    world.settle();
    assert_eq!(world.replicas_of("web:1"), 0);

    world.set_image("web:1");
    world.settle();
    assert_ne!(world.phase(), RolloutPhase::Healthy);
    assert!(!world.has_event("SkipSteps"));
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:2")));
}

#[test]
fn scale_downs_are_written_before_scale_ups() {
    let mut world = World::new(rollout(
        canary(json!([{"setWeight": 60}, {"pause": {}}])),
        5,
    ));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    world.abort();
    let plan = world.plan();
    let moves: Vec<(i32, i32)> = plan
        .replica_sets
        .iter()
        .filter_map(|change| match change {
            ReplicaSetChange::Apply(rs) => {
                let name = rs.metadata.name.clone()?;
                let before = world.replica_sets.get(&name)?.spec.as_ref()?.replicas?;
                Some((before, rs.spec.as_ref()?.replicas?))
            }
            ReplicaSetChange::Delete { .. } => None,
        })
        .collect();
    assert!(moves.len() >= 2, "{moves:?}");
    let first_up = moves.iter().position(|(before, after)| after > before);
    let last_down = moves.iter().rposition(|(before, after)| after < before);
    assert!(
        matches!((last_down, first_up), (Some(down), Some(up)) if down < up),
        "{moves:?}"
    );
}

mod argo_e2e;
mod properties;
mod traffic;
mod webhooks;
mod workload_ref;

/// What a gateway does once it has programmed a route: it reports each
/// parent Accepted and ResolvedRefs for the route's generation.
fn accept_route(route: &mut kube::api::DynamicObject) {
    let generation = route.metadata.generation.unwrap_or(1);
    let parents: Vec<Value> = route.data["spec"]["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|parent| {
            json!({
                "parentRef": parent,
                "controllerName": "example.com/gateway",
                "conditions": [
                    {"type": "Accepted", "status": "True", "observedGeneration": generation},
                    {"type": "ResolvedRefs", "status": "True", "observedGeneration": generation},
                ],
            })
        })
        .collect();
    route.data["status"] = json!({"parents": parents});
}
