//! Gateway API routes (HTTPRoute, GRPCRoute, TCPRoute, TLSRoute). Weights
//! live on the backendRefs of every rule that names both the canary and the
//! stable Service; header and mirror routes are extra HTTPRoute rules named
//! after their managed route. A change is verified once each parent gateway
//! reports the route Accepted and ResolvedRefs for its current generation.

use serde_json::{Value, json};

use super::{
    DesiredTraffic, LiveRoutes, Outcome, RouteKind, RoutePatch, RouteRef, TrafficRouter, add_op,
    agreed_weight, remove_op, test_op,
};
use crate::api::validate::Problem;
use crate::api::{
    GatewayApiRouting, HeaderRoutingMatch, MatchKind, RouteMatch, SetHeaderRoute, SetMirrorRoute,
    StringMatch,
};

pub struct GatewayApiRouter {
    namespace: String,
    routes: Vec<NamedRoute>,
}

struct NamedRoute {
    reference: RouteRef,
    field: String,
    header_routes: bool,
}

impl GatewayApiRouter {
    /// `field` is where the configuration sits under `trafficRouting`.
    pub fn new(field: &str, config: &GatewayApiRouting, rollout_namespace: &str) -> Self {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| rollout_namespace.to_string());
        let base = format!("spec.strategy.canary.trafficRouting.{field}");
        let routes = config
            .routes()
            .into_iter()
            .map(|(kind, name, header_routes)| NamedRoute {
                field: format!("{base} ({} {name})", kind.kind()),
                reference: RouteRef {
                    kind: RouteKind::of(kind),
                    namespace: namespace.clone(),
                    name,
                },
                header_routes,
            })
            .collect();
        GatewayApiRouter {
            namespace: rollout_namespace.to_string(),
            routes,
        }
    }
}

impl TrafficRouter for GatewayApiRouter {
    fn objects(&self) -> Vec<RouteRef> {
        self.routes.iter().map(|r| r.reference.clone()).collect()
    }

    fn check(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let (Some(canary), Some(stable)) = (desired.canary_service, desired.stable_service) else {
            return problems;
        };
        for route in &self.routes {
            let problem = |message: String| Problem {
                field: route.field.clone(),
                message,
            };
            let Some(object) = live.get(&route.reference) else {
                problems.push(problem(format!(
                    "{} not found; create it or fix the name",
                    route.reference
                )));
                continue;
            };
            let spec = &object.data["spec"];
            if spec["parentRefs"].as_array().is_none_or(Vec::is_empty) {
                problems.push(problem(format!(
                    "{} has no parentRefs, so no gateway serves it; attach it to a Gateway",
                    route.reference
                )));
            }
            if let Some(step) = desired.mirror_step
                && route.reference.kind == RouteKind::HttpRoute
            {
                problems.extend(mirror_unsupported(live, &route.reference, object, step));
            }
            let rules = rules_of(object);
            let weighted = weighted_rules(&rules, desired, &self.namespace, &route.reference);
            if weighted.is_empty() {
                problems.push(problem(format!(
                    "{} has no rule whose backendRefs name both the canary Service {canary:?} and the stable Service {stable:?}; add both to the rule that should split traffic",
                    route.reference
                )));
            }
        }
        problems
    }

