//! The `jobs` table.

use sea_orm::entity::prelude::*;

/// One row per job. Times are microseconds since the Unix epoch (UTC).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub request_id: Option<String>,
    pub status: String,
    pub playbook: String,
    #[sea_orm(column_type = "Text")]
    pub extra_vars: String,
    #[sea_orm(column_type = "Text")]
    pub inventory: String,
    #[sea_orm(column_type = "Text")]
    pub options: String,
    pub timeout_seconds: i32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub rc: Option<i32>,
    pub stdout_truncated: bool,
    #[sea_orm(column_type = "Text", nullable)]
    pub stats: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub error_reason: Option<String>,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    pub run_host: Option<String>,
    pub run_pgid: Option<i32>,
    /// Sequence of the last stored event.
    pub last_seq: i64,
    /// The API key's client name, when keys are configured.
    pub submitted_by: Option<String>,
    /// Secret extra vars were given (kept in the live state only).
    pub has_secrets: bool,
    /// The client that asked to cancel the job.
    pub canceled_by: Option<String>,
    /// Whose request_id this is: the submitting client's name, '' without
    /// keys. (request_scope, request_id) is unique.
    pub request_scope: String,
    /// The queue (worker group) whose workers may run the job.
    pub queue: String,
    /// What the job runs when not a catalogue playbook (JSON); NULL: the
    /// catalogue's `playbook`.
    #[sea_orm(column_type = "Text", nullable)]
    pub source: Option<String>,
    /// The commit the git playbook or role repository resolved to.
    pub source_commit: Option<String>,
    /// The full ref name it resolved from.
    pub source_ref: Option<String>,
    /// The commit the git inventory resolved to.
    pub inventory_commit: Option<String>,
    /// The names of the credentials the job uses (JSON list); NULL: none.
    #[sea_orm(column_type = "Text", nullable)]
    pub credentials: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::job_events::Entity")]
    JobEvents,
}

impl Related<super::job_events::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::JobEvents.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
