//! Section (f): throughput of hello.yml jobs on 4 workers, for each executor,
//! next to `xargs -P 4 ansible-playbook` on as many runs.

use std::time::{Duration, Instant};

use ansible_runner_service::domain::JobStatus;
use ansible_runner_service::store::ListFilter;
use serde_json::{json, Map, Value};

use crate::harness::{progress, submit, wait_idle, Bench, Direct, Service, EXECUTORS};

/// Workers (and xargs -P) of section (f).
const THROUGHPUT_WORKERS: usize = 4;

/// (f) `--throughput-jobs` hello.yml jobs on 4 workers, per executor, next
/// to xargs -P 4. Each service first runs one job per worker, not counted.
/// The time runs from the first submit until no job is pending or running
/// (checked every 20 ms).
pub async fn section_f(bench: &mut Bench) -> Value {
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
