//! The OCI lifecycle on top of the other modules: create, start, state, kill, delete, pause,
//! resume, ps, list. This is the library API that `job-runtime` and jobd both use.

use std::borrow::Cow;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::stats::Stats;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxNamespaceType;

use crate::cgroups::{self, Cgroup, CgroupError};
use crate::hooks::{self, HookError, Stage};
use crate::launch::{self, LaunchError, LaunchRequest};
use crate::mounts::errno_text;
use crate::spec::{self, SpecError};
use crate::state::{self, State, StateError, Status, CONFIG_FILE, FIFO_FILE, OCI_VERSION};
use crate::tty::{self, TtyError};

pub const DEFAULT_ROOT: &str = "/run/job-runtime";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("{op} {path}: {reason}")]
    Io {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot {op} container {id}: it is {status}{hint}")]
    WrongStatus {
        op: &'static str,
        id: String,
        status: Status,
        hint: &'static str,
    },
    #[error("start container {id}: its init process is gone")]
    InitGone { id: String },
    #[error("signal {signal} to container {id}: {reason}")]
    Signal {
        id: String,
        signal: Signal,
        reason: String,
    },
    #[error("process.terminal is true but {0}")]
    Terminal(&'static str),
    #[error(transparent)]
    Tty(#[from] TtyError),
    #[error(transparent)]
    Hook(#[from] HookError),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |e| ContainerError::Io {
        op,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// What `create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// State root; each container gets `ROOT/ID`.
    pub root: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    pub systemd_cgroup: bool,
    /// stdin, stdout, stderr for the container; `None` keeps the caller's.
    pub stdio: Option<[RawFd; 3]>,
    /// job-init to exec; `None` looks next to the running executable.
    pub init_path: Option<PathBuf>,
    /// Where compiled seccomp filters are cached; `None` = `ROOT/@seccomp-cache`. A caller
    /// that gives each container a state root of its own (jobd) shares one here.
    pub seccomp_cache: Option<PathBuf>,
}

impl CreateOptions {
    pub fn new(id: &str, bundle: &Path, root: &Path) -> CreateOptions {
        CreateOptions {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            root: root.to_path_buf(),
            pid_file: None,
            console_socket: None,
            preserve_fds: 0,
            systemd_cgroup: false,
            stdio: None,
            init_path: None,
            seccomp_cache: None,
        }
    }
}

/// What `exec` is asked to run.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A complete process (`exec --process FILE`); otherwise the container's own with `args`.
    pub process: Option<oci_spec::runtime::Process>,
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` entries for the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    pub stdio: Option<[RawFd; 3]>,
    pub init_path: Option<PathBuf>,
}

/// A container known to the runtime, with its state as last refreshed.
#[derive(Debug)]
pub struct Container {
    dir: PathBuf,
    state: State,
    /// The spec as created, when this process created the container: `start` right after
    /// `create` (jobd, `run`) then neither reads nor parses the frozen copy again.
    spec: Option<oci_spec::runtime::Spec>,
}

/// Removes what a failed `create` made, unless disarmed.
struct CreateGuard<'a> {
    dir: &'a Path,
    cgroup: Option<&'a Cgroup>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(cg) = self.cgroup {
            if let Err(e) = cg.destroy() {
                tracing::warn!("cleanup after failed create: {e}");
            }
        }
        let _ = fs::remove_dir_all(self.dir);
    }
}

/// The connected console socket when the process wants a terminal.
fn console_for(
    terminal: bool,
    socket: &Option<PathBuf>,
) -> Result<Option<OwnedFd>, ContainerError> {
    match (terminal, socket) {
        (true, Some(path)) => Ok(Some(tty::connect_console(path)?)),
        (true, None) => Err(ContainerError::Terminal(
            "no --console-socket was given to receive it",
        )),
        (false, _) => Ok(None),
    }
}

fn init_path_or_default(given: &Option<PathBuf>) -> Result<PathBuf, ContainerError> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(launch::default_init_path()?),
    }
}

/// Compiled seccomp profiles live beside the containers, under a name no container ID can
/// have (`@` is not in the ID alphabet), so `list` never mistakes it for one.
fn seccomp_cache(root: &Path) -> PathBuf {
    root.join("@seccomp-cache")
}

fn mkdir_mode(path: &Path, mode: u32, recursive: bool) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(recursive)
        .mode(mode)
        .create(path)
}

/// Creates a container: its init is set up, in its cgroup, and waiting for `start`.
pub fn create(opts: &CreateOptions) -> Result<Container, ContainerError> {
    spec::validate_id(&opts.id)?;
    let (loaded, config_text) = spec::load_with_text(&opts.bundle)?;
    let process = loaded.spec.process().as_ref().expect("validated");
    let console = console_for(process.terminal() == Some(true), &opts.console_socket)?;
    let linux = loaded.spec.linux().as_ref().expect("validated");
    let cgroup_path = cgroups::resolve_path(
        linux.cgroups_path().as_deref(),
        &opts.id,
        opts.systemd_cgroup,
    )?;
    let cgroup = Cgroup::open(&cgroup_path, opts.systemd_cgroup, &opts.id)?;
    cgroup.ensure_new()?;
    // With systemd the manager (a D-Bus connection) is needed to start the scope at all.
    if linux.resources().is_some() || opts.systemd_cgroup {
        cgroup.prefetch_manager();
    }
    let init_path = init_path_or_default(&opts.init_path)?;

    mkdir_mode(&opts.root, 0o711, true).map_err(io_err("create state root", &opts.root))?;
    let dir = opts.root.join(&opts.id);
    match mkdir_mode(&dir, 0o711, false) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ContainerError::Exists(opts.id.clone()))
        }
        Err(e) => return Err(io_err("create state dir", &dir)(e)),
    }
    let mut guard = CreateGuard {
        dir: &dir,
        cgroup: Some(&cgroup),
        armed: true,
    };
    // The spec as created is frozen here: later edits of the bundle's config.json change nothing.
    let frozen = dir.join(CONFIG_FILE);
    spec::write_atomic(&frozen, &config_text).map_err(io_err("freeze config.json", &frozen))?;
    let fifo_path = dir.join(FIFO_FILE);
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o600)).map_err(|e| {
        ContainerError::Io {
            op: "create exec fifo",
            path: fifo_path.clone(),
            reason: errno_text(e),
        }
    })?;
    // Read-write so the open never blocks; job-init reads from its copy until start writes.
    let fifo: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fifo_path)
        .map_err(io_err("open exec fifo", &fifo_path))?
        .into();

    let pid = launch::launch(&LaunchRequest {
        id: &opts.id,
        loaded: &loaded,
        cgroup: &cgroup,
        fifo: Some(&fifo),
        console: console.as_ref(),
        seccomp_cache: &opts
            .seccomp_cache
            .clone()
            .unwrap_or_else(|| seccomp_cache(&opts.root)),
        preserve_fds: opts.preserve_fds,
        stdio: opts.stdio,
        init_path: &init_path,
    })?;
    drop(fifo);
    let pid_start_time = state::proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
    let state = State {
        oci_version: OCI_VERSION.into(),
        id: opts.id.clone(),
        status: Status::Created,
        pid,
        bundle: loaded.bundle.clone(),
        rootfs: loaded.rootfs.clone(),
        annotations: loaded.spec.annotations().clone().unwrap_or_default(),
        created: state::rfc3339_now(),
        owner: String::new(),
        pid_start_time,
        cgroup_path,
        systemd_cgroup: opts.systemd_cgroup,
    };
    let state_json = serde_json::to_string(&state.oci()).unwrap_or_default();
    let hooks = loaded.spec.hooks().as_ref();
    let hooks_ok = hooks::run(Stage::Prestart, hooks, &state_json)
        .and_then(|()| hooks::run(Stage::CreateRuntime, hooks, &state_json));
    if let Err(e) = hooks_ok {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, pid_start_time, Duration::from_secs(5));
        return Err(e.into());
    }
    let result = state
        .save(&dir)
        .map_err(ContainerError::from)
        .and_then(|()| match &opts.pid_file {
            Some(p) => spec::write_atomic(p, pid.to_string().as_bytes())
                .map_err(io_err("write pid file", p)),
            None => Ok(()),
        });
    if let Err(e) = result {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(e);
    }
    guard.armed = false;
    drop(guard);
    Ok(Container {
        dir,
        state,
        spec: Some(loaded.spec),
    })
}

impl Container {
    /// Loads a container's state and refreshes its status from the kernel.
    pub fn load(root: &Path, id: &str) -> Result<Container, ContainerError> {
        spec::validate_id(id)?;
        let dir = root.join(id);
        let state = State::load(&dir, id)?;
        let mut c = Container {
            dir,
            state,
            spec: None,
        };
        c.refresh();
        Ok(c)
    }

    fn refresh(&mut self) {
        if self.state.status == Status::Stopped {
            return;
        }
        self.state.status = if !state::is_alive(self.state.pid, self.state.pid_start_time) {
            Status::Stopped
        } else if self.cgroup().map(|c| c.is_frozen()).unwrap_or(false) {
            Status::Paused
        } else if self.dir.join(FIFO_FILE).exists() {
            Status::Created
        } else {
            Status::Running
        };
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    pub fn status(&self) -> Status {
        self.state.status
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn cgroup(&self) -> Result<Cgroup, ContainerError> {
        Ok(Cgroup::open(
            &self.state.cgroup_path,
            self.state.systemd_cgroup,
            &self.state.id,
        )?)
    }

    fn wrong_status(&self, op: &'static str, hint: &'static str) -> ContainerError {
        ContainerError::WrongStatus {
            op,
            id: self.state.id.clone(),
            status: self.state.status,
            hint,
        }
    }

    /// Lets the container's process run: writes the byte job-init waits for.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        if self.state.status != Status::Created {
            return Err(self.wrong_status("start", ", not created"));
        }
        let fifo_path = self.dir.join(FIFO_FILE);
        // Non-blocking: with nobody reading, this fails (ENXIO) instead of hanging.
        let mut fifo = match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo_path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(ContainerError::InitGone {
                    id: self.state.id.clone(),
                })
            }
            Err(e) => return Err(io_err("open exec fifo", &fifo_path)(e)),
        };
        fifo.write_all(b"0")
            .map_err(io_err("write exec fifo", &fifo_path))?;
        drop(fifo);
        fs::remove_file(&fifo_path).map_err(io_err("remove exec fifo", &fifo_path))?;
        self.state.status = Status::Running;
        self.state.save(&self.dir)?;
        if let Ok(spec) = self.frozen_spec() {
            let state_json = serde_json::to_string(&self.state.oci()).unwrap_or_default();
            hooks::run_warn(Stage::Poststart, spec.hooks().as_ref(), &state_json);
        }
        Ok(())
    }

    /// The spec as it was at `create`.
    fn frozen_spec(&self) -> Result<Cow<'_, oci_spec::runtime::Spec>, ContainerError> {
        if let Some(spec) = &self.spec {
            return Ok(Cow::Borrowed(spec));
        }
        let path = self.dir.join(CONFIG_FILE);
        let text = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&text).map(Cow::Owned).map_err(|e| {
            SpecError::Parse {
                path: path.clone(),
                message: e.to_string(),
            }
            .into()
        })
    }

    /// Sends `signal` to the init process, or with `all` to every process in the cgroup.
    pub fn kill(&self, signal: Signal, all: bool) -> Result<(), ContainerError> {
        if self.state.status == Status::Stopped {
            return Err(self.wrong_status("kill", ""));
        }
        if all {
            return Ok(self.cgroup()?.signal_all(signal)?);
        }
        kill(Pid::from_raw(self.state.pid), signal).map_err(|e| ContainerError::Signal {
            id: self.state.id.clone(),
            signal,
            reason: errno_text(e),
        })
    }

    pub fn pause(&mut self) -> Result<(), ContainerError> {
        if self.state.status != Status::Running {
            return Err(self.wrong_status("pause", ", not running"));
        }
        self.cgroup()?.freeze()?;
        self.state.status = Status::Paused;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), ContainerError> {
        if self.state.status != Status::Paused {
            return Err(self.wrong_status("resume", ", not paused"));
        }
        self.cgroup()?.thaw()?;
        self.state.status = Status::Running;
        Ok(())
    }

    /// Pids of every process in the container's cgroup, as the host sees them.
    pub fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        Ok(self.cgroup()?.pids()?)
    }

    pub fn stats(&self) -> Result<Stats, ContainerError> {
        Ok(self.cgroup()?.stats()?)
    }

    /// Starts an extra process inside this running container: it joins every namespace of
    /// the container and its cgroup, with the user, capabilities, rlimits and cwd of
    /// `process` (by default the container's own process with other `args`). Returns its pid
    /// once it has been exec'd; it is a child of the caller.
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32, ContainerError> {
        if !matches!(self.state.status, Status::Running | Status::Created) {
            return Err(self.wrong_status("exec in", ", not running"));
        }
        let spec = self.exec_spec(opts)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let console = console_for(terminal, &opts.console_socket)?;
        let loaded = spec::LoadedSpec {
            spec,
            bundle: self.state.bundle.clone(),
            rootfs: self.state.rootfs.clone(),
        };
        let init_path = init_path_or_default(&opts.init_path)?;
        let cgroup = self.cgroup()?;
        let pid = launch::launch(&LaunchRequest {
            id: &self.state.id,
            loaded: &loaded,
            cgroup: &cgroup,
            fifo: None,
            console: console.as_ref(),
            seccomp_cache: &seccomp_cache(self.dir.parent().unwrap_or(Path::new(DEFAULT_ROOT))),
            preserve_fds: opts.preserve_fds,
            stdio: opts.stdio,
            init_path: &init_path,
        })?;
        if let Some(p) = &opts.pid_file {
            spec::write_atomic(p, pid.to_string().as_bytes())
                .map_err(io_err("write pid file", p))?;
        }
        Ok(pid)
    }

    /// The container's frozen spec turned into an exec: the new process, every namespace
    /// joined through the init's `/proc/PID/ns`, and nothing that sets the container up again.
    fn exec_spec(&self, opts: &ExecOptions) -> Result<oci_spec::runtime::Spec, ContainerError> {
        let mut spec = self.frozen_spec()?.into_owned();
        let process = match &opts.process {
            Some(p) => p.clone(),
            None => {
                let mut p = spec.process().clone().unwrap_or_default();
                if opts.args.is_empty() {
                    return Err(SpecError::Missing {
                        path: PathBuf::from("exec"),
                        field: "the command to run (--process FILE or arguments)",
                    }
                    .into());
                }
                p.set_args(Some(opts.args.clone()));
                p.set_terminal(Some(opts.tty));
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(opts.env.iter().cloned());
                p.set_env(Some(env));
                if let Some(cwd) = &opts.cwd {
                    p.set_cwd(cwd.clone());
                }
                p
            }
        };
        spec.set_process(Some(process));
        spec.set_mounts(None);
        spec.set_hooks(None);
        let pid = self.state.pid;
        if let Some(linux) = spec.linux_mut() {
            let namespaces = linux.namespaces().clone().unwrap_or_default();
            let joined = namespaces
                .into_iter()
                .map(|mut ns| {
                    let file = match ns.typ() {
                        LinuxNamespaceType::Mount => "mnt",
                        LinuxNamespaceType::Network => "net",
                        other => return Some((other, ns)),
                    };
                    ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{file}"))));
                    Some((ns.typ(), ns))
                })
                .map(|entry| {
                    let (kind, mut ns) = entry.expect("mapped above");
                    if ns.path().is_none() {
                        ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{kind}"))));
                    }
                    ns
                })
                .collect();
            linux.set_namespaces(Some(joined));
            linux.set_uid_mappings(None);
            linux.set_gid_mappings(None);
            linux.set_resources(None);
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
        }
        Ok(spec)
    }

    /// Removes a stopped container: its cgroup and state directory. With `force` a created,
    /// running or paused one is killed first (everything in its cgroup).
    pub fn delete(mut self, force: bool) -> Result<(), ContainerError> {
        let cgroup = self.cgroup()?;
        if self.state.status != Status::Stopped {
            if !force {
                return Err(self.wrong_status("delete", "; stop it first or use --force"));
            }
            cgroup.signal_all(Signal::SIGKILL)?;
            let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            wait_gone(
                self.state.pid,
                self.state.pid_start_time,
                Duration::from_secs(10),
            );
            self.state.status = Status::Stopped;
        }
        cgroup.destroy()?;
        if let Ok(spec) = self.frozen_spec() {
            let state_json = serde_json::to_string(&self.state.oci()).unwrap_or_default();
            hooks::run_warn(Stage::Poststop, spec.hooks().as_ref(), &state_json);
        }
        fs::remove_dir_all(&self.dir).map_err(io_err("remove state dir", &self.dir))
    }
}

/// Waits, bounded, until `pid` has exited; works for processes that are not our children.
pub fn wait_gone(pid: i32, start_time: u64, limit: Duration) {
    let start = Instant::now();
    if let Some(fd) = pidfd_open(pid) {
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
        loop {
            match nix::poll::poll(&mut fds, ms) {
                Err(Errno::EINTR) => continue,
                _ => return,
            }
        }
    }
    let mut pause = Duration::from_micros(100);
    while state::is_alive(pid, start_time) && start.elapsed() < limit {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// Every container under `root`, in name order; unreadable entries are skipped with a warning.
pub fn list(root: &Path) -> Result<Vec<Container>, ContainerError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read state root", root)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| spec::validate_id(name).is_ok())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        match Container::load(root, &name) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!("skip {name}: {e}"),
        }
    }
    Ok(out)
}
