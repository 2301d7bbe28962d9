//! Rollout webhooks (issue 15) on the real cluster, against local HTTP
//! receivers: confirm gates hold the rollout until they answer 2xx and are
//! not asked again after a controller restart, pre-rollout and rollback
//! hooks abort back to stable, post-rollout and event hooks are told once.

mod common;

use common::{Env, canary_yaml};
use ramp::api::{RolloutPhase, WebhookPhase};
use ramp_test_support::{Received, WebReceiver, wait_until};

fn with_webhooks(yaml: String, hooks: &str) -> String {
    yaml.replacen(
        "  strategy:\n",
        &format!("  webhooks:\n{hooks}  strategy:\n"),
        1,
    )
}

fn bodies(requests: &[Received]) -> Vec<serde_json::Value> {
    requests
        .iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect()
}

fn message(rollout: &ramp::api::Rollout) -> String {
    rollout
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

async fn calls(env: &Env, hook_type: &str, outcome: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.metrics_port()))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("ramp_webhook_calls_total")
                && l.contains(&format!("hook_type=\"{hook_type}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

#[tokio::test]
async fn gates_hold_until_their_webhooks_answer_and_are_not_asked_again_after_a_restart()
-> anyhow::Result<()> {
    let approve = WebReceiver::start(403, "change freeze").await?;
    let smoke = WebReceiver::start(200, "smoke ok").await?;
    let release = WebReceiver::start(409, "not before the release window").await?;
    let done = WebReceiver::start(200, "").await?;
    let audit = WebReceiver::start(200, "").await?;
    let mut env = Env::start("webhooks-gates").await?;
    let hooks = format!(
        "  - {{name: approve, type: confirm-rollout, url: \"{}/approve\", intervalSeconds: 1, metadata: {{team: shop}}}}\n  \
         - {{name: smoke, type: pre-rollout, url: \"{}/smoke\"}}\n  \
         - {{name: release, type: confirm-promotion, url: \"{}/release\", intervalSeconds: 1}}\n  \
         - {{name: done, type: post-rollout, url: \"{}/done\"}}\n  \
         - {{name: audit, type: event, url: \"{}/audit\"}}\n",
        approve.url, smoke.url, release.url, done.url, audit.url
    );
    env.apply(&with_webhooks(
        canary_yaml("web", 2, "web:1", "[{setWeight: 50}]"),
        &hooks,
    ))
    .await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    assert!(
        approve.requests().is_empty() && smoke.requests().is_empty(),
        "the first deployment has no gates"
    );

    env.set_image("web", "web:2").await?;
    let held = env
        .wait_rollout("web", "the confirm-rollout gate to hold", |r| {
            message(r).contains("\"approve\" (confirm-rollout) answered HTTP 403: change freeze")
        })
        .await?;
    assert_eq!(common::phase(&held), Some(RolloutPhase::Paused));
    let by_image = env.replicas_by_image().await?;
    assert_eq!(
        by_image.get("web:2").map(|c| c.0).unwrap_or(0),
        0,
        "no canary pod before the gate opens: {by_image:?}"
    );
    let asked = bodies(&approve.requests());
    let first = &asked[0];
    assert_eq!(first["name"], "web");
    assert_eq!(first["namespace"], env.ns.as_str());
    assert_eq!(first["type"], "confirm-rollout");
    assert_eq!(first["webhook"], "approve");
    assert_eq!(
        first["podTemplateHash"],
        env.hash_of("web:2").await?.as_str()
    );
    assert_eq!(first["metadata"]["team"], "shop");
    assert_eq!(approve.requests()[0].path, "/approve");

    // A human's promote does not open a webhook gate; get shows why.
    let refused = env.kubectl(&["ramp", "promote", "web"]).await?;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(said.contains("waits for a webhook gate"), "{said}");
    let shown = env
        .ramp_ok(&["get", "rollout", "web", "--no-color"])
        .await?;
    assert!(
        shown.contains("approve [confirm-rollout]: waiting (HTTP 403: change freeze"),
        "{shown}"
    );

    approve.answer(200, "approved by ops");
    env.wait_rollout("web", "the confirm-promotion gate to hold", |r| {
        message(r).contains("\"release\" (confirm-promotion) answered HTTP 409")
    })
    .await?;
    env.wait_replicas("the last step's split", &[("web:2", 1), ("web:1", 1)])
        .await?;
    assert_eq!(smoke.requests().len(), 1, "pre-rollout asked once");
    assert_eq!(
        bodies(&smoke.requests())[0]["type"],
        "pre-rollout",
        "asked after the confirm gate opened"
    );

    // A restarted controller remembers the open gates from status: it asks
    // the pending gate again (that request proves it planned this Rollout)
    // and never the gates that already passed.
    env.kill_controller().await;
    let (approvals, smokes, releases) = (
        approve.requests().len(),
        smoke.requests().len(),
        release.requests().len(),
    );
    env.start_controller().await?;
    wait_until(
        "the restarted controller to ask the pending gate",
        common::TIMEOUT,
        || async { Ok((release.requests().len() > releases).then_some(())) },
    )
    .await?;
    assert_eq!(
        approve.requests().len(),
        approvals,
        "an open gate is not asked again"
    );
    assert_eq!(
        smoke.requests().len(),
        smokes,
        "a passed pre-rollout is not asked again"
    );

    release.answer(200, "go");
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    let rollout = env.rollout("web").await?;
    let records = rollout.status.map(|s| s.webhooks).unwrap_or_default();
    let phase_of = |name: &str| records.iter().find(|w| w.name == name).map(|w| w.phase);
    assert_eq!(phase_of("approve"), Some(WebhookPhase::Successful));
    assert_eq!(phase_of("release"), Some(WebhookPhase::Successful));
    assert_eq!(phase_of("done"), Some(WebhookPhase::Sent));

    wait_until("post-rollout to be told", common::TIMEOUT, || async {
        Ok((!done.requests().is_empty()).then_some(()))
    })
    .await?;
    let told = bodies(&done.requests());
    assert_eq!(told.len(), 1, "{told:#?}");
    assert_eq!(told[0]["result"], "completed");
    wait_until(
        "the completion to reach the event hook",
        common::TIMEOUT,
        || async {
            Ok(bodies(&audit.requests())
                .iter()
                .any(|b| b["reason"] == "RolloutCompleted")
                .then_some(()))
        },
    )
    .await?;
    let events = bodies(&audit.requests());
    let count = |reason: &str| events.iter().filter(|b| b["reason"] == reason).count();
    // The first deployment completes too (as an Event, not a post-rollout).
    assert_eq!(count("RolloutCompleted"), 2, "{events:#?}");
    assert_eq!(
        count("RolloutUpdated"),
        1,
        "told once, restart or not: {events:#?}"
    );
    assert_eq!(
        count("WebhookPassed"),
        3,
        "approve, smoke and release: {events:#?}"
    );
    // Counted by the restarted process: the gate it asked and saw open.
    assert!(calls(&env, "confirm-promotion", "accepted").await? >= 1);
    assert!(calls(&env, "confirm-promotion", "refused").await? >= 1);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn pre_rollout_failures_and_rollback_hooks_abort_back_to_stable() -> anyhow::Result<()> {
    let smoke = WebReceiver::start(500, "migration failed").await?;
    let pager = WebReceiver::start(404, "no incident").await?;
    let done = WebReceiver::start(200, "").await?;
    let env = Env::start("webhooks-abort").await?;
    // A rollback hook nobody listens on: unreachable is "no rollback", and
    // the status says why.
    let hooks = format!(
        "  - {{name: smoke, type: pre-rollout, url: \"{}/smoke\", retries: 1}}\n  \
         - {{name: pager, type: rollback, url: \"{}/pager\", intervalSeconds: 1}}\n  \
         - {{name: dead, type: rollback, url: \"http://127.0.0.1:9/\", intervalSeconds: 1, timeoutSeconds: 2, retries: 0}}\n  \
         - {{name: done, type: post-rollout, url: \"{}/done\"}}\n",
        smoke.url, pager.url, done.url
    );
    env.apply(&with_webhooks(
        canary_yaml("api", 2, "api:1", "[{setWeight: 50}, {pause: {}}]"),
        &hooks,
    ))
    .await?;
    env.wait_phase("api", RolloutPhase::Healthy).await?;
    let stable = env.hash_of("api:1").await?;

    env.set_image("api", "api:2").await?;
    let aborted = env.wait_phase("api", RolloutPhase::Degraded).await?;
    assert!(
        message(&aborted)
            .contains("pre-rollout webhook \"smoke\" failed: HTTP 500: migration failed"),
        "{}",
        message(&aborted)
    );
    assert_eq!(smoke.requests().len(), 2, "one request and its retry");
    let by_image = env.replicas_by_image().await?;
    assert_eq!(
        by_image.get("api:2").map(|c| c.0).unwrap_or(0),
        0,
        "{by_image:?}"
    );
    env.wait_selector("api-stable", &stable).await?;
    wait_until(
        "post-rollout to hear of the abort",
        common::TIMEOUT,
        || async { Ok((!done.requests().is_empty()).then_some(())) },
    )
    .await?;
    assert_eq!(bodies(&done.requests())[0]["result"], "aborted");

    // Retried with a passing smoke test: the canary runs and the rollback
    // hooks are polled while it waits at the pause.
    smoke.answer(200, "ok");
    env.ramp_ok(&["retry", "rollout", "api"]).await?;
    env.wait_phase("api", RolloutPhase::Paused).await?;
    env.wait_replicas("the canary step", &[("api:2", 1), ("api:1", 1)])
        .await?;
    let polled = env
        .wait_rollout("api", "both rollback hooks to have answered twice", |r| {
            let records = r
                .status
                .as_ref()
                .map(|s| s.webhooks.clone())
                .unwrap_or_default();
            ["pager", "dead"]
                .iter()
                .all(|name| records.iter().any(|w| w.name == *name && w.attempts >= 2))
        })
        .await?;
    let records = polled.status.map(|s| s.webhooks).unwrap_or_default();
    let dead = records
        .iter()
        .find(|w| w.name == "dead")
        .map(|w| w.message.clone());
    assert!(
        dead.flatten()
            .is_some_and(|m| m.contains("http://127.0.0.1:9/ unreachable")),
        "{records:#?}"
    );
    assert!(!env.rollout("api").await?.status.is_some_and(|s| s.abort));

    pager.answer(200, "incident INC-42 open");
    let aborted = env.wait_phase("api", RolloutPhase::Degraded).await?;
    assert!(
        message(&aborted).contains(
            "rollback webhook \"pager\" asked for a rollback (HTTP 200: incident INC-42 open)"
        ),
        "{}",
        message(&aborted)
    );
    env.wait_replicas("everything back on stable", &[("api:1", 2), ("api:2", 0)])
        .await?;
    env.wait_selector("api-canary", &stable).await?;
    wait_until(
        "post-rollout to hear of the second abort",
        common::TIMEOUT,
        || async { Ok((done.requests().len() == 2).then_some(())) },
    )
    .await?;
    assert!(calls(&env, "rollback", "unreachable").await? >= 2);
    assert!(calls(&env, "pre-rollout", "refused").await? >= 1);
    env.cleanup().await;
    Ok(())
}
