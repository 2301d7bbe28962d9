//! Conditions, phase, message, replica counts and the progress deadline.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Ctx;
use crate::api::{DEFAULT_PROGRESS_DEADLINE_SECONDS, RolloutCondition, RolloutPhase};

pub(crate) struct Conditions {
    list: Vec<RolloutCondition>,
    now: Timestamp,
}

impl Conditions {
    pub fn new(list: Vec<RolloutCondition>, now: Timestamp) -> Self {
        Conditions { list, now }
    }

    pub fn get(&self, type_: &str) -> Option<&RolloutCondition> {
        self.list.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition; returns true when its status, reason or message changed.
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) -> bool {
        let status = if status { "True" } else { "False" };
        let now = Some(Time(self.now));
        match self.list.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => {
                let changed = existing.status != status
                    || existing.reason.as_deref() != Some(reason)
                    || existing.message.as_deref() != Some(message);
                if existing.status != status {
                    existing.last_transition_time = now.clone();
                }
                if changed {
                    existing.status = status.to_string();
                    existing.reason = Some(reason.to_string());
                    existing.message = Some(message.to_string());
                    existing.last_update_time = now;
                }
                changed
            }
            None => {
                self.list.push(RolloutCondition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    reason: Some(reason.to_string()),
                    message: Some(message.to_string()),
                    last_transition_time: now.clone(),
                    last_update_time: now,
                });
                true
            }
        }
    }

    /// Records that progress happened now, restarting the progress deadline.
    pub fn touch(&mut self, type_: &str) {
        if let Some(existing) = self.list.iter_mut().find(|c| c.type_ == type_) {
            existing.last_update_time = Some(Time(self.now));
        }
    }

    pub fn remove(&mut self, type_: &str) {
        self.list.retain(|c| c.type_ != type_);
    }

    pub fn into_vec(mut self) -> Vec<RolloutCondition> {
        self.list.sort_by(|a, b| a.type_.cmp(&b.type_));
        self.list
    }
}

