//! The container configuration: loading and checking a bundle's `config.json`, container IDs,
//! and the secure default spec that `job-runtime spec`, rootfs-builder and jobd all share.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde_json::json;

/// Where container root is mapped on the host by the default spec: an unprivileged range
/// that no host account uses, so a process that escapes holds no host identity.
pub const DEFAULT_HOST_ID_BASE: u32 = 100_000;
/// How many ids the default mapping covers (container 0..65535).
pub const DEFAULT_ID_RANGE: u32 = 65_536;
/// The longest container ID accepted (the same bound runc documents).
pub const MAX_ID_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON or field: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field} is required")]
    Missing { path: PathBuf, field: &'static str },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
}

/// A spec that has been read from a bundle and checked, with its rootfs made absolute.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: Spec,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
}

/// Checks a container ID: non-empty, at most [`MAX_ID_LEN`] bytes, only `[A-Za-z0-9_+.-]`,
/// and not `.` or `..`, so that it is always one safe path component under the state root.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let bad = |reason| {
        Err(SpecError::InvalidId {
            id: id.chars().take(64).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("it is longer than 1024 bytes");
    }
    if id == "." || id == ".." {
        return bad("it must not be . or ..");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'))
    {
        return bad("only letters, digits and _ + . - are allowed");
    }
    Ok(())
}

/// Reads `BUNDLE/config.json` and checks what the runtime relies on.
pub fn load(bundle: &Path) -> Result<LoadedSpec, SpecError> {
    load_with_text(bundle).map(|(loaded, _)| loaded)
}

/// [`load`], also returning the bytes of `config.json` as read: what `create` freezes, so the
/// frozen copy is the file the container was made from, not a re-serialisation of it.
pub fn load_with_text(bundle: &Path) -> Result<(LoadedSpec, Vec<u8>), SpecError> {
    let bundle = std::path::absolute(bundle).map_err(|source| SpecError::Read {
        path: bundle.to_path_buf(),
        source,
    })?;
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| SpecError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let rootfs = check(&spec, &bundle, &path)?;
    check_unsupported(&spec, &path)?;
    let loaded = LoadedSpec {
        spec,
        bundle,
        rootfs,
    };
    Ok((loaded, text))
}

/// Validates a parsed spec and returns the absolute rootfs path.
fn check(spec: &Spec, bundle: &Path, path: &Path) -> Result<PathBuf, SpecError> {
    let invalid = |field: &str, message: String| SpecError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let root = spec.root().as_ref().ok_or(SpecError::Missing {
        path: path.to_path_buf(),
        field: "root.path",
    })?;
    if root.path().as_os_str().is_empty() {
        return Err(SpecError::Missing {
            path: path.to_path_buf(),
            field: "root.path",
        });
    }
    let rootfs = bundle.join(root.path());
    match fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ))
        }
        Err(e) => {
            return Err(invalid(
                "root.path",
                format!("rootfs {} does not exist: {e}", rootfs.display()),
            ))
        }
    }
    let process = spec.process().as_ref().ok_or(SpecError::Missing {
        path: path.to_path_buf(),
        field: "process",
    })?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::Missing {
            path: path.to_path_buf(),
            field: "process.args",
        });
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{} must be an absolute path", process.cwd().display()),
        ));
    }
    let linux = spec.linux().as_ref().ok_or(SpecError::Missing {
        path: path.to_path_buf(),
        field: "linux",
    })?;
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        if namespaces[..i].iter().any(|o| o.typ() == ns.typ()) {
            return Err(invalid(
                "linux.namespaces",
                format!("namespace {} is listed twice", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(invalid(
                "linux.namespaces",
                "time namespaces are not supported".into(),
            ));
        }
    }
    let has_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let new_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let maps = linux.uid_mappings().as_deref().unwrap_or_default().len()
        + linux.gid_mappings().as_deref().unwrap_or_default().len();
    if new_userns
        && (linux
            .uid_mappings()
            .as_deref()
            .unwrap_or_default()
            .is_empty()
            || linux
                .gid_mappings()
                .as_deref()
                .unwrap_or_default()
                .is_empty())
    {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs both uidMappings and gidMappings".into(),
        ));
    }
    if !has_userns && maps > 0 {
        return Err(invalid(
            "linux.uidMappings",
            "id mappings are given but there is no user namespace".into(),
        ));
    }
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        let needs = sysctl_namespace(key).ok_or_else(|| {
            invalid(
                "linux.sysctl",
                format!("{key} is not namespaced; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set"),
            )
        })?;
        if !namespaces.iter().any(|n| n.typ() == needs) {
            return Err(invalid(
                "linux.sysctl",
                format!("{key} needs a {needs} namespace, which the spec does not have"),
            ));
        }
    }
    for (field, paths) in [
        ("linux.maskedPaths", linux.masked_paths()),
        ("linux.readonlyPaths", linux.readonly_paths()),
    ] {
        if let Some(bad) = paths.iter().flatten().find(|p| !p.starts_with('/')) {
            return Err(invalid(field, format!("{bad} must be an absolute path")));
        }
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                "mounts.destination",
                format!("{} must be an absolute path", m.destination().display()),
            ));
        }
    }
    Ok(rootfs)
}

