//! Prometheus metrics, served as text on an HTTP port of their own
//! (`--metrics-listen`, GET /metrics). Recorded from anywhere through
//! `metrics::get()`; each process reports its own share (its RPCs, its
//! running jobs), and the queue depth as the sweeper last saw it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<Labels, Counter>,
    pub jobs_running: Gauge,
    pub queue_depth: Family<Labels, Gauge>,
    pub oldest_pending: Family<Labels, Gauge<f64, AtomicU64>>,
    pub job_duration: Histogram,
    pub rpc_duration: Family<Labels, Histogram>,
    pub watch_streams: Gauge,
    pub sweeper_actions: Family<Labels, Counter>,
    pub runs_started: Family<Labels, Counter>,
    pub git_fetch_seconds: Histogram,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ars");
        let metrics = Metrics {
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            jobs_running: Gauge::default(),
            queue_depth: Family::default(),
            oldest_pending: Family::default(),
            job_duration: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            watch_streams: Gauge::default(),
            sweeper_actions: Family::default(),
            runs_started: Family::default(),
            git_fetch_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register(
            "jobs_submitted",
            "Jobs submitted (new jobs only)",
            metrics.jobs_submitted.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached a terminal state, by status",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "runs_started",
            "Playbook runs this process started, by executor (warm, plain)",
            metrics.runs_started.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs this process is running",
            metrics.jobs_running.clone(),
        );
        registry.register(
            "queue_depth",
            "Dispatched jobs no worker has taken yet, by queue (as last swept)",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "oldest_pending_seconds",
            "Age of the oldest PENDING job in the history, by queue (as last swept; 0: none)",
            metrics.oldest_pending.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Run time of finished jobs",
            metrics.job_duration.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC latency to the response headers, by method and code",
            metrics.rpc_duration.clone(),
        );
        registry.register(
            "watch_streams_open",
            "Open WatchJob streams",
            metrics.watch_streams.clone(),
        );
        registry.register(
            "sweeper_actions",
            "What the sweeper did, by action: worker_lost, reclaimed (a taken dispatch its worker never settled), redispatched (a PENDING job queued again)",
            metrics.sweeper_actions.clone(),
        );
        registry.register(
            "git_fetch_seconds",
            "Time of the git fetches this process made (a cached commit needs none)",
            metrics.git_fetch_seconds.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn label(name: &str, value: &str) -> Labels {
        vec![(name.to_owned(), value.to_owned())]
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Serves GET /metrics until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "serving metrics"),
        Err(e) => tracing::info!(error = %e, "serving metrics"),
    }
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut request))
                    .await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&request[..n]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let body = get().render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// A tower layer recording and logging every RPC: method, code, latency.
#[derive(Clone, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            // A unary success carries its status in the trailers: OK.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            let code = format!("{:?}", tonic::Code::from_i32(code));
            let elapsed = started.elapsed();
            get()
                .rpc_duration
                .get_or_create(&vec![
                    ("method".into(), method.clone()),
                    ("code".into(), code.clone()),
                ])
                .observe(elapsed.as_secs_f64());
            tracing::info!(
                method,
                code,
                latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                "rpc"
            );
            result
        })
    }
}
