//! Running jobs end to end: submit, watch, get, cancel, timeouts, on both the
//! embedded default and MariaDB + Redis, with the real ansible-playbook.

mod common;

use std::time::Duration;

use ansible_runner_service::pb::{self, watch_job_response::Kind, CancelJobRequest, JobOptions};
use common::*;
use serde_json::json;
use tonic::Code;

async fn hello_runs_and_streams_every_event(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let mut req = request("hello.yml");
    req.extra_vars = vars(json!({"who": "Ada"}));
    let job = submit(&mut client, req).await;
    assert_eq!(status(&job), pb::JobStatus::Pending);
    assert!(job.created_at.is_some());
    assert_eq!(
        job.timeout_seconds, 3600,
        "the default timeout is filled in"
    );

    let messages = watch_all(&mut client, &job.job_id, 0).await;
    assert!(
        matches!(
            messages.first().and_then(|m| m.kind.as_ref()),
            Some(Kind::Snapshot(_))
        ),
        "the first message is a snapshot"
    );
    let events = events(&messages);
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "sequences 1..n without gaps"
    );
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    for expected in [
        "playbook_on_start",
        "playbook_on_play_start",
        "playbook_on_task_start",
        "runner_on_ok",
        "playbook_on_stats",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let ok = events.iter().find(|e| e.event == "runner_on_ok").unwrap();
    assert_eq!(ok.host, "localhost");
    assert_eq!(ok.task, "Print greeting");
    assert_eq!(ok.play, "Say hello");
    assert!(
        ok.stdout.contains("Hello, Ada!"),
        "event stdout: {}",
        ok.stdout
    );

    let Some(Kind::StatusChange(done)) = messages.last().and_then(|m| m.kind.clone()) else {
        panic!("the last message is the status_change");
    };
    assert_eq!(messages.last().unwrap().sequence, events.len() as u64);
    assert_eq!(status(&done), pb::JobStatus::Successful);
    assert!(
        done.result.as_ref().unwrap().stdout.is_empty(),
        "watch messages leave stdout to the events"
    );
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(done.attempt, 1);

    let got = get(&mut client, &job.job_id).await;
    let result = got.result.clone().expect("result");
    assert_eq!(result.rc, 0);
    assert!(result.stdout.contains("Hello, Ada!"));
    assert!(result.stdout.contains("PLAY RECAP"));
    assert!(!result.stdout_truncated);
    let stats = result.stats.get("localhost").expect("stats for localhost");
    assert_eq!((stats.ok, stats.failed), (1, 0));
    let joined: String = events.iter().map(|e| e.stdout.as_str()).collect();
    assert_eq!(
        joined, result.stdout,
        "the events' stdout adds up to the job's"
    );
    let mut without_stdout = got.clone();
    without_stdout.result.as_mut().unwrap().stdout.clear();
    assert_eq!(without_stdout, done, "GetJob answers the same terminal job");
    server.stop().await;
}

async fn failing_playbook_ends_failed(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let job = submit(&mut client, request("fail.yml")).await;
    let messages = watch_all(&mut client, &job.job_id, 0).await;
    let events = events(&messages);
    assert!(events
        .iter()
        .any(|e| e.event == "runner_on_failed" && e.host == "localhost"));
    let done = get(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Failed);
    assert_eq!(done.error_reason, "PLAYBOOK_FAILED");
    assert_eq!(done.result.as_ref().unwrap().rc, 2);
    assert_eq!(done.result.as_ref().unwrap().stats["localhost"].failed, 1);
    server.stop().await;
}

async fn multi_play_reports_every_host(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let mut req = request("multi.yml");
    req.options = Some(JobOptions {
        forks: 5,
        verbosity: 1,
        ..Default::default()
    });
    let job = submit(&mut client, req).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    let stats = &done.result.as_ref().unwrap().stats;
    for host in ["localhost", "node1", "node2"] {
        assert!(stats.contains_key(host), "no stats for {host}: {stats:?}");
    }
    let messages = watch_all(&mut client, &job.job_id, 0).await;
    let events = events(&messages);
    let plays: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event == "playbook_on_play_start")
        .map(|e| e.play.as_str())
        .collect();
    assert!(plays.len() >= 2, "plays: {plays:?}");
    assert!(events.iter().any(|e| e.event == "runner_item_on_ok"));
    assert!(events.iter().any(|e| e.event == "runner_on_skipped"));
    assert!(events
        .iter()
        .any(|e| e.host == "node2" && e.event == "runner_on_ok"));
    server.stop().await;
}

