use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::job_events::{self, Column};
use super::{db_error, Store};
use crate::domain::{from_micros, to_micros, Error, JobEvent};

impl Store {
    /// Stores a batch of events in one statement.
    pub async fn insert_events(&self, events: &[JobEvent]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
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
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| db_error("insert events", e))?;
        Ok(())
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
