//! Scale benchmark for ramp-controller on the local control plane: the
//! workload of issue 14, one size per fresh cluster.
//!
//! Phases, each measured on its own:
//! - create: N Rollouts (1 replica; even ones canary without steps, odd ones
//!   blue/green with auto-promotion and a 5 s scale-down delay), each with
//!   two Services, until every one is settled;
//! - update: every image patched at `--rate` per second, until every one is
//!   settled again;
//! - idle: `--idle` seconds with nothing to do.
//!
//! Settled means phase Healthy, observedGeneration current, stableRS =
//! currentPodHash, and every other ReplicaSet of the Rollout scaled to 0.
//! Times come from this program's watches (patch → first sight of the new
//! ReplicaSet, patch → settled), requests from the controller's own counting
//! layer (`ramp_http_requests_total` by method, resource and status code),
//! memory and CPU from /proc.
//!
//! With `--shards K`, K controller processes split the Rollouts
//! (`--shards K --shard-index i`); requests and CPU are summed over them,
//! RSS is that of the largest shard (what one replica must be sized for).
//!
//! With `--namespaces M`, Rollout `r<i>` and its Services live in namespace
//! `i mod M` and the controller watches the whole cluster. One namespace (the
//! default) is the workload; several are what a platform of many
//! teams looks like, and they keep kube-controller-manager's per-namespace
//! scans (every pod event is matched against every Service of its namespace,
//! every Service sync lists the namespace's pods) from growing with N².
//!
//! Usage:
//!   ramp-bench --controller PATH --size N [--rate 100] [--idle 30] [--shards 1]
//!              [--namespaces 1] [--run-label 1] [--out target/bench] [-- controller flags…]
//!   ramp-bench --report target/bench     (medians over every run-*.json)

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ramp_test_support::{TestNamespace, cluster_client, free_port, kubeconfig_path, wait_until};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const HASH: &str = "rollouts-pod-template-hash";
/// Image patches sent and not answered yet, at most; enough to hold 100/s
/// while the API server takes up to half a second to answer.
const PATCHES_IN_FLIGHT: usize = 64;
const MIB: f64 = 1048576.0;

struct Args {
    controller: PathBuf,
    size: Option<usize>,
    idle: Duration,
    rate: f64,
    label: String,
    out: PathBuf,
    report: Option<PathBuf>,
    shards: usize,
    namespaces: usize,
    controller_flags: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        controller: PathBuf::from("target/release/ramp-controller"),
        size: None,
        idle: Duration::from_secs(30),
        rate: 100.0,
        label: "1".into(),
        out: PathBuf::from("target/bench"),
        report: None,
        shards: 1,
        namespaces: 1,
        controller_flags: Vec::new(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        if flag == "--" {
            args.controller_flags = iter.by_ref().collect();
            break;
        }
        let value = iter
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--controller" => args.controller = value.into(),
            "--size" => args.size = Some(value.parse().context("--size: a number of Rollouts")?),
            "--idle" => args.idle = Duration::from_secs(value.parse().context("--idle: seconds")?),
            "--rate" => {
                args.rate = value.parse().context("--rate: updates per second")?;
                if args.rate.is_nan() || args.rate <= 0.0 {
                    bail!("--rate must be above 0 updates per second");
                }
            }
            "--run-label" => args.label = value,
            "--shards" => args.shards = at_least_one(&value, "--shards", "controller processes")?,
            "--namespaces" => {
                args.namespaces = at_least_one(
                    &value,
                    "--namespaces",
                    "namespaces the Rollouts spread over",
                )?
            }
            "--out" => args.out = value.into(),
            "--report" => args.report = Some(value.into()),
            other => {
                bail!("unknown flag {other}; see the header of tests/support/src/bin/ramp-bench.rs")
            }
        }
    }
    if args.size.is_none() && args.report.is_none() {
        bail!("give --size N (one benchmark run) or --report DIR (the table of all runs)");
    }
    Ok(args)
}

/// A count flag's value: a whole number, 1 or more.
fn at_least_one(value: &str, flag: &str, what: &str) -> anyhow::Result<usize> {
    match value.parse() {
        Ok(0) | Err(_) => bail!("{flag} takes a number of {what}, 1 or more, not '{value}'"),
        Ok(count) => Ok(count),
    }
}

fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ramp.dev", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// Resident memory and CPU ticks of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss_kib * 1024, ticks))
}

const TICKS_PER_SECOND: f64 = 100.0;

