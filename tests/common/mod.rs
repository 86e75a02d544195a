//! Shared test harness: the real server on an ephemeral port, with a fresh
//! history (a MariaDB database or a SQLite file of its own) and its own Redis
//! key prefix, talked to through the generated client.

#![allow(dead_code)]

pub mod git_server;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod sshd;

#[allow(unused_imports)]
pub use pki::Pki;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ansible_runner_service::app::AppState;
use ansible_runner_service::pb::job_service_client::JobServiceClient;
use ansible_runner_service::pb::{
    self, watch_job_response::Kind, GetJobRequest, SubmitJobRequest, WatchJobRequest,
    WatchJobResponse,
};
use ansible_runner_service::server;
use ansible_runner_service::settings::Settings;
use ansible_runner_service::store::Store;
use ansible_runner_service::worker::ExecutorKind;
use sea_orm::{ConnectionTrait, Database};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Where the history and the live state live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and in-process live state: the embedded default.
    Embedded,
    /// MariaDB and Redis, as in a deployment of many processes.
    Shared,
}

pub fn mysql_server_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The executor the suite runs with: `ARS_TEST_EXECUTOR=warm|plain`
/// (tests/run runs the suite once with each); warm when unset.
pub fn executor_under_test() -> ExecutorKind {
    match std::env::var("ARS_TEST_EXECUTOR").as_deref() {
        Ok("plain") => ExecutorKind::Plain,
        Ok("warm") | Err(_) => ExecutorKind::Warm,
        Ok(other) => panic!("ARS_TEST_EXECUTOR={other}: use warm or plain"),
    }
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A place for one test's history; dropped with the test.
pub struct History {
    pub settings: Settings,
    mysql_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl History {
    /// A new, empty history and key prefix, with test timings: short leases
    /// and sweeps so lost workers are found in seconds.
    pub async fn new(backend: Backend) -> History {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::embedded();
        settings.playbooks_dir = repo_path("playbooks");
        settings.workers = 2;
        settings.lease = Duration::from_secs(6);
        settings.sweep_interval = Duration::from_secs(1);
        settings.redispatch_after = Duration::from_secs(2);
        settings.kill_grace = Duration::from_secs(3);
        settings.shutdown_grace = Duration::from_secs(5);
        settings.redis_prefix = format!("ars-test-{}", short_id());
        settings.executor = executor_under_test();
        let mut mysql_db = None;
        match backend {
            Backend::Embedded => {
                settings.database_url = format!("sqlite://{}/history.db", dir.path().display());
            }
            Backend::Shared => {
                let name = format!("ars_t_{}", short_id());
                let server = Database::connect(format!("{}/mysql", mysql_server_url()))
                    .await
                    .expect("MariaDB at TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306)");
                server
                    .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
                    .await
                    .expect("create test database");
                server.close().await.ok();
                settings.database_url = format!("{}/{name}", mysql_server_url());
                settings.redis_url = Some(redis_url());
                mysql_db = Some(name);
            }
        }
        History {
            settings,
            mysql_db,
            _dir: dir,
        }
    }

    /// Settings whose database is reached through a proxy the test can cut
    /// (MariaDB only).
    pub async fn through_proxy(&self) -> (proxy::Proxy, Settings) {
        let url = &self.settings.database_url;
        let rest = url
            .strip_prefix("mysql://root@")
            .expect("a MariaDB history");
        let (server, db_name) = rest.split_once('/').expect("host/database");
        let proxy = proxy::Proxy::start(server.parse().expect("host:port")).await;
        let mut settings = self.settings.clone();
        settings.database_url = format!("mysql://root@{}/{db_name}", proxy.addr);
        (proxy, settings)
    }

    /// A Redis client on the history's Redis (shared backend only).
    pub async fn redis(&self) -> fred::prelude::Client {
        use fred::prelude::*;
        let url = self.settings.redis_url.as_deref().expect("a Redis URL");
        let client = Builder::from_config(Config::from_url(url).expect("Redis URL"))
            .build()
            .expect("Redis client");
        client.init().await.expect("connect to Redis");
        client
    }

    /// The keys under this history's Redis prefix matching `pattern` (e.g.
    /// "secret:*"); empty without Redis.
    pub async fn redis_keys(&self, pattern: &str) -> Vec<String> {
        if self.settings.redis_url.is_none() {
            return Vec::new();
        }
        let redis = self.redis().await;
        let keys: Vec<String> = fred::prelude::ClientLike::custom(
            &redis,
            fred::cmd!("KEYS"),
            vec![format!("{}:{pattern}", self.settings.redis_prefix)],
        )
        .await
        .expect("KEYS");
        keys
    }

    /// Every key under the history's Redis prefix with its value.
    pub async fn redis_dump(&self) -> String {
        use fred::prelude::*;
        let redis = self.redis().await;
        let mut out = String::new();
        for key in self.redis_keys("*").await {
            let kind: String = redis
                .custom(fred::cmd!("TYPE"), vec![key.clone()])
                .await
                .unwrap();
            let value: fred::types::Value = match kind.as_str() {
                "string" => redis
                    .custom(fred::cmd!("GET"), vec![key.clone()])
                    .await
                    .unwrap(),
                "hash" => redis
                    .custom(fred::cmd!("HGETALL"), vec![key.clone()])
                    .await
                    .unwrap(),
                "list" => redis
                    .custom(
                        fred::cmd!("LRANGE"),
                        vec![key.clone(), "0".into(), "-1".into()],
                    )
                    .await
                    .unwrap(),
                "set" => redis
                    .custom(fred::cmd!("SMEMBERS"), vec![key.clone()])
                    .await
                    .unwrap(),
                "zset" => redis
                    .custom(
                        fred::cmd!("ZRANGE"),
                        vec![key.clone(), "0".into(), "-1".into()],
                    )
                    .await
                    .unwrap(),
                "stream" => redis
                    .custom(
                        fred::cmd!("XRANGE"),
                        vec![key.clone(), "-".into(), "+".into()],
                    )
                    .await
                    .unwrap(),
                _ => fred::types::Value::Null,
            };
            out.push_str(&format!("{key} {value:?}\n"));
        }
        out
    }

    /// Every row of these tables, as text: what a raw scan of the history
    /// for a secret reads.
    pub async fn table_rows(&self, tables: &[&str]) -> String {
        use sea_orm::Statement;
        let store = self.store().await;
        let db = store.connection();
        let mut rows = String::new();
        for table in tables {
            let found = db
                .query_all(Statement::from_string(
                    db.get_database_backend(),
                    format!("SELECT * FROM {table}"),
                ))
                .await
                .expect("read a table");
            rows.push_str(&format!("{found:?}"));
        }
        rows
    }

    /// A direct handle on the history, to check what was written.
    pub async fn store(&self) -> Store {
        Store::connect(&self.settings.database_url)
            .await
            .expect("connect history")
    }
}

impl Drop for History {
    fn drop(&mut self) {
        if let Some(name) = self.mysql_db.take() {
            // Best effort, off the async runtime; .ci/run also sweeps leftovers.
            let url = format!("{}/mysql", mysql_server_url());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let db = Database::connect(url).await.ok()?;
                    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await
                        .ok()?;
                    db.close().await.ok()
                })
            })
            .join();
        }
    }
}

