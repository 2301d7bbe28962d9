//! Rollout webhooks: gates hold the rollout where it is until their
//! endpoint answers 2xx, pre-rollout and rollback hooks can abort, and
//! post-rollout and event hooks are told once, after the status write.

use super::*;
use crate::api::{WebhookPhase, WebhookType};
use crate::planner::webhooks::HookOutcome;

fn with_hooks(mut world: World, hooks: Value) -> World {
    world.rollout.spec.webhooks = serde_json::from_value(hooks).expect("fixture hooks are valid");
    world
}

fn hook(name: &str, kind: &str) -> Value {
    json!({"name": name, "type": kind, "url": format!("http://hooks.test/{name}"), "intervalSeconds": 10})
}

fn yes() -> HookOutcome {
    HookOutcome::Accepted {
        status: 200,
        body: "ok".into(),
    }
}

fn no(status: u16, body: &str) -> HookOutcome {
    HookOutcome::Refused {
        status,
        body: body.into(),
    }
}

fn asked(world: &World, name: &str) -> usize {
    world.asked.iter().filter(|c| c.hook.name == name).count()
}

fn told<'w>(world: &'w World, name: &str) -> Vec<&'w crate::planner::webhooks::WebhookCall> {
    world.told.iter().filter(|c| c.hook.name == name).collect()
}

fn record(world: &World, name: &str) -> crate::api::WebhookStatus {
    world
        .status()
        .webhooks
        .into_iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no status record for webhook {name}"))
}

#[test]
fn confirm_rollout_holds_the_canary_at_zero_pods_until_it_answers_2xx() {
    let mut world = with_hooks(
        standard_canary(),
        json!([hook("approve", "confirm-rollout")]),
    );
    deployed(&mut world);
    assert_eq!(
        asked(&world, "approve"),
        0,
        "the first deployment has no gate"
    );

    world
        .webhook_replies
        .insert("approve".into(), no(403, "change freeze"));
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 0);
    assert_eq!(world.replicas_of("web:1"), 5);
    assert_eq!(world.phase(), RolloutPhase::Paused);
    let status = world.status();
    assert_eq!(
        status.pause_conditions[0].reason,
        PauseReason::PendingWebhook
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("\"approve\" (confirm-rollout) answered HTTP 403: change freeze"),
        "{message}"
    );
    assert_eq!(record(&world, "approve").phase, WebhookPhase::Pending);
    assert_eq!(
        asked(&world, "approve"),
        1,
        "asked once per interval, not per pass"
    );
    assert_eq!(
        world.last_plan.requeue_after,
        Some(Duration::from_secs(10)),
        "looks again when the next question is due"
    );

    world.advance(10);
    world.settle();
    assert_eq!(asked(&world, "approve"), 2);
    assert_eq!(record(&world, "approve").attempts, 2);
    assert_eq!(world.replicas_of("web:2"), 0);

    world.webhook_replies.insert("approve".into(), yes());
    world.advance(10);
    world.settle();
    assert!(world.has_event("WebhookPassed"));
    assert_eq!(record(&world, "approve").phase, WebhookPhase::Successful);
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (1, 4),
        "the first step runs once the gate is open"
    );
    assert_eq!(
        world.status().pause_conditions[0].reason,
        PauseReason::CanaryPauseStep,
        "the webhook's pause condition is gone; the step's own pause follows"
    );

    // An open gate is never asked again for this revision, not even by a
    // restarted controller (its answers are gone; status remembers).
    world.webhook_answers.clear();
    let questions = asked(&world, "approve");
    world.promote();
    world.settle();
    world.advance(5);
    world.settle();
    assert_eq!(asked(&world, "approve"), questions);
    assert_eq!(world.phase(), RolloutPhase::Healthy);
}

#[test]
fn an_unanswered_question_is_asked_once_and_holds() {
    // No reply at all: the question stays in flight (the controller's
    // runner sends each attempt once), the rollout stays held.
    let mut world = with_hooks(
        standard_canary(),
        json!([hook("approve", "confirm-rollout")]),
    );
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    for _ in 0..5 {
        world.step();
    }
    assert_eq!(asked(&world, "approve"), 1);
    assert_eq!(world.replicas_of("web:2"), 0);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("waiting for webhook \"approve\" (confirm-rollout) to answer"),
        "{message}"
    );
}

