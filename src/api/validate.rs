//! Rollout spec validation shared by the controller (InvalidSpec condition)
//! and `kubectl ramp lint`. Every problem names the field and says what to do.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::duration::{parse_int_or_duration, resolve_int_or_percent};
use super::{CanaryStep, RolloutAnalysis, RolloutSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// All problems with a Rollout spec; empty means valid.
pub fn validate_rollout(spec: &RolloutSpec) -> Vec<Problem> {
    let mut problems = Problems::default();
    if spec.replicas.is_some_and(|r| r < 0) {
        problems.add("spec.replicas", "must not be negative");
    }
    validate_selector(&spec.selector, spec, &mut problems);
    let has_containers = spec
        .template
        .spec
        .as_ref()
        .is_some_and(|pod| !pod.containers.is_empty());
    if !has_containers {
        problems.add(
            "spec.template.spec.containers",
            "the pod template needs at least one container",
        );
    }
    if spec.min_ready_seconds.is_some_and(|s| s < 0) {
        problems.add("spec.minReadySeconds", "must not be negative");
    }
    if spec.revision_history_limit.is_some_and(|l| l < 0) {
        problems.add("spec.revisionHistoryLimit", "must not be negative");
    }
    if spec
        .rollback_window
        .as_ref()
        .and_then(|w| w.revisions)
        .is_some_and(|r| r < 0)
    {
        problems.add("spec.rollbackWindow.revisions", "must not be negative");
    }
    if let Some(deadline) = spec.progress_deadline_seconds {
        if deadline <= 0 {
            problems.add("spec.progressDeadlineSeconds", "must be greater than 0");
        } else if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            problems.add(
                "spec.progressDeadlineSeconds",
                "must be greater than spec.minReadySeconds",
            );
        }
    }
    if let Some(analysis) = &spec.analysis {
        for (field, value) in [
            (
                "successfulRunHistoryLimit",
                analysis.successful_run_history_limit,
            ),
            (
                "unsuccessfulRunHistoryLimit",
                analysis.unsuccessful_run_history_limit,
            ),
        ] {
            if value.is_some_and(|v| v < 0) {
                problems.add(format!("spec.analysis.{field}"), "must not be negative");
            }
        }
    }
    match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(_), Some(_)) => problems.add(
            "spec.strategy",
            "both canary and blueGreen are set; keep exactly one strategy",
        ),
        (None, None) => problems.add("spec.strategy", "set either canary or blueGreen"),
        (Some(_), None) => validate_canary(spec, &mut problems),
        (None, Some(_)) => validate_blue_green(spec, &mut problems),
    }
    problems.0
}

fn validate_selector(selector: &LabelSelector, spec: &RolloutSpec, problems: &mut Problems) {
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let expressions = selector
        .match_expressions
        .as_ref()
        .filter(|e| !e.is_empty());
    if match_labels.is_none() && expressions.is_none() {
        problems.add(
            "spec.selector",
            "an empty selector would select every pod; set matchLabels that match spec.template.metadata.labels",
        );
        return;
    }
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (key, value) in match_labels.into_iter().flatten() {
        match template_labels.get(key) {
            Some(actual) if actual == value => {}
            Some(actual) => problems.add(
                format!("spec.selector.matchLabels.{key}"),
                format!(
                    "selects {key}={value} but spec.template.metadata.labels has {key}={actual}; make them equal"
                ),
            ),
            None => problems.add(
                format!("spec.selector.matchLabels.{key}"),
                format!("selects {key}={value} but spec.template.metadata.labels has no {key}; add it to the template"),
            ),
        }
    }
    for (index, expression) in expressions.into_iter().flatten().enumerate() {
        let field = format!("spec.selector.matchExpressions[{index}]");
        let actual = template_labels.get(&expression.key);
        let values = expression.values.clone().unwrap_or_default();
        let matches = match expression.operator.as_str() {
            "In" => actual.is_some_and(|a| values.contains(a)),
            "NotIn" => actual.is_none_or(|a| !values.contains(a)),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            other => {
                problems.add(
                    &field,
                    format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                );
                continue;
            }
        };
        if !matches {
            problems.add(&field, "does not match spec.template.metadata.labels; the rollout's pods would not be selected");
        }
    }
    if template_labels.contains_key(super::POD_TEMPLATE_HASH_LABEL) {
        problems.add(
            format!(
                "spec.template.metadata.labels.{}",
                super::POD_TEMPLATE_HASH_LABEL
            ),
            "is set by the controller; remove it from the template",
        );
    }
}

/// Role labels must not fight the labels that select the pods.
fn validate_role_metadata(
    field: &str,
    metadata: Option<&super::PodMetadata>,
    spec: &RolloutSpec,
    problems: &mut Problems,
) {
    let Some(metadata) = metadata else { return };
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for key in metadata.labels.keys() {
        if key == super::POD_TEMPLATE_HASH_LABEL || template_labels.contains_key(key) {
            problems.add(
                format!("{field}.labels.{key}"),
                "is also a pod template (or hash) label; role labels must use their own keys",
            );
        }
    }
}

