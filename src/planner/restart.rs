//! `spec.restartAt`: pods created before that time are evicted one at a
//! time, only while every ReplicaSet is fully available, so a restart never
//! takes away more than one pod of capacity.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Ctx, PodInfo};
use crate::api::Rollout;

/// The restart time still to be carried out, if it has arrived.
pub fn pending_restart(rollout: &Rollout, now: Timestamp) -> Option<Timestamp> {
    let at = rollout.spec.restart_at.as_ref()?.0;
    let done = rollout
        .status
        .as_ref()
        .and_then(|s| s.restarted_at.as_ref())
        .is_some_and(|t| t.0 >= at);
    (!done && at <= now).then_some(at)
}

pub(super) fn plan(ctx: &mut Ctx<'_>) {
    let Some(at) = ctx.rollout.spec.restart_at.as_ref().map(|t| t.0) else {
        return;
    };
    if ctx.status.restarted_at.as_ref().is_some_and(|t| t.0 >= at) {
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
        .filter(|p| p.created < at && !p.terminating && live.contains(&p.hash.as_str()))
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
