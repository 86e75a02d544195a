//! Generated protobuf types, server and client of `ansible_runner.v1`.

#![allow(clippy::all, missing_docs)]

pub mod ansible_runner {
    pub mod v1 {
        tonic::include_proto!("ansible_runner.v1");
    }
}

pub use ansible_runner::v1::*;

/// The encoded descriptors of the API, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/ansible_runner_v1_descriptor.bin"
));
