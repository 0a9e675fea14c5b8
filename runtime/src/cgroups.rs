//! The container's cgroup, through libcgroups (v1 and v2, detected), plus what libcgroups does
//! not do: refusing cgroups the runtime did not create, killing everything inside, and the
//! mount plan job-init uses for `/sys/fs/cgroup`.

use std::fs;
use std::path::{Path, PathBuf};
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

/// One container cgroup, possibly not created yet.
pub struct Cgroup {
    manager: AnyCgroupManager,
    path: PathBuf,
    version: Version,
}

impl Cgroup {
    /// A handle for `path` (from [`resolve_path`]); nothing is created until [`Cgroup::add_task`].
    pub fn open(path: &Path, systemd: bool, id: &str) -> Result<Cgroup, CgroupError> {
        if systemd && !Path::new("/run/systemd/system").exists() {
            return Err(CgroupError::NoSystemd);
        }
        let version = host_version()?;
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: path.to_path_buf(),
            // The systemd path was already translated to its cgroupfs form.
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| CgroupError::Manager {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Cgroup {
            manager,
            path: path.to_path_buf(),
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The directory of this cgroup in one hierarchy (v2: the only one; v1: `subsystem`).
    fn dir(&self, subsystem: &str) -> PathBuf {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.version {
            Version::V2 => Path::new(CGROUP_ROOT).join(rel),
            Version::V1 => v1_mount_point(subsystem)
                .unwrap_or_else(|| Path::new(CGROUP_ROOT).join(subsystem))
                .join(rel),
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

    /// Creates the cgroup if needed and moves `pid` into it.
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|e| CgroupError::AddTask {
                pid,
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Writes the requested limits; on v1 this must follow [`Cgroup::add_task`].
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| CgroupError::Apply {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let procs = self.dir("pids").join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(|e| self.op_error("read", e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.manager
            .freeze(FreezerState::Frozen)
            .map_err(|e| self.op_error("freeze", e))
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.manager
            .freeze(FreezerState::Thawed)
            .map_err(|e| self.op_error("thaw", e))
    }

    /// Whether the cgroup is frozen (paused).
    pub fn is_frozen(&self) -> bool {
        match self.version {
            Version::V1 => fs::read_to_string(self.dir("freezer").join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false),
            Version::V2 => fs::read_to_string(self.dir("").join("cgroup.freeze"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false),
        }
    }

    /// Sends `signal` to every process in the cgroup. For SIGKILL the cgroup is frozen first
    /// (v1) so that nothing can fork past the kill, or `cgroup.kill` is used (v2).
    pub fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        if signal == Signal::SIGKILL && self.version == Version::V2 {
            let kill_file = self.dir("").join("cgroup.kill");
            if kill_file.exists() {
                return fs::write(&kill_file, "1").map_err(|e| self.op_error("kill", e));
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
        if !self.exists() {
            return Ok(());
        }
        self.signal_all(Signal::SIGKILL)?;
        self.wait_empty(Duration::from_secs(5));
        self.manager
            .remove()
            .map_err(|e| self.op_error("remove", e))
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
        self.manager.stats().map_err(|e| self.op_error("stats", e))
    }

    /// How job-init should show this cgroup at `/sys/fs/cgroup`.
    pub fn mount_plan(&self) -> CgroupMount {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.version {
            Version::V2 => CgroupMount::V2 {
                host_dir: Path::new(CGROUP_ROOT).join(rel),
            },
            Version::V1 => CgroupMount::V1 {
                binds: v1_hierarchies()
                    .into_iter()
                    .map(|(name, mount)| (name, mount.join(rel)))
                    .collect(),
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

fn v1_mount_point(subsystem: &str) -> Option<PathBuf> {
    v1_hierarchies()
        .into_iter()
        .find(|(name, _)| name.split(',').any(|n| n == subsystem))
        .map(|(_, m)| m)
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
