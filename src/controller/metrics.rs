//! Prometheus metrics. Labels are bounded: rollout series carry only
//! namespace/name (one series per live rollout, removed when it is deleted or
//! changes phase); everything else is labelled by small fixed sets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub name: String,
    pub strategy: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub namespace: String,
    pub name: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub watch: String,
    /// `replicasets`, `rollouts/status`… (a fixed vocabulary, else "other").
    pub resource: String,
    /// HTTP status code, or "error" when no response came back.
    pub code: String,
}

/// A request's method and resource (the same vocabulary as [`HttpLabels`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLatencyLabels {
    pub method: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub service: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub hook_type: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    rollout_info: Family<RolloutLabels, Gauge>,
    rollout_replicas: Family<ReplicaLabels, Gauge>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    reconcile_queue: Family<ControllerLabels, Histogram>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    kube_requests: Family<RequestLabels, Counter>,
    analysis_runs: Family<PhaseLabels, Counter>,
    measurements: Family<PhaseLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    events_dropped: Counter,
    notifications: Family<NotificationLabels, Counter>,
    webhooks: Family<WebhookLabels, Counter>,
    leader: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_request_duration: Family<HttpLatencyLabels, Histogram>,
    /// The info series each rollout currently has, so a phase change replaces it.
    current: Mutex<HashMap<(String, String), RolloutLabels>>,
}

fn reconcile_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
}

/// From a millisecond (an idle controller) to tens of seconds (a burst
/// that outruns the watch or the concurrency bound).
fn queue_histogram() -> Histogram {
    Histogram::new([0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Fine enough around 100–300 ms to tell the API server's share of a
/// 200 ms reaction time from the controller's.
fn request_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ramp");
        let metrics = Metrics {
            rollout_info: Family::default(),
            rollout_replicas: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram),
            reconcile_queue: Family::new_with_constructor(queue_histogram),
            reconcile_errors: Family::default(),
            kube_requests: Family::default(),
            analysis_runs: Family::default(),
            measurements: Family::default(),
            events: Family::default(),
            events_dropped: Counter::default(),
            notifications: Family::default(),
            webhooks: Family::default(),
            leader: Gauge::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(request_histogram),
            current: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rollout_info",
            "Rollouts by strategy and phase (value is always 1)",
            metrics.rollout_info.clone(),
        );
        registry.register(
            "rollout_replicas",
            "Replica counts of each rollout by kind (desired, available, updated)",
            metrics.rollout_replicas.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_queue_seconds",
            "Time from the watch event that changed an object to the start of its next reconcile",
            metrics.reconcile_queue.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "kube_requests",
            "Kubernetes API requests made by the controller",
            metrics.kube_requests.clone(),
        );
        registry.register(
            "analysis_runs_completed",
            "AnalysisRuns that reached a final phase",
            metrics.analysis_runs.clone(),
        );
        registry.register(
            "analysis_measurements",
            "Metric measurements taken, by outcome",
            metrics.measurements.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events emitted, by reason",
            metrics.events.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not published because the Event queue was full",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "notifications",
            "Notification deliveries by service kind and outcome",
            metrics.notifications.clone(),
        );
        registry.register(
            "webhook_calls",
            "Rollout webhook calls by webhook type and outcome",
            metrics.webhooks.clone(),
        );
        registry.register(
            "http_requests",
            "Every HTTP request sent to the Kubernetes API server, including lists and watches",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from sending a request to the Kubernetes API server to its response \
             headers, watches excluded (time held by the client-side rate limit is not included)",
            metrics.http_request_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and runs the controllers",
            metrics.leader.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn observe_rollout(
        &self,
        namespace: &str,
        name: &str,
        strategy: &str,
        phase: &str,
        replicas: [(&str, i64); 3],
    ) {
        let labels = RolloutLabels {
            namespace: namespace.into(),
            name: name.into(),
            strategy: strategy.into(),
            phase: phase.into(),
        };
        if let Ok(mut current) = self.current.lock() {
            let key = (namespace.to_string(), name.to_string());
            if let Some(previous) = current.insert(key, labels.clone())
                && previous != labels
            {
                self.rollout_info.remove(&previous);
            }
        }
        self.rollout_info.get_or_create(&labels).set(1);
        for (kind, value) in replicas {
            let labels = ReplicaLabels {
                namespace: namespace.into(),
                name: name.into(),
                kind: kind.into(),
            };
            self.rollout_replicas.get_or_create(&labels).set(value);
        }
    }

    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        if let Ok(mut current) = self.current.lock()
            && let Some(previous) = current.remove(&(namespace.to_string(), name.to_string()))
        {
            self.rollout_info.remove(&previous);
        }
        for kind in ["desired", "available", "updated"] {
            self.rollout_replicas.remove(&ReplicaLabels {
                namespace: namespace.into(),
                name: name.into(),
                kind: kind.into(),
            });
        }
    }

    pub fn reconciled(&self, controller: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// How long an object's change waited for the reconcile now starting.
    pub fn reconcile_waited(&self, controller: &str, waited: Duration) {
        self.reconcile_queue
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn reconcile_failed(&self, controller: &str, category: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                category: category.into(),
            })
            .inc();
    }

    /// Counts one API request by outcome: success, conflict (stale
    /// resourceVersion, retried), forbidden (missing RBAC) or error.
    pub fn request<T>(&self, verb: &str, kind: &str, result: &Result<T, kube::Error>) {
        let outcome = match result {
            Ok(_) => "success",
            Err(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Err(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Err(_) => "error",
        };
        self.kube_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn run_completed(&self, phase: &str) {
        self.analysis_runs
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
            })
            .inc();
    }

    pub fn measured(&self, phase: &str) {
        self.measurements
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
            })
            .inc();
    }

    /// One notification delivery outcome; service is webhook, slack,
    /// teams or unknown, outcome delivered, failed, misconfigured or dropped.
    pub fn notified(&self, service: &str, outcome: &str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                service: service.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// One rollout webhook call; hook_type is the webhook's type, outcome
    /// accepted, refused, unreachable or dropped.
    pub fn webhook(&self, hook_type: &str, outcome: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                hook_type: hook_type.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn event(&self, reason: &str) {
        self.events
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn http_request(&self, method: &str, watch: bool, resource: &str, code: &str) {
        let labels = HttpLabels {
            method: method.into(),
            watch: watch.to_string(),
            resource: resource.into(),
            code: code.into(),
        };
        self.http_requests.get_or_create(&labels).inc();
    }

    pub fn http_request_took(&self, method: &str, resource: &str, took: std::time::Duration) {
        let labels = HttpLatencyLabels {
            method: method.into(),
            resource: resource.into(),
        };
        self.http_request_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
