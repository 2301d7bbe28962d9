//! The `web` metric provider: one HTTP request per measurement; the answer
//! (a JSON value picked by `jsonPath`, or the text when the body is not
//! JSON) is the `result` the conditions see. Argo's semantics: GET by
//! default, a body only with POST or PUT, any non-2xx status is an error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::condition::MetricValue;
use super::prometheus::substitute;
use crate::api::WebMetric;

/// Timeout when the metric sets none (Argo's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request with every argument substituted, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct WebRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body and, for `jsonBody`, its content type.
    pub body: Option<(String, Option<&'static str>)>,
    pub timeout: Duration,
    pub json_path: JsonPath,
    pub insecure: bool,
    pub oauth2: Option<ClientCredentials>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

/// Builds the request; every mistake in the metric comes back as a message
/// naming the field.
pub fn prepare(metric: &WebMetric, args: &BTreeMap<String, String>) -> Result<WebRequest, String> {
    let method = match metric
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") | Some("GET") => reqwest::Method::GET,
        Some("POST") => reqwest::Method::POST,
        Some("PUT") => reqwest::Method::PUT,
        Some(other) => {
            return Err(format!(
                "method {other:?} is not supported; use GET, POST or PUT"
            ));
        }
    };
    let body = match (&metric.body, &metric.json_body) {
        (Some(_), Some(_)) => return Err("set body or jsonBody, not both".into()),
        (None, None) => None,
        _ if method == reqwest::Method::GET => {
            return Err("a body needs method POST or PUT".into());
        }
        (Some(text), None) => Some((substitute(text, args)?, None)),
        (None, Some(json)) => {
            let json = substitute_json(json, args)?;
            let text = serde_json::to_string(&json).map_err(|e| format!("jsonBody: {e}"))?;
            Some((text, Some("application/json")))
        }
    };
    let url = substitute(&metric.url, args)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("url {url:?} is not an http:// or https:// URL"));
    }
    let headers = metric
        .headers
        .iter()
        .map(|h| Ok((h.key.clone(), substitute(&h.value, args)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let timeout = match metric.timeout_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => DEFAULT_TIMEOUT,
    };
    let oauth2 = match metric
        .authentication
        .as_ref()
        .and_then(|a| a.oauth2.as_ref())
    {
        None => None,
        Some(config) => {
            let credentials = ClientCredentials {
                token_url: substitute(&config.token_url, args)?,
                client_id: substitute(&config.client_id, args)?,
                client_secret: substitute(&config.client_secret, args)?,
                scopes: config.scopes.clone(),
            };
            if credentials.client_id.is_empty() || credentials.client_secret.is_empty() {
                return Err("authentication.oauth2 needs clientId and clientSecret".into());
            }
            Some(credentials)
        }
    };
    Ok(WebRequest {
        method,
        url,
        headers,
        body,
        timeout,
        json_path: JsonPath::parse(metric.json_path.as_deref().unwrap_or(""))?,
        insecure: metric.insecure.unwrap_or(false),
        oauth2,
    })
}

/// Every string inside a JSON body gets its placeholders substituted.
fn substitute_json(value: &Value, args: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(substitute(text, args)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_json(v, args))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute_json(v, args)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The subset of Kubernetes JSONPath a measurement needs: `{$.a.b}`,
/// `{.a['b-c'][0]}`; filters, wildcards and ranges are refused up front.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let unsupported = |why: &str| {
            format!("jsonPath {text:?}: {why}; write it as {{$.field.list[0]}} or {{$['field']}}")
        };
        let trimmed = text.trim();
        let inner = match (trimmed.strip_prefix('{'), trimmed.is_empty()) {
            (_, true) => return Ok(JsonPath::default()),
            (Some(rest), _) => rest
                .strip_suffix('}')
                .ok_or_else(|| unsupported("missing the closing }"))?,
            (None, _) => trimmed,
        };
        let mut rest = inner.trim().strip_prefix('$').unwrap_or(inner.trim());
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("['") {
                let end = after.find("']").ok_or_else(|| unsupported("unclosed ['"))?;
                steps.push(Step::Field(after[..end].to_string()));
                rest = &after[end + 2..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| unsupported("unclosed ["))?;
                let index = after[..end].trim().parse().map_err(|_| {
                    unsupported("only a plain index such as [0] is supported inside [ ]")
                })?;
                steps.push(Step::Index(index));
                rest = &after[end + 1..];
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() || name.contains(['*', '?', '@', '(']) {
                    return Err(unsupported(
                        "wildcards, recursive descent and filters are not supported",
                    ));
                }
                steps.push(Step::Field(name.to_string()));
                rest = &after[end..];
            } else {
                return Err(unsupported(&format!("unexpected {rest:?}")));
            }
        }
        Ok(JsonPath(steps))
    }

    fn find<'a>(&self, document: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(document, |value, step| match step {
            Step::Field(name) => value.get(name),
            Step::Index(index) => value.get(index),
        })
    }
}

