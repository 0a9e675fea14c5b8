//! The container's filesystem: the rootfs bind, the spec's mounts, `/dev`, `pivot_root` and the
//! read-only root. Runs inside job-init, in the container's mount namespace.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, fchdir, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use crate::handshake::CgroupMount;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {dest}: {reason}")]
    Mount { dest: String, reason: String },
    #[error("{op} {path}: {reason}")]
    Path {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("path {path} in the container resolves through too many symlinks")]
    SymlinkLoop { path: PathBuf },
    #[error("pivot_root into {rootfs}: {reason}")]
    Pivot { rootfs: PathBuf, reason: String },
    /// A createContainer hook failed; it runs between the mounts and `pivot_root`.
    #[error("{0}")]
    Hook(String),
    #[error("invalid rootfsPropagation {0:?}: expected shared, slave, private or unbindable (optionally r-prefixed)")]
    Propagation(String),
}

/// A lowercase errno description, as messages in this project read: `permission denied`.
pub fn errno_text(e: Errno) -> String {
    let desc = e.desc();
    let mut c = desc.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => format!("errno {}", e as i32),
    }
}

fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_text(Errno::from_raw(n)),
        None => e.to_string(),
    }
}

/// A spec mount's options split into what `mount(2)` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
            bind: false,
            recursive: false,
        }
    }
}

