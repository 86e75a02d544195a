//! A run's life in the history: the claim, its lease, the process group on
//! record, the outcome, cancel requests, and runs whose worker was lost.
//! Every change after the claim is fenced by (attempt, worker id), and each
//! follows the transitions of [`crate::domain`].

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait, UpdateMany,
};
use uuid::Uuid;

use super::entities::job_output;
use super::entities::jobs::{self, Column};
use super::rows::{utf8_chunks, OUTPUT_CHUNK};
use super::{db_error, Store};
use crate::domain::{to_micros, Error, Job, JobStatus, Lost, Outcome, Resolved};

/// A run whose process group is on record (see `runs_on_host`).
#[derive(Debug, Clone)]
pub struct RecordedRun {
    pub id: Uuid,
    pub attempt: u32,
    pub worker_id: String,
    pub status: JobStatus,
    pub pgid: i32,
}

/// Result of a cancel request.
pub enum CancelOutcome {
    /// The job was PENDING and is now CANCELED.
    Canceled(Job),
    /// The job is RUNNING; its worker will stop it.
    Requested(Job),
}

/// The update that ends a job in status `from` with `outcome` at `now`
/// (microseconds), on the condition that it is still in `from`.
fn end_with(outcome: &Outcome, from: JobStatus, now: i64) -> UpdateMany<jobs::Entity> {
    debug_assert!(
        from.may_become(outcome.status),
        "{from} -> {}",
        outcome.status
    );
    jobs::Entity::update_many()
        .filter(Column::Status.eq(from.as_str()))
        .col_expr(Column::Status, Expr::value(outcome.status.as_str()))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::LeaseExpiresAt, Expr::value(Option::<i64>::None))
        .col_expr(Column::Error, Expr::value(outcome.error.clone()))
        .col_expr(
            Column::ErrorReason,
            Expr::value(outcome.error_reason.map(|r| r.as_str().to_owned())),
        )
}

impl Store {
    /// Claims a PENDING job for `worker_id`: PENDING → RUNNING, attempt + 1,
    /// lease until `lease_until`. Only one claimant can win; a duplicate
    /// delivery of the same job gets `None`.
    pub async fn claim(
        &self,
        id: Uuid,
        worker_id: &str,
        run_host: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Job>, Error> {
        let now = to_micros(now);
        let lease_until = to_micros(lease_until);
        debug_assert!(JobStatus::Pending.may_become(JobStatus::Running));
        let claimed = jobs::Entity::update_many()
            .col_expr(Column::Status, Expr::value(JobStatus::Running.as_str()))
            .col_expr(Column::Attempt, Expr::col(Column::Attempt).add(1))
            .col_expr(Column::WorkerId, Expr::value(worker_id))
            .col_expr(Column::RunHost, Expr::value(run_host))
            .col_expr(Column::StartedAt, Expr::value(now))
            .col_expr(Column::LeaseExpiresAt, Expr::value(lease_until))
            .filter(Column::Id.eq(id.to_string()))
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("claim job", e))?;
        if claimed.rows_affected != 1 {
            return Ok(None);
        }
        // The claim is ours now: a failed read must not drop the job.
        let mut delays = crate::retry::CLAIMED_READ.delays();
        loop {
            let error = match self.get_job(id).await {
                Ok(job) => return Ok(job),
                Err(e) => e,
            };
            let Some(delay) = delays.next() else {
                return Err(error);
            };
            tracing::warn!(job_id = %id, error = %error, "reading a claimed job; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    pub(super) fn fenced(id: Uuid, attempt: u32, worker_id: &str) -> Condition {
        Condition::all()
            .add(Column::Id.eq(id.to_string()))
            .add(Column::Status.eq(JobStatus::Running.as_str()))
            .add(Column::Attempt.eq(attempt as i32))
            .add(Column::WorkerId.eq(worker_id))
    }

    /// Extends the lease of a run this worker holds. Returns `None` when the
    /// lease is lost (the job ended or another attempt owns it), else whether
    /// a cancel was requested.
    pub async fn renew_lease(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<bool>, Error> {
        let lease_until = to_micros(lease_until);
        let renewed = jobs::Entity::update_many()
            .col_expr(Column::LeaseExpiresAt, Expr::value(lease_until))
            .filter(Self::fenced(id, attempt, worker_id))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("renew lease", e))?;
        if renewed.rows_affected != 1 {
            return Ok(None);
        }
        let row = jobs::Entity::find_by_id(id.to_string())
            .select_only()
            .column(Column::CancelRequested)
            .into_tuple::<bool>()
            .one(&self.db)
            .await
            .map_err(|e| db_error("read cancel flag", e))?;
        Ok(Some(row.unwrap_or(false)))
    }

    /// Records the process group of a run, so a later life of the worker on
    /// the same host can clean it up.
    pub async fn record_pgid(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        pgid: i32,
    ) -> Result<bool, Error> {
        let updated = jobs::Entity::update_many()
            .col_expr(Column::RunPgid, Expr::value(pgid))
            .filter(Self::fenced(id, attempt, worker_id))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("record process group", e))?;
        Ok(updated.rows_affected == 1)
    }

    /// Records what the run's git sources resolved to, fenced by the claim.
    pub async fn record_resolved(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        resolved: &Resolved,
    ) -> Result<bool, Error> {
        let updated = jobs::Entity::update_many()
            .col_expr(
                Column::SourceCommit,
                Expr::value(resolved.source_commit.clone()),
            )
            .col_expr(Column::SourceRef, Expr::value(resolved.source_ref.clone()))
            .col_expr(
                Column::InventoryCommit,
                Expr::value(resolved.inventory_commit.clone()),
            )
            .filter(Self::fenced(id, attempt, worker_id))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("record the resolved sources", e))?;
        Ok(updated.rows_affected == 1)
    }

