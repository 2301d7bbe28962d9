//! Rollout acceptance tests on the local control plane (issue 3). Each test
//! asserts the observed ReplicaSets and Services, not just the phase.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Env, blue_green_yaml, canary_yaml, phase};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use ramp::api::{PauseReason, RolloutPhase};
use ramp_test_support::wait_until;
use serde_json::json;

#[tokio::test]
async fn blue_green_preview_pause_promote_and_delayed_scale_down() -> anyhow::Result<()> {
    let env = Env::start("bluegreen").await?;
    env.apply(&blue_green_yaml(
        "shop",
        2,
        "shop:1",
        "autoPromotionEnabled: false\n      scaleDownDelaySeconds: 3",
    ))
    .await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    let blue = env.hash_of("shop:1").await?;
    env.wait_selector("shop-active", &blue).await?;
    env.wait_selector("shop-preview", &blue).await?;

    env.set_image("shop", "shop:2").await?;
    let paused = env.wait_phase("shop", RolloutPhase::Paused).await?;
    assert_eq!(
        paused.status.as_ref().map(|s| s.pause_conditions[0].reason),
        Some(PauseReason::BlueGreenPause)
    );
    let green = env.hash_of("shop:2").await?;
    env.wait_replicas("both versions up", &[("shop:1", 2), ("shop:2", 2)])
        .await?;
    env.wait_selector("shop-preview", &green).await?;
    env.wait_selector("shop-active", &blue).await?;

    env.promote("shop").await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    env.wait_selector("shop-active", &green).await?;
    let old = env.replicas_by_image().await?;
    assert_eq!(
        old.get("shop:1").map(|c| c.0),
        Some(2),
        "old ReplicaSet waits for scaleDownDelaySeconds"
    );
    env.wait_replicas(
        "old ReplicaSet scaled down after the delay",
        &[("shop:1", 0), ("shop:2", 2)],
    )
    .await?;
    env.wait_events(&[
        "NewReplicaSetCreated",
        "SwitchService",
        "RolloutPaused",
        "RolloutCompleted",
    ])
    .await?;
    env.cleanup().await;
    Ok(())
}

const STEPS: &str = "[{setWeight: 20}, {pause: {}}, {setWeight: 60}, {pause: {duration: 5s}}]";

