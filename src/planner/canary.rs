//! Basic canary: steps move replicas between the stable and the new
//! ReplicaSet; the canary and stable Services follow the two hashes.

use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Ctx;
use super::analysis::{AnalysisKind, Gate, gate};
use super::replicas::{ScaleInput, fenceposts, rolling_scale, weighted_counts};
use super::traffic::Routing;
use super::webhooks::{self, Stage};
use crate::api::duration::{parse_int_or_duration, resolve_int_or_percent};
use crate::api::{
    CanaryStatus, CanaryStep, CanaryStrategy, DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS,
    DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS, PauseCondition, PauseReason, SetCanaryScale,
    TrafficWeights, WeightDestination,
};

pub(super) fn plan(ctx: &mut Ctx<'_>) {
    let Some(canary) = ctx.rollout.spec.strategy.canary.as_ref() else {
        return;
    };
    let replicas = ctx.rollout.replicas();
    let (surge, unavailable) = budgets(canary, replicas);
    let steps = &canary.steps;
    let snap = ctx.snap;
    let routing = Routing::new(canary, snap.namespace(), &snap.routes);
    let routing = routing.as_ref();
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

    // ... and start no further analysis, nor ask any webhook.
    let in_progress = !promoting_directly && !ctx.status.abort && !skip_steps;
    if in_progress {
        run_background_analysis(ctx, canary, index);
    }
    let halted = !promoting_directly && ctx.halted_by_inconclusive_analysis();
    // Confirm and pre-rollout hooks come before the canary gets any pod.
    let mut held = in_progress && !halted && webhooks::hold_before(ctx, Stage::Start);
    if in_progress && !held && !ctx.status.abort {
        webhooks::poll_rollback(ctx);
    }
    if !promoting_directly
        && !ctx.status.abort
        && !ctx.rollout.is_paused_by_user()
        && !halted
        && !held
    {
        index = advance_steps(ctx, steps, index, replicas, surge, routing);
        // A promote releases what waits now; left set, it would also skip
        // the next pause step before anyone saw it.
        if ctx.status.pause_conditions.is_empty() {
            ctx.status.controller_pause = false;
        }
        // Confirm-promotion holds the split the last step left.
        held = index >= step_count
            && !skip_steps
            && !ctx.status.abort
            && webhooks::hold_before(ctx, Stage::Promotion);
    }
    ctx.status.current_step_index = Some(index);
    if halted || held {
        ctx.freeze_replica_sets();
        match routing {
            Some(routing) => hold_routed_weights(ctx, routing),
            None => record_weights(ctx, canary),
        }
        ctx.waiting_for = Some(waiting_message(ctx, steps, index));
        return;
    }

    let (canary_target, stable_target) = match routing {
        Some(routing) => routed_targets(ctx, routing, index, replicas),
        None if ctx.status.abort => (0, replicas),
        None if index >= step_count => (replicas, 0),
        None => targets_at(steps, index, replicas, surge),
    };
    if ctx.rollout.is_paused_by_user() && !promoting_directly {
        // A manual pause freezes the split where it is.
        for set in &mut ctx.sets {
            set.desired = set.current;
        }
    } else if routing.is_some() {
        scale_routed(ctx, canary_target, stable_target, replicas);
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

    if let Some(routing) = routing {
        keep_replaced_stable_until_deadline(ctx);
        if ctx.rollout.is_paused_by_user() && !promoting_directly {
            hold_routed_weights(ctx, routing);
            ctx.waiting_for = Some(waiting_message(ctx, steps, index));
            return;
        }
    }
    let new = ctx.new;
    let routes_done = routing.is_none_or(|r| traffic_verified(ctx, r, r.max_weight(), None));
    if !ctx.status.abort
        && index >= step_count
        && ctx.sets[new].is_saturated(replicas)
        && !ctx.new_is_stable()
        && routes_done
    {
        promote(ctx, canary, routing.is_some());
    }
    route(ctx, canary);
    match routing {
        Some(routing) => plan_routes(ctx, routing, index),
        None => record_weights(ctx, canary),
    }
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
    routing: Option<&Routing<'_>>,
) -> i32 {
    while (index as usize) < steps.len() && !ctx.status.abort {
        let step = &steps[index as usize];
        let done = if step.set_weight.is_some() || step.set_canary_scale.is_some() {
            match routing {
                Some(routing) => {
                    let (canary, stable) = routed_targets(ctx, routing, index, replicas);
                    let weight = weight_at(steps, index);
                    split_reached(ctx, canary, stable)
                        && traffic_verified(ctx, routing, weight, Some(index as usize))
                }
                None => {
                    let (canary, stable) = targets_at(steps, index, replicas, surge);
                    split_reached(ctx, canary, stable)
                }
            }
        } else if step.set_header_route.is_some() || step.set_mirror_route.is_some() {
            // Validation allows these steps only with a router.
            routing.is_some_and(|routing| {
                let weight = applied_weight(ctx, routing);
                traffic_verified(ctx, routing, weight, Some(index as usize))
            })
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

/// With a router, the replica counts do not decide who gets traffic, so
/// the two ReplicaSets go straight to their targets (as in Argo, maxSurge
/// does not hold the canary back); superseded ones go to zero.
fn scale_routed(ctx: &mut Ctx<'_>, canary: i32, stable: i32, replicas: i32) {
    let (new, stable_index, promoted) = (ctx.new, ctx.stable, ctx.new_is_stable());
    for (index, set) in ctx.sets.iter_mut().enumerate() {
        set.desired = if index == new {
            if promoted { replicas } else { canary }
        } else if Some(index) == stable_index {
            stable
        } else {
            0
        };
        set.desired_deadline = None;
    }
}

fn promote(ctx: &mut Ctx<'_>, canary: &CanaryStrategy, routed: bool) {
    let new = ctx.new;
    if routed && let Some(previous) = ctx.stable.filter(|&s| s != new) {
        // Proxies and clients may still hold connections to the old pods;
        // they go after scaleDownDelaySeconds, not at the switch.
        let delay = canary
            .scale_down_delay_seconds
            .unwrap_or(DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS)
            .max(0);
        let deadline = ctx
            .now
            .checked_add(SignedDuration::from_secs(i64::from(delay)))
            .unwrap_or(ctx.now);
        let set = &mut ctx.sets[previous];
        set.desired = set.current.max(set.desired);
        set.desired_deadline = Some(deadline);
        ctx.wake_at(deadline);
    }
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
        verified: None,
    };
    ctx.status
        .canary
        .get_or_insert_with(CanaryStatus::default)
        .weights = Some(weights);
}

/// (canary, stable) pod counts with a traffic router. The canary gets the
/// pods for the step's weight (or its setCanaryScale) before any weight
/// moves; stable stays at full size unless dynamicStableScale, which keeps
/// exactly the pods for the share stable still carries. On abort the canary
/// keeps its pods until the routes are verified back on stable and
/// abortScaleDownDelaySeconds has passed (0: it keeps them).
fn routed_targets(
    ctx: &mut Ctx<'_>,
    routing: &Routing<'_>,
    index: i32,
    replicas: i32,
) -> (i32, i32) {
    let steps = &routing.canary.steps;
    let max = routing.max_weight();
    if ctx.status.abort {
        let delay = routing
            .canary
            .abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS);
        let on_stable = traffic_verified(ctx, routing, 0, None);
        let current = ctx.new_set().current;
        let aborted_at = ctx.status.aborted_at.as_ref().map_or(ctx.now, |t| t.0);
        let due = aborted_at
            .checked_add(SignedDuration::from_secs(i64::from(delay.max(0))))
            .unwrap_or(aborted_at);
        let canary = if !on_stable || delay == 0 {
            current
        } else if ctx.now >= due {
            0
        } else {
            ctx.wake_at(due);
            current
        };
        return (canary, replicas);
    }
    let (canary, weight) = if index as usize >= steps.len() {
        (replicas, max)
    } else {
        let weight = weight_at(steps, index);
        (routed_canary_count(steps, index, replicas, max), weight)
    };
    let stable = if routing.dynamic_stable_scale() {
        // Stable shrinks only to what it carries now and will carry next.
        let live = live_weight(ctx, routing).unwrap_or(0);
        share(replicas, max - live.min(weight), max)
    } else {
        replicas
    };
    (canary, stable.clamp(0, replicas))
}

/// Canary pods at step `index` with a router: its setCanaryScale, else the
/// pods the step's weight needs.
fn routed_canary_count(steps: &[CanaryStep], index: i32, replicas: i32, max: i32) -> i32 {
    let by_weight = share(replicas, weight_at(steps, index), max);
    let count = match canary_scale_at(steps, index) {
        Some(scale) => scale
            .replicas
            .or_else(|| scale.weight.map(|w| share(replicas, w, 100)))
            .unwrap_or(by_weight),
        None => by_weight,
    };
    count.clamp(0, replicas)
}

/// Pods for `weight` out of `max`, rounded up so a weight never lands on
/// fewer pods than it needs.
fn share(replicas: i32, weight: i32, max: i32) -> i32 {
    let max = i64::from(max.max(1));
    let pods = (i64::from(replicas) * i64::from(weight.clamp(0, max as i32)) + max - 1) / max;
    pods as i32
}

/// The largest weight `available` pods cover (the inverse of `share`).
fn carried(available: i32, replicas: i32, max: i32) -> i32 {
    if replicas <= 0 {
        return max;
    }
    let covered = i64::from(available.clamp(0, replicas)) * i64::from(max) / i64::from(replicas);
    covered as i32
}

/// The canary weight the routes carry now, if every route agrees.
fn live_weight(ctx: &Ctx<'_>, routing: &Routing<'_>) -> Option<i32> {
    let desired = routing.desired(0, None, &ctx.new_set().hash, stable_hash(ctx));
    routing.outcome(&desired).live_weight
}

fn stable_hash<'c>(ctx: &'c Ctx<'_>) -> &'c str {
    ctx.stable_set()
        .map_or(ctx.new_set().hash.as_str(), |s| s.hash.as_str())
}

/// Whether the routes carry `weight` and the managed routes of step
/// `index` (none for `None`), and the data plane has taken them up.
fn traffic_verified(
    ctx: &Ctx<'_>,
    routing: &Routing<'_>,
    weight: i32,
    index: Option<usize>,
) -> bool {
    let desired = routing.desired(weight, index, &ctx.new_set().hash, stable_hash(ctx));
    let outcome = routing.outcome(&desired);
    outcome.patches.is_empty() && outcome.in_effect && outcome.live_weight == Some(weight)
}

/// The weight Ramp last asked the routes for (0 before it ever did).
fn previous_weight(ctx: &Ctx<'_>) -> i32 {
    ctx.prev
        .canary
        .as_ref()
        .and_then(|c| c.weights.as_ref())
        .filter(|w| w.verified.is_some())
        .map_or(0, |w| w.canary.weight)
}

/// The weight to ask for now. It rises only once the canary has the
/// available pods for it, and with dynamicStableScale falls only as far as
/// stable's available pods can carry the rest.
fn applied_weight(ctx: &Ctx<'_>, routing: &Routing<'_>) -> i32 {
    let max = routing.max_weight();
    let steps = &routing.canary.steps;
    let index = ctx.status.current_step_index.unwrap_or(0);
    let replicas = ctx.rollout.replicas();
    let target = if ctx.status.abort || ctx.new_is_stable() {
        0
    } else if index as usize >= steps.len() {
        max
    } else {
        weight_at(steps, index)
    };
    let previous = previous_weight(ctx).clamp(0, max);
    let new = ctx.new_set();
    if target > previous {
        let needed = if index as usize >= steps.len() {
            replicas
        } else {
            routed_canary_count(steps, index, replicas, max)
        };
        if new.rs.is_some() && new.available >= needed.max(1) {
            target
        } else {
            previous
        }
    } else if target < previous && routing.dynamic_stable_scale() && !ctx.new_is_stable() {
        let stable_available = ctx.stable_set().map_or(0, |s| s.available);
        target.max(max - carried(stable_available, replicas, max))
    } else {
        target
    }
}

/// With a router the previous stable ReplicaSet, once replaced, keeps its
/// pods until its scale-down deadline.
fn keep_replaced_stable_until_deadline(ctx: &mut Ctx<'_>) {
    let now = ctx.now;
    let mut wake = None;
    for (index, set) in ctx.sets.iter_mut().enumerate() {
        if index == ctx.new || Some(index) == ctx.stable || set.current == 0 {
            continue;
        }
        if let Some(deadline) = set.deadline.filter(|d| now < *d) {
            set.desired = set.current;
            set.desired_deadline = Some(deadline);
            wake = Some(deadline);
        }
    }
    if let Some(deadline) = wake {
        ctx.wake_at(deadline);
    }
}

/// Decides the weight, writes nothing when the routes already carry it, and
/// records desired and verified weights in the status.
fn plan_routes(ctx: &mut Ctx<'_>, routing: &Routing<'_>, index: i32) {
    let steps = &routing.canary.steps;
    let weight = applied_weight(ctx, routing);
    let managed_index =
        (!ctx.status.abort && !ctx.new_is_stable() && (index as usize) < steps.len())
            .then_some(index as usize);
    let new_hash = ctx.new_set().hash.clone();
    let stable = stable_hash(ctx).to_string();
    let desired = routing.desired(weight, managed_index, &new_hash, &stable);
    let outcome = routing.outcome(&desired);
    let verified =
        outcome.patches.is_empty() && outcome.in_effect && outcome.live_weight == Some(weight);
    if !verified && ctx.waiting_for.is_none() {
        ctx.waiting_for =
            Some(outcome.waiting.clone().unwrap_or_else(|| {
                format!("waiting for the routes to carry canary weight {weight}")
            }));
    }
    let previous = previous_weight(ctx);
    if weight != previous {
        ctx.event(
            "TrafficWeightUpdated",
            format!(
                "Traffic weight to canary {} set from {previous} to {weight} of {}",
                new_hash,
                routing.max_weight()
            ),
        );
    }
    let status = ctx.status.canary.get_or_insert_with(CanaryStatus::default);
    status.weights = Some(TrafficWeights {
        canary: WeightDestination {
            weight,
            service_name: routing.canary.canary_service.clone(),
            pod_template_hash: Some(new_hash.clone()),
        },
        stable: WeightDestination {
            weight: routing.max_weight() - weight,
            service_name: routing.canary.stable_service.clone(),
            pod_template_hash: Some(stable.clone()),
        },
        verified: Some(verified),
    });
    status.verified_weight = outcome.live_weight;
    status.header_routes = desired.header_routes.iter().map(|r| (*r).clone()).collect();
    status.mirror_routes = desired.mirror_routes.iter().map(|r| (*r).clone()).collect();
    ctx.route_patches = outcome.patches;
}

/// Paused or halted: the routes keep what they carry; only the status's
/// verified view is refreshed.
fn hold_routed_weights(ctx: &mut Ctx<'_>, routing: &Routing<'_>) {
    let live = live_weight(ctx, routing);
    let status = ctx.status.canary.get_or_insert_with(CanaryStatus::default);
    status.verified_weight = live;
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
    } else if let Some(route) = &step.set_header_route {
        if route.matches.is_empty() {
            format!("setHeaderRoute: remove {}", route.name)
        } else {
            format!("setHeaderRoute: {}", route.name)
        }
    } else if let Some(route) = &step.set_mirror_route {
        if route.matches.is_empty() {
            format!("setMirrorRoute: remove {}", route.name)
        } else {
            format!(
                "setMirrorRoute: {} ({}%)",
                route.name,
                route.percentage.unwrap_or(100)
            )
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
