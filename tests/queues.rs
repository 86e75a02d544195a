//! Worker groups: a job names a queue, workers serve one or more queues, and
//! a job for a queue no worker serves waits PENDING where it can be seen.

mod common;

use std::time::Duration;

use ansible_runner_service::pb::job_service_client::JobServiceClient;
use ansible_runner_service::pb::{self, ListJobsRequest, ListJobsResponse};
use common::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn on_queue(queue: &str) -> pb::SubmitJobRequest {
    let mut req = request("hello.yml");
    req.queue = queue.into();
    req
}

fn metric(family: &str, queue: &str) -> f64 {
    let metrics = ansible_runner_service::metrics::get();
    let label = vec![("queue".to_owned(), queue.to_owned())];
    match family {
        "depth" => metrics.queue_depth.get_or_create(&label).get() as f64,
        _ => metrics.oldest_pending.get_or_create(&label).get(),
    }
}

async fn pending_in(client: &mut JobClient, queue: &str) -> ListJobsResponse {
    client
        .list_jobs(ListJobsRequest {
            status: pb::JobStatus::Pending as i32,
            queue: queue.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

type JobClient = JobServiceClient<tonic::transport::Channel>;

async fn two_queues_with_workers_for_one(backend: Backend) {
    let history = History::new(backend).await;
    // The server's workers serve "default" only.
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let waiting = vec![
        submit(&mut client, on_queue("net-east")).await,
        submit(&mut client, on_queue("net-east")).await,
    ];
    let default = submit(&mut client, request("hello.yml")).await;
    assert_eq!(default.queue, "default");
    assert!(waiting.iter().all(|j| j.queue == "net-east"));

    let done = wait_terminal(&mut client, &default.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful);
    // The other queue's jobs wait, visibly: ListJobs, GetJob and the metrics.
    eventually(Duration::from_secs(20), "the queue's metrics", || async {
        (metric("depth", "net-east") == 2.0 && metric("oldest", "net-east") > 0.0).then_some(())
    })
    .await;
    let listed = pending_in(&mut client, "net-east").await;
    assert_eq!(listed.total_size, 2);
    assert!(listed.jobs.iter().all(|j| j.queue == "net-east"));
    assert_eq!(pending_in(&mut client, "default").await.total_size, 0);
    for job in &waiting {
        assert_eq!(
            status(&get(&mut client, &job.job_id).await),
            pb::JobStatus::Pending
        );
    }
    // Waiting in a queue is not lost: the sweeper queues nothing again.
    let redispatched = ansible_runner_service::metrics::get()
        .sweeper_actions
        .get_or_create(&vec![("action".into(), "redispatched".into())])
        .get();
    assert_eq!(redispatched, 0, "no job was taken as lost");

    // A worker for that queue (and another) runs them.
    let mut settings = history.settings.clone();
    settings.queues = vec!["other".into(), "net-east".into()];
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let state = server.state.clone();
        let stop = stop.clone();
        async move {
            ansible_runner_service::server::run_workers(state, &settings, stop)
                .await
                .unwrap()
        }
    });
    for job in &waiting {
        let done = wait_terminal(&mut client, &job.job_id).await;
        assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
        assert_eq!(done.queue, "net-east");
    }
    assert_eq!(pending_in(&mut client, "net-east").await.total_size, 0);
    stop.cancel();
    worker.await.unwrap();
    server.stop().await;
}

async fn queue_names_are_checked(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    for bad in ["-net", "net east", "net/east", "n\u{e9}t", &"q".repeat(65)] {
        let err = client.submit_job(on_queue(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(violations(&err), vec!["queue"], "{bad:?}");
        let err = client
            .list_jobs(ListJobsRequest {
                queue: bad.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    let ok = submit(&mut client, on_queue("dc1.net_east-2")).await;
    assert_eq!(ok.queue, "dc1.net_east-2");
    let page = client
        .list_jobs(ListJobsRequest {
            queue: "dc1.net_east-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 1);
    server.stop().await;
}

on_both_backends!(two_queues_with_workers_for_one, queue_names_are_checked);
