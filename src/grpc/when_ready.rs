//! The JobService before the process has connected its history and live
//! state: the port is open, health says NOT_SERVING, and calls answer
//! UNAVAILABLE (which clients retry) until the service is put in place.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::JobApi;
use crate::pb::job_service_server::JobServiceServer;

type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// A JobService slot, empty until [`WhenReady::set`].
#[derive(Clone, Default)]
pub struct WhenReady {
    slot: Arc<OnceLock<Inner>>,
}

impl WhenReady {
    /// Puts the real service in place; later calls go to it.
    pub fn set<S, B>(&self, service: S)
    where
        S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let boxed = BoxCloneSyncService::new(service.map_response(|r| r.map(Body::new)));
        let _ = self.slot.set(boxed);
    }
}

impl NamedService for WhenReady {
    const NAME: &'static str = <JobServiceServer<JobApi> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for WhenReady {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.slot.get() {
            Some(service) => Box::pin(service.clone().oneshot(request)),
            None => Box::pin(async {
                Ok(tonic::Status::unavailable(
                    "the service is starting: not connected to its history database and live state yet",
                )
                .into_http())
            }),
        }
    }
}