async fn cancel_pending_then_finished_is_refused(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let job = submit(&mut client, request("hello.yml")).await;
    let watcher = {
        let mut client = client.clone();
        let id = job.job_id.clone();
        tokio::spawn(async move { wait_terminal(&mut client, &id).await })
    };
    let canceled = client
        .cancel_job(CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(status(&canceled), pb::JobStatus::Canceled);
    assert_eq!(canceled.error_reason, "CANCELED");
    assert!(canceled.finished_at.is_some());
    let seen = watcher.await.unwrap();
    assert_eq!(
        status(&seen),
        pb::JobStatus::Canceled,
        "watchers get the terminal status"
    );

    let again = client
        .cancel_job(CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .expect_err("a finished job cannot be canceled");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(reason(&again), "INVALID_STATE");
    server.stop().await;
}

/// The process group a job runs in, as the history records it while the
/// run lasts (it is cleared when the run ends).
async fn cancel_running_kills_the_process_group(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let job = submit(&mut client, request("slow.yml")).await;
    // Wait until the playbook is really running tasks.
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job.job_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("stream open");
        if let Some(Kind::Event(event)) = message.kind {
            if event.event == "playbook_on_task_start" {
                break;
            }
        }
    }
    run_pgid(&history, &job.job_id).await;
    assert!(
        !job_processes(&job.job_id).is_empty(),
        "the playbook's processes carry the job id"
    );

    let answer = client
        .cancel_job(CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(status(&answer), pb::JobStatus::Canceled, "{answer:?}");
    assert_eq!(answer.error_reason, "CANCELED");
    // The open stream ends with the terminal status.
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        last = message.kind;
    }
    assert!(
        matches!(last, Some(Kind::StatusChange(ref j)) if status(j) == pb::JobStatus::Canceled)
    );
    no_process_left(&job.job_id).await;
    server.stop().await;
}

async fn timeout_ends_timed_out(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let mut req = request("slow.yml");
    req.timeout_seconds = 2;
    let job = submit(&mut client, req).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::TimedOut);
    assert_eq!(done.error_reason, "TIMED_OUT");
    assert!(done.result.is_some(), "the partial output is kept");
    no_process_left(&job.job_id).await;
    server.stop().await;
}

async fn watch_resumes_after_sequence_without_gaps(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let mut req = request("slow.yml");
    req.extra_vars = vars(json!({"steps": 4, "step_seconds": 0.5}));
    let job = submit(&mut client, req).await;

    // Read a few events, then drop the connection mid-run.
    let mut first = Vec::new();
    {
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job.job_id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        while first.len() < 4 {
            let message = stream.message().await.unwrap().expect("open");
            if let Some(Kind::Event(event)) = message.kind {
                first.push(event);
            }
        }
    }
    let resume_from = first.last().unwrap().sequence;
    let rest = watch_all(&mut client, &job.job_id, resume_from).await;
    assert!(matches!(
        rest.first().and_then(|m| m.kind.as_ref()),
        Some(Kind::Snapshot(_))
    ));
    let mut all = first.clone();
    all.extend(events(&rest));
    let sequences: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "nothing missed or repeated"
    );
    assert!(matches!(
        rest.last().and_then(|m| m.kind.as_ref()),
        Some(Kind::StatusChange(_))
    ));

    // Watching the finished job replays exactly what is stored, then ends.
    let replay = events(&watch_all(&mut client, &job.job_id, 0).await);
    assert_eq!(replay, all);
    server.stop().await;
}

async fn many_watchers_see_the_same_sequence(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    // A second API server (no workers) sharing the same history and live state:
    // only meaningful for the shared backend, where it is another "process".
    let mut other_settings = history.settings.clone();
    other_settings.workers = 0;
    let other = (backend == Backend::Shared).then_some(other_settings);
    let second = match &other {
        Some(settings) => Some(TestServer::start(settings).await),
        None => None,
    };

    let mut req = request("slow.yml");
    req.extra_vars = vars(json!({"steps": 3, "step_seconds": 0.3}));
    let job = submit(&mut client, req).await;
    let mut watchers = Vec::new();
    for i in 0..6 {
        let mut c = match (&second, i % 2) {
            (Some(s), 1) => s.client.clone(),
            _ => client.clone(),
        };
        let id = job.job_id.clone();
        watchers.push(tokio::spawn(async move { watch_all(&mut c, &id, 0).await }));
    }
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(events(&w.await.unwrap()));
    }
    for s in &seen[1..] {
        assert_eq!(s, &seen[0]);
    }
    assert!(!seen[0].is_empty());
    if let Some(second) = second {
        second.stop().await;
    }
    server.stop().await;
}