/// Every option name `parse_options` understands (besides `key=value` data), for `features`.
pub const KNOWN_MOUNT_OPTIONS: [&str; 34] = [
    "ro",
    "rw",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "bind",
    "rbind",
    "tmpcopyup",
    "defaults",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

fn propagation_flag(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses `rootfsPropagation` (default: rslave, so host mount events reach the container but
/// none of the container's reach the host).
pub fn root_propagation(value: Option<&str>) -> Result<MsFlags, MountError> {
    match value {
        None | Some("") => Ok(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        Some(v) => propagation_flag(v)
            .map(|f| f | MsFlags::MS_REC)
            .ok_or_else(|| MountError::Propagation(v.to_string())),
    }
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            // Copy-up of the image's content into a tmpfs is a podman hint we do not need.
            "tmpcopyup" | "defaults" => continue,
            other => {
                if let Some(p) = propagation_flag(other) {
                    o.propagation |= p;
                } else {
                    o.data.push(other.to_string());
                }
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

/// Resolves `path` as seen from inside `root`, following symlinks the way the container
/// would, but never leaving `root` (`..` stops at root, absolute links restart at root).
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, MountError> {
    resolve_in(root, path).map(|(p, _)| p)
}

/// What [`resolve_in`] saw of the resolved path's last component, so that a mount point is
/// not looked up once more (each lookup on the job's overlay costs several microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Missing,
    Dir,
    NotDir,
    /// Not looked at (the path ended in `..`, or is the root itself).
    Unknown,
}

/// [`secure_join`], also telling what is at the resolved path.
fn resolve_in(root: &Path, path: &Path) -> Result<(PathBuf, Found), MountError> {
    let mut found = Found::Unknown;
    let mut queue: VecDeque<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part.as_os_str() == ".." {
            resolved.pop();
            found = Found::Unknown;
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(MountError::SymlinkLoop {
                        path: path.to_path_buf(),
                    });
                }
                let target = fs::read_link(&full).map_err(|e| MountError::Path {
                    op: "readlink",
                    path: full.clone(),
                    reason: io_text(&e),
                })?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => queue.push_front(PathBuf::from(n)),
                        Component::ParentDir => queue.push_front(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            Ok(m) => {
                found = if m.is_dir() {
                    Found::Dir
                } else {
                    Found::NotDir
                };
                resolved = candidate;
            }
            Err(_) => {
                found = Found::Missing;
                resolved = candidate;
            }
        }
    }
    Ok((root.join(resolved), found))
}

fn mount_err(dest: &Path, what: &str, e: Errno) -> MountError {
    let reason = errno_text(e);
    MountError::Mount {
        dest: dest.display().to_string(),
        reason: if what.is_empty() {
            reason
        } else {
            format!("{what}: {reason}")
        },
    }
}

fn path_err(op: &'static str, path: &Path, e: &std::io::Error) -> MountError {
    MountError::Path {
        op,
        path: path.to_path_buf(),
        reason: io_text(e),
    }
}

/// Makes the whole tree follow `propagation` and binds the rootfs onto itself, so it is a
/// mount point `pivot_root` accepts.
pub fn prepare_rootfs(rootfs: &Path, propagation: MsFlags) -> Result<(), MountError> {
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(|e| mount_err(Path::new("/"), "set propagation", e))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        let what = if e == Errno::EACCES {
            "bind rootfs (the container's root user must be able to reach every directory above it)"
        } else {
            "bind rootfs"
        };
        mount_err(rootfs, what, e)
    })
}

/// The working directory [`enter_rootfs`] left, to come back to.
pub struct SavedCwd {
    dir: fs::File,
    path: PathBuf,
}

impl SavedCwd {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes the (bound) rootfs the working directory, so that the mount targets below are
/// resolved from `.`: each of a container's tens of mount, stat and mkdir calls then walks
/// its path inside the rootfs only, not again through every directory of the rootfs's host
/// path. Call after [`prepare_rootfs`], whose bind is the mount to be inside.
pub fn enter_rootfs(rootfs: &Path) -> Result<SavedCwd, MountError> {
    let here = |op: &'static str, e: std::io::Error| path_err(op, Path::new("."), &e);
    let path = std::env::current_dir().map_err(|e| here("read working directory", e))?;
    let dir = fs::File::open(".").map_err(|e| here("open working directory", e))?;
    chdir(rootfs).map_err(|e| MountError::Path {
        op: "chdir",
        path: rootfs.to_path_buf(),
        reason: errno_text(e),
    })?;
    Ok(SavedCwd { dir, path })
}

/// Returns to the working directory [`enter_rootfs`] left.
pub fn leave_rootfs(saved: SavedCwd) -> Result<(), MountError> {
    fchdir(std::os::fd::AsRawFd::as_raw_fd(&saved.dir)).map_err(|e| MountError::Path {
        op: "chdir",
        path: saved.path.clone(),
        reason: errno_text(e),
    })
}

/// What a spec mount needs from the rest of the setup.
pub struct MountContext<'a> {
    /// Where targets are resolved from: `.` after [`enter_rootfs`].
    pub rootfs: &'a Path,
    /// What relative bind sources are relative to (the bundle: create's working directory).
    pub bundle: &'a Path,
    pub new_userns: bool,
    pub new_netns: bool,
    pub new_cgroupns: bool,
    pub cgroup: Option<&'a CgroupMount>,
}

/// Performs the spec's mounts in order.
pub fn mount_all(ctx: &MountContext, mounts: &[Mount]) -> Result<(), MountError> {
    for m in mounts {
        mount_one(ctx, m)?;
    }
    Ok(())
}

fn mount_one(ctx: &MountContext, m: &Mount) -> Result<(), MountError> {
    let dest_in = m.destination();
    let (dest, found) = resolve_in(ctx.rootfs, dest_in)?;
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "" });
    let bind = opts.bind || typ == "bind";
    let show = dest_in;
    if bind {
        let source = m.source().as_deref().ok_or_else(|| MountError::Mount {
            dest: show.display().to_string(),
            reason: "a bind mount needs a source".into(),
        })?;
        let source = if source.is_absolute() {
            source.to_path_buf()
        } else {
            ctx.bundle.join(source)
        };
        let Ok(source_meta) = fs::metadata(&source) else {
            return Err(MountError::Mount {
                dest: show.display().to_string(),
                reason: format!("bind source {} does not exist", source.display()),
            });
        };
        make_mount_point(&dest, source_meta.is_dir(), found).map_err(|e| in_container(e, show))?;
        bind_mount(&source, &dest, &opts, show)?;
    } else {
        make_mount_point(&dest, true, found).map_err(|e| in_container(e, show))?;
        match typ {
            "cgroup" | "cgroup2" => mount_cgroup(ctx, &dest, &opts, show)?,
            "sysfs" => mount_sysfs(ctx, &dest, &opts, show)?,
            _ => {
                let data = opts.data.join(",");
                let source = m.source().as_deref().unwrap_or(Path::new(typ));
                mount(
                    Some(source),
                    &dest,
                    Some(typ),
                    opts.flags,
                    (!data.is_empty()).then_some(data.as_str()),
                )
                .map_err(|e| mount_err(show, "", e))?;
            }
        }
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| mount_err(show, "set propagation", e))?;
    }
    Ok(())
}

