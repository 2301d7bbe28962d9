//! Text rendering for `get` and `list`, pure so layouts are golden-tested.

use std::fmt::Write;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    AnalysisPhase, AnalysisRun, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout,
    RolloutPhase, SCALE_DOWN_DEADLINE_ANNOTATION,
};
use crate::planner::replicas::weighted_counts;

/// Everything `get rollout` shows.
pub struct View<'a> {
    pub rollout: &'a Rollout,
    pub replica_sets: Vec<&'a ReplicaSet>,
    pub pods: Vec<&'a Pod>,
    pub runs: Vec<&'a AnalysisRun>,
    pub now: Timestamp,
    pub color: bool,
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn green(&self, text: &str) -> String {
        self.wrap("32", text)
    }
    fn yellow(&self, text: &str) -> String {
        self.wrap("33", text)
    }
    fn red(&self, text: &str) -> String {
        self.wrap("31", text)
    }
    fn blue(&self, text: &str) -> String {
        self.wrap("34", text)
    }
    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// Icon and word for a rollout phase.
pub fn phase_label(phase: Option<RolloutPhase>) -> (&'static str, &'static str) {
    match phase {
        Some(RolloutPhase::Healthy) => ("✔", "Healthy"),
        Some(RolloutPhase::Progressing) => ("◐", "Progressing"),
        Some(RolloutPhase::Paused) => ("❚❚", "Paused"),
        Some(RolloutPhase::Degraded) => ("✖", "Degraded"),
        None => ("…", "Unknown"),
    }
}

fn paint_phase(paint: &Paint, phase: Option<RolloutPhase>) -> String {
    let (icon, word) = phase_label(phase);
    let text = format!("{icon} {word}");
    match phase {
        Some(RolloutPhase::Healthy) => paint.green(&text),
        Some(RolloutPhase::Progressing) => paint.blue(&text),
        Some(RolloutPhase::Paused) => paint.yellow(&text),
        Some(RolloutPhase::Degraded) => paint.red(&text),
        None => text,
    }
}

/// Short human age: 45s, 3m, 2h, 5d.
pub fn age(created: Option<&Time>, now: Timestamp) -> String {
    let Some(created) = created else {
        return "-".into();
    };
    let seconds = now.duration_since(created.0).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn hash_of(rs: &ReplicaSet) -> String {
    rs.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
        .cloned()
        .unwrap_or_default()
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref()?.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Role tags of a ReplicaSet: stable/canary or active/preview.
fn roles(rollout: &Rollout, hash: &str) -> Vec<&'static str> {
    let status = rollout.status.clone().unwrap_or_default();
    let mut tags = Vec::new();
    let stable = status.stable_rs.as_deref() == Some(hash);
    let current = status.current_pod_hash.as_deref() == Some(hash);
    if rollout.spec.strategy.blue_green.is_some() {
        let bg = status.blue_green.unwrap_or_default();
        if bg.active_selector.as_deref() == Some(hash) {
            tags.push("active");
        }
        if bg.preview_selector.as_deref() == Some(hash)
            && bg.active_selector.as_deref() != Some(hash)
        {
            tags.push("preview");
        }
        if stable && !tags.contains(&"active") {
            tags.push("stable");
        }
    } else {
        if stable {
            tags.push("stable");
        }
        if current && !stable {
            tags.push("canary");
        }
    }
    tags
}

fn pod_ready(pod: &Pod) -> (usize, usize) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let total = pod.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
    (statuses.iter().filter(|c| c.ready).count(), total)
}

/// Steps and weights line for a canary: (step k/n, set weight, actual weight).
fn canary_progress(rollout: &Rollout) -> Option<(String, i32, i32)> {
    let canary = rollout.spec.strategy.canary.as_ref()?;
    let status = rollout.status.clone().unwrap_or_default();
    let total = canary.steps.len() as i32;
    let index = status.current_step_index.unwrap_or(0).min(total);
    let set_weight = if status.stable_rs == status.current_pod_hash || index >= total {
        100
    } else if status.abort {
        0
    } else {
        crate::planner::weight_at(&canary.steps, index)
    };
    // Once promoted, the stable side is the new revision: all of it.
    let promoted = status.stable_rs.is_some() && status.stable_rs == status.current_pod_hash;
    let actual = status
        .canary
        .and_then(|c| c.weights)
        .map(|w| if promoted { 100 } else { w.canary.weight })
        .unwrap_or(set_weight);
    Some((format!("{index}/{total}"), set_weight, actual))
}

