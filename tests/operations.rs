//! Running the service: retention (prune), Prometheus metrics, structured
//! logs, and the deployment files.

mod common;

use std::time::Duration;

use ansible_runner_service::pb::{self, GetJobRequest};
use common::process::{free_port, ServiceProcess};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn prune(history: &History, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .arg("prune")
        .args(args)
        .env("DATABASE_URL", &history.settings.database_url)
        .env("REDIS_PREFIX", &history.settings.redis_prefix)
        .envs(
            history
                .settings
                .redis_url
                .iter()
                .map(|url| ("REDIS_URL", url)),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn prune_removes_old_finished_jobs_only(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut finished = Vec::new();
    for _ in 0..2 {
        let job = submit(&mut client, request("hello.yml")).await;
        wait_terminal(&mut client, &job.job_id).await;
        finished.push(job.job_id);
    }
    server.stop().await;
    let mut api_only = history.settings.clone();
    api_only.workers = 0;
    let server = TestServer::start(&api_only).await;
    let mut client = server.client.clone();
    let pending = submit(&mut client, request("hello.yml")).await;

    let dry = prune(&history, &["--older-than", "0s", "--dry-run"]);
    assert!(
        dry.starts_with("would remove 2 jobs (2 SUCCESSFUL) and "),
        "counts per status: {dry}"
    );
    assert_eq!(
        status(&get(&mut client, &finished[0]).await),
        pb::JobStatus::Successful
    );

    let kept = prune(&history, &["--older-than", "30d"]);
    assert_eq!(kept.trim(), "removed 0 jobs and 0 events");
    let done = prune(&history, &["--older-than", "0s", "--status", "successful"]);
    assert!(
        done.starts_with("removed 2 jobs (2 SUCCESSFUL) and "),
        "{done}"
    );
    assert!(!done.contains(" 0 events"), "their events went too: {done}");
    // With Redis, prune clears the live state too; the embedded default's
    // live state lives in the server's memory, which a separate prune
    // command cannot reach (`serve --prune-older-than` can): restart it.
    let server = match backend {
        Backend::Shared => server,
        Backend::Embedded => {
            server.stop().await;
            TestServer::start(&api_only).await
        }
    };
    let mut client = server.client.clone();
    for id in &finished {
        let err = client
            .get_job(GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(
        status(&get(&mut client, &pending.job_id).await),
        pb::JobStatus::Pending,
        "unfinished jobs stay"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prunes_periodically_when_asked() {
    let mut history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    wait_terminal(&mut client, &job.job_id).await;
    server.stop().await;

    history.settings.prune_older_than = Some(Duration::ZERO);
    // No workers: the job submitted below stays PENDING (a worker could
    // start it before the check), and pending jobs are never pruned.
    history.settings.workers = 0;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    eventually(Duration::from_secs(30), "the periodic prune", || {
        let mut client = client.clone();
        let id = job.job_id.clone();
        async move {
            let answer = client.get_job(GetJobRequest { job_id: id }).await;
            matches!(answer, Err(ref e) if e.code() == Code::NotFound).then_some(())
        }
    })
    .await;
    let later = submit(&mut client, request("hello.yml")).await;
    assert_eq!(
        status(&get(&mut client, &later.job_id).await),
        pb::JobStatus::Pending
    );
    server.stop().await;
}

#[test]
fn migrate_creates_the_schema_and_serve_names_a_missing_ansible() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/history.db", dir.path().display());
    let bin = env!("CARGO_BIN_EXE_ansible-runner-service");
    let migrate = std::process::Command::new(bin)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(dir.path().join("history.db").exists());
    let again = std::process::Command::new(bin)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(again.status.success(), "migrate is idempotent");

    let serve = std::process::Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--database-url",
            &url,
        ])
        .arg("--playbooks-dir")
        .arg(repo_path("playbooks"))
        .env("ANSIBLE_PLAYBOOK", "/nonexistent/ansible-playbook")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains("/nonexistent/ansible-playbook was not found"),
        "{stderr}"
    );
    assert!(stderr.contains("pip install ansible-core"), "{stderr}");
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split("\r\n\r\n").nth(1).unwrap().to_owned()
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_parse() {
    let mut history = History::new(Backend::Embedded).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    history.settings.metrics_listen = Some(metrics_addr);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    wait_terminal(&mut client, &job.job_id).await;
    let failed = submit(&mut client, request("fail.yml")).await;
    wait_terminal(&mut client, &failed.job_id).await;

    let text = eventually(Duration::from_secs(10), "the metrics", || async {
        let text = scrape(metrics_addr).await;
        (sample(&text, r#"ars_jobs_finished_total{status="FAILED"}"#) == Some(1.0)).then_some(text)
    })
    .await;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "unparsable sample: {line}");
    }
    assert_eq!(sample(&text, "ars_jobs_submitted_total"), Some(2.0));
    assert_eq!(
        sample(&text, r#"ars_jobs_finished_total{status="SUCCESSFUL"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "ars_jobs_running"), Some(0.0));
    assert_eq!(sample(&text, "ars_job_duration_seconds_count"), Some(2.0));
    assert!(
        sample(
            &text,
            r#"ars_rpc_duration_seconds_count{method="/ansible_runner.v1.JobService/SubmitJob",code="Ok"}"#
        ) == Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "ars_watch_streams_open").is_some());
    assert!(sample(&text, r#"ars_queue_depth{queue="default"}"#).is_some());
    assert!(sample(&text, r#"ars_oldest_pending_seconds{queue="default"}"#).is_some());
    assert!(text.contains("ars_sweeper_actions_total"));
    assert!(text.trim_end().ends_with("# EOF"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_job_and_every_rpc() {
    let history = History::new(Backend::Embedded).await;
    let server = ServiceProcess::serve(&history.settings, &[("LOG_FORMAT", "json")]).await;
    let mut client = connect(server.addr.unwrap()).await;
    let job = submit(&mut client, request("hello.yml")).await;
    wait_terminal(&mut client, &job.job_id).await;
    server.signal(libc::SIGTERM);
    let mut server = server;
    assert!(server.wait_exit(Duration::from_secs(60)).await.success());

    let log = std::fs::read_to_string(&server.log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_job: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains(&job.job_id))
        .collect();
    assert!(about_job.len() >= 3, "{about_job:?}");
    let running = lines
        .iter()
        .find(|l| l["fields"]["message"] == "running")
        .expect("a log line when the job runs");
    assert_eq!(running["span"]["job_id"], job.job_id.as_str(), "{running}");
    let rpc = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "rpc"
                && l["fields"]["method"] == "/ansible_runner.v1.JobService/SubmitJob"
        })
        .expect("the SubmitJob call is logged");
    assert_eq!(rpc["fields"]["code"], "Ok");
    assert!(rpc["fields"]["latency_ms"].as_f64().is_some());
}

#[test]
fn compose_file_names_the_services_images_and_settings() {
    let text = std::fs::read_to_string(repo_path("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("docker-compose.yml parses");
    let services = &compose["services"];
    assert_eq!(services["mariadb"]["image"].as_str(), Some("mariadb:11"));
    assert_eq!(services["redis"]["image"].as_str(), Some("redis:7"));
    for name in ["mariadb", "redis", "api"] {
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "{name} has a health check"
        );
    }
    for name in ["mariadb", "redis", "api", "worker"] {
        assert_eq!(
            services[name]["restart"].as_str(),
            Some("unless-stopped"),
            "{name} comes back after a crash or a start that gave up"
        );
    }
    let api_check = serde_yaml::to_string(&services["api"]["healthcheck"]["test"]).unwrap();
    assert!(
        api_check.contains("health"),
        "the API is checked through grpc.health.v1"
    );
    for name in ["api", "worker"] {
        let service = &services[name];
        assert_eq!(
            service["build"].as_str(),
            Some("."),
            "{name} is built from the Dockerfile"
        );
        let env = &service["environment"];
        assert!(env["DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("mysql://"));
        assert_eq!(env["REDIS_URL"].as_str(), Some("redis://redis:6379"));
        assert!(service["depends_on"]["mariadb"]["condition"].as_str() == Some("service_healthy"));
    }
    assert_eq!(services["worker"]["command"][0].as_str(), Some("worker"));
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    assert!(dockerfile.contains("ansible-core") && dockerfile.contains("FROM rust"));
}

on_both_backends!(prune_removes_old_finished_jobs_only);
