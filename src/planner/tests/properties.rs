//! Property tests: random specs and random cluster histories drive the
//! simulated world, and the safety invariants are checked after every plan.
//! `PROPTEST_CASES` overrides the case count; failing inputs are saved under
//! `proptest-regressions/` and replayed first on every run.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use super::*;

/// One generated spec, kept small so failures shrink to something readable.
#[derive(Debug, Clone)]
enum SpecShape {
    Canary {
        steps: Vec<StepShape>,
        max_surge: i32,
        max_unavailable: i32,
        background: bool,
    },
    BlueGreen {
        auto_promotion: bool,
        preview_replicas: Option<i32>,
        scale_down_delay: i32,
        pre: bool,
        post: bool,
    },
}

#[derive(Debug, Clone)]
enum StepShape {
    Weight(i32),
    Pause,
    TimedPause(i32),
    Analysis,
    CanaryScale(i32),
}

#[derive(Debug, Clone)]
enum Action {
    /// A new pod template (one of a few images, so undo-like returns happen).
    Image(u8),
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause(bool),
    Scale(i32),
    Advance(i64),
    /// The next unfinished AnalysisRun ends in this phase.
    FinishRun(AnalysisPhase),
    /// Pods of this image never become available (or do again).
    Break(u8, bool),
    /// Someone else scales a ReplicaSet.
    ExternalScale(usize, i32),
}

fn step_shape() -> impl Strategy<Value = StepShape> {
    prop_oneof![
        (0..=100i32).prop_map(StepShape::Weight),
        Just(StepShape::Pause),
        (1..=90i32).prop_map(StepShape::TimedPause),
        Just(StepShape::Analysis),
        (0..=4i32).prop_map(StepShape::CanaryScale),
    ]
}

fn spec_shape() -> impl Strategy<Value = SpecShape> {
    prop_oneof![
        (
            prop::collection::vec(step_shape(), 0..6),
            0..=2i32,
            0..=2i32,
            any::<bool>()
        )
            .prop_map(|(steps, max_surge, max_unavailable, background)| {
                SpecShape::Canary {
                    steps,
                    max_surge,
                    max_unavailable,
                    background,
                }
            }),
        (
            any::<bool>(),
            prop::option::of(0..=3i32),
            0..=60i32,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(auto_promotion, preview_replicas, scale_down_delay, pre, post)| {
                    SpecShape::BlueGreen {
                        auto_promotion,
                        preview_replicas,
                        scale_down_delay,
                        pre,
                        post,
                    }
                }
            ),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1..=3u8).prop_map(Action::Image),
        3 => Just(Action::Promote),
        1 => Just(Action::PromoteFull),
        1 => Just(Action::Abort),
        1 => Just(Action::Retry),
        1 => any::<bool>().prop_map(Action::Pause),
        1 => (1..=6i32).prop_map(Action::Scale),
        3 => (1..=120i64).prop_map(Action::Advance),
        3 => prop_oneof![
            Just(AnalysisPhase::Successful),
            Just(AnalysisPhase::Failed),
            Just(AnalysisPhase::Error),
            Just(AnalysisPhase::Inconclusive),
        ]
        .prop_map(Action::FinishRun),
        1 => ((1..=3u8), any::<bool>()).prop_map(|(image, broken)| Action::Break(image, broken)),
        1 => ((0..4usize), (0..=6i32)).prop_map(|(index, replicas)| Action::ExternalScale(index, replicas)),
    ]
}

fn analysis_ref() -> Value {
    json!({"templates": [{"templateName": "error-rate"}], "args": [{"name": "service", "value": "web"}]})
}

