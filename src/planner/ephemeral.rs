//! Ephemeral pod metadata (`canaryMetadata`/`stableMetadata`,
//! `activeMetadata`/`previewMetadata`): labels and annotations that follow a
//! ReplicaSet's role. They are written into the ReplicaSet's pod template (so
//! new pods get them) and onto its live pods when the role changes. What was
//! injected is recorded in an annotation so it can be removed again.

use std::collections::BTreeMap;

use super::Ctx;
use crate::api::{EPHEMERAL_METADATA_ANNOTATION, PodMetadata, ReplicaSetRoleMetadata};

/// Reads what a ReplicaSet's pods currently carry.
pub(crate) fn injected(annotations: Option<&BTreeMap<String, String>>) -> PodMetadata {
    annotations
        .and_then(|a| a.get(EPHEMERAL_METADATA_ANNOTATION))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Decides the metadata each ReplicaSet should carry for its role now.
pub(super) fn assign(ctx: &mut Ctx<'_>) {
    let strategy = &ctx.rollout.spec.strategy;
    let roles: Vec<(usize, Option<PodMetadata>)> = if let Some(canary) = &strategy.canary {
        let mut roles = Vec::new();
        if let Some(stable) = ctx.stable {
            roles.push((stable, canary.stable_metadata.clone()));
        }
        if Some(ctx.new) != ctx.stable {
            roles.push((ctx.new, canary.canary_metadata.clone()));
        }
        roles
    } else if let Some(bg) = &strategy.blue_green {
        let active_hash = ctx.service_hash(&bg.active_service);
        ctx.sets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == ctx.new || Some(*i) == ctx.stable)
            .map(|(i, set)| {
                let active = active_hash.as_deref() == Some(set.hash.as_str());
                (
                    i,
                    if active {
                        bg.active_metadata.clone()
                    } else {
                        bg.preview_metadata.clone()
                    },
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    for (index, metadata) in roles {
        ctx.sets[index].desired_injected = metadata.unwrap_or_default();
    }
}

/// Labels and annotations to set, and keys to remove, to go from `old` to `new`.
pub fn difference(old: &PodMetadata, new: &PodMetadata) -> ReplicaSetRoleMetadata {
    let removed = |before: &BTreeMap<String, String>, after: &BTreeMap<String, String>| {
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect::<Vec<_>>()
    };
    ReplicaSetRoleMetadata {
        set: new.clone(),
        removed_labels: removed(&old.labels, &new.labels),
        removed_annotations: removed(&old.annotations, &new.annotations),
    }
}