fn validate_canary(spec: &RolloutSpec, problems: &mut Problems) {
    let Some(canary) = &spec.strategy.canary else {
        return;
    };
    let base = "spec.strategy.canary";
    validate_role_metadata(
        &format!("{base}.canaryMetadata"),
        canary.canary_metadata.as_ref(),
        spec,
        problems,
    );
    validate_role_metadata(
        &format!("{base}.stableMetadata"),
        canary.stable_metadata.as_ref(),
        spec,
        problems,
    );
    if let (Some(c), Some(s)) = (&canary.canary_service, &canary.stable_service)
        && c == s
    {
        problems.add(
            format!("{base}.canaryService"),
            format!("canaryService and stableService are both {c:?}; use two different Services"),
        );
    }
    for (field, service) in [
        ("canaryService", &canary.canary_service),
        ("stableService", &canary.stable_service),
    ] {
        if service.as_deref().is_some_and(|s| s.trim().is_empty()) {
            problems.add(
                format!("{base}.{field}"),
                "is empty; name a Service or remove the field",
            );
        }
    }
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let surge = canary
        .max_surge
        .as_ref()
        .map(|v| (v, resolve_int_or_percent(v, replicas, true)));
    let unavailable = canary
        .max_unavailable
        .as_ref()
        .map(|v| (v, resolve_int_or_percent(v, replicas, false)));
    for (field, parsed) in [("maxSurge", &surge), ("maxUnavailable", &unavailable)] {
        if let Some((_, Err(message))) = parsed {
            problems.add(format!("{base}.{field}"), message.clone());
        }
    }
    let is_zero = |v: &Option<(_, Result<i32, String>)>| matches!(v, Some((_, Ok(0))));
    if is_zero(&surge) && is_zero(&unavailable) {
        problems.add(
            format!("{base}.maxUnavailable"),
            "maxSurge and maxUnavailable are both 0, so no pod could ever be replaced; raise one of them",
        );
    }
    for (field, value) in [
        ("scaleDownDelaySeconds", canary.scale_down_delay_seconds),
        (
            "abortScaleDownDelaySeconds",
            canary.abort_scale_down_delay_seconds,
        ),
    ] {
        if value.is_some() {
            problems.add(
                format!("{base}.{field}"),
                "only applies with a traffic router, which Ramp does not support; remove it (basic canary scales old pods down as the weight moves)",
            );
        }
    }
    for (index, step) in canary.steps.iter().enumerate() {
        validate_step(&format!("{base}.steps[{index}]"), step, replicas, problems);
    }
    if let Some(background) = &canary.analysis {
        validate_analysis_ref(&format!("{base}.analysis"), &background.analysis, problems);
        if let Some(start) = background.starting_step
            && (start < 0 || start as usize > canary.steps.len())
        {
            problems.add(
                format!("{base}.analysis.startingStep"),
                format!(
                    "{start} is outside the {} steps; use 0..={}",
                    canary.steps.len(),
                    canary.steps.len()
                ),
            );
        }
    }
}

fn validate_step(field: &str, step: &CanaryStep, replicas: i32, problems: &mut Problems) {
    let mut kinds = Vec::new();
    if step.set_weight.is_some() {
        kinds.push("setWeight");
    }
    if step.pause.is_some() {
        kinds.push("pause");
    }
    if step.set_canary_scale.is_some() {
        kinds.push("setCanaryScale");
    }
    if step.analysis.is_some() {
        kinds.push("analysis");
    }
    if let Some(unknown) = step.unknown.keys().next() {
        problems.add(
            format!("{field}.{unknown}"),
            format!("unknown step {unknown:?}; supported steps are setWeight, pause, setCanaryScale and analysis"),
        );
        return;
    }
    if kinds.len() != 1 {
        let found = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(" and ")
        };
        problems.add(
            field,
            format!("a step must set exactly one of setWeight, pause, setCanaryScale or analysis; found {found}"),
        );
        return;
    }
    if let Some(weight) = step.set_weight
        && !(0..=100).contains(&weight)
    {
        problems.add(
            format!("{field}.setWeight"),
            format!("{weight} is not a percentage; use 0 to 100"),
        );
    }
    if let Some(duration) = step.pause.as_ref().and_then(|p| p.duration.as_ref())
        && let Err(message) = parse_int_or_duration(duration)
    {
        problems.add(format!("{field}.pause.duration"), message);
    }
    if let Some(scale) = &step.set_canary_scale {
        let set = [
            scale.replicas.is_some(),
            scale.weight.is_some(),
            scale.match_traffic_weight == Some(true),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            problems.add(
                format!("{field}.setCanaryScale"),
                "set exactly one of replicas, weight or matchTrafficWeight: true",
            );
        }
        if let Some(count) = scale.replicas
            && !(0..=replicas).contains(&count)
        {
            problems.add(
                format!("{field}.setCanaryScale.replicas"),
                format!("{count} is outside 0..={replicas} (spec.replicas)"),
            );
        }
        if let Some(weight) = scale.weight
            && !(0..=100).contains(&weight)
        {
            problems.add(
                format!("{field}.setCanaryScale.weight"),
                format!("{weight} is not a percentage; use 0 to 100"),
            );
        }
    }
    if let Some(analysis) = &step.analysis {
        validate_analysis_ref(&format!("{field}.analysis"), analysis, problems);
    }
}

