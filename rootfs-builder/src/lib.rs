//! Minimal root filesystems for jobs: host programs with exactly what they load
//! ([`host::build`]), and OCI images unpacked without ever writing outside the target
//! ([`image::build`]). Builds are atomic and carry a content key ([`output`]).

pub mod bundle;
pub mod closure;
pub mod elf;
pub mod extract;
pub mod host;
pub mod hostcopy;
pub mod image;
pub mod ldcache;
pub mod output;
pub mod python;
pub mod resolve;

pub use host::{BuiltRootfs, HostRequest};
pub use image::ImageRequest;
