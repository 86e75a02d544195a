//! ListJobs on the history: filters, keyset pages newest first, and totals
//! (exact up to a bound, else kept per filter: see `totals`).

use std::time::Instant;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Asterisk, Expr, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Select,
};
use uuid::Uuid;

use super::entities::jobs::{self, Column};
use super::rows::from_row;
use super::totals::{Counted, Plan, RefreshMark};
use super::{db_error, Store};
use crate::domain::{to_micros, Error, Job, JobStatus};

/// Where a page of ListJobs starts: just after this (created_at, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
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

impl Store {
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
                .filter(Column::CreatedAt.lte(to_micros(cursor.created_at)))
                .filter(
                    Condition::any()
                        .add(Column::CreatedAt.lt(to_micros(cursor.created_at)))
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
                created_at: last.created_at,
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

#[cfg(test)]
mod tests {
    use super::{count_query, ListFilter};
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
}
