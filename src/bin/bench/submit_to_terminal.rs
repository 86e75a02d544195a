//! Section (a): submit-to-terminal latency of hello.yml, one job at a time,
//! for the warm and the plain executor, next to ansible-playbook run directly.
//! Its submit-and-watch step, [`run_to_end`], takes any SubmitJob request;
//! section (g) uses it for git playbooks.

use std::time::Instant;

use ansible_runner_service::pb::{
    self, job_service_client::JobServiceClient, watch_job_response::Kind,
};
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

use crate::harness::{
    median, playbook_request, progress, submit_request, summary, Bench, Direct, Service, EXECUTORS,
};

/// Submits `request`, then watches the job to its terminal status. Returns
/// the seconds from the submit to the terminal status, and the terminal job
/// (None if the stream ended without one).
pub async fn run_to_end(
    client: &JobServiceClient<Channel>,
    request: &pb::SubmitJobRequest,
) -> (f64, Option<pb::Job>) {
    let mut client = client.clone();
    let started = Instant::now();
    let job_id = submit_request(&client, request).await;
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id,
            after_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut terminal = None;
    while let Some(message) = stream.message().await.expect("stream") {
        if let Some(Kind::StatusChange(job)) = message.kind {
            terminal = Some(job);
            break;
        }
    }
    (started.elapsed().as_secs_f64(), terminal)
}

/// Whether a terminal job (from [`run_to_end`]) ended SUCCESSFUL.
pub fn successful(job: &Option<pb::Job>) -> bool {
    job.as_ref()
        .is_some_and(|job| job.status == pb::JobStatus::Successful as i32)
}

/// (a) submit `request` → watch to the end, one job at a time. Returns the
/// latencies in seconds and how many jobs did not end SUCCESSFUL.
async fn latency(
    client: &JobServiceClient<Channel>,
    request: &pb::SubmitJobRequest,
    jobs: usize,
) -> (Vec<f64>, usize) {
    let mut samples = Vec::new();
    let mut failed = 0;
    for _ in 0..jobs {
        let (seconds, job) = run_to_end(client, request).await;
        if !successful(&job) {
            failed += 1;
        }
        samples.push(seconds);
    }
    (samples, failed)
}

/// (a) for each executor, and ansible-playbook direct.
pub async fn section_a(bench: &mut Bench) -> Value {
    let jobs = bench.args.latency_jobs;
    let mut report = Map::new();
    let mut services = Vec::new();
    for (label, kind) in EXECUTORS {
        let mut settings = bench.settings(&format!("a_{label}")).await;
        settings.executor = kind;
        progress(&format!("(a) {label} executor: {jobs} jobs"));
        let service = Service::start(&settings).await;
        let hello = playbook_request("hello.yml");
        latency(&service.client, &hello, 1).await;
        let (samples, failed) = latency(&service.client, &hello, jobs).await;
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
