//! Migrating the history when any number of processes start at once, and
//! refusing a schema this binary does not know.
//!
//! One process at a time migrates, under a lock on the whole database; the
//! others wait for it (saying for whom), then find nothing left to do. The lock
//! belongs to a connection (MariaDB) or an open file (SQLite) of the process,
//! so it goes away with a killed process; the migrations themselves are
//! re-runnable (see the `migration` crate), so the next one finishes the work.

use std::time::Duration;

use migration::{Migrator, MigratorTrait, SchemaStatus};

use super::{db_error, redact, Store};
use crate::domain::Error;

/// How often a waiting process says it still waits.
const WAIT_REPORT: Duration = Duration::from_secs(10);

impl Store {
    /// Applies pending migrations under the migration lock, after checking
    /// that the history holds none this binary does not know.
    pub async fn migrate(&self) -> Result<(), Error> {
        let lock = MigrationLock::acquire(&self.url).await?;
        let result = self.migrate_locked().await;
        lock.release().await;
        result
    }

    async fn migrate_locked(&self) -> Result<(), Error> {
        let status = self.schema_status().await?;
        refuse_newer(&status)?;
        if status.pending.is_empty() {
            tracing::info!(schema = %status.latest_known, "the history's schema is current");
            return Ok(());
        }
        tracing::info!(pending = ?status.pending, "applying migrations");
        Migrator::up(&self.db, None)
            .await
            .map_err(|e| db_error("apply migrations", e))?;
        tracing::info!(schema = %status.latest_known, "migrations applied");
        Ok(())
    }

    /// For processes told not to migrate: the schema must be exactly the one
    /// this binary knows.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let status = self.schema_status().await?;
        refuse_newer(&status)?;
        if let Some(first) = status.pending.first() {
            return Err(Error::InvalidState(format!(
                "the history's schema is older than this binary: migration {first} and {} more \
                 are not applied (latest applied: {}); run `ansible-runner-service migrate` first",
                status.pending.len() - 1,
                status.latest_applied.as_deref().unwrap_or("none"),
            )));
        }
        tracing::info!(schema = %status.latest_known, "the history's schema is current");
        Ok(())
    }

    async fn schema_status(&self) -> Result<SchemaStatus, Error> {
        migration::schema_status(&self.db)
            .await
            .map_err(|e| db_error("read the history's schema version", e))
    }
}

fn refuse_newer(status: &SchemaStatus) -> Result<(), Error> {
    match status.unknown.last() {
        None => Ok(()),
        Some(newest) => Err(Error::InvalidState(format!(
            "the history's schema has migration {newest} (newer than this binary, whose latest \
             is {}): upgrade this binary, or point it at a history of its own version",
            status.latest_known
        ))),
    }
}

/// Held while one process migrates.
enum MigrationLock {
    /// `GET_LOCK` on a connection of its own, which stays open while the
    /// migrations run on the pool (the lock is advisory: every process asks
    /// for it before it migrates). MariaDB releases it when the connection
    /// ends, so a killed process does not leave it taken.
    MySql {
        connection: sea_orm::sqlx::MySqlConnection,
        name: String,
    },
    /// `flock` on `<database file>.migrate-lock`. Not `BEGIN EXCLUSIVE`: that
    /// would lock the database itself, and the migrations run on other
    /// connections of the pool. A file lock is released by the kernel when
    /// the process dies, and SQLite is only ever shared by processes of one
    /// host.
    Sqlite(std::fs::File),
    /// An in-memory SQLite database: nobody to wait for.
    None,
}

impl MigrationLock {
    async fn acquire(url: &str) -> Result<MigrationLock, Error> {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Self::acquire_mysql(url).await
        } else {
            match super::sqlite_path(url) {
                Some(path) => Self::acquire_file(&path).await,
                None => Ok(MigrationLock::None),
            }
        }
    }

    async fn acquire_mysql(url: &str) -> Result<MigrationLock, Error> {
        use sea_orm::sqlx;
        let failed = |e: sqlx::Error| {
            db_error(
                &format!("take the migration lock on {}", redact(url)),
                sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)),
            )
        };
        use sqlx::ConnectOptions;
        // GET_LOCK may wait long: not a slow statement worth a warning.
        let mut connection = url
            .parse::<sqlx::mysql::MySqlConnectOptions>()
            .map_err(failed)?
            .disable_statement_logging()
            .connect()
            .await
            .map_err(failed)?;
        // One lock per database; MariaDB limits lock names to 64 characters.
        let name: String = sqlx::query_scalar(
            "SELECT LEFT(CONCAT(IFNULL(DATABASE(), ''), '.ars_migrations'), 64)",
        )
        .fetch_one(&mut connection)
        .await
        .map_err(failed)?;
        let mut wait = 0;
        loop {
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(&name)
                .bind(wait)
                .fetch_one(&mut connection)
                .await
                .map_err(failed)?;
            if got == Some(1) {
                return Ok(MigrationLock::MySql { connection, name });
            }
            let holder: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT CAST(IS_USED_LOCK(?) AS SIGNED), \
                 (SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = IS_USED_LOCK(?))",
            )
            .bind(&name)
            .bind(&name)
            .fetch_optional(&mut connection)
            .await
            .map_err(failed)?;
            let (id, host) = holder.unwrap_or_default();
            tracing::info!(
                lock = %name,
                "waiting for the migration lock held by connection {} ({})",
                id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
                host.as_deref().unwrap_or("host unknown"),
            );
            wait = WAIT_REPORT.as_secs() as i64;
        }
    }

    async fn acquire_file(database: &std::path::Path) -> Result<MigrationLock, Error> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let mut path = database.as_os_str().to_owned();
        path.push(".migrate-lock");
        let path = std::path::PathBuf::from(path);
        let failed = |e: std::io::Error| {
            Error::internal(format!("take the migration lock {}", path.display()), e)
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        let mut reported: Option<tokio::time::Instant> = None;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(failed(error));
            }
            if reported.is_none_or(|at| at.elapsed() >= WAIT_REPORT) {
                let mut holder = String::new();
                let _ = file
                    .rewind()
                    .and_then(|()| file.read_to_string(&mut holder));
                tracing::info!(
                    lock = %path.display(),
                    "waiting for the migration lock held by {}",
                    if holder.is_empty() { "another process" } else { holder.trim() },
                );
                reported = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let me = format!("process {} on {host}", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .map_err(failed)?;
        Ok(MigrationLock::Sqlite(file))
    }

    async fn release(self) {
        match self {
            MigrationLock::MySql {
                mut connection,
                name,
            } => {
                use sea_orm::sqlx::{self, Connection};
                let released = sqlx::query("SELECT RELEASE_LOCK(?)")
                    .bind(&name)
                    .execute(&mut connection)
                    .await;
                if let Err(e) = released {
                    // Closing the connection releases it all the same.
                    tracing::warn!(error = %e, "releasing the migration lock");
                }
                let _ = connection.close().await;
            }
            // Closing the file releases the lock.
            MigrationLock::Sqlite(file) => drop(file),
            MigrationLock::None => {}
        }
    }
}