struct Controller {
    child: Child,
    port: u16,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl Controller {
    async fn start(
        binary: &PathBuf,
        namespace: Option<&str>,
        extra: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Controller> {
        let port = free_port()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .arg(format!("--kubeconfig={}", kubeconfig_path().display()))
            .args(namespace.map(|ns| format!("--namespace={ns}")))
            .arg("--leader-elect=false")
            .args(extra)
            .arg(format!("--http-address=127.0.0.1:{port}"))
            .env("RAMP_LOG_LEVEL", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("controller pid")?;
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let sink = samples.clone();
        tokio::spawn(async move {
            while let Some((rss, _)) = proc_sample(pid) {
                if let Ok(mut samples) = sink.lock() {
                    samples.push((Instant::now(), rss));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_until("controller ready", Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                Ok(reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(Controller {
            child,
            port,
            samples,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn cpu_ticks(&self) -> u64 {
        proc_sample(self.pid()).map(|s| s.1).unwrap_or(0)
    }

    fn rss_between(&self, from: Instant, to: Instant) -> Vec<f64> {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(t, _)| *t >= from && *t <= to)
                    .map(|(_, r)| *r as f64 / MIB)
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
                .await?
                .text()
                .await?,
        )
    }

    /// `ramp_http_requests_total` series: (method, watch, resource, code) → count.
    async fn requests(&self) -> anyhow::Result<Requests> {
        let text = self.metrics_text().await?;
        let mut counts = Requests::new();
        for line in text.lines() {
            let Some(labels) = line
                .strip_prefix("ramp_http_requests_total{")
                .and_then(|l| l.split_once('}'))
            else {
                continue;
            };
            let value: f64 = labels.1.trim().parse().unwrap_or(0.0);
            let label = |key: &str| {
                labels
                    .0
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let key = RequestKey {
                method: if label("watch") == "true" {
                    "WATCH".into()
                } else {
                    label("method")
                },
                resource: label("resource"),
                code: label("code"),
            };
            *counts.entry(key).or_default() += value;
        }
        Ok(counts)
    }
}

/// Every controller process of a run: one per shard.
struct Controllers(Vec<Controller>);

impl Controllers {
    /// `namespace`: the one namespace to watch, or None for the whole cluster.
    async fn start(args: &Args, namespace: Option<&str>, n: usize) -> anyhow::Result<Controllers> {
        let mut started = Vec::new();
        for index in 0..args.shards {
            let mut flags = args.controller_flags.clone();
            if args.shards > 1 {
                flags.extend([
                    format!("--shards={}", args.shards),
                    format!("--shard-index={index}"),
                ]);
            }
            let log = args
                .out
                .join(format!("controller-{}-{index}.log", run_name(n, args)));
            started.push(Controller::start(&args.controller, namespace, &flags, log).await?);
        }
        Ok(Controllers(started))
    }

    async fn requests(&self) -> anyhow::Result<Requests> {
        let mut total = Requests::new();
        for controller in &self.0 {
            for (key, count) in controller.requests().await? {
                *total.entry(key).or_default() += count;
            }
        }
        Ok(total)
    }

    /// Every histogram of every shard, buckets of the same series added up.
    async fn histograms(&self) -> anyhow::Result<Histograms> {
        let mut total = Histograms::new();
        for controller in &self.0 {
            for (series, buckets) in parse_histograms(&controller.metrics_text().await?) {
                let sum = total.entry(series).or_default();
                for (bound, count) in buckets {
                    *sum.entry(bound).or_default() += count;
                }
            }
        }
        Ok(total)
    }

    fn cpu_ticks(&self) -> u64 {
        self.0.iter().map(Controller::cpu_ticks).sum()
    }

    /// The RSS samples of the shard whose peak was highest.
    fn rss_between(&self, from: Instant, to: Instant) -> Vec<f64> {
        self.0
            .iter()
            .map(|c| c.rss_between(from, to))
            .max_by(|a, b| {
                let peak = |samples: &Vec<f64>| samples.iter().copied().fold(0.0, f64::max);
                peak(a).total_cmp(&peak(b))
            })
            .unwrap_or_default()
    }
}

/// `1000-1` for one shard, `1000x2-1` for two, `1000x2ns20-1` over 20 namespaces.
fn run_name(n: usize, args: &Args) -> String {
    let shards = match args.shards {
        1 => String::new(),
        shards => format!("x{shards}"),
    };
    let namespaces = match args.namespaces {
        1 => String::new(),
        namespaces => format!("ns{namespaces}"),
    };
    format!("{n}{shards}{namespaces}-{}", args.label)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    method: String,
    resource: String,
    code: String,
}

type Requests = BTreeMap<RequestKey, f64>;

/// A histogram bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Cumulative buckets of each histogram series, keyed `name{labels}` without
/// `le`: upper bound → observations at or below it.
type Histograms = BTreeMap<String, BTreeMap<Bound, f64>>;

/// The `_bucket` lines of a Prometheus text page.
fn parse_histograms(text: &str) -> Histograms {
    let mut histograms = Histograms::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(name) = name.strip_suffix("_bucket") else {
            continue;
        };
        let (mut bound, mut rest) = (None, Vec::new());
        for pair in labels.trim_end_matches('}').split(',') {
            match pair.strip_prefix("le=\"") {
                Some(le) => bound = Some(le.trim_end_matches('"')),
                None => rest.push(pair),
            }
        }
        let Some(bound) = bound else {
            continue;
        };
        let bound = match bound {
            "+Inf" => f64::INFINITY,
            finite => finite.parse().unwrap_or(f64::INFINITY),
        };
        histograms
            .entry(format!("{name}{{{}}}", rest.join(",")))
            .or_default()
            .insert(Bound(bound), value.trim().parse().unwrap_or(0.0));
    }
    histograms
}

/// Per series with observations in between: their count and the bucket
/// bounds holding the median and the 99th percentile, in ms (a histogram
/// says no more than that the value is at or below the bound).
fn histogram_report(after: &Histograms, before: &Histograms) -> Value {
    let mut report = serde_json::Map::new();
    for (series, buckets) in after {
        let earlier = before.get(series);
        let delta: Vec<(f64, f64)> = buckets
            .iter()
            .map(|(bound, count)| {
                let was = earlier.and_then(|b| b.get(bound)).copied().unwrap_or(0.0);
                (bound.0, count - was)
            })
            .collect();
        let total = delta.last().map(|(_, count)| *count).unwrap_or(0.0);
        if total <= 0.0 {
            continue;
        }
        let bound_at = |p: f64| {
            delta
                .iter()
                .find(|(_, count)| *count >= total * p / 100.0)
                .map(|(bound, _)| bound * 1000.0)
                .filter(|ms| ms.is_finite())
        };
        report.insert(
            series.clone(),
            json!({"count": total, "p50_at_most_ms": bound_at(50.0), "p99_at_most_ms": bound_at(99.0)}),
        );
    }
    Value::Object(report)
}

fn delta(after: &Requests, before: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// What one phase cost, in the shape the report reads.
fn phase_report(
    requests: &Requests,
    n: usize,
    cpu_seconds: f64,
    rss: &mut [f64],
    seconds: f64,
) -> Value {
    let mut by_verb: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_code: BTreeMap<String, f64> = BTreeMap::new();
    let (mut writes, mut status_writes, mut conflicts, mut all) = (0.0, 0.0, 0.0, 0.0);
    for (key, count) in requests {
        all += count;
        *by_verb
            .entry(format!("{} {}", key.method, key.resource))
            .or_default() += count;
        if !key.code.starts_with('2') {
            *by_code.entry(key.code.clone()).or_default() += count;
        }
        let write = !matches!(key.method.as_str(), "GET" | "WATCH");
        if write && key.resource != "events" {
            writes += count;
        }
        if key.method == "PATCH" && key.resource == "rollouts/status" {
            status_writes += count;
            if key.code == "409" {
                conflicts += count;
            }
        }
    }
    json!({
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_peak_mib": rss.iter().copied().fold(0.0, f64::max),
        "rss_median_mib": percentile(rss, 50.0),
        "requests": all,
        "requests_by_verb_and_resource": by_verb,
        "non_2xx_by_code": by_code,
        "status_writes": status_writes,
        "conflicts": conflicts,
        "writes_excluding_events": writes,
        "writes_per_rollout_excluding_events": writes / n as f64,
    })
}

fn services(name: &str) -> [Value; 2] {
    [format!("{name}-a"), format!("{name}-b")].map(|svc| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})
    })
}

fn rollout(name: &str, canary: bool) -> Value {
    let strategy = if canary {
        json!({"canary": {"canaryService": format!("{name}-a"), "stableService": format!("{name}-b")}})
    } else {
        json!({"blueGreen": {"activeService": format!("{name}-a"), "previewService": format!("{name}-b"), "scaleDownDelaySeconds": 5}})
    };
    json!({"apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
        "spec": {"replicas": 1, "revisionHistoryLimit": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "bench:1"}]}},
            "strategy": strategy}})
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() as f64 - 1.0)).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// What the watches have shown of one Rollout and its ReplicaSets.
#[derive(Default)]
struct Observed {
    generation: i64,
    observed_generation: i64,
    healthy: bool,
    stable: String,
    current: String,
    /// pod-template hash → spec.replicas
    replica_sets: HashMap<String, i32>,
}

impl Observed {
    fn settled(&self, target_generation: i64) -> bool {
        self.healthy
            && self.generation >= target_generation
            && self.observed_generation == self.generation
            && !self.stable.is_empty()
            && self.stable == self.current
            && self
                .replica_sets
                .iter()
                .all(|(hash, replicas)| *hash == self.stable || *replicas == 0)
    }
}

/// The watch-fed view of the benchmark's Rollouts, keyed `namespace/name`,
/// and the current phase's timeline.
#[derive(Default)]
struct World {
    rollouts: HashMap<String, Observed>,
    target_generation: HashMap<String, i64>,
    old_hash: HashMap<String, String>,
    patched: HashMap<String, Instant>,
    /// The phase's start by both clocks, to put a patch's moment next to
    /// the API server's timestamps (same machine, same wall clock).
    began: Option<(Instant, jiff::Timestamp)>,
    /// When this benchmark's own watch delivered the patched Rollout: how
    /// far behind the API server's watches run during the burst.
    rollout_seen: HashMap<String, Instant>,
    new_rs: HashMap<String, Instant>,
    /// The new ReplicaSet's creationTimestamp (whole seconds): when the
    /// controller's create reached the API server, whatever the watch lag.
    new_rs_created: HashMap<String, jiff::Timestamp>,
    settled: HashMap<String, Instant>,
}

impl World {
    fn check(&mut self, name: &str, now: Instant) {
        let Some(target) = self.target_generation.get(name).copied() else {
            return;
        };
        if self.settled.contains_key(name) {
            return;
        }
        if self.rollouts.get(name).is_some_and(|r| r.settled(target)) {
            self.settled.insert(name.to_string(), now);
        }
    }

    /// Starts a phase: every Rollout must reach `target` generations again.
    fn begin(&mut self, targets: HashMap<String, i64>) {
        self.old_hash = self
            .rollouts
            .iter()
            .map(|(name, r)| (name.clone(), r.stable.clone()))
            .collect();
        self.target_generation = targets;
        self.patched.clear();
        self.began = Some((Instant::now(), jiff::Timestamp::now()));
        self.rollout_seen.clear();
        self.new_rs.clear();
        self.new_rs_created.clear();
        self.settled.clear();
        let names: Vec<String> = self.rollouts.keys().cloned().collect();
        let now = Instant::now();
        for name in names {
            self.check(&name, now);
        }
    }
}

fn lock(world: &Mutex<World>) -> std::sync::MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `namespace`: the one namespace of the run, or None when it spreads over
/// several (the cluster is fresh, so every Rollout in it is the benchmark's).
fn watch_world(
    client: &Client,
    namespace: Option<&str>,
    world: Arc<Mutex<World>>,
) -> tokio::task::JoinHandle<()> {
    let (rollouts, replica_sets): (Api<DynamicObject>, Api<ReplicaSet>) = match namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &rollout_resource()),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all_with(client.clone(), &rollout_resource()),
            Api::all(client.clone()),
        ),
    };
    let rollout_world = world.clone();
    let rollout_watch = watcher(rollouts, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .try_for_each(move |r| {
            let name = key(&r.namespace().unwrap_or_default(), &r.name_any());
            let status = &r.data["status"];
            let now = Instant::now();
            let mut world = lock(&rollout_world);
            let observed = world.rollouts.entry(name.clone()).or_default();
            observed.generation = r.metadata.generation.unwrap_or(0);
            observed.observed_generation = status["observedGeneration"].as_i64().unwrap_or(0);
            observed.healthy = status["phase"] == "Healthy";
            observed.stable = status["stableRS"].as_str().unwrap_or_default().into();
            observed.current = status["currentPodHash"].as_str().unwrap_or_default().into();
            let generation = observed.generation;
            if world.patched.contains_key(&name)
                && world
                    .target_generation
                    .get(&name)
                    .is_some_and(|target| generation >= *target)
            {
                world.rollout_seen.entry(name.clone()).or_insert(now);
            }
            world.check(&name, now);
            futures::future::ready(Ok(()))
        });
    let rs_watch = watcher(replica_sets, watcher::Config::default().labels(HASH))
        .default_backoff()
        .touched_objects()
        .try_for_each(move |rs| {
            let owner = rs
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| key(&rs.namespace().unwrap_or_default(), &o.name));
            let Some(owner) = owner else {
                return futures::future::ready(Ok(()));
            };
            let hash = rs.labels().get(HASH).cloned().unwrap_or_default();
            let replicas = if rs.metadata.deletion_timestamp.is_some() {
                0
            } else {
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
            };
            let now = Instant::now();
            let mut world = lock(&world);
            world
                .rollouts
                .entry(owner.clone())
                .or_default()
                .replica_sets
                .insert(hash.clone(), replicas);
            if world.patched.contains_key(&owner) && world.old_hash.get(&owner) != Some(&hash) {
                world.new_rs.entry(owner.clone()).or_insert(now);
                if let Some(created) = &rs.metadata.creation_timestamp {
                    world
                        .new_rs_created
                        .entry(owner.clone())
                        .or_insert(created.0);
                }
            }
            world.check(&owner, now);
            futures::future::ready(Ok(()))
        });
    tokio::spawn(async move {
        let _ = tokio::join!(rollout_watch, rs_watch);
    })
}

