//! Runs one playbook: `ansible-playbook` as a child process in its own process
//! group, with an argument vector (no shell), `--` before the playbook path,
//! extra vars and inventory in files of a private temporary folder, and events
//! read from the repository's callback plugin through an inherited pipe.
//!
//! - `run_files`: the run's private folder and ansible-playbook's arguments;
//! - `supervise`: starting the process, stopping it, waiting for its end;
//! - `output`: its events, stdout and stderr.

mod output;
mod run_files;
mod supervise;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::warm::{AnsibleInstall, WarmPool};
use super::ExecutorKind;
use crate::domain::{HostStats, JobSpec};
use run_files::{run_environment, CALLBACK_PLUGIN};

pub use output::RawEvent;
pub use supervise::signal_group;

/// The start of a run's private folder's name (in the temporary folder):
/// it names the job, so that the folders a killed worker left are found and
/// removed by the worker's next life (see `remove_left_run_folders`).
fn run_folder_prefix(job_id: uuid::Uuid) -> String {
    format!("ars-job-{job_id}-")
}

/// Removes the private folders a dead worker left for `job_id`'s runs
/// (with the credentials written into them), after ending the ssh
/// connection masters whose sockets are inside. Returns how many folders
/// were removed.
pub async fn remove_left_run_folders(job_id: uuid::Uuid) -> usize {
    let prefix = run_folder_prefix(job_id);
    let folders: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    let mut removed = 0;
    for folder in folders {
        crate::worker::processes::end_ssh_masters(&folder.join("cp")).await;
        match tokio::fs::remove_dir_all(&folder).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(job_id = %job_id, folder = %folder.display(), error = %e, "removing a lost run's folder")
            }
        }
    }
    removed
}

/// What a run executes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A playbook file: from the catalogue or from a git checkout.
    Playbook(PathBuf),
    /// A role, through a one-play playbook written for the run.
    Role {
        name: String,
        vars: serde_json::Map<String, serde_json::Value>,
        gather_facts: bool,
    },
}

/// A run as the worker prepared it: what to execute, the git inventory file
/// when the job has one, and the folders of collections installed for it.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub target: Target,
    pub inventory_file: Option<PathBuf>,
    pub collections: Vec<PathBuf>,
    /// The credentials the run gets, opened.
    pub credentials: Vec<crate::domain::credential::Credential>,
}

