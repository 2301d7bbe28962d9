//! The Helm chart (`deploy/helm/ramp`), checked with the real Helm built
//! from its Go module by `tests/cluster/build.sh` (`make deps`): lint and
//! template in both scopes, the same RBAC rules as the kustomize manifests,
//! and on the local cluster an install whose ServiceAccount runs a canary to
//! Healthy, an upgrade with changed values and an uninstall that leaves no
//! cluster-scoped object behind but the CRDs.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams};
use ramp::api::RolloutPhase;
use ramp_test_support::{kubeconfig_path, repo_root, wait_until};
use serde_json::Value;

use common::{ControllerProcess, Env};

fn helm_binary() -> PathBuf {
    repo_root().join("target/cluster/bin/helm")
}

fn chart() -> String {
    repo_root().join("deploy/helm/ramp").display().to_string()
}

/// Runs helm; its stdout, or an error with what it printed.
fn helm(args: &[&str]) -> anyhow::Result<String> {
    let binary = helm_binary();
    anyhow::ensure!(
        binary.exists(),
        "{} is missing; `make deps` builds Helm from its Go module",
        binary.display()
    );
    let output = std::process::Command::new(&binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .env("HELM_CACHE_HOME", repo_root().join("target/helm/cache"))
        .env("HELM_CONFIG_HOME", repo_root().join("target/helm/config"))
        .env("HELM_DATA_HOME", repo_root().join("target/helm/data"))
        .output()
        .context("running helm")?;
    if !output.status.success() {
        bail!(
            "helm {args:?} exited {:?}: {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `helm template` of the chart with `values` (`key=value` pairs).
fn render(values: &[&str]) -> anyhow::Result<Vec<Value>> {
    let chart = chart();
    let mut args = vec![
        "template",
        "ramp",
        chart.as_str(),
        "--namespace",
        "ramp-system",
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    let text = helm(&args)?;
    documents(&text)
}

fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut found = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            found.push(value);
        }
    }
    Ok(found)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// Every (apiGroup, resource, verb) a list of rules grants.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    found.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    found
}

/// The grants of every Role and ClusterRole in a YAML file of deploy/,
/// leader election left out (it is the same in both and checked apart).
fn deploy_grants(path: &str) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let text = std::fs::read_to_string(repo_root().join(path))?;
    Ok(role_grants(&documents(&text)?))
}

fn role_grants(objects: &[Value]) -> BTreeSet<(String, String, String)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .filter(|o| o["metadata"]["name"] != "ramp-leader-election")
        .flat_map(|o| grants(&o["rules"]))
        .collect()
}

