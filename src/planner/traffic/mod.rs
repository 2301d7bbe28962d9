//! Traffic routing for canaries: which weight and which header and mirror
//! routes the routers should carry, and whether they carry them yet. Each
//! router (Gateway API, Istio) sits behind [`TrafficRouter`]; it reads the
//! live route objects from the snapshot and answers with precise JSON
//! patches, so only the fields Ramp owns ever change.

mod gateway;
mod istio;
pub mod release;

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::Value;

use crate::api::validate::Problem;
use crate::api::{CanaryStep, CanaryStrategy, SetHeaderRoute, SetMirrorRoute, TrafficRouting};

pub use gateway::GatewayApiRouter;
pub use istio::IstioRouter;

/// A kind of object a router reads and patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    TlsRoute,
    VirtualService,
    DestinationRule,
    /// Read only: a route's parent, for its GatewayClass.
    Gateway,
    /// Read only, cluster-scoped: what the data plane says it supports.
    GatewayClass,
}

impl RouteKind {
    pub const ALL: [RouteKind; 8] = [
        RouteKind::HttpRoute,
        RouteKind::GrpcRoute,
        RouteKind::TcpRoute,
        RouteKind::TlsRoute,
        RouteKind::VirtualService,
        RouteKind::DestinationRule,
        RouteKind::Gateway,
        RouteKind::GatewayClass,
    ];

    /// Gateways and GatewayClasses only inform checks: they live outside
    /// the Rollout's namespace (or any namespace), so they are read
    /// cluster-wide where the controller may, and are never patched.
    pub fn informational(self) -> bool {
        matches!(self, RouteKind::Gateway | RouteKind::GatewayClass)
    }

    pub fn group(self) -> &'static str {
        match self {
            RouteKind::VirtualService | RouteKind::DestinationRule => "networking.istio.io",
            _ => "gateway.networking.k8s.io",
        }
    }

    pub fn version(self) -> &'static str {
        "v1"
    }

    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::HttpRoute => "HTTPRoute",
            RouteKind::GrpcRoute => "GRPCRoute",
            RouteKind::TcpRoute => "TCPRoute",
            RouteKind::TlsRoute => "TLSRoute",
            RouteKind::VirtualService => "VirtualService",
            RouteKind::DestinationRule => "DestinationRule",
            RouteKind::Gateway => "Gateway",
            RouteKind::GatewayClass => "GatewayClass",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::HttpRoute => "httproutes",
            RouteKind::GrpcRoute => "grpcroutes",
            RouteKind::TcpRoute => "tcproutes",
            RouteKind::TlsRoute => "tlsroutes",
            RouteKind::VirtualService => "virtualservices",
            RouteKind::DestinationRule => "destinationrules",
            RouteKind::Gateway => "gateways",
            RouteKind::GatewayClass => "gatewayclasses",
        }
    }

    pub fn of(kind: crate::api::GatewayRouteKind) -> RouteKind {
        match kind {
            crate::api::GatewayRouteKind::Http => RouteKind::HttpRoute,
            crate::api::GatewayRouteKind::Grpc => RouteKind::GrpcRoute,
            crate::api::GatewayRouteKind::Tcp => RouteKind::TcpRoute,
            crate::api::GatewayRouteKind::Tls => RouteKind::TlsRoute,
        }
    }
}

/// One route object a Rollout names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteRef {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.kind(), self.namespace, self.name)
    }
}

/// A JSON Patch (RFC 6902) for one route object. Every change is guarded by
/// `test` operations on what it relies on (the backend's name at that
/// index, a managed rule's name), so a concurrent edit by someone else makes
/// the patch fail instead of landing on the wrong entry.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePatch {
    pub target: RouteRef,
    pub operations: Vec<Value>,
}

/// The live route objects, as the snapshot has them, with the Gateways and
/// GatewayClasses they attach to where the controller can read them.
pub type LiveRoutes<'a> = BTreeMap<RouteRef, &'a DynamicObject>;

/// The Gateways a Gateway API route attaches to (parentRefs of kind
/// Gateway, the default).
pub fn parent_gateways(route: &RouteRef, object: &DynamicObject) -> Vec<RouteRef> {
    if !matches!(
        route.kind,
        RouteKind::HttpRoute | RouteKind::GrpcRoute | RouteKind::TcpRoute | RouteKind::TlsRoute
    ) {
        return Vec::new();
    }
    object.data["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"].as_str().unwrap_or("Gateway") == "Gateway")
        .filter(|p| p["group"].as_str().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP)
        .filter_map(|p| {
            Some(RouteRef {
                kind: RouteKind::Gateway,
                namespace: p["namespace"]
                    .as_str()
                    .unwrap_or(&route.namespace)
                    .to_string(),
                name: p["name"].as_str()?.to_string(),
            })
        })
        .collect()
}

