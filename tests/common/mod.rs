//! Shared harness for the end-to-end tests: each test gets its own namespace
//! on the local control plane and its own `ramp-controller` process scoped to
//! that namespace, so tests run in parallel without seeing each other.
#![allow(dead_code)]

pub mod analysis;
pub mod invariants;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use ramp::api::{AnalysisRun, POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase};
use ramp_test_support::{
    TestNamespace, cluster_client, free_port, kubeconfig_path, repo_root, wait_until,
};
use tokio::process::{Child, Command};

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Env {
    pub client: Client,
    pub ns: String,
    namespace: Option<TestNamespace>,
    controller: Option<ControllerProcess>,
    extra_env: Vec<(String, String)>,
}

impl Env {
    /// Namespace plus a running controller.
    pub async fn start(prefix: &str) -> anyhow::Result<Env> {
        let mut env = Env::without_controller(prefix).await?;
        env.start_controller().await?;
        Ok(env)
    }

    pub async fn without_controller(prefix: &str) -> anyhow::Result<Env> {
        let client = cluster_client().await?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.get_opt("rollouts.ramp.dev")
            .await?
            .ok_or_else(|| anyhow!("the Ramp CRDs are not installed on the local cluster; run `make cluster-up` (it installs crds/)"))?;
        let namespace = TestNamespace::create(&client, prefix).await?;
        Ok(Env {
            client,
            ns: namespace.name.clone(),
            namespace: Some(namespace),
            controller: None,
            extra_env: Vec::new(),
        })
    }

