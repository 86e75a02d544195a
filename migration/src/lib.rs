//! Schema of the job history. Applied by `ansible-runner-service migrate`, and
//! at the start of `serve` and `worker`. Works on MariaDB/MySQL and SQLite.
//!
//! Times are stored as BIGINT microseconds since the Unix epoch (UTC): the same
//! exact ordering and precision on every backend, with no time-zone conversion.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_create_jobs;
mod m20261129_000002_index_runs;
mod m20261129_000003_jobs_last_seq;
mod m20261129_000004_access;
mod m20261129_000005_exact_match;
mod m20261202_000001_client_scopes;
mod m20261202_000002_queues;

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
        ]
    }
}
