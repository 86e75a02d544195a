//! Runs one playbook: `ansible-playbook` as a child process in its own process
//! group, with an argument vector (no shell), `--` before the playbook path,
//! extra vars and inventory in files of a private temporary folder, and events
//! read from the repository's callback plugin through an inherited pipe.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::unsafe_yaml::to_unsafe_yaml;
use super::warm::{AnsibleInstall, WarmPool, WarmRequest, WarmRun};
use super::ExecutorKind;
use crate::domain::{HostStats, Inventory, JobSpec};

/// The callback plugin, shipped inside the binary and written next to each run.
const CALLBACK_PLUGIN: &str = include_str!("../../ansible/callback_plugins/ars_events.py");
/// The file descriptor the child writes events to.
const EVENTS_FD: i32 = 3;

/// Why a run is being stopped before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancel,
    Timeout,
    Shutdown,
    /// The worker lost its lease: someone else owns the job now.
    LeaseLost,
}

/// One event as the callback plugin writes it (see ars_events.py).
#[derive(Debug, Clone, Deserialize)]
pub struct RawEvent {
    pub event: String,
    pub time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub play: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub event_data: Map<String, Value>,
    /// Bytes of the JSON line it came from.
    #[serde(skip)]
    pub size: usize,
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
    /// Warm processes, for the warm executor.
    warm: Option<Arc<WarmPool>>,
}

/// A started run: a plain ansible-playbook, or a warm process's child.
enum Process {
    Plain(tokio::process::Child),
    Warm(WarmRun),
}

impl Process {
    fn pgid(&self) -> i32 {
        match self {
            Process::Plain(child) => child.id().map(|pid| pid as i32).unwrap_or(0),
            Process::Warm(run) => run.pid,
        }
    }

