//! Assembling the service: connecting the history and the live state, and
//! serving the gRPC API (with health and reflection) next to in-process
//! workers and the sweeper. Shared by `main` and the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::domain::validate::Limits;
use crate::domain::Error;
use crate::grpc::auth::{Access, KeyRing};
use crate::grpc::JobApi;
use crate::live::{self, LiveState};
use crate::pb::job_service_server::JobServiceServer;
use crate::startup::{self, redact};
use crate::store::{PruneReport, Store};
use crate::worker::{Executor, ExecutorKind, Sweeper, Worker, WorkerTiming, DEFAULT_STDOUT_CAP};

/// Everything the service needs to run, whatever set it (flags or a test).
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub playbooks_dir: PathBuf,
    /// Jobs run at once by this process; 0 for an API server only.
    pub workers: usize,
    /// The queues (worker groups) this process's workers take jobs from.
    pub queues: Vec<String>,
    pub ansible_playbook: PathBuf,
    /// How playbooks are started: a warm Python process per worker slot, or
    /// a plain `ansible-playbook` per job.
    pub executor: ExecutorKind,
    pub limits: Limits,
    pub lease: Duration,
    pub sweep_interval: Duration,
    pub redispatch_after: Duration,
    pub kill_grace: Duration,
    pub shutdown_grace: Duration,
    pub stdout_cap: usize,
    /// File of `<client> <sha256 hex>` lines; unset: no authentication.
    pub api_keys_file: Option<PathBuf>,
    pub tls: Option<TlsSettings>,
    /// Largest request accepted (RESOURCE_EXHAUSTED beyond).
    pub max_request_bytes: usize,
    /// Open WatchJob streams per client at most.
    pub max_watches_per_client: usize,
    /// Prune finished jobs older than this, every hour.
    pub prune_older_than: Option<Duration>,
    /// Where to serve Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// How long to keep trying to reach the history database and Redis at start.
    pub connect_timeout: Duration,
    /// Apply pending migrations at start (else only check the schema is current).
    pub migrate: bool,
}

/// PEM files for TLS; with a client CA, clients need a certificate it signed.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl Settings {
    /// The embedded default: SQLite under ./data, in-process live state.
    pub fn embedded() -> Settings {
        Settings {
            database_url: "sqlite://data/ansible-runner.db".into(),
            redis_url: None,
            redis_prefix: "ars".into(),
            playbooks_dir: PathBuf::from("playbooks"),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            queues: vec![crate::live::DEFAULT_QUEUE.to_owned()],
            ansible_playbook: PathBuf::from("ansible-playbook"),
            executor: ExecutorKind::Warm,
            limits: Limits::default(),
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            redispatch_after: Duration::from_secs(10),
            kill_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            stdout_cap: DEFAULT_STDOUT_CAP,
            api_keys_file: None,
            tls: None,
            max_request_bytes: 1 << 20,
            max_watches_per_client: 100,
            prune_older_than: None,
            metrics_listen: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            migrate: true,
        }
    }
}

/// How long a process waits for its history database and Redis at start.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What request handlers share.
pub struct AppState {
    pub store: Store,
    pub live: Arc<dyn LiveState>,
    pub catalogue: Catalogue,
    pub limits: Limits,
    /// How long CancelJob waits for a running job to stop before answering.
    pub cancel_wait: Duration,
    /// Signs page tokens; the same on every API server.
    pub page_key: Vec<u8>,
    pub max_watches_per_client: usize,
    watch_slots: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl AppState {
    /// Connects the history (applying migrations, or checking the schema
    /// with `migrate` off) and the live state, waiting up to
    /// `connect_timeout` for each to be reachable.
    pub async fn connect(settings: &Settings) -> Result<Arc<AppState>, Error> {
        let catalogue = Catalogue::open(&settings.playbooks_dir)?;
        let store = connect_store(&settings.database_url, settings.connect_timeout).await?;
        if settings.migrate {
            store.migrate().await?;
        } else {
            store.check_schema().await?;
        }
        let page_key = store.service_secret("page_token").await?;
        let live = match settings.redis_url.as_deref() {
            Some(url) => {
                startup::retry("Redis", &redact(url), settings.connect_timeout, || {
                    live::connect(Some(url), &settings.redis_prefix)
                })
                .await?
            }
            None => live::connect(None, &settings.redis_prefix).await?,
        };
        Ok(Arc::new(AppState {
            store,
            live,
            catalogue,
            limits: settings.limits.clone(),
            cancel_wait: settings.kill_grace + Duration::from_secs(5),
            page_key,
            max_watches_per_client: settings.max_watches_per_client,
            watch_slots: Default::default(),
        }))
    }

    /// A place for one more watch stream of this caller, held while it lasts.
    pub fn watch_slot(
        &self,
        caller: &crate::domain::Caller,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let slots = {
            let mut all = self.watch_slots.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(caller.label().to_owned())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(self.max_watches_per_client))
                })
                .clone()
        };
        slots.try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "client {} already has {} open watch streams, the most allowed",
                caller.label(),
                self.max_watches_per_client
            ))
        })
    }

    pub async fn close(&self) {
        self.live.close().await;
        self.store.clone().close().await;
    }
}