/// The real server, in process, on 127.0.0.1:0.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub client: JobServiceClient<Channel>,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), ansible_runner_service::domain::Error>>,
}

impl TestServer {
    pub async fn start(settings: &Settings) -> TestServer {
        let mut server = Self::start_tls(settings).await;
        server.client = connect(server.addr).await;
        server
    }

    /// The server as `settings` say (TLS included); its `client` is a lazy
    /// plaintext one, so a TLS test makes its own.
    pub async fn start_tls(settings: &Settings) -> TestServer {
        // The server's log goes to the test's output (shown when it fails).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,sqlx=warn")
            .try_init();
        let state = AppState::connect(settings).await.expect("connect state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let settings = settings.clone();
            let state = state.clone();
            let shutdown = shutdown.clone();
            async move { server::serve(listener, state, &settings, shutdown).await }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect_lazy();
        TestServer {
            addr,
            client: JobServiceClient::new(channel),
            state,
            shutdown,
            handle,
        }
    }

    /// Stops the server the way SIGTERM does, and waits until it is down.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("server stops within 60 s")
            .expect("server task")
            .expect("server result");
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> JobServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match JobServiceClient::connect(format!("http://{addr}")).await {
            // Room for a job's 16 MiB stdout.
            Ok(client) => return client.max_decoding_message_size(32 << 20),
            Err(e) if tokio::time::Instant::now() > deadline => panic!("connect {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The binary's client command `args` against `server` (ARS_SERVER), with
/// no key; its output.
pub fn cli(server: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args(args)
        .env("ARS_SERVER", server)
        .env_remove("ARS_TOKEN")
        .output()
        .unwrap()
}

pub fn vars(json: serde_json::Value) -> Option<prost_types::Struct> {
    let serde_json::Value::Object(map) = json else {
        panic!("extra vars must be an object")
    };
    Some(ansible_runner_service::grpc::convert::json_to_struct(&map))
}

/// `message` with the API key `key` in its `authorization` header.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::try_from(format!("Bearer {key}")).expect("a header value"),
    );
    request
}

/// Submits as the client of `key`; the job created (or found).
pub async fn submit_as(
    client: &mut JobServiceClient<Channel>,
    req: SubmitJobRequest,
    key: &str,
) -> pb::Job {
    client
        .submit_job(with_key(req, key))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job")
}

pub fn request(playbook: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        playbook: playbook.into(),
        ..Default::default()
    }
}

pub async fn submit(client: &mut JobServiceClient<Channel>, req: SubmitJobRequest) -> pb::Job {
    client
        .submit_job(req)
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job")
}

pub async fn get(client: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    client
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .expect("get")
        .into_inner()
        .job
        .expect("job")
}

/// Every message of a WatchJob stream until it ends (at most 3 minutes).
pub async fn watch_all(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    after_sequence: u64,
) -> Vec<WatchJobResponse> {
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: id.into(),
            after_sequence,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut messages = Vec::new();
    let collect = async {
        while let Some(message) = stream.message().await.expect("watch stream") {
            messages.push(message);
        }
    };
    tokio::time::timeout(Duration::from_secs(180), collect)
        .await
        .expect("watch ends within 3 minutes");
    messages
}

/// Watches a job to its end; returns the terminal job as GetJob has it,
/// after checking the watch's status_change is that job without its stdout.
pub async fn wait_terminal(client: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    let messages = watch_all(client, id, 0).await;
    let change = match messages.last().and_then(|m| m.kind.clone()) {
        Some(Kind::StatusChange(job)) => job,
        other => panic!("watch ended without a status_change: {other:?}"),
    };
    let full = get(client, id).await;
    let mut expected = full.clone();
    if let Some(result) = &mut expected.result {
        result.stdout.clear();
    }
    assert_eq!(
        change, expected,
        "the status_change is the terminal job, stdout aside"
    );
    full
}

pub fn events(messages: &[WatchJobResponse]) -> Vec<pb::JobEvent> {
    messages
        .iter()
        .filter_map(|m| match &m.kind {
            Some(Kind::Event(event)) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

pub fn status(job: &pb::Job) -> pb::JobStatus {
    pb::JobStatus::try_from(job.status).expect("known status")
}

/// Polls `check` until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process group of the job's run, once a worker recorded it.
pub async fn run_pgid(history: &History, job_id: &str) -> i32 {
    use ansible_runner_service::store::entities::jobs;
    use sea_orm::EntityTrait;
    let store = history.store().await;
    eventually(Duration::from_secs(60), "the run's process group", || {
        let store = store.clone();
        async move {
            jobs::Entity::find_by_id(job_id.to_owned())
                .one(store.connection())
                .await
                .unwrap()
                .and_then(|row| row.run_pgid)
        }
    })
    .await
}

/// The parent of `pid` (0 when it is gone).
pub fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The command line of `pid`, arguments separated by spaces.
pub fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Live children of `parent` whose command line contains `name`.
pub fn children_named(parent: i32, name: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_pid(*pid) == parent && command_line(*pid).contains(name))
        .collect()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Live processes that carry the job's id (every process of its run does).
pub fn job_processes(job_id: &str) -> Vec<i32> {
    ansible_runner_service::worker::job_processes(std::path::Path::new("/proc"), job_id)
}

/// Waits until no live process carries the job's id any more.
pub async fn no_process_left(job_id: &str) {
    eventually(
        Duration::from_secs(20),
        "every process of the run to end",
        || async { job_processes(job_id).is_empty().then_some(()) },
    )
    .await;
}

/// The field violations of an INVALID_ARGUMENT status.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Runs each scenario against both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Embedded).await
                }
            )*
        }
        mod shared {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Shared).await
                }
            )*
        }
    };
}