    fn kind(&self) -> &'static str {
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

/// The environment every run gets on top of the worker's: the callback
/// plugin as stdout callback, writing events to EVENTS_FD, no colours, no
/// retry files.
fn run_environment(plugins: &Path, local_tmp: &Path) -> Vec<(String, String)> {
    [
        ("ANSIBLE_CALLBACK_PLUGINS", plugins.display().to_string()),
        ("ANSIBLE_STDOUT_CALLBACK", "ars_events".into()),
        ("ANSIBLE_LOAD_CALLBACK_PLUGINS", "1".into()),
        ("ARS_EVENTS_FD", EVENTS_FD.to_string()),
        ("ANSIBLE_LOCAL_TEMP", local_tmp.display().to_string()),
        ("ANSIBLE_RETRY_FILES_ENABLED", "False".into()),
        ("ANSIBLE_NOCOLOR", "True".into()),
        ("ANSIBLE_FORCE_COLOR", "False".into()),
        ("PYTHONUNBUFFERED", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub const DEFAULT_STDOUT_CAP: usize = 16 << 20;
/// How long the output pipes may stay open after ansible-playbook exits.
const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

impl Executor {
    /// An executor of `kind`. The warm executor needs to know the Python
    /// interpreter ansible-playbook runs on (from `ansible-playbook
    /// --version`); without it every run is plain.
    pub async fn new(
        ansible_playbook: PathBuf,
        kill_grace: Duration,
        stdout_cap: usize,
        kind: ExecutorKind,
    ) -> Executor {
        let warm = match kind {
            ExecutorKind::Plain => None,
            ExecutorKind::Warm => match AnsibleInstall::discover(&ansible_playbook).await {
                Some(install) => {
                    let env = run_environment(Path::new(""), Path::new(""));
                    match WarmPool::new(install, env, CALLBACK_PLUGIN) {
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

    /// Starts `ansible-playbook` for a run.
    fn spawn_plain(
        &self,
        job_id: uuid::Uuid,
        args: &[String],
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
            .env(super::JOB_ID_ENV, job_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout.map_err(ExecError::Prepare)?))
            .stderr(Stdio::from(stderr.map_err(ExecError::Prepare)?))
            .process_group(0)
            .kill_on_drop(true);
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

    /// Runs `playbook` (already resolved inside the catalogue) for `spec`.
    /// `started` receives the child's process group id once it runs.
    pub async fn run(
        &self,
        job_id: uuid::Uuid,
        playbook: &Path,
        spec: &JobSpec,
        events: mpsc::Sender<RawEvent>,
        mut stop: watch::Receiver<Option<StopReason>>,
        started: impl FnOnce(i32),
    ) -> Result<RunOutput, ExecError> {
        let dir = tempfile::Builder::new()
            .prefix("ars-job-")
            .tempdir()
            .map_err(ExecError::Prepare)?;
        let args = prepare(dir.path(), playbook, spec).map_err(ExecError::Prepare)?;

        let (events_read, events_write) = pipe().map_err(ExecError::Prepare)?;
        let (stdout_read, stdout_write) = pipe().map_err(ExecError::Prepare)?;
        let (stderr_read, stderr_write) = pipe().map_err(ExecError::Prepare)?;
        let mut process = None;
        if let Some(pool) = &self.warm {
            let mut argv = vec![self.ansible_playbook.display().to_string()];
            argv.extend(args.iter().cloned());
            let local_tmp = dir.path().join("tmp");
            let request = WarmRequest {
                job_id,
                argv,
                cwd: dir.path(),
                local_tmp: &local_tmp,
                fds: [&stdout_write, &stderr_write, &events_write],
            };
            match pool.start(request).await {
                Ok(run) => process = Some(Process::Warm(run)),
                Err(e) => {
                    // Nothing of a failed hand-over may run beside the plain run.
                    let job = job_id.to_string();
                    let _ =
                        tokio::task::spawn_blocking(move || super::kill_job_processes(&job)).await;
                    tracing::warn!(job_id = %job_id, error = %e, "the warm executor cannot take the run; running ansible-playbook plainly");
                }
            }
        }
        let mut process = match process {
            Some(process) => process,
            None => Process::Plain(self.spawn_plain(
                job_id,
                &args,
                dir.path(),
                [stdout_write.try_clone(), stderr_write.try_clone()],
                &events_write,
            )?),
        };
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
        let output = tokio::spawn(collect_output(stdout, stderr, self.stdout_cap));
        let reader = tokio::spawn(read_events(events_read, events));

        let mut stopped = None;
        let mut lost_end = None;
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
                    let deadline = tokio::time::Instant::now() + self.kill_grace;
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
                && !super::job_processes(Path::new("/proc"), &job).is_empty()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let killed = tokio::task::spawn_blocking(move || super::kill_job_processes(&job))
                .await
                .unwrap_or(0);
            if killed > 0 {
                tracing::info!(job_id = %job_id, killed, "killed processes left by the stopped run");
            }
        }
        let rc = match status {
            Ok(rc) => rc,
            Err(e) => {
                // The warm process died with the run: its end is unknown, and
                // nothing of it may go on.
                tracing::warn!(error = %e, "waiting for the playbook");
                let job = job_id.to_string();
                let _ = tokio::task::spawn_blocking(move || super::kill_job_processes(&job)).await;
                lost_end = Some(e);
                -1
            }
        };
        // The pipes close when every process holding them is gone. Processes
        // that outlive ansible-playbook (it was killed by a signal, or left
        // Ansible workers behind in their own sessions) would keep them open:
        // after a short wait they are killed, so the run always ends.
        let mut reader = reader;
        let mut output = output;
        let mut stats = None;
        let mut captured = None;
        let mut deadline = tokio::time::Instant::now() + LEFTOVER_WAIT;
        let mut killed = false;
        while stats.is_none() || captured.is_none() {
            tokio::select! {
                done = &mut reader, if stats.is_none() => stats = Some(done.unwrap_or_default()),
                done = &mut output, if captured.is_none() => captured = Some(done.unwrap_or_default()),
                _ = tokio::time::sleep_until(deadline) => {
                    if killed {
                        reader.abort();
                        output.abort();
                        break;
                    }
                    let job = job_id.to_string();
                    let count = tokio::task::spawn_blocking(move || super::kill_job_processes(&job))
                        .await
                        .unwrap_or(0);
                    tracing::warn!(job_id = %job_id, killed = count, "processes outlived ansible-playbook; killed them");
                    killed = true;
                    deadline = tokio::time::Instant::now() + LEFTOVER_WAIT;
                }
            }
        }
        let stats = stats.unwrap_or_default();
        let (stdout, stdout_truncated) = captured.unwrap_or_default();
        drop(dir);
        if let Some(e) = lost_end {
            if stopped.is_none() {
                return Err(ExecError::Lost(e));
            }
        }
        Ok(RunOutput {
            rc,
            stdout,
            stdout_truncated,
            stats,
            stopped,
        })
    }
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

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    })
}

fn local_connection() -> Value {
    json!({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    })
}

/// Writes the run's files and returns ansible-playbook's arguments.
fn prepare(dir: &Path, playbook: &Path, spec: &JobSpec) -> std::io::Result<Vec<String>> {
    let plugins = dir.join("callback_plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(plugins.join("ars_events.py"), CALLBACK_PLUGIN)?;

    let inventory = match &spec.inventory {
        Inventory::Localhost => json!({"all": {"hosts": {"localhost": local_connection()}}}),
        Inventory::Hosts(hosts) => {
            // Named in a list, localhost keeps the local connection Ansible
            // gives its implicit localhost, instead of SSH to itself.
            let hosts: Map<String, Value> = hosts
                .iter()
                .map(|h| {
                    let vars = match h.as_str() {
                        "localhost" | "127.0.0.1" => local_connection(),
                        _ => Value::Null,
                    };
                    (h.clone(), vars)
                })
                .collect();
            json!({"all": {"hosts": hosts}})
        }
        // The caller's inventory is data: its values are never templated.
        Inventory::Inline(doc) => {
            return write_files(dir, &to_unsafe_yaml(&Value::Object(doc.clone())), spec)
                .map(|paths| arguments(paths, playbook, spec));
        }
    };
    // Our own inventory (validated host names, our variables) is plain JSON,
    // which is YAML too.
    write_files(dir, &inventory.to_string(), spec).map(|paths| arguments(paths, playbook, spec))
}

/// Writes the inventory and the extra vars (marked unsafe: data, never
/// templates), readable by the service's user only.
fn write_files(dir: &Path, inventory: &str, spec: &JobSpec) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let write = |path: &Path, text: &str| -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?
            .write_all(text.as_bytes())
    };
    let inventory_path = dir.join("inventory.yml");
    write(&inventory_path, inventory)?;
    let vars_path = dir.join("extra_vars.yml");
    write(
        &vars_path,
        &to_unsafe_yaml(&Value::Object(spec.extra_vars.clone())),
    )?;
    Ok((inventory_path, vars_path))
}

/// ansible-playbook's argument vector: options, then `--`, then the playbook.
fn arguments(
    (inventory_path, vars_path): (PathBuf, PathBuf),
    playbook: &Path,
    spec: &JobSpec,
) -> Vec<String> {
    let mut args = vec![
        "-i".to_owned(),
        inventory_path.display().to_string(),
        "-e".to_owned(),
        format!("@{}", vars_path.display()),
    ];
    let options = &spec.options;
    if options.check {
        args.push("--check".into());
    }
    if options.diff {
        args.push("--diff".into());
    }
    if !options.tags.is_empty() {
        args.push(format!("--tags={}", options.tags.join(",")));
    }
    if !options.skip_tags.is_empty() {
        args.push(format!("--skip-tags={}", options.skip_tags.join(",")));
    }
    if !options.limit.is_empty() {
        args.push(format!("--limit={}", options.limit));
    }
    if options.forks > 0 {
        args.push(format!("--forks={}", options.forks));
    }
    if options.verbosity > 0 {
        args.push(format!(
            "-{}",
            "v".repeat(options.verbosity.min(4) as usize)
        ));
    }
    args.push("--".into());
    args.push(playbook.display().to_string());
    args
}

/// Longest event line kept; a longer one (a huge task result) is skipped so
/// that one event cannot take the worker's memory.
const MAX_EVENT_LINE: usize = 4 << 20;

/// Reads the event pipe to its end, forwarding each event and keeping the
/// per-host stats of `playbook_on_stats`.
async fn read_events(fd: OwnedFd, events: mpsc::Sender<RawEvent>) -> BTreeMap<String, HostStats> {
    let mut stats = BTreeMap::new();
    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line, MAX_EVENT_LINE).await {
            Ok(None) => break,
            Ok(Some(false)) => tracing::warn!(
                limit = MAX_EVENT_LINE,
                "skipped an event line over the limit"
            ),
            Ok(Some(true)) => match serde_json::from_slice::<RawEvent>(&line) {
                Ok(mut event) => {
                    event.size = line.len();
                    if event.event == "playbook_on_stats" {
                        stats = host_stats(&event.event_data);
                    }
                    // A closed receiver means nobody records events any more;
                    // keep draining so the playbook never blocks on the pipe.
                    let _ = events.send(event).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable event line from the callback plugin")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "reading events");
                break;
            }
        }
    }
    stats
}

/// Reads one line into `out` (without its newline). `None` at the end of the
/// input; `Some(false)` when the line was longer than `max` and was dropped.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let mut read_any = false;
    let mut overflow = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(read_any.then_some(!overflow));
        }
        read_any = true;
        let newline = buf.iter().position(|b| *b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        if !overflow {
            if out.len() + chunk.len() > max {
                overflow = true;
                out.clear();
            } else {
                out.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(!overflow));
        }
    }
}

/// Picks one counter of a host's stats.
type StatField = fn(&mut HostStats) -> &mut u32;

/// Per-host counters from ansible-runner's stats layout.
fn host_stats(data: &Map<String, Value>) -> BTreeMap<String, HostStats> {
    let mut stats: BTreeMap<String, HostStats> = BTreeMap::new();
    let fields: [(&str, StatField); 7] = [
        ("ok", |s| &mut s.ok),
        ("changed", |s| &mut s.changed),
        ("failures", |s| &mut s.failed),
        ("skipped", |s| &mut s.skipped),
        ("dark", |s| &mut s.unreachable),
        ("rescued", |s| &mut s.rescued),
        ("ignored", |s| &mut s.ignored),
    ];
    for (key, field) in fields {
        if let Some(Value::Object(per_host)) = data.get(key) {
            for (host, count) in per_host {
                *field(stats.entry(host.clone()).or_default()) = count.as_u64().unwrap_or(0) as u32;
            }
        }
    }
    if let Some(Value::Object(processed)) = data.get("processed") {
        for host in processed.keys() {
            stats.entry(host.clone()).or_default();
        }
    }
    stats
}

/// Reads stdout and stderr to their ends, keeping the first `cap` bytes.
async fn collect_output(
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    cap: usize,
) -> (String, bool) {
    let (out, err) = tokio::join!(drain(stdout, cap), drain(stderr, cap));
    let (mut text, mut truncated) = out;
    let (err_text, err_truncated) = err;
    if !err_text.is_empty() {
        let room = cap.saturating_sub(text.len());
        if err_text.len() > room {
            truncated = true;
        }
        text.push_str(truncate_utf8(&err_text, room));
    }
    (text, truncated || err_truncated)
}

async fn drain(mut pipe: impl AsyncRead + Unpin, cap: usize) -> (String, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    let text = String::from_utf8_lossy(&kept);
    (truncate_utf8(&text, cap).to_owned(), truncated)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::read_line_bounded;

    #[tokio::test]
    async fn long_lines_are_dropped_whole() {
        let input = format!("short\n{}\nnext\nlast", "x".repeat(100));
        let mut reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
        let mut line = Vec::new();
        let mut seen = Vec::new();
        while let Some(kept) = read_line_bounded(&mut reader, &mut line, 10).await.unwrap() {
            seen.push(kept.then(|| String::from_utf8(line.clone()).unwrap()));
            line.clear();
        }
        assert_eq!(
            seen,
            vec![
                Some("short".into()),
                None,
                Some("next".into()),
                Some("last".into())
            ]
        );
    }
}
