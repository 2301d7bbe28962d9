//! Carrying out a plan: every write names what it touched when it fails.

use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::debug;

use super::{Context, Error, is_conflict, is_not_found};
use crate::api::{
    AnalysisRun, FIELD_MANAGER, MANAGED_BY_ANNOTATION, POD_TEMPLATE_HASH_LABEL, Rollout,
};
use crate::planner::{AnalysisRunChange, Plan, PlannedEvent, ReplicaSetChange};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Parameters of every merge or JSON patch the controller sends: named, so
/// managedFields tell its writes from others' (an HPA's, a user's).
pub(super) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

pub(super) async fn execute(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    plan: &Plan,
) -> Result<(), Error> {
    let name = rollout.name_any();
    let subject = crate::notify::hooks::Subject {
        namespace: namespace.into(),
        name: name.clone(),
        uid: rollout.uid().unwrap_or_default(),
    };
    // Questions need nothing written first; their answers plan this
    // Rollout again.
    for call in plan.webhooks.iter().filter(|c| c.is_question()) {
        ctx.webhooks.ask(subject.clone(), call.clone());
    }
    if let Some(deployment) = &plan.workload_pause {
        super::workloads::pause(ctx, namespace, deployment).await?;
    }
    if let Some(handover) = &plan.handover {
        take_over(ctx, namespace, handover).await?;
    }
    // The finalizer goes on before any route is written, so a deletion from
    // here on waits for the routes to be handed back. Its patch moves the
    // resourceVersion on, which the status write below is preconditioned on.
    let mut resource_version = rollout.resource_version();
    if plan.finalizer == Some(true)
        && let Some(written) = set_finalizer(ctx, rollout, namespace, true).await?
    {
        resource_version = Some(written);
    }
    // Services move first: they only ever move to a hash whose pods are
    // already available, and a ReplicaSet scaled down in the same plan must
    // not be selected when a crash cuts the plan short.
    let services: Api<Service> = ctx.api(namespace);
    for change in &plan.services {
        // Apply only the selector key and the managed-by annotation: the rest
        // of the Service belongs to whoever created it.
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": change.service, "namespace": namespace, "annotations": {MANAGED_BY_ANNOTATION: name}},
            "spec": {"selector": {POD_TEMPLATE_HASH_LABEL: change.hash}},
        });
        let result = services
            .patch(&change.service, &apply_params(), &Patch::Apply(&patch))
            .await;
        ctx.metrics.request("apply", "Service", &result);
        let applied = result.map_err(|source| Error::PatchService {
            namespace: namespace.into(),
            name: change.service.clone(),
            hash: change.hash.clone(),
            source,
        })?;
        ctx.recent_services.remember(applied);
    }

    // Routes follow the Services: a weight only ever moves to pods that are
    // available, and an abort takes the weight back before any canary pod
    // goes (the planner scales it down only once the routes show 0).
    super::routes::execute(ctx, &plan.routes).await?;

    let replica_sets: Api<ReplicaSet> = ctx.api(namespace);
    for change in &plan.replica_sets {
        match change {
            ReplicaSetChange::Apply(desired) => {
                let rs_name = desired.name_any();
                let result = replica_sets
                    .patch(&rs_name, &apply_params(), &Patch::Apply(desired.as_ref()))
                    .await;
                ctx.metrics.request("apply", "ReplicaSet", &result);
                let applied = result.map_err(|source| Error::ApplyReplicaSet {
                    namespace: namespace.into(),
                    name: rs_name.clone(),
                    source,
                })?;
                ctx.recent_replica_sets.remember(applied);
                debug!(rollout = %name, replicaset = %rs_name, "applied ReplicaSet");
            }
            ReplicaSetChange::Delete { name: rs_name } => {
                let result = replica_sets
                    .delete(rs_name, &DeleteParams::background())
                    .await;
                ctx.metrics.request("delete", "ReplicaSet", &result);
                ctx.recent_replica_sets
                    .forget(&ObjectRef::new(rs_name).within(namespace));
                match result {
                    Ok(_) => {}
                    Err(source) if is_not_found(&source) => {}
                    Err(source) => {
                        return Err(Error::DeleteReplicaSet {
                            namespace: namespace.into(),
                            name: rs_name.clone(),
                            source,
                        });
                    }
                }
            }
        }
    }

    // The Deployment hands over after the Rollout's own ReplicaSets moved.
    if let Some(change) = &plan.workload_scale {
        super::workloads::scale(ctx, namespace, change).await?;
    }

    let runs: Api<AnalysisRun> = ctx.api(namespace);
    for change in &plan.analysis_runs {
        match change {
            AnalysisRunChange::Create(run) => {
                let run_name = run.name_any();
                let result = runs
                    .patch(&run_name, &apply_params(), &Patch::Apply(run.as_ref()))
                    .await;
                ctx.metrics.request("apply", "AnalysisRun", &result);
                let applied = result.map_err(|source| Error::CreateAnalysisRun {
                    namespace: namespace.into(),
                    name: run_name.clone(),
                    source,
                })?;
                ctx.recent_runs.remember(applied);
            }
            AnalysisRunChange::Terminate { name: run_name } => {
                let patch = json!({"spec": {"terminate": true}});
                let result = runs
                    .patch(run_name, &patch_params(), &Patch::Merge(&patch))
                    .await;
                ctx.metrics.request("patch", "AnalysisRun", &result);
                match result {
                    Ok(_) => {}
                    Err(source) if is_not_found(&source) => {}
                    Err(source) => {
                        return Err(Error::TerminateAnalysisRun {
                            namespace: namespace.into(),
                            name: run_name.clone(),
                            source,
                        });
                    }
                }
            }
            AnalysisRunChange::Delete { name: run_name } => {
                let result = runs.delete(run_name, &DeleteParams::background()).await;
                ctx.metrics.request("delete", "AnalysisRun", &result);
                ctx.recent_runs
                    .forget(&ObjectRef::new(run_name).within(namespace));
                match result {
                    Ok(_) => {}
                    Err(source) if is_not_found(&source) => {}
                    Err(source) => {
                        return Err(Error::DeleteAnalysisRun {
                            namespace: namespace.into(),
                            name: run_name.clone(),
                            source,
                        });
                    }
                }
            }
        }
    }

    let pods: Api<Pod> = ctx.api(namespace);
    for pod in &plan.evictions {
        let result = pods.evict(pod, &EvictParams::default()).await;
        ctx.metrics.request("evict", "Pod", &result);
        match result {
            Ok(_) => {}
            // 429: a PodDisruptionBudget says not now; the next pass tries again.
            Err(kube::Error::Api(status)) if status.code == 429 || status.code == 404 => {}
            Err(source) => {
                return Err(Error::EvictPod {
                    namespace: namespace.into(),
                    name: pod.clone(),
                    source,
                });
            }
        }
    }

    for change in &plan.pod_metadata {
        relabel_pods(ctx, namespace, change).await?;
    }

    if let Some(status) = &plan.status {
        let old = serde_json::to_value(&rollout.status).map_err(|source| Error::Serialize {
            what: "old status".into(),
            source,
        })?;
        let new = serde_json::to_value(status).map_err(|source| Error::Serialize {
            what: "new status".into(),
            source,
        })?;
        let written = write_status::<Rollout>(
            ctx,
            namespace,
            &name,
            resource_version,
            &old,
            &new,
            "Rollout",
        )
        .await?;
        ctx.recent_rollouts.remember(written);
        // Only now is the transition on record, so it is never planned (or
        // announced) again, not even after a restart; a write that failed
        // leaves the next pass to plan, and announce, it again.
        publish_events(ctx, rollout, &plan.events);
        notify_subscribers(ctx, rollout, namespace, &plan.events);
        for call in plan.webhooks.iter().filter(|c| !c.is_question()) {
            ctx.webhooks.tell(call.clone());
        }
    } else {
        publish_events(ctx, rollout, &plan.events);
    }
    // Off only once the record of routed-through routes is gone from status.
    if plan.finalizer == Some(false) {
        set_finalizer(ctx, rollout, namespace, false).await?;
    }
    Ok(())
}

