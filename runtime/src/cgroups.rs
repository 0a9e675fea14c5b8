//! The container's cgroup, through libcgroups (v1 and v2, detected), plus what libcgroups does
//! not do: refusing cgroups the runtime did not create, killing everything inside, and the
//! mount plan job-init uses for `/sys/fs/cgroup`.
//!
//! With the systemd driver (`--systemd-cgroup`) the cgroup is a transient scope unit that
//! systemd creates (libcgroups' systemd manager, over D-Bus): `slice:prefix:name` becomes
//! `prefix-name.scope` in `slice`, with `Delegate=yes`. Limits are set as unit properties and
//! also written to the scope's cgroupfs files (what systemd cannot express still holds).

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState,
};
use libcgroups::stats::Stats;
use libcgroups::systemd::manager::{Manager as SystemdManager, PROCESS_IN_CGROUP_TIMEOUT_DURATION};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::handshake::CgroupMount;
use crate::v1_roots;

/// Parent of every cgroup made for a relative or default `cgroupsPath`: never the caller's own
/// cgroup, so a runtime started from a service does not nest containers under it.
pub const RUNTIME_PARENT: &str = "/job-runtime";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("detect cgroup setup: {0}")]
    Detect(String),
    #[error("cgroup manager for {path}: {message}")]
    Manager { path: PathBuf, message: String },
    #[error("cgroup {path} already exists: job-runtime only uses cgroups it creates")]
    Exists { path: PathBuf },
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("systemd cgroup driver requested (--systemd-cgroup) but systemd is not running on this host (no /run/systemd/system); drop the flag to use cgroupfs")]
    NoSystemd,
    #[error("systemd cgroup driver requested (--systemd-cgroup) but this host runs cgroup v1 (hybrid or legacy); job-runtime drives systemd only on a pure cgroup v2 host: drop the flag to use cgroupfs")]
    SystemdNeedsV2,
    #[error("systemd unit {unit}: {message}")]
    Systemd { unit: String, message: String },
    #[error("systemd put pid {pid} in cgroup {found}, expected {expected} for unit {unit}")]
    SystemdPlacement {
        pid: i32,
        unit: String,
        expected: PathBuf,
        found: String,
    },
    #[error("add pid {pid} to cgroup {path}: {message}")]
    AddTask {
        pid: i32,
        path: PathBuf,
        message: String,
    },
    #[error("apply limits to cgroup {path}: {message}")]
    Apply { path: PathBuf, message: String },
    #[error("{op} cgroup {path}: {message}")]
    Op {
        op: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// The cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The host's cgroup version, detected once per process: the hierarchies are mounted at boot
/// and a daemon asks on every job's start, stop and stats (like containerd's `cgroups.Mode`).
pub fn host_version() -> Result<Version, CgroupError> {
    static DETECTED: OnceLock<Version> = OnceLock::new();
    if let Some(v) = DETECTED.get() {
        return Ok(*v);
    }
    let v = match get_cgroup_setup().map_err(|e| CgroupError::Detect(e.to_string()))? {
        CgroupSetup::Unified => Version::V2,
        CgroupSetup::Legacy | CgroupSetup::Hybrid => Version::V1,
    };
    Ok(*DETECTED.get_or_init(|| v))
}

/// Detects what [`host_version`] and [`Cgroup::open`] need (and on v1 opens the procfs handle
/// libcgroups caches), so that processes forked from this one find it done.
pub fn warm_up() {
    if matches!(host_version(), Ok(Version::V1)) {
        let _ = v1_hierarchies();
        let _ = libcgroups::v1::util::list_subsystem_mount_points();
        v1_roots::prepare();
    }
}

/// Turns the spec's `cgroupsPath` into the path the container's cgroup will have.
///
/// Absolute paths are used as given; relative ones, and the default (the container ID), go
/// under [`RUNTIME_PARENT`]. With the systemd driver the path is `slice:prefix:name` (see
/// [`SystemdScope`]) and the result is where systemd puts that scope.
pub fn resolve_path(
    spec_path: Option<&Path>,
    id: &str,
    systemd: bool,
) -> Result<PathBuf, CgroupError> {
    let raw = spec_path.map(|p| p.to_string_lossy().into_owned());
    if let Some(raw) = &raw {
        if raw.split('/').any(|c| c == "..") {
            return Err(CgroupError::InvalidPath {
                path: raw.clone(),
                reason: "it must not contain ..",
            });
        }
    }
    if systemd {
        return Ok(SystemdScope::parse(raw.as_deref(), id)?.cgroup_path());
    }
    Ok(match raw {
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) if !p.is_empty() => Path::new(RUNTIME_PARENT).join(p),
        _ => Path::new(RUNTIME_PARENT).join(id),
    })
}