fn build(shape: &SpecShape, replicas: i32) -> World {
    let strategy = match shape {
        SpecShape::Canary {
            steps,
            max_surge,
            max_unavailable,
            background,
        } => {
            let steps: Vec<Value> = steps
                .iter()
                .map(|step| match step {
                    StepShape::Weight(w) => json!({"setWeight": w}),
                    StepShape::Pause => json!({"pause": {}}),
                    StepShape::TimedPause(s) => json!({"pause": {"duration": s}}),
                    StepShape::Analysis => json!({"analysis": analysis_ref()}),
                    StepShape::CanaryScale(n) => json!({"setCanaryScale": {"replicas": n}}),
                })
                .collect();
            let mut strategy = canary(Value::Array(steps));
            strategy["canary"]["maxSurge"] = json!(max_surge);
            strategy["canary"]["maxUnavailable"] = json!(max_unavailable);
            if *background {
                strategy["canary"]["analysis"] = analysis_ref();
            }
            strategy
        }
        SpecShape::BlueGreen {
            auto_promotion,
            preview_replicas,
            scale_down_delay,
            pre,
            post,
        } => {
            let mut extra = json!({"autoPromotionEnabled": auto_promotion,
                "scaleDownDelaySeconds": scale_down_delay});
            if let Some(count) = preview_replicas {
                extra["previewReplicaCount"] = json!(count);
            }
            if *pre {
                extra["prePromotionAnalysis"] = analysis_ref();
            }
            if *post {
                extra["postPromotionAnalysis"] = analysis_ref();
            }
            blue_green(extra)
        }
    };
    let mut world = World::new(rollout(strategy, replicas));
    with_template(&mut world);
    world
}