/// Puts a ReplicaSet's role labels and annotations on its live pods (new
/// pods get them from the pod template). Pods already carrying them are skipped.
/// Takes a Deployment's ReplicaSet over: its pods get the Rollout's hash
/// label first, so that a Service moved to that hash afterwards finds every
/// one of them; then the ReplicaSet changes controller.
async fn take_over(
    ctx: &Context,
    namespace: &str,
    handover: &crate::planner::workload::Handover,
) -> Result<(), Error> {
    let label = json!({"metadata": {"labels": {POD_TEMPLATE_HASH_LABEL: handover.hash}}});
    for pod in list_pod_metadata(ctx, namespace, &handover.pods).await? {
        let labelled = pod.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&handover.hash);
        if labelled || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        patch_pod(ctx, namespace, &pod.name_any(), &label).await?;
    }
    let replica_sets: Api<ReplicaSet> = ctx.api(namespace);
    let params = patch_params();
    let result = replica_sets
        .patch(
            &handover.replica_set,
            &params,
            &Patch::Merge(&handover.patch),
        )
        .await;
    ctx.metrics.request("patch", "ReplicaSet", &result);
    let taken = result.map_err(|source| Error::TakeReplicaSet {
        namespace: namespace.into(),
        name: handover.replica_set.clone(),
        source,
    })?;
    ctx.recent_replica_sets.remember(taken);
    Ok(())
}

