//! `workloadRef`: the template (and selector) come from a Deployment,
//! ReplicaSet or PodTemplate; `scaleDown` hands a Deployment's pods over.
//! Scenarios follow Argo's TestWorkloadRef, TestWorkloadRefTemplate and
//! TestScaleDown* (test/e2e/functional_test.go), restated.

use super::*;
use crate::api::{WorkloadKind, WorkloadRef};
use crate::planner::workload::Workload;

fn deployment(replicas: i32) -> Workload {
    Workload {
        kind: WorkloadKind::Deployment,
        name: "web".into(),
        uid: String::new(),
        generation: 1,
        paused: false,
        observed: true,
        template: serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}
        }))
        .expect("fixture template"),
        selector: Some(
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("selector"),
        ),
        replicas: Some(replicas),
    }
}

/// A Rollout of `replicas` with no template or selector of its own,
/// naming Deployment "web".
fn referencing(strategy: Value, replicas: i32, scale_down: Option<&str>) -> World {
    let mut rollout = rollout(strategy, replicas);
    rollout.spec.template = Default::default();
    rollout.spec.selector = Default::default();
    rollout.spec.workload_ref = Some(WorkloadRef {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        scale_down: scale_down.map(String::from),
    });
    World::new(rollout)
}

fn set_workload_image(world: &mut World, image: &str) {
    world.mark();
    let workload = world.workload.as_mut().expect("the workload exists");
    if let Some(spec) = workload.template.spec.as_mut() {
        spec.containers[0].image = Some(image.into());
    }
    workload.generation += 1;
}

/// Pods the ReplicaSets running `image` are asked for.
fn running(world: &World, image: &str) -> i32 {
    world
        .replica_sets
        .values()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|p| p.containers.first())
                .and_then(|c| c.image.as_deref())
                == Some(image)
        })
        .filter_map(|rs| rs.spec.as_ref()?.replicas)
        .sum()
}

fn workload_hash(world: &World) -> String {
    let workload = world.workload.as_ref().expect("the workload exists");
    hash::template_hash(&workload.template, None).short
}

/// `count` pods of the ReplicaSet of `hash` become ready and available.
fn pods_ready(world: &mut World, hash: &str, count: i32) {
    world.mark();
    world.broken.retain(|h| h != hash);
    for rs in world.replica_sets.values_mut() {
        let labels = rs.metadata.labels.as_ref();
        if labels
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            .map(String::as_str)
            == Some(hash)
            && let Some(status) = rs.status.as_mut()
        {
            status.ready_replicas = Some(count);
            status.available_replicas = Some(count);
        }
    }
}

fn deployment_replicas(world: &World) -> Option<i32> {
    world.workload.as_ref().and_then(|w| w.replicas)
}

#[test]
fn the_template_and_selector_come_from_the_deployment() {
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    let mut world = referencing(canary(steps), 4, None);
    world.workload = Some(deployment(0));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(running(&world, "web:1"), 4);
    let status = world.status();
    assert_eq!(status.workload_observed_generation.as_deref(), Some("1"));
    assert!(
        status
            .selector
            .as_deref()
            .is_some_and(|s| s.contains("app=web")),
        "{:?}",
        status.selector
    );
    // The Rollout's own spec stays as written: nothing resolved is stored.
    assert!(world.rollout.spec.template.spec.is_none());

    // A new template in the Deployment is a new revision, walked through
    // the steps like any other.
    set_workload_image(&mut world, "web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!((running(&world, "web:2"), running(&world, "web:1")), (2, 2));
    assert_eq!(
        world.status().workload_observed_generation.as_deref(),
        Some("2")
    );
    world.promote();
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!((running(&world, "web:2"), running(&world, "web:1")), (4, 0));
    // `never` (the default) leaves the Deployment alone.
    assert!(world.workload_scales.is_empty());
}

#[test]
fn a_missing_workload_is_an_invalid_spec_until_it_appears() {
    let mut world = referencing(blue_green(json!({})), 2, None);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("spec.workloadRef") && message.contains("Deployment \"web\" not found"),
        "{message}"
    );
    assert!(world.replica_sets.is_empty());
    assert!(world.has_warning("InvalidSpec"));
    // The Services are left pointing where they pointed.
    assert_eq!(world.selector("web-active"), None);

    world.mark();
    world.workload = Some(deployment(0));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.selector("web-active"), Some(workload_hash(&world)));
}

