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
//!
//! A single-threaded process alone in a mount namespace of its own (jobd's shim) can skip the
//! thread and the namespace ([`namespace_is_own`]): it covers the hierarchies' parent
//! directory with a small tmpfs in its own namespace, binds the container's directories
//! there under the mount points' names, applies, and detaches the cover. That spares a
//! thread, a copy of the whole mount table and its teardown on every start (about 0.5 ms of
//! CPU for the apply as a whole on the 2-vCPU VM before, see the daemon README).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v1::manager::Manager;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

static ROOT_MANAGER: OnceLock<Manager> = OnceLock::new();
/// See [`namespace_is_own`].
static OWN_NAMESPACE: AtomicBool = AtomicBool::new(false);

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

/// Declares that the calling process is single-threaded, and that its mount namespace is its
/// own and propagates to no other (a slave or private copy of the host's, as jobd's shim
/// makes): [`apply`] may then mount in it for the moment of the writes.
pub fn namespace_is_own() {
    OWN_NAMESPACE.store(true, Ordering::Relaxed);
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
    if OWN_NAMESPACE.load(Ordering::Relaxed) {
        if let Some(parent) = common_parent(hierarchies) {
            return apply_under_cover(manager, hierarchies, parent, opts);
        }
    }
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
        bind_over(dir, mount_point)?;
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

/// The one directory all hierarchies are mounted in (`/sys/fs/cgroup`), if there is one.
fn common_parent(hierarchies: &[(PathBuf, PathBuf)]) -> Option<&Path> {
    let parent = hierarchies.first()?.0.parent()?;
    hierarchies
        .iter()
        .all(|(mount_point, _)| mount_point.parent() == Some(parent))
        .then_some(parent)
}

/// [`apply`] in the caller's own mount namespace: `parent` (where every hierarchy is
/// mounted) is covered by a tmpfs holding a bind of each container directory under its
/// hierarchy's mount point name, and uncovered again before this returns, whatever happened.
fn apply_under_cover(
    manager: &Manager,
    hierarchies: &[(PathBuf, PathBuf)],
    parent: &Path,
    opts: &ControllerOpt,
) -> Result<(), RootsError> {
    // Opened before the cover hides them; the binds come from these very directories.
    let dirs = hierarchies
        .iter()
        .map(|(_, dir)| open_dir(dir))
        .collect::<Result<Vec<_>, _>>()?;
    mount(
        Some("tmpfs"),
        parent,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=16k"),
    )
    .map_err(sys("cover with a tmpfs", parent))?;
    let applied = bind_and_apply(manager, hierarchies, &dirs, opts);
    let uncovered = nix::mount::umount2(parent, nix::mount::MntFlags::MNT_DETACH)
        .map_err(sys("uncover", parent));
    applied.and(uncovered)
}

fn bind_and_apply(
    manager: &Manager,
    hierarchies: &[(PathBuf, PathBuf)],
    dirs: &[OwnedFd],
    opts: &ControllerOpt,
) -> Result<(), RootsError> {
    for ((mount_point, _), dir) in hierarchies.iter().zip(dirs) {
        std::fs::create_dir(mount_point).map_err(|source| RootsError::Sys {
            op: "make a mount point on the cover",
            path: mount_point.clone(),
            source,
        })?;
        bind_over(
            Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())),
            mount_point,
        )?;
    }
    manager
        .apply(opts)
        .map_err(|e| RootsError::Apply(e.to_string()))
}

fn bind_over(dir: &Path, mount_point: &Path) -> Result<(), RootsError> {
    mount(
        Some(dir),
        mount_point,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind the container's cgroup over", mount_point))
}

/// An `O_PATH` descriptor of a directory, enough to bind it.
fn open_dir(dir: &Path) -> Result<OwnedFd, RootsError> {
    crate::mounts::open_o_path(dir, nix::fcntl::OFlag::O_DIRECTORY).map_err(|source| {
        RootsError::Sys {
            op: "open",
            path: dir.to_path_buf(),
            source,
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cover_goes_only_where_every_hierarchy_is_mounted() {
        let pair = |m: &str| (PathBuf::from(m), PathBuf::from(m).join("jobd/x"));
        let usual = [pair("/sys/fs/cgroup/cpu"), pair("/sys/fs/cgroup/memory")];
        assert_eq!(common_parent(&usual), Some(Path::new("/sys/fs/cgroup")));
        let scattered = [pair("/sys/fs/cgroup/cpu"), pair("/cgroup/memory")];
        assert_eq!(common_parent(&scattered), None);
        assert_eq!(common_parent(&[]), None);
    }
}
