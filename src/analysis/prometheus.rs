//! Prometheus metric provider: instant queries against `/api/v1/query`,
//! range queries against `/api/v1/query_range`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::condition::MetricValue;

/// Default request timeout when the metric sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable consulted when a metric has no `address`.
pub const ADDRESS_ENV: &str = "RAMP_PROMETHEUS_ADDRESS";

/// A query ready to send: arguments substituted, secrets resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub address: String,
    pub query: String,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    pub insecure: bool,
    /// A range query instead of an instant one.
    pub range: Option<Range>,
}

/// A resolved `rangeQuery`.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
    pub step: Duration,
}

impl Range {
    /// Resolves Argo's start/end expressions against `now`.
    pub fn resolve(
        config: &crate::api::PrometheusRangeQuery,
        args: &BTreeMap<String, String>,
        now: jiff::Timestamp,
    ) -> Result<Range, String> {
        let time = |field: &str, value: &Option<String>| -> Result<jiff::Timestamp, String> {
            let text = value.as_deref().ok_or_else(|| {
                format!(
                    "rangeQuery.{field} is missing; write e.g. now() or now() - duration(\"10m\")"
                )
            })?;
            let text = substitute(text, args).map_err(|e| format!("rangeQuery.{field}: {e}"))?;
            relative_time(&text, now).map_err(|e| format!("rangeQuery.{field}: {e}"))
        };
        let start = time("start", &config.start)?;
        let end = time("end", &config.end)?;
        let step_text = config
            .step
            .as_deref()
            .ok_or("rangeQuery.step is missing; write e.g. \"1m\"")?;
        let step = crate::api::duration::parse_duration(&substitute(step_text, args)?)
            .map_err(|e| format!("rangeQuery.step: {e}"))?;
        if step.is_zero() {
            return Err("rangeQuery.step must be greater than 0".into());
        }
        if end < start {
            return Err(format!("rangeQuery: end ({end}) is before start ({start})"));
        }
        Ok(Range { start, end, step })
    }
}

/// `now()` followed by any number of `+ duration("…")` or `- duration("…")`
/// terms, the forms Argo documents for range queries.
pub fn relative_time(expression: &str, now: jiff::Timestamp) -> Result<jiff::Timestamp, String> {
    let unsupported = || {
        format!(
            "{expression:?} is not a time Ramp can evaluate; write now(), now() - duration(\"1h\") or now() + duration(\"5m\")"
        )
    };
    let mut rest = expression
        .trim()
        .strip_prefix("now()")
        .ok_or_else(unsupported)?
        .trim_start();
    let mut at = now;
    while !rest.is_empty() {
        let (sign, after) = match rest.as_bytes()[0] {
            b'-' => (-1, &rest[1..]),
            b'+' => (1, &rest[1..]),
            _ => return Err(unsupported()),
        };
        let after = after
            .trim_start()
            .strip_prefix("duration(")
            .ok_or_else(unsupported)?;
        let close = after.find(')').ok_or_else(unsupported)?;
        let literal = after[..close].trim();
        let literal = literal
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .or_else(|| {
                literal
                    .strip_prefix('\'')
                    .and_then(|l| l.strip_suffix('\''))
            })
            .ok_or_else(unsupported)?;
        let duration = crate::api::duration::parse_duration(literal)
            .map_err(|e| format!("{expression:?}: {e}"))?;
        let signed = jiff::SignedDuration::try_from(duration).map_err(|e| e.to_string())? * sign;
        at = at
            .checked_add(signed)
            .map_err(|e| format!("{expression:?}: {e}"))?;
        rest = after[close + 1..].trim_start();
    }
    Ok(at)
}

