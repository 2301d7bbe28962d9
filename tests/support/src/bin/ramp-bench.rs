//! Scale benchmark for ramp-controller on the local control plane.
//!
//! For each N: create N Rollouts (1 replica, half canary without steps, half
//! blue/green with auto-promotion) with their Services, wait until all are
//! Healthy, change every image (at a fixed rate) and drive them to completion,
//! then idle. Latencies come from this program's own watch events, request
//! counts from the controller's client-side counting layer
//! (`ramp_http_requests_total`), memory and CPU from /proc.
//!
//! Usage: ramp-bench --controller PATH [--sizes 100,500,1000] [--idle 60]
//!        [--cycles 5] [--rate 100] [--out target/bench]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ramp_test_support::{TestNamespace, cluster_client, free_port, kubeconfig_path, wait_until};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const HASH: &str = "rollouts-pod-template-hash";

struct Args {
    controller: PathBuf,
    sizes: Vec<usize>,
    idle: Duration,
    cycles: usize,
    rate: f64,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        controller: PathBuf::from("target/release/ramp-controller"),
        sizes: vec![100, 500, 1000],
        idle: Duration::from_secs(60),
        cycles: 5,
        rate: 100.0,
        out: PathBuf::from("target/bench"),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--controller" => args.controller = value.into(),
            "--sizes" => {
                args.sizes = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--sizes: comma-separated numbers")?
            }
            "--idle" => args.idle = Duration::from_secs(value.parse().context("--idle: seconds")?),
            "--cycles" => args.cycles = value.parse().context("--cycles: a number")?,
            "--rate" => args.rate = value.parse().context("--rate: updates per second")?,
            "--out" => args.out = value.into(),
            other => {
                bail!("unknown flag {other}; see the header of tests/support/src/bin/ramp-bench.rs")
            }
        }
    }
    Ok(args)
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
    async fn start(binary: &PathBuf, namespace: &str, log: PathBuf) -> anyhow::Result<Controller> {
        let port = free_port()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .arg(format!("--kubeconfig={}", kubeconfig_path().display()))
            .arg(format!("--namespace={namespace}"))
            .arg("--leader-elect=false")
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

    fn rss_since(&self, since: Instant) -> Vec<u64> {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(_, r)| *r)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn peak(&self) -> u64 {
        self.samples
            .lock()
            .map(|s| s.iter().map(|(_, r)| *r).max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// (all HTTP requests, non-GET requests, Event creations) the controller has sent so far.
    async fn requests(&self) -> anyhow::Result<(f64, f64, f64)> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await?
            .text()
            .await?;
        let mut all = 0.0;
        let mut writes = 0.0;
        let mut events = 0.0;
        for line in text.lines() {
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if line.starts_with("ramp_http_requests_total{") {
                all += value;
                if !line.contains("method=\"GET\"") {
                    writes += value;
                }
            }
            if line.starts_with("ramp_kube_requests_total{") && line.contains("kind=\"Event\"") {
                events += value;
            }
        }
        Ok((all, writes, events))
    }
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

fn settled(rollout: &DynamicObject) -> bool {
    let status = &rollout.data["status"];
    status["phase"] == "Healthy"
        && status["observedGeneration"].as_i64() == rollout.metadata.generation
        && status["stableRS"] == status["currentPodHash"]
}

async fn wait_all_settled(api: &Api<DynamicObject>, n: usize, what: &str) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(900), || async {
        let list = api.list(&ListParams::default()).await?;
        let done = list.items.iter().filter(|r| settled(r)).count();
        Ok((done == n).then_some(()))
    })
    .await
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() as f64 - 1.0)).round() as usize;
    values[rank.min(values.len() - 1)]
}

#[derive(Default)]
struct Timeline {
    changed: HashMap<String, Instant>,
    new_rs: HashMap<String, Instant>,
    available: HashMap<String, Instant>,
    acted: HashMap<String, Instant>,
}

