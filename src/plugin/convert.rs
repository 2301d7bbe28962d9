//! `kubectl ramp convert`: rewrites Argo Rollouts manifests for Ramp and
//! says what in them Ramp does not support. Only what Ramp owns changes:
//! the apiVersion of the four kinds Ramp serves and the `rollout.` and
//! `notifications.` annotation and label prefixes. Everything else, other
//! kinds and other `*.argoproj.io` keys (Argo CD's `argocd.argoproj.io/...`)
//! included, is passed through untouched.

use serde::Deserialize;
use serde_json::Value;

use super::lint::{Finding, describe, lint};

const ARGO: &str = "argoproj.io/v1alpha1";
const RAMP: &str = "ramp.dev/v1alpha1";
const KINDS: [&str; 4] = [
    "Rollout",
    "AnalysisTemplate",
    "ClusterAnalysisTemplate",
    "AnalysisRun",
];
const PREFIXES: [(&str, &str); 2] = [
    ("rollout.argoproj.io/", "rollout.ramp.dev/"),
    ("notifications.argoproj.io/", "notifications.ramp.dev/"),
];

pub struct Converted {
    /// The whole stream, converted documents in place of the originals.
    pub yaml: String,
    /// What Ramp will not do with the result, by document and field.
    pub findings: Vec<Finding>,
    /// Documents whose apiVersion changed.
    pub converted: usize,
}

pub fn convert(text: &str) -> Result<Converted, String> {
    let mut documents = Vec::new();
    let mut findings = Vec::new();
    let mut converted = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let mut value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(error) => return Err(format!("document {number} is not valid YAML: {error}")),
        };
        let (kind, object) = describe(&value);
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let mut report = |field: &str, message: String| {
            findings.push(Finding {
                document: number,
                object: object.clone(),
                problem: crate::api::validate::Problem {
                    field: field.to_string(),
                    message,
                },
            })
        };
        if api_version == ARGO && KINDS.contains(&kind.as_str()) {
            value["apiVersion"] = Value::String(RAMP.into());
            rename_keys(&mut value);
            unsupported(&value, &kind, &mut report);
            converted += 1;
        } else if api_version == ARGO {
            report(
                "kind",
                format!("{kind} is not supported by Ramp; the document is left unchanged"),
            );
        }
        documents.push(value);
    }
    let mut yaml = String::new();
    for value in &documents {
        if !yaml.is_empty() {
            yaml.push_str("---\n");
        }
        yaml.push_str(&serde_yaml::to_string(value).map_err(|e| format!("writing YAML: {e}"))?);
    }
    // The controller's own validation on the result, so what would be
    // InvalidSpec on the cluster shows up here already.
    let (problems, _) = lint(&yaml);
    for problem in problems {
        if !findings
            .iter()
            .any(|f| f.document == problem.document && f.problem == problem.problem)
        {
            findings.push(problem);
        }
    }
    findings.sort_by_key(|f| f.document);
    Ok(Converted {
        yaml,
        findings,
        converted,
    })
}

/// Label and annotation keys under Argo's prefixes, wherever they sit (the
/// Rollout, its pod template, role metadata, AnalysisRun metadata).
fn rename_keys(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let renamed: serde_json::Map<String, Value> = std::mem::take(fields)
                .into_iter()
                .map(|(key, mut inner)| {
                    rename_keys(&mut inner);
                    let key = PREFIXES
                        .iter()
                        .find_map(|(from, to)| {
                            key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
                        })
                        .unwrap_or(key);
                    (key, inner)
                })
                .collect();
            *fields = renamed;
        }
        Value::Array(items) => items.iter_mut().for_each(rename_keys),
        _ => {}
    }
}

