//! Plays the kubelet for the local control plane, which has no container
//! runtime. It registers one Node, binds every pod to it (there is no
//! scheduler either), and reports each pod Running and Ready (conditions,
//! containerStatuses, podIP). Pods being deleted are removed at once.
//!
//! Pods really serve: each gets its own address on the loopback interface
//! as its podIP, and the kubelet answers HTTP on that address for every TCP
//! container port, so a gateway that reads EndpointSlices reaches them. See
//! `ramp_test_support::PodAnswer` for what a pod answers. The addresses come
//! from 10.244.0.0/16, which `tests/cluster/up.sh` routes to `lo`, not from
//! 127.0.0.0/8: the API server refuses loopback-range addresses in
//! EndpointSlices, so 127.x.y.z pods would never get endpoints.
//!
//! A pod is kept from ever becoming Ready when it carries the annotation
//! `test.ramp.dev/never-ready: "true"` or any container image whose tag is
//! `never-ready` (e.g. `nginx:never-ready`), so tests can exercise rollouts
//! that cannot progress. A container image tagged `http-500` answers every
//! request with status 500.
//!
//! The kubelet also serves `/metrics/resource` on 127.0.0.1, at the port
//! its Node reports as `status.daemonEndpoints.kubeletEndpoint`, the way a
//! real kubelet does, so the real metrics-server can scrape it for the HPA
//! controller. Each container uses the CPU its pod's annotation
//! `test.ramp.dev/cpu-millicores` says (see `ramp_test_support::ResourceUsage`).
//! It serves plain HTTP: metrics-server is started with
//! `--deprecated-kubelet-completely-insecure`, since TLS between two local
//! processes would test nothing of Ramp's.
//!
//! Pods that run to completion (restartPolicy Never or OnFailure, as Job
//! pods are) end as their command says: see `ramp_test_support::Completion`.
//! They are Running and Ready until then, and then Succeeded or Failed with
//! the exit code in the container's terminated state, so the real Job
//! controller in KCM completes or fails their Job.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ramp_test_support::{
    CPU_MILLICORES_ANNOTATION, Completion, IDLE_MILLICORES, NEVER_READY_ANNOTATION,
    POD_REQUESTS_PATH, PodAnswer, ResourceUsage, TEST_NODE_NAME, completion_of, image_version,
};
use serde_json::json;
use tokio::task::JoinHandle;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Without the pod network on lo no pod could serve; say so at once.
    let first = SocketAddr::from((Ipv4Addr::from(FIRST_POD_ADDRESS), 0));
    std::net::TcpListener::bind(first).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {first} ({error}): the pod network 10.244.0.0/16 is not on the loopback interface; \
             tests/cluster/up.sh adds it with `ip addr add 10.244.0.1/16 dev lo`"
        )
    })?;
    let client = Client::try_default().await?;
    let usage = Arc::new(Mutex::new(ResourceUsage::default()));
    let metrics_port = serve_resource_metrics(usage.clone()).await?;
    register_node(&client, metrics_port).await?;
    let pods: Api<Pod> = Api::all(client.clone());
    eprintln!(
        "test-kubelet: node {TEST_NODE_NAME} registered (resource metrics on 127.0.0.1:{metrics_port}); watching pods"
    );
    let mut kubelet = Kubelet::new(client, usage);
    let stream = watcher(pods, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    // A watch error (the API server restarting, say) is reported and the
    // backoff retries; the kubelet must outlive it like a real one does.
    while let Some(next) = stream.next().await {
        match next {
            Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                kubelet.seen.insert(pod.uid().unwrap_or_default());
                kubelet.handle(&pod).await;
            }
            Ok(watcher::Event::Delete(pod)) => kubelet.forget(&pod.uid().unwrap_or_default()),
            Ok(watcher::Event::Init) => kubelet.seen.clear(),
            // Pods deleted while the watch was down never send a Delete.
            Ok(watcher::Event::InitDone) => kubelet.forget_unseen(),
            Err(error) => eprintln!("test-kubelet: watch failed, retrying: {error}"),
        }
    }
    Ok(())
}