fn hash_label(meta: &ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(POD_TEMPLATE_HASH_LABEL).cloned()
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// What the simulation remembers between plans to judge the next one.
#[derive(Default)]
struct Judge {
    /// Hashes with a Failed or Error run since their rollout (re)started.
    failed: BTreeSet<String>,
    /// Runs whose verdict a human overrode (retry, full promotion, new template).
    forgiven: BTreeSet<String>,
}

impl Judge {
    /// Plans once, checks the plan against the world it was made from,
    /// applies it; returns whether anything changed.
    fn step(&mut self, world: &mut World) -> Result<bool, TestCaseError> {
        let plan = world.plan();
        let before_total: i32 = world.replica_sets.values().map(spec_replicas).sum();
        let before_stable = world.status().stable_rs;

        // A Service selector never moves to a hash with no available pods.
        for change in &plan.services {
            let serving = world.replica_sets.values().any(|rs| {
                hash_label(&rs.metadata).as_ref() == Some(&change.hash) && available(rs) > 0
            });
            prop_assert!(
                serving,
                "{} pointed at {} which has no available pods",
                change.service,
                change.hash
            );
        }

        let changed = world.apply(plan);

        // Pods never exceed replicas + maxSurge (canary without setCanaryScale,
        // which adds pods on purpose); someone else's scale-up is not ours.
        if let Some(canary) = &world.rollout.spec.strategy.canary
            && !canary.steps.iter().any(|s| s.set_canary_scale.is_some())
        {
            let replicas = world.rollout.replicas();
            let surge = match &canary.max_surge {
                Some(IntOrString::Int(n)) => *n,
                _ => 0,
            };
            let total: i32 = world.replica_sets.values().map(spec_replicas).sum();
            prop_assert!(
                total <= (replicas + surge).max(before_total),
                "{total} pods for {replicas} replicas with maxSurge {surge} (was {before_total})"
            );
        }

        // No two ReplicaSets for one template.
        let mut hashes = BTreeSet::new();
        for rs in world.replica_sets.values() {
            let hash = hash_label(&rs.metadata).unwrap_or_default();
            prop_assert!(hashes.insert(hash.clone()), "two ReplicaSets for {hash}");
        }

        // A Failed or Error analysis never leads to promotion.
        for (name, run) in &world.runs {
            if self.forgiven.contains(name) {
                continue;
            }
            let phase = run.status.as_ref().and_then(|s| s.phase);
            if matches!(phase, Some(AnalysisPhase::Failed | AnalysisPhase::Error))
                && let Some(hash) = hash_label(&run.metadata)
            {
                self.failed.insert(hash);
            }
        }
        let after_stable = world.status().stable_rs;
        if after_stable != before_stable
            && let Some(hash) = &after_stable
        {
            prop_assert!(
                !self.failed.contains(hash),
                "{hash} promoted although its analysis failed"
            );
        }
        Ok(changed)
    }

    /// Plans until nothing changes; then planning again writes nothing.
    fn settle(&mut self, world: &mut World) -> Result<(), TestCaseError> {
        for _ in 0..50 {
            if !self.step(world)? {
                let again = world.plan();
                prop_assert!(
                    again.replica_sets.is_empty()
                        && again.services.is_empty()
                        && again.analysis_runs.is_empty()
                        && again.status.is_none()
                        && again.events.is_empty()
                        && again.pod_metadata.is_empty(),
                    "a settled world still plans writes: {again:#?}"
                );
                return Ok(());
            }
        }
        prop_assert!(false, "planner did not settle: {:#?}", world.last_plan);
        Ok(())
    }

    /// Actions that legitimately restart a revision forget its failures.
    fn forget_failures(&mut self, world: &World) {
        self.failed.clear();
        self.forgiven.extend(world.runs.keys().cloned());
    }
}

fn act(world: &mut World, judge: &mut Judge, action: &Action) {
    match action {
        Action::Image(n) => {
            world.set_image(&format!("web:{n}"));
            judge.forget_failures(world);
        }
        Action::Promote => world.promote(),
        Action::PromoteFull => {
            world.mark();
            if let Some(status) = world.rollout.status.as_mut() {
                status.promote_full = true;
            }
            // A full promotion is a human overriding the analysis.
            judge.forget_failures(world);
        }
        Action::Abort => world.abort(),
        Action::Retry => {
            world.retry();
            judge.forget_failures(world);
        }
        Action::Pause(paused) => {
            world.mark();
            world.rollout.spec.paused = Some(*paused);
        }
        Action::Scale(replicas) => {
            world.mark();
            world.rollout.spec.replicas = Some(*replicas);
        }
        Action::Advance(seconds) => world.advance(*seconds),
        Action::FinishRun(phase) => {
            let unfinished = world.runs.values_mut().find(|r| {
                r.spec.terminate != Some(true)
                    && !r
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_completed())
            });
            if let Some(run) = unfinished {
                run.status = Some(AnalysisRunStatus {
                    phase: Some(*phase),
                    message: Some(format!("simulated {phase:?}")),
                    ..Default::default()
                });
            }
        }
        Action::Break(n, broken) => {
            let hash = world.hash_for(&format!("web:{n}"));
            world.broken.retain(|h| h != &hash);
            if *broken {
                world.broken.push(hash.clone());
            }
            let healthy = !*broken;
            for rs in world.replica_sets.values_mut() {
                if hash_label(&rs.metadata).as_ref() == Some(&hash) {
                    let replicas = spec_replicas(rs);
                    if let Some(status) = rs.status.as_mut() {
                        let count = if healthy { replicas } else { 0 };
                        status.available_replicas = Some(count);
                        status.ready_replicas = Some(count);
                    }
                }
            }
        }
        Action::ExternalScale(index, replicas) => {
            let broken = world.broken.clone();
            if let Some(rs) = world.replica_sets.values_mut().nth(*index) {
                let healthy = !hash_label(&rs.metadata).is_some_and(|h| broken.contains(&h));
                if let Some(spec) = rs.spec.as_mut() {
                    spec.replicas = Some(*replicas);
                }
                rs.status = Some(ReplicaSetStatus {
                    replicas: *replicas,
                    ready_replicas: Some(if healthy { *replicas } else { 0 }),
                    available_replicas: Some(if healthy { *replicas } else { 0 }),
                    ..Default::default()
                });
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
        ..Config::default()
    })]

    #[test]
    fn safety_invariants_hold_across_random_histories(
        shape in spec_shape(),
        replicas in 1..=5i32,
        actions in prop::collection::vec(action(), 0..25),
    ) {
        let mut world = build(&shape, replicas);
        let mut judge = Judge::default();
        judge.settle(&mut world)?;
        for action in &actions {
            act(&mut world, &mut judge, action);
            judge.settle(&mut world)?;
        }
    }
}