/// The GatewayClass of a Gateway.
pub fn gateway_class(gateway: &DynamicObject) -> Option<RouteRef> {
    Some(RouteRef {
        kind: RouteKind::GatewayClass,
        namespace: String::new(),
        name: gateway.data["spec"]["gatewayClassName"]
            .as_str()?
            .to_string(),
    })
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What the routers should carry.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredTraffic<'a> {
    pub canary_weight: i32,
    pub max_weight: i32,
    pub canary_service: Option<&'a str>,
    pub stable_service: Option<&'a str>,
    /// Pod-template hashes for subset-level routing.
    pub canary_hash: &'a str,
    pub stable_hash: &'a str,
    /// Managed routes in force, in `managedRoutes` order.
    pub header_routes: Vec<&'a SetHeaderRoute>,
    pub mirror_routes: Vec<&'a SetMirrorRoute>,
    /// Names of every managed route, so stale ones can be found and removed.
    pub managed_names: Vec<&'a str>,
    /// The first step with a mirror route, if any: the gateway must be
    /// able to mirror before the rollout starts, not halfway.
    pub mirror_step: Option<usize>,
}

/// What one router found and wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub patches: Vec<RoutePatch>,
    /// The canary weight every weighted entry carries now, if they agree.
    pub live_weight: Option<i32>,
    /// True when the live objects already are what was desired and the
    /// data plane reports them in effect (Gateway API: Accepted and
    /// ResolvedRefs on every parent for the current generation).
    pub in_effect: bool,
    /// Why not in effect, for the Rollout's status message.
    pub waiting: Option<String>,
}

/// One traffic router.
pub trait TrafficRouter {
    /// The objects it reads and may patch.
    fn objects(&self) -> Vec<RouteRef>;
    /// Problems with the live objects that no weight can fix (missing
    /// route, no backends for the two Services, missing subsets). Any
    /// problem stops every router: no weight changes on a half-usable setup.
    fn check(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Vec<Problem>;
    /// Patches from the live objects to `desired`, and whether they are there.
    fn reconcile(&self, live: &LiveRoutes<'_>, desired: &DesiredTraffic<'_>) -> Outcome;
}

/// The routers a canary's `trafficRouting` configures. Validation has
/// already refused a configuration that does not parse.
pub fn routers(
    canary: &CanaryStrategy,
    namespace: &str,
) -> Vec<Box<dyn TrafficRouter + Send + Sync>> {
    let Some(routing) = &canary.traffic_routing else {
        return Vec::new();
    };
    let mut all: Vec<Box<dyn TrafficRouter + Send + Sync>> = Vec::new();
    if let Ok(Some((field, config))) = routing.gateway_api() {
        all.push(Box::new(GatewayApiRouter::new(&field, &config, namespace)));
    }
    if let Some(istio) = &routing.istio {
        all.push(Box::new(IstioRouter::new(istio, namespace)));
    }
    all
}

/// Every route object a Rollout names, or routed through before (see
/// [`release`]), for the controller to read.
pub fn referenced_routes(rollout: &crate::api::Rollout) -> Vec<RouteRef> {
    let namespace = rollout.metadata.namespace.as_deref().unwrap_or("default");
    let mut all: Vec<RouteRef> = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map(|canary| {
            routers(canary, namespace)
                .iter()
                .flat_map(|r| r.objects())
                .collect()
        })
        .unwrap_or_default();
    for recorded in release::recorded_routes(rollout) {
        if !all.contains(&recorded) {
            all.push(recorded);
        }
    }
    all
}

/// The header and mirror routes in force at step `index` (`None`: after
/// the last step or on abort, when none are): the latest step for each
/// managed route name up to the current one, unless it removed the route.
pub fn managed_routes_at<'a>(
    routing: &'a TrafficRouting,
    steps: &'a [CanaryStep],
    index: Option<usize>,
) -> (Vec<&'a SetHeaderRoute>, Vec<&'a SetMirrorRoute>) {
    let Some(index) = index else {
        return (Vec::new(), Vec::new());
    };
    let upto = &steps[..steps.len().min(index + 1)];
    let mut headers = Vec::new();
    let mut mirrors = Vec::new();
    for managed in &routing.managed_routes {
        let name = managed.name.as_str();
        let header = latest(upto, |s| s.set_header_route.as_ref(), |r| r.name == name);
        headers.extend(header.filter(|r| !r.matches.is_empty()));
        let mirror = latest(upto, |s| s.set_mirror_route.as_ref(), |r| r.name == name);
        mirrors.extend(mirror.filter(|r| !r.matches.is_empty()));
    }
    (headers, mirrors)
}

