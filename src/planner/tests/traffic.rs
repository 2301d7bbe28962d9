//! Canaries with a traffic router: weights follow available pods, steps wait
//! for the routes to be verified, aborts take the weight back before any
//! canary pod goes, and nothing Ramp does not own is touched.

use super::*;
use crate::planner::traffic::{RouteKind, RouteRef};

fn route_ref(kind: RouteKind, name: &str) -> RouteRef {
    RouteRef {
        kind,
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn http_route() -> kube::api::DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": ["web.example"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-team", "value": "shop"}]}}],
                    "backendRefs": [
                        {"name": "web-stable", "port": 80},
                        {"name": "web-canary", "port": 80},
                    ],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                    "backendRefs": [{"name": "admin", "port": 80}],
                },
            ],
        },
    }))
    .expect("fixture route is valid")
}

fn gateway_canary(steps: Value, extra: Value) -> World {
    let mut strategy = json!({
        "canaryService": "web-canary",
        "stableService": "web-stable",
        "trafficRouting": {
            "plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "web", "useHeaderRoutes": true}},
            "managedRoutes": [{"name": "beta-testers"}],
        },
        "steps": steps,
    });
    if let (Some(target), Some(source)) = (strategy.as_object_mut(), extra.as_object()) {
        target.extend(source.clone());
    }
    let mut world = World::new(rollout(json!({"canary": strategy}), 10));
    let mut route = http_route();
    accept_route(&mut route);
    world
        .routes
        .insert(route_ref(RouteKind::HttpRoute, "web"), route);
    world
}

fn route(world: &World) -> &Value {
    &world.routes[&route_ref(RouteKind::HttpRoute, "web")].data
}

/// (canary, stable) weights on the route's first rule.
fn route_weights(world: &World) -> (i64, i64) {
    let refs = &route(world)["spec"]["rules"][0]["backendRefs"];
    (
        refs[1]["weight"].as_i64().unwrap_or(1),
        refs[0]["weight"].as_i64().unwrap_or(1),
    )
}

fn weights(world: &World) -> TrafficWeightsView {
    let canary = world.status().canary.unwrap_or_default();
    let weights = canary.weights.unwrap_or_default();
    TrafficWeightsView {
        desired: weights.canary.weight,
        verified: weights.verified,
        verified_weight: canary.verified_weight,
    }
}

#[derive(Debug, PartialEq)]
struct TrafficWeightsView {
    desired: i32,
    verified: Option<bool>,
    verified_weight: Option<i32>,
}

fn view(desired: i32, verified: bool) -> TrafficWeightsView {
    TrafficWeightsView {
        desired,
        verified: Some(verified),
        verified_weight: verified.then_some(desired),
    }
}

fn promote(world: &mut World) {
    world.mark();
    let status = world.rollout.status.as_mut().expect("status");
    status.pause_conditions.clear();
}

#[test]
fn steady_state_puts_all_weight_on_stable_and_touches_only_the_two_weights() {
    let mut world = gateway_canary(json!([{"setWeight": 20}, {"pause": {}}]), json!({}));
    let before = route(&world).clone();
    deployed(&mut world);
    assert_eq!(route_weights(&world), (0, 100));
    assert_eq!(weights(&world), view(0, true));
    // Everything but the two weights is as the owner wrote it.
    let mut after = route(&world).clone();
    for position in 0..2 {
        if let Some(fields) = after["spec"]["rules"][0]["backendRefs"][position].as_object_mut() {
            fields.remove("weight");
        }
    }
    assert_eq!(after["spec"], before["spec"]);
    // Every change is guarded by a test of the backend it changes.
    let first = &world.route_patches[0].operations;
    assert_eq!(first[0]["op"], "test");
    assert_eq!(first[0]["path"], "/spec/rules/0/backendRefs/1/name");
    // Nothing is written again once the route carries the weights.
    world.route_patches.clear();
    world.step();
    assert!(world.route_patches.is_empty());
}