#[test]
fn a_template_beside_the_reference_is_an_invalid_spec() {
    let mut world = referencing(blue_green(json!({})), 1, None);
    world.rollout.spec.template = serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web"}}
    }))
    .expect("template");
    world.workload = Some(deployment(0));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    let message = world.status().message.unwrap_or_default();
    assert!(
        message.contains("template must be empty for workload reference rollout"),
        "{message}"
    );
    // Argo's TestWorkloadRefTemplate: that one condition, nothing else.
    let conditions = world.status().conditions;
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    assert_eq!(conditions[0].type_, "InvalidSpec");
    assert!(world.replica_sets.is_empty());
}

#[test]
fn a_malformed_reference_says_what_to_fix() {
    let cases = [
        (("apps/v1", "StatefulSet", None), "cannot be referenced"),
        (("v1", "Deployment", None), "cannot be referenced"),
        (
            ("apps/v1", "Deployment", Some("sometimes")),
            "not a scale-down mode",
        ),
        (
            ("v1", "PodTemplate", Some("onsuccess")),
            "only a referenced Deployment",
        ),
    ];
    for ((api_version, kind, scale_down), expected) in cases {
        let mut world = referencing(canary(json!([])), 1, scale_down);
        if let Some(reference) = world.rollout.spec.workload_ref.as_mut() {
            reference.api_version = api_version.into();
            reference.kind = kind.into();
        }
        world.workload = Some(deployment(0));
        world.settle();
        let message = world.status().message.unwrap_or_default();
        assert_eq!(world.phase(), RolloutPhase::Degraded, "{message}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
}

#[test]
fn a_pod_template_without_a_selector_needs_the_rollouts_own() {
    let mut world = referencing(canary(json!([])), 2, None);
    if let Some(reference) = world.rollout.spec.workload_ref.as_mut() {
        reference.api_version = "v1".into();
        reference.kind = "PodTemplate".into();
    }
    let mut template = deployment(0);
    template.kind = WorkloadKind::PodTemplate;
    template.selector = None;
    template.replicas = None;
    world.workload = Some(template);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Degraded);
    assert!(
        world
            .status()
            .message
            .unwrap_or_default()
            .contains("set spec.selector")
    );
    world.mark();
    world.rollout.spec.selector =
        serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("selector");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(running(&world, "web:1"), 2);
}

/// Argo: TestScaleDownProgressively and TestScaleDownProgressivelyCompleted.
#[test]
fn progressively_hands_the_deployments_pods_over_and_keeps_it_drained() {
    let mut world = referencing(canary(json!([])), 4, Some("progressively"));
    world.workload = Some(deployment(4));
    let first = workload_hash(&world);
    world.broken.push(first.clone());
    world.settle();
    // None of the Rollout's pods is ready: the Deployment keeps all of its own.
    assert_eq!(world.phase(), RolloutPhase::Progressing);
    assert_eq!(deployment_replicas(&world), Some(4));
    assert!(world.workload_scales.is_empty());

    // Pod by pod, the Deployment gives up one of its own.
    for ready in 1..=4 {
        pods_ready(&mut world, &first, ready);
        world.settle();
        assert_eq!(
            deployment_replicas(&world),
            Some(4 - ready),
            "{ready} ready"
        );
    }
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert!(world.has_event("ScalingDeployment"));
    let scales = world.workload_scales.clone();
    assert_eq!(scales, [3, 2, 1, 0]);
    // The scale changed the Deployment's generation, and status says so.
    assert_eq!(
        world.status().workload_observed_generation,
        world.workload.as_ref().map(|w| w.generation.to_string())
    );

    // A later revision does not bring the Deployment back.
    set_workload_image(&mut world, "web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(running(&world, "web:2"), 4);
    assert_eq!(deployment_replicas(&world), Some(0));
    assert_eq!(world.workload_scales, scales);
}

/// Argo: TestScaleDownOnSuccess.
#[test]
fn onsuccess_drains_the_deployment_once_the_rollout_is_healthy() {
    let mut world = referencing(blue_green(json!({})), 2, Some("onsuccess"));
    world.workload = Some(deployment(2));
    let first = workload_hash(&world);
    world.broken.push(first.clone());
    world.settle();
    assert_ne!(world.phase(), RolloutPhase::Healthy);
    pods_ready(&mut world, &first, 1);
    world.settle();
    assert_ne!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(deployment_replicas(&world), Some(2));

    pods_ready(&mut world, &first, 2);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.workload_scales, [0]);
}

/// Argo: TestWorkloadRef's last step.
#[test]
fn an_inline_template_in_place_of_the_reference_forgets_the_workload_generation() {
    let mut world = referencing(canary(json!([])), 2, None);
    world.workload = Some(deployment(0));
    world.settle();
    assert_eq!(
        world.status().workload_observed_generation.as_deref(),
        Some("1")
    );
    world.mark();
    let inline = rollout(canary(json!([])), 2);
    world.rollout.spec.workload_ref = None;
    world.rollout.spec.template = inline.spec.template;
    world.rollout.spec.selector = inline.spec.selector;
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.status().workload_observed_generation, None);
    // Same template as the Deployment's: no new revision, no pod replaced.
    assert_eq!(world.replica_sets.len(), 1);
}

