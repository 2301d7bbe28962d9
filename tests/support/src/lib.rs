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
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The Node the test kubelet registers and binds every pod to.
pub const TEST_NODE_NAME: &str = "ramp-test-node";

/// Path on every pod port that answers how many requests the pod served
/// (not counting these), so a test can see traffic no client saw, such as
/// mirrored requests.
pub const POD_REQUESTS_PATH: &str = "/_ramp/requests";

/// What a pod served by the test kubelet answers to any request, as JSON.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PodAnswer {
    pub pod: String,
    pub container: String,
    pub image: String,
    /// The image tag: `v2` for `shop:v2`, `latest` without one.
    pub version: String,
}

/// The tag of an image reference (`latest` when it has none), ignoring a
/// registry port and a digest.
pub fn image_version(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last_segment.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

/// How a run-to-completion pod (restartPolicy Never or OnFailure, as Job
/// pods are) ends under the test kubelet: its containers' command and args
/// are read like a shell line, `sleep N` (seconds, or with an s/m/h suffix)
/// says when and `exit N` with which code; neither means at once, with 0.
/// An image that cannot be pulled (tag `err-image-pull`, or a repository
/// named `nonexistent...` as in Argo's e2e fixtures) never starts: the pod
/// stays Pending with the container waiting in ErrImagePull.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Completion {
    After {
        delay: std::time::Duration,
        exit_code: i32,
    },
    ImagePullFails,
}

/// The completion of a pod that runs to completion; None for a pod that
/// serves until deleted (restartPolicy Always, the default).
pub fn completion_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<Completion> {
    if spec.restart_policy.as_deref().unwrap_or("Always") == "Always" {
        return None;
    }
    let pull_fails = spec.containers.iter().any(|c| {
        let image = c.image.as_deref().unwrap_or_default();
        let repository = image.split([':', '@']).next().unwrap_or(image);
        image_version(image) == "err-image-pull"
            || repository
                .rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with("nonexistent"))
    });
    if pull_fails {
        return Some(Completion::ImagePullFails);
    }
    let mut delay = std::time::Duration::ZERO;
    let mut exit_code = 0;
    for container in &spec.containers {
        let line = container
            .command
            .iter()
            .chain(container.args.iter())
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            match pair[0] {
                "sleep" => delay = delay.max(sleep_seconds(pair[1])),
                "exit" if exit_code == 0 => exit_code = pair[1].parse().unwrap_or(1),
                _ => {}
            }
        }
    }
    Some(Completion::After { delay, exit_code })
}

