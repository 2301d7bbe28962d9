//! The `job` metric provider, with Argo's semantics: each measurement is a
//! Kubernetes Job owned by the AnalysisRun. The measurement passes when the
//! Job completes and fails when it fails; a pod that can never start (its
//! image cannot be pulled) makes it Inconclusive. Terminating the run
//! deletes the Job in flight, and only the newest Jobs per metric are kept
//! (the run's measurement retention).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::prometheus::substitute;
use super::provider::{Answer, Measure, Provider, Reading, TERMINATED};
use crate::api::{AnalysisPhase, AnalysisRun, JobMetric, Measurement, Metric};

/// Label on every Job (and its pods) naming the run's UID, as Argo sets it
/// under its own prefix.
pub const RUN_UID_LABEL: &str = "analysisrun.ramp.dev/uid";
pub const RUN_NAME_ANNOTATION: &str = "analysisrun.ramp.dev/name";
pub const RUN_NAMESPACE_ANNOTATION: &str = "analysisrun.ramp.dev/namespace";
pub const METRIC_ANNOTATION: &str = "analysisrun.ramp.dev/metric-name";
/// Measurement metadata keys (Argo's).
pub const JOB_NAME_KEY: &str = "job-name";
pub const JOB_NAMESPACE_KEY: &str = "job-namespace";

/// Longest Job name: the Job controller copies it into a label value.
const NAME_LIMIT: usize = 63;

/// Waiting reasons after which a pod will never run.
const TERMINAL_WAITING_REASONS: [&str; 3] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// `<run uid>.<metric>.<n>`, n counting the metric's measurements from 1;
/// the metric part is shortened to keep the name within 63 characters.
pub fn job_name(run_uid: &str, metric: &str, index: u32) -> String {
    let suffix = format!(".{index}");
    let room = NAME_LIMIT.saturating_sub(run_uid.len() + 1 + suffix.len());
    let metric: String = metric.chars().take(room).collect();
    format!("{run_uid}.{metric}{suffix}")
}

/// The measurement number the next Job gets: one more than those taken
/// (errors included, so a retried measurement never reuses a failed name).
pub fn next_index(run: &AnalysisRun, metric: &str) -> u32 {
    run.status
        .as_ref()
        .and_then(|s| s.metric_results.iter().find(|r| r.name == metric))
        .map_or(1, |r| (r.count + r.error).max(0) as u32 + 1)
}

