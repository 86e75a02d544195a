use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Hub, LiveError, LiveJob, LiveMessage, LiveState, JOB_TTL};
use crate::domain::Job;

type Secrets = Map<String, Value>;

/// The embedded default: live state for a single process, no server needed.
#[derive(Default)]
pub struct MemoryLive {
    jobs: Mutex<HashMap<Uuid, (LiveJob, Instant)>>,
    queue: Mutex<VecDeque<Uuid>>,
    secrets: Mutex<HashMap<Uuid, (Secrets, Instant)>>,
    queued: Notify,
    hub: Hub,
}

impl MemoryLive {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl LiveState for MemoryLive {
    async fn put_job(&self, job: &Job) -> Result<(), LiveError> {
        let now = Instant::now();
        let mut jobs = Self::lock(&self.jobs);
        // Expire lazily, so memory stays bounded by a day of jobs.
        if jobs.len() % 1024 == 0 {
            jobs.retain(|_, (_, expires)| *expires > now);
        }
        match jobs.get(&job.id) {
            Some((current, expires))
                if *expires > now && current.job.status.rank() > job.status.rank() => {}
            _ => {
                jobs.insert(job.id, (LiveJob::of(job), now + JOB_TTL));
            }
        }
        Ok(())
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<LiveJob>, LiveError> {
        let jobs = Self::lock(&self.jobs);
        Ok(jobs
            .get(&id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(job, _)| job.clone()))
    }

    async fn forget_job(&self, id: Uuid) -> Result<(), LiveError> {
        Self::lock(&self.jobs).remove(&id);
        Ok(())
    }

    async fn dispatch(&self, id: Uuid) -> Result<(), LiveError> {
        Self::lock(&self.queue).push_back(id);
        self.queued.notify_one();
        Ok(())
    }

    async fn next_dispatched(&self, wait: Duration) -> Result<Option<Uuid>, LiveError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = Self::lock(&self.queue).pop_front() {
                return Ok(Some(id));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn queue_len(&self) -> Result<u64, LiveError> {
        Ok(Self::lock(&self.queue).len() as u64)
    }

    async fn put_secrets(
        &self,
        job_id: Uuid,
        secrets: &Map<String, Value>,
    ) -> Result<(), LiveError> {
        let now = Instant::now();
        let mut stored = Self::lock(&self.secrets);
        stored.retain(|_, (_, expires)| *expires > now);
        stored.insert(job_id, (secrets.clone(), now + JOB_TTL));
        Ok(())
    }

    async fn take_secrets(&self, job_id: Uuid) -> Result<Option<Map<String, Value>>, LiveError> {
        let now = Instant::now();
        Ok(Self::lock(&self.secrets)
            .remove(&job_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(secrets, _)| secrets))
    }

    async fn publish(&self, job_id: Uuid, message: &LiveMessage) -> Result<(), LiveError> {
        self.hub.deliver(job_id, message.clone());
        Ok(())
    }

    async fn publish_cancel(&self, job_id: Uuid) -> Result<(), LiveError> {
        self.hub.deliver_cancel(job_id);
        Ok(())
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    async fn close(&self) {}
}
