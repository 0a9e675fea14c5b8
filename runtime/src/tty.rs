//! Terminals: with `process.terminal`, job-init makes a pty inside the container's devpts,
//! sends the master to the caller's console socket (SCM_RIGHTS, as runc does for conmon and
//! containerd), and makes the slave the job's controlling terminal and stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::mounts::errno_text;

#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("connect console socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("terminal: {what}: {reason}")]
    Pty { what: &'static str, reason: String },
}

fn pty_err(what: &'static str) -> impl Fn(nix::Error) -> TtyError {
    move |e| TtyError::Pty {
        what,
        reason: errno_text(e),
    }
}

/// Connects to the console socket the caller (conmon, containerd's shim) listens on.
pub fn connect_console(path: &Path) -> Result<OwnedFd, TtyError> {
    UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|source| TtyError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// Inside the container, after `pivot_root`: creates the pty, hands the master over
/// `console`, and makes the slave this process's controlling terminal and stdio.
pub fn setup(console: OwnedFd, owner: u32, size: Option<(u16, u16)>) -> Result<(), TtyError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty_err("open /dev/ptmx"))?;
    grantpt(&master).map_err(pty_err("grantpt"))?;
    unlockpt(&master).map_err(pty_err("unlockpt"))?;
    let name = ptsname_r(&master).map_err(pty_err("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(pty_err("open pty slave"))?;
    // SAFETY: open just returned this fd; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // The job may run as another user; it must own its terminal.
    nix::unistd::fchown(
        slave.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(owner)),
        None,
    )
    .map_err(pty_err("chown pty slave"))?;
    if let Some((rows, cols)) = size {
        set_size(slave.as_raw_fd(), rows, cols)?;
    }
    send_master(&console, &master, &name)?;
    drop(master);
    drop(console);
    make_controlling(slave)
}

fn set_size(fd: RawFd, rows: u16, cols: u16) -> Result<(), TtyError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives for the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(pty_err("set window size")(nix::Error::last()));
    }
    Ok(())
}

/// Sends the master fd with the pty's name as payload, the form conmon and containerd read.
fn send_master(console: &OwnedFd, master: &PtyMaster, name: &str) -> Result<(), TtyError> {
    let fds = [master.as_raw_fd()];
    let payload = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(
        console.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(pty_err("send pty master to the console socket"))?;
    Ok(())
}

/// Makes `slave` the controlling terminal (we lead a new session) and fds 0, 1, 2.
fn make_controlling(slave: OwnedFd) -> Result<(), TtyError> {
    let fd = slave.as_raw_fd();
    // SAFETY: TIOCSCTTY on a terminal fd we own, with an integer argument.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(pty_err("make controlling terminal")(nix::Error::last()));
    }
    for target in 0..3 {
        nix::unistd::dup2(fd, target).map_err(pty_err("attach stdio"))?;
    }
    Ok(())
}
