use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn subscriptions_are_read_under_both_prefixes_and_mistakes_are_named() {
    let annotations = map(&[
        (
            "notifications.ramp.dev/subscribe.on-rollout-aborted.slack",
            "deploys; oncall",
        ),
        (
            "notifications.argoproj.io/subscribe.on-rollout-completed.audit",
            "",
        ),
        (
            "notifications.ramp.dev/subscribe.on-rollout-exploded.slack",
            "x",
        ),
        ("notifications.ramp.dev/subscribe.on-rollout-paused", "x"),
        ("app.kubernetes.io/name", "web"),
    ]);
    let (found, problems) = subscriptions(&annotations);
    assert_eq!(
        found,
        vec![
            Subscription {
                trigger: "on-rollout-completed".into(),
                service: "audit".into(),
                recipients: vec![]
            },
            Subscription {
                trigger: "on-rollout-aborted".into(),
                service: "slack".into(),
                recipients: vec!["deploys".into(), "oncall".into()]
            },
        ]
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown trigger \"on-rollout-exploded\""))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("subscribe.<trigger>.<service>"))
    );
}

#[test]
fn a_transition_notifies_only_its_subscribers() {
    let annotations = map(&[(
        "notifications.ramp.dev/subscribe.on-rollout-aborted.audit",
        "",
    )]);
    assert!(notice("shop", "web", &annotations, "RolloutCompleted", "done").is_none());
    assert!(
        notice("shop", "web", &annotations, "RolloutResumed", "").is_none(),
        "no trigger"
    );
    let aborted = notice(
        "shop",
        "web",
        &annotations,
        "RolloutAborted",
        "analysis failed",
    )
    .unwrap();
    assert_eq!(aborted.trigger, "on-rollout-aborted");
    assert_eq!(aborted.subscriptions.len(), 1);
}

#[test]
fn each_service_gets_its_own_request_with_secrets_and_template_filled_in() {
    let annotations = map(&[
        (
            "notifications.ramp.dev/subscribe.on-rollout-aborted.audit",
            "",
        ),
        (
            "notifications.ramp.dev/subscribe.on-rollout-aborted.slack",
            "#deploys",
        ),
        (
            "notifications.ramp.dev/subscribe.on-rollout-aborted.teams",
            "release",
        ),
        (
            "notifications.ramp.dev/subscribe.on-rollout-aborted.pager",
            "",
        ),
    ]);
    let config = map(&[
        (
            "service.webhook.audit",
            "url: http://audit.tools:8080/events\nheaders:\n- {name: Authorization, value: $audit-token}\n",
        ),
        ("service.slack", "webhookUrl: $slack-url\n"),
        (
            "service.teams",
            "recipientUrls:\n  release: https://teams.example/hook/1\n",
        ),
        (
            "template.on-rollout-aborted",
            "{{namespace}}/{{rollout}} aborted: {{message}} {{unknown}}",
        ),
    ]);
    let secrets = map(&[
        ("audit-token", "Bearer s3cret"),
        ("slack-url", "https://hooks.slack.example/T1"),
    ]);
    let notice = notice(
        "shop",
        "web",
        &annotations,
        "RolloutAborted",
        "error ratio 0.3",
    )
    .unwrap();
    let sent = deliveries(&notice, &config, &secrets);
    assert_eq!(sent.len(), 4);
    let text = "shop/web aborted: error ratio 0.3 {{unknown}}";
    let audit = sent[0].as_ref().unwrap();
    assert_eq!(
        (audit.kind, audit.url.as_str()),
        ("webhook", "http://audit.tools:8080/events")
    );
    assert_eq!(
        audit.headers,
        vec![("Authorization".to_string(), "Bearer s3cret".to_string())]
    );
    assert_eq!(audit.body["trigger"], "on-rollout-aborted");
    assert_eq!(audit.body["text"], text);
    // The pager has no service defined: an error naming what to add.
    let pager = sent[1].as_ref().unwrap_err();
    assert!(pager.contains("service.webhook.pager"), "{pager}");
    let slack = sent[2].as_ref().unwrap();
    assert_eq!(slack.url, "https://hooks.slack.example/T1");
    assert_eq!(slack.body, json!({"text": text, "channel": "#deploys"}));
    let teams = sent[3].as_ref().unwrap();
    assert_eq!(
        (teams.kind, teams.url.as_str()),
        ("teams", "https://teams.example/hook/1")
    );

    let missing = deliveries(
        &notice,
        &map(&[("service.slack", "webhookUrl: $nope")]),
        &secrets,
    );
    assert!(
        missing[2]
            .as_ref()
            .unwrap_err()
            .contains("$nope is not a key of Secret"),
        "{missing:?}"
    );
}

#[test]
fn the_default_text_says_what_happened() {
    let annotations = map(&[(
        "notifications.ramp.dev/subscribe.on-rollout-completed.audit",
        "",
    )]);
    let notice = notice(
        "shop",
        "web",
        &annotations,
        "RolloutCompleted",
        "revision 3 is stable",
    )
    .unwrap();
    assert_eq!(
        render(&notice, &BTreeMap::new()),
        "Rollout shop/web: RolloutCompleted. revision 3 is stable"
    );
}
