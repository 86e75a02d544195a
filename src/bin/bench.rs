//! Benchmark: starts the service in this process against MariaDB and Redis,
//! generates load over real gRPC and prints the figures side by side with
//! ansible-playbook run directly, as JSON and, with `--markdown`, as a
//! Markdown report with the issue's targets.
//!
//!     cargo run --release --bin bench -- --out bench.json --markdown BENCHMARKS.md
//!
//! Sections (`--only a,b,...` runs some of them):
//!
//! - (a) submit-to-terminal latency of hello.yml (SubmitJob, then WatchJob to
//!   the terminal status), one job at a time, for the warm and the plain
//!   executor (a service of its own each), next to `ansible-playbook` run
//!   directly on the same playbook and inventory; medians and their ratio.
//!   Each service and the direct runs get one warm-up run, not counted.
//! - (b) SubmitJob throughput and p99 at 64 concurrent callers (an API server
//!   without workers; every submit is a committed transaction).
//! - (c) GetJob throughput and p99 at 64 callers: hot (jobs in the live state)
//!   and cold (jobs only in the history: the bulk-filled rows, in a random
//!   order, each asked for once, so every call misses Redis and reads MariaDB).
//! - (d) ListJobs p50/p99 over the filled history (`--history-rows`): first
//!   page and a page 1,000 pages deep by token, with and without a filter.
//! - (e) WatchJob fan-out: `--watchers` streams (from a child process, 50 per
//!   connection) on one multi-task job; delivery delay at the last watcher,
//!   order checks, and the server's resident memory per watcher.
//! - (f) throughput of `--throughput-jobs` hello.yml jobs with 4 workers, for
//!   each executor, next to `xargs -P 4 ansible-playbook` on as many runs.
//!
//! Every service runs on a database and Redis prefix of its own (all dropped
//! at the end), so that no section's jobs leak into another's.
//!
//! The Markdown report is generated whole on every run: its `## Analysis`
//! section is a placeholder to fill in by hand afterwards, and a later run
//! with the same `--markdown` path overwrites it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ansible_runner_service::app::AppState;
use ansible_runner_service::app::PageToken;
use ansible_runner_service::domain::{
    self, HostStats, Inventory, Job, JobOptions, JobSpec, JobStatus,
};
use ansible_runner_service::live::LiveMessage;
use ansible_runner_service::pb::job_service_client::JobServiceClient;
use ansible_runner_service::pb::{self, watch_job_response::Kind};
use ansible_runner_service::server;
use ansible_runner_service::settings::Settings;
use ansible_runner_service::store::{Cursor, ListFilter, Store};
use ansible_runner_service::worker::ExecutorKind;
use clap::Parser;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{json, Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Concurrent callers of sections (b) and (c).
const CALLERS: usize = 64;
/// Watch streams per HTTP/2 connection in section (e).
const WATCHERS_PER_CHANNEL: usize = 50;
/// The job watched in section (e): two plays, several hosts, loops.
const FANOUT_PLAYBOOK: &str = "multi.yml";
/// Longest section (d) spends on one kind of page (200 calls at most).
const LIST_TIME: Duration = Duration::from_secs(60);
/// Workers (and xargs -P) of section (f).
const THROUGHPUT_WORKERS: usize = 4;
const EXECUTORS: [(&str, ExecutorKind); 2] =
    [("warm", ExecutorKind::Warm), ("plain", ExecutorKind::Plain)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    A,
    B,
    C,
    D,
    E,
    F,
}

#[derive(Debug, Parser)]
struct Args {
    /// MariaDB server (databases of the bench's own are created in it).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Jobs for the latency comparison (a), per executor and direct.
    #[arg(long, default_value_t = 30)]
    latency_jobs: usize,
    /// Seconds of load for the throughput sections (b) and (c).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rows in the history for the ListJobs (d) and cold GetJob (c) sections.
    #[arg(long, default_value_t = 1_000_000)]
    history_rows: usize,
    /// WatchJob streams on one job for the fan-out section (e).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// hello.yml jobs for the throughput section (f).
    #[arg(long, default_value_t = 200)]
    throughput_jobs: usize,
    /// Sections to run, e.g. `--only a,b,e`; all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
    /// Where to write the Markdown report (e.g. BENCHMARKS.md); none if unset.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Internal: run as the watcher client of section (e), against this URL.
    #[arg(long, hide = true, requires = "watch_job")]
    watch_client: Option<String>,
    /// Internal: the job the watcher client watches.
    #[arg(long, hide = true)]
    watch_job: Option<String>,
}

impl Args {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

/// A line on stderr about where the run is.
fn progress(message: &str) {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(Instant::now);
    eprintln!(
        "bench [{:>6.1} s] {message}",
        started.elapsed().as_secs_f64()
    );
}

/// Percentiles of samples given in milliseconds.
fn summary_ms(samples: Vec<f64>) -> Value {
    let samples = sorted(samples);
    json!({
        "n": samples.len(),
        "min_ms": samples.first().copied().unwrap_or(f64::NAN),
        "p50_ms": percentile(&samples, 0.5),
        "p95_ms": percentile(&samples, 0.95),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
    })
}

/// Percentiles of samples given in seconds, in milliseconds.
fn summary(samples: Vec<f64>) -> Value {
    summary_ms(samples.into_iter().map(|s| s * 1e3).collect())
}

fn median(samples: &[f64]) -> f64 {
    percentile(&sorted(samples.to_vec()), 0.5)
}

/// Wall-clock microseconds: comparable between this process and its child.
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

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

/// A service started in this process.
struct Service {
    state: Arc<AppState>,
    client: JobServiceClient<Channel>,
    url: String,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<Result<(), domain::Error>>,
}

impl Service {
    async fn start(settings: &Settings) -> Service {
        let state = AppState::connect(settings).await.expect("connect");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let (s, st, sd) = (settings.clone(), state.clone(), shutdown.clone());
        let serving = tokio::spawn(async move { server::serve(listener, st, &s, sd).await });
        let channel = Channel::from_shared(url.clone())
            .expect("url")
            .connect_lazy();
        Service {
            state,
            client: JobServiceClient::new(channel).max_decoding_message_size(32 << 20),
            url,
            shutdown,
            serving,
        }
    }

    /// Stops the service and waits for it (and its workers) to end, so that
    /// nothing of it runs during the next measurement.
    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(120), self.serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("bench: the service ended with an error: {e}"),
            Ok(Err(e)) => eprintln!("bench: the service panicked: {e}"),
            Err(_) => eprintln!("bench: the service did not stop within 2 minutes"),
        }
    }
}

