//! The per-job shim (`jobd-shim`): the process that holds a job so that jobd does not have to.
//!
//! jobd prepares the job (bundle, overlay) and spawns one shim per job in its own session. The
//! shim creates and starts the container through the runtime library (so the container's init
//! is the shim's child; the shim is a child subreaper for the job's orphans too), owns the job's
//! stdout and stderr pipes and appends what they carry to the job's output files
//! ([`crate::output_store`], with the cap), reports `started PID START` or `failed REASON` on
//! fd 3, and when the init has exited, kills what is left in the job, drains the pipes, writes
//! the exit status atomically to `DATA/jobs/ID/exit` and exits. Because nothing of a running job
//! depends on jobd, jobd can be killed (`kill -9`) or restarted at any moment: the job keeps
//! running, its output keeps landing in the file, and the next jobd re-adopts it (follows the
//! file, waits for the shim through a pidfd) or finalises it from the exit file.
//!
//! Everything here is synchronous and tokio-free: the shim's exec is on every job's start path.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use proto::OutputStream;
use serde::{Deserialize, Serialize};

use crate::layer::{self, LayerError, LayerPlan};
use crate::manager::now_ms;
use crate::output_store::{OutputWriter, StoreError};

/// The file the shim writes the job's exit status to, in the job directory.
pub const EXIT_FILE: &str = "exit";
/// The shim's report pipe (its write end in the shim).
pub const REPORT_FD: RawFd = 3;
/// A container's config.json, in a memfd.
pub const CONFIG_FD: RawFd = 4;
/// A container's input tar, in a memfd (empty when there is none).
pub const INPUT_FD: RawFd = 5;
/// The binary's name, looked for next to jobd.
pub const BINARY: &str = "jobd-shim";
/// Overrides where jobd finds the shim (like `JOB_RUNTIME_INIT` for job-init).
pub const PATH_ENV: &str = "JOBD_SHIM";
/// How long the shim keeps draining the pipes after the init exited and the job was killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Errors of the shim and of spawning it.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("jobd-shim usage: {0}")]
    Usage(String),
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: Errno },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("exit record {path}: {reason}")]
    BadExit { path: PathBuf, reason: String },
}

pub(crate) fn sys(op: &'static str) -> impl FnOnce(Errno) -> ShimError {
    move |source| ShimError::Sys { op, source }
}

/// What the shim starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A container through the runtime library. The shim builds the job's filesystem first
    /// ([`crate::layer`]) in a mount namespace of its own.
    Container {
        id: String,
        layer: LayerPlan,
        init: Option<PathBuf>,
        /// The compiled seccomp filter cache shared by all jobs (each job's state root is its
        /// own, so the runtime's default cache beside it would never hit).
        seccomp_cache: PathBuf,
        /// The bundle's config.json. Not on the command line: [`spawn`] hands it to the shim
        /// in a memfd on [`CONFIG_FD`], and the shim reads it back from there.
        config_json: Vec<u8>,
        /// An uncompressed tar for the working directory (may be empty), in a memfd on
        /// [`INPUT_FD`] likewise.
        input_tar: Vec<u8>,
    },
    /// A plain host process WITHOUT isolation, in its own process group: only the daemon's
    /// tests use it (their `HostExecutor`), so that the manager's paths run without root. It
    /// lets nobody do more than they could by running the command themselves.
    Host {
        argv: Vec<String>,
        env: Vec<String>,
        cwd: PathBuf,
    },
}

/// The shim's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The job's directory, holding the output files; the exit file goes there.
    pub job_dir: PathBuf,
    /// The output cap in bytes.
    pub cap: u64,
    /// What to start.
    pub launch: Launch,
}

