//! The Rollout side of analysis: which AnalysisRuns should exist, building
//! them from templates and arguments, reading their outcome, and history.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{AnalysisRunChange, Ctx, owner_reference};
use crate::api::validate::Problem;
use crate::api::{
    ANALYSIS_STEP_LABEL, ANALYSIS_TYPE_LABEL, AnalysisPhase, AnalysisRun, AnalysisRunSpec,
    Argument, BlueGreenStatus, CanaryStatus, DEFAULT_ANALYSIS_HISTORY_LIMIT,
    POD_TEMPLATE_HASH_LABEL, PodTemplateHashValue, Rollout, RolloutAnalysis,
    RolloutAnalysisRunStatus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnalysisKind {
    Step(i32),
    Background,
    PrePromotion,
    PostPromotion,
}

impl fmt::Display for AnalysisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnalysisKind::Step(index) => write!(f, "step {} analysis", index + 1),
            AnalysisKind::Background => f.write_str("background analysis"),
            AnalysisKind::PrePromotion => f.write_str("pre-promotion analysis"),
            AnalysisKind::PostPromotion => f.write_str("post-promotion analysis"),
        }
    }
}

impl AnalysisKind {
    fn label(self) -> &'static str {
        match self {
            AnalysisKind::Step(_) => "Step",
            AnalysisKind::Background => "Background",
            AnalysisKind::PrePromotion => "PrePromotion",
            AnalysisKind::PostPromotion => "PostPromotion",
        }
    }
}

pub(crate) enum Gate {
    Passed,
    Waiting,
    Failed(String),
    Inconclusive(String),
}

/// Name of the run for this revision and purpose:
/// `<rollout>-<hash>-<revision>[-<step>|-pre|-post][-try<N>]`.
fn run_name(ctx: &Ctx<'_>, kind: AnalysisKind) -> String {
    let rollout = ctx.rollout.metadata.name.as_deref().unwrap_or_default();
    let new = ctx.new_set();
    let mut name = format!("{rollout}-{}-{}", new.hash, new.revision);
    match kind {
        AnalysisKind::Step(index) => name.push_str(&format!("-{index}")),
        AnalysisKind::Background => {}
        AnalysisKind::PrePromotion => name.push_str("-pre"),
        AnalysisKind::PostPromotion => name.push_str("-post"),
    }
    if ctx.status.retry_count > 0 {
        name.push_str(&format!("-try{}", ctx.status.retry_count + 1));
    }
    name
}

/// Ensures the run for `kind` exists and reports whether it lets the rollout continue.
pub(crate) fn gate(ctx: &mut Ctx<'_>, kind: AnalysisKind, analysis: &RolloutAnalysis) -> Gate {
    let base = run_name(ctx, kind);
    let find = |name: &str| {
        ctx.snap
            .analysis_runs
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .copied()
    };
    // A promote past an inconclusive background, pre- or post-promotion run
    // starts a fresh attempt (`-attempt2`, ...), as Argo creates a new run.
    let mut name = base.clone();
    let mut attempt = 1;
    while find(&attempt_name(&base, attempt + 1)).is_some() {
        attempt += 1;
        name = attempt_name(&base, attempt);
    }
    ctx.wanted_runs.insert(name.clone());
    let existing = find(&name);
    let Some(run) = existing else {
        return start_run(ctx, kind, analysis, &name);
    };
    let status = run.status.as_ref();
    let phase = status
        .and_then(|s| s.phase)
        .unwrap_or(AnalysisPhase::Pending);
    let message = status.and_then(|s| s.message.clone());
    record(ctx, kind, &name, phase, message.clone());
    let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
    match phase {
        AnalysisPhase::Successful => Gate::Passed,
        AnalysisPhase::Failed | AnalysisPhase::Error => Gate::Failed(format!(
            "AnalysisRun {name} ({kind}) ended {}{detail}",
            phase.as_str()
        )),
        AnalysisPhase::Inconclusive => {
            let promoted = ctx.status.controller_pause && ctx.status.pause_conditions.is_empty();
            match kind {
                // A promote skips an inconclusive step.
                AnalysisKind::Step(_) if promoted => {
                    ctx.status.controller_pause = false;
                    Gate::Passed
                }
                // The others measure again; the promote's release is left for
                // the pause it was meant for.
                _ if promoted => {
                    let next = attempt_name(&base, attempt + 1);
                    ctx.wanted_runs.insert(next.clone());
                    start_run(ctx, kind, analysis, &next)
                }
                _ => Gate::Inconclusive(format!(
                    "InconclusiveAnalysisRun: {name}{detail}; promote to continue or abort"
                )),
            }
        }
        AnalysisPhase::Pending | AnalysisPhase::Running => Gate::Waiting,
    }
}

