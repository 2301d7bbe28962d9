//! JSON merge patches (RFC 7386) computed from two versions of a document.

use serde_json::{Map, Value};

/// RFC 7386 merge patch turning `old` into `new` (removed keys become null).
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for (key, value) in new {
                match old.get(key) {
                    Some(previous) if previous == value => {}
                    Some(previous) if previous.is_object() && value.is_object() => {
                        patch.insert(key.clone(), merge_diff(previous, value));
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in old.keys() {
                if !new.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::merge_diff;
    use serde_json::json;

    #[test]
    fn merge_diff_sets_changes_and_nulls_removals() {
        let old = json!({"phase": "Paused", "pauseConditions": [{"reason": "x"}], "canary": {"weights": {"canary": 20}, "step": 1}, "abort": false});
        let new = json!({"phase": "Healthy", "pauseConditions": [], "canary": {"weights": {"canary": 20}}, "abort": false});
        assert_eq!(
            merge_diff(&old, &new),
            json!({"phase": "Healthy", "pauseConditions": [], "canary": {"step": null}})
        );
        assert_eq!(merge_diff(&json!(null), &json!({"a": 1})), json!({"a": 1}));
    }
}
