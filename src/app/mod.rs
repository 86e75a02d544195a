//! The use-cases: one function for each thing a caller can ask of the
//! service (submit, get, list, watch, cancel, prune), whoever asks: the
//! gRPC handlers, the CLI's `prune`, the periodic pruning, and later
//! schedules and the console. A use-case checks the caller's rights and the
//! input rules, then works the history and the live state; it knows nothing
//! of protobuf or gRPC.

mod cancel;
mod list;
pub mod page_token;
mod prune;
mod submit;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::catalogue::Catalogue;
use crate::defaults;
use crate::domain::validate::Limits;
use crate::domain::{Caller, Error, Job};
use crate::live::{self, LiveState};
use crate::settings::Settings;
use crate::startup::{self, redact};
use crate::store::Store;

pub use list::{ListQuery, ListResult, StatusFilter};
pub use page_token::PageToken;
pub use prune::{prune, prune_periodically};
pub use watch::{WatchItem, WatchMessage, WatchStop};

/// Current time at the precision the history keeps (microseconds).
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    crate::domain::from_micros(chrono::Utc::now().timestamp_micros())
}

/// Longest a use-case waits for the live state before it goes on without it
/// (a submit after its commit, a read before it asks the history).
pub(crate) const LIVE_WAIT: Duration = Duration::from_millis(defaults::LIVE_WAIT_MS);

/// The providers file, read and checked; none configured: no git sources.
pub fn load_providers(settings: &Settings) -> Result<crate::domain::Providers, Error> {
    let Some(path) = &settings.git.providers_file else {
        return Ok(Default::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "--git-providers (GIT_PROVIDERS_FILE) {}: {e}",
            path.display()
        ))
    })?;
    crate::domain::Providers::parse(&text).map_err(|e| {
        Error::Config(format!(
            "--git-providers (GIT_PROVIDERS_FILE) {}: {e}; see the README's \"Git sources\"",
            path.display()
        ))
    })
}

/// What request handlers share.
pub struct AppState {
    pub store: Store,
    pub live: Arc<dyn LiveState>,
    pub catalogue: Catalogue,
    pub limits: Limits,
    /// How long CancelJob waits for a running job to stop before answering.
    pub cancel_wait: Duration,
    /// Signs page tokens; the same on every API server.
    pub page_key: Vec<u8>,
    pub max_watches_per_client: usize,
    watch_slots: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl AppState {
    /// Connects the history (applying migrations, or checking the schema
    /// with `migrate` off) and the live state, waiting up to
    /// `connect_timeout` for each to be reachable.
    pub async fn connect(settings: &Settings) -> Result<Arc<AppState>, Error> {
        let catalogue = Catalogue::open(&settings.playbooks_dir)?;
        let mut limits = settings.limits.clone();
        limits.providers = Arc::new(load_providers(settings)?);
        let store = connect_store(&settings.database_url, settings.connect_timeout).await?;
        if settings.migrate {
            store.migrate().await?;
        } else {
            store.check_schema().await?;
        }
        let page_key = store.service_secret("page_token").await?;
        let live = match settings.redis_url.as_deref() {
            Some(url) => {
                startup::retry("Redis", &redact(url), settings.connect_timeout, || {
                    live::connect(Some(url), &settings.redis_prefix)
                })
                .await?
            }
            None => live::connect(None, &settings.redis_prefix).await?,
        };
        Ok(Arc::new(AppState {
            store,
            live,
            catalogue,
            limits,
            cancel_wait: settings.kill_grace
                + Duration::from_secs(defaults::CANCEL_WAIT_EXTRA_SECONDS),
            page_key,
            max_watches_per_client: settings.max_watches_per_client,
            watch_slots: Default::default(),
        }))
    }

    /// A place for one more watch stream of this caller, held while it lasts.
    pub fn watch_slot(
        &self,
        caller: &crate::domain::Caller,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let slots = {
            let mut all = self.watch_slots.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(caller.label().to_owned())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(self.max_watches_per_client))
                })
                .clone()
        };
        slots.try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "client {} already has {} open watch streams, the most allowed",
                caller.label(),
                self.max_watches_per_client
            ))
        })
    }

    /// GetJob: the job, if the caller may see it.
    pub async fn get(&self, caller: &Caller, job_id: &str) -> Result<Job, Error> {
        caller.require(crate::domain::Action::Read)?;
        let id = crate::domain::validate::job_id(job_id)?;
        caller.visible(self.current_job(id).await?)
    }

    /// The job's current state: the live state first, then the history
    /// (which also refills the live state).
    pub(crate) async fn current_job(&self, id: Uuid) -> Result<Job, Error> {
        // While Redis is unreachable (a restart, a Sentinel failover) its
        // client queues commands until its own timeout; reads go to the
        // history after LIVE_WAIT instead.
        let live = tokio::time::timeout(LIVE_WAIT, self.live.get_job(id))
            .await
            .unwrap_or_else(|_| Err(crate::live::LiveError("timed out".into())));
        match live {
            Ok(Some(live)) => {
                let mut job = live.job;
                if live.stdout_in_history {
                    if let Some(result) = &mut job.result {
                        result.stdout = self.store.stdout(id).await?;
                    }
                }
                return Ok(job);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "live state unavailable; reading the history")
            }
        }
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
        match tokio::time::timeout(LIVE_WAIT, self.live.put_job(&job)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(job_id = %id, error = %e, "refilling the live state"),
            Err(_) => tracing::debug!(job_id = %id, "refilling the live state timed out"),
        }
        Ok(job)
    }

    /// ListPlaybooks: the catalogue's playbooks the caller may run.
    pub async fn playbooks(
        &self,
        caller: &Caller,
    ) -> Result<Vec<crate::catalogue::PlaybookInfo>, Error> {
        let catalogue = self.catalogue.clone();
        let playbooks = tokio::task::spawn_blocking(move || catalogue.list())
            .await
            .map_err(|e| Error::internal("list playbooks", e))??;
        Ok(playbooks
            .into_iter()
            .filter(|p| caller.scopes.may_run(&p.name))
            .collect())
    }

    pub async fn close(&self) {
        self.live.close().await;
        self.store.clone().close().await;
    }
}

/// The history database, waiting up to `timeout` for it to be reachable.
pub async fn connect_store(url: &str, timeout: Duration) -> Result<Store, Error> {
    let store = startup::retry("the history database", &redact(url), timeout, || {
        Store::connect(url)
    })
    .await?;
    tracing::info!(history = %redact(url), "history database connected");
    Ok(store)
}

/// Like [`connect_store`], for commands that use a history but never create
/// or migrate one (`prune`): its schema must be the one this binary knows.
pub async fn open_store(url: &str, timeout: Duration) -> Result<Store, Error> {
    let store = startup::retry("the history database", &redact(url), timeout, || {
        Store::open_existing(url)
    })
    .await?;
    tracing::info!(history = %redact(url), "history database connected");
    store.check_schema().await?;
    Ok(store)
}
