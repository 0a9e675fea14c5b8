//! The parent's half of starting a container: clone a child straight into its namespaces, let
//! it exec job-init, write its id maps, put it in its cgroup with its limits, then hand it its
//! configuration and wait for "ready" or a failure message.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, Spec};

use crate::cgroups::{Cgroup, CgroupError, Join};
use crate::handshake::{
    raw_errno_frame, Channel, FromInit, HandshakeError, InitConfig, PreExecStep, Received, ToInit,
    INIT_FD_ENV,
};
use crate::mounts::errno_text;
use crate::namespaces::{self, NamespaceError};
use crate::seccomp;
use crate::spec::LoadedSpec;

/// Environment variable naming the job-init binary; by default it sits next to the running
/// executable (`job-runtime` or `jobd`).
pub const INIT_PATH_ENV: &str = "JOB_RUNTIME_INIT";
/// Environment variable that tells job-init which fd is the exec fifo.
pub const FIFO_FD_ENV: &str = "_JOB_INIT_FIFO_FD";
/// Environment variable that tells job-init which fd is the connected console socket.
pub const CONSOLE_FD_ENV: &str = "_JOB_INIT_CONSOLE_FD";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "job-init not found at {path} (install it next to job-runtime or set {INIT_PATH_ENV})"
    )]
    NoInit { path: PathBuf },
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("clone container process: {0}")]
    Clone(String),
    #[error("write {file} for pid {pid}: {reason}")]
    IdMap {
        file: &'static str,
        pid: i32,
        reason: String,
    },
    #[error("container process failed to {step}: {reason}")]
    PreExec { step: &'static str, reason: String },
    /// job-init's own message, already naming what failed.
    #[error("{0}")]
    Init(String),
    #[error("container process exited before it was ready ({0})")]
    Died(String),
    #[error("{what}: {reason}")]
    Setup { what: &'static str, reason: String },
}

/// What [`launch`] needs beyond the spec.
pub struct LaunchRequest<'a> {
    /// The container's ID (for the state that hooks receive).
    pub id: &'a str,
    pub loaded: &'a LoadedSpec,
    pub cgroup: &'a Cgroup,
    /// The exec fifo, opened read-write by the caller; job-init blocks reading it. `None` for
    /// `exec`, whose process runs as soon as it is ready.
    pub fifo: Option<&'a OwnedFd>,
    /// The console socket, connected: job-init sends the pty master over it.
    pub console: Option<&'a OwnedFd>,
    /// Where compiled seccomp profiles are cached (one file per distinct profile).
    pub seccomp_cache: &'a Path,
    pub preserve_fds: u32,
    /// stdin, stdout, stderr for the container; `None` keeps the caller's.
    pub stdio: Option<[RawFd; 3]>,
    pub init_path: &'a Path,
}

/// The job-init binary to exec: `$JOB_RUNTIME_INIT`, or `job-init` next to this executable.
pub fn default_init_path() -> Result<PathBuf, LaunchError> {
    let path = match std::env::var_os(INIT_PATH_ENV) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("job-init")))
            .unwrap_or_else(|| PathBuf::from("job-init")),
    };
    if !path.is_file() {
        return Err(LaunchError::NoInit { path });
    }
    Ok(path)
}

/// The spec as job-init gets it: without the seccomp profile, which [`launch`] compiles
/// whenever there is one (job-init installs the compiled filter and never reads the profile;
/// the default one is 427 syscall names that it would otherwise parse on every start).
fn spec_for_init(spec: &Spec) -> Spec {
    let mut sent = spec.clone();
    if let Some(linux) = sent.linux_mut() {
        linux.set_seccomp(None);
    }
    sent
}

