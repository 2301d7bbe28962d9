//! Rollout spec validation shared by the controller (InvalidSpec condition)
//! and `kubectl ramp lint`. Every problem names the field and says what to do.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::duration::{parse_int_or_duration, resolve_int_or_percent};
use super::traffic::{
    DEFAULT_MAX_TRAFFIC_WEIGHT, GATEWAY_API_PLUGIN, GatewayRouteKind, StringMatch, TrafficRouting,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::{
    CanaryStep, CanaryStrategy, RolloutAnalysis, RolloutSpec, WorkloadKind, WorkloadRef,
    WorkloadScaleDown,
};

const STEP_KINDS: &str =
    "setWeight, pause, setCanaryScale, analysis, setHeaderRoute and setMirrorRoute";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Argo fields in the spec that Ramp accepts into its schema but does not
/// implement yet, by path.
fn not_supported_yet(spec: &RolloutSpec) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(canary) = &spec.strategy.canary {
        let set = [
            ("antiAffinity", canary.anti_affinity.is_some()),
            (
                "scaleDownDelayRevisionLimit",
                canary.scale_down_delay_revision_limit.is_some(),
            ),
            ("pingPong", canary.ping_pong.is_some()),
            (
                "minPodsPerReplicaSet",
                canary.min_pods_per_replica_set.is_some(),
            ),
            (
                "replicaProgressThreshold",
                canary.replica_progress_threshold.is_some(),
            ),
        ];
        found.extend(
            set.iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| format!("spec.strategy.canary.{name}")),
        );
    }
    if let Some(blue_green) = &spec.strategy.blue_green {
        let set = [
            ("antiAffinity", blue_green.anti_affinity.is_some()),
            ("maxUnavailable", blue_green.max_unavailable.is_some()),
        ];
        found.extend(
            set.iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| format!("spec.strategy.blueGreen.{name}")),
        );
    }
    found
}

fn validate_workload_ref(reference: &WorkloadRef, spec: &RolloutSpec, problems: &mut Problems) {
    let kind = reference.workload_kind();
    if kind.is_none() {
        problems.add(
            "spec.workloadRef",
            format!(
                "{} {:?} cannot be referenced; use a Deployment or ReplicaSet (apiVersion apps/v1) or a PodTemplate (apiVersion v1)",
                reference.api_version, reference.kind
            ),
        );
    }
    if reference.name.is_empty() {
        problems.add(
            "spec.workloadRef.name",
            "name the workload to take the pod template from",
        );
    }
    match reference.scale_down_mode() {
        Err(message) => problems.add("spec.workloadRef.scaleDown", message),
        Ok(mode) => {
            if mode != WorkloadScaleDown::Never
                && kind.is_some_and(|k| k != WorkloadKind::Deployment)
            {
                problems.add(
                    "spec.workloadRef.scaleDown",
                    "only a referenced Deployment has pods of its own to scale down; remove scaleDown",
                );
            }
        }
    }
    if !template_is_empty(&spec.template) {
        problems.add(
            "spec.template",
            "template must be empty for workload reference rollout: the pod template comes from spec.workloadRef, so remove spec.template",
        );
    }
}

/// Whether a Rollout's own template is unset, as `workloadRef` requires.
pub fn template_is_empty(template: &PodTemplateSpec) -> bool {
    let metadata_empty = template.metadata.as_ref().is_none_or(|m| {
        m.labels.as_ref().is_none_or(|l| l.is_empty())
            && m.annotations.as_ref().is_none_or(|a| a.is_empty())
    });
    let spec_empty = template.spec.as_ref().is_none_or(|s| {
        s.containers.is_empty() && s.init_containers.as_ref().is_none_or(|c| c.is_empty())
    });
    metadata_empty && spec_empty
}