/// One update cycle: change every image, record the timeline from watches.
async fn update_cycle(
    client: &Client,
    namespace: &str,
    n: usize,
    image: &str,
    rate: f64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &rollout_resource());
    let before = rollouts.list(&ListParams::default()).await?;
    let old_hash: HashMap<String, String> = before
        .items
        .iter()
        .map(|r| {
            (
                r.name_any(),
                r.data["status"]["stableRS"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let canary: HashSet<String> = before
        .items
        .iter()
        .filter(|r| r.data["spec"]["strategy"]["canary"].is_object())
        .map(|r| r.name_any())
        .collect();
    let target_generation: HashMap<String, i64> = before
        .items
        .iter()
        .map(|r| (r.name_any(), r.metadata.generation.unwrap_or(0) + 1))
        .collect();
    let timeline = Arc::new(Mutex::new(Timeline::default()));

    let rollout_watch = {
        let timeline = timeline.clone();
        let target = target_generation.clone();
        watcher(rollouts.clone(), watcher::Config::default())
            .applied_objects()
            .try_for_each(move |r| {
                let name = r.name_any();
                if r.metadata.generation >= target.get(&name).copied()
                    && let Ok(mut t) = timeline.lock()
                {
                    t.changed.entry(name).or_insert_with(Instant::now);
                }
                futures::future::ready(Ok(()))
            })
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let rs_watch = {
        let timeline = timeline.clone();
        let old_hash = old_hash.clone();
        let canary = canary.clone();
        watcher(rs_api, watcher::Config::default().labels(HASH))
            .applied_objects()
            .try_for_each(move |rs| {
                let Some(owner) = rs
                    .metadata
                    .owner_references
                    .as_ref()
                    .and_then(|o| o.first())
                    .map(|o| o.name.clone())
                else {
                    return futures::future::ready(Ok(()));
                };
                let hash = rs.labels().get(HASH).cloned().unwrap_or_default();
                let now = Instant::now();
                if let Ok(mut t) = timeline.lock() {
                    let old = old_hash.get(&owner).cloned().unwrap_or_default();
                    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    let available = rs
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    if hash != old {
                        t.new_rs.entry(owner.clone()).or_insert(now);
                        if available >= 1 {
                            t.available.entry(owner.clone()).or_insert(now);
                        }
                    } else if canary.contains(&owner)
                        && replicas == 0
                        && t.available.contains_key(&owner)
                    {
                        t.acted.entry(owner).or_insert(now);
                    }
                }
                futures::future::ready(Ok(()))
            })
    };
    let svc_api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc_watch = {
        let timeline = timeline.clone();
        let old_hash = old_hash.clone();
        watcher(svc_api, watcher::Config::default())
            .applied_objects()
            .try_for_each(move |svc| {
                let name = svc.name_any();
                if let Some(owner) = name.strip_suffix("-a") {
                    let selected = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .and_then(|s| s.get(HASH))
                        .cloned();
                    let old = old_hash.get(owner).cloned();
                    if selected.is_some()
                        && selected != old
                        && let Ok(mut t) = timeline.lock()
                        && t.available.contains_key(owner)
                    {
                        t.acted
                            .entry(owner.to_string())
                            .or_insert_with(Instant::now);
                    }
                }
                futures::future::ready(Ok(()))
            })
    };
    let watches = tokio::spawn(async move {
        let _ = tokio::join!(rollout_watch, rs_watch, svc_watch);
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    for name in old_hash.keys() {
        ticker.tick().await;
        // The change exists no later than the moment the patch is sent; the
        // Rollout's own watch event can arrive after the new ReplicaSet's.
        let sent = Instant::now();
        rollouts
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Ok(mut t) = timeline.lock() {
            let seen = t.changed.get(name).copied().unwrap_or(sent);
            t.changed.insert(name.clone(), seen.min(sent));
        }
    }
    wait_all_settled(&rollouts, n, "every rollout to complete the update").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watches.abort();

    let t = timeline
        .lock()
        .map_err(|_| anyhow::anyhow!("timeline lock poisoned"))?;
    let mut create = Vec::new();
    let mut act = Vec::new();
    for name in old_hash.keys() {
        if let (Some(changed), Some(rs)) = (t.changed.get(name), t.new_rs.get(name)) {
            create.push(rs.saturating_duration_since(*changed).as_secs_f64() * 1000.0);
        }
        if let (Some(available), Some(acted)) = (t.available.get(name), t.acted.get(name)) {
            act.push(acted.saturating_duration_since(*available).as_secs_f64() * 1000.0);
        }
    }
    Ok((create, act))
}

async fn run_size(client: &Client, args: &Args, n: usize) -> anyhow::Result<Value> {
    eprintln!("== N = {n}");
    let namespace = TestNamespace::create(client, &format!("bench{n}")).await?;
    let ns = namespace.name.clone();
    std::fs::create_dir_all(&args.out)?;
    let controller = Controller::start(
        &args.controller,
        &ns,
        args.out.join(format!("controller-{n}.log")),
    )
    .await?;
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &rollout_resource());
    let services_api: Api<Service> = Api::namespaced(client.clone(), &ns);

    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let rollouts = rollouts.clone();
            let services_api = services_api.clone();
            async move {
                let name = format!("r{i}");
                for svc in services(&name) {
                    services_api
                        .create(&PostParams::default(), &serde_json::from_value(svc)?)
                        .await?;
                }
                rollouts
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(rollout(&name, i % 2 == 0))?,
                    )
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    wait_all_settled(&rollouts, n, "every rollout Healthy after creation").await?;
    eprintln!(
        "   {n} rollouts healthy after {:.1}s",
        created.elapsed().as_secs_f64()
    );

    let mut create_latencies = Vec::new();
    let mut action_latencies = Vec::new();
    let mut cycle_rss = Vec::new();
    let mut per_rollout = Vec::new();
    let mut writes_per_rollout = Vec::new();
    let mut events_per_rollout = Vec::new();
    for cycle in 0..args.cycles.max(1) {
        let (requests_before, writes_before, events_before) = controller.requests().await?;
        let (mut create, mut act) =
            update_cycle(client, &ns, n, &format!("bench:{}", cycle + 2), args.rate).await?;
        let (requests_after, writes_after, events_after) = controller.requests().await?;
        events_per_rollout.push((events_after - events_before) / n as f64);
        per_rollout.push((requests_after - requests_before) / n as f64);
        writes_per_rollout.push((writes_after - writes_before) / n as f64);
        create_latencies.append(&mut create);
        action_latencies.append(&mut act);
        // Let blue/green scale-down delays (5s) expire before sampling steady memory.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let since = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut steady: Vec<f64> = controller
            .rss_since(since)
            .iter()
            .map(|r| *r as f64)
            .collect();
        cycle_rss.push(percentile(&mut steady, 50.0) / 1048576.0);
        eprintln!(
            "   cycle {}: steady RSS {:.1} MiB, {:.1} requests/rollout",
            cycle + 1,
            cycle_rss[cycle],
            per_rollout[cycle]
        );
    }

    let (idle_requests_before, _, _) = controller.requests().await?;
    let ticks_before = controller.cpu_ticks();
    let idle_start = Instant::now();
    tokio::time::sleep(args.idle).await;
    let idle_cpu = (controller.cpu_ticks() - ticks_before) as f64 / TICKS_PER_SECOND;
    let (idle_requests_after, _, _) = controller.requests().await?;
    let mut idle_rss: Vec<f64> = controller
        .rss_since(idle_start)
        .iter()
        .map(|r| *r as f64)
        .collect();
    let steady = percentile(&mut idle_rss, 50.0) / 1048576.0;
    let result = json!({
        "n": n,
        "peak_rss_mib": controller.peak() as f64 / 1048576.0,
        "steady_rss_mib": steady,
        "rss_after_each_cycle_mib": cycle_rss,
        "idle_seconds": args.idle.as_secs(),
        "idle_cpu_seconds": idle_cpu,
        "idle_requests": idle_requests_after - idle_requests_before,
        "change_to_new_rs_ms": {"p50": percentile(&mut create_latencies.clone(), 50.0), "p99": percentile(&mut create_latencies.clone(), 99.0), "samples": create_latencies.len()},
        "available_to_next_action_ms": {"p50": percentile(&mut action_latencies.clone(), 50.0), "p99": percentile(&mut action_latencies.clone(), 99.0), "samples": action_latencies.len()},
        "requests_per_rollout_update": per_rollout,
        "non_get_requests_per_rollout_update": writes_per_rollout,
        "events_per_rollout_update": events_per_rollout,
    });
    drop(controller);
    namespace.cleanup().await;
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = cluster_client().await?;
    let mut results = Vec::new();
    for &n in &args.sizes {
        results.push(run_size(&client, &args, n).await?);
        // Written after every size so a later failure keeps what was measured.
        let report = json!({"rate_updates_per_second": args.rate, "cycles": args.cycles, "results": results});
        std::fs::write(
            args.out.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    let mut table = String::from(
        "| N | peak RSS MiB | steady RSS MiB | RSS per cycle MiB | idle CPU s | idle requests | change→RS p50/p99 ms | available→action p50/p99 ms | requests/rollout | non-GET/rollout | of which Events |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        let cycles: Vec<String> = r["rss_after_each_cycle_mib"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.1}", v.as_f64().unwrap_or(0.0)))
            .collect();
        let avg = |key: &str| {
            let values: Vec<f64> = r[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        table.push_str(&format!(
            "| {} | {:.1} | {:.1} | {} | {:.2} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.1} | {:.1} |\n",
            r["n"],
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            r["steady_rss_mib"].as_f64().unwrap_or(0.0),
            cycles.join(" → "),
            r["idle_cpu_seconds"].as_f64().unwrap_or(0.0),
            r["idle_requests"],
            r["change_to_new_rs_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["change_to_new_rs_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            r["available_to_next_action_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["available_to_next_action_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            avg("requests_per_rollout_update"),
            avg("non_get_requests_per_rollout_update"),
            avg("events_per_rollout_update"),
        ));
    }
    std::fs::write(args.out.join("results.md"), &table)?;
    println!("{table}");
    Ok(())
}
