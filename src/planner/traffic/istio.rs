//! Istio VirtualServices (and, for subset-level routing, a DestinationRule).
//! Weights live on the two destinations of each named http, tls or tcp
//! route; header and mirror routes are http routes named after their managed
//! route, kept first in `managedRoutes` order so they take precedence.
//! Istio has no status to wait for, so a change is verified by reading the
//! objects back.

use serde_json::{Value, json};

use super::{
    DesiredTraffic, LiveRoutes, Outcome, RouteKind, RoutePatch, RouteRef, TrafficRouter, add_op,
    names_service, pointer_segment, remove_op, test_op,
};
use crate::api::validate::Problem;
use crate::api::{
    IstioDestinationRule, IstioTrafficRouting, IstioVirtualService, MatchKind,
    POD_TEMPLATE_HASH_LABEL, RouteMatch, SetHeaderRoute, SetMirrorRoute, StringMatch,
};

const FIELD: &str = "spec.strategy.canary.trafficRouting.istio";

pub struct IstioRouter {
    namespace: String,
    virtual_services: Vec<(RouteRef, IstioVirtualService)>,
    destination_rule: Option<(RouteRef, IstioDestinationRule)>,
}

/// One route entry (under spec.http, spec.tls or spec.tcp) and the positions
/// of its canary and stable destinations.
struct WeightedRoute {
    section: &'static str,
    index: usize,
    canary: usize,
    stable: usize,
    managed: bool,
}

impl IstioRouter {
    pub fn new(config: &IstioTrafficRouting, namespace: &str) -> Self {
        let reference = |kind, name: &str| RouteRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        IstioRouter {
            namespace: namespace.to_string(),
            virtual_services: config
                .all_virtual_services()
                .into_iter()
                .map(|vs| (reference(RouteKind::VirtualService, &vs.name), vs.clone()))
                .collect(),
            destination_rule: config
                .destination_rule
                .as_ref()
                .map(|dr| (reference(RouteKind::DestinationRule, &dr.name), dr.clone())),
        }
    }

    fn is_destination(
        &self,
        destination: &Value,
        service: Option<&str>,
        subset: Option<&str>,
    ) -> bool {
        match (&self.destination_rule, subset) {
            (Some(_), Some(subset)) => destination["subset"] == subset,
            _ => service.is_some_and(|s| {
                destination["host"]
                    .as_str()
                    .is_some_and(|h| names_service(h, s, &self.namespace))
            }),
        }
    }

