//! Git sources: what a job runs when it is not a catalogue playbook, and the
//! commits its git sources resolved to when its run started.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Four nullable columns (NULL for every job before them: catalogue
/// playbooks, nothing resolved). Guarded, so it can run again on a schema
/// that already has them.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::Source).text().null().to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::SourceCommit)
                    .string_len(64)
                    .null()
                    .to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::SourceRef)
                    .string_len(255)
                    .null()
                    .to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::InventoryCommit)
                    .string_len(64)
                    .null()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Jobs::Source,
            Jobs::SourceCommit,
            Jobs::SourceRef,
            Jobs::InventoryCommit,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Jobs {
    Table,
    Source,
    SourceCommit,
    SourceRef,
    InventoryCommit,
}
