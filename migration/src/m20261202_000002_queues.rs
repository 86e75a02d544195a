//! The queue (worker group) of each job, and its index.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The queue (worker group) of each job, "default" for every job before it,
/// and an index for "which jobs wait in this queue" (ListJobs' status and
/// queue filters, the sweeper's oldest pending job per queue). Guarded, so it
/// can run again on a schema that already has them.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::Queue)
                    .string_len(64)
                    .not_null()
                    .default("default")
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::MySql {
            // Compared byte for byte, as on SQLite (see m20261129_000005).
            schema
                .execute_idempotent(
                    "ALTER TABLE jobs MODIFY queue VARCHAR(64) \
                     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT 'default'",
                )
                .await?;
        }
        schema
            .create_index(
                Jobs::Table,
                "ix_jobs_status_queue_created",
                Index::create()
                    .col(Jobs::Status)
                    .col(Jobs::Queue)
                    .col(Jobs::CreatedAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_jobs_status_queue_created")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Jobs::Queue)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Status,
    CreatedAt,
    Queue,
}
