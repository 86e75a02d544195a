//! Starting as a deployment does: many processes at once on a fresh history,
//! before MariaDB and Redis are up, killed half-way through a migration, and
//! against a schema of a newer release.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use ansible_runner_service::pb;
use ansible_runner_service::settings::Settings;
use common::process::{free_port, health, RedisServer, ServiceProcess};
use common::*;
use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tonic_health::pb::health_check_response::ServingStatus;

async fn until_serving(process: &mut ServiceProcess, limit: Duration) {
    let addr = process.addr.expect("a serve process");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if health(addr).await == Some(ServingStatus::Serving) {
            return;
        }
        if let Some(status) = process.exited() {
            panic!("serve exited ({status}); log:\n{}", process.log_tail());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve not SERVING after {limit:?}; log:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The binary with `args` and the history's settings, to its exit.
fn run_binary(settings: &Settings, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args(args)
        .env("DATABASE_URL", &settings.database_url)
        .env("REDIS_PREFIX", &settings.redis_prefix)
        .envs(settings.redis_url.iter().map(|url| ("REDIS_URL", url)))
        .env("PLAYBOOKS_DIR", &settings.playbooks_dir)
        .env("CONNECT_TIMEOUT_SECONDS", "10")
        .env_remove("ARS_CRASH_AT")
        .envs(extra_env.iter().copied())
        .output()
        .expect("run the service binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Processes of a deployment sharing the history through Redis: API servers
/// without workers (so the worker processes must run the jobs), workers with
/// one slot each.
fn deployment(history: &History, redis_url: String) -> (Settings, Settings) {
    let mut workers = history.settings.clone();
    workers.redis_url = Some(redis_url);
    workers.workers = 1;
    let mut api = workers.clone();
    api.workers = 0;
    (api, workers)
}

/// A job submitted to `addr` runs to SUCCESSFUL.
async fn runs_a_job(addr: SocketAddr) {
    let mut client = connect(addr).await;
    let job = submit(&mut client, request("hello.yml")).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
}

async fn five_processes_started_at_once_on_a_fresh_history(backend: Backend) {
    let history = History::new(backend).await;
    // Several processes share even a SQLite history only through Redis.
    let (api, workers) = deployment(&history, redis_url());
    let addrs: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    // All five at the same instant: nothing waits for anything.
    let mut processes: Vec<ServiceProcess> = addrs
        .iter()
        .map(|addr| ServiceProcess::start_serve(&api, *addr, &[]))
        .chain((0..3).map(|_| ServiceProcess::start_worker(&workers, &[])))
        .collect();
    for process in processes.iter_mut().filter(|p| p.addr.is_some()) {
        until_serving(process, Duration::from_secs(90)).await;
    }
    // One job per worker process at least, through both API servers.
    let jobs: Vec<_> = (0..4).map(|i| runs_a_job(addrs[i % 2])).collect();
    futures::future::join_all(jobs).await;

    let logs: Vec<String> = processes.iter().map(ServiceProcess::log_text).collect();
    for (process, log) in processes.iter_mut().zip(&logs) {
        assert!(process.exited().is_none(), "a process exited:\n{log}");
    }
    let migrated = logs
        .iter()
        .filter(|log| log.contains("applying migrations"))
        .count();
    assert_eq!(
        migrated, 1,
        "one process migrates, the others find nothing left to do"
    );
    assert_eq!(
        logs.iter()
            .filter(|log| log.contains("the history's schema is current"))
            .count(),
        4
    );
}

/// Every table's definition (seaql_migrations aside), in name order.
async fn schema_of(history: &History) -> Vec<String> {
    let store = history.store().await;
    let db = store.connection();
    let backend = db.get_database_backend();
    let rows = |sql: &str| db.query_all(Statement::from_string(backend, sql.to_owned()));
    let mut schema = Vec::new();
    match backend {
        DbBackend::MySql => {
            let tables = rows(
                "SELECT table_name AS t FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name <> 'seaql_migrations' ORDER BY t",
            )
            .await
            .unwrap();
            for table in tables {
                let name: String = table.try_get("", "t").unwrap();
                let create = rows(&format!("SHOW CREATE TABLE `{name}`")).await.unwrap();
                schema.push(create[0].try_get_by_index::<String>(1).unwrap());
            }
        }
        _ => {
            for row in rows(
                "SELECT type || ' ' || name || ': ' || COALESCE(sql, '') AS s FROM sqlite_master \
                 WHERE name <> 'seaql_migrations' ORDER BY type, name",
            )
            .await
            .unwrap()
            {
                schema.push(row.try_get("", "s").unwrap());
            }
        }
    }
    let status = migration::schema_status(db).await.unwrap();
    assert!(status.pending.is_empty(), "{status:?}");
    schema
}

async fn killed_during_a_migration_then_started_again_completes(backend: Backend) {
    let reference = History::new(backend).await;
    let migrated = run_binary(&reference.settings, &["migrate"], &[]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let complete = schema_of(&reference).await;
    // Killed after the last step of every migration, before any was
    // recorded: every one runs again over its own work (this also catches a
    // migration that does not go through `Guarded`, which has no crash point).
    reference
        .store()
        .await
        .connection()
        .execute_unprepared("DELETE FROM seaql_migrations")
        .await
        .unwrap();
    let again = run_binary(&reference.settings, &["migrate"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(schema_of(&reference).await, complete);

    // Every step of every migration: killed right after it, then run again.
    let mut crashes = 0;
    let mut last = None;
    for migration in migration::Migrator::migrations() {
        for step in 1.. {
            let history = History::new(backend).await;
            let at = format!("migration:{}:{step}", migration.name());
            let killed = run_binary(&history.settings, &["migrate"], &[("ARS_CRASH_AT", &at)]);
            if killed.status.success() {
                break; // the migration has fewer steps
            }
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                killed.status.signal(),
                Some(libc::SIGABRT),
                "{at}: {}",
                stderr(&killed)
            );
            crashes += 1;
            let again = run_binary(&history.settings, &["migrate"], &[]);
            assert!(again.status.success(), "{at}: {}", stderr(&again));
            assert_eq!(schema_of(&history).await, complete, "after {at}");
            last = Some(history);
        }
    }
    assert!(crashes >= 10, "only {crashes} crash points");
    // A service on the last repaired history runs jobs.
    let history = last.expect("a repaired history");
    let mut server = ServiceProcess::serve(&history.settings, &[]).await;
    until_serving(&mut server, Duration::from_secs(60)).await;
    runs_a_job(server.addr.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_mariadb_and_redis_serve_once_they_are_up() {
    let history = History::new(Backend::Shared).await;
    // MariaDB behind a proxy that refuses connections for now, Redis on a
    // port where nothing listens yet.
    let (database, mut settings) = history.through_proxy().await;
    database.cut();
    let redis_port = free_port();
    settings.redis_url = Some(format!("redis://127.0.0.1:{redis_port}"));
    settings.connect_timeout = Duration::from_secs(120);
    let mut workers = settings.clone();
    workers.workers = 1;
    let mut api = settings.clone();
    api.workers = 0;
    let started = tokio::time::Instant::now();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = ServiceProcess::start_serve(&api, addr, &[]);
    let mut worker = ServiceProcess::start_worker(&workers, &[]);

    // Both wait, saying for what; the API server's port answers NOT_SERVING.
    for process in [&server, &worker] {
        eventually(Duration::from_secs(30), "a retry logged", || async {
            let log = process.log_text();
            (log.contains("the history database is not reachable yet")
                && log.contains("trying again in")
                && log.contains(&database.addr.to_string()))
            .then_some(())
        })
        .await;
    }
    assert_eq!(health(addr).await, Some(ServingStatus::NotServing));
    // MariaDB comes up 10 s after the processes; then they wait for Redis,
    // which comes up last.
    tokio::time::sleep_until(started + Duration::from_secs(10)).await;
    assert!(server.exited().is_none() && worker.exited().is_none());
    database.restore();
    for process in [&server, &worker] {
        eventually(Duration::from_secs(30), "a Redis retry logged", || async {
            let log = process.log_text();
            (log.contains("Redis is not reachable yet")
                && log.contains(&format!("redis://127.0.0.1:{redis_port}")))
            .then_some(())
        })
        .await;
    }
    assert_eq!(health(addr).await, Some(ServingStatus::NotServing));
    let _redis = RedisServer::start_on(redis_port).await;

    until_serving(&mut server, Duration::from_secs(60)).await;
    runs_a_job(addr).await;
    assert!(worker.exited().is_none(), "{}", worker.log_tail());
}

async fn a_binary_refuses_a_schema_newer_than_it_knows(backend: Backend) {
    let history = History::new(backend).await;
    // `--no-migrate` on a fresh history: older than the binary.
    let early = run_binary(&history.settings, &["worker", "--no-migrate"], &[]);
    assert!(!early.status.success());
    let text = stderr(&early);
    assert!(
        text.contains("the history's schema is older than this binary")
            && text.contains("run `ansible-runner-service migrate` first"),
        "{text}"
    );
    let migrated = run_binary(&history.settings, &["migrate"], &[]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    // Once `migrate` ran, `--no-migrate` serves.
    let mut checked_only = history.settings.clone();
    checked_only.migrate = false;
    let server = ServiceProcess::serve(&checked_only, &[]).await;
    runs_a_job(server.addr.unwrap()).await;
    let log = server.log_text();
    assert!(
        log.contains("the history's schema is current") && !log.contains("applying migrations")
    );
    drop(server);

    // A newer release migrated the history since.
    let store = history.store().await;
    store
        .connection()
        .execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) \
             VALUES ('m20991231_000001_from_the_future', 0)",
        )
        .await
        .unwrap();
    let latest = migration::Migrator::migrations()
        .last()
        .unwrap()
        .name()
        .to_owned();
    let expected = format!(
        "the history's schema has migration m20991231_000001_from_the_future \
         (newer than this binary, whose latest is {latest}): upgrade this binary"
    );
    for args in [
        &["migrate"][..],
        &["serve", "--listen", "127.0.0.1:0"],
        &["worker"],
        &["worker", "--no-migrate"],
    ] {
        let refused = run_binary(&history.settings, args, &[]);
        assert!(!refused.status.success(), "{args:?} refuses");
        let text = stderr(&refused);
        assert!(text.contains(&expected), "{args:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_ends_the_process_at_once() {
    let mut history = History::new(Backend::Shared).await;
    history.settings.database_url = format!("{}/ars_t_no_such_database", mysql_server_url());
    let refused = run_binary(
        &history.settings,
        &["migrate"],
        &[("CONNECT_TIMEOUT_SECONDS", "600")],
    );
    assert!(!refused.status.success());
    let text = stderr(&refused);
    assert!(
        text.contains("connect to the history database at mysql://")
            && text.contains("ars_t_no_such_database")
            && text.contains("Unknown database")
            && text.contains("CREATE DATABASE"),
        "{text}"
    );
    assert!(!text.contains("not reachable yet"), "no retry: {text}");
}

/// During a rolling upgrade the previous release keeps running on the
/// schema the new release expanded (a new nullable column, table, index).
async fn an_old_release_runs_jobs_on_the_expanded_schema_of_a_new_one(backend: Backend) {
    let history = History::new(backend).await;
    let old = TestServer::start(&history.settings).await;
    let mut client = old.client.clone();
    let before = submit(&mut client, request("hello.yml")).await;

    let store = history.store().await;
    let db = store.connection();
    for sql in [
        "ALTER TABLE jobs ADD COLUMN next_release_note VARCHAR(64) NULL",
        "CREATE TABLE next_release_things (id VARCHAR(36) NOT NULL PRIMARY KEY)",
        "CREATE INDEX ix_jobs_next_release_note ON jobs (next_release_note)",
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_next', 0)",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
    assert_eq!(
        status(&wait_terminal(&mut client, &before.job_id).await),
        pb::JobStatus::Successful
    );
    let after = submit(&mut client, request("hello.yml")).await;
    assert_eq!(
        status(&wait_terminal(&mut client, &after.job_id).await),
        pb::JobStatus::Successful
    );
    let listed = client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 2);
    old.stop().await;
}

on_both_backends!(
    five_processes_started_at_once_on_a_fresh_history,
    killed_during_a_migration_then_started_again_completes,
    a_binary_refuses_a_schema_newer_than_it_knows,
    an_old_release_runs_jobs_on_the_expanded_schema_of_a_new_one,
);
