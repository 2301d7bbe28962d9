//! `spec.restartAt`: pods created before that time are evicted one at a
//! time, only while every ReplicaSet is fully available, so a restart never
//! takes away more than one pod of capacity.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Ctx, PodInfo};
use crate::api::Rollout;

/// Times at the precision the API stores them: whole seconds. A `restartAt`
/// written with a fraction would otherwise never be reached by the
/// `restartedAt` recorded for it, and the restart would stay pending forever.
fn whole_seconds(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

fn restart_time(rollout: &Rollout) -> Option<Timestamp> {
    rollout.spec.restart_at.as_ref().map(|t| whole_seconds(t.0))
}

fn restarted_since(restarted_at: Option<&Time>, at: Timestamp) -> bool {
    restarted_at.is_some_and(|t| whole_seconds(t.0) >= at)
}

/// The restart time still to be carried out, if it has arrived.
pub fn pending_restart(rollout: &Rollout, now: Timestamp) -> Option<Timestamp> {
    let at = restart_time(rollout)?;
    let done = restarted_since(
        rollout
            .status
            .as_ref()
            .and_then(|s| s.restarted_at.as_ref()),
        at,
    );
    (!done && at <= now).then_some(at)
}

pub(super) fn plan(ctx: &mut Ctx<'_>) {
    let Some(at) = restart_time(ctx.rollout) else {
        return;
    };
    if restarted_since(ctx.status.restarted_at.as_ref(), at) {
        return;
    }
    if at > ctx.now {
        ctx.wake_at(at);
        return;
    }
    let Some(pods) = ctx.snap.pods.as_ref() else {
        return;
    };
    let live: Vec<&str> = ctx
        .sets
        .iter()
        .filter(|s| s.desired > 0)
        .map(|s| s.hash.as_str())
        .collect();
    let mut stale: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| {
            whole_seconds(p.created) < at && !p.terminating && live.contains(&p.hash.as_str())
        })
        .collect();
    if stale.is_empty() {
        ctx.status.restarted_at = Some(Time(at));
        ctx.event(
            "RolloutRestarted",
            format!("All pods created before {at} have been restarted"),
        );
        return;
    }
    ctx.waiting_for = Some("rollout is restarting".into());
    ctx.restarting = true;
    let settled = ctx
        .sets
        .iter()
        .all(|s| s.desired == s.current && s.available >= s.current);
    if !settled || pods.iter().any(|p| p.terminating) {
        return;
    }
    // Stable pods first, then the newest revision, then anything else; oldest pod first.
    let stable = ctx.stable_set().map(|s| s.hash.clone());
    let new = ctx.new_set().hash.clone();
    let rank = |pod: &PodInfo| {
        if Some(&pod.hash) == stable.as_ref() {
            0
        } else if pod.hash == new {
            1
        } else {
            2
        }
    };
    stale.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(a.created.cmp(&b.created))
            .then(a.name.cmp(&b.name))
    });
    let victim = stale[0].name.clone();
    ctx.event(
        "RestartingPod",
        format!("Evicting pod {victim} to restart it ({} left)", stale.len()),
    );
    ctx.evictions.push(victim);
}
