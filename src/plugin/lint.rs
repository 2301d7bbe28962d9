//! `kubectl ramp lint`: offline validation with the controller's own rules.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde::Deserialize;
use serde_json::Value;

use crate::analysis::validate_template;
use crate::api::validate::{Problem, validate_rollout};
use crate::api::{AnalysisTemplate, ClusterAnalysisTemplate, Rollout};

const API_VERSION: &str = "ramp.dev/v1alpha1";

/// One finding, located by document and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub document: usize,
    pub object: String,
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "document {} ({}): {}",
            self.document, self.object, self.problem
        )
    }
}

/// Lints every Ramp object in a YAML stream; other kinds are skipped.
/// Returns the findings and how many Ramp objects were checked.
pub fn lint(text: &str) -> (Vec<Finding>, usize) {
    let mut findings = Vec::new();
    let mut checked = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(error) => {
                findings.push(finding(
                    number,
                    "unparsable",
                    "yaml",
                    format!("not valid YAML: {error}"),
                ));
                continue;
            }
        };
        let (kind, object) = describe(&value);
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        if !matches!(
            kind.as_str(),
            "Rollout" | "AnalysisTemplate" | "ClusterAnalysisTemplate" | "AnalysisRun"
        ) {
            continue;
        }
        if api_version == "argoproj.io/v1alpha1" {
            findings.push(finding(
                number,
                &object,
                "apiVersion",
                format!(
                    "is argoproj.io/v1alpha1; change it to {API_VERSION} to run this under Ramp"
                ),
            ));
            continue;
        }
        if api_version != API_VERSION {
            continue;
        }
        checked += 1;
        // Fields the schema does not have: kubectl's strict validation
        // refuses them and the API server would otherwise drop them.
        findings.extend(
            unknown_fields(&kind, &value)
                .into_iter()
                .map(|problem| Finding {
                    document: number,
                    object: object.clone(),
                    problem,
                }),
        );
        let problems = match kind.as_str() {
            "Rollout" => typed::<Rollout>(&value).map(|r| {
                let mut problems = validate_rollout(&r.spec);
                // Subscriptions that would never fire are mistakes too.
                let annotations = r.metadata.annotations.clone().unwrap_or_default();
                problems.extend(
                    crate::notify::subscriptions(&annotations)
                        .1
                        .into_iter()
                        .map(|message| Problem {
                            field: "metadata.annotations".into(),
                            message,
                        }),
                );
                problems
            }),
            "AnalysisTemplate" => {
                typed::<AnalysisTemplate>(&value).map(|t| validate_template(&t.spec))
            }
            "ClusterAnalysisTemplate" => typed::<ClusterAnalysisTemplate>(&value)
                .map(|t| validate_template(&t.spec.template)),
            _ => Ok(Vec::new()),
        };
        match problems {
            Ok(problems) => findings.extend(problems.into_iter().map(|problem| Finding {
                document: number,
                object: object.clone(),
                problem,
            })),
            Err(problem) => findings.push(Finding {
                document: number,
                object: object.clone(),
                problem,
            }),
        }
    }
    (findings, checked)
}

/// Every field of `value` that the CRD schema of `kind` does not define,
/// by path. Objects the schema leaves open (free-form maps, preserved
/// unknown fields) are not looked into.
fn unknown_fields(kind: &str, value: &Value) -> Vec<Problem> {
    let Some(schema) = schemas().get(kind) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    // apiVersion, kind and metadata are the API server's, not in the schema.
    for (key, child) in value.as_object().into_iter().flatten() {
        if let Some(child_schema) = schema.properties.as_ref().and_then(|p| p.get(key)) {
            walk_schema(child, child_schema, key, &mut found);
        } else if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            found.push(key.clone());
        }
    }
    found
        .into_iter()
        .map(|field| Problem {
            message: format!(
                "unknown field: Ramp's {kind} has no such field; fix its name or remove it (kubectl refuses it, and the API server would drop it)"
            ),
            field,
        })
        .collect()
}

/// The CRD schemas by kind, generated once: a Rollout's embeds the whole
/// pod template and takes far longer to build than a document to lint.
fn schemas() -> &'static BTreeMap<String, JSONSchemaProps> {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<String, JSONSchemaProps>> =
        std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crate::api::crds()
            .into_iter()
            .filter_map(|crd| {
                let schema = crd
                    .spec
                    .versions
                    .into_iter()
                    .next()?
                    .schema?
                    .open_api_v3_schema?;
                Some((crd.spec.names.kind, schema))
            })
            .collect()
    })
}