/// Why a run is being stopped before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancel,
    Timeout,
    Shutdown,
    /// The worker lost its lease: someone else owns the job now.
    LeaseLost,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit code; -1 when ended by a signal.
    pub rc: i32,
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stats: BTreeMap<String, HostStats>,
    /// Set when the run was stopped from outside.
    pub stopped: Option<StopReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not prepare the run: {0}")]
    Prepare(#[source] std::io::Error),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The warm process died during the run, so its end is unknown.
    #[error("{0}")]
    Lost(#[source] std::io::Error),
}

/// Settings shared by every run of a worker.
#[derive(Clone)]
pub struct Executor {
    pub ansible_playbook: PathBuf,
    /// How long a stopped run gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Bytes of stdout kept; the rest is read and dropped.
    pub stdout_cap: usize,
    /// Variables of the worker's environment runs never see: the git
    /// providers' credentials.
    pub hidden_env: Vec<String>,
    /// Warm processes, for the warm executor.
    warm: Option<Arc<WarmPool>>,
}

impl Executor {
    /// An executor of `kind`. The warm executor needs to know the Python
    /// interpreter ansible-playbook runs on (from `ansible-playbook
    /// --version`); without it every run is plain.
    pub async fn new(
        ansible_playbook: PathBuf,
        kill_grace: Duration,
        stdout_cap: usize,
        kind: ExecutorKind,
        hidden_env: Vec<String>,
    ) -> Executor {
        let warm = match kind {
            ExecutorKind::Plain => None,
            ExecutorKind::Warm => match AnsibleInstall::discover(&ansible_playbook).await {
                Some(install) => {
                    let env = run_environment(Path::new(""), Path::new(""));
                    match WarmPool::new(install, env, hidden_env.clone(), CALLBACK_PLUGIN) {
                        Ok(pool) => Some(pool),
                        Err(e) => {
                            tracing::warn!(error = %e, "preparing the warm executor; runs are plain");
                            None
                        }
                    }
                }
                None => {
                    tracing::warn!(
                        ansible_playbook = %ansible_playbook.display(),
                        "`ansible-playbook --version` names no Python interpreter; the warm executor is off and runs are plain"
                    );
                    None
                }
            },
        };
        Executor {
            ansible_playbook,
            kill_grace,
            stdout_cap,
            hidden_env,
            warm,
        }
    }

    /// Which executor runs take (before any fallback).
    pub fn kind(&self) -> ExecutorKind {
        if self.warm.is_some() {
            ExecutorKind::Warm
        } else {
            ExecutorKind::Plain
        }
    }

    /// Starts a warm process per slot ahead of the first runs.
    pub fn prewarm(&self, slots: usize) {
        if let Some(pool) = &self.warm {
            pool.prewarm(slots);
        }
    }

    /// Runs what `prepared` names (resolved inside the catalogue or a git
    /// checkout) for `spec`.
    /// `started` receives the child's process group id once it runs.
    pub async fn run(
        &self,
        job_id: uuid::Uuid,
        prepared: &Prepared,
        spec: &JobSpec,
        events: mpsc::Sender<RawEvent>,
        stop: watch::Receiver<Option<StopReason>>,
        started: impl FnOnce(i32),
    ) -> Result<RunOutput, ExecError> {
        // Private from the start (tempfile leaves the mode to the umask).
        let dir = tempfile::Builder::new()
            .prefix(&run_folder_prefix(job_id))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(ExecError::Prepare)?;
        let args = run_files::prepare(dir.path(), prepared, spec).map_err(ExecError::Prepare)?;
        let env = run_files::source_environment(dir.path(), prepared);

        let (events_read, events_write) = output::pipe().map_err(ExecError::Prepare)?;
        let (stdout_read, stdout_write) = output::pipe().map_err(ExecError::Prepare)?;
        let (stderr_read, stderr_write) = output::pipe().map_err(ExecError::Prepare)?;
        let mut process = self
            .start(
                job_id,
                &args,
                &env,
                dir.path(),
                [&stdout_write, &stderr_write, &events_write],
            )
            .await?;
        // Only the run may hold the write ends: the readers see the end of
        // the output when it (and whatever it started) is gone.
        drop((stdout_write, stderr_write, events_write));
        let pgid = process.pgid();
        tracing::debug!(pgid, executor = process.kind(), "playbook started");
        crate::metrics::get()
            .runs_started
            .get_or_create(&vec![("executor".to_owned(), process.kind().to_owned())])
            .inc();
        started(pgid);

        let stdout = tokio::fs::File::from_std(std::fs::File::from(stdout_read));
        let stderr = tokio::fs::File::from_std(std::fs::File::from(stderr_read));
        let captured = tokio::spawn(output::collect_output(stdout, stderr, self.stdout_cap));
        let reader = tokio::spawn(output::read_events(events_read, events));

        let ended = supervise::wait(&mut process, pgid, job_id, stop, self.kill_grace).await;
        let (stats, (stdout, stdout_truncated)) = output::finish(reader, captured, job_id).await;
        let masters = crate::worker::processes::end_ssh_masters(&dir.path().join("cp")).await;
        if masters > 0 {
            tracing::debug!(job_id = %job_id, masters, "ended the run's ssh connection masters");
        }
        drop(dir);
        if let Some(e) = ended.lost {
            if ended.stopped.is_none() {
                return Err(ExecError::Lost(e));
            }
        }
        Ok(RunOutput {
            rc: ended.rc,
            stdout,
            stdout_truncated,
            stats,
            stopped: ended.stopped,
        })
    }
}
