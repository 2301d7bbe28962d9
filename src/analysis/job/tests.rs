use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::api::{AnalysisPhase, AnalysisRun, JobMetric, Metric};

fn run() -> AnalysisRun {
    serde_json::from_value(json!({
        "apiVersion": "ramp.dev/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "web-abc-2", "namespace": "shop", "uid": "0b7f7c1e-1111-2222-3333-444455556666"},
        "spec": {"metrics": []},
        "status": {"phase": "Running", "metricResults": [
            {"name": "smoke", "phase": "Running", "count": 2, "error": 1}
        ]}
    }))
    .unwrap()
}

fn metric(job: serde_json::Value) -> (Metric, JobMetric) {
    let metric: Metric =
        serde_json::from_value(json!({"name": "smoke", "provider": {"job": job}})).unwrap();
    let config = metric.provider.job.clone().unwrap();
    (metric, config)
}

#[test]
fn job_names_count_measurements_and_fit_a_label_value() {
    let uid = "0b7f7c1e-1111-2222-3333-444455556666";
    assert_eq!(job_name(uid, "smoke", 1), format!("{uid}.smoke.1"));
    let long = job_name(uid, &"m".repeat(80), 12);
    assert_eq!(long.len(), 63, "{long}");
    assert!(long.ends_with("m.12"), "{long}");
    // Errors count too, so a retried measurement gets a fresh Job.
    assert_eq!(next_index(&run(), "smoke"), 4);
    assert_eq!(next_index(&run(), "other"), 1);
}

#[test]
fn the_job_carries_the_spec_with_args_and_belongs_to_the_run() {
    let (metric, config) = metric(json!({
        "metadata": {"labels": {"team": "{{args.team}}"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "smoke", "image": "curl", "args": ["http://{{ args.host }}/health"]}]
        }}}
    }));
    let args = BTreeMap::from([
        ("team".to_string(), "payments".to_string()),
        ("host".to_string(), "web-canary".to_string()),
    ]);
    let job = build_job(&run(), &metric, &config, &args, 4).unwrap();
    let value = serde_json::to_value(&job).unwrap();
    let uid = "0b7f7c1e-1111-2222-3333-444455556666";
    assert_eq!(value["metadata"]["name"], format!("{uid}.smoke.4"));
    assert_eq!(value["metadata"]["namespace"], "shop");
    assert_eq!(value["metadata"]["labels"]["team"], "payments");
    assert_eq!(value["metadata"]["labels"][RUN_UID_LABEL], uid);
    assert_eq!(value["metadata"]["annotations"][METRIC_ANNOTATION], "smoke");
    assert_eq!(
        value["metadata"]["annotations"][RUN_NAME_ANNOTATION],
        "web-abc-2"
    );
    assert_eq!(
        value["metadata"]["ownerReferences"][0]["kind"],
        "AnalysisRun"
    );
    assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], uid);
    assert_eq!(value["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(value["spec"]["backoffLimit"], 0);
    assert_eq!(
        value["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "http://web-canary/health"
    );
    assert_eq!(
        value["spec"]["template"]["metadata"]["labels"][RUN_UID_LABEL],
        uid
    );

    let missing = build_job(&run(), &metric, &config, &BTreeMap::new(), 1).unwrap_err();
    assert!(
        missing.contains("provider.job") && missing.contains("args.team")
            || missing.contains("args.host"),
        "{missing}"
    );
}

fn job(conditions: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": "j", "namespace": "shop"},
        "spec": {"template": {}},
        "status": {"conditions": conditions}
    }))
    .unwrap()
}

fn pod(waiting: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "j-x"},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "smoke", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": waiting, "message": "not found"}}
        }]}
    }))
    .unwrap()
}

#[test]
fn a_job_is_judged_by_its_final_conditions_and_by_pods_that_cannot_start() {
    assert_eq!(judge(&job(json!([])), &[]), None);
    assert_eq!(
        judge(
            &job(
                json!([{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}])
            ),
            &[]
        ),
        Some((AnalysisPhase::Successful, None))
    );
    let (phase, message) = judge(
        &job(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])),
        &[],
    )
    .unwrap();
    assert_eq!(phase, AnalysisPhase::Failed);
    assert!(message.unwrap().contains("BackoffLimitExceeded"));
    // A condition that is not (yet) true decides nothing.
    assert_eq!(
        judge(&job(json!([{"type": "Failed", "status": "False"}])), &[]),
        None
    );
    let (phase, message) = judge(&job(json!([])), &[pod("ErrImagePull")]).unwrap();
    assert_eq!(phase, AnalysisPhase::Inconclusive);
    assert!(message.unwrap().contains("ErrImagePull"));
    assert_eq!(judge(&job(json!([])), &[pod("ContainerCreating")]), None);
}

#[test]
fn running_jobs_are_looked_at_less_often_as_they_run_longer() {
    assert_eq!(resume_delay(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        resume_delay(Duration::from_secs(50)),
        Duration::from_secs(10)
    );
    assert_eq!(
        resume_delay(Duration::from_secs(1800)),
        Duration::from_secs(60)
    );
}

#[test]
fn only_the_newest_jobs_of_the_metric_are_kept() {
    let job = |name: &str, metric: &str, created: &str| -> Job {
        serde_json::from_value(json!({"metadata": {
            "name": name, "creationTimestamp": created,
            "annotations": {METRIC_ANNOTATION: metric}
        }}))
        .unwrap()
    };
    let jobs = [
        job("c", "smoke", "2026-12-04T10:00:03Z"),
        job("a", "smoke", "2026-12-04T10:00:01Z"),
        job("other", "load", "2026-12-04T10:00:00Z"),
        job("b", "smoke", "2026-12-04T10:00:02Z"),
    ];
    assert_eq!(beyond_retention(&jobs, "smoke", 2), vec!["a".to_string()]);
    assert_eq!(
        beyond_retention(&jobs, "smoke", 1),
        vec!["a".to_string(), "b".to_string()]
    );
    assert!(beyond_retention(&jobs, "smoke", 10).is_empty());
}
