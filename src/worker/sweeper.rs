//! The sweeper: ends RUNNING jobs whose lease expired (FAILED, WORKER_LOST)
//! and dispatches again PENDING jobs the live state lost (a Redis restart, a
//! worker that died between taking a job and claiming it). Every step is a
//! conditional update in the history, so several sweepers at once are safe.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Error;
use crate::live::{announce, LiveState};
use crate::store::Store;

pub struct Sweeper {
    pub store: Store,
    pub live: Arc<dyn LiveState>,
    pub interval: Duration,
    /// A PENDING job older than this, while nothing waits in the dispatch
    /// queue, is taken as lost and dispatched again.
    pub redispatch_after: Duration,
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub workers_lost: usize,
    pub redispatched: usize,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(report) if report != SweepReport::default() => {
                    tracing::info!(?report, "sweep")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    pub async fn sweep(&self) -> Result<SweepReport, Error> {
        let report = self.sweep_once().await?;
        let actions = &crate::metrics::get().sweeper_actions;
        let label = crate::metrics::Metrics::label;
        actions
            .get_or_create(&label("action", "worker_lost"))
            .inc_by(report.workers_lost as u64);
        actions
            .get_or_create(&label("action", "redispatched"))
            .inc_by(report.redispatched as u64);
        Ok(report)
    }

    async fn sweep_once(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        let now = chrono::Utc::now().timestamp_micros();
        for job in self.store.expire_leases(now).await? {
            tracing::warn!(job_id = %job.id, "worker lost; job failed");
            announce(&self.live, &job).await;
            report.workers_lost += 1;
        }
        let queued = self.live.queue_len().await?;
        crate::metrics::get().queue_depth.set(queued as i64);
        if queued == 0 {
            let before = now - self.redispatch_after.as_micros() as i64;
            for id in self.store.pending_before(before, 100).await? {
                self.live.dispatch(id).await?;
                report.redispatched += 1;
            }
        }
        Ok(report)
    }
}
