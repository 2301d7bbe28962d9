//! `spec.strategy.canary.trafficRouting` and the steps that drive it
//! (`setHeaderRoute`, `setMirrorRoute`). Field names follow Argo Rollouts,
//! including the `argoproj-labs/gatewayAPI` plugin's configuration, which
//! Ramp serves natively.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Name under `trafficRouting.plugins` of Argo's Gateway API plugin.
pub const GATEWAY_API_PLUGIN: &str = "argoproj-labs/gatewayAPI";
pub const DEFAULT_MAX_TRAFFIC_WEIGHT: i32 = 100;
/// With a router, the old stable ReplicaSet stays up this long after the
/// switch so in-flight requests and slow-to-update proxies drain.
pub const DEFAULT_CANARY_SCALE_DOWN_DELAY_SECONDS: i32 = 30;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TrafficRouting {
    /// Total of the route weights. Defaults to 100; setWeight values are out of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_traffic_weight: Option<i32>,
    /// Routes Ramp may insert for setHeaderRoute and setMirrorRoute, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_routes: Vec<ManagedRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioTrafficRouting>,
    /// Gateway API HTTPRoutes (Ramp's name for the plugin configuration below).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "gatewayAPI"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
    /// Argo's router plugins; Ramp serves `argoproj-labs/gatewayAPI` itself
    /// and refuses the others by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// Routers Argo has and Ramp does not (nginx, alb, smi, ...): kept so
    /// validation can name them instead of the API server dropping them.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRoute {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<IstioVirtualService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<IstioVirtualService>,
    /// Subset-level routing: the two subsets' `rollouts-pod-template-hash`
    /// labels follow the canary and stable ReplicaSets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<IstioDestinationRule>,
}

impl IstioTrafficRouting {
    /// `virtualService` and `virtualServices`, as one list.
    pub fn all_virtual_services(&self) -> Vec<&IstioVirtualService> {
        self.virtual_service
            .iter()
            .chain(self.virtual_services.iter())
            .collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioVirtualService {
    pub name: String,
    /// Names of the `http` routes to weight; may be omitted when there is only one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<IstioTlsRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<IstioTcpRoute>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTlsRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTcpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioDestinationRule {
    pub name: String,
    pub canary_subset_name: String,
    pub stable_subset_name: String,
}

/// The configuration of Argo's Gateway API plugin, field for field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayApiRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<GatewayRouteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_route: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_routes: Vec<GatewayRouteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_route: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<GatewayRouteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_route: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<GatewayRouteRef>,
    /// Namespace of the routes; defaults to the Rollout's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Applies to `httpRoute`: header routes are added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_header_routes: Option<bool>,
    /// The plugin keeps its header-route state in this ConfigMap; Ramp
    /// derives that state from the steps, so the field is accepted and unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRouteRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_header_routes: Option<bool>,
}

/// The kinds of Gateway API route Ramp can weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GatewayRouteKind {
    Http,
    Grpc,
    Tcp,
    Tls,
}

impl GatewayRouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            GatewayRouteKind::Http => "HTTPRoute",
            GatewayRouteKind::Grpc => "GRPCRoute",
            GatewayRouteKind::Tcp => "TCPRoute",
            GatewayRouteKind::Tls => "TLSRoute",
        }
    }
}

impl GatewayApiRouting {
    /// Every route named, with its kind and whether header routes go into it.
    pub fn routes(&self) -> Vec<(GatewayRouteKind, String, bool)> {
        let mut all = Vec::new();
        let mut add = |kind, single: &Option<String>, many: &[GatewayRouteRef], header| {
            if let Some(name) = single {
                all.push((kind, name.clone(), header));
            }
            for route in many {
                all.push((
                    kind,
                    route.name.clone(),
                    route.use_header_routes == Some(true),
                ));
            }
        };
        let header = self.use_header_routes == Some(true);
        add(
            GatewayRouteKind::Http,
            &self.http_route,
            &self.http_routes,
            header,
        );
        add(
            GatewayRouteKind::Grpc,
            &self.grpc_route,
            &self.grpc_routes,
            false,
        );
        add(
            GatewayRouteKind::Tcp,
            &self.tcp_route,
            &self.tcp_routes,
            false,
        );
        add(
            GatewayRouteKind::Tls,
            &self.tls_route,
            &self.tls_routes,
            false,
        );
        all
    }
}

/// A header route: requests matching every header go to the canary only.
/// Without `match` the route is removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    pub name: String,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HeaderRoutingMatch>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoutingMatch {
    pub header_name: String,
    pub header_value: StringMatch,
}

/// A mirror route: `percentage` of the matching requests are copied to the
/// canary (responses discarded) while stable answers. Without `match` the
/// route is removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetMirrorRoute {
    pub name: String,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Share of matching requests mirrored, 0 to 100. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Exactly one of the three is meant to be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// How a [`StringMatch`] matches, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl StringMatch {
    /// The one way this matches, or None when zero or several are set.
    pub fn kind(&self) -> Option<MatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(v), None, None) => Some(MatchKind::Exact(v)),
            (None, Some(v), None) => Some(MatchKind::Prefix(v)),
            (None, None, Some(v)) => Some(MatchKind::Regex(v)),
            _ => None,
        }
    }
}

/// Finalizer on a Rollout that routes traffic: Ramp hands its routes back
/// (all weight on stable, managed rules gone) before the Rollout goes.
pub const TRAFFIC_ROUTING_FINALIZER: &str = "rollout.ramp.dev/traffic-routing";

/// The traffic routing a canary last routed through, kept in status so the
/// routes can be handed back after `trafficRouting` is removed or renames
/// its routes, and when the Rollout is deleted: the spec alone no longer
/// says which routes those were.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedTrafficRouting {
    pub traffic_routing: TrafficRouting,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_service: Option<String>,
}

impl AppliedTrafficRouting {
    pub fn of(canary: &crate::api::CanaryStrategy) -> Option<Self> {
        Some(AppliedTrafficRouting {
            traffic_routing: canary.traffic_routing.clone()?,
            canary_service: canary.canary_service.clone(),
            stable_service: canary.stable_service.clone(),
        })
    }

    /// A canary strategy with only this routing, for building its routers.
    pub fn as_strategy(&self) -> crate::api::CanaryStrategy {
        crate::api::CanaryStrategy {
            traffic_routing: Some(self.traffic_routing.clone()),
            canary_service: self.canary_service.clone(),
            stable_service: self.stable_service.clone(),
            ..Default::default()
        }
    }
}

impl TrafficRouting {
    pub fn max_weight(&self) -> i32 {
        self.max_traffic_weight
            .unwrap_or(DEFAULT_MAX_TRAFFIC_WEIGHT)
            .max(1)
    }

    /// The Gateway API configuration, from `gatewayAPI` or from the
    /// `argoproj-labs/gatewayAPI` plugin entry, with the field path it came
    /// from. An entry that does not parse is an error naming what is wrong.
    pub fn gateway_api(&self) -> Result<Option<(String, GatewayApiRouting)>, String> {
        if let Some(config) = &self.gateway_api {
            return Ok(Some(("gatewayAPI".into(), config.clone())));
        }
        let Some(raw) = self.plugins.get(GATEWAY_API_PLUGIN) else {
            return Ok(None);
        };
        let field = format!("plugins[{GATEWAY_API_PLUGIN:?}]");
        serde_path_to_error::deserialize::<_, GatewayApiRouting>(raw)
            .map(|config| Some((field, config)))
            .map_err(|error| {
                let path = error.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(" at {path}")
                };
                format!("{}{at}", error.into_inner())
            })
    }
}
