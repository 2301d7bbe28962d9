//! Plays the kubelet for the local control plane, which has no container
//! runtime: every pod is reported Running and Ready (conditions,
//! containerStatuses, podIP), and pods being deleted are removed at once.
//!
//! A pod is kept from ever becoming Ready when it carries the annotation
//! `test.ramp.dev/never-ready: "true"` or any container image whose tag is
//! `never-ready` (e.g. `nginx:never-ready`), so tests can exercise rollouts
//! that cannot progress.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ramp_test_support::NEVER_READY_ANNOTATION;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let pods: Api<Pod> = Api::all(client.clone());
    eprintln!("test-kubelet: watching pods");
    let stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    // A watch error (the API server restarting, say) is reported and the
    // backoff retries; the kubelet must outlive it like a real one does.
    while let Some(next) = stream.next().await {
        let pod = match next {
            Ok(pod) => pod,
            Err(error) => {
                eprintln!("test-kubelet: watch failed, retrying: {error}");
                continue;
            }
        };
        if let Err(error) = handle(&client, &pod).await {
            eprintln!(
                "test-kubelet: {}/{}: {error}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            );
        }
    }
    Ok(())
}

async fn handle(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        return match api
            .delete(
                &pod.name_any(),
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error),
        };
    }
    let ready = !never_ready(pod);
    let status = pod.status.as_ref();
    let reported_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    if running && reported_ready == Some(ready) {
        return Ok(());
    }
    let now = Timestamp::now().to_string();
    let flag = if ready { "True" } else { "False" };
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("test-kubelet://{}", c.image.clone().unwrap_or_default()),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let patch = json!({
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": pod_ip(pod),
            "podIPs": [{"ip": pod_ip(pod)}],
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
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

fn never_ready(pod: &Pod) -> bool {
    let annotated = pod
        .annotations()
        .get(NEVER_READY_ANNOTATION)
        .is_some_and(|v| v == "true");
    let tagged = pod.spec.iter().flat_map(|s| s.containers.iter()).any(|c| {
        c.image
            .as_deref()
            .is_some_and(|i| i.ends_with(":never-ready"))
    });
    annotated || tagged
}

fn pod_ip(pod: &Pod) -> String {
    let mut hasher = DefaultHasher::new();
    pod.uid().unwrap_or_default().hash(&mut hasher);
    let bits = hasher.finish();
    format!(
        "10.{}.{}.{}",
        64 + (bits % 64),
        (bits >> 8) % 256,
        1 + (bits >> 16) % 254
    )
}
