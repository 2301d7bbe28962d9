//! Adoption of orphaned ReplicaSets: those left running by a workload that
//! was deleted without its dependents (`kubectl delete rollout
//! --cascade=orphan` of an Argo Rollout, or a Ramp Rollout re-created).
//!
//! An orphan that carries the pod-template-hash label and whose labels the
//! Rollout's selector selects is taken over as it is: its name, hash, pod
//! template and pods stay, so a Rollout created for a workload that already
//! runs with the same template starts Healthy without replacing a pod, and
//! Services already pointed at that hash keep their endpoints throughout.
//! An orphan running another template becomes an older revision and is
//! scaled down like any other.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{POD_TEMPLATE_HASH_LABEL, Rollout};

/// Whether `selector` selects an object with `labels`. An empty selector
/// selects nothing here: adopting every orphan in a namespace is never what
/// a Rollout without a selector means.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.match_labels.iter().flatten();
    let expressions = selector.match_expressions.iter().flatten();
    if match_labels.clone().next().is_none() && expressions.clone().next().is_none() {
        return false;
    }
    let labels_hold = match_labels
        .clone()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_hold = expressions.clone().all(|expression| {
        let values = expression.values.as_deref().unwrap_or_default();
        let value = labels.get(&expression.key);
        match expression.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would have refused: select nothing.
            _ => false,
        }
    });
    labels_hold && expressions_hold
}

/// The orphans this Rollout takes over.
pub(super) fn adoptable<'a>(rollout: &Rollout, orphans: &[&'a ReplicaSet]) -> Vec<&'a ReplicaSet> {
    orphans
        .iter()
        .copied()
        .filter(|rs| {
            let meta = &rs.metadata;
            let no_controller = meta
                .owner_references
                .iter()
                .flatten()
                .all(|r| r.controller != Some(true));
            let labels = meta.labels.clone().unwrap_or_default();
            no_controller
                && meta.deletion_timestamp.is_none()
                && meta.namespace == rollout.metadata.namespace
                && labels.contains_key(POD_TEMPLATE_HASH_LABEL)
                && selects(&rollout.spec.selector, &labels)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).expect("fixture selector")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_select_as_the_api_server_does() {
        let app = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selects(
            &selector(json!({"matchLabels": {"app": "web"}})),
            &app
        ));
        assert!(!selects(
            &selector(json!({"matchLabels": {"app": "api"}})),
            &app
        ));
        let expressions = |operator: &str, values: serde_json::Value| {
            selector(
                json!({"matchExpressions": [{"key": "tier", "operator": operator, "values": values}]}),
            )
        };
        assert!(selects(&expressions("In", json!(["front", "back"])), &app));
        assert!(!selects(&expressions("NotIn", json!(["front"])), &app));
        assert!(selects(&expressions("Exists", json!(null)), &app));
        assert!(!selects(&expressions("DoesNotExist", json!(null)), &app));
        // Nothing is adopted by a selector that says nothing.
        assert!(!selects(&LabelSelector::default(), &app));
    }
}
