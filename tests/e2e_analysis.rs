//! Analysis acceptance tests (issue 4): the real Prometheus scrapes a
//! metrics endpoint this test controls, and the controller queries it.

mod common;

use common::analysis::{Metrics, template};
use common::{Env, blue_green_yaml, canary_yaml};
use kube::ResourceExt;
use ramp::api::{AnalysisPhase, AnalysisRun, RolloutPhase};
use ramp_test_support::wait_until;

const ANALYSIS_STEP: &str =
    "{analysis: {templates: [{templateName: errors}], args: [{name: service, value: web}]}}";

fn run_phase(run: &AnalysisRun) -> Option<AnalysisPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}

async fn wait_run(env: &Env, suffix: &str, phase: AnalysisPhase) -> anyhow::Result<AnalysisRun> {
    wait_until(
        &format!("AnalysisRun *{suffix} to be {phase:?}"),
        common::TIMEOUT,
        || async {
            let runs = env.analysis_runs().await?;
            Ok(runs.into_iter().find(|r| {
                r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(suffix))
                    && run_phase(r) == Some(phase)
            }))
        },
    )
    .await
}

#[tokio::test]
async fn healthy_metrics_let_the_canary_complete() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.01).await?;
    let env = Env::start("analysis-ok").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 2",
        "result[0] < 0.05",
    ))
    .await?;
    env.deploy_canary(
        "web",
        4,
        "web:1",
        &format!("[{{setWeight: 25}}, {ANALYSIS_STEP}, {{setWeight: 50}}]"),
    )
    .await?;
    env.set_image("web", "web:2").await?;
    let run = wait_run(&env, "-1", AnalysisPhase::Successful).await?;
    let result = &run.status.as_ref().expect("status").metric_results[0];
    assert_eq!(result.successful, 2);
    assert_eq!(
        result.resolved_query.as_deref(),
        Some("sum(app_errors_ratio{service=\"web\"})")
    );
    assert_eq!(result.measurements[0].value.as_deref(), Some("[0.01]"));
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("promoted", &[("web:2", 4), ("web:1", 0)])
        .await?;
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

#[tokio::test]
async fn failing_metrics_abort_back_to_stable_without_a_human() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.5).await?;
    let env = Env::start("analysis-fail").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 5\n    failureLimit: 1",
        "result[0] < 0.05",
    ))
    .await?;
    env.deploy_canary(
        "web",
        4,
        "web:1",
        &format!("[{{setWeight: 25}}, {ANALYSIS_STEP}, {{setWeight: 50}}]"),
    )
    .await?;
    let stable = env.hash_of("web:1").await?;
    env.set_image("web", "web:2").await?;
    let run = wait_run(&env, "-1", AnalysisPhase::Failed).await?;
    let status = run.status.as_ref().expect("status");
    assert_eq!(
        status.metric_results[0].failed, 2,
        "fails at failureLimit + 1 measurements"
    );
    let started = status.started_at.as_ref().expect("started").0;
    let completed = status.completed_at.as_ref().expect("completed").0;
    assert!(
        completed.duration_since(started).as_secs() <= 4,
        "failed within interval x (failureLimit + 1) plus slack"
    );
    let rollout = env.wait_phase("web", RolloutPhase::Degraded).await?;
    assert!(rollout.status.as_ref().is_some_and(|s| s.abort));
    env.wait_replicas("all replicas back on stable", &[("web:2", 0), ("web:1", 4)])
        .await?;
    assert_eq!(env.selector("web-canary").await?, Some(stable.clone()));
    assert_eq!(env.selector("web-stable").await?, Some(stable));
    let message = rollout.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("Failed"), "{message}");
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

#[tokio::test]
async fn background_analysis_aborts_mid_rollout() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let env = Env::start("analysis-bg").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "failureLimit: 0",
        "result[0] < 0.05",
    ))
    .await?;
    let mut yaml = canary_yaml(
        "web",
        4,
        "web:1",
        "[{setWeight: 25}, {pause: {duration: 1s}}, {setWeight: 50}, {pause: {}}]",
    );
    yaml.push_str("      analysis:\n        templates: [{templateName: errors}]\n        args: [{name: service, value: web}]\n        startingStep: 2\n");
    env.apply(&yaml).await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("50%", &[("web:2", 2), ("web:1", 2)])
        .await?;
    wait_run(&env, "-2", AnalysisPhase::Running).await?;
    let runs = env.analysis_runs().await?;
    assert_eq!(runs.len(), 1, "background run started at step 2");

    metrics.set(0.3).await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    env.wait_replicas("back on stable", &[("web:2", 0), ("web:1", 4)])
        .await?;
    let runs = env.analysis_runs().await?;
    assert_eq!(run_phase(&runs[0]), Some(AnalysisPhase::Failed));
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

