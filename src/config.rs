//! Command line and environment: every flag has an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::defaults;
use crate::domain::validate::Limits;
use crate::settings::ExecutorKind;
use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "ansible-runner-service",
    version,
    about = "Runs approved Ansible playbooks over gRPC and keeps their history"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// How a server command logs (client commands print, they do not log).
    pub fn log_format(&self) -> LogFormat {
        match self {
            Command::Serve(args) => args.run.store.log_format,
            Command::Worker(args) => args.run.store.log_format,
            Command::Migrate(store) => store.log_format,
            Command::Prune(args) => args.store.log_format,
            Command::Health(_)
            | Command::Keys(_)
            | Command::Credentials(_)
            | Command::Client(_) => LogFormat::Human,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API, with in-process workers (--workers 0 for API only).
    Serve(Box<ServeArgs>),
    /// Run jobs only, sharing the database and Redis with API servers.
    Worker(WorkerArgs),
    /// Apply pending database migrations and exit.
    Migrate(StoreArgs),
    /// Ask a server's grpc.health.v1 whether the JobService is SERVING (exit 0) or not (exit 1).
    Health(HealthArgs),
    /// Delete finished jobs (and their events and output) older than a cut-off.
    Prune(PruneArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage named credentials (SSH keys, vault and become passwords), sealed in the history with the master key.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Client: talk to a running server (run, get, list, watch, cancel, playbooks).
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Age of the jobs to delete, e.g. 30d, 12h, 90m, 0s.
    #[arg(long, value_parser = parse_age)]
    pub older_than: Duration,
    /// Only jobs in this terminal status (SUCCESSFUL, FAILED, CANCELED, TIMED_OUT).
    #[arg(long)]
    pub status: Option<String>,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Redis of the deployment, so pruned jobs leave the live state too.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "REDIS_PREFIX", default_value = defaults::REDIS_PREFIX)]
    pub redis_prefix: String,
}

/// A queue name, as SubmitJob accepts it.
fn parse_queue(text: &str) -> Result<String, String> {
    let name = text.trim();
    crate::domain::validate::queue_name(name)?;
    Ok(name.to_owned())
}

/// HOST:PORT as the first address it names (`localhost:50051` included).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:50051)"))?
        .collect();
    // IPv4 first: `localhost` means 127.0.0.1 to most people and clients.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} names no address"))
}

/// "30d", "12h", "90m", "45s" as a duration.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.len().checked_sub(1).ok_or("empty duration")?;
    let (amount, unit) = text.split_at(split);
    let amount: u64 = amount
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (d, h, m or s), e.g. 30d"))?;
    let seconds = match unit {
        "d" => amount.saturating_mul(86_400),
        "h" => amount.saturating_mul(3_600),
        "m" => amount.saturating_mul(60),
        "s" => amount,
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s")),
    };
    Ok(Duration::from_secs(seconds))
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a client: prints the key once and adds its hash and scopes to the keys file.
    Create {
        /// The client's name, recorded as submitted_by on its jobs.
        #[arg(long)]
        name: String,
        /// The keys file the server reads (API_KEYS_FILE).
        #[arg(long, env = "API_KEYS_FILE")]
        file: PathBuf,
        /// A playbook the client may run, as a glob over catalogue names (`*` within a folder, `**` across); repeat for more. Default: every playbook.
        #[arg(long = "playbooks", value_name = "GLOB")]
        playbooks: Vec<String>,
        /// A git repository (`git:HOST/PATH`, e.g. 'git:git.example.com/platform/*') or installed role (`role:NAME`) the client may run, as a glob; repeat for more. Default: every source, or none when --playbooks limits the client.
        #[arg(long = "sources", value_name = "GLOB")]
        sources: Vec<String>,
        /// A named credential the client may give its jobs, as a glob; repeat for more. Default: every credential, or none when --playbooks limits the client.
        #[arg(long = "credentials", value_name = "GLOB")]
        credentials: Vec<String>,
        /// What the client may do: a comma-separated list of run, cancel, read. Default: all three.
        #[arg(long, value_name = "LIST")]
        actions: Option<String>,
        /// Whose jobs the client sees and cancels: own or all (default).
        #[arg(long, value_name = "own|all")]
        jobs: Option<String>,
        /// The client presents a TLS client certificate whose CN or a SAN is its name, instead of a key (needs --tls-client-ca on the server).
        #[arg(long)]
        certificate: bool,
    },
    /// List the clients of the keys file with their scopes (never their hashes).
    List {
        /// The keys file the server reads (API_KEYS_FILE).
        #[arg(long, env = "API_KEYS_FILE")]
        file: PathBuf,
    },
    /// Remove a client from the keys file; servers stop accepting it within seconds.
    Revoke {
        /// The client to remove.
        #[arg(long)]
        name: String,
        /// The keys file the server reads (API_KEYS_FILE).
        #[arg(long, env = "API_KEYS_FILE")]
        file: PathBuf,
    },
}

