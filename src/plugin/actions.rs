//! What each steering command writes, decided without I/O. Every action
//! patches exactly the fields the controller reads (the same Rust types), and
//! refuses with an explanation when it would change nothing.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{Value, json};

use crate::api::merge::merge_diff;
use crate::api::{POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout, RolloutPhase};

/// Patches for one action. Each is a JSON merge patch carrying the
/// resourceVersion the decision was based on, so a concurrent change makes
/// the write fail instead of being overwritten.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub spec: Option<Value>,
    pub status: Option<Value>,
    /// One line for the user, e.g. "rollout 'web' promoted".
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn name(rollout: &Rollout) -> String {
    rollout.metadata.name.clone().unwrap_or_default()
}

fn with_version(rollout: &Rollout, body: Value) -> Value {
    let mut body = body;
    body["metadata"] = json!({"resourceVersion": rollout.metadata.resource_version});
    body
}

fn phase(rollout: &Rollout) -> Option<RolloutPhase> {
    rollout.status.as_ref().and_then(|s| s.phase)
}

fn in_progress(rollout: &Rollout) -> bool {
    let status = rollout.status.clone().unwrap_or_default();
    status.current_pod_hash.is_some() && status.current_pod_hash != status.stable_rs
}

/// `promote`: release the current pause; `--full`: skip all remaining steps and analysis.
pub fn promote(rollout: &Rollout, full: bool) -> Result<Change, Refusal> {
    let status = rollout.status.clone().unwrap_or_default();
    let who = name(rollout);
    if status.abort && !full {
        return Err(Refusal(format!(
            "rollout '{who}' is aborted; use `kubectl ramp retry {who}` to run its steps again, or `promote --full` to skip them"
        )));
    }
    // A full promotion also ends an abort: the controller clears it and
    // skips every remaining step and analysis, as Argo does.
    if full {
        if !in_progress(rollout) {
            return Err(Refusal(format!(
                "rollout '{who}' has nothing to promote: its current revision is already stable"
            )));
        }
        let spec = rollout
            .is_paused_by_user()
            .then(|| with_version(rollout, json!({"spec": {"paused": false}})));
        let status = with_version(
            rollout,
            json!({"status": {"promoteFull": true, "pauseConditions": null}}),
        );
        return Ok(Change {
            spec,
            status: Some(status),
            summary: format!("rollout '{who}' fully promoted"),
        });
    }
    let user_paused = rollout.is_paused_by_user();
    if status.pause_conditions.is_empty() && !user_paused {
        let shown = phase(rollout).map(|p| p.as_str()).unwrap_or("unknown");
        return Err(Refusal(format!(
            "rollout '{who}' is not paused (phase {shown}); nothing to promote. Use --full to skip the remaining steps"
        )));
    }
    // A webhook gate opens only when its webhook answers 2xx; clearing it
    // here would only see the controller put it back.
    let gates_only = !status.pause_conditions.is_empty()
        && status
            .pause_conditions
            .iter()
            .all(|c| c.reason == crate::api::PauseReason::PendingWebhook);
    if gates_only && !user_paused {
        let message = status.message.clone().unwrap_or_default();
        return Err(Refusal(format!(
            "rollout '{who}' waits for a webhook gate ({message}); it opens when the webhook answers 2xx, or skip every remaining step and gate with `promote --full`"
        )));
    }
    let spec = user_paused.then(|| with_version(rollout, json!({"spec": {"paused": false}})));
    let status = (!status.pause_conditions.is_empty() && !gates_only)
        .then(|| with_version(rollout, json!({"status": {"pauseConditions": null}})));
    Ok(Change {
        spec,
        status,
        summary: format!("rollout '{who}' promoted"),
    })
}

pub fn abort(rollout: &Rollout) -> Result<Change, Refusal> {
    let who = name(rollout);
    let status = rollout.status.clone().unwrap_or_default();
    if status.abort {
        return Err(Refusal(format!("rollout '{who}' is already aborted")));
    }
    if !in_progress(rollout) {
        return Err(Refusal(format!(
            "rollout '{who}' has no update in progress to abort"
        )));
    }
    let patch = with_version(rollout, json!({"status": {"abort": true}}));
    Ok(Change {
        spec: None,
        status: Some(patch),
        summary: format!("rollout '{who}' aborted"),
    })
}

