//! The local control plane itself: real controller-manager, test kubelet, real Prometheus.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use ramp_test_support::{MetricsTarget, Prometheus, scalar, wait_until};

#[tokio::test]
async fn replica_set_pods_become_available_and_are_garbage_collected() -> anyhow::Result<()> {
    let env = common::Env::without_controller("cluster").await?;
    env.apply(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: plain}
spec:
  replicas: 3
  selector: {matchLabels: {app: plain}}
  template:
    metadata: {labels: {app: plain}}
    spec: {containers: [{name: c, image: "nginx:1"}]}
"#,
    )
    .await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until("3 available replicas", common::TIMEOUT, || async {
        let rs = replica_sets.get("plain").await?;
        Ok((rs.status.and_then(|s| s.available_replicas) == Some(3)).then_some(()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let listed = pods
        .list(&ListParams::default().labels("app=plain"))
        .await?;
    assert_eq!(listed.items.len(), 3);
    for pod in &listed.items {
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_some());
    }
    replica_sets
        .delete("plain", &DeleteParams::background())
        .await?;
    wait_until("pods garbage-collected", common::TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=plain"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn never_ready_pods_stay_unavailable() -> anyhow::Result<()> {
    let env = common::Env::without_controller("notready").await?;
    env.apply(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: broken}
spec:
  replicas: 2
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec: {containers: [{name: c, image: "nginx:never-ready"}]}
"#,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until(
        "pods reported Running but not Ready",
        common::TIMEOUT,
        || async {
            let listed = pods
                .list(&ListParams::default().labels("app=broken"))
                .await?;
            // Running, with the kubelet's explicit Ready=False: the pod's
            // readiness has been decided, not merely not reported yet.
            let not_ready = listed
                .items
                .iter()
                .filter(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "False")
                        })
                })
                .count();
            Ok((not_ready == 2).then_some(()))
        },
    )
    .await?;
    // Once the ReplicaSet controller has counted both Running pods, its
    // availability reflects their decided readiness.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    let rs = wait_until(
        "the ReplicaSet to count both pods",
        common::TIMEOUT,
        || async {
            let rs = replica_sets.get("broken").await?;
            let status = rs.status.clone().unwrap_or_default();
            Ok(
                (status.replicas == 2 && status.observed_generation == rs.metadata.generation)
                    .then_some(status),
            )
        },
    )
    .await?;
    assert_eq!(rs.ready_replicas.unwrap_or(0), 0);
    assert_eq!(rs.available_replicas.unwrap_or(0), 0);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn prometheus_returns_the_value_the_test_set() -> anyhow::Result<()> {
    let target = MetricsTarget::start().await?;
    target.set("ramp_test_value{service=\"web\"}", 0.25);
    let prometheus = Prometheus::start(&[target.addr]).await?;
    let value = wait_until(
        "Prometheus to report 0.25",
        Duration::from_secs(30),
        || async {
            Ok(
                scalar(&prometheus.query("ramp_test_value{service=\"web\"}").await?)
                    .filter(|v| *v == 0.25),
            )
        },
    )
    .await?;
    assert_eq!(value, 0.25);
    target.set("ramp_test_value{service=\"web\"}", 0.75);
    wait_until(
        "Prometheus to report the new value",
        Duration::from_secs(30),
        || async {
            Ok(scalar(&prometheus.query("sum(ramp_test_value)").await?).filter(|v| *v == 0.75))
        },
    )
    .await?;
    prometheus.stop().await;
    Ok(())
}
