//! Chaos under load: jobs submitted continuously through two API servers
//! while workers are killed (kill -9) at random and Redis goes down for a
//! while and comes back empty. Every job ends within a stated bound after the
//! last submit, none runs twice, and the jobs submitted during the outage
//! keep their place: each is overtaken by at most the jobs submitted within
//! REDISPATCH_AFTER + 3 sweeps after it, plus the worker slots.
//!
//! Reproduce a run with CHAOS_SEED=<seed printed> cargo nextest run --test chaos --no-capture

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ansible_runner_service::store::entities::{job_events, jobs};
use common::process::{RedisServer, ServiceProcess};
use common::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::Mutex;

const JOBS: usize = 30;
const SPACING: Duration = Duration::from_millis(200);
/// Every job is terminal this long after the last submit.
const TERMINAL_BOUND: Duration = Duration::from_secs(50);
const WORKERS: usize = 3;
const SLOTS_PER_WORKER: usize = 2;
const REDIS_DOWN: Duration = Duration::from_secs(2);

/// xorshift64*, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_job_ends_once_and_keeps_its_place() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(chrono::Utc::now().timestamp_micros() as u64)
        | 1;
    println!("chaos: {JOBS} jobs, CHAOS_SEED={seed}");

    let redis = Mutex::new(RedisServer::start().await);
    let mut history = History::new(Backend::Shared).await;
    history.settings.redis_url = Some(redis.lock().await.url());
    history.settings.lease = Duration::from_secs(3);
    history.settings.workers = SLOTS_PER_WORKER;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let apis = [
        ServiceProcess::serve(&api_settings, &[]).await,
        ServiceProcess::serve(&api_settings, &[]).await,
    ];
    let clients = [
        connect(apis[0].addr.unwrap()).await,
        connect(apis[1].addr.unwrap()).await,
    ];
    let workers = Mutex::new(
        (0..WORKERS)
            .map(|_| ServiceProcess::worker(&history.settings))
            .collect::<Vec<_>>(),
    );

    // Submit continuously, alternating servers; a refused submit is retried
    // (same request_id) on the other server.
    let submitting = async {
        let mut acknowledged = Vec::new();
        for i in 0..JOBS {
            let mut req = request("hello.yml");
            req.request_id = format!("chaos-{seed}-{i}");
            let mut server = i % 2;
            loop {
                match clients[server].clone().submit_job(req.clone()).await {
                    Ok(answer) => {
                        acknowledged.push(answer.into_inner().job.unwrap().job_id);
                        break;
                    }
                    Err(e) => {
                        println!("submit {i} refused ({}), retrying", e.code());
                        server = 1 - server;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            tokio::time::sleep(SPACING).await;
        }
        (acknowledged, tokio::time::Instant::now())
    };
    // Meanwhile: worker kills at random moments, and once (as the first or
    // second fault) Redis down for REDIS_DOWN, back empty.
    let mut rng = Rng(seed);
    let mut kills = 0;
    let mut outage = None;
    let chaos = async {
        // Within the first 5 s: the submits last at least JOBS × SPACING (6 s)
        // and each one during the outage 1 s more.
        let outage_step = rng.below(2);
        for step in 0.. {
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(1500))).await;
            if step == outage_step {
                let from = chrono::Utc::now();
                redis.lock().await.restart_empty_after(REDIS_DOWN).await;
                outage = Some((from, chrono::Utc::now()));
            } else {
                let mut workers = workers.lock().await;
                let victim = rng.below(WORKERS as u64) as usize;
                workers[victim].kill9();
                workers[victim] = ServiceProcess::worker(&history.settings);
                kills += 1;
            }
        }
    };
    let (acknowledged, last_submit) = tokio::select! {
        done = submitting => done,
        _ = chaos => unreachable!(),
    };
    let (outage_from, outage_to) = outage.expect("the outage happened during the submits");
    println!("chaos: {kills} worker kills, Redis down {outage_from} .. {outage_to}");

    // Every acknowledged job is terminal within the bound.
    let store = history.store().await;
    let rows: HashMap<String, jobs::Model> = loop {
        let rows: HashMap<String, jobs::Model> = jobs::Entity::find()
            .all(store.connection())
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        let open: Vec<&String> = acknowledged
            .iter()
            .filter(|id| {
                rows.get(*id)
                    .is_none_or(|r| r.status == "PENDING" || r.status == "RUNNING")
            })
            .collect();
        if open.is_empty() {
            break rows;
        }
        assert!(
            last_submit.elapsed() < TERMINAL_BOUND,
            "{} jobs not terminal {TERMINAL_BOUND:?} after the last submit: {open:?}",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "chaos: every job terminal {:?} after the last submit",
        last_submit.elapsed()
    );

    // None ran twice.
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
    let twice: Vec<&String> = acknowledged
        .iter()
        .filter(|id| rows[*id].attempt > 1 || starts.get(*id).copied().unwrap_or(0) > 1)
        .collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    let mut by_status: HashMap<&str, u32> = HashMap::new();
    for id in &acknowledged {
        *by_status.entry(rows[id].status.as_str()).or_default() += 1;
    }
    println!("chaos: by status {by_status:?}");
    assert!(by_status.contains_key("SUCCESSFUL"));

    // Order: a job submitted during the outage is overtaken (a job submitted
    // after it started before it) only by jobs submitted within the window
    // after it, plus those the worker slots had already taken.
    let window = (history.settings.redispatch_after + 3 * history.settings.sweep_interval)
        .as_micros() as i64;
    let mut ran: Vec<(i64, i64)> = acknowledged
        .iter()
        .filter_map(|id| Some((rows[id].created_at, rows[id].started_at?)))
        .collect();
    ran.sort();
    let (from, to) = (outage_from.timestamp_micros(), outage_to.timestamp_micros());
    let mut during = 0;
    let mut worst = 0;
    for (i, &(created, started)) in ran.iter().enumerate() {
        let later = &ran[i + 1..];
        let overtaken = later.iter().filter(|(_, s)| *s < started).count();
        worst = worst.max(overtaken);
        if created < from || created > to {
            continue;
        }
        during += 1;
        let near = later.iter().filter(|(c, _)| *c <= created + window).count();
        let bound = near + WORKERS * SLOTS_PER_WORKER;
        assert!(
            overtaken <= bound,
            "a job submitted during the outage was overtaken by {overtaken} later jobs; bound {bound}"
        );
    }
    println!("chaos: {during} jobs submitted during the outage; most overtaken job (any): {worst}");
    assert!(during > 0, "some jobs were submitted during the outage");
    drop(apis);
}