/// What the sections share.
struct Bench {
    args: Args,
    server: DatabaseConnection,
    name: String,
    databases: Vec<String>,
    playbooks: PathBuf,
}

impl Bench {
    /// Settings for a service on a new database and Redis prefix of its own.
    async fn settings(&mut self, label: &str) -> Settings {
        let database = format!("{}_{label}", self.name);
        self.server
            .execute_unprepared(&format!("CREATE DATABASE `{database}`"))
            .await
            .expect("create database");
        self.databases.push(database.clone());
        let mut settings = Settings::embedded();
        settings.database_url = format!("{}/{database}", self.args.mysql);
        settings.redis_url = Some(self.args.redis.clone());
        settings.redis_prefix = database;
        settings.workers = 2;
        settings
    }

    /// One value of `SHOW GLOBAL STATUS`.
    async fn global_status(&self, name: &str) -> Option<u64> {
        let row = self
            .server
            .query_one(Statement::from_string(
                self.server.get_database_backend(),
                format!("SHOW GLOBAL STATUS LIKE '{name}'"),
            ))
            .await
            .ok()??;
        row.try_get::<String>("", "Value").ok()?.parse().ok()
    }

    /// Drops the bench's databases and Redis keys.
    async fn clean_up(&self) {
        for database in &self.databases {
            let _ = self
                .server
                .execute_unprepared(&format!("DROP DATABASE `{database}`"))
                .await;
        }
        if let Err(e) = delete_redis_keys(&self.args.redis, &format!("{}_*", self.name)).await {
            eprintln!("bench: deleting the bench's Redis keys: {e}");
        }
    }
}

async fn delete_redis_keys(url: &str, pattern: &str) -> Result<(), fred::error::Error> {
    use fred::prelude::*;
    use futures::TryStreamExt;
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    let keys: Vec<Key> = client
        .scan_buffered(pattern, Some(1000), None)
        .try_collect()
        .await?;
    for chunk in keys.chunks(500) {
        client.unlink::<i64, _>(chunk.to_vec()).await?;
    }
    client.quit().await?;
    Ok(())
}

/// Submits hello.yml (or another playbook) and returns the new job's id.
async fn submit(client: &JobServiceClient<Channel>, playbook: &str) -> String {
    client
        .clone()
        .submit_job(pb::SubmitJobRequest {
            playbook: playbook.into(),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job")
        .job_id
}

/// (a) submit → watch to the end, one job at a time. Returns the latencies
/// in seconds and how many jobs did not end SUCCESSFUL.
async fn latency(client: &JobServiceClient<Channel>, jobs: usize) -> (Vec<f64>, usize) {
    let mut samples = Vec::new();
    let mut failed = 0;
    for _ in 0..jobs {
        let mut client = client.clone();
        let started = Instant::now();
        let job_id = submit(&client, "hello.yml").await;
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id,
                after_sequence: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        while let Some(message) = stream.message().await.expect("stream") {
            if let Some(Kind::StatusChange(job)) = message.kind {
                if job.status != pb::JobStatus::Successful as i32 {
                    failed += 1;
                }
                break;
            }
        }
        samples.push(started.elapsed().as_secs_f64());
    }
    (samples, failed)
}

/// ansible-playbook run directly on hello.yml, with the inventory the service
/// gives a job without one (localhost, local connection).
struct Direct {
    _dir: tempfile::TempDir,
    inventory: PathBuf,
    playbook: PathBuf,
}

impl Direct {
    fn new(playbooks: &Path) -> Direct {
        let dir = tempfile::tempdir().expect("temp dir");
        let inventory = dir.path().join("inventory.yml");
        std::fs::write(
            &inventory,
            r#"{"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}"#,
        )
        .expect("inventory");
        Direct {
            _dir: dir,
            inventory,
            playbook: playbooks.join("hello.yml"),
        }
    }

    /// Runs it `runs` times, one after the other; the seconds of each run.
    fn sequential(&self, runs: usize) -> Vec<f64> {
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                let status = std::process::Command::new("ansible-playbook")
                    .arg("-i")
                    .arg(&self.inventory)
                    .arg("--")
                    .arg(&self.playbook)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("ansible-playbook");
                assert!(status.success(), "ansible-playbook hello.yml failed");
                started.elapsed().as_secs_f64()
            })
            .collect()
    }

    /// `runs` runs through `xargs -P parallel`; the seconds of the whole.
    fn xargs(&self, runs: usize, parallel: usize) -> f64 {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let script = format!(
            "seq 1 {runs} | xargs -P {parallel} -I{{}} ansible-playbook -i {} -- {}",
            quote(&self.inventory),
            quote(&self.playbook)
        );
        let started = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("sh");
        assert!(status.success(), "{script} failed");
        started.elapsed().as_secs_f64()
    }
}

