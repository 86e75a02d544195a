//! Named credentials (SSH keys, vault and become passwords), encrypted at
//! rest, and the credentials each job names.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The `credentials` table (values sealed with the service's master key;
/// the history alone never reveals them) and a nullable `credentials`
/// column on jobs. Guarded, so it can run again over its own work.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Guarded::new(manager, self.name());
        schema
            .create_table(
                Table::create()
                    .table(Credentials::Table)
                    .col(
                        ColumnDef::new(Credentials::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Credentials::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Credentials::Username).string_len(128).null())
                    .col(
                        ColumnDef::new(Credentials::Fingerprint)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Credentials::Nonce).string_len(64).not_null())
                    .col(ColumnDef::new(Credentials::Sealed).text().not_null())
                    .col(
                        ColumnDef::new(Credentials::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        schema
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::Credentials).text().null().to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Jobs::Credentials)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Credentials::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Credentials {
    Table,
    Name,
    Kind,
    Username,
    Fingerprint,
    Nonce,
    Sealed,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Credentials,
}
