//! request_id unique per client, pending jobs counted per client, canceled_by.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Clients that are kept apart: a `request_id` is unique per submitting
/// client (`request_scope`: the client's name, '' without keys) instead of
/// across the whole history, pending jobs are counted per client, and a
/// cancel records who asked for it. Every step is guarded, so a rerun after
/// a crash half-way completes it.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::CanceledBy)
                    .string_len(128)
                    .null()
                    .to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::RequestScope)
                    .string_len(128)
                    .not_null()
                    .default("")
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::MySql {
            // Compared byte for byte, like submitted_by (see m20261129_000005).
            schema
                .execute_idempotent(
                    "ALTER TABLE jobs MODIFY request_scope VARCHAR(128) \
                     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT ''",
                )
                .await?;
        }
        schema
            .execute_idempotent(
                "UPDATE jobs SET request_scope = submitted_by \
                 WHERE submitted_by IS NOT NULL AND request_scope = ''",
            )
            .await?;
        schema
            .create_index(
                Jobs::Table,
                "ux_jobs_scope_request_id",
                Index::create()
                    .col(Jobs::RequestScope)
                    .col(Jobs::RequestId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Contracting in the same release as the expansion: the global
        // index is what made one client's request_id another's (issue 12).
        // During a rollout an old server still finds a retry's job by its
        // request_id before it inserts, so only two concurrent retries
        // through an old server could make two jobs (README, Upgrading).
        if manager.has_index("jobs", "ux_jobs_request_id").await? {
            manager
                .drop_index(
                    Index::drop()
                        .name("ux_jobs_request_id")
                        .table(Jobs::Table)
                        .to_owned(),
                )
                .await?;
        }
        schema
            .create_index(
                Jobs::Table,
                "ix_jobs_scope_status",
                Index::create()
                    .col(Jobs::RequestScope)
                    .col(Jobs::Status)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in ["ix_jobs_scope_status", "ux_jobs_scope_request_id"] {
            if manager.has_index("jobs", index).await? {
                manager
                    .drop_index(Index::drop().name(index).table(Jobs::Table).to_owned())
                    .await?;
            }
        }
        if !manager.has_index("jobs", "ux_jobs_request_id").await? {
            manager
                .create_index(
                    Index::create()
                        .name("ux_jobs_request_id")
                        .table(Jobs::Table)
                        .col(Jobs::RequestId)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        for column in ["request_scope", "canceled_by"] {
            if manager.has_column("jobs", column).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Jobs::Table)
                            .drop_column(Alias::new(column))
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    RequestId,
    RequestScope,
    CanceledBy,
    Status,
}
