//! The shim fork server: one `jobd-shim --serve` process that jobd starts once and that forks
//! one shim per job, so that a start does not pay for the shim's exec, dynamic linking and libc
//! start-up (on the 2-vCPU reference VM about 1.3 ms of CPU and 1 ms of latency per job, much
//! of it the `cpuid` instructions glibc runs at every start, each a VM exit).
//!
//! Protocol, on a `SOCK_SEQPACKET` socketpair (the server's end is its fd 3 when it starts):
//! - request: the shim's arguments ([`ShimArgs::to_args`]), each followed by a NUL byte, with
//!   the report pipe's write end and, for a container, the config.json and input memfds as
//!   `SCM_RIGHTS`;
//! - reply: `ok PID START` with a pidfd for the new shim, or `err REASON`.
//!
//! The server is single-threaded, so its forked child may run any code; the child puts the
//! descriptors where an exec'd shim has them (fds 3, 4, 5), starts a new session and runs
//! [`shim::main`], exactly as `jobd-shim` would. The server takes the pidfd and the start time
//! before it can reap the child, so the pid jobd gets cannot have been reused; it reaps its
//! shims as they exit, and exits when jobd's end of the socket closes (jobd stopped or was
//! killed: the shims live on, as they do when jobd spawns them itself).
//!
//! Every shim of a server shares the server's address-space layout (no fresh ASLR per job, as
//! with Android's zygote). The shim runs jobd's code, never the job's: the container's init is
//! exec'd, so each job gets a fresh layout.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::shim::{self, ShimArgs, ShimError, Spawned, CONFIG_FD, INPUT_FD, REPORT_FD};

/// The first argument that makes `jobd-shim` a fork server.
pub const SERVE_FLAG: &str = "--serve";
/// How long jobd waits for the server's reply before it gives up on that server.
const REPLY_LIMIT: Duration = Duration::from_secs(10);
/// The largest request or reply: arguments are paths and numbers (the payload is in memfds).
const MAX_MESSAGE: usize = 64 * 1024;
/// Where the server keeps its own descriptors, clear of the ones its shims inherit.
const SERVER_FD_FLOOR: RawFd = 10;
/// Blank bytes on the server's command line, which each shim overwrites with its job's id
/// (`ps` shows `jobd-shim job ID`, as it shows an exec'd shim's arguments).
const TITLE_ROOM: usize = 96;

/// jobd's side: a fork server started on first use, restarted if it dies.
#[derive(Debug)]
pub struct ShimServer {
    shim: PathBuf,
    conn: Mutex<Option<Conn>>,
}

#[derive(Debug)]
struct Conn {
    sock: OwnedFd,
    pid: i32,
}

/// Why [`ShimServer::spawn`] has no shim to show.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No shim was started: the caller may spawn one itself.
    #[error("{0}")]
    Unavailable(ShimError),
    /// The request reached a server that then failed, so a shim may have been forked. Such a
    /// shim cannot report (the report pipe's read end is gone) and then kills its job, so the
    /// start must fail rather than be tried again.
    #[error("the shim fork server failed while starting the shim: {0}")]
    Lost(String),
}

/// Why a request failed.
enum Failure {
    /// Before the server had it: the server is gone, start another.
    NotSent(String),
    /// After: see [`ServerError::Lost`].
    Lost(String),
    /// Nothing was started (a local error, or the server could not fork).
    Refused(ShimError),
}

impl ShimServer {
    /// A server that will run `shim --serve`.
    pub fn new(shim: &Path) -> ShimServer {
        ShimServer {
            shim: shim.to_path_buf(),
            conn: Mutex::new(None),
        }
    }

