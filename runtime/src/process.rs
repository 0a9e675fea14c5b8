//! The container process's identity and limits: rlimits, user and groups, capabilities,
//! `no_new_privs`, working directory and the executable to run. Runs inside job-init.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::errno::Errno;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, User};

use crate::mounts::errno_text;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("rlimit {name}: {reason}")]
    Rlimit { name: String, reason: String },
    #[error("set {what} to {value}: {reason}")]
    Identity {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("capability {name}: {reason}")]
    Capability { name: String, reason: String },
    #[error("cwd {0} does not exist in the container")]
    NoCwd(PathBuf),
    #[error("cwd {path}: {reason}")]
    Cwd { path: PathBuf, reason: String },
    #[error("executable {0:?} not found in PATH")]
    NotFound(String),
    #[error("executable {path:?}: {reason}")]
    NotExecutable { path: String, reason: String },
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("set no_new_privs: {0}")]
    NoNewPrivs(String),
}

/// glibc types `setrlimit`'s resource as its own enum type, musl as a plain int.
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// Name -> resource number for every rlimit the runtime-spec names.
fn rlimit_resource(name: &str) -> Option<RlimitResource> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Applies the spec's rlimits. Must run before privileges are dropped.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<(), ProcessError> {
    for r in rlimits {
        let name = serde_name(&r.typ());
        let resource = rlimit_resource(&name).ok_or_else(|| ProcessError::Rlimit {
            name: name.clone(),
            reason: "unknown rlimit type".into(),
        })?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads one valid rlimit struct that lives for the call.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            let e = Errno::last();
            let reason = if e == Errno::EPERM {
                format!(
                    "soft {} hard {}: {} (raising a hard limit needs CAP_SYS_RESOURCE)",
                    r.soft(),
                    r.hard(),
                    errno_text(e)
                )
            } else {
                format!("soft {} hard {}: {}", r.soft(), r.hard(), errno_text(e))
            };
            return Err(ProcessError::Rlimit { name, reason });
        }
    }
    Ok(())
}

fn to_caps(set: &Option<Capabilities>) -> Result<CapsHashSet, ProcessError> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = serde_name(c);
        let cap = Cap::from_str(&name).map_err(|e| ProcessError::Capability {
            name: name.clone(),
            reason: format!("unknown to this kernel interface: {e}"),
        })?;
        out.insert(cap);
    }
    Ok(out)
}

/// The capability sets after parsing, ready to apply.
pub struct CapPlan {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

pub fn plan_caps(c: &LinuxCapabilities) -> Result<CapPlan, ProcessError> {
    Ok(CapPlan {
        bounding: to_caps(c.bounding())?,
        effective: to_caps(c.effective())?,
        permitted: to_caps(c.permitted())?,
        inheritable: to_caps(c.inheritable())?,
        ambient: to_caps(c.ambient())?,
    })
}

fn cap_err(name: &str) -> impl Fn(caps::errors::CapsError) -> ProcessError + '_ {
    move |e| ProcessError::Capability {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Drops every capability outside the bounding set; needs CAP_SETPCAP, so it runs while the
/// process is still root.
pub fn drop_bounding(plan: &CapPlan) -> Result<(), ProcessError> {
    for cap in caps::all() {
        if plan.bounding.contains(&cap) {
            continue;
        }
        // Dropping is idempotent, so only a failure needs the set read: a capability newer
        // than this kernel fails to drop and is not in the set either.
        if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                return Err(cap_err("bounding")(e));
            }
        }
    }
    Ok(())
}

/// Sets the remaining sets exactly as the spec says; runs after the user switch.
pub fn apply_caps(plan: &CapPlan) -> Result<(), ProcessError> {
    // Effective shrinks first: the kernel refuses a permitted set that leaves it uncovered.
    caps::set(None, CapSet::Effective, &plan.effective).map_err(cap_err("effective"))?;
    caps::set(None, CapSet::Permitted, &plan.permitted).map_err(cap_err("permitted"))?;
    caps::set(None, CapSet::Inheritable, &plan.inheritable).map_err(cap_err("inheritable"))?;
    caps::clear(None, CapSet::Ambient).map_err(cap_err("ambient"))?;
    for cap in &plan.ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(cap_err("ambient"))?;
    }
    Ok(())
}