/// Fills in counts, conditions, phase and message once the strategy has decided.
pub(crate) fn finish_status(ctx: &mut Ctx<'_>) {
    let rollout = ctx.rollout;
    let replicas = rollout.replicas();
    let existing = || ctx.sets.iter().filter(|s| s.rs.is_some());
    ctx.status.replicas = existing().map(|s| s.observed_replicas).sum();
    ctx.status.ready_replicas = existing().map(|s| s.ready).sum();
    ctx.status.available_replicas = existing().map(|s| s.available).sum();
    ctx.status.updated_replicas = ctx.new_set().observed_replicas;
    ctx.status.selector = Some(selector_string(rollout));
    active_replica_set_counts(ctx);

    let new = ctx.new_set();
    // A set scaled to 0 by this very plan is down: its write goes out before
    // the status, and calling the rollout Progressing for that one pass made
    // a finished blue/green flap Healthy → Progressing → Healthy when its
    // scale-down delay ran out (two more status writes and Events each).
    let others_down = ctx.sets.iter().enumerate().all(|(i, s)| {
        i == ctx.new || s.current == 0 || s.desired == 0 || s.desired_deadline.is_some()
    });
    let complete =
        ctx.new_is_stable() && new.is_saturated(replicas) && others_down && !ctx.restarting;
    let user_paused = rollout.is_paused_by_user();
    let paused = user_paused || !ctx.status.pause_conditions.is_empty();
    let new_name = new.name.clone();

    if ctx.status.abort && ctx.prev.aborted_at.is_none() {
        let message = ctx
            .abort_reason
            .clone()
            .unwrap_or_else(|| "Rollout aborted".to_string());
        ctx.warning(
            "RolloutAborted",
            format!("{message}; returning all traffic and replicas to stable"),
        );
    }
    let was_paused = ctx
        .conditions
        .get("Paused")
        .is_some_and(|c| c.status == "True");
    if paused {
        let reason = if user_paused {
            "manually paused".to_string()
        } else {
            pause_reason(ctx)
        };
        if ctx.conditions.set("Paused", true, "RolloutPaused", &reason) && !was_paused {
            ctx.event("RolloutPaused", format!("Rollout paused: {reason}"));
        }
    } else if was_paused {
        ctx.conditions
            .set("Paused", false, "RolloutResumed", "Rollout resumed");
        ctx.event("RolloutResumed", "Rollout resumed");
    }

    let progressed = ctx.prev.current_pod_hash != ctx.status.current_pod_hash
        || ctx.prev.current_step_index != ctx.status.current_step_index
        || ctx.prev.stable_rs != ctx.status.stable_rs
        || ctx.prev.available_replicas != ctx.status.available_replicas
        || ctx.prev.updated_replicas != ctx.status.updated_replicas
        || ctx.prev.ready_replicas != ctx.status.ready_replicas
        || ctx.prev.abort != ctx.status.abort
        || ctx.sets.iter().any(|s| s.desired != s.current);
    let deadline_reason = "ProgressDeadlineExceeded";
    if ctx.status.abort {
        let previous = ctx
            .conditions
            .get("Progressing")
            .filter(|c| c.reason.as_deref() == Some("RolloutAborted"))
            .and_then(|c| c.message.clone());
        let message = ctx
            .abort_reason
            .clone()
            .or(previous)
            .unwrap_or_else(|| "Rollout aborted by user".into());
        ctx.conditions
            .set("Progressing", false, "RolloutAborted", &message);
    } else if complete {
        ctx.conditions.set(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet {new_name} has successfully progressed"),
        );
    } else if paused {
        // Time spent paused does not count against the progress deadline.
        ctx.conditions
            .set("Progressing", true, "RolloutPaused", "Rollout is paused");
    } else {
        let reason = ctx
            .conditions
            .get("Progressing")
            .and_then(|c| c.reason.clone());
        let exceeded = reason.as_deref() == Some(deadline_reason);
        // Coming back from a pause, completion or a missed deadline also restarts the clock.
        let resumed = !exceeded && reason.as_deref() != Some("ReplicaSetUpdated");
        let message = format!("ReplicaSet {new_name} is progressing");
        if progressed || resumed {
            ctx.conditions
                .set("Progressing", true, "ReplicaSetUpdated", &message);
            ctx.conditions.touch("Progressing");
        } else if !exceeded {
            let seconds = rollout
                .spec
                .progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS);
            let last = ctx
                .conditions
                .get("Progressing")
                .and_then(|c| c.last_update_time.clone())
                .map(|t| t.0)
                .unwrap_or(ctx.now);
            let due = last
                .checked_add(SignedDuration::from_secs(i64::from(seconds)))
                .unwrap_or(last);
            if ctx.now >= due {
                let message = format!("ReplicaSet {new_name} has made no progress for {seconds}s");
                ctx.conditions
                    .set("Progressing", false, deadline_reason, &message);
                ctx.warning("ProgressDeadlineExceeded", message.clone());
            } else {
                ctx.wake_at(due);
            }
        }
        // Evaluated on every pass, so turning progressDeadlineAbort on after
        // the deadline passed still aborts (Argo's evaluateProgressDeadlineAbort).
        let timed_out = ctx
            .conditions
            .get("Progressing")
            .filter(|c| c.reason.as_deref() == Some(deadline_reason))
            .and_then(|c| c.message.clone());
        if let Some(message) = timed_out
            && rollout.spec.progress_deadline_abort.unwrap_or(false)
        {
            ctx.status.abort = true;
            ctx.status.aborted_at = Some(Time(ctx.now));
            ctx.conditions
                .set("Progressing", false, "RolloutAborted", &message);
            ctx.warning(
                "RolloutAborted",
                format!("{message}; progressDeadlineAbort is set, returning to stable"),
            );
            ctx.wake_at(ctx.now);
        }
    }

    let available = ctx.status.available_replicas >= replicas;
    ctx.conditions.set(
        "Available",
        available,
        if available {
            "AvailableReplicas"
        } else {
            "NotEnoughAvailableReplicas"
        },
        &format!(
            "{} of {replicas} replicas available",
            ctx.status.available_replicas
        ),
    );
    if complete {
        ctx.conditions.set(
            "Completed",
            true,
            "RolloutCompleted",
            "Rollout completed: the new revision is stable",
        );
    } else {
        ctx.conditions.set(
            "Completed",
            false,
            "RolloutNotCompleted",
            "Rollout is not completed",
        );
    }

    let exceeded = ctx
        .conditions
        .get("Progressing")
        .filter(|c| c.reason.as_deref() == Some(deadline_reason))
        .and_then(|c| c.message.clone());
    let (phase, message) = if ctx.status.abort {
        let reason = ctx
            .conditions
            .get("Progressing")
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        (RolloutPhase::Degraded, format!("RolloutAborted: {reason}"))
    } else if let Some(message) = exceeded {
        (
            RolloutPhase::Degraded,
            format!("ProgressDeadlineExceeded: {message}"),
        )
    } else if user_paused {
        (RolloutPhase::Paused, "manually paused".to_string())
    } else if paused {
        (RolloutPhase::Paused, pause_reason(ctx))
    } else if !complete {
        (
            RolloutPhase::Progressing,
            ctx.waiting_for
                .clone()
                .unwrap_or_else(|| "more replicas need to be updated".into()),
        )
    } else {
        (RolloutPhase::Healthy, String::new())
    };
    let healthy = phase == RolloutPhase::Healthy;
    ctx.conditions.set(
        "Healthy",
        healthy,
        if healthy {
            "RolloutHealthy"
        } else {
            "RolloutNotHealthy"
        },
        if healthy {
            "Rollout is healthy"
        } else {
            "Rollout is not healthy"
        },
    );
    if healthy && ctx.prev.phase != Some(RolloutPhase::Healthy) && ctx.prev.phase.is_some() {
        ctx.event("RolloutHealthy", "Rollout is healthy");
    }
    ctx.status.phase = Some(phase);
    ctx.status.message = (!message.is_empty()).then_some(message);
}