/// The history database, waiting up to `timeout` for it to be reachable.
pub async fn connect_store(url: &str, timeout: Duration) -> Result<Store, Error> {
    let store = startup::retry("the history database", &redact(url), timeout, || {
        Store::connect(url)
    })
    .await?;
    tracing::info!(history = %redact(url), "history database connected");
    Ok(store)
}

/// Like [`connect_store`], for commands that use a history but never create
/// or migrate one (`prune`): its schema must be the one this binary knows.
pub async fn open_store(url: &str, timeout: Duration) -> Result<Store, Error> {
    let store = startup::retry("the history database", &redact(url), timeout, || {
        Store::open_existing(url)
    })
    .await?;
    tracing::info!(history = %redact(url), "history database connected");
    store.check_schema().await?;
    Ok(store)
}

fn tls_config(tls: &TlsSettings) -> Result<tonic::transport::ServerTlsConfig, Error> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))
    };
    let identity = tonic::transport::Identity::from_pem(
        read("--tls-cert (TLS_CERT)", &tls.cert)?,
        read("--tls-key (TLS_KEY)", &tls.key)?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "--tls-client-ca (TLS_CLIENT_CA)",
            ca,
        )?));
    }
    Ok(config)
}

/// How callers are recognised: the keys file (kept current by a watcher
/// until `shutdown`) and, under mutual TLS, client certificates.
fn access(settings: &Settings, shutdown: &CancellationToken) -> Result<Arc<Access>, Error> {
    let client_certificates = settings
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    let keys = match &settings.api_keys_file {
        Some(path) => {
            let ring = Arc::new(KeyRing::open(path)?);
            tracing::info!(file = %path.display(), clients = ring.current().clients().len(), client_certificates, "API keys required");
            tokio::spawn(ring.clone().watch(shutdown.clone()));
            Some(ring)
        }
        None if client_certificates => {
            tracing::info!(
                "no API keys: callers are named by their client certificates, with every scope"
            );
            None
        }
        None => {
            tracing::warn!("no API keys configured: every caller may run playbooks");
            None
        }
    };
    Ok(Arc::new(Access { keys }))
}

/// tonic answers OUT_OF_RANGE to a request over the size limit, and INTERNAL
/// to one it cannot decode; gRPC says RESOURCE_EXHAUSTED and INVALID_ARGUMENT,
/// which is what clients check for.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let remapped = match code {
        Some("11") if message.contains("message length too large") => Some("8"),
        Some("13") if message.starts_with("failed to decode Protobuf message") => Some("3"),
        _ => None,
    };
    if let Some(code) = remapped {
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}

/// Accepted connections with Nagle's algorithm off. Without it a response
/// written in several pieces (HTTP/2 headers, data, trailers) waits for the
/// client's delayed ACK: ~40 ms added to ListJobs pages (measured by the
/// benchmark). Connections tonic accepts itself get this from
/// `tcp_nodelay`; ours come from our own listener.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
        }
        stream
    })
}

