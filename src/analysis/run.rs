//! The AnalysisRun lifecycle as pure functions: which metrics are due, how a
//! measurement updates a metric, and how limits decide metric and run phases.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regex::Regex;

use crate::api::duration::{parse_duration, parse_int_or_string};
use crate::api::{
    AnalysisPhase, AnalysisRun, AnalysisRunStatus, Measurement, Metric, MetricResult, RunSummary,
};

/// Measurements kept per metric unless measurementRetention says otherwise.
pub const DEFAULT_MEASUREMENT_RETENTION: usize = 10;
/// Wait before retrying a measurement that errored, when the metric has no shorter interval.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);

/// A metric's timing and limits, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub interval: Option<Duration>,
    pub initial_delay: Duration,
    /// None: keep measuring until the run is terminated.
    pub count: Option<i64>,
    /// None: failures never fail the metric (-1).
    pub failure_limit: Option<i64>,
    pub inconclusive_limit: i64,
    pub consecutive_error_limit: i64,
    /// None: disabled (0).
    pub consecutive_success_limit: Option<i64>,
}

impl Policy {
    pub fn of(metric: &Metric) -> Result<Policy, String> {
        let field =
            |name: &str, message: String| format!("metric {:?}: {name}: {message}", metric.name);
        let interval = metric
            .interval
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| field("interval", e))?;
        if interval.is_some_and(|i| i.is_zero()) {
            return Err(field("interval", "must be greater than 0".into()));
        }
        let initial_delay = metric
            .initial_delay
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| field("initialDelay", e))?
            .unwrap_or_default();
        let limit = |name: &str, value: &Option<_>, default: i64| -> Result<i64, String> {
            value
                .as_ref()
                .map(parse_int_or_string)
                .transpose()
                .map_err(|e| field(name, e))
                .map(|v| v.unwrap_or(default))
        };
        let count = metric
            .count
            .as_ref()
            .map(parse_int_or_string)
            .transpose()
            .map_err(|e| field("count", e))?;
        if count.is_some_and(|c| c < 1) {
            return Err(field("count", "must be at least 1".into()));
        }
        if count.is_some_and(|c| c > 1) && interval.is_none() {
            return Err(field(
                "count",
                "more than one measurement needs an interval".into(),
            ));
        }
        let count = match (count, interval) {
            (Some(count), _) => Some(count),
            (None, None) => Some(1),
            (None, Some(_)) => None,
        };
        let failure_limit = limit("failureLimit", &metric.failure_limit, 0)?;
        if failure_limit < -1 {
            return Err(field(
                "failureLimit",
                "must be -1 (disabled) or more".into(),
            ));
        }
        let inconclusive_limit = limit("inconclusiveLimit", &metric.inconclusive_limit, 0)?;
        let consecutive_error_limit =
            limit("consecutiveErrorLimit", &metric.consecutive_error_limit, 4)?;
        let consecutive_success_limit = limit(
            "consecutiveSuccessLimit",
            &metric.consecutive_success_limit,
            0,
        )?;
        if inconclusive_limit < 0 || consecutive_error_limit < 0 || consecutive_success_limit < 0 {
            return Err(field("limits", "inconclusiveLimit, consecutiveErrorLimit and consecutiveSuccessLimit must not be negative".into()));
        }
        if failure_limit == -1 && consecutive_success_limit == 0 {
            return Err(field(
                "failureLimit",
                "with failureLimit -1 set consecutiveSuccessLimit, or the metric could never fail or pass on evidence".into(),
            ));
        }
        Ok(Policy {
            interval,
            initial_delay,
            count,
            failure_limit: (failure_limit >= 0).then_some(failure_limit),
            inconclusive_limit,
            consecutive_error_limit,
            consecutive_success_limit: (consecutive_success_limit > 0)
                .then_some(consecutive_success_limit),
        })
    }
}

/// The run with `{{args.NAME}}` replaced by plain argument values in the
/// metrics' timing, limits and conditions (`count: "{{args.count}}"`, as
/// Argo allows). Placeholders of Secret-valued or unknown arguments stay:
/// providers fill those per measurement, and a timing field still holding
/// one is reported by `Policy::of`.
/// None when the run has no plain argument, so the common case copies nothing.
pub fn with_plain_args(run: &AnalysisRun) -> Option<AnalysisRun> {
    let plain: std::collections::BTreeMap<&str, &str> = run
        .spec
        .args
        .iter()
        .filter_map(|a| Some((a.name.as_str(), a.value.as_deref()?)))
        .collect();
    if plain.is_empty() {
        return None;
    }
    let mut resolved = run.clone();
    for metric in &mut resolved.spec.metrics {
        fill_timing_and_conditions(metric, &plain);
    }
    Some(resolved)
}