    fn reconcile(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Outcome {
        let mut outcomes = Vec::new();
        for route in &self.routes {
            let Some(object) = live.get(&route.reference) else {
                continue;
            };
            outcomes.push(self.reconcile_route(route, object, desired));
        }
        super::combine(outcomes)
    }
}

impl GatewayApiRouter {
    fn reconcile_route(
        &self,
        route: &NamedRoute,
        object: &kube::api::DynamicObject,
        desired: &DesiredTraffic<'_>,
    ) -> Outcome {
        let rules = rules_of(object);
        let weighted = weighted_rules(&rules, desired, &self.namespace, &route.reference);
        let mut operations = Vec::new();
        let mut live_weights = Vec::new();
        let stable_weight = desired.max_weight - desired.canary_weight;
        for rule in &weighted {
            let base = format!("/spec/rules/{}/backendRefs", rule.index);
            let refs = rules[rule.index]["backendRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let canary_live = weight_of(&refs[rule.canary]);
            let stable_live = weight_of(&refs[rule.stable]);
            if !rule.managed {
                live_weights.push(agreed_weight(canary_live, stable_live, desired.max_weight));
            }
            for (position, live_weight, wanted) in [
                (rule.canary, canary_live, desired.canary_weight),
                (rule.stable, stable_live, stable_weight),
            ] {
                if live_weight != i64::from(wanted) || refs[position].get("weight").is_none() {
                    operations.push(test_op(
                        format!("{base}/{position}/name"),
                        refs[position]["name"].clone(),
                    ));
                    operations.push(add_op(format!("{base}/{position}/weight"), json!(wanted)));
                }
            }
        }
        if route.reference.kind == RouteKind::HttpRoute
            && let Some(first) = weighted.iter().find(|r| !r.managed)
        {
            let wanted = self.managed_rules(route, &rules[first.index], first, desired);
            operations.extend(sync_managed_rules(&rules, &wanted, desired));
        }
        let live_weight = super::agreed(&live_weights);
        let accepted = accepted_by_parents(object);
        let in_effect = operations.is_empty() && accepted.is_ok();
        let waiting = if !operations.is_empty() {
            Some(format!("updating {}", route.reference))
        } else {
            accepted.err()
        };
        let patches = if operations.is_empty() {
            Vec::new()
        } else {
            vec![RoutePatch {
                target: route.reference.clone(),
                operations,
            }]
        };
        Outcome {
            patches,
            live_weight,
            in_effect,
            waiting,
        }
    }

    /// The managed rules this route should carry, built from its first
    /// weighted rule (`base`): header rules send matches to the canary only,
    /// mirror rules keep the split and copy a share to the canary.
    fn managed_rules(
        &self,
        route: &NamedRoute,
        base: &Value,
        weighted: &WeightedRule,
        desired: &DesiredTraffic<'_>,
    ) -> Vec<Value> {
        let refs = base["backendRefs"].as_array().cloned().unwrap_or_default();
        let mut canary_ref = refs[weighted.canary].clone();
        if let Some(fields) = canary_ref.as_object_mut() {
            fields.remove("weight");
        }
        let base_matches: Vec<Value> = match base["matches"].as_array() {
            Some(matches) if !matches.is_empty() => matches.clone(),
            _ => vec![json!({})],
        };
        let mut wanted = Vec::new();
        if route.header_routes {
            for header in &desired.header_routes {
                wanted.push(header_rule(header, &base_matches, &canary_ref));
            }
        }
        for mirror in &desired.mirror_routes {
            let mut weighted_refs = refs.clone();
            weighted_refs[weighted.canary]["weight"] = json!(desired.canary_weight);
            weighted_refs[weighted.stable]["weight"] =
                json!(desired.max_weight - desired.canary_weight);
            wanted.push(mirror_rule(mirror, &canary_ref, weighted_refs));
        }
        wanted
    }
}

struct WeightedRule {
    index: usize,
    canary: usize,
    stable: usize,
    managed: bool,
}

fn rules_of(object: &kube::api::DynamicObject) -> Vec<Value> {
    object.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Rules that name both Services, with the positions of the two backendRefs.
fn weighted_rules(
    rules: &[Value],
    desired: &DesiredTraffic<'_>,
    rollout_namespace: &str,
    route: &RouteRef,
) -> Vec<WeightedRule> {
    let (Some(canary), Some(stable)) = (desired.canary_service, desired.stable_service) else {
        return Vec::new();
    };
    let position = |refs: &[Value], service: &str| {
        refs.iter()
            .position(|r| is_service_ref(r, service, rollout_namespace, &route.namespace))
    };
    rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            let refs = rule["backendRefs"].as_array()?;
            let managed = rule["name"]
                .as_str()
                .is_some_and(|n| desired.managed_names.contains(&n));
            Some(WeightedRule {
                index,
                canary: position(refs, canary)?,
                stable: position(refs, stable)?,
                managed,
            })
        })
        .collect()
}

fn is_service_ref(
    reference: &Value,
    service: &str,
    service_namespace: &str,
    route_namespace: &str,
) -> bool {
    let group_ok = reference["group"].as_str().is_none_or(str::is_empty);
    let kind_ok = reference["kind"].as_str().is_none_or(|k| k == "Service");
    let namespace = reference["namespace"].as_str().unwrap_or(route_namespace);
    group_ok && kind_ok && namespace == service_namespace && reference["name"] == service
}

/// A backendRef's weight; Gateway API defaults it to 1.
fn weight_of(reference: &Value) -> i64 {
    reference["weight"].as_i64().unwrap_or(1)
}

fn header_rule(route: &SetHeaderRoute, base_matches: &[Value], canary_ref: &Value) -> Value {
    let ours: Vec<Value> = route.matches.iter().map(header_match).collect();
    let matches: Vec<Value> = base_matches
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let mut headers = m["headers"].as_array().cloned().unwrap_or_default();
            headers.extend(ours.iter().cloned());
            m["headers"] = Value::Array(headers);
            m
        })
        .collect();
    json!({"name": route.name, "matches": matches, "backendRefs": [canary_ref]})
}