#[test]
fn a_step_waits_until_the_gateway_accepts_the_new_weight() {
    let mut world = gateway_canary(
        json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]),
        json!({}),
    );
    deployed(&mut world);
    world.gateway_accepts = false;
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 2);
    // Without a dynamic stable scale, stable stays at full size.
    assert_eq!(world.replicas_of("web:1"), 10);
    assert_eq!(route_weights(&world), (20, 80));
    assert_eq!(world.status().current_step_index, Some(0));
    assert_eq!(
        weights(&world),
        TrafficWeightsView {
            desired: 20,
            verified: Some(false),
            verified_weight: Some(20)
        }
    );
    assert!(
        world
            .status()
            .message
            .is_some_and(|m| m.contains("Accepted")),
        "{:?}",
        world.status().message
    );

    accept_route(
        world
            .routes
            .get_mut(&route_ref(RouteKind::HttpRoute, "web"))
            .expect("route"),
    );
    world.gateway_accepts = true;
    world.settle();
    assert_eq!(world.status().current_step_index, Some(1));
    assert_eq!(world.phase(), RolloutPhase::Paused);
    assert_eq!(weights(&world), view(20, true));

    promote(&mut world);
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 6);
    assert_eq!(route_weights(&world), (60, 40));
    assert_eq!(world.status().current_step_index, Some(3));

    promote(&mut world);
    world.settle();
    // Promoted: both Services select the new pods and the weight returns
    // to the stable side, which now is the new ReplicaSet.
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    assert_eq!(world.status().stable_rs, Some(world.hash_for("web:2")));
    assert_eq!(route_weights(&world), (0, 100));
    // The old stable pods stay for scaleDownDelaySeconds (30 by default).
    assert_eq!(world.replicas_of("web:1"), 10);
    world.advance(31);
    world.settle();
    assert_eq!(world.replicas_of("web:1"), 0);
}

#[test]
fn weight_moves_only_once_the_canary_has_available_pods() {
    let mut world = gateway_canary(json!([{"setWeight": 50}, {"pause": {}}]), json!({}));
    deployed(&mut world);
    let broken = world.hash_for("web:2");
    world.broken.push(broken);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 5);
    assert_eq!(route_weights(&world), (0, 100));
    assert_eq!(weights(&world), view(0, true));
    assert_eq!(world.status().current_step_index, Some(0));
}

#[test]
fn abort_returns_the_weight_before_any_canary_pod_goes() {
    let mut world = gateway_canary(json!([{"setWeight": 30}, {"pause": {}}]), json!({}));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(route_weights(&world), (30, 70));
    world.gateway_accepts = false;
    world.mark();
    world.rollout.status.as_mut().expect("status").abort = true;
    world.settle();
    assert_eq!(route_weights(&world), (0, 100));
    // Not yet verified: the canary keeps every pod.
    assert_eq!(world.replicas_of("web:2"), 3);
    accept_route(
        world
            .routes
            .get_mut(&route_ref(RouteKind::HttpRoute, "web"))
            .expect("route"),
    );
    world.settle();
    // Verified at 0, but abortScaleDownDelaySeconds (30) has not passed.
    assert_eq!(world.replicas_of("web:2"), 3);
    world.advance(31);
    world.settle();
    assert_eq!(world.replicas_of("web:2"), 0);
    assert_eq!(world.replicas_of("web:1"), 10);
}

#[test]
fn dynamic_stable_scale_shrinks_stable_only_behind_the_weight() {
    let mut world = gateway_canary(
        json!([{"setWeight": 40}, {"pause": {}}]),
        json!({"dynamicStableScale": true}),
    );
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(route_weights(&world), (40, 60));
    assert_eq!(world.replicas_of("web:2"), 4);
    assert_eq!(world.replicas_of("web:1"), 6);
}