pub fn retry(rollout: &Rollout) -> Result<Change, Refusal> {
    let who = name(rollout);
    if !rollout.status.as_ref().is_some_and(|s| s.abort) {
        return Err(Refusal(format!(
            "rollout '{who}' is not aborted; only an aborted rollout can be retried"
        )));
    }
    let patch = with_version(rollout, json!({"status": {"abort": false}}));
    Ok(Change {
        spec: None,
        status: Some(patch),
        summary: format!("rollout '{who}' restarted its steps"),
    })
}

pub fn pause(rollout: &Rollout) -> Result<Change, Refusal> {
    let who = name(rollout);
    if rollout.is_paused_by_user() {
        return Err(Refusal(format!("rollout '{who}' is already paused")));
    }
    let patch = with_version(rollout, json!({"spec": {"paused": true}}));
    Ok(Change {
        spec: Some(patch),
        status: None,
        summary: format!("rollout '{who}' paused"),
    })
}

pub fn resume(rollout: &Rollout) -> Result<Change, Refusal> {
    let who = name(rollout);
    if !rollout.is_paused_by_user() {
        return Err(Refusal(format!(
            "rollout '{who}' is not paused with `kubectl ramp pause`; to continue past a pause step use `kubectl ramp promote {who}`"
        )));
    }
    let patch = with_version(rollout, json!({"spec": {"paused": false}}));
    Ok(Change {
        spec: Some(patch),
        status: None,
        summary: format!("rollout '{who}' resumed"),
    })
}

pub fn restart(rollout: &Rollout, at: Timestamp) -> Result<Change, Refusal> {
    let who = name(rollout);
    // Whole seconds: the precision Kubernetes stores times at.
    let at = Timestamp::from_second(at.as_second()).unwrap_or(at);
    let patch = with_version(rollout, json!({"spec": {"restartAt": at.to_string()}}));
    Ok(Change {
        spec: Some(patch),
        status: None,
        summary: format!("rollout '{who}' restarts pods created before {at}"),
    })
}

/// Parses `container=image` pairs; `*` selects every container.
pub fn parse_image_specs(specs: &[String]) -> Result<Vec<(String, String)>, Refusal> {
    if specs.is_empty() {
        return Err(Refusal(
            "give at least one CONTAINER=IMAGE (use *=IMAGE for every container)".into(),
        ));
    }
    specs
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((container, image)) if !container.trim().is_empty() && !image.trim().is_empty() && !image.contains(char::is_whitespace) => {
                Ok((container.trim().to_string(), image.trim().to_string()))
            }
            _ => Err(Refusal(format!("invalid image spec {spec:?}: expected CONTAINER=IMAGE, e.g. app=nginx:1.27 or *=nginx:1.27"))),
        })
        .collect()
}

pub fn set_image(rollout: &Rollout, pairs: &[(String, String)]) -> Result<Change, Refusal> {
    let who = name(rollout);
    let mut template = rollout.spec.template.clone();
    let Some(pod) = template.spec.as_mut() else {
        return Err(Refusal(format!("rollout '{who}' has no pod spec")));
    };
    let mut names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
    names.extend(pod.init_containers.iter().flatten().map(|c| c.name.clone()));
    for (container, _) in pairs {
        if container != "*" && !names.contains(container) {
            return Err(Refusal(format!(
                "rollout '{who}' has no container {container:?}; its containers are {}",
                names.join(", ")
            )));
        }
    }
    let mut changed = false;
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for container in containers {
        for (wanted, image) in pairs {
            if (wanted == "*" || *wanted == container.name)
                && container.image.as_deref() != Some(image.as_str())
            {
                container.image = Some(image.clone());
                changed = true;
            }
        }
    }
    if !changed {
        return Err(Refusal(format!(
            "rollout '{who}' already runs those images; nothing changed"
        )));
    }
    let shown: Vec<String> = pairs.iter().map(|(c, i)| format!("{c}={i}")).collect();
    let patch = template_patch(rollout, &template)?;
    Ok(Change {
        spec: Some(patch),
        status: None,
        summary: format!("rollout '{who}' image updated ({})", shown.join(", ")),
    })
}

