//! SubmitJob: check the caller and the input, keep the secrets, commit the
//! job, hand it to the dispatch.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{AppState, LIVE_WAIT};
use crate::domain::source::repo_scope_name;
use crate::domain::validate::{self, Submission};
use crate::domain::{Action, Caller, Error, Inventory, Job};

/// How long a removal of secrets whose write failed may wait for the live
/// state to come back.
const SECRETS_CLEANUP_WAIT: Duration = Duration::from_secs(30);

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

impl AppState {
    /// SubmitJob: the new job, PENDING and dispatched; or, for a request_id
    /// the caller used before for the same request, the job it created.
    ///
    /// Secret vars are kept in the live state before the job is committed:
    /// when they cannot be, the job is not written and the answer is
    /// UNAVAILABLE, so a retry (with the same request_id or not) starts
    /// afresh.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        submission: Submission,
    ) -> Result<Job, Error> {
        caller.require(Action::Run)?;
        let valid = validate::submission(submission, &self.limits)?;
        match valid.spec.source.scope_name() {
            None => {
                caller.require_playbook(&valid.spec.playbook)?;
                self.catalogue.resolve(&valid.spec.playbook)?;
            }
            Some(name) => caller.require_source(&name)?,
        }
        if let Inventory::Git(file) = &valid.spec.inventory {
            caller.require_source(&repo_scope_name(&file.repo))?;
        }
        self.check_credentials(caller, &valid.spec.credentials)
            .await?;
        let mut job = Job::new(
            valid.spec,
            valid.request_id,
            caller.name.clone(),
            super::now(),
        );
        job.has_secrets = !valid.secrets.is_empty();
        job.queue = valid.queue;
        // A retry of a request already taken gets its job, quota or not.
        if let Some(request_id) = &job.request_id {
            let scope = caller.name.as_deref().unwrap_or_default();
            if let Some(existing) = self.store.find_by_request_id(scope, request_id).await? {
                return same_request(existing, &job);
            }
        }
        self.check_pending_quota(caller).await?;
        // From here on the submit runs to its end even if its caller goes
        // away, so that secrets kept are always either the job's or removed.
        let state = self.clone();
        let client = caller.label().to_owned();
        tokio::spawn(async move { state.commit(job, valid.secrets, client).await })
            .await
            .map_err(|e| Error::internal("submit a job", e))?
    }

    /// Keeps the secrets, commits the job and hands it to the dispatch.
    async fn commit(
        &self,
        job: Job,
        secrets: Map<String, Value>,
        client: String,
    ) -> Result<Job, Error> {
        if job.has_secrets {
            self.keep_secrets(&job, &secrets).await?;
        }
        let (job, created) = match self.store.insert_job(&job).await {
            Ok((existing, false)) => {
                // A concurrent submission with this request_id won the race.
                self.drop_secrets(&job).await;
                (same_request(existing, &job)?, false)
            }
            Ok(inserted) => inserted,
            // The commit may have gone through with its answer lost: the
            // job exists then, and its secrets are its own.
            Err(e) => match self.store.get_job(job.id).await {
                Ok(Some(committed)) => (committed, true),
                Ok(None) => {
                    self.drop_secrets(&job).await;
                    return Err(e);
                }
                // Unknown: the secrets expire with the live state (JOB_TTL).
                Err(_) => return Err(e),
            },
        };
        if created {
            let source = job.spec.source.label().unwrap_or_default();
            tracing::info!(job_id = %job.id, playbook = %job.spec.playbook, source, client, "job submitted");
            crash_point("after_commit");
            crate::metrics::get().jobs_submitted.inc();
            // The job is committed: from here a failure of the live state only
            // delays it (the sweeper dispatches pending jobs it does not hold),
            // so a Redis outage costs a submit at most LIVE_WAIT.
            let handed = tokio::time::timeout(LIVE_WAIT, self.live.put_and_dispatch(&job)).await;
            if !matches!(handed, Ok(Ok(()))) {
                tracing::warn!(job_id = %job.id, "live state unavailable at submit; the sweeper will dispatch the job");
            }
        }
        Ok(job)
    }

    /// The job's credentials: each one the caller may use (PERMISSION_DENIED),
    /// existing (NOT_FOUND), at most one of a kind (INVALID_ARGUMENT).
    async fn check_credentials(&self, caller: &Caller, names: &[String]) -> Result<(), Error> {
        for name in names {
            caller.require_credential(name)?;
        }
        let found = self.store.credentials_named(names).await?;
        if let Some(missing) = names
            .iter()
            .find(|n| !found.iter().any(|c| &c.info.name == *n))
        {
            return Err(Error::CredentialNotFound(missing.clone()));
        }
        for (i, credential) in found.iter().enumerate() {
            if found[..i]
                .iter()
                .any(|c| c.info.kind == credential.info.kind)
            {
                return Err(Error::invalid(
                    "credentials",
                    format!("at most one {} credential per job", credential.info.kind),
                ));
            }
        }
        Ok(())
    }

    /// RESOURCE_EXHAUSTED (with a QuotaFailure) when the caller already has
    /// as many PENDING jobs as one client may; nothing is written then.
    async fn check_pending_quota(&self, caller: &Caller) -> Result<(), Error> {
        let cap = self.limits.max_pending_per_client;
        if cap == 0 {
            return Ok(());
        }
        let pending = self
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

    /// Hands a new job's secrets to the live state, before the job exists:
    /// UNAVAILABLE when it cannot, with the job not written. A write that
    /// failed may still land (the client queues commands while it
    /// reconnects), so a removal is queued behind it.
    async fn keep_secrets(&self, job: &Job, secrets: &Map<String, Value>) -> Result<(), Error> {
        let failed =
            match tokio::time::timeout(LIVE_WAIT, self.live.put_secrets(job.id, secrets)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => format!("keeping the secret vars: {e}"),
                Err(_) => "keeping the secret vars timed out".to_owned(),
            };
        let (live, id) = (self.live.clone(), job.id);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SECRETS_CLEANUP_WAIT, live.take_secrets(id)).await;
        });
        Err(Error::Unavailable {
            what: "the live state",
            source: failed.into(),
        })
    }

    /// Forgets secrets kept for a job that was not created (they would
    /// otherwise expire with the live state's TTL).
    async fn drop_secrets(&self, job: &Job) {
        if job.has_secrets {
            if let Ok(Err(e)) =
                tokio::time::timeout(LIVE_WAIT, self.live.take_secrets(job.id)).await
            {
                tracing::debug!(job_id = %job.id, error = %e, "dropping the secrets of a job not created");
            }
        }
    }
}
