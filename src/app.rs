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
use crate::grpc::JobApi;
use crate::live::{self, LiveState};
use crate::pb::job_service_server::JobServiceServer;
use crate::store::Store;
use crate::worker::{Executor, Sweeper, Worker, WorkerTiming, DEFAULT_STDOUT_CAP};

/// Everything the service needs to run, whatever set it (flags or a test).
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub playbooks_dir: PathBuf,
    /// Jobs run at once by this process; 0 for an API server only.
    pub workers: usize,
    pub ansible_playbook: PathBuf,
    pub limits: Limits,
    pub lease: Duration,
    pub sweep_interval: Duration,
    pub redispatch_after: Duration,
    pub kill_grace: Duration,
    pub shutdown_grace: Duration,
    pub stdout_cap: usize,
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
            ansible_playbook: PathBuf::from("ansible-playbook"),
            limits: Limits::default(),
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            redispatch_after: Duration::from_secs(10),
            kill_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            stdout_cap: DEFAULT_STDOUT_CAP,
        }
    }
}

/// What request handlers share.
pub struct AppState {
    pub store: Store,
    pub live: Arc<dyn LiveState>,
    pub catalogue: Catalogue,
    pub limits: Limits,
    /// How long CancelJob waits for a running job to stop before answering.
    pub cancel_wait: Duration,
}

impl AppState {
    /// Connects the history (applying migrations) and the live state.
    pub async fn connect(settings: &Settings) -> Result<Arc<AppState>, Error> {
        let catalogue = Catalogue::open(&settings.playbooks_dir)?;
        let store = Store::connect(&settings.database_url).await?;
        store.migrate().await?;
        let live = live::connect(settings.redis_url.as_deref(), &settings.redis_prefix).await?;
        Ok(Arc::new(AppState {
            store,
            live,
            catalogue,
            limits: settings.limits.clone(),
            cancel_wait: settings.kill_grace + Duration::from_secs(5),
        }))
    }

    pub async fn close(&self) {
        self.live.close().await;
        self.store.clone().close().await;
    }
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
    if settings.workers > 0 {
        let executor = Executor {
            ansible_playbook: find_ansible_playbook(&settings.ansible_playbook)?,
            kill_grace: settings.kill_grace,
            stdout_cap: settings.stdout_cap,
        };
        let worker = Worker::new(
            state.store.clone(),
            state.live.clone(),
            state.catalogue.clone(),
            executor,
            WorkerTiming {
                lease: settings.lease,
                shutdown_grace: settings.shutdown_grace,
            },
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
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<JobApi>>().await;
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

    // Workers check their settings (ansible-playbook present) before we serve.
    let workers_settings = settings.clone();
    if settings.workers > 0 {
        find_ansible_playbook(&settings.ansible_playbook)?;
    }
    let workers = tokio::spawn({
        let state = state.clone();
        let shutdown = shutdown.clone();
        async move { run_workers(state, &workers_settings, shutdown).await }
    });

    tracing::info!(?addr, workers = settings.workers, "serving");
    let api = JobServiceServer::new(JobApi::new(state.clone(), shutdown.clone()));
    let stopping = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health.set_not_serving::<JobServiceServer<JobApi>>().await;
            tracing::info!("shutting down: no new requests or jobs");
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping)
        .await
        .map_err(|e| Error::internal("serve gRPC", e));
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
