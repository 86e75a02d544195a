//! CancelJob: a PENDING job ends at once; a RUNNING one is stopped by its
//! worker, and the answer waits a little for that.

use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::domain::{validate, Action, Caller, Error, Job};
use crate::live::LiveMessage;
use crate::store::CancelOutcome;

impl AppState {
    /// CancelJob: the job CANCELED, or still RUNNING with its cancel
    /// requested when its run did not stop within `cancel_wait`.
    pub async fn cancel(&self, caller: &Caller, job_id: &str) -> Result<Job, Error> {
        caller.require(Action::Cancel)?;
        let id = validate::job_id(job_id)?;
        // Another client's job is NOT_FOUND to a caller that sees its own only.
        caller.visible(self.current_job(id).await?)?;
        let mut changes = self.live.hub().subscribe(id);
        match self
            .store
            .cancel(id, super::now(), caller.name.as_deref())
            .await?
        {
            CancelOutcome::Canceled(job) => {
                tracing::info!(job_id = %id, client = caller.label(), "pending job canceled");
                crate::live::announce(&self.live, &job).await;
                Ok(job)
            }
            CancelOutcome::Requested(job) => {
                tracing::info!(job_id = %id, client = caller.label(), "cancel requested for a running job");
                if let Err(e) = self.live.publish_cancel(id).await {
                    // The worker also sees the request when it renews its lease.
                    tracing::warn!(job_id = %id, error = %e, "publishing the cancel request");
                }
                // Answer with the terminal job when the stop is quick.
                let ended = tokio::time::timeout(self.cancel_wait, async {
                    loop {
                        match changes.recv().await {
                            Ok(LiveMessage::Changed { status }) if status.is_terminal() => break,
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            // The hub dropped this job's channel: follow the new one.
                            Err(RecvError::Closed) => changes = self.live.hub().subscribe(id),
                        }
                    }
                })
                .await;
                match ended {
                    Ok(()) => Ok(self.store.get_job(id).await?.unwrap_or(job)),
                    Err(_) => Ok(job),
                }
            }
        }
    }
}