fn header_match(matching: &HeaderRoutingMatch) -> Value {
    let (kind, value) = string_match(&matching.header_value);
    json!({"type": kind, "name": matching.header_name, "value": value})
}

/// Gateway API has Exact and RegularExpression for headers; a prefix becomes
/// an anchored expression.
fn string_match(value: &StringMatch) -> (&'static str, String) {
    match value.kind() {
        Some(MatchKind::Exact(v)) => ("Exact", v.to_string()),
        Some(MatchKind::Prefix(v)) => ("RegularExpression", format!("^{}.*", regex::escape(v))),
        Some(MatchKind::Regex(v)) => ("RegularExpression", v.to_string()),
        None => ("Exact", String::new()),
    }
}

fn mirror_rule(route: &SetMirrorRoute, canary_ref: &Value, backend_refs: Vec<Value>) -> Value {
    let mut matches: Vec<Value> = route.matches.iter().map(route_match).collect();
    if matches.is_empty() {
        matches.push(json!({}));
    }
    let mut mirror_target = json!({"name": canary_ref["name"]});
    if let Some(port) = canary_ref.get("port") {
        mirror_target["port"] = port.clone();
    }
    if let Some(namespace) = canary_ref.get("namespace") {
        mirror_target["namespace"] = namespace.clone();
    }
    json!({
        "name": route.name,
        "matches": matches,
        "filters": [{
            "type": "RequestMirror",
            "requestMirror": {"backendRef": mirror_target, "percent": route.percentage.unwrap_or(100)},
        }],
        "backendRefs": backend_refs,
    })
}

fn route_match(matching: &RouteMatch) -> Value {
    let mut out = json!({});
    if let Some(path) = &matching.path {
        let (kind, value) = match path.kind() {
            Some(MatchKind::Exact(v)) => ("Exact", v.to_string()),
            Some(MatchKind::Prefix(v)) => ("PathPrefix", v.to_string()),
            Some(MatchKind::Regex(v)) => ("RegularExpression", v.to_string()),
            None => ("PathPrefix", "/".to_string()),
        };
        out["path"] = json!({"type": kind, "value": value});
    }
    if let Some(MatchKind::Exact(method)) = matching.method.as_ref().and_then(StringMatch::kind) {
        out["method"] = json!(method);
    }
    if !matching.headers.is_empty() {
        let headers: Vec<Value> = matching
            .headers
            .iter()
            .map(|(name, value)| {
                let (kind, value) = string_match(value);
                json!({"type": kind, "name": name, "value": value})
            })
            .collect();
        out["headers"] = Value::Array(headers);
    }
    out
}

/// Operations that leave exactly `wanted` among the rules named after
/// managed routes: stale or changed ones are removed (highest index first,
/// each guarded by a test of its name), missing ones appended.
fn sync_managed_rules(
    rules: &[Value],
    wanted: &[Value],
    desired: &DesiredTraffic<'_>,
) -> Vec<Value> {
    let mut operations = Vec::new();
    let mut kept = Vec::new();
    let mut removals = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let Some(name) = rule["name"].as_str() else {
            continue;
        };
        if !desired.managed_names.contains(&name) {
            continue;
        }
        let matching = wanted
            .iter()
            .find(|w| w["name"] == name && signature(w) == signature(rule));
        match matching {
            Some(_) if !kept.contains(&name) => kept.push(name),
            _ => removals.push((index, name)),
        }
    }
    for (index, name) in removals.into_iter().rev() {
        operations.push(test_op(format!("/spec/rules/{index}/name"), json!(name)));
        operations.push(remove_op(format!("/spec/rules/{index}")));
    }
    for rule in wanted {
        let name = rule["name"].as_str().unwrap_or_default();
        if !kept.contains(&name) {
            operations.push(add_op("/spec/rules/-".into(), rule.clone()));
        }
    }
    operations
}

