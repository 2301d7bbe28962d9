//! Replica arithmetic for basic canary (no traffic router): weights become
//! pod counts, and moves between ReplicaSets honour maxSurge/maxUnavailable.

/// Splits `replicas` into (canary, stable) for a traffic weight in percent.
///
/// Rounding: canary = round-half-up(replicas × weight / 100). For a weight
/// strictly between 0 and 100 each side keeps at least one pod, so a 1%
/// canary still exists and a 99% canary still leaves a stable pod; with a
/// single replica that means one extra (surge) pod when `max_surge > 0`.
/// Examples: 5 @ 20% → 1/4, 5 @ 60% → 3/2, 10 @ 41% → 4/6, 4 @ 50% → 2/2.
pub fn weighted_counts(replicas: i32, weight: i32, max_surge: i32) -> (i32, i32) {
    let weight = weight.clamp(0, 100);
    if replicas <= 0 {
        return (0, 0);
    }
    if weight == 0 {
        return (0, replicas);
    }
    if weight == 100 {
        return (replicas, 0);
    }
    if replicas == 1 {
        return if max_surge > 0 {
            (1, 1)
        } else if weight >= 50 {
            (1, 0)
        } else {
            (0, 1)
        };
    }
    let canary = ((replicas * weight + 50) / 100).clamp(1, replicas - 1);
    (canary, replicas - canary)
}

/// Resolved surge and unavailability budgets. When both resolve to zero,
/// unavailability is forced to one so a rollout can always make progress.
pub fn fenceposts(max_surge: i32, max_unavailable: i32) -> (i32, i32) {
    if max_surge == 0 && max_unavailable == 0 {
        (0, 1)
    } else {
        (max_surge, max_unavailable)
    }
}

/// One ReplicaSet as the scaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleInput {
    pub current: i32,
    pub available: i32,
    pub target: i32,
}

/// Moves every ReplicaSet toward its target without exceeding
/// `replicas + max_surge` pods in total or dropping below
/// `replicas - max_unavailable` available pods. Inputs are in scale-down
/// priority order (oldest first). Returns the new count for each input.
pub fn rolling_scale(
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
    sets: &[ScaleInput],
) -> Vec<i32> {
    let mut counts: Vec<i32> = sets.iter().map(|s| s.current).collect();
    let min_available = (replicas - max_unavailable).max(0);
    let mut removable_available = sets.iter().map(|s| s.available).sum::<i32>() - min_available;
    for (index, set) in sets.iter().enumerate() {
        if set.target >= set.current {
            continue;
        }
        let excess = set.current - set.target;
        // Pods that are not available cost nothing to remove.
        let unavailable = (set.current - set.available).clamp(0, excess);
        let available_to_remove = (excess - unavailable).min(removable_available.max(0));
        removable_available -= available_to_remove;
        counts[index] = set.current - unavailable - available_to_remove;
    }
    let mut room = replicas + max_surge - counts.iter().sum::<i32>();
    for (index, set) in sets.iter().enumerate() {
        if set.target <= counts[index] || room <= 0 {
            continue;
        }
        let increase = (set.target - counts[index]).min(room);
        counts[index] += increase;
        room -= increase;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_documented_counts() {
        let cases = [
            (5, 20, (1, 4)),
            (5, 60, (3, 2)),
            (10, 41, (4, 6)),
            (4, 50, (2, 2)),
            (5, 0, (0, 5)),
            (5, 100, (5, 0)),
            (10, 1, (1, 9)),
            (10, 99, (9, 1)),
            (3, 50, (2, 1)),
            (0, 50, (0, 0)),
        ];
        for (replicas, weight, expected) in cases {
            assert_eq!(
                weighted_counts(replicas, weight, 1),
                expected,
                "{replicas} @ {weight}%"
            );
        }
    }

    #[test]
    fn single_replica_uses_a_surge_pod_when_allowed() {
        assert_eq!(weighted_counts(1, 20, 1), (1, 1));
        assert_eq!(weighted_counts(1, 20, 0), (0, 1));
        assert_eq!(weighted_counts(1, 80, 0), (1, 0));
    }

    #[test]
    fn zero_budgets_are_forced_to_allow_one_unavailable() {
        assert_eq!(fenceposts(0, 0), (0, 1));
        assert_eq!(fenceposts(2, 0), (2, 0));
    }

    fn set(current: i32, available: i32, target: i32) -> ScaleInput {
        ScaleInput {
            current,
            available,
            target,
        }
    }

    #[test]
    fn first_canary_step_moves_one_pod_in_one_pass() {
        // 5 replicas, 25% budgets: surge 2, unavailable 1; stable 5 -> 4, canary 0 -> 1.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(5, 5, 4), set(0, 0, 1)]),
            vec![4, 1]
        );
    }

    #[test]
    fn scale_down_waits_for_new_pods_to_become_available() {
        // Full promotion from 4/1 with nothing new available yet: stable may lose
        // one pod, canary may grow to the surge limit.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(4, 4, 0), set(1, 1, 5)]),
            vec![3, 4]
        );
        // Canary pods still starting: no further stable scale-down.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(3, 3, 0), set(4, 1, 5)]),
            vec![3, 4]
        );
    }

    #[test]
    fn unavailable_pods_are_removed_freely() {
        // An aborted canary whose pods never became ready is removed at once.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(3, 0, 0), set(4, 4, 5)]),
            vec![0, 5]
        );
    }

    #[test]
    fn abort_returns_replicas_to_stable_within_budgets() {
        // Canary 3, stable 2 aborted: canary loses one available pod, stable grows to 5.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(3, 3, 0), set(2, 2, 5)]),
            vec![2, 5]
        );
        // Once stable is available the rest of the canary goes.
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(2, 2, 0), set(5, 5, 5)]),
            vec![0, 5]
        );
    }

    #[test]
    fn nothing_moves_when_targets_are_met() {
        assert_eq!(
            rolling_scale(5, 2, 1, &[set(4, 4, 4), set(1, 1, 1)]),
            vec![4, 1]
        );
    }
}
