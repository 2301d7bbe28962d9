//! Blue/green: the new ReplicaSet comes up beside the stable one behind the
//! preview Service; promotion moves the active Service; the previous
//! ReplicaSet is scaled down after a delay.

use jiff::{SignedDuration, Timestamp};

use super::Ctx;
use super::analysis::{AnalysisKind, Gate, gate};
use super::canary::pause;
use super::webhooks::{self, Stage};
use crate::api::{
    BlueGreenStatus, BlueGreenStrategy, DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS,
    DEFAULT_BLUE_GREEN_SCALE_DOWN_DELAY_SECONDS, PauseReason,
};

pub(super) fn plan(ctx: &mut Ctx<'_>) {
    let Some(bg) = ctx.rollout.spec.strategy.blue_green.as_ref() else {
        return;
    };
    let replicas = ctx.rollout.replicas();
    let new = ctx.new;
    // The deadline is what marks a fast rollback; it stays until the
    // promotion so a switch that takes several passes stays fast.
    ctx.sets[new].desired_deadline = if ctx.rollback.fast && !ctx.rollback.within_window {
        ctx.sets[new].deadline
    } else {
        None
    };

    if ctx.stable.is_some() && !ctx.new_is_stable() && ctx.halted_by_inconclusive_analysis() {
        ctx.freeze_replica_sets();
        record_selectors(ctx, bg);
        return;
    }
    if ctx.stable.is_none() || ctx.new_is_stable() {
        ctx.sets[new].desired = replicas;
        ctx.route(Some(&bg.active_service), new);
        ctx.route(bg.preview_service.as_deref(), new);
        if ctx.sets[new].is_saturated(replicas) && !ctx.new_is_stable() {
            promote(ctx, bg, None);
        } else if !ctx.sets[new].is_saturated(replicas) {
            ctx.waiting_for = Some("updated replicas are still becoming available".into());
        }
    } else if ctx.status.abort {
        plan_abort(ctx, bg, replicas);
    } else {
        plan_switch(ctx, bg, replicas);
    }
    scale_down_old(ctx, bg);
    record_selectors(ctx, bg);
}

fn plan_abort(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy, replicas: i32) {
    let Some(stable) = ctx.stable else { return };
    let new = ctx.new;
    ctx.sets[stable].desired = replicas;
    ctx.sets[stable].desired_deadline = None;
    ctx.route(Some(&bg.active_service), stable);
    let delay = bg
        .abort_scale_down_delay_seconds
        .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS);
    // 0 keeps the aborted pods for debugging, as in Argo.
    if delay > 0 && ctx.sets[new].current > 0 {
        let deadline = ctx.sets[new]
            .deadline
            .unwrap_or_else(|| after(ctx.now, delay));
        if ctx.now >= deadline {
            ctx.sets[new].desired = 0;
        } else {
            ctx.sets[new].desired_deadline = Some(deadline);
            ctx.wake_at(deadline);
        }
    }
    // The preview keeps selecting the newest ReplicaSet (Argo's
    // reconcilePreviewService): an aborted revision stays reachable there for
    // debugging until its pods are scaled down; then it returns to stable
    // instead of selecting no pods.
    let preview_target = if ctx.sets[new].desired == 0 {
        stable
    } else {
        new
    };
    ctx.route(bg.preview_service.as_deref(), preview_target);
}

fn plan_switch(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy, replicas: i32) {
    let Some(stable) = ctx.stable else { return };
    let new = ctx.new;
    let preview_count = bg
        .preview_replica_count
        .unwrap_or(replicas)
        .clamp(0, replicas);
    ctx.sets[stable].desired = replicas;
    ctx.sets[stable].desired_deadline = None;
    ctx.route(Some(&bg.active_service), stable);
    // Until the new pods can serve, the preview stays on stable pods rather
    // than on a superseded preview that is being scaled away.
    let preview_target = if ctx.sets[new].available == 0 {
        stable
    } else {
        new
    };
    ctx.route(bg.preview_service.as_deref(), preview_target);
    // A full promotion and a fast rollback skip the pause, the analysis and
    // the webhooks.
    let full = ctx.status.promote_full || ctx.rollback.fast;
    // Confirm and pre-rollout hooks come before the preview gets any pod.
    if !full && webhooks::hold_before(ctx, Stage::Start) {
        ctx.sets[new].desired = ctx.sets[new].current.min(replicas);
        return;
    }
    if !full && !ctx.status.abort {
        webhooks::poll_rollback(ctx);
    }
    if ctx.status.abort {
        plan_abort(ctx, bg, replicas);
        return;
    }
    ctx.sets[new].desired = preview_count.max(ctx.sets[new].current.min(replicas));

    let status = ctx
        .status
        .blue_green
        .get_or_insert_with(BlueGreenStatus::default);
    if !status.scale_up_preview_check_point {
        ctx.sets[new].desired = preview_count;
        if !ctx.sets[new].is_saturated(preview_count) {
            ctx.waiting_for = Some("waiting for the preview ReplicaSet to become available".into());
            return;
        }
        if let Some(status) = ctx.status.blue_green.as_mut() {
            status.scale_up_preview_check_point = true;
        }
    }

    if !full && let Some(analysis) = &bg.pre_promotion_analysis {
        match gate(ctx, AnalysisKind::PrePromotion, analysis) {
            Gate::Passed => {}
            Gate::Waiting => {
                ctx.waiting_for = Some("waiting for pre-promotion analysis to complete".into());
                return;
            }
            Gate::Failed(message) => {
                ctx.abort(message);
                plan_abort(ctx, bg, replicas);
                return;
            }
            Gate::Inconclusive(message) => {
                pause(ctx, PauseReason::InconclusiveAnalysisRun, &message);
                return;
            }
        }
    }

    if !full && !pause_released(ctx, bg) {
        return;
    }

    if ctx.rollout.is_paused_by_user() {
        return;
    }
    if !full && webhooks::hold_before(ctx, Stage::Promotion) {
        return;
    }
    ctx.sets[new].desired = replicas;
    if !ctx.sets[new].is_saturated(replicas) {
        ctx.waiting_for = Some("scaling the new ReplicaSet to full size before the switch".into());
        return;
    }
    ctx.route(Some(&bg.active_service), new);

    if !full && let Some(analysis) = &bg.post_promotion_analysis {
        match gate(ctx, AnalysisKind::PostPromotion, analysis) {
            Gate::Passed => {}
            Gate::Waiting => {
                ctx.waiting_for =
                    Some("waiting for post-promotion verification to complete".into());
                return;
            }
            Gate::Failed(message) => {
                ctx.abort(message);
                plan_abort(ctx, bg, replicas);
                return;
            }
            Gate::Inconclusive(message) => {
                pause(ctx, PauseReason::InconclusiveAnalysisRun, &message);
                return;
            }
        }
    }
    promote(ctx, bg, Some(stable));
}

