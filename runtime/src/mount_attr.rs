//! `mount_setattr(2)` (Linux 5.12): per-mount flags set on a mount, or on a whole tree of
//! mounts in one call, where the old API needs one remount per mount.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// The kernel's `struct mount_attr` (first version, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The `mount_setattr` bits for the restricting flags among `flags` (read-only, nosuid,
/// nodev, noexec); atime and propagation flags are not mapped.
pub fn restrictions(flags: MsFlags) -> u64 {
    [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(ms, _)| flags.contains(*ms))
    .fold(0, |bits, (_, attr)| bits | attr)
}

/// Sets `attr_set` on the mount at `path` (relative to `dir`, the working directory when
/// `None`; `dir` itself when `path` is empty), and on every mount below it when `recursive`.
/// Only sets: a flag the kernel locked stays, and nothing is cleared.
pub fn set(
    dir: Option<BorrowedFd<'_>>,
    path: &Path,
    recursive: bool,
    attr_set: u64,
) -> Result<(), Errno> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut at_flags = libc::AT_SYMLINK_NOFOLLOW;
    if path.as_os_str().is_empty() {
        at_flags |= libc::AT_EMPTY_PATH;
    }
    if recursive {
        at_flags |= libc::AT_RECURSIVE;
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads a NUL-terminated path and one mount_attr struct of the size
    // passed, both alive for the call; it returns 0 or -1 with errno.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()),
            c_path.as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_map_only_the_restricting_flags() {
        let flags = MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RELATIME
            | MsFlags::MS_BIND;
        assert_eq!(restrictions(flags), 0xf);
        assert_eq!(
            restrictions(MsFlags::MS_NOSUID | MsFlags::MS_REC),
            MOUNT_ATTR_NOSUID
        );
        assert_eq!(restrictions(MsFlags::empty()), 0);
    }
}
