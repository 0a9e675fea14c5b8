//! A job's private filesystem, built by its shim in a mount namespace of the shim's own.
//!
//! `DATA/jobs/ID/scratch` is an empty directory on the host. The shim mounts a tmpfs there, of
//! the job's memory limit in size, and builds in it:
//! - `layer/upper`, `layer/work`: the writable overlay layer (the job's working directory, its
//!   `/tmp` and any other change to its root), owned by the container's root as the host sees it;
//! - `bundle/config.json` (the spec jobd made) and `bundle/rootfs`, the overlay of that layer on
//!   the shared read-only rootfs;
//! - `state/`: the runtime's state root for this one container.
//!
//! Why memory and not the data directory's disk: a hostile job cannot fill the host's disk
//! (its files are bounded by the tmpfs size, and their pages are charged to the job's memory
//! cgroup, so they count against its memory limit); nothing has to be deleted file by file
//! after the job (the tmpfs goes away with the last process of the namespace); and a start does
//! no metadata writes on the data directory's filesystem beyond its one directory (on ext4
//! without a journal, inode allocation next to many recently deleted inodes cost 10 ms a job).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::mount::{mount, MsFlags};
use nix::unistd::{fchownat, Gid, Uid};

/// Errors while building a job's filesystem.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: String, source: Errno },
    /// The job's input archive could not be unpacked: the request's fault, not the host's.
    #[error("spec.input_tar: unpack into {working_dir}: {reason}")]
    Input { working_dir: String, reason: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayerError {
    let path = path.to_path_buf();
    move |source| LayerError::Io { op, path, source }
}

fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> LayerError {
    let op = op.into();
    move |source| LayerError::Sys { op, source }
}

/// What a job's filesystem is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// The empty host directory the tmpfs is mounted on.
    pub scratch: PathBuf,
    /// The tmpfs size in bytes (the job's memory limit).
    pub size_bytes: u64,
    /// The shared read-only rootfs, the overlay's lower layer.
    pub lower: PathBuf,
    /// The host uid and gid of the container's root, owner of the writable layer.
    pub owner: u32,
    /// The job's working directory, absolute, inside the container.
    pub working_dir: String,
}

/// Where the built filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The OCI bundle (config.json, rootfs).
    pub bundle: PathBuf,
    /// The runtime's state root.
    pub state_root: PathBuf,
}

/// Moves the calling process into a new mount namespace whose mounts are slaves of the host's:
/// host mounts and unmounts still reach it, and nothing mounted in it reaches the host. Single
/// threaded callers only (unshare applies to the calling thread).
pub fn enter_private_mount_namespace() -> Result<(), LayerError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("unshare a mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("make the namespace's mounts slaves of the host's"))
}

/// Builds the job's filesystem under `plan.scratch` (in the caller's mount namespace: call
/// [`enter_private_mount_namespace`] first) from the bundle's `config.json` text and an
/// uncompressed tar for the working directory (may be empty).
pub fn build(plan: &LayerPlan, config_json: &[u8], input_tar: &[u8]) -> Result<Built, LayerError> {
    mount_scratch(plan)?;
    let built = Built {
        bundle: plan.scratch.join("bundle"),
        state_root: plan.scratch.join("state"),
    };
    let (upper, work) = (
        plan.scratch.join("layer/upper"),
        plan.scratch.join("layer/work"),
    );
    let rootfs = built.bundle.join("rootfs");
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o700)?;
    mkdir(&rootfs, 0o755)?;
    mkdir(&built.state_root, 0o700)?;
    write_new(&built.bundle.join("config.json"), config_json)?;
    chown(&upper, plan.owner)?;
    let wd = upper.join(plan.working_dir.trim_start_matches('/'));
    mkdir(&wd, 0o755)?;
    let tmp = upper.join("tmp");
    mkdir(&tmp, 0o1777)?;
    chown(&tmp, plan.owner)?;
    if !input_tar.is_empty() {
        unpack(input_tar, &wd, &plan.working_dir)?;
    }
    chown_tree(&wd, plan.owner)?;
    mount_overlay(&plan.lower, &upper, &work, &rootfs)?;
    Ok(built)
}

/// tmpfs options for a layer of `size_bytes`: inodes bounded too (each costs kernel memory),
/// one per 4 KiB of size but never fewer than 16,384. Mode 0711: the container's root (an
/// unprivileged uid on the host) must pass through to the bundle's rootfs, and may list nothing.
fn scratch_options(size_bytes: u64) -> String {
    let size = size_bytes.max(1 << 20);
    format!(
        "size={size},nr_inodes={},mode=0711",
        (size / 4096).max(16_384)
    )
}