async fn wait_settled(world: &Mutex<World>, n: usize, what: &str) -> anyhow::Result<()> {
    let mut reported = Instant::now();
    wait_until(what, Duration::from_secs(1800), || {
        let settled = lock(world).settled.len();
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!("   {settled}/{n} settled");
            reported = Instant::now();
        }
        async move { Ok((settled >= n).then_some(())) }
    })
    .await
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Where each Rollout lives: `r<i>` in the namespace `i mod M`.
struct Placement {
    namespace: String,
    name: String,
    canary: bool,
}

impl Placement {
    fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }
}

fn placements(n: usize, namespaces: &[TestNamespace]) -> Vec<Placement> {
    (0..n)
        .map(|i| Placement {
            namespace: namespaces[i % namespaces.len()].name.clone(),
            name: format!("r{i}"),
            canary: i % 2 == 0,
        })
        .collect()
}

async fn run(client: &Client, args: &Args, n: usize) -> anyhow::Result<Value> {
    eprintln!(
        "== N = {n}, {} shard(s), {} namespace(s) (run {})",
        args.shards, args.namespaces, args.label
    );
    let mut namespaces = Vec::new();
    for index in 0..args.namespaces {
        let prefix = match args.namespaces {
            1 => format!("bench{n}"),
            _ => format!("bench{n}-{index}"),
        };
        namespaces.push(TestNamespace::create(client, &prefix).await?);
    }
    let scope = match namespaces.as_slice() {
        [only] => Some(only.name.as_str()),
        _ => None,
    };
    let placements = placements(n, &namespaces);
    std::fs::create_dir_all(&args.out)?;
    let controller = Controllers::start(args, scope, n).await?;
    let world = Arc::new(Mutex::new(World::default()));
    let watches = watch_world(client, scope, world.clone());
    let rollouts_in =
        |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &rollout_resource());

    // create
    lock(&world).begin(placements.iter().map(|p| (p.key(), 1)).collect());
    let (requests_before, ticks_before, started) = (
        controller.requests().await?,
        controller.cpu_ticks(),
        Instant::now(),
    );
    futures::stream::iter(&placements)
        .map(|placement| {
            let rollouts = rollouts_in(&placement.namespace);
            let services_api: Api<Service> = Api::namespaced(client.clone(), &placement.namespace);
            async move {
                for svc in services(&placement.name) {
                    services_api
                        .create(&PostParams::default(), &serde_json::from_value(svc)?)
                        .await?;
                }
                rollouts
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(rollout(&placement.name, placement.canary))?,
                    )
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    wait_settled(&world, n, "every Rollout settled after creation").await?;
    let create_seconds = started.elapsed().as_secs_f64();
    let create = phase_report(
        &delta(&controller.requests().await?, &requests_before),
        n,
        (controller.cpu_ticks() - ticks_before) as f64 / TICKS_PER_SECOND,
        &mut controller.rss_between(started, Instant::now()),
        create_seconds,
    );
    eprintln!("   created and settled in {create_seconds:.1}s");

    // update
    let targets: HashMap<String, i64> = {
        let world = lock(&world);
        placements
            .iter()
            .map(|placement| {
                let key = placement.key();
                let generation = world.rollouts.get(&key).map(|r| r.generation).unwrap_or(1);
                (key, generation + 1)
            })
            .collect()
    };
    lock(&world).begin(targets);
    let histograms_before = controller.histograms().await?;
    let (requests_before, ticks_before, started) = (
        controller.requests().await?,
        controller.cpu_ticks(),
        Instant::now(),
    );
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "bench:2"}]}}}});
    // Each patch is sent at its tick without waiting for the one before:
    // awaiting each answer in turn held the rate to the API server's answer
    // time (about 23 updates/s instead of 100 at N = 10,000).
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(PATCHES_IN_FLIGHT));
    let mut patches = tokio::task::JoinSet::new();
    for placement in &placements {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        // Stamped before the patch is sent: the new ReplicaSet can be seen
        // before the patch call returns.
        lock(&world).patched.insert(placement.key(), Instant::now());
        let (api, name, patch) = (
            rollouts_in(&placement.namespace),
            placement.name.clone(),
            patch.clone(),
        );
        patches.spawn(async move {
            let _permit = permit;
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patching the image of Rollout {name}"))
        });
    }
    while let Some(sent) = patches.join_next().await {
        sent??;
    }
    let last_patch = Instant::now();
    wait_settled(&world, n, "every Rollout settled after the update").await?;
    let settled_all = Instant::now();
    let latencies = histogram_report(&controller.histograms().await?, &histograms_before);
    let update = phase_report(
        &delta(&controller.requests().await?, &requests_before),
        n,
        (controller.cpu_ticks() - ticks_before) as f64 / TICKS_PER_SECOND,
        &mut controller.rss_between(started, settled_all),
        settled_all.duration_since(started).as_secs_f64(),
    );
    let (mut to_rs, mut to_settled) = (Vec::new(), Vec::new());
    let (mut to_rollout_seen, mut to_rs_created) = (Vec::new(), Vec::new());
    {
        let world = lock(&world);
        for (name, patched) in &world.patched {
            if let Some(seen) = world.new_rs.get(name) {
                to_rs.push(seen.saturating_duration_since(*patched).as_secs_f64() * 1000.0);
            }
            if let Some(seen) = world.rollout_seen.get(name) {
                to_rollout_seen
                    .push(seen.saturating_duration_since(*patched).as_secs_f64() * 1000.0);
            }
            if let (Some(created), Some((began, began_wall))) =
                (world.new_rs_created.get(name), world.began)
            {
                let sent = patched.saturating_duration_since(began).as_secs_f64();
                let created = created.duration_since(began_wall).as_secs_f64();
                // creationTimestamp drops the fraction, so a ReplicaSet
                // created within the patch's second reads as up to 1 s early.
                to_rs_created.push(((created - sent) * 1000.0).max(0.0));
            }
            if let Some(settled) = world.settled.get(name) {
                to_settled.push(settled.saturating_duration_since(*patched).as_secs_f64() * 1000.0);
            }
        }
    }
    let after_last_patch = settled_all.duration_since(last_patch).as_secs_f64();
    eprintln!("   updated: all settled {after_last_patch:.1}s after the last patch");

    // idle; the controller's CPU is read at the window's edges, so the
    // benchmark's own /metrics reads fall outside it.
    let histograms_before = controller.histograms().await?;
    let (requests_before, ticks_before, started) = (
        controller.requests().await?,
        controller.cpu_ticks(),
        Instant::now(),
    );
    tokio::time::sleep(args.idle).await;
    let (idle_ticks, idle_ended) = (controller.cpu_ticks() - ticks_before, Instant::now());
    let idle = phase_report(
        &delta(&controller.requests().await?, &requests_before),
        n,
        idle_ticks as f64 / TICKS_PER_SECOND,
        &mut controller.rss_between(started, idle_ended),
        args.idle.as_secs_f64(),
    );
    // What an idle controller still does: reconciles (requeues, relists)
    // and the answers to whatever it sent.
    let idle_latencies = histogram_report(&controller.histograms().await?, &histograms_before);
    watches.abort();
    drop(controller);
    for namespace in namespaces {
        namespace.cleanup().await;
    }
    Ok(json!({
        "n": n,
        "shards": args.shards,
        "namespaces": args.namespaces,
        "run": args.label,
        "rate_updates_per_second": args.rate,
        "controller_flags": args.controller_flags,
        "create": create,
        "update": update,
        "idle": idle,
        "update_settled_all_after_last_patch_seconds": after_last_patch,
        "patch_to_new_rs_ms": {"p50": percentile(&mut to_rs.clone(), 50.0), "p99": percentile(&mut to_rs.clone(), 99.0), "samples": to_rs.len()},
        "patch_to_rollout_watched_ms": {"p50": percentile(&mut to_rollout_seen.clone(), 50.0), "p99": percentile(&mut to_rollout_seen.clone(), 99.0), "samples": to_rollout_seen.len()},
        "patch_to_new_rs_created_ms": {"p50": percentile(&mut to_rs_created.clone(), 50.0), "p99": percentile(&mut to_rs_created.clone(), 99.0), "samples": to_rs_created.len(), "resolution_ms": 1000},
        "update_latency_histograms": latencies,
        "idle_latency_histograms": idle_latencies,
        "patch_to_settled_ms": {"p50": percentile(&mut to_settled.clone(), 50.0), "p99": percentile(&mut to_settled.clone(), 99.0), "samples": to_settled.len()},
    }))
}

