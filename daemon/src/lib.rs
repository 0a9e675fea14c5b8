//! jobd: the mTLS gRPC job service.
//!
//! Modules, one concern each: [`config`], [`certs`], [`tls`], [`auth`], [`db`], [`output`],
//! [`output_store`], [`priority`], [`shim`], [`shim_server`], [`layer`],
//! [`executor`], [`runner`], [`manager`], [`service`], and [`server`] which ties them together.

pub mod auth;
pub mod certs;
pub mod check;
pub mod config;
pub mod db;
pub mod executor;
pub mod jobctl;
pub mod layer;
pub mod manager;
pub mod output;
pub mod output_store;
pub mod priority;
pub mod rootfs;
pub mod runner;
pub mod server;
pub mod service;
pub mod shim;
pub mod shim_server;
pub mod tls;
pub mod validate;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
pub mod testutil;