/// Interprets the answer: non-2xx is an error; the body must be JSON (as
/// Argo requires), searched with the path. A body that is not JSON is an
/// error saying so, never a string that a condition might happen to pass.
pub fn parse_answer(status: u16, body: &str, path: &JsonPath) -> Result<MetricValue, String> {
    let snippet: String = body.chars().take(200).collect();
    if !(200..300).contains(&status) {
        return Err(format!("received HTTP {status} (not 2xx): {snippet:?}"));
    }
    let document = serde_json::from_str::<Value>(body).map_err(|e| {
        format!("the answer is not JSON ({e}): {snippet:?}; the endpoint must answer with a JSON document")
    })?;
    path.find(&document)
        .cloned()
        .map(MetricValue::Json)
        .ok_or_else(|| format!("jsonPath found nothing in the answer {snippet:?}"))
}

/// Sends the request (fetching an OAuth2 token first when configured).
pub async fn measure(
    client: &reqwest::Client,
    insecure_client: &reqwest::Client,
    request: &WebRequest,
) -> Result<MetricValue, String> {
    let http = if request.insecure {
        insecure_client
    } else {
        client
    };
    let mut builder = http
        .request(request.method.clone(), &request.url)
        .timeout(request.timeout);
    if let Some(credentials) = &request.oauth2 {
        let token = fetch_token(http, credentials, request.timeout).await?;
        builder = builder.bearer_auth(token);
    }
    for (key, value) in &request.headers {
        builder = builder.header(key, value);
    }
    if let Some((body, content_type)) = &request.body {
        if let Some(content_type) = content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, *content_type);
        }
        builder = builder.body(body.clone());
    }
    let response = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            format!(
                "{} did not answer within {:?}",
                request.url, request.timeout
            )
        } else {
            format!(
                "cannot reach {}: {}",
                request.url,
                super::prometheus::error_chain(&e)
            )
        }
    })?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the answer of {} failed: {e}", request.url))?;
    parse_answer(status, &body, &request.json_path)
}

async fn fetch_token(
    http: &reqwest::Client,
    credentials: &ClientCredentials,
    timeout: Duration,
) -> Result<String, String> {
    let mut form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", credentials.client_id.clone()),
        ("client_secret", credentials.client_secret.clone()),
    ];
    if !credentials.scopes.is_empty() {
        form.push(("scope", credentials.scopes.join(" ")));
    }
    let encoded: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let response = http
        .post(&credentials.token_url)
        .timeout(timeout)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(encoded)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the OAuth2 token URL {}: {e}",
                credentials.token_url
            )
        })?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(format!(
            "the OAuth2 token URL {} answered HTTP {status}",
            credentials.token_url
        ));
    }
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_string))
        .ok_or_else(|| {
            format!(
                "the OAuth2 token URL {} answered without an access_token",
                credentials.token_url
            )
        })
}