/// Replaces `{{args.NAME}}` in every string of a JSON document.
fn substitute_all(value: &mut Value, args: &BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(text) if text.contains("{{") => *text = substitute(text, args)?,
        Value::Array(items) => {
            for item in items {
                substitute_all(item, args)?;
            }
        }
        Value::Object(fields) => {
            for field in fields.values_mut() {
                substitute_all(field, args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The Job for one measurement: the metric's Job spec with arguments
/// substituted, owned by the run, labelled and annotated so it can be found
/// again after a controller restart and collected with the run.
pub fn build_job(
    run: &AnalysisRun,
    metric: &Metric,
    config: &JobMetric,
    args: &BTreeMap<String, String>,
    index: u32,
) -> Result<Job, String> {
    let uid = run
        .metadata
        .uid
        .clone()
        .ok_or("the AnalysisRun has no uid yet")?;
    let mut spec = serde_json::to_value(&config.spec).map_err(|e| e.to_string())?;
    substitute_all(&mut spec, args).map_err(|e| format!("provider.job.spec: {e}"))?;
    let mut metadata = serde_json::to_value(config.metadata.clone().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    substitute_all(&mut metadata, args).map_err(|e| format!("provider.job.metadata: {e}"))?;
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(metadata["labels"].take()).unwrap_or_default();
    let mut annotations: BTreeMap<String, String> =
        serde_json::from_value(metadata["annotations"].take()).unwrap_or_default();
    labels.insert(RUN_UID_LABEL.into(), uid.clone());
    annotations.insert(RUN_NAME_ANNOTATION.into(), run.name_any());
    annotations.insert(
        RUN_NAMESPACE_ANNOTATION.into(),
        run.namespace().unwrap_or_default(),
    );
    annotations.insert(METRIC_ANNOTATION.into(), metric.name.clone());
    spec["template"]["metadata"]["labels"][RUN_UID_LABEL] = Value::String(uid.clone());
    let owner = run
        .controller_owner_ref(&())
        .ok_or("the AnalysisRun has no name or uid yet")?;
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(&uid, &metric.name, index),
            "namespace": run.namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": spec,
    });
    serde_json::from_value(job).map_err(|e| format!("provider.job: {e}"))
}

/// The Job's verdict, if it has one: Complete passes, Failed fails, and a
/// pod stuck on an image that cannot be pulled is Inconclusive (it would
/// otherwise wait forever).
pub fn judge(job: &Job, pods: &[Pod]) -> Option<(AnalysisPhase, Option<String>)> {
    let conditions = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten());
    for condition in conditions.filter(|c| c.status == "True") {
        let why = || {
            let detail = [condition.reason.as_deref(), condition.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            format!(
                "job {} failed{}",
                job.name_any(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            )
        };
        match condition.type_.as_str() {
            "Complete" => return Some((AnalysisPhase::Successful, None)),
            "Failed" => return Some((AnalysisPhase::Failed, Some(why()))),
            _ => {}
        }
    }
    for pod in pods {
        let status = pod.status.as_ref();
        let containers = status
            .iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten())
            .chain(
                status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten()),
            );
        for container in containers {
            let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(reason) = waiting
                .and_then(|w| w.reason.as_deref())
                .filter(|r| TERMINAL_WAITING_REASONS.contains(r))
            {
                let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
                return Some((
                    AnalysisPhase::Inconclusive,
                    Some(format!(
                        "pod {}, container {} cannot start ({reason}): {message}",
                        pod.name_any(),
                        container.name
                    )),
                ));
            }
        }
    }
    None
}

/// How long to wait before looking at a running Job again: it grows with
/// the square root of the time it has run (Argo's pace), from 1 s.
pub fn resume_delay(running_for: Duration) -> Duration {
    Duration::from_secs_f64((2.0 * running_for.as_secs_f64()).sqrt()).max(Duration::from_secs(1))
}

/// Names of this metric's Jobs to delete so only the newest `keep` remain.
pub fn beyond_retention(jobs: &[Job], metric: &str, keep: usize) -> Vec<String> {
    let mut own: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.annotations().get(METRIC_ANNOTATION).map(String::as_str) == Some(metric))
        .collect();
    own.sort_by_key(|j| {
        (
            j.metadata.creation_timestamp.clone().map(|t| t.0),
            j.name_any(),
        )
    });
    let excess = own.len().saturating_sub(keep);
    own.into_iter().take(excess).map(|j| j.name_any()).collect()
}

fn located(measurement: &Measurement, run: &AnalysisRun) -> Result<(String, String), String> {
    let name = measurement
        .metadata
        .get(JOB_NAME_KEY)
        .cloned()
        .ok_or("the measurement in flight has no job-name in its metadata")?;
    let namespace = measurement
        .metadata
        .get(JOB_NAMESPACE_KEY)
        .cloned()
        .or_else(|| run.namespace())
        .unwrap_or_default();
    Ok((namespace, name))
}

fn in_flight(job: &Job, resume_in: Duration) -> Reading {
    Reading::InFlight {
        metadata: BTreeMap::from([
            (JOB_NAME_KEY.to_string(), job.name_any()),
            (
                JOB_NAMESPACE_KEY.to_string(),
                job.namespace().unwrap_or_default(),
            ),
        ]),
        resume_in,
    }
}

fn asked(namespace: &str, name: &str) -> Option<String> {
    Some(format!("job {namespace}/{name}"))
}

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), String> {
    // Foreground, so the Job's pods go before the Job does.
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(format!("deleting job {name}: {error}")),
    }
}

pub struct JobProvider<'a>(pub &'a JobMetric);