/// `fill_known` over a metric's timing, limits and conditions.
pub fn fill_timing_and_conditions(
    metric: &mut Metric,
    args: &std::collections::BTreeMap<&str, &str>,
) {
    let texts = [
        &mut metric.interval,
        &mut metric.initial_delay,
        &mut metric.success_condition,
        &mut metric.failure_condition,
    ];
    for text in texts.into_iter().flatten() {
        *text = fill_known(text, args);
    }
    let limits = [
        &mut metric.count,
        &mut metric.failure_limit,
        &mut metric.inconclusive_limit,
        &mut metric.consecutive_error_limit,
        &mut metric.consecutive_success_limit,
    ];
    for limit in limits.into_iter().flatten() {
        if let IntOrString::String(text) = limit {
            *text = fill_known(text, args);
        }
    }
}

/// Replaces the placeholders whose argument is known and keeps the rest.
pub fn fill_known(text: &str, args: &std::collections::BTreeMap<&str, &str>) -> String {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start..].find("}}") else {
            break;
        };
        let placeholder = &rest[start + 2..start + length];
        output.push_str(&rest[..start]);
        match placeholder
            .trim()
            .strip_prefix("args.")
            .and_then(|n| args.get(n))
        {
            Some(value) => output.push_str(value),
            None => output.push_str(&rest[start..start + length + 2]),
        }
        rest = &rest[start + length + 2..];
    }
    output.push_str(rest);
    output
}

/// Whether `name` is a dry-run metric (names may be regular expressions; `.*` matches all).
pub fn is_dry_run(run: &AnalysisRun, name: &str) -> bool {
    run.spec
        .dry_run
        .iter()
        .any(|d| full_match(&d.metric_name, name))
}

fn full_match(pattern: &str, name: &str) -> bool {
    pattern == name || Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(name))
}

pub fn retention(run: &AnalysisRun, name: &str) -> usize {
    run.spec
        .measurement_retention
        .iter()
        .find(|r| full_match(&r.metric_name, name))
        .map(|r| r.limit.max(1) as usize)
        .unwrap_or(DEFAULT_MEASUREMENT_RETENTION)
}

/// Indexes of metrics to measure now, and when the next one falls due.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    pub now: Vec<usize>,
    pub next: Option<Timestamp>,
}

/// Whether a measurement is still in flight (a Job that has not finished).
pub fn in_flight(measurement: &Measurement) -> bool {
    measurement.phase == AnalysisPhase::Running && measurement.finished_at.is_none()
}

/// The metric's measurement still in flight, if any.
pub fn in_flight_measurement<'a>(
    status: &'a AnalysisRunStatus,
    metric: &str,
) -> Option<&'a Measurement> {
    status
        .metric_results
        .iter()
        .find(|r| r.name == metric)
        .and_then(|r| r.measurements.last())
        .filter(|m| in_flight(m))
}

/// Metrics due now and the next time one falls due. A measurement in
/// flight is due at its `resumeAt`; a terminated run takes no new
/// measurements, but its measurements in flight are due at once (to be
/// stopped).
pub fn due_metrics(run: &AnalysisRun, status: &AnalysisRunStatus, now: Timestamp) -> Due {
    let terminating = run.spec.terminate == Some(true);
    let mut due = Due::default();
    let started = status.started_at.as_ref().map(|t| t.0).unwrap_or(now);
    for (index, metric) in run.spec.metrics.iter().enumerate() {
        let Ok(policy) = Policy::of(metric) else {
            continue;
        };
        let result = status.metric_results.iter().find(|r| r.name == metric.name);
        let flying = in_flight_measurement(status, &metric.name);
        if result.is_some_and(|r| r.phase.is_completed()) && flying.is_none() {
            continue;
        }
        if terminating && flying.is_none() {
            continue;
        }
        let at = match result.and_then(|r| r.measurements.last()) {
            Some(last) if in_flight(last) => {
                if terminating {
                    now
                } else {
                    last.resume_at.as_ref().map_or(now, |t| t.0)
                }
            }
            None => add(started, policy.initial_delay),
            Some(last) => {
                let finished = last.finished_at.as_ref().map(|t| t.0).unwrap_or(now);
                let wait = if last.phase == AnalysisPhase::Error {
                    policy.interval.map_or(ERROR_RETRY, |i| i.min(ERROR_RETRY))
                } else {
                    policy.interval.unwrap_or(ERROR_RETRY)
                };
                add(finished, wait)
            }
        };
        if at <= now {
            due.now.push(index);
        } else if due.next.is_none_or(|n| at < n) {
            due.next = Some(at);
        }
    }
    due
}