/// Fields job-runtime does not implement: an error where ignoring them would leave the job
/// less confined than its spec says, a warning where the runtime-spec allows ignoring them.
fn check_unsupported(spec: &Spec, path: &Path) -> Result<(), SpecError> {
    let refuse = |field: &str, what: &str| {
        Err(SpecError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: format!("{what} is not supported by job-runtime; remove the field"),
        })
    };
    if let Some(linux) = spec.linux() {
        if linux.intel_rdt().is_some() {
            return refuse("linux.intelRdt", "Intel RDT");
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return refuse(
                "linux.netDevices",
                "moving network devices into the container",
            );
        }
        if linux.memory_policy().is_some() {
            return refuse("linux.memoryPolicy", "a NUMA memory policy");
        }
        if linux.personality().is_some() {
            return refuse("linux.personality", "setting the personality");
        }
        if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) && selinux_enabled() {
            return refuse("linux.mountLabel", "SELinux labelling");
        }
    }
    if let Some(process) = spec.process() {
        // Without the LSM on the host a label confines nothing: runc ignores it too.
        if process
            .apparmor_profile()
            .as_ref()
            .is_some_and(|p| !p.is_empty())
        {
            if apparmor_enabled() {
                return refuse("process.apparmorProfile", "AppArmor confinement");
            }
            tracing::warn!("process.apparmorProfile ignored: AppArmor is not enabled on this host");
        }
        if process
            .selinux_label()
            .as_ref()
            .is_some_and(|l| !l.is_empty())
            && selinux_enabled()
        {
            return refuse("process.selinuxLabel", "SELinux labelling");
        }
        if process.io_priority().is_some() || process.scheduler().is_some() {
            tracing::warn!("process.ioPriority and process.scheduler are ignored by job-runtime");
        }
    }
    Ok(())
}

fn apparmor_enabled() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// The namespace a sysctl key belongs to, or `None` for keys that would change the host.
pub fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    if key.starts_with("net.") {
        return Some(LinuxNamespaceType::Network);
    }
    let ipc = [
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        return Some(LinuxNamespaceType::Ipc);
    }
    None
}

/// The secure default spec: every namespace including user (container root mapped to an
/// unprivileged host range), read-only root, the usual mounts, `noNewPrivileges` and runc's
/// small default capability set. `args` becomes `process.args` (`sh` when empty).
pub fn default_spec(args: &[String]) -> Spec {
    let args: Vec<String> = if args.is_empty() {
        vec!["sh".into()]
    } else {
        args.to_vec()
    };
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps
            },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "job",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "uidMappings": [ { "containerID": 0, "hostID": DEFAULT_HOST_ID_BASE, "size": DEFAULT_ID_RANGE } ],
            "gidMappings": [ { "containerID": 0, "hostID": DEFAULT_HOST_ID_BASE, "size": DEFAULT_ID_RANGE } ],
            "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/proc/interrupts", "/sys/firmware", "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ],
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, { "type": "cgroup" }, { "type": "user" }
            ]
        }
    });
    let mut spec: Spec = serde_json::from_value(value).expect("the built-in default spec is valid");
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(Some(crate::seccomp_default::default_profile()));
    }
    spec
}

/// Writes a spec as indented JSON, atomically (temporary file in the same directory, then rename).
pub fn save_pretty(spec: &Spec, path: &Path) -> Result<(), SpecError> {
    let text = serde_json::to_vec_pretty(spec).map_err(|e| SpecError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &text).map_err(|source| SpecError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `data` so that readers see either the old or the new file, never a part.
/// No fsync: state lives in a runtime directory that does not outlive a reboot, and a sync
/// costs milliseconds on every container start.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(1025)] {
            assert!(validate_id(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(validate_id(&"x".repeat(1024)).is_ok());
    }

    #[test]
    fn default_spec_is_secure() {
        let spec = default_spec(&["/bin/true".into()]);
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::User,
        ] {
            assert!(types.contains(&t), "{t:?} missing");
        }
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            linux.uid_mappings().as_ref().unwrap()[0].host_id(),
            DEFAULT_HOST_ID_BASE
        );
        assert_eq!(process.args().as_ref().unwrap(), &vec!["/bin/true"]);
    }

    #[test]
    fn load_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), b"{ not json").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");

        let mut spec = default_spec(&[]);
        spec.set_root(None);
        save_pretty(&spec, &dir.path().join("config.json")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("root.path is required"), "{err}");

        let spec = default_spec(&[]);
        save_pretty(&spec, &dir.path().join("config.json")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("rootfs") && err.contains("does not exist"),
            "{err}"
        );

        fs::create_dir(dir.path().join("rootfs")).unwrap();
        assert!(load(dir.path()).is_ok());

        let text = fs::read_to_string(dir.path().join("config.json"))
            .unwrap()
            .replace("\"uts\"", "\"bogus\"");
        fs::write(dir.path().join("config.json"), text).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