/// Starts the container's init and returns its pid once it is set up and waiting for `start`.
/// On failure the child is killed and reaped; the caller removes the cgroup.
pub fn launch(req: &LaunchRequest) -> Result<i32, LaunchError> {
    let spec = &req.loaded.spec;
    let linux = spec.linux().as_ref().expect("validated: linux is present");
    let plan = namespaces::plan(linux.namespaces().as_deref().unwrap_or_default())?;
    let seccomp = match linux.seccomp() {
        Some(profile) => Some(seccomp::compile_cached(profile, req.seccomp_cache)?.to_bytes()),
        None => None,
    };

    let (mut channel, child_end) = Channel::pair()?;
    // Both fds the child keeps must sit above the preserved ones, which job-init leaves open.
    let floor = 3 + req.preserve_fds as RawFd;
    let child_end = dup_above(&child_end, floor)?;
    let mut passed = vec![(INIT_FD_ENV, child_end)];
    if let Some(fifo) = req.fifo {
        passed.push((FIFO_FD_ENV, dup_above(fifo, floor)?));
    }
    if let Some(console) = req.console {
        passed.push((CONSOLE_FD_ENV, dup_above(console, floor)?));
    }
    // Namespaces given by path are joined by job-init itself: joining a mount namespace
    // before the exec would make the exec resolve job-init's ELF interpreter in it.
    let mut joins = Vec::with_capacity(plan.join.len());
    for j in &plan.join {
        joins.push((dup_above(&j.fd, floor)?, namespaces::clone_flag(j.kind)));
    }
    let sock = passed[0].1.as_raw_fd();
    let mut keep: Vec<RawFd> = passed.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    keep.extend(joins.iter().map(|(fd, _)| fd.as_raw_fd()));
    let join_env = namespaces::join_env(&joins, plan.unshare_flags);
    let exec = ExecImage::new(req.init_path, &passed, join_env)?;
    let join = req.cgroup.create()?;
    let (tasks, into_cgroup): (Vec<RawFd>, Option<RawFd>) = match &join {
        Join::V1Tasks(fds) => (fds.iter().map(|f| f.as_raw_fd()).collect(), None),
        Join::V2Dir(fd) => (Vec::new(), Some(fd.as_raw_fd())),
        Join::ByParent => (Vec::new(), None),
    };
    let parent_joins = matches!(join, Join::ByParent);
    let child = ChildPlan {
        become_root: plan.new_user,
        cgroup_tasks: &tasks,
        stdio: req.stdio,
        sock,
        keep: &keep,
        exec: &exec,
    };
    // The child may still run on this stack, and read `child`, until it has exec'd: both
    // live until the handshake is over (job-init answered, or the child was killed and
    // reaped).
    let (pid, _child_stack) = {
        let _pid_ns = match &plan.join_pid {
            Some(fd) => Some(PidNsGuard::enter(fd)?),
            None => None,
        };
        match into_cgroup {
            Some(dir) => match clone_into_cgroup(plan.clone_flags, dir)? {
                Forked::Child => child_main(&child),
                Forked::Parent(pid) => (pid, None),
            },
            None => {
                let stack = ChildStack::new()?;
                (
                    spawn_sharing_memory(plan.clone_flags, &stack, &child)?,
                    Some(stack),
                )
            }
        }
    };
    drop(join);
    drop(passed);
    drop(joins);

    let result = parent_handshake(req, &plan, pid, parent_joins, &mut channel, seccomp);
    if result.is_err() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
    }
    result.map(|()| pid)
}

fn parent_handshake(
    req: &LaunchRequest,
    plan: &namespaces::NamespacePlan,
    pid: i32,
    parent_joins: bool,
    channel: &mut Channel,
    seccomp: Option<Vec<u8>>,
) -> Result<(), LaunchError> {
    let spec = &req.loaded.spec;
    let linux = spec.linux().as_ref().expect("validated: linux is present");
    if plan.new_user {
        write_id_map(
            pid,
            "uid_map",
            linux.uid_mappings().as_deref().unwrap_or_default(),
        )?;
        write_id_map(
            pid,
            "gid_map",
            linux.gid_mappings().as_deref().unwrap_or_default(),
        )?;
    }
    // The child joined its cgroup itself (see `cgroups::Join`), or systemd has just put it
    // in its new scope, and it waits for the go byte: it is in its cgroup, with its limits
    // in force, before it even execs job-init.
    if parent_joins {
        req.cgroup.add_task(pid)?;
    }
    if let Some(resources) = linux.resources() {
        req.cgroup.apply(resources)?;
    }
    if let Err(e) = channel.send_go() {
        return Err(died_or(pid, channel, e));
    }
    let config = InitConfig {
        spec: spec_for_init(spec),
        rootfs: req.loaded.rootfs.clone(),
        preserve_fds: req.preserve_fds,
        new_userns: plan.enters_user(),
        new_netns: plan.new_net,
        new_cgroupns: plan.new_cgroup,
        cgroup_mount: Some(req.cgroup.mount_plan()),
        exec: req.fifo.is_none(),
        seccomp,
        state_json: serde_json::json!({
            "ociVersion": crate::state::OCI_VERSION,
            "id": req.id,
            "status": "creating",
            "pid": pid,
            "bundle": req.loaded.bundle,
            "annotations": spec.annotations().clone().unwrap_or_default(),
        })
        .to_string(),
    };
    if let Err(e) = channel.send(&ToInit::Setup(Box::new(config))) {
        return Err(died_or(pid, channel, e));
    }
    match channel.recv::<FromInit>()? {
        Received::Message(FromInit::Ready) => Ok(()),
        Received::Message(FromInit::Failed(msg)) => Err(LaunchError::Init(msg)),
        Received::PreExec { step, errno } => Err(pre_exec_error(step, errno)),
        Received::Eof => Err(LaunchError::Died(exit_text(pid))),
    }
}

