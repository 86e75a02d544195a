//! Section (c): GetJob throughput and p99 at 64 callers, hot (jobs in the
//! live state) and cold (jobs only in the history, each asked for once, in a
//! random order, so every call misses Redis and reads MariaDB).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ansible_runner_service::pb::{self, job_service_client::JobServiceClient};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::harness::{load, now_us, progress, submit, CALLERS};

/// (c) GetJob on jobs just submitted, which the live state holds; 100 are
/// submitted first unless section (b) ran before on the same service.
pub async fn section_c_hot(
    client: &JobServiceClient<Channel>,
    seconds: u64,
    after_b: bool,
) -> Value {
    progress("(c) GetJob, hot");
    // Hot: jobs just submitted, which the live state holds.
    if !after_b {
        for _ in 0..100 {
            submit(client, "hello.yml").await;
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
    hot.report()
}

/// (c) GetJob on the filled history's jobs, which were never in the live
/// state.
pub async fn section_c_cold(
    client: &JobServiceClient<Channel>,
    seconds: u64,
    history: &mut [uuid::Uuid],
) -> Value {
    progress("(c) GetJob, cold");
    // Cold: the filled jobs were never in the live state. GetJob misses
    // Redis, reads MariaDB (the job's row, then its stdout) and refills
    // Redis; so each id is asked for once, in a random order. Past the
    // end of the list (a small history) ids repeat and are counted.
    shuffle(history);
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
    cold
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
