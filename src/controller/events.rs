//! Kubernetes Events, published off the reconcile path.
//!
//! A reconcile hands its Events to a bounded queue and goes on: waiting for
//! them made every rollout write queue behind the Event rate limit (about
//! eight Events per update at 1,000 updates in flight). Workers publish them
//! in order per object. The same Event about the same object within
//! `SERIES_WINDOW` becomes a series (one object with a count) instead of a
//! new Event; unlike kube's `Recorder`, the note is part of what makes two
//! Events the same, so "scaled from 1 to 2" never hides a later "from 2 to 0".

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::warn;

use super::metrics::Metrics;
use crate::planner::PlannedEvent;

/// Events waiting to be published, across all workers. A burst beyond this
/// is dropped (and counted) rather than held in memory or slowing reconciles.
const QUEUE_CAPACITY: usize = 10_000;
/// Workers publishing at once; each keeps the order of the objects it owns.
const WORKERS: usize = 4;
/// Repeats within this window extend a series instead of creating an Event.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Longest note the API server keeps (events.k8s.io/v1 caps it at 1 kB).
const NOTE_LIMIT: usize = 1000;

/// Who publishes: `reportingController` and `reportingInstance`.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

// Nearly every message is an Event; boxing it to shrink the rare Flush
// would cost an allocation per Event.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Event {
        regarding: ObjectReference,
        event: PlannedEvent,
    },
    /// Answered once everything queued before it is published.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side; cheap to share.
#[derive(Clone)]
pub struct EventSink {
    workers: Arc<Vec<mpsc::Sender<Queued>>>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    pub fn start(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> EventSink {
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY / WORKERS);
            workers.push(sender);
            tokio::spawn(publish_loop(
                client.clone(),
                reporter.clone(),
                metrics.clone(),
                receiver,
            ));
        }
        EventSink {
            workers: Arc::new(workers),
            metrics,
        }
    }

    /// Queues `events` about `regarding`, in order, without waiting.
    pub fn publish(&self, regarding: &ObjectReference, events: &[PlannedEvent]) {
        if events.is_empty() || self.workers.is_empty() {
            return;
        }
        let worker = &self.workers[worker_for(regarding, self.workers.len())];
        for event in events {
            self.metrics.event(event.reason);
            let queued = Queued::Event {
                regarding: regarding.clone(),
                event: event.clone(),
            };
            if worker.try_send(queued).is_err() {
                self.metrics.event_dropped();
                warn!(
                    reason = event.reason,
                    object = ?regarding.name,
                    "Event queue full; dropping the Event"
                );
            }
        }
    }
}

impl EventSink {
    /// Waits, at most `deadline`, until every Event queued so far is
    /// published: on shutdown, the transitions of the last reconciles are
    /// still announced. Returns whether all workers got there in time.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let mut answers = Vec::with_capacity(self.workers.len());
        for worker in self.workers.iter() {
            let (done, answer) = tokio::sync::oneshot::channel();
            // Waits for room in a full queue, within the deadline below.
            let sent = tokio::time::timeout(deadline, worker.send(Queued::Flush(done))).await;
            if matches!(sent, Ok(Ok(()))) {
                answers.push(answer);
            }
        }
        let all = futures::future::join_all(answers);
        match tokio::time::timeout(deadline, all).await {
            Ok(answered) => {
                answered.iter().all(Result::is_ok) && answered.len() == self.workers.len()
            }
            Err(_) => false,
        }
    }
}