/// The pause before the switch: needed when auto-promotion is off or delayed.
fn pause_released(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy) -> bool {
    let auto = bg.auto_promotion_enabled.unwrap_or(true);
    let delay = bg.auto_promotion_seconds.unwrap_or(0);
    if auto && delay == 0 {
        return true;
    }
    let existing = ctx
        .status
        .pause_conditions
        .iter()
        .find(|c| c.reason == PauseReason::BlueGreenPause)
        .cloned();
    match existing {
        Some(condition) if auto => {
            let due = after(condition.start_time.0, delay);
            if ctx.now >= due {
                // Keep controllerPause set: it marks this revision's pause as released.
                ctx.status
                    .pause_conditions
                    .retain(|c| c.reason != PauseReason::BlueGreenPause);
                true
            } else {
                ctx.wake_at(due);
                false
            }
        }
        Some(_) => false,
        None if ctx.status.controller_pause => true,
        None => {
            let why = if auto {
                format!("BlueGreenPause: promoting automatically in {delay}s")
            } else {
                "BlueGreenPause: waiting for promotion".to_string()
            };
            pause(ctx, PauseReason::BlueGreenPause, &why);
            if auto {
                let due = after(ctx.now, delay);
                ctx.wake_at(due);
            }
            false
        }
    }
}

fn promote(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy, previous: Option<usize>) {
    let new = ctx.new;
    ctx.status.stable_rs = Some(ctx.sets[new].hash.clone());
    ctx.stable = Some(new);
    ctx.sets[new].desired_deadline = None;
    ctx.status.pause_conditions.clear();
    ctx.status.controller_pause = false;
    ctx.status.promote_full = false;
    if let Some(previous) = previous {
        let delay = bg
            .scale_down_delay_seconds
            .unwrap_or(DEFAULT_BLUE_GREEN_SCALE_DOWN_DELAY_SECONDS);
        let deadline = after(ctx.now, delay);
        ctx.sets[previous].desired_deadline = Some(deadline);
    }
    let message = format!(
        "Rollout completed: revision {} ({}) is active and stable",
        ctx.sets[new].revision, ctx.sets[new].hash
    );
    ctx.event("RolloutCompleted", message);
}

/// Old ReplicaSets: the one just replaced waits for its scale-down deadline;
/// anything else (superseded previews, aborted revisions) goes at once.
fn scale_down_old(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy) {
    let mut waiting: Vec<usize> = Vec::new();
    for index in 0..ctx.sets.len() {
        if index == ctx.new || Some(index) == ctx.stable || ctx.sets[index].rs.is_none() {
            continue;
        }
        let set = &mut ctx.sets[index];
        match set.desired_deadline {
            _ if set.current == 0 => set.desired_deadline = None,
            Some(deadline) if ctx.now < deadline => waiting.push(index),
            _ => {
                set.desired = 0;
                set.desired_deadline = None;
            }
        }
    }
    if let Some(limit) = bg.scale_down_delay_revision_limit {
        waiting.sort_by_key(|&i| std::cmp::Reverse(ctx.sets[i].revision));
        for &index in waiting.iter().skip(limit.max(0) as usize) {
            ctx.sets[index].desired = 0;
            ctx.sets[index].desired_deadline = None;
        }
        waiting.truncate(limit.max(0) as usize);
    }
    for index in waiting {
        if let Some(deadline) = ctx.sets[index].desired_deadline {
            ctx.wake_at(deadline);
        }
    }
}

fn record_selectors(ctx: &mut Ctx<'_>, bg: &BlueGreenStrategy) {
    let active = ctx.service_hash(&bg.active_service);
    let preview = bg
        .preview_service
        .as_deref()
        .and_then(|name| ctx.service_hash(name));
    let status = ctx
        .status
        .blue_green
        .get_or_insert_with(BlueGreenStatus::default);
    status.active_selector = active;
    status.preview_selector = preview;
}

fn after(from: Timestamp, seconds: i32) -> Timestamp {
    from.checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .unwrap_or(from)
}
