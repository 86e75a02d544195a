//! The sweeper: ends RUNNING jobs whose lease expired (FAILED, WORKER_LOST),
//! takes back dispatch entries a worker took and never settled (it died
//! between taking a job and claiming it), and queues again, in their place,
//! PENDING jobs the dispatch does not hold (a Redis restart, a submit while
//! Redis was down). Every step is a conditional update in the history or an
//! idempotent script in the live state, so several sweepers at once are safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Error;
use crate::live::{announce, LiveState, Queued, DEFAULT_QUEUE};
use crate::store::{Cursor, Store};

/// PENDING jobs checked against the dispatch per round trip.
const CHECK_PAGE: u64 = 500;

pub struct Sweeper {
    pub store: Store,
    pub live: Arc<dyn LiveState>,
    pub interval: Duration,
    /// A PENDING job older than this that the dispatch does not hold, or a
    /// dispatch entry taken this long ago and never settled, is taken as
    /// lost and queued again.
    pub redispatch_after: Duration,
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub workers_lost: usize,
    pub reclaimed: usize,
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
        let metrics = crate::metrics::get();
        let label = crate::metrics::Metrics::label;
        for (action, count) in [
            ("worker_lost", report.workers_lost),
            ("reclaimed", report.reclaimed),
            ("redispatched", report.redispatched),
        ] {
            metrics
                .sweeper_actions
                .get_or_create(&label("action", action))
                .inc_by(count as u64);
        }
        if let Err(e) = self.observe_queues().await {
            tracing::debug!(error = %e, "measuring the queues");
        }
        Ok(report)
    }

    async fn sweep_once(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        let now = chrono::Utc::now();
        for job in self.store.expire_leases(now).await? {
            tracing::warn!(job_id = %job.id, "worker lost; job failed");
            announce(&self.live, &job).await;
            report.workers_lost += 1;
        }
        for id in self.live.reclaim(self.redispatch_after).await? {
            tracing::warn!(
                job_id = %id,
                "reclaimed a dispatched job its worker took and never settled; queued again if still pending"
            );
            report.reclaimed += 1;
        }
        // Every PENDING job old enough, however long the queues are: the
        // dispatch queues the ones it does not hold, in their place.
        let before = crate::domain::earlier(now, self.redispatch_after);
        let mut after: Option<Cursor> = None;
        loop {
            let page = self
                .store
                .pending_before(before, after.as_ref(), CHECK_PAGE)
                .await?;
            let jobs: Vec<Queued> = page
                .iter()
                .map(|(id, queue, created_at)| Queued {
                    id: *id,
                    queue: queue.clone(),
                    created_at: crate::domain::to_micros(*created_at),
                })
                .collect();
            for id in self.live.dispatch(&jobs).await? {
                tracing::warn!(job_id = %id, "pending job missing from the dispatch; queued again in its place");
                report.redispatched += 1;
            }
            match page.last() {
                Some((id, _, created_at)) if page.len() as u64 == CHECK_PAGE => {
                    after = Some(Cursor {
                        created_at: *created_at,
                        id: *id,
                    })
                }
                _ => break,
            }
        }
        Ok(report)
    }

    /// Queue depth and oldest pending age, per queue, for the metrics.
    async fn observe_queues(&self) -> Result<(), Error> {
        let metrics = crate::metrics::get();
        let label = crate::metrics::Metrics::label;
        let mut depths: BTreeMap<String, u64> = BTreeMap::from([(DEFAULT_QUEUE.to_owned(), 0)]);
        depths.extend(self.live.queue_depths().await?);
        let oldest: BTreeMap<String, chrono::DateTime<chrono::Utc>> =
            self.store.oldest_pending().await?.into_iter().collect();
        let now = chrono::Utc::now();
        for queue in oldest.keys() {
            depths.entry(queue.clone()).or_insert(0);
        }
        for (queue, depth) in &depths {
            metrics
                .queue_depth
                .get_or_create(&label("queue", queue))
                .set(*depth as i64);
            let age = oldest
                .get(queue)
                .map(|created| (now - *created).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6)
                .unwrap_or(0.0);
            metrics
                .oldest_pending
                .get_or_create(&label("queue", queue))
                .set(age);
        }
        Ok(())
    }
}
