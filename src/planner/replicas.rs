//! Replica arithmetic for basic canary (no traffic router): weights become
//! pod counts, and moves between ReplicaSets honour maxSurge/maxUnavailable.

/// Splits `replicas` into (canary, stable) for a traffic weight in percent,
/// choosing the split whose canary share is closest to the weight (Argo's
/// rule, so counts match after migrating).
///
/// The canary count is the weight's share of `replicas` rounded up or down;
/// the total is `replicas`, or `replicas + 1` when `max_surge` allows one
/// extra pod. The nearest share wins, the larger canary on a tie. For a
/// weight strictly between 0 and 100 neither side may be empty, unless a
/// single replica without surge leaves no choice.
/// Examples: 5 @ 20% → 1/4, 3 @ 20% → 1/3 (surge), 10 @ 41% → 4/6, 3 @ 50% → 2/2.
pub fn weighted_counts(replicas: i32, weight: i32, max_surge: i32) -> (i32, i32) {
    let weight = weight.clamp(0, 100);
    if replicas <= 0 {
        return (0, 0);
    }
    let exact = replicas * weight;
    let floor = exact / 100;
    let ceil = (exact + 99) / 100;
    let zero_allowed = weight == 0 || weight == 100 || (replicas == 1 && max_surge == 0);
    // Rounding is a tie when total × weight / 100 ends in exactly .5.
    let tied = |total: i32| (total * weight) % 100 == 50;
    let mut options: Vec<(i32, i32)> = Vec::new();
    if ceil < replicas || zero_allowed {
        options.push((ceil, replicas));
    }
    if !tied(replicas) && (floor != 0 || zero_allowed) {
        options.push((floor, replicas));
    }
    if max_surge > 0 {
        options.push((ceil, replicas + 1));
        if !tied(replicas + 1) && (floor != 0 || zero_allowed) {
            options.push((floor, replicas + 1));
        }
    }
    // Distance of canary/total from weight/100, as the fraction |100c − w·t| / t;
    // two fractions compare by cross-multiplying, so no floating point is needed.
    let distance = |(canary, total): (i32, i32)| ((canary * 100 - weight * total).abs(), total);
    let closer = |a: (i32, i32), b: (i32, i32)| {
        let (da, ta) = distance(a);
        let (db, tb) = distance(b);
        i64::from(da) * i64::from(tb) < i64::from(db) * i64::from(ta)
    };
    let mut best = match options.first() {
        Some(&first) => first,
        None => return (0, replicas),
    };
    for &option in &options[1..] {
        if closer(option, best) {
            best = option;
        }
    }
    (best.0, best.1 - best.0)
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
    // When replicas drop mid-update the sets can hold more than the ceiling
    // even at their targets: the excess goes too, pods that cannot serve
    // first, available ones only as far as min_available allows (Argo's
    // adjustReplicaWithinLimits has the same effect).
    let ceiling = replicas + max_surge;
    let mut over = counts.iter().sum::<i32>() - ceiling;
    for (index, set) in sets.iter().enumerate() {
        if over <= 0 {
            break;
        }
        let serving = set.available.min(counts[index]);
        let idle = (counts[index] - serving).min(over).max(0);
        counts[index] -= idle;
        over -= idle;
    }
    for (index, set) in sets.iter().enumerate() {
        if over <= 0 || removable_available <= 0 {
            break;
        }
        let serving = set.available.min(counts[index]);
        let removed = serving.min(over).min(removable_available);
        counts[index] -= removed;
        over -= removed;
        removable_available -= removed;
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
    fn weights_become_the_closest_replica_split() {
        // Expected splits as Argo computes them (utils/replicaset/canary.go).
        let cases = [
            (5, 20, (1, 4)),
            (5, 60, (3, 2)),
            (10, 41, (4, 6)),
            (4, 50, (2, 2)),
            (5, 0, (0, 5)),
            (5, 100, (5, 0)),
            // With surge, one extra pod gets closer to a small or large weight.
            (10, 1, (1, 10)),
            (10, 99, (10, 1)),
            (3, 20, (1, 3)),
            (3, 50, (2, 2)),
            (2, 10, (1, 2)),
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
    fn weights_without_surge_stay_within_replicas() {
        assert_eq!(weighted_counts(3, 20, 0), (1, 2));
        assert_eq!(weighted_counts(3, 50, 0), (2, 1));
        assert_eq!(weighted_counts(10, 41, 0), (4, 6));
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
