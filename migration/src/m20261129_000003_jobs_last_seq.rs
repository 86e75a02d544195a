//! A job's last stored event sequence, the fence for event batches.

use sea_orm_migration::prelude::*;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The sequence of a job's last stored event. Each batch of events moves it
/// forward in the same transaction, fenced by the claim, so a worker that lost
/// its lease cannot add events after the fact.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        Guarded::new(manager, self.name())
            .add_column(
                Jobs::Table,
                ColumnDef::new(Jobs::LastSeq)
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Jobs::LastSeq)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    LastSeq,
}
