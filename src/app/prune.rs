//! Pruning: deleting finished jobs past an age, from the history and the
//! live state, in small batches.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::domain::{Error, JobStatus};
use crate::live::LiveState;
use crate::store::{PruneReport, Store};

/// How often `--prune-older-than` prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(crate::defaults::PRUNE_EVERY_SECONDS);

/// Deletes finished jobs created more than `age` ago (of one status if
/// given) in small batches, and forgets them in the live state.
pub async fn prune(
    store: &Store,
    live: Option<&dyn LiveState>,
    age: Duration,
    status: Option<JobStatus>,
    dry_run: bool,
) -> Result<PruneReport, Error> {
    let before = crate::domain::earlier(super::now(), age);
    let mut report = PruneReport::default();
    let mut after = String::new();
    loop {
        let (found, events) = store.prune_batch(before, status, dry_run, &after).await?;
        let Some(last) = found.last().map(|(id, _)| id.clone()) else {
            return Ok(report);
        };
        report.jobs += found.len() as u64;
        report.events += events;
        for (_, status) in &found {
            *report.by_status.entry(status.as_str()).or_default() += 1;
        }
        if let (Some(live), false) = (live, dry_run) {
            for id in found
                .iter()
                .filter_map(|(id, _)| uuid::Uuid::parse_str(id).ok())
            {
                if let Err(e) = live.forget_job(id).await {
                    tracing::warn!(job_id = %id, error = %e, "forgetting a pruned job");
                }
            }
        }
        after = last;
    }
}

/// Deletes finished jobs older than `age` every hour.
pub async fn prune_periodically(state: Arc<AppState>, age: Duration, shutdown: CancellationToken) {
    loop {
        match prune(&state.store, Some(state.live.as_ref()), age, None, false).await {
            Ok(report) if report.jobs > 0 => {
                tracing::info!(
                    jobs = report.jobs,
                    events = report.events,
                    "pruned old jobs"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old jobs"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
