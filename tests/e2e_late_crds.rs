//! Route CRDs installed after the controller started (issue 13), in a test
//! binary of its own because it removes the Istio CRDs from the cluster for a
//! while: a Rollout naming a VirtualService is InvalidSpec while the kind does
//! not exist, and routes normally once the CRDs are installed, with no
//! controller restart.

mod common;

use common::Env;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use ramp::api::RolloutPhase;
use ramp_test_support::{kubeconfig_path, repo_root, wait_until};

const ISTIO_CRDS: [&str; 2] = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
];

/// Puts the routing CRDs back however the test ends.
struct ReinstallOnDrop;

impl Drop for ReinstallOnDrop {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(repo_root().join("tests/cluster/install-routing-crds.sh"))
                .arg(kubeconfig_path())
                .status();
    }
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{port: 80}]}
"#;

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - name: primary
    route:
    - {destination: {host: shop, subset: stable}, weight: 100}
    - {destination: {host: shop, subset: canary}, weight: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop}
spec:
  host: shop
  subsets:
  - {name: stable, labels: {app: shop}}
  - {name: canary, labels: {app: shop}}
"#;

const ROLLOUT: &str = r#"
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: app, image: "shop:1"}]}
  strategy:
    canary:
      trafficRouting:
        istio:
          virtualService: {name: shop, routes: [primary]}
          destinationRule: {name: shop, canarySubsetName: canary, stableSubsetName: stable}
      steps: [{setWeight: 50}, {pause: {}}]
"#;

#[tokio::test]
async fn route_crds_installed_after_startup_are_picked_up_without_a_restart() -> anyhow::Result<()>
{
    let _reinstall = ReinstallOnDrop;
    let mut env = Env::without_controller("late-crds").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for name in ISTIO_CRDS {
        crds.delete(name, &DeleteParams::default()).await?;
    }
    wait_until("the Istio CRDs to be gone", common::TIMEOUT, || async {
        for name in ISTIO_CRDS {
            if crds.get_opt(name).await?.is_some() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    env.set_controller_env("RAMP_ROUTE_DISCOVERY_SECONDS", "1");
    env.start_controller().await?;
    env.apply(SERVICE).await?;
    env.apply(ROLLOUT).await?;
    env.wait_rollout(
        "shop",
        "InvalidSpec: the VirtualService kind is not there",
        |r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "InvalidSpec"
                        && c.message
                            .as_deref()
                            .is_some_and(|m| m.contains("VirtualService"))
                })
            })
        },
    )
    .await?;

    let installed =
        tokio::process::Command::new(repo_root().join("tests/cluster/install-routing-crds.sh"))
            .arg(kubeconfig_path())
            .status()
            .await?;
    anyhow::ensure!(installed.success(), "reinstalling the routing CRDs failed");
    env.apply(ROUTES).await?;
    env.wait_phase("shop", RolloutPhase::Healthy).await?;
    env.set_image("shop", "shop:2").await?;
    let rollout = env
        .wait_rollout("shop", "weight 50 verified on the VirtualService", |r| {
            r.status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|c| c.verified_weight == Some(50))
        })
        .await?;
    assert_eq!(
        rollout.status.and_then(|s| s.phase),
        Some(RolloutPhase::Paused)
    );
    env.cleanup().await;
    Ok(())
}
