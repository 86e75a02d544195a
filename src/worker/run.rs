//! One claimed job, from RUNNING to its terminal state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::executor::{RawEvent, RunOutput, StopReason};
use super::{ExecError, Masker, Worker};
use crate::domain::RunEnd;
use crate::domain::{Error, ErrorReason, Job, JobEvent, Outcome, Resolved};
use crate::live::LiveMessage;
use serde_json::{Map, Value};

/// Events stored per round trip to the history at most.
const EVENT_BATCH: usize = 200;
/// Bytes of events stored per round trip at most (well under MariaDB's
/// default 16 MiB max_allowed_packet).
const EVENT_BATCH_BYTES: usize = 4 << 20;
/// How long the recorder waits to fill a batch.
const EVENT_BATCH_WINDOW: Duration = Duration::from_millis(20);

impl Worker {
    pub(crate) async fn run_job(self: Arc<Self>, job: Job, hard_stop: CancellationToken) {
        tracing::info!(playbook = %job.spec.playbook, "running");
        let running = crate::metrics::get().jobs_running.clone();
        running.inc();
        let _running = scopeguard(move || {
            running.dec();
        });
        // RUNNING is announced before the dispatch entry is settled, so no
        // sweeper takes the job for one that was lost in between.
        crate::live::announce(&self.live, &job).await;
        self.settle(job.id).await;

        let (stop_tx, stop_rx) = watch::channel(None);
        let lost = CancellationToken::new();
        let guard = AbortOnDrop(tokio::spawn(self.clone().guard(
            job.clone(),
            stop_tx,
            hard_stop,
            lost.clone(),
        )));

        let secrets = match self.secrets_of(&job).await {
            Ok(secrets) => secrets,
            Err(outcome) => {
                self.finish(&job, &outcome, &lost).await;
                drop(guard);
                return;
            }
        };
        let mut spec = job.spec.clone();

        // A cancel, the timeout or a shutdown stops a slow fetch too.
        let mut stopping = stop_rx.clone();
        let prepared = tokio::select! {
            prepared = self.prepare(&job) => prepared,
            Ok(reason) = async { stopping.wait_for(Option::is_some).await.map(|r| *r) } => {
                Err(outcome_of(&job, RunOutput {
                    rc: -1,
                    stdout: String::new(),
                    stdout_truncated: false,
                    stats: Default::default(),
                    stopped: reason,
                }))
            }
        };
        let ready = match prepared {
            Ok(ready) => ready,
            Err(outcome) => {
                if lost.is_cancelled() {
                    tracing::warn!(job_id = %job.id, "lease lost; the outcome is not recorded");
                } else {
                    self.finish(&job, &outcome, &lost).await;
                }
                drop(guard);
                return;
            }
        };
        if !ready.resolved.is_empty() {
            self.record_resolved(&job, &ready.resolved).await;
        }
        let masker = Arc::new(Masker::new(&secrets).with(ready.secret_values()));
        spec.extra_vars.extend(secrets);

        // Bounded in events (each at most 4 MiB): a slow database slows
        // the playbook rather than filling the worker's memory.
        let (events_tx, events_rx) = mpsc::channel(64);
        let recorder = tokio::spawn(self.clone().record_events(
            job.id,
            job.attempt,
            events_rx,
            lost.clone(),
            masker.clone(),
        ));
        let pgid_worker = self.clone();
        let (id, attempt) = (job.id, job.attempt);
        let output = self
            .executor
            .run(
                job.id,
                &ready.prepared,
                &spec,
                events_tx,
                stop_rx,
                move |pgid| {
                    tokio::spawn(async move {
                        if let Err(e) = pgid_worker
                            .store
                            .record_pgid(id, attempt, &pgid_worker.id, pgid)
                            .await
                        {
                            tracing::warn!(job_id = %id, error = %e, "recording the process group");
                        }
                    });
                },
            )
            .await;
        // Every event is stored before the terminal status is.
        if let Err(e) = recorder.await {
            tracing::error!(job_id = %job.id, error = %e, "event recorder panicked");
        }
        let output = output
            .map(|mut out| {
                if !masker.is_empty() {
                    out.stdout = masker.text(&out.stdout);
                }
                out
            })
            .map_err(|e| e.to_string());
        drop(ready);

        let outcome = match output {
            Ok(RunOutput {
                stopped: Some(StopReason::LeaseLost),
                ..
            }) => None,
            Ok(out) => Some(outcome_of(&job, out)),
            Err(message) => Some(Outcome::not_run(ErrorReason::ExecutorError, message)),
        };
        if let Some(outcome) = outcome {
            if lost.is_cancelled() {
                tracing::warn!(job_id = %job.id, "lease lost; the outcome is not recorded");
            } else {
                self.finish(&job, &outcome, &lost).await;
            }
        } else {
            tracing::warn!(job_id = %job.id, "lease lost; the run was stopped and nothing is recorded");
        }
        drop(guard);
    }

