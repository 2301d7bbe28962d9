//! The AnalysisRun reconciler: takes the measurements that are due, then
//! lets the pure run logic decide metric and run phases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};

use tracing::{info, warn};

use super::{Context, Error, apply, triggers};
use crate::analysis::condition::Conditions;
use crate::analysis::policy;
use crate::analysis::provider::{Measure, Reading, provider_of};
use crate::analysis::run::{
    assess, due_metrics, in_flight, in_flight_measurement, record, retention, with_plain_args,
};
use crate::api::{AnalysisPhase, AnalysisRun, Measurement, Metric, SecretKeyRef};
use crate::planner::PlannedEvent;

const CONTROLLER: &str = "analysisrun";

/// The AnalysisRun controller over the cache it shares with the Rollout
/// controller (`ctx.analysis_runs`); `runs` triggers it once that cache holds
/// what it triggers for.
pub(super) async fn controller(
    ctx: Arc<Context>,
    runs: super::rollouts::Watched<AnalysisRun>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let store = ctx.analysis_runs.clone();
    Controller::for_stream(runs, store)
        .trigger_backoff(triggers::TriggerPause)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| super::log_stream_error(result, "analysis run controller"))
        .await;
}

async fn reconcile(run: Arc<AnalysisRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Our own last status write, if the watch has not delivered it yet.
    let run = ctx.recent_runs.freshest(run);
    let run = with_plain_args(&run).map_or(run, Arc::new);
    let name = run.name_any();
    let namespace = run.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "AnalysisRun",
        name: name.clone(),
    })?;
    let previous = run.status.clone().unwrap_or_default();
    if previous.phase.is_some_and(AnalysisPhase::is_completed) {
        return Ok(Action::await_change());
    }
    let mut status = previous.clone();
    let now = Timestamp::now();
    if status.started_at.is_none() {
        status.started_at = Some(Time(now));
    }
    // A terminated run takes no new measurements; due_metrics hands back
    // only its measurements in flight, which are stopped.
    let terminating = run.spec.terminate == Some(true);
    for index in due_metrics(&run, &status, now).now {
        let metric = &run.spec.metrics[index];
        let step = match in_flight_measurement(&status, &metric.name) {
            Some(flying) if terminating => Step::Terminate(flying.clone()),
            Some(flying) => Step::Resume(flying.clone()),
            None => Step::Start,
        };
        take_measurement(&ctx, &run, &namespace, metric, step, &mut status).await;
    }
    assess(&run, &mut status, Timestamp::now());
    if status.phase.is_some_and(AnalysisPhase::is_completed) {
        // The run ended early (another metric failed): nothing may keep
        // running for it, so measurements still in flight are stopped.
        for metric in &run.spec.metrics {
            if let Some(flying) = in_flight_measurement(&status, &metric.name).cloned() {
                take_measurement(
                    &ctx,
                    &run,
                    &namespace,
                    metric,
                    Step::Terminate(flying),
                    &mut status,
                )
                .await;
            }
        }
    }
    let phase = status.phase.unwrap_or(AnalysisPhase::Pending);

    let mut transition = None;
    // The phase Event goes out before the status write, so it is never lost
    // to a conflicting write and is readable by whoever sees the new phase.
    if previous.phase != Some(phase) {
        let warning = matches!(
            phase,
            AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
        );
        let reason = match phase {
            AnalysisPhase::Pending => "AnalysisRunPending",
            AnalysisPhase::Running => "AnalysisRunRunning",
            AnalysisPhase::Successful => "AnalysisRunSuccessful",
            AnalysisPhase::Failed => "AnalysisRunFailed",
            AnalysisPhase::Error => "AnalysisRunError",
            AnalysisPhase::Inconclusive => "AnalysisRunInconclusive",
        };
        let message = format!(
            "AnalysisRun {} {}",
            phase.as_str(),
            status
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        info!(run = %name, namespace = %namespace, phase = phase.as_str(), message = ?status.message, "analysis run phase changed");
        let event = PlannedEvent {
            warning,
            reason,
            message,
        };
        apply::publish_events(&ctx, run.as_ref(), std::slice::from_ref(&event));
        transition = Some(event);
    }
    if status != previous {
        let old = serde_json::to_value(&run.status).map_err(|source| Error::Serialize {
            what: "old run status".into(),
            source,
        })?;
        let new = serde_json::to_value(&status).map_err(|source| Error::Serialize {
            what: "new run status".into(),
            source,
        })?;
        let written = apply::write_status::<AnalysisRun>(
            &ctx,
            &namespace,
            &name,
            run.resource_version(),
            &old,
            &new,
            "AnalysisRun",
        )
        .await?;
        ctx.recent_runs.remember(written);
        // The Rollout's subscribers hear of its run's verdict once it is on record.
        if let Some(event) = transition.filter(|_| phase.is_completed())
            && let Some(rollout) = owning_rollout(&ctx, &run, &namespace)
        {
            apply::notify_subscribers(&ctx, rollout.as_ref(), &namespace, &[event]);
        }
    }
    // Counted once the completed phase is stored, so a conflict does not count it twice.
    if previous.phase != Some(phase) && phase.is_completed() {
        ctx.metrics.run_completed(phase.as_str());
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if phase.is_completed() {
        return Ok(Action::await_change());
    }
    let next = due_metrics(&run, &status, Timestamp::now()).next;
    Ok(match next {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(Timestamp::now()))
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(50)),
        ),
        None => Action::requeue(Duration::from_secs(1)),
    })
}