/// Finds ansible-playbook (a path, or a name looked up on PATH).
pub fn find_ansible_playbook(program: &std::path::Path) -> Result<PathBuf, Error> {
    let missing = || {
        Error::internal(
            "find ansible-playbook",
            format!(
                "{} was not found; install ansible-core (pip install ansible-core) or set ANSIBLE_PLAYBOOK",
                program.display()
            ),
        )
    };
    if program.components().count() > 1 {
        return program
            .is_file()
            .then(|| program.to_owned())
            .ok_or_else(missing);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// Deletes finished jobs created more than `age` ago (of one status if
/// given) in small batches, and forgets them in the live state.
pub async fn prune(
    store: &Store,
    live: Option<&dyn LiveState>,
    age: Duration,
    status: Option<crate::domain::JobStatus>,
    dry_run: bool,
) -> Result<PruneReport, Error> {
    let before = chrono::Utc::now().timestamp_micros() - age.as_micros() as i64;
    let mut report = PruneReport::default();
    let mut after = String::new();
    loop {
        let (found, events) = store.prune_batch(before, status, dry_run, &after).await?;
        let Some(last) = found.last().map(|(id, _)| id.clone()) else {
            return Ok(report);
        };
        report.jobs += found.len() as u64;
        report.events += events;
        for (_, status) in &found {
            *report.by_status.entry(status.as_str()).or_default() += 1;
        }
        if let (Some(live), false) = (live, dry_run) {
            for id in found
                .iter()
                .filter_map(|(id, _)| uuid::Uuid::parse_str(id).ok())
            {
                if let Err(e) = live.forget_job(id).await {
                    tracing::warn!(job_id = %id, error = %e, "forgetting a pruned job");
                }
            }
        }
        after = last;
    }
}

/// Deletes finished jobs older than `age` every hour.
async fn prune_periodically(state: Arc<AppState>, age: Duration, shutdown: CancellationToken) {
    loop {
        match prune(&state.store, Some(state.live.as_ref()), age, None, false).await {
            Ok(report) if report.jobs > 0 => {
                tracing::info!(
                    jobs = report.jobs,
                    events = report.events,
                    "pruned old jobs"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old jobs"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Runs workers and the sweeper until `shutdown`, then drains.
pub async fn run_workers(
    state: Arc<AppState>,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let sweeper = Sweeper {
        store: state.store.clone(),
        live: state.live.clone(),
        interval: settings.sweep_interval,
        redispatch_after: settings.redispatch_after,
    };
    let sweeping = tokio::spawn(sweeper.run(shutdown.clone()));
    if let Some(age) = settings.prune_older_than {
        tokio::spawn(prune_periodically(state.clone(), age, shutdown.clone()));
    }
    if settings.workers > 0 {
        let executor = Executor::new(
            find_ansible_playbook(&settings.ansible_playbook)?,
            settings.kill_grace,
            settings.stdout_cap,
            settings.executor,
        )
        .await;
        let worker = Worker::new(
            state.store.clone(),
            state.live.clone(),
            state.catalogue.clone(),
            executor,
            WorkerTiming {
                lease: settings.lease,
                shutdown_grace: settings.shutdown_grace,
            },
            settings.queues.clone(),
        );
        worker.run(settings.workers, shutdown.clone()).await;
    } else {
        shutdown.cancelled().await;
    }
    let _ = sweeping.await;
    Ok(())
}

/// Serves the API on `listener` (with in-process workers when configured)
/// until `shutdown`: health turns NOT_SERVING, the server stops accepting,
/// open watch streams end, running jobs get their grace, connections close.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    serve_when_connected(listener, async { Ok(state) }, settings, shutdown).await
}

/// As [`serve`], but the port serves at once while `connecting` runs (the
/// history database and Redis may not be up yet): health says NOT_SERVING
/// and JobService calls answer UNAVAILABLE until it is done. If it fails,
/// the server stops and the error is returned.
pub async fn serve_when_connected(
    listener: TcpListener,
    connecting: impl std::future::Future<Output = Result<Arc<AppState>, Error>>,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<JobServiceServer<JobApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal("build reflection", e))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::internal("build reflection", e))?;

    // Everything is checked before anything starts or is announced: TLS
    // files, the keys file, ansible-playbook, the metrics address.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &settings.tls {
        server = server.tls_config(tls_config(tls)?).map_err(|e| {
            Error::Config(format!("TLS (--tls-cert, --tls-key, --tls-client-ca): {e}"))
        })?;
    }
    let access = access(settings, &shutdown)?;
    if settings.workers > 0 {
        find_ansible_playbook(&settings.ansible_playbook)?;
    }
    if let Some(addr) = settings.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::Config(format!(
                "--metrics-listen (METRICS_LISTEN) {addr}: {e}; choose a free address"
            ))
        })?;
        tokio::spawn(crate::metrics::serve(listener, shutdown.clone()));
    }
    let stopping = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health.set_not_serving::<JobServiceServer<JobApi>>().await;
            tracing::info!("shutting down: no new requests or jobs");
        }
    };
    let api = crate::grpc::WhenReady::default();
    let serving = server
        .layer(crate::metrics::RpcLayer)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api.clone())
        .serve_with_incoming_shutdown(incoming(listener), stopping);
    tokio::pin!(serving);
    tokio::pin!(connecting);

    let connected = tokio::select! {
        // A state already connected is in place before the first request.
        biased;
        connected = &mut connecting => connected,
        served = &mut serving => {
            return served.map_err(|e| Error::internal("serve gRPC", e));
        }
    };
    let state = match connected {
        Ok(state) => state,
        Err(e) => {
            shutdown.cancel();
            let _ = serving.await;
            return Err(e);
        }
    };
    let workers = tokio::spawn({
        let state = state.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        async move { run_workers(state, &settings, shutdown).await }
    });
    let job_service = JobServiceServer::new(JobApi::new(state.clone(), shutdown.clone()))
        .max_decoding_message_size(settings.max_request_bytes);
    api.set(tonic::service::interceptor::InterceptedService::new(
        job_service,
        crate::grpc::auth::interceptor(access),
    ));
    if !shutdown.is_cancelled() {
        health.set_serving::<JobServiceServer<JobApi>>().await;
    }
    tracing::info!(
        addr = %addr.map(|a| a.to_string()).unwrap_or_default(),
        workers = settings.workers,
        tls = settings.tls.is_some(),
        "serving"
    );
    let served = serving.await.map_err(|e| Error::internal("serve gRPC", e));
    // If the server failed on its own, stop the workers too.
    shutdown.cancel();
    match workers.await {
        Ok(Err(e)) => tracing::error!(error = %e, "workers"),
        Err(e) => tracing::error!(error = %e, "workers panicked"),
        Ok(Ok(())) => {}
    }
    state.close().await;
    tracing::info!("stopped");
    served
}
