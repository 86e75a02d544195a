//! Jobs in the history: committing new ones (request ids, quotas), reading
//! them back, and finding PENDING ones for the sweeper.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Asterisk, Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, SqlErr,
};
use uuid::Uuid;

use super::entities::job_output;
use super::entities::jobs::{self, Column};
use super::listing::Cursor;
use super::rows::{from_row, to_row};
use super::{db_error, Store};
use crate::domain::{from_micros, to_micros, Error, Job, JobStatus};

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

    /// Inserts many jobs, 500 rows a statement (benchmarks fill the history so).
    pub async fn insert_jobs_bulk(&self, jobs: &[Job]) -> Result<(), Error> {
        // A statement's placeholders are bounded (SQLite: 32,766; MariaDB:
        // 65,535): rows go in pieces well under both, whatever the columns.
        const ROWS_PER_STATEMENT: usize = 500;
        for piece in jobs.chunks(ROWS_PER_STATEMENT) {
            let rows = piece.iter().map(to_row).collect::<Result<Vec<_>, _>>()?;
            jobs::Entity::insert_many(rows)
                .exec_without_returning(&self.db)
                .await
                .map_err(|e| db_error("insert jobs", e))?;
        }
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

    /// PENDING jobs created before `before`, oldest first, after `after`
    /// (keyset on (created_at, id)): (id, queue, created_at).
    pub async fn pending_before(
        &self,
        before: DateTime<Utc>,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, Error> {
        let before = to_micros(before);
        let mut select = jobs::Entity::find()
            .select_only()
            .columns([Column::Id, Column::Queue, Column::CreatedAt])
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .filter(Column::CreatedAt.lt(before));
        if let Some(cursor) = after {
            select = select
                .filter(Column::CreatedAt.gte(to_micros(cursor.created_at)))
                .filter(
                    Condition::any()
                        .add(Column::CreatedAt.gt(to_micros(cursor.created_at)))
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
            .filter_map(|(id, queue, created)| {
                Some((Uuid::parse_str(&id).ok()?, queue, from_micros(created)))
            })
            .collect())
    }

    /// The creation time of the oldest PENDING job of each queue that has one.
    pub async fn oldest_pending(&self) -> Result<Vec<(String, DateTime<Utc>)>, Error> {
        let rows = jobs::Entity::find()
            .select_only()
            .column(Column::Queue)
            .column_as(Expr::col(Column::CreatedAt).min(), "oldest")
            .filter(Column::Status.eq(JobStatus::Pending.as_str()))
            .group_by(Column::Queue)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await
            .map_err(|e| db_error("find the oldest pending jobs", e))?;
        Ok(rows
            .into_iter()
            .map(|(queue, oldest)| (queue, from_micros(oldest)))
            .collect())
    }
}