#[test]
fn pre_rollout_failure_aborts_before_any_canary_pod() {
    let mut world = with_hooks(
        standard_canary(),
        json!([
            hook("approve", "confirm-rollout"),
            hook("smoke", "pre-rollout")
        ]),
    );
    deployed(&mut world);
    world.webhook_replies.insert("approve".into(), yes());
    world
        .webhook_replies
        .insert("smoke".into(), no(500, "database migration failed"));
    world.set_image("web:2");
    world.settle();
    assert!(
        world.asked.iter().position(|c| c.hook.name == "approve")
            < world.asked.iter().position(|c| c.hook.name == "smoke"),
        "pre-rollout is asked only once the confirm gate is open"
    );
    assert!(world.status().abort);
    assert!(world.has_warning("WebhookFailed"));
    assert!(world.has_warning("RolloutAborted"));
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message
            .contains("pre-rollout webhook \"smoke\" failed: HTTP 500: database migration failed"),
        "{message}"
    );
    assert_eq!(world.replicas_of("web:2"), 0);
    assert_eq!(world.replicas_of("web:1"), 5);
    assert_eq!(record(&world, "smoke").phase, WebhookPhase::Failed);
    assert_eq!(
        asked(&world, "smoke"),
        1,
        "a failed pre-rollout is not asked again"
    );

    // A retry asks every hook again.
    world.webhook_replies.insert("smoke".into(), yes());
    world.retry();
    world.settle();
    assert_eq!(asked(&world, "smoke"), 2);
    assert_eq!(asked(&world, "approve"), 2);
    assert_eq!(world.replicas_of("web:2"), 1);
}

#[test]
fn confirm_promotion_holds_the_last_split_until_it_answers_2xx() {
    let steps = json!([{"setWeight": 40}, {"pause": {"duration": "5s"}}]);
    let mut world = with_hooks(
        World::new(rollout(canary(steps), 5)),
        json!([hook("release", "confirm-promotion")]),
    );
    deployed(&mut world);
    world
        .webhook_replies
        .insert("release".into(), no(409, "not yet"));
    world.set_image("web:2");
    world.settle();
    world.advance(5);
    world.settle();
    assert_eq!(
        world.status().current_step_index,
        Some(2),
        "every step is done"
    );
    assert_eq!(
        (world.replicas_of("web:2"), world.replicas_of("web:1")),
        (2, 3),
        "the split of the last setWeight stays while the gate is closed"
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:1")));
    assert_eq!(asked(&world, "release"), 1);

    // A plain promote cannot open a webhook gate (the plugin refuses; the
    // planner puts the condition back if a promote clears it).
    world.promote();
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 2);
    assert_eq!(world.phase(), RolloutPhase::Paused);

    world.webhook_replies.insert("release".into(), yes());
    world.advance(10);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:2")));
    assert_eq!(world.replicas_of("web:1"), 0);
}

#[test]
fn promote_full_skips_the_gates() {
    let mut world = with_hooks(
        standard_canary(),
        json!([hook("approve", "confirm-rollout")]),
    );
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    if let Some(status) = world.rollout.status.as_mut() {
        status.promote_full = true;
        status.pause_conditions.clear();
    }
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.replicas_of("web:2"), 5);
    assert!(world.status().pause_conditions.is_empty());
}

#[test]
fn rollback_hook_aborts_when_it_answers_2xx_and_is_polled_every_interval() {
    let mut world = with_hooks(standard_canary(), json!([hook("pager", "rollback")]));
    deployed(&mut world);
    world
        .webhook_replies
        .insert("pager".into(), no(404, "no incident"));
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        world.replicas_of("web:2"),
        1,
        "a rollback hook saying no holds nothing"
    );
    assert_eq!(asked(&world, "pager"), 1);
    world.advance(10);
    world.settle();
    assert_eq!(asked(&world, "pager"), 2);
    assert!(!world.status().abort);

    world.webhook_replies.insert("pager".into(), yes());
    world.advance(10);
    world.settle();
    assert!(world.status().abort);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("rollback webhook \"pager\" asked for a rollback (HTTP 200: ok)"),
        "{message}"
    );
    assert_eq!(world.replicas_of("web:1"), 5);
    assert_eq!(world.selector("web-canary"), Some(world.hash_for("web:1")));
}

