//! The WatchJob producer: snapshot, events in sequence without gaps or
//! duplicates, then the terminal job. Events arrive through the fan-out while
//! the watcher keeps up; whenever it falls behind, misses a message or is
//! unsure, it reads from the history, which holds every event before the
//! terminal status is committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert::{event_to_pb, job_to_pb};
use crate::app::AppState;
use crate::domain::{Error, Job};
use crate::live::LiveMessage;
use crate::pb::{watch_job_response::Kind, WatchJobResponse};

/// How often a watcher re-checks the history without a fan-out message:
/// a safety net for messages lost while the live state was unreachable.
const RECHECK: Duration = Duration::from_secs(2);
/// Events read from the history per query.
const CATCH_UP_BATCH: u64 = 500;

type Tx = mpsc::Sender<Result<WatchJobResponse, Status>>;

pub async fn produce(
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
        send(&tx, &shutdown, last, Kind::Snapshot(watched(&job))).await?;
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
                send(&tx, &shutdown, last, Kind::StatusChange(watched(&job))).await?;
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
                            send(&tx, &shutdown, last, Kind::Event(event_to_pb(&event))).await?;
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
            let _ = tx.try_send(Err(Status::deadline_exceeded(
                "the call's deadline passed; resume with after_sequence",
            )));
        }
        Err(Stop::Shutdown) => {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the server is shutting down; resume with after_sequence",
                )))
                .await;
        }
        Err(Stop::Failed(e)) => {
            let _ = tx.send(Err(e.into())).await;
        }
    }
}

/// The job as a watch sends it: without result.stdout, which the events
/// already carry piece by piece (and which may pass clients' 4 MiB limit).
fn watched(job: &Job) -> crate::pb::Job {
    let mut job = job_to_pb(job);
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
    let mut backoff = Duration::from_millis(200);
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(e) if backoff <= Duration::from_secs(3) => {
                tracing::warn!(error = %crate::grpc::error_chain(&e), "watch: reading the history; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
                backoff *= 2;
            }
            Err(e) => return Err(Stop::Failed(e)),
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
    kind: Kind,
) -> Result<(), Stop> {
    let message = Ok(WatchJobResponse {
        sequence,
        kind: Some(kind),
    });
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
            send(tx, shutdown, last, Kind::Event(event_to_pb(event))).await?;
        }
        if done {
            return Ok(last);
        }
    }
}