fn add(at: Timestamp, wait: Duration) -> Timestamp {
    at.checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX))
        .unwrap_or(at)
}

/// Adds a measurement to its metric's result, updating the tallies.
pub fn record(
    run: &AnalysisRun,
    status: &mut AnalysisRunStatus,
    metric: &Metric,
    measurement: Measurement,
) {
    let keep = retention(run, &metric.name);
    let index = match status
        .metric_results
        .iter()
        .position(|r| r.name == metric.name)
    {
        Some(index) => index,
        None => {
            status
                .metric_results
                .push(empty_result(run, metric, AnalysisPhase::Running, None));
            status.metric_results.len() - 1
        }
    };
    let result = &mut status.metric_results[index];
    // A measurement that was in flight is replaced by what became of it.
    if result.measurements.last().is_some_and(in_flight) {
        result.measurements.pop();
    }
    if in_flight(&measurement) {
        // Counted only once it ends.
        result.measurements.push(measurement);
        return;
    }
    match measurement.phase {
        AnalysisPhase::Error => {
            result.error += 1;
            result.consecutive_error += 1;
            result.consecutive_success = 0;
        }
        phase => {
            result.count += 1;
            result.consecutive_error = 0;
            match phase {
                AnalysisPhase::Successful => {
                    result.successful += 1;
                    result.consecutive_success += 1;
                }
                AnalysisPhase::Failed => {
                    result.failed += 1;
                    result.consecutive_success = 0;
                }
                _ => {
                    result.inconclusive += 1;
                    result.consecutive_success = 0;
                }
            }
        }
    }
    result.message = measurement
        .message
        .clone()
        .filter(|_| measurement.phase != AnalysisPhase::Successful);
    result.measurements.push(measurement);
    if result.measurements.len() > keep {
        let excess = result.measurements.len() - keep;
        result.measurements.drain(..excess);
    }
}

/// A metric's phase from its tallies. Errors never count toward `count`, so
/// a metric cannot pass on measurements that produced no evidence.
pub fn metric_phase(
    policy: &Policy,
    result: &MetricResult,
    terminated: bool,
) -> (AnalysisPhase, Option<String>) {
    if let Some(limit) = policy.failure_limit
        && i64::from(result.failed) > limit
    {
        return (
            AnalysisPhase::Failed,
            Some(format!(
                "failed {} times, more than failureLimit {limit}",
                result.failed
            )),
        );
    }
    if i64::from(result.inconclusive) > policy.inconclusive_limit {
        let message = format!(
            "inconclusive {} times, more than inconclusiveLimit {}",
            result.inconclusive, policy.inconclusive_limit
        );
        return (AnalysisPhase::Inconclusive, Some(message));
    }
    if i64::from(result.consecutive_error) > policy.consecutive_error_limit {
        let message = format!(
            "{} consecutive errors, more than consecutiveErrorLimit {}",
            result.consecutive_error, policy.consecutive_error_limit
        );
        return (AnalysisPhase::Error, Some(message));
    }
    if let Some(limit) = policy.consecutive_success_limit
        && i64::from(result.consecutive_success) >= limit
    {
        return (AnalysisPhase::Successful, None);
    }
    let count_reached = policy
        .count
        .is_some_and(|count| i64::from(result.count) >= count);
    if count_reached || terminated {
        return match (policy.consecutive_success_limit, policy.failure_limit) {
            (Some(limit), Some(_)) if !terminated => (
                AnalysisPhase::Inconclusive,
                Some(format!(
                    "count reached without {limit} consecutive successes"
                )),
            ),
            (Some(limit), None) if !terminated => (
                AnalysisPhase::Failed,
                Some(format!(
                    "count reached without {limit} consecutive successes"
                )),
            ),
            _ => (AnalysisPhase::Successful, None),
        };
    }
    (AnalysisPhase::Running, None)
}

