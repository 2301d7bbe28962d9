//! Helpers for Ramp's end-to-end tests: the local control plane started by
//! `make cluster-up`, a metrics endpoint whose values a test sets, and a
//! real Prometheus scraping it. A missing cluster or Prometheus is an error
//! with instructions, never a skipped test.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Pods with this annotation set to "true" never become Ready.
pub const NEVER_READY_ANNOTATION: &str = "test.ramp.dev/never-ready";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("RAMP_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cluster/kubeconfig"))
}

/// A client for the local control plane, or an error saying how to start it.
pub async fn cluster_client() -> anyhow::Result<Client> {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| {
        anyhow!("no local cluster: cannot read {} ({e}); start one with `make cluster-up` or run `make test`", path.display())
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow!("local cluster at {} is not reachable ({e}); restart it with `make cluster-down cluster-up`", path.display()))?;
    Ok(client)
}

/// A namespace of its own for one test, deleted by `cleanup`.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let suffix = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                % 0xffffff
        );
        let name = format!("e2e-{prefix}-{suffix}");
        let api: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods are rejected until the namespace's default ServiceAccount exists.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_until(
            "default ServiceAccount",
            Duration::from_secs(30),
            || async { Ok(accounts.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
        })
    }

    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Polls `check` every 200 ms until it yields a value; fails after `timeout`
/// with the last error or observation, so a stuck test says why.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if start.elapsed() > timeout {
            let detail = last_error
                .map(|e| format!("; last error: {e:#}"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An HTTP endpoint serving Prometheus text format whose series a test sets.
#[derive(Clone)]
pub struct MetricsTarget {
    pub addr: SocketAddr,
    series: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl MetricsTarget {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(address: &str) -> anyhow::Result<Self> {
        let series: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let shared = series.clone();
        let settable = series.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let series = shared.clone();
                    async move {
                        let series = series.lock().map(|s| s.clone()).unwrap_or_default();
                        series
                            .iter()
                            .map(|(name, value)| format!("{name} {value}\n"))
                            .collect::<String>()
                    }
                }),
            )
            .route(
                "/set",
                axum::routing::post(
                    move |query: axum::extract::Query<BTreeMap<String, String>>| {
                        let series = settable.clone();
                        async move {
                            let (Some(name), Some(value)) = (
                                query.get("series"),
                                query.get("value").and_then(|v| v.parse::<f64>().ok()),
                            ) else {
                                return (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    "want ?series=<name{labels}>&value=<number>\n".to_string(),
                                );
                            };
                            if let Ok(mut series) = series.lock() {
                                series.insert(name.clone(), value);
                            }
                            (axum::http::StatusCode::OK, format!("{name} = {value}\n"))
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MetricsTarget { addr, series })
    }

    /// Sets a series, e.g. `set("http_requests_total{code=\"500\"}", 3.0)`.
    pub fn set(&self, series: &str, value: f64) {
        if let Ok(mut map) = self.series.lock() {
            map.insert(series.to_string(), value);
        }
    }

    pub fn remove(&self, series: &str) {
        if let Ok(mut map) = self.series.lock() {
            map.remove(series);
        }
    }
}

/// Debian's Prometheus on a free loopback port, scraping the given targets every second.
pub struct Prometheus {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let binary = std::env::var("RAMP_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::tempdir()?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: test\n  static_configs:\n  - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        let port = free_port()?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow!("cannot start {binary:?} ({e}); install it with `make deps` (Debian package prometheus)"))?;
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/-/ready", prometheus.url);
        wait_until(
            "Prometheus to become ready",
            Duration::from_secs(30),
            || {
                let http = http.clone();
                let ready = ready.clone();
                async move {
                    Ok(http
                        .get(&ready)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ()))
                }
            },
        )
        .await?;
        let expected = targets.len();
        wait_until(
            "Prometheus to scrape every target",
            Duration::from_secs(30),
            || async {
                let result = prometheus.query("sum(up)").await?;
                let up = scalar(&result).unwrap_or(0.0);
                Ok((up as usize >= expected).then_some(()))
            },
        )
        .await?;
        Ok(prometheus)
    }

    /// Instant query; returns the `data.result` array.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Value> {
        let response: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        if response["status"] != "success" {
            bail!("Prometheus query {promql:?} failed: {response}");
        }
        Ok(response["data"]["result"].clone())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The first sample's value of an instant-vector result.
pub fn scalar(result: &Value) -> Option<f64> {
    result.get(0)?.get("value")?.get(1)?.as_str()?.parse().ok()
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A request the [`WebReceiver`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct ReceiverState {
    answer: (u16, String),
    requests: Vec<Received>,
}

/// An HTTP endpoint on loopback that answers every request with the status
/// and body the test sets, and records what it was sent.
pub struct WebReceiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl WebReceiver {
    pub async fn start(status: u16, body: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(ReceiverState {
            answer: (status, body.to_string()),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let state = shared.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let received = Received {
                    method: parts.method.to_string(),
                    path: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let (status, body) = match state.lock() {
                    Ok(mut state) => {
                        state.requests.push(received);
                        state.answer.clone()
                    }
                    Err(_) => (500, "receiver state poisoned".to_string()),
                };
                (
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebReceiver {
            url: format!("http://{addr}"),
            state,
        })
    }

    /// What every following request is answered with.
    pub fn answer(&self, status: u16, body: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.answer = (status, body.to_string());
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}
