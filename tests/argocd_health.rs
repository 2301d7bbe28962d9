//! The Argo CD health check (`deploy/helm/ramp/files/argocd-health.lua`) run by a real Lua
//! 5.1 interpreter (Debian's `lua5.1`; Argo CD runs gopher-lua, also 5.1)
//! against Rollout states the controller writes. `make deps` installs it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/ramp/files/argocd-health.lua")
}

/// A JSON value as a Lua table constructor, the way Argo CD hands objects
/// to health scripts (arrays 1-based, nulls absent).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut quoted = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    '\n' => quoted.push_str("\\n"),
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            quoted
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// (health status, message) the script returns for `rollout`.
fn health(rollout: &Value) -> (String, String) {
    let output = Command::new("lua5.1")
        .arg("-e")
        .arg(format!("obj = {}", lua(rollout)))
        .arg("-e")
        .arg(format!(
            "local hs = dofile({}); io.write(hs.status, '\\n', hs.message or '')",
            lua(&Value::String(script().display().to_string()))
        ))
        .output()
        .unwrap_or_else(|e| {
            panic!("lua5.1 could not be run ({e}); `make deps` installs Debian's lua5.1")
        });
    assert!(
        output.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

fn canary(status: Value) -> Value {
    json!({
        "apiVersion": "ramp.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "namespace": "shop", "generation": 2},
        "spec": {
            "replicas": 5,
            "strategy": {"canary": {"steps": [
                {"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "5m"}}
            ]}}
        },
        "status": status,
    })
}

fn blue_green(strategy: Value, status: Value) -> Value {
    json!({
        "metadata": {"name": "shop", "namespace": "shop", "generation": 2},
        "spec": {"replicas": 2, "strategy": {"blueGreen": strategy}},
        "status": status,
    })
}

fn paused(reason: &str, step: i64, message: &str) -> Value {
    json!({
        "observedGeneration": 2,
        "phase": "Paused",
        "message": message,
        "currentStepIndex": step,
        "pauseConditions": [{"reason": reason, "startTime": "2026-12-05T10:00:00Z"}],
        "controllerPause": true,
    })
}

#[test]
fn rollout_states_map_to_argo_cd_health() {
    let cases = [
        (
            "no status yet",
            json!({"metadata": {"name": "web", "generation": 1}, "spec": {}}),
            "Progressing",
            "Waiting for the Ramp controller to observe the rollout",
        ),
        (
            "spec not observed yet",
            canary(json!({"observedGeneration": 1, "phase": "Healthy"})),
            "Progressing",
            "Waiting for the Ramp controller to observe the latest spec",
        ),
        (
            "healthy",
            canary(json!({"observedGeneration": 2, "phase": "Healthy"})),
            "Healthy",
            "",
        ),
        (
            "progressing",
            canary(
                json!({"observedGeneration": 2, "phase": "Progressing", "message": "waiting for step 1/4 (setWeight: 20)"}),
            ),
            "Progressing",
            "waiting for step 1/4 (setWeight: 20)",
        ),
        (
            "pause step without a duration waits for a person",
            canary(paused("CanaryPauseStep", 1, "CanaryPauseStep")),
            "Healthy",
            "Paused, waiting for promotion or a webhook: CanaryPauseStep",
        ),
        (
            "timed pause step ends by itself",
            canary(paused("CanaryPauseStep", 3, "CanaryPauseStep")),
            "Progressing",
            "CanaryPauseStep",
        ),
        (
            "webhook gate",
            canary(paused(
                "PendingWebhook",
                0,
                "PendingWebhook: webhook \"approve\" (confirm-rollout) answered HTTP 403 (attempt 2)",
            )),
            "Healthy",
            "Paused, waiting for promotion or a webhook: PendingWebhook: webhook \"approve\" (confirm-rollout) answered HTTP 403 (attempt 2)",
        ),
        (
            "inconclusive analysis waits for a person",
            canary(paused(
                "InconclusiveAnalysisRun",
                1,
                "InconclusiveAnalysisRun",
            )),
            "Healthy",
            "Paused, waiting for promotion or a webhook: InconclusiveAnalysisRun",
        ),
        (
            "blue/green waiting for promotion",
            blue_green(
                json!({"activeService": "a", "autoPromotionEnabled": false}),
                paused("BlueGreenPause", 0, "BlueGreenPause"),
            ),
            "Healthy",
            "Paused, waiting for promotion or a webhook: BlueGreenPause",
        ),
        (
            "blue/green promoting by itself",
            blue_green(
                json!({"activeService": "a", "autoPromotionSeconds": 30}),
                paused("BlueGreenPause", 0, "BlueGreenPause"),
            ),
            "Progressing",
            "BlueGreenPause",
        ),
        (
            "aborted",
            canary(
                json!({"observedGeneration": 2, "phase": "Degraded", "abort": true, "message": "RolloutAborted: metric error-rate failed"}),
            ),
            "Degraded",
            "RolloutAborted: metric error-rate failed",
        ),
        (
            "invalid spec",
            canary(json!({
                "observedGeneration": 2,
                "phase": "Degraded",
                "conditions": [{"type": "InvalidSpec", "status": "True", "message": "invalid spec: spec.replicas: must not be negative"}],
            })),
            "Degraded",
            "invalid spec: spec.replicas: must not be negative",
        ),
    ];
    for (what, rollout, status, message) in cases {
        assert_eq!(
            health(&rollout),
            (status.to_string(), message.to_string()),
            "{what}"
        );
    }
}

#[test]
fn an_operators_pause_is_suspended() {
    let mut rollout =
        canary(json!({"observedGeneration": 2, "phase": "Paused", "message": "manually paused"}));
    rollout["spec"]["paused"] = json!(true);
    assert_eq!(
        health(&rollout),
        ("Suspended".to_string(), "manually paused".to_string())
    );
}
