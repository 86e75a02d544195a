//! Redis behind Sentinel: a primary, a replica and three sentinels on
//! loopback ports of the test's own; the primary is killed (kill -9) while
//! jobs are submitted and run. Reads keep being answered from the history,
//! submits commit, every job reaches a terminal state and none runs twice.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ansible_runner_service::pb::{self, ListJobsRequest};
use ansible_runner_service::store::entities::job_events;
use common::process::free_port;
use common::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

const SERVICE: &str = "ars";

struct Deployment {
    primary: Child,
    replica: Child,
    sentinels: Vec<Child>,
    primary_port: u16,
    replica_port: u16,
    sentinel_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.primary)
            .chain(std::iter::once(&mut self.replica))
            .chain(self.sentinels.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server(args: &[String], dir: &Path) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

fn data_server(port: u16, dir: &Path, replica_of: Option<u16>) -> Child {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--dir".into());
    args.push(dir.display().to_string());
    if let Some(primary) = replica_of {
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
    }
    redis_server(&args, dir)
}

/// INFO <section> of the server on `port`.
async fn redis_info(port: u16, section: &str) -> Option<String> {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).ok()?)
        .build()
        .ok()?;
    tokio::time::timeout(Duration::from_secs(2), client.init())
        .await
        .ok()?
        .ok()?;
    let info = client
        .custom::<String, _>(fred::cmd!("INFO"), vec![section])
        .await
        .ok();
    let _ = client.quit().await;
    info
}

/// What a sentinel answers to SENTINEL <args...>, as text values.
async fn sentinel(port: u16, args: &[&str]) -> Option<fred::types::Value> {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).ok()?)
        .build()
        .ok()?;
    tokio::time::timeout(Duration::from_secs(2), client.init())
        .await
        .ok()?
        .ok()?;
    let value = client
        .custom::<fred::types::Value, _>(fred::cmd!("SENTINEL"), args.to_vec())
        .await
        .ok();
    let _ = client.quit().await;
    value
}

impl Deployment {
    async fn start() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let (primary_port, replica_port) = (free_port(), free_port());
        let primary_dir = dir.path().join("primary");
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&primary_dir).unwrap();
        std::fs::create_dir_all(&replica_dir).unwrap();
        let primary = data_server(primary_port, &primary_dir, None);
        let replica = data_server(replica_port, &replica_dir, Some(primary_port));
        // Linked before the sentinels start, so their first look at the
        // primary finds the replica (they look again only every 10 s).
        eventually(
            Duration::from_secs(30),
            "the replica to link",
            || async move {
                let info = redis_info(replica_port, "replication").await?;
                info.contains("master_link_status:up").then_some(())
            },
        )
        .await;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf_dir = dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir_all(&conf_dir).unwrap();
            let conf = conf_dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 4000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    conf_dir.display()
                ),
            )
            .unwrap();
            sentinels.push(redis_server(
                &[conf.display().to_string(), "--sentinel".into()],
                &conf_dir,
            ));
            sentinel_ports.push(port);
        }
        let deployment = Deployment {
            primary,
            replica,
            sentinels,
            primary_port,
            replica_port,
            sentinel_ports,
            _dir: dir,
        };
        // Ready: every sentinel knows the replica (so it can fail over).
        for &port in &deployment.sentinel_ports {
            eventually(
                Duration::from_secs(30),
                "the sentinels to find the replica",
                || async move {
                    match sentinel(port, &["replicas", SERVICE]).await? {
                        fred::types::Value::Array(replicas) if !replicas.is_empty() => Some(()),
                        _ => None,
                    }
                },
            )
            .await;
        }
        deployment
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.sentinel_ports[1..]
            .iter()
            .map(|p| format!("&node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}{}",
            self.sentinel_ports[0],
            nodes.concat()
        )
    }

    /// The port the sentinels name as the primary.
    async fn primary_now(&self) -> Option<u16> {
        match sentinel(
            self.sentinel_ports[0],
            &["get-master-addr-by-name", SERVICE],
        )
        .await?
        {
            fred::types::Value::Array(addr) => addr.get(1)?.as_string()?.parse().ok(),
            _ => None,
        }
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_killed_during_a_run_loses_nothing_and_runs_nothing_twice() {
    if !installed("redis-server") {
        println!("skipped: redis-server is not installed");
        return;
    }
    let began = std::time::Instant::now();
    let mut deployment = Deployment::start().await;
    println!("sentinel: deployment ready after {:?}", began.elapsed());
    assert_eq!(
        deployment.primary_now().await,
        Some(deployment.primary_port)
    );

    let mut history = History::new(Backend::Shared).await;
    history.settings.redis_url = Some(deployment.url());
    history.settings.workers = 2;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let mut submitted: Vec<String> = Vec::new();
    for i in 0..12 {
        if i == 4 {
            deployment.primary.kill().unwrap();
            deployment.primary.wait().unwrap();
            // Reads are answered from the history meanwhile.
            let first = &submitted[0];
            let job = get(&mut client, first).await;
            assert_eq!(job.job_id, *first);
            let listed = client
                .list_jobs(ListJobsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.total_size, 4);
        }
        let mut req = request("hello.yml");
        req.request_id = format!("sentinel-{i}");
        submitted.push(submit(&mut client, req).await.job_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = eventually(Duration::from_secs(30), "the failover", || async {
        deployment
            .primary_now()
            .await
            .filter(|p| *p != deployment.primary_port)
    })
    .await;
    assert_eq!(promoted, deployment.replica_port);
    println!(
        "sentinel: failed over, submits done after {:?}",
        began.elapsed()
    );

    for id in &submitted {
        let done = eventually(Duration::from_secs(60), "every job terminal", || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let job = get(&mut client, &id).await;
                (status(&job) != pb::JobStatus::Pending && status(&job) != pb::JobStatus::Running)
                    .then_some(job)
            }
        })
        .await;
        assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
        assert_eq!(done.attempt, 1, "claimed once");
    }
    let store = history.store().await;
    let starts = job_events::Entity::find()
        .filter(job_events::Column::Event.eq("playbook_on_start"))
        .all(store.connection())
        .await
        .unwrap();
    assert_eq!(starts.len(), submitted.len(), "each playbook started once");
    println!("sentinel: every job done after {:?}", began.elapsed());
    server.stop().await;
}