    pub fn set_controller_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.into(), value.into()));
    }

    pub fn log_path(&self, what: &str) -> PathBuf {
        let dir = repo_root().join("target/e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{}-{what}.log", self.ns))
    }

    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        let process = ControllerProcess::spawn(
            self,
            &kubeconfig_path(),
            "controller",
            &["--leader-elect=false".to_string()],
        )
        .await?;
        process.wait_ready().await?;
        self.controller = Some(process);
        Ok(())
    }

    /// Kills the controller the hard way, as a crash would.
    pub async fn kill_controller(&mut self) {
        if let Some(ControllerProcess { mut child, .. }) = self.controller.take() {
            let _ = child.kill().await;
        }
    }

    /// Port of the running controller's /metrics, /healthz and /readyz.
    pub fn metrics_port(&self) -> u16 {
        self.controller
            .as_ref()
            .map(|c| c.metrics_port)
            .unwrap_or(0)
    }

    /// Applies a canary Rollout and its Services and waits until it is Healthy.
    pub async fn deploy_canary(
        &self,
        name: &str,
        replicas: i32,
        image: &str,
        steps: &str,
    ) -> anyhow::Result<()> {
        self.apply(&canary_yaml(name, replicas, image, steps))
            .await?;
        self.wait_phase(name, RolloutPhase::Healthy).await?;
        Ok(())
    }

    /// `kubectl apply` of a YAML document stream into the test namespace.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let output = self.kubectl_with_input(&["apply", "-f", "-"], yaml).await?;
        if !output.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_with_input(args, "").await
    }

    async fn kubectl_with_input(&self, args: &[&str], input: &str) -> anyhow::Result<Output> {
        use tokio::io::AsyncWriteExt;
        // kubectl refuses flags before a plugin name, so the kubeconfig comes
        // from the environment and the namespace goes last.
        let explicit = args
            .iter()
            .any(|a| *a == "-n" || a.starts_with("--namespace"));
        let namespace = if explicit {
            Vec::new()
        } else {
            vec![format!("--namespace={}", self.ns)]
        };
        let mut child = Command::new("kubectl")
            .args(args)
            .args(namespace)
            .env("KUBECONFIG", kubeconfig_path())
            .env("PATH", plugin_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await?;
        }
        Ok(child.wait_with_output().await?)
    }

    /// A kubeconfig that authenticates as `service_account` with a fresh token.
    pub async fn service_account_kubeconfig(
        &self,
        service_account: &str,
    ) -> anyhow::Result<tempfile::NamedTempFile> {
        let output = self
            .kubectl(&["create", "token", service_account, "--duration=1h"])
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "kubectl create token: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let admin = std::fs::read_to_string(kubeconfig_path())?;
        let server = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .ok_or_else(|| anyhow!("no server in the admin kubeconfig"))?
            .to_string();
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(
            file.path(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: {token}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
            ),
        )?;
        Ok(file)
    }

    pub fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn rollout(&self, name: &str) -> anyhow::Result<Rollout> {
        Ok(self.rollouts().get(name).await?)
    }

    /// Waits until `check` holds for the rollout; the error shows its last status.
    pub async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Rollout) -> bool,
    ) -> anyhow::Result<Rollout> {
        self.wait_rollout_for(name, what, TIMEOUT, check).await
    }

    pub async fn wait_rollout_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Rollout) -> bool,
    ) -> anyhow::Result<Rollout> {
        let api = self.rollouts();
        let result = wait_until(what, timeout, || async {
            let rollout = api.get(name).await?;
            Ok(check(&rollout).then_some(rollout))
        })
        .await;
        match result {
            Ok(rollout) => Ok(rollout),
            Err(error) => {
                let status = api
                    .get(name)
                    .await
                    .ok()
                    .and_then(|r| r.status)
                    .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
                bail!(
                    "{error}\nrollout status: {}\ncontroller log: {}",
                    status.unwrap_or_default(),
                    self.log_path("controller").display()
                )
            }
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: RolloutPhase) -> anyhow::Result<Rollout> {
        let observed = |r: &Rollout| {
            r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation
        };
        self.wait_rollout(name, &format!("rollout {name} to be {phase:?}"), |r| {
            observed(r) && r.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    /// (spec replicas, available replicas) per container image of the rollout's ReplicaSets.
    pub async fn replicas_by_image(&self) -> anyhow::Result<BTreeMap<String, (i32, i32)>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        let mut counts = BTreeMap::new();
        for rs in api
            .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await?
        {
            let image = rs
                .spec
                .as_ref()
                .and_then(|s| {
                    s.template
                        .as_ref()?
                        .spec
                        .as_ref()?
                        .containers
                        .first()?
                        .image
                        .clone()
                })
                .unwrap_or_default();
            let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let available = rs
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            counts.insert(image, (spec, available));
        }
        Ok(counts)
    }

    /// Waits until each image's ReplicaSet has `count` pods, all available.
    pub async fn wait_replicas(&self, what: &str, expected: &[(&str, i32)]) -> anyhow::Result<()> {
        self.wait_counts(what, expected, |(spec, available), count| {
            spec == count && available == count
        })
        .await
    }

    /// Waits until each image's ReplicaSet asks for `count` pods, available
    /// or not (for pods the test kubelet never makes ready).
    pub async fn wait_scaled(&self, what: &str, expected: &[(&str, i32)]) -> anyhow::Result<()> {
        self.wait_counts(what, expected, |(spec, _), count| spec == count)
            .await
    }

    /// Waits until `matches((spec, available), count)` holds for every
    /// expected image; the error shows what the ReplicaSets had.
    async fn wait_counts(
        &self,
        what: &str,
        expected: &[(&str, i32)],
        matches: impl Fn((i32, i32), i32) -> bool,
    ) -> anyhow::Result<()> {
        let result = wait_until(what, TIMEOUT, || async {
            let counts = self.replicas_by_image().await?;
            let all = expected.iter().all(|(image, count)| {
                matches(counts.get(*image).copied().unwrap_or((0, 0)), *count)
            });
            Ok(all.then_some(()))
        })
        .await;
        if let Err(error) = result {
            bail!(
                "{error}; ReplicaSets (image: spec/available): {:?}\ncontroller log: {}",
                self.replicas_by_image().await?,
                self.log_path("controller").display()
            );
        }
        Ok(())
    }

    /// What `kubectl scale` (or an HPA) writes: spec.replicas.
    pub async fn scale(&self, rollout: &str, replicas: i32) -> anyhow::Result<()> {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        self.rollouts()
            .patch(
                rollout,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Every ReplicaSet of the namespace with what a write by the controller
    /// would change: spec generation, labels and annotations.
    pub async fn replica_set_versions(
        &self,
    ) -> anyhow::Result<
        BTreeMap<
            String,
            (
                Option<i64>,
                BTreeMap<String, String>,
                BTreeMap<String, String>,
            ),
        >,
    > {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|rs| {
                (
                    rs.name_any(),
                    (
                        rs.metadata.generation,
                        rs.metadata.labels.unwrap_or_default(),
                        rs.metadata.annotations.unwrap_or_default(),
                    ),
                )
            })
            .collect())
    }

    pub async fn replica_set_count(&self) -> anyhow::Result<usize> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(api
            .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await?
            .items
            .len())
    }

    pub async fn selector(&self, service: &str) -> anyhow::Result<Option<String>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.ns);
        let svc = api.get(service).await?;
        Ok(svc
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL).cloned()))
    }

    /// `kubectl ramp ARGS` through kubectl's plugin discovery; its stdout,
    /// or an error with everything it printed when it exits non-zero.
    pub async fn ramp_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ramp"];
        full.extend_from_slice(args);
        let output = self.kubectl(&full).await?;
        anyhow::ensure!(
            output.status.success(),
            "kubectl ramp {args:?} exited {:?}: {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Waits until the Service selects `hash`: a write the controller
    /// skipped on a stale Service cache lands one watch event later.
    pub async fn wait_selector(&self, service: &str, hash: &str) -> anyhow::Result<()> {
        wait_until(
            &format!("Service {service} to select {hash}"),
            TIMEOUT,
            || async { Ok((self.selector(service).await?.as_deref() == Some(hash)).then_some(())) },
        )
        .await
    }

    /// The pod-template hash of the ReplicaSet running `image`.
    pub async fn hash_of(&self, image: &str) -> anyhow::Result<String> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        for rs in api
            .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await?
        {
            let runs_image = rs
                .spec
                .as_ref()
                .and_then(|s| {
                    s.template
                        .as_ref()?
                        .spec
                        .as_ref()?
                        .containers
                        .first()?
                        .image
                        .clone()
                })
                .is_some_and(|i| i == image);
            if runs_image {
                return rs
                    .labels()
                    .get(POD_TEMPLATE_HASH_LABEL)
                    .cloned()
                    .ok_or_else(|| anyhow!("ReplicaSet without hash"));
            }
        }
        bail!("no ReplicaSet runs {image}")
    }

    pub async fn set_image(&self, rollout: &str, image: &str) -> anyhow::Result<()> {
        // A JSON patch of the first container's image only: a merge patch of
        // a custom resource replaces the whole containers list, which would
        // drop ports and everything else the test wrote.
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}
        ]))?;
        self.rollouts()
            .patch(
                rollout,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Json::<()>(patch),
            )
            .await?;
        Ok(())
    }

    /// What `kubectl ramp promote` writes: clear the pause conditions.
    pub async fn promote(&self, name: &str) -> anyhow::Result<()> {
        self.patch_status(
            name,
            serde_json::json!({"status": {"pauseConditions": null}}),
        )
        .await
    }

    pub async fn set_abort(&self, name: &str, abort: bool) -> anyhow::Result<()> {
        self.patch_status(name, serde_json::json!({"status": {"abort": abort}}))
            .await
    }

    pub async fn patch_status(&self, name: &str, patch: serde_json::Value) -> anyhow::Result<()> {
        self.rollouts()
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    pub async fn analysis_runs(&self) -> anyhow::Result<Vec<AnalysisRun>> {
        let api: Api<AnalysisRun> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    pub async fn event_reasons(&self) -> anyhow::Result<Vec<String>> {
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect())
    }

    /// Waits until Events with every one of `reasons` exist in the test
    /// namespace; the error lists the reasons that were seen.
    pub async fn wait_events(&self, reasons: &[&str]) -> anyhow::Result<()> {
        let result = wait_until(&format!("Events {reasons:?}"), TIMEOUT, || async {
            let seen = self.event_reasons().await?;
            Ok(reasons
                .iter()
                .all(|wanted| seen.iter().any(|r| r == wanted))
                .then_some(()))
        })
        .await;
        if let Err(error) = result {
            bail!("{error}; Events seen: {:?}", self.event_reasons().await?);
        }
        Ok(())
    }

    /// Kills the local API server and starts it again (tests/cluster/restart-apiserver.sh);
    /// returns once it answers /readyz.
    pub async fn restart_api_server(&self) -> anyhow::Result<()> {
        let script = repo_root().join("tests/cluster/restart-apiserver.sh");
        let output = Command::new(&script).output().await?;
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Waits until an AnalysisRun for the ReplicaSet running `image` has a
    /// successful measurement; returns the run's name.
    pub async fn wait_measured(&self, image: &str) -> anyhow::Result<String> {
        wait_until(
            &format!("a successful measurement for {image}"),
            TIMEOUT,
            || async {
                let hash = self.hash_of(image).await?;
                Ok(self.analysis_runs().await?.into_iter().find_map(|run| {
                    let measured = run.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&hash)
                        && run
                            .status
                            .as_ref()?
                            .metric_results
                            .iter()
                            .any(|m| m.successful >= 1);
                    measured.then(|| run.name_any())
                }))
            },
        )
        .await
    }

    pub async fn cleanup(mut self) {
        self.kill_controller().await;
        // With no controller left to hand routes back, a routed Rollout's
        // finalizer would hold the namespace in Terminating.
        if let Ok(rollouts) = self.rollouts().list(&ListParams::default()).await {
            let clear = serde_json::json!({"metadata": {"finalizers": null}});
            for rollout in rollouts
                .items
                .iter()
                .filter(|r| r.metadata.finalizers.is_some())
            {
                let _ = self
                    .rollouts()
                    .patch(
                        &rollout.name_any(),
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&clear),
                    )
                    .await;
            }
        }
        if let Some(namespace) = self.namespace.take() {
            namespace.cleanup().await;
        }
    }
}

