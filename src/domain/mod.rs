//! The job domain: what a job is, its states and transitions, and the rules
//! its input must follow. No transport, database or cache types in here.

pub mod access;
pub mod credential;
mod error;
mod job;
pub mod source;
mod transition;
pub mod validate;

pub use access::{Action, Caller, Scopes, Visibility};
pub use error::{error_chain, Error, FieldViolation};
pub use job::*;
pub use source::{GitFile, Providers, RoleSource, Source};
pub use transition::{Lost, RunEnd};