/// Result of `load`: successful calls per second, their latencies (seconds),
/// and the calls that failed.
struct Load {
    per_second: f64,
    samples: Vec<f64>,
    errors: usize,
}

impl Load {
    fn report(self) -> Value {
        json!({"callers": CALLERS, "per_second": self.per_second, "errors": self.errors,
               "latency": summary(self.samples)})
    }
}

/// Runs `call` from `callers` tasks for `seconds`.
async fn load<F, Fut>(callers: usize, seconds: u64, call: F) -> Load
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0;
            let mut n = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                if call(caller * 1_000_000 + n).await {
                    samples.push(started.elapsed().as_secs_f64());
                } else {
                    errors += 1;
                }
                n += 1;
            }
            (samples, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (samples, failed) = task.await.expect("caller");
        all.extend(samples);
        errors += failed;
    }
    Load {
        per_second: all.len() as f64 / seconds as f64,
        samples: all,
        errors,
    }
}

/// Fills the history with `rows` finished jobs, in batched inserts, and
/// gives them a result as a finished run has (the bulk insert leaves it out),
/// so that reading one costs what reading a real one does. Returns their ids.
async fn fill(state: &AppState, rows: usize) -> Vec<uuid::Uuid> {
    let now = chrono::Utc::now();
    let mut ids = Vec::with_capacity(rows);
    let mut batch = Vec::new();
    for i in 0..rows {
        let created = now - chrono::Duration::seconds((rows - i) as i64);
        let mut job = Job::new(
            JobSpec {
                playbook: if i % 10 == 0 {
                    "fail.yml".into()
                } else {
                    "hello.yml".into()
                },
                extra_vars: Default::default(),
                inventory: Inventory::Localhost,
                options: JobOptions::default(),
                timeout_seconds: 3600,
            },
            None,
            None,
            created,
        );
        job.status = if i % 10 == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Successful
        };
        job.attempt = 1;
        job.started_at = Some(created);
        job.finished_at = Some(created + chrono::Duration::seconds(1));
        ids.push(job.id);
        batch.push(job);
        if batch.len() == 2000 || i + 1 == rows {
            state
                .store
                .insert_jobs_bulk(&batch)
                .await
                .expect("bulk insert");
            batch.clear();
        }
    }
    let stats = |ok: u32, failed: u32| {
        serde_json::to_string(&BTreeMap::from([(
            "localhost",
            HostStats {
                ok,
                failed,
                ..Default::default()
            },
        )]))
        .expect("stats")
    };
    let db = state.store.connection();
    let updating = Instant::now();
    db.execute_unprepared(&format!(
        "UPDATE jobs SET rc = IF(status = 'FAILED', 2, 0), \
         stats = IF(status = 'FAILED', '{}', '{}') \
         WHERE rc IS NULL AND status IN ('SUCCESSFUL', 'FAILED')",
        stats(0, 1),
        stats(1, 0)
    ))
    .await
    .expect("results of the filled jobs");
    progress(&format!(
        "(c, d) filled {rows} rows; giving them results took {:.1} s",
        updating.elapsed().as_secs_f64()
    ));
    ids
}

