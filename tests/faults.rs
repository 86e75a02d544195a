//! The fault suite: crashes, pauses, restarts and outages, each checked by
//! the end state in the history and by what watchers received.

mod common;

use std::time::Duration;

use ansible_runner_service::pb::{
    self, watch_job_response::Kind, ListJobsRequest, WatchJobRequest,
};
use ansible_runner_service::store::entities::jobs;
use ansible_runner_service::worker::ExecutorKind;
use common::process::{RedisServer, ServiceProcess};
use common::*;
use sea_orm::EntityTrait;
use serde_json::json;

async fn job_row(history: &History, job_id: &str) -> jobs::Model {
    let store = history.store().await;
    jobs::Entity::find_by_id(job_id.to_owned())
        .one(store.connection())
        .await
        .unwrap()
        .expect("job row")
}

/// The process group of a job while it runs.
async fn running_pgid(history: &History, job_id: &str) -> i32 {
    eventually(
        Duration::from_secs(60),
        "the run's process group",
        || async { job_row(history, job_id).await.run_pgid },
    )
    .await
}

/// Settings for a deployment of separate processes sharing MariaDB and Redis.
async fn deployment() -> History {
    let mut history = History::new(Backend::Shared).await;
    history.settings.lease = Duration::from_secs(3);
    history.settings.workers = 1;
    history
}

fn slow(steps: u32, step_seconds: f64) -> pb::SubmitJobRequest {
    let mut req = request("slow.yml");
    req.extra_vars = vars(json!({"steps": steps, "step_seconds": step_seconds}));
    req
}

