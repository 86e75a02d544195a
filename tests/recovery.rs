//! What the service does when parts of it are lost: a worker that stops
//! renewing its lease, duplicate deliveries, a live state that lost a job or
//! a dispatch, a database that cannot be reached.

mod common;

use std::time::Duration;

use ansible_runner_service::live::Queued;
use ansible_runner_service::pb::{self, ListJobsRequest};
use common::*;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

async fn lost_worker_ends_worker_lost(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    let id: uuid::Uuid = job.job_id.parse().unwrap();

    // A worker claims the job and then vanishes without renewing its lease.
    let store = history.store().await;
    let now = chrono::Utc::now();
    let claimed = store
        .claim(
            id,
            "ghost/1/dead",
            "ghost",
            now,
            now + chrono::Duration::seconds(1),
        )
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(claimed.attempt, 1);
    ansible_runner_service::live::announce(&server.state.live, &claimed).await;

    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Failed);
    assert_eq!(done.error_reason, "WORKER_LOST");
    assert!(done.error.contains("ghost/1/dead"), "{}", done.error);

    // The late worker cannot write anything after the fact.
    let outcome = ansible_runner_service::domain::Outcome {
        status: ansible_runner_service::domain::JobStatus::Successful,
        result: None,
        error: None,
        error_reason: None,
    };
    let late = store
        .finish(id, 1, "ghost/1/dead", &outcome, now)
        .await
        .unwrap();
    assert!(
        late.is_none(),
        "a fenced write after the lease expired changes nothing"
    );
    assert_eq!(get(&mut client, &job.job_id).await, done);
    server.stop().await;
}

async fn duplicate_deliveries_run_a_job_once(backend: Backend) {
    let history = History::new(backend).await;
    let first = TestServer::start(&history.settings).await;
    // With Redis, a second process takes jobs from the same dispatch.
    let second = match backend {
        Backend::Shared => Some(TestServer::start(&history.settings).await),
        Backend::Embedded => None,
    };
    let mut client = first.client.clone();
    let mut jobs = Vec::new();
    for _ in 0..6 {
        let job = submit(&mut client, request("hello.yml")).await;
        let id: uuid::Uuid = job.job_id.parse().unwrap();
        // Deliver every job twice more, wherever it is by then (waiting,
        // taken, running): a live state that lost track of it queues it.
        let created = job.created_at.unwrap();
        let queued = Queued {
            id,
            queue: "default".into(),
            created_at: created.seconds * 1_000_000 + i64::from(created.nanos) / 1000,
        };
        for _ in 0..2 {
            first.state.live.settle(id).await.unwrap();
            first
                .state
                .live
                .dispatch(std::slice::from_ref(&queued))
                .await
                .unwrap();
        }
        jobs.push(job);
    }
    for job in &jobs {
        let messages = watch_all(&mut client, &job.job_id, 0).await;
        let starts = events(&messages)
            .iter()
            .filter(|e| e.event == "playbook_on_start")
            .count();
        assert_eq!(starts, 1, "the playbook ran once");
        let done = get(&mut client, &job.job_id).await;
        assert_eq!(status(&done), pb::JobStatus::Successful);
        assert_eq!(done.attempt, 1, "claimed once");
    }
    if let Some(second) = second {
        second.stop().await;
    }
    first.stop().await;
}

