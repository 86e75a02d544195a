//! The first schema: jobs, their events and their stdout.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Large text (stdout up to 16 MiB, JSON documents up to 1 MiB): LONGTEXT on
/// MariaDB, plain TEXT affinity on SQLite.
fn long_text() -> Alias {
    Alias::new("LONGTEXT")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Jobs::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Jobs::RequestId).string_len(128).null())
                    .col(ColumnDef::new(Jobs::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Jobs::Playbook).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Jobs::ExtraVars)
                            .custom(long_text())
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Jobs::Inventory)
                            .custom(long_text())
                            .not_null(),
                    )
                    .col(ColumnDef::new(Jobs::Options).text().not_null())
                    .col(ColumnDef::new(Jobs::TimeoutSeconds).integer().not_null())
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::StartedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::FinishedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::Rc).integer().null())
                    .col(
                        ColumnDef::new(Jobs::StdoutTruncated)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(Jobs::Stats).custom(long_text()).null())
                    .col(ColumnDef::new(Jobs::Error).text().null())
                    .col(ColumnDef::new(Jobs::ErrorReason).string_len(64).null())
                    .col(
                        ColumnDef::new(Jobs::Attempt)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Jobs::WorkerId).string_len(255).null())
                    .col(ColumnDef::new(Jobs::LeaseExpiresAt).big_integer().null())
                    .col(
                        ColumnDef::new(Jobs::CancelRequested)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(Jobs::RunHost).string_len(255).null())
                    .col(ColumnDef::new(Jobs::RunPgid).integer().null())
                    .to_owned(),
            )
            .await?;

        schema
            .create_index(
                Jobs::Table,
                "ux_jobs_request_id",
                Index::create().col(Jobs::RequestId).unique().to_owned(),
            )
            .await?;
        // One index per ListJobs filter combination, each ending in the sort
        // key (created_at, id) so every page is an index range scan.
        let listing: [(&str, &[Jobs]); 4] = [
            ("ix_jobs_created", &[]),
            ("ix_jobs_status_created", &[Jobs::Status]),
            ("ix_jobs_playbook_created", &[Jobs::Playbook]),
            (
                "ix_jobs_status_playbook_created",
                &[Jobs::Status, Jobs::Playbook],
            ),
        ];
        for (name, prefix) in listing {
            let mut index = Index::create();
            for col in prefix {
                index.col(*col);
            }
            index.col(Jobs::CreatedAt).col(Jobs::Id);
            schema
                .create_index(Jobs::Table, name, index.to_owned())
                .await?;
        }

        schema
            .create_table(
                Table::create()
                    .table(JobEvents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(JobEvents::JobId).string_len(36).not_null())
                    .col(ColumnDef::new(JobEvents::Seq).big_integer().not_null())
                    .col(ColumnDef::new(JobEvents::Time).big_integer().not_null())
                    .col(ColumnDef::new(JobEvents::Event).string_len(64).not_null())
                    .col(ColumnDef::new(JobEvents::Host).string_len(255).not_null())
                    .col(ColumnDef::new(JobEvents::Task).text().not_null())
                    .col(ColumnDef::new(JobEvents::Play).text().not_null())
                    .col(
                        ColumnDef::new(JobEvents::Stdout)
                            .custom(long_text())
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JobEvents::EventData)
                            .custom(long_text())
                            .not_null(),
                    )
                    .primary_key(Index::create().col(JobEvents::JobId).col(JobEvents::Seq))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_events_job")
                            .from(JobEvents::Table, JobEvents::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // stdout in chunks of at most 1 MiB: a 16 MiB output in one statement
        // would pass MariaDB's default max_allowed_packet (16 MiB).
        schema
            .create_table(
                Table::create()
                    .table(JobOutput::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(JobOutput::JobId).string_len(36).not_null())
                    .col(ColumnDef::new(JobOutput::Chunk).integer().not_null())
                    .col(
                        ColumnDef::new(JobOutput::Text)
                            .custom(long_text())
                            .not_null(),
                    )
                    .primary_key(Index::create().col(JobOutput::JobId).col(JobOutput::Chunk))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_output_job")
                            .from(JobOutput::Table, JobOutput::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobOutput::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(JobEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Jobs {
    Table,
    Id,
    RequestId,
    Status,
    Playbook,
    ExtraVars,
    Inventory,
    Options,
    TimeoutSeconds,
    CreatedAt,
    StartedAt,
    FinishedAt,
    Rc,
    StdoutTruncated,
    Stats,
    Error,
    ErrorReason,
    Attempt,
    WorkerId,
    LeaseExpiresAt,
    CancelRequested,
    RunHost,
    RunPgid,
}

#[derive(DeriveIden)]
enum JobEvents {
    Table,
    JobId,
    Seq,
    Time,
    Event,
    Host,
    Task,
    Play,
    Stdout,
    EventData,
}

#[derive(DeriveIden)]
enum JobOutput {
    Table,
    JobId,
    Chunk,
    Text,
}
