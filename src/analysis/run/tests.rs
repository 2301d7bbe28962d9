use jiff::Timestamp;
use serde_json::json;

use super::*;

fn metric(extra: serde_json::Value) -> Metric {
    let mut value = json!({"name": "errors", "provider": {"prometheus": {"query": "q"}}});
    if let (Some(target), Some(source)) = (value.as_object_mut(), extra.as_object()) {
        target.extend(source.clone());
    }
    serde_json::from_value(value).expect("fixture metric")
}

fn run_of(metrics: Vec<Metric>) -> AnalysisRun {
    AnalysisRun::new(
        "run",
        crate::api::AnalysisRunSpec {
            metrics,
            ..Default::default()
        },
    )
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).expect("valid time")
}

fn measurement(phase: AnalysisPhase, at: i64) -> Measurement {
    Measurement {
        phase,
        message: Some(format!("{phase:?}")),
        started_at: Some(Time(t(at))),
        finished_at: Some(Time(t(at))),
        value: Some("0".into()),
        metadata: Default::default(),
        resume_at: None,
    }
}

/// A measurement in flight since `at`, to be looked at again at `resume`.
fn flying(at: i64, resume: i64) -> Measurement {
    Measurement {
        phase: Running,
        message: None,
        started_at: Some(Time(t(at))),
        finished_at: None,
        value: None,
        metadata: [("job-name".to_string(), "j".to_string())].into(),
        resume_at: Some(Time(t(resume))),
    }
}

#[test]
fn a_measurement_in_flight_counts_only_once_it_ends_and_is_resumed_on_time() {
    let run = run_of(vec![metric(json!({"count": 1}))]);
    let mut status = AnalysisRunStatus {
        started_at: Some(Time(t(0))),
        ..Default::default()
    };
    record(&run, &mut status, &run.spec.metrics[0], flying(0, 4));
    assess(&run, &mut status, t(0));
    let result = &status.metric_results[0];
    assert_eq!((result.count, result.phase), (0, Running));
    assert_eq!(status.phase, Some(Running));
    assert!(in_flight_measurement(&status, "errors").is_some());
    assert_eq!(
        due_metrics(&run, &status, t(1)),
        Due {
            now: vec![],
            next: Some(t(4))
        },
        "resumed at resumeAt, not at a new interval"
    );
    assert_eq!(due_metrics(&run, &status, t(4)).now, vec![0]);
    // Still running: replaced, not added.
    record(&run, &mut status, &run.spec.metrics[0], flying(0, 9));
    assert_eq!(status.metric_results[0].measurements.len(), 1);
    // It ends: the in-flight entry becomes the verdict, counted once.
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Failed, 9),
    );
    assess(&run, &mut status, t(9));
    let result = &status.metric_results[0];
    assert_eq!(result.measurements.len(), 1);
    assert_eq!((result.count, result.failed), (1, 1));
    assert_eq!(status.phase, Some(Failed));
    assert!(in_flight_measurement(&status, "errors").is_none());
}

#[test]
fn a_terminated_run_only_stops_what_is_in_flight() {
    let mut run = run_of(vec![
        metric(json!({"name": "job", "count": 1})),
        metric(json!({"name": "query", "interval": "5s"})),
    ]);
    run.spec.terminate = Some(true);
    let mut status = AnalysisRunStatus {
        started_at: Some(Time(t(0))),
        ..Default::default()
    };
    record(&run, &mut status, &run.spec.metrics[0], flying(0, 100));
    record(
        &run,
        &mut status,
        &run.spec.metrics[1],
        measurement(Successful, 0),
    );
    // The in-flight job is due at once (to be stopped); no new query is taken.
    assert_eq!(
        due_metrics(&run, &status, t(10)),
        Due {
            now: vec![0],
            next: None
        }
    );
    // Stopped as Argo reports it: Inconclusive, which the limits then judge.
    let mut stopped = measurement(Inconclusive, 10);
    stopped.message = Some(crate::analysis::provider::TERMINATED.into());
    record(&run, &mut status, &run.spec.metrics[0], stopped);
    assess(&run, &mut status, t(10));
    assert_eq!(status.metric_results[0].phase, Inconclusive);
    assert_eq!(status.phase, Some(Inconclusive));
    assert!(due_metrics(&run, &status, t(11)).now.is_empty());
}

/// Feeds `phases` one per interval and returns the run phase after each.
fn drive(metric_spec: serde_json::Value, phases: &[AnalysisPhase]) -> Vec<AnalysisPhase> {
    let run = run_of(vec![metric(metric_spec)]);
    let mut status = AnalysisRunStatus::default();
    assess(&run, &mut status, t(0));
    let mut seen = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        record(
            &run,
            &mut status,
            &run.spec.metrics[0],
            measurement(*phase, i as i64),
        );
        assess(&run, &mut status, t(i as i64));
        seen.push(status.phase.unwrap_or(AnalysisPhase::Pending));
    }
    seen
}