/// Names a failure by the container's path of the mount, which is what the user wrote.
fn in_container(e: MountError, dest: &Path) -> MountError {
    match e {
        MountError::Path { op, reason, .. } => MountError::Mount {
            dest: dest.display().to_string(),
            reason: format!("{op}: {reason}"),
        },
        other => other,
    }
}

/// [`create_mount_point`] where the caller already knows what is at `dest`.
fn make_mount_point(dest: &Path, dir: bool, found: Found) -> Result<(), MountError> {
    match found {
        Found::Dir | Found::NotDir => Ok(()),
        Found::Missing => create_missing_mount_point(dest, dir),
        Found::Unknown => create_mount_point(dest, dir),
    }
}

fn create_mount_point(dest: &Path, dir: bool) -> Result<(), MountError> {
    if dest.exists() {
        return Ok(());
    }
    create_missing_mount_point(dest, dir)
}

fn create_missing_mount_point(dest: &Path, dir: bool) -> Result<(), MountError> {
    if dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dest)
            .map_err(|e| path_err("create mount point", dest, &e))
    } else {
        // The parent usually exists: make it only when the file cannot be made without it.
        match create_file_mount_point(dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| path_err("create mount point", parent, &e))?;
                }
                create_file_mount_point(dest)
            }
            other => other,
        }
        .map_err(|e| path_err("create mount point", dest, &e))
    }
}

/// An empty file at `dest`, or the one there; a symlink there is refused (ELOOP), not followed
/// out of the rootfs.
fn create_file_mount_point(dest: &Path) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map(drop)
}

/// `ST_RELATIME` from linux/statfs.h: nix names it for glibc only, and musl's `statvfs`
/// passes the kernel's flag word through as well.
const ST_RELATIME: FsFlags = FsFlags::from_bits_retain(0x1000);

/// The flags a remount must keep: in a user namespace the kernel refuses to drop nosuid,
/// nodev, noexec or atime flags that the underlying mount has (they are locked).
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs_flag) {
            out |= ms_flag;
        }
    }
    out
}

fn bind_mount(
    source: &Path,
    dest: &Path,
    opts: &MountOptions,
    show: &Path,
) -> Result<(), MountError> {
    let mut flags = MsFlags::MS_BIND;
    if opts.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), dest, None::<&str>, flags, None::<&str>)
        .map_err(|e| mount_err(show, &format!("bind {}", source.display()), e))?;
    // A bind ignores every flag but MS_REC; the others need a remount of the new mount.
    let extra = opts.flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        remount_bind(dest, extra, show)?;
    }
    Ok(())
}

fn remount_bind(dest: &Path, flags: MsFlags, show: &Path) -> Result<(), MountError> {
    let flags = flags | locked_flags(dest) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None::<&str>, dest, None::<&str>, flags, None::<&str>)
        .map_err(|e| mount_err(show, "remount", e))
}

fn mount_sysfs(
    ctx: &MountContext,
    dest: &Path,
    opts: &MountOptions,
    show: &Path,
) -> Result<(), MountError> {
    match mount(Some("sysfs"), dest, Some("sysfs"), opts.flags, None::<&str>) {
        Ok(()) => Ok(()),
        // Without its own network namespace a user namespace may not mount sysfs: show the
        // host's read-only instead, as runc does.
        Err(Errno::EPERM) if ctx.new_userns && !ctx.new_netns => {
            let rbind = MountOptions {
                flags: opts.flags | MsFlags::MS_RDONLY,
                recursive: true,
                bind: true,
                ..Default::default()
            };
            bind_mount(Path::new("/sys"), dest, &rbind, show)
        }
        Err(e) => Err(mount_err(show, "", e)),
    }
}

