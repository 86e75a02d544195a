//! What a job is: its spec, status, result, events and error reasons.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::source::{GitFile, Source};

/// A job's place in its life; terminal states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Successful,
    Failed,
    Canceled,
    TimedOut,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Successful,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    /// Order of states in a job's life: a state of lower rank never
    /// replaces one of higher rank (live-state writes may arrive late).
    pub fn rank(self) -> u8 {
        match self {
            JobStatus::Pending => 0,
            JobStatus::Running => 1,
            _ => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Successful => "SUCCESSFUL",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
            JobStatus::TimedOut => "TIMED_OUT",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

/// Why a job did not succeed, as a stable machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorReason {
    /// ansible-playbook exited with a non-zero code.
    PlaybookFailed,
    /// The worker running the job stopped renewing its lease.
    WorkerLost,
    /// A caller canceled the job.
    Canceled,
    /// The job ran past its timeout.
    TimedOut,
    /// The worker was shut down while the job ran.
    Shutdown,
    /// The job's secret extra vars were lost (the live state was lost before
    /// a worker took the job); it did not run without them.
    SecretsLost,
    /// The playbook could not be started (executor missing, I/O error, ...).
    ExecutorError,
    /// A git repository could not be fetched: unreachable, credentials
    /// refused, clone timeout or size limit.
    SourceUnavailable,
    /// The git ref, the path inside the repository or the role is not there.
    SourceNotFound,
    /// A credential the job names could not be opened on the worker (gone
    /// since the submit, or no master key there).
    CredentialUnavailable,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 10] = [
        ErrorReason::CredentialUnavailable,
        ErrorReason::SourceUnavailable,
        ErrorReason::SourceNotFound,
        ErrorReason::SecretsLost,
        ErrorReason::PlaybookFailed,
        ErrorReason::WorkerLost,
        ErrorReason::Canceled,
        ErrorReason::TimedOut,
        ErrorReason::Shutdown,
        ErrorReason::ExecutorError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::PlaybookFailed => "PLAYBOOK_FAILED",
            ErrorReason::WorkerLost => "WORKER_LOST",
            ErrorReason::Canceled => "CANCELED",
            ErrorReason::TimedOut => "TIMED_OUT",
            ErrorReason::Shutdown => "SHUTDOWN",
            ErrorReason::SecretsLost => "SECRETS_LOST",
            ErrorReason::ExecutorError => "EXECUTOR_ERROR",
            ErrorReason::SourceUnavailable => "SOURCE_UNAVAILABLE",
            ErrorReason::SourceNotFound => "SOURCE_NOT_FOUND",
            ErrorReason::CredentialUnavailable => "CREDENTIAL_UNAVAILABLE",
        }
    }

    /// The terminal status a run stopped for this reason ends in.
    pub fn status(self) -> JobStatus {
        match self {
            ErrorReason::Canceled | ErrorReason::Shutdown => JobStatus::Canceled,
            ErrorReason::TimedOut => JobStatus::TimedOut,
            ErrorReason::PlaybookFailed
            | ErrorReason::WorkerLost
            | ErrorReason::ExecutorError
            | ErrorReason::SecretsLost
            | ErrorReason::SourceUnavailable
            | ErrorReason::SourceNotFound
            | ErrorReason::CredentialUnavailable => JobStatus::Failed,
        }
    }
}

impl FromStr for ErrorReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| format!("unknown error reason {s:?}"))
    }
}

/// The hosts a playbook runs against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inventory {
    /// No inventory given: localhost with the local connection.
    Localhost,
    /// Host names, validated (see `validate::hosts`).
    Hosts(Vec<String>),
    /// A YAML-inventory-shaped document: `{all: {hosts: .., children: ..}}`.
    Inline(Map<String, Value>),
    /// An inventory file in a git repository of an allowed provider.
    Git(GitFile),
}

