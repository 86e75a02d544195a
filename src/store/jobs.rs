use std::collections::BTreeMap;
use std::time::Instant;

use sea_orm::sea_query::{Alias, Asterisk, Expr, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Select, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use super::entities::job_output;
use super::entities::jobs::{self, Column};
use super::totals::{Counted, Plan, RefreshMark};
use super::{db_error, Store};
use crate::domain::{
    from_micros, to_micros, Error, ErrorReason, HostStats, Job, JobResult, JobStatus, Outcome,
};

/// Where a page of ListJobs starts: just after this (created_at, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: Uuid,
}

/// ListJobs filters, `None` for "any"; also the key of a kept total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    pub playbook: Option<String>,
    pub submitted_by: Option<String>,
    pub queue: Option<String>,
}

pub struct ListPage {
    pub jobs: Vec<Job>,
    /// Set when more jobs follow this page.
    pub next: Option<Cursor>,
    /// Jobs matching the filter: exact up to the store's `exact_up_to`,
    /// beyond it a kept count (see `TotalPolicy`).
    pub total: u64,
}

impl ListFilter {
    fn select(&self) -> Select<jobs::Entity> {
        let mut select = jobs::Entity::find();
        if let Some(status) = self.status {
            select = select.filter(Column::Status.eq(status.as_str()));
        }
        if let Some(playbook) = &self.playbook {
            select = select.filter(Column::Playbook.eq(playbook.as_str()));
        }
        if let Some(client) = &self.submitted_by {
            select = select.filter(Column::SubmittedBy.eq(client.as_str()));
        }
        if let Some(queue) = &self.queue {
            select = select.filter(Column::Queue.eq(queue.as_str()));
        }
        select
    }

    /// The index made for this combination of filters (see the migrations),
    /// when it is exactly one.
    fn index(&self) -> Option<&'static str> {
        match (
            self.status.is_some(),
            self.playbook.is_some(),
            self.submitted_by.is_some(),
            self.queue.is_some(),
        ) {
            (false, false, false, false) => Some("ix_jobs_created"),
            (true, false, false, false) => Some("ix_jobs_status_created"),
            (false, true, false, false) => Some("ix_jobs_playbook_created"),
            (true, true, false, false) => Some("ix_jobs_status_playbook_created"),
            (false, false, true, false) => Some("ix_jobs_submitted_by_created"),
            (true, false, false, true) => Some("ix_jobs_status_queue_created"),
            _ => None,
        }
    }
}

/// Largest piece of stdout stored in one row (and one statement).
const OUTPUT_CHUNK: usize = 1 << 20;