/// `undo`: put back the pod template of an earlier revision (0 = the previous one).
pub fn undo_target(
    rollout: &Rollout,
    replica_sets: &[ReplicaSet],
    to_revision: i64,
) -> Result<Undo, Refusal> {
    let who = name(rollout);
    let current = rollout
        .status
        .as_ref()
        .and_then(|s| s.current_pod_hash.clone());
    let mut revisions: Vec<(i64, &ReplicaSet)> = replica_sets
        .iter()
        .filter_map(|rs| {
            Some((
                rs.metadata
                    .annotations
                    .as_ref()?
                    .get(REVISION_ANNOTATION)?
                    .parse()
                    .ok()?,
                rs,
            ))
        })
        .collect();
    revisions.sort_by_key(|(revision, _)| std::cmp::Reverse(*revision));
    let hash_of = |rs: &ReplicaSet| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            .cloned()
    };
    let target = if to_revision == 0 {
        revisions.iter().find(|(_, rs)| hash_of(rs) != current)
    } else {
        revisions
            .iter()
            .find(|(revision, _)| *revision == to_revision)
    };
    let Some((revision, rs)) = target else {
        let known: Vec<String> = revisions.iter().map(|(r, _)| r.to_string()).collect();
        return Err(Refusal(if to_revision == 0 {
            format!("rollout '{who}' has no previous revision to go back to")
        } else {
            format!(
                "rollout '{who}' has no revision {to_revision}; known revisions: {}",
                known.join(", ")
            )
        }));
    };
    if hash_of(rs) == current {
        return Err(Refusal(format!(
            "revision {revision} is already the current template of rollout '{who}'"
        )));
    }
    // Without the hash label and role metadata Ramp added, so the Rollout
    // gets back exactly the template that ReplicaSet runs.
    let template: PodTemplateSpec =
        crate::planner::hash::replica_set_source_template(rs).unwrap_or_default();
    Ok(Undo {
        revision: *revision,
        template,
    })
}

/// The revision `undo` goes back to and the pod template it runs.
pub struct Undo {
    pub revision: i64,
    pub template: PodTemplateSpec,
}

pub fn undo(
    rollout: &Rollout,
    replica_sets: &[ReplicaSet],
    to_revision: i64,
) -> Result<Change, Refusal> {
    let target = undo_target(rollout, replica_sets, to_revision)?;
    let patch = template_patch(rollout, &target.template)?;
    Ok(Change {
        spec: Some(patch),
        status: None,
        summary: format!(
            "rollout '{}' rolled back to revision {}",
            name(rollout),
            target.revision
        ),
    })
}

/// For a workloadRef Rollout, `undo` writes the template into the workload:
/// a merge patch of `current` (the workload's object) that makes its
/// template `template`, preconditioned on the workload's resourceVersion.
pub fn workload_template_patch(
    current: &Value,
    template: &PodTemplateSpec,
) -> Result<Value, Refusal> {
    // A PodTemplate keeps it at the top level, the others under spec.
    let in_spec = current["kind"] != "PodTemplate";
    let old = if in_spec {
        &current["spec"]["template"]
    } else {
        &current["template"]
    };
    let new = serde_json::to_value(template)
        .map_err(|e| Refusal(format!("cannot serialize the template: {e}")))?;
    let diff = merge_diff(old, &new);
    let mut patch = if in_spec {
        json!({"spec": {"template": diff}})
    } else {
        json!({"template": diff})
    };
    patch["metadata"] = json!({"resourceVersion": current["metadata"]["resourceVersion"]});
    Ok(patch)
}