/// All problems with a Rollout spec; empty means valid.
pub fn validate_rollout(spec: &RolloutSpec) -> Vec<Problem> {
    let mut problems = Problems::default();
    if spec.replicas.is_some_and(|r| r < 0) {
        problems.add("spec.replicas", "must not be negative");
    }
    for path in not_supported_yet(spec) {
        let message = format!(
            "not supported yet: {path}; remove it to run this Rollout under Ramp (see the README's feature list)"
        );
        problems.add(path, message);
    }
    if let Some(reference) = &spec.workload_ref {
        validate_workload_ref(reference, spec, &mut problems);
        // The template and selector are judged once read from the workload
        // (the planner validates the Rollout with them filled in).
        return problems.0;
    }
    validate_selector(&spec.selector, spec, &mut problems);
    let has_containers = spec
        .template
        .spec
        .as_ref()
        .is_some_and(|pod| !pod.containers.is_empty());
    if !has_containers {
        problems.add(
            "spec.template.spec.containers",
            "the pod template needs at least one container",
        );
    }
    if spec.min_ready_seconds.is_some_and(|s| s < 0) {
        problems.add("spec.minReadySeconds", "must not be negative");
    }
    if spec.revision_history_limit.is_some_and(|l| l < 0) {
        problems.add("spec.revisionHistoryLimit", "must not be negative");
    }
    if spec
        .rollback_window
        .as_ref()
        .and_then(|w| w.revisions)
        .is_some_and(|r| r < 0)
    {
        problems.add("spec.rollbackWindow.revisions", "must not be negative");
    }
    if let Some(deadline) = spec.progress_deadline_seconds {
        if deadline <= 0 {
            problems.add("spec.progressDeadlineSeconds", "must be greater than 0");
        } else if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            problems.add(
                "spec.progressDeadlineSeconds",
                "must be greater than spec.minReadySeconds",
            );
        }
    }
    if let Some(analysis) = &spec.analysis {
        for (field, value) in [
            (
                "successfulRunHistoryLimit",
                analysis.successful_run_history_limit,
            ),
            (
                "unsuccessfulRunHistoryLimit",
                analysis.unsuccessful_run_history_limit,
            ),
        ] {
            if value.is_some_and(|v| v < 0) {
                problems.add(format!("spec.analysis.{field}"), "must not be negative");
            }
        }
    }
    validate_webhooks(&spec.webhooks, &mut problems);
    match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(_), Some(_)) => problems.add(
            "spec.strategy",
            "both canary and blueGreen are set; keep exactly one strategy",
        ),
        (None, None) => problems.add("spec.strategy", "set either canary or blueGreen"),
        (Some(_), None) => validate_canary(spec, &mut problems),
        (None, Some(_)) => validate_blue_green(spec, &mut problems),
    }
    problems.0
}

/// Webhooks: unique names, an http(s) URL, and timing within bounds that
/// keep a hook from holding a delivery slot (or a gate) for long.
fn validate_webhooks(hooks: &[crate::api::RolloutWebhook], problems: &mut Problems) {
    let mut seen = std::collections::BTreeSet::new();
    for (index, hook) in hooks.iter().enumerate() {
        let field = |name: &str| format!("spec.webhooks[{index}].{name}");
        if hook.name.trim().is_empty() {
            problems.add(field("name"), "give the webhook a name");
        } else if !seen.insert(hook.name.as_str()) {
            problems.add(
                field("name"),
                format!(
                    "{:?} is used by an earlier webhook; names must be unique",
                    hook.name
                ),
            );
        }
        match reqwest::Url::parse(&hook.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => problems.add(
                field("url"),
                format!(
                    "{:?} must be an http:// or https:// address with a host",
                    hook.url
                ),
            ),
            Err(error) => problems.add(
                field("url"),
                format!(
                    "{:?} is not a URL ({error}); write e.g. http://approvals.ops:8080/confirm",
                    hook.url
                ),
            ),
        }
        if hook
            .timeout_seconds
            .is_some_and(|t| !(1..=300).contains(&t))
        {
            problems.add(field("timeoutSeconds"), "must be between 1 and 300");
        }
        if hook.retries.is_some_and(|r| !(0..=10).contains(&r)) {
            problems.add(field("retries"), "must be between 0 and 10");
        }
        if hook
            .interval_seconds
            .is_some_and(|i| !(1..=3600).contains(&i))
        {
            problems.add(field("intervalSeconds"), "must be between 1 and 3600");
        }
    }
}