fn attempt_name(base: &str, attempt: u32) -> String {
    if attempt <= 1 {
        base.to_string()
    } else {
        format!("{base}-attempt{attempt}")
    }
}

fn start_run(
    ctx: &mut Ctx<'_>,
    kind: AnalysisKind,
    analysis: &RolloutAnalysis,
    name: &str,
) -> Gate {
    match build_run(ctx, kind, analysis, name) {
        Ok(run) => {
            ctx.analysis_runs
                .push(AnalysisRunChange::Create(Box::new(run)));
            ctx.event(
                "AnalysisRunCreated",
                format!("Created AnalysisRun {name} for {kind}"),
            );
            record(ctx, kind, name, AnalysisPhase::Pending, None);
            Gate::Waiting
        }
        Err(message) => {
            record(ctx, kind, name, AnalysisPhase::Error, Some(message.clone()));
            Gate::Failed(format!("{kind} could not start: {message}"))
        }
    }
}

fn record(
    ctx: &mut Ctx<'_>,
    kind: AnalysisKind,
    name: &str,
    phase: AnalysisPhase,
    message: Option<String>,
) {
    let entry = Some(RolloutAnalysisRunStatus {
        name: name.to_string(),
        status: phase.as_str().to_string(),
        message,
    });
    match kind {
        AnalysisKind::Step(_) => {
            ctx.status
                .canary
                .get_or_insert_with(CanaryStatus::default)
                .current_step_analysis_run_status = entry
        }
        AnalysisKind::Background => {
            ctx.status
                .canary
                .get_or_insert_with(CanaryStatus::default)
                .current_background_analysis_run_status = entry
        }
        AnalysisKind::PrePromotion => {
            ctx.status
                .blue_green
                .get_or_insert_with(BlueGreenStatus::default)
                .pre_promotion_analysis_run_status = entry
        }
        AnalysisKind::PostPromotion => {
            ctx.status
                .blue_green
                .get_or_insert_with(BlueGreenStatus::default)
                .post_promotion_analysis_run_status = entry
        }
    }
}

