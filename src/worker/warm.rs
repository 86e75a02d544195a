//! The warm executor: a long-lived Python process per worker slot
//! (ansible/warm_executor.py) imports Ansible once and forks one child per
//! run, which runs ansible-playbook's own entry point. A run skips the
//! ~0.4 s of imports; everything else (arguments, files, the callback
//! plugin's events on fd 3, stdout and stderr, the exit code, a process group
//! of its own) is as with `ansible-playbook` started afresh.
//!
//! What Ansible reads at import time (its configuration files, the ANSIBLE_*
//! environment, the installed ansible-core) is fixed in a warm process. The
//! environment is the worker's own and the same for every run; a change of
//! the configuration files or of the installed ansible-core is noticed before
//! each run, and the warm process is replaced by a fresh one. Where no warm
//! process can be had (the interpreter is not found, Ansible does not import,
//! the process dies before it forked the run), the run falls back to a plain
//! `ansible-playbook`, and the pool tries again later.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The server program, shipped inside the binary.
const SERVER: &str = include_str!("../../ansible/warm_executor.py");
/// How long a pool waits after a warm process failed to start before it
/// starts another (runs are plain meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The placeholder job id warm processes are started with: a child writes its
/// run's id over it (same length), see warm_executor.py.
const PLACEHOLDER_JOB_ID: &str = "00000000-0000-0000-0000-000000000000";
/// Lines of a warm process's stderr kept for error messages.
const STDERR_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("no warm process is available (retrying in a while)")]
    Unavailable,
    #[error("could not start the warm process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the warm process ended before it started the run{}", stderr_suffix(.0))]
    Died(String),
    #[error("talking to the warm process: {0}")]
    Io(#[from] std::io::Error),
    #[error("the warm process said something unexpected: {0}")]
    Protocol(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with: {stderr}")
    }
}

/// Where Ansible lives, as `ansible-playbook --version` says.
#[derive(Debug, Clone)]
pub struct AnsibleInstall {
    /// The interpreter ansible-playbook runs on.
    pub python: PathBuf,
    /// The `ansible` package folder.
    pub module_dir: Option<PathBuf>,
}

impl AnsibleInstall {
    /// Asks `ansible_playbook --version`; `None` when it does not name its
    /// Python interpreter.
    pub async fn discover(ansible_playbook: &Path) -> Option<AnsibleInstall> {
        let output = Command::new(ansible_playbook)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .ok()?;
        parse_version(&String::from_utf8_lossy(&output.stdout))
    }
}

/// Reads the interpreter from `python version = 3.11.7 (...) [GCC] (/path)`
/// and the package from `ansible python module location = /path`.
fn parse_version(text: &str) -> Option<AnsibleInstall> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let python = field("python version")?;
    let python = python.strip_suffix(')')?.rsplit_once('(')?.1;
    let python = PathBuf::from(python);
    if !python.is_absolute() {
        return None;
    }
    Some(AnsibleInstall {
        python,
        module_dir: field("ansible python module location").map(PathBuf::from),
    })
}

/// What Ansible read at import: its configuration files and its own release
/// file, with their modification times.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>)>;

/// A run's request to a warm process.
pub struct WarmRequest<'a> {
    pub job_id: uuid::Uuid,
    pub argv: Vec<String>,
    pub cwd: &'a Path,
    pub local_tmp: &'a Path,
    /// The run's stdout, stderr and event pipe (write ends).
    pub fds: [&'a OwnedFd; 3],
    /// Environment of this run only (Ansible settings the child re-reads).
    pub env: &'a [(String, String)],
}

/// One warm process per worker slot, started on demand and kept while idle.
pub struct WarmPool {
    install: AnsibleInstall,
    /// Holds the server program, the callback plugin and Ansible's temporary
    /// folder of the warm processes; removed with the pool.
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Variables of the worker's environment runs never see (credentials).
    hidden_env: Vec<String>,
    idle: Mutex<Vec<WarmServer>>,
    retry_at: Mutex<Option<Instant>>,
}

struct WarmServer {
    child: Child,
    ctl: BufReader<UnixStream>,
    fingerprint: Fingerprint,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Ready(serde_json::Value),
    Started(i32),
    Exited(serde_json::Value),
}

