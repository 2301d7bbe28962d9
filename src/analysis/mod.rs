//! Metric analysis: conditions, the run lifecycle, the Prometheus provider,
//! and template validation shared with `kubectl ramp lint`.

pub mod condition;
pub mod job;
pub mod policy;
pub mod prometheus;
pub mod provider;
pub mod run;
pub mod web;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::validate::Problem;
use crate::api::{AnalysisTemplateSpec, Metric};

/// All problems with an AnalysisTemplate (or ClusterAnalysisTemplate) spec.
pub fn validate_template(spec: &AnalysisTemplateSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut add = |field: String, message: String| problems.push(Problem { field, message });
    if spec.metrics.is_empty() {
        add("spec.metrics".into(), "define at least one metric".into());
    }
    let mut arg_names = BTreeSet::new();
    for (index, arg) in spec.args.iter().enumerate() {
        let field = format!("spec.args[{index}]");
        if arg.name.trim().is_empty() {
            add(format!("{field}.name"), "is empty".into());
        } else if !arg_names.insert(arg.name.as_str()) {
            add(
                format!("{field}.name"),
                format!("argument {:?} is declared twice", arg.name),
            );
        }
        if arg.value.is_some() && arg.value_from.is_some() {
            add(field.clone(), "set value or valueFrom, not both".into());
        }
        if let Some(from) = &arg.value_from
            && usize::from(from.secret_key_ref.is_some()) + usize::from(from.field_ref.is_some())
                != 1
        {
            add(
                format!("{field}.valueFrom"),
                "set exactly one of secretKeyRef or fieldRef".into(),
            );
        }
    }
    let mut metric_names = BTreeSet::new();
    let defaults: BTreeMap<&str, &str> = spec
        .args
        .iter()
        .filter_map(|a| Some((a.name.as_str(), a.value.as_deref()?)))
        .collect();
    for (index, metric) in spec.metrics.iter().enumerate() {
        let field = format!("spec.metrics[{index}]");
        if metric.name.trim().is_empty() {
            add(format!("{field}.name"), "is empty; name the metric".into());
        } else if !metric_names.insert(metric.name.as_str()) {
            add(
                format!("{field}.name"),
                format!("metric {:?} is defined twice", metric.name),
            );
        }
        // Timing given as an argument is checked with the argument's
        // default; one a Rollout supplies is checked when the run starts.
        let mut timed = metric.clone();
        run::fill_timing_and_conditions(&mut timed, &defaults);
        if let Err(message) = run::Policy::of(&timed)
            && !message.contains("{{")
        {
            add(field.clone(), message);
        }
        if let Err(message) = condition::Conditions::compile(
            metric.success_condition.as_deref(),
            metric.failure_condition.as_deref(),
        ) {
            add(field.clone(), message);
        }
        validate_provider(&field, metric, &arg_names, &mut add);
    }
    problems
}

fn validate_provider(
    field: &str,
    metric: &Metric,
    args: &BTreeSet<&str>,
    add: &mut impl FnMut(String, String),
) {
    if let Some(name) = metric.provider.unknown.keys().next() {
        add(
            format!("{field}.provider.{name}"),
            format!(
                "provider {name:?} is not supported; Ramp implements the prometheus, web and job providers"
            ),
        );
        return;
    }
    // Substituting with a placeholder value for every declared argument finds
    // any placeholder that no argument could ever fill.
    let declared: BTreeMap<String, String> = args
        .iter()
        .map(|a| (a.to_string(), "x".to_string()))
        .collect();
    let provider = &metric.provider;
    let set = [
        provider.prometheus.is_some(),
        provider.web.is_some(),
        provider.job.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        add(
            format!("{field}.provider"),
            "set exactly one provider (prometheus, web or job)".into(),
        );
        return;
    }
    if let Some(config) = &provider.job {
        validate_job(
            &format!("{field}.provider.job"),
            metric,
            config,
            &declared,
            add,
        );
        return;
    }
    if let Some(config) = &metric.provider.web {
        // An argument may hold the whole URL, so its scheme is only checked
        // when the URL is written out.
        let templated = config.url.contains("{{");
        if let Err(message) = web::prepare(config, &declared)
            && !(templated && message.contains("is not an http:// or https:// URL"))
        {
            add(format!("{field}.provider.web"), message);
        }
        return;
    }
    let Some(prometheus) = &metric.provider.prometheus else {
        add(
            format!("{field}.provider"),
            "set provider.prometheus, provider.web or provider.job".into(),
        );
        return;
    };
    if prometheus.query.trim().is_empty() {
        add(
            format!("{field}.provider.prometheus.query"),
            "is empty; write a PromQL query".into(),
        );
    }
    if let Err(message) = prometheus::substitute(&prometheus.query, &declared) {
        add(
            format!("{field}.provider.prometheus.query"),
            format!("{message}; declare it under spec.args"),
        );
    }
    // A range written out is checked now; one built from arguments when it runs.
    if let Some(range) = &prometheus.range_query
        && ![&range.start, &range.end, &range.step]
            .into_iter()
            .flatten()
            .any(|t| t.contains("{{"))
        && let Err(message) = prometheus::Range::resolve(range, &declared, jiff::Timestamp::now())
    {
        add(format!("{field}.provider.prometheus.rangeQuery"), message);
    }
    if prometheus.timeout.is_some_and(|t| t < 0) {
        add(
            format!("{field}.provider.prometheus.timeout"),
            "must not be negative".into(),
        );
    }
    if let Some(address) = &prometheus.address
        && let Err(message) = prometheus::substitute(address, &declared)
    {
        add(
            format!("{field}.provider.prometheus.address"),
            format!("{message}; declare it under spec.args"),
        );
    } else if let Some(address) = &prometheus.address
        && !address.contains("{{")
        && !(address.starts_with("http://") || address.starts_with("https://"))
    {
        add(
            format!("{field}.provider.prometheus.address"),
            format!("{address:?} is not an http:// or https:// URL"),
        );
    }
    if let Some(auth) = &prometheus.authentication
        && auth.bearer_token.is_some()
        && auth.basic_auth.is_some()
    {
        add(
            format!("{field}.provider.prometheus.authentication"),
            "set bearerToken or basicAuth, not both".into(),
        );
    }
}