/// Objects a test created outside its namespace (cluster scope, or
/// `ramp-system`), deleted when the guard drops, so a failing test does not
/// leave them behind for the next run either.
pub struct LeftoverGuard {
    manifests: String,
}

impl LeftoverGuard {
    /// `manifests` is a YAML stream of the objects to delete. Custom resource
    /// definitions are dropped from it: every other test needs them.
    pub fn new(manifests: &str) -> Self {
        let kept: Vec<&str> = manifests
            .split("\n---")
            .filter(|doc| !doc.contains("kind: CustomResourceDefinition"))
            .filter(|doc| doc.contains("kind:"))
            .collect();
        LeftoverGuard {
            manifests: kept.join("\n---\n"),
        }
    }
}

impl Drop for LeftoverGuard {
    fn drop(&mut self) {
        use std::io::Write;
        let child = std::process::Command::new("kubectl")
            .args(["delete", "--ignore-not-found", "--wait=false", "-f", "-"])
            .env("KUBECONFIG", kubeconfig_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(self.manifests.as_bytes());
            }
            let _ = child.wait();
        }
    }
}

/// PATH with the freshly built `kubectl-ramp` first, for kubectl's plugin discovery.
/// Writes a test's measurements to `target/e2e/<name>` (and prints them),
/// for the figures a closing note or README quotes.
pub fn write_report(name: &str, text: &str) {
    let dir = repo_root().join("target/e2e");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(name), text);
    println!("{text}");
}