/// Shuffles in place (Fisher–Yates with splitmix64; no need for a crate).
fn shuffle<T>(items: &mut [T]) {
    let mut seed = now_us() as u64;
    let mut next = || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// (a) for each executor, and ansible-playbook direct.
async fn section_a(bench: &mut Bench) -> Value {
    let jobs = bench.args.latency_jobs;
    let mut report = Map::new();
    let mut services = Vec::new();
    for (label, kind) in EXECUTORS {
        let mut settings = bench.settings(&format!("a_{label}")).await;
        settings.executor = kind;
        progress(&format!("(a) {label} executor: {jobs} jobs"));
        let service = Service::start(&settings).await;
        latency(&service.client, 1).await;
        let (samples, failed) = latency(&service.client, jobs).await;
        service.stop().await;
        services.push((label, samples, failed));
    }
    progress(&format!("(a) ansible-playbook direct: {jobs} runs"));
    let direct = Direct::new(&bench.playbooks);
    let plain = tokio::task::spawn_blocking(move || {
        direct.sequential(1);
        direct.sequential(jobs)
    })
    .await
    .expect("direct runs");
    let direct_median = median(&plain);
    report.insert("jobs".into(), json!(jobs));
    report.insert("ansible_playbook_direct".into(), summary(plain));
    for (label, samples, failed) in services {
        let m = median(&samples);
        report.insert(
            label.into(),
            json!({"service": summary(samples), "failed": failed,
                   "ratio_of_medians": m / direct_median,
                   "median_minus_direct_ms": (m - direct_median) * 1e3}),
        );
    }
    Value::Object(report)
}

/// (b), (c) and (d) on one API server without workers.
async fn sections_bcd(bench: &mut Bench, report: &mut Map<String, Value>) {
    let mut api = bench.settings("api").await;
    api.workers = 0;
    let service = Service::start(&api).await;
    let client = service.client.clone();
    let seconds = bench.args.seconds;

    if bench.args.runs(Section::B) {
        progress("(b) SubmitJob");
        let submit_client = client.clone();
        let submitted = load(CALLERS, seconds, move |n| {
            let mut client = submit_client.clone();
            async move {
                let req = pb::SubmitJobRequest {
                    playbook: "hello.yml".into(),
                    request_id: format!("bench-{n}"),
                    ..Default::default()
                };
                client.submit_job(req).await.is_ok()
            }
        })
        .await;
        report.insert("b_submit".into(), submitted.report());
    }

    let mut c = Map::new();
    if bench.args.runs(Section::C) {
        progress("(c) GetJob, hot");
        // Hot: jobs just submitted, which the live state holds.
        if !bench.args.runs(Section::B) {
            for _ in 0..100 {
                submit(&client, "hello.yml").await;
            }
        }
        let ids: Vec<String> = client
            .clone()
            .list_jobs(pb::ListJobsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .jobs
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        let ids = Arc::new(ids);
        let get_client = client.clone();
        let hot = load(CALLERS, seconds, move |n| {
            let mut client = get_client.clone();
            let id = ids[n % ids.len()].clone();
            async move {
                client
                    .get_job(pb::GetJobRequest { job_id: id })
                    .await
                    .is_ok()
            }
        })
        .await;
        c.insert("hot".into(), hot.report());
    }

    let filled = Instant::now();
    let mut history = if bench.args.runs(Section::C) || bench.args.runs(Section::D) {
        progress(&format!(
            "(c, d) filling the history: {} rows",
            bench.args.history_rows
        ));
        fill(&service.state, bench.args.history_rows).await
    } else {
        Vec::new()
    };
    let fill_seconds = filled.elapsed().as_secs_f64();

    if bench.args.runs(Section::C) && !history.is_empty() {
        progress("(c) GetJob, cold");
        // Cold: the filled jobs were never in the live state. GetJob misses
        // Redis, reads MariaDB (the job's row, then its stdout) and refills
        // Redis; so each id is asked for once, in a random order. Past the
        // end of the list (a small history) ids repeat and are counted.
        shuffle(&mut history);
        let ids: Arc<Vec<String>> = Arc::new(history.iter().map(|id| id.to_string()).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let (get_client, cold_ids, taken) = (client.clone(), ids.clone(), next.clone());
        let cold = load(CALLERS, seconds, move |_| {
            let mut client = get_client.clone();
            let i = taken.fetch_add(1, Ordering::Relaxed);
            let id = cold_ids[i % cold_ids.len()].clone();
            async move {
                client
                    .get_job(pb::GetJobRequest { job_id: id })
                    .await
                    .is_ok()
            }
        })
        .await;
        let calls = next.load(Ordering::Relaxed);
        let mut cold = cold.report();
        cold["ids"] = json!(ids.len());
        cold["repeated_ids"] = json!(calls.saturating_sub(ids.len()));
        c.insert("cold".into(), cold);
    }
    if !c.is_empty() {
        report.insert("c_get".into(), Value::Object(c));
    }

    if bench.args.runs(Section::D) {
        let state = &service.state;
        let mut list = Map::new();
        for (label, status) in [("all", None), ("failed", Some(JobStatus::Failed))] {
            let filter = ListFilter {
                status,
                ..Default::default()
            };
            // A cursor about 1,000 pages of 20 deep, as a token the client would hold.
            let deep = state
                .store
                .list_jobs(&filter, 20_000, None)
                .await
                .expect("walk")
                .jobs
                .last()
                .map(|j| {
                    PageToken::new(
                        Cursor {
                            created_at: j.created_at,
                            id: j.id,
                        },
                        &filter,
                    )
                    .encode(&state.page_key)
                })
                .unwrap_or_default();
            for (depth, token) in [("first_page", String::new()), ("page_1000", deep)] {
                progress(&format!("(d) ListJobs, {label}, {depth}"));
                // 200 calls, or fewer if they take over LIST_TIME in all.
                let mut samples = Vec::new();
                let page_started = Instant::now();
                while samples.len() < 200 && page_started.elapsed() < LIST_TIME {
                    let started = Instant::now();
                    client
                        .clone()
                        .list_jobs(pb::ListJobsRequest {
                            status: status.map_or(0, |_| pb::JobStatus::Failed as i32),
                            page_token: token.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("list");
                    samples.push(started.elapsed().as_secs_f64());
                }
                list.insert(format!("{label}_{depth}"), summary(samples));
            }
        }
        report.insert(
            "d_list".into(),
            json!({"rows": bench.args.history_rows, "fill_seconds": fill_seconds, "calls": list}),
        );
    }
    service.stop().await;
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
async fn section_e(bench: &mut Bench) -> Value {
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
async fn watch_client(url: String, job_id: String, watchers: usize) {
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

/// Waits until no job of the service is PENDING or RUNNING.
async fn wait_idle(store: &Store, timeout: Duration) -> bool {
    let count = |status| async move {
        let filter = ListFilter {
            status: Some(status),
            ..Default::default()
        };
        store
            .list_jobs(&filter, 1, None)
            .await
            .expect("count")
            .total
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if count(JobStatus::Pending).await == 0 && count(JobStatus::Running).await == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// (f) `--throughput-jobs` hello.yml jobs on 4 workers, per executor, next
/// to xargs -P 4. Each service first runs one job per worker, not counted.
/// The time runs from the first submit until no job is pending or running
/// (checked every 20 ms).
async fn section_f(bench: &mut Bench) -> Value {
    let jobs = bench.args.throughput_jobs;
    let mut report = Map::new();
    report.insert("jobs".into(), json!(jobs));
    report.insert("workers".into(), json!(THROUGHPUT_WORKERS));
    let mut services = Vec::new();
    for (label, kind) in EXECUTORS {
        let mut settings = bench.settings(&format!("f_{label}")).await;
        settings.executor = kind;
        settings.workers = THROUGHPUT_WORKERS;
        progress(&format!("(f) {label} executor: {jobs} jobs"));
        let service = Service::start(&settings).await;
        let store = &service.state.store;
        for _ in 0..THROUGHPUT_WORKERS {
            submit(&service.client, "hello.yml").await;
        }
        assert!(
            wait_idle(store, Duration::from_secs(300)).await,
            "warm-up jobs"
        );
        let started = Instant::now();
        let submits = (0..jobs).map(|_| submit(&service.client, "hello.yml"));
        futures::future::join_all(submits).await;
        let finished = wait_idle(store, Duration::from_secs(60 + 10 * jobs as u64)).await;
        let seconds = started.elapsed().as_secs_f64();
        let failed_filter = ListFilter {
            status: Some(JobStatus::Failed),
            ..Default::default()
        };
        let failed = store
            .list_jobs(&failed_filter, 1, None)
            .await
            .expect("count")
            .total;
        service.stop().await;
        services.push((label, seconds, failed, finished));
    }
    progress(&format!("(f) xargs: {jobs} runs"));
    let direct = Direct::new(&bench.playbooks);
    let xargs_seconds = tokio::task::spawn_blocking(move || {
        direct.sequential(1);
        direct.xargs(jobs, THROUGHPUT_WORKERS)
    })
    .await
    .expect("xargs");
    let xargs_rate = jobs as f64 / xargs_seconds;
    report.insert(
        "xargs".into(),
        json!({"seconds": xargs_seconds, "jobs_per_second": xargs_rate}),
    );
    for (label, seconds, failed, finished) in services {
        let rate = jobs as f64 / seconds;
        report.insert(
            label.into(),
            json!({"seconds": seconds, "jobs_per_second": rate, "failed": failed,
                   "all_finished": finished, "ratio_to_xargs": rate / xargs_rate}),
        );
    }
    Value::Object(report)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next()?.trim().to_owned();
    (output.status.success() && !first.is_empty()).then_some(first)
}

/// The machine and software the figures come from.
async fn machine(server: &DatabaseConnection) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    let memory_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    });
    let mariadb = server
        .query_one(Statement::from_string(
            server.get_database_backend(),
            "SELECT CAST(VERSION() AS CHAR), CAST(@@innodb_flush_log_at_trx_commit AS CHAR), \
             CAST(@@sync_binlog AS CHAR), CAST(@@log_bin AS CHAR)",
        ))
        .await
        .ok()
        .flatten();
    let column = |i: usize| {
        mariadb
            .as_ref()
            .and_then(|row| row.try_get_by_index::<String>(i).ok())
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gib": memory_kib.map(|k| k as f64 / (1024.0 * 1024.0)),
        "kernel": command_output("uname", &["-r"]),
        "ansible": command_output("ansible-playbook", &["--version"]),
        "rustc": command_output("rustc", &["-V"]),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "mariadb": column(0),
        "innodb_flush_log_at_trx_commit": column(1),
        "sync_binlog": column(2),
        "log_bin": column(3),
    })
}

/// The command line, quoted for a POSIX shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders the report as Markdown, with the issue's targets.
fn markdown(report: &Value) -> String {
    let num = |path: &str| report.pointer(path).and_then(Value::as_f64);
    let ms = |path: &str| match num(path) {
        Some(v) if v.is_finite() => format!("{v:.1} ms"),
        _ => "—".into(),
    };
    let fixed = |path: &str, digits: usize| match num(path) {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "—".into(),
    };
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "—",
    };
    let row = |figure: &str, value: String, target: &str, met: Option<bool>| {
        format!("| {figure} | {value} | {target} | {} |\n", verdict(met))
    };
    let head = "| Figure | Value | Target | Met? |\n|---|---|---|---|\n";
    let not_run = "_Not run in this run (`--only`)._\n";
    let machine = &report["machine"];
    let text = |v: &Value| v.as_str().unwrap_or("unknown").to_owned();

    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `src/bin/bench.rs`; regenerate with the command below. \
         Everything but the Analysis is written by the program.\n\n",
    );
    md.push_str(&format!("- Date: {}\n", text(&report["date"])));
    md.push_str(&format!("- Command: `{}`\n", text(&report["command"])));
    md.push_str(&format!(
        "- Machine: {}, {} cores, {} GiB memory, kernel {}\n",
        text(&machine["cpu"]),
        machine["cores"],
        fixed("/machine/memory_gib", 1),
        text(&machine["kernel"])
    ));
    md.push_str(&format!(
        "- Software: {}; {}; MariaDB {} (innodb_flush_log_at_trx_commit={}, sync_binlog={}, log_bin={}); a {} build\n\n",
        text(&machine["ansible"]),
        text(&machine["rustc"]),
        text(&machine["mariadb"]),
        text(&machine["innodb_flush_log_at_trx_commit"]),
        text(&machine["sync_binlog"]),
        text(&machine["log_bin"]),
        text(&machine["build"]),
    ));

    md.push_str("## a. Submit-to-terminal latency of hello.yml\n\n");
    if report.get("a_submit_to_terminal").is_some() {
        let a = "/a_submit_to_terminal";
        let direct = num(&format!("{a}/ansible_playbook_direct/p50_ms"));
        md.push_str(&format!(
            "SubmitJob, then WatchJob until the terminal status, one job at a time, {} jobs each \
             (after one warm-up); ansible-playbook run directly on the same playbook and inventory.\n\n",
            fixed(&format!("{a}/jobs"), 0)
        ));
        md.push_str("| Run | Median | p95 | Median / direct | Failed | Target | Met? |\n");
        md.push_str("|---|---|---|---|---|---|---|\n");
        md.push_str(&format!(
            "| ansible-playbook direct | {} | {} | 1.00 | — | — | — |\n",
            ms(&format!("{a}/ansible_playbook_direct/p50_ms")),
            ms(&format!("{a}/ansible_playbook_direct/p95_ms")),
        ));
        for label in ["warm", "plain"] {
            let median = num(&format!("{a}/{label}/service/p50_ms"));
            let (target, met) = match (label, direct) {
                ("warm", Some(d)) => (
                    format!("≤ 0.5 × direct ({:.1} ms)", d * 0.5),
                    median.map(|m| m <= d * 0.5),
                ),
                (_, Some(d)) => (
                    format!("≤ direct + 50 ms ({:.1} ms)", d + 50.0),
                    median.map(|m| m <= d + 50.0),
                ),
                _ => ("—".into(), None),
            };
            md.push_str(&format!(
                "| service, {label} executor | {} | {} | {} | {} | {target} | {} |\n",
                ms(&format!("{a}/{label}/service/p50_ms")),
                ms(&format!("{a}/{label}/service/p95_ms")),
                fixed(&format!("{a}/{label}/ratio_of_medians"), 2),
                fixed(&format!("{a}/{label}/failed"), 0),
                verdict(met),
            ));
        }
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## b. SubmitJob at 64 concurrent callers\n\n");
    if report.get("b_submit").is_some() {
        md.push_str("Every SubmitJob commits its job to MariaDB before it answers.\n\n");
        md.push_str(head);
        let rate = num("/b_submit/per_second");
        let p99 = num("/b_submit/latency/p99_ms");
        md.push_str(&row(
            "SubmitJob/s",
            fixed("/b_submit/per_second", 0),
            "≥ 5,000",
            rate.map(|r| r >= 5000.0),
        ));
        md.push_str(&row("p50", ms("/b_submit/latency/p50_ms"), "—", None));
        md.push_str(&row(
            "p99",
            ms("/b_submit/latency/p99_ms"),
            "≤ 50 ms",
            p99.map(|p| p <= 50.0),
        ));
        md.push_str(&row(
            "Failed calls",
            fixed("/b_submit/errors", 0),
            "—",
            None,
        ));
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## c. GetJob at 64 concurrent callers\n\n");
    if report.get("c_get").is_some() {
        md.push_str(&format!(
            "Hot: 100 jobs held in the live state (Redis). Cold: jobs only in the history \
             ({} rows), each asked for once in a random order, so each call misses Redis, \
             reads MariaDB and refills Redis ({} ids repeated). The issue sets no target for cold reads.\n\n",
            fixed("/c_get/cold/ids", 0),
            fixed("/c_get/cold/repeated_ids", 0),
        ));
        md.push_str(head);
        let rate = num("/c_get/hot/per_second");
        let p99 = num("/c_get/hot/latency/p99_ms");
        md.push_str(&row(
            "Hot GetJob/s",
            fixed("/c_get/hot/per_second", 0),
            "≥ 15,000",
            rate.map(|r| r >= 15000.0),
        ));
        md.push_str(&row(
            "Hot p99",
            ms("/c_get/hot/latency/p99_ms"),
            "≤ 10 ms",
            p99.map(|p| p <= 10.0),
        ));
        md.push_str(&row(
            "Cold GetJob/s",
            fixed("/c_get/cold/per_second", 0),
            "—",
            None,
        ));
        md.push_str(&row(
            "Cold p50",
            ms("/c_get/cold/latency/p50_ms"),
            "—",
            None,
        ));
        md.push_str(&row(
            "Cold p99",
            ms("/c_get/cold/latency/p99_ms"),
            "—",
            None,
        ));
        md.push_str(&row(
            "Failed calls (hot + cold)",
            format!(
                "{} + {}",
                fixed("/c_get/hot/errors", 0),
                fixed("/c_get/cold/errors", 0)
            ),
            "—",
            None,
        ));
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## d. ListJobs over a large history\n\n");
    if report.get("d_list").is_some() {
        md.push_str(&format!(
            "{} rows in the history (filled in {} s); 200 calls per page (fewer if they take \
             over a minute: n below), one at a time; \
             pages of 20; the deep page is reached by a page token about 1,000 pages in.\n\n",
            fixed("/d_list/rows", 0),
            fixed("/d_list/fill_seconds", 0)
        ));
        md.push_str("| Page | n | p50 | p99 | Target | Met? |\n|---|---|---|---|---|---|\n");
        for (key, name) in [
            ("all_first_page", "First page"),
            ("all_page_1000", "Page 1,000"),
            ("failed_first_page", "First page, status FAILED"),
            ("failed_page_1000", "Page 1,000, status FAILED"),
        ] {
            let p99 = num(&format!("/d_list/calls/{key}/p99_ms"));
            md.push_str(&format!(
                "| {name} | {} | {} | {} | p99 ≤ 10 ms at 1,000,000 rows | {} |\n",
                fixed(&format!("/d_list/calls/{key}/n"), 0),
                ms(&format!("/d_list/calls/{key}/p50_ms")),
                ms(&format!("/d_list/calls/{key}/p99_ms")),
                verdict(p99.map(|p| p <= 10.0)),
            ));
        }
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## e. WatchJob fan-out\n\n");
    if report.get("e_watch_fanout").is_some() {
        let e = "/e_watch_fanout";
        md.push_str(&format!(
            "{} watch streams ({} per connection, from a child process) on one {} job \
             ({} events, run in {} s). The service exposes no commit time for an event: delays \
             are measured from the first moment the event is seen after its commit, the \
             earlier of the service's fan-out hub receiving it (the worker publishes it right \
             after the commit) and the first watcher receiving it ({} of the events reached a \
             watcher before the hub). Memory is the server process's resident set (VmRSS) \
             before the watchers connect and once every one has its snapshot.\n\n",
            fixed(&format!("{e}/watchers"), 0),
            fixed(&format!("{e}/watchers_per_connection"), 0),
            report["e_watch_fanout"]["playbook"].as_str().unwrap_or("?"),
            fixed(&format!("{e}/events"), 0),
            fixed(&format!("{e}/run_seconds"), 1),
            fixed(&format!("{e}/events_first_seen_by_a_watcher"), 0),
        ));
        md.push_str(head);
        let watchers = num(&format!("{e}/watchers"));
        let complete = num(&format!("{e}/complete_watchers"));
        let errors = num(&format!("{e}/sequence_errors"));
        let missing = num(&format!("{e}/missing_deliveries"));
        md.push_str(&row(
            "Watchers with every event in order",
            fixed(&format!("{e}/complete_watchers"), 0),
            "all",
            complete.zip(watchers).map(|(c, w)| c == w),
        ));
        md.push_str(&row(
            "Order errors / missing deliveries",
            format!(
                "{} / {}",
                fixed(&format!("{e}/sequence_errors"), 0),
                fixed(&format!("{e}/missing_deliveries"), 0)
            ),
            "0",
            errors.zip(missing).map(|(a, b)| a + b == 0.0),
        ));
        let p99 = num(&format!("{e}/delay_at_last_watcher/p99_ms"));
        md.push_str(&row(
            "Delay to the last watcher, p99 over events",
            ms(&format!("{e}/delay_at_last_watcher/p99_ms")),
            "≤ 100 ms",
            p99.map(|p| p <= 100.0),
        ));
        md.push_str(&row(
            "Delay to the last watcher, p50 / max",
            format!(
                "{} / {}",
                ms(&format!("{e}/delay_at_last_watcher/p50_ms")),
                ms(&format!("{e}/delay_at_last_watcher/max_ms"))
            ),
            "—",
            None,
        ));
        md.push_str(&row(
            "Delay of every delivery, p99",
            ms(&format!("{e}/delay_every_delivery/p99_ms")),
            "—",
            None,
        ));
        md.push_str(&row(
            "First to last watcher, p99",
            ms(&format!("{e}/spread_first_to_last_watcher/p99_ms")),
            "—",
            None,
        ));
        md.push_str(&row(
            "From the event's own timestamp to the last watcher, p99",
            ms(&format!("{e}/delay_at_last_watcher_from_event_time/p99_ms")),
            "—",
            None,
        ));
        md.push_str(&row(
            "Server RSS before / all connected / peak while running",
            format!(
                "{} / {} / {} KiB",
                fixed(&format!("{e}/rss_before_kib"), 0),
                fixed(&format!("{e}/rss_connected_kib"), 0),
                fixed(&format!("{e}/rss_peak_running_kib"), 0)
            ),
            "—",
            None,
        ));
        let per_watcher = num(&format!("{e}/rss_per_watcher_kib"));
        md.push_str(&row(
            "Server memory per watcher",
            format!("{} KiB", fixed(&format!("{e}/rss_per_watcher_kib"), 1)),
            "≤ 64 KiB",
            per_watcher.map(|k| k <= 64.0),
        ));
        md.push_str(&row(
            "MariaDB statements/s with the watchers idle / while the job ran",
            format!(
                "{} / {}",
                fixed(&format!("{e}/mariadb_queries_per_second_idle_watchers"), 0),
                fixed(&format!("{e}/mariadb_queries_per_second_while_running"), 0)
            ),
            "—",
            None,
        ));
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## f. Throughput of hello.yml with 4 workers\n\n");
    if report.get("f_throughput").is_some() {
        let f = "/f_throughput";
        md.push_str(&format!(
            "{} jobs submitted at once to a service with {} workers (after one warm-up job per \
             worker), timed from the first submit until none is pending or running; next to \
             `seq 1 N | xargs -P {} ansible-playbook` on as many runs. The issue's target is for \
             the default (warm) executor; the plain one is shown for reference.\n\n",
            fixed(&format!("{f}/jobs"), 0),
            fixed(&format!("{f}/workers"), 0),
            fixed(&format!("{f}/workers"), 0),
        ));
        md.push_str("| Run | Seconds | Jobs/s | × xargs | Failed | Target | Met? |\n");
        md.push_str("|---|---|---|---|---|---|---|\n");
        md.push_str(&format!(
            "| xargs -P 4 ansible-playbook | {} | {} | 1.00 | — | — | — |\n",
            fixed(&format!("{f}/xargs/seconds"), 1),
            fixed(&format!("{f}/xargs/jobs_per_second"), 2),
        ));
        for label in ["warm", "plain"] {
            let ratio = num(&format!("{f}/{label}/ratio_to_xargs"));
            let (target, met) = if label == "warm" {
                ("≥ 2 × xargs", ratio.map(|r| r >= 2.0))
            } else {
                ("—", None)
            };
            md.push_str(&format!(
                "| service, {label} executor | {} | {} | {} | {} | {target} | {} |\n",
                fixed(&format!("{f}/{label}/seconds"), 1),
                fixed(&format!("{f}/{label}/jobs_per_second"), 2),
                fixed(&format!("{f}/{label}/ratio_to_xargs"), 2),
                fixed(&format!("{f}/{label}/failed"), 0),
                verdict(met),
            ));
        }
    } else {
        md.push_str(not_run);
    }

    md.push_str("\n## Analysis\n\n(written by hand after the run)\n");
    md
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(url) = args.watch_client.clone() {
        let job = args.watch_job.clone().expect("--watch-job");
        watch_client(url, job, args.watchers).await;
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let name = format!(
        "ars_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let server = Database::connect(format!("{}/mysql", args.mysql))
        .await
        .expect("MariaDB");
    let playbooks = Settings::embedded()
        .playbooks_dir
        .canonicalize()
        .expect("run from the repository root");
    let mut report = Map::new();
    report.insert(
        "date".into(),
        json!(chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()),
    );
    report.insert("command".into(), json!(command_line()));
    report.insert("machine".into(), machine(&server).await);
    progress(&format!(
        "databases and Redis keys of this run: {name}_* (dropped at the end)"
    ));
    let mut bench = Bench {
        args,
        server,
        name,
        databases: Vec::new(),
        playbooks,
    };

    if bench.args.runs(Section::A) {
        let a = section_a(&mut bench).await;
        report.insert("a_submit_to_terminal".into(), a);
    }
    if bench.args.runs(Section::E) {
        let e = section_e(&mut bench).await;
        report.insert("e_watch_fanout".into(), e);
    }
    if bench.args.runs(Section::F) {
        let f = section_f(&mut bench).await;
        report.insert("f_throughput".into(), f);
    }
    if [Section::B, Section::C, Section::D]
        .iter()
        .any(|s| bench.args.runs(*s))
    {
        sections_bcd(&mut bench, &mut report).await;
    }

    let report = Value::Object(report);
    let text = serde_json::to_string_pretty(&report).expect("json");
    std::fs::write(&bench.args.out, &text).expect("write report");
    println!("{text}");
    if let Some(path) = &bench.args.markdown {
        std::fs::write(path, markdown(&report)).expect("write the Markdown report");
    }
    bench.clean_up().await;
    progress("done");
}