/// What makes two managed rules the same, with the API server's defaults
/// filled in (a match without a path is PathPrefix "/", a header match is
/// Exact) and weights left out: weights are kept current separately.
fn signature(rule: &Value) -> Value {
    let matches: Vec<Value> = rule["matches"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![json!({})])
        .iter()
        .map(|m| {
            let path = if m["path"].is_null() {
                json!({"type": "PathPrefix", "value": "/"})
            } else {
                json!({
                    "type": m["path"]["type"].as_str().unwrap_or("PathPrefix"),
                    "value": m["path"]["value"].as_str().unwrap_or("/"),
                })
            };
            let mut headers: Vec<Value> = m["headers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|h| json!([h["type"].as_str().unwrap_or("Exact"), h["name"], h["value"]]))
                .collect();
            headers.sort_by_key(|h| h.to_string());
            json!({"path": path, "headers": headers, "method": m["method"]})
        })
        .collect();
    let filters: Vec<Value> = rule["filters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            json!([
                f["type"],
                f["requestMirror"]["backendRef"]["name"],
                f["requestMirror"]["percent"]
            ])
        })
        .collect();
    let mut backends: Vec<String> = rule["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    backends.sort();
    json!({"matches": matches, "filters": filters, "backends": backends})
}

/// The Gateway API feature name a GatewayClass lists in
/// `status.supportedFeatures` when its data plane mirrors requests.
const MIRROR_FEATURE: &str = "HTTPRouteRequestMirror";

/// A problem for each parent Gateway whose class publishes its supported
/// features without request mirroring. Such a data plane may accept the
/// route and still fail the mirrored requests (Traefik 3.6 answers them
/// with 500s while reporting the route Accepted), so Ramp refuses before
/// the rollout starts. A class that publishes nothing, or one the
/// controller cannot read, is not second-guessed.
fn mirror_unsupported(
    live: &LiveRoutes<'_>,
    reference: &RouteRef,
    object: &kube::api::DynamicObject,
    step: usize,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for gateway_ref in super::parent_gateways(reference, object) {
        let Some(gateway) = live.get(&gateway_ref) else {
            continue;
        };
        let Some(class_ref) = super::gateway_class(gateway) else {
            continue;
        };
        let Some(class) = live.get(&class_ref) else {
            continue;
        };
        let Some(features) = class.data["status"]["supportedFeatures"].as_array() else {
            continue;
        };
        // Gateway API v1.2 made the entries objects ({name}); before, strings.
        let supported = features
            .iter()
            .any(|f| f.as_str().or_else(|| f["name"].as_str()) == Some(MIRROR_FEATURE));
        if features.is_empty() || supported {
            continue;
        }
        problems.push(Problem {
            field: format!("spec.strategy.canary.steps[{step}].setMirrorRoute"),
            message: format!(
                "GatewayClass {} (of Gateway {}/{}, a parent of {reference}) does not list {MIRROR_FEATURE} in status.supportedFeatures, so its data plane cannot be trusted to mirror; remove the setMirrorRoute steps or route through a gateway that supports request mirroring",
                class_ref.name, gateway_ref.namespace, gateway_ref.name
            ),
        });
    }
    problems
}

/// Ok when every parentRef has a status entry whose Accepted and
/// ResolvedRefs conditions are True for the route's current generation.
fn accepted_by_parents(object: &kube::api::DynamicObject) -> Result<(), String> {
    let generation = object.metadata.generation.unwrap_or(0);
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let parents = object.data["spec"]["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses = object.data["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for parent in &parents {
        let same_parent = |status: &&Value| {
            let reference = &status["parentRef"];
            reference["name"] == parent["name"]
                && reference["namespace"].as_str().unwrap_or(&namespace)
                    == parent["namespace"].as_str().unwrap_or(&namespace)
                && reference["sectionName"] == parent["sectionName"]
        };
        let parent_name = parent["name"].as_str().unwrap_or_default();
        let Some(status) = statuses.iter().find(same_parent) else {
            return Err(format!(
                "waiting for gateway {parent_name} to report on route {namespace}/{name}"
            ));
        };
        for condition in ["Accepted", "ResolvedRefs"] {
            let found = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == condition));
            let current = found.is_some_and(|c| {
                c["status"] == "True" && c["observedGeneration"].as_i64().unwrap_or(0) >= generation
            });
            if !current {
                let detail = found
                    .and_then(|c| c["message"].as_str())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(format!(
                    "waiting for gateway {parent_name} to report {condition} on route {namespace}/{name} generation {generation}{detail}"
                ));
            }
        }
    }
    Ok(())
}