#[test]
fn header_route_is_a_rule_of_its_own_and_goes_at_the_end() {
    let steps = json!([
        {"setWeight": 10},
        {"setHeaderRoute": {"name": "beta-testers", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}},
        {"pause": {}},
    ]);
    let mut world = gateway_canary(steps, json!({}));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.status().current_step_index, Some(2));
    let rules = route(&world)["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 3);
    let header = &rules[2];
    assert_eq!(header["name"], "beta-testers");
    assert_eq!(
        header["matches"][0]["headers"],
        json!([{"type": "Exact", "name": "x-beta", "value": "yes"}])
    );
    assert_eq!(
        header["backendRefs"],
        json!([{"name": "web-canary", "port": 80}])
    );
    assert_eq!(
        world
            .status()
            .canary
            .unwrap_or_default()
            .header_routes
            .len(),
        1
    );
    promote(&mut world);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let rules = route(&world)["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 2, "the managed rule is removed at the end");
}

fn paused_with_a_header_route() -> World {
    let steps = json!([
        {"setWeight": 20},
        {"setHeaderRoute": {"name": "beta-testers", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}},
        {"pause": {}},
    ]);
    let mut world = gateway_canary(steps, json!({}));
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(route_weights(&world), (20, 80));
    assert_eq!(rule_names(&world).len(), 3);
    world
}

fn rule_names(world: &World) -> Vec<Value> {
    route(world)["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].clone())
        .collect()
}

fn has_finalizer(world: &World) -> bool {
    crate::planner::traffic::release::has_finalizer(&world.rollout)
}

#[test]
fn removing_traffic_routing_hands_the_route_back_and_then_drops_the_finalizer() {
    let mut world = paused_with_a_header_route();
    assert!(
        has_finalizer(&world),
        "a routed Rollout carries the finalizer"
    );
    assert!(world.status().applied_traffic_routing.is_some());
    if let Some(canary) = world.rollout.spec.strategy.canary.as_mut() {
        canary.traffic_routing = None;
    }
    world.mark();
    // The record survives until the route is back on stable.
    world.step();
    assert!(world.status().applied_traffic_routing.is_some());
    assert!(world.has_event("TrafficRoutingReleased"));
    world.settle();
    assert_eq!(route_weights(&world), (0, 100));
    assert_eq!(
        rule_names(&world),
        vec![Value::Null, Value::Null],
        "the managed rule is gone"
    );
    assert_eq!(world.status().applied_traffic_routing, None);
    assert!(!has_finalizer(&world));
}

#[test]
fn renaming_the_route_hands_the_old_one_back() {
    let mut world = paused_with_a_header_route();
    let mut other = http_route();
    other.metadata.name = Some("web-v2".into());
    accept_route(&mut other);
    world
        .routes
        .insert(route_ref(RouteKind::HttpRoute, "web-v2"), other);
    if let Some(routing) = world
        .rollout
        .spec
        .strategy
        .canary
        .as_mut()
        .and_then(|c| c.traffic_routing.as_mut())
    {
        routing.plugins.insert(
            "argoproj-labs/gatewayAPI".into(),
            json!({"httpRoute": "web-v2", "useHeaderRoutes": true}),
        );
    }
    world.settle();
    assert_eq!(
        route_weights(&world),
        (0, 100),
        "the old route is back on stable"
    );
    assert_eq!(rule_names(&world).len(), 2);
    let new = &world.routes[&route_ref(RouteKind::HttpRoute, "web-v2")].data;
    assert_eq!(new["spec"]["rules"][0]["backendRefs"][1]["weight"], 20);
    assert!(has_finalizer(&world));
}

#[test]
fn a_deleted_rollout_hands_its_routes_back_before_the_finalizer_goes() {
    let mut world = paused_with_a_header_route();
    let release = |world: &World| {
        let live = world.routes.iter().map(|(k, v)| (k.clone(), v)).collect();
        crate::planner::traffic::release::release_on_delete(&world.rollout, &live)
    };
    let patches = release(&world);
    assert_eq!(
        patches.len(),
        1,
        "one patch for the one route: {patches:#?}"
    );
    for patch in &patches {
        world.patch_route(patch);
    }
    assert_eq!(route_weights(&world), (0, 100));
    assert_eq!(rule_names(&world).len(), 2);
    assert!(
        release(&world).is_empty(),
        "nothing left: the finalizer may go"
    );
}

fn with_gateway_class(world: &mut World, features: Option<Value>) {
    let gateway: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop"},
        "spec": {"gatewayClassName": "proxy", "listeners": []},
    }))
    .expect("fixture gateway");
    let mut class = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "proxy"},
        "spec": {"controllerName": "example.com/proxy"},
    });
    if let Some(features) = features {
        class["status"] = json!({"supportedFeatures": features});
    }
    world
        .routes
        .insert(route_ref(RouteKind::Gateway, "edge"), gateway);
    world.routes.insert(
        RouteRef {
            kind: RouteKind::GatewayClass,
            namespace: String::new(),
            name: "proxy".into(),
        },
        serde_json::from_value(class).expect("fixture class"),
    );
}

fn mirror_canary() -> World {
    let steps = json!([
        {"setWeight": 10},
        {"setMirrorRoute": {"name": "beta-testers", "percentage": 50, "match": [{"method": {"exact": "POST"}}]}},
        {"pause": {}},
    ]);
    gateway_canary(steps, json!({}))
}