/// A ReplicaSet as Argo Rollouts leaves it when its Rollout is deleted with
/// `--cascade=orphan`: named and labelled with Argo's hash, the template as
/// the API server stored it (defaults filled in), no owner.
fn argo_orphan(app: &str, hash: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("web-{hash}"), "namespace": "shop",
            "labels": {"app": app, POD_TEMPLATE_HASH_LABEL: hash},
            "annotations": {"rollout.argoproj.io/revision": "3"}
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, POD_TEMPLATE_HASH_LABEL: hash}},
            "template": {
                "metadata": {"labels": {"app": app, POD_TEMPLATE_HASH_LABEL: hash}},
                "spec": {
                    "containers": [{
                        "name": "web", "image": "web:1", "imagePullPolicy": "IfNotPresent",
                        "resources": {}, "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"
                    }],
                    "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                    "schedulerName": "default-scheduler", "securityContext": {},
                    "terminationGracePeriodSeconds": 30
                }
            }
        },
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}
    }))
    .expect("fixture orphan")
}

fn point_services_at(world: &mut World, hash: &str) {
    for service in world.services.values_mut() {
        if let Some(selector) = service.spec.as_mut().and_then(|s| s.selector.as_mut()) {
            selector.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
        }
    }
}

#[test]
fn an_orphan_running_the_template_is_adopted_without_replacing_a_pod() {
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    let mut world = World::new(rollout(canary(steps), 4));
    world.orphans.push(argo_orphan("web", "argo5d8f", 4));
    point_services_at(&mut world, "argo5d8f");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let names: Vec<&String> = world.replica_sets.keys().collect();
    assert_eq!(names, ["web-argo5d8f"], "no ReplicaSet of our own hash");
    let adopted = &world.replica_sets["web-argo5d8f"];
    let owner = adopted
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first());
    assert_eq!(owner.map(|o| o.uid.as_str()), Some("uid-web"));
    assert_eq!(running(&world, "web:1"), 4);
    assert!(world.has_event("ReplicaSetAdopted"));
    assert!(!world.has_event("NewReplicaSetCreated"));
    // The Services kept selecting the pods that were already serving.
    assert_eq!(world.selector("web-stable").as_deref(), Some("argo5d8f"));
    assert_eq!(world.status().stable_rs.as_deref(), Some("argo5d8f"));

    // From there on it is the stable revision of an ordinary canary.
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!((running(&world, "web:2"), running(&world, "web:1")), (2, 2));
    assert_eq!(world.selector("web-stable").as_deref(), Some("argo5d8f"));
}