fn build_run(
    ctx: &Ctx<'_>,
    kind: AnalysisKind,
    analysis: &RolloutAnalysis,
    name: &str,
) -> Result<AnalysisRun, String> {
    let rollout = ctx.rollout;
    let namespace = rollout.metadata.namespace.clone().unwrap_or_default();
    let mut spec = AnalysisRunSpec::default();
    let mut args: BTreeMap<String, Argument> = BTreeMap::new();
    for reference in &analysis.templates {
        let cluster = reference.cluster_scope.unwrap_or(false);
        let template = ctx.snap.analysis_templates.get(&(cluster, reference.template_name.clone())).ok_or_else(|| {
            if cluster {
                format!("ClusterAnalysisTemplate {:?} not found; create it or fix templateName", reference.template_name)
            } else {
                format!(
                    "AnalysisTemplate {:?} not found in namespace {namespace}; create it, fix templateName, or set clusterScope: true",
                    reference.template_name
                )
            }
        })?;
        if cluster
            && !ctx.snap.cluster_templates_read_secrets
            && let Some((field, secret)) = template.secret_references().first()
        {
            return Err(format!(
                "ClusterAnalysisTemplate {:?} reads Secret {:?} ({field}), but cluster templates may not read Secrets unless the controller runs with --allow-cluster-template-secrets; move the metric into an AnalysisTemplate in namespace {namespace}",
                reference.template_name, secret.name
            ));
        }
        for metric in &template.metrics {
            if spec.metrics.iter().any(|m| m.name == metric.name) {
                return Err(format!(
                    "metric {:?} is defined by more than one template; rename one",
                    metric.name
                ));
            }
            spec.metrics.push(metric.clone());
        }
        for arg in &template.args {
            args.entry(arg.name.clone()).or_insert_with(|| arg.clone());
        }
        spec.dry_run.extend(template.dry_run.iter().cloned());
        spec.measurement_retention
            .extend(template.measurement_retention.iter().cloned());
    }
    for arg in &analysis.args {
        let value = match (&arg.value, &arg.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match (from.pod_template_hash_value, &from.field_ref) {
                (Some(PodTemplateHashValue::Latest), _) => ctx.new_set().hash.clone(),
                (Some(PodTemplateHashValue::Stable), _) => {
                    ctx.stable_set().map(|s| s.hash.clone()).ok_or_else(|| format!("argument {:?} asks for the stable hash but there is no stable ReplicaSet", arg.name))?
                }
                (None, Some(field)) => resolve_field_path(rollout, &field.field_path)
                    .map_err(|e| format!("argument {:?}: {e}", arg.name))?,
                (None, None) => return Err(format!("argument {:?} has an empty valueFrom", arg.name)),
            },
            (None, None) => return Err(format!("argument {:?} has no value", arg.name)),
        };
        args.insert(
            arg.name.clone(),
            Argument {
                name: arg.name.clone(),
                value: Some(value),
                value_from: None,
            },
        );
    }
    // A template's own `valueFrom.fieldRef` reads the Rollout, as a
    // rollout-level one does; the run gets the value, not the reference.
    for arg in args.values_mut() {
        let field = arg
            .value_from
            .as_ref()
            .filter(|_| arg.value.is_none())
            .and_then(|from| from.field_ref.as_ref())
            .map(|field| field.field_path.clone());
        if let Some(path) = field {
            let value = resolve_field_path(rollout, &path)
                .map_err(|e| format!("template argument {:?}: {e}", arg.name))?;
            arg.value = Some(value);
            arg.value_from = None;
        }
    }
    if let Some(missing) = args
        .values()
        .find(|a| a.value.is_none() && a.value_from.is_none())
    {
        return Err(format!(
            "argument {:?} is required by the template but has no value; add it to the rollout's analysis args",
            missing.name
        ));
    }
    spec.args = args.into_values().collect();
    spec.dry_run.extend(analysis.dry_run.iter().cloned());
    spec.measurement_retention
        .extend(analysis.measurement_retention.iter().cloned());

    let mut labels: BTreeMap<String, String> = rollout
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    labels.insert(
        POD_TEMPLATE_HASH_LABEL.to_string(),
        ctx.new_set().hash.clone(),
    );
    labels.insert(ANALYSIS_TYPE_LABEL.to_string(), kind.label().to_string());
    if let AnalysisKind::Step(index) = kind {
        labels.insert(ANALYSIS_STEP_LABEL.to_string(), index.to_string());
    }
    let metadata = analysis.analysis_run_metadata.clone().unwrap_or_default();
    labels.extend(metadata.labels);
    let mut run = AnalysisRun::new(name, spec);
    run.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace),
        labels: Some(labels),
        annotations: (!metadata.annotations.is_empty()).then_some(metadata.annotations),
        owner_references: owner_reference(rollout).map(|r| vec![r]),
        ..ObjectMeta::default()
    };
    Ok(run)
}

/// Resolves `metadata.name`, `metadata.labels['key']`, `spec.replicas` and
/// similar paths against the Rollout.
pub(crate) fn resolve_field_path(rollout: &Rollout, path: &str) -> Result<String, String> {
    let document =
        serde_json::to_value(rollout).map_err(|e| format!("cannot read the rollout: {e}"))?;
    let mut current = &document;
    let mut rest = path.trim();
    while !rest.is_empty() {
        let (key, remainder) = if let Some(bracketed) = rest.strip_prefix("['") {
            let end = bracketed
                .find("']")
                .ok_or_else(|| format!("unclosed [' in field path {path:?}"))?;
            (&bracketed[..end], &bracketed[end + 2..])
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        current = current.get(key).ok_or_else(|| {
            format!("field path {path:?} does not exist on the rollout (no {key:?})")
        })?;
        rest = remainder.strip_prefix('.').unwrap_or(remainder);
    }
    match current {
        serde_json::Value::String(text) => Ok(text.clone()),
        serde_json::Value::Null => Err(format!("field path {path:?} is empty")),
        other => Ok(other.to_string()),
    }
}

/// Terminates runs nothing waits for any more, and deletes completed runs
/// beyond the Rollout's history limits (newest kept).
pub(crate) fn cleanup_history(ctx: &mut Ctx<'_>) {
    let limits = ctx.rollout.spec.analysis.as_ref();
    let keep_successful = limits
        .and_then(|l| l.successful_run_history_limit)
        .unwrap_or(DEFAULT_ANALYSIS_HISTORY_LIMIT)
        .max(0) as usize;
    let keep_unsuccessful = limits
        .and_then(|l| l.unsuccessful_run_history_limit)
        .unwrap_or(DEFAULT_ANALYSIS_HISTORY_LIMIT)
        .max(0) as usize;
    let mut runs: Vec<&AnalysisRun> = ctx.snap.analysis_runs.clone();
    runs.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    });
    let mut successful = 0usize;
    let mut unsuccessful = 0usize;
    let mut changes = Vec::new();
    let wanted: &BTreeSet<String> = &ctx.wanted_runs;
    for run in runs {
        let name = run.metadata.name.clone().unwrap_or_default();
        let phase = run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(AnalysisPhase::Pending);
        if wanted.contains(&name) {
            continue;
        }
        if !phase.is_completed() {
            if run.spec.terminate != Some(true) {
                changes.push(AnalysisRunChange::Terminate { name });
            }
            continue;
        }
        let (seen, keep) = if phase == AnalysisPhase::Successful {
            (&mut successful, keep_successful)
        } else {
            (&mut unsuccessful, keep_unsuccessful)
        };
        *seen += 1;
        if *seen > keep {
            changes.push(AnalysisRunChange::Delete { name });
        }
    }
    ctx.analysis_runs.extend(changes);
}