/// Replaces `{{args.NAME}}` (whitespace inside the braces is allowed). An
/// unknown argument is an error naming it, never an empty string.
pub fn substitute(text: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed \"{{{{\" in {text:?}"))?;
        let placeholder = after[..end].trim();
        let name = placeholder.strip_prefix("args.").ok_or_else(|| {
            format!(
                "unknown placeholder {{{{{placeholder}}}}}; only {{{{args.NAME}}}} is supported"
            )
        })?;
        let value = args.get(name).ok_or_else(|| {
            let known: Vec<&str> = args.keys().map(String::as_str).collect();
            format!(
                "placeholder {{{{args.{name}}}}} has no argument named {name:?} (known: {})",
                known.join(", ")
            )
        })?;
        output.push_str(value);
        rest = &after[end + 2..];
    }
    output.push_str(rest);
    Ok(output)
}

/// Interprets a Prometheus HTTP API response.
pub fn parse_response(status: u16, body: &str) -> Result<MetricValue, String> {
    let document: Value = serde_json::from_str(body).map_err(|_| {
        let snippet: String = body.chars().take(200).collect();
        format!("Prometheus answered HTTP {status} with a body that is not JSON: {snippet:?}")
    })?;
    if document["status"] != "success" {
        let kind = document["errorType"].as_str().unwrap_or("error");
        let error = document["error"].as_str().unwrap_or("no error message");
        return Err(format!(
            "Prometheus rejected the query (HTTP {status}, {kind}): {error}"
        ));
    }
    let data = &document["data"];
    match data["resultType"].as_str() {
        Some("scalar") => Ok(MetricValue::Scalar(sample(&data["result"])?)),
        Some("vector") => {
            let series = data["result"]
                .as_array()
                .ok_or("vector result is not a list")?;
            let values = series
                .iter()
                .map(|s| sample(&s["value"]))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MetricValue::Vector(values))
        }
        // A range query: every sample of every series, in order (Argo's reading).
        Some("matrix") => {
            let series = data["result"]
                .as_array()
                .ok_or("matrix result is not a list")?;
            let values = series
                .iter()
                .flat_map(|s| s["values"].as_array().into_iter().flatten())
                .map(sample)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MetricValue::Vector(values))
        }
        Some("string") => Err("the query returned a string; conditions need numbers".into()),
        other => Err(format!("unexpected resultType {other:?} from Prometheus")),
    }
}

/// A `[timestamp, "value"]` pair's value. Prometheus spells NaN and
/// infinities as strings; those are kept so conditions can test for them.
fn sample(pair: &Value) -> Result<f64, String> {
    let text = pair
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("malformed sample {pair}"))?;
    text.parse::<f64>()
        .map_err(|_| format!("sample value {text:?} is not a number"))
}

/// Sends an instant query. Network failures, timeouts and error bodies all
/// come back as messages suitable for a measurement.
pub async fn query(
    client: &reqwest::Client,
    insecure_client: &reqwest::Client,
    request: &Request,
) -> Result<MetricValue, String> {
    let base = request.address.trim_end_matches('/');
    let http = if request.insecure {
        insecure_client
    } else {
        client
    };
    let mut builder = match &request.range {
        None => http
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", request.query.as_str())]),
        Some(range) => http.get(format!("{base}/api/v1/query_range")).query(&[
            ("query", request.query.clone()),
            ("start", range.start.to_string()),
            ("end", range.end.to_string()),
            ("step", format!("{}s", range.step.as_secs_f64())),
        ]),
    }
    .timeout(request.timeout);
    for (key, value) in &request.headers {
        builder = builder.header(key, value);
    }
    let response = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            format!(
                "Prometheus at {} did not answer within {:?}",
                request.address, request.timeout
            )
        } else {
            format!(
                "cannot reach Prometheus at {}: {}",
                request.address,
                error_chain(&e)
            )
        }
    })?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the Prometheus response failed: {e}"))?;
    parse_response(status, &body)
}