#[tokio::test]
async fn blue_green_pre_and_post_promotion_analysis() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.5).await?;
    let env = Env::start("analysis-bg-promo").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 1",
        "result[0] < 0.05",
    ))
    .await?;
    let analysis = "{templates: [{templateName: errors}], args: [{name: service, value: web}]}";
    env.apply(&blue_green_yaml(
        "pre",
        2,
        "pre:1",
        &format!("prePromotionAnalysis: {analysis}"),
    ))
    .await?;
    env.apply(&blue_green_yaml(
        "post",
        2,
        "post:1",
        &format!("postPromotionAnalysis: {analysis}"),
    ))
    .await?;
    env.wait_phase("pre", RolloutPhase::Healthy).await?;
    env.wait_phase("post", RolloutPhase::Healthy).await?;

    let pre_blue = env.hash_of("pre:1").await?;
    env.set_image("pre", "pre:2").await?;
    env.wait_phase("pre", RolloutPhase::Degraded).await?;
    assert_eq!(
        env.selector("pre-active").await?,
        Some(pre_blue),
        "pre-promotion failure never switches"
    );

    let blue = env.hash_of("post:1").await?;
    env.set_image("post", "post:2").await?;
    wait_run(&env, "-post", AnalysisPhase::Failed).await?;
    let degraded = env.wait_phase("post", RolloutPhase::Degraded).await?;
    assert_eq!(
        env.selector("post-active").await?,
        Some(blue.clone()),
        "post-promotion failure switches back"
    );
    assert_eq!(degraded.status.and_then(|s| s.stable_rs), Some(blue));
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

#[tokio::test]
async fn prometheus_outage_errors_the_run_and_aborts() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let env = Env::start("analysis-outage").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "count: 30\n    consecutiveErrorLimit: 2",
        "result[0] < 0.05",
    ))
    .await?;
    env.deploy_canary(
        "web",
        2,
        "web:1",
        &format!("[{{setWeight: 50}}, {ANALYSIS_STEP}]"),
    )
    .await?;
    env.set_image("web", "web:2").await?;
    wait_until("a successful measurement", common::TIMEOUT, || async {
        let runs = env.analysis_runs().await?;
        Ok(runs
            .iter()
            .find_map(|r| {
                r.status
                    .as_ref()?
                    .metric_results
                    .first()
                    .filter(|m| m.successful >= 1)
            })
            .map(|_| ()))
    })
    .await?;
    metrics.prometheus.stop().await;
    let run = wait_run(&env, "-1", AnalysisPhase::Error).await?;
    let result = &run.status.as_ref().expect("status").metric_results[0];
    assert_eq!(
        result.consecutive_error, 3,
        "consecutiveErrorLimit 2 tolerates two errors"
    );
    let last = result
        .measurements
        .last()
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    assert!(last.contains("cannot reach Prometheus"), "{last}");
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    env.wait_replicas(
        "never promoted on missing data",
        &[("web:2", 0), ("web:1", 2)],
    )
    .await?;
    env.cleanup().await;
    Ok(())
}

/// `sum()` over no series is an empty vector. `result[0]` on it cannot be
/// evaluated, which is an Error measurement, never a pass; a template that
/// expects gaps says so with `default(result, 0.0)` or `size(result) == 0`.
#[tokio::test]
async fn empty_results_follow_the_template() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let env = Env::start("analysis-empty").await?;
    let missing = metrics.prometheus.url.clone();
    env.apply(&template(
        "strict",
        &missing,
        "count: 3\n    consecutiveErrorLimit: 0",
        "result[0] < 0.05",
    ))
    .await?;
    env.apply(&template(
        "lenient",
        &missing,
        "count: 1",
        "default(result, 0.0) < 0.05",
    ))
    .await?;
    let step = |t: &str| {
        format!(
            "[{{setWeight: 50}}, {{analysis: {{templates: [{{templateName: {t}}}], args: [{{name: service, value: nothing-here}}]}}}}]"
        )
    };
    env.apply(&canary_yaml("strict", 2, "web:1", &step("strict")))
        .await?;
    env.apply(&canary_yaml("lenient", 2, "api:1", &step("lenient")))
        .await?;
    env.wait_phase("strict", RolloutPhase::Healthy).await?;
    env.wait_phase("lenient", RolloutPhase::Healthy).await?;
    env.set_image("strict", "web:2").await?;
    env.set_image("lenient", "api:2").await?;

    let strict = env.wait_phase("strict", RolloutPhase::Degraded).await?;
    let message = strict.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("no data"), "{message}");
    env.wait_phase("lenient", RolloutPhase::Healthy).await?;
    env.wait_replicas("lenient promoted", &[("api:2", 2), ("api:1", 0)])
        .await?;
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