fn mount_cgroup(
    ctx: &MountContext,
    dest: &Path,
    opts: &MountOptions,
    show: &Path,
) -> Result<(), MountError> {
    let Some(plan) = ctx.cgroup else {
        return Ok(());
    };
    match plan {
        CgroupMount::V2 { host_dir } => {
            if ctx.new_cgroupns {
                mount(
                    Some("cgroup2"),
                    dest,
                    Some("cgroup2"),
                    opts.flags,
                    None::<&str>,
                )
                .map_err(|e| mount_err(show, "", e))
            } else {
                let bind = MountOptions {
                    flags: opts.flags,
                    bind: true,
                    ..Default::default()
                };
                bind_mount(host_dir, dest, &bind, show)
            }
        }
        CgroupMount::V1 { binds } => {
            // v1 hierarchies cannot be mounted in a user namespace: a tmpfs holds one bind of
            // the container's own directory per hierarchy.
            let tmpfs_flags = opts.flags & !MsFlags::MS_RDONLY;
            mount(
                Some("tmpfs"),
                dest,
                Some("tmpfs"),
                tmpfs_flags,
                Some("mode=755"),
            )
            .map_err(|e| mount_err(show, "tmpfs", e))?;
            let plain_bind = MountOptions {
                bind: true,
                ..Default::default()
            };
            let mut bound = Vec::with_capacity(binds.len());
            for (name, host_dir) in binds {
                if !host_dir.is_dir() {
                    continue;
                }
                // Nothing is in the tmpfs just mounted but what this loop makes.
                let target = dest.join(name);
                create_missing_mount_point(&target, true)?;
                bind_mount(host_dir, &target, &plain_bind, &show.join(name))?;
                bound.push(name.as_str());
            }
            restrict_cgroup_tree(dest, opts.flags, tmpfs_flags, &bound, show)
        }
    }
}

/// Gives the v1 tmpfs at `dest` and the hierarchies bound below it (`bound`, by name) the
/// mount's flags (read-only, nosuid, ...): one recursive `mount_setattr` where the kernel
/// has it, instead of a remount per mount (17 calls for 8 hierarchies).
fn restrict_cgroup_tree(
    dest: &Path,
    flags: MsFlags,
    tmpfs_flags: MsFlags,
    bound: &[&str],
    show: &Path,
) -> Result<(), MountError> {
    let attrs = crate::mount_attr::restrictions(flags);
    if attrs == 0 {
        return Ok(());
    }
    // Any refusal falls back to the remounts, which name their own failure: besides kernels
    // before 5.12 (ENOSYS), a runtime nested in another container may meet a seccomp profile
    // that does not know the call (EPERM).
    match crate::mount_attr::set(None, dest, true, attrs) {
        Ok(()) => return Ok(()),
        Err(e) => tracing::debug!(error = %errno_text(e), "mount_setattr refused: remounting"),
    }
    let extra = flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    for name in bound {
        remount_bind(&dest.join(name), extra, &show.join(name))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            tmpfs_flags | MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT,
            Some("mode=755"),
        )
        .map_err(|e| mount_err(show, "remount read-only", e))?;
    }
    Ok(())
}