/// `sleep`'s operand: seconds, or a number with an s, m, h or d suffix.
fn sleep_seconds(word: &str) -> std::time::Duration {
    let (number, unit) = match word.char_indices().last() {
        Some((at, 's')) => (&word[..at], 1.0),
        Some((at, 'm')) => (&word[..at], 60.0),
        Some((at, 'h')) => (&word[..at], 3600.0),
        Some((at, 'd')) => (&word[..at], 86400.0),
        _ => (word, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map_or(std::time::Duration::ZERO, |n| {
            std::time::Duration::from_secs_f64(n * unit)
        })
}

/// Pods with this annotation set to "true" never become Ready.
pub const NEVER_READY_ANNOTATION: &str = "test.ramp.dev/never-ready";

/// The CPU each container of a pod uses, in millicores, as the test
/// kubelet reports it on its resource metrics endpoint (which metrics-server
/// scrapes for the HPA controller). Tests set it on running pods to load
/// them; without it a container uses [`IDLE_MILLICORES`].
pub const CPU_MILLICORES_ANNOTATION: &str = "test.ramp.dev/cpu-millicores";

/// What an unloaded container uses. Not zero: metrics-server drops
/// containers that report no CPU at all, and the HPA would then see no pods.
pub const IDLE_MILLICORES: u64 = 1;

/// Memory every container reports; the HPA tests scale on CPU only.
pub const CONTAINER_MEMORY_BYTES: u64 = 16 * 1024 * 1024;

/// The resource usage the test kubelet accounts for its pods. CPU is a
/// cumulative counter, as a real kubelet's is: metrics-server turns two
/// scrapes into a rate, so the counter must grow continuously across changes
/// of the load, never jump or restart.
#[derive(Default)]
pub struct ResourceUsage {
    pods: std::collections::BTreeMap<String, PodUsage>,
}

struct PodUsage {
    namespace: String,
    name: String,
    containers: Vec<String>,
    /// Unix seconds at which the kubelet started the containers.
    started: f64,
    millicores: u64,
    /// CPU seconds used up to `counted_at` (unix seconds).
    cpu_seconds: f64,
    counted_at: f64,
}

impl ResourceUsage {
    /// Starts accounting for a running pod, or changes its load; `now` is
    /// in unix seconds.
    pub fn track(
        &mut self,
        uid: &str,
        namespace: &str,
        name: &str,
        containers: Vec<String>,
        millicores: u64,
        now: f64,
    ) {
        match self.pods.get_mut(uid) {
            Some(usage) => {
                usage.advance(now);
                usage.millicores = millicores;
            }
            None => {
                self.pods.insert(
                    uid.to_string(),
                    PodUsage {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        containers,
                        started: now,
                        millicores,
                        cpu_seconds: 0.0,
                        counted_at: now,
                    },
                );
            }
        }
    }

    pub fn forget(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// The kubelet's `/metrics/resource` page at `now` (unix seconds), in the
    /// Prometheus text format with the metric names and labels that
    /// metrics-server reads.
    pub fn exposition(&mut self, now: f64) -> String {
        let millis = (now * 1000.0) as i64;
        let mut node_cpu = 0.0;
        let mut node_memory = 0;
        let mut cpu = String::from("# TYPE container_cpu_usage_seconds_total counter\n");
        let mut memory = String::from("# TYPE container_memory_working_set_bytes gauge\n");
        let mut start = String::from("# TYPE container_start_time_seconds gauge\n");
        for usage in self.pods.values_mut() {
            usage.advance(now);
            for container in &usage.containers {
                let labels = format!(
                    "container=\"{container}\",namespace=\"{}\",pod=\"{}\"",
                    usage.namespace, usage.name
                );
                cpu.push_str(&format!(
                    "container_cpu_usage_seconds_total{{{labels}}} {} {millis}\n",
                    usage.cpu_seconds
                ));
                memory.push_str(&format!(
                    "container_memory_working_set_bytes{{{labels}}} {CONTAINER_MEMORY_BYTES} {millis}\n"
                ));
                start.push_str(&format!(
                    "container_start_time_seconds{{{labels}}} {} {millis}\n",
                    usage.started
                ));
                node_cpu += usage.cpu_seconds;
                node_memory += CONTAINER_MEMORY_BYTES;
            }
        }
        // The node's own usage must not be zero either, or metrics-server
        // drops the node's point and logs it on every scrape.
        format!(
            "# TYPE node_cpu_usage_seconds_total counter\n\
             node_cpu_usage_seconds_total {} {millis}\n\
             # TYPE node_memory_working_set_bytes gauge\n\
             node_memory_working_set_bytes {} {millis}\n{cpu}{memory}{start}",
            node_cpu + 1.0,
            node_memory + 1024 * 1024 * 1024,
        )
    }
}

impl PodUsage {
    fn advance(&mut self, now: f64) {
        if now > self.counted_at {
            self.cpu_seconds += self.millicores as f64 / 1000.0 * (now - self.counted_at);
            self.counted_at = now;
        }
    }
}

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
    /// Answers for the next requests, before `answer` again.
    next: std::collections::VecDeque<(u16, String)>,
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
            next: Default::default(),
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
                        let answer = state.answer.clone();
                        state.next.pop_front().unwrap_or(answer)
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
    /// The next `times` requests get `status` and `body`, then the usual answer again.
    pub fn answer_next(&self, times: usize, status: u16, body: &str) {
        if let Ok(mut state) = self.state.lock() {
            state
                .next
                .extend(std::iter::repeat_n((status, body.to_string()), times));
        }
    }

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

/// The Gateway that `tests/cluster/up.sh` puts in front of Traefik, as it
/// recorded it in `target/cluster/gateway.json`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Gateway {
    /// Where Traefik's Gateway listener answers, `http://127.0.0.1:<port>`.
    pub url: String,
    pub namespace: String,
    pub name: String,
    /// Traefik's Prometheus endpoint, `127.0.0.1:<port>`.
    pub metrics: SocketAddr,
}

/// What a batch of requests through the gateway reached.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub total: usize,
    /// Answers by the answering pod's version (image tag).
    pub by_version: BTreeMap<String, usize>,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<u16, usize>,
}

impl Split {
    /// Percentage of all requests answered by pods of `version`.
    pub fn share(&self, version: &str) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        100.0 * self.by_version.get(version).copied().unwrap_or(0) as f64 / self.total as f64
    }

    /// Requests answered with a status other than 2xx, or not at all.
    pub fn failures(&self) -> usize {
        self.total
            - self
                .by_status
                .iter()
                .filter(|(code, _)| (200..300).contains(*code))
                .map(|(_, n)| n)
                .sum::<usize>()
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, by version {:?}, by status {:?}",
            self.total, self.by_version, self.by_status
        )
    }
}

