//! Section (b): SubmitJob throughput and p99 at 64 concurrent callers, on an
//! API server without workers (every submit is a committed transaction).

use ansible_runner_service::pb::{self, job_service_client::JobServiceClient};
use serde_json::Value;
use tonic::transport::Channel;

use crate::harness::{load, progress, CALLERS};

/// (b) SubmitJob from `CALLERS` callers for `seconds`.
pub async fn section_b(client: &JobServiceClient<Channel>, seconds: u64) -> Value {
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
    submitted.report()
}