/// Secret vars are kept before the job is committed: when Redis cannot keep
/// them, nothing is written, the answer says so, and a retry with the same
/// request_id once Redis is back gets a job that runs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_secrets_cannot_be_kept_writes_nothing_and_a_retry_runs() {
    let mut history = History::new(Backend::Shared).await;
    let mut redis = common::process::RedisServer::start().await;
    history.settings.redis_url = Some(redis.url());
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut req = request("hello.yml");
    req.request_id = "deploy-7".into();
    req.secret_extra_vars = vars(serde_json::json!({"token": "abcdef"}));

    redis.stop();
    let refused = client.submit_job(req.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("nothing was changed"),
        "{refused:?}"
    );
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing written: {:?}", listed.jobs);

    redis.start_again().await;
    let job = eventually(
        Duration::from_secs(30),
        "a retry once Redis is back",
        || {
            let mut client = client.clone();
            let req = req.clone();
            async move {
                client
                    .submit_job(req)
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().job)
            }
        },
    )
    .await;
    let again = submit(&mut client, req.clone()).await;
    assert_eq!(again.job_id, job.job_id, "the request_id names one job");
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    assert!(done.has_secret_extra_vars);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_falls_back_to_the_history_when_redis_lost_the_job() {
    let history = History::new(Backend::Shared).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    let done = wait_terminal(&mut client, &job.job_id).await;

    let redis = history.redis().await;
    let key = format!("{}:job:{}", history.settings.redis_prefix, job.job_id);
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(
        ttl > 23 * 3600 && ttl <= 24 * 3600,
        "live state kept 24 h, got {ttl}"
    );
    let _: i64 = redis.del(&key).await.unwrap();
    assert_eq!(
        get(&mut client, &job.job_id).await,
        done,
        "read from the history"
    );
    let refilled: bool = redis.exists(&key).await.unwrap();
    assert!(refilled, "the live state is rebuilt on read");

    // An unreadable entry is ignored, not served.
    let _: () = redis
        .set(&key, "{not json", None, None, false)
        .await
        .unwrap();
    assert_eq!(get(&mut client, &job.job_id).await, done);
    redis.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_job_lost_from_the_dispatch_still_runs() {
    let mut history = History::new(Backend::Shared).await;
    history.settings.workers = 0;
    let api = TestServer::start(&history.settings).await;
    let mut client = api.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;

    // Redis forgets everything about it (as after a restart without persistence).
    let redis = history.redis().await;
    let prefix = &history.settings.redis_prefix;
    let _: i64 = redis
        .del(vec![
            format!("{prefix}:q:default"),
            format!("{prefix}:job:{}", job.job_id),
        ])
        .await
        .unwrap();
    redis.quit().await.unwrap();

    let mut worker_settings = history.settings.clone();
    worker_settings.workers = 2;
    let worker = TestServer::start(&worker_settings).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful);
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_unavailable_and_recovers() {
    let mut history = History::new(Backend::Shared).await;
    history.settings.workers = 0;
    let (proxy, settings) = history.through_proxy().await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    submit(&mut client, request("hello.yml")).await;

    let redis = history.redis().await;
    let queue = format!("{}:q:default", settings.redis_prefix);
    let queued_before: u64 = redis.zcard(&queue).await.unwrap();

    proxy.cut();
    let err = client.submit_job(request("hello.yml")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "UNAVAILABLE");
    let err = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let queued_after: u64 = redis.zcard(&queue).await.unwrap();
    assert_eq!(queued_before, queued_after, "nothing reached Redis");

    proxy.restore();
    let job = eventually(
        Duration::from_secs(30),
        "the service to serve again",
        || {
            let mut client = client.clone();
            async move { client.submit_job(request("hello.yml")).await.ok() }
        },
    )
    .await
    .into_inner()
    .job
    .unwrap();
    assert_eq!(status(&job), pb::JobStatus::Pending);
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.total_size, 2,
        "the refused submit left nothing behind"
    );
    redis.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_job_survives_a_brief_database_outage() {
    let history = History::new(Backend::Shared).await;
    let (proxy, settings) = history.through_proxy().await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let mut req = request("slow.yml");
    req.extra_vars = vars(serde_json::json!({"steps": 6, "step_seconds": 0.5}));
    let job = submit(&mut client, req).await;
    eventually(Duration::from_secs(60), "the job to run", || {
        let mut client = client.clone();
        let id = job.job_id.clone();
        async move { (status(&get(&mut client, &id).await) == pb::JobStatus::Running).then_some(()) }
    })
    .await;
    // Shorter than the lease (6 s): the worker keeps its claim and catches up.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    let stored = events(&watch_all(&mut client, &job.job_id, 0).await);
    let sequences: Vec<u64> = stored.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert!(
        stored.iter().any(|e| e.event == "playbook_on_stats"),
        "every event was stored"
    );
    server.stop().await;
}

/// Starts one worker slot (and a sweeper) on the server's own live state,
/// as a worker process sharing it would; stopped through the token.
fn start_worker(
    server: &TestServer,
    settings: &ansible_runner_service::settings::Settings,
    workers: usize,
    queues: &[&str],
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut settings = settings.clone();
    settings.workers = workers;
    settings.queues = queues.iter().map(|q| q.to_string()).collect();
    let stop = CancellationToken::new();
    let state = server.state.clone();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        ansible_runner_service::server::run_workers(state, &settings, token)
            .await
            .expect("workers");
    });
    (stop, handle)
}

fn sweeper_actions(action: &str) -> u64 {
    ansible_runner_service::metrics::get()
        .sweeper_actions
        .get_or_create(&vec![("action".into(), action.into())])
        .get()
}

/// A worker takes a job and dies before claiming it (here the test takes it
/// and walks away). The entry comes back: the job runs within
/// REDISPATCH_AFTER_SECONDS plus a sweep (plus the run ahead of it on the
/// one worker slot), ahead of the 100 jobs submitted after it, which wait.
async fn job_taken_by_a_dead_worker_runs_while_a_backlog_waits(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let api = TestServer::start(&history.settings).await;
    let mut client = api.client.clone();
    let lost = submit(&mut client, request("hello.yml")).await;
    let taken = api
        .state
        .live
        .next_dispatched(&["default".to_owned()], Duration::from_secs(5))
        .await
        .unwrap();
    let taken_at = chrono::Utc::now();
    assert_eq!(
        taken,
        Some(lost.job_id.parse().unwrap()),
        "the dead worker took it"
    );
    let mut backlog = Vec::new();
    for _ in 0..100 {
        backlog.push(submit(&mut client, request("hello.yml")).await.job_id);
    }

    let (stop, worker) = start_worker(&api, &history.settings, 1, &["default"]);
    let done = wait_terminal(&mut client, &lost.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    assert_eq!(done.attempt, 1);
    let started = done.started_at.unwrap();
    let started = chrono::DateTime::from_timestamp(started.seconds, started.nanos as u32).unwrap();
    // The bound: REDISPATCH_AFTER (2 s) + a sweep (1 s), plus room for the
    // worker's start and the one run ahead of it on a slow, loaded machine
    // (the 100 jobs behind it would take far longer).
    let bound = history.settings.redispatch_after
        + history.settings.sweep_interval
        + Duration::from_secs(15);
    let waited = (started - taken_at).to_std().unwrap_or_default();
    assert!(
        waited <= bound,
        "ran {waited:?} after it was taken; bound {bound:?}"
    );
    stop.cancel();
    worker.await.unwrap();

    // It did not wait for the backlog: most of it was still waiting.
    let mut waiting = 0;
    for id in &backlog {
        let job = get(&mut client, id).await;
        let later = job.started_at.is_none_or(|t| {
            chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap() > started
        });
        waiting += usize::from(later);
    }
    assert!(
        waiting >= 50,
        "only {waiting} of 100 later jobs still waited"
    );
    assert!(sweeper_actions("reclaimed") >= 1, "the reclaim is counted");
    api.stop().await;
}

on_both_backends!(
    lost_worker_ends_worker_lost,
    duplicate_deliveries_run_a_job_once,
    job_taken_by_a_dead_worker_runs_while_a_backlog_waits,
);