#[test]
fn orphans_the_selector_does_not_select_stay_orphans() {
    let mut world = World::new(rollout(canary(json!([])), 2));
    world.orphans.push(argo_orphan("other", "argo5d8f", 2));
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.orphans.len(), 1);
    assert!(!world.replica_sets.contains_key("web-argo5d8f"));
    assert!(!world.has_event("ReplicaSetAdopted"));
}

/// An orphan running another template is adopted as an older revision and
/// scaled down once the Rollout's own pods are up.
#[test]
fn an_orphan_running_another_template_is_replaced() {
    let mut world = World::new(rollout(canary(json!([])), 2));
    let mut orphan = argo_orphan("web", "argo5d8f", 2);
    if let Some(container) = orphan
        .spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        container.image = Some("web:0".into());
    }
    world.orphans.push(orphan);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!((running(&world, "web:1"), running(&world, "web:0")), (2, 0));
    assert!(world.has_event("ReplicaSetAdopted"));
}

/// The Deployment controller's ReplicaSet of `workload`'s template.
fn deployment_set(workload: &Workload, hash: &str, replicas: i32) -> ReplicaSet {
    let mut template = workload.template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.insert("pod-template-hash".into(), hash.into());
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("web-{hash}"), "namespace": "shop", "resourceVersion": "41",
            "labels": {"app": "web", "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                "uid": workload.uid, "controller": true}]
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
            "template": template
        },
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}
    }))
    .expect("fixture")
}

#[test]
fn a_running_deployments_replica_set_is_taken_over_with_its_pods() {
    let mut world = referencing(blue_green(json!({})), 3, Some("progressively"));
    let mut deployment = deployment(3);
    deployment.uid = "uid-deploy".into();
    world
        .deployment_sets
        .push(deployment_set(&deployment, "6f7d", 3));
    world.workload = Some(deployment);

    // First the Deployment is paused, and nothing else happens until its
    // controller has seen that.
    assert!(world.step());
    assert!(world.last_plan.workload_pause.is_some());
    assert!(world.has_event("PausingDeployment"));
    world.step();
    assert!(
        world.last_plan.handover.is_none() && world.last_plan.replica_sets.is_empty(),
        "nothing is taken or created before the pause is seen"
    );
    assert!(world.replica_sets.is_empty());
    if let Some(workload) = world.workload.as_mut() {
        workload.observed = true;
    }
    world.settle();

    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let names: Vec<&String> = world.replica_sets.keys().collect();
    assert_eq!(
        names,
        ["web-6f7d"],
        "the Deployment's ReplicaSet, no new one"
    );
    let taken = &world.replica_sets["web-6f7d"];
    let owner = taken
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first());
    assert_eq!(owner.map(|o| o.uid.as_str()), Some("uid-web"));
    assert_eq!(running(&world, "web:1"), 3);
    assert!(world.has_event("ReplicaSetAdopted"));
    assert!(!world.has_event("NewReplicaSetCreated"));
    assert_eq!(world.selector("web-active").as_deref(), Some("6f7d"));
    // The paused Deployment, now without a ReplicaSet, is drained too.
    assert_eq!(deployment_replicas(&world), Some(0));

    // Its template's next change is an ordinary new revision.
    set_workload_image(&mut world, "web:2");
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    // The taken-over ReplicaSet goes like any old one, after the delay.
    world.advance(31);
    world.settle();
    assert_eq!((running(&world, "web:2"), running(&world, "web:1")), (3, 0));
}

#[test]
fn never_leaves_the_deployments_replica_set_alone() {
    let mut world = referencing(blue_green(json!({})), 2, None);
    let mut deployment = deployment(2);
    deployment.uid = "uid-deploy".into();
    world
        .deployment_sets
        .push(deployment_set(&deployment, "6f7d", 2));
    world.workload = Some(deployment);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.deployment_sets.len(), 1);
    assert!(!world.replica_sets.contains_key("web-6f7d"));
    assert!(world.workload.as_ref().is_some_and(|w| !w.paused));
}
