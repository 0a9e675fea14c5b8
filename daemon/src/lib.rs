//! jobd: the mTLS gRPC job service.
//!
//! Modules, one concern each: [`config`], [`certs`], [`tls`], [`auth`], [`db`], [`output`],
//! [`executor`], [`manager`], [`service`], and [`server`] which ties them together.

pub mod auth;
pub mod certs;
pub mod config;
pub mod db;
pub mod output;
pub mod tls;