/// A send failure usually means the child is gone: prefer what it said before dying.
fn died_or(pid: i32, channel: &mut Channel, fallback: HandshakeError) -> LaunchError {
    match channel.recv::<FromInit>() {
        Ok(Received::PreExec { step, errno }) => pre_exec_error(step, errno),
        Ok(Received::Message(FromInit::Failed(msg))) => LaunchError::Init(msg),
        Ok(Received::Eof) => LaunchError::Died(exit_text(pid)),
        _ => fallback.into(),
    }
}

fn pre_exec_error(step: u32, errno: i32) -> LaunchError {
    LaunchError::PreExec {
        step: PreExecStep::from_u32(step).map_or("start", PreExecStep::describe),
        reason: errno_text(Errno::from_raw(errno)),
    }
}

fn exit_text(pid: i32) -> String {
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("wait: {}", errno_text(e)),
    }
}

fn write_id_map(pid: i32, file: &'static str, maps: &[LinuxIdMapping]) -> Result<(), LaunchError> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|e| LaunchError::IdMap {
        file,
        pid,
        reason: e.to_string(),
    })
}

fn dup_above(fd: &OwnedFd, floor: RawFd) -> Result<OwnedFd, LaunchError> {
    let new = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(floor))
        .map_err(|e| LaunchError::Setup {
            what: "duplicate fd",
            reason: errno_text(e),
        })?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Everything `execve` of job-init needs, built before the clone so the child never allocates.
struct ExecImage {
    /// job-init, unwritable through `/proc/PID/exe` (see [`readonly_handle`] and
    /// [`sealed_copy`]), opened before the clone.
    binary: OwnedFd,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl ExecImage {
    fn new(
        init: &Path,
        passed: &[(&str, OwnedFd)],
        extra_env: Option<String>,
    ) -> Result<ExecImage, LaunchError> {
        let binary = match readonly_handle(init) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(
                    "read-only mount of job-init unavailable ({e}); using a sealed copy"
                );
                sealed_copy(init)?
            }
        };
        let argv = vec![CString::from(c"job-init")];
        let mut envp: Vec<CString> = passed
            .iter()
            .map(|(name, fd)| CString::new(format!("{name}={}", fd.as_raw_fd())).expect("no NUL"))
            .collect();
        envp.extend(extra_env.and_then(|e| CString::new(e).ok()));
        if let Ok(v) = std::env::var("RUST_BACKTRACE") {
            if let Ok(c) = CString::new(format!("RUST_BACKTRACE={v}")) {
                envp.push(c);
            }
        }
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Ok(ExecImage {
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            binary,
            _argv: argv,
            _envp: envp,
        })
    }
}

/// job-init opened through a detached, read-only bind mount of its directory (CVE-2019-5736):
/// a container that reaches job-init through `/proc/PID/exe` gets a path on a read-only mount
/// that belongs to no namespace, so it cannot write the host binary (EROFS). No copy is made:
/// a kept mount ([`keep_readonly_init_dir`]) makes this one `openat`, a new one three syscalls
/// and an unmount, where a sealed copy costs milliseconds.
fn readonly_handle(init: &Path) -> std::io::Result<OwnedFd> {
    let (dir, name) = split_init_path(init)?;
    {
        let kept = KEPT_INIT_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tree)) = kept.iter().find(|(d, _)| d == dir) {
            return open_init_in(tree, name);
        }
    }
    open_init_in(&readonly_dir_mount(dir)?, name)
}