impl WarmPool {
    /// A pool for `install`; `env` is what every run's environment adds
    /// (callback plugin, event descriptor, ...), `callback_plugin` the
    /// plugin's source.
    pub fn new(
        install: AnsibleInstall,
        env: Vec<(String, String)>,
        hidden_env: Vec<String>,
        callback_plugin: &str,
    ) -> std::io::Result<Arc<WarmPool>> {
        let dir = tempfile::Builder::new().prefix("ars-warm-").tempdir()?;
        std::fs::write(dir.path().join("warm_executor.py"), SERVER)?;
        let plugins = dir.path().join("callback_plugins");
        std::fs::create_dir_all(&plugins)?;
        std::fs::write(plugins.join("ars_events.py"), callback_plugin)?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        let mut env = env;
        env.retain(|(k, _)| k != "ANSIBLE_CALLBACK_PLUGINS" && k != "ANSIBLE_LOCAL_TEMP");
        env.push((
            "ANSIBLE_CALLBACK_PLUGINS".into(),
            plugins.display().to_string(),
        ));
        env.push((
            "ANSIBLE_LOCAL_TEMP".into(),
            dir.path().join("tmp").display().to_string(),
        ));
        env.push((super::JOB_ID_ENV.into(), PLACEHOLDER_JOB_ID.into()));
        Ok(Arc::new(WarmPool {
            install,
            dir,
            env,
            hidden_env,
            idle: Mutex::new(Vec::new()),
            retry_at: Mutex::new(None),
        }))
    }

    /// Starts `count` warm processes so that the first runs find them ready.
    pub fn prewarm(&self, count: usize) {
        let mut started = Vec::new();
        for _ in 0..count {
            match self.spawn() {
                Ok(server) => started.push(server),
                Err(e) => {
                    tracing::warn!(error = %e, "starting a warm executor process; runs are plain until one starts");
                    break;
                }
            }
        }
        self.idle.lock().expect("pool lock").extend(started);
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut files: Vec<PathBuf> = Vec::new();
        if let Some(config) = std::env::var_os("ANSIBLE_CONFIG") {
            files.push(config.into());
        }
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".ansible.cfg"));
        }
        files.push("/etc/ansible/ansible.cfg".into());
        if let Some(dir) = &self.install.module_dir {
            files.push(dir.join("release.py"));
        }
        files
            .into_iter()
            .map(|f| {
                let modified = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                (f, modified)
            })
            .collect()
    }

    fn spawn(&self) -> Result<WarmServer, WarmError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(WarmError::Spawn)?;
        let mut command = Command::new(&self.install.python);
        command
            .arg(self.dir.path().join("warm_executor.py"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Not in the worker's group: a Ctrl-C at a terminal is the
            // worker's to handle, as for plain runs.
            .process_group(0)
            .kill_on_drop(true);
        for name in &self.hidden_env {
            command.env_remove(name);
        }
        let fingerprint = self.fingerprint();
        let mut child = command.spawn().map_err(WarmError::Spawn)?;
        drop(command);
        ours.set_nonblocking(true).map_err(WarmError::Spawn)?;
        let ctl = UnixStream::from_std(ours).map_err(WarmError::Spawn)?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(pipe) = child.stderr.take() {
            let kept = stderr.clone();
            let pid = child.id();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(warm_pid = pid, "warm executor: {line}");
                    let mut kept = kept.lock().expect("stderr lock");
                    if kept.len() == STDERR_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            });
        }
        tracing::debug!(pid = child.id(), "warm executor process started");
        Ok(WarmServer {
            child,
            ctl: BufReader::new(ctl),
            fingerprint,
            stderr,
        })
    }

    /// An idle warm process whose Ansible is current, or a new one.
    fn take(&self) -> Result<WarmServer, WarmError> {
        let current = self.fingerprint();
        loop {
            let server = self.idle.lock().expect("pool lock").pop();
            let Some(mut server) = server else { break };
            if server.fingerprint != current {
                tracing::info!("Ansible's configuration or installation changed; replacing a warm executor process");
                continue;
            }
            if matches!(server.child.try_wait(), Ok(None)) {
                return Ok(server);
            }
        }
        if let Some(at) = *self.retry_at.lock().expect("pool lock") {
            if Instant::now() < at {
                return Err(WarmError::Unavailable);
            }
        }
        self.spawn()
    }

    fn failed(&self, error: &WarmError) {
        tracing::error!(error = %error, retry_in = ?RETRY_AFTER, "the warm executor failed; runs are plain until it starts again");
        *self.retry_at.lock().expect("pool lock") = Some(Instant::now() + RETRY_AFTER);
    }

    /// Hands a run to a warm process. On success the run's child is running
    /// in its own process group (`WarmRun::pid`).
    pub async fn start(self: &Arc<Self>, request: WarmRequest<'_>) -> Result<WarmRun, WarmError> {
        let mut server = self.take()?;
        let message = serde_json::json!({
            "argv": request.argv,
            "cwd": request.cwd,
            "local_tmp": request.local_tmp,
            "job_id": request.job_id.to_string(),
            "env": request
                .env
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
        });
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        let fds = request.fds.map(|fd| fd.as_raw_fd());
        let result = async {
            send_with_fds(server.ctl.get_ref(), &line, &fds).await?;
            loop {
                match server.reply().await? {
                    Reply::Ready(info) => {
                        tracing::debug!(%info, "warm executor process ready");
                        continue;
                    }
                    Reply::Started(pid) => return Ok(pid),
                    other => return Err(WarmError::Protocol(format!("{other:?}"))),
                }
            }
        }
        .await;
        match result {
            Ok(pid) => Ok(WarmRun {
                pool: self.clone(),
                server: Some(server),
                pid,
            }),
            Err(e) => {
                let e = match e {
                    WarmError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // Let the stderr reader catch up with the last lines.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), server.child.wait()).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        WarmError::Died(server.stderr_tail())
                    }
                    e => e,
                };
                self.failed(&e);
                Err(e)
            }
        }
    }
}