pub fn plugin_path() -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-ramp"));
    let dir = bin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

pub fn phase(rollout: &Rollout) -> Option<RolloutPhase> {
    rollout.status.as_ref().and_then(|s| s.phase)
}

/// A Service plus a canary Rollout in one YAML stream.
pub fn canary_yaml(name: &str, replicas: i32, image: &str, steps: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-stable}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}-canary}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
  strategy:
    canary:
      canaryService: {name}-canary
      stableService: {name}-stable
      steps: {steps}
"#
    )
}

pub fn blue_green_yaml(name: &str, replicas: i32, image: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}-active}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}-preview}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
  strategy:
    blueGreen:
      activeService: {name}-active
      previewService: {name}-preview
      {extra}
"#
    )
}

/// A `ramp-controller` process scoped to a test namespace.
pub struct ControllerProcess {
    pub child: Child,
    pub metrics_port: u16,
}

impl ControllerProcess {
    pub async fn spawn(
        env: &Env,
        kubeconfig: &std::path::Path,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut scoped = vec![format!("--namespace={}", env.ns)];
        scoped.extend_from_slice(args);
        Self::spawn_with_args(env, kubeconfig, name, &scoped).await
    }

    /// Like `spawn`, with exactly `args` (plus kubeconfig and a free
    /// metrics port): the caller says which namespace, if any.
    pub async fn spawn_with_args(
        env: &Env,
        kubeconfig: &std::path::Path,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let metrics_port = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.log_path(name))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ramp-controller"));
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--http-address=127.0.0.1:{metrics_port}"))
            .args(args)
            .env("RAMP_LOG_LEVEL", "info,ramp=debug")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (key, value) in &env.extra_env {
            command.env(key, value);
        }
        let child = command.spawn().context("starting ramp-controller")?;
        Ok(ControllerProcess {
            child,
            metrics_port,
        })
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        wait_until("controller /readyz", TIMEOUT, || {
            let url = url.clone();
            async move {
                Ok(reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await
    }

    /// API requests this controller saw fail or be forbidden, as counted
    /// in its /metrics (for running it under a restricted role).
    pub async fn failed_requests(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .metrics()
            .await?
            .lines()
            .filter(|l| {
                l.starts_with("ramp_kube_requests_total")
                    && (l.contains("outcome=\"error\"") || l.contains("outcome=\"forbidden\""))
            })
            .map(String::from)
            .collect())
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
                .await?
                .text()
                .await?,
        )
    }

    /// Whether /metrics reports this process as leader. An unreachable
    /// endpoint or a missing gauge is an error, not a "no".
    pub async fn is_leader(&self) -> anyhow::Result<bool> {
        let metrics = self.metrics().await?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("ramp_leader "))
            .map(|value| value.trim() == "1")
            .ok_or_else(|| anyhow!("/metrics has no ramp_leader gauge:\n{metrics}"))
    }
}