/// Read-only detached mounts of job-init directories that this process keeps, made before a
/// long-lived process forks the ones that start containers (jobd's shim server): closing the
/// last descriptor of such a mount unmounts it, and every unmount waits for an expedited RCU
/// grace period, an interrupt to every CPU. Kept, the clone, its `mount_setattr` and that
/// wait happen once instead of at every container start.
static KEPT_INIT_DIRS: std::sync::Mutex<Vec<(PathBuf, OwnedFd)>> =
    std::sync::Mutex::new(Vec::new());

/// Keeps a read-only detached mount of `init`'s directory for this process's later starts
/// (see [`KEPT_INIT_DIRS`]). The directory's current contents are what a start finds: a
/// replaced job-init is opened anew each time.
pub fn keep_readonly_init_dir(init: &Path) -> std::io::Result<()> {
    let (dir, _) = split_init_path(init)?;
    let mut kept = KEPT_INIT_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if !kept.iter().any(|(d, _)| d == dir) {
        kept.push((dir.to_path_buf(), readonly_dir_mount(dir)?));
    }
    Ok(())
}

fn split_init_path(init: &Path) -> std::io::Result<(&Path, &Path)> {
    let dir = init.parent().unwrap_or(Path::new("/"));
    let name = init
        .file_name()
        .ok_or_else(|| std::io::Error::other("job-init path has no file name"))?;
    Ok((dir, Path::new(name)))
}

/// A detached clone of the mount at `dir`, rooted there, made read-only.
fn readonly_dir_mount(dir: &Path) -> std::io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let dir_c = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: open_tree takes a NUL-terminated path and flags; returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dir_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree just returned this fd; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    crate::mount_attr::set(
        Some(tree.as_fd()),
        Path::new(""),
        false,
        crate::mount_attr::MOUNT_ATTR_RDONLY,
    )?;
    Ok(tree)
}

/// job-init (`name`) in the read-only mount `tree`, not following a symlink there.
fn open_init_in(tree: &OwnedFd, name: &Path) -> std::io::Result<OwnedFd> {
    crate::mounts::open_o_path_at(Some(tree.as_fd()), name, nix::fcntl::OFlag::O_NOFOLLOW)
}

/// A sealed in-memory copy of job-init to exec (CVE-2019-5736): a container that reaches
/// job-init through `/proc/PID/exe` finds a memfd that nobody can write, not the host binary.
fn sealed_copy(init: &Path) -> Result<OwnedFd, LaunchError> {
    let setup = |what: &'static str| {
        move |e: std::io::Error| LaunchError::Setup {
            what,
            reason: format!("{}: {e}", init.display()),
        }
    };
    let src = std::fs::File::open(init).map_err(|_| LaunchError::NoInit {
        path: init.to_path_buf(),
    })?;
    let len = src.metadata().map_err(setup("stat job-init"))?.len() as usize;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"job-init".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(setup("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this fd; nothing else owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut copied = 0;
    while copied < len {
        // SAFETY: sendfile between two fds we own; the kernel copies page-cache pages.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                len - copied,
            )
        };
        match n {
            n if n > 0 => copied += n as usize,
            0 => break,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(setup("copy job-init")(e));
                }
            }
        }
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our memfd with integer flags.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(setup("seal job-init")(std::io::Error::last_os_error()));
    }
    Ok(memfd)
}

/// Enters a pid namespace for this thread's future children, and returns to ours on drop.
struct PidNsGuard {
    own: OwnedFd,
}

impl PidNsGuard {
    fn enter(target: &OwnedFd) -> Result<PidNsGuard, LaunchError> {
        let own = std::fs::File::open("/proc/thread-self/ns/pid_for_children")
            .or_else(|_| std::fs::File::open("/proc/self/ns/pid"))
            .map_err(|e| LaunchError::Setup {
                what: "open own pid namespace",
                reason: e.to_string(),
            })?;
        setns(target, CloneFlags::CLONE_NEWPID).map_err(|e| LaunchError::Setup {
            what: "join pid namespace",
            reason: errno_text(e),
        })?;
        Ok(PidNsGuard { own: own.into() })
    }
}

