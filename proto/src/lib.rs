//! The `jobworker.v1` gRPC API (generated with protox + tonic-prost-build).