/// Requests sent at once; enough to keep Traefik busy without opening
/// hundreds of connections on a 2-core machine.
const GATEWAY_CONCURRENCY: usize = 16;

impl Gateway {
    pub fn local() -> anyhow::Result<Self> {
        let path = repo_root().join("target/cluster/gateway.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (written by `make cluster-up`, which starts Traefik as the Gateway API data plane)", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Sends `count` GET requests for `host` through the gateway, with the
    /// given headers, and counts who answered. A request that gets no answer
    /// counts under status 0.
    pub async fn send(
        &self,
        host: &str,
        path: &str,
        count: usize,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Split> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(GATEWAY_CONCURRENCY)
            .build()?;
        let url = format!("{}{path}", self.url);
        let mut headers_map = reqwest::header::HeaderMap::new();
        headers_map.insert(reqwest::header::HOST, host.parse()?);
        for (name, value) in headers {
            headers_map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        let answers = futures::stream::iter(0..count)
            .map(|_| {
                let request = http.get(&url).headers(headers_map.clone());
                async move {
                    let Ok(response) = request.send().await else {
                        return (0u16, None);
                    };
                    let status = response.status().as_u16();
                    let answer = response.json::<PodAnswer>().await.ok();
                    (status, answer)
                }
            })
            .buffer_unordered(GATEWAY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut split = Split {
            total: count,
            ..Split::default()
        };
        for (status, answer) in answers {
            *split.by_status.entry(status).or_default() += 1;
            if let Some(answer) = answer {
                *split.by_version.entry(answer.version).or_default() += 1;
            }
        }
        Ok(split)
    }
}

/// How many requests the pod at `address` served on `port` (see
/// [`POD_REQUESTS_PATH`]).
pub async fn pod_requests_served(address: &str, port: u16) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://{address}:{port}{POD_REQUESTS_PATH}"))
        .await
        .with_context(|| format!("asking the pod at {address}:{port} how many requests it served"))?
        .text()
        .await?;
    text.trim()
        .parse()
        .with_context(|| format!("pod at {address}:{port} answered {text:?} for its request count"))
}

#[cfg(test)]
mod tests {
    use super::{Completion, ResourceUsage, completion_of, image_version};
    use std::time::Duration;

    /// The value of one series on a `/metrics/resource` page.
    fn series(page: &str, prefix: &str) -> f64 {
        let line = page
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {page}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn cpu_counters_grow_continuously_across_load_changes() {
        let mut usage = ResourceUsage::default();
        usage.track("u1", "ns", "web-1", vec!["app".into()], 1, 1000.0);
        let web =
            r#"container_cpu_usage_seconds_total{container="app",namespace="ns",pod="web-1"}"#;
        // 10 s idle at 1m, then 10 s at 500m: 0.01 + 5 CPU seconds.
        usage.exposition(1010.0);
        usage.track("u1", "ns", "web-1", vec!["app".into()], 500, 1010.0);
        let page = usage.exposition(1020.0);
        assert!((series(&page, web) - 5.01).abs() < 1e-9, "{page}");
        assert!(page.contains(&format!("{web} 5.01 1020000")), "{page}");
        let start = r#"container_start_time_seconds{container="app",namespace="ns",pod="web-1"}"#;
        assert_eq!(series(&page, start), 1000.0);
        // Re-tracking with the same load (a later pod event) changes nothing.
        usage.track("u1", "ns", "web-1", vec!["app".into()], 500, 1020.0);
        let page = usage.exposition(1030.0);
        assert!((series(&page, web) - 10.01).abs() < 1e-9, "{page}");
        assert!(series(&page, "node_cpu_usage_seconds_total") > 10.0);
        assert!(series(&page, "node_memory_working_set_bytes") > 0.0);
        usage.forget("u1");
        assert!(!usage.exposition(1040.0).contains("web-1"));
    }

    fn pod(
        restart: &str,
        image: &str,
        command: &[&str],
        args: &[&str],
    ) -> k8s_openapi::api::core::v1::PodSpec {
        serde_json::from_value(serde_json::json!({
            "restartPolicy": restart,
            "containers": [{"name": "c", "image": image, "command": command, "args": args}],
        }))
        .unwrap()
    }

    #[test]
    fn job_pods_end_as_their_command_says() {
        let ends = |restart, image, command: &[&str], args: &[&str]| {
            completion_of(&pod(restart, image, command, args))
        };
        assert_eq!(ends("Always", "web:1", &["sleep", "5"], &[]), None);
        assert_eq!(
            ends(
                "Never",
                "nginx:1.19-alpine",
                &["sh", "-c", "-x"],
                &["sleep 2 && exit 3"]
            ),
            Some(Completion::After {
                delay: Duration::from_secs(2),
                exit_code: 3
            })
        );
        assert_eq!(
            ends("OnFailure", "nginx", &["sleep", "30"], &[]),
            Some(Completion::After {
                delay: Duration::from_secs(30),
                exit_code: 0
            })
        );
        assert_eq!(
            ends("Never", "busybox", &["sh", "-c"], &["sleep 1.5m; exit 0"]),
            Some(Completion::After {
                delay: Duration::from_secs(90),
                exit_code: 0
            })
        );
        assert_eq!(
            ends("Never", "busybox", &[], &[]),
            Some(Completion::After {
                delay: Duration::ZERO,
                exit_code: 0
            })
        );
        assert_eq!(
            ends(
                "Never",
                "nonexistent-image-that-does-not-exist:latest",
                &["true"],
                &[]
            ),
            Some(Completion::ImagePullFails)
        );
        assert_eq!(
            ends("Never", "registry.local/app:err-image-pull", &[], &[]),
            Some(Completion::ImagePullFails)
        );
    }

    #[test]
    fn image_version_reads_the_tag_only() {
        assert_eq!(image_version("shop:v2"), "v2");
        assert_eq!(image_version("shop"), "latest");
        assert_eq!(image_version("localhost:5000/team/shop"), "latest");
        assert_eq!(
            image_version("localhost:5000/team/shop:http-500"),
            "http-500"
        );
        assert_eq!(image_version("shop:v3@sha256:abc"), "v3");
    }
}