/// application/x-www-form-urlencoded, for the few fields a token request has.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(value: Value) -> WebMetric {
        serde_json::from_value(value).expect("fixture")
    }

    fn args() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("service".into(), "web".into()),
            ("token".into(), "t0k".into()),
        ])
    }

    #[test]
    fn requests_substitute_arguments_everywhere() {
        let request = prepare(
            &metric(json!({
                "url": "http://checks:8080/{{args.service}}", "method": "post",
                "headers": [{"key": "Authorization", "value": "Bearer {{ args.token }}"}],
                "jsonBody": {"service": "{{args.service}}", "n": 1, "tags": ["{{args.service}}"]},
                "timeoutSeconds": 3
            })),
            &args(),
        )
        .expect("valid");
        assert_eq!(request.method, reqwest::Method::POST);
        assert_eq!(request.url, "http://checks:8080/web");
        assert_eq!(
            request.headers,
            [("Authorization".to_string(), "Bearer t0k".to_string())]
        );
        assert_eq!(
            request.body,
            Some((
                r#"{"n":1,"service":"web","tags":["web"]}"#.to_string(),
                Some("application/json")
            ))
        );
        assert_eq!(request.timeout, Duration::from_secs(3));
        let default = prepare(&metric(json!({"url": "https://x"})), &args()).expect("valid");
        assert_eq!(
            (default.method, default.timeout),
            (reqwest::Method::GET, DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        for (spec, expected) in [
            (
                json!({"url": "http://x", "body": "a", "jsonBody": {}, "method": "POST"}),
                "not both",
            ),
            (
                json!({"url": "http://x", "body": "a"}),
                "needs method POST or PUT",
            ),
            (
                json!({"url": "http://x", "method": "DELETE"}),
                "use GET, POST or PUT",
            ),
            (
                json!({"url": "x.example.com"}),
                "not an http:// or https:// URL",
            ),
            (
                json!({"url": "http://x/{{args.nope}}"}),
                "no argument named \"nope\"",
            ),
            (
                json!({"url": "http://x", "jsonPath": "{$.items[?(@.ok)]}"}),
                "plain index",
            ),
            (
                json!({"url": "http://x", "jsonPath": "{$..ok}"}),
                "wildcards",
            ),
            (
                json!({"url": "http://x", "authentication": {"oauth2": {"tokenUrl": "http://t", "clientId": "", "clientSecret": "s"}}}),
                "clientId and clientSecret",
            ),
        ] {
            let error = prepare(&metric(spec.clone()), &args()).expect_err(&spec.to_string());
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn answers_are_picked_by_json_path_and_must_be_json() {
        let path = |p: &str| JsonPath::parse(p).expect("valid path");
        let body = r#"{"data": {"ok": true, "ratio": 0.02, "items": [{"v": 5}], "odd-key": "x"}}"#;
        assert_eq!(
            parse_answer(200, body, &path("{$.data.ratio}")),
            Ok(MetricValue::Json(json!(0.02)))
        );
        assert_eq!(
            parse_answer(200, body, &path("{.data.items[0].v}")),
            Ok(MetricValue::Json(json!(5)))
        );
        assert_eq!(
            parse_answer(200, body, &path("$.data['odd-key']")),
            Ok(MetricValue::Json(json!("x")))
        );
        assert_eq!(
            parse_answer(200, body, &path("")),
            Ok(MetricValue::Json(serde_json::from_str(body).expect("json")))
        );
        for path in [path("{$.x}"), path("")] {
            let refused = parse_answer(200, "all good", &path).unwrap_err();
            assert!(
                refused.starts_with("the answer is not JSON") && refused.contains("\"all good\""),
                "{refused}"
            );
        }
        assert!(
            parse_answer(200, body, &path("{$.data.missing}"))
                .unwrap_err()
                .contains("found nothing")
        );
        assert!(
            parse_answer(503, "down", &path(""))
                .unwrap_err()
                .contains("HTTP 503")
        );
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
