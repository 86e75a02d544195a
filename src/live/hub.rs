//! This process's side of the fan-out: a broadcast channel per watched job.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;
use uuid::Uuid;

use super::LiveMessage;

/// Messages a watcher may fall behind by before it reads from the history.
const WATCH_BUFFER: usize = 256;

/// This process's side of the fan-out: one broadcast channel per watched job,
/// and one for cancel requests. A lagging receiver is told so and catches up
/// from the history, so a slow watcher never blocks the job or the others.
pub struct Hub {
    jobs: Mutex<HashMap<Uuid, broadcast::Sender<LiveMessage>>>,
    cancels: broadcast::Sender<Uuid>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            jobs: Mutex::new(HashMap::new()),
            cancels: broadcast::channel(1024).0,
        }
    }
}

impl Hub {
    pub fn subscribe(&self, job_id: Uuid) -> broadcast::Receiver<LiveMessage> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|_, sender| sender.receiver_count() > 0);
        jobs.entry(job_id)
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .subscribe()
    }

    pub fn deliver(&self, job_id: Uuid, message: LiveMessage) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = jobs.get(&job_id) {
            if sender.send(message).is_err() {
                jobs.remove(&job_id);
            }
        }
    }

    pub fn cancel_requests(&self) -> broadcast::Receiver<Uuid> {
        self.cancels.subscribe()
    }

    pub fn deliver_cancel(&self, job_id: Uuid) {
        let _ = self.cancels.send(job_id);
    }

    /// Jobs with at least one watcher in this process.
    pub fn watched(&self) -> usize {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.values().filter(|s| s.receiver_count() > 0).count()
    }
}