impl ShimArgs {
    /// The arguments (after argv[0]) that [`ShimArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--job-dir".into(),
            self.job_dir.clone().into(),
            "--cap".into(),
            self.cap.to_string().into(),
        ];
        match &self.launch {
            Launch::Container {
                id,
                layer,
                init,
                seccomp_cache,
                ..
            } => {
                a.extend([
                    "container".into(),
                    "--id".into(),
                    id.into(),
                    "--scratch".into(),
                    layer.scratch.clone().into(),
                    "--size".into(),
                    layer.size_bytes.to_string().into(),
                    "--lower".into(),
                    layer.lower.clone().into(),
                    "--owner".into(),
                    layer.owner.to_string().into(),
                    "--workdir".into(),
                    layer.working_dir.clone().into(),
                    "--seccomp-cache".into(),
                    seccomp_cache.clone().into(),
                ]);
                if let Some(init) = init {
                    a.extend(["--init".into(), init.clone().into()]);
                }
            }
            Launch::Host { argv, env, cwd } => {
                a.extend(["host".into(), "--cwd".into(), cwd.clone().into()]);
                for kv in env {
                    a.extend(["--env".into(), kv.into()]);
                }
                a.push("--".into());
                a.extend(argv.iter().map(OsString::from));
            }
        }
        a
    }

    /// Parses the arguments after argv[0].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<ShimArgs, ShimError> {
        let mut it = args.into_iter();
        let usage = |m: String| ShimError::Usage(m);
        let value = |it: &mut dyn Iterator<Item = OsString>, flag: &str| {
            it.next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        let mut job_dir = None;
        let mut cap = None;
        let mode = loop {
            let Some(a) = it.next() else {
                return Err(usage(
                    "expected `container` or `host` after the options".into(),
                ));
            };
            match a.to_str() {
                Some("--job-dir") => job_dir = Some(PathBuf::from(value(&mut it, "--job-dir")?)),
                Some("--cap") => {
                    let v = value(&mut it, "--cap")?;
                    cap = Some(v.to_str().and_then(|s| s.parse::<u64>().ok()).ok_or_else(
                        || usage(format!("--cap {v:?}: expected a number of bytes")),
                    )?);
                }
                Some("container") | Some("host") => break a,
                _ => return Err(usage(format!("unexpected argument {a:?}"))),
            }
        };
        let job_dir = job_dir.ok_or_else(|| usage("--job-dir is required".into()))?;
        let cap = cap.ok_or_else(|| usage("--cap is required".into()))?;
        let launch = if mode == "container" {
            let number = |v: OsString, flag: &str| {
                v.to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| usage(format!("container: {flag} {v:?}: expected a number")))
            };
            let (mut id, mut scratch, mut size, mut lower, mut owner, mut wd, mut init) =
                (None, None, None, None, None, None, None);
            let mut seccomp_cache = None;
            while let Some(a) = it.next() {
                match a.to_str() {
                    Some("--id") => id = value(&mut it, "--id")?.into_string().ok(),
                    Some("--scratch") => scratch = Some(value(&mut it, "--scratch")?.into()),
                    Some("--size") => size = Some(number(value(&mut it, "--size")?, "--size")?),
                    Some("--lower") => lower = Some(value(&mut it, "--lower")?.into()),
                    Some("--owner") => {
                        let v = number(value(&mut it, "--owner")?, "--owner")?;
                        owner = Some(
                            u32::try_from(v)
                                .map_err(|_| usage(format!("container: --owner {v}: not a uid")))?,
                        )
                    }
                    Some("--workdir") => wd = Some(lossy(value(&mut it, "--workdir")?)),
                    Some("--init") => init = Some(value(&mut it, "--init")?.into()),
                    Some("--seccomp-cache") => {
                        seccomp_cache = Some(value(&mut it, "--seccomp-cache")?.into())
                    }
                    _ => return Err(usage(format!("container: unexpected argument {a:?}"))),
                }
            }
            let required = |flag: &str| usage(format!("container: {flag} is required"));
            Launch::Container {
                id: id.ok_or_else(|| required("--id"))?,
                layer: LayerPlan {
                    scratch: scratch.ok_or_else(|| required("--scratch"))?,
                    size_bytes: size.ok_or_else(|| required("--size"))?,
                    lower: lower.ok_or_else(|| required("--lower"))?,
                    owner: owner.ok_or_else(|| required("--owner"))?,
                    working_dir: wd.ok_or_else(|| required("--workdir"))?,
                },
                init,
                seccomp_cache: seccomp_cache.ok_or_else(|| required("--seccomp-cache"))?,
                config_json: Vec::new(),
                input_tar: Vec::new(),
            }
        } else {
            let (mut cwd, mut env) = (None, Vec::new());
            loop {
                let Some(a) = it.next() else {
                    return Err(usage("host: expected `-- COMMAND [ARGS]`".into()));
                };
                match a.to_str() {
                    Some("--cwd") => cwd = Some(value(&mut it, "--cwd")?.into()),
                    Some("--env") => env.push(lossy(value(&mut it, "--env")?)),
                    Some("--") => break,
                    _ => return Err(usage(format!("host: unexpected argument {a:?}"))),
                }
            }
            let argv: Vec<String> = it.map(lossy).collect();
            if argv.is_empty() {
                return Err(usage("host: the command is missing after `--`".into()));
            }
            Launch::Host {
                argv,
                env,
                cwd: cwd.ok_or_else(|| usage("host: --cwd is required".into()))?,
            }
        };
        Ok(ShimArgs {
            job_dir,
            cap,
            launch,
        })
    }
}