#[test]
fn a_mirror_step_is_refused_up_front_when_the_gateway_class_cannot_mirror() {
    let mut world = mirror_canary();
    with_gateway_class(
        &mut world,
        Some(json!([{"name": "HTTPRouteHeaderMatching"}, {"name": "Gateway"}])),
    );
    let before = route(&world).clone();
    world.settle();
    let status = world.status();
    let invalid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(invalid.contains("steps[1].setMirrorRoute"), "{invalid}");
    assert!(invalid.contains("GatewayClass proxy"), "{invalid}");
    assert!(invalid.contains("HTTPRouteRequestMirror"), "{invalid}");
    assert_eq!(route(&world), &before, "nothing is written to the route");
}

#[test]
fn a_mirror_step_runs_when_the_class_lists_mirroring_or_lists_nothing() {
    for features in [
        Some(json!([{"name": "HTTPRouteRequestMirror"}])),
        Some(json!(["HTTPRouteRequestMirror"])),
        None,
    ] {
        let mut world = mirror_canary();
        with_gateway_class(&mut world, features.clone());
        deployed(&mut world);
        world.set_image("web:2");
        world.settle();
        assert_eq!(
            world.status().current_step_index,
            Some(2),
            "features {features:?}"
        );
        assert!(
            rule_names(&world).contains(&Value::from("beta-testers")),
            "the mirror rule is in place with features {features:?}"
        );
    }
}

#[test]
fn a_missing_route_or_one_without_both_backends_is_invalid_spec_and_nothing_moves() {
    let mut world = gateway_canary(json!([{"setWeight": 20}]), json!({}));
    world.routes.clear();
    world.settle();
    let message = invalid_spec_message(&world).expect("InvalidSpec");
    assert!(
        message.contains("HTTPRoute shop/web not found"),
        "{message}"
    );
    assert!(world.replica_sets.is_empty());

    let mut route = http_route();
    route.data["spec"]["rules"][0]["backendRefs"] = json!([{"name": "web-stable", "port": 80}]);
    world
        .routes
        .insert(route_ref(RouteKind::HttpRoute, "web"), route);
    world.settle();
    let message = invalid_spec_message(&world).expect("InvalidSpec");
    assert!(
        message.contains("trafficRouting.plugins[\"argoproj-labs/gatewayAPI\"]")
            && message.contains("both the canary Service \"web-canary\""),
        "{message}"
    );
    assert!(world.route_patches.is_empty());
}

#[test]
fn routing_validation_names_the_field_and_the_fix() {
    let cases = [
        (
            json!({"trafficRouting": {"nginx": {"stableIngress": "web"}}}),
            "trafficRouting.nginx: the nginx traffic router is not supported",
        ),
        (
            json!({"trafficRouting": {"plugins": {"acme/router": {}}}}),
            "plugins[\"acme/router\"]: Ramp runs no router plugins",
        ),
        (
            json!({"trafficRouting": {"gatewayAPI": {"httpRoute": "web"}, "maxTrafficWeight": 10}, "steps": [{"setWeight": 20}]}),
            "steps[0].setWeight: 20 is outside 0..=10",
        ),
        (
            json!({"trafficRouting": {"gatewayAPI": {"httpRoute": "web"}}, "steps": [{"setHeaderRoute": {"name": "x", "match": [{"headerName": "h", "headerValue": {"exact": "v"}}]}}]}),
            "steps[0].setHeaderRoute.name: \"x\" is not in trafficRouting.managedRoutes",
        ),
        (
            json!({"trafficRouting": {"gatewayAPI": {"httpRoute": "web"}, "managedRoutes": [{"name": "m"}]}, "steps": [{"setMirrorRoute": {"name": "m", "match": [{"method": {"prefix": "G"}}]}}]}),
            "steps[0].setMirrorRoute.match[0].method: Gateway API matches a method exactly",
        ),
        (
            json!({"scaleDownDelaySeconds": 5}),
            "scaleDownDelaySeconds: only applies with trafficRouting",
        ),
    ];
    for (extra, expected) in cases {
        let mut strategy = json!({"canaryService": "web-canary", "stableService": "web-stable"});
        if let (Some(target), Some(source)) = (strategy.as_object_mut(), extra.as_object()) {
            target.extend(source.clone());
        }
        let spec = rollout(json!({"canary": strategy}), 3).spec;
        let problems: Vec<String> = crate::api::validate::validate_rollout(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "expected {expected:?} in {problems:#?}"
        );
    }
}