/// Slice for a `cgroupsPath` whose slice part is empty, as runc does for root.
pub const SYSTEMD_DEFAULT_SLICE: &str = "system.slice";
/// Scope prefix when the spec has no `cgroupsPath` at all: `system.slice:job-runtime:<id>`.
pub const SYSTEMD_DEFAULT_PREFIX: &str = "job-runtime";

/// A systemd driver `cgroupsPath`, `slice:prefix:name`: the transient scope unit
/// `prefix-name.scope` in the slice `slice` (podman: `machine.slice:libpod:<id>`, kubelet:
/// `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdScope {
    slice: String,
    prefix: String,
    name: String,
}

impl SystemdScope {
    /// Parses the spec's `cgroupsPath`; empty or absent means `system.slice:job-runtime:<id>`.
    pub fn parse(raw: Option<&str>, id: &str) -> Result<SystemdScope, CgroupError> {
        let raw = raw.unwrap_or("");
        let invalid = |reason| CgroupError::InvalidPath {
            path: raw.to_string(),
            reason,
        };
        if raw.is_empty() {
            return Ok(SystemdScope {
                slice: SYSTEMD_DEFAULT_SLICE.into(),
                prefix: SYSTEMD_DEFAULT_PREFIX.into(),
                name: id.into(),
            });
        }
        let [slice, prefix, name] = raw.split(':').collect::<Vec<_>>()[..] else {
            return Err(invalid(
                "with --systemd-cgroup it must be slice:prefix:name (e.g. system.slice:jobworker:<id>)",
            ));
        };
        let slice = if slice.is_empty() {
            SYSTEMD_DEFAULT_SLICE
        } else {
            slice
        };
        expand_slice(slice).ok_or_else(|| {
            invalid("the slice must be a systemd slice name: a-b.slice (non-empty parts joined by -) or -.slice")
        })?;
        if prefix.is_empty() {
            return Err(invalid(
                "the scope prefix (slice:PREFIX:name) must not be empty",
            ));
        }
        if name.is_empty() {
            return Err(invalid(
                "the scope name (slice:prefix:NAME) must not be empty",
            ));
        }
        if name.ends_with(".slice") {
            return Err(invalid(
                "a name ending in .slice asks for a slice unit, which job-runtime does not create: give a scope name",
            ));
        }
        if !is_unit_name_part(prefix) || !is_unit_name_part(name) {
            return Err(invalid(
                "prefix and name may hold only letters, digits and _ . - (systemd unit name characters)",
            ));
        }
        Ok(SystemdScope {
            slice: slice.into(),
            prefix: prefix.into(),
            name: name.into(),
        })
    }

    /// The scope back from the cgroup path [`SystemdScope::cgroup_path`] made (for commands
    /// after `create`, which have only the state's path). The prefix/name split may differ
    /// from the original where the prefix holds a `-`; the unit is the same.
    pub fn from_cgroup_path(path: &Path) -> Result<SystemdScope, CgroupError> {
        let invalid = || CgroupError::InvalidPath {
            path: path.display().to_string(),
            reason: "the state's systemd cgroup path is not /<slices>/<prefix>-<name>.scope",
        };
        let unit = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(invalid)?;
        let stem = unit.strip_suffix(".scope").ok_or_else(invalid)?;
        let (prefix, name) = stem.split_once('-').ok_or_else(invalid)?;
        let slice = match path.parent() {
            Some(p) if p == Path::new("/") => "-.slice".to_string(),
            Some(p) => p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(invalid)?
                .to_string(),
            None => return Err(invalid()),
        };
        let scope = SystemdScope {
            slice,
            prefix: prefix.into(),
            name: name.into(),
        };
        if scope.cgroup_path() != path {
            return Err(invalid());
        }
        Ok(scope)
    }

    /// The unit systemd creates: `prefix-name.scope`.
    pub fn unit(&self) -> String {
        format!("{}-{}.scope", self.prefix, self.name)
    }

    pub fn slice(&self) -> &str {
        &self.slice
    }

    /// Where systemd puts the scope: slices nest by their dashes (`a-b.slice` lives in
    /// `a.slice`), `-.slice` is the root.
    pub fn cgroup_path(&self) -> PathBuf {
        expand_slice(&self.slice)
            .expect("validated when parsed")
            .join(self.unit())
    }