/// The last step's route of one kind that `named` picks.
fn latest<'a, T>(
    steps: &'a [CanaryStep],
    route: impl Fn(&'a CanaryStep) -> Option<&'a T>,
    named: impl Fn(&T) -> bool,
) -> Option<&'a T> {
    steps
        .iter()
        .rev()
        .find_map(|s| route(s).filter(|r| named(r)))
}

/// All routers' outcomes folded into one.
pub fn combine(outcomes: Vec<Outcome>) -> Outcome {
    let mut combined = Outcome {
        in_effect: true,
        ..Outcome::default()
    };
    let mut weights = Vec::new();
    for outcome in outcomes {
        combined.patches.extend(outcome.patches);
        weights.push(outcome.live_weight);
        combined.in_effect &= outcome.in_effect;
        if combined.waiting.is_none() {
            combined.waiting = outcome.waiting;
        }
    }
    combined.live_weight = agreed(&weights);
    combined
}

/// The one weight every entry carries, or None when they differ (or none do).
pub(crate) fn agreed(weights: &[Option<i32>]) -> Option<i32> {
    match weights.first() {
        Some(first) if weights.iter().all(|w| w == first) => *first,
        _ => None,
    }
}

/// The canary weight of one weighted entry, when its two weights add up to
/// the total (a route nobody weighted yet carries the defaults, which do not).
pub(crate) fn agreed_weight(canary: i64, stable: i64, max: i32) -> Option<i32> {
    (canary + stable == i64::from(max))
        .then(|| i32::try_from(canary).ok())
        .flatten()
}

/// JSON Pointer escaping of one path segment (RFC 6901).
pub(crate) fn pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// `test` that the value at `path` is `value`.
pub(crate) fn test_op(path: String, value: Value) -> Value {
    serde_json::json!({"op": "test", "path": path, "value": value})
}

/// `add` (set or replace an object member, insert into an array).
pub(crate) fn add_op(path: String, value: Value) -> Value {
    serde_json::json!({"op": "add", "path": path, "value": value})
}

pub(crate) fn remove_op(path: String) -> Value {
    serde_json::json!({"op": "remove", "path": path})
}

/// Whether a Service reference (a bare name, `name.namespace` or the full
/// cluster-local host) means `service` in `namespace`.
pub(crate) fn names_service(host: &str, service: &str, namespace: &str) -> bool {
    host == service
        || host == format!("{service}.{namespace}")
        || host == format!("{service}.{namespace}.svc")
        || host == format!("{service}.{namespace}.svc.cluster.local")
}

/// A canary's routers with what they need to answer "what if the routes
/// carried this?" against the snapshot's live objects.
pub(crate) struct Routing<'a> {
    pub config: &'a TrafficRouting,
    pub canary: &'a CanaryStrategy,
    pub routers: Vec<Box<dyn TrafficRouter + Send + Sync>>,
    pub live: &'a LiveRoutes<'a>,
}

impl<'a> Routing<'a> {
    pub fn new(
        canary: &'a CanaryStrategy,
        namespace: &str,
        live: &'a LiveRoutes<'a>,
    ) -> Option<Self> {
        let config = canary.traffic_routing.as_ref()?;
        Some(Routing {
            config,
            canary,
            routers: routers(canary, namespace),
            live,
        })
    }

    pub fn max_weight(&self) -> i32 {
        self.config.max_weight()
    }

    pub fn dynamic_stable_scale(&self) -> bool {
        self.canary.dynamic_stable_scale == Some(true)
    }

    /// The state the routers should carry: `weight` to the canary and the
    /// managed routes in force at step `index` (none when `None`).
    pub fn desired(
        &self,
        weight: i32,
        index: Option<usize>,
        canary_hash: &'a str,
        stable_hash: &'a str,
    ) -> DesiredTraffic<'a> {
        let (header_routes, mirror_routes) =
            managed_routes_at(self.config, &self.canary.steps, index);
        DesiredTraffic {
            canary_weight: weight,
            max_weight: self.max_weight(),
            canary_service: self.canary.canary_service.as_deref(),
            stable_service: self.canary.stable_service.as_deref(),
            canary_hash,
            stable_hash,
            header_routes,
            mirror_routes,
            managed_names: self
                .config
                .managed_routes
                .iter()
                .map(|r| r.name.as_str())
                .collect(),
            mirror_step: self.canary.steps.iter().position(|s| {
                s.set_mirror_route
                    .as_ref()
                    .is_some_and(|r| !r.matches.is_empty())
            }),
        }
    }

    pub fn check(&self, desired: &DesiredTraffic<'_>) -> Vec<Problem> {
        self.routers
            .iter()
            .flat_map(|r| r.check(self.live, desired))
            .collect()
    }

    pub fn outcome(&self, desired: &DesiredTraffic<'_>) -> Outcome {
        combine(
            self.routers
                .iter()
                .map(|r| r.reconcile(self.live, desired))
                .collect(),
        )
    }
}