    /// Closes the connection, so the server exits (its shims live on), and reaps it; jobd's
    /// shutdown calls this.
    pub fn stop(&self) {
        let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        drop(conn.sock);
        let pid = Pid::from_raw(conn.pid);
        for _ in 0..200 {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return, // reaped here, or by jobd's orphan reaper (ECHILD)
            }
        }
        tracing::warn!(
            pid = conn.pid,
            "the shim fork server did not exit within 1 s"
        );
    }

    /// Forks a shim for `args`. A server found dead before it took the request is replaced
    /// once; one that fails after is let go (dropping the connection ends it).
    pub fn spawn(&self, args: &ShimArgs) -> Result<Spawned, ServerError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = String::new();
        for _ in 0..2 {
            if conn.is_none() {
                *conn = Some(self.start().map_err(ServerError::Unavailable)?);
            }
            let Some(c) = conn.as_ref() else { continue };
            match request(c, args) {
                Ok(spawned) => return Ok(spawned),
                Err(Failure::Refused(e)) => return Err(ServerError::Unavailable(e)),
                Err(Failure::NotSent(reason)) => {
                    tracing::warn!(pid = c.pid, reason = %reason, "the shim fork server is gone; starting another");
                    last = reason;
                    *conn = None;
                }
                Err(Failure::Lost(reason)) => {
                    tracing::error!(pid = c.pid, reason = %reason, "the shim fork server failed a request; letting it go");
                    *conn = None;
                    return Err(ServerError::Lost(reason));
                }
            }
        }
        Err(ServerError::Unavailable(ShimError::Usage(format!(
            "the shim fork server failed twice: {last}"
        ))))
    }

    fn start(&self) -> Result<Conn, ShimError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(shim::sys("create the fork server's socket"))?;
        let timeout = TimeVal::new(REPLY_LIMIT.as_secs() as i64, 0);
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)
            .map_err(shim::sys("set the fork server's reply timeout"))?;
        let args = [SERVE_FLAG.into(), " ".repeat(TITLE_ROOM).into()];
        let pid = shim::spawn_with(&self.shim, &args, theirs.as_fd(), None)?;
        tracing::debug!(pid, "started the shim fork server");
        Ok(Conn { sock: ours, pid })
    }
}

fn lost(what: &str) -> impl FnOnce(Errno) -> Failure + '_ {
    move |e| Failure::Lost(format!("{what}: {e}"))
}

fn request(conn: &Conn, args: &ShimArgs) -> Result<Spawned, Failure> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::Refused(shim::sys("create report pipe")(e)))?;
    let payload = shim::payload_memfds(&args.launch).map_err(Failure::Refused)?;
    let mut body = Vec::new();
    for a in args.to_args() {
        body.extend_from_slice(a.as_bytes());
        body.push(0);
    }
    let mut fds = vec![report_w.as_raw_fd()];
    if let Some((config, input)) = &payload {
        fds.extend([config.as_raw_fd(), input.as_raw_fd()]);
    }
    sendmsg::<()>(
        conn.sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| Failure::NotSent(format!("send a request: {e}")))?;
    // The server's copies went to the shim; ours must close, or the report never ends.
    drop((report_w, payload));
    let (text, mut fds) = receive(conn.sock.as_fd()).map_err(lost("read the reply"))?;
    let text = String::from_utf8_lossy(&text);
    if text.is_empty() {
        return Err(Failure::Lost("it closed the connection".into()));
    }
    if let Some(reason) = text.strip_prefix("err ") {
        return Err(Failure::Refused(ShimError::Usage(format!(
            "the shim fork server: {reason}"
        ))));
    }
    let mut f = text.strip_prefix("ok ").unwrap_or("").split(' ');
    let (Some(Ok(pid)), Some(Ok(start)), Some(pidfd)) = (
        f.next().map(str::parse::<i32>),
        f.next().map(str::parse::<u64>),
        fds.pop(),
    ) else {
        return Err(Failure::Lost(format!("unreadable reply {text:?}")));
    };
    Ok(Spawned {
        pid,
        report: report_r,
        pinned: Some((pidfd, start)),
    })
}

/// One message and the descriptors that came with it (close-on-exec). An empty message is
/// the peer's end of the connection.
fn receive(sock: std::os::fd::BorrowedFd<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), Errno> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: SCM_RIGHTS installed these descriptors in this process
                        // just now; nothing else refers to them.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    buf.truncate(len);
    Ok((buf, fds))
}