#[test]
fn post_rollout_is_told_once_when_the_rollout_ends_and_event_hooks_hear_every_transition() {
    let mut world = with_hooks(
        standard_canary(),
        json!([hook("done", "post-rollout"), hook("audit", "event")]),
    );
    deployed(&mut world);
    assert!(
        told(&world, "done").is_empty(),
        "the first deployment is no rollout"
    );
    let first_events = world.events.len();
    assert_eq!(
        told(&world, "audit").len(),
        first_events,
        "every Event of the first deployment"
    );

    world.set_image("web:2");
    world.settle();
    world.promote();
    world.settle();
    world.advance(5);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let post = told(&world, "done");
    assert_eq!(post.len(), 1, "{post:#?}");
    assert_eq!(post[0].payload["result"], "completed");
    assert_eq!(post[0].payload["type"], "post-rollout");
    assert_eq!(
        post[0].payload["podTemplateHash"],
        json!(world.hash_for("web:2"))
    );
    assert_eq!(record(&world, "done").phase, WebhookPhase::Sent);

    let audit = told(&world, "audit");
    assert_eq!(
        audit.len(),
        world.events.len(),
        "one call per Event, none twice"
    );
    let reasons: Vec<&str> = audit
        .iter()
        .filter_map(|c| c.payload["reason"].as_str())
        .collect();
    for reason in [
        "RolloutUpdated",
        "RolloutPaused",
        "RolloutStepCompleted",
        "RolloutCompleted",
    ] {
        assert!(
            reasons.contains(&reason),
            "{reason} missing from {reasons:?}"
        );
    }

    // Settled: nothing more is told.
    let before = world.told.len();
    world.advance(60);
    world.settle();
    assert_eq!(world.told.len(), before);

    // An abort ends a rollout too.
    world.set_image("web:3");
    world.settle();
    world.abort();
    world.settle();
    let post = told(&world, "done");
    assert_eq!(post.len(), 2);
    assert_eq!(post[1].payload["result"], "aborted");
}

#[test]
fn blue_green_gates_hold_the_preview_and_the_switch() {
    let mut world = with_hooks(
        World::new(rollout(blue_green(json!({})), 2)),
        json!([
            hook("approve", "confirm-rollout"),
            hook("release", "confirm-promotion")
        ]),
    );
    deployed(&mut world);
    world
        .webhook_replies
        .insert("approve".into(), no(403, "wait"));
    world
        .webhook_replies
        .insert("release".into(), no(403, "wait"));
    world.set_image("web:2");
    world.settle();
    assert_eq!(
        world.replicas_of("web:2"),
        0,
        "no preview pod before confirm-rollout"
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);

    world.webhook_replies.insert("approve".into(), yes());
    world.advance(10);
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 2, "the preview comes up");
    assert_eq!(world.selector("web-preview"), Some(world.hash_for("web:2")));
    assert_eq!(
        world.selector("web-active"),
        Some(world.hash_for("web:1")),
        "no switch before confirm-promotion"
    );
    assert_eq!(world.phase(), RolloutPhase::Paused);

    world.webhook_replies.insert("release".into(), yes());
    world.advance(10);
    world.settle();
    assert_eq!(world.selector("web-active"), Some(world.hash_for("web:2")));
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:2")));
}

#[test]
fn a_new_revision_forgets_the_answers_of_the_last() {
    let mut world = with_hooks(
        standard_canary(),
        json!([hook("approve", "confirm-rollout")]),
    );
    deployed(&mut world);
    world.webhook_replies.insert("approve".into(), yes());
    world.set_image("web:2");
    world.settle();
    assert_eq!(record(&world, "approve").phase, WebhookPhase::Successful);
    world
        .webhook_replies
        .insert("approve".into(), no(403, "frozen"));
    world.set_image("web:3");
    world.settle();
    let status = world.status();
    assert_eq!(status.webhooks.len(), 1);
    assert_eq!(
        status.webhooks[0].pod_template_hash,
        world.hash_for("web:3")
    );
    assert_eq!(status.webhooks[0].phase, WebhookPhase::Pending);
    assert_eq!(world.replicas_of("web:3"), 0);
}

#[test]
fn webhook_fields_are_validated_with_their_paths() {
    let mut spec = standard_canary().rollout.spec;
    spec.webhooks = serde_json::from_value(json!([
        {"name": "a", "type": "confirm-rollout", "url": "ftp://x/"},
        {"name": "a", "type": "event", "url": "not a url", "timeoutSeconds": 0, "retries": 11, "intervalSeconds": 0},
        {"name": " ", "type": "rollback", "url": "http://ok.test/"},
    ]))
    .expect("schema-valid hooks");
    let problems: Vec<String> = crate::api::validate::validate_rollout(&spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    for expected in [
        "spec.webhooks[0].url: \"ftp://x/\" must be an http:// or https:// address",
        "spec.webhooks[1].name: \"a\" is used by an earlier webhook",
        "spec.webhooks[1].url: \"not a url\" is not a URL",
        "spec.webhooks[1].timeoutSeconds: must be between 1 and 300",
        "spec.webhooks[1].retries: must be between 0 and 10",
        "spec.webhooks[1].intervalSeconds: must be between 1 and 3600",
        "spec.webhooks[2].name: give the webhook a name",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected:?} not in {problems:#?}"
        );
    }
    assert_eq!(WebhookType::PostRollout.as_str(), "post-rollout");
}