/// Splits text into pieces of at most `max` bytes, on character boundaries.
fn utf8_chunks(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

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

impl Store {
    /// Commits a new job. When its request_id was seen before, returns the
    /// job that request created instead (and `false`).
    pub async fn insert_job(&self, job: &Job) -> Result<(Job, bool), Error> {
        // SubmitJob looks the request_id up before it counts the quota; here
        // the unique index decides, so a submit reads it once, not twice.
        let scope = job.submitted_by.as_deref().unwrap_or_default();
        let row = to_row(job)?;
        match jobs::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok((job.clone(), true)),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                let request_id = job.request_id.as_deref().unwrap_or_default();
                match self.find_by_request_id(scope, request_id).await? {
                    Some(existing) => Ok((existing, false)),
                    None => Err(db_error("insert job", e)),
                }
            }
            Err(e) => Err(db_error("insert job", e)),
        }
    }

    /// How many PENDING jobs a client (None: callers without keys) has,
    /// counting no further than `up_to`.
    pub async fn pending_of(&self, client: Option<&str>, up_to: u64) -> Result<u64, Error> {
        let matching = jobs::Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::RequestScope.eq(client.unwrap_or_default()))
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .limit(up_to)
            .into_query();
        let count = Query::select()
            .expr(Expr::col(Asterisk).count())
            .from_subquery(matching, Alias::new("matching"))
            .to_owned();
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one(backend.build(&count))
            .await
            .map_err(|e| db_error("count pending jobs", e))?;
        let count: i64 = match row {
            Some(row) => row
                .try_get_by_index(0)
                .map_err(|e| db_error("count pending jobs", e))?,
            None => 0,
        };
        Ok(count.max(0) as u64)
    }

    /// Inserts many jobs in one statement (benchmarks fill the history so).
    pub async fn insert_jobs_bulk(&self, jobs: &[Job]) -> Result<(), Error> {
        let rows = jobs.iter().map(to_row).collect::<Result<Vec<_>, _>>()?;
        jobs::Entity::insert_many(rows)
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| db_error("insert jobs", e))?;
        Ok(())
    }

    /// The job a client's request_id created (request ids are per client:
    /// `scope` is the client's name, '' without keys).
    pub async fn find_by_request_id(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<Job>, Error> {
        jobs::Entity::find()
            .filter(Column::RequestScope.eq(scope))
            .filter(Column::RequestId.eq(request_id))
            .one(&self.db)
            .await
            .map_err(|e| db_error("find job by request_id", e))?
            .map(from_row)
            .transpose()
    }

    /// The whole job, stdout included.
    pub async fn get_job(&self, id: Uuid) -> Result<Option<Job>, Error> {
        let Some(row) = jobs::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(|e| db_error("get job", e))?
        else {
            return Ok(None);
        };
        let mut job = from_row(row)?;
        if let Some(result) = &mut job.result {
            result.stdout = self.stdout(id).await?;
        }
        Ok(Some(job))
    }

    /// A finished run's stdout.
    pub async fn stdout(&self, id: Uuid) -> Result<String, Error> {
        let chunks: Vec<String> = job_output::Entity::find()
            .select_only()
            .column(job_output::Column::Text)
            .filter(job_output::Column::JobId.eq(id.to_string()))
            .order_by_asc(job_output::Column::Chunk)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(|e| db_error("read stdout", e))?;
        Ok(chunks.concat())
    }

    /// One page of the history, newest first, by keyset on (created_at, id).
    /// Listed jobs carry no stdout (GetJob has it), to keep pages small.
    pub async fn list_jobs(
        &self,
        filter: &ListFilter,
        page_size: u64,
        after: Option<&Cursor>,
    ) -> Result<ListPage, Error> {
        let total = self.total(filter).await?;

        let mut page = filter.select();
        if let Some(cursor) = after {
            // `created_at <= c` first, so the index can be entered at the
            // cursor; then `(created_at, id) < (c, id)` proper.
            page = page
                .filter(Column::CreatedAt.lte(cursor.created_at))
                .filter(
                    Condition::any()
                        .add(Column::CreatedAt.lt(cursor.created_at))
                        .add(Column::Id.lt(cursor.id.to_string())),
                );
        }
        if self.db.get_database_backend() == DbBackend::MySql {
            // With an equality filter MariaDB prefers a `ref` scan of the
            // filter's index from its newest entry, reading every row newer
            // than the cursor: 1,000 pages deep into status=FAILED that was
            // 276 ms a page at 1,000,000 rows, against 0.4 ms for the range
            // scan it does when told to use the index (benchmark, section d).
            if let Some(index) = filter.index() {
                use sea_orm::sea_query::extension::mysql::{
                    IndexHintScope, MySqlSelectStatementExt,
                };
                QueryTrait::query(&mut page).force_index(Alias::new(index), IndexHintScope::All);
            }
        }
        let rows = page
            .order_by_desc(Column::CreatedAt)
            .order_by_desc(Column::Id)
            .limit(page_size + 1)
            .all(&self.db)
            .await
            .map_err(|e| db_error("list jobs", e))?;
        let mut jobs = rows
            .into_iter()
            .map(from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if jobs.len() as u64 > page_size {
            jobs.truncate(page_size as usize);
            jobs.last().map(|last| Cursor {
                created_at: to_micros(last.created_at),
                id: last.id,
            })
        } else {
            None
        };
        Ok(ListPage { jobs, next, total })
    }

    /// How many jobs match `filter`: counted exactly up to `exact_up_to`,
    /// else the full count kept for this filter (see `totals`), so no call
    /// but the first of a filter (or one after `max_age` without a recount)
    /// counts past `exact_up_to + 1` rows.
    async fn total(&self, filter: &ListFilter) -> Result<u64, Error> {
        let bound = self.totals.policy().exact_up_to;
        let seen = self
            .count_matching(filter, Some(bound.saturating_add(1)))
            .await?;
        if seen <= bound {
            return Ok(seen);
        }
        let gate = match self.totals.plan(filter, Instant::now()) {
            Plan::Serve(total) => return Ok(total),
            Plan::ServeAndRefresh(total) => {
                self.refresh_total(filter.clone());
                return Ok(total);
            }
            Plan::Count(gate) => gate,
        };
        let _counting = gate.lock().await;
        // Whoever held the gate before may have just counted.
        if let Some(total) = self.totals.fresh(filter, Instant::now()) {
            return Ok(total);
        }
        let at = Instant::now();
        let value = self.count_matching(filter, None).await?;
        self.totals.record(filter, Counted { value, at });
        Ok(value)
    }

    /// Recounts `filter` in the background and keeps the result.
    fn refresh_total(&self, filter: ListFilter) {
        let store = self.clone();
        let permits = self.totals.refresh_permits();
        tokio::spawn(async move {
            let mut mark = RefreshMark {
                totals: store.totals.clone(),
                filter,
                counted: None,
            };
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let at = Instant::now();
            match store.count_matching(&mark.filter, None).await {
                Ok(value) => mark.counted = Some(Counted { value, at }),
                Err(e) => tracing::warn!(error = %e, "recounting a ListJobs total"),
            }
        });
    }

    /// Jobs matching `filter`, counting no further than `limit` when given:
    /// `SELECT COUNT(*) FROM (SELECT id FROM jobs WHERE … LIMIT n)`, which
    /// reads at most n entries of the filter's index.
    async fn count_matching(&self, filter: &ListFilter, limit: Option<u64>) -> Result<u64, Error> {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one(backend.build(&count_query(filter, limit)))
            .await
            .map_err(|e| db_error("count jobs", e))?;
        let count: i64 = match row {
            Some(row) => row
                .try_get_by_index(0)
                .map_err(|e| db_error("count jobs", e))?,
            None => 0,
        };
        Ok(count.max(0) as u64)
    }

    /// Claims a PENDING job for `worker_id`: PENDING → RUNNING, attempt + 1,
    /// lease until `lease_until`. Only one claimant can win; a duplicate
    /// delivery of the same job gets `None`.
    pub async fn claim(
        &self,
        id: Uuid,
        worker_id: &str,
        run_host: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Job>, Error> {
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
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match self.get_job(id).await {
                Ok(job) => return Ok(job),
                Err(e) if backoff < std::time::Duration::from_secs(5) => {
                    tracing::warn!(job_id = %id, error = %e, "reading a claimed job; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(e),
            }
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
        lease_until: i64,
    ) -> Result<Option<bool>, Error> {
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

    /// Ends a run this worker holds. Returns the terminal job, or `None` when
    /// the lease was lost and nothing was written.
    pub async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        worker_id: &str,
        outcome: &Outcome,
        now: i64,
    ) -> Result<Option<Job>, Error> {
        let mut update = jobs::Entity::update_many()
            .col_expr(Column::Status, Expr::value(outcome.status.as_str()))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::LeaseExpiresAt, Expr::value(Option::<i64>::None))
            .col_expr(Column::RunPgid, Expr::value(Option::<i32>::None))
            .col_expr(Column::Error, Expr::value(outcome.error.clone()))
            .col_expr(
                Column::ErrorReason,
                Expr::value(outcome.error_reason.map(|r| r.as_str().to_owned())),
            );
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
        now: i64,
        by: Option<&str>,
    ) -> Result<CancelOutcome, Error> {
        // A job moves forward only, so a few rounds settle any race.
        for _ in 0..4 {
            let job = self
                .get_job(id)
                .await?
                .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
            match job.status {
                JobStatus::Pending => {
                    let done = jobs::Entity::update_many()
                        .col_expr(Column::Status, Expr::value(JobStatus::Canceled.as_str()))
                        .col_expr(Column::FinishedAt, Expr::value(now))
                        .col_expr(Column::CancelRequested, Expr::value(true))
                        .col_expr(
                            Column::CanceledBy,
                            Expr::col(Column::CanceledBy).if_null(by),
                        )
                        .col_expr(Column::Error, Expr::value("canceled before it started"))
                        .col_expr(
                            Column::ErrorReason,
                            Expr::value(ErrorReason::Canceled.as_str()),
                        )
                        .filter(Column::Id.eq(id.to_string()))
                        .filter(Column::Status.eq(JobStatus::Pending.as_str()))
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
    pub async fn expire_leases(&self, now: i64) -> Result<Vec<Job>, Error> {
        let expired = jobs::Entity::find()
            .filter(Column::Status.eq(JobStatus::Running.as_str()))
            .filter(Column::LeaseExpiresAt.lt(now))
            .limit(100)
            .all(&self.db)
            .await
            .map_err(|e| db_error("find expired leases", e))?;
        let mut ended = Vec::new();
        for row in expired {
            let done = jobs::Entity::update_many()
                .col_expr(Column::Status, Expr::value(JobStatus::Failed.as_str()))
                .col_expr(Column::FinishedAt, Expr::value(now))
                .col_expr(
                    Column::Error,
                    Expr::value(format!(
                        "worker {} stopped renewing its lease; the run's outcome is unknown",
                        row.worker_id.as_deref().unwrap_or("?")
                    )),
                )
                .col_expr(
                    Column::ErrorReason,
                    Expr::value(ErrorReason::WorkerLost.as_str()),
                )
                .col_expr(Column::LeaseExpiresAt, Expr::value(Option::<i64>::None))
                .filter(Column::Id.eq(row.id.clone()))
                .filter(Column::Status.eq(JobStatus::Running.as_str()))
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
        now: i64,
    ) -> Result<Option<Job>, Error> {
        let done = jobs::Entity::update_many()
            .col_expr(Column::Status, Expr::value(JobStatus::Failed.as_str()))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(
                Column::Error,
                Expr::value(format!(
                    "worker {worker_id} died while the job ran; the run's outcome is unknown"
                )),
            )
            .col_expr(
                Column::ErrorReason,
                Expr::value(ErrorReason::WorkerLost.as_str()),
            )
            .col_expr(Column::LeaseExpiresAt, Expr::value(Option::<i64>::None))
            .filter(Self::fenced(id, attempt, worker_id))
            .exec(&self.db)
            .await
            .map_err(|e| db_error("end lost run", e))?;
        if done.rows_affected != 1 {
            return Ok(None);
        }
        self.get_job(id).await
    }

    /// PENDING jobs created before `before`, oldest first, after `after`
    /// (keyset on (created_at, id)): (id, queue, created_at).
    pub async fn pending_before(
        &self,
        before: i64,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Vec<(Uuid, String, i64)>, Error> {
        let mut select = jobs::Entity::find()
            .select_only()
            .columns([Column::Id, Column::Queue, Column::CreatedAt])
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .filter(Column::CreatedAt.lt(before));
        if let Some(cursor) = after {
            select = select
                .filter(Column::CreatedAt.gte(cursor.created_at))
                .filter(
                    Condition::any()
                        .add(Column::CreatedAt.gt(cursor.created_at))
                        .add(Column::Id.gt(cursor.id.to_string())),
                );
        }
        let rows = select
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Id)
            .limit(limit)
            .into_tuple::<(String, String, i64)>()
            .all(&self.db)
            .await
            .map_err(|e| db_error("find pending jobs", e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, queue, created)| Some((Uuid::parse_str(&id).ok()?, queue, created)))
            .collect())
    }

    /// The creation time of the oldest PENDING job of each queue that has one.
    pub async fn oldest_pending(&self) -> Result<Vec<(String, i64)>, Error> {
        jobs::Entity::find()
            .select_only()
            .column(Column::Queue)
            .column_as(Expr::col(Column::CreatedAt).min(), "oldest")
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .group_by(Column::Queue)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await
            .map_err(|e| db_error("find the oldest pending jobs", e))
    }
}

/// `SELECT COUNT(*) FROM (SELECT id FROM jobs WHERE … [LIMIT n]) AS matching`
/// (sea-orm's own `count` drops a limit, so it is built here).
fn count_query(filter: &ListFilter, limit: Option<u64>) -> SelectStatement {
    let mut matching = filter.select().select_only().column(Column::Id);
    if let Some(limit) = limit {
        matching = matching.limit(limit);
    }
    Query::select()
        .expr(Expr::col(Asterisk).count())
        .from_subquery(matching.into_query(), Alias::new("matching"))
        .to_owned()
}

fn to_row(job: &Job) -> Result<jobs::ActiveModel, Error> {
    let json = |what: &str, value: Result<String, serde_json::Error>| {
        value.map_err(|e| Error::internal(format!("encode {what}"), e))
    };
    Ok(jobs::ActiveModel {
        id: Set(job.id.to_string()),
        request_id: Set(job.request_id.clone()),
        status: Set(job.status.as_str().to_owned()),
        playbook: Set(job.spec.playbook.clone()),
        extra_vars: Set(json(
            "extra_vars",
            serde_json::to_string(&job.spec.extra_vars),
        )?),
        inventory: Set(json(
            "inventory",
            serde_json::to_string(&job.spec.inventory),
        )?),
        options: Set(json("options", serde_json::to_string(&job.spec.options))?),
        timeout_seconds: Set(job.spec.timeout_seconds as i32),
        created_at: Set(to_micros(job.created_at)),
        started_at: Set(job.started_at.map(to_micros)),
        finished_at: Set(job.finished_at.map(to_micros)),
        rc: Set(None),
        stdout_truncated: Set(false),
        stats: Set(None),
        error: Set(job.error.clone()),
        error_reason: Set(job.error_reason.map(|r| r.as_str().to_owned())),
        attempt: Set(job.attempt as i32),
        worker_id: Set(None),
        lease_expires_at: Set(None),
        cancel_requested: Set(false),
        run_host: Set(None),
        run_pgid: Set(None),
        last_seq: Set(0),
        submitted_by: Set(job.submitted_by.clone()),
        has_secrets: Set(job.has_secrets),
        canceled_by: Set(job.canceled_by.clone()),
        request_scope: Set(job.submitted_by.clone().unwrap_or_default()),
        queue: Set(job.queue.clone()),
    })
}

fn from_row(row: jobs::Model) -> Result<Job, Error> {
    let corrupt =
        |what: &str, e: String| Error::internal(format!("decode {what} of job {}", row.id), e);
    let result = row.rc.map(|rc| -> Result<JobResult, Error> {
        let stats: BTreeMap<String, HostStats> = match &row.stats {
            Some(s) => serde_json::from_str(s).map_err(|e| corrupt("stats", e.to_string()))?,
            None => BTreeMap::new(),
        };
        Ok(JobResult {
            rc,
            stdout: String::new(),
            stdout_truncated: row.stdout_truncated,
            stats,
        })
    });
    Ok(Job {
        id: Uuid::parse_str(&row.id).map_err(|e| corrupt("id", e.to_string()))?,
        request_id: row.request_id.clone(),
        status: row.status.parse().map_err(|e| corrupt("status", e))?,
        spec: crate::domain::JobSpec {
            playbook: row.playbook.clone(),
            extra_vars: serde_json::from_str(&row.extra_vars)
                .map_err(|e| corrupt("extra_vars", e.to_string()))?,
            inventory: serde_json::from_str(&row.inventory)
                .map_err(|e| corrupt("inventory", e.to_string()))?,
            options: serde_json::from_str(&row.options)
                .map_err(|e| corrupt("options", e.to_string()))?,
            timeout_seconds: row.timeout_seconds.max(0) as u32,
        },
        created_at: from_micros(row.created_at),
        started_at: row.started_at.map(from_micros),
        finished_at: row.finished_at.map(from_micros),
        result: result.transpose()?,
        error: row.error.clone(),
        error_reason: match &row.error_reason {
            Some(r) => Some(r.parse().map_err(|e| corrupt("error_reason", e))?),
            None => None,
        },
        attempt: row.attempt.max(0) as u32,
        submitted_by: row.submitted_by.clone(),
        has_secrets: row.has_secrets,
        canceled_by: row.canceled_by.clone(),
        queue: row.queue.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::{count_query, utf8_chunks, ListFilter};
    use crate::domain::JobStatus;
    use sea_orm::DbBackend;

    #[test]
    fn a_bounded_count_limits_the_rows_it_reads() {
        let filter = ListFilter {
            status: Some(JobStatus::Failed),
            ..Default::default()
        };
        let sql = |limit| {
            DbBackend::MySql
                .build(&count_query(&filter, limit))
                .to_string()
        };
        assert_eq!(
            sql(Some(1001)),
            "SELECT COUNT(*) FROM (SELECT `jobs`.`id` FROM `jobs` \
             WHERE `jobs`.`status` = 'FAILED' LIMIT 1001) AS `matching`"
        );
        assert!(!sql(None).contains("LIMIT"));
    }

    #[test]
    fn chunks_keep_characters_whole() {
        let text = "ab\u{e9}cd\u{e9}";
        let chunks: Vec<&str> = utf8_chunks(text, 3).collect();
        assert_eq!(chunks.concat(), text);
        assert!(chunks.iter().all(|c| c.len() <= 3));
        assert_eq!(utf8_chunks("", 3).count(), 0);
    }
}