    /// The form libcgroups' systemd manager takes.
    fn manager_path(&self) -> PathBuf {
        PathBuf::from(format!("{}:{}:{}", self.slice, self.prefix, self.name))
    }
}

/// `a-b.slice` -> `/a.slice/a-b.slice`; `-.slice` -> `/`; `None` for what is not a slice name.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::from("/"));
    }
    if stem.is_empty() || !is_unit_name_part(stem) {
        return None;
    }
    let mut path = PathBuf::from("/");
    let mut acc = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        path.push(format!("{acc}.slice"));
    }
    Some(path)
}

fn is_unit_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// How the clone child enters its cgroup by itself, so the parent never migrates it.
///
/// A parent writing a pid into `cgroup.procs` takes the kernel's global threadgroup lock,
/// which waits out an RCU grace period: 6-20 ms per container on this class of machine. A
/// single-threaded process that writes `0` into v1's `tasks` moves only itself and skips that
/// lock (0.3 ms); on v2 `clone3(CLONE_INTO_CGROUP)` starts the child inside the cgroup.
pub enum Join {
    /// v1: one open `tasks` file per hierarchy; the child writes "0" into each.
    V1Tasks(Vec<OwnedFd>),
    /// v2: the cgroup directory, for `CLONE_INTO_CGROUP`.
    V2Dir(OwnedFd),
    /// systemd driver: the scope does not exist until systemd makes it around a pid, so the
    /// parent asks systemd to start it with the child's pid ([`Cgroup::add_task`]) while the
    /// child waits for the go byte: nothing of the job runs before it is inside.
    ByParent,
}

/// libcgroups' managers for one cgroup: cgroupfs always (limits, freezer, stats), systemd
/// with `--systemd-cgroup` (the scope unit and its properties).
struct Managers {
    fs: AnyCgroupManager,
    systemd: Option<SystemdManager>,
}

/// One container cgroup, possibly not created yet.
pub struct Cgroup {
    path: PathBuf,
    version: Version,
    id: String,
    /// The cgroup's directory in each hierarchy: (hierarchy name, directory). One on v2.
    dirs: Vec<(String, PathBuf)>,
    /// The systemd scope, with `--systemd-cgroup`.
    scope: Option<SystemdScope>,
    /// libcgroups' managers, made on first use: on v1 it reads mountinfo once per controller,
    /// with systemd it connects to D-Bus.
    manager: OnceLock<Managers>,
    /// Managers being made on another thread (see [`Cgroup::prefetch_manager`]).
    pending: std::sync::Mutex<Option<std::thread::JoinHandle<Result<Managers, CgroupError>>>>,
}

impl Cgroup {
    /// A handle for `path` (from [`resolve_path`]); nothing is created until [`Cgroup::create`].
    pub fn open(path: &Path, systemd: bool, id: &str) -> Result<Cgroup, CgroupError> {
        if systemd && !libcgroups::systemd::booted() {
            return Err(CgroupError::NoSystemd);
        }
        let version = host_version()?;
        // libcgroups drives systemd on the unified hierarchy only.
        let scope = match (systemd, version) {
            (false, _) => None,
            (true, Version::V1) => return Err(CgroupError::SystemdNeedsV2),
            (true, Version::V2) => Some(SystemdScope::from_cgroup_path(path)?),
        };
        let rel = path.strip_prefix("/").unwrap_or(path);
        let dirs = match version {
            Version::V2 => vec![(String::new(), Path::new(CGROUP_ROOT).join(rel))],
            Version::V1 => v1_hierarchies()
                .into_iter()
                .map(|(name, mount)| (name, mount.join(rel)))
                .collect(),
        };
        Ok(Cgroup {
            path: path.to_path_buf(),
            version,
            id: id.to_string(),
            dirs,
            scope,
            manager: OnceLock::new(),
            pending: std::sync::Mutex::new(None),
        })
    }

    /// Starts making libcgroups' manager on another thread, so its cost (a few hundred
    /// syscalls on v1) overlaps the rest of `create` instead of adding to it.
    pub fn prefetch_manager(&self) {
        if self.applies_through_roots() {
            return;
        }
        let path = self.path.clone();
        let id = self.id.clone();
        let scope = self.scope.clone();
        let handle = std::thread::spawn(move || new_managers(&path, &id, scope.as_ref()));
        if let Ok(mut pending) = self.pending.lock() {
            *pending = Some(handle);
        }
    }

    fn managers(&self) -> Result<&Managers, CgroupError> {
        if let Some(m) = self.manager.get() {
            return Ok(m);
        }
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        let m = match pending {
            Some(handle) => handle.join().map_err(|_| CgroupError::Manager {
                path: self.path.clone(),
                message: "the thread making the cgroup manager panicked".into(),
            })??,
            None => new_managers(&self.path, &self.id, self.scope.as_ref())?,
        };
        Ok(self.manager.get_or_init(|| m))
    }