fn invalid_spec_message(rollout: &ramp::api::Rollout) -> Option<String> {
    rollout
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// Argo rule: referenced templates are checked on every reconcile, and the
/// template's arrival reconciles the Rollouts that name it.
#[tokio::test]
async fn missing_template_is_invalid_spec_until_it_is_created() -> anyhow::Result<()> {
    let env = Env::start("analysis-missing").await?;
    env.apply(&canary_yaml(
        "web",
        2,
        "web:1",
        &format!("[{{setWeight: 50}}, {ANALYSIS_STEP}]"),
    ))
    .await?;
    let rollout = env
        .wait_rollout("web", "InvalidSpec naming the missing template", |r| {
            invalid_spec_message(r)
                .is_some_and(|m| m.contains("AnalysisTemplate \"errors\" not found"))
        })
        .await?;
    assert_eq!(common::phase(&rollout), Some(RolloutPhase::Degraded));
    env.wait_events(&["InvalidSpec"]).await?;
    assert_eq!(env.replica_set_count().await?, 0, "nothing is created");

    // No Prometheus is needed: the first deploy runs no analysis.
    env.apply(&template(
        "errors",
        "http://127.0.0.1:9",
        "count: 1",
        "result[0] < 1",
    ))
    .await?;
    let rollout = env.wait_phase("web", RolloutPhase::Healthy).await?;
    assert!(invalid_spec_message(&rollout).is_none());
    env.wait_replicas("deployed", &[("web:1", 2)]).await?;
    env.cleanup().await;
    Ok(())
}

fn has_pause(rollout: &ramp::api::Rollout, reason: ramp::api::PauseReason) -> bool {
    rollout
        .status
        .as_ref()
        .is_some_and(|s| s.pause_conditions.iter().any(|c| c.reason == reason))
}

/// Argo rule: while an InconclusiveAnalysisRun pause stands nothing moves,
/// not even when the timed pause step it interrupted has run out. Instead of
/// waiting an hour, the test moves the pause's start two hours back while
/// the controller is down, then waits for the restarted controller to
/// observe a new generation before it looks.
#[tokio::test]
async fn inconclusive_analysis_halts_even_after_a_timed_pause_runs_out() -> anyhow::Result<()> {
    use ramp::api::PauseReason;
    let metrics = Metrics::start(0.0).await?;
    let mut env = Env::start("analysis-inconclusive").await?;
    env.apply(&template(
        "errors",
        &metrics.prometheus.url,
        "failureCondition: \"result[0] > 0.2\"",
        "result[0] < 0.05",
    ))
    .await?;
    let mut yaml = canary_yaml(
        "web",
        4,
        "web:1",
        "[{setWeight: 25}, {pause: {duration: 1h}}, {setWeight: 50}, {pause: {}}]",
    );
    yaml.push_str("      analysis:\n        templates: [{templateName: errors}]\n        args: [{name: service, value: web}]\n");
    env.apply(&yaml).await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    let stable = env.hash_of("web:1").await?;
    env.set_image("web", "web:2").await?;
    env.wait_rollout("web", "the timed pause at step 2", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(1)
            && has_pause(r, PauseReason::CanaryPauseStep)
    })
    .await?;
    env.wait_replicas("25%", &[("web:2", 1), ("web:1", 3)])
        .await?;
    let canary = env.hash_of("web:2").await?;
    env.wait_selector("web-canary", &canary).await?;

    // Between the success (< 0.05) and failure (> 0.2) conditions.
    metrics.set(0.1).await?;
    env.wait_rollout("web", "an InconclusiveAnalysisRun pause", |r| {
        has_pause(r, PauseReason::InconclusiveAnalysisRun)
    })
    .await?;

    env.kill_controller().await;
    let mut rollout = env.rollout("web").await?;
    let mut conditions = rollout.status.take().unwrap_or_default().pause_conditions;
    let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    for condition in &mut conditions {
        if condition.reason == PauseReason::CanaryPauseStep {
            condition.start_time =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(two_hours_ago);
        }
    }
    env.patch_status(
        "web",
        serde_json::json!({"status": {"pauseConditions": conditions}}),
    )
    .await?;
    let bump = serde_json::json!({"spec": {"revisionHistoryLimit": 5}});
    env.rollouts()
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&bump),
        )
        .await?;
    env.start_controller().await?;
    let rollout = env.wait_phase("web", RolloutPhase::Paused).await?;
    let status = rollout.status.unwrap_or_default();
    assert_eq!(status.current_step_index, Some(1), "no step advanced");
    assert_eq!(status.stable_rs.as_deref(), Some(stable.as_str()));
    assert!(
        status
            .pause_conditions
            .iter()
            .any(|c| c.reason == PauseReason::InconclusiveAnalysisRun)
    );
    env.wait_replicas("nothing scaled", &[("web:2", 1), ("web:1", 3)])
        .await?;
    assert_eq!(env.selector("web-canary").await?, Some(canary));
    assert_eq!(env.selector("web-stable").await?, Some(stable));

    // A human's promote releases it; with healthy metrics the next
    // measurement passes and the rollout goes on to its last pause.
    metrics.set(0.0).await?;
    env.promote("web").await?;
    env.wait_rollout("web", "the last pause step", |r| {
        r.status.as_ref().and_then(|s| s.current_step_index) == Some(3)
            && common::phase(r) == Some(RolloutPhase::Paused)
    })
    .await?;
    env.wait_replicas("50%", &[("web:2", 2), ("web:1", 2)])
        .await?;
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}

