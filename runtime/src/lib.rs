//! jobworker's OCI runtime: a container from a bundle, in real namespaces and cgroups.
//!
//! The path of a container start reads top to bottom: [`spec`] loads and checks the bundle,
//! [`container::create`] makes the state directory and cgroup, [`launch`] clones the child into
//! its [`namespaces`] and speaks the [`handshake`] with it, and [`init`] (inside job-init) builds
//! the container's filesystem with [`mounts`], sets [`process`] identity and limits, and execs.

pub mod cgroups;
pub mod check;
pub mod cli_assets;
pub mod container;
pub mod features;
pub mod handshake;
pub mod hooks;
pub mod init;
pub mod launch;
pub mod logging;
pub mod mount_attr;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod seccomp;
pub mod seccomp_default;
pub mod spec;
pub mod state;
pub mod stats;
pub mod tty;
pub mod v1_roots;