async fn inventory_and_options_reach_ansible(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    // A host list naming localhost, in check mode, limited to it.
    let mut req = request("hello.yml");
    req.inventory = Some(pb::Inventory {
        source: Some(pb::inventory::Source::Hosts("localhost".into())),
    });
    req.options = Some(JobOptions {
        check: true,
        diff: true,
        limit: "localhost".into(),
        ..Default::default()
    });
    let listed = submit(&mut client, req).await;

    // An inline inventory of two local hosts, limited to one of them.
    let local = json!({"ansible_connection": "local"});
    let mut req = request("hello.yml");
    req.inventory = Some(pb::Inventory {
        source: Some(pb::inventory::Source::Inline(
            vars(json!({"all": {"hosts": {"alpha": local, "beta": local}}})).unwrap(),
        )),
    });
    req.options = Some(JobOptions {
        limit: "beta".into(),
        ..Default::default()
    });
    let inline = submit(&mut client, req).await;

    // Tags that match no task: the play runs, the task does not.
    let mut req = request("hello.yml");
    req.options = Some(JobOptions {
        tags: vec!["no_such_tag".into()],
        ..Default::default()
    });
    let tagged = submit(&mut client, req).await;

    let done = wait_terminal(&mut client, &listed.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    assert_eq!(
        done.result.unwrap().stats.keys().collect::<Vec<_>>(),
        vec!["localhost"]
    );

    let done = wait_terminal(&mut client, &inline.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    assert_eq!(
        done.result.unwrap().stats.keys().collect::<Vec<_>>(),
        vec!["beta"]
    );

    let messages = watch_all(&mut client, &tagged.job_id, 0).await;
    assert!(
        !events(&messages).iter().any(|e| e.event == "runner_on_ok"),
        "no task ran"
    );
    let done = get(&mut client, &tagged.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful);
    server.stop().await;
}

async fn caller_values_are_never_templated(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let dir = tempfile::tempdir().unwrap();
    let marker = |name: &str| dir.path().join(name);
    let attack = |name: &str| {
        format!(
            "{{{{ lookup('pipe', 'touch {}') }}}}",
            marker(name).display()
        )
    };

    // In extra vars, at the top and nested.
    let mut req = request("hello.yml");
    req.extra_vars = vars(json!({"who": attack("extra"), "nested": [{"deep": attack("nested")}]}));
    let from_vars = submit(&mut client, req).await;

    // In an inline inventory's host variables.
    let mut req = request("hello.yml");
    req.inventory = Some(pb::Inventory {
        source: Some(pb::inventory::Source::Inline(
            vars(json!({"all": {"hosts": {"localhost": {
                "ansible_connection": "local",
                "who": attack("inventory"),
            }}}}))
            .unwrap(),
        )),
    });
    let from_inventory = submit(&mut client, req).await;

    for (job, name) in [(from_vars, "extra"), (from_inventory, "inventory")] {
        let done = wait_terminal(&mut client, &job.job_id).await;
        assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
        let stdout = &done.result.unwrap().stdout;
        assert!(
            stdout.contains(&format!("Hello, {}!", attack(name))),
            "printed literally: {stdout}"
        );
    }
    for name in ["extra", "nested", "inventory"] {
        assert!(!marker(name).exists(), "the {name} value was evaluated");
    }
    server.stop().await;
}

on_both_backends!(
    caller_values_are_never_templated,
    inventory_and_options_reach_ansible,
    hello_runs_and_streams_every_event,
    failing_playbook_ends_failed,
    multi_play_reports_every_host,
    cancel_pending_then_finished_is_refused,
    cancel_running_kills_the_process_group,
    timeout_ends_timed_out,
    watch_resumes_after_sequence_without_gaps,
    many_watchers_see_the_same_sequence,
);