/// Serves `/metrics/resource` on a free loopback port, which it returns.
async fn serve_resource_metrics(usage: Arc<Mutex<ResourceUsage>>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/metrics/resource", get(resource_metrics))
        .with_state(usage);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("test-kubelet: serving resource metrics failed: {error}");
        }
    });
    Ok(port)
}

async fn resource_metrics(State(usage): State<Arc<Mutex<ResourceUsage>>>) -> impl IntoResponse {
    let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
    match usage.lock() {
        Ok(mut usage) => (StatusCode::OK, usage.exposition(now)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "resource usage lock poisoned".to_string(),
        ),
    }
}

/// The one Node every pod runs on. The EndpointSlice controller leaves out
/// pods whose node it cannot find, so the node must exist and be Ready.
async fn register_node(client: &Client, metrics_port: u16) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": TEST_NODE_NAME, "labels": {"kubernetes.io/hostname": TEST_NODE_NAME}},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error),
    }
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": TEST_NODE_NAME}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": metrics_port}},
    }});
    nodes
        .patch_status(
            TEST_NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .map(|_| ())
}

struct Kubelet {
    client: Client,
    /// Pod UID to its loopback address, for as long as the pod exists.
    addresses: HashMap<String, Ipv4Addr>,
    in_use: HashSet<Ipv4Addr>,
    next_address: u32,
    /// Pod UID to the tasks serving its container ports.
    servers: HashMap<String, Vec<JoinHandle<()>>>,
    /// Pod UID to the task that ends a run-to-completion pod on time.
    finishers: HashMap<String, JoinHandle<()>>,
    /// UIDs seen since the watch (re)started.
    seen: HashSet<String>,
    /// The running pods' CPU and memory, for `/metrics/resource`.
    usage: Arc<Mutex<ResourceUsage>>,
}

/// Pods get addresses from 10.244.1.1 upwards; 10.244.0.1 is the address
/// `up.sh` puts on `lo` to route the whole /16 there.
const FIRST_POD_ADDRESS: u32 = u32::from_be_bytes([10, 244, 1, 1]);
const LAST_POD_ADDRESS: u32 = u32::from_be_bytes([10, 244, 255, 254]);

impl Kubelet {
    fn new(client: Client, usage: Arc<Mutex<ResourceUsage>>) -> Self {
        Kubelet {
            client,
            addresses: HashMap::new(),
            in_use: HashSet::new(),
            next_address: FIRST_POD_ADDRESS,
            servers: HashMap::new(),
            finishers: HashMap::new(),
            seen: HashSet::new(),
            usage,
        }
    }