/// The Rollout that controls the run, from the cache.
fn owning_rollout(
    ctx: &Context,
    run: &AnalysisRun,
    namespace: &str,
) -> Option<Arc<crate::api::Rollout>> {
    let owner = run
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Rollout" && o.controller == Some(true))?;
    ctx.rollouts
        .get(&kube::runtime::reflector::ObjectRef::new(&owner.name).within(namespace))
}

/// What to do with a metric that is due.
enum Step {
    Start,
    Resume(Measurement),
    Terminate(Measurement),
}

/// Takes (or resumes, or stops) one measurement and records it; a provider
/// that leaves objects behind has the old ones collected once it ends.
async fn take_measurement(
    ctx: &Context,
    run: &AnalysisRun,
    namespace: &str,
    metric: &Metric,
    step: Step,
    status: &mut crate::api::AnalysisRunStatus,
) {
    let (measurement, query) = measure(ctx, run, namespace, metric, &step).await;
    let ended = !in_flight(&measurement);
    if ended {
        ctx.metrics.measured(measurement.phase.as_str());
    }
    record(run, status, metric, measurement);
    if let Some(result) = status
        .metric_results
        .iter_mut()
        .find(|r| r.name == metric.name)
        && query.is_some()
    {
        result.resolved_query = query;
    }
    if ended && let Ok(provider) = provider_of(metric) {
        let no_args = BTreeMap::new();
        let input = measure_input(ctx, run, metric, &no_args, Vec::new());
        if let Err(error) = provider
            .garbage_collect(input, retention(run, &metric.name))
            .await
        {
            warn!(run = %run.name_any(), metric = %metric.name, %error, "collecting old measurement objects failed");
        }
    }
}

fn measure_input<'a>(
    ctx: &'a Context,
    run: &'a AnalysisRun,
    metric: &'a Metric,
    args: &'a BTreeMap<String, String>,
    auth_headers: Vec<(String, String)>,
) -> Measure<'a> {
    Measure {
        http: &ctx.http,
        insecure_http: &ctx.insecure_http,
        client: &ctx.client,
        run,
        metric,
        args,
        allowed: ctx.analysis_policy.allowed_addresses.as_ref(),
        auth_headers,
    }
}

/// One measurement: resolve arguments and secrets, ask the provider,
/// evaluate. Every failure becomes an Error measurement whose message says
/// what went wrong.
async fn measure(
    ctx: &Context,
    run: &AnalysisRun,
    namespace: &str,
    metric: &Metric,
    step: &Step,
) -> (Measurement, Option<String>) {
    let started = match step {
        Step::Start => Timestamp::now(),
        Step::Resume(flying) | Step::Terminate(flying) => flying
            .started_at
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0),
    };
    // Secret values read for this measurement; every text that leaves it
    // (message, resolved query) has them replaced, so status, Events and
    // logs never carry one.
    let mut secrets = Vec::new();
    let outcome = async {
        let provider = provider_of(metric)?;
        let no_args = BTreeMap::new();
        let answer = match step {
            Step::Start => {
                let (args, auth_headers) =
                    resolve_inputs(ctx, run, namespace, metric, &mut secrets).await?;
                provider
                    .run(measure_input(ctx, run, metric, &args, auth_headers))
                    .await
            }
            // Resuming or stopping needs only what the measurement recorded.
            Step::Resume(flying) => {
                provider
                    .resume(
                        measure_input(ctx, run, metric, &no_args, Vec::new()),
                        flying,
                    )
                    .await
            }
            Step::Terminate(flying) => {
                provider
                    .terminate(
                        measure_input(ctx, run, metric, &no_args, Vec::new()),
                        flying,
                    )
                    .await
            }
        };
        match (answer.asked, answer.value) {
            (Some(asked), value) => Ok((asked, value)),
            (None, Err(message)) => Err(message),
            (None, Ok(value)) => Ok((String::new(), Ok(value))),
        }
    }
    .await;
    let (mut measurement, query) = assess_outcome(metric, outcome, started, Timestamp::now());
    // A finished measurement still says where it was taken (the Job's name), as Argo's do.
    if let Step::Resume(flying) | Step::Terminate(flying) = step
        && measurement.metadata.is_empty()
    {
        measurement.metadata = flying.metadata.clone();
    }
    let hide = |text: String| policy::redact(&text, &secrets);
    (
        Measurement {
            message: measurement.message.map(hide),
            value: measurement.value.map(hide),
            ..measurement
        },
        query.map(hide),
    )
}

