//! Supervising a run's process: starting it (in a warm process, or as a plain
//! ansible-playbook in a process group of its own), and waiting for its end
//! while a cancel, a timeout, a shutdown or a lost lease may stop it: SIGTERM
//! to the group, the kill grace, SIGKILL, then whatever is left of the run.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::run_files::{run_environment, EVENTS_FD};
use super::{ExecError, Executor, StopReason};
use crate::worker::processes::{job_processes, kill_what_is_left};
use crate::worker::warm::{WarmRequest, WarmRun};
use crate::worker::JOB_ID_ENV;

/// A started run: a plain ansible-playbook, or a warm process's child.
pub(super) enum Process {
    Plain(tokio::process::Child),
    Warm(WarmRun),
}

impl Process {
    pub(super) fn pgid(&self) -> i32 {
        match self {
            Process::Plain(child) => child.id().map(|pid| pid as i32).unwrap_or(0),
            Process::Warm(run) => run.pid,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Process::Plain(_) => "plain",
            Process::Warm(_) => "warm",
        }
    }

    /// The exit code; -1 when a signal ended the run.
    async fn wait(&mut self) -> std::io::Result<i32> {
        match self {
            Process::Plain(child) => child.wait().await.map(|s| s.code().unwrap_or(-1)),
            Process::Warm(run) => run.wait().await,
        }
    }
}

impl Executor {
    /// Starts the run in a warm process, or as a plain ansible-playbook when
    /// there is no warm executor or it cannot take the run. `fds` are the
    /// write ends of the run's stdout, stderr and event pipe.
    pub(super) async fn start(
        &self,
        job_id: uuid::Uuid,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        [stdout_write, stderr_write, events_write]: [&OwnedFd; 3],
    ) -> Result<Process, ExecError> {
        if let Some(pool) = &self.warm {
            let mut argv = vec![self.ansible_playbook.display().to_string()];
            argv.extend(args.iter().cloned());
            let local_tmp = dir.join("tmp");
            let request = WarmRequest {
                job_id,
                argv,
                cwd: dir,
                local_tmp: &local_tmp,
                fds: [stdout_write, stderr_write, events_write],
                env,
            };
            match pool.start(request).await {
                Ok(run) => return Ok(Process::Warm(run)),
                Err(e) => {
                    // Nothing of a failed hand-over may run beside the plain run.
                    kill_what_is_left(job_id).await;
                    tracing::warn!(job_id = %job_id, error = %e, "the warm executor cannot take the run; running ansible-playbook plainly");
                }
            }
        }
        Ok(Process::Plain(self.spawn_plain(
            job_id,
            args,
            env,
            dir,
            [stdout_write.try_clone(), stderr_write.try_clone()],
            events_write,
        )?))
    }

    /// Starts `ansible-playbook` for a run.
    fn spawn_plain(
        &self,
        job_id: uuid::Uuid,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        [stdout, stderr]: [std::io::Result<OwnedFd>; 2],
        events_write: &OwnedFd,
    ) -> Result<tokio::process::Child, ExecError> {
        let mut command = Command::new(&self.ansible_playbook);
        command
            .args(args)
            .current_dir(dir)
            .envs(run_environment(
                &dir.join("callback_plugins"),
                &dir.join("tmp"),
            ))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(JOB_ID_ENV, job_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout.map_err(ExecError::Prepare)?))
            .stderr(Stdio::from(stderr.map_err(ExecError::Prepare)?))
            .process_group(0)
            .kill_on_drop(true);
        for name in &self.hidden_env {
            command.env_remove(name);
        }
        let write_fd = events_write.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls are made:
        // dup2 places the pipe's write end at EVENTS_FD (clearing CLOEXEC there).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(write_fd, EVENTS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().map_err(|source| ExecError::Spawn {
            program: self.ansible_playbook.display().to_string(),
            source,
        })
    }
}

/// How a supervised run ended.
pub(super) struct Ended {
    /// Exit code; -1 when ended by a signal, or when its end is unknown.
    pub rc: i32,
    /// Set when the run was stopped from outside.
    pub stopped: Option<StopReason>,
    /// Why waiting failed: the warm process died with the run.
    pub lost: Option<std::io::Error>,
}

/// Waits for the run in process group `pgid` to end. A stop request sends
/// SIGTERM to the group and, after the kill grace, SIGKILL. Nothing of the
/// run outlives this: what is left of it is killed.
pub(super) async fn wait(
    process: &mut Process,
    pgid: i32,
    job_id: uuid::Uuid,
    mut stop: watch::Receiver<Option<StopReason>>,
    kill_grace: Duration,
) -> Ended {
    let mut stopped = None;
    let mut watching = true;
    let mut kill_deadline = None;
    let status = loop {
        tokio::select! {
            status = process.wait() => break status,
            changed = stop.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let Some(reason) = *stop.borrow_and_update() else { continue };
                stopped = Some(reason);
                tracing::info!(pgid, ?reason, "stopping the playbook");
                signal_group(pgid, libc::SIGTERM);
                let deadline = tokio::time::Instant::now() + kill_grace;
                kill_deadline = Some(deadline);
                match tokio::time::timeout_at(deadline, process.wait()).await {
                    Ok(status) => break status,
                    Err(_) => {
                        signal_group(pgid, libc::SIGKILL);
                        break process.wait().await;
                    }
                }
            }
        }
    };
    // Nothing of a stopped run may outlive it: what is left in its group,
    // and Ansible's workers and modules, which run in sessions of their
    // own. They get what is left of the grace to exit, then SIGKILL.
    signal_group(pgid, libc::SIGKILL);
    if let Some(deadline) = kill_deadline {
        let job = job_id.to_string();
        while tokio::time::Instant::now() < deadline
            && !job_processes(Path::new("/proc"), &job).is_empty()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let killed = kill_what_is_left(job_id).await;
        if killed > 0 {
            tracing::info!(job_id = %job_id, killed, "killed processes left by the stopped run");
        }
    }
    let mut lost = None;
    let rc = match status {
        Ok(rc) => rc,
        Err(e) => {
            // The warm process died with the run: its end is unknown, and
            // nothing of it may go on.
            tracing::warn!(error = %e, "waiting for the playbook");
            kill_what_is_left(job_id).await;
            lost = Some(e);
            -1
        }
    };
    Ended { rc, stopped, lost }
}

/// Sends `signal` to every process of the group; a gone group is fine.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}