    async fn handle(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let result = if pod.metadata.deletion_timestamp.is_some() {
            // A real pod stops answering as it shuts down, before it is gone.
            self.forget(&uid);
            self.delete(pod).await
        } else {
            self.run(pod, &uid).await
        };
        if let Err(error) = result {
            eprintln!(
                "test-kubelet: {}/{}: {error}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            );
        }
    }

    async fn delete(&self, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &now).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn run(&mut self, pod: &Pod, uid: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some();
        if !bound {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": TEST_NODE_NAME},
            });
            match api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => {}
                // Bound meanwhile (a watch replay): the next event carries it.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(error),
            }
        }
        let address = self.address_for(pod, uid);
        if !self.servers.contains_key(uid) {
            let servers = serve(pod, address);
            self.servers.insert(uid.to_string(), servers);
        }

        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let completion = pod.spec.as_ref().and_then(completion_of);
        if completion.is_some() && matches!(phase, Some("Succeeded" | "Failed")) {
            // Its containers have exited: they use nothing any more.
            if let Ok(mut usage) = self.usage.lock() {
                usage.forget(uid);
            }
            return Ok(());
        }
        if completion == Some(Completion::ImagePullFails) {
            return report_pull_failure(&api, pod).await;
        }
        self.report_running(&api, pod, address).await?;
        self.account(pod, uid);
        if let Some(Completion::After { delay, exit_code }) = completion
            && !self.finishers.contains_key(uid)
        {
            // Only once Running is stored, so the end can never be
            // overwritten by it. Timed from the start the pod reports, so a
            // kubelet restart does not lengthen the run.
            let started = status
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(Timestamp::now, |t| t.0);
            let finisher = tokio::spawn(finish(api, pod.clone(), started, delay, exit_code));
            self.finishers.insert(uid.to_string(), finisher);
        }
        Ok(())
    }

    async fn report_running(
        &self,
        api: &Api<Pod>,
        pod: &Pod,
        address: Ipv4Addr,
    ) -> Result<(), kube::Error> {
        let name = pod.name_any();
        let status = pod.status.as_ref();
        let ready = !never_ready(pod);
        let reported_ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let reported_address = status.and_then(|s| s.pod_ip.as_deref());
        if running
            && reported_ready == Some(ready)
            && reported_address == Some(&address.to_string())
        {
            return Ok(());
        }
        let now = Timestamp::now().to_string();
        let flag = if ready { "True" } else { "False" };
        let containers =
            container_statuses(pod, ready, true, json!({"running": {"startedAt": now}}));
        let patch = json!({
            "status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": address.to_string(),
                "podIPs": [{"ip": address.to_string()}],
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": containers,
            }
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// The pod's address: the one it already reports (a kubelet restart
    /// keeps pods where they are), else the next free one.
    fn address_for(&mut self, pod: &Pod, uid: &str) -> Ipv4Addr {
        if let Some(address) = self.addresses.get(uid) {
            return *address;
        }
        let reported = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| (FIRST_POD_ADDRESS..=LAST_POD_ADDRESS).contains(&u32::from(*ip)))
            .filter(|ip| !self.in_use.contains(ip));
        let address = reported.unwrap_or_else(|| self.next_free_address());
        self.in_use.insert(address);
        self.addresses.insert(uid.to_string(), address);
        address
    }

    fn next_free_address(&mut self) -> Ipv4Addr {
        loop {
            let candidate = Ipv4Addr::from(self.next_address);
            self.next_address = if self.next_address >= LAST_POD_ADDRESS {
                FIRST_POD_ADDRESS
            } else {
                self.next_address + 1
            };
            // .0 and .255 last octets look like network and broadcast
            // addresses to tools reading podIPs; skip them.
            let last = candidate.octets()[3];
            if last != 0 && last != 255 && !self.in_use.contains(&candidate) {
                return candidate;
            }
        }
    }

    /// Starts or updates the pod's resource usage from its annotation.
    fn account(&self, pod: &Pod, uid: &str) {
        let millicores = match pod.annotations().get(CPU_MILLICORES_ANNOTATION) {
            None => IDLE_MILLICORES,
            Some(value) => value.parse().unwrap_or_else(|_| {
                eprintln!(
                    "test-kubelet: {}: {CPU_MILLICORES_ANNOTATION}: {value:?} is not a whole number of millicores; reporting it idle",
                    pod.name_any()
                );
                IDLE_MILLICORES
            }),
        };
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
        if let Ok(mut usage) = self.usage.lock() {
            usage.track(
                uid,
                &pod.namespace().unwrap_or_default(),
                &pod.name_any(),
                containers,
                millicores,
                now,
            );
        }
    }

    fn forget(&mut self, uid: &str) {
        if let Ok(mut usage) = self.usage.lock() {
            usage.forget(uid);
        }
        for server in self.servers.remove(uid).unwrap_or_default() {
            server.abort();
        }
        if let Some(finisher) = self.finishers.remove(uid) {
            finisher.abort();
        }
        if let Some(address) = self.addresses.remove(uid) {
            self.in_use.remove(&address);
        }
    }

    fn forget_unseen(&mut self) {
        let gone: Vec<String> = self
            .addresses
            .keys()
            .filter(|uid| !self.seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.forget(&uid);
        }
    }
}

/// Every container's status, all in the same `state`.
fn container_statuses(
    pod: &Pod,
    ready: bool,
    started: bool,
    state: serde_json::Value,
) -> Vec<serde_json::Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "imageID": format!("test-kubelet://{image}"),
                "image": image,
                "ready": ready,
                "started": started,
                "restartCount": 0,
                "state": state,
            })
        })
        .collect()
}