fn walk_schema(value: &Value, schema: &JSONSchemaProps, path: &str, found: &mut Vec<String>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    // Nodes that keep unknown fields (canary steps, metric providers) do so
    // on purpose: validation names Argo's steps and providers Ramp lacks.
    // Their known fields are still looked into.
    let keeps_unknown = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    // Properties may sit on the schema itself or on its alternatives.
    let alternatives = std::iter::once(schema)
        .chain(schema.all_of.iter().flatten())
        .chain(schema.any_of.iter().flatten())
        .chain(schema.one_of.iter().flatten());
    match value {
        Value::Object(map) => {
            let mut properties: BTreeMap<&str, &JSONSchemaProps> = BTreeMap::new();
            let mut open = None;
            let mut closed = false;
            for alternative in alternatives {
                if let Some(props) = &alternative.properties {
                    closed = true;
                    properties.extend(props.iter().map(|(k, v)| (k.as_str(), v)));
                }
                match &alternative.additional_properties {
                    Some(JSONSchemaPropsOrBool::Schema(values)) => {
                        open = Some(Some(values.as_ref()))
                    }
                    Some(JSONSchemaPropsOrBool::Bool(true)) => open = Some(None),
                    _ => {}
                }
            }
            for (key, child) in map {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (properties.get(key.as_str()), open) {
                    (Some(child_schema), _) => walk_schema(child, child_schema, &at, found),
                    (None, Some(Some(values))) => walk_schema(child, values, &at, found),
                    (None, Some(None)) => {}
                    (None, None) if closed && !keeps_unknown => found.push(at),
                    // No properties at all: a free-form object.
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (index, child) in items.iter().enumerate() {
                    walk_schema(child, item, &format!("{path}[{index}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// A document's kind and its `Kind/name` label for findings.
pub(super) fn describe(value: &Value) -> (String, String) {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let name = value["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    let object = format!("{kind}/{name}");
    (kind, object)
}

fn finding(document: usize, object: &str, field: &str, message: String) -> Finding {
    Finding {
        document,
        object: object.to_string(),
        problem: Problem {
            field: field.to_string(),
            message,
        },
    }
}

/// Decodes into the Rust type, reporting the exact field path on a type error.
fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.inner().to_string();
        let path = error.path().to_string();
        // serde reports a missing field at its parent; point at the field itself.
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string());
        match missing {
            Some(name) => Problem {
                field: if path == "." {
                    name
                } else {
                    format!("{path}.{name}")
                },
                message: "is required; add it".to_string(),
            },
            None => Problem {
                field: path,
                message: format!("{inner}; fix the field's type or spelling"),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_field_is_named_where_it_belongs() {
        let text = "apiVersion: ramp.dev/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec: {strategy: {}}\n";
        let (findings, _) = lint(text);
        let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
        // The selector may be left out only beside a workloadRef.
        assert!(
            shown[0].starts_with("document 1 (Rollout/web): spec.selector: ")
                && shown[0].contains("set matchLabels"),
            "{shown:?}"
        );
        let (findings, _) =
            lint("apiVersion: ramp.dev/v1alpha1\nkind: Rollout\nmetadata: {name: web}\n");
        assert_eq!(findings[0].problem.field, "spec");
    }

    #[test]
    fn notification_subscriptions_that_cannot_fire_are_reported() {
        let text = r##"
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata:
  name: web
  annotations:
    notifications.ramp.dev/subscribe.on-rollout-aborted.slack: "#deploys"
    notifications.ramp.dev/subscribe.on-rollout-finished.slack: "#deploys"
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: web:1}]}
  strategy: {canary: {steps: [{setWeight: 20}]}}
"##;
        let (findings, _) = lint(text);
        let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].contains("metadata.annotations")
                && shown[0].contains("unknown trigger \"on-rollout-finished\""),
            "{shown:?}"
        );
    }

    #[test]
    fn reports_problems_with_field_paths_and_skips_other_kinds() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: web:1}]}
  strategy:
    canary:
      steps: [{setWeight: 120}]
---
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {name: typo}
spec:
  replicas: three
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: argo}
"#;
        let (findings, checked) = lint(text);
        let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
        assert_eq!(checked, 2, "{shown:?}");
        assert!(shown[0].contains("document 2 (Rollout/web): spec.strategy.canary.steps[0].setWeight: 120 is not a percentage"), "{shown:?}");
        assert!(
            shown[1].contains("document 3 (Rollout/typo): spec.replicas: invalid type"),
            "{shown:?}"
        );
        assert!(
            shown[2].contains("change it to ramp.dev/v1alpha1"),
            "{shown:?}"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let text = r#"
apiVersion: ramp.dev/v1alpha1
kind: Rollout
metadata: {name: web, labels: {anything: goes}}
spec:
  replicaz: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {free: form}}
    spec: {containers: [{name: app, image: web:1, imagePullPolicyy: Always}]}
  strategy:
    canary:
      stepz: []
      steps: [{setWeight: 20, pause: {durationn: 5}}]
---
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: checks}
spec:
  metrics:
  - name: errors
    provider: {prometheus: {address: "http://p:9090", query: up, querry: up}}
    successCondition: "true"
    intervall: 5s
"#;
        let (findings, _) = lint(text);
        let unknown: Vec<String> = findings
            .iter()
            .filter(|f| f.problem.message.starts_with("unknown field"))
            .map(|f| f.problem.field.clone())
            .collect();
        assert_eq!(
            unknown,
            [
                "spec.replicaz",
                "spec.strategy.canary.steps[0].pause.durationn",
                "spec.strategy.canary.stepz",
                "spec.template.spec.containers[0].imagePullPolicyy",
                "spec.metrics[0].intervall",
                "spec.metrics[0].provider.prometheus.querry",
            ]
        );
        assert!(
            findings[0]
                .problem
                .message
                .contains("Ramp's Rollout has no such field"),
            "{findings:?}"
        );
    }

    #[test]
    fn the_examples_lint_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for entry in std::fs::read_dir(&dir).expect("examples directory") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("readable example");
            let (findings, checked) = lint(&text);
            assert!(checked > 0, "{} has no Ramp objects", path.display());
            assert!(findings.is_empty(), "{}: {findings:?}", path.display());
        }
    }
}