/// A web metric: POSTs the service and a Secret-held token to the receiver,
/// and judges `{$.data}` of its JSON answer.
fn web_template(receiver: &str) -> String {
    format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: checks}}
spec:
  args:
  - name: service
  - name: token
    valueFrom: {{secretKeyRef: {{name: checks-token, key: token}}}}
  metrics:
  - name: smoke
    interval: 1s
    count: 2
    successCondition: "result.ok == true && result.ratio < 0.05"
    provider:
      web:
        url: {receiver}/verdict/{{{{args.service}}}}
        method: POST
        headers: [{{key: Authorization, value: "Bearer {{{{args.token}}}}"}}]
        jsonBody: {{service: "{{{{args.service}}}}", checks: [smoke]}}
        jsonPath: "{{$.data}}"
        timeoutSeconds: 5
"#
    )
}

#[tokio::test]
async fn web_metric_gates_on_a_json_answer_and_errors_on_a_bad_status() -> anyhow::Result<()> {
    let receiver =
        ramp_test_support::WebReceiver::start(200, r#"{"data": {"ok": true, "ratio": 0.01}}"#)
            .await?;
    let env = Env::start("analysis-web").await?;
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: checks-token}\nstringData: {token: w3b-token}\n",
    )
    .await?;
    env.apply(&web_template(&receiver.url)).await?;
    let step =
        "{analysis: {templates: [{templateName: checks}], args: [{name: service, value: web}]}}";
    env.deploy_canary("web", 2, "web:1", &format!("[{{setWeight: 50}}, {step}]"))
        .await?;

    // A good answer promotes.
    env.set_image("web", "web:2").await?;
    let run = wait_run(&env, "-1", AnalysisPhase::Successful).await?;
    let result = &run.status.as_ref().expect("status").metric_results[0];
    assert_eq!(result.successful, 2);
    assert_eq!(
        result.measurements[0].value.as_deref(),
        Some(r#"{"ok":true,"ratio":0.01}"#)
    );
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    let requests = receiver.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    let first = &requests[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/verdict/web")
    );
    assert_eq!(
        first.headers.get("authorization").map(String::as_str),
        Some("Bearer w3b-token")
    );
    assert_eq!(
        first.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&first.body)?;
    assert_eq!(
        body,
        serde_json::json!({"service": "web", "checks": ["smoke"]})
    );

    // A bad verdict aborts back to stable.
    receiver.answer(200, r#"{"data": {"ok": true, "ratio": 0.5}}"#);
    env.set_image("web", "web:3").await?;
    let failed = wait_run(&env, "-1", AnalysisPhase::Failed).await?;
    assert!(failed.name_any().contains(&env.hash_of("web:3").await?));
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    env.wait_replicas("aborted to web:2", &[("web:3", 0), ("web:2", 2)])
        .await?;

    // A non-2xx answer is an Error, whatever the body says.
    receiver.answer(500, r#"{"data": {"ok": true, "ratio": 0.0}}"#);
    env.apply(&format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisRun
metadata: {{name: direct}}
spec:
  metrics:
  - name: smoke
    consecutiveErrorLimit: 0
    successCondition: "result.ok == true"
    provider: {{web: {{url: "{}/verdict/direct", jsonPath: "{{$.data}}"}}}}
"#,
        receiver.url
    ))
    .await?;
    let run = wait_until("the direct run to error", common::TIMEOUT, || async {
        Ok(env
            .analysis_runs()
            .await?
            .into_iter()
            .find(|r| r.name_any() == "direct" && run_phase(r) == Some(AnalysisPhase::Error)))
    })
    .await?;
    let message = run.status.as_ref().expect("status").metric_results[0]
        .measurements
        .last()
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    assert!(message.contains("received HTTP 500"), "{message}");
    env.cleanup().await;
    Ok(())
}
