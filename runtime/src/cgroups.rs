//! The container's cgroup, through libcgroups (v1 and v2, detected), plus what libcgroups does
//! not do: refusing cgroups the runtime did not create, killing everything inside, and the
//! mount plan job-init uses for `/sys/fs/cgroup`.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState,
};
use libcgroups::stats::Stats;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::handshake::CgroupMount;

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

pub fn host_version() -> Result<Version, CgroupError> {
    match get_cgroup_setup().map_err(|e| CgroupError::Detect(e.to_string()))? {
        CgroupSetup::Unified => Ok(Version::V2),
        CgroupSetup::Legacy | CgroupSetup::Hybrid => Ok(Version::V1),
    }
}

/// Turns the spec's `cgroupsPath` into the path the container's cgroup will have.
///
/// Absolute paths are used as given; relative ones, and the default (the container ID), go
/// under [`RUNTIME_PARENT`]. With the systemd driver, `slice:prefix:name` is accepted and
/// mapped to the path systemd would give it (`/slice/prefix-name.scope`).
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
        return systemd_path(raw.as_deref(), id);
    }
    Ok(match raw {
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) if !p.is_empty() => Path::new(RUNTIME_PARENT).join(p),
        _ => Path::new(RUNTIME_PARENT).join(id),
    })
}

fn systemd_path(raw: Option<&str>, id: &str) -> Result<PathBuf, CgroupError> {
    let raw = raw.unwrap_or("");
    let parts: Vec<&str> = raw.split(':').collect();
    let (slice, prefix, name) = match parts.as_slice() {
        [""] => ("system.slice", "job-runtime", id),
        [slice, prefix, name] => (*slice, *prefix, *name),
        _ => {
            return Err(CgroupError::InvalidPath {
                path: raw.to_string(),
                reason: "with --systemd-cgroup it must be slice:prefix:name",
            })
        }
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    // Nested slices (a-b.slice) live in a-b.slice under a.slice, as systemd lays them out.
    let mut path = PathBuf::from("/");
    let stem = slice.trim_end_matches(".slice");
    let mut acc = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            acc.push('-');
        }
        acc.push_str(part);
        path.push(format!("{acc}.slice"));
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
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
}

/// One container cgroup, possibly not created yet.
pub struct Cgroup {
    path: PathBuf,
    version: Version,
    id: String,
    /// The cgroup's directory in each hierarchy: (hierarchy name, directory). One on v2.
    dirs: Vec<(String, PathBuf)>,
    /// libcgroups' manager, made on first use: on v1 it reads mountinfo once per controller.
    manager: OnceLock<AnyCgroupManager>,
    /// A manager being made on another thread (see [`Cgroup::prefetch_manager`]).
    pending:
        std::sync::Mutex<Option<std::thread::JoinHandle<Result<AnyCgroupManager, CgroupError>>>>,
}

impl Cgroup {
    /// A handle for `path` (from [`resolve_path`]); nothing is created until [`Cgroup::create`].
    pub fn open(path: &Path, systemd: bool, id: &str) -> Result<Cgroup, CgroupError> {
        if systemd && !Path::new("/run/systemd/system").exists() {
            return Err(CgroupError::NoSystemd);
        }
        let version = host_version()?;
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
            manager: OnceLock::new(),
            pending: std::sync::Mutex::new(None),
        })
    }

    /// Starts making libcgroups' manager on another thread, so its cost (a few hundred
    /// syscalls on v1) overlaps the rest of `create` instead of adding to it.
    pub fn prefetch_manager(&self) {
        let path = self.path.clone();
        let id = self.id.clone();
        let handle = std::thread::spawn(move || new_manager(&path, &id));
        if let Ok(mut pending) = self.pending.lock() {
            *pending = Some(handle);
        }
    }

    fn manager(&self) -> Result<&AnyCgroupManager, CgroupError> {
        if let Some(m) = self.manager.get() {
            return Ok(m);
        }
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        let m = match pending {
            Some(handle) => handle.join().map_err(|_| CgroupError::Manager {
                path: self.path.clone(),
                message: "the thread making the cgroup manager panicked".into(),
            })??,
            None => new_manager(&self.path, &self.id)?,
        };
        Ok(self.manager.get_or_init(|| m))
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
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&dir)
                    .map_err(|e| self.io_error("open", &dir, e))?;
                Ok(Join::V2Dir(OwnedFd::from(f)))
            }
        }
    }

    /// A new v1 cpuset cgroup starts with no cpus or mems and refuses tasks: copy the parent's.
    fn inherit_cpuset(&self, dir: &Path) -> Result<(), CgroupError> {
        let mut chain = Vec::new();
        let mut d = dir.to_path_buf();
        while d.join("cpuset.cpus").exists() {
            chain.push(d.clone());
            if !d.pop() {
                break;
            }
        }
        // From the top down, each level takes its parent's values where it has none.
        for pair in chain.windows(2).rev() {
            let (child, parent) = (&pair[0], &pair[1]);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let current = fs::read_to_string(child.join(file)).unwrap_or_default();
                if current.trim().is_empty() {
                    let value = fs::read_to_string(parent.join(file))
                        .map_err(|e| self.io_error("read", &parent.join(file), e))?;
                    fs::write(child.join(file), value.trim())
                        .map_err(|e| self.io_error("write", &child.join(file), e))?;
                }
            }
        }
        Ok(())
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

    /// Moves `pid` in through libcgroups: the slow path, for when the child could not join.
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager()?
            .add_task(Pid::from_raw(pid))
            .map_err(|e| CgroupError::AddTask {
                pid,
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Writes the requested limits (libcgroups); the directories must exist.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.manager()?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| CgroupError::Apply {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.apply_v2_no_swap(resources)
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
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
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
                return fs::write(&kill_file, "1")
                    .map_err(|e| self.io_error("write", &kill_file, e));
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

    /// Kills everything inside and removes the cgroup directories.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.dirs.iter().any(|(_, d)| d.exists()) {
            return Ok(());
        }
        self.signal_all(Signal::SIGKILL)?;
        self.wait_empty(Duration::from_secs(5));
        for (_, dir) in &self.dirs {
            // Sub-cgroups the job made go first: a cgroup with children cannot be removed.
            for d in subtree(dir) {
                self.remove_dir(&d)?;
            }
        }
        Ok(())
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

fn new_manager(path: &Path, id: &str) -> Result<AnyCgroupManager, CgroupError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        // A systemd path was already translated to its cgroupfs form.
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| CgroupError::Manager {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `dir` and every cgroup below it, deepest first (the order removal needs).
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(subtree(&e.path()));
            }
        }
    }
    if dir.exists() {
        out.push(dir.to_path_buf());
    }
    out
}

/// Best effort: a controller the parent cannot delegate is reported when limits are applied.
fn enable_subtree(dir: &Path, enable: &str) {
    for c in enable.split_whitespace() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), c);
    }
}

/// The host's v1 hierarchies that carry controllers: (directory name, mount point).
fn v1_hierarchies() -> Vec<(String, PathBuf)> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
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
}