fn lossy(s: OsString) -> String {
    s.to_string_lossy().into_owned()
}

/// What the shim tells jobd on its report pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The job runs: its main process, that process's start time (/proc/PID/stat field 22),
    /// and when the shim saw it start (ms since the epoch; 0 = unknown): the record's times
    /// are the job's, not when a busy jobd got round to reading the report.
    Started {
        pid: i32,
        start_time: u64,
        started_at_ms: i64,
    },
    /// The job could not start, and why (the record's failure reason).
    Failed(String),
}

impl Report {
    fn encode(&self) -> String {
        match self {
            Report::Started {
                pid,
                start_time,
                started_at_ms,
            } => format!("started {pid} {start_time} {started_at_ms}\n"),
            Report::Failed(reason) => format!("failed {reason}"),
        }
    }

    /// Reads a report (everything the shim wrote before closing the pipe).
    pub fn decode(text: &[u8]) -> Report {
        let text = String::from_utf8_lossy(text);
        if let Some(rest) = text.strip_prefix("started ") {
            let mut f = rest.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start_time))) = (f.next(), f.next()) {
                return Report::Started {
                    pid: pid as i32,
                    start_time,
                    started_at_ms: f.next().and_then(Result::ok).unwrap_or(0) as i64,
                };
            }
        }
        if let Some(reason) = text.strip_prefix("failed ") {
            return Report::Failed(reason.trim_end().to_string());
        }
        Report::Failed(if text.is_empty() {
            "the job's shim exited before reporting whether the job started".into()
        } else {
            format!("the job's shim sent an unreadable report: {text:?}")
        })
    }
}

/// How the job's main process ended, as the shim recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitRecord {
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Bytes of output written.
    pub output_bytes: u64,
    /// When the main process ended, ms since the epoch (0 in records of older shims).
    #[serde(default)]
    pub ended_at_ms: i64,
}

/// Reads `DIR/exit`; `None` when the shim did not write one.
pub fn read_exit(job_dir: &Path) -> Result<Option<ExitRecord>, ShimError> {
    let path = job_dir.join(EXIT_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ShimError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ShimError::BadExit {
            path,
            reason: e.to_string(),
        })
}

/// Writes the exit record in one write. jobd reads it only once the shim is gone, so a torn
/// record is only possible if the shim was killed while writing it; jobd then treats it as
/// missing (no rename through a temporary file: one inode fewer on every job's path).
fn write_exit(job_dir: &Path, rec: &ExitRecord) -> Result<(), ShimError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = job_dir.join(EXIT_FILE);
    let text = serde_json::to_vec(rec).unwrap_or_default();
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|source| ShimError::Io {
            op: "write",
            path,
            source,
        })
}

/// Fills a container launch's config.json and input tar from the memfds [`spawn`] passed.
fn read_payload(mut args: ShimArgs) -> Result<ShimArgs, ShimError> {
    if let Launch::Container {
        config_json,
        input_tar,
        ..
    } = &mut args.launch
    {
        *config_json = read_inherited(CONFIG_FD, "config.json")?;
        *input_tar = read_inherited(INPUT_FD, "input tar")?;
    }
    Ok(args)
}

