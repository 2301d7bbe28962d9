//! The Kubernetes client, with every HTTP request counted by a tower layer
//! (the controller's own counting proxy: lists, watches and writes alike) and
//! held to a client-side rate limit the operator sets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::client::ClientBuilder;
use kube::{Client, Config};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::metrics::Metrics;

/// Requests per second sustained and the burst allowed above it; a rate of
/// zero or less turns the limit off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub qps: f64,
    pub burst: u32,
}

#[derive(Clone)]
struct CountRequests(Arc<Metrics>);

struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The resources the controller talks to; anything else is counted as
/// "other" so the label stays bounded whatever a path holds.
const KNOWN_RESOURCES: &[&str] = &[
    "rollouts",
    "replicasets",
    "services",
    "analysisruns",
    "analysistemplates",
    "clusteranalysistemplates",
    "pods",
    "events",
    "leases",
    "secrets",
    "configmaps",
    "namespaces",
];
const KNOWN_SUBRESOURCES: &[&str] = &["status", "eviction", "scale"];

/// `replicasets`, `rollouts/status`, `pods/eviction`… from an API path.
pub(crate) fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return "other".into(),
    };
    // namespaces/<ns>/<resource>… unless the namespace itself is the object.
    let rest = match rest {
        ["namespaces", _namespace, inner @ ..] if !inner.is_empty() => inner,
        other => other,
    };
    let Some(resource) = rest.first().filter(|r| KNOWN_RESOURCES.contains(r)) else {
        return "other".into();
    };
    match rest.get(2) {
        Some(sub) if KNOWN_SUBRESOURCES.contains(sub) => format!("{resource}/{sub}"),
        _ => (*resource).to_string(),
    }
}

impl<S, B, R> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let method = request.method().as_str().to_string();
        let resource = resource_of(request.uri().path());
        let metrics = self.metrics.clone();
        let sent = std::time::Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics.http_request(&method, watch, &resource, &code);
            // A watch's response is open for minutes by design.
            if !watch {
                metrics.http_request_took(&method, &resource, sent.elapsed());
            }
            result
        })
    }
}

/// A token bucket checked in `poll_ready`. kube's client funnels every
/// request through one buffered service, so holding readiness back here
/// paces all callers together; they wait in the buffer, not in a retry loop.
struct Limited<S> {
    inner: S,
    qps: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    /// A token taken by `poll_ready` for the next `call`.
    reserved: bool,
    wait: Option<Pin<Box<Sleep>>>,
}

struct LimitRate(RateLimit);

impl<S> Layer<S> for LimitRate {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        let burst = f64::from(self.0.burst.max(1));
        Limited {
            inner,
            qps: self.0.qps,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            reserved: false,
            wait: None,
        }
    }
}

impl<S> Limited<S> {
    /// Takes a token, or says how long until one is due.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

impl<S, B> Service<http::Request<B>> for Limited<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.reserved {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match self.take(Instant::now()) {
                Ok(()) => self.reserved = true,
                Err(due) => self.wait = Some(Box::pin(tokio::time::sleep(due))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.reserved = false;
        self.inner.call(request)
    }
}

pub fn build(
    config: Config,
    metrics: Arc<Metrics>,
    limit: Option<RateLimit>,
) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?.with_layer(&CountRequests(metrics));
    Ok(match limit.filter(|l| l.qps > 0.0) {
        Some(limit) => builder.with_layer(&LimitRate(limit)).build(),
        None => builder.build(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_from_paths_with_a_bounded_vocabulary() {
        let cases = [
            (
                "/apis/apps/v1/namespaces/a/replicasets/web-1",
                "replicasets",
            ),
            (
                "/apis/ramp.dev/v1alpha1/namespaces/a/rollouts/web/status",
                "rollouts/status",
            ),
            ("/api/v1/namespaces/a/pods/p/eviction", "pods/eviction"),
            ("/api/v1/namespaces/a", "namespaces"),
            ("/apis/ramp.dev/v1alpha1/rollouts", "rollouts"),
            ("/api/v1/namespaces/a/widgets/x", "other"),
            ("/api/v1/namespaces/a/pods/p/exec", "pods"),
            ("/version", "other"),
        ];
        for (path, expected) in cases {
            assert_eq!(resource_of(path), expected, "{path}");
        }
    }

    struct Ready;
    impl Service<http::Request<()>> for Ready {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    /// Answers every request with 200 after `delay`.
    struct Slow(Duration);
    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<http::Response<()>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new(()))
            })
        }
    }

    #[tokio::test]
    async fn answer_times_are_recorded_per_method_and_resource_and_never_for_watches() {
        use tower::ServiceExt;
        let metrics = Arc::new(Metrics::default());
        let mut service = CountRequests(metrics.clone()).layer(Slow(Duration::from_millis(30)));
        let request = |uri: &str| {
            http::Request::builder()
                .method("PATCH")
                .uri(uri)
                .body(())
                .unwrap_or_default()
        };
        for uri in [
            "/apis/apps/v1/namespaces/a/replicasets/web-1",
            "/apis/apps/v1/namespaces/a/replicasets?watch=true",
        ] {
            let ready = service.ready().await;
            assert!(ready.is_ok());
            assert!(service.call(request(uri)).await.is_ok());
        }
        let text = metrics.encode();
        let series = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        };
        assert_eq!(
            series(
                "ramp_http_request_duration_seconds_count{method=\"PATCH\",resource=\"replicasets\"}"
            )
            .as_deref(),
            Some("1"),
            "one answer time, the watch's left out:\n{text}"
        );
        // 30 ms is above the 25 ms bound and at most the 50 ms one.
        assert_eq!(
            series("ramp_http_request_duration_seconds_bucket{le=\"0.025\",method=\"PATCH\",resource=\"replicasets\"}")
                .as_deref(),
            Some("0"),
            "{text}"
        );
        // Both requests are still counted.
        assert_eq!(
            text.matches("ramp_http_requests_total{").count(),
            2,
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_allows_the_burst_then_paces_at_the_rate() {
        use tower::ServiceExt;
        let mut service = LimitRate(RateLimit {
            qps: 10.0,
            burst: 3,
        })
        .layer(Ready);
        let start = Instant::now();
        for _ in 0..3 {
            service.ready().await.ok();
            service.call(http::Request::new(())).await.ok();
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst goes at once");
        for _ in 0..5 {
            service.ready().await.ok();
            service.call(http::Request::new(())).await.ok();
        }
        // Five more at 10/s: the paused clock advances exactly as far as the waits ask.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_millis(510),
            "{waited:?}"
        );
    }
}