fn istio_world(steps: Value) -> World {
    let strategy = json!({"canary": {
        "trafficRouting": {
            "istio": {
                "virtualService": {"name": "web", "routes": ["primary"]},
                "destinationRule": {"name": "web", "canarySubsetName": "canary", "stableSubsetName": "stable"},
            },
            "managedRoutes": [{"name": "beta-testers"}, {"name": "shadow"}],
        },
        "steps": steps,
    }});
    let mut world = World::new(rollout(strategy, 4));
    let virtual_service = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1},
        "spec": {
            "hosts": ["web"],
            "http": [
                {"name": "other", "match": [{"uri": {"prefix": "/legacy"}}], "route": [{"destination": {"host": "legacy"}}]},
                {"name": "primary", "route": [
                    {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
                    {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
                ]},
            ],
        },
    }))
    .expect("fixture VirtualService");
    let destination_rule = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1},
        "spec": {"host": "web", "subsets": [{"name": "stable", "labels": {"app": "web"}}, {"name": "canary"}]},
    }))
    .expect("fixture DestinationRule");
    world
        .routes
        .insert(route_ref(RouteKind::VirtualService, "web"), virtual_service);
    world.routes.insert(
        route_ref(RouteKind::DestinationRule, "web"),
        destination_rule,
    );
    world
}

#[test]
fn istio_subsets_weights_header_and_mirror_routes_leave_other_routes_alone() {
    let steps = json!([
        {"setWeight": 25},
        {"setHeaderRoute": {"name": "beta-testers", "match": [{"headerName": "x-beta", "headerValue": {"prefix": "y"}}]}},
        {"setMirrorRoute": {"name": "shadow", "match": [{"method": {"exact": "GET"}}], "percentage": 35}},
        {"pause": {}},
    ]);
    let mut world = istio_world(steps);
    deployed(&mut world);
    world.set_image("web:2");
    world.settle();
    assert_eq!(world.status().current_step_index, Some(3));
    let vs = &world.routes[&route_ref(RouteKind::VirtualService, "web")].data["spec"];
    let http = vs["http"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = http.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["beta-testers", "shadow", "other", "primary"]);
    assert_eq!(
        http[0]["match"],
        json!([{"headers": {"x-beta": {"prefix": "y"}}}])
    );
    assert_eq!(
        http[0]["route"],
        json!([{"destination": {"host": "web", "subset": "canary"}, "weight": 100}])
    );
    assert_eq!(
        http[1]["mirror"],
        json!({"host": "web", "subset": "canary"})
    );
    assert_eq!(http[1]["mirrorPercentage"], json!({"value": 35.0}));
    assert_eq!(http[1]["route"][1]["weight"], 25);
    assert_eq!(
        http[2],
        json!({"name": "other", "match": [{"uri": {"prefix": "/legacy"}}], "route": [{"destination": {"host": "legacy"}}]})
    );
    assert_eq!(http[3]["route"][0]["weight"], 75);
    assert_eq!(http[3]["route"][1]["weight"], 25);
    let subsets =
        &world.routes[&route_ref(RouteKind::DestinationRule, "web")].data["spec"]["subsets"];
    assert_eq!(subsets[0]["labels"]["app"], "web");
    assert_eq!(
        subsets[0]["labels"][POD_TEMPLATE_HASH_LABEL],
        world.hash_for("web:1")
    );
    assert_eq!(
        subsets[1]["labels"][POD_TEMPLATE_HASH_LABEL],
        world.hash_for("web:2")
    );

    promote(&mut world);
    world.settle();
    assert_eq!(world.phase(), RolloutPhase::Healthy);
    let vs = &world.routes[&route_ref(RouteKind::VirtualService, "web")].data["spec"];
    let names: Vec<&str> = vs["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["other", "primary"]);
    let subsets =
        &world.routes[&route_ref(RouteKind::DestinationRule, "web")].data["spec"]["subsets"];
    assert_eq!(
        subsets[0]["labels"][POD_TEMPLATE_HASH_LABEL],
        world.hash_for("web:2")
    );
}
