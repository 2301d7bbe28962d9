//! Going back to a revision that already ran: within `spec.rollbackWindow`
//! (either strategy), or, for blue/green, to a ReplicaSet still scaled up
//! inside its scale-down delay, the steps, pauses and analysis are skipped
//! (Argo's `isRollbackWithinWindow` and `isFastRollback`).

use jiff::Timestamp;

use super::Ctx;

/// How the current revision relates to what already ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rollback {
    /// The new ReplicaSet is one of the last `rollbackWindow.revisions`
    /// before stable.
    pub within_window: bool,
    /// Pause and analysis are skipped: within the window, or (blue/green)
    /// an older ReplicaSet whose scale-down delay has not run out.
    pub fast: bool,
}

fn created(ctx: &Ctx<'_>, index: usize) -> Option<Timestamp> {
    Some(ctx.sets[index].rs?.metadata.creation_timestamp.as_ref()?.0)
}

pub(crate) fn classify(ctx: &Ctx<'_>) -> Rollback {
    let Some(stable) = ctx.stable else {
        return Rollback::default();
    };
    if stable == ctx.new {
        return Rollback::default();
    }
    let (Some(new_created), Some(stable_created)) = (created(ctx, ctx.new), created(ctx, stable))
    else {
        return Rollback::default();
    };
    // Only a ReplicaSet older than stable is a way back.
    if new_created >= stable_created {
        return Rollback::default();
    }
    let within_window = ctx
        .rollout
        .spec
        .rollback_window
        .as_ref()
        .and_then(|w| w.revisions)
        .filter(|&revisions| revisions > 0)
        .is_some_and(|revisions| {
            let between = (0..ctx.sets.len())
                .filter_map(|i| created(ctx, i))
                .filter(|&at| new_created < at && at < stable_created)
                .count();
            i64::try_from(between).is_ok_and(|between| between < i64::from(revisions))
        });
    let within_scale_down_delay = ctx.rollout.spec.strategy.blue_green.is_some()
        && ctx.sets[ctx.new].deadline.is_some_and(|d| ctx.now < d);
    Rollback {
        within_window,
        fast: within_window || within_scale_down_delay,
    }
}
