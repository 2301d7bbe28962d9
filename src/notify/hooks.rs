//! Sending rollout webhooks. Questions (gates, pre-rollout, rollback) are
//! sent at once, one request per (rollout, hook, revision, attempt) however
//! often a reconcile asks, and their answers are kept until the planner has
//! recorded them in status; each answer wakes the Rollout. Hooks that are
//! only told (post-rollout, event) wait in a bounded queue, so a slow
//! receiver never holds up a reconcile. Every call is counted by outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use crate::analysis::policy::AddressAllowList;
use crate::planner::webhooks::{HookAnswer, HookOutcome, WebhookCall};

/// Calls to tell waiting beyond this are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1000;
/// Requests in flight at once, questions and tellings together.
const CONCURRENT_CALLS: usize = 16;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Answers nobody recorded within this long (the Rollout was deleted or
/// moved on) are forgotten.
const ANSWER_LIFETIME: Duration = Duration::from_secs(3600);
/// The start of an answer's body that goes into status and Events.
const BODY_SHOWN: usize = 200;

/// Called with (webhook type, outcome) for every call: outcomes accepted,
/// refused, unreachable or dropped.
pub type Outcome = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// Which Rollout a call is for: (namespace, name, uid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

struct Slot {
    attempt: i32,
    asked: Instant,
    answer: Option<HookAnswer>,
}

/// Keyed by (rollout uid, hook, pod-template hash, round).
type Slots = Arc<Mutex<HashMap<(String, String, String, String), Slot>>>;

#[derive(Clone)]
pub struct WebhookRunner {
    slots: Slots,
    told: mpsc::Sender<WebhookCall>,
    answered: mpsc::Sender<Subject>,
    http: reqwest::Client,
    allowed: Option<AddressAllowList>,
    outcome: Outcome,
    calls: Arc<Semaphore>,
}

impl WebhookRunner {
    /// Starts the telling task. Every answer to a question is announced on
    /// the returned channel, so the controller can plan that Rollout again.
    pub fn start(
        http: reqwest::Client,
        allowed: Option<AddressAllowList>,
        outcome: Outcome,
    ) -> (WebhookRunner, mpsc::Receiver<Subject>) {
        let (told, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (answered, answers) = mpsc::channel(QUEUE_CAPACITY);
        let runner = WebhookRunner {
            slots: Arc::default(),
            told,
            answered,
            http,
            allowed,
            outcome,
            calls: Arc::new(Semaphore::new(CONCURRENT_CALLS)),
        };
        tokio::spawn(runner.clone().tell_from(queue));
        (runner, answers)
    }

    /// The answers for one Rollout that are waiting to be recorded.
    pub fn answers_for(&self, uid: &str) -> Vec<HookAnswer> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut answers: Vec<HookAnswer> = slots
            .iter()
            .filter(|((owner, _, _, _), _)| owner == uid)
            .filter_map(|(_, slot)| slot.answer.clone())
            .collect();
        answers.sort_by(|a, b| a.hook.cmp(&b.hook));
        answers
    }

    /// Sends a question unless this attempt was already sent.
    pub fn ask(&self, subject: Subject, call: WebhookCall) {
        let key = (
            subject.uid.clone(),
            call.hook.name.clone(),
            call.pod_template_hash.clone(),
            call.round.clone(),
        );
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.retain(|_, slot| slot.asked.elapsed() < ANSWER_LIFETIME);
            if slots.get(&key).is_some_and(|s| s.attempt >= call.attempt) {
                return;
            }
            slots.insert(
                key.clone(),
                Slot {
                    attempt: call.attempt,
                    asked: Instant::now(),
                    answer: None,
                },
            );
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = runner.calls.clone().acquire_owned().await else {
                return;
            };
            let outcome = runner.send(&subject, &call).await;
            (runner.outcome)(call.hook.type_.as_str(), outcome_label(&outcome));
            let answer = HookAnswer {
                hook: call.hook.name.clone(),
                pod_template_hash: call.pod_template_hash.clone(),
                round: call.round.clone(),
                attempt: call.attempt,
                at: Timestamp::now(),
                outcome,
            };
            {
                let mut slots = runner.slots.lock().unwrap_or_else(PoisonError::into_inner);
                match slots.get_mut(&key) {
                    Some(slot) if slot.attempt == call.attempt => slot.answer = Some(answer),
                    _ => return,
                }
            }
            if runner.answered.send(subject).await.is_err() {
                warn!("webhook answer not announced: the controller has stopped");
            }
        });
    }

    /// Queues a call whose answer changes nothing; a full queue drops it.
    pub fn tell(&self, call: WebhookCall) {
        let type_ = call.hook.type_.as_str();
        if let Err(error) = self.told.try_send(call) {
            warn!(%error, "webhook queue full; call dropped");
            (self.outcome)(type_, "dropped");
        }
    }

    async fn tell_from(self, mut queue: mpsc::Receiver<WebhookCall>) {
        while let Some(call) = queue.recv().await {
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
                return;
            };
            let runner = self.clone();
            tokio::spawn(async move {
                let subject = Subject {
                    namespace: call.payload["namespace"].as_str().unwrap_or("").into(),
                    name: call.payload["name"].as_str().unwrap_or("").into(),
                    uid: call.payload["uid"].as_str().unwrap_or("").into(),
                };
                let outcome = runner.send(&subject, &call).await;
                (runner.outcome)(call.hook.type_.as_str(), outcome_label(&outcome));
                drop(permit);
            });
        }
    }

    /// POSTs the payload, trying again after 0.5, 1, 2 ... s on connection
    /// errors, timeouts, 429 and 5xx, up to the hook's retries.
    async fn send(&self, subject: &Subject, call: &WebhookCall) -> HookOutcome {
        let hook = &call.hook;
        if let Some(allowed) = &self.allowed
            && let Err(why) = allowed.check(&hook.url)
        {
            return HookOutcome::Unreachable(format!("not sent: {why}"));
        }
        let timeout =
            Duration::from_secs(u64::try_from(hook.timeout_seconds().max(1)).unwrap_or(10));
        let attempts = hook.retries().max(0) + 1;
        let mut wait = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            let request = self
                .http
                .post(&hook.url)
                .timeout(timeout)
                .header(
                    "X-Ramp-Webhook-Id",
                    call.payload["id"].as_str().unwrap_or(""),
                )
                .json(&call.payload);
            let (retry, outcome) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(BODY_SHOWN).collect();
                    let code = status.as_u16();
                    if status.is_success() {
                        (false, HookOutcome::Accepted { status: code, body })
                    } else {
                        let retry = status.is_server_error() || code == 429;
                        (retry, HookOutcome::Refused { status: code, body })
                    }
                }
                Err(error) => (
                    true,
                    HookOutcome::Unreachable(format!(
                        "{} unreachable: {}",
                        hook.url,
                        error_chain(&error)
                    )),
                ),
            };
            if !retry || attempt >= attempts {
                match &outcome {
                    HookOutcome::Accepted { .. } => {
                        info!(rollout = %subject.name, namespace = %subject.namespace, webhook = %hook.name, "webhook accepted")
                    }
                    other => {
                        warn!(rollout = %subject.name, namespace = %subject.namespace, webhook = %hook.name, answer = ?other, "webhook did not accept")
                    }
                }
                return outcome;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            attempt += 1;
        }
    }
}

fn outcome_label(outcome: &HookOutcome) -> &'static str {
    match outcome {
        HookOutcome::Accepted { .. } => "accepted",
        HookOutcome::Refused { .. } => "refused",
        HookOutcome::Unreachable(_) => "unreachable",
    }
}

/// reqwest's own message hides the cause ("error sending request"); its
/// innermost source says which (connection refused, timed out).
fn error_chain(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    innermost
}