    /// The routes to weight, or what is wrong with the VirtualService.
    fn weighted_routes(
        &self,
        object: &kube::api::DynamicObject,
        config: &IstioVirtualService,
        desired: &DesiredTraffic<'_>,
    ) -> Result<Vec<WeightedRoute>, String> {
        let spec = &object.data["spec"];
        let (canary_subset, stable_subset) = match &self.destination_rule {
            Some((_, rule)) => (
                Some(rule.canary_subset_name.as_str()),
                Some(rule.stable_subset_name.as_str()),
            ),
            None => (None, None),
        };
        let positions = |entry: &Value| -> Option<(usize, usize)> {
            let destinations = entry["route"].as_array()?;
            let find = |service, subset| {
                destinations
                    .iter()
                    .position(|d| self.is_destination(&d["destination"], service, subset))
            };
            Some((
                find(desired.canary_service, canary_subset)?,
                find(desired.stable_service, stable_subset)?,
            ))
        };
        let http = spec["http"].as_array().cloned().unwrap_or_default();
        let managed = |entry: &Value| {
            entry["name"]
                .as_str()
                .is_some_and(|n| desired.managed_names.contains(&n))
        };
        let mut found = Vec::new();
        let wanted_http: Vec<&str> = if config.routes.is_empty()
            && config.tls_routes.is_empty()
            && config.tcp_routes.is_empty()
        {
            let unmanaged: Vec<&Value> = http.iter().filter(|e| !managed(e)).collect();
            match unmanaged.as_slice() {
                [only] => vec![only["name"].as_str().unwrap_or_default()],
                [] => return Err("has no http routes".into()),
                _ => {
                    return Err(format!(
                        "has {} http routes; list the ones to weight in routes",
                        unmanaged.len()
                    ));
                }
            }
        } else {
            config.routes.iter().map(String::as_str).collect()
        };
        for name in wanted_http {
            let Some(index) = http
                .iter()
                .position(|e| e["name"].as_str().unwrap_or_default() == name && !managed(e))
            else {
                return Err(format!("has no http route named {name:?}"));
            };
            let Some((canary, stable)) = positions(&http[index]) else {
                return Err(format!(
                    "http route {name:?} needs destinations for both {}",
                    self.destinations_wanted(desired)
                ));
            };
            found.push(WeightedRoute {
                section: "http",
                index,
                canary,
                stable,
                managed: false,
            });
        }
        for (section, wanted) in [
            (
                "tls",
                config
                    .tls_routes
                    .iter()
                    .map(|r| (r.port, r.sni_hosts.clone()))
                    .collect::<Vec<_>>(),
            ),
            (
                "tcp",
                config
                    .tcp_routes
                    .iter()
                    .map(|r| (r.port, Vec::new()))
                    .collect(),
            ),
        ] {
            let entries = spec[section].as_array().cloned().unwrap_or_default();
            for (port, hosts) in wanted {
                let index = entries.iter().position(|e| {
                    e["match"].as_array().is_some_and(|matches| {
                        matches.iter().any(|m| {
                            let port_ok = port.is_none_or(|p| m["port"].as_i64() == Some(p));
                            let hosts_ok = hosts.iter().all(|h| {
                                m["sniHosts"]
                                    .as_array()
                                    .is_some_and(|s| s.iter().any(|v| v == h))
                            });
                            port_ok && hosts_ok
                        })
                    })
                });
                let Some(index) = index else {
                    return Err(format!(
                        "has no {section} route matching port {} {hosts:?}",
                        port.map(|p| p.to_string()).unwrap_or_else(|| "any".into())
                    ));
                };
                let Some((canary, stable)) = positions(&entries[index]) else {
                    return Err(format!(
                        "{section} route {} needs destinations for both {}",
                        index,
                        self.destinations_wanted(desired)
                    ));
                };
                found.push(WeightedRoute {
                    section,
                    index,
                    canary,
                    stable,
                    managed: false,
                });
            }
        }
        // Managed mirror routes carry the split too; keep their weights current.
        for (index, entry) in http.iter().enumerate() {
            if managed(entry)
                && let Some((canary, stable)) = positions(entry)
            {
                found.push(WeightedRoute {
                    section: "http",
                    index,
                    canary,
                    stable,
                    managed: true,
                });
            }
        }
        Ok(found)
    }

    fn destinations_wanted(&self, desired: &DesiredTraffic<'_>) -> String {
        match &self.destination_rule {
            Some((_, rule)) => format!(
                "subsets {:?} and {:?}",
                rule.canary_subset_name, rule.stable_subset_name
            ),
            None => format!(
                "the canary Service {:?} and the stable Service {:?}",
                desired.canary_service.unwrap_or_default(),
                desired.stable_service.unwrap_or_default()
            ),
        }
    }
}

impl TrafficRouter for IstioRouter {
    fn objects(&self) -> Vec<RouteRef> {
        self.virtual_services
            .iter()
            .map(|(r, _)| r.clone())
            .chain(self.destination_rule.iter().map(|(r, _)| r.clone()))
            .collect()
    }