/// Blue/green: once the active Service selects a ReplicaSet, ready and
/// available count that ReplicaSet only and the selector names its hash, so
/// an HPA scaling the Rollout sees the pods that serve, not the preview's
/// (Argo's `syncRolloutStatusBlueGreen`). `replicas` stays the total.
fn active_replica_set_counts(ctx: &mut Ctx<'_>) {
    let Some(bg) = ctx.rollout.spec.strategy.blue_green.as_ref() else {
        return;
    };
    let Some(active) = ctx.service_hash(&bg.active_service) else {
        return;
    };
    let Some(rs) = ctx
        .sets
        .iter()
        .find(|s| s.hash == active)
        .and_then(|s| s.rs)
    else {
        return;
    };
    let status = rs.status.as_ref();
    ctx.status.ready_replicas = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    ctx.status.available_replicas = status.and_then(|s| s.available_replicas).unwrap_or(0);
    if let Some(selector) = rs.spec.as_ref().map(|s| &s.selector) {
        ctx.status.selector = Some(label_selector_string(selector));
    }
}

fn pause_reason(ctx: &Ctx<'_>) -> String {
    match ctx.status.pause_conditions.first() {
        // The gate's own words say which webhook and what it last answered.
        Some(c) if c.reason == crate::api::PauseReason::PendingWebhook => ctx
            .waiting_for
            .clone()
            .unwrap_or_else(|| "PendingWebhook".to_string()),
        Some(c) => format!("{:?}", c.reason),
        None => "paused".to_string(),
    }
}

/// `key=value,...` form of the Rollout's selector for the scale subresource.
pub fn selector_string(rollout: &crate::api::Rollout) -> String {
    label_selector_string(&rollout.spec.selector)
}

pub fn label_selector_string(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    parts.join(",")
}