/// With a traffic router: the weight read back from the routes, and the
/// header and mirror routes in force, one per line.
fn routing_lines(rollout: &Rollout) -> Vec<(&'static str, String)> {
    let routed = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .is_some_and(|c| c.traffic_routing.is_some());
    if !routed {
        return Vec::new();
    }
    let canary = rollout
        .status
        .as_ref()
        .and_then(|s| s.canary.clone())
        .unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let promoted = status.stable_rs.is_some() && status.stable_rs == status.current_pod_hash;
    let asked = canary.weights.as_ref().map(|w| w.canary.weight);
    let verified = match (
        canary.verified_weight,
        canary.weights.as_ref().and_then(|w| w.verified),
    ) {
        (Some(0), Some(true)) if promoted => "100 (all on stable, the new revision)".to_string(),
        (Some(weight), Some(true)) => weight.to_string(),
        (Some(weight), _) => match asked {
            Some(asked) => format!("{weight} (routes not yet at {asked})"),
            None => weight.to_string(),
        },
        (None, _) => "not read back yet".to_string(),
    };
    let mut lines = vec![("  Verified", verified)];
    for route in &canary.header_routes {
        let matches: Vec<String> = route
            .matches
            .iter()
            .map(|m| format!("{} {}", m.header_name, describe_match(&m.header_value)))
            .collect();
        lines.push((
            "  HeaderRoute",
            format!("{}: {}", route.name, matches.join(", ")),
        ));
    }
    for route in &canary.mirror_routes {
        let matches: Vec<String> = route
            .matches
            .iter()
            .map(|m| {
                let mut parts = Vec::new();
                if let Some(method) = &m.method {
                    parts.push(format!("method {}", describe_match(method)));
                }
                if let Some(path) = &m.path {
                    parts.push(format!("path {}", describe_match(path)));
                }
                for (name, value) in &m.headers {
                    parts.push(format!("{name} {}", describe_match(value)));
                }
                parts.join(" and ")
            })
            .collect();
        let scope = if matches.is_empty() {
            "all requests".to_string()
        } else {
            matches.join(", ")
        };
        lines.push((
            "  MirrorRoute",
            format!(
                "{}: {}% of {scope}",
                route.name,
                route.percentage.unwrap_or(100)
            ),
        ));
    }
    lines
}

/// One line per webhook: what it answered for the revision being rolled
/// out, so a held gate says which endpoint to look at.
fn webhook_lines(rollout: &Rollout) -> Vec<String> {
    use crate::api::WebhookPhase;
    let status = rollout.status.clone().unwrap_or_default();
    let current = status.current_pod_hash.unwrap_or_default();
    rollout
        .spec
        .webhooks
        .iter()
        .map(|hook| {
            let kind = hook.type_.as_str();
            let record = status
                .webhooks
                .iter()
                .find(|w| w.name == hook.name && w.pod_template_hash == current);
            let state = match record {
                None if hook.type_ == crate::api::WebhookType::Event => {
                    "told every transition".to_string()
                }
                None => "not called for this revision".to_string(),
                Some(record) => {
                    let phase = match record.phase {
                        WebhookPhase::Pending => "waiting",
                        WebhookPhase::Successful => "passed",
                        WebhookPhase::Failed => "failed",
                        WebhookPhase::Sent => "sent",
                    };
                    match &record.message {
                        Some(message) => {
                            format!("{phase} ({message}, attempt {})", record.attempts)
                        }
                        None => phase.to_string(),
                    }
                }
            };
            format!("{} [{kind}]: {state}", hook.name)
        })
        .collect()
}

fn describe_match(value: &crate::api::StringMatch) -> String {
    use crate::api::MatchKind;
    match value.kind() {
        Some(MatchKind::Exact(v)) => format!("= {v}"),
        Some(MatchKind::Prefix(v)) => format!("starts with {v}"),
        Some(MatchKind::Regex(v)) => format!("~ {v}"),
        None => "(invalid match)".to_string(),
    }
}