    fn check(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (index, (reference, config)) in self.virtual_services.iter().enumerate() {
            let field = format!("{FIELD}.virtualServices[{index}]");
            let Some(object) = live.get(reference) else {
                problems.push(Problem {
                    field,
                    message: format!("{reference} not found; create it or fix the name"),
                });
                continue;
            };
            if let Err(message) = self.weighted_routes(object, config, desired) {
                problems.push(Problem {
                    field,
                    message: format!("{reference} {message}"),
                });
            }
        }
        if let Some((reference, rule)) = &self.destination_rule {
            let field = format!("{FIELD}.destinationRule");
            match live.get(reference) {
                None => problems.push(Problem {
                    field,
                    message: format!("{reference} not found; create it or fix the name"),
                }),
                Some(object) => {
                    let subsets = object.data["spec"]["subsets"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for subset in [&rule.canary_subset_name, &rule.stable_subset_name] {
                        if !subsets.iter().any(|s| s["name"] == subset.as_str()) {
                            problems.push(Problem {
                                field: field.clone(),
                                message: format!(
                                    "{reference} has no subset named {subset:?}; add it (Ramp sets its {POD_TEMPLATE_HASH_LABEL} label)"
                                ),
                            });
                        }
                    }
                }
            }
        }
        problems
    }

    fn reconcile(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Outcome {
        let mut outcomes = Vec::new();
        for (reference, config) in &self.virtual_services {
            let Some(object) = live.get(reference) else {
                continue;
            };
            let Ok(weighted) = self.weighted_routes(object, config, desired) else {
                continue;
            };
            outcomes.push(self.reconcile_virtual_service(reference, object, &weighted, desired));
        }
        if let Some((reference, rule)) = &self.destination_rule
            && let Some(object) = live.get(reference)
        {
            let operations = subset_operations(object, rule, desired);
            outcomes.push(Outcome {
                in_effect: operations.is_empty(),
                waiting: (!operations.is_empty()).then(|| format!("updating {reference}")),
                // A DestinationRule carries no weight; it agrees with any.
                live_weight: outcomes.first().and_then(|o| o.live_weight),
                patches: patch(reference, operations),
            });
        }
        super::combine(outcomes)
    }
}

impl IstioRouter {
    fn reconcile_virtual_service(
        &self,
        reference: &RouteRef,
        object: &kube::api::DynamicObject,
        weighted: &[WeightedRoute],
        desired: &DesiredTraffic<'_>,
    ) -> Outcome {
        let spec = &object.data["spec"];
        let mut operations = Vec::new();
        let mut live_weights = Vec::new();
        let stable_weight = desired.max_weight - desired.canary_weight;
        for route in weighted {
            let entry = &spec[route.section][route.index];
            let base = format!("/spec/{}/{}/route", route.section, route.index);
            let canary_live = entry["route"][route.canary]["weight"].as_i64().unwrap_or(0);
            let stable_live = entry["route"][route.stable]["weight"].as_i64().unwrap_or(0);
            if !route.managed {
                live_weights.push(super::agreed_weight(
                    canary_live,
                    stable_live,
                    desired.max_weight,
                ));
            }
            for (position, live_weight, wanted) in [
                (route.canary, canary_live, desired.canary_weight),
                (route.stable, stable_live, stable_weight),
            ] {
                if live_weight != i64::from(wanted) {
                    operations.push(test_op(
                        format!("{base}/{position}/destination"),
                        entry["route"][position]["destination"].clone(),
                    ));
                    operations.push(add_op(format!("{base}/{position}/weight"), json!(wanted)));
                }
            }
        }
        if let Some(first) = weighted.iter().find(|r| r.section == "http" && !r.managed) {
            let base = &spec["http"][first.index];
            let wanted = self.managed_routes(base, first, desired);
            let http = spec["http"].as_array().cloned().unwrap_or_default();
            operations.extend(sync_managed_http(&http, &wanted, desired));
        }
        let live_weight = super::agreed(&live_weights);
        Outcome {
            in_effect: operations.is_empty(),
            waiting: (!operations.is_empty()).then(|| format!("updating {reference}")),
            live_weight,
            patches: patch(reference, operations),
        }
    }

    /// The managed http routes, in `managedRoutes` order.
    fn managed_routes(
        &self,
        base: &Value,
        weighted: &WeightedRoute,
        desired: &DesiredTraffic<'_>,
    ) -> Vec<Value> {
        let canary_destination = base["route"][weighted.canary]["destination"].clone();
        let mut split = base["route"].clone();
        split[weighted.canary]["weight"] = json!(desired.canary_weight);
        split[weighted.stable]["weight"] = json!(desired.max_weight - desired.canary_weight);
        let mut wanted = Vec::new();
        for name in &desired.managed_names {
            if let Some(header) = desired.header_routes.iter().find(|r| r.name == *name) {
                wanted.push(header_route(header, &canary_destination));
            }
            if let Some(mirror) = desired.mirror_routes.iter().find(|r| r.name == *name) {
                wanted.push(mirror_route(mirror, &canary_destination, split.clone()));
            }
        }
        wanted
    }
}

fn patch(reference: &RouteRef, operations: Vec<Value>) -> Vec<RoutePatch> {
    if operations.is_empty() {
        return Vec::new();
    }
    vec![RoutePatch {
        target: reference.clone(),
        operations,
    }]
}

fn istio_string_match(value: &StringMatch) -> Value {
    match value.kind() {
        Some(MatchKind::Exact(v)) => json!({"exact": v}),
        Some(MatchKind::Prefix(v)) => json!({"prefix": v}),
        Some(MatchKind::Regex(v)) => json!({"regex": v}),
        None => json!({}),
    }
}

fn header_route(route: &SetHeaderRoute, canary_destination: &Value) -> Value {
    let headers: serde_json::Map<String, Value> = route
        .matches
        .iter()
        .map(|m| (m.header_name.clone(), istio_string_match(&m.header_value)))
        .collect();
    json!({
        "name": route.name,
        "match": [{"headers": headers}],
        "route": [{"destination": canary_destination, "weight": 100}],
    })
}

fn mirror_route(route: &SetMirrorRoute, canary_destination: &Value, split: Value) -> Value {
    let matches: Vec<Value> = route.matches.iter().map(istio_route_match).collect();
    json!({
        "name": route.name,
        "match": matches,
        "route": split,
        "mirror": canary_destination,
        "mirrorPercentage": {"value": f64::from(route.percentage.unwrap_or(100))},
    })
}

fn istio_route_match(matching: &RouteMatch) -> Value {
    let mut out = json!({});
    if let Some(method) = &matching.method {
        out["method"] = istio_string_match(method);
    }
    if let Some(path) = &matching.path {
        out["uri"] = istio_string_match(path);
    }
    if !matching.headers.is_empty() {
        let headers: serde_json::Map<String, Value> = matching
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), istio_string_match(value)))
            .collect();
        out["headers"] = Value::Object(headers);
    }
    out
}