use AnalysisPhase::*;

#[test]
fn phase_arithmetic_table() {
    let cases: Vec<(serde_json::Value, Vec<AnalysisPhase>, Vec<AnalysisPhase>)> = vec![
        // Single measurement (no interval, no count).
        (json!({}), vec![Successful], vec![Successful]),
        (json!({}), vec![Failed], vec![Failed]),
        (json!({}), vec![Inconclusive], vec![Inconclusive]),
        // Errors do not count toward `count`: retried until consecutiveErrorLimit.
        (
            json!({}),
            vec![Error, Error, Successful],
            vec![Running, Running, Successful],
        ),
        (
            json!({"consecutiveErrorLimit": 2}),
            vec![Error, Error, Error],
            vec![Running, Running, Error],
        ),
        (
            json!({"consecutiveErrorLimit": 1}),
            vec![Error, Successful, Error, Successful],
            vec![Running, Successful, Successful, Successful],
        ),
        // failureLimit tolerates that many failures.
        (
            json!({"interval": "1s", "count": 3, "failureLimit": 1}),
            vec![Failed, Successful, Successful],
            vec![Running, Running, Successful],
        ),
        (
            json!({"interval": "1s", "count": 3, "failureLimit": 1}),
            vec![Failed, Failed],
            vec![Running, Failed],
        ),
        (
            json!({"interval": "1s", "count": 5, "failureLimit": 0}),
            vec![Successful, Failed],
            vec![Running, Failed],
        ),
        // inconclusiveLimit.
        (
            json!({"interval": "1s", "count": 3, "inconclusiveLimit": 1}),
            vec![Inconclusive, Inconclusive],
            vec![Running, Inconclusive],
        ),
        // Unlimited count runs until terminated.
        (
            json!({"interval": "1s"}),
            vec![Successful, Successful, Successful],
            vec![Running, Running, Running],
        ),
        // consecutiveSuccessLimit completes early; with failureLimit also active the count ends Inconclusive.
        (
            json!({"interval": "1s", "count": 5, "consecutiveSuccessLimit": 2}),
            vec![Successful, Successful],
            vec![Running, Successful],
        ),
        (
            json!({"interval": "1s", "count": 2, "consecutiveSuccessLimit": 2, "failureLimit": 3}),
            vec![Successful, Failed],
            vec![Running, Inconclusive],
        ),
        (
            json!({"interval": "1s", "count": 2, "consecutiveSuccessLimit": 2, "failureLimit": -1}),
            vec![Successful, Failed],
            vec![Running, Failed],
        ),
    ];
    for (spec, inputs, expected) in cases {
        assert_eq!(
            drive(spec.clone(), &inputs),
            expected,
            "metric {spec} fed {inputs:?}"
        );
    }
}

#[test]
fn run_phase_is_the_worst_metric_phase() {
    let order = [Successful, Running, Pending, Inconclusive, Error, Failed];
    for (i, lower) in order.iter().enumerate() {
        for higher in &order[i + 1..] {
            assert!(
                lower.severity() < higher.severity(),
                "{lower:?} must rank below {higher:?}"
            );
        }
    }
    // One metric failing ends the run Failed even while another is still running.
    let run = run_of(vec![
        metric(json!({"name": "a", "interval": "1s"})),
        metric(json!({"name": "b"})),
    ]);
    let mut status = AnalysisRunStatus::default();
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Successful, 0),
    );
    record(
        &run,
        &mut status,
        &run.spec.metrics[1],
        measurement(Failed, 0),
    );
    assess(&run, &mut status, t(0));
    assert_eq!(status.phase, Some(Failed));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("\"b\" Failed")),
        "{:?}",
        status.message
    );
    assert!(status.completed_at.is_some());
}

#[test]
fn dry_run_metrics_never_decide_the_run() {
    let mut run = run_of(vec![
        metric(json!({"name": "real"})),
        metric(json!({"name": "shadow"})),
    ]);
    run.spec.dry_run = vec![crate::api::DryRun {
        metric_name: "sha.*".into(),
    }];
    let mut status = AnalysisRunStatus::default();
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Successful, 0),
    );
    record(
        &run,
        &mut status,
        &run.spec.metrics[1],
        measurement(Failed, 0),
    );
    assess(&run, &mut status, t(0));
    assert_eq!(status.phase, Some(Successful));
    assert_eq!(status.dry_run_summary.as_ref().map(|s| s.failed), Some(1));
}

