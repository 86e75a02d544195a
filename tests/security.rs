//! Access control and limits: API keys, TLS and mutual TLS, request size,
//! watch streams per client, deadlines, secret extra vars, and rejected
//! requests that leave nothing behind.

mod common;

use std::time::Duration;

use ansible_runner_service::domain::Scopes;
use ansible_runner_service::grpc::auth;
use ansible_runner_service::pb::job_service_client::JobServiceClient;
use ansible_runner_service::pb::{self, ListJobsRequest, WatchJobRequest};
use common::*;
use fred::prelude::*;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

/// A key with every scope and its keys-file line.
fn new_key(name: &str) -> (String, String) {
    let (key, client) = auth::new_key(name, Scopes::full()).unwrap();
    (key, client.line())
}

async fn keys_are_required_and_name_the_submitter(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let dir = tempfile::tempdir().unwrap();
    let (deploy_key, deploy_line) = new_key("deploy-bot");
    let (ci_key, ci_line) = new_key("ci");
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("{deploy_line}\n{ci_line}\n")).unwrap();
    history.settings.api_keys_file = Some(keys_file);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let missing = client.submit_job(request("hello.yml")).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("missing API key"), "{missing:?}");
    let wrong = client
        .submit_job(with_key(request("hello.yml"), "ars_not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), "invalid API key");
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        listed.code(),
        Code::Unauthenticated,
        "every JobService call needs a key"
    );

    let by_deploy = client
        .submit_job(with_key(request("hello.yml"), &deploy_key))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(by_deploy.submitted_by, "deploy-bot");
    client
        .submit_job(with_key(request("hello.yml"), &ci_key))
        .await
        .unwrap();
    let mine = client
        .list_jobs(with_key(
            ListJobsRequest {
                submitted_by: "deploy-bot".into(),
                ..Default::default()
            },
            &ci_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.total_size, 1);
    assert_eq!(mine.jobs[0].job_id, by_deploy.job_id);

    // Health and reflection stay open.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a key")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_prints_a_working_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args(["keys", "create", "--name", "ops"])
        .arg("--file")
        .arg(&keys_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let stored = std::fs::read_to_string(&keys_file).unwrap();
    assert!(stored.starts_with("ops "), "{stored}");
    assert!(
        !stored.contains(&key),
        "the file holds the hash, not the key"
    );

    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    history.settings.api_keys_file = Some(keys_file);
    let server = TestServer::start(&history.settings).await;
    let job = server
        .client
        .clone()
        .submit_job(with_key(request("hello.yml"), &key))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.submitted_by, "ops");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new("client");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    history.settings.tls = Some(ansible_runner_service::settings::TlsSettings {
        cert: file("server.pem", &pki.server_cert),
        key: file("server.key", &pki.server_key),
        client_ca: Some(file("ca.pem", &pki.ca)),
    });
    let server = TestServer::start_tls(&history.settings).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    let trusted = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(
            tls.clone()
                .identity(Identity::from_pem(&pki.client_cert, &pki.client_key)),
        )
        .unwrap()
        .connect()
        .await
        .expect("a client with a certificate of the CA connects");
    let playbooks = JobServiceClient::new(trusted)
        .list_playbooks(pb::ListPlaybooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .playbooks;
    assert!(!playbooks.is_empty());

    let refused = |channel: Channel| async move {
        JobServiceClient::new(channel)
            .list_playbooks(pb::ListPlaybooksRequest {})
            .await
            .expect_err("refused")
    };
    let anonymous = refused(
        Channel::from_shared(url.clone())
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect_lazy(),
    )
    .await;
    let plaintext = refused(
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect_lazy(),
    )
    .await;
    refused_by_the_transport(&anonymous, "no client certificate: the handshake fails");
    refused_by_the_transport(&plaintext, "plaintext to a TLS port");
    server.stop().await;
}

/// A call the server never answered: tonic's own status for a connection
/// that was refused or cut (a failed TLS handshake, bytes that are not
/// HTTP/2: UNAVAILABLE, CANCELLED, UNKNOWN, or INTERNAL for an HTTP/2
/// protocol error, depending on when the cut is seen), with the transport
/// error as its source; never a status the service sent, which would mean
/// the call got through.
fn refused_by_the_transport(status: &tonic::Status, what: &str) {
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
        ),
        "{what}: {status:?}"
    );
    let source = std::error::Error::source(status);
    assert!(
        source.is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some()),
        "{what}: refused by the transport, not answered: {status:?}"
    );
}

async fn oversized_requests_are_resource_exhausted(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone().max_encoding_message_size(8 << 20);
    let mut req = request("hello.yml");
    req.extra_vars = vars(json!({"blob": "x".repeat(1_100_000)}));
    let err = client.submit_job(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("the limit is: 1048576 bytes"),
        "names MAX_REQUEST_BYTES: {err:?}"
    );
    let total = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total_size;
    assert_eq!(total, 0);
    server.stop().await;
}

