//! The job domain: what a job is, its states and transitions, and the rules
//! its input must follow. No transport, database or cache types in here.

mod error;
mod job;
pub mod validate;

pub use error::{Error, FieldViolation};
pub use job::*;
