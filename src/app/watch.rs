//! The WatchJob producer: snapshot, events in sequence without gaps or
//! duplicates, then the terminal job. Events arrive through the fan-out while
//! the watcher keeps up; whenever it falls behind, misses a message or is
//! unsure, it reads from the history, which holds every event before the
//! terminal status is committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::domain::{validate, Action, Caller, Error, Job, JobEvent};
use crate::live::LiveMessage;

/// How often a watcher re-checks the history without a fan-out message:
/// a safety net for messages lost while the live state was unreachable.
const RECHECK: Duration = Duration::from_secs(2);
/// Events read from the history per query.
const CATCH_UP_BATCH: u64 = 500;

/// What a watch sends, each with the sequence of the last event sent.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The job when the watch started.
    Snapshot(Job),
    Event(JobEvent),
    /// The job in its terminal state: the last message.
    StatusChange(Job),
}

/// Why a watch ended before the job did.
#[derive(Debug)]
pub enum WatchStop {
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The server is shutting down.
    Shutdown,
    Failed(Error),
}

/// One message of a watch: (sequence, item), or why it stopped.
pub type WatchMessage = Result<(u64, WatchItem), WatchStop>;

type Tx = mpsc::Sender<WatchMessage>;

impl AppState {
    /// WatchJob: a stream of the job's snapshot, its events after
    /// `after_sequence` in order without gaps or duplicates, then its terminal
    /// state. It ends early at `deadline`, at `shutdown`, or when the
    /// receiver is dropped.
    pub async fn watch(
        self: &Arc<Self>,
        caller: &Caller,
        job_id: &str,
        after_sequence: u64,
        shutdown: CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<mpsc::Receiver<WatchMessage>, Error> {
        caller.require(Action::Read)?;
        let id = validate::job_id(job_id)?;
        let slot = self.watch_slot(caller)?;
        // Subscribe before the first read, so nothing falls between the two.
        let subscription = self.live.hub().subscribe(id);
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))?;
        let job = caller.visible(job)?;
        let (tx, rx) = mpsc::channel(64);
        let producer = produce(
            self.clone(),
            job,
            after_sequence,
            subscription,
            tx,
            shutdown,
            deadline,
        );
        let open = crate::metrics::get().watch_streams.clone();
        open.inc();
        tokio::spawn(async move {
            producer.await;
            open.dec();
            drop(slot);
        });
        Ok(rx)
    }
}

async fn produce(
    state: Arc<AppState>,
    job: Job,
    after_sequence: u64,
    mut subscription: broadcast::Receiver<LiveMessage>,
    tx: Tx,
    shutdown: CancellationToken,
    deadline: Option<tokio::time::Instant>,
) {
    let job_id = job.id;
    let stream = async {
        let mut last = after_sequence;
        send(&tx, &shutdown, last, WatchItem::Snapshot(watched(&job))).await?;
        let mut job = job;
        // Whether the fan-out told us of the terminal state (its publisher
        // updated the live state first).
        let mut announced = job.status.is_terminal();
        loop {
            // The status is read before the events: a terminal status is
            // committed after the run's last event, so the read below sees all.
            let terminal = job.status.is_terminal();
            last = catch_up(&state, &tx, &shutdown, job_id, last).await?;
            if terminal {
                if !announced {
                    // Learned from the history before the fan-out: make sure a
                    // GetJob after this message cannot read an older state.
                    if let Err(e) = state.live.put_job(&job).await {
                        tracing::debug!(job_id = %job_id, error = %e, "refreshing the live state");
                    }
                }
                send(&tx, &shutdown, last, WatchItem::StatusChange(watched(&job))).await?;
                return Ok(());
            }
            let recheck = tokio::time::sleep(RECHECK);
            tokio::pin!(recheck);
            // Follow the fan-out until something sends us back to the history.
            loop {
                tokio::select! {
                    received = subscription.recv() => match received {
                        Ok(LiveMessage::Event(event)) if event.seq == last + 1 => {
                            last = event.seq;
                            send(&tx, &shutdown, last, WatchItem::Event(event)).await?;
                        }
                        Ok(LiveMessage::Event(event)) if event.seq <= last => {}
                        Ok(LiveMessage::Changed { status }) if !status.is_terminal() => {}
                        Ok(LiveMessage::Changed { .. }) => {
                            announced = true;
                            break;
                        }
                        // A gap, a terminal status, or a lag: read the history.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            subscription = state.live.hub().subscribe(job_id);
                            break;
                        }
                    },
                    _ = &mut recheck => break,
                    _ = tx.closed() => return Err(Stop::ClientGone),
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            }
            job = patiently(&shutdown, || state.store.get_job(job_id))
                .await?
                .ok_or_else(|| Stop::Failed(Error::JobNotFound(job_id.to_string())))?;
        }
    };
    let outcome = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, stream)
            .await
            .unwrap_or(Err(Stop::DeadlineExceeded)),
        None => stream.await,
    };
    match outcome {
        Ok(()) | Err(Stop::ClientGone) => {}
        Err(Stop::DeadlineExceeded) => {
            let _ = tx.try_send(Err(WatchStop::DeadlineExceeded));
        }
        Err(Stop::Shutdown) => {
            let _ = tx.send(Err(WatchStop::Shutdown)).await;
        }
        Err(Stop::Failed(e)) => {
            let _ = tx.send(Err(WatchStop::Failed(e))).await;
        }
    }
}

/// The job as a watch sends it: without result.stdout, which the events
/// already carry piece by piece (and which may pass clients' 4 MiB limit).
fn watched(job: &Job) -> Job {
    let mut job = job.clone();
    if let Some(result) = &mut job.result {
        result.stdout.clear();
    }
    job
}

/// Reads from the history, retrying a failed read a few times (about 6 s in
/// all) before the watch gives up: a database hiccup should not end streams.
async fn patiently<T, F, Fut>(shutdown: &CancellationToken, read: F) -> Result<T, Stop>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delays = crate::retry::HISTORY_READ.delays();
    loop {
        let error = match read().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        match delays.next() {
            Some(delay) => {
                tracing::warn!(error = %crate::domain::error_chain(&error), "watch: reading the history; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            }
            None => return Err(Stop::Failed(error)),
        }
    }
}

enum Stop {
    ClientGone,
    DeadlineExceeded,
    Shutdown,
    Failed(Error),
}

async fn send(
    tx: &Tx,
    shutdown: &CancellationToken,
    sequence: u64,
    item: WatchItem,
) -> Result<(), Stop> {
    let message = Ok((sequence, item));
    // A client that stops reading must not hold up a shutdown.
    tokio::select! {
        sent = tx.send(message) => sent.map_err(|_| Stop::ClientGone),
        _ = shutdown.cancelled() => Err(Stop::Shutdown),
    }
}

/// Sends every stored event after `last`; returns the new last sequence.
async fn catch_up(
    state: &AppState,
    tx: &Tx,
    shutdown: &CancellationToken,
    job_id: uuid::Uuid,
    mut last: u64,
) -> Result<u64, Stop> {
    loop {
        let events = patiently(shutdown, || {
            state.store.events_after(job_id, last, CATCH_UP_BATCH)
        })
        .await?;
        let done = (events.len() as u64) < CATCH_UP_BATCH;
        for event in &events {
            last = event.seq;
            send(tx, shutdown, last, WatchItem::Event(event.clone())).await?;
        }
        if done {
            return Ok(last);
        }
    }
}
