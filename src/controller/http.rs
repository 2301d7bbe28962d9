//! `/metrics`, `/healthz` and `/readyz` on one listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::routing::get;

use super::Error;
use super::metrics::Metrics;

/// Binds now (so a bad address fails at startup) and returns the server future.
pub async fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
) -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                let standby = standby.clone();
                async move {
                    if standby.load(Ordering::SeqCst) {
                        (StatusCode::OK, "standby: waiting for the leader lease")
                    } else if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::Serve {
            address: address.to_string(),
            source,
        })?;
    Ok(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics and health server stopped");
        }
    })
}
