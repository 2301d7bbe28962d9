//! successCondition / failureCondition evaluation with CEL, Kubernetes' own
//! expression language. `result` is bound to the query result: a double for a
//! scalar, a list of doubles for a vector (so `result[0] >= 0.95` works).
//!
//! Helpers: `isNaN(x)`, `isInf(x)`, and `default(result, d)`, which is the
//! first element of a vector (or the scalar) unless the result is empty or
//! NaN, in which case it is `d`. `size(result) == 0` tests for no data.

use std::sync::Arc;

use cel::objects::Value;
use cel::{Context, Program};

use crate::api::AnalysisPhase;

/// A metric provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Scalar(f64),
    Vector(Vec<f64>),
    /// A web metric's answer: numbers become doubles, objects maps
    /// (`result.data.ok == true`), text a string (`result == "ok"`).
    Json(serde_json::Value),
}

impl MetricValue {
    /// How the value is shown in a measurement.
    pub fn display(&self) -> String {
        match self {
            MetricValue::Scalar(value) => format_number(*value),
            MetricValue::Vector(values) => {
                format!(
                    "[{}]",
                    values
                        .iter()
                        .map(|v| format_number(*v))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
            MetricValue::Json(value) => value.to_string(),
        }
    }

    fn to_cel(&self) -> Value {
        match self {
            MetricValue::Scalar(value) => Value::Float(*value),
            MetricValue::Vector(values) => {
                Value::List(Arc::new(values.iter().map(|v| Value::Float(*v)).collect()))
            }
            MetricValue::Json(value) => json_to_cel(value),
        }
    }
}

fn json_to_cel(value: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(text) => Value::String(Arc::new(text.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(fields) => Value::Map(cel::objects::Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            cel::objects::Key::String(Arc::new(k.clone())),
                            json_to_cel(v),
                        )
                    })
                    .collect(),
            ),
        }),
    }
}

fn format_number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else {
        format!("{value}")
    }
}

/// A compiled pair of conditions, checked once when a template is validated
/// and reused for every measurement.
pub struct Conditions {
    success: Option<(String, Program)>,
    failure: Option<(String, Program)>,
}

impl Conditions {
    pub fn compile(success: Option<&str>, failure: Option<&str>) -> Result<Self, String> {
        let compile =
            |kind: &str, source: Option<&str>| -> Result<Option<(String, Program)>, String> {
                let Some(source) = source.map(str::trim).filter(|s| !s.is_empty()) else {
                    return Ok(None);
                };
                let program = Program::compile(source)
                    .map_err(|e| format!("{kind} {source:?} is not valid CEL: {e}"))?;
                Ok(Some((source.to_string(), program)))
            };
        Ok(Conditions {
            success: compile("successCondition", success)?,
            failure: compile("failureCondition", failure)?,
        })
    }

    /// The measurement phase for `value`:
    /// neither condition → Successful; success only → Failed unless true;
    /// failure only → Successful unless true; both and neither true → Inconclusive.
    /// A condition that cannot be evaluated is an error, never a pass.
    pub fn assess(&self, value: &MetricValue) -> Result<AnalysisPhase, String> {
        let success = self
            .success
            .as_ref()
            .map(|(source, program)| run(source, program, value))
            .transpose()?;
        let failure = self
            .failure
            .as_ref()
            .map(|(source, program)| run(source, program, value))
            .transpose()?;
        Ok(match (success, failure) {
            (_, Some(true)) => AnalysisPhase::Failed,
            (Some(true), _) => AnalysisPhase::Successful,
            (None, None) | (None, Some(false)) => AnalysisPhase::Successful,
            (Some(false), None) => AnalysisPhase::Failed,
            (Some(false), Some(false)) => AnalysisPhase::Inconclusive,
        })
    }
}

