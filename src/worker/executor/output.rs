//! Reading a run's output: the pipes it writes to, its events from the
//! callback plugin (each line bounded, the per-host stats kept), stdout and
//! stderr up to the cap, and the wait for the pipes to close once the run
//! has ended.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::HostStats;
use crate::worker::processes::kill_what_is_left;

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

/// How long the output pipes may stay open after ansible-playbook exits.
const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

/// A pipe for a run's output. Both ends close on exec: the run gets its write
/// end only where it is handed over explicitly.
pub(super) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
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

/// Waits for the event reader and the output collector to reach the end of
/// their pipes; returns the per-host stats and the captured output.
///
/// The pipes close when every process holding them is gone. Processes that
/// outlive ansible-playbook (it was killed by a signal, or left Ansible
/// workers behind in their own sessions) would keep them open: after a short
/// wait they are killed, so the run always ends.
pub(super) async fn finish(
    mut reader: JoinHandle<BTreeMap<String, HostStats>>,
    mut output: JoinHandle<(String, bool)>,
    job_id: uuid::Uuid,
) -> (BTreeMap<String, HostStats>, (String, bool)) {
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
                let count = kill_what_is_left(job_id).await;
                tracing::warn!(job_id = %job_id, killed = count, "processes outlived ansible-playbook; killed them");
                killed = true;
                deadline = tokio::time::Instant::now() + LEFTOVER_WAIT;
            }
        }
    }
    (stats.unwrap_or_default(), captured.unwrap_or_default())
}

/// Longest event line kept; a longer one (a huge task result) is skipped so
/// that one event cannot take the worker's memory.
const MAX_EVENT_LINE: usize = 4 << 20;

/// Reads the event pipe to its end, forwarding each event and keeping the
/// per-host stats of `playbook_on_stats`.
pub(super) async fn read_events(
    fd: OwnedFd,
    events: mpsc::Sender<RawEvent>,
) -> BTreeMap<String, HostStats> {
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
pub(super) async fn collect_output(
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