    /// Records (fenced by the claim) and announces what the job's git
    /// sources resolved to, so GetJob shows it while the job runs.
    async fn record_resolved(&self, job: &Job, resolved: &Resolved) {
        tracing::info!(job_id = %job.id, source_commit = ?resolved.source_commit, inventory_commit = ?resolved.inventory_commit, "sources resolved");
        if let Err(e) = self
            .store
            .record_resolved(job.id, job.attempt, &self.id, resolved)
            .await
        {
            tracing::warn!(job_id = %job.id, error = %e, "recording the resolved sources");
        }
        let mut running = job.clone();
        running.resolved = resolved.clone();
        crate::live::announce(&self.live, &running).await;
    }

    /// The job's secret extra vars, taken from the live state; when they are
    /// gone the job must not run (the outcome says why).
    async fn secrets_of(&self, job: &Job) -> Result<Map<String, Value>, Outcome> {
        if !job.has_secrets {
            return Ok(Map::new());
        }
        let mut delays = crate::retry::SECRETS_READ.delays();
        loop {
            match self.live.take_secrets(job.id).await {
                Ok(Some(secrets)) => return Ok(secrets),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "taking the secret extra vars; retrying");
                    let Some(delay) = delays.next() else { break };
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Err(Outcome::not_run(
            ErrorReason::SecretsLost,
            "the job's secret extra vars were lost before it ran (the live state lost them); submit it again",
        ))
    }

    /// Commits the outcome, fenced by the claim; retries while the database
    /// is unreachable and the lease still holds.
    async fn finish(&self, job: &Job, outcome: &Outcome, lost: &CancellationToken) {
        let mut delays = crate::retry::RUN_RECORD.delays();
        loop {
            let now = chrono::Utc::now();
            match self
                .store
                .finish(job.id, job.attempt, &self.id, outcome, now)
                .await
            {
                Ok(Some(done)) => {
                    tracing::info!(job_id = %job.id, status = %done.status, "finished");
                    crate::live::announce(&self.live, &done).await;
                    return;
                }
                Ok(None) => {
                    tracing::warn!(job_id = %job.id, "the claim was lost before the outcome was recorded");
                    return;
                }
                Err(e @ Error::Unavailable { .. }) if !lost.is_cancelled() => {
                    tracing::warn!(job_id = %job.id, error = %e, "recording the outcome; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(crate::retry::RUN_RECORD.max)).await;
                }
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "recording the outcome");
                    return;
                }
            }
        }
    }

