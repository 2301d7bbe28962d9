//! Rollout webhooks, decided without I/O. Question hooks (confirm-rollout,
//! pre-rollout, confirm-promotion, rollback) are asked through
//! `Plan::webhooks`; the controller sends them and hands the answers back
//! in `Snapshot::webhook_answers`, and the planner records each answer in
//! `status.webhooks` before acting on it. A recorded answer is never asked
//! again, so a restarted controller neither re-asks an open gate nor
//! repeats an abort. Telling hooks (post-rollout, event) are sent by the
//! controller only after the status write that records their transition.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::Ctx;
use crate::api::{PauseReason, RolloutWebhook, WebhookPhase, WebhookStatus, WebhookType};

/// What a question hook answered, for one attempt of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnswer {
    pub hook: String,
    pub pod_template_hash: String,
    /// See `WebhookCall::round`.
    pub round: String,
    pub attempt: i32,
    pub at: Timestamp,
    pub outcome: HookOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// A 2xx answer, with the start of its body.
    Accepted { status: u16, body: String },
    /// Any other HTTP answer (after the retries a 5xx or 429 gets).
    Refused { status: u16, body: String },
    /// No HTTP answer: connection refused, timeout, address not allowed.
    Unreachable(String),
}

impl HookOutcome {
    fn describe(&self) -> String {
        let with_body = |status: &u16, body: &str| {
            let body = body.trim();
            if body.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {body}")
            }
        };
        match self {
            HookOutcome::Accepted { status, body } | HookOutcome::Refused { status, body } => {
                with_body(status, body)
            }
            HookOutcome::Unreachable(why) => why.clone(),
        }
    }
}

/// One POST the controller makes for a hook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    pub hook: RolloutWebhook,
    pub pod_template_hash: String,
    /// The rollout attempt this call belongs to (revision and retry), so an
    /// answer from an earlier round (before a retry, or before the rollout
    /// went away from this template and back) is never taken for this one.
    pub round: String,
    /// Which question this is within the round (1, 2, ...); 0 for hooks
    /// that are only told.
    pub attempt: i32,
    pub payload: Value,
}

impl WebhookCall {
    /// Questions are sent at once and answered into the next snapshot;
    /// the rest go only once the status write recording them succeeded.
    pub fn is_question(&self) -> bool {
        self.hook.type_.is_question()
    }
}

/// Where a rollout can be held by confirm gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before the new revision gets pods: confirm-rollout, then pre-rollout.
    Start,
    /// Before promotion: confirm-promotion.
    Promotion,
}

/// True while the rollout must stay where it is at `stage`. A pre-rollout
/// hook that fails aborts the rollout (the caller sees `status.abort`).
pub(crate) fn hold_before(ctx: &mut Ctx<'_>, stage: Stage) -> bool {
    let kinds: &[WebhookType] = match stage {
        Stage::Start => &[WebhookType::ConfirmRollout, WebhookType::PreRollout],
        Stage::Promotion => &[WebhookType::ConfirmPromotion],
    };
    for &kind in kinds {
        let hooks: Vec<RolloutWebhook> = hooks_of(ctx, kind);
        let mut waiting = Vec::new();
        for hook in &hooks {
            match ask(ctx, hook) {
                Answer::Yes => {}
                Answer::Waiting(why) => waiting.push(why),
                Answer::No(why) if kind == WebhookType::PreRollout => {
                    ctx.abort(format!("pre-rollout webhook {:?} failed: {why}", hook.name));
                    return false;
                }
                Answer::No(why) => waiting.push(why),
            }
        }
        if !waiting.is_empty() {
            let why = format!("PendingWebhook: {}", waiting.join("; "));
            if matches!(
                kind,
                WebhookType::ConfirmRollout | WebhookType::ConfirmPromotion
            ) {
                hold(ctx);
            }
            ctx.waiting_for = Some(why);
            ctx.webhook_hold = true;
            return true;
        }
    }
    release(ctx);
    false
}

/// Asks every rollback hook that is due; one that answers 2xx aborts.
pub(crate) fn poll_rollback(ctx: &mut Ctx<'_>) {
    for hook in hooks_of(ctx, WebhookType::Rollback) {
        if let Answer::Yes = ask(ctx, &hook) {
            let message = entry(ctx, &hook)
                .and_then(|e| e.message.clone())
                .unwrap_or_default();
            ctx.abort(format!(
                "rollback webhook {:?} asked for a rollback ({message})",
                hook.name
            ));
            return;
        }
    }
}

