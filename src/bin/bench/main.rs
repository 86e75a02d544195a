//! Benchmark: starts the service in this process against MariaDB and Redis,
//! generates load over real gRPC and prints the figures side by side with
//! ansible-playbook run directly, as JSON and, with `--markdown`, as a
//! Markdown report with the targets.
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
//! - (g) git sources: a playbook from a git repository on a loopback smart-HTTP
//!   server (basic auth), submit-to-terminal one job at a time on one warm
//!   service: its first run (fetch and checkout included), then
//!   `--latency-jobs` runs with the ref fresh in the cache, interleaved with as
//!   many catalogue hello.yml runs; medians, p90s, their difference (target
//!   ≤ 20 ms), the clone cost, and the git requests during the cached runs.
//! - (h) a fleet over SSH: a playbook of 5 tasks over 50 sshd hosts on
//!   loopback, `forks` 25, with a named SSH credential, `--fleet-runs` runs
//!   on one warm service next to as many ansible-playbook runs direct
//!   (target: medians within 10 %); the events per second a watcher
//!   receives, their delivery delay from Ansible's timestamp, and the
//!   service's CPU time per event.
//!
//! Every service runs on a database and Redis prefix of its own (all dropped
//! at the end), so that no section's jobs leak into another's.
//!
//! The Markdown report is generated whole on every run: its `## Analysis`
//! section is a placeholder to fill in by hand afterwards, and a later run
//! with the same `--markdown` path overwrites it.
//!
//! Layout: `harness` (the in-process service, databases, shared helpers),
//! one module per section, `report` (bench.json and the Markdown report).

mod fleet;
mod get_job;
// The tests' git smart-HTTP server, for section (g).
#[allow(dead_code)]
#[path = "../../../tests/common/git_server.rs"]
mod git_server;
mod git_sources;
mod harness;
mod list_jobs;
mod report;
mod submit_rate;
mod submit_to_terminal;
mod throughput;
// The tests' sshd fleet, for section (h).
#[allow(dead_code)]
#[path = "../../../tests/common/sshd.rs"]
mod sshd;
mod watchers;

use std::path::PathBuf;
use std::time::Instant;

use ansible_runner_service::settings::Settings;
use clap::Parser;
use sea_orm::Database;
use serde_json::{json, Map, Value};

use harness::{fill, progress, Bench, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    H,
}

#[derive(Debug, Parser)]
struct Args {
    /// MariaDB server (databases of the bench's own are created in it).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Jobs for the latency comparison (a), per executor and direct; and for
    /// (g), cached git runs and as many catalogue runs.
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
    /// Runs on the service, and as many direct, for the fleet section (h).
    #[arg(long, default_value_t = 5)]
    fleet_runs: usize,
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

/// (b), (c) and (d) on one API server without workers.
async fn sections_bcd(bench: &mut Bench, report: &mut Map<String, Value>) {
    let mut api = bench.settings("api").await;
    api.workers = 0;
    let service = Service::start(&api).await;
    let client = service.client.clone();
    let seconds = bench.args.seconds;

    if bench.args.runs(Section::B) {
        let b = submit_rate::section_b(&client, seconds).await;
        report.insert("b_submit".into(), b);
    }

    let mut c = Map::new();
    if bench.args.runs(Section::C) {
        let hot = get_job::section_c_hot(&client, seconds, bench.args.runs(Section::B)).await;
        c.insert("hot".into(), hot);
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
        let cold = get_job::section_c_cold(&client, seconds, &mut history).await;
        c.insert("cold".into(), cold);
    }
    if !c.is_empty() {
        report.insert("c_get".into(), Value::Object(c));
    }

    if bench.args.runs(Section::D) {
        let d = list_jobs::section_d(
            &service.state,
            &client,
            bench.args.history_rows,
            fill_seconds,
        )
        .await;
        report.insert("d_list".into(), d);
    }
    service.stop().await;
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(url) = args.watch_client.clone() {
        let job = args.watch_job.clone().expect("--watch-job");
        watchers::watch_client(url, job, args.watchers).await;
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
    report.insert("command".into(), json!(report::command_line()));
    report.insert("machine".into(), report::machine(&server).await);
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
        let a = submit_to_terminal::section_a(&mut bench).await;
        report.insert("a_submit_to_terminal".into(), a);
    }
    if bench.args.runs(Section::E) {
        let e = watchers::section_e(&mut bench).await;
        report.insert("e_watch_fanout".into(), e);
    }
    if bench.args.runs(Section::F) {
        let f = throughput::section_f(&mut bench).await;
        report.insert("f_throughput".into(), f);
    }
    if bench.args.runs(Section::G) {
        let g = git_sources::section_g(&mut bench).await;
        report.insert("g_git_sources".into(), g);
    }
    if bench.args.runs(Section::H) {
        let h = fleet::section_h(&mut bench).await;
        report.insert("h_fleet".into(), h);
    }
    if [Section::B, Section::C, Section::D]
        .iter()
        .any(|s| bench.args.runs(*s))
    {
        sections_bcd(&mut bench, &mut report).await;
    }

    let report = Value::Object(report);
    report::write(&report, &bench.args.out, bench.args.markdown.as_deref());
    bench.clean_up().await;
    progress("done");
}
