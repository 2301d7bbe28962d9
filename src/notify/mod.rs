//! Notifications of rollout transitions, decided without I/O: which
//! triggers a transition fires, who subscribed to them (annotations on the
//! Rollout), and the HTTP requests each subscribed service gets. Delivery
//! (a bounded queue with retries) is in `deliver`.
//!
//! Subscriptions use Argo's annotation form under Ramp's prefix, and Argo's
//! own prefix is accepted so migrated manifests keep working:
//! `notifications.ramp.dev/subscribe.<trigger>.<service>: <recipient>[;<recipient>]`.
//! Services and templates live in the ConfigMap `ramp-notifications-cm` and
//! their secrets in the Secret `ramp-notifications-secret`, in the Rollout's
//! namespace (`$key` in a service's settings is the Secret's `key`).

pub mod deliver;
pub mod hooks;
mod service;

use std::collections::BTreeMap;

pub use service::{Delivery, ServiceConfig};

/// The ConfigMap holding services and templates.
pub const CONFIG_MAP: &str = "ramp-notifications-cm";
/// The Secret whose keys `$name` references in the ConfigMap resolve to.
pub const SECRET: &str = "ramp-notifications-secret";

const PREFIXES: [&str; 2] = ["notifications.ramp.dev/", "notifications.argoproj.io/"];

/// Argo's built-in trigger names and the transition (Event reason) each follows.
pub const TRIGGERS: [(&str, &str); 8] = [
    ("on-rollout-completed", "RolloutCompleted"),
    ("on-rollout-step-completed", "RolloutStepCompleted"),
    ("on-rollout-paused", "RolloutPaused"),
    ("on-rollout-aborted", "RolloutAborted"),
    ("on-rollout-updated", "RolloutUpdated"),
    ("on-analysis-run-failed", "AnalysisRunFailed"),
    ("on-analysis-run-error", "AnalysisRunError"),
    ("on-analysis-run-inconclusive", "AnalysisRunInconclusive"),
];

/// The trigger a transition fires, if any.
pub fn trigger_of(reason: &str) -> Option<&'static str> {
    TRIGGERS
        .iter()
        .find(|(_, r)| *r == reason)
        .map(|(trigger, _)| *trigger)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub trigger: String,
    pub service: String,
    pub recipients: Vec<String>,
}

/// The Rollout's subscriptions, in annotation order; a malformed key (no
/// service part) is reported so it can be fixed instead of ignored.
pub fn subscriptions(annotations: &BTreeMap<String, String>) -> (Vec<Subscription>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in annotations {
        let Some(rest) = PREFIXES
            .iter()
            .find_map(|p| key.strip_prefix(p))
            .and_then(|k| k.strip_prefix("subscribe."))
        else {
            continue;
        };
        let Some((trigger, service)) = rest.split_once('.') else {
            problems.push(format!(
                "annotation {key}: write subscribe.<trigger>.<service>, e.g. subscribe.on-rollout-aborted.slack"
            ));
            continue;
        };
        if !TRIGGERS.iter().any(|(t, _)| *t == trigger) {
            let known: Vec<&str> = TRIGGERS.iter().map(|(t, _)| *t).collect();
            problems.push(format!(
                "annotation {key}: unknown trigger {trigger:?}; Ramp has {}",
                known.join(", ")
            ));
            continue;
        }
        let recipients = value
            .split([';', ','])
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(String::from)
            .collect();
        found.push(Subscription {
            trigger: trigger.into(),
            service: service.into(),
            recipients,
        });
    }
    (found, problems)
}

/// One transition to tell subscribers about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub namespace: String,
    pub rollout: String,
    pub trigger: &'static str,
    pub reason: String,
    pub message: String,
    /// Where it goes: the Rollout's subscriptions to this trigger.
    pub subscriptions: Vec<Subscription>,
}

/// The notice for a transition, when someone subscribed to its trigger.
pub fn notice(
    namespace: &str,
    rollout: &str,
    annotations: &BTreeMap<String, String>,
    reason: &str,
    message: &str,
) -> Option<Notice> {
    let trigger = trigger_of(reason)?;
    let subscriptions: Vec<Subscription> = subscriptions(annotations)
        .0
        .into_iter()
        .filter(|s| s.trigger == trigger)
        .collect();
    (!subscriptions.is_empty()).then(|| Notice {
        namespace: namespace.into(),
        rollout: rollout.into(),
        trigger,
        reason: reason.into(),
        message: message.into(),
        subscriptions,
    })
}

/// The text of a notice: the ConfigMap's `template.<trigger>` (or
/// `template.default`) with `{{rollout}}`, `{{namespace}}`, `{{trigger}}`,
/// `{{reason}}` and `{{message}}` filled in.
pub fn render(notice: &Notice, config: &BTreeMap<String, String>) -> String {
    let template = config
        .get(&format!("template.{}", notice.trigger))
        .or_else(|| config.get("template.default"))
        .map(String::as_str)
        .unwrap_or("Rollout {{namespace}}/{{rollout}}: {{reason}}. {{message}}");
    let fields: BTreeMap<&str, &str> = BTreeMap::from([
        ("rollout", notice.rollout.as_str()),
        ("namespace", notice.namespace.as_str()),
        ("trigger", notice.trigger),
        ("reason", notice.reason.as_str()),
        ("message", notice.message.as_str()),
    ]);
    let mut output = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start..].find("}}") else {
            break;
        };
        output.push_str(&rest[..start]);
        let name = rest[start + 2..start + length].trim();
        match fields.get(name) {
            Some(value) => output.push_str(value),
            None => output.push_str(&rest[start..start + length + 2]),
        }
        rest = &rest[start + length + 2..];
    }
    output.push_str(rest);
    output.trim_end().to_string()
}

/// Every request a notice makes: one per subscribed service and recipient.
/// A service missing from the ConfigMap, or a `$secret` it names that the
/// Secret lacks, is an error naming it; the other deliveries still go.
pub fn deliveries(
    notice: &Notice,
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Vec<Result<Delivery, String>> {
    let text = render(notice, config);
    let mut out = Vec::new();
    for subscription in &notice.subscriptions {
        let service = ServiceConfig::from_config(&subscription.service, config, secrets);
        let recipients: Vec<Option<&str>> = if subscription.recipients.is_empty() {
            vec![None]
        } else {
            subscription
                .recipients
                .iter()
                .map(|r| Some(r.as_str()))
                .collect()
        };
        for recipient in recipients {
            out.push(
                service
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|s| s.delivery(notice, recipient, &text)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
