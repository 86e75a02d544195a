//! What the sections share: a service started in this process on a database
//! and Redis prefix of its own, the bench's databases and their clean-up,
//! submitting jobs, ansible-playbook run directly, load from concurrent
//! callers, filling the history, waiting for a service to be idle, and the
//! percentiles every section reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ansible_runner_service::app::AppState;
use ansible_runner_service::domain::{
    self, HostStats, Inventory, Job, JobOptions, JobSpec, JobStatus,
};
use ansible_runner_service::pb::{self, job_service_client::JobServiceClient};
use ansible_runner_service::server;
use ansible_runner_service::settings::Settings;
use ansible_runner_service::store::{ListFilter, Store};
use ansible_runner_service::worker::ExecutorKind;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::Args;

/// Concurrent callers of sections (b) and (c).
pub const CALLERS: usize = 64;
/// The executors sections (a) and (f) compare, each on a service of its own.
pub const EXECUTORS: [(&str, ExecutorKind); 2] =
    [("warm", ExecutorKind::Warm), ("plain", ExecutorKind::Plain)];

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

/// A line on stderr about where the run is.
pub fn progress(message: &str) {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(Instant::now);
    eprintln!(
        "bench [{:>6.1} s] {message}",
        started.elapsed().as_secs_f64()
    );
}

/// Percentiles of samples given in milliseconds.
pub fn summary_ms(samples: Vec<f64>) -> Value {
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
pub fn summary(samples: Vec<f64>) -> Value {
    summary_ms(samples.into_iter().map(|s| s * 1e3).collect())
}

pub fn median(samples: &[f64]) -> f64 {
    percentile(&sorted(samples.to_vec()), 0.5)
}

/// Wall-clock microseconds: comparable between this process and its child.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A service started in this process.
pub struct Service {
    pub state: Arc<AppState>,
    pub client: JobServiceClient<Channel>,
    pub url: String,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<Result<(), domain::Error>>,
}

impl Service {
    pub async fn start(settings: &Settings) -> Service {
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
    pub async fn stop(self) {
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
pub struct Bench {
    pub args: Args,
    pub server: DatabaseConnection,
    pub name: String,
    pub databases: Vec<String>,
    pub playbooks: PathBuf,
}

impl Bench {
    /// Settings for a service on a new database and Redis prefix of its own.
    pub async fn settings(&mut self, label: &str) -> Settings {
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
    pub async fn global_status(&self, name: &str) -> Option<u64> {
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
    pub async fn clean_up(&self) {
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
pub async fn submit(client: &JobServiceClient<Channel>, playbook: &str) -> String {
    submit_request(client, &playbook_request(playbook)).await
}

/// A SubmitJob request for a catalogue playbook, everything else default.
pub fn playbook_request(playbook: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        playbook: playbook.into(),
        ..Default::default()
    }
}

/// Submits `request` and returns the new job's id.
pub async fn submit_request(
    client: &JobServiceClient<Channel>,
    request: &pb::SubmitJobRequest,
) -> String {
    client
        .clone()
        .submit_job(request.clone())
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job")
        .job_id
}

/// ansible-playbook run directly on hello.yml, with the inventory the service
/// gives a job without one (localhost, local connection).
pub struct Direct {
    _dir: tempfile::TempDir,
    inventory: PathBuf,
    playbook: PathBuf,
}

impl Direct {
    pub fn new(playbooks: &Path) -> Direct {
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
    pub fn sequential(&self, runs: usize) -> Vec<f64> {
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
    pub fn xargs(&self, runs: usize, parallel: usize) -> f64 {
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
pub struct Load {
    per_second: f64,
    samples: Vec<f64>,
    errors: usize,
}

impl Load {
    pub fn report(self) -> Value {
        json!({"callers": CALLERS, "per_second": self.per_second, "errors": self.errors,
               "latency": summary(self.samples)})
    }
}

/// Runs `call` from `callers` tasks for `seconds`.
pub async fn load<F, Fut>(callers: usize, seconds: u64, call: F) -> Load
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
pub async fn fill(state: &AppState, rows: usize) -> Vec<uuid::Uuid> {
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
                source: Default::default(),
                credentials: Vec::new(),
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

/// Waits until no job of the service is PENDING or RUNNING.
pub async fn wait_idle(store: &Store, timeout: Duration) -> bool {
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