/// Turns the provider's outcome into a measurement.
fn assess_outcome(
    metric: &Metric,
    outcome: Result<(String, Result<Reading, String>), String>,
    started: Timestamp,
    finished: Timestamp,
) -> (Measurement, Option<String>) {
    let measurement = |phase, message: Option<String>, value: Option<String>| Measurement {
        phase,
        message,
        started_at: Some(Time(started)),
        finished_at: Some(Time(finished)),
        value,
        metadata: BTreeMap::new(),
        resume_at: None,
    };
    let (query, reading) = match outcome {
        Err(message) => return (measurement(AnalysisPhase::Error, Some(message), None), None),
        Ok((query, reading)) => (Some(query).filter(|q| !q.is_empty()), reading),
    };
    let measured = match reading {
        Err(message) => measurement(AnalysisPhase::Error, Some(message), None),
        Ok(Reading::InFlight {
            metadata,
            resume_in,
        }) => {
            let resume_at = finished
                .checked_add(
                    jiff::SignedDuration::try_from(resume_in).unwrap_or(jiff::SignedDuration::ZERO),
                )
                .unwrap_or(finished);
            Measurement {
                finished_at: None,
                metadata,
                resume_at: Some(Time(resume_at)),
                ..measurement(AnalysisPhase::Running, None, None)
            }
        }
        Ok(Reading::Judged { phase, message }) => measurement(phase, message, None),
        Ok(Reading::Value(value)) => {
            let shown = Some(value.display());
            let assessed = Conditions::compile(
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
            )
            .and_then(|conditions| conditions.assess(&value));
            match assessed {
                Ok(phase) => {
                    let message = (phase != AnalysisPhase::Successful)
                        .then(|| format!("result {} is {}", value.display(), phase.as_str()));
                    measurement(phase, message, shown)
                }
                Err(message) => measurement(AnalysisPhase::Error, Some(message), shown),
            }
        }
    };
    (measured, query)
}

/// The run's arguments with their values (Secrets read from the run's
/// namespace) and the credentials the metric's provider asks for.
async fn resolve_inputs(
    ctx: &Context,
    run: &AnalysisRun,
    namespace: &str,
    metric: &Metric,
    secrets: &mut Vec<String>,
) -> Result<(BTreeMap<String, String>, Vec<(String, String)>), String> {
    let mut args = BTreeMap::new();
    for arg in &run.spec.args {
        let value = match (
            &arg.value,
            arg.value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref()),
        ) {
            (Some(value), _) => value.clone(),
            (None, Some(secret)) => read_secret(ctx, namespace, secret, secrets).await?,
            (None, None) => return Err(format!("argument {:?} has no value", arg.name)),
        };
        args.insert(arg.name.clone(), value);
    }
    let mut headers = Vec::new();
    let auth = metric
        .provider
        .prometheus
        .as_ref()
        .and_then(|p| p.authentication.as_ref());
    if let Some(auth) = auth {
        if let Some(token) = &auth.bearer_token {
            headers.push((
                "Authorization".into(),
                format!(
                    "Bearer {}",
                    read_secret(ctx, namespace, token, secrets).await?
                ),
            ));
        }
        if let Some(basic) = &auth.basic_auth {
            let user = read_secret(ctx, namespace, &basic.username, secrets).await?;
            let password = read_secret(ctx, namespace, &basic.password, secrets).await?;
            let encoded = base64(format!("{user}:{password}").as_bytes());
            secrets.push(encoded.clone());
            headers.push(("Authorization".into(), format!("Basic {encoded}")));
        }
    }
    Ok((args, headers))
}

/// Secrets are read when needed, never cached: caching every Secret in the
/// cluster would cost memory and widen what the controller holds. Only the
/// run's own namespace is read; the value is also added to `secrets` so it
/// can be redacted from whatever the measurement reports.
async fn read_secret(
    ctx: &Context,
    namespace: &str,
    reference: &SecretKeyRef,
    secrets: &mut Vec<String>,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = api.get_opt(&reference.name).await;
    ctx.metrics.request("get", "Secret", &secret);
    let secret = secret
        .map_err(|e| format!("reading Secret {namespace}/{}: {e}", reference.name))?
        .ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {:?}",
                reference.name, reference.key
            )
        })?;
    let value = String::from_utf8(bytes.0.clone())
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|_| {
            format!(
                "Secret {namespace}/{} key {:?} is not UTF-8 text",
                reference.name, reference.key
            )
        })?;
    secrets.push(value.clone());
    Ok(value)
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut output = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                output.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                output.push('=');
            }
        }
    }
    output
}

fn error_policy(run: Arc<AnalysisRun>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    if !matches!(error, Error::Conflict { .. }) {
        warn!(run = %run.name_any(), %error, "analysis run reconcile failed; retrying in 5s");
    }
    Action::requeue(Duration::from_secs(
        if matches!(error, Error::Conflict { .. }) {
            1
        } else {
            5
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