/// The worker of an object: the same object always goes to the same worker,
/// so its Events are published in the order they were planned.
fn worker_for(regarding: &ObjectReference, workers: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    regarding.uid.hash(&mut hasher);
    regarding.namespace.hash(&mut hasher);
    regarding.name.hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

/// An Event already published, which a repeat extends.
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

async fn publish_loop(
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    mut queue: mpsc::Receiver<Queued>,
) {
    // Keyed by a hash of (object, type, reason, note): the map stays small
    // (no copies of Events), and a collision at worst folds two Events.
    let keys = std::collections::hash_map::RandomState::new();
    let mut published: HashMap<u64, Published> = HashMap::new();
    let mut last_prune = Instant::now();
    while let Some(queued) = queue.recv().await {
        let (regarding, event) = match queued {
            Queued::Event { regarding, event } => (regarding, event),
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_prune) > Duration::from_secs(30) {
            published.retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
            last_prune = now;
        }
        let note: String = event.message.chars().take(NOTE_LIMIT).collect();
        let key = {
            let mut hasher = keys.build_hasher();
            (&regarding.uid, &regarding.namespace, &regarding.name).hash(&mut hasher);
            (event.warning, event.reason, &note).hash(&mut hasher);
            hasher.finish()
        };
        let repeat = published
            .get(&key)
            .filter(|p| now.duration_since(p.last) < SERIES_WINDOW);
        let result = match repeat {
            Some(previous) => {
                let count = previous.count + 1;
                let api: Api<Event> = Api::namespaced(client.clone(), &previous.namespace);
                let patch = json!({"series": EventSeries {
                    count,
                    last_observed_time: MicroTime(Timestamp::now()),
                }});
                let result = api
                    .patch(
                        &previous.name,
                        &super::apply::patch_params(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map(|_| (previous.namespace.clone(), previous.name.clone(), count));
                metrics.request("patch", "Event", &result);
                result
            }
            None => {
                let new = new_event(&reporter, &regarding, &event, note);
                let namespace = new.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                let result = api
                    .create(&PostParams::default(), &new)
                    .await
                    .map(|created| (namespace, created.metadata.name.unwrap_or_default(), 1));
                metrics.request("create", "Event", &result);
                result
            }
        };
        match result {
            Ok((namespace, name, count)) => {
                published.insert(
                    key,
                    Published {
                        namespace,
                        name,
                        count,
                        last: now,
                    },
                );
            }
            Err(error) => {
                // A series whose Event expired (Events live an hour) starts over.
                published.remove(&key);
                warn!(reason = event.reason, object = ?regarding.name, %error, "could not publish Event");
            }
        }
    }
}

fn new_event(
    reporter: &Reporter,
    regarding: &ObjectReference,
    event: &PlannedEvent,
    note: String,
) -> Event {
    let now = Timestamp::now();
    let object = regarding.name.as_deref().unwrap_or(&reporter.controller);
    Event {
        metadata: ObjectMeta {
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            // Unique per object and instant, as kubectl and client-go name them.
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(event.reason.into()),
        reason: Some(event.reason.into()),
        note: Some(note),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Rollout".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    /// A client whose API server answers every request with the Event it
    /// was sent, after `delay`, recording each request's method and path.
    fn recording_client(delay: Duration) -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let recorded = recorded.clone();
            async move {
                tokio::time::sleep(delay).await;
                let line = format!("{} {}", request.method(), request.uri().path());
                recorded.lock().expect("not poisoned").push(line);
                let body = request.into_body().collect_bytes().await?;
                let mut event: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
                event["apiVersion"] = json!("events.k8s.io/v1");
                event["kind"] = json!("Event");
                let answer = http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(serde_json::to_vec(&event)?))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer)
            }
        });
        (Client::new(service, "default"), seen)
    }

    #[tokio::test]
    async fn flush_returns_once_every_queued_event_is_published() {
        let (client, seen) = recording_client(Duration::from_millis(20));
        let reporter = Reporter {
            controller: "ramp-controller".into(),
            instance: "test".into(),
        };
        let sink = EventSink::start(client, reporter, Arc::new(Metrics::default()));
        for i in 0..6 {
            let event = PlannedEvent {
                warning: false,
                reason: "ScalingReplicaSet",
                message: format!("step {i}"),
            };
            sink.publish(&reference(&format!("rollout-{i}")), &[event]);
        }
        assert!(sink.flush(Duration::from_secs(30)).await, "flushed in time");
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(
            seen.iter()
                .all(|line| line == "POST /apis/events.k8s.io/v1/namespaces/shop/events")
        );
    }

    #[test]
    fn one_object_always_goes_to_the_same_worker() {
        let first = worker_for(&reference("checkout"), WORKERS);
        for _ in 0..10 {
            assert_eq!(worker_for(&reference("checkout"), WORKERS), first);
        }
        let spread: std::collections::HashSet<usize> = (0..64)
            .map(|i| worker_for(&reference(&format!("rollout-{i}")), WORKERS))
            .collect();
        assert_eq!(spread.len(), WORKERS, "objects spread over every worker");
    }

    #[test]
    fn a_new_event_names_the_object_reporter_and_reason() {
        let reporter = Reporter {
            controller: "ramp-controller".into(),
            instance: "shard-0-a".into(),
        };
        let event = PlannedEvent {
            warning: true,
            reason: "RolloutAborted",
            message: "Rollout aborted".into(),
        };
        let built = new_event(
            &reporter,
            &reference("checkout"),
            &event,
            "Rollout aborted".into(),
        );
        assert_eq!(built.metadata.namespace.as_deref(), Some("shop"));
        assert!(
            built
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("checkout."))
        );
        assert_eq!(built.type_.as_deref(), Some("Warning"));
        assert_eq!(built.reason.as_deref(), Some("RolloutAborted"));
        assert_eq!(built.action.as_deref(), Some("RolloutAborted"));
        assert_eq!(built.reporting_instance.as_deref(), Some("shard-0-a"));
        assert_eq!(
            built.regarding.and_then(|r| r.uid).as_deref(),
            Some("uid-checkout")
        );
    }
}
