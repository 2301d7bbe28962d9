//! Notifications (issue 15): a Rollout subscribes through annotations, the
//! services come from a ConfigMap with a secret from a Secret, and a local
//! HTTP receiver sees each transition exactly once, also after it first
//! refused with 500s.

mod common;

use common::{Env, canary_yaml};
use ramp::api::RolloutPhase;
use ramp_test_support::{Received, WebReceiver, wait_until};

fn of_trigger<'a>(requests: &'a [Received], trigger: &str) -> Vec<&'a Received> {
    requests
        .iter()
        .filter(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body)
                .is_ok_and(|b| b["trigger"] == trigger)
        })
        .collect()
}

async fn delivered(env: &Env) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.metrics_port()))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| {
            l.starts_with("ramp_notifications_total")
                && l.contains("service=\"webhook\"")
                && l.contains("outcome=\"delivered\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[tokio::test]
async fn each_transition_is_delivered_once_and_retried_through_500s() -> anyhow::Result<()> {
    let receiver = WebReceiver::start(200, "ok").await?;
    let env = Env::start("notify").await?;
    env.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: ramp-notifications-secret}}
stringData: {{audit-token: Bearer n0t1fy}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ramp-notifications-cm}}
data:
  service.webhook.audit: |
    url: {}/events
    headers:
    - {{name: Authorization, value: $audit-token}}
  template.on-rollout-paused: "{{{{rollout}}}} waits for a human: {{{{message}}}}"
"#,
        receiver.url
    ))
    .await?;
    let yaml = canary_yaml("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]").replacen(
        "metadata: {name: web}",
        "metadata:\n  name: web\n  annotations:\n    notifications.ramp.dev/subscribe.on-rollout-paused.audit: \"\"\n    notifications.argoproj.io/subscribe.on-rollout-completed.audit: \"\"",
        1,
    );
    env.apply(&yaml).await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    // The first revision becoming stable is a completion too, as in Argo.
    wait_until(
        "the first completion to be delivered",
        common::TIMEOUT,
        || async { Ok((delivered(&env).await? == 1).then_some(())) },
    )
    .await?;
    let before = receiver.requests().len();

    // Refused twice, then the receiver recovers and the retry lands.
    receiver.answer_next(2, 500, "not now");
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    wait_until(
        "the paused notice to be delivered",
        common::TIMEOUT,
        || async { Ok((delivered(&env).await? == 2).then_some(())) },
    )
    .await?;
    let paused_attempts = of_trigger(&receiver.requests(), "on-rollout-paused").len();
    assert_eq!(paused_attempts, 3, "two refusals and the retry that landed");
    let paused = of_trigger(&receiver.requests(), "on-rollout-paused")[0].clone();
    assert_eq!(paused.path, "/events");
    assert_eq!(
        paused.headers.get("authorization").map(String::as_str),
        Some("Bearer n0t1fy")
    );
    let body: serde_json::Value = serde_json::from_str(&paused.body)?;
    assert_eq!(body["rollout"], "web");
    assert_eq!(body["reason"], "RolloutPaused");
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("web waits for a human")),
        "{body}"
    );

    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    wait_until(
        "the completed notice to be delivered",
        common::TIMEOUT,
        || async { Ok((delivered(&env).await? >= 3).then_some(())) },
    )
    .await?;
    let all = receiver.requests();
    let seen: Vec<&str> = all.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(delivered(&env).await?, 3, "{seen:#?}");
    let since_update = &all[before..];
    assert_eq!(
        of_trigger(since_update, "on-rollout-completed").len(),
        1,
        "completed once, through Argo's annotation prefix: {seen:#?}"
    );
    assert_eq!(
        of_trigger(since_update, "on-rollout-paused").len(),
        paused_attempts,
        "nothing re-sent once delivered"
    );
    assert!(
        of_trigger(since_update, "on-rollout-updated").is_empty(),
        "no subscription, no notice"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_analysis_notifies_its_rollouts_subscribers_once() -> anyhow::Result<()> {
    let receiver = WebReceiver::start(200, "ok").await?;
    let verdicts = WebReceiver::start(200, r#"{"ok": false}"#).await?;
    let env = Env::start("notify-analysis").await?;
    env.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: ramp-notifications-cm}}
data:
  service.webhook.audit: "url: {}/events"
---
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: verdict}}
spec:
  metrics:
  - name: verdict
    successCondition: "result.ok == true"
    provider: {{web: {{url: "{}/verdict"}}}}