/// Every analysis a Rollout declares, with its field path and whether it
/// runs in the background (background analysis may run indefinitely).
pub fn declared_analyses(rollout: &Rollout) -> Vec<(String, &RolloutAnalysis, bool)> {
    let strategy = &rollout.spec.strategy;
    let mut found = Vec::new();
    if let Some(canary) = &strategy.canary {
        for (index, step) in canary.steps.iter().enumerate() {
            if let Some(analysis) = &step.analysis {
                found.push((
                    format!("spec.strategy.canary.steps[{index}].analysis"),
                    analysis,
                    false,
                ));
            }
        }
        if let Some(background) = &canary.analysis {
            found.push((
                "spec.strategy.canary.analysis".to_string(),
                &background.analysis,
                true,
            ));
        }
    }
    if let Some(bg) = &strategy.blue_green {
        if let Some(analysis) = &bg.pre_promotion_analysis {
            found.push((
                "spec.strategy.blueGreen.prePromotionAnalysis".to_string(),
                analysis,
                false,
            ));
        }
        if let Some(analysis) = &bg.post_promotion_analysis {
            found.push((
                "spec.strategy.blueGreen.postPromotionAnalysis".to_string(),
                analysis,
                false,
            ));
        }
    }
    found
}

/// Checks, on every reconcile, that each referenced template exists and that
/// no gating metric would run forever (Argo's `getRolloutValidationErrors`).
pub(crate) fn check_template_references(snap: &super::Snapshot<'_>) -> Vec<Problem> {
    let namespace = snap.namespace();
    let mut problems = Vec::new();
    for (path, analysis, background) in declared_analyses(snap.rollout) {
        for (index, reference) in analysis.templates.iter().enumerate() {
            let field = format!("{path}.templates[{index}].templateName");
            let cluster = reference.cluster_scope.unwrap_or(false);
            let Some(template) = snap
                .analysis_templates
                .get(&(cluster, reference.template_name.clone()))
            else {
                let message = if cluster {
                    format!(
                        "ClusterAnalysisTemplate {:?} not found; create it or fix templateName",
                        reference.template_name
                    )
                } else {
                    format!(
                        "AnalysisTemplate {:?} not found in namespace {namespace}; create it, fix templateName, or set clusterScope: true",
                        reference.template_name
                    )
                };
                problems.push(Problem { field, message });
                continue;
            };
            for metric in &template.metrics {
                let unsupported = metric.provider.unknown.keys().next();
                if let Some(provider) = unsupported.filter(|_| {
                    metric.provider.prometheus.is_none()
                        && metric.provider.web.is_none()
                        && metric.provider.job.is_none()
                }) {
                    problems.push(Problem {
                        field: field.clone(),
                        message: format!(
                            "metric {:?} of template {:?} uses provider {provider:?}, which Ramp does not implement (it has prometheus, web and job); change the provider or drop the metric",
                            metric.name, reference.template_name
                        ),
                    });
                }
            }
            if background {
                continue;
            }
            for metric in &template.metrics {
                if runs_indefinitely(metric) {
                    problems.push(Problem {
                        field: field.clone(),
                        message: format!(
                            "metric {:?} of template {:?} has an interval but no count, so it runs indefinitely and the rollout could never continue; set count, or use it in background analysis",
                            metric.name, reference.template_name
                        ),
                    });
                }
            }
        }
    }
    problems
}

/// A metric with an interval and no count (or count 0) never completes.
/// A count given as an argument placeholder is resolved later and trusted.
fn runs_indefinitely(metric: &crate::api::Metric) -> bool {
    let count = match &metric.count {
        None => 0,
        Some(IntOrString::Int(count)) => *count,
        Some(IntOrString::String(text)) => text.trim().parse().unwrap_or(1),
    };
    metric.interval.is_some() && count == 0
}