/// A managed route with its weights blanked: weights are kept current by
/// the weight operations, so they must not make a route look changed.
fn without_weights(route: &Value) -> Value {
    let mut route = route.clone();
    if let Some(destinations) = route["route"].as_array_mut() {
        for destination in destinations {
            if let Some(fields) = destination.as_object_mut()
                && fields.contains_key("weight")
            {
                fields.insert("weight".into(), json!(0));
            }
        }
    }
    // The API server may hand a whole-number percentage back as 35 where
    // Ramp wrote 35.0; both are the same share.
    if let Some(value) = route["mirrorPercentage"]["value"].as_f64() {
        route["mirrorPercentage"]["value"] = json!(value);
    }
    route
}

/// Leaves `wanted` as the first http routes: when the managed routes found
/// are not exactly those, in order, at the top, every managed route is
/// removed (highest index first, guarded by its name) and `wanted` inserted.
fn sync_managed_http(http: &[Value], wanted: &[Value], desired: &DesiredTraffic<'_>) -> Vec<Value> {
    let managed: Vec<(usize, &Value)> = http
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["name"]
                .as_str()
                .is_some_and(|n| desired.managed_names.contains(&n))
        })
        .collect();
    let in_place = managed.len() == wanted.len()
        && managed
            .iter()
            .zip(wanted)
            .enumerate()
            .all(|(position, ((index, live), want))| {
                *index == position && without_weights(live) == without_weights(want)
            });
    if in_place {
        return Vec::new();
    }
    let mut operations = Vec::new();
    for (index, live) in managed.iter().rev() {
        operations.push(test_op(
            format!("/spec/http/{index}/name"),
            live["name"].clone(),
        ));
        operations.push(remove_op(format!("/spec/http/{index}")));
    }
    for (position, route) in wanted.iter().enumerate() {
        operations.push(add_op(format!("/spec/http/{position}"), route.clone()));
    }
    operations
}

/// Points the two subsets' pod-template-hash labels at the canary and
/// stable ReplicaSets.
fn subset_operations(
    object: &kube::api::DynamicObject,
    rule: &IstioDestinationRule,
    desired: &DesiredTraffic<'_>,
) -> Vec<Value> {
    let subsets = object.data["spec"]["subsets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut operations = Vec::new();
    for (name, hash) in [
        (&rule.canary_subset_name, desired.canary_hash),
        (&rule.stable_subset_name, desired.stable_hash),
    ] {
        // No hash: handing the routes back leaves the subsets as they are.
        if hash.is_empty() {
            continue;
        }
        let Some(index) = subsets.iter().position(|s| s["name"] == name.as_str()) else {
            continue;
        };
        let labels = &subsets[index]["labels"];
        if labels[POD_TEMPLATE_HASH_LABEL] == hash {
            continue;
        }
        operations.push(test_op(format!("/spec/subsets/{index}/name"), json!(name)));
        if labels.is_object() {
            operations.push(add_op(
                format!(
                    "/spec/subsets/{index}/labels/{}",
                    pointer_segment(POD_TEMPLATE_HASH_LABEL)
                ),
                json!(hash),
            ));
        } else {
            operations.push(add_op(
                format!("/spec/subsets/{index}/labels"),
                json!({ POD_TEMPLATE_HASH_LABEL: hash }),
            ));
        }
    }
    operations
}