/// Reads the whole memfd jobd left on `fd` (from its start: jobd's writes moved the shared
/// offset to the end) and closes it.
fn read_inherited(fd: RawFd, what: &'static str) -> Result<Vec<u8>, ShimError> {
    use std::io::{Read, Seek};
    // Only adopt `fd` if it is open: jobd-shim run by hand has no such descriptor.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|_| ShimError::Usage(format!("the {what} is expected on fd {fd}")))?;
    // SAFETY: fd is open (checked above) and nothing else in this process owns it: jobd put
    // it there for the shim alone, and it is read and closed only here.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    let mut data = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut data))
        .map_err(|source| ShimError::Io {
            op: "read",
            path: format!("fd {fd} ({what})").into(),
            source,
        })?;
    Ok(data)
}

/// A close-on-exec memfd holding `data`, for the shim to inherit.
fn memfd_with(name: &str, data: &[u8]) -> Result<OwnedFd, ShimError> {
    let name = CString::new(name).unwrap_or_default();
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(sys("memfd_create"))?;
    let mut f = fs::File::from(fd);
    f.write_all(data).map_err(|source| ShimError::Io {
        op: "write",
        path: "memfd".into(),
        source,
    })?;
    Ok(f.into())
}

/// A container's config.json and input tar in memfds, for fds [`CONFIG_FD`] and [`INPUT_FD`]:
/// not on the command line (size) nor in files (no writes on the data directory's
/// filesystem). `None` for a host launch.
pub(crate) fn payload_memfds(launch: &Launch) -> Result<Option<(OwnedFd, OwnedFd)>, ShimError> {
    match launch {
        Launch::Container {
            config_json,
            input_tar,
            ..
        } => Ok(Some((
            memfd_with("jobd-config", config_json)?,
            memfd_with("jobd-input", input_tar)?,
        ))),
        Launch::Host { .. } => Ok(None),
    }
}

/// Where jobd finds the shim: `$JOBD_SHIM`, else next to the running executable.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os(PATH_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(BINARY)))
        .unwrap_or_else(|| PathBuf::from(BINARY))
}

/// A shim jobd started.
#[derive(Debug)]
pub struct Spawned {
    /// The shim's pid: a child of the caller ([`spawn`]) or of the fork server
    /// ([`crate::shim_server`]).
    pub pid: i32,
    /// The read end of its report pipe: [`Report::decode`] what arrives before EOF.
    pub report: OwnedFd,
    /// A pidfd for the shim and its start time (/proc/PID/stat field 22), when its parent
    /// took them before it could have been reaped (the fork server does; for jobd's own
    /// child the pid cannot be reused until jobd reaps it).
    pub pinned: Option<(OwnedFd, u64)>,
}

fn cstring(s: &OsStr) -> Result<CString, ShimError> {
    CString::new(s.as_bytes()).map_err(|_| ShimError::Usage(format!("{s:?} contains a NUL byte")))
}

/// Spawns the shim with `args` in a new session: stdin, stdout and stderr on /dev/null, the
/// report pipe as fd 3, for a container its config.json and input tar as fds 4 and 5, and no
/// other descriptor (everything jobd opens is close-on-exec). Used when the fork server
/// ([`crate::shim_server`]) cannot be.
pub fn spawn(shim: &Path, args: &ShimArgs) -> Result<Spawned, ShimError> {
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create report pipe"))?;
    let payload = payload_memfds(&args.launch)?;
    let pid = spawn_with(shim, &args.to_args(), report_w.as_fd(), payload.as_ref())?;
    Ok(Spawned {
        pid,
        report: report_r,
        pinned: None,
    })
}

/// /dev/null, open for reading and writing (close-on-exec).
pub(crate) fn dev_null() -> Result<OwnedFd, ShimError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|source| ShimError::Io {
            op: "open",
            path: "/dev/null".into(),
            source,
        })
}