/// The devices every container gets: (name, major, minor).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Creates the default devices, the spec's devices and the standard `/dev` symlinks. In a user
/// namespace `mknod` is not allowed, so the host's device is bind-mounted instead.
pub fn create_devices(
    rootfs: &Path,
    new_userns: bool,
    extra: &[LinuxDevice],
) -> Result<(), MountError> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    for (name, major, minor) in DEFAULT_DEVICES {
        if new_userns {
            let host = Path::new("/dev").join(name);
            // The lookup tells whether the mount point exists, so it is not looked up again.
            let (target, found) = resolve_in(rootfs, &host)?;
            bind_device(&host, &target, found).map_err(|e| in_container(e, &host))?;
        } else {
            make_node(
                &dev.join(name),
                SFlag::S_IFCHR,
                makedev(major, minor),
                0o666,
                0,
                0,
            )?;
        }
    }
    for d in extra {
        let (target, found) = resolve_in(rootfs, d.path())?;
        if new_userns {
            bind_device(d.path(), &target, found).map_err(|e| in_container(e, d.path()))?;
            continue;
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => continue,
        };
        let mode = d.file_mode().unwrap_or(0o666);
        let dev_t = makedev(d.major() as u64, d.minor() as u64);
        make_node(
            &target,
            kind,
            dev_t,
            mode,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        make_symlink(target, &dev.join(link))?;
    }
    if dev.join("pts").is_dir() {
        make_symlink("pts/ptmx", &dev.join("ptmx"))?;
    }
    Ok(())
}

fn make_symlink(target: &str, link: &Path) -> Result<(), MountError> {
    match symlink(target, link) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(path_err("symlink", link, &e)),
    }
}

fn make_node(
    target: &Path,
    kind: SFlag,
    dev: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), MountError> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| path_err("create", parent, &e))?;
    }
    let _ = fs::remove_file(target);
    mknod(target, kind, Mode::from_bits_truncate(mode), dev).map_err(|e| MountError::Path {
        op: "mknod",
        path: target.to_path_buf(),
        reason: errno_text(e),
    })?;
    // mknod applies the umask; the spec's mode is meant exactly.
    nix::sys::stat::fchmodat(
        None,
        target,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| MountError::Path {
        op: "chmod",
        path: target.to_path_buf(),
        reason: errno_text(e),
    })?;
    nix::unistd::chown(
        target,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| MountError::Path {
        op: "chown",
        path: target.to_path_buf(),
        reason: errno_text(e),
    })
}

fn bind_device(host: &Path, target: &Path, found: Found) -> Result<(), MountError> {
    let meta = fs::metadata(host).map_err(|e| path_err("stat device", host, &e))?;
    if !(meta.file_type().is_char_device() || meta.file_type().is_block_device()) {
        return Err(MountError::Path {
            op: "bind device",
            path: host.to_path_buf(),
            reason: "not a device".into(),
        });
    }
    make_mount_point(target, false, found)?;
    mount(
        Some(host),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| MountError::Path {
        op: "bind device",
        path: target.to_path_buf(),
        reason: errno_text(e),
    })
}

/// Makes `rootfs` the root and detaches the old root, so nothing of the host's tree stays
/// reachable. Uses `pivot_root(".", ".")` so no directory for the old root is needed.
pub fn pivot_into(rootfs: &Path) -> Result<(), MountError> {
    let err = |what: &str, e: Errno| MountError::Pivot {
        rootfs: rootfs.to_path_buf(),
        reason: format!("{what}: {}", errno_text(e)),
    };
    let old_root = fs::File::open("/").map_err(|e| MountError::Pivot {
        rootfs: rootfs.to_path_buf(),
        reason: format!("open /: {}", io_text(&e)),
    })?;
    chdir(rootfs).map_err(|e| err("chdir", e))?;
    pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    fchdir(std::os::fd::AsRawFd::as_raw_fd(&old_root)).map_err(|e| err("fchdir old root", e))?;
    // The old root must not propagate its unmount back to the host.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| err("make old root slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach old root", e))?;
    chdir("/").map_err(|e| err("chdir /", e))
}

/// Remounts the new root read-only, keeping its locked flags.
pub fn make_root_readonly() -> Result<(), MountError> {
    remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))
}

/// An `O_PATH` handle on a path inside the container that was opened without following a
/// final symlink, and is addressed through `/proc/self/fd` so no later step resolves the path
/// again (a container could swap a component for a symlink in between).
struct PathFd {
    fd: OwnedFd,
    path: PathBuf,
}

