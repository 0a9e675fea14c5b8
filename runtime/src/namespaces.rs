//! Which namespaces a container gets: new ones become clone flags, ones given by `path` are
//! opened and checked here and joined with `setns`.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("open namespace {kind} at {path}: {source}")]
    Open {
        kind: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace path {path} is a {actual} namespace, expected {expected}")]
    WrongType {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("linux.namespaces: a new pid namespace cannot be combined with a user namespace given by path (the pid namespace would belong to the host's user namespace); give the pid namespace a path too")]
    NewPidWithJoinedUser,
    #[error("{path} is not a namespace file: {source}")]
    NotNamespace { path: PathBuf, source: nix::Error },
}

/// A namespace to join: an open fd of the right type and the flag `setns` wants.
#[derive(Debug)]
pub struct JoinNamespace {
    pub kind: LinuxNamespaceType,
    pub fd: OwnedFd,
}

/// The container's namespaces, split into ones to create and ones to join.
#[derive(Debug)]
pub struct NamespacePlan {
    /// Created by `clone3` itself (user first by the kernel, so the others are owned by it).
    pub clone_flags: CloneFlags,
    /// Created by the child with `unshare` after it joined a user namespace given by path, so
    /// that the joined namespace owns them. (A new pid namespace cannot be made this way: it
    /// only applies to children: that combination is refused.)
    pub unshare_flags: CloneFlags,
    /// Joined in the child, user namespace first.
    pub join: Vec<JoinNamespace>,
    /// A pid namespace given by path: entered by the parent around `clone3`, because `setns`
    /// on a pid namespace only affects children.
    pub join_pid: Option<OwnedFd>,
    pub new_user: bool,
    pub new_net: bool,
    /// Unshared by job-init after it is in its cgroup, so the namespace's root is that cgroup.
    pub new_cgroup: bool,
}

pub fn clone_flag(kind: LinuxNamespaceType) -> CloneFlags {
    match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(0x80),
    }
}

fn kind_from_flag(flag: i32) -> String {
    for kind in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Time,
    ] {
        if clone_flag(kind).bits() == flag {
            return kind.to_string();
        }
    }
    format!("unknown ({flag:#x})")
}