/// The median over runs of one number in each run's JSON.
fn median_of(runs: &[&Value], path: &[&str]) -> f64 {
    let mut values: Vec<f64> = runs
        .iter()
        .filter_map(|r| path.iter().try_fold(*r, |v, key| v.get(*key))?.as_f64())
        .collect();
    percentile(&mut values, 50.0)
}

fn report(dir: &PathBuf) -> anyhow::Result<()> {
    let mut runs: Vec<Value> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        if file.starts_with("run-") && file.ends_with(".json") {
            let text = std::fs::read_to_string(&path)?;
            runs.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    if runs.is_empty() {
        bail!("no run-*.json in {}; run `make bench` first", dir.display());
    }
    let mut by_size: RunsBySize = BTreeMap::new();
    for run in &runs {
        by_size
            .entry((
                run["n"].as_u64().unwrap_or(0),
                run["shards"].as_u64().unwrap_or(1),
                run["namespaces"].as_u64().unwrap_or(1),
            ))
            .or_default()
            .push(run);
    }
    let mut table = String::from(
        "Medians over runs, each on a fresh cluster. Update phase unless marked.\n\n\
         | N | shards | namespaces | runs | create: settled s | create: peak RSS MiB | all settled after last patch s | patch→new RS p50 / p99 ms | patch→settled p50 / p99 ms | conflicts / status writes | writes per update (no Events) | requests per update | update CPU s | update peak RSS MiB | idle RSS MiB | idle CPU s | idle requests |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut summary = Vec::new();
    for ((n, shards, namespaces), runs) in &by_size {
        let m = |path: &[&str]| median_of(runs, path);
        let (conflicts, writes) = (m(&["update", "conflicts"]), m(&["update", "status_writes"]));
        table.push_str(&format!(
            "| {n} | {shards} | {namespaces} | {} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} ({:.2} %) | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} |\n",
            runs.len(),
            m(&["create", "seconds"]),
            m(&["create", "rss_peak_mib"]),
            m(&["update_settled_all_after_last_patch_seconds"]),
            m(&["patch_to_new_rs_ms", "p50"]),
            m(&["patch_to_new_rs_ms", "p99"]),
            m(&["patch_to_settled_ms", "p50"]),
            m(&["patch_to_settled_ms", "p99"]),
            conflicts,
            writes,
            100.0 * conflicts / writes.max(1.0),
            m(&["update", "writes_per_rollout_excluding_events"]),
            m(&["update", "requests"]) / *n as f64,
            m(&["update", "cpu_seconds"]),
            m(&["update", "rss_peak_mib"]),
            m(&["idle", "rss_median_mib"]),
            m(&["idle", "cpu_seconds"]),
            m(&["idle", "requests"]),
        ));
        summary
            .push(json!({"n": n, "shards": shards, "namespaces": namespaces, "runs": runs.len()}));
    }
    table.push_str("\nRequests by verb and resource in the update phase (first run of each size; `WATCH` is a watch request):\n\n");
    for ((n, shards, namespaces), runs) in &by_size {
        let by_verb = &runs[0]["update"]["requests_by_verb_and_resource"];
        let codes = &runs[0]["update"]["non_2xx_by_code"];
        let list: Vec<String> = by_verb
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", v.as_f64().unwrap_or(0.0)))
            .collect();
        table.push_str(&format!(
            "- N = {n}, {shards} shard(s), {namespaces} namespace(s): {}; non-2xx by code: {codes}\n",
            list.join(", ")
        ));
    }
    table.push_str(
        "\nWhere patch → new ReplicaSet goes (medians): the benchmark's own watch delivering the \
         patched Rollout, and the new ReplicaSet's creationTimestamp (API server clock, whole seconds):\n\n",
    );
    for ((n, shards, namespaces), runs) in &by_size {
        let m = |path: &[&str]| median_of(runs, path);
        table.push_str(&format!(
            "- N = {n}, {shards} shard(s), {namespaces} namespace(s): patch → Rollout watched p50 / p99 {:.0} / {:.0} ms; \
             patch → new RS created p50 / p99 {:.0} / {:.0} ms; patch → new RS watched p50 / p99 {:.0} / {:.0} ms\n",
            m(&["patch_to_rollout_watched_ms", "p50"]),
            m(&["patch_to_rollout_watched_ms", "p99"]),
            m(&["patch_to_new_rs_created_ms", "p50"]),
            m(&["patch_to_new_rs_created_ms", "p99"]),
            m(&["patch_to_new_rs_ms", "p50"]),
            m(&["patch_to_new_rs_ms", "p99"]),
        ));
    }
    for (phase, key) in [
        ("update", "update_latency_histograms"),
        ("idle", "idle_latency_histograms"),
    ] {
        table.push_str(&format!(
            "\nAPI server answer times and reconcile durations in the {phase} phase (first run of each size; \
             histogram bucket bounds, so \"≤ 50\" means between the next lower bound and 50 ms; \
             none listed, none happened):\n\n",
        ));
        histogram_lines(&mut table, &by_size, key);
    }
    std::fs::write(dir.join("results.md"), &table)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json!({"sizes": summary, "runs": runs}))?,
    )?;
    println!("{table}");
    Ok(())
}