"#,
        receiver.url, verdicts.url
    ))
    .await?;
    let yaml = canary_yaml(
        "api",
        2,
        "api:1",
        "[{setWeight: 50}, {analysis: {templates: [{templateName: verdict}]}}]",
    )
    .replacen(
        "metadata: {name: api}",
        "metadata:\n  name: api\n  annotations:\n    notifications.ramp.dev/subscribe.on-analysis-run-failed.audit: \"\"\n    notifications.ramp.dev/subscribe.on-rollout-aborted.audit: \"\"",
        1,
    );
    env.apply(&yaml).await?;
    env.wait_phase("api", RolloutPhase::Healthy).await?;
    env.set_image("api", "api:2").await?;
    env.wait_phase("api", RolloutPhase::Degraded).await?;
    wait_until("both notices to be delivered", common::TIMEOUT, || async {
        Ok((delivered(&env).await? >= 2).then_some(()))
    })
    .await?;
    let requests = receiver.requests();
    let failed = of_trigger(&requests, "on-analysis-run-failed");
    assert_eq!(failed.len(), 1, "{requests:?}");
    let body: serde_json::Value = serde_json::from_str(&failed[0].body)?;
    assert_eq!(body["rollout"], "api", "told under the Rollout's name");
    assert_eq!(body["reason"], "AnalysisRunFailed");
    assert_eq!(of_trigger(&requests, "on-rollout-aborted").len(), 1);
    assert_eq!(delivered(&env).await?, 2);
    env.cleanup().await;
    Ok(())
}

/// Every trigger, subscribed at once: each transition is delivered exactly
/// once, whatever else happens around it (an inconclusive run, an errored
/// run, aborts, a clean release).
#[tokio::test]
async fn every_trigger_is_delivered_once_per_transition() -> anyhow::Result<()> {
    let receiver = WebReceiver::start(200, "ok").await?;
    let verdicts = WebReceiver::start(200, r#"{"score": 0.7}"#).await?;
    let env = Env::start("notify-all").await?;
    env.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: ramp-notifications-cm}}
data:
  service.webhook.audit: "url: {}/events"
---
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: score}}
spec:
  metrics:
  - name: score
    count: 1
    consecutiveErrorLimit: 0
    successCondition: "result.score > 0.9"
    failureCondition: "result.score < 0.5"
    provider: {{web: {{url: "{}/score"}}}}
"#,
        receiver.url, verdicts.url
    ))
    .await?;
    let triggers = [
        "on-rollout-completed",
        "on-rollout-step-completed",
        "on-rollout-paused",
        "on-rollout-aborted",
        "on-rollout-updated",
        "on-analysis-run-failed",
        "on-analysis-run-error",
        "on-analysis-run-inconclusive",
    ];
    let annotations: String = triggers
        .iter()
        .map(|t| format!("\n    notifications.ramp.dev/subscribe.{t}.audit: \"\""))
        .collect();
    let yaml = canary_yaml(
        "web",
        2,
        "web:1",
        "[{setWeight: 50}, {analysis: {templates: [{templateName: score}]}}]",
    )
    .replacen(
        "metadata: {name: web}",
        &format!("metadata:\n  name: web\n  annotations:{annotations}"),
        1,
    );
    env.apply(&yaml).await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;

    // Release 2: the score sits between the conditions, so the run is
    // inconclusive and the rollout pauses; a human aborts it.
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.set_abort("web", true).await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    // Release 3: the score endpoint fails, the run errors, the rollout aborts.
    verdicts.answer(500, "down");
    env.set_image("web", "web:3").await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    // Release 4: a failing score.
    verdicts.answer(200, r#"{"score": 0.1}"#);
    env.set_image("web", "web:4").await?;
    env.wait_phase("web", RolloutPhase::Degraded).await?;
    // Release 5: a good score goes all the way.
    verdicts.answer(200, r#"{"score": 0.95}"#);
    env.set_image("web", "web:5").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;

    let expected = [
        // The first deployment and release 5.
        ("on-rollout-completed", 2),
        // Release 5's two steps (the aborted releases completed their
        // setWeight step too: 3 more).
        ("on-rollout-step-completed", 5),
        ("on-rollout-paused", 1),
        ("on-rollout-aborted", 3),
        ("on-rollout-updated", 4),
        ("on-analysis-run-failed", 1),
        ("on-analysis-run-error", 1),
        ("on-analysis-run-inconclusive", 1),
    ];
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    wait_until("every notice to arrive", common::TIMEOUT, || async {
        Ok((receiver.requests().len() >= total).then_some(()))
    })
    .await?;
    let requests = receiver.requests();
    let seen: Vec<String> = requests
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            format!("{} {}", body["trigger"], body["message"])
        })
        .collect();
    for (trigger, count) in expected {
        assert_eq!(
            of_trigger(&requests, trigger).len(),
            count,
            "{trigger}: {seen:#?}"
        );
    }
    assert_eq!(
        requests.len(),
        total,
        "nothing else, nothing twice: {seen:#?}"
    );
    env.cleanup().await;
    Ok(())
}
