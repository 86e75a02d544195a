//! The JobService handlers: each recognises the caller, converts the request,
//! calls its use-case in [`crate::app`] and converts the answer. Nothing else
//! happens here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::convert::{self, job_to_pb};
use crate::app::{AppState, ListQuery, WatchStop};
use crate::domain::Caller;
use crate::pb::{self, job_service_server::JobService};

/// The JobService implementation.
pub struct JobApi {
    state: Arc<AppState>,
    shutdown: CancellationToken,
}

impl JobApi {
    pub fn new(state: Arc<AppState>, shutdown: CancellationToken) -> Self {
        JobApi { state, shutdown }
    }
}

/// The caller the interceptor recognised; a request without one (which the
/// interceptor never lets through) is refused rather than let in.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller"))
}

/// When the caller's `grpc-timeout` runs out. tonic enforces it for unary
/// calls; a stream checks it itself.
fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(tokio::time::Instant::now() + timeout)
}

fn job_response<T>(
    job: &crate::domain::Job,
    wrap: impl FnOnce(Option<pb::Job>) -> T,
) -> Response<T> {
    Response::new(wrap(Some(job_to_pb(job))))
}

fn watch_stop(stop: WatchStop) -> Status {
    match stop {
        WatchStop::DeadlineExceeded => {
            Status::deadline_exceeded("the call's deadline passed; resume with after_sequence")
        }
        WatchStop::Shutdown => {
            Status::unavailable("the server is shutting down; resume with after_sequence")
        }
        WatchStop::Failed(e) => e.into(),
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = caller(&request)?;
        let submission = convert::submission(request.into_inner());
        let job = self.state.submit(&caller, submission).await?;
        Ok(job_response(&job, |job| pb::SubmitJobResponse { job }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.state.get(&caller, &request.get_ref().job_id).await?;
        Ok(job_response(&job, |job| pb::GetJobResponse { job }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let query = ListQuery {
            page_size: req.page_size.into(),
            page_token: req.page_token,
            status: convert::status_filter(req.status),
            playbook: req.playbook,
            submitted_by: req.submitted_by,
            queue: req.queue,
        };
        let page = self.state.list(&caller, query).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.iter().map(job_to_pb).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total as i64,
        }))
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let deadline = grpc_deadline(request.metadata());
        let req = request.into_inner();
        let messages = self
            .state
            .watch(
                &caller,
                &req.job_id,
                req.after_sequence,
                self.shutdown.clone(),
                deadline,
            )
            .await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(messages).map(|message| {
            message
                .map(|(sequence, item)| convert::watch_response(sequence, item))
                .map_err(watch_stop)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self
            .state
            .cancel(&caller, &request.get_ref().job_id)
            .await?;
        Ok(job_response(&job, |job| pb::CancelJobResponse { job }))
    }

    async fn list_playbooks(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        let caller = caller(&request)?;
        let playbooks = self.state.playbooks(&caller).await?;
        Ok(Response::new(pb::ListPlaybooksResponse {
            playbooks: playbooks
                .into_iter()
                .map(|p| pb::Playbook {
                    name: p.name,
                    description: p.description,
                })
                .collect(),
        }))
    }
}
