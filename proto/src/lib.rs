//! The `jobworker.v1` gRPC API: messages, the `JobService` server trait and its client.
//!
//! Generated at build time from `jobworker/v1/jobs.proto` with protox and tonic-prost-build.

/// Package `jobworker.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("jobworker.v1");
}

pub mod codec;

pub use v1::*;