async fn relabel_pods(
    ctx: &Context,
    namespace: &str,
    change: &crate::planner::PodMetadataChange,
) -> Result<(), Error> {
    let selector = format!("{POD_TEMPLATE_HASH_LABEL}={}", change.hash);
    let listed = list_pod_metadata(ctx, namespace, &selector).await?;
    let wanted = &change.metadata;
    let mut labels = serde_json::Map::new();
    let mut annotations = serde_json::Map::new();
    for (key, value) in &wanted.set.labels {
        labels.insert(key.clone(), Value::String(value.clone()));
    }
    for key in &wanted.removed_labels {
        labels.insert(key.clone(), Value::Null);
    }
    for (key, value) in &wanted.set.annotations {
        annotations.insert(key.clone(), Value::String(value.clone()));
    }
    for key in &wanted.removed_annotations {
        annotations.insert(key.clone(), Value::Null);
    }
    let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
    for pod in listed {
        let current_labels = pod.metadata.labels.clone().unwrap_or_default();
        let current_annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let done = wanted
            .set
            .labels
            .iter()
            .all(|(k, v)| current_labels.get(k) == Some(v))
            && wanted
                .set
                .annotations
                .iter()
                .all(|(k, v)| current_annotations.get(k) == Some(v))
            && wanted
                .removed_labels
                .iter()
                .all(|k| !current_labels.contains_key(k))
            && wanted
                .removed_annotations
                .iter()
                .all(|k| !current_annotations.contains_key(k));
        if done || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        patch_pod(ctx, namespace, &pod.name_any(), &patch).await?;
    }
    Ok(())
}

/// The metadata of the pods `selector` selects.
async fn list_pod_metadata(
    ctx: &Context,
    namespace: &str,
    selector: &str,
) -> Result<Vec<kube::api::PartialObjectMeta<Pod>>, Error> {
    let pods: Api<Pod> = ctx.api(namespace);
    let listed = pods
        .list_metadata(&kube::api::ListParams::default().labels(selector))
        .await;
    ctx.metrics.request("list", "Pod", &listed);
    listed
        .map(|list| list.items)
        .map_err(|source| Error::ListPods {
            namespace: namespace.into(),
            source,
        })
}

