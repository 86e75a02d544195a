//! The history: jobs and their events in MariaDB (or SQLite in the embedded
//! default) through SeaORM. It is the source of truth: a job exists once its
//! row is committed, and every change after the claim is fenced by
//! (attempt, worker id).

mod credentials;
pub mod entities;
mod events;
mod jobs;
mod listing;
mod prune;
mod rows;
mod runs;
mod schema;
mod totals;

pub use credentials::SealedCredential;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
};

use crate::domain::Error;
use crate::startup::redact;

pub use listing::{Cursor, ListFilter, ListPage};
pub use prune::PruneReport;
pub use runs::{CancelOutcome, RecordedRun};
pub use totals::TotalPolicy;

/// Handle on the history database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// The URL it was opened with (the migration lock takes a connection of its own).
    url: String,
    /// ListJobs totals of large results, shared by the clones of this handle.
    totals: Arc<totals::Totals<ListFilter>>,
}

impl Store {
    /// Connects to `url` (mysql://… or sqlite://…), creating the SQLite file
    /// and its folder when needed (and saying so): for the commands that may
    /// create a history (`serve`, `worker`, `migrate`).
    pub async fn connect(url: &str) -> Result<Store, Error> {
        Store::connect_to(url, true).await
    }

    /// Connects to an existing history only: a SQLite file that is not there
    /// is an error naming the flag, and nothing is created (`prune`).
    pub async fn open_existing(url: &str) -> Result<Store, Error> {
        Store::connect_to(url, false).await
    }

    async fn connect_to(url: &str, create: bool) -> Result<Store, Error> {
        let url = prepare_sqlite(url, create)?;
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(if url.starts_with("sqlite") { 8 } else { 32 })
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        let db = Database::connect(options).await.map_err(|e| {
            db_error(
                &format!("connect to the history database at {}", redact(&url)),
                e,
            )
        })?;
        if db.get_database_backend() == DbBackend::Sqlite {
            // WAL lets readers go on while a worker writes.
            db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;")
                .await
                .map_err(|e| db_error("configure SQLite", e))?;
        }
        Ok(Store {
            db,
            url,
            totals: Arc::new(totals::Totals::new(TotalPolicy::default())),
        })
    }

    /// This handle (and its later clones), with ListJobs totals counted as
    /// `policy` says and none kept yet.
    pub fn with_total_policy(mut self, policy: TotalPolicy) -> Store {
        self.totals = Arc::new(totals::Totals::new(policy));
        self
    }

    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the history database");
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

impl Store {
    /// A secret of the service's own (32 random bytes), made on first use and
    /// shared by every process through the history.
    pub async fn service_secret(&self, name: &str) -> Result<Vec<u8>, Error> {
        use entities::service_secrets;
        use sea_orm::{ActiveValue::Set, EntityTrait};
        let read = || async {
            service_secrets::Entity::find_by_id(name.to_owned())
                .one(&self.db)
                .await
                .map_err(|e| db_error("read service secret", e))
        };
        if read().await?.is_none() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| Error::internal("generate a secret", e.to_string()))?;
            let row = service_secrets::ActiveModel {
                name: Set(name.to_owned()),
                value: Set(hex::encode(bytes)),
            };
            // Another process may have made it first; theirs wins.
            let _ = service_secrets::Entity::insert(row)
                .exec_without_returning(&self.db)
                .await;
        }
        let row = read()
            .await?
            .ok_or_else(|| Error::internal("read service secret", format!("{name} is missing")))?;
        Ok(row.value.into_bytes())
    }
}

/// The file of a `sqlite:` URL; None for other URLs and in-memory databases.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

/// For `sqlite:` URLs, makes sure the folder exists and the file is created.
fn prepare_sqlite(url: &str, create: bool) -> Result<String, Error> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(url.to_owned());
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:" && !std::path::Path::new(path).exists() {
        if !create {
            return Err(Error::Config(format!(
                "--database-url (DATABASE_URL) {url}: there is no history at {path}; \
                 `migrate` or `serve` creates one"
            )));
        }
        tracing::info!(path, "creating a new history");
        if let Some(dir) = std::path::Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Config(format!(
                        "--database-url (DATABASE_URL) {url}: cannot create {}: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
    }
    let mode = if create { "rwc" } else { "rw" };
    Ok(if query.is_empty() {
        format!("sqlite://{path}?mode={mode}")
    } else {
        url.to_owned()
    })
}

/// Maps a database error: lost connections become `Unavailable` (the caller
/// may retry; nothing was written), anything else is internal.
pub(crate) fn db_error(context: &str, e: DbErr) -> Error {
    use sea_orm::sqlx::Error as Sqlx;
    let unavailable = match &e {
        // The server refused the connection for good (a wrong password, an
        // unknown database) or the URL is wrong: waiting will not help.
        DbErr::Conn(RuntimeErr::SqlxError(Sqlx::Database(db))) => {
            ["Too many connections", "server is shutting down"]
                .iter()
                .any(|transient| db.message().contains(transient))
        }
        DbErr::Conn(RuntimeErr::SqlxError(Sqlx::Configuration(_))) => false,
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            match inner {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_) => true,
                // Transient conditions the server reports as errors: worth a retry.
                Sqlx::Database(db) => {
                    let message = db.message();
                    [
                        "database is locked",
                        "Deadlock found",
                        "Lock wait timeout",
                        "server has gone away",
                        "Lost connection",
                        "Too many connections",
                    ]
                    .iter()
                    .any(|transient| message.contains(transient))
                }
                _ => false,
            }
        }
        _ => false,
    };
    if unavailable {
        return Error::Unavailable {
            what: "the history database",
            source: Box::new(e),
        };
    }
    // A refusal a person can act on: say what to do.
    let hint = match &e {
        DbErr::Conn(RuntimeErr::SqlxError(Sqlx::Database(db))) => {
            let message = db.message();
            if message.contains("Unknown database") {
                Some("create the database (CREATE DATABASE ...) or fix --database-url (DATABASE_URL)")
            } else if message.contains("Access denied") {
                Some("check the user and password in --database-url (DATABASE_URL)")
            } else {
                None
            }
        }
        _ => None,
    };
    match hint {
        Some(hint) => Error::Config(format!(
            "{context}: {}; {hint}",
            crate::domain::error_chain(&e)
        )),
        None => Error::internal(context, e),
    }
}
