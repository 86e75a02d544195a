//! Guarded DDL: each step of a migration first checks whether it is already
//! done. MariaDB cannot roll back DDL (every statement commits on its own), and
//! SeaORM records a migration only after all of it ran, so a process killed
//! half-way leaves some steps done and the migration unrecorded: the next run
//! starts it again from the top, and every step must then find its work done.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// The schema of one migration, changed only by steps that can run again.
/// Each step ends at a numbered crash point (see [`crash_point`]).
pub struct Guarded<'m, 'c> {
    manager: &'m SchemaManager<'c>,
    migration: &'m str,
    steps: AtomicU32,
}

impl<'m, 'c> Guarded<'m, 'c> {
    /// `migration` is the migration's name (`self.name()`).
    pub fn new(manager: &'m SchemaManager<'c>, migration: &'m str) -> Self {
        Guarded {
            manager,
            migration,
            steps: AtomicU32::new(0),
        }
    }

    pub fn manager(&self) -> &'m SchemaManager<'c> {
        self.manager
    }

    /// CREATE TABLE IF NOT EXISTS.
    pub async fn create_table(&self, mut table: TableCreateStatement) -> Result<(), DbErr> {
        self.manager
            .create_table(table.if_not_exists().to_owned())
            .await?;
        self.step();
        Ok(())
    }

    /// Creates the index `name` on `table` unless an index of that name is
    /// there. (MariaDB has CREATE INDEX IF NOT EXISTS but MySQL does not, and
    /// sea-query leaves it out for both.)
    pub async fn create_index<T: IntoIden>(
        &self,
        table: T,
        name: &str,
        mut index: IndexCreateStatement,
    ) -> Result<(), DbErr> {
        let table = table.into_iden();
        if !self.manager.has_index(table.to_string(), name).await? {
            self.manager
                .create_index(index.name(name).table(table).to_owned())
                .await?;
        }
        self.step();
        Ok(())
    }

    /// Adds `column` to `table` unless a column of that name is there. An
    /// added column must be NULL or have a default, so that binaries that do
    /// not know it can still insert rows (see the crate's rules).
    pub async fn add_column<T: IntoIden>(&self, table: T, column: ColumnDef) -> Result<(), DbErr> {
        let table = table.into_iden();
        if !self
            .manager
            .has_column(table.to_string(), column.get_column_name())
            .await?
        {
            self.manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(column.to_owned())
                        .to_owned(),
                )
                .await?;
        }
        self.step();
        Ok(())
    }

    /// A statement that is harmless to run twice by its nature (e.g. MODIFY
    /// a column to the type it may already have).
    pub async fn execute_idempotent(&self, sql: &str) -> Result<(), DbErr> {
        self.manager
            .get_connection()
            .execute_unprepared(sql)
            .await?;
        self.step();
        Ok(())
    }

    fn step(&self) {
        let step = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        crash_point(self.migration, step);
    }
}

/// Fault injection for the tests: `ARS_CRASH_AT=migration:<name>:<step>`
/// aborts the process right after step `<step>` (1, 2, ...) of migration
/// `<name>`, as `kill -9` would, leaving the migration half done.
pub fn crash_point(migration: &str, step: u32) {
    let Ok(at) = std::env::var("ARS_CRASH_AT") else {
        return;
    };
    if at == format!("migration:{migration}:{step}") {
        eprintln!("ARS_CRASH_AT: aborting after step {step} of migration {migration}");
        std::process::abort();
    }
}
