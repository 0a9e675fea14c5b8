//! job-init: everything the container's first process does inside its namespaces, in order.
//!
//! 1. Wait on the handshake socket until the parent has mapped our ids and put us in our cgroup.
//! 2. Set the container up: cgroup namespace, mounts, `/dev`, hostname, `pivot_root`, read-only
//!    root, rlimits, user, capabilities, cwd; find the executable. Any failure goes back to the
//!    parent as one message and `create` fails with it.
//! 3. Report ready, block on the exec fifo until `start`, then `execve` the job's process.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::handshake::{Channel, FromInit, InitConfig, Received, ToInit, INIT_FD_ENV};
use crate::hooks::{self, Stage};
use crate::launch::{CONSOLE_FD_ENV, FIFO_FD_ENV};
use crate::mounts::{self, errno_text, MountContext};
use crate::process::{self, ProcessError};
use crate::tty;

/// Everything ready for `execve`, held while job-init waits for `start`.
struct Prepared {
    hooks: Option<oci_spec::runtime::Hooks>,
    state_json: String,
    /// Installed right before `execve` (with no_new_privs; without it, already installed).
    seccomp: Option<crate::seccomp::CompiledFilter>,
    /// `None` for `exec`: the process runs as soon as it is ready.
    fifo: Option<File>,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// job-init's entry point; never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(never) => match never {},
        Err(code) => code,
    };
    std::process::exit(code)
}

/// Takes ownership of the fd whose number the runtime put in `var`, marking it close-on-exec.
fn fd_from_env(var: &str) -> Option<OwnedFd> {
    let fd: i32 = std::env::var(var).ok()?.parse().ok()?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    // SAFETY: the runtime handed us this open fd number for our exclusive use; nothing else
    // in this process owns it (F_SETFD above proved it is open).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn run() -> Result<Infallible, i32> {
    // Exec'd from a memfd, the kernel names us "memfd:job-init"; `ps` should say job-init.
    let _ = nix::sys::prctl::set_name(c"job-init");
    let Some(fd) = fd_from_env(INIT_FD_ENV) else {
        eprintln!("job-init: this program is started by job-runtime, not by hand ({INIT_FD_ENV} is not set)");
        return Err(2);
    };
    let mut channel = Channel::from_fd(fd);
    // Joining namespaces given by path comes first: everything after happens inside them.
    if let Err(message) = crate::namespaces::enter_from_env() {
        let _ = channel.send(&FromInit::Failed(message));
        return Err(1);
    }
    let config = match channel.recv::<ToInit>() {
        Ok(Received::Message(ToInit::Setup(config))) => config,
        // The parent gave up (or died): there is nobody to report to.
        _ => return Err(1),
    };
    let prepared = match setup(&config) {
        Ok(p) => p,
        Err(message) => {
            let _ = channel.send(&FromInit::Failed(message));
            return Err(1);
        }
    };
    if channel.send(&FromInit::Ready).is_err() {
        return Err(1);
    }
    drop(channel);
    if let Some(fifo) = &prepared.fifo {
        wait_for_start(fifo)?;
        if let Err(e) = hooks::run(
            Stage::StartContainer,
            prepared.hooks.as_ref(),
            &prepared.state_json,
        ) {
            eprintln!("job-init: {e}");
            return Err(1);
        }
    }
    reset_signals();
    if let Some(filter) = &prepared.seccomp {
        if let Err(e) = filter.install() {
            eprintln!("job-init: install seccomp filter: {e}");
            return Err(1);
        }
    }
    let err = nix::unistd::execve(&prepared.path, &prepared.argv, &prepared.envp)
        .expect_err("execve returns only on failure");
    eprintln!(
        "job-init: exec {}: {}",
        prepared.path.to_string_lossy(),
        errno_text(err)
    );
    Err(if err == Errno::ENOENT { 127 } else { 126 })
}

/// Blocks until `start` writes its byte into the exec fifo.
fn wait_for_start(mut fifo: &File) -> Result<(), i32> {
    let mut byte = [0u8; 1];
    loop {
        match fifo.read(&mut byte) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(1),
        }
    }
}

/// Undoes what the runtime and Rust's start-up changed, so the job starts with default
/// signal handling (Rust ignores SIGPIPE; `run` blocks the signals it forwards).
fn reset_signals() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context.
            let _ = unsafe { sigaction(sig, &default) };
        }
    }
    let _ = SigSet::empty().thread_set_mask();
}

fn has_namespace(spec: &Spec, kind: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == kind))
}

/// Marks every fd from `first` up close-on-exec, so nothing the runtime's caller leaked
/// reaches the job (CVE-2024-21626); fds below `first` are stdio and `--preserve-fds`.
fn cloexec_from(first: u32) -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds of this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk the open fds instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("list /proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &i32| *fd >= first as i32)
        .collect();
    for fd in fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(())
}

