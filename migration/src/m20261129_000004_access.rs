//! Who submitted each job, whether it has secret vars, and the service's own secrets.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Who submitted each job (the API key's client name), whether it came with
/// secret extra vars, and the service's own secrets (the page-token key).
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::SubmittedBy)
                    .string_len(128)
                    .null()
                    .to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::HasSecrets)
                    .boolean()
                    .not_null()
                    .default(false)
                    .to_owned(),
            )
            .await?;
        schema
            .create_index(
                Jobs::Table,
                "ix_jobs_submitted_by_created",
                Index::create()
                    .col(Jobs::SubmittedBy)
                    .col(Jobs::CreatedAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        schema
            .create_table(
                Table::create()
                    .table(ServiceSecrets::Table)
                    .col(
                        ColumnDef::new(ServiceSecrets::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ServiceSecrets::Value)
                            .string_len(128)
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServiceSecrets::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_jobs_submitted_by_created")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await?;
        for column in [Jobs::HasSecrets, Jobs::SubmittedBy] {
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

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    CreatedAt,
    SubmittedBy,
    HasSecrets,
}

#[derive(DeriveIden)]
enum ServiceSecrets {
    Table,
    Name,
    Value,
}