/// Switches to the spec's user: groups first, then gid, then uid, keeping capabilities across
/// the uid change so that [`apply_caps`] can set them exactly afterwards.
pub fn set_user(user: &User) -> Result<(), ProcessError> {
    let id_err = |what, value: String| {
        move |e: Errno| ProcessError::Identity {
            what,
            value,
            reason: errno_text(e),
        }
    };
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is denied when the user namespace was set up with "setgroups deny";
    // an empty list is then the only state there is.
    match setgroups(&groups) {
        Ok(()) => {}
        Err(Errno::EPERM) if groups.is_empty() => {}
        Err(e) => return Err(id_err("additionalGids", format!("{groups:?}"))(e)),
    }
    // SAFETY: prctl(PR_SET_KEEPCAPS) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(id_err("gid", user.gid().to_string()))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(id_err("uid", user.uid().to_string()))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), ProcessError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ProcessError::NoNewPrivs(errno_text(Errno::last())));
    }
    Ok(())
}

/// Changes to the process's cwd and checks it is inside the container: a cwd that resolves
/// outside the root (a leaked directory fd, CVE-2024-21626) is refused.
pub fn enter_cwd(cwd: &Path) -> Result<(), ProcessError> {
    match nix::unistd::chdir(cwd) {
        Ok(()) => {}
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Err(ProcessError::NoCwd(cwd.into())),
        Err(e) => {
            return Err(ProcessError::Cwd {
                path: cwd.into(),
                reason: errno_text(e),
            })
        }
    }
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(ProcessError::Cwd {
            path: cwd.into(),
            reason: "the working directory is outside the container root".into(),
        }),
    }
}

/// The value of `key` in an `env` list of `KEY=VALUE` strings.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Finds `arg0` the way `execvp` would with the container's PATH, and checks it can be run.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, ProcessError> {
    let executable = |p: &Path| -> Result<(), Errno> {
        let meta =
            std::fs::metadata(p).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match executable(&p) {
            Ok(()) => Ok(p),
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Err(ProcessError::NotFound(arg0.into())),
            Err(e) => Err(ProcessError::NotExecutable {
                path: arg0.into(),
                reason: errno_text(e),
            }),
        };
    }
    let path = env_value(env, "PATH").unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Errno::EACCES) | Err(Errno::EISDIR) => denied = Some(candidate),
            Err(_) => {}
        }
    }
    match denied {
        Some(p) => Err(ProcessError::NotExecutable {
            path: p.display().to_string(),
            reason: errno_text(Errno::EACCES),
        }),
        None => Err(ProcessError::NotFound(arg0.into())),
    }
}

/// Turns strings into the C strings `execve` takes, naming the culprit on a NUL byte.
pub fn c_strings<'a>(
    what: &str,
    items: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<CString>, ProcessError> {
    items
        .into_iter()
        .map(|s| {
            CString::new(s).map_err(|_| ProcessError::Nul {
                what: format!("{what} {s:?}"),
            })
        })
        .collect()
}

pub fn c_path(p: &Path) -> Result<CString, ProcessError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ProcessError::Nul {
        what: format!("path {}", p.display()),
    })
}

/// The user's home from the container's /etc/passwd, for a HOME the spec did not set.
pub fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_through_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_executable("sh", &env).is_ok());
        let err = find_executable("python4-surely-absent", &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "executable \"python4-surely-absent\" not found in PATH"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        assert!(matches!(
            find_executable(plain.to_str().unwrap(), &env),
            Err(ProcessError::NotExecutable { .. })
        ));
    }

    #[test]
    fn rlimit_names_map() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_TEST"), None);
    }
}
