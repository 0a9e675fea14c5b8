//! Limits on cgroup v1 applied through one libcgroups manager made for the hierarchies'
//! roots, instead of a new manager for every container.
//!
//! libcgroups' v1 `Manager::new` looks up the mount point of each of its twelve controllers
//! and the caller's own cgroup, each through a pathrs-checked open of procfs: about 600
//! syscalls, 1.2 ms of CPU per container on a 2-vCPU VM, the largest single cost of a jobd
//! start on v1. What it computes is only `mount point + cgroup path` per controller. So a
//! process that starts many containers (jobd's shim server, before it forks any shim) makes
//! one manager for the path `/` once ([`prepare`]). To apply one container's limits, a
//! short-lived thread enters a mount namespace of its own, binds the container's directory
//! over every hierarchy's mount point there and applies through that manager: libcgroups
//! writes the files it would have written, in the container's cgroup. Nobody else sees the
//! binds, and they are gone with the thread's namespace when it ends.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v1::manager::Manager;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

static ROOT_MANAGER: OnceLock<Manager> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{mount_point} does not show {dir} after the bind mount over it")]
    NotCovered { mount_point: PathBuf, dir: PathBuf },
    #[error("the thread applying the limits panicked")]
    Panicked,
    #[error("{0}")]
    Apply(String),
}

/// Makes the manager for the hierarchies' roots; a v1 host only (the caller checks). A
/// process that starts one container gains nothing from it: this costs what one
/// container's manager costs.
pub(crate) fn prepare() {
    if ROOT_MANAGER.get().is_some() {
        return;
    }
    match Manager::new(Path::new("/")) {
        Ok(m) => {
            let _ = ROOT_MANAGER.set(m);
        }
        Err(e) => tracing::warn!(error = %e, "cgroup v1 manager for the hierarchy roots"),
    }
}

/// Whether [`prepare`] made the manager in this process (or the one it was forked from).
pub(crate) fn prepared() -> bool {
    ROOT_MANAGER.get().is_some()
}

/// Applies `opts` to the container whose directory in each v1 hierarchy is given as
/// `(hierarchy mount point, container directory)`. Every hierarchy with controllers must be
/// listed: the manager's paths are their mount points, and one left uncovered would be the
/// host's root cgroup.
pub(crate) fn apply(
    hierarchies: &[(PathBuf, PathBuf)],
    opts: &ControllerOpt,
) -> Result<(), RootsError> {
    let Some(manager) = ROOT_MANAGER.get() else {
        return Err(RootsError::Apply(
            "the root manager was not prepared".into(),
        ));
    };
    // A thread of its own: the namespace it enters dies with it, so no path of this process
    // ever resolves to a container's directory by mistake.
    std::thread::scope(|s| {
        s.spawn(|| apply_in_own_namespace(manager, hierarchies, opts))
            .join()
            .unwrap_or(Err(RootsError::Panicked))
    })
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> RootsError + 'a {
    move |e| RootsError::Sys {
        op,
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    }
}

fn apply_in_own_namespace(
    manager: &Manager,
    hierarchies: &[(PathBuf, PathBuf)],
    opts: &ControllerOpt,
) -> Result<(), RootsError> {
    // CLONE_NEWNS unshares this thread's filesystem context too; the other threads keep
    // theirs.
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare the mount namespace", Path::new("/")))?;
    // The copy may share propagation with the namespace it came from: nothing of ours may
    // travel back.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make private", Path::new("/")))?;
    for (mount_point, dir) in hierarchies {
        let want = identity(dir)?;
        mount(
            Some(dir.as_path()),
            mount_point.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind the container's cgroup over", mount_point))?;
        if identity(mount_point)? != want {
            return Err(RootsError::NotCovered {
                mount_point: mount_point.clone(),
                dir: dir.clone(),
            });
        }
    }
    manager
        .apply(opts)
        .map_err(|e| RootsError::Apply(e.to_string()))
}

/// (device, inode) of a directory.
fn identity(path: &Path) -> Result<(u64, u64), RootsError> {
    let meta = std::fs::metadata(path).map_err(|source| RootsError::Sys {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}
