//! A randomized soak: hundreds of jobs while workers are killed (kill -9) and
//! Redis is restarted empty at random moments. It prints the counts and fails
//! on any acknowledged job that is lost or any job that ran twice.
//!
//! CI runs a small size; run it longer with, for example:
//!     SOAK_JOBS=1000 SOAK_SEED=42 cargo nextest run --test soak --no-capture
//! Submitting must finish within SOAK_SUBMIT_SECONDS (default 60 + one per
//! job), each call within 10 s.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ansible_runner_service::store::entities::{job_events, jobs};
use common::process::{RedisServer, ServiceProcess};
use common::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::Mutex;

/// xorshift64*: enough randomness for choosing faults, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_loses_nothing_and_runs_nothing_twice() {
    let total = env_or("SOAK_JOBS", 120);
    let seed = env_or("SOAK_SEED", chrono::Utc::now().timestamp_micros() as u64) | 1;
    println!("soak: {total} jobs, SOAK_SEED={seed}");

    let redis = Mutex::new(RedisServer::start().await);
    let mut history = History::new(Backend::Shared).await;
    history.settings.redis_url = Some(redis.lock().await.url());
    history.settings.lease = Duration::from_secs(3);
    history.settings.workers = 2;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let api = ServiceProcess::serve(&api_settings, &[]).await;
    let client = connect(api.addr.unwrap()).await;
    let workers = Mutex::new(vec![
        ServiceProcess::worker(&history.settings),
        ServiceProcess::worker(&history.settings),
    ]);

    // Submit every job, retrying each (same request_id) until acknowledged,
    // within a deadline: a service that stops answering fails the soak with
    // the job it was stuck on, instead of hanging it.
    let submit_limit = Duration::from_secs(env_or("SOAK_SUBMIT_SECONDS", 60 + total));
    let submitting = async {
        let deadline = tokio::time::Instant::now() + submit_limit;
        let mut acknowledged = Vec::new();
        for i in 0..total {
            let mut req = request("hello.yml");
            req.request_id = format!("soak-{seed}-{i}");
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let mut call = tonic::Request::new(req.clone());
                call.set_timeout(left.min(Duration::from_secs(10)));
                match client.clone().submit_job(call).await {
                    Ok(answer) => {
                        acknowledged.push(answer.into_inner().job.unwrap().job_id);
                        break;
                    }
                    Err(e) => {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "soak: job {i} of {total} not acknowledged within {submit_limit:?} \
                             (SOAK_SUBMIT_SECONDS; {} acknowledged before it); last answer {:?}: {}",
                            acknowledged.len(),
                            e.code(),
                            e.message()
                        );
                        println!("submit {i} refused ({}), retrying", e.code());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged
    };
    // Meanwhile, faults at random moments.
    let mut rng = Rng(seed);
    let (mut kills, mut restarts) = (0, 0);
    let chaos = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
            if rng.below(3) == 0 {
                redis.lock().await.restart_empty().await;
                restarts += 1;
            } else {
                let mut workers = workers.lock().await;
                let victim = rng.below(workers.len() as u64) as usize;
                workers[victim].kill9();
                workers[victim] = ServiceProcess::worker(&history.settings);
                kills += 1;
            }
        }
    };
    let acknowledged = tokio::select! {
        acknowledged = submitting => acknowledged,
        _ = chaos => unreachable!(),
    };
    println!("soak: faults injected: {kills} worker kills, {restarts} Redis restarts");

    // Every acknowledged job must reach a terminal state.
    let store = history.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let rows = loop {
        let rows: HashMap<String, jobs::Model> = jobs::Entity::find()
            .all(store.connection())
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        let open = acknowledged
            .iter()
            .filter(|id| {
                rows.get(*id)
                    .is_none_or(|r| r.status == "PENDING" || r.status == "RUNNING")
            })
            .count();
        if open == 0 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let starts = job_events::Entity::find()
        .filter(job_events::Column::Event.eq("playbook_on_start"))
        .all(store.connection())
        .await
        .unwrap()
        .into_iter()
        .fold(HashMap::<String, u32>::new(), |mut counts, e| {
            *counts.entry(e.job_id).or_default() += 1;
            counts
        });

    let mut by_status: HashMap<&str, u32> = HashMap::new();
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    for id in &acknowledged {
        match rows.get(id) {
            Some(row) if row.status != "PENDING" && row.status != "RUNNING" => {
                *by_status.entry(row.status.as_str()).or_default() += 1;
            }
            _ => lost.push(id.clone()),
        }
        if rows.get(id).is_some_and(|r| r.attempt > 1) || starts.get(id).copied().unwrap_or(0) > 1 {
            twice.push(id.clone());
        }
    }
    let terminal: u32 = by_status.values().sum();
    println!(
        "soak: acknowledged {} / terminal {terminal} / lost {} / run twice {} / by status {by_status:?}",
        acknowledged.len(),
        lost.len(),
        twice.len()
    );
    assert_eq!(acknowledged.len() as u64, total);
    assert!(lost.is_empty(), "lost jobs: {lost:?}");
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    assert!(
        by_status.contains_key("SUCCESSFUL"),
        "some jobs succeeded despite the faults"
    );
}