/// Shims open job-init through a read-only mount of its directory; the server makes the mount
/// once for the job-init beside it (jobd's default), so that no shim makes and unmounts its
/// own. A job-init configured elsewhere gets a mount per start, as before.
fn keep_job_init_mount() {
    let kept = runtime::launch::default_init_path()
        .map_err(|e| e.to_string())
        .and_then(|init| runtime::launch::keep_readonly_init_dir(&init).map_err(|e| e.to_string()));
    if let Err(e) = kept {
        tracing::debug!(error = %e, "no kept read-only mount of job-init; each shim makes one");
    }
}

/// The server's whole life (`jobd-shim --serve`); its socket is fd 3. Returns the exit status.
pub fn serve() -> i32 {
    match serve_until_closed() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jobd-shim --serve: {e}");
            1
        }
    }
}

fn serve_until_closed() -> Result<(), ShimError> {
    // Only stdio and the socket: descriptors jobd's own parent leaked to it (not
    // close-on-exec) would otherwise live on in every shim.
    // SAFETY: close_range with integer arguments closes descriptors of this process; none
    // above the socket is owned by anything in it yet.
    unsafe { libc::syscall(libc::SYS_close_range, REPORT_FD + 1, u32::MAX, 0) };
    let sock = move_clear_of_shim_fds(REPORT_FD)?;
    // Hold fds 3-5 while the server opens what it keeps: a shim's descriptors go there, and
    // a cache living on one of them (libpathrs's procfs handle) would be overwritten in every
    // shim, which then stops caching at all.
    let placeholders = hold_shim_fds()?;
    // Shims set their own priority too; the server forks them at the normal one.
    // SAFETY: setpriority with integer arguments; who = 0 is this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(shim::sys("block SIGCHLD"))?;
    let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(shim::sys("signalfd"))?;
    // What every shim would otherwise look up for itself, looked up once here.
    runtime::cgroups::warm_up();
    keep_job_init_mount();
    drop(placeholders);
    // A forked shim has the server's address space, so the argument area it retitles is the
    // server's: looked up once here, not in every shim.
    let title_area = argument_area();
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigchld.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(shim::sys("poll")(e)),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (request_ready, child_exited) = (ready(&fds[0]), ready(&fds[1]));
        if child_exited {
            while let Ok(Some(_)) = sigchld.read_signal() {}
            reap_exited();
        }
        if request_ready {
            let (body, fds) = match receive(sock.as_fd()) {
                Ok(m) => m,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(shim::sys("read a request")(e)),
            };
            if body.is_empty() && fds.is_empty() {
                return Ok(()); // jobd closed its end
            }
            let reply = fork_shim(&sock, &sigchld, title_area, body, fds);
            let (text, pidfd) = match reply {
                Ok((pid, start, pidfd)) => (format!("ok {pid} {start}"), Some(pidfd)),
                Err(reason) => (format!("err {reason}"), None),
            };
            let raw: Vec<RawFd> = pidfd.iter().map(|f| f.as_raw_fd()).collect();
            let cmsgs = if raw.is_empty() {
                Vec::new()
            } else {
                vec![ControlMessage::ScmRights(&raw)]
            };
            sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(text.as_bytes())],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(shim::sys("send a reply"))?;
        }
    }
}

/// Moves `fd` to a close-on-exec descriptor at or above [`SERVER_FD_FLOOR`], so that the
/// numbers a shim's descriptors go to are free.
fn move_clear_of_shim_fds(fd: RawFd) -> Result<OwnedFd, ShimError> {
    let moved = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(SERVER_FD_FLOOR))
        .map_err(|_| {
            ShimError::Usage(format!(
                "fd {fd} (the fork server's socket) is not open: jobd starts this program"
            ))
        })?;
    let _ = nix::unistd::close(fd);
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// /dev/null on every free descriptor up to [`INPUT_FD`].
fn hold_shim_fds() -> Result<Vec<OwnedFd>, ShimError> {
    let mut held = Vec::new();
    loop {
        let fd = shim::dev_null()?;
        if fd.as_raw_fd() > INPUT_FD {
            return Ok(held);
        }
        held.push(fd);
    }
}