fn container_args(objects: &[Value]) -> Vec<String> {
    of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

#[test]
fn chart_lints_in_both_scopes() -> anyhow::Result<()> {
    let chart = chart();
    for scope in ["scope=cluster", "scope=namespace"] {
        let said = helm(&["lint", "--strict", chart.as_str(), "--set", scope])?;
        assert!(said.contains("0 chart(s) failed"), "{said}");
    }
    Ok(())
}

#[test]
fn chart_grants_exactly_what_the_kustomize_manifests_grant() -> anyhow::Result<()> {
    let cluster = render(&[])?;
    assert_eq!(
        role_grants(&cluster),
        deploy_grants("deploy/clusterrole.yaml")?,
        "scope=cluster against deploy/clusterrole.yaml"
    );
    let namespaced = render(&["scope=namespace"])?;
    assert_eq!(
        role_grants(&namespaced),
        deploy_grants("deploy/namespaced/role.yaml")?,
        "scope=namespace against deploy/namespaced/role.yaml"
    );
    let lease = |objects: &[Value]| {
        objects
            .iter()
            .filter(|o| o["metadata"]["name"] == "ramp-leader-election" && o["kind"] == "Role")
            .flat_map(|o| grants(&o["rules"]))
            .collect::<BTreeSet<_>>()
    };
    let text = std::fs::read_to_string(repo_root().join("deploy/base/leader-election-role.yaml"))?;
    assert_eq!(lease(&cluster), lease(&documents(&text)?));
    Ok(())
}

#[test]
fn chart_renders_what_each_value_asks_for() -> anyhow::Result<()> {
    let defaults = render(&[])?;
    let kinds: BTreeSet<&str> = defaults.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    let deployment = of_kind(&defaults, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    // The image the kustomize manifests name: one release, one image.
    let kustomize = std::fs::read_to_string(repo_root().join("deploy/base/deployment.yaml"))?;
    let image = pod["containers"][0]["image"].as_str().unwrap_or_default();
    assert!(kustomize.contains(&format!("image: {image}")), "{image}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    let args = container_args(&defaults);
    assert!(
        args.contains(&"--leader-elect=true".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );

    let namespaced = render(&[
        "scope=namespace",
        "watchNamespace=apps",
        "replicaCount=1",
        "leaderElection.enabled=false",
        "logLevel=debug",
        "logFormat=text",
        "metricAddressAllow={prometheus.monitoring:9090,*.svc.cluster.local}",
        "extraArgs={--concurrency=4}",
        "serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "argocd.healthCheck.enabled=true",
        "resources.limits.memory=128Mi",
    ])?;
    let args = container_args(&namespaced);
    for expected in [
        "--namespace=apps",
        "--leader-elect=false",
        "--log-level=debug",
        "--log-format=text",
        "--metric-address-allow=prometheus.monitoring:9090,*.svc.cluster.local",
        "--concurrency=4",
    ] {
        assert!(
            args.contains(&expected.to_string()),
            "{expected} not in {args:?}"
        );
    }
    assert_eq!(
        of_kind(&namespaced, "Role")[0]["metadata"]["namespace"],
        "apps"
    );
    assert!(
        of_kind(&namespaced, "PodDisruptionBudget").is_empty(),
        "one replica, no budget"
    );
    assert_eq!(of_kind(&namespaced, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&namespaced, "NetworkPolicy").len(), 1);
    assert_eq!(
        of_kind(&namespaced, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
            ["limits"]["memory"],
        "128Mi"
    );
    let health = of_kind(&namespaced, "ConfigMap")[0];
    let lua =
        std::fs::read_to_string(repo_root().join("deploy/helm/ramp/files/argocd-health.lua"))?;
    assert_eq!(
        health["data"]["resource.customizations.health.ramp.dev_Rollout"]
            .as_str()
            .map(str::trim_end),
        Some(lua.trim_end()),
        "the chart ships the health check unchanged"
    );
    Ok(())
}

#[test]
fn chart_refuses_values_that_cannot_work() -> anyhow::Result<()> {
    for (values, said) in [
        (
            vec!["scope=everywhere"],
            "scope must be cluster or namespace",
        ),
        (vec!["logFormat=xml"], "logFormat must be json or text"),
        (
            vec!["leaderElection.enabled=false"],
            "replicaCount above 1 needs leaderElection.enabled",
        ),
    ] {
        let error = render(&values).expect_err("refused").to_string();
        assert!(error.contains(said), "{values:?}: {error}");
    }
    Ok(())
}

/// Uninstalls the release when the test ends, passed or not, so a failure
/// leaves no cluster-scoped objects for the next run.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn chart_installs_runs_a_canary_upgrades_and_uninstalls_cleanly() -> anyhow::Result<()> {
    let mut env = Env::without_controller("helm").await?;
    let ns = env.ns.clone();
    let release = Release {
        name: format!("r{}", ns.trim_start_matches("helm-")),
        namespace: ns.clone(),
    };
    let chart = chart();
    helm(&[
        "install",
        &release.name,
        chart.as_str(),
        "--namespace",
        &ns,
        "--set",
        "scope=namespace",
        "--set",
        "leaderElection.leaseDurationSeconds=5",
    ])?;
    let instance = format!("app.kubernetes.io/instance={}", release.name);
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    let labelled = ListParams::default().labels(&instance);
    assert_eq!(
        cluster_roles.list(&labelled).await?.items.len(),
        1,
        "only the cluster-wide reads"
    );

    // The installed controller, run as a local process (no container
    // runtime here) with the Deployment's own arguments under the chart's
    // ServiceAccount token.
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns);
    let installed = deployments.get("ramp-controller").await?;
    let args: Vec<String> = installed
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.starts_with("--http-address"))
        .collect();
    assert!(args.contains(&format!("--namespace={ns}")), "{args:?}");
    env.set_controller_env("POD_NAMESPACE", &ns);
    env.set_controller_env("POD_NAME", "ramp-controller-local");
    let kubeconfig = env.service_account_kubeconfig("ramp-controller").await?;
    let controller =
        ControllerProcess::spawn_with_args(&env, kubeconfig.path(), "helm-controller", &args)
            .await?;
    wait_until(
        "the chart's controller to lead",
        common::TIMEOUT,
        || async { Ok(controller.is_leader().await?.then_some(())) },
    )
    .await?;
    controller.wait_ready().await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    env.set_image("web", "web:2").await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.promote("web").await?;
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.wait_replicas("promoted", &[("web:2", 2), ("web:1", 0)])
        .await?;
    let refused = controller.failed_requests().await?;
    assert!(
        refused.is_empty(),
        "requests failed under the chart's RBAC: {refused:?}"
    );

    // Upgrade: one replica without leader election, debug logs, cluster-wide.
    helm(&[
        "upgrade",
        &release.name,
        chart.as_str(),
        "--namespace",
        &ns,
        "--set",
        "scope=cluster",
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "logLevel=debug",
    ])?;
    let upgraded = deployments.get("ramp-controller").await?;
    let spec = upgraded.spec.unwrap_or_default();
    assert_eq!(spec.replicas, Some(1));
    let args = spec
        .template
        .spec
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default();
    assert!(args.contains(&"--log-level=debug".to_string()), "{args:?}");
    assert!(
        args.contains(&"--leader-elect=false".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
    // The ServiceAccount may now read Rollouts everywhere.
    let subject = format!("system:serviceaccount:{ns}:ramp-controller");
    let can = env
        .kubectl(&[
            "auth",
            "can-i",
            "list",
            "rollouts.ramp.dev",
            "--all-namespaces",
            "--as",
            &subject,
        ])
        .await?;
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(env.client.clone(), &ns);
    assert!(
        pdbs.get_opt("ramp-controller").await?.is_none(),
        "one replica, no budget"
    );

    helm(&["uninstall", &release.name, "--namespace", &ns])?;
    assert!(cluster_roles.list(&labelled).await?.items.is_empty());
    assert!(cluster_bindings.list(&labelled).await?.items.is_empty());
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    for name in ["rollouts.ramp.dev", "analysisruns.ramp.dev"] {
        assert!(
            crds.get_opt(name).await?.is_some(),
            "{name} stays installed"
        );
    }
    drop(controller);
    env.cleanup().await;
    Ok(())
}
