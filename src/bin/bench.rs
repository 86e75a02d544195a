//! Benchmark: starts the service in this process against MariaDB and Redis,
//! generates load over real gRPC and prints the figures side by side with
//! ansible-playbook run directly, as JSON (and a Markdown table).
//!
//!     cargo run --release --bin bench -- --out bench.json
//!
//! Sections done so far (issue 5 lists the rest): (a) submit-to-terminal
//! latency of hello.yml next to ansible-playbook run directly, (b) SubmitJob
//! throughput and p99 at 64 concurrent callers, (c) GetJob throughput and p99
//! from the live state, (d) ListJobs p50/p99 over a large history (first page
//! and a deep page, with and without a status filter).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ansible_runner_service::app::{self, AppState, Settings};
use ansible_runner_service::domain::{Inventory, Job, JobOptions, JobSpec, JobStatus};
use ansible_runner_service::grpc::PageToken;
use ansible_runner_service::pb::job_service_client::JobServiceClient;
use ansible_runner_service::pb::{self, watch_job_response::Kind};
use ansible_runner_service::store::{Cursor, ListFilter};
use clap::Parser;
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// MariaDB server (a database of the bench's own is created in it).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Jobs for the latency comparison.
    #[arg(long, default_value_t = 30)]
    latency_jobs: usize,
    /// Seconds of load for the throughput sections.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rows in the history for the ListJobs section.
    #[arg(long, default_value_t = 1_000_000)]
    history_rows: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": samples.len(),
        "p50_ms": percentile(&samples, 0.5) * 1e3,
        "p95_ms": percentile(&samples, 0.95) * 1e3,
        "p99_ms": percentile(&samples, 0.99) * 1e3,
    })
}

async fn start(
    settings: &Settings,
) -> (Arc<AppState>, JobServiceClient<Channel>, CancellationToken) {
    let state = AppState::connect(settings).await.expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (s, st, sd) = (settings.clone(), state.clone(), shutdown.clone());
    tokio::spawn(async move { app::serve(listener, st, &s, sd).await });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy();
    (
        state,
        JobServiceClient::new(channel).max_decoding_message_size(32 << 20),
        shutdown,
    )
}

/// (a) submit → watch to the end, one job at a time.
async fn latency(client: &JobServiceClient<Channel>, jobs: usize) -> Vec<f64> {
    let mut samples = Vec::new();
    for _ in 0..jobs {
        let mut client = client.clone();
        let started = Instant::now();
        let job = client
            .submit_job(pb::SubmitJobRequest {
                playbook: "hello.yml".into(),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .job
            .expect("job");
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job.job_id,
                after_sequence: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        while let Some(message) = stream.message().await.expect("stream") {
            if matches!(message.kind, Some(Kind::StatusChange(_))) {
                break;
            }
        }
        samples.push(started.elapsed().as_secs_f64());
    }
    samples
}

/// ansible-playbook run directly on hello.yml, as the service runs it.
fn direct(runs: usize, playbooks: &std::path::Path) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = dir.path().join("inventory.yml");
    std::fs::write(
        &inventory,
        r#"{"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}"#,
    )
    .expect("inventory");
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = std::process::Command::new("ansible-playbook")
                .arg("-i")
                .arg(&inventory)
                .arg("--")
                .arg(playbooks.join("hello.yml"))
                .stdout(std::process::Stdio::null())
                .status()
                .expect("ansible-playbook");
            assert!(status.success());
            started.elapsed().as_secs_f64()
        })
        .collect()
}

/// Runs `call` from `callers` tasks for `seconds`; returns (calls/s, latencies).
async fn load<F, Fut>(callers: usize, seconds: u64, call: F) -> (f64, Vec<f64>)
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
            let mut n = 0;
            while Instant::now() < deadline {
                let started = Instant::now();
                if call(caller * 1_000_000 + n).await {
                    samples.push(started.elapsed().as_secs_f64());
                }
                n += 1;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("caller"));
    }
    (all.len() as f64 / seconds as f64, all)
}

/// Fills the history with `rows` finished jobs, in batched inserts.
async fn fill(state: &AppState, rows: usize) {
    let now = chrono::Utc::now();
    let mut batch = Vec::new();
    for i in 0..rows {
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
            now - chrono::Duration::seconds((rows - i) as i64),
        );
        job.status = if i % 10 == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Successful
        };
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
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let name = format!(
        "ars_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let server = Database::connect(format!("{}/mysql", args.mysql))
        .await
        .expect("MariaDB");
    server
        .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
        .await
        .expect("create database");

    let mut settings = Settings::embedded();
    settings.database_url = format!("{}/{name}", args.mysql);
    settings.redis_url = Some(args.redis.clone());
    settings.redis_prefix = name.clone();
    settings.workers = 2;
    let playbooks = settings
        .playbooks_dir
        .canonicalize()
        .expect("run from the repository root");
    let mut report = serde_json::Map::new();

    // (a) latency, next to ansible-playbook run directly.
    let (_state, client, shutdown) = start(&settings).await;
    let service = latency(&client, args.latency_jobs).await;
    let plain = direct(args.latency_jobs, &playbooks);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, 0.5)
    };
    report.insert(
        "a_submit_to_terminal".into(),
        json!({"service": summary(service.clone()), "ansible_playbook_direct": summary(plain.clone()),
               "ratio_of_medians": median(&service) / median(&plain)}),
    );
    shutdown.cancel();

    // (b), (c), (d): an API server without workers, on a prefix of its own.
    let mut api = settings.clone();
    api.workers = 0;
    api.redis_prefix = format!("{name}-api");
    let (state, client, shutdown) = start(&api).await;
    let submit_client = client.clone();
    let (rate, samples) = load(64, args.seconds, move |n| {
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
    report.insert(
        "b_submit".into(),
        json!({"callers": 64, "per_second": rate, "latency": summary(samples)}),
    );

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
    let (rate, samples) = load(64, args.seconds, move |n| {
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
    report.insert(
        "c_get_hot".into(),
        json!({"callers": 64, "per_second": rate, "latency": summary(samples)}),
    );

    // (d) ListJobs over a large history.
    let filled = Instant::now();
    fill(&state, args.history_rows).await;
    let fill_seconds = filled.elapsed().as_secs_f64();
    let mut list = serde_json::Map::new();
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
                        created_at: j.created_at.timestamp_micros(),
                        id: j.id,
                    },
                    &filter,
                )
                .encode(&state.page_key)
            })
            .unwrap_or_default();
        for (depth, token) in [("first_page", String::new()), ("page_1000", deep)] {
            let mut samples = Vec::new();
            for _ in 0..200 {
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
        json!({"rows": args.history_rows, "fill_seconds": fill_seconds, "calls": list}),
    );
    shutdown.cancel();

    let report = serde_json::Value::Object(report);
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write report");
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    server
        .execute_unprepared(&format!("DROP DATABASE `{name}`"))
        .await
        .ok();
}