fn mount_scratch(plan: &LayerPlan) -> Result<(), LayerError> {
    mount(
        Some("tmpfs"),
        &plan.scratch,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(scratch_options(plan.size_bytes).as_str()),
    )
    .map_err(sys(format!("mount a tmpfs on {}", plan.scratch.display())))
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, on: &Path) -> Result<(), LayerError> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let overlay = |options: &str| {
        mount(
            Some("overlay"),
            on,
            Some("overlay"),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some(options),
        )
    };
    // `volatile` (Linux 5.10+): no syncfs of the upper filesystem when the overlay goes away;
    // the layer is thrown away after the job, so there is nothing to keep consistent across a
    // crash. Older kernels refuse the option: mount without it.
    overlay(&format!("{options},volatile"))
        .or_else(|e| match e {
            Errno::EINVAL => overlay(&options),
            e => Err(e),
        })
        .map_err(sys(format!("mount the overlay on {}", on.display())))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), LayerError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io("create directory", path))?;
    // The umask may have taken bits (the sticky /tmp's in particular).
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn write_new(path: &Path, data: &[u8]) -> Result<(), LayerError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))
}

fn chown(path: &Path, id: u32) -> Result<(), LayerError> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(id)),
        Some(Gid::from_raw(id)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys(format!("chown {}", path.display())))
}

fn chown_tree(path: &Path, id: u32) -> Result<(), LayerError> {
    chown(path, id)?;
    let meta = fs::symlink_metadata(path).map_err(io("stat", path))?;
    if meta.is_dir() {
        for e in fs::read_dir(path)
            .map_err(io("read directory", path))?
            .flatten()
        {
            chown_tree(&e.path(), id)?;
        }
    }
    Ok(())
}

/// Unpacks the client's archive into the working directory. The tar crate refuses entries
/// that would land outside it (absolute paths, `..`, links through symlinks); permissions are
/// not taken from the archive beyond the executable bits, nor xattrs.
fn unpack(tar: &[u8], wd: &Path, working_dir: &str) -> Result<(), LayerError> {
    let mut ar = tar::Archive::new(tar);
    ar.set_preserve_permissions(false);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    ar.unpack(wd).map_err(|e| LayerError::Input {
        working_dir: working_dir.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_options_bound_size_and_inodes() {
        assert_eq!(
            scratch_options(512 << 20),
            "size=536870912,nr_inodes=131072,mode=0711"
        );
        // A tiny limit still gets a usable layer.
        assert_eq!(
            scratch_options(4096),
            "size=1048576,nr_inodes=16384,mode=0711"
        );
    }

    /// The whole build, in a forked child with a mount namespace of its own (root only):
    /// everything lands in the tmpfs, nothing in the scratch directory on the host.
    #[test]
    fn build_puts_everything_in_a_private_tmpfs() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        fs::create_dir_all(lower.join("bin")).unwrap();
        fs::write(lower.join("bin/tool"), "lower\n").unwrap();
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let plan = LayerPlan {
            scratch: scratch.clone(),
            size_bytes: 8 << 20,
            lower,
            owner: 4242,
            working_dir: "/work".into(),
        };
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        tar.append_data(&mut h, "x.py", &b"hi\n"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let report = dir.path().join("report");
        // SAFETY: the child only makes syscalls and exits; the parent waits for it. The test
        // harness's other threads are not touched by the child.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let r = enter_private_mount_namespace()
                    .and_then(|()| build(&plan, b"{}", &tar))
                    .map(|b| {
                        let root = b.bundle.join("rootfs");
                        let seen = [
                            fs::read_to_string(root.join("bin/tool")).unwrap_or_default(),
                            fs::read_to_string(root.join("work/x.py")).unwrap_or_default(),
                            fs::read_to_string(b.bundle.join("config.json")).unwrap_or_default(),
                        ]
                        .concat();
                        let uid = std::os::unix::fs::MetadataExt::uid(
                            &fs::metadata(root.join("work/x.py")).unwrap(),
                        );
                        let tmp = fs::metadata(root.join("tmp")).unwrap().permissions().mode();
                        let fstype = nix::sys::statfs::statfs(&plan.scratch)
                            .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
                            .unwrap_or(false);
                        format!("{seen}|{uid}|{:o}|{fstype}", tmp & 0o7777)
                    });
                let text = match r {
                    Ok(t) => t,
                    Err(e) => format!("error: {e}"),
                };
                let _ = fs::write(&report, text);
                std::process::exit(0);
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        assert_eq!(
            fs::read_to_string(&report).unwrap(),
            "lower\nhi\n{}|4242|1777|true"
        );
        // The host's scratch directory stayed empty: all of it lived in the child's namespace.
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    }

    #[test]
    fn a_bad_archive_is_the_requests_fault() {
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(b"not a tar archive at all", dir.path(), "/work").unwrap_err();
        assert!(
            matches!(e, LayerError::Input { .. }) && e.to_string().starts_with("spec.input_tar"),
            "{e}"
        );
    }
}
