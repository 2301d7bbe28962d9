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
    let message = errored_run_message(&env, "direct").await?;
    assert!(message.contains("received HTTP 500"), "{message}");

    // Bad answers and a dead address: each an Error that says which.
    let text = ramp_test_support::WebReceiver::start(200, "all good").await?;
    let cases = [
        (
            "unreachable",
            "http://127.0.0.1:9/verdict".to_string(),
            "cannot reach http://127.0.0.1:9/verdict",
        ),
        (
            "not-json",
            format!("{}/verdict", text.url),
            "the answer is not JSON",
        ),
        (
            "no-match",
            format!("{}/verdict", receiver.url),
            "jsonPath found nothing",
        ),
    ];
    receiver.answer(200, r#"{"other": {"ok": true}}"#);
    for (name, url, _) in &cases {
        env.apply(&format!(
            r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisRun
metadata: {{name: {name}}}
spec:
  metrics:
  - name: smoke
    consecutiveErrorLimit: 0
    successCondition: "result.ok == true"
    provider: {{web: {{url: "{url}", jsonPath: "{{$.data}}", timeoutSeconds: 2}}}}
"#
        ))
        .await?;
    }
    for (name, _, expected) in cases {
        let message = errored_run_message(&env, name).await?;
        assert!(message.contains(expected), "{name}: {message}");
    }
    env.cleanup().await;
    Ok(())
}

/// Waits until the AnalysisRun `name` is in Error; the message of its
/// first metric's last measurement.
async fn errored_run_message(env: &Env, name: &str) -> anyhow::Result<String> {
    let run = wait_until(&format!("run {name} to error"), common::TIMEOUT, || async {
        Ok(env
            .analysis_runs()
            .await?
            .into_iter()
            .find(|r| r.name_any() == name && run_phase(r) == Some(AnalysisPhase::Error)))
    })
    .await?;
    Ok(run
        .status
        .as_ref()
        .and_then(|s| s.metric_results.first())
        .and_then(|m| m.measurements.last())
        .and_then(|m| m.message.clone())
        .unwrap_or_default())
}

/// Argo's e2e `sleep-job` template: the Job's pod sleeps, then exits with
/// the code given; the test kubelet runs it as its command says.
const SLEEP_JOB: &str = r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: sleep-job}
spec:
  args:
  - {name: duration, value: "0"}
  - {name: exit-code, value: "0"}
  - {name: count, value: "1"}
  metrics:
  - name: sleep-job
    count: "{{args.count}}"
    interval: 1s
    provider:
      job:
        metadata: {labels: {suite: ramp-e2e}}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: sleep-job
                image: nginx:1.19-alpine
                command: [sh, -c, -x]
                args: ["sleep {{args.duration}} && exit {{args.exit-code}}"]
"#;

/// The run of `rollout` (its name starts with the rollout's) once it is in `phase`.
async fn wait_run_of(
    env: &Env,
    rollout: &str,
    phase: AnalysisPhase,
) -> anyhow::Result<AnalysisRun> {
    let prefix = format!("{rollout}-");
    wait_until(
        &format!("an AnalysisRun of {rollout} to be {phase:?}"),
        common::TIMEOUT,
        || async {
            let runs = env.analysis_runs().await?;
            Ok(runs
                .into_iter()
                .find(|r| r.name_any().starts_with(&prefix) && run_phase(r) == Some(phase)))
        },
    )
    .await
}

async fn jobs(env: &Env) -> anyhow::Result<Vec<k8s_openapi::api::batch::v1::Job>> {
    let api: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    Ok(api.list(&Default::default()).await?.items)
}

fn job_step(exit_code: &str, count: &str) -> String {
    format!(
        r#"[{{setWeight: 50}}, {{analysis: {{templates: [{{templateName: sleep-job}}], args: [{{name: exit-code, value: "{exit_code}"}}, {{name: count, value: "{count}"}}, {{name: duration, value: "1"}}]}}}}]"#
    )
}

#[tokio::test]
async fn job_metrics_pass_and_fail_on_the_real_job_controller() -> anyhow::Result<()> {
    let env = Env::start("analysis-job").await?;
    env.apply(SLEEP_JOB).await?;
    env.deploy_canary("good", 2, "good:1", &job_step("0", "2"))
        .await?;
    env.deploy_canary("bad", 2, "bad:1", &job_step("1", "1"))
        .await?;

    // Two Jobs that exit 0 pass the step; the count came from an argument.
    env.set_image("good", "good:2").await?;
    let run = wait_run_of(&env, "good", AnalysisPhase::Successful).await?;
    let result = &run.status.as_ref().expect("status").metric_results[0];
    assert_eq!((result.count, result.successful), (2, 2), "{result:?}");
    let uid = run.metadata.uid.clone().expect("uid");
    let names: Vec<String> = result
        .measurements
        .iter()
        .map(|m| m.metadata.get("job-name").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        vec![format!("{uid}.sleep-job.1"), format!("{uid}.sleep-job.2")]
    );
    let own: Vec<_> = jobs(&env)
        .await?
        .into_iter()
        .filter(|j| j.labels().get("analysisrun.ramp.dev/uid") == Some(&uid))
        .collect();
    assert_eq!(own.len(), 2);
    for job in &own {
        assert_eq!(
            job.labels().get("suite").map(String::as_str),
            Some("ramp-e2e")
        );
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("AnalysisRun", uid.as_str())
        );
        let complete = job
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Complete" && c.status == "True");
        assert!(complete, "the Job controller completed {}", job.name_any());
    }
    env.wait_phase("good", RolloutPhase::Healthy).await?;

    // A Job that exits 1 fails the run and aborts the rollout to stable.
    env.set_image("bad", "bad:2").await?;
    let failed = wait_run_of(&env, "bad", AnalysisPhase::Failed).await?;
    let result = &failed.status.as_ref().expect("status").metric_results[0];
    assert_eq!(result.failed, 1);
    let message = result.measurements[0].message.clone().unwrap_or_default();
    assert!(message.contains("failed"), "{message}");
    env.wait_phase("bad", RolloutPhase::Degraded).await?;
    env.wait_replicas("bad back on stable", &[("bad:2", 0), ("bad:1", 2)])
        .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn jobs_that_never_end_are_inconclusive_when_stopped_or_when_their_image_cannot_be_pulled()