fn setup(config: &InitConfig) -> Result<Prepared, String> {
    let spec = &config.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or("config.json: process is required")?;
    cloexec_from(3 + config.preserve_fds)?;
    for fd in 3..3 + config.preserve_fds as i32 {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        );
    }
    if config.new_cgroupns && !config.exec {
        unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare cgroup namespace: {}", errno_text(e)))?;
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {}", errno_text(e)))?;

    let fifo = match fd_from_env(FIFO_FD_ENV) {
        Some(fd) => Some(File::from(fd)),
        None if config.exec => None,
        None => return Err("exec fifo fd missing from job-init's environment".into()),
    };

    if has_namespace(spec, LinuxNamespaceType::Mount) && !config.exec {
        build_filesystem(config).map_err(|e| e.to_string())?;
    }
    if has_namespace(spec, LinuxNamespaceType::Uts) && !config.exec {
        mounts::set_names(spec.hostname().as_deref(), spec.domainname().as_deref())
            .map_err(|e| e.to_string())?;
    }
    if let Some(console) = fd_from_env(CONSOLE_FD_ENV) {
        let size = process
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        tty::setup(console, process.user().uid(), size).map_err(|e| e.to_string())?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("write /proc/self/oom_score_adj {adj}: {e}"))?;
    }
    process::set_rlimits(process.rlimits().as_deref().unwrap_or_default()).map_err(err_text)?;

    let caps = process
        .capabilities()
        .as_ref()
        .map(process::plan_caps)
        .transpose()
        .map_err(err_text)?;
    if let Some(caps) = &caps {
        process::drop_bounding(caps).map_err(err_text)?;
    }
    let mut filter = match &config.seccomp {
        Some(bytes) => Some(
            crate::seccomp::CompiledFilter::from_bytes(bytes)
                .map_err(|e| format!("seccomp filter from the runtime: {e}"))?,
        ),
        None => None,
    };
    let no_new_privs = process.no_new_privileges() == Some(true);
    if !no_new_privs {
        // Without no_new_privs the kernel wants CAP_SYS_ADMIN to install a filter: do it
        // while job-init still has it; the rest of the setup then runs under the filter.
        if let Some(f) = filter.take() {
            f.install()
                .map_err(|e| format!("install seccomp filter: {e}"))?;
        }
    }
    process::set_user(process.user()).map_err(err_text)?;
    if let Some(caps) = &caps {
        process::apply_caps(caps).map_err(err_text)?;
    }
    if process.no_new_privileges() == Some(true) {
        process::set_no_new_privs().map_err(err_text)?;
    }

    process::enter_cwd(process.cwd()).map_err(err_text)?;
    let mut env = process.env().clone().unwrap_or_default();
    if process::env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", process::home_of(process.user().uid())));
    }
    let args = process.args().as_deref().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or("config.json: process.args is required")?;
    let path = process::find_executable(arg0, &env).map_err(err_text)?;
    Ok(Prepared {
        hooks: spec.hooks().clone(),
        state_json: config.state_json.clone(),
        seccomp: filter,
        fifo,
        path: process::c_path(&path).map_err(err_text)?,
        argv: process::c_strings("argument", args.iter().map(String::as_str)).map_err(err_text)?,
        envp: process::c_strings("env", env.iter().map(String::as_str)).map_err(err_text)?,
    })
}

fn err_text(e: ProcessError) -> String {
    e.to_string()
}

/// The rootfs, the spec's mounts, `/dev`, `pivot_root` and the read-only root.
fn build_filesystem(config: &InitConfig) -> Result<(), mounts::MountError> {
    let spec = &config.spec;
    let linux = spec.linux().as_ref();
    let propagation =
        mounts::root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
    mounts::prepare_rootfs(&config.rootfs, propagation)?;
    let bundle = mounts::enter_rootfs(&config.rootfs)?;
    let ctx = MountContext {
        rootfs: Path::new("."),
        bundle: bundle.path(),
        new_userns: config.new_userns,
        new_netns: config.new_netns,
        new_cgroupns: config.new_cgroupns,
        cgroup: config.cgroup_mount.as_ref(),
    };
    let spec_mounts = spec.mounts().as_deref().unwrap_or_default();
    mounts::mount_all(&ctx, spec_mounts)?;
    let dev_is_fresh = spec_mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("bind"));
    if dev_is_fresh {
        let devices = linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        mounts::create_devices(Path::new("."), config.new_userns, devices)?;
    }
    mounts::leave_rootfs(bundle)?;
    hooks::run(
        Stage::CreateContainer,
        spec.hooks().as_ref(),
        &config.state_json,
    )
    .map_err(|e| mounts::MountError::Hook(e.to_string()))?;
    mounts::pivot_into(&config.rootfs)?;
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mounts::make_root_readonly()?;
    }
    if let Some(linux) = linux {
        if let Some(sysctl) = linux.sysctl() {
            mounts::write_sysctls(sysctl)?;
        }
        mounts::mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
        mounts::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
    }
    Ok(())
}
