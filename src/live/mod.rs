//! Live state: each job's current state for fast reads, the dispatch of
//! pending jobs to workers, and the fan-out of events and cancel requests to
//! every process. Redis (fred) when several processes share it; in-process
//! memory for the embedded default. Nothing here is the truth: all of it can
//! be rebuilt from the history.

mod hub;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{Error, Job, JobEvent, JobStatus};

pub use hub::Hub;
pub use memory::MemoryLive;
pub use redis::RedisLive;

/// How long a job's live state is kept after its last update.
pub const JOB_TTL: Duration = Duration::from_secs(crate::defaults::LIVE_STATE_TTL_SECONDS);

/// Largest stdout the live state keeps with a job; a longer one is read
/// from the history when asked for.
const LIVE_STDOUT_MAX: usize = 64 << 10;

/// A job as the live state keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveJob {
    pub job: Job,
    /// The job's stdout was too long to keep here; the history has it.
    #[serde(default)]
    pub stdout_in_history: bool,
}

impl LiveJob {
    pub fn of(job: &Job) -> LiveJob {
        let long = job
            .result
            .as_ref()
            .is_some_and(|r| r.stdout.len() > LIVE_STDOUT_MAX);
        // Copy the job without a long stdout rather than copy it and drop it.
        let kept = match &job.result {
            Some(result) if long => Job {
                result: Some(crate::domain::JobResult {
                    stdout: String::new(),
                    stats: result.stats.clone(),
                    ..*result
                }),
                ..job.clone_without_result()
            },
            _ => job.clone(),
        };
        LiveJob {
            job: kept,
            stdout_in_history: long,
        }
    }
}

/// What watchers of one job receive through the fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveMessage {
    /// An event, published only after it is stored in the history.
    Event(JobEvent),
    /// The job's status changed (committed in the history first).
    Changed { status: JobStatus },
}

pub use crate::domain::validate::DEFAULT_QUEUE;

/// A PENDING job as the dispatch holds it: in its queue, in its place (the
/// order of submission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: Uuid,
    pub queue: String,
    /// The job's created_at in microseconds: its place in the queue.
    pub created_at: i64,
}

impl Queued {
    pub fn of(job: &Job) -> Queued {
        Queued {
            id: job.id,
            queue: job.queue.clone(),
            created_at: crate::domain::to_micros(job.created_at),
        }
    }
}

/// A failure of the live-state backend.
#[derive(Debug, thiserror::Error)]
#[error("live state: {0}")]
pub struct LiveError(pub String);

impl From<LiveError> for Error {
    fn from(e: LiveError) -> Self {
        Error::Unavailable {
            what: "the live state",
            source: Box::new(e),
        }
    }
}