-> anyhow::Result<()> {
    let env = Env::start("analysis-job-stuck").await?;
    // Argo's long-running-job and invalid-image-job templates.
    let job_template = |name: &str, image: &str, args: &str| {
        format!(
            r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: {name}}}
spec:
  metrics:
  - name: {name}-metric
    count: 1
    provider:
      job:
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers: [{{name: job, image: "{image}", command: [sh, -c], args: ["{args}"]}}]
"#
        )
    };
    env.apply(&job_template(
        "long-running-job",
        "nginx:1.19-alpine",
        "sleep 6000",
    ))
    .await?;
    env.apply(&job_template(
        "invalid-image-job",
        "nonexistent-image-that-does-not-exist:latest",
        "echo never",
    ))
    .await?;

    // Background analysis whose Job outlives the rollout: promotion stops
    // it, the Job is deleted and the measurement is Inconclusive.
    let mut yaml = canary_yaml("bg", 2, "bg:1", "[{setWeight: 50}, {pause: {}}]");
    yaml.push_str("      analysis:\n        templates: [{templateName: long-running-job}]\n");
    env.apply(&yaml).await?;
    env.wait_phase("bg", RolloutPhase::Healthy).await?;
    env.set_image("bg", "bg:2").await?;
    env.wait_phase("bg", RolloutPhase::Paused).await?;
    let running = wait_run_of(&env, "bg", AnalysisPhase::Running).await?;
    let uid = running.metadata.uid.clone().expect("uid");
    wait_until("the long-running Job to exist", common::TIMEOUT, || async {
        let found = jobs(&env)
            .await?
            .into_iter()
            .any(|j| j.labels().get("analysisrun.ramp.dev/uid") == Some(&uid));
        Ok(found.then_some(()))
    })
    .await?;
    env.promote("bg").await?;
    env.wait_phase("bg", RolloutPhase::Healthy).await?;
    let stopped = wait_run_of(&env, "bg", AnalysisPhase::Inconclusive).await?;
    let result = &stopped.status.as_ref().expect("status").metric_results[0];
    assert_eq!(result.phase, AnalysisPhase::Inconclusive);
    let last = result.measurements.last().expect("a measurement");
    assert_eq!(last.phase, AnalysisPhase::Inconclusive);
    assert_eq!(last.message.as_deref(), Some("Metric Terminated"));
    wait_until("the stopped Job to be deleted", common::TIMEOUT, || async {
        let left = jobs(&env)
            .await?
            .into_iter()
            .any(|j| j.labels().get("analysisrun.ramp.dev/uid") == Some(&uid));
        Ok((!left).then_some(()))
    })
    .await?;
    env.wait_phase("bg", RolloutPhase::Healthy).await?;

    // A step analysis whose Job pod can never pull its image: Inconclusive,
    // so the rollout pauses for a human instead of aborting.
    env.deploy_canary(
        "pull",
        2,
        "pull:1",
        "[{setWeight: 50}, {analysis: {templates: [{templateName: invalid-image-job}]}}]",
    )
    .await?;
    env.set_image("pull", "pull:2").await?;
    let stuck = wait_run_of(&env, "pull", AnalysisPhase::Inconclusive).await?;
    let measurement = stuck.status.as_ref().expect("status").metric_results[0]
        .measurements
        .last()
        .cloned()
        .expect("a measurement");
    assert_eq!(measurement.phase, AnalysisPhase::Inconclusive);
    let message = measurement.message.unwrap_or_default();
    assert!(message.contains("ErrImagePull"), "{message}");
    let paused = env.wait_phase("pull", RolloutPhase::Paused).await?;
    assert!(
        !paused.status.as_ref().is_some_and(|s| s.abort),
        "paused, not aborted"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_range_query_judges_every_sample_of_the_window() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.02).await?;
    let env = Env::start("analysis-range").await?;
    env.apply(&format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisRun
metadata: {{name: ranged}}
spec:
  args: [{{name: window, value: 30s}}]
  metrics:
  - name: recent-errors
    # Prometheus has scraped since before the run; three seconds later the
    # window holds at least three steps with a sample.
    initialDelay: 3s
    successCondition: "size(result) > 1 && result.all(x, x < 0.05)"
    provider:
      prometheus:
        address: {}
        query: sum(app_errors_ratio{{service="web"}})
        rangeQuery: {{start: 'now() - duration("{{{{args.window}}}}")', end: "now()", step: 1s}}
"#,
        metrics.prometheus.url
    ))
    .await?;
    let run = wait_run(&env, "ranged", AnalysisPhase::Successful).await?;
    let value = run.status.as_ref().expect("status").metric_results[0].measurements[0]
        .value
        .clone()
        .unwrap_or_default();
    // One sample per step of the window, all the ratio the target serves.
    let samples: Vec<&str> = value.trim_matches(['[', ']']).split(',').collect();
    assert!(samples.len() > 1, "{value}");
    assert!(samples.iter().all(|s| s.trim() == "0.02"), "{value}");
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}
