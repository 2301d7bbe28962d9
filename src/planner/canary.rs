//! Basic canary: steps move replicas between the stable and the new
//! ReplicaSet; the canary and stable Services follow the two hashes.

use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Ctx;
use super::analysis::{AnalysisKind, Gate, gate};
use super::replicas::{ScaleInput, fenceposts, rolling_scale, weighted_counts};
use crate::api::duration::{parse_int_or_duration, resolve_int_or_percent};
use crate::api::{
    CanaryStatus, CanaryStep, CanaryStrategy, PauseCondition, PauseReason, SetCanaryScale,
    TrafficWeights, WeightDestination,
};

pub(super) fn plan(ctx: &mut Ctx<'_>) {
    let Some(canary) = ctx.rollout.spec.strategy.canary.as_ref() else {
        return;
    };
    let replicas = ctx.rollout.replicas();
    let (surge, unavailable) = budgets(canary, replicas);
    let steps = &canary.steps;
    let step_count = steps.len() as i32;

    let promoting_directly = ctx.stable.is_none() || ctx.new_is_stable();
    let mut index = ctx
        .status
        .current_step_index
        .unwrap_or(0)
        .clamp(0, step_count);
    // A full promotion and a rollback within the window skip what is left.
    let skip_steps = ctx.status.promote_full || ctx.rollback.within_window;
    if promoting_directly || skip_steps {
        index = step_count;
    }

    // ... and start no further analysis.
    if !promoting_directly && !ctx.status.abort && !skip_steps {
        run_background_analysis(ctx, canary, index);
    }
    let halted = !promoting_directly && ctx.halted_by_inconclusive_analysis();
    if !promoting_directly && !ctx.status.abort && !ctx.rollout.is_paused_by_user() && !halted {
        index = advance_steps(ctx, steps, index, replicas, surge);
        // A promote releases what waits now; left set, it would also skip
        // the next pause step before anyone saw it.
        if ctx.status.pause_conditions.is_empty() {
            ctx.status.controller_pause = false;
        }
    }
    ctx.status.current_step_index = Some(index);
    if halted {
        ctx.freeze_replica_sets();
        record_weights(ctx, canary);
        ctx.waiting_for = Some(waiting_message(ctx, steps, index));
        return;
    }

    let (canary_target, stable_target) = if ctx.status.abort {
        (0, replicas)
    } else if index >= step_count {
        (replicas, 0)
    } else {
        targets_at(steps, index, replicas, surge)
    };
    if ctx.rollout.is_paused_by_user() && !promoting_directly {
        // A manual pause freezes the split where it is.
        for set in &mut ctx.sets {
            set.desired = set.current;
        }
    } else {
        scale(
            ctx,
            canary_target,
            stable_target,
            replicas,
            surge,
            unavailable,
        );
    }

    let new = ctx.new;
    if !ctx.status.abort
        && index >= step_count
        && ctx.sets[new].is_saturated(replicas)
        && !ctx.new_is_stable()
    {
        promote(ctx);
    }
    route(ctx, canary);
    record_weights(ctx, canary);
    ctx.waiting_for = Some(waiting_message(ctx, steps, index));
}

fn budgets(canary: &CanaryStrategy, replicas: i32) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    // Validation has already rejected unparsable values; the defaults only cover that impossible case.
    let surge = resolve_int_or_percent(
        canary.max_surge.as_ref().unwrap_or(&quarter),
        replicas,
        true,
    )
    .unwrap_or(1);
    let unavailable = resolve_int_or_percent(
        canary.max_unavailable.as_ref().unwrap_or(&quarter),
        replicas,
        false,
    )
    .unwrap_or(0);
    fenceposts(surge, unavailable)
}

/// The weight in effect while at `index`: the last setWeight at or before it.
pub fn weight_at(steps: &[CanaryStep], index: i32) -> i32 {
    if index as usize >= steps.len() {
        return 100;
    }
    steps[..=index as usize]
        .iter()
        .rev()
        .find_map(|s| s.set_weight)
        .unwrap_or(0)
}

/// The setCanaryScale in force at `index`: the latest one at or before it,
/// through any later setWeight steps, until one says matchTrafficWeight.
fn canary_scale_at(steps: &[CanaryStep], index: i32) -> Option<&SetCanaryScale> {
    let upto = steps.get(..=usize::try_from(index).ok()?)?;
    let scale = upto
        .iter()
        .rev()
        .find_map(|s| s.set_canary_scale.as_ref())?;
    (scale.match_traffic_weight != Some(true)).then_some(scale)
}

/// (canary, stable) pod counts while at step `index`. A setCanaryScale in
/// force overrides the canary count only (Ramp allows it without a traffic
/// router; stable keeps the weight's share).
fn targets_at(steps: &[CanaryStep], index: i32, replicas: i32, surge: i32) -> (i32, i32) {
    let weight = weight_at(steps, index);
    let (canary, stable) = weighted_counts(replicas, weight, surge);
    match canary_scale_at(steps, index) {
        Some(scale) => {
            let count = scale
                .replicas
                .or_else(|| scale.weight.map(|w| (replicas * w + 99) / 100))
                .unwrap_or(canary);
            (count.clamp(0, replicas), stable)
        }
        _ => (canary, stable),
    }
}

