//! The in-process live state of the embedded default (one process only).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Hub, LiveError, LiveJob, LiveMessage, LiveState, Queued, JOB_TTL};
use crate::domain::Job;

type Secrets = Map<String, Value>;

/// The dispatch: each queue's waiting jobs in order of submission, and the
/// jobs workers took and have not settled yet (with when they took them).
#[derive(Default)]
struct Dispatch {
    queues: HashMap<String, BTreeSet<(i64, Uuid)>>,
    taken: HashMap<Uuid, Instant>,
}

/// The embedded default: live state for a single process, no server needed.
/// Its dispatch keeps the guarantees of the Redis one (see `redis.rs`).
#[derive(Default)]
pub struct MemoryLive {
    jobs: Mutex<HashMap<Uuid, (LiveJob, Instant)>>,
    dispatch: Mutex<Dispatch>,
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

    async fn dispatch(&self, jobs: &[Queued]) -> Result<Vec<Uuid>, LiveError> {
        let mut added = Vec::new();
        {
            let states = Self::lock(&self.jobs);
            let mut dispatch = Self::lock(&self.dispatch);
            let now = Instant::now();
            for job in jobs {
                let started = states
                    .get(&job.id)
                    .is_some_and(|(live, expires)| *expires > now && live.job.status.rank() > 0);
                let Dispatch { queues, taken } = &mut *dispatch;
                let queue = queues.entry(job.queue.clone()).or_default();
                let place = (job.created_at, job.id);
                if started || taken.contains_key(&job.id) || queue.contains(&place) {
                    continue;
                }
                queue.insert(place);
                added.push(job.id);
            }
        }
        if !added.is_empty() {
            self.queued.notify_waiters();
        }
        Ok(added)
    }

    async fn next_dispatched(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Uuid>, LiveError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut dispatch = Self::lock(&self.dispatch);
                let Dispatch {
                    queues: waiting,
                    taken,
                } = &mut *dispatch;
                let oldest = queues
                    .iter()
                    .filter_map(|name| Some((waiting.get(name)?.first()?, name)))
                    .min()
                    .map(|(place, name)| (*place, name.clone()));
                if let Some((place, name)) = oldest {
                    if let Some(queue) = waiting.get_mut(&name) {
                        queue.remove(&place);
                    }
                    taken.insert(place.1, Instant::now());
                    return Ok(Some(place.1));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn settle(&self, id: Uuid) -> Result<(), LiveError> {
        Self::lock(&self.dispatch).taken.remove(&id);
        Ok(())
    }

    async fn reclaim(&self, idle: Duration) -> Result<Vec<Uuid>, LiveError> {
        let now = Instant::now();
        let mut dispatch = Self::lock(&self.dispatch);
        let stale: Vec<Uuid> = dispatch
            .taken
            .iter()
            .filter(|(_, taken_at)| now.duration_since(**taken_at) > idle)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            dispatch.taken.remove(id);
        }
        Ok(stale)
    }

    async fn queue_depths(&self) -> Result<Vec<(String, u64)>, LiveError> {
        let dispatch = Self::lock(&self.dispatch);
        let mut depths: Vec<(String, u64)> = dispatch
            .queues
            .iter()
            .map(|(name, queue)| (name.clone(), queue.len() as u64))
            .collect();
        depths.sort();
        Ok(depths)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::MemoryLive;
    use crate::live::{LiveState, Queued};

    fn queued(queue: &str, created_at: i64) -> Queued {
        Queued {
            id: Uuid::now_v7(),
            queue: queue.into(),
            created_at,
        }
    }

    #[tokio::test]
    async fn a_lost_take_comes_back_in_its_place_once() {
        let live = MemoryLive::new();
        let (early, late, other) = (queued("a", 1), queued("a", 3), queued("b", 2));
        let all = [early.clone(), late.clone(), other.clone()];
        assert_eq!(live.dispatch(&all).await.unwrap().len(), 3);
        assert!(live.dispatch(&all).await.unwrap().is_empty(), "idempotent");

        let queues = ["a".to_owned(), "b".to_owned()];
        let wait = Duration::from_millis(10);
        // The taker dies without settling: the job is held, not queued again.
        assert_eq!(
            live.next_dispatched(&queues, wait).await.unwrap(),
            Some(early.id)
        );
        assert!(live.dispatch(&all).await.unwrap().is_empty());
        assert!(live
            .reclaim(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(live.reclaim(Duration::ZERO).await.unwrap(), vec![early.id]);
        // Queued again, it goes back ahead of the later jobs of every queue.
        assert_eq!(live.dispatch(&all).await.unwrap(), vec![early.id]);
        assert_eq!(
            live.next_dispatched(&queues, wait).await.unwrap(),
            Some(early.id)
        );
        live.settle(early.id).await.unwrap();
        assert_eq!(
            live.next_dispatched(&queues, wait).await.unwrap(),
            Some(other.id)
        );
        assert_eq!(
            live.next_dispatched(&["b".to_owned()], wait).await.unwrap(),
            None,
            "a worker takes from its own queues only"
        );
        assert_eq!(
            live.queue_depths().await.unwrap(),
            vec![("a".to_owned(), 1), ("b".to_owned(), 0)]
        );
    }
}
