//! Cleaning up after a previous life of a worker on this host: a worker that
//! was killed (`kill -9`, OOM, a crash) leaves its playbooks running in their
//! own process groups. At start, a worker ends those runs, kills every
//! process that carries their job id and removes their private folders (with
//! the credentials written there).

use std::path::Path;

use crate::domain::JobStatus;
use crate::live::announce;

use super::executor::remove_left_run_folders;
use super::processes::kill_what_is_left;
use super::Worker;

impl Worker {
    pub(crate) async fn reap_orphans(&self) {
        let runs = match self.store.runs_on_host(&self.host).await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "looking for runs left on this host");
                return;
            }
        };
        for run in runs {
            if run.worker_id == self.id || worker_alive(&run.worker_id) {
                continue;
            }
            let killed = kill_what_is_left(run.id).await;
            if killed > 0 {
                tracing::warn!(job_id = %run.id, killed, worker = %run.worker_id, "killed a run left by a dead worker");
            }
            let folders = remove_left_run_folders(run.id).await;
            if folders > 0 {
                tracing::warn!(job_id = %run.id, folders, "removed the private folder of a run left by a dead worker");
            }
            if run.status == JobStatus::Running {
                let now = chrono::Utc::now();
                match self
                    .store
                    .end_lost_run(run.id, run.attempt, &run.worker_id, now)
                    .await
                {
                    Ok(Some(job)) => announce(&self.live, &job).await,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(job_id = %run.id, error = %e, "ending a lost run"),
                }
            }
            if let Err(e) = self.store.clear_pgid(run.id).await {
                tracing::warn!(job_id = %run.id, error = %e, "forgetting a lost run's process group");
            }
        }
    }
}

/// Whether the process named in a worker id (`host/pid/random`) still runs.
/// Another worker process on this host, or this very process (tests run
/// several workers in one), is alive and owns its runs.
fn worker_alive(worker_id: &str) -> bool {
    let Some(pid) = worker_id
        .split('/')
        .nth(1)
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}