fn validate_selector(selector: &LabelSelector, spec: &RolloutSpec, problems: &mut Problems) {
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let expressions = selector
        .match_expressions
        .as_ref()
        .filter(|e| !e.is_empty());
    if match_labels.is_none() && expressions.is_none() {
        problems.add(
            "spec.selector",
            "an empty selector would select every pod; set matchLabels that match spec.template.metadata.labels",
        );
        return;
    }
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (key, value) in match_labels.into_iter().flatten() {
        match template_labels.get(key) {
            Some(actual) if actual == value => {}
            Some(actual) => problems.add(
                format!("spec.selector.matchLabels.{key}"),
                format!(
                    "selects {key}={value} but spec.template.metadata.labels has {key}={actual}; make them equal"
                ),
            ),
            None => problems.add(
                format!("spec.selector.matchLabels.{key}"),
                format!("selects {key}={value} but spec.template.metadata.labels has no {key}; add it to the template"),
            ),
        }
    }
    for (index, expression) in expressions.into_iter().flatten().enumerate() {
        let field = format!("spec.selector.matchExpressions[{index}]");
        let actual = template_labels.get(&expression.key);
        let values = expression.values.clone().unwrap_or_default();
        let matches = match expression.operator.as_str() {
            "In" => actual.is_some_and(|a| values.contains(a)),
            "NotIn" => actual.is_none_or(|a| !values.contains(a)),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            other => {
                problems.add(
                    &field,
                    format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                );
                continue;
            }
        };
        if !matches {
            problems.add(&field, "does not match spec.template.metadata.labels; the rollout's pods would not be selected");
        }
    }
    if template_labels.contains_key(super::POD_TEMPLATE_HASH_LABEL) {
        problems.add(
            format!(
                "spec.template.metadata.labels.{}",
                super::POD_TEMPLATE_HASH_LABEL
            ),
            "is set by the controller; remove it from the template",
        );
    }
}

/// Role labels must not fight the labels that select the pods.
fn validate_role_metadata(
    field: &str,
    metadata: Option<&super::PodMetadata>,
    spec: &RolloutSpec,
    problems: &mut Problems,
) {
    let Some(metadata) = metadata else { return };
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for key in metadata.labels.keys() {
        if key == super::POD_TEMPLATE_HASH_LABEL || template_labels.contains_key(key) {
            problems.add(
                format!("{field}.labels.{key}"),
                "is also a pod template (or hash) label; role labels must use their own keys",
            );
        }
    }
}

fn validate_canary(spec: &RolloutSpec, problems: &mut Problems) {
    let Some(canary) = &spec.strategy.canary else {
        return;
    };
    let base = "spec.strategy.canary";
    validate_role_metadata(
        &format!("{base}.canaryMetadata"),
        canary.canary_metadata.as_ref(),
        spec,
        problems,
    );
    validate_role_metadata(
        &format!("{base}.stableMetadata"),
        canary.stable_metadata.as_ref(),
        spec,
        problems,
    );
    if let (Some(c), Some(s)) = (&canary.canary_service, &canary.stable_service)
        && c == s
    {
        problems.add(
            format!("{base}.canaryService"),
            format!("canaryService and stableService are both {c:?}; use two different Services"),
        );
    }
    for (field, service) in [
        ("canaryService", &canary.canary_service),
        ("stableService", &canary.stable_service),
    ] {
        if service.as_deref().is_some_and(|s| s.trim().is_empty()) {
            problems.add(
                format!("{base}.{field}"),
                "is empty; name a Service or remove the field",
            );
        }
    }
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let surge = canary
        .max_surge
        .as_ref()
        .map(|v| (v, resolve_int_or_percent(v, replicas, true)));
    let unavailable = canary
        .max_unavailable
        .as_ref()
        .map(|v| (v, resolve_int_or_percent(v, replicas, false)));
    for (field, parsed) in [("maxSurge", &surge), ("maxUnavailable", &unavailable)] {
        if let Some((_, Err(message))) = parsed {
            problems.add(format!("{base}.{field}"), message.clone());
        }
    }
    let is_zero = |v: &Option<(_, Result<i32, String>)>| matches!(v, Some((_, Ok(0))));
    if is_zero(&surge) && is_zero(&unavailable) {
        problems.add(
            format!("{base}.maxUnavailable"),
            "maxSurge and maxUnavailable are both 0, so no pod could ever be replaced; raise one of them",
        );
    }
    validate_traffic_routing(base, canary, problems);
    let routing = canary.traffic_routing.as_ref();
    for (index, step) in canary.steps.iter().enumerate() {
        validate_step(
            &format!("{base}.steps[{index}]"),
            step,
            replicas,
            routing,
            problems,
        );
    }
    if let Some(background) = &canary.analysis {
        validate_analysis_ref(&format!("{base}.analysis"), &background.analysis, problems);
        if let Some(start) = background.starting_step
            && (start < 0 || start as usize > canary.steps.len())
        {
            problems.add(
                format!("{base}.analysis.startingStep"),
                format!(
                    "{start} is outside the {} steps; use 0..={}",
                    canary.steps.len(),
                    canary.steps.len()
                ),
            );
        }
    }
}

