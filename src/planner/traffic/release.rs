//! Handing routes back: when `trafficRouting` is removed or stops naming a
//! route, and when the Rollout is deleted, the routes Ramp wrote to get all
//! weight on stable and lose their managed rules. Which routes those were
//! comes from `status.appliedTrafficRouting`, since the spec may no longer
//! say.

use std::collections::BTreeSet;

use super::{DesiredTraffic, LiveRoutes, RoutePatch, RouteRef, routers};
use crate::api::{AppliedTrafficRouting, Rollout, TRAFFIC_ROUTING_FINALIZER};
use crate::planner::{Plan, PlannedEvent, Snapshot};

/// Patches that return the routes of `applied` (except those in `keep`,
/// which the current configuration still drives) to stable. Empty once they
/// are there, or when they no longer exist.
pub fn release_patches(
    applied: &AppliedTrafficRouting,
    namespace: &str,
    live: &LiveRoutes<'_>,
    keep: &BTreeSet<RouteRef>,
) -> Vec<RoutePatch> {
    let strategy = applied.as_strategy();
    let desired = DesiredTraffic {
        canary_weight: 0,
        max_weight: applied.traffic_routing.max_weight(),
        canary_service: applied.canary_service.as_deref(),
        stable_service: applied.stable_service.as_deref(),
        canary_hash: "",
        stable_hash: "",
        header_routes: Vec::new(),
        mirror_routes: Vec::new(),
        managed_names: applied
            .traffic_routing
            .managed_routes
            .iter()
            .map(|r| r.name.as_str())
            .collect(),
        mirror_step: None,
    };
    routers(&strategy, namespace)
        .iter()
        .flat_map(|router| router.reconcile(live, &desired).patches)
        .filter(|patch| !keep.contains(&patch.target))
        .collect()
}

/// The routes a routing configuration names.
fn objects_of(applied: Option<&AppliedTrafficRouting>, namespace: &str) -> BTreeSet<RouteRef> {
    applied
        .map(|a| {
            routers(&a.as_strategy(), namespace)
                .iter()
                .flat_map(|r| r.objects())
                .collect()
        })
        .unwrap_or_default()
}

/// The routes the recorded routing names, for the controller to read
/// beside those of the spec.
pub fn recorded_routes(rollout: &Rollout) -> BTreeSet<RouteRef> {
    let namespace = rollout.metadata.namespace.as_deref().unwrap_or("default");
    objects_of(
        rollout
            .status
            .as_ref()
            .and_then(|s| s.applied_traffic_routing.as_ref()),
        namespace,
    )
}

/// Hands back routes the spec no longer names, keeps the record of what was
/// routed through, and says whether the Rollout needs the finalizer. Runs
/// after the rest of the plan, whichever way that returned.
pub fn finish_plan(snap: &Snapshot<'_>, plan: &mut Plan) {
    let rollout = snap.rollout;
    let namespace = snap.namespace();
    let observed = rollout.status.clone().unwrap_or_default();
    let mut status = plan.status.clone().unwrap_or_else(|| observed.clone());
    let current = rollout
        .spec
        .strategy
        .canary
        .as_deref()
        .and_then(AppliedTrafficRouting::of);
    let recorded = status.applied_traffic_routing.clone();
    let mut next = current.clone();
    if let Some(old) = recorded
        .as_ref()
        .filter(|old| Some(*old) != current.as_ref())
    {
        let keep = objects_of(current.as_ref(), namespace);
        // One patch per route per pass: the next pass starts from the
        // route as this one left it.
        let planned: BTreeSet<RouteRef> = plan.routes.iter().map(|p| p.target.clone()).collect();
        let mut patches = release_patches(old, namespace, &snap.routes, &keep);
        patches.retain(|p| !planned.contains(&p.target));
        if !patches.is_empty() {
            // Keep the record until the routes are back on stable.
            next = recorded.clone();
            let names: Vec<String> = patches.iter().map(|p| p.target.to_string()).collect();
            plan.events.push(PlannedEvent {
                warning: false,
                reason: "TrafficRoutingReleased",
                message: format!(
                    "returning {} to stable: trafficRouting no longer names it",
                    names.join(", ")
                ),
            });
            plan.routes.extend(patches);
        }
    }
    status.applied_traffic_routing = next.clone();
    if status != observed {
        plan.status = Some(status);
    }
    let wanted = next.is_some();
    let has = has_finalizer(rollout);
    plan.finalizer = (wanted != has).then_some(wanted);
}

pub fn has_finalizer(rollout: &Rollout) -> bool {
    rollout
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRAFFIC_ROUTING_FINALIZER)
}

/// For a Rollout being deleted: the patches that hand every route it named
/// or routed through back to stable. The finalizer can go once this is
/// empty.
pub fn release_on_delete(rollout: &Rollout, live: &LiveRoutes<'_>) -> Vec<RoutePatch> {
    let namespace = rollout.metadata.namespace.as_deref().unwrap_or("default");
    let recorded = rollout
        .status
        .as_ref()
        .and_then(|s| s.applied_traffic_routing.clone());
    let current = rollout
        .spec
        .strategy
        .canary
        .as_deref()
        .and_then(AppliedTrafficRouting::of);
    let mut patches: Vec<RoutePatch> = Vec::new();
    let mut seen = BTreeSet::new();
    let configs = [recorded, current];
    for applied in configs.iter().flatten() {
        for patch in release_patches(applied, namespace, live, &BTreeSet::new()) {
            if seen.insert(patch.target.clone()) {
                patches.push(patch);
            }
        }
    }
    patches
}