/// posix_spawns `shim ARGS` in a new session with /dev/null on fds 0-2, `fd3` on fd 3 and
/// the payload (if any) on [`CONFIG_FD`] and [`INPUT_FD`]; returns its pid.
/// posix_spawn: a vfork-style clone, cheap even from a large multi-threaded jobd.
pub(crate) fn spawn_with(
    shim: &Path,
    args: &[OsString],
    fd3: BorrowedFd<'_>,
    payload: Option<&(OwnedFd, OwnedFd)>,
) -> Result<i32, ShimError> {
    let devnull = dev_null()?;
    let mut argv = vec![cstring(shim.as_os_str())?];
    for a in args {
        argv.push(cstring(a)?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        envp.push(cstring(&kv)?);
    }
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*mut libc::c_char> = v.iter().map(|c| c.as_ptr() as *mut _).collect();
        p.push(std::ptr::null_mut());
        p
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    let path = cstring(shim.as_os_str())?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use and destroyed after;
    // every pointer handed to posix_spawn (path, argv, envp and their strings) lives until it
    // returns; the fds named in the actions are open for the whole call.
    let rc = unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawnattr_init(&mut attr);
        let null = devnull.as_raw_fd();
        for target in 0..3 {
            libc::posix_spawn_file_actions_adddup2(&mut fa, null, target);
        }
        libc::posix_spawn_file_actions_adddup2(&mut fa, fd3.as_raw_fd(), REPORT_FD);
        if let Some((config, input)) = payload {
            libc::posix_spawn_file_actions_adddup2(&mut fa, config.as_raw_fd(), CONFIG_FD);
            libc::posix_spawn_file_actions_adddup2(&mut fa, input.as_raw_fd(), INPUT_FD);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        libc::posix_spawnattr_setflags(
            &mut attr,
            libc::POSIX_SPAWN_SETSID | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
        );
        let rc = libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &fa,
            &attr,
            argv_p.as_ptr(),
            envp_p.as_ptr(),
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        return Err(ShimError::Io {
            op: "spawn",
            path: shim.to_path_buf(),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(pid)
}

/// The started job, as the shim supervises it.
struct Started {
    pid: i32,
    start_time: u64,
    started_at_ms: i64,
    /// How to kill everything of the job once its main process is gone.
    kill_all: KillAll,
}

enum KillAll {
    Cgroup { path: PathBuf, id: String },
    Group(i32),
}

impl KillAll {
    fn kill(&self) {
        match self {
            KillAll::Cgroup { path, id } => {
                let killed = runtime::cgroups::Cgroup::open(path, false, id)
                    .and_then(|cg| cg.signal_all(Signal::SIGKILL));
                if let Err(e) = killed {
                    tracing::warn!(error = %e, "kill the job's cgroup");
                }
            }
            KillAll::Group(pgid) => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Starts the job with stdout/stderr on `out`/`err`.
fn launch(launch: &Launch, out: &OwnedFd, err: &OwnedFd) -> Result<Started, String> {
    match launch {
        Launch::Container {
            id,
            layer: plan,
            init,
            seccomp_cache,
            config_json,
            input_tar,
        } => {
            use runtime::container::{self, CreateOptions};
            // jobd's namespace never holds the job's mounts, so (1) with N running jobs, jobd
            // and every new container do not copy and scan N mounts on each start (1,000 extra
            // mounts made a start 20 ms slower), and (2) the job's filesystem goes away by
            // itself when the shim and the job are gone, whoever kills them.
            let built = layer::enter_private_mount_namespace()
                .and_then(|()| layer::build(plan, config_json, input_tar))
                .map_err(|e| match e {
                    LayerError::Input { .. } => e.to_string(),
                    e => format!("jobd-shim: build the job's filesystem: {e}"),
                })?;
            // This process is single-threaded and the namespace just made is its own: v1
            // limits may be applied by briefly covering the hierarchies in it.
            runtime::v1_roots::namespace_is_own();
            let devnull: OwnedFd = fs::File::open("/dev/null")
                .map_err(|e| format!("open /dev/null: {e}"))?
                .into();
            let mut opts = CreateOptions::new(id, &built.bundle, &built.state_root);
            opts.stdio = Some([devnull.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()]);
            opts.init_path = init.clone();
            opts.seccomp_cache = Some(seccomp_cache.clone());
            let mut c = container::create(&opts).map_err(|e| e.to_string())?;
            if let Err(e) = c.start() {
                let _ = c.delete(true);
                return Err(e.to_string());
            }
            Ok(Started {
                pid: c.pid(),
                start_time: c.state().pid_start_time,
                started_at_ms: now_ms(),
                kill_all: KillAll::Cgroup {
                    path: c.state().cgroup_path.clone(),
                    id: id.clone(),
                },
            })
        }
        Launch::Host { argv, env, cwd } => {
            use std::os::unix::process::CommandExt;
            use std::process::{Command, Stdio};
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(dup(out).map_err(|e| format!("dup stdout: {e}"))?)
                .stderr(dup(err).map_err(|e| format!("dup stderr: {e}"))?)
                .process_group(0);
            for kv in env {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
            let child = cmd.spawn().map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("executable not found: {}", argv[0])
                } else {
                    format!("exec {}: {e}", argv[0])
                }
            })?;
            let pid = child.id() as i32;
            Ok(Started {
                pid,
                start_time: runtime::state::proc_stat(pid).map_or(0, |(_, t)| t),
                started_at_ms: now_ms(),
                kill_all: KillAll::Group(pid),
            })
        }
    }
}

/// The pump's first read buffer: a job that prints little never touches more memory (a
/// zeroed 64 KiB buffer was 16 page faults in every shim, about 50 µs of a start).
const PUMP_BUF_START: usize = 4 * 1024;
/// A pipe's default capacity: a full pipe drains in one read.
const PUMP_BUF_MAX: usize = 64 * 1024;

/// Doubles `buf` (up to `PUMP_BUF_MAX`) when a read of `n` bytes filled it: the job writes
/// faster than one buffer per wake-up.
fn grow_if_filled(buf: &mut Vec<u8>, n: usize) {
    if n == buf.len() && buf.len() < PUMP_BUF_MAX {
        buf.resize((buf.len() * 2).min(PUMP_BUF_MAX), 0);
    }
}

/// The shim's pipes and output.
struct Pump {
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    writer: OutputWriter,
    buf: Vec<u8>,
}

impl Pump {
    fn open(&self) -> bool {
        self.out.is_some() || self.err.is_some()
    }

    /// Reads what `stream`'s pipe has (it is readable or hung up) into the output.
    fn read(&mut self, stream: OutputStream) -> Result<(), ShimError> {
        let slot = match stream {
            OutputStream::Stdout => &mut self.out,
            _ => &mut self.err,
        };
        let Some(fd) = slot else { return Ok(()) };
        match nix::unistd::read(fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => *slot = None,
            Ok(n) => {
                self.writer.write(stream, &self.buf[..n])?;
                grow_if_filled(&mut self.buf, n);
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => *slot = None,
        }
        Ok(())
    }

    /// Waits up to `timeout` for the open pipes and `also` (if any) and reads the pipes that
    /// are ready. Returns `None` when the time ran out, else whether `also` is readable.
    fn poll_once(
        &mut self,
        also: Option<BorrowedFd<'_>>,
        timeout: PollTimeout,
    ) -> Result<Option<bool>, ShimError> {
        let mut fds = Vec::with_capacity(3);
        if let Some(fd) = also {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let first_pipe = fds.len();
        let mut streams = Vec::with_capacity(2);
        for (fd, stream) in [
            (self.out.as_ref(), OutputStream::Stdout),
            (self.err.as_ref(), OutputStream::Stderr),
        ] {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                streams.push(stream);
            }
        }
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(sys("poll")(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (i, stream) in streams.into_iter().enumerate() {
            if ready[first_pipe + i] {
                self.read(stream)?;
            }
        }
        Ok(Some(also.is_some() && ready[0]))
    }
}

/// Reaps every exited child; returns the status of `main` if it was among them.
fn reap(main: i32) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return found,
            Ok(st) => {
                if st.pid() == Some(Pid::from_raw(main)) {
                    found = Some(st);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return found,
        }
    }
}

/// Follows the started job: output into the file until both pipes close, the main process's
/// status when it exits (then everything left of the job is killed, so the pipes close).
/// Pumps output until the main process has ended and the pipes are drained (or
/// [`DRAIN_LIMIT`] has passed since): its wait status and when it ended.
fn supervise(
    job: &Started,
    pump: &mut Pump,
    sigchld: &SignalFd,
) -> Result<(WaitStatus, i64), ShimError> {
    let mut status = reap(job.pid);
    let mut ended_at_ms = now_ms();
    let mut drain_until = None;
    if status.is_some() {
        job.kill_all.kill();
        drain_until = Some(Instant::now() + DRAIN_LIMIT);
    }
    loop {
        if let Some(st) = status {
            if !pump.open() || drain_until.is_some_and(|d| Instant::now() >= d) {
                return Ok((st, ended_at_ms));
            }
        }
        let timeout = match drain_until {
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        if pump.poll_once(Some(sigchld.as_fd()), timeout)? == Some(true) {
            while let Ok(Some(_)) = sigchld.read_signal() {}
            if let Some(st) = reap(job.pid) {
                if status.is_none() {
                    status = Some(st);
                    ended_at_ms = now_ms();
                    // The main process is gone: nothing of the job may outlive it.
                    job.kill_all.kill();
                    drain_until = Some(Instant::now() + DRAIN_LIMIT);
                }
            }
        }
    }
}

/// Writes the report to fd 3 and closes it. `false` when nobody reads it any more.
fn send_report(report: OwnedFd, r: &Report) -> bool {
    let mut f = fs::File::from(report);
    f.write_all(r.encode().as_bytes()).is_ok()
}

fn exit_record(st: WaitStatus, ended_at_ms: i64, output_bytes: u64) -> ExitRecord {
    let (exit_code, signal) = match st {
        WaitStatus::Exited(_, c) => (Some(c), None),
        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
        _ => (None, None),
    };
    ExitRecord {
        exit_code,
        signal,
        output_bytes,
        ended_at_ms,
    }
}

/// The shim's whole life; returns its exit status. `args` are the arguments after argv[0].
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    // SAFETY: fd 3 is the report pipe jobd gave us (checked below before use); taking
    // ownership is sound because nothing else in this fresh process refers to it.
    let report = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
    if nix::fcntl::fcntl(
        REPORT_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .is_err()
    {
        eprintln!("jobd-shim: fd 3 (the report pipe) is not open: jobd starts this program");
        std::mem::forget(report);
        return 2;
    }
    match run(args, report) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "jobd-shim failed");
            1
        }
    }
}

fn run(args: impl IntoIterator<Item = OsString>, report: OwnedFd) -> Result<(), ShimError> {
    let args = match ShimArgs::parse(args).and_then(read_payload) {
        Ok(a) => a,
        Err(e) => {
            send_report(report, &Report::Failed(e.to_string()));
            return Err(e);
        }
    };
    // The job and the shim that drains its pipes run at the normal priority whatever jobd's
    // (jobd may serve its clients at a lower one: see `Config::nice`).
    // SAFETY: setpriority with integer arguments; who = 0 is this (single-threaded) process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) } != 0 {
        tracing::warn!(error = %Errno::last(), "reset the shim's nice value");
    }
    // Orphans of the job come to the shim, which reaps them; jobd may be gone.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        let e = sys("prctl(PR_SET_CHILD_SUBREAPER)")(Errno::last());
        send_report(report, &Report::Failed(e.to_string()));
        return Err(e);
    }
    // SIGCHLD through a signalfd, blocked from here on (job-init and the host spawn reset the
    // mask, so the job does not inherit it).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sigchld = mask
        .thread_block()
        .map_err(sys("block SIGCHLD"))
        .and_then(|()| {
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(sys("signalfd"))
        });
    let prepared = sigchld.and_then(|sfd| {
        let writer = OutputWriter::open(&args.job_dir, args.cap)?;
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create stdout pipe"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create stderr pipe"))?;
        Ok((sfd, writer, out_r, out_w, err_r, err_w))
    });
    let (sigchld, writer, out_r, out_w, err_r, err_w) = match prepared {
        Ok(p) => p,
        Err(e) => {
            send_report(report, &Report::Failed(format!("jobd-shim: {e}")));
            return Err(e);
        }
    };
    let started = launch(&args.launch, &out_w, &err_w);
    drop((out_w, err_w));
    let mut pump = Pump {
        out: Some(out_r),
        err: Some(err_r),
        writer,
        buf: vec![0u8; PUMP_BUF_START],
    };
    let job = match started {
        Ok(j) => j,
        Err(reason) => {
            // What the job printed before failing (the runtime's own words) stays in the output.
            let deadline = Instant::now() + Duration::from_secs(2);
            while pump.open() && Instant::now() < deadline {
                drain_once(&mut pump, deadline)?;
            }
            reap(-1);
            send_report(report, &Report::Failed(reason));
            return Ok(());
        }
    };
    let told = send_report(
        report,
        &Report::Started {
            pid: job.pid,
            start_time: job.start_time,
            started_at_ms: job.started_at_ms,
        },
    );
    if !told {
        // jobd died before it learned of this job: it has no record that could re-adopt it.
        tracing::warn!("jobd is gone before the job's start was reported: killing the job");
        job.kill_all.kill();
    }
    let (st, ended_at_ms) = supervise(&job, &mut pump, &sigchld)?;
    let rec = exit_record(st, ended_at_ms, pump.writer.len());
    write_exit(&args.job_dir, &rec)?;
    // Whatever was killed last may still be exiting: reap what has, the rest goes to init.
    reap(-1);
    Ok(())
}

/// One poll-and-read round over the open pipes, until `deadline`.
fn drain_once(pump: &mut Pump, deadline: Instant) -> Result<(), ShimError> {
    let timeout = PollTimeout::try_from(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or(PollTimeout::MAX);
    if pump.poll_once(None, timeout)?.is_none() {
        pump.out = None;
        pump.err = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_buffer_grows_only_when_a_read_fills_it() {
        let mut buf = vec![0u8; PUMP_BUF_START];
        grow_if_filled(&mut buf, 10);
        assert_eq!(buf.len(), PUMP_BUF_START);
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let n = buf.len();
            grow_if_filled(&mut buf, n);
            sizes.push(buf.len());
        }
        assert_eq!(sizes, [8192, 16384, 32768, 65536, 65536, 65536]);
    }

    #[test]
    fn args_round_trip_and_bad_ones_are_named() {
        for launch in [
            Launch::Container {
                id: "abc".into(),
                layer: LayerPlan {
                    scratch: "/d/jobs/abc/scratch".into(),
                    size_bytes: 1 << 29,
                    lower: "/d/rootfs".into(),
                    owner: 100_000,
                    working_dir: "/work dir".into(),
                },
                init: Some("/usr/bin/job-init".into()),
                seccomp_cache: "/d/seccomp-cache".into(),
                config_json: Vec::new(),
                input_tar: Vec::new(),
            },
            Launch::Host {
                argv: vec!["sh".into(), "-c".into(), "echo --cap".into()],
                env: vec!["A=b c".into()],
                cwd: "/tmp/w".into(),
            },
        ] {
            let a = ShimArgs {
                job_dir: "/d/jobs/abc".into(),
                cap: 1234,
                launch,
            };
            assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        }
        let bad = |v: &[&str]| {
            ShimArgs::parse(v.iter().map(OsString::from))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&["--cap", "x", "host"]).contains("--cap \"x\""));
        assert!(bad(&["--cap", "1", "container"]).contains("--job-dir is required"));
        assert!(
            bad(&["--job-dir", "/d", "--cap", "1", "container", "--id", "x"])
                .contains("--scratch is required")
        );
        assert!(bad(&[
            "--job-dir",
            "/d",
            "--cap",
            "1",
            "container",
            "--owner",
            "-1"
        ])
        .contains("--owner \"-1\": expected a number"));
        assert!(
            bad(&["--job-dir", "/d", "--cap", "1", "host", "--cwd", "/", "--"])
                .contains("command is missing")
        );
    }

    #[test]
    fn reports_decode() {
        let s = Report::Started {
            pid: 42,
            start_time: 99,
            started_at_ms: 1_795_000_000_123,
        };
        assert_eq!(Report::decode(s.encode().as_bytes()), s);
        let f = Report::Failed("exec \"x\": not found\nin the rootfs".into());
        assert_eq!(Report::decode(f.encode().as_bytes()), f);
        assert!(matches!(Report::decode(b""), Report::Failed(m) if m.contains("before reporting")));
    }
}