fn assert_gap_free(events: &[pb::JobEvent]) {
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_ends_worker_lost_and_its_restart_reaps_the_run() {
    let mut history = deployment().await;
    // A long task that prints nothing: its processes outlive a killed worker.
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let api = TestServer::start(&api_settings).await;
    let mut client = api.client.clone();
    let mut worker = ServiceProcess::worker(&history.settings);

    let job = submit(&mut client, request("stubborn.yml")).await;
    let watcher = {
        let mut client = client.clone();
        let id = job.job_id.clone();
        tokio::spawn(async move { watch_all(&mut client, &id, 0).await })
    };
    // Wait until the task's shell runs (ansible-playbook, its worker, the module...).
    eventually(Duration::from_secs(60), "the task to run", || async {
        (job_processes(&job.job_id).len() >= 3).then_some(())
    })
    .await;
    // The worker's own children: its warm executor processes, if any.
    let warm = children_named(worker.pid(), "warm_executor.py");
    if history.settings.executor == ExecutorKind::Warm {
        assert!(!warm.is_empty(), "the worker runs warm processes");
    }
    worker.kill9();
    // They do not outlive it (the one running the job's child leaves it to
    // be reaped like a plain ansible-playbook).
    eventually(
        Duration::from_secs(20),
        "warm processes to exit with their worker",
        || async { warm.iter().all(|pid| !alive(*pid)).then_some(()) },
    )
    .await;

    // The lease (3 s) runs out and the sweeper (every 1 s) ends the job,
    // well within the 30 s the service promises.
    let done = eventually(Duration::from_secs(30), "WORKER_LOST", || async {
        let job = get(&mut client.clone(), &job.job_id).await;
        (status(&job) == pb::JobStatus::Failed).then_some(job)
    })
    .await;
    assert_eq!(done.error_reason, "WORKER_LOST");
    assert_eq!(done.attempt, 1, "never re-run automatically");
    let messages = watcher.await.unwrap();
    assert!(
        matches!(messages.last().and_then(|m| m.kind.as_ref()), Some(Kind::StatusChange(j)) if j.error_reason == "WORKER_LOST")
    );
    assert_gap_free(&events(&messages));
    // Usually the lost run is still running here (its task prints nothing);
    // if Ansible ended it on its own, there is nothing left to reap.
    let orphans = !job_processes(&job.job_id).is_empty();
    println!("processes of the lost run alive before the restart: {orphans}");

    // The worker's next life kills what its previous one left running.
    let restarted = ServiceProcess::worker(&history.settings);
    no_process_left(&job.job_id).await;
    eventually(
        Duration::from_secs(30),
        "the lost run's record to be cleared",
        || async {
            job_row(&history, &job.job_id)
                .await
                .run_pgid
                .is_none()
                .then_some(())
        },
    )
    .await;
    if orphans {
        let log = std::fs::read_to_string(&restarted.log).unwrap();
        assert!(log.contains("killed a run left by a dead worker"), "{log}");
    }
    let after = get(&mut client, &job.job_id).await;
    assert_eq!(after, done, "the terminal state is final");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_cannot_write_after_losing_its_lease() {
    let history = deployment().await;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let api = TestServer::start(&api_settings).await;
    let mut client = api.client.clone();
    let worker = ServiceProcess::worker(&history.settings);

    let job = submit(&mut client, slow(12, 0.5)).await;
    running_pgid(&history, &job.job_id).await;
    worker.signal(libc::SIGSTOP);
    let lost = eventually(
        Duration::from_secs(30),
        "WORKER_LOST while paused",
        || async {
            let job = get(&mut client.clone(), &job.job_id).await;
            (status(&job) == pb::JobStatus::Failed).then_some(job)
        },
    )
    .await;
    assert_eq!(lost.error_reason, "WORKER_LOST");
    let row = job_row(&history, &job.job_id).await;

    worker.signal(libc::SIGCONT);
    // Back, the worker finds its lease gone and stops its playbook.
    no_process_left(&job.job_id).await;
    // Give it every chance to write late: wait until it has finished with the job.
    eventually(
        Duration::from_secs(30),
        "the worker to drop the run",
        || async {
            std::fs::read_to_string(&worker.log)
                .unwrap()
                .contains("lease lost")
                .then_some(())
        },
    )
    .await;
    let after = job_row(&history, &job.job_id).await;
    assert_eq!(after, row, "nothing was written after the lease was lost");
    assert_eq!(get(&mut client, &job.job_id).await, lost);
    let stored = events(&watch_all(&mut client, &job.job_id, 0).await);
    assert_eq!(stored.len() as i64, row.last_seq);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_killed_after_the_commit_still_gets_the_job_run() {
    let history = deployment().await;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    api_settings.redispatch_after = Duration::from_secs(1);
    // This API server aborts (as kill -9 would) right after committing a job.
    let mut doomed =
        ServiceProcess::serve(&api_settings, &[("ARS_CRASH_AT", "after_commit")]).await;
    let mut client = connect(doomed.addr.unwrap()).await;
    let mut req = request("hello.yml");
    req.request_id = "crash-after-commit".into();
    let err = client
        .submit_job(req.clone())
        .await
        .expect_err("the server died mid-call");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{err:?}"
    );
    let exit = doomed.wait_exit(Duration::from_secs(10)).await;
    assert!(!exit.success());

    // The caller retries on a healthy server with the same request_id.
    let api = TestServer::start(&api_settings).await;
    let mut client = api.client.clone();
    let job = submit(&mut client, req).await;
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1, "the retry found the committed job");
    let _worker = ServiceProcess::worker(&history.settings);
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful);
    assert_eq!(done.attempt, 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_loses_no_job_and_no_event() {
    let mut redis = RedisServer::start().await;
    let mut history = deployment().await;
    history.settings.redis_url = Some(redis.url());
    // Leases are not what this test is about: a lease long enough that a
    // loaded machine's slow renewals cannot lose the running job.
    history.settings.lease = Duration::from_secs(15);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let running = submit(&mut client, slow(8, 0.5)).await;
    let pending: Vec<pb::Job> = vec![
        submit(&mut client, request("hello.yml")).await,
        submit(&mut client, request("hello.yml")).await,
    ];
    let mut watchers = Vec::new();
    for job in std::iter::once(&running).chain(&pending) {
        let mut client = client.clone();
        let id = job.job_id.clone();
        watchers.push(tokio::spawn(
            async move { watch_all(&mut client, &id, 0).await },
        ));
    }
    running_pgid(&history, &running.job_id).await;
    redis.restart_empty().await;

    for (job, watcher) in std::iter::once(&running).chain(&pending).zip(watchers) {
        let messages = watcher.await.unwrap();
        let Some(Kind::StatusChange(done)) = messages.last().and_then(|m| m.kind.clone()) else {
            panic!("watcher of {} got no status_change", job.job_id);
        };
        assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
        let seen = events(&messages);
        assert_gap_free(&seen);
        let stored = events(&watch_all(&mut client, &job.job_id, 0).await);
        assert_eq!(seen, stored, "the watcher saw every stored event");
        assert!(stored.iter().any(|e| e.event == "playbook_on_stats"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_across_an_api_server_restart() {
    let history = deployment().await;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let mut api = ServiceProcess::serve(&api_settings, &[]).await;
    let _worker = ServiceProcess::worker(&history.settings);
    let mut client = connect(api.addr.unwrap()).await;
    let job = submit(&mut client, slow(6, 0.5)).await;

    let mut first = Vec::new();
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: job.job_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while first.len() < 5 {
        if let Some(Kind::Event(event)) = stream.message().await.unwrap().expect("open").kind {
            first.push(event);
        }
    }
    api.kill9();
    assert!(
        stream.message().await.is_err(),
        "the stream broke with the server"
    );

    let api = ServiceProcess::serve(&api_settings, &[]).await;
    let mut client = connect(api.addr.unwrap()).await;
    let rest = watch_all(&mut client, &job.job_id, first.last().unwrap().sequence).await;
    let mut all = first;
    all.extend(events(&rest));
    assert_gap_free(&all);
    let Some(Kind::StatusChange(done)) = rest.last().and_then(|m| m.kind.clone()) else {
        panic!("no status_change after the restart");
    };
    assert_eq!(status(&done), pb::JobStatus::Successful);
    assert_eq!(all, events(&watch_all(&mut client, &job.job_id, 0).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_runs_past_the_grace_and_kills_their_groups() {
    let mut history = History::new(Backend::Embedded).await;
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    history.settings.shutdown_grace = Duration::from_secs(1);
    history.settings.kill_grace = Duration::from_secs(1);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let stubborn = submit(&mut client, request("stubborn.yml")).await;
    running_pgid(&history, &stubborn.job_id).await;
    // Let the task start (and its shell ignore SIGTERM).
    eventually(
        Duration::from_secs(60),
        "the stubborn task to start",
        || {
            let mut client = client.clone();
            let id = stubborn.job_id.clone();
            async move {
                let messages = client
                    .watch_job(WatchJobRequest {
                        job_id: id,
                        after_sequence: 0,
                    })
                    .await
                    .ok()?
                    .into_inner();
                let mut messages = messages;
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(200), messages.message())
                        .await
                        .ok()?
                {
                    if matches!(m.kind, Some(Kind::Event(ref e)) if e.event == "runner_on_start") {
                        return Some(());
                    }
                }
                None
            }
        },
    )
    .await;
    server.stop().await;
    no_process_left(&stubborn.job_id).await;

    let server = TestServer::start(&{
        let mut s = history.settings.clone();
        s.workers = 0;
        s
    })
    .await;
    let done = get(&mut server.client.clone(), &stubborn.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Canceled);
    assert_eq!(done.error_reason, "SHUTDOWN");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_descendants_that_ignore_sigterm() {
    let mut history = History::new(Backend::Embedded).await;
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    history.settings.kill_grace = Duration::from_secs(1);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("stubborn.yml")).await;
    running_pgid(&history, &job.job_id).await;
    let canceled = client
        .cancel_job(pb::CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(status(&canceled), pb::JobStatus::Canceled);
    no_process_left(&job.job_id).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_of_stdout_keeps_memory_bounded() {
    let mut history = deployment().await;
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let api = TestServer::start(&api_settings).await;
    let mut client = api.client.clone();
    let worker = ServiceProcess::worker(&history.settings);

    let job = submit(&mut client, request("flood.yml")).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    let result = done.result.unwrap();
    assert!(result.stdout_truncated);
    assert_eq!(
        result.stdout.len(),
        16 << 20,
        "stdout is kept up to the 16 MiB cap"
    );
    let peak_mib = worker.peak_rss_kib() / 1024;
    println!("worker peak RSS after 1 GiB of stdout: {peak_mib} MiB");
    assert!(
        peak_mib < 256,
        "the worker's memory stayed bounded: peak {peak_mib} MiB"
    );
    api.stop().await;
}
