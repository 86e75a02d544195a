//! The API contract without long runs: validation, idempotency, lookups,
//! pagination, the catalogue, health and reflection, on both backends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use ansible_runner_service::domain::{self, Job, JobSpec, JobStatus};
use ansible_runner_service::pb::{
    self, inventory::Source, CancelJobRequest, GetJobRequest, Inventory, JobOptions,
    ListJobsRequest, ListPlaybooksRequest, WatchJobRequest,
};
use ansible_runner_service::store::{ListFilter, Store, TotalPolicy};
use common::*;
use serde_json::json;
use tonic::Code;

/// A server without workers: submitted jobs stay PENDING.
async fn api_only(backend: Backend) -> (History, TestServer) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    (history, server)
}

async fn invalid_submissions_are_refused_and_write_nothing(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();

    let with = |f: &dyn Fn(&mut pb::SubmitJobRequest)| {
        let mut req = request("hello.yml");
        f(&mut req);
        req
    };
    let hosts = |h: &str| {
        Some(Inventory {
            source: Some(Source::Hosts(h.into())),
        })
    };
    let cases: Vec<(&str, pb::SubmitJobRequest, &str)> = vec![
        ("parent path", request("../x.yml"), "playbook"),
        ("absolute path", request("/etc/passwd.yml"), "playbook"),
        ("leading dash", request("-x.yml"), "playbook"),
        ("not yaml", request("hello.txt"), "playbook"),
        ("empty playbook", request(""), "playbook"),
        ("NUL byte", request("hel\0lo.yml"), "playbook"),
        (
            "too long",
            request(&format!("{}.yml", "a".repeat(300))),
            "playbook",
        ),
        (
            "verbosity",
            with(&|r| {
                r.options = Some(JobOptions {
                    verbosity: 5,
                    ..Default::default()
                })
            }),
            "options.verbosity",
        ),
        (
            "forks",
            with(&|r| {
                r.options = Some(JobOptions {
                    forks: 100_000,
                    ..Default::default()
                })
            }),
            "options.forks",
        ),
        (
            "limit dash",
            with(&|r| {
                r.options = Some(JobOptions {
                    limit: "-x".into(),
                    ..Default::default()
                })
            }),
            "options.limit",
        ),
        (
            "limit file",
            with(&|r| {
                r.options = Some(JobOptions {
                    limit: "@hosts".into(),
                    ..Default::default()
                })
            }),
            "options.limit",
        ),
        (
            "tag dash",
            with(&|r| {
                r.options = Some(JobOptions {
                    tags: vec!["--x".into()],
                    ..Default::default()
                })
            }),
            "options.tags[0]",
        ),
        (
            "skip tag space",
            with(&|r| {
                r.options = Some(JobOptions {
                    skip_tags: vec!["a b".into()],
                    ..Default::default()
                })
            }),
            "options.skip_tags[0]",
        ),
        (
            "timeout",
            with(&|r| r.timeout_seconds = 10_000_000),
            "timeout_seconds",
        ),
        (
            "host dash",
            with(&|r| r.inventory = hosts("web1,-oProxyCommand=x")),
            "inventory.hosts",
        ),
        (
            "host empty",
            with(&|r| r.inventory = hosts("web1,,web2")),
            "inventory.hosts",
        ),
        (
            "host shell",
            with(&|r| r.inventory = hosts("$(id)")),
            "inventory.hosts",
        ),
        (
            "host space",
            with(&|r| r.inventory = hosts("a b")),
            "inventory.hosts",
        ),
        (
            "inline shape",
            with(&|r| {
                r.inventory = Some(Inventory {
                    source: Some(Source::Inline(vars(json!({"all": {"hostz": {}}})).unwrap())),
                })
            }),
            "inventory.inline.all",
        ),
        (
            "var key",
            with(&|r| r.extra_vars = vars(json!({"bad-key": 1}))),
            "extra_vars",
        ),
        (
            "ansible var",
            with(&|r| r.extra_vars = vars(json!({"ansible_connection": "ssh"}))),
            "extra_vars",
        ),
        (
            "request id",
            with(&|r| r.request_id = "x".repeat(200)),
            "request_id",
        ),
        (
            "too many hosts",
            with(&|r| {
                let many: Vec<String> = (0..1001).map(|i| format!("h{i}")).collect();
                r.inventory = hosts(&many.join(","))
            }),
            "inventory.hosts",
        ),
        (
            "comma in an inline host",
            with(&|r| {
                r.inventory = Some(Inventory {
                    source: Some(Source::Inline(
                        vars(json!({"all": {"hosts": {"a,b": {}}}})).unwrap(),
                    )),
                })
            }),
            r#"inventory.inline.all.hosts["a,b"]"#,
        ),
        (
            "vars too deep",
            with(&|r| {
                let mut deep = json!("leaf");
                // Deeper than the 32 levels allowed, within protobuf's own limit.
                for _ in 0..35 {
                    deep = json!([deep]);
                }
                r.extra_vars = vars(json!({ "deep": deep }))
            }),
            "extra_vars",
        ),
        (
            "secret key",
            with(&|r| r.secret_extra_vars = vars(json!({"not a name": "x"}))),
            "secret_extra_vars",
        ),
    ];
    for (name, req, field) in cases {
        let err = client.submit_job(req).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            violations(&err).iter().any(|v| v == field),
            "{name}: violations {:?} lack {field}",
            violations(&err)
        );
        assert_eq!(reason(&err), "INVALID_ARGUMENT", "{name}");
    }

    let unknown = client
        .submit_job(request("nope.yml"))
        .await
        .expect_err("unknown playbook");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(reason(&unknown), "PLAYBOOK_NOT_FOUND");

    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 0, "nothing was written");
    server.stop().await;
}

