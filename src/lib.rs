//! ansible-runner-service: a gRPC service that runs approved Ansible playbooks
//! on request, streams their events live and keeps their history.
//!
//! - [`grpc`]: the JobService (thin: validate, call the domain, convert);
//! - [`domain`]: jobs, states and input rules;
//! - [`store`]: the history (SeaORM; MariaDB or SQLite);
//! - [`live`]: live state, dispatch and fan-out (Redis via fred, or in-process);
//! - [`worker`]: claiming, leases, running playbooks, the sweeper;
//! - [`catalogue`]: the playbooks that may be run;
//! - [`app`]: wiring shared by the binary and the tests;
//! - [`startup`]: waiting for the history database and Redis at start.

pub mod app;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod live;
pub mod metrics;
pub mod pb;
pub mod startup;
pub mod store;
pub mod worker;