    /// The cgroupfs manager (with systemd: the one for the scope's own directory).
    fn manager(&self) -> Result<&AnyCgroupManager, CgroupError> {
        Ok(&self.managers()?.fs)
    }

    /// The systemd manager and the unit name, with `--systemd-cgroup`.
    fn systemd(&self) -> Result<Option<(&SystemdManager, String)>, CgroupError> {
        let Some(scope) = &self.scope else {
            return Ok(None);
        };
        let managers = self.managers()?;
        Ok(managers.systemd.as_ref().map(|m| (m, scope.unit())))
    }

    /// The systemd scope, with `--systemd-cgroup`.
    pub fn systemd_scope(&self) -> Option<&SystemdScope> {
        self.scope.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The directory of this cgroup in one hierarchy (v2: the only one; v1: `subsystem`).
    pub fn dir(&self, subsystem: &str) -> PathBuf {
        let found = self.dirs.iter().find(|(name, _)| match self.version {
            Version::V2 => true,
            Version::V1 => name.split(',').any(|n| n == subsystem),
        });
        match found {
            Some((_, d)) => d.clone(),
            None => Path::new(CGROUP_ROOT)
                .join(subsystem)
                .join(self.path.strip_prefix("/").unwrap_or(&self.path)),
        }
    }

    /// Whether the cgroup directory exists (in the pids hierarchy on v1, which every
    /// container cgroup gets).
    pub fn exists(&self) -> bool {
        self.dir("pids").exists()
    }

    /// Fails if the cgroup exists: it would belong to someone else.
    pub fn ensure_new(&self) -> Result<(), CgroupError> {
        if self.exists() {
            return Err(CgroupError::Exists {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn io_error(&self, op: &'static str, path: &Path, e: std::io::Error) -> CgroupError {
        CgroupError::Op {
            op,
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Creates the cgroup's directories and opens what the child needs to join it.
    pub fn create(&self) -> Result<Join, CgroupError> {
        if self.scope.is_some() {
            // A new scope is made by systemd around the child; an existing one (exec) is
            // joined through its directory, which Delegate=yes hands to us.
            let dir = self.dir("");
            if !dir.exists() {
                return Ok(Join::ByParent);
            }
            return self.open_v2_dir(&dir);
        }
        match self.version {
            Version::V1 => {
                let mut tasks = Vec::with_capacity(self.dirs.len());
                for (name, dir) in &self.dirs {
                    fs::create_dir_all(dir).map_err(|e| self.io_error("create", dir, e))?;
                    if name.split(',').any(|n| n == "cpuset") {
                        self.inherit_cpuset(dir)?;
                    }
                    let file = dir.join("tasks");
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(&file)
                        .map_err(|e| self.io_error("open", &file, e))?;
                    tasks.push(OwnedFd::from(f));
                }
                Ok(Join::V1Tasks(tasks))
            }
            Version::V2 => {
                let dir = self.create_v2_dirs()?;
                self.open_v2_dir(&dir)
            }
        }
    }

    fn open_v2_dir(&self, dir: &Path) -> Result<Join, CgroupError> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| self.io_error("open", dir, e))?;
        Ok(Join::V2Dir(OwnedFd::from(f)))
    }

    /// A new v1 cpuset cgroup starts with no cpus or mems and refuses tasks: it takes its
    /// parent's, and a parent without any (the runtime's parent cgroup, made just before)
    /// takes its own parent's first. The hierarchy's root always has both.
    fn inherit_cpuset(&self, dir: &Path) -> Result<(), CgroupError> {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            self.cpuset_value(dir, file)?;
        }
        Ok(())
    }

    /// `dir/file`'s value, copied from the nearest ancestor that has one where it is empty.
    fn cpuset_value(&self, dir: &Path, file: &str) -> Result<String, CgroupError> {
        let path = dir.join(file);
        let current = fs::read_to_string(&path).map_err(|e| self.io_error("read", &path, e))?;
        let current = current.trim();
        if !current.is_empty() {
            return Ok(current.to_string());
        }
        let Some(parent) = dir.parent() else {
            return Err(self.io_error(
                "inherit",
                &path,
                std::io::Error::other("no ancestor has a value"),
            ));
        };
        let value = self.cpuset_value(parent, file)?;
        fs::write(&path, &value).map_err(|e| self.io_error("write", &path, e))?;
        Ok(value)
    }

    /// Creates the v2 directory chain, enabling the root's controllers in every ancestor's
    /// `subtree_control` (never in the leaf: a cgroup with processes must not delegate).
    fn create_v2_dirs(&self) -> Result<PathBuf, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        let controllers = fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| self.io_error("read", &root.join("cgroup.controllers"), e))?;
        let enable: String = controllers
            .split_whitespace()
            .map(|c| format!("+{c} "))
            .collect();
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        let mut current = root.to_path_buf();
        for component in rel.components() {
            enable_subtree(&current, &enable);
            current.push(component);
            match fs::create_dir(&current) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_error("create", &current, e)),
            }
        }
        Ok(current)
    }

