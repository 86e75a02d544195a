//! Keys with least privilege: scopes per key (playbooks, actions, whose jobs),
//! request ids per client, who canceled, keys changed without a restart,
//! client certificates as identities, and a cap on pending jobs per client.

mod common;

use std::path::Path;
use std::time::Duration;

use ansible_runner_service::domain::Scopes;
use ansible_runner_service::grpc::auth;
use ansible_runner_service::pb::{
    self, CancelJobRequest, GetJobRequest, ListJobsRequest, ListPlaybooksRequest, WatchJobRequest,
};
use common::*;
use serde_json::json;
use tonic::Code;

/// A new key for `name` with these scope words, and its keys-file line.
fn key(name: &str, scopes: &[&str]) -> (String, String) {
    let scopes = Scopes::parse(scopes.iter().copied()).unwrap();
    let (key, client) = auth::new_key(name, scopes).unwrap();
    (key, client.line())
}

fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
}

/// Runs the binary's `keys` command; its stdout.
fn keys_command(args: &[&str], file: &Path) -> String {
    let out = binary()
        .arg("keys")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_denied(status: &tonic::Status, reason_expected: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(status), reason_expected, "{status:?}");
}

async fn scoped_keys_reach_only_what_they_allow(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_line) = key("admin", &[]);
    let (runner, runner_line) = key(
        "runner",
        &["playbooks=hello.yml", "actions=run,read", "jobs=own"],
    );
    let (reader, reader_line) = key("reader", &["actions=read"]);
    let (own, own_line) = key("own", &["jobs=own"]);
    let keys_file = dir.path().join("keys");
    std::fs::write(
        &keys_file,
        [admin_line, runner_line, reader_line, own_line].join("\n"),
    )
    .unwrap();
    history.settings.api_keys_file = Some(keys_file);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let lister = client.clone();
    let total = |key: &str| {
        let mut client = lister.clone();
        let req = with_key(ListJobsRequest::default(), key);
        async move { client.list_jobs(req).await.unwrap().into_inner().total_size }
    };

    // Outside the key's playbooks or actions: PERMISSION_DENIED, nothing written.
    let denied = client
        .submit_job(with_key(request("multi.yml"), &runner))
        .await
        .unwrap_err();
    assert_denied(&denied, "PLAYBOOK_NOT_PERMITTED");
    let denied = client
        .submit_job(with_key(request("no-such.yml"), &runner))
        .await
        .unwrap_err();
    assert_denied(&denied, "PLAYBOOK_NOT_PERMITTED");
    let denied = client
        .submit_job(with_key(request("hello.yml"), &reader))
        .await
        .unwrap_err();
    assert_denied(&denied, "ACTION_NOT_PERMITTED");
    assert_eq!(total(&admin).await, 0, "nothing was written");

    let mine = submit_as(&mut client, request("hello.yml"), &runner).await;
    let theirs = submit_as(&mut client, request("multi.yml"), &admin).await;

    // Under jobs=own another client's job does not exist.
    let get = client
        .get_job(with_key(
            GetJobRequest {
                job_id: theirs.job_id.clone(),
            },
            &runner,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(reason(&get), "JOB_NOT_FOUND");
    let watch = client
        .watch_job(with_key(
            WatchJobRequest {
                job_id: theirs.job_id.clone(),
                after_sequence: 0,
            },
            &runner,
        ))
        .await
        .unwrap_err();
    assert_eq!(watch.code(), Code::NotFound);
    let cancel = client
        .cancel_job(with_key(
            CancelJobRequest {
                job_id: theirs.job_id.clone(),
            },
            &own,
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound, "{cancel:?}");
    let listed = client
        .list_jobs(with_key(ListJobsRequest::default(), &runner))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .jobs
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        [mine.job_id.as_str()]
    );
    assert_eq!(listed.total_size, 1);
    let asked_for_admin = client
        .list_jobs(with_key(
            ListJobsRequest {
                submitted_by: "admin".into(),
                ..Default::default()
            },
            &runner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(asked_for_admin.jobs.is_empty() && asked_for_admin.total_size == 0);
    let playbooks = client
        .list_playbooks(with_key(ListPlaybooksRequest {}, &runner))
        .await
        .unwrap()
        .into_inner()
        .playbooks;
    assert_eq!(
        playbooks
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["hello.yml"]
    );

    // jobs=all reads everything; without the cancel action it cannot cancel.
    let read = client
        .get_job(with_key(
            GetJobRequest {
                job_id: mine.job_id.clone(),
            },
            &reader,
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(read.submitted_by, "runner");
    assert_eq!(total(&reader).await, 2);
    let denied = client
        .cancel_job(with_key(
            CancelJobRequest {
                job_id: mine.job_id.clone(),
            },
            &runner,
        ))
        .await
        .unwrap_err();
    assert_denied(&denied, "ACTION_NOT_PERMITTED");

    // Cancel records who canceled.
    let canceled = client
        .cancel_job(with_key(
            CancelJobRequest {
                job_id: mine.job_id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(status(&canceled), pb::JobStatus::Canceled);
    assert_eq!(canceled.canceled_by, "admin");
    let stored = history
        .store()
        .await
        .get_job(mine.job_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.canceled_by.as_deref(), Some("admin"));

    // A request_id belongs to its client: the same one from two clients makes
    // two jobs, and reused for a different request it is refused.
    let with_id = |playbook: &str, id: &str, who: serde_json::Value| {
        let mut req = request(playbook);
        req.request_id = id.into();
        req.extra_vars = vars(json!({ "who": who }));
        req
    };
    let first = client
        .submit_job(with_key(
            with_id("hello.yml", "deploy-42", json!("a")),
            &runner,
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let other_client = client
        .submit_job(with_key(
            with_id("hello.yml", "deploy-42", json!("a")),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_ne!(first.job_id, other_client.job_id);
    assert_eq!(other_client.submitted_by, "admin");
    let retry = client
        .submit_job(with_key(
            with_id("hello.yml", "deploy-42", json!("a")),
            &runner,
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(retry.job_id, first.job_id, "a retry gets its job");
    let reused = client
        .submit_job(with_key(
            with_id("hello.yml", "deploy-42", json!("b")),
            &runner,
        ))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert_eq!(reason(&reused), "REQUEST_ID_REUSED");
    assert_eq!(total(&admin).await, 4);
    server.stop().await;
}

async fn pending_jobs_are_capped_per_client(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    history.settings.limits.max_pending_per_client = 2;
    let dir = tempfile::tempdir().unwrap();
    let (busy, busy_line) = key("busy", &[]);
    let (calm, calm_line) = key("calm", &[]);
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("{busy_line}\n{calm_line}\n")).unwrap();
    history.settings.api_keys_file = Some(keys_file);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let with_id = |id: &str| {
        let mut req = request("hello.yml");
        req.request_id = id.into();
        req
    };
    let mut accepted_ids = Vec::new();
    for id in ["one", "two"] {
        let job = submit_as(&mut client, with_id(id), &busy).await;
        accepted_ids.push(job.job_id);
    }
    let refused = client
        .submit_job(with_key(with_id("three"), &busy))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "QUOTA_EXCEEDED");
    {
        use tonic_types::StatusExt;
        let quota = refused
            .get_details_quota_failure()
            .expect("a QuotaFailure detail");
        assert_eq!(quota.violations[0].subject, "client:busy");
    }
    // A retry of an accepted request still gets its job.
    let retry = client
        .submit_job(with_key(with_id("two"), &busy))
        .await
        .unwrap();
    assert_eq!(retry.into_inner().job.unwrap().job_id, accepted_ids[1]);
    // Other clients are not held back.
    client
        .submit_job(with_key(request("hello.yml"), &calm))
        .await
        .unwrap();
    let busy_jobs = client
        .list_jobs(with_key(
            ListJobsRequest {
                submitted_by: "busy".into(),
                ..Default::default()
            },
            &calm,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        busy_jobs.total_size, 2,
        "nothing was written for the refusal"
    );
    // Once a pending job is gone, there is room again.
    let first = busy_jobs.jobs[0].job_id.clone();
    client
        .cancel_job(with_key(CancelJobRequest { job_id: first }, &busy))
        .await
        .unwrap();
    client
        .submit_job(with_key(with_id("three"), &busy))
        .await
        .unwrap();
    server.stop().await;
}

on_both_backends!(
    scoped_keys_reach_only_what_they_allow,
    pending_jobs_are_capped_per_client,
);

/// Whether `key` is accepted by the server now.
async fn accepted(
    client: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    key: &str,
) -> bool {
    match client
        .list_playbooks(with_key(ListPlaybooksRequest {}, key))
        .await
    {
        Ok(_) => true,
        Err(e) if e.code() == Code::Unauthenticated => false,
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_change_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let first = keys_command(&["create", "--name", "first"], &keys_file)
        .trim()
        .to_owned();
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    history.settings.api_keys_file = Some(keys_file.clone());
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    assert!(accepted(&mut client, &first).await);

    // A new key starts working, with the scopes it was created with.
    let second = keys_command(
        &[
            "create",
            "--name",
            "second",
            "--playbooks",
            "hello.yml",
            "--actions",
            "run,read",
            "--jobs",
            "own",
        ],
        &keys_file,
    )
    .trim()
    .to_owned();
    eventually(Duration::from_secs(20), "the new key to work", || {
        let mut client = client.clone();
        let second = second.clone();
        async move { accepted(&mut client, &second).await.then_some(()) }
    })
    .await;
    let listed = keys_command(&["list"], &keys_file);
    assert_eq!(
        listed,
        "first\tkey\tall scopes\nsecond\tkey\tplaybooks=hello.yml actions=run,read jobs=own\n"
    );
    let stored = std::fs::read_to_string(&keys_file).unwrap();
    let hash = stored.split_whitespace().nth(1).unwrap();
    assert!(!listed.contains(hash), "no hash is listed");

    // A revoked key stops working.
    keys_command(&["revoke", "--name", "first"], &keys_file);
    eventually(Duration::from_secs(20), "the revoked key to fail", || {
        let mut client = client.clone();
        let first = first.clone();
        async move { (!accepted(&mut client, &first).await).then_some(()) }
    })
    .await;
    assert!(accepted(&mut client, &second).await);

    // A file that no longer parses keeps the last good keys.
    std::fs::write(&keys_file, "second not-a-hash\n").unwrap();
    tokio::time::sleep(auth::KEYS_RELOAD_INTERVAL * 3).await;
    assert!(
        accepted(&mut client, &second).await,
        "the broken file was not taken"
    );

    // SIGHUP reads the file even when nothing shows it changed.
    let (_, second_line) = key("second", &[]);
    let (third, third_line) = key("third", &[]);
    std::fs::write(&keys_file, format!("{second_line}\n{third_line}\n")).unwrap();
    eventually(Duration::from_secs(20), "the third key to work", || {
        let mut client = client.clone();
        let third = third.clone();
        async move { accepted(&mut client, &third).await.then_some(()) }
    })
    .await;
    // Third's line becomes a comment of the same length, in place, with the
    // file's modification time put back: size, time and inode are as before.
    let modified = std::fs::metadata(&keys_file).unwrap().modified().unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&keys_file)
            .unwrap();
        let padding = "#".repeat(third_line.len());
        file.write_all(format!("{second_line}\n{padding}\n").as_bytes())
            .unwrap();
        file.set_modified(modified).unwrap();
    }
    tokio::time::sleep(auth::KEYS_RELOAD_INTERVAL * 2).await;
    assert!(
        accepted(&mut client, &third).await,
        "an unnoticed change waits for SIGHUP"
    );
    // SAFETY: kill(2) on our own process; the server's handler takes SIGHUP.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    eventually(
        Duration::from_secs(20),
        "SIGHUP to revoke the third key",
        || {
            let mut client = client.clone();
            let third = third.clone();
            async move { (!accepted(&mut client, &third).await).then_some(()) }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    // Without a keys file: the certificate's CN names the client.
    let pki = Pki::new("robot");
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    history.settings.tls = Some(pki.server_tls(dir.path()));
    let server = TestServer::start_tls(&history.settings).await;
    let mut client = pki.client(server.addr).await;
    let job = client
        .submit_job(request("hello.yml"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.submitted_by, "robot");
    server.stop().await;

    // With a keys file: a `certificate` client of that name, with its scopes.
    let keys_file = dir.path().join("keys");
    std::fs::write(
        &keys_file,
        format!(
            "{}\nrobot certificate actions=read jobs=own\n",
            key("admin", &[]).1
        ),
    )
    .unwrap();
    history.settings.api_keys_file = Some(keys_file.clone());
    let server = TestServer::start_tls(&history.settings).await;
    let mut client = pki.client(server.addr).await;
    let denied = client.submit_job(request("hello.yml")).await.unwrap_err();
    assert_denied(&denied, "ACTION_NOT_PERMITTED");
    let mine = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.total_size, 1, "robot sees its own job");
    assert_eq!(mine.jobs[0].submitted_by, "robot");
    server.stop().await;

    // A certificate that names no `certificate` client needs a key.
    let stranger = Pki::new("stranger");
    history.settings.tls = Some(stranger.server_tls(dir.path()));
    let server = TestServer::start_tls(&history.settings).await;
    let mut client = stranger.client(server.addr).await;
    let refused = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    server.stop().await;
}