/// Drops records of other revisions; a retry asks every hook again.
pub(crate) fn start_revision(ctx: &mut Ctx<'_>, retry: bool) {
    let hash = ctx.hash.short.clone();
    ctx.status
        .webhooks
        .retain(|w| !retry && w.pod_template_hash == hash);
}

/// After the status is final: event hooks hear every planned Event, and
/// post-rollout hooks hear once that the rollout of this revision ended.
pub(crate) fn finish(ctx: &mut Ctx<'_>) -> Vec<WebhookCall> {
    let mut calls = std::mem::take(&mut ctx.webhook_calls);
    let events: Vec<(bool, &'static str, String)> = ctx
        .events
        .iter()
        .map(|e| (e.warning, e.reason, e.message.clone()))
        .collect();
    for hook in hooks_of(ctx, WebhookType::Event) {
        for (warning, reason, message) in &events {
            let mut payload = payload(ctx, &hook, 0);
            payload["eventType"] = json!(if *warning { "Warning" } else { "Normal" });
            payload["reason"] = json!(reason);
            payload["message"] = json!(message);
            calls.push(call(ctx, hook.clone(), 0, payload));
        }
    }
    let ended = events
        .iter()
        .find_map(|(_, reason, message)| match *reason {
            "RolloutCompleted" => Some(("completed", message.clone())),
            "RolloutAborted" => Some(("aborted", message.clone())),
            _ => None,
        });
    // Only a rollout that replaced a stable revision has a post-rollout;
    // the first deployment of a Rollout does not.
    let replaced_stable = ctx
        .prev
        .stable_rs
        .as_ref()
        .is_some_and(|stable| *stable != ctx.hash.short);
    if let Some((result, message)) = ended.filter(|_| replaced_stable) {
        for hook in hooks_of(ctx, WebhookType::PostRollout) {
            if entry(ctx, &hook).is_some() {
                continue;
            }
            let mut payload = payload(ctx, &hook, 1);
            payload["result"] = json!(result);
            payload["message"] = json!(message);
            let record = WebhookStatus {
                name: hook.name.clone(),
                type_: hook.type_,
                pod_template_hash: ctx.hash.short.clone(),
                phase: WebhookPhase::Sent,
                attempts: 1,
                message: Some(format!("told that the rollout {result}")),
                last_attempt_at: Some(Time(ctx.now)),
            };
            ctx.status.webhooks.push(record);
            calls.push(call(ctx, hook, 1, payload));
        }
    }
    calls
}

enum Answer {
    Yes,
    No(String),
    Waiting(String),
}

fn hooks_of(ctx: &Ctx<'_>, kind: WebhookType) -> Vec<RolloutWebhook> {
    ctx.rollout
        .spec
        .webhooks
        .iter()
        .filter(|h| h.type_ == kind)
        .cloned()
        .collect()
}

fn entry<'c>(ctx: &'c Ctx<'_>, hook: &RolloutWebhook) -> Option<&'c WebhookStatus> {
    ctx.status
        .webhooks
        .iter()
        .find(|w| w.name == hook.name && w.pod_template_hash == ctx.hash.short)
}

/// One question hook's verdict for this revision: recorded answers first,
/// then a new answer from the snapshot, else a question when one is due.
fn ask(ctx: &mut Ctx<'_>, hook: &RolloutWebhook) -> Answer {
    let hash = ctx.hash.short.clone();
    let index = match ctx
        .status
        .webhooks
        .iter()
        .position(|w| w.name == hook.name && w.pod_template_hash == hash)
    {
        Some(index) => index,
        None => {
            ctx.status.webhooks.push(WebhookStatus {
                name: hook.name.clone(),
                type_: hook.type_,
                pod_template_hash: hash.clone(),
                ..WebhookStatus::default()
            });
            ctx.status.webhooks.len() - 1
        }
    };
    let label = format!("webhook {:?} ({})", hook.name, hook.type_.as_str());
    match ctx.status.webhooks[index].phase {
        WebhookPhase::Successful => return Answer::Yes,
        WebhookPhase::Failed | WebhookPhase::Sent => {
            let why = ctx.status.webhooks[index].message.clone();
            return Answer::No(why.unwrap_or_default());
        }
        WebhookPhase::Pending => {}
    }
    let next = ctx.status.webhooks[index].attempts + 1;
    let answer = ctx
        .snap
        .webhook_answers
        .iter()
        .find(|a| {
            a.hook == hook.name
                && a.pod_template_hash == hash
                && a.round == round(ctx)
                && a.attempt == next
        })
        .cloned();
    if let Some(answer) = answer {
        let accepted = matches!(answer.outcome, HookOutcome::Accepted { .. });
        let described = answer.outcome.describe();
        let record = &mut ctx.status.webhooks[index];
        record.attempts = next;
        record.last_attempt_at = Some(Time(answer.at));
        record.message = Some(described.clone());
        if accepted {
            record.phase = WebhookPhase::Successful;
            if hook.type_ != WebhookType::Rollback {
                ctx.event(
                    "WebhookPassed",
                    format!("{label} answered {described} (attempt {next})"),
                );
            }
            return Answer::Yes;
        }
        if hook.type_ == WebhookType::PreRollout {
            record.phase = WebhookPhase::Failed;
            ctx.warning(
                "WebhookFailed",
                format!("{label} answered {described} (attempt {next}); aborting"),
            );
            return Answer::No(described);
        }
    }
    let record = &ctx.status.webhooks[index];
    let interval = SignedDuration::from_secs(i64::from(hook.interval_seconds().max(1)));
    let due = record
        .last_attempt_at
        .as_ref()
        .map(|t| t.0.checked_add(interval).unwrap_or(t.0));
    let attempts = record.attempts;
    let last = record.message.clone();
    match due {
        Some(due) if ctx.now < due => ctx.wake_at(due),
        _ => {
            let payload = payload(ctx, hook, attempts + 1);
            let call = call(ctx, hook.clone(), attempts + 1, payload);
            ctx.webhook_calls.push(call);
        }
    }
    let why = match last {
        Some(last) => format!("{label} answered {last} (attempt {attempts})"),
        None => format!("waiting for {label} to answer"),
    };
    Answer::Waiting(why)
}

/// Shows a closed gate as a pause condition (a human sees it in `kubectl
/// ramp get`), without marking it as a pause the controller may release.
fn hold(ctx: &mut Ctx<'_>) {
    let held = ctx
        .status
        .pause_conditions
        .iter()
        .any(|c| c.reason == PauseReason::PendingWebhook);
    if !held {
        ctx.status
            .pause_conditions
            .push(crate::api::PauseCondition {
                reason: PauseReason::PendingWebhook,
                start_time: Time(ctx.now),
            });
    }
}

/// A hold that is over (or was never reached) stops showing as a pause.
pub(crate) fn release(ctx: &mut Ctx<'_>) {
    ctx.status
        .pause_conditions
        .retain(|c| c.reason != PauseReason::PendingWebhook);
}

fn call(ctx: &Ctx<'_>, hook: RolloutWebhook, attempt: i32, payload: Value) -> WebhookCall {
    WebhookCall {
        hook,
        pod_template_hash: ctx.hash.short.clone(),
        round: round(ctx),
        attempt,
        payload,
    }
}

/// The revision being rolled out and how often it was retried: a rollback
/// to an earlier template gets a new revision number, a retry a new count.
fn round(ctx: &Ctx<'_>) -> String {
    format!("{}.{}", ctx.sets[ctx.new].revision, ctx.status.retry_count)
}

/// The JSON every hook gets; `id` is the same for a repeated question (a
/// receiver can use it to recognise a question asked again after a
/// controller restart).
fn payload(ctx: &Ctx<'_>, hook: &RolloutWebhook, attempt: i32) -> Value {
    let rollout = &ctx.rollout.metadata;
    let uid = rollout.uid.clone().unwrap_or_default();
    let hash = &ctx.hash.short;
    json!({
        "id": format!("{uid}/{}/{hash}/{}/{attempt}", hook.name, round(ctx)),
        "name": rollout.name,
        "namespace": rollout.namespace,
        "uid": uid,
        "webhook": hook.name,
        "type": hook.type_.as_str(),
        "podTemplateHash": hash,
        "stableHash": ctx.status.stable_rs,
        "revision": ctx.sets[ctx.new].revision,
        "phase": ctx.prev.phase.map(|p| p.as_str()),
        "attempt": attempt,
        "metadata": hook.metadata,
    })
}