    /// Ends a run this worker holds. Returns the terminal job, or `None` when
    /// the lease was lost and nothing was written.
    pub async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, Error> {
        let now = to_micros(now);
        let mut update = end_with(outcome, JobStatus::Running, now)
            .col_expr(Column::RunPgid, Expr::value(Option::<i32>::None));
        if let Some(result) = &outcome.result {
            let stats = serde_json::to_string(&result.stats)
                .map_err(|e| Error::internal("encode stats", e))?;
            update = update
                .col_expr(Column::Rc, Expr::value(result.rc))
                .col_expr(
                    Column::StdoutTruncated,
                    Expr::value(result.stdout_truncated),
                )
                .col_expr(Column::Stats, Expr::value(stats));
        }
        let txn = self
            .db
            .begin()
            .await
            .map_err(|e| db_error("begin finish", e))?;
        let done = update
            .filter(Self::fenced(id, attempt, worker_id))
            .exec(&txn)
            .await
            .map_err(|e| db_error("finish job", e))?;
        if done.rows_affected != 1 {
            txn.rollback()
                .await
                .map_err(|e| db_error("roll back finish", e))?;
            // A retry after a commit whose answer was lost finds its own
            // outcome already there.
            let Some(job) = self.get_job(id).await? else {
                return Ok(None);
            };
            let ours = jobs::Entity::find_by_id(id.to_string())
                .one(&self.db)
                .await
                .map_err(|e| db_error("check finish", e))?
                .is_some_and(|row| {
                    row.worker_id.as_deref() == Some(worker_id) && row.attempt == attempt as i32
                });
            return Ok(
                (ours && job.status == outcome.status && job.finished_at.is_some()).then_some(job),
            );
        }
        let stdout = outcome
            .result
            .as_ref()
            .map(|r| r.stdout.as_str())
            .unwrap_or("");
        for (chunk, text) in utf8_chunks(stdout, OUTPUT_CHUNK).enumerate() {
            let row = job_output::ActiveModel {
                job_id: Set(id.to_string()),
                chunk: Set(chunk as i32),
                text: Set(text.to_owned()),
            };
            job_output::Entity::insert(row)
                .exec_without_returning(&txn)
                .await
                .map_err(|e| db_error("store stdout", e))?;
        }
        txn.commit()
            .await
            .map_err(|e| db_error("commit finish", e))?;
        self.get_job(id).await
    }

