//! Rollout webhooks: a Ramp extension (Argo has none; Flagger's hook points
//! are the model). A webhook is an HTTP endpoint Ramp POSTs JSON to at a
//! fixed point of every rollout of a new revision. Gates (`confirm-rollout`,
//! `confirm-promotion`) hold the rollout until their endpoint answers 2xx;
//! `pre-rollout` must succeed or the rollout aborts; `rollback` aborts when
//! it answers 2xx; `post-rollout` and `event` are told what happened.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const DEFAULT_WEBHOOK_TIMEOUT_SECONDS: i32 = 10;
pub const DEFAULT_WEBHOOK_RETRIES: i32 = 2;
pub const DEFAULT_WEBHOOK_INTERVAL_SECONDS: i32 = 10;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutWebhook {
    /// Unique within the Rollout; names the hook in status, Events and the payload.
    pub name: String,
    #[serde(rename = "type")]
    pub type_: WebhookType,
    /// http:// or https:// address the JSON payload is POSTed to.
    pub url: String,
    /// Seconds one request may take. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Further attempts after a connection error, a timeout, 429 or 5xx,
    /// before the answer counts. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// Gates and rollback hooks: seconds between one answer and the next
    /// question. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i32>,
    /// Sent as `metadata` in every payload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Gate before the new revision gets any pod (canary) or preview pod
    /// (blue/green): asked every interval until it answers 2xx.
    #[default]
    ConfirmRollout,
    /// Once the confirm-rollout gates are open, before any pod: must answer
    /// 2xx within its retries, or the rollout aborts.
    PreRollout,
    /// Gate before promotion (after the last canary step; before the
    /// blue/green switch): asked every interval until it answers 2xx.
    ConfirmPromotion,
    /// Told once the rollout of a revision has ended, promoted or aborted.
    PostRollout,
    /// Asked every interval while the rollout is in progress; 2xx aborts it.
    Rollback,
    /// Told every transition (each Event Ramp records for the Rollout).
    Event,
}

impl WebhookType {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::ConfirmRollout => "confirm-rollout",
            WebhookType::PreRollout => "pre-rollout",
            WebhookType::ConfirmPromotion => "confirm-promotion",
            WebhookType::PostRollout => "post-rollout",
            WebhookType::Rollback => "rollback",
            WebhookType::Event => "event",
        }
    }

    /// Hooks whose answer the rollout waits for or acts on.
    pub fn is_question(self) -> bool {
        !matches!(self, WebhookType::PostRollout | WebhookType::Event)
    }
}

impl RolloutWebhook {
    pub fn timeout_seconds(&self) -> i32 {
        self.timeout_seconds
            .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT_SECONDS)
    }

    pub fn retries(&self) -> i32 {
        self.retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES)
    }

    pub fn interval_seconds(&self) -> i32 {
        self.interval_seconds
            .unwrap_or(DEFAULT_WEBHOOK_INTERVAL_SECONDS)
    }
}

/// What became of one hook during the rollout of the current revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: WebhookType,
    /// The revision's pod-template hash this record is for.
    pub pod_template_hash: String,
    pub phase: WebhookPhase,
    /// Questions answered so far (retries within one question not counted).
    #[serde(default)]
    pub attempts: i32,
    /// The last answer, e.g. "HTTP 403: change freeze until Monday".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WebhookPhase {
    /// Asked, not yet answered with what it waits for.
    #[default]
    Pending,
    Successful,
    Failed,
    /// A post-rollout hook handed to delivery (sent once, never repeated).
    Sent,
}