#[tokio::test]
async fn canary_steps_pause_promote_and_timed_resume() -> anyhow::Result<()> {
    let env = Env::start("canary").await?;
    env.deploy_canary("web", 5, "web:1", STEPS).await?;
    let stable = env.hash_of("web:1").await?;

    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("20% canary: 1/4", &[("web:2", 1), ("web:1", 4)])
        .await?;
    let canary = env.hash_of("web:2").await?;
    env.wait_selector("web-canary", &canary).await?;
    env.wait_selector("web-stable", &stable).await?;

    env.promote("web").await?;
    env.wait_rollout("web", "step index 3 (timed pause)", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(3)
    })
    .await?;
    env.wait_replicas("60% canary: 3/2", &[("web:2", 3), ("web:1", 2)])
        .await?;

    // The 5s pause ends by itself.
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("fully promoted: 5/0", &[("web:2", 5), ("web:1", 0)])
        .await?;
    env.wait_selector("web-stable", &canary).await?;
    assert_eq!(
        env.rollout("web").await?.status.and_then(|s| s.stable_rs),
        Some(canary)
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn abort_returns_to_stable_and_retry_runs_the_steps_again() -> anyhow::Result<()> {
    let env = Env::start("abort").await?;
    env.deploy_canary("web", 5, "web:1", STEPS).await?;
    let stable = env.hash_of("web:1").await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.promote("web").await?;
    env.wait_replicas("60% canary", &[("web:2", 3), ("web:1", 2)])
        .await?;

    env.set_abort("web", true).await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    env.wait_replicas("everything back on stable", &[("web:2", 0), ("web:1", 5)])
        .await?;
    env.wait_selector("web-canary", &stable).await?;
    env.wait_selector("web-stable", &stable).await?;
    let message = env
        .rollout("web")
        .await?
        .status
        .and_then(|s| s.message)
        .unwrap_or_default();
    assert!(message.contains("RolloutAborted"), "{message}");

    env.set_abort("web", false).await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("steps run again: 1/4", &[("web:2", 1), ("web:1", 4)])
        .await?;
    env.cleanup().await;
    Ok(())
}

/// The controller caches drained ReplicaSets without their pod template; an
/// abort that scales a drained stable back up reads it in full first.
#[tokio::test]
async fn abort_brings_back_a_drained_stable_with_its_template() -> anyhow::Result<()> {
    let env = Env::start("drained").await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 100}, {pause: {}}]")
        .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("setWeight 100 drains stable", &[("web:2", 2), ("web:1", 0)])
        .await?;
    // The Rollout's pod count comes from the controller's cache: at 2 the
    // cache holds the stable set with no pods, so without its template.
    env.wait_rollout("web", "only the 2 canary pods left", |r| {
        r.status.as_ref().is_some_and(|s| s.replicas == 2)
    })
    .await?;

    env.set_abort("web", true).await?;
    env.wait_replicas("stable back", &[("web:1", 2), ("web:2", 0)])
        .await?;
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.metrics_port()))
        .await?
        .text()
        .await?;
    let reads: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ramp_kube_requests_total")
                && l.contains("verb=\"get\"")
                && l.contains("kind=\"ReplicaSet\"")
                && l.contains("outcome=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        reads >= 1,
        "the drained stable was read in full: {reads} reads"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn pods_that_never_become_ready_exceed_the_progress_deadline() -> anyhow::Result<()> {
    let env = Env::start("deadline").await?;
    env.apply(&canary_yaml(
        "web",
        3,
        "web:1",
        "[{setWeight: 50}, {pause: {}}]",
    ))
    .await?;
    let patch = json!({"spec": {"progressDeadlineSeconds": 5}});
    env.rollouts()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    let stable = env.hash_of("web:1").await?;

    env.set_image("web", "web:never-ready").await?;
    let degraded = env
        .wait_rollout_for(
            "web",
            "ProgressDeadlineExceeded",
            Duration::from_secs(30),
            |r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .is_some_and(|m| m.contains("ProgressDeadlineExceeded"))
            },
        )
        .await?;
    assert_eq!(phase(&degraded), Some(RolloutPhase::Degraded));
    assert_eq!(
        degraded.status.as_ref().and_then(|s| s.current_step_index),
        Some(0),
        "did not advance"
    );
    let counts = env.replicas_by_image().await?;
    assert_eq!(counts.get("web:never-ready").map(|c| c.1), Some(0));
    assert!(
        counts.get("web:1").is_some_and(|c| c.1 >= 1),
        "stable keeps serving: {counts:?}"
    );
    assert_eq!(
        env.selector("web-canary").await?,
        Some(stable.clone()),
        "never routed to unready pods"
    );
    env.wait_selector("web-stable", &stable).await?;

    // Argo rule: progressDeadlineAbort is evaluated on every reconcile, so
    // turning it on after the deadline passed aborts now.
    let patch = json!({"spec": {"progressDeadlineAbort": true}});
    env.rollouts()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    env.wait_rollout("web", "abort after the flag is turned on", |r| {
        r.status.as_ref().is_some_and(|s| s.abort)
    })
    .await?;
    env.wait_replicas(
        "everything back on stable",
        &[("web:never-ready", 0), ("web:1", 3)],
    )
    .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn invalid_spec_is_reported_and_nothing_is_touched() -> anyhow::Result<()> {
    let env = Env::start("invalid").await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    let before = env.replica_set_versions().await?;
    let patch = json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 150}, {"pause": {"duration": "soon"}}]}}}});
    env.rollouts()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let invalid = env.wait_phase("web", RolloutPhase::Degraded).await?;
    let condition = invalid
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "InvalidSpec")
                .cloned()
        })
        .expect("InvalidSpec condition");
    let message = condition.message.unwrap_or_default();
    assert!(
        message.contains("steps[0].setWeight: 150 is not a percentage"),
        "{message}"
    );
    assert!(message.contains("steps[1].pause.duration"), "{message}");
    env.wait_events(&["InvalidSpec"]).await?;
    // The Degraded status is written after every other write of that pass,
    // so once it is visible the ReplicaSets show whatever the pass did.
    assert_eq!(env.replica_set_versions().await?, before);

    // Fixing the spec recovers without touching the ReplicaSets.
    let patch =
        json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}}});
    env.rollouts()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn restarted_controller_resumes_without_duplicating_replica_sets() -> anyhow::Result<()> {
    let mut env = Env::start("restart").await?;
    env.deploy_canary(
        "web",
        4,
        "web:1",
        "[{setWeight: 25}, {pause: {}}, {setWeight: 75}, {pause: {}}]",
    )
    .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("25%", &[("web:2", 1), ("web:1", 3)])
        .await?;

    // SIGKILL and reaped, so the promotion below is seen only by the new process.
    env.kill_controller().await;
    env.promote("web").await?;
    env.start_controller().await?;

    env.wait_rollout("web", "second pause", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(3)
    })
    .await?;
    env.wait_replicas("75%", &[("web:2", 3), ("web:1", 1)])
        .await?;
    assert_eq!(
        env.replica_set_count().await?,
        2,
        "no duplicate ReplicaSets"
    );
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("done", &[("web:2", 4), ("web:1", 0)])
        .await?;
    assert_eq!(env.replica_set_count().await?, 2);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn role_labels_follow_canary_and_stable_pods() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let env = Env::start("roles").await?;
    let mut yaml = canary_yaml("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]");
    yaml.push_str("      canaryMetadata: {labels: {role: canary}}\n      stableMetadata: {labels: {role: stable}}\n");
    env.apply(&yaml).await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let canary_hash = env.hash_of("web:2").await?;
    let role_of = |hash: String| {
        let pods = pods.clone();
        async move {
            let listed = pods
                .list(&ListParams::default().labels(&format!("rollouts-pod-template-hash={hash}")))
                .await?;
            Ok::<Vec<String>, anyhow::Error>(
                listed
                    .items
                    .iter()
                    .map(|p| {
                        p.metadata
                            .labels
                            .clone()
                            .unwrap_or_default()
                            .get("role")
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect(),
            )
        }
    };
    assert_eq!(
        role_of(canary_hash.clone()).await?,
        vec!["canary".to_string()]
    );
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    ramp_test_support::wait_until(
        "promoted pods relabelled stable",
        common::TIMEOUT,
        || async {
            let roles = role_of(canary_hash.clone()).await?;
            Ok((roles.len() == 2 && roles.iter().all(|r| r == "stable")).then_some(()))
        },
    )
    .await?;
    env.cleanup().await;
    Ok(())
}

/// One kind of schema-valid but meaningless Rollout: its spec (under
/// `spec:`, indented four spaces) and what the InvalidSpec message must say.
struct BadKind {
    strategy: &'static str,
    selector_extra: &'static str,
    expected: &'static str,
}

const BAD_KINDS: [BadKind; 12] = [
    BadKind {
        strategy: "canary: {steps: [{setWeight: 150}]}",
        selector_extra: "",
        expected: "spec.strategy.canary.steps[0].setWeight: 150 is not a percentage",
    },
    BadKind {
        strategy: "canary: {steps: [{setWeight: 10}]}",
        selector_extra: ", tier: web",
        expected: "spec.selector.matchLabels.tier: selects tier=web but spec.template.metadata.labels has no tier",
    },
    BadKind {
        strategy: "canary: {canaryService: same, stableService: same}",
        selector_extra: "",
        expected: "spec.strategy.canary.canaryService: canaryService and stableService are both \"same\"",
    },
    BadKind {
        strategy: "canary: {stableService: nowhere}",
        selector_extra: "",
        expected: "spec.strategy.canary.stableService: Service \"nowhere\" not found",
    },
    BadKind {
        strategy: "canary: {steps: [{analysis: {templates: [{templateName: missing}]}}]}",
        selector_extra: "",
        expected: "spec.strategy.canary.steps[0].analysis.templates[0].templateName: AnalysisTemplate \"missing\" not found",
    },
    BadKind {
        strategy: "canary: {steps: [{pause: {duration: soon}}]}",
        selector_extra: "",
        expected: "spec.strategy.canary.steps[0].pause.duration",
    },
    BadKind {
        strategy: "canary: {steps: [{setCanaryScale: {replicas: 9}}]}",
        selector_extra: "",
        expected: "spec.strategy.canary.steps[0].setCanaryScale.replicas: 9 is outside 0..=2",
    },
    BadKind {
        strategy: "canary: {steps: [{setWeight: 10, pause: {}}]}",
        selector_extra: "",
        expected: "spec.strategy.canary.steps[0]: a step must set exactly one of",
    },
    BadKind {
        strategy: "canary: {maxSurge: 0, maxUnavailable: 0}",
        selector_extra: "",
        expected: "spec.strategy.canary.maxUnavailable: maxSurge and maxUnavailable are both 0",
    },
    // Argo fields Ramp does not implement: accepted by the schema, named by validation.
    BadKind {
        strategy: "canary: {antiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {}}}",
        selector_extra: "",
        expected: "spec.strategy.canary.antiAffinity: not supported yet",
    },
    BadKind {
        strategy: "canary: {scaleDownDelayRevisionLimit: 2}",
        selector_extra: "",
        expected: "spec.strategy.canary.scaleDownDelayRevisionLimit: not supported yet",
    },
    BadKind {
        strategy: "blueGreen: {activeService: same, previewService: same}",
        selector_extra: "",
        expected: "spec.strategy.blueGreen.previewService: is the same Service as activeService",
    },
];

/// Waits until `count` Rollouts named `bad-*` carry an InvalidSpec
/// condition; returns each name with the condition's message.
async fn wait_until_reported(env: &Env, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    wait_until(
        &format!("{count} InvalidSpec conditions"),
        common::TIMEOUT,
        || async {
            let reported: Vec<(String, String)> = env
                .rollouts()
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|r| r.name_any().starts_with("bad-"))
                .filter_map(|r| {
                    let condition = r
                        .status
                        .as_ref()?
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "InvalidSpec" && c.status == "True")?
                        .clone();
                    Some((r.name_any(), condition.message.unwrap_or_default()))
                })
                .collect();
            Ok((reported.len() == count).then_some(reported))
        },
    )
    .await
}