/// A merge patch that makes `spec.template` exactly `template`.
fn template_patch(rollout: &Rollout, template: &PodTemplateSpec) -> Result<Value, Refusal> {
    if let Some(reference) = &rollout.spec.workload_ref {
        // The template lives in the workload; one written into the Rollout
        // beside the reference would only make the spec invalid.
        return Err(Refusal(format!(
            "rollout '{}' takes its pod template from {} {} (spec.workloadRef); change the template there, for example with `kubectl set image {}/{} ...`",
            name(rollout),
            reference.kind,
            reference.name,
            reference.kind.to_ascii_lowercase(),
            reference.name,
        )));
    }
    let serialize = |t: &PodTemplateSpec| {
        serde_json::to_value(t).map_err(|e| Refusal(format!("cannot serialize the template: {e}")))
    };
    let diff = merge_diff(&serialize(&rollout.spec.template)?, &serialize(template)?);
    Ok(with_version(rollout, json!({"spec": {"template": diff}})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(status: Value, paused: bool) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "42"},
            "spec": {"paused": paused, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "app", "image": "web:1"}, {"name": "sidecar", "image": "proxy:1"}]}},
                "strategy": {"canary": {}}},
            "status": status
        }))
        .expect("fixture")
    }

    fn paused_canary() -> Rollout {
        rollout(
            json!({"phase": "Paused", "currentPodHash": "b", "stableRS": "a",
            "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": "2026-01-01T00:00:00Z"}]}),
            false,
        )
    }

    #[test]
    fn promote_clears_pause_conditions_with_a_version_precondition() {
        let change = promote(&paused_canary(), false).expect("promotable");
        assert_eq!(
            change.status,
            Some(
                json!({"metadata": {"resourceVersion": "42"}, "status": {"pauseConditions": null}})
            )
        );
        assert_eq!(change.spec, None);
        assert_eq!(change.summary, "rollout 'web' promoted");
    }

    #[test]
    fn promote_refuses_when_not_paused_and_full_skips_steps() {
        let running = rollout(
            json!({"phase": "Progressing", "currentPodHash": "b", "stableRS": "a"}),
            false,
        );
        let refusal = promote(&running, false).unwrap_err();
        assert!(
            refusal.0.contains("is not paused (phase Progressing)") && refusal.0.contains("--full"),
            "{refusal}"
        );
        let full = promote(&running, true).expect("full promotion");
        assert_eq!(
            full.status
                .and_then(|s| s["status"]["promoteFull"].as_bool()),
            Some(true)
        );
        let healthy = rollout(
            json!({"phase": "Healthy", "currentPodHash": "a", "stableRS": "a"}),
            false,
        );
        assert!(
            promote(&healthy, true)
                .unwrap_err()
                .0
                .contains("already stable")
        );
    }

    #[test]
    fn abort_retry_pause_resume_preconditions() {
        assert_eq!(
            abort(&paused_canary())
                .expect("abortable")
                .status
                .map(|s| s["status"].clone()),
            Some(json!({"abort": true}))
        );
        let healthy = rollout(
            json!({"phase": "Healthy", "currentPodHash": "a", "stableRS": "a"}),
            false,
        );
        assert!(
            abort(&healthy)
                .unwrap_err()
                .0
                .contains("no update in progress")
        );
        assert!(
            retry(&paused_canary())
                .unwrap_err()
                .0
                .contains("not aborted")
        );
        let aborted = rollout(
            json!({"abort": true, "currentPodHash": "b", "stableRS": "a"}),
            false,
        );
        assert_eq!(
            retry(&aborted)
                .expect("retry")
                .status
                .map(|s| s["status"].clone()),
            Some(json!({"abort": false}))
        );
        assert_eq!(
            pause(&healthy)
                .expect("pause")
                .spec
                .map(|s| s["spec"].clone()),
            Some(json!({"paused": true}))
        );
        assert!(
            resume(&healthy)
                .unwrap_err()
                .0
                .contains("kubectl ramp promote web")
        );
        let user_paused = rollout(json!({}), true);
        assert!(pause(&user_paused).is_err());
        assert_eq!(
            resume(&user_paused)
                .expect("resume")
                .spec
                .map(|s| s["spec"].clone()),
            Some(json!({"paused": false}))
        );
    }

    #[test]
    fn image_specs_are_parsed_strictly() {
        assert_eq!(
            parse_image_specs(&["app=web:2".into()]),
            Ok(vec![("app".into(), "web:2".into())])
        );
        for bad in ["app", "=web:2", "app=", "app=web 2"] {
            let refusal = parse_image_specs(&[bad.into()]).unwrap_err();
            assert!(
                refusal.0.contains("expected CONTAINER=IMAGE"),
                "{bad}: {refusal}"
            );
        }
    }

    #[test]
    fn set_image_patches_only_the_containers_list() {
        let ro = paused_canary();
        let change = set_image(&ro, &[("app".into(), "web:2".into())]).expect("changed");
        let containers =
            &change.spec.expect("spec patch")["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(containers[1]["image"], "proxy:1");
        let all = set_image(&ro, &[("*".into(), "img:9".into())]).expect("changed");
        assert_eq!(
            all.spec.expect("spec")["spec"]["template"]["spec"]["containers"][1]["image"],
            "img:9"
        );
        assert!(
            set_image(&ro, &[("nope".into(), "x:1".into())])
                .unwrap_err()
                .0
                .contains("its containers are app, sidecar")
        );
        assert!(
            set_image(&ro, &[("app".into(), "web:1".into())])
                .unwrap_err()
                .0
                .contains("nothing changed")
        );
    }

    #[test]
    fn template_changes_to_a_workload_ref_rollout_are_refused_with_directions() {
        let mut ro = rollout(json!({}), false);
        ro.spec.template = Default::default();
        ro.spec.workload_ref = Some(crate::api::WorkloadRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            scale_down: None,
        });
        let refusal = template_patch(&ro, &PodTemplateSpec::default())
            .expect_err("no template beside a workloadRef");
        assert!(
            refusal.0.contains("Deployment web")
                && refusal.0.contains("kubectl set image deployment/web"),
            "{}",
            refusal.0
        );
    }

    #[test]
    fn undo_of_a_workload_ref_rollout_patches_the_workloads_template() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:0"}]}
        }))
        .expect("fixture");
        let deployment = json!({
            "kind": "Deployment", "metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]}}}
        });
        let patch = workload_template_patch(&deployment, &template).expect("patch");
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "7"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:0"}]}}}})
        );
        let pod_template = json!({"kind": "PodTemplate", "metadata": {"resourceVersion": "3"},
            "template": {"spec": {"containers": [{"name": "app", "image": "web:1"}]}}});
        let patch = workload_template_patch(&pod_template, &template).expect("patch");
        assert_eq!(
            patch["template"]["metadata"],
            json!({"labels": {"app": "web"}})
        );
        assert!(patch.get("spec").is_none());
    }

    #[test]
    fn undo_restores_an_earlier_template() {
        let ro = rollout(json!({"currentPodHash": "h2", "stableRS": "h2"}), false);
        let rs = |revision: i64, hash: &str, image: &str| -> ReplicaSet {
            serde_json::from_value(json!({
                "metadata": {"name": format!("web-{hash}"), "labels": {POD_TEMPLATE_HASH_LABEL: hash},
                    "annotations": {REVISION_ANNOTATION: revision.to_string()}},
                "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH_LABEL: hash}},
                    "spec": {"containers": [{"name": "app", "image": image}]}}}
            }))
            .expect("fixture")
        };
        let sets = vec![rs(1, "h1", "web:0"), rs(2, "h2", "web:1")];
        let change = undo(&ro, &sets, 0).expect("undo");
        let patch = change.spec.expect("spec");
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "web:0"}])
        );
        assert!(
            patch["spec"]["template"]["metadata"].is_null(),
            "hash label is not copied back: {patch}"
        );
        assert!(
            undo(&ro, &sets, 7)
                .unwrap_err()
                .0
                .contains("known revisions: 2, 1")
        );
        assert!(
            undo(&ro, &sets, 2)
                .unwrap_err()
                .0
                .contains("already the current template")
        );
    }
}
