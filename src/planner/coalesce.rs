//! Whether a status write can wait. During an update each ReplicaSet status
//! change (a pod created, a pod ready, a pod gone) wakes the Rollout, and
//! most of them only move the replica counts; the transition they lead to
//! (the new set available, so promote) follows and writes the counts with
//! it. Writing each count change on its own cost about one status write per
//! update for nothing a user acts on. So a change that touches only counts,
//! while pods are still starting or stopping (another ReplicaSet status
//! change, and so another pass, is bound to come) and soon after the
//! Rollout last progressed, waits for the next write, or for a deadline at
//! most. Once every ReplicaSet has settled the counts are written at once.

use jiff::{SignedDuration, Timestamp};

use crate::api::RolloutStatus;

/// How long after the Rollout last progressed a count-only change may wait
/// while pods start or stop: long enough for a loaded cluster to make a
/// pod ready, short enough that `kubectl ramp get` never hides a pod that
/// cannot start for long.
pub const COUNTER_WRITE_DELAY: SignedDuration = SignedDuration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum StatusWrite {
    Unchanged,
    Now,
    /// Only counters changed; write at this time unless a transition
    /// writes them first.
    After(Timestamp),
}

/// `pods_settling`: some ReplicaSet's pods are not yet what its spec asks
/// (created, ready and available), so its status will change again.
pub fn decide(
    old: Option<&RolloutStatus>,
    new: &RolloutStatus,
    now: Timestamp,
    pods_settling: bool,
) -> StatusWrite {
    let Some(old) = old else {
        return StatusWrite::Now;
    };
    if old == new {
        return StatusWrite::Unchanged;
    }
    if !pods_settling || without_counters(old) != without_counters(new) {
        return StatusWrite::Now;
    }
    let last_progress = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0);
    match last_progress.and_then(|at| at.checked_add(COUNTER_WRITE_DELAY).ok()) {
        Some(due) if now < due => StatusWrite::After(due),
        _ => StatusWrite::Now,
    }
}

/// The status with what follows the pod counts blanked: the counts, the
/// message saying what the Rollout waits for (it moves with the counts
/// while the phase stays), the Available condition's "n of m replicas
/// available" message, and the Progressing condition's last update time (a
/// count change is progress).
fn without_counters(status: &RolloutStatus) -> RolloutStatus {
    let mut status = status.clone();
    status.message = None;
    status.replicas = 0;
    status.ready_replicas = 0;
    status.available_replicas = 0;
    status.updated_replicas = 0;
    for condition in &mut status.conditions {
        match condition.type_.as_str() {
            "Available" => {
                condition.message = None;
                condition.last_update_time = None;
            }
            "Progressing" => condition.last_update_time = None,
            _ => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
    }

    fn status(replicas: i32, available: i32, progressed: Timestamp) -> RolloutStatus {
        RolloutStatus {
            replicas,
            updated_replicas: replicas,
            ready_replicas: available,
            available_replicas: available,
            conditions: vec![
                RolloutCondition {
                    type_: "Available".into(),
                    status: "True".into(),
                    reason: Some("AvailableReplicas".into()),
                    message: Some(format!("{available} of 1 replicas available")),
                    last_transition_time: Some(Time(at(0))),
                    last_update_time: Some(Time(progressed)),
                },
                RolloutCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: Some("ReplicaSetUpdated".into()),
                    message: Some("ReplicaSet web-1 is progressing".into()),
                    last_transition_time: Some(Time(at(0))),
                    last_update_time: Some(Time(progressed)),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn counts_alone_wait_a_moment_after_progress() {
        let old = status(1, 1, at(10));
        let counted = status(2, 1, at(11));
        assert_eq!(
            decide(Some(&old), &counted, at(11), true),
            StatusWrite::After(at(20))
        );
        // Past the delay they are written.
        assert_eq!(decide(Some(&old), &counted, at(20), true), StatusWrite::Now);
        // Long after the last progress (a steady Rollout an HPA scales)
        // there is nothing to wait for.
        assert_eq!(decide(Some(&old), &counted, at(60), true), StatusWrite::Now);
        // Every ReplicaSet settled: no later change would carry them.
        assert_eq!(
            decide(Some(&old), &counted, at(11), false),
            StatusWrite::Now
        );
    }

    #[test]
    fn anything_besides_counts_is_written_at_once() {
        let old = status(1, 1, at(10));
        let mut moved = status(2, 1, at(11));
        moved.current_pod_hash = Some("new".into());
        assert_eq!(decide(Some(&old), &moved, at(11), true), StatusWrite::Now);
        let mut unavailable = status(1, 0, at(11));
        unavailable.conditions[0].status = "False".into();
        assert_eq!(
            decide(Some(&old), &unavailable, at(11), true),
            StatusWrite::Now
        );
        assert_eq!(decide(None, &old, at(11), true), StatusWrite::Now);
        assert_eq!(
            decide(Some(&old), &old.clone(), at(11), true),
            StatusWrite::Unchanged
        );
    }
}
