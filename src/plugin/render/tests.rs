//! Golden tests: the rendered text is compared with files under
//! src/plugin/golden/. After an intended layout change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test --lib plugin::render` and review the diff.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

const NOW: &str = "2026-03-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().expect("valid time")
}

fn canary_rollout() -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-03-01T11:00:00Z"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:2"}]}},
            "strategy": {"canary": {"canaryService": "web-canary", "stableService": "web-stable",
                "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "5s"}}]}}},
        "status": {"phase": "Paused", "message": "CanaryPauseStep", "currentPodHash": "h2", "stableRS": "h1",
            "currentStepIndex": 1, "replicas": 5, "updatedReplicas": 1, "readyReplicas": 5, "availableReplicas": 5,
            "canary": {"weights": {"canary": {"weight": 20}, "stable": {"weight": 80}}}}
    }))
    .expect("fixture")
}

fn replica_set(hash: &str, revision: i64, image: &str, replicas: i32, created: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": format!("web-{hash}"), "namespace": "shop", "creationTimestamp": created,
            "labels": {POD_TEMPLATE_HASH_LABEL: hash}, "annotations": {REVISION_ANNOTATION: revision.to_string()}},
        "spec": {"replicas": replicas, "selector": {}, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"replicas": replicas, "availableReplicas": replicas}
    }))
    .expect("fixture")
}

fn pod(name: &str, hash: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-03-01T11:58:00Z", "labels": {POD_TEMPLATE_HASH_LABEL: hash}},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "image": "x", "imageID": "x"}]}
    }))
    .expect("fixture")
}

fn run(name: &str, hash: &str, phase: &str) -> AnalysisRun {
    let value: Value = json!({
        "apiVersion": "ramp.dev/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-03-01T11:59:00Z", "labels": {POD_TEMPLATE_HASH_LABEL: hash}},
        "spec": {"metrics": []},
        "status": {"phase": phase, "runSummary": {"count": 1, "successful": 2, "failed": 0, "inconclusive": 0, "error": 0}}
    });
    serde_json::from_value(value).expect("fixture")
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/plugin/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the rendered output; if the change is intended run `UPDATE_GOLDEN=1 cargo test --lib plugin::render` and review.\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn paused_canary_tree() {
    let rollout = canary_rollout();
    let stable = replica_set("h1", 1, "web:1", 4, "2026-03-01T11:00:00Z");
    let canary = replica_set("h2", 2, "web:2", 1, "2026-03-01T11:58:00Z");
    let pods = [
        pod("web-h1-aaaaa", "h1", true),
        pod("web-h1-bbbbb", "h1", true),
        pod("web-h2-ccccc", "h2", false),
    ];
    let runs = [run("web-h2-2-1", "h2", "Running")];
    let view = View {
        rollout: &rollout,
        replica_sets: vec![&stable, &canary],
        pods: pods.iter().collect(),
        runs: runs.iter().collect(),
        now: now(),
        color: false,
    };
    golden("get-canary-paused.txt", &render_rollout(&view));
}

#[test]
fn routed_canary_shows_verified_weight_and_routes() {
    let mut value = serde_json::to_value(canary_rollout()).expect("fixture");
    value["spec"]["strategy"]["canary"]["trafficRouting"] = json!({
        "managedRoutes": [{"name": "beta"}, {"name": "copy"}],
        "plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "web"}}
    });
    value["status"]["canary"] = json!({
        "weights": {"canary": {"weight": 20}, "stable": {"weight": 80}, "verified": false},
        "verifiedWeight": 10,
        "headerRoutes": [{"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}],
        "mirrorRoutes": [{"name": "copy", "percentage": 20, "match": [{"method": {"exact": "POST"}, "path": {"prefix": "/checkout"}}]}]
    });
    let rollout: Rollout = serde_json::from_value(value).expect("fixture");
    let stable = replica_set("h1", 1, "web:1", 5, "2026-03-01T11:00:00Z");
    let canary = replica_set("h2", 2, "web:2", 1, "2026-03-01T11:58:00Z");
    let view = View {
        rollout: &rollout,
        replica_sets: vec![&stable, &canary],
        pods: Vec::new(),
        runs: Vec::new(),
        now: now(),
        color: false,
    };
    golden("get-canary-routed.txt", &render_rollout(&view));
}

#[test]
fn blue_green_tree_with_scale_down_delay() {
    let mut rollout = canary_rollout();
    rollout.spec.strategy =
        serde_json::from_value(json!({"blueGreen": {"activeService": "a", "previewService": "p"}}))
            .expect("fixture");
    rollout.status = serde_json::from_value(
        json!({"phase": "Healthy", "currentPodHash": "h2", "stableRS": "h2",
        "replicas": 10, "updatedReplicas": 5, "readyReplicas": 10, "availableReplicas": 10,
        "blueGreen": {"activeSelector": "h2", "previewSelector": "h2"}}),
    )
    .expect("fixture");
    let mut old = replica_set("h1", 1, "web:1", 5, "2026-03-01T11:00:00Z");
    if let Some(annotations) = old.metadata.annotations.as_mut() {
        annotations.insert(
            SCALE_DOWN_DEADLINE_ANNOTATION.into(),
            "2026-03-01T12:00:20Z".into(),
        );
    }
    let new = replica_set("h2", 2, "web:2", 5, "2026-03-01T11:58:00Z");
    let view = View {
        rollout: &rollout,
        replica_sets: vec![&old, &new],
        pods: vec![],
        runs: vec![],
        now: now(),
        color: false,
    };
    golden("get-bluegreen-healthy.txt", &render_rollout(&view));
}

#[test]
fn list_table() {
    let canary = canary_rollout();
    let mut healthy = canary_rollout();
    healthy.metadata.name = Some("api".into());
    healthy.metadata.namespace = Some("team-b".into());
    healthy.status = serde_json::from_value(
        json!({"phase": "Healthy", "currentPodHash": "h1", "stableRS": "h1", "currentStepIndex": 4,
        "readyReplicas": 5, "availableReplicas": 5}),
    )
    .expect("fixture");
    golden(
        "list-all-namespaces.txt",
        &render_list(&[&canary, &healthy], true, false),
    );
    golden("list.txt", &render_list(&[&canary], false, false));
}

#[test]
fn colour_codes_do_not_break_alignment() {
    let plain = render_list(&[&canary_rollout()], false, false);
    let coloured = render_list(&[&canary_rollout()], false, true);
    let strip = |text: &str| {
        let mut out = String::new();
        let mut escape = false;
        for c in text.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    };
    assert_ne!(plain, coloured);
    assert_eq!(strip(&coloured), plain);
}

#[test]
fn ages_are_short() {
    let at = |s: &str| {
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            s.parse().expect("time"),
        ))
    };
    assert_eq!(age(at("2026-03-01T11:59:15Z").as_ref(), now()), "45s");
    assert_eq!(age(at("2026-03-01T11:00:00Z").as_ref(), now()), "60m");
    assert_eq!(age(at("2026-02-27T12:00:00Z").as_ref(), now()), "2d");
    assert_eq!(age(None, now()), "-");
}
