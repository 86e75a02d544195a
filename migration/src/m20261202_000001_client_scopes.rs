use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

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
        if !manager.has_column("jobs", "canceled_by").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .add_column(ColumnDef::new(Jobs::CanceledBy).string_len(128).null())
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("jobs", "request_scope").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .add_column(
                            ColumnDef::new(Jobs::RequestScope)
                                .string_len(128)
                                .not_null()
                                .default(""),
                        )
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::MySql {
            // Compared byte for byte, like submitted_by (see m20261129_000005).
            db.execute_unprepared(
                "ALTER TABLE jobs MODIFY request_scope VARCHAR(128) \
                 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT ''",
            )
            .await?;
        }
        db.execute_unprepared(
            "UPDATE jobs SET request_scope = submitted_by \
             WHERE submitted_by IS NOT NULL AND request_scope = ''",
        )
        .await?;
        if !manager
            .has_index("jobs", "ux_jobs_scope_request_id")
            .await?
        {
            manager
                .create_index(
                    Index::create()
                        .name("ux_jobs_scope_request_id")
                        .table(Jobs::Table)
                        .col(Jobs::RequestScope)
                        .col(Jobs::RequestId)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
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
        if !manager.has_index("jobs", "ix_jobs_scope_status").await? {
            manager
                .create_index(
                    Index::create()
                        .name("ix_jobs_scope_status")
                        .table(Jobs::Table)
                        .col(Jobs::RequestScope)
                        .col(Jobs::Status)
                        .to_owned(),
                )
                .await?;
        }
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
