//! Security (issue 12): analysis reads Secrets only in its own namespace,
//! ClusterAnalysisTemplates read none unless the operator allows it, the
//! operator's address allow-list holds, and no Secret value reaches status,
//! Events or the controller's log.

mod common;

use common::analysis::Metrics;
use common::{Env, LeftoverGuard};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use ramp::api::{AnalysisPhase, AnalysisRun, RolloutPhase};
use ramp_test_support::{TestNamespace, free_port, wait_until};

fn secret(name: &str, value: &str) -> anyhow::Result<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"token": value},
    }))?)
}

/// A run whose one metric takes its `token` argument from `secret_name` and
/// sends it both in the query and as a bearer token.
fn run_yaml(name: &str, address: &str, secret_name: &str) -> String {
    format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisRun
metadata: {{name: {name}}}
spec:
  args:
  - name: token
    valueFrom: {{secretKeyRef: {{name: {secret_name}, key: token}}}}
  metrics:
  - name: errors
    successCondition: "result[0] < 0.05"
    consecutiveErrorLimit: 0
    provider:
      prometheus:
        address: {address}
        query: sum(app_errors_ratio{{service="web", token!="{{{{args.token}}}}"}})
        authentication:
          bearerToken: {{name: {secret_name}, key: token}}
"#
    )
}

async fn finished_run(env: &Env, name: &str) -> anyhow::Result<AnalysisRun> {
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until(
        &format!("AnalysisRun {name} to finish"),
        common::TIMEOUT,
        || async {
            Ok(api.get_opt(name).await?.filter(|run| {
                run.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(AnalysisPhase::is_completed)
            }))
        },
    )
    .await
}

fn phase_and_message(run: &AnalysisRun) -> (Option<AnalysisPhase>, String) {
    let status = run.status.as_ref();
    let message = status
        .and_then(|s| s.metric_results.first())
        .and_then(|m| m.measurements.last())
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    (status.and_then(|s| s.phase), message)
}

#[tokio::test]
async fn secrets_stay_in_their_namespace_and_out_of_every_report() -> anyhow::Result<()> {
    let metrics = Metrics::start(0.0).await?;
    let prometheus = &metrics.prometheus;
    let allowed = prometheus
        .url
        .strip_prefix("http://")
        .unwrap_or(&prometheus.url)
        .to_string();
    let mut env = Env::without_controller("security").await?;
    env.set_controller_env("RAMP_METRIC_ADDRESS_ALLOW", &allowed);
    env.start_controller().await?;

    let value = format!("s3cret-{}", env.ns);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .create(&PostParams::default(), &secret("prom-auth", &value)?)
        .await?;
    // The same name exists only in another namespace for the second run.
    let other = TestNamespace::create(&env.client, "security-other").await?;
    let other_value = format!("other-{}", other.name);
    let elsewhere: Api<Secret> = Api::namespaced(env.client.clone(), &other.name);
    elsewhere
        .create(&PostParams::default(), &secret("elsewhere", &other_value)?)
        .await?;

    let denied_address = format!("http://127.0.0.1:{}", free_port()?);
    env.apply(&run_yaml("own-namespace", &prometheus.url, "prom-auth"))
        .await?;
    env.apply(&run_yaml("other-namespace", &prometheus.url, "elsewhere"))
        .await?;
    env.apply(&run_yaml("not-allowed", &denied_address, "prom-auth"))
        .await?;

    let own = finished_run(&env, "own-namespace").await?;
    assert_eq!(
        phase_and_message(&own).0,
        Some(AnalysisPhase::Successful),
        "{:?}",
        own.status
    );
    let resolved = own
        .status
        .as_ref()
        .and_then(|s| s.metric_results.first())
        .and_then(|m| m.resolved_query.clone())
        .unwrap_or_default();
    assert_eq!(
        resolved,
        "sum(app_errors_ratio{service=\"web\", token!=\"*****\"})"
    );

    let (phase, message) = phase_and_message(&finished_run(&env, "other-namespace").await?);
    assert_eq!(phase, Some(AnalysisPhase::Error));
    assert!(
        message.contains(&format!("Secret {}/elsewhere not found", env.ns)),
        "{message}"
    );

    let (phase, message) = phase_and_message(&finished_run(&env, "not-allowed").await?);
    assert_eq!(phase, Some(AnalysisPhase::Error));
    assert!(
        message.contains(&format!(
            "{denied_address:?} is not in the controller's allow-list ({allowed})"
        )),
        "{message}"
    );

    // A ClusterAnalysisTemplate that reads a Secret is refused before any run exists.
    let template_name = format!("{}-shared", env.ns);
    let cluster_template = format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {{name: {template_name}}}
spec:
  args:
  - name: token
    valueFrom: {{secretKeyRef: {{name: prom-auth, key: token}}}}
  metrics:
  - name: errors
    successCondition: "result[0] < 0.05"
    provider:
      prometheus:
        address: {}
        query: sum(app_errors_ratio{{token!="{{{{args.token}}}}"}})
"#,
        prometheus.url
    );
    let _guard = LeftoverGuard::new(&cluster_template);
    env.apply(&cluster_template).await?;
    let step = format!(
        "[{{setWeight: 50}}, {{analysis: {{templates: [{{templateName: {template_name}, clusterScope: true}}]}}}}]"
    );
    env.deploy_canary("web", 2, "web:1", &step).await?;
    env.set_image("web", "web:2").await?;
    let aborted = env.wait_phase("web", RolloutPhase::Degraded).await?;
    let message = aborted
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!(
            "ClusterAnalysisTemplate {template_name:?} reads Secret \"prom-auth\""
        )) && message.contains("--allow-cluster-template-secrets"),
        "{message}"
    );
    env.wait_replicas("back on stable", &[("web:2", 0), ("web:1", 2)])
        .await?;
    assert!(
        env.analysis_runs().await?.iter().all(|r| !r
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .starts_with("web-")),
        "no run was created from the cluster template"
    );

    // Nothing the controller wrote or logged carries either Secret value.
    let mut reports = Vec::new();
    for run in env.analysis_runs().await? {
        reports.push(("AnalysisRun status", serde_json::to_string(&run.status)?));
    }
    reports.push(("Rollout status", serde_json::to_string(&aborted.status)?));
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    for event in events.list(&ListParams::default()).await?.items {
        reports.push(("Event", serde_json::to_string(&event)?));
    }
    reports.push((
        "controller log",
        std::fs::read_to_string(env.log_path("controller"))?,
    ));
    assert!(reports.len() > 5, "runs, Events and the log were read");
    for (what, text) in &reports {
        for secret in [&value, &other_value] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} leaks a Secret value: {text}"
            );
        }
    }
    other.cleanup().await;
    env.cleanup().await;
    metrics.prometheus.stop().await;
    Ok(())
}
