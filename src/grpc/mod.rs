//! The gRPC face of the service: callers recognised (API keys, client
//! certificates), requests converted to and from protobuf, each call handed
//! to its use-case in [`crate::app`], errors mapped to gRPC statuses.

pub mod auth;
pub mod convert;
mod service;
mod status;
mod when_ready;

pub use service::JobApi;
pub use when_ready::WhenReady;
