//! ansible-runner-service: a gRPC service that runs approved Ansible playbooks
//! on request, streams their events live and keeps their history.
//!
//! The layers, bottom up; each uses only those listed before it:
//! 1. [`defaults`]: every default, in one place;
//! 2. [`domain`]: jobs, their transitions, callers and their rights, input
//!    rules; pure (no I/O);
//! 3. [`settings`]: what a process is told to do;
//! 4. [`retry`], [`metrics`], [`startup`] (waiting for dependencies at
//!    start), then [`store`] (the history: SeaORM on MariaDB or SQLite),
//!    [`live`] (live state, dispatch and fan-out: Redis via fred, or
//!    in-process), [`catalogue`] (the playbooks that may be run) and
//!    [`sources`] (git sources: the workers' cache of mirrors and checkouts)
//!    and [`credentials`] (sealing named credentials with the master key);
//! 5. [`app`]: the use-cases (submit, get, list, watch, cancel, prune), one
//!    function each, whoever calls them;
//! 6. [`worker`]: claiming jobs, leases, running playbooks, the sweeper;
//! 7. [`pb`] and [`grpc`]: the API's messages, and the JobService handlers
//!    (recognise the caller, convert, call the use-case);
//! 8. [`server`]: assembling a process (API, workers, sweeper, shutdown);
//! 9. [`cli`], [`config`]: the command line, read by `main`.

pub mod defaults;

pub mod domain;

pub mod settings;

pub mod catalogue;
pub mod credentials;
pub mod live;
pub mod metrics;
pub mod retry;
pub mod sources;
pub mod startup;
pub mod store;

pub mod app;

pub mod worker;

pub mod grpc;
pub mod pb;

pub mod server;

pub mod cli;
pub mod config;