/// What the API server would refuse when the Job is created, said up front.
fn validate_job(
    field: &str,
    metric: &Metric,
    config: &crate::api::JobMetric,
    declared: &BTreeMap<String, String>,
    add: &mut impl FnMut(String, String),
) {
    let pod = config.spec.template.spec.as_ref();
    match pod.and_then(|p| p.restart_policy.as_deref()) {
        Some("Never" | "OnFailure") => {}
        other => add(
            format!("{field}.spec.template.spec.restartPolicy"),
            format!(
                "is {}; a Job's pods need Never or OnFailure",
                other.map_or("unset (Always)".to_string(), |p| format!("{p:?}"))
            ),
        ),
    }
    if pod.is_none_or(|p| p.containers.is_empty()) {
        add(
            format!("{field}.spec.template.spec.containers"),
            "is empty; give the Job a container to run".into(),
        );
    }
    let mut probe = crate::api::AnalysisRun::new("validation", Default::default());
    probe.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    probe.metadata.namespace = Some("validation".into());
    if let Err(message) = job::build_job(&probe, metric, config, declared, 1) {
        add(
            field.to_string(),
            format!("{message}; declare it under spec.args"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(value: serde_json::Value) -> AnalysisTemplateSpec {
        serde_json::from_value(value).expect("fixture template")
    }

    #[test]
    fn a_good_template_has_no_problems() {
        let spec = template(json!({
            "args": [{"name": "service"}],
            "metrics": [{"name": "errors", "interval": "10s", "count": 3, "successCondition": "result[0] < 0.05",
                "provider": {"prometheus": {"address": "http://prom:9090", "query": "errors{svc=\"{{args.service}}\"}"}}}]
        }));
        assert_eq!(validate_template(&spec), vec![]);
    }

    #[test]
    fn problems_name_the_field_and_the_fix() {
        let spec = template(json!({
            "metrics": [
                {"name": "a", "successCondition": "result <", "provider": {"prometheus": {"query": "x{s=\"{{args.svc}}\"}"}}},
                {"name": "a", "provider": {"datadog": {"query": "x"}}},
                {"name": "c", "interval": "1d", "provider": {"prometheus": {"query": "x", "address": "prom:9090"}}}
            ]
        }));
        let text: Vec<String> = validate_template(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        let text = text.join("\n");
        for expected in [
            "spec.metrics[0]: successCondition \"result <\" is not valid CEL",
            "spec.metrics[0].provider.prometheus.query: placeholder {{args.svc}} has no argument named \"svc\"",
            "spec.metrics[1].name: metric \"a\" is defined twice",
            "spec.metrics[1].provider.datadog: provider \"datadog\" is not supported",
            "spec.metrics[2]: metric \"c\": interval: invalid duration \"1d\"",
            "spec.metrics[2].provider.prometheus.address: \"prom:9090\" is not an http:// or https:// URL",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