impl KeysCommand {
    /// The scopes `keys create` was given, as keys-file words.
    pub fn scope_words(
        playbooks: &[String],
        sources: &[String],
        credentials: &[String],
        actions: &Option<String>,
        jobs: &Option<String>,
    ) -> Vec<String> {
        let mut words: Vec<String> = playbooks.iter().map(|p| format!("playbooks={p}")).collect();
        words.extend(sources.iter().map(|s| format!("sources={s}")));
        words.extend(credentials.iter().map(|c| format!("credentials={c}")));
        words.extend(actions.iter().map(|a| format!("actions={a}")));
        words.extend(jobs.iter().map(|j| format!("jobs={j}")));
        words
    }
}

/// Where credentials live and the key that seals them.
#[derive(Debug, Args)]
pub struct CredentialStoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// File of the master key (base64; `credentials new-key`); unset: the CREDENTIALS_KEY environment variable.
    #[arg(long, env = "CREDENTIALS_KEY_FILE")]
    pub credentials_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Print a new random master key (base64): keep it in a file readable by the service only.
    NewKey,
    /// Create (or replace) a credential; its values are read from files, never from the command line.
    Create {
        /// The credential's name, as jobs name it.
        #[arg(long)]
        name: String,
        /// ssh, vault or become.
        #[arg(long)]
        kind: String,
        /// ssh: the private key file (OpenSSH or PEM).
        #[arg(long, value_name = "FILE")]
        ssh_key_file: Option<PathBuf>,
        /// ssh: the key's passphrase (first line of the file), for a key in OpenSSH's format that has one.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// ssh: the user to log in as.
        #[arg(long)]
        user: Option<String>,
        /// ssh: known_hosts lines of the hosts it reaches; unset: the workers' own known hosts.
        #[arg(long, value_name = "FILE")]
        known_hosts_file: Option<PathBuf>,
        /// ssh: trust a host seen for the first time (for the run), instead of refusing it.
        #[arg(long)]
        accept_new_host_keys: bool,
        /// vault, become: a file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// vault: the vault id (`--vault-id ID@...`); default "default".
        #[arg(long)]
        vault_id: Option<String>,
        #[command(flatten)]
        at: CredentialStoreArgs,
    },
    /// List credentials: names, kinds, users and fingerprints, never values.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a credential; jobs that name it and have not started fail (CREDENTIAL_UNAVAILABLE).
    Delete {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Seal every credential again with a new master key (the current one opens them).
    Rekey {
        /// File of the new master key.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
        #[command(flatten)]
        at: CredentialStoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Address of the server: host:port, http://... or https://...
    #[arg(long, env = "LISTEN_ADDR", default_value = defaults::LISTEN_ADDR)]
    pub addr: String,
    #[command(flatten)]
    pub tls: crate::cli::TlsClientArgs,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// History database: mysql://user:pass@host/db, or sqlite://path (the default).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = defaults::DATABASE_URL
    )]
    pub database_url: String,
    /// Log format on stderr (RUST_LOG filters).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Seconds to keep trying to reach the history database (and Redis) at start, with backoff, before giving up.
    #[arg(long, env = "CONNECT_TIMEOUT_SECONDS", default_value_t = defaults::CONNECT_TIMEOUT_SECONDS)]
    pub connect_timeout_seconds: u64,
}