/// The usual ansible-playbook options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    pub check: bool,
    pub diff: bool,
    pub tags: Vec<String>,
    pub skip_tags: Vec<String>,
    pub limit: String,
    pub verbosity: u32,
    pub forks: u32,
}

/// What a caller asked to run; fixed once the job is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The catalogue playbook; empty when `source` names another.
    pub playbook: String,
    /// What the job runs: the catalogue playbook, or a git playbook or a role.
    #[serde(default)]
    pub source: Source,
    pub extra_vars: Map<String, Value>,
    pub inventory: Inventory,
    pub options: JobOptions,
    /// Seconds after which the run is stopped (TIMED_OUT); never 0 once stored.
    pub timeout_seconds: u32,
    /// Names of the credentials the run gets (at most one per kind).
    #[serde(default)]
    pub credentials: Vec<String>,
}

/// Task results of one host, as in the PLAY RECAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    pub ok: u32,
    pub changed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unreachable: u32,
    pub rescued: u32,
    pub ignored: u32,
}

/// The outcome of a run that started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Exit code; -1 when ansible-playbook was ended by a signal.
    pub rc: i32,
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stats: BTreeMap<String, HostStats>,
}

/// One job, as stored in the history and in the live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub request_id: Option<String>,
    pub status: JobStatus,
    pub spec: JobSpec,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    pub error_reason: Option<ErrorReason>,
    pub attempt: u32,
    /// The client (API key name) that submitted the job.
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// The job came with secret extra vars.
    #[serde(default)]
    pub has_secrets: bool,
    /// The client that asked to cancel the job, if one did.
    #[serde(default)]
    pub canceled_by: Option<String>,
    /// The queue (worker group) whose workers may run the job.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// What the job's git sources resolved to when its run started.
    #[serde(default)]
    pub resolved: Resolved,
}

/// The commits a run's git sources resolved to (recorded when it starts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The git playbook's or the role repository's full commit id.
    pub source_commit: Option<String>,
    /// The full ref name it came from (`refs/heads/main`, or the commit id).
    pub source_ref: Option<String>,
    /// The git inventory's full commit id.
    pub inventory_commit: Option<String>,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        self == &Resolved::default()
    }
}

fn default_queue() -> String {
    crate::domain::validate::DEFAULT_QUEUE.to_owned()
}

impl Job {
    /// The job without its result (the result may hold 16 MiB of stdout).
    pub fn clone_without_result(&self) -> Job {
        Job {
            id: self.id,
            request_id: self.request_id.clone(),
            status: self.status,
            spec: self.spec.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            result: None,
            error: self.error.clone(),
            error_reason: self.error_reason,
            attempt: self.attempt,
            submitted_by: self.submitted_by.clone(),
            has_secrets: self.has_secrets,
            canceled_by: self.canceled_by.clone(),
            queue: self.queue.clone(),
            resolved: self.resolved.clone(),
        }
    }

    /// A new PENDING job; its id is a UUIDv7, so ids sort by creation time.
    pub fn new(
        spec: JobSpec,
        request_id: Option<String>,
        submitted_by: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Job {
            id: Uuid::now_v7(),
            submitted_by,
            has_secrets: false,
            canceled_by: None,
            queue: default_queue(),
            resolved: Resolved::default(),
            request_id,
            status: JobStatus::Pending,
            spec,
            created_at: now,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            error_reason: None,
            attempt: 0,
        }
    }
}

/// One event of a run, as ansible-runner and AWX name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: Uuid,
    /// From 1, without gaps, per job.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub event: String,
    pub host: String,
    pub task: String,
    pub play: String,
    pub stdout: String,
    pub event_data: Map<String, Value>,
}

/// How a run ended, as the worker reports it to the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: JobStatus,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    pub error_reason: Option<ErrorReason>,
}

/// Microseconds since the Unix epoch: how times are stored.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// `t` plus `d`, saturating at the latest time rather than panicking (a
/// flag may say "a very long time").
pub fn later(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t` minus `d`, saturating at the earliest time.
pub fn earlier(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
