//! The gRPC face of the service: a thin JobService that validates requests,
//! calls the domain and store, and converts to and from protobuf.

pub mod auth;
pub mod convert;
mod page_token;
mod service;
mod status;
mod watch;
mod when_ready;

pub use page_token::PageToken;
pub use service::JobApi;
pub use status::error_chain;
pub use when_ready::WhenReady;
