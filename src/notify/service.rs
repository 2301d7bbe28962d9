//! Notification services, one small type each behind `Service`, so the next
//! one is a new type and a line in `ServiceConfig::from_config`:
//! - `service.webhook.<name>`: `url`, `headers` ([{name, value}]); gets the
//!   notice as JSON;
//! - `service.slack`: `webhookUrl` of a Slack incoming webhook; gets `{"text"}`;
//! - `service.teams`: `recipientUrls` (recipient name to a Microsoft Teams
//!   incoming-webhook URL); gets `{"text"}` at the recipient's URL.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Notice;

/// One HTTP POST to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The subscribed service's name, e.g. `slack` or a webhook's name.
    pub service: String,
    /// webhook, slack or teams (a bounded metric label).
    pub kind: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

pub trait Service: Send + Sync {
    fn delivery(
        &self,
        notice: &Notice,
        recipient: Option<&str>,
        text: &str,
    ) -> Result<Delivery, String>;
}

pub struct ServiceConfig;

impl ServiceConfig {
    /// The service a subscription names: `slack`, `teams`, or the name of a
    /// `service.webhook.<name>` entry.
    pub fn from_config(
        name: &str,
        config: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Box<dyn Service>, String> {
        let key = match name {
            "slack" | "teams" => format!("service.{name}"),
            other => format!("service.webhook.{other}"),
        };
        let text = config.get(&key).ok_or_else(|| {
            format!(
                "no {key} in ConfigMap {}; define the service there or fix the subscription",
                super::CONFIG_MAP
            )
        })?;
        let mut settings: Value = serde_yaml::from_str(text).map_err(|e| {
            format!(
                "{key} in ConfigMap {} is not valid YAML: {e}",
                super::CONFIG_MAP
            )
        })?;
        resolve_secrets(&mut settings, secrets).map_err(|e| format!("{key}: {e}"))?;
        let string = |field: &str| -> Result<String, String> {
            settings[field]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("{key} has no {field}"))
        };
        Ok(match name {
            "slack" => Box::new(Slack {
                webhook_url: string("webhookUrl")?,
            }),
            "teams" => {
                let urls: BTreeMap<String, String> =
                    serde_json::from_value(settings["recipientUrls"].clone()).map_err(|_| {
                        format!("{key} needs recipientUrls: a map of recipient names to URLs")
                    })?;
                Box::new(Teams {
                    recipient_urls: urls,
                })
            }
            _ => {
                let headers = settings["headers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        Ok((
                            h["name"]
                                .as_str()
                                .ok_or_else(|| format!("{key}: a header has no name"))?
                                .to_string(),
                            h["value"].as_str().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Box::new(Webhook {
                    name: name.into(),
                    url: string("url")?,
                    headers,
                })
            }
        })
    }
}

/// Replaces every string `$name` with the Secret's value for `name`.
fn resolve_secrets(value: &mut Value, secrets: &BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(text) => {
            if let Some(name) = text.strip_prefix('$') {
                *text = secrets
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("${name} is not a key of Secret {}", super::SECRET))?;
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve_secrets(item, secrets)?;
            }
        }
        Value::Object(fields) => {
            for field in fields.values_mut() {
                resolve_secrets(field, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn url_checked(url: &str, service: &str) -> Result<String, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_string())
    } else {
        Err(format!(
            "service {service}: {url:?} is not an http:// or https:// URL"
        ))
    }
}

struct Webhook {
    name: String,
    url: String,
    headers: Vec<(String, String)>,
}

impl Service for Webhook {
    fn delivery(
        &self,
        notice: &Notice,
        recipient: Option<&str>,
        text: &str,
    ) -> Result<Delivery, String> {
        Ok(Delivery {
            service: self.name.clone(),
            kind: "webhook",
            url: url_checked(&self.url, &self.name)?,
            headers: self.headers.clone(),
            body: json!({
                "trigger": notice.trigger,
                "reason": notice.reason,
                "rollout": notice.rollout,
                "namespace": notice.namespace,
                "message": notice.message,
                "text": text,
                "recipient": recipient,
            }),
        })
    }
}

struct Slack {
    webhook_url: String,
}

impl Service for Slack {
    fn delivery(
        &self,
        _notice: &Notice,
        recipient: Option<&str>,
        text: &str,
    ) -> Result<Delivery, String> {
        let mut body = json!({"text": text});
        if let Some(channel) = recipient {
            body["channel"] = Value::String(channel.into());
        }
        Ok(Delivery {
            service: "slack".into(),
            kind: "slack",
            url: url_checked(&self.webhook_url, "slack")?,
            headers: Vec::new(),
            body,
        })
    }
}

struct Teams {
    recipient_urls: BTreeMap<String, String>,
}

impl Service for Teams {
    fn delivery(
        &self,
        _notice: &Notice,
        recipient: Option<&str>,
        text: &str,
    ) -> Result<Delivery, String> {
        let recipient = recipient
            .ok_or("service teams: name a recipient from recipientUrls in the subscription")?;
        let url = self
            .recipient_urls
            .get(recipient)
            .ok_or_else(|| format!("service teams has no recipientUrls entry {recipient:?}"))?;
        Ok(Delivery {
            service: "teams".into(),
            kind: "teams",
            url: url_checked(url, "teams")?,
            headers: Vec::new(),
            body: json!({"text": text}),
        })
    }
}