impl StoreArgs {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC API: HOST:PORT, the host a name (localhost) or an address.
    #[arg(long, env = "LISTEN_ADDR", default_value = defaults::LISTEN_ADDR, value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// File of API keys and their scopes (see `keys create`), re-read when it changes; unset: no authentication.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Server certificate (PEM); with --tls-key, serves TLS.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates: clients without one are refused (mutual TLS).
    #[arg(long, env = "TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = defaults::MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Open WatchJob streams per client at most.
    #[arg(long, env = "MAX_WATCHES_PER_CLIENT", default_value_t = defaults::MAX_WATCHES_PER_CLIENT)]
    pub max_watches_per_client: usize,
    /// Prune finished jobs older than this (e.g. 30d) every hour; unset: keep everything.
    #[arg(long, env = "PRUNE_OLDER_THAN", value_parser = parse_age)]
    pub prune_older_than: Option<Duration>,
    /// Address of the Prometheus metrics endpoint (GET /metrics); unset: none.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Redis for live state, dispatch and fan-out; unset: in-process (one process only).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = defaults::REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Folder of the playbook catalogue.
    #[arg(long, env = "PLAYBOOKS_DIR", default_value = defaults::PLAYBOOKS_DIR)]
    pub playbooks_dir: PathBuf,
    /// Jobs this process runs at once (default: the number of cores); 0 with `serve` for an API server only.
    #[arg(long, env = "WORKER_CONCURRENCY")]
    pub workers: Option<usize>,
    /// Queues (worker groups) this process's workers take jobs from, comma-separated.
    #[arg(long, env = "WORKER_QUEUES", value_delimiter = ',', default_value = defaults::QUEUE, value_parser = parse_queue)]
    pub queues: Vec<String>,
    /// ansible-playbook to run: a path, or a name looked up on PATH.
    #[arg(long, env = "ANSIBLE_PLAYBOOK", default_value = defaults::ANSIBLE_PLAYBOOK)]
    pub ansible_playbook: PathBuf,
    /// How playbooks start: `warm` (a Python process per worker slot that imported Ansible once forks each run; falls back to `plain` where it cannot) or `plain` (ansible-playbook per job).
    #[arg(long, env = "EXECUTOR", value_enum, default_value_t = ExecutorKind::default())]
    pub executor: ExecutorKind,
    /// Seconds a worker's claim on a job lasts without renewal.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = defaults::LEASE_SECONDS)]
    pub lease_seconds: u64,
    /// Seconds between two sweeps (lost workers, lost dispatches).
    #[arg(long, env = "SWEEP_INTERVAL_SECONDS", default_value_t = defaults::SWEEP_INTERVAL_SECONDS)]
    pub sweep_interval_seconds: u64,
    /// Seconds after which a PENDING job the dispatch does not hold, or a dispatched job a worker took and never claimed, is taken as lost and queued again in its place.
    #[arg(long, env = "REDISPATCH_AFTER_SECONDS", default_value_t = defaults::REDISPATCH_AFTER_SECONDS)]
    pub redispatch_after_seconds: u64,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped.
    #[arg(long, env = "KILL_GRACE_SECONDS", default_value_t = defaults::KILL_GRACE_SECONDS)]
    pub kill_grace_seconds: u64,
    /// Seconds running jobs may go on after SIGTERM/SIGINT before they are canceled (SHUTDOWN).
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = defaults::SHUTDOWN_GRACE_SECONDS)]
    pub shutdown_grace_seconds: u64,
    /// Do not apply migrations at start, only check that the schema is the one this binary knows (run `migrate` separately).
    #[arg(long, env = "NO_MIGRATE", default_value_t = false)]
    pub no_migrate: bool,
    #[command(flatten)]
    pub git: GitArgs,
    /// File of the master key (base64, 32 bytes; `credentials new-key`) that opens named credentials; workers need it to run jobs that name credentials. Unset: the CREDENTIALS_KEY environment variable, else none.
    #[arg(long, env = "CREDENTIALS_KEY_FILE")]
    pub credentials_key_file: Option<PathBuf>,
}

/// Git sources: read by API servers (which repositories a job may name) and
/// workers (credentials and the cache).
#[derive(Debug, Args)]
pub struct GitArgs {
    /// Providers file (YAML): the git hosts, organisations and credentials jobs may use; unset: no git sources.
    #[arg(long, env = "GIT_PROVIDERS_FILE")]
    pub git_providers: Option<PathBuf>,
    /// Folder of the workers' git mirrors and checkouts (shared by the processes of one host).
    #[arg(long, env = "GIT_CACHE_DIR", default_value = defaults::GIT_CACHE_DIR)]
    pub git_cache_dir: PathBuf,
    /// Seconds during which a fetched ref is resolved again without fetching.
    #[arg(long, env = "GIT_FETCH_FRESH_SECONDS", default_value_t = defaults::GIT_FETCH_FRESH_SECONDS)]
    pub git_fetch_fresh_seconds: u64,
    /// Seconds a fetch may take before the job fails (SOURCE_UNAVAILABLE).
    #[arg(long, env = "GIT_FETCH_TIMEOUT_SECONDS", default_value_t = defaults::GIT_FETCH_TIMEOUT_SECONDS)]
    pub git_fetch_timeout_seconds: u64,
    /// Largest repository (its mirror on disk), in MiB; a larger one fails its jobs (SOURCE_UNAVAILABLE).
    #[arg(long, env = "GIT_MAX_REPO_MIB", default_value_t = defaults::GIT_MAX_REPO_MIB)]
    pub git_max_repo_mib: u64,
    /// Checkouts are evicted, least recently used first, when the cache is larger than this, in MiB.
    #[arg(long, env = "GIT_CACHE_MAX_MIB", default_value_t = defaults::GIT_CACHE_MAX_MIB)]
    pub git_cache_max_mib: u64,
    /// Checkouts unused for this long (e.g. 7d, 12h) are evicted.
    #[arg(long, env = "GIT_CACHE_MAX_AGE", default_value = defaults::GIT_CACHE_MAX_AGE, value_parser = parse_age)]
    pub git_cache_max_age: Duration,
}