    /// Cancels a job: at once when PENDING, by asking its worker when RUNNING.
    /// `by` is the client that asked, recorded as `canceled_by`.
    pub async fn cancel(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        by: Option<&str>,
    ) -> Result<CancelOutcome, Error> {
        let now = to_micros(now);
        // A job moves forward only, so a few rounds settle any race.
        for _ in 0..4 {
            let job = self
                .get_job(id)
                .await?
                .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
            match job.status {
                JobStatus::Pending => {
                    let done = end_with(&Outcome::canceled_before_start(), JobStatus::Pending, now)
                        .col_expr(Column::CancelRequested, Expr::value(true))
                        .col_expr(
                            Column::CanceledBy,
                            Expr::col(Column::CanceledBy).if_null(by),
                        )
                        .filter(Column::Id.eq(id.to_string()))
                        .exec(&self.db)
                        .await
                        .map_err(|e| db_error("cancel job", e))?;
                    if done.rows_affected == 1 {
                        let job = self
                            .get_job(id)
                            .await?
                            .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
                        return Ok(CancelOutcome::Canceled(job));
                    }
                }
                JobStatus::Running => {
                    let done = jobs::Entity::update_many()
                        .col_expr(Column::CancelRequested, Expr::value(true))
                        .col_expr(
                            Column::CanceledBy,
                            Expr::col(Column::CanceledBy).if_null(by),
                        )
                        .filter(Column::Id.eq(id.to_string()))
                        .filter(Column::Status.eq(JobStatus::Running.as_str()))
                        .exec(&self.db)
                        .await
                        .map_err(|e| db_error("request cancel", e))?;
                    if done.rows_affected == 1 {
                        let job = Job {
                            canceled_by: by.map(str::to_owned),
                            ..job
                        };
                        return Ok(CancelOutcome::Requested(job));
                    }
                }
                status => {
                    return Err(Error::InvalidState(format!(
                        "job {id} is already {status}; only PENDING or RUNNING jobs can be canceled"
                    )))
                }
            }
        }
        Err(Error::internal(
            "cancel job",
            format!("job {id} kept changing state"),
        ))
    }

    /// Ends RUNNING jobs whose lease expired before `now` as FAILED /
    /// WORKER_LOST, and returns them.
    pub async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<Job>, Error> {
        let now = to_micros(now);
        let expired = jobs::Entity::find()
            .filter(Column::Status.eq(JobStatus::Running.as_str()))
            .filter(Column::LeaseExpiresAt.lt(now))
            .limit(100)
            .all(&self.db)
            .await
            .map_err(|e| db_error("find expired leases", e))?;
        let mut ended = Vec::new();
        for row in expired {
            let worker = row.worker_id.as_deref().unwrap_or("?");
            let done = end_with(
                &Outcome::worker_lost(worker, Lost::LeaseExpired),
                JobStatus::Running,
                now,
            )
            .filter(Column::Id.eq(row.id.clone()))
            .filter(Column::Attempt.eq(row.attempt))
            .filter(Column::LeaseExpiresAt.lt(now))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("expire lease", e))?;
            if done.rows_affected == 1 {
                if let Ok(id) = Uuid::parse_str(&row.id) {
                    if let Some(job) = self.get_job(id).await? {
                        ended.push(job);
                    }
                }
            }
        }
        Ok(ended)
    }

    /// Runs on `host` whose process group is still on record: what a worker
    /// may have left behind there.
    pub async fn runs_on_host(&self, host: &str) -> Result<Vec<RecordedRun>, Error> {
        let rows: Vec<(String, i32, Option<String>, String, i32)> = jobs::Entity::find()
            .select_only()
            .columns([
                Column::Id,
                Column::Attempt,
                Column::WorkerId,
                Column::Status,
                Column::RunPgid,
            ])
            .filter(Column::RunHost.eq(host))
            .filter(Column::RunPgid.is_not_null())
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(|e| db_error("find recorded runs", e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, attempt, worker_id, status, pgid)| {
                Some(RecordedRun {
                    id: Uuid::parse_str(&id).ok()?,
                    attempt: attempt.max(0) as u32,
                    worker_id: worker_id.unwrap_or_default(),
                    status: status.parse().ok()?,
                    pgid,
                })
            })
            .collect())
    }

    /// Forgets the process group of a run that is over.
    pub async fn clear_pgid(&self, id: Uuid) -> Result<(), Error> {
        jobs::Entity::update_many()
            .col_expr(Column::RunPgid, Expr::value(Option::<i32>::None))
            .filter(Column::Id.eq(id.to_string()))
            .filter(Column::Status.ne(JobStatus::Running.as_str()))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("clear process group", e))?;
        Ok(())
    }

    /// Ends a run whose worker is known to be dead (FAILED, WORKER_LOST),
    /// fenced by its claim. Returns the terminal job when it did.
    pub async fn end_lost_run(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, Error> {
        let now = to_micros(now);
        let done = end_with(
            &Outcome::worker_lost(worker_id, Lost::Died),
            JobStatus::Running,
            now,
        )
        .filter(Self::fenced(id, attempt, worker_id))
        .exec(&self.db)
        .await
        .map_err(|e| db_error("end lost run", e))?;
        if done.rows_affected != 1 {
            return Ok(None);
        }
        self.get_job(id).await
    }
}