fn validate_analysis_ref(field: &str, analysis: &RolloutAnalysis, problems: &mut Problems) {
    if analysis.templates.is_empty() {
        problems.add(
            format!("{field}.templates"),
            "name at least one AnalysisTemplate",
        );
    }
    for (index, template) in analysis.templates.iter().enumerate() {
        if template.template_name.trim().is_empty() {
            problems.add(
                format!("{field}.templates[{index}].templateName"),
                "is empty; name an AnalysisTemplate",
            );
        }
    }
    for (index, arg) in analysis.args.iter().enumerate() {
        let arg_field = format!("{field}.args[{index}]");
        if arg.name.trim().is_empty() {
            problems.add(format!("{arg_field}.name"), "is empty");
        }
        match (&arg.value, &arg.value_from) {
            (Some(_), Some(_)) => problems.add(&arg_field, "set value or valueFrom, not both"),
            (None, None) => problems.add(
                &arg_field,
                format!("argument {:?} needs a value or valueFrom", arg.name),
            ),
            (None, Some(from)) => {
                let set = usize::from(from.pod_template_hash_value.is_some())
                    + usize::from(from.field_ref.is_some());
                if set != 1 {
                    problems.add(
                        format!("{arg_field}.valueFrom"),
                        "set exactly one of podTemplateHashValue (Stable or Latest) or fieldRef",
                    );
                }
            }
            (Some(_), None) => {}
        }
    }
}

fn validate_blue_green(spec: &RolloutSpec, problems: &mut Problems) {
    let Some(bg) = &spec.strategy.blue_green else {
        return;
    };
    let base = "spec.strategy.blueGreen";
    validate_role_metadata(
        &format!("{base}.activeMetadata"),
        bg.active_metadata.as_ref(),
        spec,
        problems,
    );
    validate_role_metadata(
        &format!("{base}.previewMetadata"),
        bg.preview_metadata.as_ref(),
        spec,
        problems,
    );
    if bg.active_service.trim().is_empty() {
        problems.add(
            format!("{base}.activeService"),
            "is required; name the Service that carries production traffic",
        );
    }
    if bg.preview_service.as_deref() == Some(bg.active_service.as_str()) {
        problems.add(
            format!("{base}.previewService"),
            format!(
                "is the same Service as activeService ({:?}); use a different Service",
                bg.active_service
            ),
        );
    }
    for (field, value) in [
        ("autoPromotionSeconds", bg.auto_promotion_seconds),
        ("previewReplicaCount", bg.preview_replica_count),
        ("scaleDownDelaySeconds", bg.scale_down_delay_seconds),
        (
            "scaleDownDelayRevisionLimit",
            bg.scale_down_delay_revision_limit,
        ),
        (
            "abortScaleDownDelaySeconds",
            bg.abort_scale_down_delay_seconds,
        ),
    ] {
        if value.is_some_and(|v| v < 0) {
            problems.add(format!("{base}.{field}"), "must not be negative");
        }
    }
    if let (Some(limit), Some(history)) = (
        bg.scale_down_delay_revision_limit,
        spec.revision_history_limit,
    ) && limit > history
    {
        problems.add(
            format!("{base}.scaleDownDelayRevisionLimit"),
            format!("{limit} exceeds spec.revisionHistoryLimit ({history}); lower it or raise the history limit"),
        );
    }
    if let Some(analysis) = &bg.pre_promotion_analysis {
        validate_analysis_ref(&format!("{base}.prePromotionAnalysis"), analysis, problems);
    }
    if let Some(analysis) = &bg.post_promotion_analysis {
        validate_analysis_ref(&format!("{base}.postPromotionAnalysis"), analysis, problems);
    }
}

/// One line for conditions and Events: the first few problems, joined.
pub fn summarize(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems.iter().take(3).map(Problem::to_string).collect();
    let mut summary = shown.join("; ");
    if problems.len() > 3 {
        summary.push_str(&format!(" (and {} more)", problems.len() - 3));
    }
    summary
}
