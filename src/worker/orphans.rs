//! Cleaning up after a previous life of a worker on this host: a worker that
//! was killed (`kill -9`, OOM, a crash) leaves its playbooks running in their
//! own process groups. At start, a worker ends those runs and kills their
//! groups, after checking that each group still belongs to that job.

use std::path::Path;

use crate::domain::JobStatus;
use crate::live::announce;

use super::{signal_group, Worker};

/// The variable every run's processes carry, naming their job.
pub const JOB_ID_ENV: &str = "ARS_JOB_ID";

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
            if group_runs_job(Path::new("/proc"), run.pgid, &run.id.to_string()) {
                tracing::warn!(job_id = %run.id, pgid = run.pgid, worker = %run.worker_id, "killing a run left by a dead worker");
                signal_group(run.pgid, libc::SIGKILL);
            }
            if run.status == JobStatus::Running {
                let now = chrono::Utc::now().timestamp_micros();
                match self
                    .store
                    .end_lost_run(run.id, run.attempt, &run.worker_id, now)
                    .await
                {
                    Ok(Some(job)) => announce(self.live.as_ref(), &job).await,
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

/// Whether a process of group `pgid` carries `ARS_JOB_ID=job_id`, so that a
/// group id reused by an unrelated program is never touched.
pub fn group_runs_job(proc: &Path, pgid: i32, job_id: &str) -> bool {
    let marker = format!("{JOB_ID_ENV}={job_id}");
    let Ok(entries) = std::fs::read_dir(proc) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(proc.join(pid).join("stat")) else {
            return false;
        };
        // Fields after the command name (which may hold spaces and parentheses).
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return false;
        };
        let pgrp = rest
            .split_whitespace()
            .nth(2)
            .and_then(|f| f.parse::<i32>().ok());
        if pgrp != Some(pgid) {
            return false;
        }
        std::fs::read(proc.join(pid).join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
            .unwrap_or(false)
    })
}
