//! Byte-for-byte comparison of request_id, playbook and submitted_by on MariaDB.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::guarded::Guarded;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// MariaDB compares strings case-insensitively and ignoring trailing spaces
/// by default: "Deploy-1" would find the job of "deploy-1". request_id,
/// playbook and submitted_by compare byte for byte, as on SQLite.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::MySql {
            return Ok(());
        }
        // MODIFY to the type a column already has changes nothing: safe to rerun.
        Guarded::new(manager, self.name())
            .execute_idempotent(
                "ALTER TABLE jobs \
                 MODIFY request_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
                 MODIFY playbook VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 MODIFY submitted_by VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