/// An error with its causes, for messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("service".to_string(), "web".to_string()),
            ("hash".to_string(), "abc".to_string()),
        ])
    }

    #[test]
    fn substitutes_arguments_with_or_without_spaces() {
        assert_eq!(
            substitute(
                "rate(x{svc=\"{{args.service}}\",h=\"{{ args.hash }}\"}[1m])",
                &args()
            ),
            Ok("rate(x{svc=\"web\",h=\"abc\"}[1m])".into())
        );
    }

    #[test]
    fn unresolved_placeholders_are_errors() {
        let error = substitute("x{a=\"{{args.missing}}\"}", &args()).unwrap_err();
        assert!(
            error.contains("\"missing\"") && error.contains("known: hash, service"),
            "{error}"
        );
        assert!(
            substitute("{{args.service", &args())
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            substitute("{{secrets.x}}", &args())
                .unwrap_err()
                .contains("unknown placeholder")
        );
    }

    #[test]
    fn parses_scalars_vectors_and_special_values() {
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#;
        assert_eq!(parse_response(200, scalar), Ok(MetricValue::Scalar(0.25)));
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1.5,"0.5"]},{"metric":{"a":"2"},"value":[1.5,"NaN"]}]}}"#;
        match parse_response(200, vector) {
            Ok(MetricValue::Vector(values)) => {
                assert_eq!(values[0], 0.5);
                assert!(values[1].is_nan());
            }
            other => panic!("unexpected {other:?}"),
        }
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_response(200, empty), Ok(MetricValue::Vector(vec![])));
        let inf = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#;
        assert_eq!(
            parse_response(200, inf),
            Ok(MetricValue::Scalar(f64::INFINITY))
        );
    }

    #[test]
    fn range_results_are_every_sample_of_every_series() {
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"pod":"a"},"values":[[1,"0.1"],[2,"0.2"]]},
            {"metric":{"pod":"b"},"values":[[1,"0.3"]]}]}}"#;
        assert_eq!(
            parse_response(200, matrix),
            Ok(MetricValue::Vector(vec![0.1, 0.2, 0.3]))
        );
        let empty = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse_response(200, empty), Ok(MetricValue::Vector(vec![])));
    }

    #[test]
    fn range_times_are_now_plus_or_minus_durations() {
        let now: jiff::Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let at = |text: &str| relative_time(text, now).map(|t| t.to_string());
        assert_eq!(at("now()"), Ok("2026-12-04T10:00:00Z".into()));
        assert_eq!(
            at(r#"now() - duration("1h")"#),
            Ok("2026-12-04T09:00:00Z".into())
        );
        assert_eq!(
            at(r#" now() - duration("1h") + duration('90s') "#),
            Ok("2026-12-04T09:01:30Z".into())
        );
        for bad in [
            "yesterday",
            "now() - 5m",
            r#"now() * duration("1h")"#,
            r#"now() - duration("soon")"#,
        ] {
            let error = at(bad).unwrap_err();
            assert!(
                error.contains("not a time") || error.contains("soon"),
                "{bad}: {error}"
            );
        }
        let range = |start: &str, end: &str, step: &str| {
            Range::resolve(
                &crate::api::PrometheusRangeQuery {
                    start: Some(start.into()),
                    end: Some(end.into()),
                    step: Some(step.into()),
                },
                &BTreeMap::from([("lookback".to_string(), "10m".to_string())]),
                now,
            )
        };
        let resolved = range(r#"now() - duration("{{args.lookback}}")"#, "now()", "1m").unwrap();
        assert_eq!(resolved.start.to_string(), "2026-12-04T09:50:00Z");
        assert_eq!(resolved.step, Duration::from_secs(60));
        assert!(
            range("now()", r#"now() - duration("1m")"#, "1m")
                .unwrap_err()
                .contains("before start")
        );
        assert!(
            range("now()", "now()", "0s")
                .unwrap_err()
                .contains("greater than 0")
        );
    }

    #[test]
    fn error_bodies_are_surfaced() {
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let error = parse_response(400, bad).unwrap_err();
        assert!(
            error.contains("bad_data") && error.contains("parse error at char 5"),
            "{error}"
        );
        assert!(
            parse_response(502, "<html>bad gateway</html>")
                .unwrap_err()
                .contains("not JSON")
        );
        let text = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#;
        assert!(
            parse_response(200, text)
                .unwrap_err()
                .contains("not a number")
        );
    }
}
