//! `kubectl ramp …` through the real /usr/bin/kubectl plugin discovery (issue 5).

mod common;

use common::{Env, canary_yaml};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use ramp::api::RolloutPhase;
use ramp_test_support::wait_until;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ramp(env: &Env, args: &[&str]) -> anyhow::Result<Run> {
    let mut full = vec!["ramp"];
    full.extend_from_slice(args);
    let output = env.kubectl(&full).await?;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

async fn ok(env: &Env, args: &[&str]) -> anyhow::Result<String> {
    env.ramp_ok(args).await
}

#[tokio::test]
async fn steering_a_canary_from_the_terminal() -> anyhow::Result<()> {
    let env = Env::start("plugin").await?;
    env.deploy_canary(
        "web",
        5,
        "web:1",
        "[{setWeight: 20}, {pause: {}}, {setWeight: 60}, {pause: {}}]",
    )
    .await?;
    let healthy = ok(&env, &["status", "web", "--timeout", "30s"]).await?;
    assert!(healthy.contains("Healthy"), "{healthy}");

    let changed = ok(&env, &["set", "image", "web", "app=web:2"]).await?;
    assert_eq!(changed.trim(), "rollout 'web' image updated (app=web:2)");
    env.wait_phase("web", RolloutPhase::Paused).await?;
    env.wait_replicas("20%", &[("web:2", 1), ("web:1", 4)])
        .await?;

    let shown = ok(&env, &["get", "rollout", "web", "--no-color"]).await?;
    for expected in [
        "Status:         ❚❚ Paused",
        "Step:         1/4",
        "SetWeight:    20",
        "web:2 (canary)",
        "web:1 (stable)",
        "# revision:2",
        "# revision:1",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
    assert_eq!(shown.matches("ReplicaSet").count(), 2, "{shown}");
    assert!(
        shown.matches("□ web-").count() >= 5,
        "pods listed:\n{shown}"
    );

    let listed = ok(&env, &["list", "rollouts"]).await?;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web") && l.contains("Canary") && l.contains("Paused")),
        "{listed}"
    );

    let promoted = ok(&env, &["promote", "web"]).await?;
    assert_eq!(promoted.trim(), "rollout 'web' promoted");
    env.wait_replicas("60%", &[("web:2", 3), ("web:1", 2)])
        .await?;

    let aborted = ok(&env, &["abort", "web"]).await?;
    assert_eq!(aborted.trim(), "rollout 'web' aborted");
    env.wait_replicas("back on stable", &[("web:2", 0), ("web:1", 5)])
        .await?;
    let degraded = ramp(&env, &["status", "web", "--timeout", "10s"]).await?;
    assert_ne!(degraded.code, 0, "status on a Degraded rollout must fail");
    assert!(degraded.stderr.contains("Degraded"), "{}", degraded.stderr);

    ok(&env, &["retry", "rollout", "web"]).await?;
    env.wait_phase("web", RolloutPhase::Paused).await?;
    ok(&env, &["promote", "web", "--full"]).await?;
    let done = ok(&env, &["status", "web", "--timeout", "60s"]).await?;
    assert!(done.trim_end().ends_with("Healthy"), "{done}");
    env.wait_replicas("fully promoted", &[("web:2", 5), ("web:1", 0)])
        .await?;

    let undone = ok(&env, &["undo", "web"]).await?;
    assert_eq!(undone.trim(), "rollout 'web' rolled back to revision 1");
    let image = env
        .rollout("web")
        .await?
        .spec
        .template
        .spec
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(image.as_deref(), Some("web:1"));
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn status_times_out_on_a_stuck_rollout() -> anyhow::Result<()> {
    let env = Env::start("plugin-stuck").await?;
    env.deploy_canary("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    ok(&env, &["set", "image", "web", "*=web:never-ready"]).await?;
    let stuck = ramp(&env, &["status", "web", "--timeout", "3s"]).await?;
    assert_ne!(stuck.code, 0);
    assert!(
        stuck.stderr.contains("did not become Healthy within"),
        "{}",
        stuck.stderr
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn mistakes_are_explained_and_change_nothing() -> anyhow::Result<()> {
    let env = Env::start("plugin-errors").await?;
    env.deploy_canary("web", 1, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .await?;
    let before = env.rollout("web").await?.metadata.resource_version;

    let cases: &[(&[&str], &str)] = &[
        (&["get", "rollout", "nope"], "kubectl ramp list rollouts"),
        (&["promote", "web"], "is not paused"),
        (
            &["set", "image", "web", "web:2"],
            "expected CONTAINER=IMAGE",
        ),
        (
            &["set", "image", "web", "sidecar=x:1"],
            "has no container \"sidecar\"",
        ),
        (
            &["get", "deployment", "web"],
            "unknown resource kind \"deployment\"",
        ),
        (&["abort", "web"], "no update in progress"),
        (&["undo", "web", "--to-revision", "9"], "has no revision 9"),
    ];
    for (args, expected) in cases {
        let run = ramp(&env, args).await?;
        assert_ne!(run.code, 0, "{args:?} should fail");
        assert!(
            run.stderr.contains(expected),
            "{args:?}: expected {expected:?} in {:?}",
            run.stderr
        );
    }
    assert_eq!(
        env.rollout("web").await?.metadata.resource_version,
        before,
        "nothing changed"
    );

    let unreachable = env
        .kubectl(&["ramp", "--kubeconfig", "/nonexistent", "list", "rollouts"])
        .await?;
    assert_ne!(unreachable.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the cluster"));
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn restart_replaces_every_pod() -> anyhow::Result<()> {
    let env = Env::start("plugin-restart").await?;
    env.deploy_canary("web", 3, "web:1", "[]").await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let original: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    // restartAt and creation timestamps have whole-second precision: a pod
    // created in the same second as restartAt counts as already restarted
    // (as in Argo), so wait until the clock has left the pods' second.
    let newest = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .max()
        .ok_or_else(|| anyhow::anyhow!("no pods"))?;
    wait_until(
        "the clock to pass the pods' creation second",
        common::TIMEOUT,
        || async {
            let now = jiff::Timestamp::now();
            Ok((now.as_second() > newest.as_second()).then_some(()))
        },
    )
    .await?;
    ok(&env, &["restart", "web"]).await?;
    env.wait_rollout("web", "restartedAt recorded", |r| {
        r.status
            .as_ref()
            .and_then(|s| s.restarted_at.as_ref())
            .is_some()
    })
    .await?;
    let replaced = wait_until("3 new pods running", common::TIMEOUT, || async {
        let now: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok((now.len() == 3).then_some(now))
    })
    .await?;
    assert!(
        replaced.iter().all(|p| !original.contains(p)),
        "old {original:?} new {replaced:?}"
    );
    env.wait_phase("web", RolloutPhase::Healthy).await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn lint_uses_the_controller_rules() -> anyhow::Result<()> {
    let env = Env::without_controller("plugin-lint").await?;
    let root = ramp_test_support::repo_root();
    let good = root.join("examples/canary-analysis.yaml");
    let out = ok(&env, &["lint", "-f", &good.display().to_string()]).await?;
    // The AnalysisTemplate and the Rollout; the two Services are not Ramp's.
    assert_eq!(out, format!("{}: 2 object(s) valid\n", good.display()));
    let bad = tempfile::NamedTempFile::new()?;
    std::fs::write(
        bad.path(),
        canary_yaml("web", 1, "web:1", "[{setWeight: 101}]"),
    )?;
    let run = ramp(&env, &["lint", "-f", &bad.path().display().to_string()]).await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stdout
            .contains("spec.strategy.canary.steps[0].setWeight: 101 is not a percentage"),
        "{}",
        run.stdout
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn convert_turns_an_argo_manifest_into_a_running_rollout() -> anyhow::Result<()> {
    let env = Env::start("plugin-convert").await?;
    // An Argo user's manifest: the same objects under argoproj.io, with
    // Argo's annotation prefix and an Argo CD annotation that must survive.
    let argo = canary_yaml("web", 2, "web:1", "[{setWeight: 50}, {pause: {}}]")
        .replace("ramp.dev/v1alpha1", "argoproj.io/v1alpha1")
        .replace(
            "metadata: {name: web}",
            "metadata: {name: web, annotations: {rollout.argoproj.io/owner: team-a, argocd.argoproj.io/sync-wave: \"2\"}}",
        );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &argo)?;
    let converted = ok(&env, &["convert", "-f", &file.path().display().to_string()]).await?;
    env.apply(&converted).await?;
    let rollout = env.wait_phase("web", RolloutPhase::Healthy).await?;
    let annotations = rollout.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("rollout.ramp.dev/owner")
            .map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        annotations
            .get("argocd.argoproj.io/sync-wave")
            .map(String::as_str),
        Some("2")
    );
    env.wait_replicas("running", &[("web:1", 2)]).await?;

    // What Ramp cannot do is reported, and the exit code says so.
    let routed = argo.replace(
        "steps: [{setWeight: 50}, {pause: {}}]",
        "steps: [{setWeight: 50}, {pause: {}}]\n      trafficRouting: {nginx: {stableIngress: web}}",
    );
    std::fs::write(file.path(), &routed)?;
    let run = ramp(&env, &["convert", "-f", &file.path().display().to_string()]).await?;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "spec.strategy.canary.trafficRouting.nginx: the nginx traffic router is not supported"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("apiVersion: ramp.dev/v1alpha1"),
        "the conversion is still printed"
    );
    env.cleanup().await;
    Ok(())
}