fn advance_steps(
    ctx: &mut Ctx<'_>,
    steps: &[CanaryStep],
    mut index: i32,
    replicas: i32,
    surge: i32,
) -> i32 {
    while (index as usize) < steps.len() && !ctx.status.abort {
        let step = &steps[index as usize];
        let done = if step.set_weight.is_some() || step.set_canary_scale.is_some() {
            let (canary, stable) = targets_at(steps, index, replicas, surge);
            split_reached(ctx, canary, stable)
        } else if let Some(pause) = &step.pause {
            pause_released(ctx, pause.duration.as_ref(), index)
        } else if let Some(analysis) = &step.analysis {
            match gate(ctx, AnalysisKind::Step(index), analysis) {
                Gate::Passed => true,
                Gate::Waiting => false,
                Gate::Failed(message) => {
                    ctx.abort(message);
                    false
                }
                Gate::Inconclusive(message) => {
                    pause(ctx, PauseReason::InconclusiveAnalysisRun, &message);
                    false
                }
            }
        } else {
            false
        };
        if !done {
            break;
        }
        ctx.event(
            "RolloutStepCompleted",
            format!(
                "Rollout step {}/{} completed ({})",
                index + 1,
                steps.len(),
                describe(step)
            ),
        );
        index += 1;
    }
    index
}

fn split_reached(ctx: &Ctx<'_>, canary: i32, stable: i32) -> bool {
    let new = ctx.new_set();
    let stable_ok = ctx
        .stable_set()
        .is_some_and(|s| s.current == stable && s.available >= stable);
    let others_down = ctx
        .sets
        .iter()
        .enumerate()
        .all(|(i, s)| i == ctx.new || Some(i) == ctx.stable || s.current == 0);
    new.is_saturated(canary) && stable_ok && others_down
}

/// A pause step: paused until promoted, or until its duration has passed.
fn pause_released(ctx: &mut Ctx<'_>, duration: Option<&IntOrString>, index: i32) -> bool {
    let existing = ctx
        .status
        .pause_conditions
        .iter()
        .find(|c| c.reason == PauseReason::CanaryPauseStep)
        .cloned();
    match existing {
        Some(condition) => {
            // Validation guarantees the duration parses.
            let Some(length) = duration.and_then(|d| parse_int_or_duration(d).ok()) else {
                return false;
            };
            let length = SignedDuration::try_from(length).unwrap_or(SignedDuration::MAX);
            let due = condition
                .start_time
                .0
                .checked_add(length)
                .unwrap_or(condition.start_time.0);
            if ctx.now >= due {
                ctx.status
                    .pause_conditions
                    .retain(|c| c.reason != PauseReason::CanaryPauseStep);
                ctx.status.controller_pause = false;
                true
            } else {
                ctx.wake_at(due);
                false
            }
        }
        None if ctx.status.controller_pause => {
            // The pause this controller set was cleared by a promote.
            ctx.status.controller_pause = false;
            true
        }
        None => {
            let label = match duration {
                Some(d) => format!("pause step {} for {}", index + 1, show(d)),
                None => format!("pause step {} until promoted", index + 1),
            };
            pause(ctx, PauseReason::CanaryPauseStep, &label);
            if let Some(length) = duration.and_then(|d| parse_int_or_duration(d).ok()) {
                let length = SignedDuration::try_from(length).unwrap_or(SignedDuration::MAX);
                let due = ctx.now.checked_add(length).unwrap_or(ctx.now);
                ctx.wake_at(due);
            }
            false
        }
    }
}

pub(super) fn pause(ctx: &mut Ctx<'_>, reason: PauseReason, why: &str) {
    if ctx
        .status
        .pause_conditions
        .iter()
        .any(|c| c.reason == reason)
    {
        return;
    }
    let start_time = Time(ctx.now);
    ctx.status
        .pause_conditions
        .push(PauseCondition { reason, start_time });
    ctx.status.controller_pause = true;
    ctx.waiting_for = Some(why.to_string());
}

fn run_background_analysis(ctx: &mut Ctx<'_>, canary: &CanaryStrategy, index: i32) {
    let Some(background) = &canary.analysis else {
        return;
    };
    if index < background.starting_step.unwrap_or(0) {
        return;
    }
    match gate(ctx, AnalysisKind::Background, &background.analysis) {
        Gate::Failed(message) => ctx.abort(message),
        Gate::Inconclusive(message) => pause(ctx, PauseReason::InconclusiveAnalysisRun, &message),
        Gate::Passed | Gate::Waiting => {}
    }
}

