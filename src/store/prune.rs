//! Retention: deleting finished jobs (and their events and output) older
//! than a cut-off, in small batches so no statement holds long locks or
//! stalls running jobs.

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{job_events, job_output, jobs};
use super::{db_error, Store};
use chrono::{DateTime, Utc};

use crate::domain::{Error, JobStatus};

/// Jobs deleted per batch.
const PRUNE_BATCH: u64 = 200;

/// What a prune removed (or, in a dry run, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub jobs: u64,
    pub events: u64,
    /// Jobs by status, in the order of `JobStatus::ALL`.
    pub by_status: std::collections::BTreeMap<&'static str, u64>,
}

impl Store {
    /// Deletes (or, in a dry run, only counts) the next batch of terminal jobs
    /// created before `before` (microseconds), with ids above `after`, of one
    /// status if given. PENDING and RUNNING jobs are never pruned. Returns
    /// the batch's job ids and event count; no ids when nothing is left.
    pub async fn prune_batch(
        &self,
        before: DateTime<Utc>,
        status: Option<JobStatus>,
        dry_run: bool,
        after: &str,
    ) -> Result<(Vec<(String, JobStatus)>, u64), Error> {
        let before = crate::domain::to_micros(before);
        let terminal: Vec<&str> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal() && status.is_none_or(|wanted| wanted == *s))
            .map(JobStatus::as_str)
            .collect();
        let found: Vec<(String, String)> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .column(jobs::Column::Status)
            .filter(jobs::Column::CreatedAt.lt(before))
            .filter(jobs::Column::Status.is_in(terminal.clone()))
            .filter(jobs::Column::Id.gt(after))
            .order_by_asc(jobs::Column::Id)
            .limit(PRUNE_BATCH)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(|e| db_error("find jobs to prune", e))?;
        if found.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let ids: Vec<String> = found.iter().map(|(id, _)| id.clone()).collect();
        let events = job_events::Entity::find()
            .filter(job_events::Column::JobId.is_in(ids.clone()))
            .count(&self.db)
            .await
            .map_err(|e| db_error("count events to prune", e))?;
        if !dry_run {
            job_events::Entity::delete_many()
                .filter(job_events::Column::JobId.is_in(ids.clone()))
                .exec(&self.db)
                .await
                .map_err(|e| db_error("prune events", e))?;
            job_output::Entity::delete_many()
                .filter(job_output::Column::JobId.is_in(ids.clone()))
                .exec(&self.db)
                .await
                .map_err(|e| db_error("prune output", e))?;
            jobs::Entity::delete_many()
                .filter(jobs::Column::Id.is_in(ids.clone()))
                .filter(jobs::Column::Status.is_in(terminal))
                .exec(&self.db)
                .await
                .map_err(|e| db_error("prune jobs", e))?;
        }
        let found = found
            .into_iter()
            .map(|(id, status)| {
                let status = status
                    .parse()
                    .map_err(|e| Error::internal(format!("status of job {id}"), e))?;
                Ok((id, status))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((found, events))
    }
}