/// Waits until `count` different `bad-*` Rollouts have an InvalidSpec Event.
async fn wait_invalid_spec_events(env: &Env, count: usize) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until(
        &format!("InvalidSpec Events for {count} Rollouts"),
        common::TIMEOUT,
        || async {
            let objects: BTreeSet<String> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
                .filter_map(|e| e.involved_object.name)
                .filter(|name| name.starts_with("bad-"))
                .collect();
            Ok((objects.len() == count).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn two_hundred_bad_rollouts_are_reported_while_a_good_one_progresses() -> anyhow::Result<()> {
    let env = Env::start("bad-input").await?;
    env.deploy_canary(
        "good",
        2,
        "good:1",
        "[{setWeight: 50}, {pause: {duration: 1}}]",
    )
    .await?;
    let mut documents = Vec::new();
    for index in 0..200 {
        let kind = &BAD_KINDS[index % BAD_KINDS.len()];
        let name = format!("bad-{index:03}");
        documents.push(format!(
            r#"apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}{extra}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "bad:1"}}]}}
  strategy:
    {strategy}
"#,
            extra = kind.selector_extra,
            strategy = kind.strategy,
        ));
    }
    env.apply(&documents.join("---\n")).await?;
    // The good rollout is released while the bad ones are being reported.
    env.set_image("good", "good:2").await?;

    let reported = wait_until_reported(&env, 200).await?;
    for (name, message) in &reported {
        let index: usize = name.trim_start_matches("bad-").parse()?;
        let expected = BAD_KINDS[index % BAD_KINDS.len()].expected;
        assert!(
            message.contains(expected),
            "{name}: {message:?} should say {expected:?}"
        );
    }
    let good = env.wait_phase("good", RolloutPhase::Healthy).await?;
    assert_eq!(
        good.status.as_ref().and_then(|s| s.stable_rs.clone()),
        Some(env.hash_of("good:2").await?)
    );
    env.wait_replicas("the good one released", &[("good:2", 2), ("good:1", 0)])
        .await?;
    let images: Vec<String> = env.replicas_by_image().await?.into_keys().collect();
    assert_eq!(
        images,
        ["good:1", "good:2"],
        "no ReplicaSet for a bad Rollout"
    );
    wait_invalid_spec_events(&env, 200).await?;
    env.cleanup().await;
    Ok(())
}