impl Drop for PidNsGuard {
    fn drop(&mut self) {
        let _ = setns(&self.own, CloneFlags::CLONE_NEWPID);
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of [`clone_into_cgroup`] we are on.
enum Forked {
    /// The new process: it may only make raw syscalls until it execs or exits.
    Child,
    Parent(i32),
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks a child into new namespaces with fork semantics, starting inside the v2 cgroup whose
/// directory is `cgroup`: the child continues on a copy of our stack.
fn clone_into_cgroup(flags: CloneFlags, cgroup: RawFd) -> Result<Forked, LaunchError> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with no stack behaves like fork: the child gets a copy of our address
    // space and returns 0 here. The caller then runs `child_main`, which only issues raw
    // syscalls and ends in execve or _exit, so no lock or allocator state of other threads
    // is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(LaunchError::Clone(errno_text(Errno::last()))),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// What the clone child needs, made by the parent before the clone and left as it is until
/// the child has exec'd or is gone.
struct ChildPlan<'a> {
    become_root: bool,
    cgroup_tasks: &'a [RawFd],
    stdio: Option<[RawFd; 3]>,
    sock: RawFd,
    keep: &'a [RawFd],
    exec: &'a ExecImage,
}

/// The stack a child that shares our memory runs on until it execs: mapped here, with a
/// guard page below it, and unmapped on drop.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// `child_main` and the few raw syscalls it makes need a few KiB.
    const LEN: usize = 64 * 1024;
    const GUARD: usize = 4096;

    fn new() -> Result<ChildStack, LaunchError> {
        let len = Self::LEN + Self::GUARD;
        // SAFETY: an anonymous private mapping at an address the kernel chooses; the result
        // is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(LaunchError::Clone(format!(
                "map the child's stack: {}",
                errno_text(Errno::last())
            )));
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping we own; an overflow then faults instead of
        // running into other memory.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(LaunchError::Clone(format!(
                "guard the child's stack: {}",
                errno_text(Errno::last())
            )));
        }
        Ok(stack)
    }

    /// The initial stack pointer: the stack grows down from the mapping's end.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our own mapping, which is how clone takes a stack.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has exec'd or is gone.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Starts the child into new namespaces sharing our memory until it execs (as posix_spawn
