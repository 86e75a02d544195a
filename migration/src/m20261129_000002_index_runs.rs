//! An index of runs by host and process group, for a restarted worker.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Lets a worker find, at start, the runs its previous life left on its host.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        Guarded::new(manager, self.name())
            .create_index(
                Jobs::Table,
                "ix_jobs_run_host_pgid",
                Index::create()
                    .col(Jobs::RunHost)
                    .col(Jobs::RunPgid)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_jobs_run_host_pgid")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    RunHost,
    RunPgid,
}
