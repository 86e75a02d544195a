//! Assembling a process: the gRPC API (with health and reflection) over the
//! use-cases, next to in-process workers and the sweeper, until shutdown.
//! Shared by `main` and the tests.

use crate::credentials::MasterKey;
use crate::sources::GitCache;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::app::{prune_periodically, AppState};
use crate::domain::Error;
use crate::grpc::auth::{Access, KeyRing};
use crate::grpc::JobApi;
use crate::pb::job_service_server::JobServiceServer;
use crate::settings::{Settings, TlsSettings};
use crate::worker::{Executor, RunResources, Sweeper, Worker, WorkerTiming};

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
        Error::Config(format!(
            "--ansible-playbook (ANSIBLE_PLAYBOOK) {} was not found; install ansible-core \
             (pip install ansible-core) or point the flag at ansible-playbook",
            program.display()
        ))
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
    if let Some(age) = settings.prune_older_than {
        tokio::spawn(prune_periodically(state.clone(), age, shutdown.clone()));
    }
    if settings.workers > 0 {
        let executor = Executor::new(
            find_ansible_playbook(&settings.ansible_playbook)?,
            settings.kill_grace,
            settings.stdout_cap,
            settings.executor,
            state.limits.providers.credential_variables(),
        )
        .await;
        if !state.limits.providers.credential_variables().is_empty() {
            // Runs (same user) cannot read this process's environment, where
            // the providers' credentials are, through /proc.
            // SAFETY: prctl(2) with integer arguments.
            unsafe {
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            }
        }
        let git = if state.limits.providers.providers.is_empty() {
            None
        } else {
            let cache =
                GitCache::new(&settings.git, state.limits.providers.clone()).map_err(|e| {
                    Error::Config(format!(
                        "--git-cache-dir (GIT_CACHE_DIR) {}: {e}",
                        settings.git.cache_dir.display()
                    ))
                })?;
            Some(Arc::new(cache))
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
            settings.queues.clone(),
            RunResources {
                git,
                master_key: MasterKey::load(settings.credentials_key_file.as_deref())?,
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
            Error::Config(format!(
                "TLS (--tls-cert, --tls-key, --tls-client-ca): {}; give PEM files",
                crate::domain::error_chain(&e)
            ))
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
