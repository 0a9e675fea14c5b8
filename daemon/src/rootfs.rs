//! The default rootfs: host programs (and python3 with its standard library) copied by the
//! rootfs-builder library into `DATA/rootfs`, shared read-only by every job.

use std::path::{Path, PathBuf};

use crate::executor::ExecError;

/// The programs of the default rootfs (python3 brings its standard library).
pub const DEFAULT_PROGRAMS: &[&str] = &[
    "sh", "bash", "env", "cat", "echo", "ls", "head", "tail", "sleep", "true", "false", "mkdir",
    "rm", "cp", "mv", "touch", "wc", "grep", "sed", "printf", "kill", "dd", "yes", "seq", "id",
    "ps", "python3",
];

/// Builds (or reuses, when up to date) the default rootfs at `out`.
pub fn build_default_rootfs(out: &Path) -> Result<PathBuf, ExecError> {
    let req = rootfs_builder::HostRequest {
        out: out.to_path_buf(),
        programs: DEFAULT_PROGRAMS
            .iter()
            .filter(|p| which(p))
            .map(|p| p.to_string())
            .collect(),
        with: Vec::new(),
        force: false,
    };
    let built = rootfs_builder::host::build(&req).map_err(|e| ExecError::Host {
        op: "build default rootfs",
        job_id: "-".into(),
        reason: e.to_string(),
    })?;
    tracing::info!(path = %built.path.display(), reused = built.reused, "default rootfs ready");
    Ok(built.path)
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