/// An `O_PATH` descriptor of `path`, close-on-exec, plus `extra` flags. Not through
/// `OpenOptions::custom_flags`: on musl, std masks custom flags with `O_ACCMODE`, which there
/// includes `O_PATH`, and the file would be opened for reading instead (refused for root-only
/// files such as `/proc/timer_list` in a user namespace).
pub(crate) fn open_o_path(path: &Path, extra: nix::fcntl::OFlag) -> std::io::Result<OwnedFd> {
    open_o_path_at(None, path, extra)
}

/// [`open_o_path`] with `path` relative to the directory `dir` (the working directory when
/// `None`).
pub(crate) fn open_o_path_at(
    dir: Option<std::os::fd::BorrowedFd<'_>>,
    path: &Path,
    extra: nix::fcntl::OFlag,
) -> std::io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsRawFd;
    let fd = nix::fcntl::openat(
        dir.map(|d| d.as_raw_fd()),
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC | extra,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

impl PathFd {
    /// `None` when the path does not exist.
    fn open(path: &Path) -> Result<Option<PathFd>, MountError> {
        match open_o_path(path, nix::fcntl::OFlag::O_NOFOLLOW) {
            Ok(fd) => Ok(Some(PathFd {
                fd,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(path_err("open", path, &e)),
        }
    }

    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.fd)
        ))
    }

    fn stat(&self) -> Result<nix::sys::stat::FileStat, MountError> {
        nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&self.fd)).map_err(|e| {
            MountError::Path {
                op: "stat",
                path: self.path.clone(),
                reason: errno_text(e),
            }
        })
    }
}

/// `/proc` must be a real procfs before `/proc/self/fd` paths are trusted (CVE-2019-16884: a
/// rootfs could put something else there).
fn check_procfs() -> Result<(), MountError> {
    let st = nix::sys::statfs::statfs("/proc/self/fd").map_err(|e| MountError::Path {
        op: "check",
        path: PathBuf::from("/proc"),
        reason: if e == Errno::ENOENT {
            "no procfs is mounted there; masked and read-only paths need the container's /proc"
                .into()
        } else {
            errno_text(e)
        },
    })?;
    if st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(MountError::Path {
            op: "check",
            path: PathBuf::from("/proc"),
            reason: "not a procfs mount; masked and read-only paths need the container's /proc"
                .into(),
        });
    }
    Ok(())
}

/// Hides each path: a file under the null device, a directory under an empty read-only tmpfs.
/// Missing paths and symlinks are skipped; nothing here follows a symlink (CVE-2025-31133).
pub fn mask_paths(paths: &[String]) -> Result<(), MountError> {
    if paths.is_empty() {
        return Ok(());
    }
    check_procfs()?;
    let null = PathFd::open(Path::new("/dev/null"))?;
    for p in paths {
        let Some(target) = PathFd::open(Path::new(p))? else {
            continue;
        };
        let kind = SFlag::from_bits_truncate(target.stat()?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            continue;
        }
        let dest = target.proc_path();
        let show = Path::new(p);
        if kind == SFlag::S_IFDIR {
            mount(
                Some("tmpfs"),
                &dest,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            )
            .map_err(|e| mount_err(show, "mask", e))?;
            continue;
        }
        let null = null.as_ref().ok_or_else(|| MountError::Mount {
            dest: p.clone(),
            reason: "mask: /dev/null does not exist in the container".into(),
        })?;
        let st = null.stat()?;
        let is_null = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
            && st.st_rdev == makedev(1, 3);
        if !is_null {
            return Err(MountError::Mount {
                dest: p.clone(),
                reason: "mask: /dev/null is not the null device (char 1:3)".into(),
            });
        }
        mount(
            Some(&null.proc_path()),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| mount_err(show, "mask", e))?;
    }
    Ok(())
}

/// Writes the spec's sysctls through the container's own `/proc/sys`, checking that each
/// file really is on procfs before writing (CVE-2019-16884).
pub fn write_sysctls(sysctl: &std::collections::HashMap<String, String>) -> Result<(), MountError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut keys: Vec<&String> = sysctl.keys().collect();
    keys.sort();
    for key in keys {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let fail = |reason: String| MountError::Path {
            op: "sysctl",
            path: path.clone(),
            reason,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| fail(io_text(&e)))?;
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| fail(errno_text(e)))?;
        if st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
            return Err(fail("not on procfs".into()));
        }
        file.write_all(sysctl[key].as_bytes())
            .map_err(|e| fail(io_text(&e)))?;
    }
    Ok(())
}

