//! Workers: take dispatched jobs, claim them in the history, run them through
//! the executor while holding a lease, record their events and outcome. Also
//! the sweeper, which ends jobs whose worker is gone and re-dispatches pending
//! jobs the live state lost.

mod executor;
mod mask;
mod orphans;
mod prepare;
mod processes;
mod run;
mod sweeper;
mod unsafe_yaml;
mod warm;

use crate::credentials::MasterKey;
use crate::sources::GitCache;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalogue::Catalogue;
use crate::live::LiveState;
use crate::store::Store;

pub use crate::settings::ExecutorKind;
pub use executor::{signal_group, ExecError, Executor, RawEvent, RunOutput, StopReason};
pub use mask::Masker;
pub use processes::{end_ssh_masters, job_processes, kill_job_processes, JOB_ID_ENV};
pub use sweeper::Sweeper;

/// Timing of leases and shutdown.
#[derive(Debug, Clone)]
pub struct WorkerTiming {
    /// How long a claim holds without renewal; renewed every third of it.
    pub lease: Duration,
    /// How long running jobs may go on after a shutdown signal before they
    /// are stopped (CANCELED, error_reason SHUTDOWN).
    pub shutdown_grace: Duration,
}

/// A worker process's shared context.
pub struct Worker {
    pub(crate) store: Store,
    pub(crate) live: Arc<dyn LiveState>,
    pub(crate) catalogue: Catalogue,
    pub(crate) executor: Executor,
    pub(crate) timing: WorkerTiming,
    /// Unique per process life: host/pid/random.
    pub(crate) id: String,
    pub(crate) host: String,
    /// The queues (worker groups) this worker takes jobs from.
    pub(crate) queues: Vec<String>,
    pub(crate) resources: RunResources,
}

/// What a worker prepares runs with, beyond the catalogue.
#[derive(Default)]
pub struct RunResources {
    /// Git sources' cache; None without a providers file.
    pub git: Option<Arc<GitCache>>,
    /// Opens the credentials jobs name; None without a master key.
    pub master_key: Option<MasterKey>,
}

impl Worker {
    /// Tells the live state this worker is done with a job it took (claimed
    /// and announced, or found no longer pending). If that fails, the
    /// sweeper reclaims the entry later, which is harmless.
    pub(crate) async fn settle(&self, id: uuid::Uuid) {
        if let Err(e) = self.live.settle(id).await {
            tracing::warn!(job_id = %id, error = %e, "settling a taken job");
        }
    }

    pub fn new(
        store: Store,
        live: Arc<dyn LiveState>,
        catalogue: Catalogue,
        executor: Executor,
        timing: WorkerTiming,
        queues: Vec<String>,
        resources: RunResources,
    ) -> Arc<Worker> {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let id = format!(
            "{host}/{}/{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Arc::new(Worker {
            store,
            live,
            catalogue,
            executor,
            timing,
            id,
            host,
            queues,
            resources,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs up to `concurrency` jobs at a time until `shutdown`; then stops
    /// taking jobs, lets running ones finish within the grace, stops the rest.
    pub async fn run(self: Arc<Self>, concurrency: usize, shutdown: CancellationToken) {
        if concurrency == 0 {
            return;
        }
        tracing::info!(worker = %self.id, concurrency, queues = ?self.queues, "worker started");
        self.reap_orphans().await;
        self.executor.prewarm(concurrency);
        let hard_stop = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let next = tokio::select! {
                next = self.live.next_dispatched(&self.queues, Duration::from_secs(1)) => next,
                _ = shutdown.cancelled() => break,
            };
            let id = match next {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "taking a dispatched job");
                    tokio::time::sleep(crate::retry::DISPATCH_ERROR.first).await;
                    continue;
                }
            };
            let now = chrono::Utc::now();
            let lease_until = crate::domain::later(now, self.timing.lease);
            match self
                .store
                .claim(id, &self.id, &self.host, now, lease_until)
                .await
            {
                Ok(Some(job)) => {
                    let worker = self.clone();
                    let stop = hard_stop.clone();
                    // Every log line of the run carries its job_id.
                    let span = tracing::info_span!("job", job_id = %job.id, attempt = job.attempt);
                    running.spawn(
                        async move {
                            worker.run_job(job, stop).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    tracing::debug!(job_id = %id, "already claimed or no longer pending");
                    self.settle(id).await;
                }
                Err(e) => {
                    // The job stays PENDING in the history and taken in the
                    // live state; the sweeper reclaims it and queues it again.
                    tracing::warn!(job_id = %id, error = %e, "claiming a job");
                    tokio::time::sleep(crate::retry::DISPATCH_ERROR.first).await;
                }
            }
        }
        if !running.is_empty() {
            tracing::info!(
                running = running.len(),
                grace = ?self.timing.shutdown_grace,
                "waiting for running jobs before stopping them"
            );
        }
        let grace = self.timing.shutdown_grace;
        let stopper = hard_stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            stopper.cancel();
        });
        while running.join_next().await.is_some() {}
        timer.abort();
        tracing::info!(worker = %self.id, "worker stopped");
    }
}