/// does): no copy of the page tables at the clone, no copy-on-write fault afterwards in the
/// child or in us, and nothing to tear down at its exec. Used when the child joins its
/// cgroup by itself (v1) or systemd places it; `clone3(CLONE_INTO_CGROUP)` (v2) has no libc
/// wrapper that takes a stack, so that one forks ([`clone_into_cgroup`]).
fn spawn_sharing_memory(
    flags: CloneFlags,
    stack: &ChildStack,
    child: &ChildPlan,
) -> Result<i32, LaunchError> {
    extern "C" fn run(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildPlan` passed below, which the parent keeps alive and
        // unchanged until this child has exec'd or is gone.
        child_main(unsafe { &*arg.cast::<ChildPlan>() })
    }
    let flags = flags.bits() | libc::CLONE_VM | libc::SIGCHLD;
    // SAFETY: glibc's clone runs `run` on `stack` in the new process. The child shares our
    // memory but not our file table, thread-local storage is only read by it through raw
    // syscalls that never set errno, it takes no lock and allocates nothing, and it ends in
    // execve or _exit; the kernel gives a CLONE_VM child no alternate signal stack.
    let pid = unsafe {
        libc::clone(
            run,
            stack.top(),
            flags,
            child as *const ChildPlan as *mut libc::c_void,
        )
    };
    if pid == -1 {
        return Err(LaunchError::Clone(errno_text(Errno::last())));
    }
    Ok(pid)
}

/// The clone child before job-init: join its cgroup, wire up stdio, wait for the go byte,
/// exec. Async-signal-safe and errno-free: raw syscalls only, no allocation, no locks, no
/// Rust std I/O, since it may share its memory and thread-local storage with the parent.
fn child_main(child: &ChildPlan) -> ! {
    use syscalls::{syscall2, syscall3, syscall5, Sysno};
    let sock = child.sock;
    // Into our cgroup first, while our credentials are still the caller's.
    for fd in child.cgroup_tasks {
        // SAFETY: a write of a static byte to an fd the parent opened for us.
        match unsafe { syscall3(Sysno::write, *fd as usize, c"0".as_ptr() as usize, 1) } {
            Ok(1) => {}
            r => fail(sock, PreExecStep::JoinCgroup, r),
        }
    }
    if let Some(fds) = child.stdio {
        for (target, fd) in fds.iter().enumerate() {
            // SAFETY: dup2/fcntl on fds we were given, with integer arguments.
            let r = unsafe {
                if *fd == target as RawFd {
                    syscall3(Sysno::fcntl, target, libc::F_SETFD as usize, 0)
                } else {
                    syscall2(Sysno::dup2, *fd as usize, target)
                }
            };
            if let Err(e) = r {
                fail(sock, PreExecStep::Stdio, Err(e));
            }
        }
    }
    // Exec only once the parent has written our id maps: an exec while our uid is still
    // unmapped would leave job-init without capabilities in its user namespace.
    let mut go = [0u8; 1];
    // SAFETY: a read into a stack buffer of ours from our own fd.
    match unsafe { syscall3(Sysno::read, sock as usize, go.as_mut_ptr() as usize, 1) } {
        Ok(1) => {}
        r => fail(sock, PreExecStep::WaitGo, r),
    }
    // Our kernel ids are still the caller's, which the new map does not cover; becoming id 0
    // of the namespace makes the exec below keep full capabilities inside it. Raw syscalls,
    // not glibc's wrappers: in a process glibc believes multi-threaded the wrappers signal
    // every other thread and wait for them, which in this child is a hang.
    if child.become_root {
        // SAFETY: setresgid/setresuid with integer arguments.
        let r = unsafe {
            syscall3(Sysno::setresgid, 0, 0, 0).and_then(|_| syscall3(Sysno::setresuid, 0, 0, 0))
        };
        if let Err(e) = r {
            fail(sock, PreExecStep::BecomeRoot, Err(e));
        }
    }
    for &fd in child.keep {
        // SAFETY: clears close-on-exec on our own fds so job-init inherits them.
        if let Err(e) = unsafe { syscall3(Sysno::fcntl, fd as usize, libc::F_SETFD as usize, 0) } {
            fail(sock, PreExecStep::KeepSocket, Err(e));
        }
    }
    let exec = child.exec;
    // SAFETY: all pointers come from `exec`, which outlives this call and holds
    // NUL-terminated strings and NULL-terminated pointer arrays.
    let r = unsafe {
        syscall5(
            Sysno::execveat,
            exec.binary.as_raw_fd() as usize,
            c"".as_ptr() as usize,
            exec.argv_ptrs.as_ptr() as usize,
            exec.envp_ptrs.as_ptr() as usize,
            libc::AT_EMPTY_PATH as usize,
        )
    };
    fail(sock, PreExecStep::Exec, r)
}

/// Reports what `step` returned to the parent and exits; async-signal-safe, errno-free.
fn fail(sock: RawFd, step: PreExecStep, result: Result<usize, syscalls::Errno>) -> ! {
    use syscalls::{syscall1, syscall3, Sysno};
    // A short write or read (Ok) reports as EIO.
    let errno = match result {
        Err(e) => e.into_raw(),
        Ok(_) => libc::EIO,
    };
    let frame = raw_errno_frame(step, errno);
    // SAFETY: writes a stack buffer to our fd, then ends this process (alone in its thread
    // group) without running any Rust code; exit_group does not return.
    unsafe {
        let _ = syscall3(
            Sysno::write,
            sock as usize,
            frame.as_ptr() as usize,
            frame.len(),
        );
        loop {
            let _ = syscall1(Sysno::exit_group, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount id of the mount an fd is on, from /proc/self/fdinfo.
    fn mount_id(fd: &OwnedFd) -> u64 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .expect("fdinfo");
        info.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("mnt_id in fdinfo")
    }

    #[test]
    fn a_kept_init_mount_is_read_only_and_shared_by_every_start() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: open_tree needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("job-init");
        std::fs::write(&init, b"#!/bin/sh\n").unwrap();

        // Without a kept mount every start clones one of its own.
        let a = readonly_handle(&init).unwrap();
        let b = readonly_handle(&init).unwrap();
        assert_ne!(mount_id(&a), mount_id(&b));

        keep_readonly_init_dir(&init).unwrap();
        let c = readonly_handle(&init).unwrap();
        let d = readonly_handle(&init).unwrap();
        assert_eq!(mount_id(&c), mount_id(&d), "starts share the kept mount");
        for fd in [&a, &c] {
            let reopened = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let err = reopened.expect_err("job-init must not be writable through its handle");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        }
        // A job-init replaced in the directory is what the next start gets.
        std::fs::remove_file(&init).unwrap();
        let replaced = b"#!/bin/sh\n# replaced\n";
        std::fs::write(&init, replaced).unwrap();
        let e = readonly_handle(&init).unwrap();
        let len = std::fs::metadata(format!("/proc/self/fd/{}", e.as_raw_fd()))
            .unwrap()
            .len();
        assert_eq!(len, replaced.len() as u64);
    }
}