pub fn render_rollout(view: &View<'_>) -> String {
    let paint = Paint(view.color);
    let rollout = view.rollout;
    let status = rollout.status.clone().unwrap_or_default();
    let mut out = String::new();
    let field = |out: &mut String, label: &str, value: &str| {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("{label}:")
        };
        let line = format!("{label:<16}{value}");
        let _ = writeln!(out, "{}", line.trim_end());
    };
    field(
        &mut out,
        "Name",
        rollout.metadata.name.as_deref().unwrap_or_default(),
    );
    field(
        &mut out,
        "Namespace",
        rollout.metadata.namespace.as_deref().unwrap_or_default(),
    );
    field(&mut out, "Status", &paint_phase(&paint, status.phase));
    if let Some(message) = status.message.as_deref().filter(|m| !m.is_empty()) {
        field(&mut out, "Message", message);
    }
    field(&mut out, "Strategy", rollout.strategy_name());
    if let Some((step, set_weight, actual)) = canary_progress(rollout) {
        field(&mut out, "  Step", &step);
        field(&mut out, "  SetWeight", &set_weight.to_string());
        field(&mut out, "  ActualWeight", &actual.to_string());
        for (label, value) in routing_lines(rollout) {
            field(&mut out, label, &value);
        }
        let replicas = rollout.replicas();
        let (canary, mut stable) = weighted_counts(replicas, set_weight, 1);
        // A router moves the traffic; stable keeps its pods unless
        // dynamicStableScale shrinks it behind the weight.
        let routed =
            rollout.spec.strategy.canary.as_ref().is_some_and(|c| {
                c.traffic_routing.is_some() && c.dynamic_stable_scale != Some(true)
            });
        if routed && set_weight < 100 {
            stable = replicas;
        }
        field(
            &mut out,
            "  Pods",
            &format!("{canary} canary / {stable} stable (target)"),
        );
    }
    for (index, line) in webhook_lines(rollout).iter().enumerate() {
        field(&mut out, if index == 0 { "Webhooks" } else { "" }, line);
    }
    let mut sets: Vec<&&ReplicaSet> = view.replica_sets.iter().collect();
    sets.sort_by_key(|rs| std::cmp::Reverse(revision_of(rs)));
    let mut image_lines = Vec::new();
    for rs in &sets {
        let tags = roles(rollout, &hash_of(rs));
        let live = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0;
        if !tags.is_empty() || live {
            let suffix = if tags.is_empty() {
                String::new()
            } else {
                format!(" ({})", tags.join(", "))
            };
            image_lines.push(format!("{}{suffix}", image_of(rs)));
        }
    }
    for (index, line) in image_lines.iter().enumerate() {
        field(&mut out, if index == 0 { "Images" } else { "" }, line);
    }
    field(&mut out, "Replicas", "");
    field(&mut out, "  Desired", &rollout.replicas().to_string());
    field(&mut out, "  Current", &status.replicas.to_string());
    field(&mut out, "  Updated", &status.updated_replicas.to_string());
    field(&mut out, "  Ready", &status.ready_replicas.to_string());
    field(
        &mut out,
        "  Available",
        &status.available_replicas.to_string(),
    );
    out.push('\n');

    let mut rows: Vec<[String; 5]> = Vec::new();
    rows.push([
        format!("⟳ {}", rollout.metadata.name.as_deref().unwrap_or_default()),
        "Rollout".into(),
        paint_phase(&paint, status.phase),
        age(rollout.metadata.creation_timestamp.as_ref(), view.now),
        String::new(),
    ]);
    let count = sets.len();
    for (set_index, rs) in sets.iter().enumerate() {
        let last_set = set_index + 1 == count;
        let (branch, indent) = if last_set {
            ("└──", "   ")
        } else {
            ("├──", "│  ")
        };
        rows.push([
            format!("{branch}# revision:{}", revision_of(rs)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        let hash = hash_of(rs);
        let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let available = rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        let rs_status = if spec == 0 {
            paint.dim("• ScaledDown")
        } else if available >= spec {
            paint.green("✔ Healthy")
        } else {
            paint.blue("◐ Progressing")
        };
        let mut info: Vec<String> = roles(rollout, &hash)
            .into_iter()
            .map(String::from)
            .collect();
        info.extend(
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCALE_DOWN_DEADLINE_ANNOTATION))
                .and_then(|d| d.parse::<Timestamp>().ok())
                .map(|d| {
                    format!(
                        "scale-down in {}s",
                        d.duration_since(view.now).as_secs().max(0)
                    )
                }),
        );
        rows.push([
            format!(
                "{indent}└──⧉ {}",
                rs.metadata.name.as_deref().unwrap_or_default()
            ),
            "ReplicaSet".into(),
            rs_status,
            age(rs.metadata.creation_timestamp.as_ref(), view.now),
            info.join(", "),
        ]);
        let has_hash = |labels: &Option<std::collections::BTreeMap<String, String>>| {
            labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL)) == Some(&hash)
        };
        let mut pods: Vec<&&Pod> = view
            .pods
            .iter()
            .filter(|p| has_hash(&p.metadata.labels))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut runs: Vec<&&AnalysisRun> = view
            .runs
            .iter()
            .filter(|r| has_hash(&r.metadata.labels))
            .collect();
        runs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut children: Vec<[String; 5]> = pods
            .iter()
            .map(|pod| pod_row(&paint, pod, view.now))
            .collect();
        children.extend(runs.iter().map(|run| run_row(&paint, run, view.now)));
        let total = children.len();
        for (index, mut child) in children.into_iter().enumerate() {
            let twig = if index + 1 == total {
                "└──"
            } else {
                "├──"
            };
            child[0] = format!("{indent}   {twig}{}", child[0]);
            rows.push(child);
        }
    }
    out.push_str(&table(&["NAME", "KIND", "STATUS", "AGE", "INFO"], &rows));
    out
}