/// Makes each path read-only with a bind mount onto itself, remounted read-only.
pub fn readonly_paths(paths: &[String]) -> Result<(), MountError> {
    if paths.is_empty() {
        return Ok(());
    }
    check_procfs()?;
    for p in paths {
        let show = Path::new(p);
        let Some(target) = PathFd::open(show)? else {
            continue;
        };
        if SFlag::from_bits_truncate(target.stat()?.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            continue;
        }
        let dest = target.proc_path();
        mount(
            Some(&dest),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| mount_err(show, "bind read-only", e))?;
        // The new mount is on top of the old one: reopen to address it, not what it covers.
        let Some(top) = PathFd::open(show)? else {
            continue;
        };
        remount_bind(&top.proc_path(), MsFlags::MS_RDONLY, show)?;
    }
    Ok(())
}

/// Sets the hostname and domain name of the container's UTS namespace.
pub fn set_names(hostname: Option<&str>, domainname: Option<&str>) -> Result<(), MountError> {
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(|e| MountError::Path {
            op: "sethostname",
            path: PathBuf::from(h),
            reason: errno_text(e),
        })?;
    }
    if let Some(d) = domainname {
        let name = OsStr::new(d);
        // SAFETY: setdomainname reads exactly `len` bytes from a valid slice we own.
        let rc = unsafe { libc::setdomainname(name.as_encoded_bytes().as_ptr().cast(), d.len()) };
        if rc != 0 {
            return Err(MountError::Path {
                op: "setdomainname",
                path: PathBuf::from(d),
                reason: errno_text(Errno::last()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_data_and_propagation() {
        let o = parse_options(
            &[
                "nosuid",
                "noexec",
                "mode=755",
                "size=65536k",
                "rbind",
                "rslave",
                "ro",
            ]
            .map(String::from),
        );
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY));
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        let o = parse_options(&["ro", "rw"].map(String::from));
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("a/abs")).unwrap();
        symlink("../../../../..", root.join("a/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/b")).unwrap(),
            root.join("a/b")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/abs/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert!(matches!(
            secure_join(root, Path::new("/loop/x")),
            Err(MountError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn resolving_tells_what_is_at_the_end_so_mount_points_are_not_looked_up_again() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("dev/null"), b"").unwrap();
        symlink("dev", root.join("devlink")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        let found = |p: &str| resolve_in(root, Path::new(p)).unwrap();
        assert_eq!(found("/dev"), (root.join("dev"), Found::Dir));
        assert_eq!(found("/dev/null"), (root.join("dev/null"), Found::NotDir));
        assert_eq!(found("/dev/pts"), (root.join("dev/pts"), Found::Missing));
        assert_eq!(found("/devlink"), (root.join("dev"), Found::Dir));
        assert_eq!(found("/dangling"), (root.join("nowhere"), Found::Missing));
        assert_eq!(found("/dev/.."), (root.to_path_buf(), Found::Unknown));
        // A missing mount point is made (with its parents); a known one is left alone.
        make_mount_point(&root.join("dev/pts"), true, Found::Missing).unwrap();
        assert!(root.join("dev/pts").is_dir());
        make_mount_point(&root.join("a/b/file"), false, Found::Missing).unwrap();
        assert!(root.join("a/b/file").is_file());
        make_mount_point(&root.join("dev/null"), false, Found::NotDir).unwrap();
        make_mount_point(&root.join("x/y"), true, Found::Unknown).unwrap();
        assert!(root.join("x/y").is_dir());
    }

    #[test]
    fn propagation_values_are_checked() {
        assert!(root_propagation(Some("rshared")).is_ok());
        assert!(root_propagation(None).is_ok());
        assert!(root_propagation(Some("sideways")).is_err());
    }
}