// NS_GET_NSTYPE = _IO(0xb7, 0x3): the kernel says which kind of namespace an fd is.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// Opens a namespace file and checks it is of the expected kind.
pub fn open_namespace(kind: LinuxNamespaceType, path: &Path) -> Result<OwnedFd, NamespaceError> {
    let file = File::open(path).map_err(|source| NamespaceError::Open {
        kind: kind.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd we own; a non-namespace
    // fd makes it fail with ENOTTY, which is reported.
    let actual = unsafe { ns_get_nstype(file.as_raw_fd()) }.map_err(|source| {
        NamespaceError::NotNamespace {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if actual != clone_flag(kind).bits() {
        return Err(NamespaceError::WrongType {
            path: path.to_path_buf(),
            expected: kind.to_string(),
            actual: kind_from_flag(actual),
        });
    }
    Ok(OwnedFd::from(file))
}

/// Splits the spec's namespaces into clone flags and opened namespaces to join.
pub fn plan(namespaces: &[LinuxNamespace]) -> Result<NamespacePlan, NamespaceError> {
    let mut plan = NamespacePlan {
        clone_flags: CloneFlags::empty(),
        unshare_flags: CloneFlags::empty(),
        join: Vec::new(),
        join_pid: None,
        new_user: false,
        new_net: false,
        new_cgroup: false,
    };
    // User first: joining it gives the rights needed to join the others.
    let mut ordered: Vec<&LinuxNamespace> = namespaces.iter().collect();
    ordered.sort_by_key(|n| n.typ() != LinuxNamespaceType::User);
    for ns in ordered {
        let kind = ns.typ();
        match ns.path() {
            Some(path) => {
                let fd = open_namespace(kind, path)?;
                if kind == LinuxNamespaceType::Pid {
                    plan.join_pid = Some(fd);
                } else {
                    plan.join.push(JoinNamespace { kind, fd });
                }
            }
            None => match kind {
                LinuxNamespaceType::Cgroup => plan.new_cgroup = true,
                _ => {
                    plan.clone_flags |= clone_flag(kind);
                    plan.new_user |= kind == LinuxNamespaceType::User;
                    plan.new_net |= kind == LinuxNamespaceType::Network;
                }
            },
        }
    }
    let joins_user = plan.join.iter().any(|j| j.kind == LinuxNamespaceType::User);
    if joins_user && plan.clone_flags.contains(CloneFlags::CLONE_NEWPID) {
        return Err(NamespaceError::NewPidWithJoinedUser);
    }
    if joins_user {
        plan.unshare_flags = plan.clone_flags & !CloneFlags::CLONE_NEWPID;
        plan.clone_flags &= CloneFlags::CLONE_NEWPID;
    }
    Ok(plan)
}

/// Environment variable listing the namespaces job-init joins: `fd:flag,...;unshare-flags`.
pub const JOIN_ENV: &str = "_JOB_INIT_NS";

/// The `JOIN_ENV` entry for `joins` (user first) and the flags to unshare after them, or
/// `None` when there is nothing to join.
pub fn join_env(joins: &[(OwnedFd, CloneFlags)], unshare: CloneFlags) -> Option<String> {
    if joins.is_empty() && unshare.is_empty() {
        return None;
    }
    let list: Vec<String> = joins
        .iter()
        .map(|(fd, flag)| format!("{}:{}", fd.as_raw_fd(), flag.bits()))
        .collect();
    Some(format!("{JOIN_ENV}={};{}", list.join(","), unshare.bits()))
}

/// Inside job-init: joins the namespaces the runtime passed (see [`join_env`]). After a user
/// namespace it becomes that namespace's root, so the rest of the setup has its rights there.
pub fn enter_from_env() -> Result<(), String> {
    let Ok(value) = std::env::var(JOIN_ENV) else {
        return Ok(());
    };
    let (list, unshare) = value.split_once(';').ok_or("malformed namespace list")?;
    for entry in list.split(',').filter(|e| !e.is_empty()) {
        let (fd, flag) = entry.split_once(':').ok_or("malformed namespace entry")?;
        let fd: i32 = fd.parse().map_err(|_| "malformed namespace fd")?;
        let flag =
            CloneFlags::from_bits_retain(flag.parse().map_err(|_| "malformed namespace flag")?);
        // SAFETY: the runtime passed this open namespace fd for us alone.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        nix::sched::setns(&fd, flag).map_err(|e| {
            format!(
                "join {} namespace: {}",
                kind_from_flag(flag.bits()),
                crate::mounts::errno_text(e)
            )
        })?;
        if flag == CloneFlags::CLONE_NEWUSER {
            let root_gid = nix::unistd::Gid::from_raw(0);
            let root_uid = nix::unistd::Uid::from_raw(0);
            nix::unistd::setresgid(root_gid, root_gid, root_gid)
                .and_then(|()| nix::unistd::setresuid(root_uid, root_uid, root_uid))
                .map_err(|e| {
                    format!(
                        "become root of the joined user namespace: {}",
                        crate::mounts::errno_text(e)
                    )
                })?;
        }
    }
    let unshare =
        CloneFlags::from_bits_retain(unshare.parse().map_err(|_| "malformed unshare flags")?);
    if !unshare.is_empty() {
        nix::sched::unshare(unshare)
            .map_err(|e| format!("create namespaces: {}", crate::mounts::errno_text(e)))?;
    }
    Ok(())
}

impl NamespacePlan {
    /// The child ends up in a user namespace other than the caller's and must become its root.
    pub fn enters_user(&self) -> bool {
        self.new_user || self.join.iter().any(|j| j.kind == LinuxNamespaceType::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_namespace_type_is_refused() {
        let err = open_namespace(LinuxNamespaceType::Network, Path::new("/proc/self/ns/uts"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a uts namespace, expected net"), "{err}");
        assert!(open_namespace(LinuxNamespaceType::Uts, Path::new("/proc/self/ns/uts")).is_ok());
        let err = open_namespace(LinuxNamespaceType::Uts, Path::new("/etc/hostname"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a namespace file"), "{err}");
    }
}