fn pod_row(paint: &Paint, pod: &Pod, now: Timestamp) -> [String; 5] {
    let (ready, total) = pod_ready(pod);
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let shown = if pod.metadata.deletion_timestamp.is_some() {
        paint.dim("◌ Terminating")
    } else if ready == total && total > 0 {
        paint.green(&format!("✔ {phase}"))
    } else {
        paint.yellow(&format!("◌ {phase}"))
    };
    [
        format!("□ {}", pod.metadata.name.as_deref().unwrap_or_default()),
        "Pod".into(),
        shown,
        age(pod.metadata.creation_timestamp.as_ref(), now),
        format!("ready:{ready}/{total}"),
    ]
}

fn run_row(paint: &Paint, run: &AnalysisRun, now: Timestamp) -> [String; 5] {
    let phase = run
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(AnalysisPhase::Pending);
    let text = format!("{} {}", analysis_icon(phase), phase.as_str());
    let shown = match phase {
        AnalysisPhase::Successful => paint.green(&text),
        AnalysisPhase::Failed | AnalysisPhase::Error => paint.red(&text),
        AnalysisPhase::Inconclusive => paint.yellow(&text),
        _ => paint.blue(&text),
    };
    let summary = run
        .status
        .as_ref()
        .and_then(|s| s.run_summary.clone())
        .unwrap_or_default();
    [
        format!("α {}", run.metadata.name.as_deref().unwrap_or_default()),
        "AnalysisRun".into(),
        shown,
        age(run.metadata.creation_timestamp.as_ref(), now),
        format!(
            "✔ {} ✖ {}",
            summary.successful,
            summary.failed + summary.error
        ),
    ]
}

fn analysis_icon(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Successful => "✔",
        AnalysisPhase::Failed => "✖",
        AnalysisPhase::Error => "⚠",
        AnalysisPhase::Inconclusive => "?",
        AnalysisPhase::Running => "◐",
        AnalysisPhase::Pending => "◌",
    }
}

/// Width of text as shown in a terminal: ANSI colour codes take no space.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_width(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(widths[i] - visible_width(cell) + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `list rollouts`.
pub fn render_list(rollouts: &[&Rollout], all_namespaces: bool, color: bool) -> String {
    let paint = Paint(color);
    let mut rows: Vec<[String; 8]> = Vec::new();
    for rollout in rollouts {
        let status = rollout.status.clone().unwrap_or_default();
        let (step, weight) = match canary_progress(rollout) {
            Some((step, set_weight, _)) => (step, set_weight.to_string()),
            None => ("-".into(), "-".into()),
        };
        rows.push([
            rollout.metadata.namespace.clone().unwrap_or_default(),
            rollout.metadata.name.clone().unwrap_or_default(),
            rollout.strategy_name().to_string(),
            paint_phase(&paint, status.phase),
            step,
            weight,
            format!("{}/{}", status.ready_replicas, rollout.replicas()),
            status.available_replicas.to_string(),
        ]);
    }
    let headers = [
        "NAMESPACE",
        "NAME",
        "STRATEGY",
        "STATUS",
        "STEP",
        "SET-WEIGHT",
        "READY",
        "AVAILABLE",
    ];
    if all_namespaces {
        table(&headers, &rows)
    } else {
        let rows: Vec<[String; 7]> = rows
            .into_iter()
            .map(|r| {
                [
                    r[1].clone(),
                    r[2].clone(),
                    r[3].clone(),
                    r[4].clone(),
                    r[5].clone(),
                    r[6].clone(),
                    r[7].clone(),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "STRATEGY",
                "STATUS",
                "STEP",
                "SET-WEIGHT",
                "READY",
                "AVAILABLE",
            ],
            &rows,
        )
    }
}

#[cfg(test)]
mod tests;
