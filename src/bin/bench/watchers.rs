//! Section (e): WatchJob fan-out: many streams (from a child process, the
//! watcher client) on one multi-task job; delivery delay at the last watcher,
//! order checks, and the server's resident memory per watcher.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ansible_runner_service::live::LiveMessage;
use ansible_runner_service::pb::{
    self, job_service_client::JobServiceClient, watch_job_response::Kind,
};
use ansible_runner_service::server;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::harness::{now_us, progress, submit, summary_ms, Bench, Service};

/// Watch streams per HTTP/2 connection in section (e).
const WATCHERS_PER_CHANNEL: usize = 50;
/// The job watched in section (e): two plays, several hosts, loops.
const FANOUT_PLAYBOOK: &str = "multi.yml";

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Hands the heap's free pages back to the system, so that the resident
/// memory measured next reflects what is in use, not earlier sections' garbage.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// (e) WatchJob fan-out.
///
/// The job is submitted to a service without workers, so it waits PENDING
/// while the watchers connect (from a child process: the resident memory
/// read here is then the server's alone). Once every watcher has its
/// snapshot, workers start in this process and run it.
///
/// Delay reference: the service exposes no commit time for an event, so the
/// reference is the first moment the event is seen outside the worker after
/// its commit: the earlier of (1) this process's fan-out hub receiving it
/// (the bench subscribes to the hub as a watch stream does; the worker
/// publishes an event only after committing it, and the hub gets it back a
/// Redis round trip later) and (2) the first watcher receiving it (a watch
/// stream may read it from the history before the fan-out brings it). Both
/// come after the commit, so delays from it are at most the true ones. The
/// hub alone is not enough: under load its task runs late, and watchers that
/// re-read the history get events before it. The figure compared with the
/// target is, per event, the delay from the reference to the delivery at the
/// last watcher, p99 over the events. Also reported: the delay of every
/// delivery, how often the first receipt came before the hub's, and the
/// delay from the event's own timestamp (set by Ansible's callback: it adds
/// the worker's reading, batching and commit).
pub async fn section_e(bench: &mut Bench) -> Value {
    let watchers = bench.args.watchers;
    let mut settings = bench.settings("e").await;
    settings.workers = 0;
    settings.max_watches_per_client = watchers + 16;
    let service = Service::start(&settings).await;
    progress(&format!("(e) WatchJob fan-out: {watchers} watchers"));
    let job_id = submit(&service.client, FANOUT_PLAYBOOK).await;
    let id = uuid::Uuid::parse_str(&job_id).expect("job id");

    // The hub's receipts, taken on a thread of its own: a task of the
    // runtime would be woken only after many of the watch streams' tasks.
    let mut hub = service.state.live.hub().subscribe(id);
    let reference = std::thread::spawn(move || {
        let mut received = BTreeMap::new();
        let mut lagged = false;
        loop {
            match hub.blocking_recv() {
                Ok(LiveMessage::Event(event)) => {
                    received.entry(event.seq).or_insert_with(now_us);
                }
                Ok(LiveMessage::Changed { status }) if status.is_terminal() => break,
                Ok(LiveMessage::Changed { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        (received, lagged)
    });

    trim_heap();
    let rss_before = rss_kib();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--watch-client", &service.url, "--watch-job", &job_id])
        .args(["--watchers", &watchers.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the watcher client");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let connecting = Instant::now();
    let ready = lines.next_line().await.expect("watcher client");
    assert_eq!(ready.as_deref(), Some("ready"), "watcher client");
    let connect_seconds = connecting.elapsed().as_secs_f64();
    // Idle watchers still read the history (each re-checks it every 2 s):
    // count MariaDB's statements over a few seconds of it.
    let idle_before = bench.global_status("Questions").await;
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle_after = bench.global_status("Questions").await;
    let idle_queries = idle_before
        .zip(idle_after)
        .map(|(before, after)| (after - before) as f64 / idle.elapsed().as_secs_f64());
    trim_heap();
    let rss_connected = rss_kib();

    // Run the job: workers of this process, on the same live state.
    let questions_before = bench.global_status("Questions").await;
    let running = Instant::now();
    let mut worker_settings = settings.clone();
    worker_settings.workers = 1;
    let stop_workers = CancellationToken::new();
    let workers = tokio::spawn({
        let (state, token) = (service.state.clone(), stop_workers.clone());
        async move { server::run_workers(state, &worker_settings, token).await }
    });
    let mut rss_peak = rss_connected;
    let result = loop {
        tokio::select! {
            line = lines.next_line() => break line.expect("watcher client"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => rss_peak = rss_peak.max(rss_kib()),
        }
    };
    let run_seconds = running.elapsed().as_secs_f64();
    let questions_after = bench.global_status("Questions").await;
    let _ = child.wait().await;
    let client: Value = serde_json::from_str(&result.expect("the watcher client's figures"))
        .expect("watcher client JSON");
    let (reference, lagged) = tokio::task::spawn_blocking(move || reference.join())
        .await
        .expect("reference")
        .expect("reference thread");
    stop_workers.cancel();
    let _ = workers.await;
    let status = service
        .state
        .store
        .get_job(id)
        .await
        .ok()
        .flatten()
        .map(|j| j.status.as_str().to_owned());
    service.stop().await;

    // Delays per event, in milliseconds.
    let (mut last, mut all, mut spread, mut own_time) = (vec![], vec![], vec![], vec![]);
    let (mut missing_reference, mut watcher_first) = (0, 0);
    let mut missing_deliveries = 0;
    let events = client["events"].as_array().cloned().unwrap_or_default();
    for event in &events {
        let seq = event["seq"].as_u64().unwrap_or(0);
        let receipts: Vec<i64> = event["receipts_us"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        missing_deliveries += watchers.saturating_sub(receipts.len());
        let (Some(&first), Some(&latest)) = (receipts.iter().min(), receipts.iter().max()) else {
            continue;
        };
        spread.push((latest - first) as f64 / 1e3);
        if let Some(time) = event["time_us"].as_i64() {
            own_time.push((latest - time) as f64 / 1e3);
        }
        let at = match reference.get(&seq) {
            Some(&hub) if hub <= first => hub,
            Some(_) => {
                watcher_first += 1;
                first
            }
            None => {
                missing_reference += 1;
                first
            }
        };
        last.push((latest - at) as f64 / 1e3);
        all.extend(receipts.iter().map(|r| (r - at) as f64 / 1e3));
    }
    let per_watcher = (rss_connected as f64 - rss_before as f64) / watchers.max(1) as f64;
    let queries = questions_before
        .zip(questions_after)
        .map(|(before, after)| (after - before) as f64 / run_seconds);
    json!({
        "playbook": FANOUT_PLAYBOOK,
        "watchers": watchers,
        "watchers_per_connection": WATCHERS_PER_CHANNEL,
        "job_status": status,
        "events": events.len(),
        "events_at_the_hub": reference.len(),
        "hub_lagged": lagged,
        "events_missed_by_the_hub": missing_reference,
        "events_first_seen_by_a_watcher": watcher_first,
        "complete_watchers": client["complete"],
        "sequence_errors": client["errors"],
        "missing_deliveries": missing_deliveries,
        "error_samples": client["error_samples"],
        "connect_seconds": connect_seconds,
        "run_seconds": run_seconds,
        "delay_at_last_watcher": summary_ms(last),
        "delay_every_delivery": summary_ms(all),
        "spread_first_to_last_watcher": summary_ms(spread),
        "delay_at_last_watcher_from_event_time": summary_ms(own_time),
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "rss_peak_running_kib": rss_peak,
        "rss_per_watcher_kib": per_watcher,
        "mariadb_queries_per_second_while_running": queries,
        "mariadb_queries_per_second_idle_watchers": idle_queries,
    })
}

/// What one watcher saw.
#[derive(Default)]
struct Watched {
    snapshot: bool,
    terminal: bool,
    /// (sequence, received at µs, the event's own time µs)
    receipts: Vec<(u64, i64, Option<i64>)>,
    errors: Vec<String>,
}

async fn watch_one(
    mut client: JobServiceClient<Channel>,
    job_id: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Watched {
    let mut seen = Watched::default();
    let mut signalled = false;
    let opened = client
        .watch_job(pb::WatchJobRequest {
            job_id,
            after_sequence: 0,
        })
        .await;
    let mut stream = match opened {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            seen.errors.push(format!("WatchJob: {status}"));
            let _ = ready.send(()).await;
            return seen;
        }
    };
    let mut next = 1;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                seen.errors.push(format!("stream: {status}"));
                break;
            }
        };
        let at = now_us();
        match message.kind {
            Some(Kind::Snapshot(_)) if !seen.snapshot && seen.receipts.is_empty() => {
                seen.snapshot = true;
                signalled = true;
                let _ = ready.send(()).await;
            }
            Some(Kind::Event(event)) if seen.snapshot && !seen.terminal => {
                if event.sequence != next || message.sequence != event.sequence {
                    seen.errors
                        .push(format!("event {} where {next} was due", event.sequence));
                }
                next = event.sequence + 1;
                let time = event
                    .time
                    .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
                seen.receipts.push((event.sequence, at, time));
            }
            Some(Kind::StatusChange(_)) if seen.snapshot && !seen.terminal => {
                seen.terminal = true;
                if message.sequence != next - 1 {
                    seen.errors.push(format!(
                        "terminal status after event {}, but {} was the last received",
                        message.sequence,
                        next - 1
                    ));
                }
            }
            other => {
                let what = match other {
                    Some(Kind::Snapshot(_)) => "snapshot",
                    Some(Kind::Event(_)) => "event",
                    Some(Kind::StatusChange(_)) => "status change",
                    None => "empty message",
                };
                seen.errors.push(format!("unexpected {what}"));
            }
        }
    }
    if !signalled {
        let _ = ready.send(()).await;
    }
    if !seen.terminal {
        seen.errors
            .push("the stream ended without the terminal status".into());
    }
    seen
}

/// The child process of section (e): opens the watch streams, prints `ready`
/// once each has its snapshot, then, when every stream has ended, one JSON
/// line with what they received.
pub async fn watch_client(url: String, job_id: String, watchers: usize) {
    let channels: Vec<Channel> = (0..watchers.div_ceil(WATCHERS_PER_CHANNEL))
        .map(|_| {
            Channel::from_shared(url.clone())
                .expect("url")
                .connect_lazy()
        })
        .collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(watchers.max(1));
    let tasks: Vec<_> = (0..watchers)
        .map(|w| {
            let client = JobServiceClient::new(channels[w / WATCHERS_PER_CHANNEL].clone())
                .max_decoding_message_size(32 << 20);
            tokio::spawn(watch_one(client, job_id.clone(), ready_tx.clone()))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    println!("ready");
    let mut events: BTreeMap<u64, (Option<i64>, Vec<i64>)> = BTreeMap::new();
    let (mut complete, mut errors) = (0, 0);
    let mut samples: Vec<String> = Vec::new();
    for task in tasks {
        let seen = task.await.expect("watcher");
        if seen.errors.is_empty() && seen.snapshot && seen.terminal {
            complete += 1;
        }
        errors += seen.errors.len();
        for error in seen.errors {
            if samples.len() < 5 && !samples.contains(&error) {
                samples.push(error);
            }
        }
        for (seq, at, time) in seen.receipts {
            let entry = events.entry(seq).or_default();
            entry.0 = entry.0.or(time);
            entry.1.push(at);
        }
    }
    let events: Vec<Value> = events
        .into_iter()
        .map(
            |(seq, (time, receipts))| json!({"seq": seq, "time_us": time, "receipts_us": receipts}),
        )
        .collect();
    println!(
        "{}",
        json!({"complete": complete, "errors": errors, "error_samples": samples, "events": events})
    );
}
