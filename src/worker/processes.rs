//! Every process of a run carries `ARS_JOB_ID=<job id>` in its environment.
//! That is how the service finds all of them: Ansible's own workers leave the
//! playbook's process group (they call setsid), so a signal to the group does
//! not reach them or the modules they run.

use std::path::Path;

/// The variable every run's processes carry, naming their job.
pub const JOB_ID_ENV: &str = "ARS_JOB_ID";

/// Live (not zombie) processes under `proc` whose environment names the job.
pub fn job_processes(proc: &Path, job_id: &str) -> Vec<i32> {
    let marker = format!("{JOB_ID_ENV}={job_id}");
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The state follows the command name, which may hold spaces and ')'.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            if state == "Z" || state == "X" {
                return None;
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// SIGKILLs every process of the job, again until none is left (a process
/// may fork while it is being killed). Returns how many were signalled.
pub fn kill_job_processes(job_id: &str) -> usize {
    let mut killed = 0;
    for _ in 0..20 {
        let pids = job_processes(Path::new("/proc"), job_id);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        killed += pids.len();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed
}

/// Ends the ssh connection masters (ControlPersist) a finished run left: they
/// would hold its connections open, with sockets in its removed folder, for
/// another minute. A master rewrites its command line (and with it the
/// environment the job id is found by) to `ssh: <control path> [mux]`, so
/// it is found by its control path in the run's folder. Returns how many
/// there were.
pub async fn end_ssh_masters(control_dir: &Path) -> usize {
    let marker = format!("ssh: {}/", control_dir.display());
    tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let masters: Vec<i32> = entries
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                (comm.trim() == "ssh" && String::from_utf8_lossy(&cmdline).starts_with(&marker))
                    .then_some(pid)
            })
            .collect();
        for pid in &masters {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(*pid, libc::SIGTERM);
            }
        }
        masters.len()
    })
    .await
    .unwrap_or(0)
}

/// Kills what is left of a run: every process that carries its job id, off
/// the async threads (it reads /proc and sleeps between rounds). Returns how
/// many were signalled.
pub async fn kill_what_is_left(job_id: uuid::Uuid) -> usize {
    let job = job_id.to_string();
    tokio::task::spawn_blocking(move || kill_job_processes(&job))
        .await
        .unwrap_or(0)
}
