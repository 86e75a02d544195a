//! A run's events in the history: stored in fenced batches, read back in order.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use uuid::Uuid;

use super::entities::job_events::{self, Column};
use super::entities::jobs;
use super::{db_error, Store};
use crate::domain::{from_micros, to_micros, Error, JobEvent, JobStatus};

impl Store {
    /// Stores a batch of a run's events (numbered from the job's last stored
    /// sequence on) in one transaction, fenced by the claim. Returns false,
    /// storing nothing, when the worker no longer holds the job.
    pub async fn insert_events(
        &self,
        attempt: u32,
        worker_id: &str,
        events: &[JobEvent],
    ) -> Result<bool, Error> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(true);
        };
        let job_id = first.job_id;
        let txn = self
            .db
            .begin()
            .await
            .map_err(|e| db_error("begin event batch", e))?;
        let moved = jobs::Entity::update_many()
            .col_expr(jobs::Column::LastSeq, Expr::value(last.seq as i64))
            .filter(Store::fenced(job_id, attempt, worker_id))
            .filter(jobs::Column::LastSeq.eq(first.seq as i64 - 1))
            .exec(&txn)
            .await
            .map_err(|e| db_error("advance last event", e))?;
        if moved.rows_affected != 1 {
            txn.rollback()
                .await
                .map_err(|e| db_error("roll back event batch", e))?;
            // A retry of a batch whose commit landed but whose answer was lost
            // finds its own write: that is a success, not a lost lease.
            let row = jobs::Entity::find_by_id(job_id.to_string())
                .one(&self.db)
                .await
                .map_err(|e| db_error("check event batch", e))?;
            return Ok(row.is_some_and(|row| {
                row.status == JobStatus::Running.as_str()
                    && row.attempt == attempt as i32
                    && row.worker_id.as_deref() == Some(worker_id)
                    && row.last_seq >= last.seq as i64
            }));
        }
        let rows = events.iter().map(|e| job_events::ActiveModel {
            job_id: Set(e.job_id.to_string()),
            seq: Set(e.seq as i64),
            time: Set(to_micros(e.time)),
            event: Set(e.event.clone()),
            host: Set(e.host.clone()),
            task: Set(e.task.clone()),
            play: Set(e.play.clone()),
            stdout: Set(e.stdout.clone()),
            event_data: Set(serde_json::Value::Object(e.event_data.clone()).to_string()),
        });
        job_events::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| db_error("insert events", e))?;
        txn.commit()
            .await
            .map_err(|e| db_error("commit event batch", e))?;
        Ok(true)
    }

    /// Up to `limit` events of a job with a sequence above `after`, in order.
    pub async fn events_after(
        &self,
        job_id: Uuid,
        after: u64,
        limit: u64,
    ) -> Result<Vec<JobEvent>, Error> {
        let rows = job_events::Entity::find()
            .filter(Column::JobId.eq(job_id.to_string()))
            .filter(Column::Seq.gt(after as i64))
            .order_by_asc(Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(|e| db_error("read events", e))?;
        Ok(rows
            .into_iter()
            .map(|row| JobEvent {
                job_id,
                seq: row.seq as u64,
                time: from_micros(row.time),
                event: row.event,
                host: row.host,
                task: row.task,
                play: row.play,
                stdout: row.stdout,
                event_data: serde_json::from_str(&row.event_data).unwrap_or_default(),
            })
            .collect())
    }
}
