//! Running git for the cache: hardened (no hooks, no system or user
//! configuration, no prompts, only the provider's protocol, no redirects,
//! objects checked on receipt), bounded (a timeout and a size limit, both
//! ending the whole process group) and given credentials only through the
//! askpass helper, never on its command line or in a URL.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::domain::source::{CredentialFrom, Provider, Scheme};

/// The askpass helper git runs for a user name or a password. It holds no
/// secret: it prints the user name from its environment and the credential
/// from the file or the environment variable the provider names.
const ASKPASS: &str = r#"#!/bin/sh
# ansible-runner-service: git's askpass helper (holds no secret).
case "$1" in
  Username*|username*) printf '%s\n' "$ARS_GIT_USER" ;;
  *)
    if [ -n "$ARS_GIT_CREDENTIAL_FILE" ]; then
      head -n 1 -- "$ARS_GIT_CREDENTIAL_FILE"
    elif [ -n "$ARS_GIT_CREDENTIAL_ENV" ]; then
      printenv -- "$ARS_GIT_CREDENTIAL_ENV"
    fi ;;
esac
"#;

/// Writes the askpass helper under `dir` (mode 0700) and returns its path.
pub(super) fn write_askpass(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("askpass.sh");
    let tmp = dir.join(format!(".askpass.{}", std::process::id()));
    std::fs::write(&tmp, ASKPASS)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Why a git command failed.
#[derive(Debug)]
pub(super) enum GitError {
    /// It exited non-zero; its last lines of stderr (credential-free).
    Failed(String),
    TimedOut(Duration),
    /// The watched folder grew past the limit.
    TooLarge(u64),
    Io(std::io::Error),
}

/// One git invocation.
pub(super) struct GitCommand<'a> {
    pub askpass: &'a Path,
    pub home: &'a Path,
    /// The provider whose repository is reached (credentials, protocol);
    /// None for local-only commands.
    pub provider: Option<&'a Provider>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Kill git when this folder grows past this many bytes.
    pub watch: Option<(PathBuf, u64)>,
}

impl GitCommand<'_> {
    /// Runs git and returns its stdout.
    pub async fn run(self) -> Result<String, GitError> {
        let mut command = Command::new("git");
        let protocol = self.provider.map_or("file", |p| p.scheme.as_str());
        command.env_clear();
        for (name, value) in passed_through() {
            command.env(name, value);
        }
        command
            .env("HOME", self.home)
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", protocol)
            .env("GIT_LFS_SKIP_SMUDGE", "1")
            .env("GIT_ASKPASS", self.askpass)
            .env("SSH_ASKPASS", self.askpass)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.allow=never",
                "-c",
                &format!("protocol.{protocol}.allow=always"),
                "-c",
                "http.followRedirects=false",
                "-c",
                "credential.helper=",
                "-c",
                "transfer.fsckObjects=true",
                "-c",
                "submodule.recurse=false",
                "-c",
                "fetch.recurseSubmodules=false",
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
                "-c",
                "core.fsmonitor=false",
                // A server that stalls is given up after a minute below 1 KB/s.
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=60",
            ])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut secret = None;
        if let Some(provider) = self.provider {
            command.env("ARS_GIT_USER", &provider.username);
            match &provider.credential {
                Some(CredentialFrom::Env(var)) => {
                    command.env("ARS_GIT_CREDENTIAL_ENV", var);
                    if let Some(value) = std::env::var_os(var) {
                        secret = Some(value.to_string_lossy().into_owned());
                        command.env(var, value);
                    }
                }
                Some(CredentialFrom::File(path)) => {
                    command.env("ARS_GIT_CREDENTIAL_FILE", path);
                    secret = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|t| t.lines().next().map(str::to_owned));
                }
                None => {}
            }
            if provider.scheme == Scheme::File {
                command.env("GIT_PROTOCOL_FROM_USER", "0");
            }
        }
        let child = command.spawn().map_err(GitError::Io)?;
        let pgid = child.id().map(|p| p as i32);
        // Dropped (a cancel, the timeout of the run) or done: nothing git
        // started outlives it (git-remote-http, index-pack).
        let mut group = KillGroupOnDrop(pgid);
        let output = child.wait_with_output();
        let watched = async {
            match &self.watch {
                Some((dir, limit)) => loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let dir = dir.clone();
                    let size = tokio::task::spawn_blocking(move || folder_size(&dir))
                        .await
                        .unwrap_or(0);
                    if size > *limit {
                        return *limit;
                    }
                },
                None => std::future::pending().await,
            }
        };
        let kill = || {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) on the process group git leads.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        };
        let output = tokio::select! {
            output = output => output,
            _ = tokio::time::sleep(self.timeout) => {
                kill();
                group.disarm();
                return Err(GitError::TimedOut(self.timeout));
            }
            limit = watched => {
                kill();
                group.disarm();
                return Err(GitError::TooLarge(limit));
            }
        };
        // Ended and reaped: its group id may be reused from now on.
        group.disarm();
        let output = output.map_err(GitError::Io)?;
        if output.status.success() {
            // What arrived between two looks, or faster than the first.
            if let Some((dir, limit)) = &self.watch {
                if folder_size(dir) > *limit {
                    return Err(GitError::TooLarge(*limit));
                }
            }
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let keep = lines.len().saturating_sub(3);
        lines.drain(..keep);
        let mut text = lines.join("; ");
        if let Some(secret) = secret.filter(|s| s.len() >= 4) {
            text = text.replace(&secret, "********");
        }
        if text.is_empty() {
            text = format!("git exited with {}", output.status);
        }
        Err(GitError::Failed(text))
    }
}

/// Kills a process group when dropped before `disarm` (the future that
/// waited for its leader was dropped: a cancel, a timeout).
pub(crate) struct KillGroupOnDrop(pub Option<i32>);

impl KillGroupOnDrop {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) on a process group this process started; a
            // group that already ended makes it fail harmlessly.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// What git (and ansible-galaxy) keep of the worker's environment: the
/// search path, and how to reach servers (proxies, CA bundles).
pub(crate) fn passed_through() -> Vec<(String, std::ffi::OsString)> {
    const KEPT: [&str; 11] = [
        "PATH",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "GIT_SSL_CAINFO",
    ];
    KEPT.iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (name.to_string(), v)))
        .collect()
}

/// Bytes of the files under `dir` (not following links).
pub(super) fn folder_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => folder_size(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