fn validate_step(
    field: &str,
    step: &CanaryStep,
    replicas: i32,
    routing: Option<&TrafficRouting>,
    problems: &mut Problems,
) {
    let mut kinds = Vec::new();
    if step.set_weight.is_some() {
        kinds.push("setWeight");
    }
    if step.pause.is_some() {
        kinds.push("pause");
    }
    if step.set_canary_scale.is_some() {
        kinds.push("setCanaryScale");
    }
    if step.analysis.is_some() {
        kinds.push("analysis");
    }
    if step.set_header_route.is_some() {
        kinds.push("setHeaderRoute");
    }
    if step.set_mirror_route.is_some() {
        kinds.push("setMirrorRoute");
    }
    if let Some(unknown) = step.unknown.keys().next() {
        problems.add(
            format!("{field}.{unknown}"),
            format!("unknown step {unknown:?}; supported steps are {STEP_KINDS}"),
        );
        return;
    }
    if kinds.len() != 1 {
        let found = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(" and ")
        };
        problems.add(
            field,
            format!("a step must set exactly one of {STEP_KINDS}; found {found}"),
        );
        return;
    }
    let max_weight = routing.map_or(DEFAULT_MAX_TRAFFIC_WEIGHT, TrafficRouting::max_weight);
    if let Some(weight) = step.set_weight
        && !(0..=max_weight).contains(&weight)
    {
        let message = if max_weight == DEFAULT_MAX_TRAFFIC_WEIGHT {
            format!("{weight} is not a percentage; use 0 to 100")
        } else {
            format!("{weight} is outside 0..={max_weight} (trafficRouting.maxTrafficWeight)")
        };
        problems.add(format!("{field}.setWeight"), message);
    }
    validate_route_steps(field, step, routing, problems);
    if let Some(duration) = step.pause.as_ref().and_then(|p| p.duration.as_ref())
        && let Err(message) = parse_int_or_duration(duration)
    {
        problems.add(format!("{field}.pause.duration"), message);
    }
    if let Some(scale) = &step.set_canary_scale {
        let set = [
            scale.replicas.is_some(),
            scale.weight.is_some(),
            scale.match_traffic_weight == Some(true),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            problems.add(
                format!("{field}.setCanaryScale"),
                "set exactly one of replicas, weight or matchTrafficWeight: true",
            );
        }
        if let Some(count) = scale.replicas
            && !(0..=replicas).contains(&count)
        {
            problems.add(
                format!("{field}.setCanaryScale.replicas"),
                format!("{count} is outside 0..={replicas} (spec.replicas)"),
            );
        }
        if let Some(weight) = scale.weight
            && !(0..=100).contains(&weight)
        {
            problems.add(
                format!("{field}.setCanaryScale.weight"),
                format!("{weight} is not a percentage; use 0 to 100"),
            );
        }
    }
    if let Some(analysis) = &step.analysis {
        validate_analysis_ref(&format!("{field}.analysis"), analysis, problems);
    }
}

/// Argo's routers Ramp does not implement; a manifest naming one is refused
/// by name rather than run without the routing it asked for.
const UNSUPPORTED_ROUTERS: [&str; 7] = [
    "nginx",
    "alb",
    "smi",
    "ambassador",
    "appMesh",
    "traefik",
    "apisix",
];