impl JobProvider<'_> {
    async fn start(&self, input: &Measure<'_>) -> Result<(Job, String), String> {
        let index = next_index(input.run, &input.metric.name);
        let job = build_job(input.run, input.metric, self.0, input.args, index)?;
        let namespace = job.namespace().unwrap_or_default();
        let name = job.name_any();
        let api: Api<Job> = Api::namespaced(input.client.clone(), &namespace);
        match api.create(&PostParams::default(), &job).await {
            Ok(created) => Ok((created, namespace)),
            // Created before a restart or a lost status write: the same
            // measurement, so carry on with it if it is this run's.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = api
                    .get(&name)
                    .await
                    .map_err(|e| format!("reading job {namespace}/{name} after it existed: {e}"))?;
                let ours = existing.labels().get(RUN_UID_LABEL) == input.run.metadata.uid.as_ref();
                if ours {
                    Ok((existing, namespace))
                } else {
                    Err(format!(
                        "job {namespace}/{name} exists and does not belong to this AnalysisRun"
                    ))
                }
            }
            Err(error) => Err(format!("creating job {namespace}/{name}: {error}")),
        }
    }
}

impl Provider for JobProvider<'_> {
    fn run<'a>(&'a self, input: Measure<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            match self.start(&input).await {
                Ok((job, namespace)) => Answer {
                    asked: asked(&namespace, &job.name_any()),
                    value: Ok(in_flight(&job, Duration::from_secs(1))),
                },
                Err(message) => Answer::refused(message),
            }
        })
    }

    fn resume<'a>(
        &'a self,
        input: Measure<'a>,
        measurement: &'a Measurement,
    ) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let (namespace, name) = match located(measurement, input.run) {
                Ok(found) => found,
                Err(message) => return Answer::refused(message),
            };
            let jobs: Api<Job> = Api::namespaced(input.client.clone(), &namespace);
            let job = match jobs.get_opt(&name).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    return Answer::refused(format!(
                        "job {namespace}/{name} is gone before it finished (deleted by someone else?)"
                    ));
                }
                Err(error) => {
                    return Answer::refused(format!("reading job {namespace}/{name}: {error}"));
                }
            };
            let selector = job
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| format!("job-name={name}"));
            let pods: Api<Pod> = Api::namespaced(input.client.clone(), &namespace);
            let pods = match pods.list(&ListParams::default().labels(&selector)).await {
                Ok(list) => list.items,
                Err(error) => {
                    return Answer::refused(format!(
                        "listing pods of job {namespace}/{name}: {error}"
                    ));
                }
            };
            let value = match judge(&job, &pods) {
                Some((phase, message)) => Reading::Judged { phase, message },
                None => {
                    let started = measurement
                        .started_at
                        .as_ref()
                        .map_or_else(Timestamp::now, |t| t.0);
                    let running_for = Duration::try_from(Timestamp::now().duration_since(started))
                        .unwrap_or_default();
                    in_flight(&job, resume_delay(running_for))
                }
            };
            Answer {
                asked: asked(&namespace, &name),
                value: Ok(value),
            }
        })
    }

    fn terminate<'a>(
        &'a self,
        input: Measure<'a>,
        measurement: &'a Measurement,
    ) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let (namespace, name) = match located(measurement, input.run) {
                Ok(found) => found,
                Err(message) => return Answer::refused(message),
            };
            let jobs: Api<Job> = Api::namespaced(input.client.clone(), &namespace);
            match delete_job(&jobs, &name).await {
                Ok(()) => Answer {
                    asked: asked(&namespace, &name),
                    value: Ok(Reading::Judged {
                        phase: AnalysisPhase::Inconclusive,
                        message: Some(TERMINATED.into()),
                    }),
                },
                Err(message) => Answer::refused(message),
            }
        })
    }

    fn garbage_collect<'a>(
        &'a self,
        input: Measure<'a>,
        keep: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(uid) = input.run.metadata.uid.as_deref() else {
                return Ok(());
            };
            let namespace = input.run.namespace().unwrap_or_default();
            let api: Api<Job> = Api::namespaced(input.client.clone(), &namespace);
            let jobs = api
                .list(&ListParams::default().labels(&format!("{RUN_UID_LABEL}={uid}")))
                .await
                .map_err(|e| format!("listing jobs of the run: {e}"))?;
            for name in beyond_retention(&jobs.items, &input.metric.name, keep) {
                delete_job(&api, &name).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