fn scale(ctx: &mut Ctx<'_>, canary: i32, stable: i32, replicas: i32, surge: i32, unavailable: i32) {
    // Scale-down priority: oldest others first, then stable, then the canary.
    let mut order: Vec<usize> = (0..ctx.sets.len())
        .filter(|&i| i != ctx.new && Some(i) != ctx.stable)
        .collect();
    order.extend(ctx.stable.filter(|&s| s != ctx.new));
    order.push(ctx.new);
    let inputs: Vec<ScaleInput> = order
        .iter()
        .map(|&i| {
            let set = &ctx.sets[i];
            let target = if i == ctx.new {
                if ctx.new_is_stable() {
                    replicas
                } else {
                    canary
                }
            } else if Some(i) == ctx.stable {
                stable
            } else {
                0
            };
            ScaleInput {
                current: set.current,
                available: set.available,
                target,
            }
        })
        .collect();
    let counts = rolling_scale(replicas, surge, unavailable, &inputs);
    for (&i, count) in order.iter().zip(counts) {
        ctx.sets[i].desired = count;
        ctx.sets[i].desired_deadline = None;
    }
}

fn promote(ctx: &mut Ctx<'_>) {
    let new = ctx.new;
    ctx.status.stable_rs = Some(ctx.sets[new].hash.clone());
    ctx.stable = Some(new);
    ctx.status.pause_conditions.clear();
    ctx.status.controller_pause = false;
    ctx.status.promote_full = false;
    let message = format!(
        "Rollout completed: revision {} ({}) is stable",
        ctx.sets[new].revision, ctx.sets[new].hash
    );
    ctx.event("RolloutCompleted", message);
}

fn route(ctx: &mut Ctx<'_>, canary: &CanaryStrategy) {
    let stable = ctx.stable.unwrap_or(ctx.new);
    // Until the new pods can serve, the canary Service stays on stable pods
    // (not on a superseded canary that is being scaled away).
    let canary_target = if ctx.status.abort || ctx.sets[ctx.new].available == 0 {
        stable
    } else {
        ctx.new
    };
    // At 100% the stable ReplicaSet drains before the promotion is recorded;
    // the stable Service follows the traffic to the new pods rather than
    // select a ReplicaSet that is being emptied.
    let stable_target = if !ctx.status.abort && ctx.sets[stable].desired == 0 {
        ctx.new
    } else {
        stable
    };
    ctx.route(canary.stable_service.as_deref(), stable_target);
    ctx.route(canary.canary_service.as_deref(), canary_target);
}

fn record_weights(ctx: &mut Ctx<'_>, canary: &CanaryStrategy) {
    let new = ctx.new_set();
    let total: i32 = ctx.sets.iter().map(|s| s.available).sum();
    let canary_weight = if ctx.new_is_stable() {
        100
    } else if total > 0 {
        (new.available * 100 + total / 2) / total
    } else {
        0
    };
    let weights = TrafficWeights {
        canary: WeightDestination {
            weight: canary_weight,
            service_name: canary.canary_service.clone(),
            pod_template_hash: Some(new.hash.clone()),
        },
        stable: WeightDestination {
            weight: 100 - canary_weight,
            service_name: canary.stable_service.clone(),
            pod_template_hash: ctx.stable_set().map(|s| s.hash.clone()),
        },
    };
    ctx.status
        .canary
        .get_or_insert_with(CanaryStatus::default)
        .weights = Some(weights);
}

fn waiting_message(ctx: &Ctx<'_>, steps: &[CanaryStep], index: i32) -> String {
    let step_count = steps.len();
    if let Some(waiting) = &ctx.waiting_for {
        return waiting.clone();
    }
    let new = ctx.new_set();
    if new.current > new.available {
        "updated replicas are still becoming available".into()
    } else if let Some(step) = steps.get(index as usize) {
        format!(
            "waiting for step {}/{step_count} ({})",
            index + 1,
            describe(step)
        )
    } else if ctx
        .sets
        .iter()
        .enumerate()
        .any(|(i, s)| i != ctx.new && s.current > 0)
    {
        "old replicas are pending termination".into()
    } else {
        "more replicas need to be updated".into()
    }
}

pub(crate) fn describe(step: &CanaryStep) -> String {
    if let Some(weight) = step.set_weight {
        format!("setWeight: {weight}")
    } else if let Some(pause) = &step.pause {
        match &pause.duration {
            Some(d) => format!("pause: {}", show(d)),
            None => "pause".into(),
        }
    } else if let Some(scale) = &step.set_canary_scale {
        match (scale.replicas, scale.weight) {
            (Some(r), _) => format!("setCanaryScale: {r} replicas"),
            (_, Some(w)) => format!("setCanaryScale: {w}%"),
            _ => "setCanaryScale: matchTrafficWeight".into(),
        }
    } else if let Some(analysis) = &step.analysis {
        let names: Vec<&str> = analysis
            .templates
            .iter()
            .map(|t| t.template_name.as_str())
            .collect();
        format!("analysis: {}", names.join(", "))
    } else {
        "unknown".into()
    }
}

fn show(duration: &IntOrString) -> String {
    match duration {
        IntOrString::Int(seconds) => format!("{seconds}s"),
        IntOrString::String(text) => text.clone(),
    }
}
