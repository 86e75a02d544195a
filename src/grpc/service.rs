use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{self, job_to_pb};
use super::page_token::PageToken;
use super::watch;
use crate::app::AppState;
use crate::domain::{validate, Action, Caller, Error, Job, Visibility};
use crate::live::LiveMessage;
use crate::pb::{self, job_service_server::JobService};
use crate::store::{CancelOutcome, ListFilter};

const DEFAULT_PAGE_SIZE: i32 = 20;
/// Longest a submit waits for the live state after its commit, and a read
/// before it asks the history.
const LIVE_WRITE_WAIT: Duration = Duration::from_secs(1);

/// Fault-injection hook for the crash tests: when ARS_CRASH_AT names this
/// point, the process aborts there, as a `kill -9` would.
fn crash_point(name: &str) {
    // Read once: a submit should not pay for an environment lookup.
    static CRASH_AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = CRASH_AT.get_or_init(|| std::env::var("ARS_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        tracing::error!(point = name, "ARS_CRASH_AT: aborting");
        std::process::abort();
    }
}

const MAX_PAGE_SIZE: i32 = 100;

/// The JobService implementation.
pub struct JobApi {
    state: Arc<AppState>,
    shutdown: CancellationToken,
}

impl JobApi {
    pub fn new(state: Arc<AppState>, shutdown: CancellationToken) -> Self {
        JobApi { state, shutdown }
    }
}

/// The caller the interceptor recognised; a request without one (which the
/// interceptor never lets through) is refused rather than let in.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller"))
}

/// When the caller's `grpc-timeout` runs out. tonic enforces it for unary
/// calls; a stream checks it itself.
fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(tokio::time::Instant::now() + timeout)
}

pub(crate) fn parse_job_id(id: &str) -> Result<Uuid, Error> {
    if id.is_empty() {
        return Err(Error::invalid("job_id", "is required"));
    }
    Uuid::parse_str(id).map_err(|_| Error::invalid("job_id", "must be a job id (a UUID)"))
}

/// Current time at the precision the history keeps (microseconds).
fn now() -> chrono::DateTime<chrono::Utc> {
    crate::domain::from_micros(chrono::Utc::now().timestamp_micros())
}

/// The job an earlier submission with the same request_id created, if that
/// submission asked for the same thing (AIP-155); ALREADY_EXISTS otherwise.
fn same_request(existing: Job, new: &Job) -> Result<Job, Error> {
    if existing.spec == new.spec
        && existing.has_secrets == new.has_secrets
        && existing.queue == new.queue
    {
        return Ok(existing);
    }
    Err(Error::RequestIdReused(format!(
        "request_id {:?} was used by an earlier, different request (job {}); send a new request_id for a new request",
        new.request_id.as_deref().unwrap_or_default(),
        existing.id
    )))
}

impl JobApi {
    /// RESOURCE_EXHAUSTED (with a QuotaFailure) when the caller already has
    /// as many PENDING jobs as one client may; nothing is written then.
    async fn check_pending_quota(&self, caller: &Caller) -> Result<(), Error> {
        let cap = self.state.limits.max_pending_per_client;
        if cap == 0 {
            return Ok(());
        }
        let pending = self
            .state
            .store
            .pending_of(caller.name.as_deref(), cap as u64)
            .await?;
        if pending < cap as u64 {
            return Ok(());
        }
        Err(Error::QuotaExceeded {
            subject: format!("client:{}", caller.label()),
            description: format!("at most {cap} PENDING jobs per client (MAX_PENDING_PER_CLIENT)"),
            message: format!(
                "client {} already has {cap} jobs waiting to run, the most allowed; submit again once some have started",
                caller.label()
            ),
        })
    }

    /// Hands a new job's secrets to the live state. If that fails, the job
    /// (committed, but useless without them) is ended at once, and the caller
    /// gets UNAVAILABLE: nothing runs without its secrets.
    async fn keep_secrets(
        &self,
        job: &Job,
        secrets: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        let kept = tokio::time::timeout(
            LIVE_WRITE_WAIT,
            self.state.live.put_secrets(job.id, secrets),
        )
        .await;
        if matches!(kept, Ok(Ok(()))) {
            return Ok(());
        }
        let now = crate::domain::to_micros(now());
        if let Ok(crate::store::CancelOutcome::Canceled(ended)) =
            self.state.store.cancel(job.id, now, None).await
        {
            crate::live::announce(&self.state.live, &ended).await;
        }
        Err(Error::Unavailable {
            what: "the live state",
            source: "secret extra vars could not be kept; the job was canceled".into(),
        })
    }
}