/// Re-derives every metric phase and the run phase, summary and message.
/// Run phase is the worst metric phase (Successful < Running < Pending <
/// Inconclusive < Error < Failed), ignoring dry-run metrics; a run completes
/// early as soon as one metric is Inconclusive, Error or Failed.
pub fn assess(run: &AnalysisRun, status: &mut AnalysisRunStatus, now: Timestamp) {
    let terminated = run.spec.terminate == Some(true);
    let mut worst = AnalysisPhase::Successful;
    let mut message = None;
    let mut summary = RunSummary::default();
    let mut dry_summary = RunSummary::default();
    for metric in &run.spec.metrics {
        let dry_run = is_dry_run(run, &metric.name);
        let phase = match Policy::of(metric) {
            Err(error) => {
                if !dry_run && worst.severity() < AnalysisPhase::Error.severity() {
                    message = Some(error.clone());
                }
                set_result_phase(run, status, metric, AnalysisPhase::Error, Some(error));
                AnalysisPhase::Error
            }
            Ok(policy) => match status.metric_results.iter().find(|r| r.name == metric.name) {
                None if terminated => AnalysisPhase::Successful,
                None => AnalysisPhase::Pending,
                Some(result) if result.phase.is_completed() => result.phase,
                // Nothing to judge while a measurement is in flight.
                Some(result) if result.measurements.last().is_some_and(in_flight) => {
                    set_result_phase(run, status, metric, AnalysisPhase::Running, None);
                    AnalysisPhase::Running
                }
                Some(result) => {
                    let (phase, why) = metric_phase(&policy, result, terminated);
                    set_result_phase(run, status, metric, phase, why.clone());
                    if !dry_run
                        && phase.is_completed()
                        && phase != AnalysisPhase::Successful
                        && worst.severity() < phase.severity()
                    {
                        let detail = status
                            .metric_results
                            .iter()
                            .find(|r| r.name == metric.name)
                            .and_then(|r| r.measurements.last())
                            .and_then(|m| m.message.clone())
                            .map(|m| format!(" (last measurement: {m})"))
                            .unwrap_or_default();
                        message = Some(format!(
                            "metric {:?} {}: {}{detail}",
                            metric.name,
                            phase.as_str(),
                            why.unwrap_or_default()
                        ));
                    }
                    phase
                }
            },
        };
        let tally = if dry_run {
            &mut dry_summary
        } else {
            &mut summary
        };
        tally.count += 1;
        match phase {
            AnalysisPhase::Successful => tally.successful += 1,
            AnalysisPhase::Failed => tally.failed += 1,
            AnalysisPhase::Inconclusive => tally.inconclusive += 1,
            AnalysisPhase::Error => tally.error += 1,
            _ => {}
        }
        if !dry_run && phase.severity() > worst.severity() {
            worst = phase;
        }
    }
    let ended_early = matches!(
        worst,
        AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
    );
    let phase = if ended_early || worst == AnalysisPhase::Successful {
        worst
    } else {
        AnalysisPhase::Running
    };
    status.run_summary = Some(summary);
    status.dry_run_summary = (dry_summary.count > 0).then_some(dry_summary);
    if status.started_at.is_none() {
        status.started_at = Some(Time(now));
    }
    if phase.is_completed() {
        if status.completed_at.is_none() {
            status.completed_at = Some(Time(now));
        }
        if ended_early {
            // Metrics still running stop here; their evidence no longer matters.
            for result in &mut status.metric_results {
                if !result.phase.is_completed() {
                    result.phase = AnalysisPhase::Successful;
                    result.message = Some("run ended early by another metric".into());
                }
            }
        }
        status.message = match (terminated, message) {
            (_, Some(message)) => Some(message),
            (true, None) => Some("Run Terminated".into()),
            (false, None) => None,
        };
    }
    status.phase = Some(phase);
}

fn set_result_phase(
    run: &AnalysisRun,
    status: &mut AnalysisRunStatus,
    metric: &Metric,
    phase: AnalysisPhase,
    message: Option<String>,
) {
    if let Some(result) = status
        .metric_results
        .iter_mut()
        .find(|r| r.name == metric.name)
    {
        result.phase = phase;
        if message.is_some() {
            result.message = message;
        }
        return;
    }
    status
        .metric_results
        .push(empty_result(run, metric, phase, message));
}

fn empty_result(
    run: &AnalysisRun,
    metric: &Metric,
    phase: AnalysisPhase,
    message: Option<String>,
) -> MetricResult {
    MetricResult {
        name: metric.name.clone(),
        phase,
        measurements: Vec::new(),
        message,
        count: 0,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        error: 0,
        consecutive_error: 0,
        consecutive_success: 0,
        dry_run: is_dry_run(run, &metric.name).then_some(true),
        resolved_query: None,
    }
}

#[cfg(test)]
mod tests;