/// Merge-patches a pod's metadata; a pod gone meanwhile is no error (its
/// ReplicaSet replaces it from a template that already says the same).
async fn patch_pod(ctx: &Context, namespace: &str, name: &str, patch: &Value) -> Result<(), Error> {
    let pods: Api<Pod> = ctx.api(namespace);
    let result = pods
        .patch(name, &patch_params(), &Patch::Merge(patch))
        .await;
    ctx.metrics.request("patch", "Pod", &result);
    match result {
        Ok(_) => Ok(()),
        Err(source) if is_not_found(&source) => Ok(()),
        Err(source) => Err(Error::PatchPod {
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}

/// Adds or removes Ramp's traffic-routing finalizer and nothing else. The
/// patch tests the finalizer list it started from (or the resourceVersion
/// when there was none), so a finalizer someone else adds meanwhile is not
/// lost: the patch fails and the next pass starts from their list. Returns
/// the Rollout's new resourceVersion when it wrote.
pub(super) async fn set_finalizer(
    ctx: &Context,
    rollout: &Rollout,
    namespace: &str,
    present: bool,
) -> Result<Option<String>, Error> {
    use crate::api::TRAFFIC_ROUTING_FINALIZER;
    let name = rollout.name_any();
    let old = rollout.metadata.finalizers.clone();
    let mut new: Vec<String> = old.clone().unwrap_or_default();
    new.retain(|f| f != TRAFFIC_ROUTING_FINALIZER);
    if present {
        new.push(TRAFFIC_ROUTING_FINALIZER.to_string());
    }
    if Some(&new) == old.as_ref() || (new.is_empty() && old.is_none()) {
        return Ok(None);
    }
    let guard = match &old {
        Some(list) => json!({"op": "test", "path": "/metadata/finalizers", "value": list}),
        None => {
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rollout.resource_version()})
        }
    };
    let operations = json!([guard, {"op": "add", "path": "/metadata/finalizers", "value": new}]);
    let patch: json_patch::Patch =
        serde_json::from_value(operations).map_err(|source| Error::Serialize {
            what: "finalizer patch".into(),
            source,
        })?;
    let api: Api<Rollout> = ctx.api(namespace);
    let result = api
        .patch(&name, &patch_params(), &Patch::Json::<()>(patch))
        .await;
    ctx.metrics.request("patch", "Rollout", &result);
    match result {
        Ok(written) => {
            let version = written.resource_version();
            // The next pass must not plan from a cache without the change.
            ctx.recent_rollouts.remember(written);
            Ok(version)
        }
        // Removing from a Rollout that is already gone is done.
        Err(source) if !present && is_not_found(&source) => Ok(None),
        Err(source) => Err(Error::PatchFinalizer {
            action: if present { "adding" } else { "removing" },
            namespace: namespace.into(),
            name,
            source,
        }),
    }
}

/// Merge-patches `.status` with the object's resourceVersion as a
/// precondition, so a write computed from a stale cache is rejected (409)
/// instead of overwriting what a user (e.g. `kubectl ramp promote`) just did.
pub(super) async fn write_status<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    resource_version: Option<String>,
    old: &Value,
    new: &Value,
    kind: &'static str,
) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = ctx.api(namespace);
    let body = json!({"metadata": {"resourceVersion": resource_version}, "status": crate::api::merge::merge_diff(old, new)});
    let result = api
        .patch_status(name, &patch_params(), &Patch::Merge(&body))
        .await;
    ctx.metrics.request("patch_status", kind, &result);
    match result {
        Ok(written) => Ok(written),
        Err(source) if is_conflict(&source) => Err(Error::Conflict {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }),
        Err(source) => Err(Error::WriteStatus {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}

/// Queues a notice for every planned transition someone subscribed to.
pub(super) fn notify_subscribers<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    subject: &K,
    namespace: &str,
    events: &[PlannedEvent],
) {
    let (name, annotations) = (
        subject.meta().name.clone().unwrap_or_default(),
        subject.meta().annotations.clone().unwrap_or_default(),
    );
    for event in events {
        if let Some(notice) =
            crate::notify::notice(namespace, &name, &annotations, event.reason, &event.message)
        {
            ctx.notifier.enqueue(notice);
        }
    }
}

pub(super) fn publish_events<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    events: &[PlannedEvent],
) {
    ctx.events.publish(&object.object_ref(&()), events);
}