/// Features that decode under Ramp but that it does not carry out.
fn unsupported(value: &Value, kind: &str, report: &mut impl FnMut(&str, String)) {
    let spec = &value["spec"];
    if kind == "Rollout" {
        let canary = &spec["strategy"]["canary"];
        if !canary["antiAffinity"].is_null() {
            report(
                "spec.strategy.canary.antiAffinity",
                "anti-affinity injection is not supported; remove it".into(),
            );
        }
    }
    let metrics = match kind {
        "AnalysisTemplate" | "ClusterAnalysisTemplate" | "AnalysisRun" => {
            spec["metrics"].as_array()
        }
        _ => None,
    };
    for (index, metric) in metrics.into_iter().flatten().enumerate() {
        let Some(provider) = metric["provider"].as_object() else {
            continue;
        };
        for name in provider
            .keys()
            .filter(|p| !crate::analysis::provider::IMPLEMENTED.contains(&p.as_str()))
        {
            report(
                &format!("spec.metrics[{index}].provider.{name}"),
                format!(
                    "provider {name:?} is not supported; Ramp implements {}",
                    crate::analysis::provider::IMPLEMENTED.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGO_MANIFESTS: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: web
  annotations:
    notifications.argoproj.io/subscribe.on-rollout-completed.slack: deploys
    argocd.argoproj.io/sync-wave: "1"
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {rollout.argoproj.io/note: kept}
    spec: {containers: [{name: app, image: "web:1"}]}
  strategy:
    canary:
      steps: [{setWeight: 50}, {pause: {}}]
      trafficRouting:
        nginx: {stableIngress: web}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: errors}
spec:
  metrics:
  - name: errors
    successCondition: "result < 1"
    provider: {datadog: {query: "sum:errors"}}
---
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {name: try}
spec: {templates: []}
"#;

    #[test]
    fn argo_manifests_are_rewritten_and_gaps_reported() {
        let converted = convert(ARGO_MANIFESTS).expect("valid YAML");
        assert_eq!(converted.converted, 2);
        let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&converted.yaml)
            .map(|d| Value::deserialize(d).expect("YAML"))
            .collect();
        assert_eq!(documents.len(), 4, "every document is kept");
        let rollout = &documents[0];
        assert_eq!(rollout["apiVersion"], RAMP);
        let annotations = &rollout["metadata"]["annotations"];
        assert_eq!(
            annotations["notifications.ramp.dev/subscribe.on-rollout-completed.slack"],
            "deploys"
        );
        assert_eq!(
            annotations["argocd.argoproj.io/sync-wave"], "1",
            "Argo CD's keys stay"
        );
        assert_eq!(
            rollout["spec"]["template"]["metadata"]["annotations"]["rollout.ramp.dev/note"],
            "kept"
        );
        assert_eq!(documents[1]["apiVersion"], "v1");
        assert_eq!(
            documents[3]["apiVersion"], ARGO,
            "an Experiment is left as is"
        );

        let fields: Vec<(usize, &str)> = converted
            .findings
            .iter()
            .map(|f| (f.document, f.problem.field.as_str()))
            .collect();
        assert!(
            fields.contains(&(1, "spec.strategy.canary.trafficRouting.nginx")),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(3, "spec.metrics[0].provider.datadog")),
            "{fields:?}"
        );
        assert!(fields.contains(&(4, "kind")), "{fields:?}");
    }

    #[test]
    fn the_examples_convert_back_unchanged() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for entry in std::fs::read_dir(root).expect("examples/") {
            let path = entry.expect("entry").path();
            let ramp = std::fs::read_to_string(&path).expect("readable");
            let argo = ramp.replace(RAMP, ARGO);
            let converted = convert(&argo).expect("valid YAML");
            assert!(converted.converted > 0, "{}", path.display());
            assert!(
                converted.findings.is_empty(),
                "{}: {:?}",
                path.display(),
                converted.findings
            );
            let parse = |text: &str| -> Vec<Value> {
                serde_yaml::Deserializer::from_str(text)
                    .map(|d| Value::deserialize(d).expect("YAML"))
                    .filter(|v| !v.is_null())
                    .collect()
            };
            assert_eq!(parse(&converted.yaml), parse(&ramp), "{}", path.display());
        }
    }

    #[test]
    fn broken_yaml_is_refused_with_its_document() {
        let error = convert("a: 1\n---\nb: [unclosed\n").err().expect("refused");
        assert!(error.starts_with("document 2"), "{error}");
    }
}