impl GitArgs {
    pub fn settings(&self) -> crate::settings::GitSettings {
        crate::settings::GitSettings {
            providers_file: self.git_providers.clone(),
            cache_dir: self.git_cache_dir.clone(),
            fetch_fresh_for: Duration::from_secs(self.git_fetch_fresh_seconds),
            fetch_timeout: Duration::from_secs(self.git_fetch_timeout_seconds),
            max_repo_bytes: self.git_max_repo_mib.saturating_mul(1 << 20),
            cache_max_bytes: self.git_cache_max_mib.saturating_mul(1 << 20),
            cache_max_age: self.git_cache_max_age,
            ..Default::default()
        }
    }
}

/// What a submission may ask for: read by the API server (`serve`) only.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Timeout of a job that sets none.
    #[arg(long, env = "DEFAULT_TIMEOUT_SECONDS", default_value_t = defaults::DEFAULT_TIMEOUT_SECONDS)]
    pub default_timeout_seconds: u32,
    /// Largest timeout_seconds a request may set.
    #[arg(long, env = "MAX_TIMEOUT_SECONDS", default_value_t = defaults::MAX_TIMEOUT_SECONDS)]
    pub max_timeout_seconds: u32,
    /// Largest options.forks a request may set.
    #[arg(long, env = "MAX_FORKS", default_value_t = defaults::MAX_FORKS)]
    pub max_forks: u32,
    /// Most hosts an inventory may name.
    #[arg(long, env = "MAX_HOSTS", default_value_t = defaults::MAX_HOSTS)]
    pub max_hosts: usize,
    /// Let extra_vars and inline-inventory variables set any ansible_* variable (interpreters, ssh arguments, become...): for trusted callers only.
    #[arg(long, env = "ALLOW_ANSIBLE_VARS", default_value_t = false)]
    pub allow_ansible_vars: bool,
    /// PENDING jobs one client may have; more submits answer RESOURCE_EXHAUSTED. 0: no cap.
    #[arg(long, env = "MAX_PENDING_PER_CLIENT", default_value_t = defaults::MAX_PENDING_PER_CLIENT)]
    pub max_pending_per_client: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_hosts: self.max_hosts,
            max_forks: self.max_forks,
            default_timeout_seconds: self.default_timeout_seconds,
            max_timeout_seconds: self.max_timeout_seconds,
            allow_ansible_vars: self.allow_ansible_vars,
            max_pending_per_client: self.max_pending_per_client,
            ..Limits::default()
        }
    }
}

impl RunArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            database_url: self.store.database_url.clone(),
            redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
            redis_prefix: self.redis_prefix.clone(),
            playbooks_dir: self.playbooks_dir.clone(),
            workers: self.workers.unwrap_or_else(defaults::workers),
            queues: self.queues.clone(),
            ansible_playbook: self.ansible_playbook.clone(),
            executor: self.executor,
            // Limits are the API server's (ServeArgs sets them).
            limits: Limits::default(),
            lease: Duration::from_secs(self.lease_seconds.max(defaults::MIN_LEASE_SECONDS)),
            sweep_interval: Duration::from_secs(
                self.sweep_interval_seconds
                    .max(defaults::MIN_SWEEP_INTERVAL_SECONDS),
            ),
            redispatch_after: Duration::from_secs(self.redispatch_after_seconds),
            kill_grace: Duration::from_secs(self.kill_grace_seconds),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            connect_timeout: self.store.connect_timeout(),
            migrate: !self.no_migrate,
            git: self.git.settings(),
            credentials_key_file: self.credentials_key_file.clone(),
            // The rest is the API server's (ServeArgs sets it).
            ..Settings::embedded()
        }
    }
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            api_keys_file: self.api_keys_file.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::settings::TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_request_bytes: self.max_request_bytes,
            max_watches_per_client: self.max_watches_per_client,
            prune_older_than: self.prune_older_than,
            metrics_listen: self.metrics_listen,
            limits: self.limits.limits(),
            ..self.run.settings()
        }
    }
}