#[async_trait]
pub trait LiveState: Send + Sync + 'static {
    /// Stores the job's current state for `JOB_TTL`, unless a later state
    /// (higher `JobStatus::rank`) is already there: writes may arrive late.
    async fn put_job(&self, job: &Job) -> Result<(), LiveError>;
    /// A new job: stores its state and dispatches it (in one round trip
    /// where the backend can).
    async fn put_and_dispatch(&self, job: &Job) -> Result<(), LiveError> {
        self.put_job(job).await?;
        self.dispatch(&[Queued::of(job)]).await.map(drop)
    }
    /// The job's current state, if known here.
    async fn get_job(&self, id: Uuid) -> Result<Option<LiveJob>, LiveError>;
    /// Forgets a job (pruned from the history).
    async fn forget_job(&self, id: Uuid) -> Result<(), LiveError>;
    /// Queues each PENDING job that is not already waiting in its queue, not
    /// taken by a worker, and not known here as started; returns the ones it
    /// queued. A job's place is its created_at, so a job queued again goes
    /// back to its place. Idempotent: any number of sweepers may call it.
    async fn dispatch(&self, jobs: &[Queued]) -> Result<Vec<Uuid>, LiveError>;
    /// Takes the oldest job waiting in any of `queues`, waiting up to `wait`.
    /// The job is held as taken until `settle`, or until `reclaim` finds the
    /// worker never settled it (it died between taking and claiming).
    async fn next_dispatched(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Uuid>, LiveError>;
    /// The worker that took the job has settled it: its claim is committed
    /// (and its RUNNING state announced), or it found the job no longer
    /// pending.
    async fn settle(&self, id: Uuid) -> Result<(), LiveError>;
    /// Drops taken jobs no worker settled within `idle`, and returns them;
    /// `dispatch` queues those still PENDING again.
    async fn reclaim(&self, idle: Duration) -> Result<Vec<Uuid>, LiveError>;
    /// Jobs waiting in each queue that was ever used, by queue name.
    async fn queue_depths(&self) -> Result<Vec<(String, u64)>, LiveError>;
    /// Jobs waiting in every queue together.
    async fn queue_len(&self) -> Result<u64, LiveError> {
        Ok(self.queue_depths().await?.iter().map(|(_, n)| n).sum())
    }
    /// Keeps a job's secret extra vars until a worker takes them (at most
    /// `JOB_TTL`). They are never written to the history.
    async fn put_secrets(
        &self,
        job_id: Uuid,
        secrets: &Map<String, Value>,
    ) -> Result<(), LiveError>;
    /// Takes (and deletes) a job's secret extra vars.
    async fn take_secrets(&self, job_id: Uuid) -> Result<Option<Map<String, Value>>, LiveError>;
    /// Sends a message to every watcher of the job, in every process.
    async fn publish(&self, job_id: Uuid, message: &LiveMessage) -> Result<(), LiveError>;
    /// Tells every worker that the job should stop.
    async fn publish_cancel(&self, job_id: Uuid) -> Result<(), LiveError>;
    /// This process's receiving end of the fan-out.
    fn hub(&self) -> &Hub;
    /// Releases connections.
    async fn close(&self);
}

/// Subscribes to one job's messages in this process.
pub fn subscribe(live: &dyn LiveState, job_id: Uuid) -> broadcast::Receiver<LiveMessage> {
    live.hub().subscribe(job_id)
}

/// Connects the configured backend: Redis when a URL is given, else memory.
pub async fn connect(
    redis_url: Option<&str>,
    key_prefix: &str,
) -> Result<Arc<dyn LiveState>, Error> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisLive::connect(url, key_prefix).await?),
        None => Arc::new(MemoryLive::new()),
    })
}

/// Publishes a job's new state (already committed to the history) to the
/// live state and to its watchers. Readers fall back to the history while the
/// live state is unreachable; a failed write of a terminal state is retried
/// in the background, so a stale state cannot outlive a short outage.
pub async fn announce(live: &Arc<dyn LiveState>, job: &Job) {
    if job.status.is_terminal() {
        let metrics = crate::metrics::get();
        metrics
            .jobs_finished
            .get_or_create(&crate::metrics::Metrics::label(
                "status",
                job.status.as_str(),
            ))
            .inc();
        if let (Some(started), Some(finished)) = (job.started_at, job.finished_at) {
            metrics
                .job_duration
                .observe((finished - started).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    if let Err(e) = live.put_job(job).await {
        tracing::warn!(job_id = %job.id, error = %e, "updating the live state");
        if job.status.is_terminal() {
            let live = live.clone();
            let job = job.clone();
            tokio::spawn(async move {
                for delay in crate::retry::LIVE_CATCH_UP.delays() {
                    tokio::time::sleep(delay).await;
                    if live.put_job(&job).await.is_ok() {
                        return;
                    }
                }
                tracing::error!(job_id = %job.id, "gave up updating the live state");
            });
        }
    }
    let changed = LiveMessage::Changed { status: job.status };
    if let Err(e) = live.publish(job.id, &changed).await {
        tracing::warn!(job_id = %job.id, error = %e, "publishing a status change");
    }
}