    /// Moves `pid` in through libcgroups: the slow path, for when the child could not join,
    /// and the systemd path ([`Join::ByParent`]): systemd starts the scope unit with `pid` in
    /// it (StartTransientUnit, `PIDs=[pid]`, `Delegate=yes`) and libcgroups waits until the
    /// pid shows in the scope's `cgroup.procs`.
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        if let Some((systemd, unit)) = self.systemd()? {
            systemd
                .add_task(Pid::from_raw(pid))
                .map_err(|e| CgroupError::Systemd {
                    unit: unit.clone(),
                    message: format!("start the scope with pid {pid}: {e}"),
                })?;
            return self.check_placed(pid, &unit);
        }
        self.manager()?
            .add_task(Pid::from_raw(pid))
            .map_err(|e| CgroupError::AddTask {
                pid,
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Our path is computed, not asked from systemd: prove systemd put the pid there, so
    /// every later cgroupfs operation works on the scope systemd made (a systemd whose own
    /// cgroup root is not `/` would place it elsewhere).
    fn check_placed(&self, pid: i32, unit: &str) -> Result<(), CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = fs::read_to_string(&file).map_err(|e| self.io_error("read", &file, e))?;
        let found = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("")
            .to_string();
        if Path::new(&found) != self.path {
            return Err(CgroupError::SystemdPlacement {
                pid,
                unit: unit.to_string(),
                expected: self.path.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Writes the requested limits (libcgroups); the directories must exist. With systemd
    /// they are set as unit properties first (so a `daemon-reload` keeps them), then written
    /// to the scope's cgroupfs files as on any v2 host, which covers what systemd has no
    /// property for (hugetlb, rdma, unified keys it does not know); a limit the kernel
    /// refuses fails naming its file.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let opts = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        if self.applies_through_roots() {
            match v1_roots::apply(&self.v1_mounts_and_dirs(), &opts) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "applying limits through the root manager failed; making one for the cgroup"
                ),
            }
        }
        if let Some((systemd, unit)) = self.systemd()? {
            systemd.apply(&opts).map_err(|e| CgroupError::Systemd {
                unit,
                message: format!("set resource properties: {e}"),
            })?;
        }
        self.manager()?
            .apply(&opts)
            .map_err(|e| CgroupError::Apply {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.apply_v2_no_swap(resources)
    }

    /// Whether limits go through the process's one v1 manager for the hierarchy roots
    /// (see [`v1_roots`]) instead of a manager made for this cgroup.
    fn applies_through_roots(&self) -> bool {
        self.version == Version::V1 && self.scope.is_none() && v1_roots::prepared()
    }

    /// (mount point, this cgroup's directory) of every v1 hierarchy with controllers.
    fn v1_mounts_and_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        v1_hierarchies()
            .into_iter()
            .map(|(_, mount)| {
                let dir = mount.join(rel);
                (mount, dir)
            })
            .collect()
    }

    /// OCI `swap` is memory plus swap; equal to `limit` it means "no swap", which on v2 is
    /// `memory.swap.max = 0`. libcgroups 0.7 skips writing a 0 there, leaving swap unlimited
    /// and the memory limit soft on hosts with swap.
    fn apply_v2_no_swap(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        if self.version != Version::V2 {
            return Ok(());
        }
        let Some(memory) = resources.memory() else {
            return Ok(());
        };
        if let (Some(limit), Some(swap)) = (memory.limit(), memory.swap()) {
            let file = self.dir("").join("memory.swap.max");
            if limit > 0 && swap == limit && file.exists() {
                fs::write(&file, "0").map_err(|e| self.io_error("write", &file, e))?;
            }
        }
        Ok(())
    }

    /// Every process in the cgroup and in any cgroup the job made below it.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        for dir in subtree(&self.dir("pids")) {
            let procs = dir.join("cgroup.procs");
            match fs::read_to_string(&procs) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                // Gone, or removed between open and read (kernfs answers ENODEV): no processes.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => return Err(self.io_error("read", &procs, e)),
            }
        }
        Ok(pids)
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.manager()?
            .freeze(FreezerState::Frozen)
            .map_err(|e| self.op_error("freeze", e))
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.manager()?
            .freeze(FreezerState::Thawed)
            .map_err(|e| self.op_error("thaw", e))
    }

    /// Whether the cgroup is frozen (paused).
    pub fn is_frozen(&self) -> bool {
        let (file, frozen) = match self.version {
            Version::V1 => (self.dir("freezer").join("freezer.state"), "FROZEN"),
            Version::V2 => (self.dir("").join("cgroup.freeze"), "1"),
        };
        fs::read_to_string(file)
            .map(|s| s.trim() == frozen)
            .unwrap_or(false)
    }

    /// Sends `signal` to every process in the cgroup. For SIGKILL the cgroup is frozen first
    /// (v1) so that nothing can fork past the kill, or `cgroup.kill` is used (v2).
    pub fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if self.pids()?.is_empty() {
            return Ok(());
        }
        if signal == Signal::SIGKILL && self.version == Version::V2 {
            let kill_file = self.dir("").join("cgroup.kill");
            if kill_file.exists() {
                return match fs::write(&kill_file, "1") {
                    // Removed meanwhile (systemd drops an emptied scope): nobody to kill.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other.map_err(|e| self.io_error("write", &kill_file, e)),
                };
            }
        }
        let freeze = signal == Signal::SIGKILL;
        if freeze {
            self.freeze()?;
        }
        let result = self.pids().map(|pids| {
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        });
        if freeze {
            self.thaw()?;
        }
        result
    }

    /// Kills everything inside and removes the cgroup directories; with systemd, stops the
    /// scope unit (only it: the slices above belong to systemd).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if self.dirs.iter().any(|(_, d)| d.exists()) {
            self.signal_all(Signal::SIGKILL)?;
            self.wait_empty(Duration::from_secs(5));
            for (_, dir) in &self.dirs {
                // Most jobs make no cgroups of their own: one rmdir, no walk of the tree.
                if self.scope.is_none() && removed_at_once(dir) {
                    continue;
                }
                // Sub-cgroups the job made go first: a cgroup with children cannot be removed.
                for d in subtree(dir) {
                    if self.scope.is_some() && d == *dir {
                        continue; // the scope's own directory is systemd's to remove
                    }
                    self.remove_dir(&d)?;
                }
            }
        }
        if self.scope.is_some() {
            self.stop_scope()?;
        }
        Ok(())
    }

    /// Stops the (now empty) scope unit and waits, bounded, for systemd to remove its cgroup;
    /// a directory systemd left is removed here.
    fn stop_scope(&self) -> Result<(), CgroupError> {
        let Some((systemd, unit)) = self.systemd()? else {
            return Ok(());
        };
        // An emptied scope stops by itself, and systemd can unload it between libcgroups'
        // check that the unit exists and its StopUnit, which then fails: a failed stop is
        // fine when the scope's cgroup goes away all the same.
        let stopped = systemd.remove();
        let dir = self.dir("");
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        while dir.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        match stopped {
            Ok(()) => self.remove_dir(&dir),
            Err(e) if !dir.exists() => {
                tracing::debug!(%unit, error = %e, "the scope went away by itself");
                Ok(())
            }
            Err(e) => Err(CgroupError::Systemd {
                unit,
                message: format!("stop: {e}"),
            }),
        }
    }

    /// rmdir, retried while the kernel still counts exiting tasks (EBUSY).
    fn remove_dir(&self, dir: &Path) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && start.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(self.io_error("remove", dir, e)),
            }
        }
    }

    /// Waits (bounded) until no process is left, so removal does not race the kernel.
    fn wait_empty(&self, limit: Duration) {
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        while self.pids().map(|p| !p.is_empty()).unwrap_or(false) && start.elapsed() < limit {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        self.manager()?
            .stats()
            .map_err(|e| self.op_error("stats", e))
    }

    /// How job-init should show this cgroup at `/sys/fs/cgroup`.
    pub fn mount_plan(&self) -> CgroupMount {
        match self.version {
            Version::V2 => CgroupMount::V2 {
                host_dir: self.dir(""),
            },
            Version::V1 => CgroupMount::V1 {
                binds: self.dirs.clone(),
            },
        }
    }

    fn op_error(&self, op: &'static str, e: impl std::fmt::Display) -> CgroupError {
        CgroupError::Op {
            op,
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

fn new_managers(
    path: &Path,
    id: &str,
    scope: Option<&SystemdScope>,
) -> Result<Managers, CgroupError> {
    let fs = create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        // The cgroupfs manager for the path; with systemd, the scope's directory.
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| CgroupError::Manager {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let systemd = match scope {
        None => None,
        Some(scope) => Some(
            SystemdManager::new(
                PathBuf::from(CGROUP_ROOT),
                scope.manager_path(),
                id.to_string(),
                // The system instance: job-runtime runs as root.
                true,
                PROCESS_IN_CGROUP_TIMEOUT_DURATION,
            )
            .map_err(|e| CgroupError::Systemd {
                unit: scope.unit(),
                message: format!("connect to systemd over D-Bus: {e}"),
            })?,
        ),
    };
    Ok(Managers { fs, systemd })
}

/// Whether one rmdir removed `dir` (or it was gone); a cgroup with children or still
/// counting exiting tasks answers EBUSY, which the caller handles.
fn removed_at_once(dir: &Path) -> bool {
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// `dir` and every cgroup below it, deepest first (the order removal needs).
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return out;
    };
    // cgroupfs (kernfs) counts a directory's subdirectories in its link count: 2 means a leaf,
    // which spares listing the dozens of control files of every hierarchy of every job.
    if meta.nlink() != 2 {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.extend(subtree(&e.path()));
                }
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Best effort: a controller the parent cannot delegate is reported when limits are applied.
fn enable_subtree(dir: &Path, enable: &str) {
    for c in enable.split_whitespace() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), c);
    }
}

/// The host's v1 hierarchies that carry controllers: (directory name, mount point). Read once
/// per process, as [`host_version`]: every `Cgroup::open` needs them, and a daemon opens one
/// for each job's start, kill and removal.
fn v1_hierarchies() -> Vec<(String, PathBuf)> {
    static FOUND: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return found.clone();
    }
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    FOUND.get_or_init(|| v1_hierarchies_in(&info)).clone()
}