async fn symlink_leaving_the_catalogue_is_refused(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    let catalogue = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("evil.yml"),
        "- name: Evil\n  hosts: all\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("evil.yml"),
        catalogue.path().join("evil.yml"),
    )
    .unwrap();
    std::fs::copy(
        repo_path("playbooks/hello.yml"),
        catalogue.path().join("hello.yml"),
    )
    .unwrap();
    history.settings.playbooks_dir = catalogue.path().to_owned();
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let err = client
        .submit_job(request("evil.yml"))
        .await
        .expect_err("escaping symlink");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["playbook"]);
    let names: Vec<String> = client
        .list_playbooks(ListPlaybooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .playbooks
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        names,
        vec!["hello.yml"],
        "the catalogue hides what it would refuse"
    );
    server.stop().await;
}

async fn request_id_returns_the_same_job(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();

    let mut req = request("hello.yml");
    req.request_id = "deploy-42".into();
    let first = submit(&mut client, req.clone()).await;
    let second = submit(&mut client, req.clone()).await;
    assert_eq!(first.job_id, second.job_id);

    // Concurrent submits with one new request_id make one job.
    req.request_id = "deploy-43".into();
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        let r = req.clone();
        calls.push(tokio::spawn(async move { submit(&mut c, r).await.job_id }));
    }
    let mut ids = HashSet::new();
    for call in calls {
        ids.insert(call.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one job for one request_id");
    let total = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total_size;
    assert_eq!(total, 2);
    server.stop().await;
}

async fn unknown_and_malformed_ids(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();
    let unknown = uuid::Uuid::now_v7().to_string();

    let err = client
        .get_job(GetJobRequest {
            job_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "JOB_NOT_FOUND");
    let err = client
        .cancel_job(CancelJobRequest {
            job_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .watch_job(WatchJobRequest {
            job_id: unknown,
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    for bad in ["", "not-a-uuid", "../../etc"] {
        let err = client
            .get_job(GetJobRequest { job_id: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(violations(&err), vec!["job_id"]);
    }
    server.stop().await;
}

async fn list_pages_newest_first_with_filters(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();

    let mut submitted = Vec::new();
    for i in 0..105 {
        let playbook = if i % 3 == 0 { "fail.yml" } else { "hello.yml" };
        submitted.push(submit(&mut client, request(playbook)).await);
    }
    // Cancel a few so the status filter has something to separate.
    let mut canceled = HashSet::new();
    for job in submitted.iter().step_by(10) {
        client
            .cancel_job(CancelJobRequest {
                job_id: job.job_id.clone(),
            })
            .await
            .unwrap();
        canceled.insert(job.job_id.clone());
    }

    // Default page size, three pages of 20 + clamp to 100.
    let first = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.jobs.len(), 20);
    assert_eq!(first.total_size, 105);
    let big = client
        .list_jobs(ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.jobs.len(), 100, "page_size above 100 is clamped");

    // Walk every page: newest first, no duplicates, nothing missed.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_jobs(ListJobsRequest {
                page_size: 30,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert_eq!(page.total_size, 105);
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    let expected: Vec<String> = submitted.iter().rev().map(|j| j.job_id.clone()).collect();
    assert_eq!(seen, expected, "newest first, every job once");

    // Filters, alone and together.
    let failed_playbook = client
        .list_jobs(ListJobsRequest {
            playbook: "fail.yml".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed_playbook.total_size, 35);
    assert!(failed_playbook
        .jobs
        .iter()
        .all(|j| j.playbook == "fail.yml"));
    let canceled_page = client
        .list_jobs(ListJobsRequest {
            status: pb::JobStatus::Canceled as i32,
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled_page.total_size, canceled.len() as i64);
    assert!(canceled_page
        .jobs
        .iter()
        .all(|j| canceled.contains(&j.job_id)));
    let both = client
        .list_jobs(ListJobsRequest {
            status: pb::JobStatus::Canceled as i32,
            playbook: "fail.yml".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(both
        .jobs
        .iter()
        .all(|j| j.playbook == "fail.yml" && canceled.contains(&j.job_id)));
    assert_eq!(both.total_size as usize, both.jobs.len());

    // A token that was changed is refused (it is signed).
    let mut tampered = first.next_page_token.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let err = client
        .list_jobs(ListJobsRequest {
            page_token: String::from_utf8(tampered).unwrap(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["page_token"]);

    // A token only works with the filters it was made for.
    let err = client
        .list_jobs(ListJobsRequest {
            page_token: canceled_page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["page_token"]);
    for (req, field) in [
        (
            ListJobsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListJobsRequest {
                page_token: "bm90IGEgdG9rZW4".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListJobsRequest {
                status: 99,
                ..Default::default()
            },
            "status",
        ),
    ] {
        let err = client.list_jobs(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(violations(&err), vec![field]);
    }
    server.stop().await;
}

async fn playbooks_are_listed_with_their_first_play(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();
    let playbooks = client
        .list_playbooks(ListPlaybooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .playbooks;
    let found: Vec<(String, String)> = playbooks
        .into_iter()
        .map(|p| (p.name, p.description))
        .collect();
    for expected in [
        ("fail.yml", "Fail on purpose"),
        ("hello.yml", "Say hello"),
        ("multi.yml", "Prepare nodes"),
        ("slow.yml", "Slow job"),
    ] {
        assert!(
            found.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {found:?}"
        );
    }
    let names: Vec<&String> = found.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    server.stop().await;
}

async fn health_and_reflection_are_served(backend: Backend) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let (_history, server) = api_only(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let answer = health
        .check(HealthCheckRequest {
            service: "ansible_runner.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("list services answered {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ansible_runner.v1.JobService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    server.stop().await;
}

async fn history_survives_a_restart(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    server.stop().await;

    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    assert_eq!(get(&mut client, &job.job_id).await, done);
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);
    assert_eq!(listed.jobs[0].job_id, job.job_id);
    let replay = events(&watch_all(&mut client, &job.job_id, 0).await);
    assert!(replay.iter().any(|e| e.event == "playbook_on_stats"));
    server.stop().await;
}

async fn ansible_vars_can_be_allowed_by_configuration(backend: Backend) {
    let mut history = History::new(backend).await;
    history.settings.workers = 0;
    history.settings.limits.allow_ansible_vars = true;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut req = request("hello.yml");
    req.extra_vars = vars(json!({"ansible_check_mode": true}));
    let job = submit(&mut client, req).await;
    assert_eq!(job.extra_vars.unwrap().fields.len(), 1);
    server.stop().await;
}

/// `n` finished jobs of `playbook`, for filling the history directly.
fn finished_jobs(n: usize, playbook: &str) -> Vec<Job> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let spec = JobSpec {
                playbook: playbook.into(),
                source: Default::default(),
                credentials: Vec::new(),
                extra_vars: Default::default(),
                inventory: domain::Inventory::Localhost,
                options: domain::JobOptions::default(),
                timeout_seconds: 60,
            };
            let mut job = Job::new(spec, None, None, now - chrono::Duration::seconds(i as i64));
            job.status = JobStatus::Successful;
            job
        })
        .collect()
}

async fn total(store: &Store, filter: &ListFilter) -> u64 {
    store.list_jobs(filter, 1, None).await.expect("list").total
}

async fn list_total_above_a_thousand_is_the_full_count(backend: Backend) {
    let (_history, server) = api_only(backend).await;
    let mut client = server.client.clone();
    let store = &server.state.store;
    store
        .insert_jobs_bulk(&finished_jobs(1_004, "hello.yml"))
        .await
        .unwrap();
    store
        .insert_jobs_bulk(&finished_jobs(40, "fail.yml"))
        .await
        .unwrap();
    let list = |playbook: &str| ListJobsRequest {
        playbook: playbook.into(),
        ..Default::default()
    };

    // Above 1,000 matches: the first call of a filter counts in full.
    let all = client.list_jobs(list("")).await.unwrap().into_inner();
    assert_eq!(all.total_size, 1_044);
    assert_eq!(all.jobs.len(), 20);
    let hello = client
        .list_jobs(list("hello.yml"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.total_size, 1_004);

    // Up to 1,000 matches the total is exact on every call.
    let fail = client
        .list_jobs(list("fail.yml"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fail.total_size, 40);
    submit(&mut client, request("fail.yml")).await;
    let fail = client
        .list_jobs(list("fail.yml"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fail.total_size, 41);
    server.stop().await;
}

/// The total above the exact bound, with a bound of 10 and chosen ages, on
/// `Store` directly: a kept count is served until it is recounted, never once
/// it is too old, and never when at most the bound match.
async fn list_totals_above_the_bound_are_kept_then_recounted(backend: Backend) {
    let history = History::new(backend).await;
    let store = history.store().await;
    store.migrate().await.unwrap();
    let hour = Duration::from_secs(3600);
    let with = |refresh_after, max_age, capacity| {
        store.clone().with_total_policy(TotalPolicy {
            exact_up_to: 10,
            refresh_after,
            max_age,
            capacity,
        })
    };
    let all = ListFilter::default();
    let hello = ListFilter {
        playbook: Some("hello.yml".into()),
        ..Default::default()
    };
    let fail = ListFilter {
        playbook: Some("fail.yml".into()),
        ..Default::default()
    };
    let insert = |n, playbook| {
        let store = store.clone();
        async move {
            store
                .insert_jobs_bulk(&finished_jobs(n, playbook))
                .await
                .unwrap()
        }
    };

    insert(15, "hello.yml").await;
    insert(3, "fail.yml").await;
    let kept = with(hour, hour, 1_024);
    assert_eq!(
        total(&kept, &all).await,
        18,
        "the first call counts in full"
    );
    assert_eq!(total(&kept, &hello).await, 15);
    assert_eq!(total(&kept, &fail).await, 3);

    insert(5, "hello.yml").await;
    insert(2, "fail.yml").await;
    assert_eq!(total(&kept, &all).await, 18, "kept, not recounted");
    assert_eq!(total(&kept, &hello).await, 15, "kept, not recounted");
    assert_eq!(total(&kept, &fail).await, 5, "at most 10 match: exact");

    // A count as old as max_age is never served.
    let expiring = with(hour, Duration::ZERO, 1_024);
    assert_eq!(total(&expiring, &all).await, 25);
    insert(1, "hello.yml").await;
    assert_eq!(total(&expiring, &all).await, 26);

    // Past refresh_after the kept count is served and recounted behind it.
    let refreshing = with(Duration::ZERO, hour, 1_024);
    assert_eq!(total(&refreshing, &all).await, 26);
    insert(4, "hello.yml").await;
    assert_eq!(total(&refreshing, &all).await, 26, "served while recounted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match total(&refreshing, &all).await {
            30 => break,
            26 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("expected the recount (30) within 30 s, got {other}"),
        }
    }
    assert_eq!(total(&kept, &all).await, 18, "each handle keeps its own");

    // One filter kept: counting another evicts it.
    let one = with(hour, hour, 1);
    assert_eq!(total(&one, &all).await, 30);
    assert_eq!(total(&one, &hello).await, 25);
    insert(1, "hello.yml").await;
    assert_eq!(total(&one, &all).await, 31, "evicted, so counted again");

    // Back under the bound the total is exact again, whatever is kept.
    use ansible_runner_service::store::entities::jobs;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    jobs::Entity::delete_many()
        .filter(jobs::Column::Playbook.eq("hello.yml"))
        .exec(store.connection())
        .await
        .unwrap();
    assert_eq!(total(&kept, &all).await, 5);
    assert_eq!(total(&kept, &hello).await, 0);
}

on_both_backends!(
    ansible_vars_can_be_allowed_by_configuration,
    invalid_submissions_are_refused_and_write_nothing,
    symlink_leaving_the_catalogue_is_refused,
    request_id_returns_the_same_job,
    unknown_and_malformed_ids,
    list_pages_newest_first_with_filters,
    list_total_above_a_thousand_is_the_full_count,
    list_totals_above_the_bound_are_kept_then_recounted,
    playbooks_are_listed_with_their_first_play,
    health_and_reflection_are_served,
    history_survives_a_restart,
);
