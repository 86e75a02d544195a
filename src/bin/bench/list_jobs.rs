//! Section (d): ListJobs p50/p99 over the filled history: the first page and
//! a page 1,000 pages deep by token, with and without a status filter.

use std::time::{Duration, Instant};

use ansible_runner_service::app::AppState;
use ansible_runner_service::app::PageToken;
use ansible_runner_service::domain::JobStatus;
use ansible_runner_service::pb::{self, job_service_client::JobServiceClient};
use ansible_runner_service::store::{Cursor, ListFilter};
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

use crate::harness::{progress, summary};

/// Longest section (d) spends on one kind of page (200 calls at most).
const LIST_TIME: Duration = Duration::from_secs(60);

/// (d) ListJobs calls on `state`'s history of `rows` filled jobs.
pub async fn section_d(
    state: &AppState,
    client: &JobServiceClient<Channel>,
    rows: usize,
    fill_seconds: f64,
) -> Value {
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
    json!({"rows": rows, "fill_seconds": fill_seconds, "calls": list})
}