/// Ends a run-to-completion pod `delay` after it started: Succeeded with
/// exit code 0, Failed otherwise, every container terminated with the code.
async fn finish(
    api: Api<Pod>,
    pod: Pod,
    started: Timestamp,
    delay: std::time::Duration,
    exit_code: i32,
) {
    let ends = started
        .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(started);
    let remaining = ends.duration_since(Timestamp::now());
    if let Ok(remaining) = std::time::Duration::try_from(remaining) {
        tokio::time::sleep(remaining).await;
    }
    let now = Timestamp::now().to_string();
    let (phase, reason) = if exit_code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let terminated = json!({"terminated": {"exitCode": exit_code, "reason": reason,
                                           "startedAt": started.to_string(), "finishedAt": now}});
    let containers = container_statuses(&pod, false, false, terminated);
    let patch = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }});
    // The end must not be lost to an API server hiccup: the Job would wait forever.
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(error) => {
                eprintln!(
                    "test-kubelet: {}: ending the pod failed, retrying: {error}",
                    pod.name_any()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// A pod whose image cannot be pulled stays Pending, its containers waiting
/// in ErrImagePull, as a real kubelet reports it.
async fn report_pull_failure(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let reported = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .is_some_and(|w| w.reason.as_deref() == Some("ErrImagePull"));
    if reported {
        return Ok(());
    }
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull",
                                      "message": format!("failed to pull image {image:?}: not found (test kubelet)")}},
            })
        })
        .collect();
    let patch = json!({"status": {"phase": "Pending", "containerStatuses": containers}});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

#[derive(Clone)]
struct Served {
    answer: PodAnswer,
    status: StatusCode,
    requests: Arc<AtomicU64>,
}

/// One HTTP server per TCP container port, on the pod's own address.
fn serve(pod: &Pod, address: Ipv4Addr) -> Vec<JoinHandle<()>> {
    let name = pod.name_any();
    let containers: Vec<Container> = pod.spec.iter().flat_map(|s| s.containers.clone()).collect();
    let mut servers = Vec::new();
    for container in &containers {
        let image = container.image.clone().unwrap_or_default();
        let version = image_version(&image).to_string();
        let status = if version == "http-500" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        for port in container.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(number) = u16::try_from(port.container_port) else {
                continue;
            };
            let served = Served {
                answer: PodAnswer {
                    pod: name.clone(),
                    container: container.name.clone(),
                    image: image.clone(),
                    version: version.clone(),
                },
                status,
                requests: Arc::new(AtomicU64::new(0)),
            };
            let socket = SocketAddr::from((address, number));
            let pod_name = name.clone();
            servers.push(tokio::spawn(async move {
                let listener = match tokio::net::TcpListener::bind(socket).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        eprintln!("test-kubelet: {pod_name}: cannot listen on {socket}: {error}");
                        return;
                    }
                };
                let app = Router::new()
                    .route(POD_REQUESTS_PATH, get(requests_served))
                    .fallback(answer)
                    .with_state(served);
                if let Err(error) = axum::serve(listener, app).await {
                    eprintln!("test-kubelet: {pod_name}: serving {socket} failed: {error}");
                }
            }));
        }
    }
    servers
}

async fn answer(State(served): State<Served>) -> impl IntoResponse {
    served.requests.fetch_add(1, Ordering::Relaxed);
    (served.status, Json(served.answer.clone()))
}

/// How many requests the pod answered, for tests that count what a gateway
/// sent (mirrored requests have no response anyone sees).
async fn requests_served(State(served): State<Served>) -> String {
    served.requests.load(Ordering::Relaxed).to_string()
}

fn never_ready(pod: &Pod) -> bool {
    let annotated = pod
        .annotations()
        .get(NEVER_READY_ANNOTATION)
        .is_some_and(|v| v == "true");
    let tagged = pod.spec.iter().flat_map(|s| s.containers.iter()).any(|c| {
        c.image
            .as_deref()
            .is_some_and(|i| image_version(i) == "never-ready")
    });
    annotated || tagged
}