type RunsBySize<'a> = BTreeMap<(u64, u64, u64), Vec<&'a Value>>;

/// One line per size: each histogram series `key` holds in the first run.
fn histogram_lines(table: &mut String, by_size: &RunsBySize, key: &str) {
    for ((n, shards, namespaces), runs) in by_size {
        let list: Vec<String> = runs[0][key]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(series, h)| {
                let bound = |key: &str| match h[key].as_f64() {
                    Some(ms) => format!("≤ {ms:.0}"),
                    None => "above the last bound".into(),
                };
                let name = series
                    .trim_start_matches("ramp_")
                    .replace("http_request_duration_seconds", "")
                    .replace("reconcile_duration_seconds", "reconcile")
                    .replace("reconcile_queue_seconds", "wait for reconcile");
                format!(
                    "{name} p50 {} / p99 {} ms ({} samples)",
                    bound("p50_at_most_ms"),
                    bound("p99_at_most_ms"),
                    h["count"]
                )
            })
            .collect();
        table.push_str(&format!(
            "- N = {n}, {shards} shard(s), {namespaces} namespace(s): {}\n",
            list.join("; ")
        ));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(dir) = &args.report {
        return report(dir);
    }
    let Some(n) = args.size else {
        bail!("--size N is required");
    };
    let client = cluster_client().await?;
    let result = run(&client, &args, n).await?;
    std::fs::write(
        args.out.join(format!("run-{}.json", run_name(n, &args))),
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: [u64; 4]) -> String {
        let bounds = ["0.05", "0.1", "0.2", "+Inf"];
        let mut text = String::from("# TYPE ramp_x_seconds histogram\n");
        for (bound, count) in bounds.iter().zip(counts) {
            text.push_str(&format!(
                "ramp_x_seconds_bucket{{method=\"PATCH\",le=\"{bound}\"}} {count}\n"
            ));
        }
        text.push_str(&format!(
            "ramp_x_seconds_count{{method=\"PATCH\"}} {}\n",
            counts[3]
        ));
        text
    }

    #[test]
    fn percentiles_come_from_the_buckets_filled_between_two_scrapes() {
        // Before: 10 fast requests. Between: 90 at or below 100 ms, 10 in (100, 200].
        let before = parse_histograms(&page([10, 10, 10, 10]));
        let after = parse_histograms(&page([10, 100, 110, 110]));
        let report = histogram_report(&after, &before);
        let series = &report["ramp_x_seconds{method=\"PATCH\"}"];
        assert_eq!(series["count"], 100.0);
        assert_eq!(series["p50_at_most_ms"], 100.0);
        assert_eq!(series["p99_at_most_ms"], 200.0);
    }

    #[test]
    fn observations_past_the_last_bound_have_no_upper_bound_and_quiet_series_are_left_out() {
        let before = parse_histograms(&page([0, 0, 0, 0]));
        let after = parse_histograms(&page([0, 0, 0, 4]));
        let report = histogram_report(&after, &before);
        assert!(report["ramp_x_seconds{method=\"PATCH\"}"]["p99_at_most_ms"].is_null());
        assert_eq!(histogram_report(&after, &after), json!({}));
    }
}