fn validate_traffic_routing(base: &str, canary: &CanaryStrategy, problems: &mut Problems) {
    let Some(routing) = &canary.traffic_routing else {
        for (field, set) in [
            (
                "scaleDownDelaySeconds",
                canary.scale_down_delay_seconds.is_some(),
            ),
            (
                "abortScaleDownDelaySeconds",
                canary.abort_scale_down_delay_seconds.is_some(),
            ),
            (
                "dynamicStableScale",
                canary.dynamic_stable_scale == Some(true),
            ),
        ] {
            if set {
                problems.add(
                    format!("{base}.{field}"),
                    "only applies with trafficRouting; remove it (a basic canary scales old pods down as the weight moves)",
                );
            }
        }
        return;
    };
    let base_routing = format!("{base}.trafficRouting");
    for (field, value) in [
        ("scaleDownDelaySeconds", canary.scale_down_delay_seconds),
        (
            "abortScaleDownDelaySeconds",
            canary.abort_scale_down_delay_seconds,
        ),
    ] {
        if value.is_some_and(|v| v < 0) {
            problems.add(format!("{base}.{field}"), "must not be negative");
        }
    }
    if canary.dynamic_stable_scale == Some(true) && canary.scale_down_delay_seconds.is_some() {
        problems.add(
            format!("{base}.dynamicStableScale"),
            "cannot be used with scaleDownDelaySeconds: stable is already scaled down as its weight falls; remove one of them",
        );
    }
    if routing.max_traffic_weight.is_some_and(|w| w <= 0) {
        problems.add(
            format!("{base_routing}.maxTrafficWeight"),
            "must be greater than 0",
        );
    }
    for name in routing.unknown.keys() {
        let message = if UNSUPPORTED_ROUTERS.contains(&name.as_str()) {
            format!(
                "the {name} traffic router is not supported by Ramp; use gatewayAPI (or the {GATEWAY_API_PLUGIN} plugin) or istio"
            )
        } else {
            format!(
                "unknown field {name:?}; traffic routers are gatewayAPI, plugins.{GATEWAY_API_PLUGIN} and istio"
            )
        };
        problems.add(format!("{base_routing}.{name}"), message);
    }
    for name in routing.plugins.keys() {
        if name != GATEWAY_API_PLUGIN {
            problems.add(
                format!("{base_routing}.plugins[{name:?}]"),
                format!("Ramp runs no router plugins; it serves {GATEWAY_API_PLUGIN} natively and nothing else"),
            );
        }
    }
    if routing.gateway_api.is_some() && routing.plugins.contains_key(GATEWAY_API_PLUGIN) {
        problems.add(
            format!("{base_routing}.gatewayAPI"),
            format!(
                "gatewayAPI and plugins[{GATEWAY_API_PLUGIN:?}] configure the same router; keep one"
            ),
        );
    }
    let gateway = match routing.gateway_api() {
        Ok(gateway) => gateway,
        Err(message) => {
            problems.add(
                format!("{base_routing}.plugins[{GATEWAY_API_PLUGIN:?}]"),
                format!("{message}; fields are httpRoute(s), grpcRoute(s), tcpRoute(s), tlsRoute(s), namespace and useHeaderRoutes"),
            );
            None
        }
    };
    let istio = routing.istio.as_ref();
    if gateway.is_none()
        && istio.is_none()
        && routing.plugins.is_empty()
        && routing.unknown.is_empty()
    {
        problems.add(
            &base_routing,
            "names no router; set gatewayAPI (or plugins.argoproj-labs/gatewayAPI) or istio",
        );
    }
    if let Some((field, config)) = &gateway {
        let routes = config.routes();
        if routes.is_empty() {
            problems.add(
                format!("{base_routing}.{field}"),
                "names no route; set httpRoute or httpRoutes (or the grpc/tcp/tls forms)",
            );
        }
        for (index, (kind, name, _)) in routes.iter().enumerate() {
            if name.trim().is_empty() {
                problems.add(
                    format!("{base_routing}.{field}"),
                    format!("route {} ({}) has an empty name", index + 1, kind.kind()),
                );
            }
        }
    }
    let needs_services = gateway.is_some() || istio.is_some_and(|i| i.destination_rule.is_none());
    if needs_services {
        for (field, service) in [
            ("canaryService", &canary.canary_service),
            ("stableService", &canary.stable_service),
        ] {
            if service.is_none() {
                problems.add(
                    format!("{base}.{field}"),
                    "is required with trafficRouting: the route's two backends are the canary and stable Services",
                );
            }
        }
    }
    if let Some(istio) = istio {
        let services = istio.all_virtual_services();
        if istio.virtual_service.is_some() && !istio.virtual_services.is_empty() {
            problems.add(
                format!("{base_routing}.istio"),
                "set virtualService or virtualServices, not both",
            );
        }
        if services.is_empty() {
            problems.add(
                format!("{base_routing}.istio.virtualService"),
                "is required: name the VirtualService whose routes carry the weights",
            );
        }
        for (index, service) in services.iter().enumerate() {
            if service.name.trim().is_empty() {
                problems.add(
                    format!("{base_routing}.istio.virtualServices[{index}].name"),
                    "is empty; name a VirtualService",
                );
            }
        }
        if let Some(rule) = &istio.destination_rule {
            for (field, value) in [
                ("name", &rule.name),
                ("canarySubsetName", &rule.canary_subset_name),
                ("stableSubsetName", &rule.stable_subset_name),
            ] {
                if value.trim().is_empty() {
                    problems.add(
                        format!("{base_routing}.istio.destinationRule.{field}"),
                        "is empty",
                    );
                }
            }
            if rule.canary_subset_name == rule.stable_subset_name {
                problems.add(
                    format!("{base_routing}.istio.destinationRule.canarySubsetName"),
                    "canary and stable subsets must differ",
                );
            }
        }
        if routing.max_weight() != DEFAULT_MAX_TRAFFIC_WEIGHT {
            problems.add(
                format!("{base_routing}.maxTrafficWeight"),
                "Istio route weights always add up to 100; remove maxTrafficWeight",
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, route) in routing.managed_routes.iter().enumerate() {
        if route.name.trim().is_empty() || !seen.insert(route.name.as_str()) {
            problems.add(
                format!("{base_routing}.managedRoutes[{index}].name"),
                format!(
                    "{:?} is empty or listed twice; each managed route needs a unique name",
                    route.name
                ),
            );
        }
    }
}

fn validate_route_steps(
    field: &str,
    step: &CanaryStep,
    routing: Option<&TrafficRouting>,
    problems: &mut Problems,
) {
    let named = [
        (
            "setHeaderRoute",
            step.set_header_route.as_ref().map(|r| &r.name),
        ),
        (
            "setMirrorRoute",
            step.set_mirror_route.as_ref().map(|r| &r.name),
        ),
    ];
    for (kind, name) in named {
        let Some(name) = name else { continue };
        let Some(routing) = routing else {
            problems.add(
                format!("{field}.{kind}"),
                "needs spec.strategy.canary.trafficRouting (gatewayAPI or istio)",
            );
            continue;
        };
        if !routing.managed_routes.iter().any(|r| &r.name == name) {
            problems.add(
                format!("{field}.{kind}.name"),
                format!("{name:?} is not in trafficRouting.managedRoutes; add it there"),
            );
        }
        if kind == "setHeaderRoute"
            && let Ok(Some((_, config))) = routing.gateway_api()
        {
            let header_capable = config
                .routes()
                .iter()
                .any(|(kind, _, header)| *kind == GatewayRouteKind::Http && *header);
            if !header_capable {
                problems.add(
                    format!("{field}.{kind}"),
                    "no HTTPRoute takes header routes; set useHeaderRoutes: true on one in the gatewayAPI configuration",
                );
            }
        }
    }
    if let Some(header) = &step.set_header_route {
        for (index, matching) in header.matches.iter().enumerate() {
            let at = format!("{field}.setHeaderRoute.match[{index}]");
            if matching.header_name.trim().is_empty() {
                problems.add(format!("{at}.headerName"), "is empty; name a header");
            }
            validate_string_match(
                &format!("{at}.headerValue"),
                &matching.header_value,
                problems,
            );
        }
    }
    if let Some(mirror) = &step.set_mirror_route {
        if let Some(percentage) = mirror.percentage
            && !(0..=100).contains(&percentage)
        {
            problems.add(
                format!("{field}.setMirrorRoute.percentage"),
                format!("{percentage} is not a percentage; use 0 to 100"),
            );
        }
        let gateway_api = routing.is_some_and(|r| matches!(r.gateway_api(), Ok(Some(_))));
        for (index, matching) in mirror.matches.iter().enumerate() {
            let at = format!("{field}.setMirrorRoute.match[{index}]");
            let inexact_method = matching
                .method
                .as_ref()
                .is_some_and(|m| !matches!(m.kind(), Some(super::traffic::MatchKind::Exact(_))));
            if gateway_api && inexact_method {
                problems.add(
                    format!("{at}.method"),
                    "Gateway API matches a method exactly; use method.exact",
                );
            }
            for (part, value) in [("method", &matching.method), ("path", &matching.path)] {
                if let Some(value) = value {
                    validate_string_match(&format!("{at}.{part}"), value, problems);
                }
            }
            for (name, value) in &matching.headers {
                validate_string_match(&format!("{at}.headers.{name}"), value, problems);
            }
        }
    }
}

fn validate_string_match(field: &str, value: &StringMatch, problems: &mut Problems) {
    match value.kind() {
        None => problems.add(field, "set exactly one of exact, prefix or regex"),
        Some(super::traffic::MatchKind::Regex(pattern)) => {
            if let Err(error) = regex::Regex::new(pattern) {
                problems.add(
                    format!("{field}.regex"),
                    format!("{pattern:?} is not a valid regular expression: {error}"),
                );
            }
        }
        Some(_) => {}
    }
}

fn validate_analysis_ref(field: &str, analysis: &RolloutAnalysis, problems: &mut Problems) {
    if analysis.templates.is_empty() {
        problems.add(
            format!("{field}.templates"),
            "name at least one AnalysisTemplate",
        );
    }
    for (index, template) in analysis.templates.iter().enumerate() {
        if template.template_name.trim().is_empty() {
            problems.add(
                format!("{field}.templates[{index}].templateName"),
                "is empty; name an AnalysisTemplate",
            );
        }
    }
    for (index, arg) in analysis.args.iter().enumerate() {
        let arg_field = format!("{field}.args[{index}]");
        if arg.name.trim().is_empty() {
            problems.add(format!("{arg_field}.name"), "is empty");
        }
        match (&arg.value, &arg.value_from) {
            (Some(_), Some(_)) => problems.add(&arg_field, "set value or valueFrom, not both"),
            (None, None) => problems.add(
                &arg_field,
                format!("argument {:?} needs a value or valueFrom", arg.name),
            ),
            (None, Some(from)) => {
                let set = usize::from(from.pod_template_hash_value.is_some())
                    + usize::from(from.field_ref.is_some());
                if set != 1 {
                    problems.add(
                        format!("{arg_field}.valueFrom"),
                        "set exactly one of podTemplateHashValue (Stable or Latest) or fieldRef",
                    );
                }
            }
            (Some(_), None) => {}
        }
    }
}

fn validate_blue_green(spec: &RolloutSpec, problems: &mut Problems) {
    let Some(bg) = &spec.strategy.blue_green else {
        return;
    };
    let base = "spec.strategy.blueGreen";
    validate_role_metadata(
        &format!("{base}.activeMetadata"),
        bg.active_metadata.as_ref(),
        spec,
        problems,
    );
    validate_role_metadata(
        &format!("{base}.previewMetadata"),
        bg.preview_metadata.as_ref(),
        spec,
        problems,
    );
    if bg.active_service.trim().is_empty() {
        problems.add(
            format!("{base}.activeService"),
            "is required; name the Service that carries production traffic",
        );
    }
    if bg.preview_service.as_deref() == Some(bg.active_service.as_str()) {
        problems.add(
            format!("{base}.previewService"),
            format!(
                "is the same Service as activeService ({:?}); use a different Service",
                bg.active_service
            ),
        );
    }
    for (field, value) in [
        ("autoPromotionSeconds", bg.auto_promotion_seconds),
        ("previewReplicaCount", bg.preview_replica_count),
        ("scaleDownDelaySeconds", bg.scale_down_delay_seconds),
        (
            "scaleDownDelayRevisionLimit",
            bg.scale_down_delay_revision_limit,
        ),
        (
            "abortScaleDownDelaySeconds",
            bg.abort_scale_down_delay_seconds,
        ),
    ] {
        if value.is_some_and(|v| v < 0) {
            problems.add(format!("{base}.{field}"), "must not be negative");
        }
    }
    if let (Some(limit), Some(history)) = (
        bg.scale_down_delay_revision_limit,
        spec.revision_history_limit,
    ) && limit > history
    {
        problems.add(
            format!("{base}.scaleDownDelayRevisionLimit"),
            format!("{limit} exceeds spec.revisionHistoryLimit ({history}); lower it or raise the history limit"),
        );
    }
    if let Some(analysis) = &bg.pre_promotion_analysis {
        validate_analysis_ref(&format!("{base}.prePromotionAnalysis"), analysis, problems);
    }
    if let Some(analysis) = &bg.post_promotion_analysis {
        validate_analysis_ref(&format!("{base}.postPromotionAnalysis"), analysis, problems);
    }
}

/// One line for conditions and Events: the first few problems, joined.
pub fn summarize(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems.iter().take(3).map(Problem::to_string).collect();
    let mut summary = shown.join("; ");
    if problems.len() > 3 {
        summary.push_str(&format!(" (and {} more)", problems.len() - 3));
    }
    summary
}
