//! Bad input (issue 12): the shipped examples, mutated at random, go through
//! decoding and validation (`kubectl ramp lint`, the controller's rules) and,
//! when they pass, through the planner. Nothing may panic, and every
//! rejection must name a field path and say something about it.
//! `PROPTEST_CASES` overrides the document count.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use ramp::api::Rollout;
use ramp::planner::analysis::declared_analyses;
use ramp::planner::{Snapshot, plan, referenced_services};
use ramp::plugin::lint::lint;
use serde_json::{Value, json};

/// Every Rollout and AnalysisTemplate document of the examples, as JSON,
/// read once.
fn seeds() -> &'static [Value] {
    static SEEDS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(read_seeds)
}

fn read_seeds() -> Vec<Value> {
    let mut seeds = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for document in serde_yaml::Deserializer::from_str(&text) {
            if let Ok(value) = serde::Deserialize::deserialize(document)
                && matches!(
                    value_kind(&value),
                    "Rollout" | "AnalysisTemplate" | "ClusterAnalysisTemplate"
                )
            {
                seeds.push(value);
            }
        }
    }
    seeds
}

fn value_kind(value: &Value) -> &str {
    value["kind"].as_str().unwrap_or_default()
}

/// A replacement value of a kind a user might plausibly write by mistake.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..=200).prop_map(|n| json!(n)),
        Just(json!(i64::MAX)),
        Just(json!(-1.5)),
        Just(json!("")),
        Just(json!("25%")),
        Just(json!("150%")),
        Just(json!("-1")),
        Just(json!("5m")),
        Just(json!("soon")),
        Just(json!("{{args.missing}}")),
        Just(json!("result[0] <")),
        Just(json!([])),
        Just(json!([{}])),
        Just(json!({})),
        Just(json!({"unexpected": true})),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    AddKey(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), junk()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), prop_oneof![Just("setWeight".to_string()), Just("pause".to_string()), Just("replicas".to_string()), Just("bogus".to_string())], junk())
            .prop_map(|(at, k, v)| Mutation::AddKey(at, k, v)),
    ]
}

/// Paths (JSON pointers) of every node under `spec`, so the object keeps
/// its kind and name and the rejection can point somewhere.
fn spec_paths(value: &Value, path: String, out: &mut Vec<String>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                spec_paths(
                    child,
                    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                spec_paths(child, format!("{path}/{index}"), out);
            }
        }
        _ => {}
    }
}

fn mutate(document: &mut Value, mutation: &Mutation) {
    let mut paths = Vec::new();
    spec_paths(&document["spec"], "/spec".into(), &mut paths);
    let pick = |at: usize| paths[at % paths.len()].clone();
    match mutation {
        Mutation::Replace(at, value) => {
            if let Some(node) = document.pointer_mut(&pick(*at)) {
                *node = value.clone();
            }
        }
        Mutation::Remove(at) => {
            let path = pick(*at);
            let Some((parent, key)) = path.rsplit_once('/') else {
                return;
            };
            match document.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    if let Ok(index) = key.parse::<usize>()
                        && index < items.len()
                    {
                        items.remove(index);
                    }
                }
                _ => {}
            }
        }
        Mutation::AddKey(at, key, value) => {
            if let Some(Value::Object(map)) = document.pointer_mut(&pick(*at)) {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    })]

    #[test]
    fn mutated_documents_are_rejected_with_a_field_path_or_planned_without_panic(
        seed in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        prop_assert!(!seeds.is_empty(), "examples/ holds Ramp documents");
        let mut document = seeds[seed % seeds.len()].clone();
        for m in &mutations {
            mutate(&mut document, m);
        }
        let text = serde_yaml::to_string(&document).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (findings, checked) = lint(&text);
        prop_assert_eq!(checked, 1);
        for finding in &findings {
            let field = &finding.problem.field;
            prop_assert!(
                field.starts_with("spec") || field == "metadata" || field.starts_with("metadata."),
                "rejection without a field path: {finding}"
            );
            prop_assert!(finding.problem.message.len() > 5, "rejection without advice: {finding}");
        }
        if findings.is_empty() && value_kind(&document) == "Rollout" {
            let rollout: Rollout = serde_json::from_value(document)
                .map_err(|e| TestCaseError::fail(format!("lint passed but decoding failed: {e}")))?;
            let snapshot = Snapshot {
                rollout: &rollout,
                replica_sets: Vec::new(),
                services: BTreeMap::new(),
                analysis_runs: Vec::new(),
                analysis_templates: BTreeMap::new(),
                cluster_templates_read_secrets: false,
                pods: None,
                routes: BTreeMap::new(),
                webhook_answers: Vec::new(),
                orphans: Vec::new(),
                workload_replica_sets: Vec::new(),
                workload: None,
                now: "2026-01-01T00:00:00Z".parse().map_err(|e: jiff::Error| TestCaseError::fail(e.to_string()))?,
            };
            // Services and templates are missing here: the plan must say so, not panic.
            let planned = plan(&snapshot);
            let needs_something = !referenced_services(&rollout).is_empty()
                || !declared_analyses(&rollout).is_empty();
            prop_assert!(
                !needs_something || planned.replica_sets.is_empty(),
                "nothing is created while Services or templates are missing"
            );
        }
    }
}