fn run(source: &str, program: &Program, value: &MetricValue) -> Result<bool, String> {
    let mut context = Context::default();
    context.add_variable_from_value("result", value.to_cel());
    let declared = [
        context.add_function("isNaN", |x: f64| x.is_nan()),
        context.add_function("isInf", |x: f64| x.is_infinite()),
        context.add_function("default", |result: Value, fallback: f64| -> f64 {
            let first = match &result {
                Value::Float(x) => Some(*x),
                Value::List(items) => match items.first() {
                    Some(Value::Float(x)) => Some(*x),
                    _ => None,
                },
                _ => None,
            };
            first.filter(|x| !x.is_nan()).unwrap_or(fallback)
        }),
    ];
    if let Some(Err(error)) = declared.into_iter().find(Result::is_err) {
        return Err(format!("internal error declaring CEL helpers: {error:?}"));
    }
    match program.execute(&context) {
        Ok(Value::Bool(outcome)) => Ok(outcome),
        Ok(other) => Err(format!(
            "condition {source:?} returned {other:?}, not true or false"
        )),
        Err(error) => {
            let hint = match value {
                MetricValue::Vector(values) if values.is_empty() => {
                    " (the query returned no data; handle it with size(result) == 0 or default(result, 0.0))"
                }
                _ => "",
            };
            Err(format!(
                "condition {source:?} could not be evaluated with result = {}: {error}{hint}",
                value.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AnalysisPhase::*;
    use MetricValue::*;

    fn assess(
        success: Option<&str>,
        failure: Option<&str>,
        value: MetricValue,
    ) -> Result<AnalysisPhase, String> {
        Conditions::compile(success, failure)?.assess(&value)
    }

    #[test]
    fn condition_combinations_follow_the_documented_table() {
        let cases: &[(Option<&str>, Option<&str>, f64, AnalysisPhase)] = &[
            (None, None, 1.0, Successful),
            (Some("result < 0.05"), None, 0.01, Successful),
            (Some("result < 0.05"), None, 0.5, Failed),
            (None, Some("result > 0.1"), 0.01, Successful),
            (None, Some("result > 0.1"), 0.5, Failed),
            (
                Some("result < 0.05"),
                Some("result > 0.1"),
                0.01,
                Successful,
            ),
            (Some("result < 0.05"), Some("result > 0.1"), 0.5, Failed),
            (
                Some("result < 0.05"),
                Some("result > 0.1"),
                0.07,
                Inconclusive,
            ),
            // Both true: failure wins.
            (Some("result > 0.0"), Some("result > 0.0"), 1.0, Failed),
        ];
        for (success, failure, value, expected) in cases {
            assert_eq!(
                assess(*success, *failure, Scalar(*value)),
                Ok(*expected),
                "{success:?} {failure:?} {value}"
            );
        }
    }

    #[test]
    fn json_answers_are_maps_strings_and_doubles() {
        let answer =
            Json(serde_json::json!({"ok": true, "ratio": 0.02, "count": 5, "status": "green"}));
        for (condition, expected) in [
            ("result.ok == true", Successful),
            ("result.ratio < 0.05", Successful),
            ("result.count == 5 && result.count > 4", Successful),
            ("result.status == 'red'", Failed),
        ] {
            assert_eq!(
                assess(Some(condition), None, answer.clone()),
                Ok(expected),
                "{condition}"
            );
        }
        assert_eq!(
            assess(Some("result == 'ok'"), None, Json(serde_json::json!("ok"))),
            Ok(Successful)
        );
        assert_eq!(
            assess(Some("result > 0.9"), None, Json(serde_json::json!(0.95))),
            Ok(Successful)
        );
        assert!(assess(Some("result.missing"), None, answer).is_err());
    }

    #[test]
    fn vectors_are_lists() {
        assert_eq!(
            assess(Some("result[0] >= 0.95"), None, Vector(vec![0.99])),
            Ok(Successful)
        );
        assert_eq!(
            assess(Some("result[0] >= 0.95"), None, Vector(vec![0.5])),
            Ok(Failed)
        );
        assert_eq!(
            assess(Some("result.all(x, x < 1.0)"), None, Vector(vec![0.5, 0.7])),
            Ok(Successful)
        );
    }

    #[test]
    fn empty_vectors_are_explicit_never_a_silent_pass() {
        let error = assess(Some("result[0] < 0.05"), None, Vector(vec![])).unwrap_err();
        assert!(error.contains("no data"), "{error}");
        assert_eq!(
            assess(
                Some("size(result) == 0 || result[0] < 0.05"),
                None,
                Vector(vec![])
            ),
            Ok(Successful)
        );
        assert_eq!(
            assess(Some("default(result, 1.0) < 0.05"), None, Vector(vec![])),
            Ok(Failed)
        );
        assert_eq!(
            assess(Some("default(result, 0.0) < 0.05"), None, Vector(vec![])),
            Ok(Successful)
        );
    }

    #[test]
    fn nan_and_inf_helpers() {
        assert_eq!(
            assess(
                Some("!isNaN(result) && result < 1.0"),
                None,
                Scalar(f64::NAN)
            ),
            Ok(Failed)
        );
        assert_eq!(
            assess(None, Some("isNaN(result)"), Scalar(f64::NAN)),
            Ok(Failed)
        );
        assert_eq!(
            assess(None, Some("isInf(result)"), Scalar(f64::INFINITY)),
            Ok(Failed)
        );
        assert_eq!(
            assess(
                Some("default(result, 0.0) == 0.0"),
                None,
                Vector(vec![f64::NAN])
            ),
            Ok(Successful)
        );
    }

    #[test]
    fn bad_expressions_are_clear_errors() {
        assert!(
            Conditions::compile(Some("result <"), None)
                .err()
                .unwrap_or_default()
                .contains("not valid CEL")
        );
        let error = assess(Some("result + 1.0"), None, Scalar(1.0)).unwrap_err();
        assert!(error.contains("not true or false"), "{error}");
        let error = assess(Some("result.foo > 1.0"), None, Scalar(1.0)).unwrap_err();
        assert!(error.contains("could not be evaluated"), "{error}");
    }

    #[test]
    fn integer_literals_compare_with_doubles() {
        assert_eq!(
            assess(Some("result < 1"), None, Scalar(0.5)),
            Ok(Successful)
        );
    }
}
