//! Every default in one place. The command line (clap's `default_value`s),
//! the embedded settings ([`crate::settings::Settings::embedded`]) and the
//! input rules ([`crate::domain::validate::Limits`]) all read these, so a
//! default changed here changes everywhere, `--help` included.

// Where things are.
pub const LISTEN_ADDR: &str = "127.0.0.1:50051";
/// Where the client looks for the server: [`LISTEN_ADDR`] over plain HTTP/2.
pub const SERVER_URL: &str = "http://127.0.0.1:50051";
pub const DATABASE_URL: &str = "sqlite://data/ansible-runner.db";
pub const REDIS_PREFIX: &str = "ars";
pub const PLAYBOOKS_DIR: &str = "playbooks";
pub const ANSIBLE_PLAYBOOK: &str = "ansible-playbook";
/// The queue of a job that names none, and the one workers take by default.
pub const QUEUE: &str = "default";

// Timing.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 60;
pub const LEASE_SECONDS: u64 = 30;
/// A shorter lease would be renewed more often than a database round trip.
pub const MIN_LEASE_SECONDS: u64 = 3;
pub const SWEEP_INTERVAL_SECONDS: u64 = 5;
pub const MIN_SWEEP_INTERVAL_SECONDS: u64 = 1;
pub const REDISPATCH_AFTER_SECONDS: u64 = 10;
pub const KILL_GRACE_SECONDS: u64 = 10;
pub const SHUTDOWN_GRACE_SECONDS: u64 = 30;
/// How long the live state keeps a job (and its secret vars) after its last
/// change; the history keeps it for good.
pub const LIVE_STATE_TTL_SECONDS: u64 = 24 * 3600;
/// Longest a request waits for the live state before it goes on without it
/// (a read asks the history, a submit leaves the dispatch to the sweeper).
pub const LIVE_WAIT_MS: u64 = 1000;
/// How often `--prune-older-than` prunes.
pub const PRUNE_EVERY_SECONDS: u64 = 3600;
/// How much longer than the kill grace CancelJob waits for a running job to
/// stop before it answers with the job still RUNNING.
pub const CANCEL_WAIT_EXTRA_SECONDS: u64 = 5;

// What one request, one run and one client may use.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
pub const MAX_WATCHES_PER_CLIENT: usize = 100;
/// Stdout kept per run; the rest is cut (`stdout_truncated`).
pub const STDOUT_CAP: usize = 16 << 20;
pub const MAX_HOSTS: usize = 1000;
pub const MAX_FORKS: u32 = 100;
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;
pub const MAX_EXTRA_VARS_DEPTH: usize = 32;
pub const MAX_EXTRA_VARS_BYTES: usize = 1 << 20;
pub const MAX_PENDING_PER_CLIENT: usize = 1000;

// ListJobs pages.
/// Where workers keep git mirrors and checkouts.
pub const GIT_CACHE_DIR: &str = "data/git-cache";
/// A ref fetched this recently is not fetched again.
pub const GIT_FETCH_FRESH_SECONDS: u64 = 60;
/// A fetch taking longer fails the job (SOURCE_UNAVAILABLE).
pub const GIT_FETCH_TIMEOUT_SECONDS: u64 = 300;
/// A repository (its mirror on disk) larger than this fails its jobs.
pub const GIT_MAX_REPO_MIB: u64 = 1024;
/// Checkouts are evicted, least recently used first, above this total.
pub const GIT_CACHE_MAX_MIB: u64 = 8192;
/// Checkouts unused this long are evicted.
pub const GIT_CACHE_MAX_AGE: &str = "7d";

pub const PAGE_SIZE: u64 = 20;
pub const MAX_PAGE_SIZE: u64 = 100;

/// Jobs one process runs at once unless told: one per core.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_looks_where_the_server_listens() {
        assert_eq!(super::SERVER_URL, format!("http://{}", super::LISTEN_ADDR));
    }
}