impl WarmServer {
    async fn reply(&mut self) -> Result<Reply, WarmError> {
        let mut line = String::new();
        if self.ctl.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        serde_json::from_str(&line).map_err(|e| WarmError::Protocol(format!("{e}: {line}")))
    }

    fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().expect("stderr lock");
        kept.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// A run in a warm process's child.
pub struct WarmRun {
    pool: Arc<WarmPool>,
    server: Option<WarmServer>,
    /// The child's pid, also its process group.
    pub pid: i32,
}

impl WarmRun {
    /// Waits for the run to end: its exit code, -1 when a signal ended it.
    /// The warm process goes back to the pool.
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        let Some(server) = self.server.as_mut() else {
            return Err(std::io::Error::other("the run was already waited for"));
        };
        let reply = server.reply().await;
        let server = self.server.take().expect("server");
        match reply {
            Ok(Reply::Exited(value)) => {
                self.pool.idle.lock().expect("pool lock").push(server);
                let rc = value.get("rc").and_then(|rc| rc.as_i64()).unwrap_or(-1);
                Ok(if rc < 0 { -1 } else { rc as i32 })
            }
            Ok(other) => Err(std::io::Error::other(format!(
                "the warm executor said {other:?} instead of the run's end"
            ))),
            Err(e) => Err(std::io::Error::other(format!(
                "the warm executor process ended during the run: {e}{}",
                stderr_suffix(&server.stderr_tail())
            ))),
        }
    }
}

/// Sends `data` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
async fn send_with_fds(socket: &UnixStream, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut sent = socket
        .async_io(tokio::io::Interest::WRITABLE, || {
            sendmsg_fds(socket.as_raw_fd(), data, fds)
        })
        .await?;
    // Descriptors travel with the first byte; the rest is plain data.
    while sent < data.len() {
        let rest = &data[sent..];
        sent += socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                sendmsg_fds(socket.as_raw_fd(), rest, &[])
            })
            .await?;
    }
    Ok(())
}

fn sendmsg_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if fds.is_empty() {
        0
    } else {
        unsafe { libc::CMSG_SPACE(fd_bytes as u32) as usize }
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, aligned, and large
        // enough for one header carrying `fds`; CMSG_FIRSTHDR points into it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(header),
                fd_bytes,
            );
        }
    }
    // SAFETY: msg points at live buffers (iov, control) for the call.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn the_interpreter_is_read_from_the_version() {
        let text = "ansible-playbook [core 2.19.4]\n  config file = None\n  ansible python module location = /usr/lib/python3/dist-packages/ansible\n  executable location = /usr/bin/ansible-playbook\n  python version = 3.11.7 (main, Jan  1 2026, 00:00:00) [GCC 12.2.0] (/usr/bin/python3.11)\n  jinja version = 3.1.6\n";
        let install = parse_version(text).unwrap();
        assert_eq!(install.python, std::path::Path::new("/usr/bin/python3.11"));
        assert_eq!(
            install.module_dir.unwrap(),
            std::path::Path::new("/usr/lib/python3/dist-packages/ansible")
        );
        assert!(parse_version("ansible-playbook 2.x\n").is_none());
        assert!(parse_version("  python version = 3.11 (relative/python)\n").is_none());
    }
}
