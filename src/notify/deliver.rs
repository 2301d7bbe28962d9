//! Delivery: notices wait in a bounded queue and are sent by a background
//! task, so a slow or failing receiver never holds up a reconcile. Each
//! request is retried with backoff on connection errors, timeouts, 429 and
//! 5xx; every outcome is reported (for /metrics). Notices are queued only
//! after the status write recording their transition succeeded, and that
//! transition is never planned again, so a restart sends no duplicates (a
//! notice still queued when the process dies is lost, never repeated).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use super::{CONFIG_MAP, Delivery, Notice, SECRET, deliveries};

/// Notices waiting beyond this are dropped (and counted), not queued without bound.
pub const QUEUE_CAPACITY: usize = 1000;
/// Requests in flight at once.
const CONCURRENT_SENDS: usize = 8;
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with (service kind, outcome) for every delivery: kinds are
/// webhook, slack, teams or unknown; outcomes delivered, failed,
/// misconfigured or dropped.
pub type Outcome = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

#[derive(Clone)]
pub struct Dispatcher {
    sender: mpsc::Sender<Notice>,
    outcome: Outcome,
}

impl Dispatcher {
    /// Starts the delivery task; it ends when every Dispatcher is dropped.
    pub fn start(client: kube::Client, http: reqwest::Client, outcome: Outcome) -> Dispatcher {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(receiver, client, http, outcome.clone()));
        Dispatcher { sender, outcome }
    }

    /// Queues a notice without waiting; a full queue drops it.
    pub fn enqueue(&self, notice: Notice) {
        if let Err(error) = self.sender.try_send(notice) {
            warn!(%error, "notification queue full; notice dropped");
            (self.outcome)("unknown", "dropped");
        }
    }
}

async fn run(
    mut receiver: mpsc::Receiver<Notice>,
    client: kube::Client,
    http: reqwest::Client,
    outcome: Outcome,
) {
    let sends = Arc::new(Semaphore::new(CONCURRENT_SENDS));
    while let Some(notice) = receiver.recv().await {
        let (config, secrets) = match read_config(&client, &notice.namespace).await {
            Ok(found) => found,
            Err(message) => {
                warn!(rollout = %notice.rollout, namespace = %notice.namespace, trigger = notice.trigger, %message, "notification not sent");
                (outcome)("unknown", "misconfigured");
                continue;
            }
        };
        for delivery in deliveries(&notice, &config, &secrets) {
            match delivery {
                Err(message) => {
                    warn!(rollout = %notice.rollout, namespace = %notice.namespace, trigger = notice.trigger, %message, "notification not sent");
                    (outcome)("unknown", "misconfigured");
                }
                Ok(delivery) => {
                    let Ok(permit) = sends.clone().acquire_owned().await else {
                        return;
                    };
                    let (http, outcome) = (http.clone(), outcome.clone());
                    let rollout = notice.rollout.clone();
                    tokio::spawn(async move {
                        let result = send(&http, &delivery).await;
                        match &result {
                            Ok(()) => {
                                info!(%rollout, service = %delivery.service, "notification delivered")
                            }
                            Err(error) => {
                                warn!(%rollout, service = %delivery.service, %error, "notification failed")
                            }
                        }
                        (outcome)(
                            delivery.kind,
                            if result.is_ok() {
                                "delivered"
                            } else {
                                "failed"
                            },
                        );
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// The ConfigMap's data and the Secret's (absent Secret: none).
async fn read_config(
    client: &kube::Client,
    namespace: &str,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config = maps
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| format!("reading ConfigMap {namespace}/{CONFIG_MAP}: {e}"))?
        .ok_or_else(|| format!("no ConfigMap {CONFIG_MAP} in namespace {namespace}; it defines the notification services"))?
        .data
        .unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(SECRET)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{SECRET}: {e}"))?;
    let values = secret
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .collect();
    Ok((config, values))
}

/// POSTs with retries: connection errors, timeouts, 429 and 5xx are tried
/// again after 0.5, 1, 2 and 4 s; any other answer is final.
pub async fn send(http: &reqwest::Client, delivery: &Delivery) -> Result<(), String> {
    let mut wait = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        let mut request = http
            .post(&delivery.url)
            .timeout(REQUEST_TIMEOUT)
            .json(&delivery.body);
        for (name, value) in &delivery.headers {
            request = request.header(name, value);
        }
        let (retry, error) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let retry = status.is_server_error() || status.as_u16() == 429;
                (retry, format!("{} answered HTTP {status}", delivery.url))
            }
            Err(error) => (true, format!("{}: {error}", delivery.url)),
        };
        if !retry || attempt >= ATTEMPTS {
            return Err(format!("{error} (attempt {attempt} of {ATTEMPTS})"));
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}