async fn watch_streams_are_capped_per_client_and_deadlines_end_them(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    history.settings.max_watches_per_client = 2;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    let watch = |timeout: Option<Duration>| {
        let mut client = client.clone();
        let id = job.job_id.clone();
        async move {
            let mut req = Request::new(WatchJobRequest {
                job_id: id,
                after_sequence: 0,
            });
            if let Some(timeout) = timeout {
                req.set_timeout(timeout);
            }
            client.watch_job(req).await
        }
    };
    let first = watch(None).await.unwrap().into_inner();
    let mut second = watch(Some(Duration::from_millis(500)))
        .await
        .unwrap()
        .into_inner();
    let third = watch(None).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert_eq!(reason(&third), "RESOURCE_EXHAUSTED");

    // The second stream's deadline passes: it ends, and its place is free.
    let ended = loop {
        match second.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(ended.unwrap_err().code(), Code::DeadlineExceeded);
    let again = eventually(Duration::from_secs(10), "a free watch slot", || {
        let watch = watch(None);
        async move { watch.await.ok() }
    })
    .await;
    drop((first, again));
    server.stop().await;
}

async fn secret_extra_vars_are_used_but_never_kept(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let secret = "s3cr3t-value-42";
    let mut req = request("hello.yml");
    req.secret_extra_vars = vars(json!({"who": secret}));
    let job = submit(&mut client, req).await;
    assert!(job.has_secret_extra_vars);
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    let stdout = &done.result.as_ref().unwrap().stdout;
    assert!(
        stdout.contains("Hello, ********!"),
        "the playbook got it, the record masks it: {stdout}"
    );
    let events = events(&watch_all(&mut client, &job.job_id, 0).await);
    assert!(
        !format!("{done:?}{events:?}").contains(secret),
        "never returned"
    );

    // Nowhere in the history.
    use sea_orm::{ConnectionTrait, Statement};
    let store = history.store().await;
    let db = store.connection();
    for table in ["jobs", "job_events", "job_output"] {
        let rows = db
            .query_all(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT * FROM {table}"),
            ))
            .await
            .unwrap();
        assert!(
            !format!("{rows:?}").contains(secret),
            "{table} holds the secret"
        );
    }
    // And no longer in the live state.
    let keys = history.redis_keys("secret:*").await;
    assert!(keys.is_empty(), "{keys:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_secrets_were_lost_does_not_run() {
    let mut history = History::new(Backend::Shared).await;
    history.settings.workers = 0;
    let api = TestServer::start(&history.settings).await;
    let mut client = api.client.clone();
    let mut req = request("hello.yml");
    req.secret_extra_vars = vars(json!({"token": "abcdef"}));
    let job = submit(&mut client, req).await;

    let redis = history.redis().await;
    let deleted: i64 = redis
        .del(format!(
            "{}:secret:{}",
            history.settings.redis_prefix, job.job_id
        ))
        .await
        .unwrap();
    assert_eq!(deleted, 1);

    let mut worker_settings = history.settings.clone();
    worker_settings.workers = 1;
    let worker = TestServer::start(&worker_settings).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Failed);
    assert_eq!(done.error_reason, "SECRETS_LOST");
    assert!(
        events(&watch_all(&mut client, &job.job_id, 0).await).is_empty(),
        "nothing ran"
    );
    worker.stop().await;
    api.stop().await;
}

async fn rejected_requests_leave_nothing_behind(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut bad = request("../etc/passwd.yml");
    bad.secret_extra_vars = vars(json!({"token": "abcdef"}));
    let mut become_password = request("hello.yml");
    become_password.extra_vars = vars(json!({"ansible_become_password": "x"}));
    // (request, code, ErrorInfo reason, field violations, words of the message)
    let rejected = [
        (
            bad,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            vec!["playbook"],
            "must not contain '..'",
        ),
        (
            request("missing.yml"),
            Code::NotFound,
            "PLAYBOOK_NOT_FOUND",
            vec![],
            "\"missing.yml\" is not in the catalogue",
        ),
        (
            become_password,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            vec!["extra_vars"],
            "\"ansible_become_password\": variables starting with 'ansible_' are not allowed",
        ),
    ];
    for (req, code, why, fields, words) in rejected {
        let playbook = req.playbook.clone();
        let err = client.submit_job(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{playbook}: {err:?}");
        assert_eq!(reason(&err), why, "{playbook}: {err:?}");
        assert_eq!(violations(&err), fields, "{playbook}: {err:?}");
        assert!(err.message().contains(words), "{playbook}: {err:?}");
    }
    let total = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total_size;
    assert_eq!(total, 0, "nothing in the history");
    assert_eq!(
        server.state.live.queue_len().await.unwrap(),
        0,
        "nothing dispatched"
    );
    let keys = history.redis_keys("*").await;
    assert!(keys.is_empty(), "nothing in Redis: {keys:?}");
    // Nothing was committed or dispatched, so no worker could start anything.
    server.stop().await;
}

on_both_backends!(
    keys_are_required_and_name_the_submitter,
    oversized_requests_are_resource_exhausted,
    watch_streams_are_capped_per_client_and_deadlines_end_them,
    secret_extra_vars_are_used_but_never_kept,
    rejected_requests_leave_nothing_behind,
);