impl AppState {
    /// The job's current state: the live state first, then the history
    /// (which also refills the live state).
    pub async fn current_job(&self, id: Uuid) -> Result<Job, Error> {
        // While Redis is unreachable (a restart, a Sentinel failover) its
        // client queues commands until its own timeout; reads go to the
        // history after LIVE_WRITE_WAIT instead.
        let live = tokio::time::timeout(LIVE_WRITE_WAIT, self.live.get_job(id))
            .await
            .unwrap_or_else(|_| Err(crate::live::LiveError("timed out".into())));
        match live {
            Ok(Some(live)) => {
                let mut job = live.job;
                if live.stdout_in_history {
                    if let Some(result) = &mut job.result {
                        result.stdout = self.store.stdout(id).await?;
                    }
                }
                return Ok(job);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "live state unavailable; reading the history")
            }
        }
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
        match tokio::time::timeout(LIVE_WRITE_WAIT, self.live.put_job(&job)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(job_id = %id, error = %e, "refilling the live state"),
            Err(_) => tracing::debug!(job_id = %id, "refilling the live state timed out"),
        }
        Ok(job)
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Action::Run)?;
        let submission = convert::submission(request.into_inner());
        let valid = validate::submission(submission, &self.state.limits)?;
        caller.require_playbook(&valid.spec.playbook)?;
        self.state.catalogue.resolve(&valid.spec.playbook)?;
        let mut job = Job::new(valid.spec, valid.request_id, caller.name.clone(), now());
        job.has_secrets = !valid.secrets.is_empty();
        job.queue = valid.queue;
        // A retry of a request already taken gets its job, quota or not.
        if let Some(request_id) = &job.request_id {
            let scope = caller.name.as_deref().unwrap_or_default();
            if let Some(existing) = self
                .state
                .store
                .find_by_request_id(scope, request_id)
                .await?
            {
                return Ok(Response::new(pb::SubmitJobResponse {
                    job: Some(job_to_pb(&same_request(existing, &job)?)),
                }));
            }
        }
        self.check_pending_quota(&caller).await?;
        let (job, created) = match self.state.store.insert_job(&job).await? {
            (existing, false) => (same_request(existing, &job)?, false),
            inserted => inserted,
        };
        if created {
            tracing::info!(job_id = %job.id, playbook = %job.spec.playbook, client = caller.label(), "job submitted");
            crash_point("after_commit");
            crate::metrics::get().jobs_submitted.inc();
            if job.has_secrets {
                self.keep_secrets(&job, &valid.secrets).await?;
            }
            // The job is committed: from here a failure of the live state only
            // delays it (the sweeper dispatches pending jobs it does not hold),
            // so a Redis outage costs a submit at most LIVE_WRITE_WAIT.
            let live = &self.state.live;
            let handed = tokio::time::timeout(LIVE_WRITE_WAIT, live.put_and_dispatch(&job)).await;
            if !matches!(handed, Ok(Ok(()))) {
                tracing::warn!(job_id = %job.id, "live state unavailable at submit; the sweeper will dispatch the job");
            }
        }
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_pb(&job)),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Action::Read)?;
        let id = parse_job_id(&request.get_ref().job_id)?;
        let job = caller.visible(self.state.current_job(id).await?)?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_to_pb(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Action::Read)?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        if req.page_size < 0 {
            violations.push(crate::domain::FieldViolation::new(
                "page_size",
                format!("must not be negative, got {}", req.page_size),
            ));
        }
        let status = convert::status_filter(req.status).unwrap_or_else(|e| {
            violations.push(crate::domain::FieldViolation::new("status", e));
            None
        });
        if req.playbook.len() > validate::MAX_PLAYBOOK_NAME_BYTES {
            violations.push(crate::domain::FieldViolation::new(
                "playbook",
                format!(
                    "must be at most {} bytes",
                    validate::MAX_PLAYBOOK_NAME_BYTES
                ),
            ));
        }
        if !req.queue.is_empty() {
            if let Err(e) = validate::queue_name(&req.queue) {
                violations.push(crate::domain::FieldViolation::new("queue", e));
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let mut filter = ListFilter {
            status,
            playbook: (!req.playbook.is_empty()).then_some(req.playbook),
            submitted_by: (!req.submitted_by.is_empty()).then_some(req.submitted_by),
            queue: (!req.queue.is_empty()).then_some(req.queue),
        };
        if caller.scopes.jobs() == Visibility::Own {
            // Only the caller's own jobs; asking for another client's finds none.
            if filter.submitted_by.is_some() && filter.submitted_by != caller.name {
                return Ok(Response::new(pb::ListJobsResponse::default()));
            }
            filter.submitted_by = caller.name.clone();
        }
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(PageToken::decode(&req.page_token, &filter, &self.state.page_key)?.cursor)
        };
        let page = self
            .state
            .store
            .list_jobs(&filter, page_size as u64, after.as_ref())
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.iter().map(job_to_pb).collect(),
            next_page_token: page
                .next
                .map(|cursor| PageToken::new(cursor, &filter).encode(&self.state.page_key))
                .unwrap_or_default(),
            total_size: page.total as i64,
        }))
    }

    type WatchJobStream = ReceiverStream<Result<pb::WatchJobResponse, Status>>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        caller.require(Action::Read)?;
        let deadline = grpc_deadline(request.metadata());
        let req = request.into_inner();
        let id = parse_job_id(&req.job_id)?;
        let slot = self.state.watch_slot(&caller)?;
        // Subscribe before the first read, so nothing falls between the two.
        let subscription = self.state.live.hub().subscribe(id);
        let job = self
            .state
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
        let job = caller.visible(job)?;
        let (tx, rx) = mpsc::channel(64);
        let producer = watch::produce(
            self.state.clone(),
            job,
            req.after_sequence,
            subscription,
            tx,
            self.shutdown.clone(),
            deadline,
        );
        let open = crate::metrics::get().watch_streams.clone();
        open.inc();
        tokio::spawn(async move {
            producer.await;
            open.dec();
            drop(slot);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Action::Cancel)?;
        let id = parse_job_id(&request.get_ref().job_id)?;
        // Another client's job is NOT_FOUND to a caller that sees its own only.
        caller.visible(self.state.current_job(id).await?)?;
        let mut changes = self.state.live.hub().subscribe(id);
        let now = crate::domain::to_micros(now());
        let job = match self
            .state
            .store
            .cancel(id, now, caller.name.as_deref())
            .await?
        {
            CancelOutcome::Canceled(job) => {
                tracing::info!(job_id = %id, client = caller.label(), "pending job canceled");
                crate::live::announce(&self.state.live, &job).await;
                job
            }
            CancelOutcome::Requested(job) => {
                tracing::info!(job_id = %id, client = caller.label(), "cancel requested for a running job");
                if let Err(e) = self.state.live.publish_cancel(id).await {
                    // The worker also sees the request when it renews its lease.
                    tracing::warn!(job_id = %id, error = %e, "publishing the cancel request");
                }
                // Answer with the terminal job when the stop is quick.
                let wait = self.state.cancel_wait;
                let ended = tokio::time::timeout(wait, async {
                    loop {
                        match changes.recv().await {
                            Ok(LiveMessage::Changed { status }) if status.is_terminal() => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                })
                .await;
                match ended {
                    Ok(()) => self.state.store.get_job(id).await?.unwrap_or(job),
                    Err(_) => job,
                }
            }
        };
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job_to_pb(&job)),
        }))
    }

    async fn list_playbooks(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        let caller = caller(&request)?;
        let catalogue = self.state.catalogue.clone();
        let playbooks = tokio::task::spawn_blocking(move || catalogue.list())
            .await
            .map_err(|e| Error::internal("list playbooks", e))??;
        Ok(Response::new(pb::ListPlaybooksResponse {
            playbooks: playbooks
                .into_iter()
                .filter(|p| caller.scopes.may_run(&p.name))
                .map(|p| pb::Playbook {
                    name: p.name,
                    description: p.description,
                })
                .collect(),
        }))
    }
}
