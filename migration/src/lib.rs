//! Schema of the job history. Applied by `ansible-runner-service migrate`, and
//! at the start of `serve` and `worker` (unless `--no-migrate`), one process at
//! a time under a database-wide lock the service takes. Works on MariaDB/MySQL
//! and SQLite.
//!
//! Times are stored as BIGINT microseconds since the Unix epoch (UTC): the same
//! exact ordering and precision on every backend, with no time-zone conversion.
//!
//! Rules for every migration (tests/startup.rs kills `migrate` after each step
//! of each migration, runs it again and compares the schema with a clean run):
//! - **Re-runnable.** MariaDB cannot roll back DDL, so a process killed half-way
//!   leaves some steps done and the migration unrecorded. Change the schema only
//!   through [`Guarded`] (`create_table`, `create_index`, `add_column`, or
//!   `execute_idempotent` for a statement that is harmless twice): each step
//!   checks first, and ends at a crash point the tests use.
//! - **Additive first (expand, then contract).** During a rolling upgrade the
//!   previous release runs on the new schema. A release may add tables, indexes,
//!   and columns that are NULL or have a default; it may not drop, rename or
//!   narrow anything the previous release uses. Removing something takes two
//!   releases: stop using it, then drop it in a later migration.
//! - **Named `mYYYYMMDD_NNNNNN_name`**, listed in order in [`Migrator`]: a binary
//!   refuses to start on a history that holds a migration it does not list
//!   (a newer release's), see [`schema_status`].

pub use sea_orm_migration::prelude::*;

use sea_orm_migration::sea_orm::{DatabaseConnection, Statement};

mod guarded;
pub use guarded::{crash_point, Guarded};

mod m20261129_000001_create_jobs;
mod m20261129_000002_index_runs;
mod m20261129_000003_jobs_last_seq;
mod m20261129_000004_access;
mod m20261129_000005_exact_match;
mod m20261202_000001_client_scopes;
mod m20261202_000002_queues;
mod m20261202_000003_git_sources;
mod m20261202_000004_credentials;

/// Runs this crate's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_jobs::Migration),
            Box::new(m20261129_000002_index_runs::Migration),
            Box::new(m20261129_000003_jobs_last_seq::Migration),
            Box::new(m20261129_000004_access::Migration),
            Box::new(m20261129_000005_exact_match::Migration),
            Box::new(m20261202_000001_client_scopes::Migration),
            Box::new(m20261202_000002_queues::Migration),
            Box::new(m20261202_000003_git_sources::Migration),
            Box::new(m20261202_000004_credentials::Migration),
        ]
    }
}

/// The table where SeaORM records applied migrations.
pub const MIGRATIONS_TABLE: &str = "seaql_migrations";

/// How a history's schema compares with the migrations this binary knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Known migrations not applied yet, in order.
    pub pending: Vec<String>,
    /// Applied migrations this binary does not know: a newer release's.
    pub unknown: Vec<String>,
    /// The newest migration this binary knows.
    pub latest_known: String,
    /// The newest migration applied to the history, if any.
    pub latest_applied: Option<String>,
}

/// Compares the migrations recorded in the history with this binary's.
pub async fn schema_status(db: &DatabaseConnection) -> Result<SchemaStatus, DbErr> {
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let manager = SchemaManager::new(db);
    let mut applied: Vec<String> = Vec::new();
    if manager.has_table(MIGRATIONS_TABLE).await? {
        let backend = db.get_database_backend();
        for row in db
            .query_all(Statement::from_string(
                backend,
                format!("SELECT version FROM {MIGRATIONS_TABLE}"),
            ))
            .await?
        {
            applied.push(row.try_get("", "version")?);
        }
    }
    applied.sort();
    Ok(SchemaStatus {
        pending: known
            .iter()
            .filter(|name| !applied.contains(name))
            .cloned()
            .collect(),
        unknown: applied
            .iter()
            .filter(|name| !known.contains(name))
            .cloned()
            .collect(),
        latest_known: known.last().cloned().unwrap_or_default(),
        latest_applied: applied.last().cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm_migration::sea_orm::{ConnectOptions, Database};

    async fn memory() -> DatabaseConnection {
        let mut options = ConnectOptions::new("sqlite::memory:");
        // One connection: each connection to :memory: is a database of its own.
        options.max_connections(1).min_connections(1);
        Database::connect(options).await.unwrap()
    }

    async fn schema(db: &DatabaseConnection) -> Vec<String> {
        db.query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT type || ' ' || name || ': ' || COALESCE(sql, '') AS s FROM sqlite_master \
             WHERE name <> 'seaql_migrations' ORDER BY type, name",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "s").unwrap())
        .collect()
    }

    #[tokio::test]
    async fn every_migration_runs_again_over_its_own_work_and_changes_nothing() {
        let db = memory().await;
        Migrator::up(&db, None).await.unwrap();
        let first = schema(&db).await;
        assert!(
            first.iter().any(|s| s.starts_with("table jobs:")),
            "{first:?}"
        );
        assert!(first.iter().any(|s| s.starts_with("index ")), "{first:?}");
        // As if every migration had been killed after its last step, before
        // SeaORM recorded it.
        db.execute_unprepared("DELETE FROM seaql_migrations")
            .await
            .unwrap();
        Migrator::up(&db, None).await.unwrap();
        assert_eq!(schema(&db).await, first);
    }

    #[tokio::test]
    async fn schema_status_names_pending_and_unknown_migrations() {
        let db = memory().await;
        let latest = Migrator::migrations().last().unwrap().name().to_owned();
        let fresh = schema_status(&db).await.unwrap();
        assert_eq!(fresh.pending.len(), Migrator::migrations().len());
        assert_eq!(fresh.latest_applied, None);
        assert_eq!(fresh.latest_known, latest);

        Migrator::up(&db, None).await.unwrap();
        let current = schema_status(&db).await.unwrap();
        assert!(current.pending.is_empty() && current.unknown.is_empty());
        assert_eq!(current.latest_applied, Some(latest));

        db.execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_future', 0)",
        )
        .await
        .unwrap();
        let newer = schema_status(&db).await.unwrap();
        assert_eq!(newer.unknown, vec!["m20991231_000001_future".to_owned()]);
        assert_eq!(
            newer.latest_applied.as_deref(),
            Some("m20991231_000001_future")
        );
    }
}
