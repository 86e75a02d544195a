//! SeaORM entities of the history; the schema itself lives in the `migration` crate.

pub mod credentials;
pub mod job_events;
pub mod job_output;
pub mod jobs;
pub mod service_secrets;
