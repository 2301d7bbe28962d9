//! The replica counts Argo Rollouts' own end-to-end suite expects
//! (test/e2e/canary_test.go), replayed against the planner. Each test names
//! the Argo test it follows; the scenarios are restated here, not copied.

use super::*;

fn counts(world: &World, canary: &str, stable: &str) -> (i32, i32) {
    (world.replicas_of(canary), world.replicas_of(stable))
}

fn scale_to(world: &mut World, replicas: i32) {
    world.mark();
    world.rollout.spec.replicas = Some(replicas);
    world.rollout.metadata.generation = world.rollout.metadata.generation.map(|g| g + 1);
}

/// Argo: TestRolloutScalingWhenPaused. One replica at 25% still gets a
/// canary pod beside the stable one; scaling while paused keeps the share.
#[test]
fn scaling_while_paused_keeps_the_weight_share() {
    let steps = json!([{"setWeight": 25}, {"pause": {}}]);
    let mut world = World::new(rollout(canary(steps), 1));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(counts(&world, "web:2", "web:1"), (1, 1));
    scale_to(&mut world, 8);
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (2, 6));
    scale_to(&mut world, 4);
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (1, 3));
    assert_eq!(world.phase(), RolloutPhase::Paused);
}

/// Argo: TestRolloutWithMaxSurgeScalingDuringUpdate. No steps and a 100%
/// surge: the whole canary comes up at once while the stable side keeps
/// replicas minus maxUnavailable until the canary pods are available.
#[test]
fn a_full_surge_brings_the_whole_canary_up_and_follows_scaling() {
    let mut world = World::new(rollout(json!({"canary": {"maxSurge": "100%"}}), 4));
    deployed(&mut world);
    // The new pods are still starting for the whole scenario.
    world.broken.push(world.hash_for("web:2"));
    world.set_image("web:2");
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (4, 3));
    assert_eq!(world.status().replicas, 7);
    scale_to(&mut world, 8);
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (8, 3));
    assert_eq!(world.status().replicas, 11);
    scale_to(&mut world, 4);
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (4, 3));
    assert_eq!(world.status().replicas, 7);

    // Once the new pods are available the update finishes.
    world.broken.clear();
    let new = world.hash_for("web:2");
    if let Some(rs) = world.replica_sets.values_mut().find(|rs| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            == Some(&new)
    }) && let Some(status) = rs.status.as_mut()
    {
        status.ready_replicas = Some(status.replicas);
        status.available_replicas = Some(status.replicas);
    }
    world.settle();
    assert_eq!(counts(&world, "web:2", "web:1"), (4, 0));
    assert_eq!(world.phase(), RolloutPhase::Healthy);
}

/// Argo: TestRolloutScalingDuringUpdate. maxSurge 2 and maxUnavailable 0
/// with a canary that never becomes available: the stable pods stay, the
/// canary takes only the surge, and scaling moves the canary side alone.
#[test]
fn an_unavailable_canary_only_takes_the_surge_while_scaling() {
    let mut world = World::new(rollout(
        json!({"canary": {"maxSurge": 2, "maxUnavailable": 0}}),
        4,
    ));
    deployed(&mut world);
    world.broken.push(world.hash_for("web:bad"));
    world.set_image("web:bad");
    world.settle();
    assert_eq!(counts(&world, "web:bad", "web:1"), (2, 4));
    assert_eq!(world.status().replicas, 6);
    scale_to(&mut world, 8);
    world.settle();
    assert_eq!(counts(&world, "web:bad", "web:1"), (6, 4));
    assert_eq!(world.status().replicas, 10);
    scale_to(&mut world, 4);
    world.settle();
    assert_eq!(counts(&world, "web:bad", "web:1"), (2, 4));
    assert_eq!(world.status().replicas, 6);
}