    /// Holds the lease and turns cancel requests, the timeout and shutdown
    /// into a stop of the run. Sets `lost` when the lease is gone.
    async fn guard(
        self: Arc<Self>,
        job: Job,
        stop: watch::Sender<Option<StopReason>>,
        hard_stop: CancellationToken,
        lost: CancellationToken,
    ) {
        let request = |reason: StopReason| {
            stop.send_if_modified(|current| {
                if current.is_none() {
                    *current = Some(reason);
                    true
                } else {
                    false
                }
            });
        };
        let lease = self.timing.lease;
        let mut renew = tokio::time::interval(lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_until = Instant::now() + lease;
        let mut cancels = self.live.hub().cancel_requests();
        let deadline = tokio::time::sleep(Duration::from_secs(u64::from(job.spec.timeout_seconds)));
        tokio::pin!(deadline);
        let mut timed_out = false;
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let until = crate::domain::later(chrono::Utc::now(), lease);
                    // A hung connection must not hold the guard past the lease.
                    let renewal = tokio::time::timeout(
                        lease / 3,
                        self.store.renew_lease(job.id, job.attempt, &self.id, until),
                    )
                    .await
                    .unwrap_or_else(|_| Err(Error::Unavailable {
                        what: "the history database",
                        source: "lease renewal timed out".into(),
                    }));
                    match renewal {
                        Ok(Some(cancel)) => {
                            lease_until = Instant::now() + lease;
                            if cancel {
                                request(StopReason::Cancel);
                            }
                        }
                        Ok(None) => {
                            lost.cancel();
                            request(StopReason::LeaseLost);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %job.id, error = %e, "renewing the lease");
                            if Instant::now() >= lease_until {
                                lost.cancel();
                                request(StopReason::LeaseLost);
                                return;
                            }
                        }
                    }
                }
                received = cancels.recv() => match received {
                    Ok(id) if id == job.id => request(StopReason::Cancel),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => cancels = self.live.hub().cancel_requests(),
                },
                _ = lost.cancelled() => {
                    request(StopReason::LeaseLost);
                    return;
                }
                _ = &mut deadline, if !timed_out => {
                    timed_out = true;
                    request(StopReason::Timeout);
                }
                _ = hard_stop.cancelled(), if !hard_stop.is_cancelled() || stop.borrow().is_none() => {
                    request(StopReason::Shutdown);
                }
            }
        }
    }

    /// Numbers, stores (in batches) and then publishes the run's events.
    async fn record_events(
        self: Arc<Self>,
        job_id: Uuid,
        attempt: u32,
        mut events: mpsc::Receiver<RawEvent>,
        lost: CancellationToken,
        masker: Arc<Masker>,
    ) -> u64 {
        let mut seq = 0u64;
        let mut open = true;
        while open {
            let Some(first) = events.recv().await else {
                break;
            };
            let mut bytes = first.size;
            let mut batch = vec![first];
            let window = Instant::now() + EVENT_BATCH_WINDOW;
            while batch.len() < EVENT_BATCH && bytes < EVENT_BATCH_BYTES {
                match tokio::time::timeout_at(window, events.recv()).await {
                    Ok(Some(event)) => {
                        bytes += event.size;
                        batch.push(event);
                    }
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let batch: Vec<JobEvent> = batch
                .into_iter()
                .map(|mut raw| {
                    seq += 1;
                    if !masker.is_empty() {
                        raw.stdout = masker.text(&raw.stdout);
                        masker.map(&mut raw.event_data);
                    }
                    JobEvent {
                        job_id,
                        seq,
                        time: raw.time.unwrap_or_else(chrono::Utc::now),
                        event: raw.event,
                        host: raw.host,
                        task: raw.task,
                        play: raw.play,
                        stdout: raw.stdout,
                        event_data: raw.event_data,
                    }
                })
                .collect();
            let mut batch = batch;
            let mut delays = crate::retry::EVENT_RECORD.delays();
            let mut slimmed = false;
            loop {
                match self.store.insert_events(attempt, &self.id, &batch).await {
                    Ok(true) => break,
                    Ok(false) => {
                        tracing::warn!(job_id = %job_id, "lease lost; events are no longer recorded");
                        lost.cancel();
                        return seq;
                    }
                    Err(e @ Error::Unavailable { .. }) if !lost.is_cancelled() => {
                        tracing::warn!(job_id = %job_id, error = %e, "storing events; retrying");
                        let delay = delays.next().unwrap_or(crate::retry::EVENT_RECORD.max);
                        tokio::time::sleep(delay).await;
                    }
                    // The database refuses these events as they are (too large,
                    // characters it cannot store): keep their place in the
                    // sequence with their essentials only.
                    Err(e) if !slimmed => {
                        tracing::error!(job_id = %job_id, error = %e, "storing events; storing them slimmed");
                        slimmed = true;
                        batch.iter_mut().for_each(slim);
                    }
                    Err(e) => {
                        tracing::error!(job_id = %job_id, error = %e, "storing events failed; giving up the run");
                        lost.cancel();
                        return seq;
                    }
                }
            }
            for event in batch {
                if let Err(e) = self.live.publish(job_id, &LiveMessage::Event(event)).await {
                    tracing::warn!(job_id = %job_id, error = %e, "publishing an event");
                }
            }
        }
        seq
    }
}

/// An event reduced to what any database stores: names and a short stdout.
fn slim(event: &mut JobEvent) {
    let ascii =
        |s: &str, max: usize| -> String { s.chars().filter(|c| c.is_ascii()).take(max).collect() };
    event.stdout = ascii(&event.stdout, 64 << 10);
    event.task = ascii(&event.task, 1024);
    event.play = ascii(&event.play, 1024);
    event.host = ascii(&event.host, 255);
    event.event_data = Map::new();
    event.event_data.insert(
        "slimmed".into(),
        Value::String("the event was too large or not storable as emitted".into()),
    );
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Aborts a spawned task when dropped (also when the owner panics).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The terminal state of a run that ended by itself or was stopped (the
/// rules are the domain's: [`Outcome::of_run`]).
fn outcome_of(job: &Job, out: RunOutput) -> Outcome {
    let end = match out.stopped {
        Some(StopReason::Cancel) => RunEnd::Canceled,
        Some(StopReason::Timeout) => RunEnd::TimedOut {
            timeout_seconds: job.spec.timeout_seconds,
        },
        Some(StopReason::Shutdown) => RunEnd::Shutdown,
        Some(StopReason::LeaseLost) => RunEnd::LeaseLost,
        None => RunEnd::Exited(out.rc),
    };
    let result = crate::domain::JobResult {
        rc: out.rc,
        stdout: out.stdout,
        stdout_truncated: out.stdout_truncated,
        stats: out.stats,
    };
    Outcome::of_run(end, result)
}

impl From<ExecError> for Error {
    fn from(e: ExecError) -> Self {
        Error::internal("run playbook", e)
    }
}