/// Reaps every shim that has exited.
fn reap_exited() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Forks a shim for one request: its pid, start time and a pidfd, taken before the shim can
/// have been reaped.
fn fork_shim(
    sock: &OwnedFd,
    sigchld: &SignalFd,
    title_area: Option<(usize, usize)>,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
) -> Result<(i32, u64, OwnedFd), String> {
    let args: Vec<OsString> = body
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    if fds.is_empty() || fds.len() > 3 {
        return Err(format!(
            "a request carries {} descriptors, expected 1 (host) or 3 (container)",
            fds.len()
        ));
    }
    // SAFETY: this process is single-threaded (the server starts no thread), so the child
    // may run any code, allocate included, before it exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = become_shim(sock, sigchld, title_area, fds, args);
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(fds);
            let pid = child.as_raw();
            let pidfd = pidfd_open(pid).map_err(|e| {
                // Not reaped yet, so the pid is still this child's: no shim jobd cannot follow.
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                format!("pidfd_open {pid}: {e}")
            })?;
            // Not reaped yet (only this loop reaps), so /proc/PID is still this child.
            let start = runtime::state::proc_stat(pid).map_or(0, |(_, t)| t);
            Ok((pid, start, pidfd))
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// In the forked child: leave the server's descriptors and session behind, put the request's
/// descriptors on fds 3, 4, 5 and run the shim.
fn become_shim(
    sock: &OwnedFd,
    sigchld: &SignalFd,
    title_area: Option<(usize, usize)>,
    fds: Vec<OwnedFd>,
    args: Vec<OsString>,
) -> i32 {
    let _ = nix::unistd::close(sock.as_raw_fd());
    let _ = nix::unistd::close(sigchld.as_raw_fd());
    if nix::unistd::setsid().is_err() {
        return 2;
    }
    // Received descriptors may sit on 3..5 already: lift them all above first, then place.
    let mut lifted = Vec::with_capacity(fds.len());
    for fd in fds {
        match nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(SERVER_FD_FLOOR),
        ) {
            // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor.
            Ok(high) => lifted.push(unsafe { OwnedFd::from_raw_fd(high) }),
            Err(_) => return 2,
        }
    }
    for (fd, target) in lifted.iter().zip([REPORT_FD, CONFIG_FD, INPUT_FD]) {
        // dup2 leaves the target without close-on-exec, as posix_spawn's dup2 would.
        if nix::unistd::dup2(fd.as_raw_fd(), target).is_err() {
            return 2;
        }
    }
    drop(lifted);
    let job_id = args
        .iter()
        .position(|a| a == "--job-dir")
        .and_then(|i| args.get(i + 1))
        .and_then(|dir| Path::new(dir).file_name())
        .map(|id| id.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(area) = title_area {
        set_title(area, &["jobd-shim", "job", &job_id]);
    }
    shim::main(args)
}

/// Writes `words` (NUL-separated, truncated to fit) over this process's command line, which
/// /proc/PID/cmdline and `ps` show; `(start, end)` is that command line ([`argument_area`]).
fn set_title((start, end): (usize, usize), words: &[&str]) {
    let mut title = words.join("\0").into_bytes();
    title.truncate(end - start - 1);
    title.resize(end - start, 0);
    // SAFETY: [start, end) is this process's argument area as the kernel recorded it
    // (mm->arg_start..arg_end, from /proc/self/stat): mapped, writable memory of the initial
    // stack that holds the argv strings. Nothing reads them after start-up (the server read
    // its arguments before it forked this child), so overwriting them in place is sound.
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len()) }
}

/// Fields 48 and 49 of /proc/self/stat: where the argument strings start and end.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse::<usize>().ok()?;
    let end = fields.next()?.parse::<usize>().ok()?;
    (end > start + 1).then_some((start, end))
}

/// A pidfd for `pid`.
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::Launch;

    /// A server that cannot start leaves the caller free to spawn the shim itself, and says
    /// which program failed.
    #[test]
    fn missing_server_binary_is_unavailable_and_named() {
        let server = ShimServer::new(Path::new("/nonexistent/jobd-shim"));
        let args = ShimArgs {
            job_dir: "/nonexistent/jobs/x".into(),
            cap: 1,
            launch: Launch::Host {
                argv: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
            },
        };
        match server.spawn(&args) {
            Err(ServerError::Unavailable(e)) => {
                assert!(e.to_string().contains("/nonexistent/jobd-shim"), "{e}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
