//! Whether a status write can wait. During an update each ReplicaSet status
//! change (a pod created, a pod ready, a pod gone) wakes the Rollout, and
//! most of them only move the replica counters; the transition they lead to
//! (the new set available, so promote) usually follows within a second and
//! writes the counters with it. Writing each counter change on its own cost
//! one or two status writes per update for nothing a user acts on, so a
//! change that touches only counters, soon after the Rollout last
//! progressed, waits for the next write, or for a short deadline at most.

use jiff::{SignedDuration, Timestamp};

use crate::api::RolloutStatus;

/// How long after the Rollout last progressed a counter-only change may
/// wait. Short enough that `kubectl ramp get` and an HPA reading
/// `status.replicas` see counts at most this late.
pub const COUNTER_WRITE_DELAY: SignedDuration = SignedDuration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
pub enum StatusWrite {
    Unchanged,
    Now,
    /// Only counters changed; write at this time unless a transition
    /// writes them first.
    After(Timestamp),
}

pub fn decide(old: Option<&RolloutStatus>, new: &RolloutStatus, now: Timestamp) -> StatusWrite {
    let Some(old) = old else {
        return StatusWrite::Now;
    };
    if old == new {
        return StatusWrite::Unchanged;
    }
    if without_counters(old) != without_counters(new) {
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
            decide(Some(&old), &counted, at(11)),
            StatusWrite::After(at(12))
        );
        // Past the delay they are written.
        assert_eq!(decide(Some(&old), &counted, at(12)), StatusWrite::Now);
        // Long after the last progress (a steady Rollout an HPA scales)
        // there is nothing to wait for.
        assert_eq!(decide(Some(&old), &counted, at(60)), StatusWrite::Now);
    }

    #[test]
    fn anything_besides_counts_is_written_at_once() {
        let old = status(1, 1, at(10));
        let mut moved = status(2, 1, at(11));
        moved.current_pod_hash = Some("new".into());
        assert_eq!(decide(Some(&old), &moved, at(11)), StatusWrite::Now);
        let mut unavailable = status(1, 0, at(11));
        unavailable.conditions[0].status = "False".into();
        assert_eq!(decide(Some(&old), &unavailable, at(11)), StatusWrite::Now);
        assert_eq!(decide(None, &old, at(11)), StatusWrite::Now);
        assert_eq!(
            decide(Some(&old), &old.clone(), at(11)),
            StatusWrite::Unchanged
        );
    }
}