#[test]
fn terminate_ends_running_metrics_successfully() {
    let mut run = run_of(vec![metric(json!({"interval": "1s"}))]);
    let mut status = AnalysisRunStatus::default();
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Successful, 0),
    );
    run.spec.terminate = Some(true);
    assess(&run, &mut status, t(1));
    assert_eq!(status.phase, Some(Successful));
    assert_eq!(status.message.as_deref(), Some("Run Terminated"));
}

#[test]
fn measurements_are_scheduled_by_interval_delay_and_error_retry() {
    let run = run_of(vec![metric(
        json!({"interval": "30s", "initialDelay": "5s", "count": 3}),
    )]);
    let mut status = AnalysisRunStatus {
        started_at: Some(Time(t(0))),
        ..Default::default()
    };
    assert_eq!(
        due_metrics(&run, &status, t(0)),
        Due {
            now: vec![],
            next: Some(t(5))
        }
    );
    assert_eq!(due_metrics(&run, &status, t(5)).now, vec![0]);
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Successful, 5),
    );
    assert_eq!(due_metrics(&run, &status, t(6)).next, Some(t(35)));
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Error, 35),
    );
    assert_eq!(
        due_metrics(&run, &status, t(36)).next,
        Some(t(45)),
        "errors retry after 10s"
    );
}

#[test]
fn measurement_history_is_bounded() {
    let mut run = run_of(vec![metric(json!({"interval": "1s"}))]);
    let mut status = AnalysisRunStatus::default();
    for i in 0..25 {
        record(
            &run,
            &mut status,
            &run.spec.metrics[0],
            measurement(Successful, i),
        );
    }
    assert_eq!(
        status.metric_results[0].measurements.len(),
        DEFAULT_MEASUREMENT_RETENTION
    );
    assert_eq!(status.metric_results[0].count, 25);
    run.spec.measurement_retention = vec![crate::api::MeasurementRetention {
        metric_name: "errors".into(),
        limit: 3,
    }];
    record(
        &run,
        &mut status,
        &run.spec.metrics[0],
        measurement(Successful, 26),
    );
    assert_eq!(status.metric_results[0].measurements.len(), 3);
}

#[test]
fn policy_errors_name_the_metric_and_field() {
    let error = Policy::of(&metric(json!({"interval": "soon"}))).unwrap_err();
    assert!(error.contains("metric \"errors\": interval"), "{error}");
    let error = Policy::of(&metric(json!({"count": 3}))).unwrap_err();
    assert!(error.contains("needs an interval"), "{error}");
    let error = Policy::of(&metric(json!({"failureLimit": -1}))).unwrap_err();
    assert!(error.contains("consecutiveSuccessLimit"), "{error}");
}

#[test]
fn plain_arguments_fill_timing_limits_and_conditions_secrets_stay_for_providers() {
    let mut run = run_of(vec![metric(json!({
        "count": "{{args.count}}",
        "interval": "{{ args.every }}",
        "failureLimit": "{{args.token}}",
        "successCondition": "result[0] < {{args.max}}"
    }))]);
    run.spec.args = serde_json::from_value(json!([
        {"name": "count", "value": "3"},
        {"name": "every", "value": "2s"},
        {"name": "max", "value": "0.05"},
        {"name": "token", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    ]))
    .unwrap();
    let resolved = with_plain_args(&run).expect("plain arguments to fill");
    let metric = &resolved.spec.metrics[0];
    assert_eq!(metric.count, Some(IntOrString::String("3".into())));
    assert_eq!(metric.interval.as_deref(), Some("2s"));
    assert_eq!(
        metric.success_condition.as_deref(),
        Some("result[0] < 0.05")
    );
    assert_eq!(
        metric.failure_limit,
        Some(IntOrString::String("{{args.token}}".into())),
        "a Secret's value never lands in the spec"
    );
    assert_eq!(
        Policy::of(&resolved.spec.metrics[0]).map(|p| p.count).ok(),
        None,
        "failureLimit still a placeholder"
    );
    let mut counted = resolved.spec.metrics[0].clone();
    counted.failure_limit = None;
    assert_eq!(Policy::of(&counted).map(|p| p.count), Ok(Some(3)));
}

#[test]
fn a_template_timing_argument_is_checked_with_its_default_or_left_to_the_run() {
    let template = |args: serde_json::Value| -> crate::api::AnalysisTemplateSpec {
        serde_json::from_value(json!({
            "args": args,
            "metrics": [{"name": "m", "count": "{{args.count}}", "interval": "1s",
                         "provider": {"prometheus": {"query": "q"}}}]
        }))
        .unwrap()
    };
    assert!(
        crate::analysis::validate_template(&template(json!([{"name": "count", "value": "2"}])))
            .is_empty()
    );
    assert!(crate::analysis::validate_template(&template(json!([{"name": "count"}]))).is_empty());
    let problems =
        crate::analysis::validate_template(&template(json!([{"name": "count", "value": "two"}])));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("count"), "{problems:?}");
}