fn v1_hierarchies_in(info: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let super_opts = r.nth(1).unwrap_or("");
        // Named hierarchies (name=systemd) hold no controllers the runtime manages.
        if super_opts.split(',').any(|o| o.starts_with("name=")) {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point);
        if let Some(name) = mount_point.file_name() {
            out.push((name.to_string_lossy().into_owned(), mount_point.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_the_runtime_parent() {
        assert_eq!(
            resolve_path(None, "c1", false).unwrap(),
            PathBuf::from("/job-runtime/c1")
        );
        assert_eq!(
            resolve_path(Some(Path::new("a/b")), "c1", false).unwrap(),
            PathBuf::from("/job-runtime/a/b")
        );
        assert_eq!(
            resolve_path(Some(Path::new("/default/c1")), "c1", false).unwrap(),
            PathBuf::from("/default/c1")
        );
        assert!(resolve_path(Some(Path::new("/a/../b")), "c1", false).is_err());
        assert_eq!(
            resolve_path(
                Some(Path::new("machine-libpod.slice:libpod:abc")),
                "abc",
                true
            )
            .unwrap(),
            PathBuf::from("/machine.slice/machine-libpod.slice/libpod-abc.scope")
        );
        assert!(resolve_path(Some(Path::new("bad")), "abc", true).is_err());
    }

    fn systemd_path(raw: &str) -> Result<PathBuf, CgroupError> {
        resolve_path(Some(Path::new(raw)), "id1", true)
    }

    #[test]
    fn systemd_paths_follow_systemd_layout() {
        let cases = [
            ("system.slice:jobworker:abc", "/system.slice/jobworker-abc.scope"),
            (":jobworker:abc", "/system.slice/jobworker-abc.scope"),
            ("-.slice:jobworker:abc", "/jobworker-abc.scope"),
            (
                "kubepods-burstable-pod1.slice:cri-containerd:abc",
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope",
            ),
            ("", "/system.slice/job-runtime-id1.scope"),
        ];
        for (raw, want) in cases {
            assert_eq!(systemd_path(raw).unwrap(), PathBuf::from(want), "{raw}");
        }
        assert_eq!(
            resolve_path(None, "id1", true).unwrap(),
            PathBuf::from("/system.slice/job-runtime-id1.scope")
        );
    }

    #[test]
    fn malformed_systemd_paths_are_refused_with_the_reason() {
        let cases = [
            ("a:b", "slice:prefix:name"),
            ("a:b:c:d", "slice:prefix:name"),
            ("x.slice:p:", "name"),
            ("x.slice::n", "prefix"),
            ("system:p:n", "slice name"),
            ("a--b.slice:p:n", "slice name"),
            ("-a.slice:p:n", "slice name"),
            (".slice:p:n", "slice name"),
            ("a/b.slice:p:n", "slice name"),
            ("system.slice:p:n.slice", "slice unit"),
            ("system.slice:p/q:n", "unit name characters"),
            ("system.slice:p:n@1", "unit name characters"),
        ];
        for (raw, want) in cases {
            let err = systemd_path(raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw}: {err}");
            assert!(err.contains(&format!("{raw:?}")), "{raw}: {err}");
        }
    }

    #[test]
    fn systemd_scope_comes_back_from_its_cgroup_path() {
        for raw in [
            "system.slice:jobworker:abc",
            "-.slice:a:b",
            "machine-libpod.slice:cri-containerd:x-y",
        ] {
            let scope = SystemdScope::parse(Some(raw), "id").unwrap();
            let back = SystemdScope::from_cgroup_path(&scope.cgroup_path()).unwrap();
            assert_eq!(back.unit(), scope.unit(), "{raw}");
            assert_eq!(back.cgroup_path(), scope.cgroup_path(), "{raw}");
            assert_eq!(back.slice(), scope.slice(), "{raw}");
        }
        assert!(SystemdScope::from_cgroup_path(Path::new("/job-runtime/abc")).is_err());
    }

    /// Warms the process up as the shim server does; false (test skipped) on a v2 host, where
    /// the root manager does not exist.
    fn v1_host_warmed_up() -> bool {
        if host_version().unwrap() != Version::V1 {
            eprintln!("skipped: this host runs cgroup v2 (the root manager is v1 only)");
            return false;
        }
        warm_up();
        true
    }

    /// Limits applied through the process's one root manager land in the container's cgroup
    /// and nowhere else: not in the hierarchy roots, not as binds in this process's mount
    /// namespace; and no manager is made for the cgroup itself.
    #[test]
    fn v1_limits_through_the_root_manager_land_in_the_containers_cgroup() {
        if !v1_host_warmed_up() {
            return;
        }
        assert!(v1_roots::prepared(), "warm_up made no root manager");
        let path = PathBuf::from(format!("/job-runtime-test/v1roots-{}", std::process::id()));
        let cg = Cgroup::open(&path, false, "v1roots").unwrap();
        cg.ensure_new().unwrap();
        let join = cg.create().unwrap();
        let mountinfo_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_memory = fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 50 * 1024 * 1024},
            "pids": {"limit": 17},
            "cpu": {"quota": 20000, "period": 100000}
        }))
        .unwrap();
        let applied = cg.apply(&resources);
        let read = |sub: &str, file: &str| {
            fs::read_to_string(cg.dir(sub).join(file))
                .unwrap()
                .trim()
                .to_string()
        };
        let seen = (
            read("memory", "memory.limit_in_bytes"),
            read("pids", "pids.max"),
            read("cpu", "cpu.cfs_quota_us"),
        );
        let made_manager = cg.manager.get().is_some();
        drop(join);
        cg.destroy().unwrap();
        for (_, mount) in v1_hierarchies() {
            let _ = fs::remove_dir(mount.join("job-runtime-test"));
        }
        applied.unwrap();
        assert_eq!(
            seen,
            ("52428800".into(), "17".into(), "20000".into()),
            "limits in the container's cgroup"
        );
        assert!(
            !made_manager,
            "a manager was made for the cgroup: the root route was not taken"
        );
        assert_eq!(
            fs::read_to_string("/proc/self/mountinfo").unwrap(),
            mountinfo_before,
            "the binds stayed behind in this process's mount namespace"
        );
        assert_eq!(
            fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok(),
            root_memory.ok(),
            "the root memory cgroup changed"
        );
    }

    /// A directory that cannot be bound stops the route before libcgroups writes anything.
    #[test]
    fn v1_roots_refuse_a_hierarchy_they_cannot_cover() {
        if !v1_host_warmed_up() {
            return;
        }
        let mut pairs = Cgroup::open(Path::new("/job-runtime-test/absent"), false, "absent")
            .unwrap()
            .v1_mounts_and_dirs();
        assert!(!pairs.is_empty());
        pairs.truncate(1);
        let resources: LinuxResources =
            serde_json::from_value(serde_json::json!({"pids": {"limit": 3}})).unwrap();
        let opts = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        let err = v1_roots::apply(&pairs, &opts).unwrap_err().to_string();
        assert!(err.contains("/job-runtime-test/absent"), "{err}");
    }
}
