//! What a process is told to do, whatever told it (flags, the environment
//! or a test): plain data, read by the layers above.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;
use crate::domain::validate::Limits;

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

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
    /// Git sources: the allowed providers and the workers' cache.
    pub git: GitSettings,
    /// The master key that opens credentials (workers); else CREDENTIALS_KEY.
    pub credentials_key_file: Option<PathBuf>,
}

/// Where git sources may come from, and how workers cache them.
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// The providers file (YAML); unset: no git sources.
    pub providers_file: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// A ref fetched this recently is resolved without the network.
    pub fetch_fresh_for: Duration,
    pub fetch_timeout: Duration,
    pub max_repo_bytes: u64,
    pub cache_max_bytes: u64,
    pub cache_max_age: Duration,
    /// How often a process looks for checkouts to evict at most.
    pub evict_every: Duration,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            providers_file: None,
            cache_dir: PathBuf::from(defaults::GIT_CACHE_DIR),
            fetch_fresh_for: secs(defaults::GIT_FETCH_FRESH_SECONDS),
            fetch_timeout: secs(defaults::GIT_FETCH_TIMEOUT_SECONDS),
            max_repo_bytes: defaults::GIT_MAX_REPO_MIB << 20,
            cache_max_bytes: defaults::GIT_CACHE_MAX_MIB << 20,
            cache_max_age: secs(7 * 86_400),
            evict_every: secs(60),
        }
    }
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
            database_url: defaults::DATABASE_URL.into(),
            redis_url: None,
            redis_prefix: defaults::REDIS_PREFIX.into(),
            playbooks_dir: PathBuf::from(defaults::PLAYBOOKS_DIR),
            workers: defaults::workers(),
            queues: vec![defaults::QUEUE.to_owned()],
            ansible_playbook: PathBuf::from(defaults::ANSIBLE_PLAYBOOK),
            executor: ExecutorKind::default(),
            limits: Limits::default(),
            lease: secs(defaults::LEASE_SECONDS),
            sweep_interval: secs(defaults::SWEEP_INTERVAL_SECONDS),
            redispatch_after: secs(defaults::REDISPATCH_AFTER_SECONDS),
            kill_grace: secs(defaults::KILL_GRACE_SECONDS),
            shutdown_grace: secs(defaults::SHUTDOWN_GRACE_SECONDS),
            stdout_cap: defaults::STDOUT_CAP,
            api_keys_file: None,
            tls: None,
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
            max_watches_per_client: defaults::MAX_WATCHES_PER_CLIENT,
            prune_older_than: None,
            metrics_listen: None,
            connect_timeout: secs(defaults::CONNECT_TIMEOUT_SECONDS),
            migrate: true,
            git: GitSettings::default(),
            credentials_key_file: None,
        }
    }
}

/// How a worker starts playbooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    #[default]
    /// A long-lived Python process per worker slot imports Ansible once and
    /// forks each run; runs plainly where it cannot.
    Warm,
    /// `ansible-playbook` started afresh for every job.
    Plain,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Warm => "warm",
            ExecutorKind::Plain => "plain",
        }
    }
}
