//! The job manager: lifecycle of every job, from request to final record.
//!
//! `start` records the job (committed before the caller hears of it), follows its output file,
//! has the [`Executor`] prepare it, spawns the job's shim ([`crate::shim`]), which starts it and
//! reports, and returns the record. A supervisor task per job then waits for the shim's exit
//! through a pidfd (an event, no polling; it works for a shim that is not jobd's child, after a
//! restart), enforces the wall-clock timeout, and when the shim is gone reads the exit status it
//! recorded, the OOM flag and the output length, cleans up and writes the final record. Stop =
//! SIGTERM to every process of the job, SIGKILL to all after the grace period.
//!
//! Because the shim, not jobd, holds a running job, jobd may die at any moment: on restart
//! [`Manager::recover`] re-adopts jobs whose shim is alive, finalises those whose shim recorded
//! an exit while jobd was away, and cleans up the rest with the reason in the record.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use proto::{Job, JobSpec, JobState};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::config::{Config, LimitValues, ShutdownPolicy};
use crate::db::{Db, DbError, ListFilter, Unfinished};
use crate::executor::{ExecError, Executor, JobHandle, JobStats, LaunchRequest};
use crate::output::{OutputError, OutputLog, OutputWatcher, Watched};
use crate::shim::{self, ExitRecord, Report, ShimArgs};
use crate::shim_server::{pidfd_open, ServerError, ShimServer};

/// Errors of the job manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("follow output: {0}")]
    Watcher(std::io::Error),
    #[error("stats of job {job_id}: {source}")]
    Stats { job_id: String, source: ExecError },
    #[error("jobd is shutting down")]
    ShuttingDown,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When a job ended: the time its shim recorded, else (no record, or one from an older shim)
/// now.
fn ended_at(record: Option<&ExitRecord>) -> i64 {
    record
        .map(|r| r.ended_at_ms)
        .filter(|&t| t > 0)
        .unwrap_or_else(now_ms)
}

/// Whether a state is final.
pub fn is_final(state: i32) -> bool {
    !matches!(
        JobState::try_from(state),
        Ok(JobState::Starting | JobState::Running | JobState::Unspecified) | Err(_)
    )
}

#[derive(Debug, Clone)]
enum StopReason {
    Request,
    Timeout(u64),
    Shutdown,
}

impl StopReason {
    /// How the database keeps it ([`Db::set_stop`]).
    fn encode(&self) -> String {
        match self {
            StopReason::Request => "request".into(),
            StopReason::Timeout(ms) => format!("timeout:{ms}"),
            StopReason::Shutdown => "shutdown".into(),
        }
    }

    fn decode(text: &str) -> StopReason {
        match text.split_once(':') {
            Some(("timeout", ms)) => StopReason::Timeout(ms.parse().unwrap_or(0)),
            _ if text == "shutdown" => StopReason::Shutdown,
            _ => StopReason::Request,
        }
    }

    fn describe(&self) -> String {
        match self {
            StopReason::Request => "stopped by request".into(),
            StopReason::Timeout(ms) => format!("stopped: wall-clock timeout of {ms} ms reached"),
            StopReason::Shutdown => "stopped: jobd shut down".into(),
        }
    }
}

#[derive(Debug)]
struct Live {
    record: watch::Sender<Job>,
    output: OutputLog,
    handle: OnceLock<Arc<dyn JobHandle>>,
    stop: Mutex<Option<StopReason>>,
}

/// Pids of shims (which the supervisors reap) and spawns in flight (a shim exists before its
/// pid is registered): the orphan reaper keeps off both.
#[derive(Debug, Default)]
pub struct Children {
    registered: Mutex<HashSet<i32>>,
    launching: AtomicUsize,
}

impl Children {
    /// Reaps zombie children that no supervisor waits for (orphans re-parented to jobd, the
    /// child subreaper, e.g. a job's processes whose shim was killed). Does nothing while a
    /// spawn is in flight.
    pub fn reap_orphans(&self) {
        if self.launching.load(Ordering::SeqCst) > 0 {
            return;
        }
        let registered = self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for pid in child_pids() {
            if registered.contains(&pid) {
                continue;
            }
            if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                if status != WaitStatus::StillAlive {
                    tracing::debug!(pid, ?status, "reaped orphan");
                }
            }
        }
    }
}

/// This process's children, from /proc/self/task/*/children.
fn child_pids() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Reaps orphans on every SIGCHLD until the process ends.
pub async fn run_reaper(children: Arc<Children>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        tracing::warn!("cannot watch SIGCHLD: orphans will not be reaped");
        return;
    };
    while sigchld.recv().await.is_some() {
        children.reap_orphans();
    }
}

type Work = Box<dyn FnOnce() + Send>;

/// The threads that call into the executor (prepare and spawn the shim, stats, teardown):
/// long-lived, started with the manager, so that blocking filesystem and cgroup work stays off
/// tokio's workers and jobd does not create threads per job.
#[derive(Debug)]
struct Workers {
    tx: Mutex<std::sync::mpsc::Sender<Work>>,
}

/// Number of executor threads.
const WORKERS: usize = 4;

impl Workers {
    fn new() -> Workers {
        let (tx, rx) = std::sync::mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("jobd-exec-{i}"))
                .spawn(move || loop {
                    let work = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(work) = work else { return };
                    work();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an executor thread");
            }
        }
        Workers { tx: Mutex::new(tx) }
    }

    /// Runs `f` on an executor thread.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        job_id: &str,
        f: impl FnOnce() -> Result<T, ExecError> + Send + 'static,
    ) -> Result<T, ExecError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move || {
            let _ = reply.send(f());
        });
        let lost = |reason: &str| ExecError::Host {
            op: what,
            job_id: job_id.to_string(),
            reason: reason.to_string(),
        };
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(work)
            .map_err(|_| lost("no executor thread is running"))?;
        rx.await
            .unwrap_or_else(|_| Err(lost("the executor thread died")))
    }
}

/// The job manager.
#[derive(Debug)]
pub struct Manager {
    workers: Workers,
    cfg: Arc<Config>,
    db: Arc<Db>,
    exec: Arc<dyn Executor>,
    jobs_dir: PathBuf,
    shim: PathBuf,
    /// Forks the shims (falls back to spawning `shim` when it cannot).
    shim_server: Arc<ShimServer>,
    watcher: Arc<OutputWatcher>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    children: Arc<Children>,
    closing: watch::Sender<bool>,
    /// Set on a shutdown that leaves jobs running: supervisors let go of their jobs.
    leaving: watch::Sender<bool>,
}

/// How long a shim may take to say whether its job started.
const REPORT_LIMIT: Duration = Duration::from_secs(60);
/// How long recovery waits for the shim of a job that was still starting to give up by itself.
const STARTING_SHIM_LIMIT: Duration = Duration::from_secs(10);

/// A job's shim, followed through a pidfd: jobd's child, or (after a restart) anybody's.
#[derive(Debug)]
struct ShimProc {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
}

impl ShimProc {
    /// The shim `pid` if it is still the process that started at `start` (pid reuse is checked
    /// after the pidfd pins the process). A shim that has exited but is not reaped yet counts
    /// unless `running_only`.
    fn open(pid: i32, start: u64, running_only: bool) -> Option<ShimProc> {
        let fd = pidfd_open(pid).ok()?;
        let (state, now) = runtime::state::proc_stat(pid)?;
        if now != start || (running_only && matches!(state, 'Z' | 'X')) {
            return None;
        }
        ShimProc::adopt(pid, fd)
    }

    /// The shim behind `fd`, a pidfd for `pid` its parent took before it could be reaped.
    fn adopt(pid: i32, fd: OwnedFd) -> Option<ShimProc> {
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its
        // whole lifetime.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
        Some(ShimProc { pid, fd })
    }

    /// Waits until the shim has exited, and reaps it if it is jobd's child.
    async fn wait(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                break;
            };
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(self.fd.get_ref()),
                nix::poll::PollFlags::POLLIN,
            )];
            if matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0) {
                break;
            }
            guard.clear_ready();
        }
        // ECHILD when a previous jobd started it: its new parent reaps it.
        let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
    }

    fn kill(&self) {
        // Through the pidfd: never a process that reused the pid.
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and null info.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// A job being followed: its shim, its output watch and (once started) its handle.
struct Followed {
    live: Arc<Live>,
    shim: ShimProc,
    watched: Watched,
    handle: Option<Arc<dyn JobHandle>>,
    /// What is left of the wall-clock timeout; `None` = none.
    timeout: Option<Duration>,
}

impl Manager {
    /// A manager over `db` with `exec`; call [`Manager::recover`] before serving. Must be
    /// called inside the tokio runtime (it starts the output watcher).
    pub fn new(
        cfg: Arc<Config>,
        db: Arc<Db>,
        exec: Arc<dyn Executor>,
    ) -> Result<Arc<Manager>, ManagerError> {
        let jobs_dir = cfg.data_dir.join("jobs");
        let shim = cfg.shim.clone().unwrap_or_else(shim::default_path);
        Ok(Arc::new(Manager {
            workers: Workers::new(),
            watcher: OutputWatcher::start().map_err(ManagerError::Watcher)?,
            shim_server: Arc::new(ShimServer::new(&shim)),
            shim,
            cfg,
            db,
            exec,
            jobs_dir,
            live: Mutex::new(HashMap::new()),
            children: Arc::new(Children::default()),
            closing: watch::channel(false).0,
            leaving: watch::channel(false).0,
        }))
    }

    /// The pid registry for the orphan reaper.
    pub fn children(&self) -> Arc<Children> {
        self.children.clone()
    }

    /// The private directory of a job.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    fn register_child(&self, pid: i32, add: bool) {
        let mut r = self
            .children
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if add {
            r.insert(pid);
        } else {
            r.remove(&pid);
        }
    }

    /// Deals with jobs a previous daemon left starting or running: a running job whose shim is
    /// alive is re-adopted (its output followed from the file, its timeout re-armed, its shim
    /// waited for); one whose shim recorded an exit while jobd was away is finalised from that
    /// record; any other is cleaned up (processes killed, cgroup and mounts removed) and the
    /// record says why. Returns how many jobs it dealt with.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ManagerError> {
        let stale = self.db.unfinished()?;
        let n = stale.len();
        for u in stale {
            // A dead shim not yet reaped by its new parent is gone too.
            let shim = u
                .shim
                .and_then(|(pid, start)| ShimProc::open(pid, start, true));
            let running = u.job.state == JobState::Running as i32;
            match (shim, u.pid.zip(u.pid_start)) {
                (Some(shim), Some(pid)) if running => self.readopt(u.job, shim, pid, u.stop)?,
                (shim, _) => self.settle_stale(u, shim).await?,
            }
        }
        Ok(n)
    }

    /// Follows a running job whose shim survived jobd's restart, and finishes the stop that
    /// was in progress, if any (SIGKILL when its grace period ends, the record `stopped`).
    fn readopt(
        self: &Arc<Self>,
        job: Job,
        shim: ShimProc,
        (pid, pid_start): (i32, u64),
        stop: Option<(String, i64)>,
    ) -> Result<(), ManagerError> {
        let dir = self.job_dir(&job.id);
        let (log, tail) = OutputLog::resume(&dir)?;
        let watched = self.watcher.watch(tail)?;
        let handle: Option<Arc<dyn JobHandle>> =
            match self.exec.handle(&job.id, &dir, pid, pid_start) {
                Ok(h) => Some(Arc::from(h)),
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "re-adopted job has no handle");
                    None
                }
            };
        let live = Arc::new(Live {
            record: watch::channel(job.clone()).0,
            output: log,
            handle: OnceLock::new(),
            stop: Mutex::new(stop.as_ref().map(|(reason, _)| StopReason::decode(reason))),
        });
        if let Some(h) = &handle {
            let _ = live.handle.set(h.clone());
            if let Some((reason, kill_at_ms)) = &stop {
                tracing::info!(job_id = %job.id, reason, "resuming a stop in progress");
                let left = kill_at_ms.saturating_sub(now_ms()).max(0) as u64;
                kill_after_grace(h.clone(), &live, left);
            }
        }
        self.live_map().insert(job.id.clone(), live.clone());
        self.register_child(shim.pid, true);
        let timeout_ms = job.spec.as_ref().map_or(0, |s| s.timeout_ms);
        let timeout = (timeout_ms > 0).then(|| {
            let ran = now_ms().saturating_sub(job.started_at_ms).max(0) as u64;
            Duration::from_millis(timeout_ms.saturating_sub(ran))
        });
        tracing::info!(job_id = %job.id, shim_pid = shim.pid, pid, "re-adopted a running job");
        self.spawn_supervisor(Followed {
            live,
            shim,
            watched,
            handle,
            timeout,
        });
        Ok(())
    }

    /// A job left by a previous jobd that cannot be followed: finalised from its exit record
    /// if its shim wrote one, otherwise cleaned up, with the reason.
    async fn settle_stale(
        &self,
        u: Unfinished,
        shim: Option<ShimProc>,
    ) -> Result<(), ManagerError> {
        let mut job = u.job;
        let dir = self.job_dir(&job.id);
        let was = JobState::try_from(job.state)
            .map(|s| s.as_str_name())
            .unwrap_or("unknown")
            .trim_start_matches("JOB_STATE_")
            .to_lowercase();
        if let Some(shim) = &shim {
            // Still starting: its report pipe died with the old jobd, so it gives up by itself
            // (kills the job, records the exit). Do not wait for ever.
            self.register_child(shim.pid, true);
            if tokio::time::timeout(STARTING_SHIM_LIMIT, shim.wait())
                .await
                .is_err()
            {
                shim.kill();
                shim.wait().await;
            }
            self.register_child(shim.pid, false);
        }
        let record = shim::read_exit(&dir).unwrap_or_else(|e| {
            tracing::warn!(job_id = %job.id, error = %e, "unreadable exit record");
            None
        });
        let handle = u
            .pid
            .zip(u.pid_start)
            .and_then(|(pid, start)| self.exec.handle(&job.id, &dir, pid, start).ok());
        job.oom_killed = handle.as_ref().is_some_and(|h| h.oom_killed());
        let exec = self.exec.clone();
        let (id, d) = (job.id.clone(), dir.clone());
        let cleaned = self
            .workers
            .run("cleanup", &job.id, move || exec.cleanup(&id, &d))
            .await;
        let finished_alone = running_and_recorded(&job, record.as_ref());
        match (finished_alone, record) {
            (true, Some(rec)) => {
                apply_exit(&mut job, &rec);
                if let Some((reason, _)) = &u.stop {
                    job.state = JobState::Stopped as i32;
                    job.failure_reason = StopReason::decode(reason).describe();
                }
                tracing::info!(job_id = %job.id, "job ended while jobd was away; finalised from its exit record");
            }
            _ => {
                let mut reason = format!(
                    "jobd restarted while the job was {was} and its shim was gone without \
                     recording an exit status: its processes were killed and its cgroup and \
                     mounts removed"
                );
                if let Err(e) = &cleaned {
                    reason.push_str(&format!(" (cleanup error: {e})"));
                }
                job.state = JobState::Failed as i32;
                job.failure_reason = reason;
                tracing::warn!(job_id = %job.id, "stale job cleaned up after restart");
            }
        }
        if let Err(e) = cleaned {
            tracing::error!(job_id = %job.id, error = %e, "cleanup of a stale job failed");
        }
        job.output_bytes =
            std::fs::metadata(dir.join(crate::output::OUTPUT_FILE)).map_or(0, |m| m.len());
        job.ended_at_ms = ended_at(record.as_ref());
        self.db.finish(&job)?;
        Ok(())
    }

    /// Starts a job for `owner`. `limits` are already resolved and checked. Returns the record:
    /// `running`, or `failed` with the reason when the job could not start.
    pub async fn start(
        self: &Arc<Self>,
        owner: &str,
        mut spec: JobSpec,
        limits: LimitValues,
    ) -> Result<Job, ManagerError> {
        if *self.closing.borrow() {
            return Err(ManagerError::ShuttingDown);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let input_tar = std::mem::take(&mut spec.input_tar);
        let mut job = Job {
            id: id.clone(),
            owner: owner.to_string(),
            spec: Some(spec.clone()),
            state: JobState::Starting as i32,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        let dir = self.job_dir(&id);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(&dir)
                .map_err(|source| ManagerError::Io {
                    op: "create job dir",
                    path: dir.clone(),
                    source,
                })?;
        }
        let (log, tail) = OutputLog::create(&dir)?;
        self.db.insert(&job)?;
        let live = Arc::new(Live {
            record: watch::channel(job.clone()).0,
            output: log,
            handle: OnceLock::new(),
            stop: Mutex::new(None),
        });
        self.live_map().insert(id.clone(), live.clone());
        let watched = match self.watcher.watch(tail) {
            Ok(w) => w,
            Err(e) => {
                job.state = JobState::Failed as i32;
                job.failure_reason = format!("jobd could not follow the job's output: {e}");
                job.ended_at_ms = now_ms();
                self.finish(&live, &job)?;
                return Ok(job);
            }
        };

        let mut argv = vec![spec.command.clone()];
        argv.extend(spec.args.iter().cloned());
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let req = LaunchRequest {
            job_id: id.clone(),
            job_dir: dir.clone(),
            argv,
            env,
            working_dir: if spec.working_dir.is_empty() {
                "/work".into()
            } else {
                spec.working_dir.clone()
            },
            limits,
            input_tar,
        };
        // Prepare and spawn on an executor thread; the shim's pid is registered before the
        // orphan reaper may look again.
        self.children.launching.fetch_add(1, Ordering::SeqCst);
        let (exec, shim_path, shim_server, children) = (
            self.exec.clone(),
            self.shim.clone(),
            self.shim_server.clone(),
            self.children.clone(),
        );
        let cap = self.cfg.output_cap_bytes;
        let spawned = self
            .workers
            .run("launch", &id, move || {
                let launch = exec.prepare(req)?;
                let job_id = match &launch {
                    shim::Launch::Container { id, .. } => id.clone(),
                    shim::Launch::Host { .. } => String::new(),
                };
                let args = ShimArgs {
                    job_dir: dir.clone(),
                    cap,
                    launch,
                };
                let sp = match shim_server.spawn(&args) {
                    Ok(sp) => Ok(sp),
                    // Nothing was started: the shim can still be spawned the slow way.
                    Err(ServerError::Unavailable(e)) => {
                        tracing::warn!(job_id, error = %e, "no shim fork server: spawning the shim");
                        shim::spawn(&shim_path, &args).map_err(|e| e.to_string())
                    }
                    Err(lost) => Err(lost.to_string()),
                }
                .map_err(|reason| {
                    if let Err(c) = exec.cleanup(&job_id, &dir) {
                        tracing::warn!(job_id, error = %c, "cleanup after a failed shim spawn");
                    }
                    ExecError::Host {
                        op: "spawn the job's shim",
                        job_id: job_id.clone(),
                        reason,
                    }
                })?;
                children
                    .registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(sp.pid);
                let start = match &sp.pinned {
                    Some((_, start)) => *start,
                    None => runtime::state::proc_stat(sp.pid).map_or(0, |(_, t)| t),
                };
                Ok((sp, start))
            })
            .await;
        self.children.launching.fetch_sub(1, Ordering::SeqCst);
        let (spawned, shim_start) = match spawned {
            Ok(s) => s,
            Err(e) => {
                let reason = match &e {
                    ExecError::Job(msg) => msg.clone(),
                    ExecError::Host { .. } => {
                        tracing::error!(job_id = %id, error = %e, "launch failed");
                        format!("jobd could not start the job: {e}")
                    }
                };
                return self.fail_start(live, watched, None, job, reason).await;
            }
        };
        let shim_pid = spawned.pid;
        self.db.set_shim(&id, (shim_pid, shim_start))?;
        let shim = match spawned.pinned {
            Some((pidfd, _)) => ShimProc::adopt(shim_pid, pidfd),
            None => ShimProc::open(shim_pid, shim_start, false),
        };
        let Some(shim) = shim else {
            self.register_child(shim_pid, false);
            let reason = format!("the job's shim (pid {shim_pid}) vanished at once");
            return self.fail_start(live, watched, None, job, reason).await;
        };
        let report = match tokio::time::timeout(REPORT_LIMIT, read_report(spawned.report)).await {
            Ok(Ok(text)) => Report::decode(&text),
            Ok(Err(e)) => Report::Failed(format!("read the shim's report: {e}")),
            Err(_) => {
                shim.kill();
                Report::Failed(format!(
                    "the job's shim did not report within {} s",
                    REPORT_LIMIT.as_secs()
                ))
            }
        };
        let (pid, pid_start, started_at_ms) = match report {
            Report::Started {
                pid,
                start_time,
                started_at_ms,
            } => (pid, start_time, started_at_ms),
            Report::Failed(reason) => {
                tracing::info!(job_id = %id, reason = %reason, "job failed to start");
                return self
                    .fail_start(live, watched, Some(shim), job, reason)
                    .await;
            }
        };
        let handle: Option<Arc<dyn JobHandle>> =
            match self.exec.handle(&id, &self.job_dir(&id), pid, pid_start) {
                Ok(h) => Some(Arc::from(h)),
                Err(e) => {
                    tracing::error!(job_id = %id, error = %e, "no handle for a started job");
                    None
                }
            };
        if let Some(h) = &handle {
            let _ = live.handle.set(h.clone());
        }
        job.state = JobState::Running as i32;
        job.started_at_ms = if started_at_ms > 0 {
            started_at_ms
        } else {
            now_ms()
        };
        self.db.set_running(&job, (pid, pid_start))?;
        live.record.send_replace(job.clone());
        tracing::info!(job_id = %id, owner, pid, shim_pid, "job running");
        let timeout = (spec.timeout_ms > 0).then(|| Duration::from_millis(spec.timeout_ms));
        self.spawn_supervisor(Followed {
            live,
            shim,
            watched,
            handle,
            timeout,
        });
        let current = self.live(&id).map(|l| l.record.borrow().clone());
        Ok(current.unwrap_or_else(|| self.db.get(&id).ok().flatten().unwrap_or_default()))
    }

    /// Records a job that did not start: waits for its shim (if any), removes what is left.
    async fn fail_start(
        &self,
        live: Arc<Live>,
        watched: Watched,
        shim: Option<ShimProc>,
        mut job: Job,
        reason: String,
    ) -> Result<Job, ManagerError> {
        if let Some(shim) = &shim {
            shim.wait().await;
            self.register_child(shim.pid, false);
        }
        let exec = self.exec.clone();
        let (id, dir) = (job.id.clone(), self.job_dir(&job.id));
        if let Err(e) = self
            .workers
            .run("cleanup", &job.id, move || exec.cleanup(&id, &dir))
            .await
        {
            tracing::error!(job_id = %job.id, error = %e, "cleanup after a failed start");
        }
        job.output_bytes = self.watcher.unwatch(watched).unwrap_or_else(|e| {
            tracing::error!(job_id = %job.id, error = %e, "last look at the output");
            live.output.progress().len
        });
        job.state = JobState::Failed as i32;
        job.failure_reason = reason;
        job.ended_at_ms = now_ms();
        self.finish(&live, &job)?;
        Ok(job)
    }

    fn spawn_supervisor(self: &Arc<Self>, f: Followed) {
        let me = self.clone();
        tokio::spawn(async move {
            let id = f.live.record.borrow().id.clone();
            if let Err(e) = me.supervise(f).await {
                tracing::error!(job_id = %id, error = %e, "supervisor failed");
            }
        });
    }

    /// Writes a final record, publishes it, ends the output and forgets the live job.
    fn finish(&self, live: &Live, job: &Job) -> Result<(), ManagerError> {
        let r = self.db.finish(job);
        live.record.send_replace(job.clone());
        live.output.finish();
        self.live_map().remove(&job.id);
        r?;
        Ok(())
    }

    async fn supervise(self: Arc<Self>, f: Followed) -> Result<(), ManagerError> {
        let Followed {
            live,
            shim,
            watched,
            handle,
            timeout,
        } = f;
        let mut leaving = self.leaving.subscribe();
        let exited = shim.wait();
        tokio::pin!(exited);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut timed_out = false;
        loop {
            tokio::select! {
                () = &mut exited => break,
                () = &mut deadline, if !timed_out => {
                    timed_out = true;
                    let ms = live.record.borrow().spec.as_ref().map_or(0, |s| s.timeout_ms);
                    self.begin_stop(&live, StopReason::Timeout(ms), self.cfg.grace_period_ms);
                }
                _ = leaving.wait_for(|l| *l) => {
                    // jobd shuts down leaving jobs running: the shim keeps the job, the next
                    // jobd re-adopts it. Followers end; the record stays `running`.
                    let _ = self.watcher.unwatch(watched);
                    live.output.finish();
                    self.live_map().remove(&live.record.borrow().id);
                    return Ok(());
                }
            }
        }
        let job_id = live.record.borrow().id.clone();
        let output_bytes = self.watcher.unwatch(watched).unwrap_or_else(|e| {
            tracing::error!(job_id, error = %e, "last look at the output");
            live.output.progress().len
        });
        let dir = self.job_dir(&job_id);
        let record = shim::read_exit(&dir).unwrap_or_else(|e| {
            tracing::error!(job_id, error = %e, "unreadable exit record");
            None
        });
        let oom = handle.as_ref().is_some_and(|h| h.oom_killed());
        // The shim is gone: nothing of the job may outlive it.
        let exec = self.exec.clone();
        let (h, id) = (handle.clone(), job_id.clone());
        let destroyed = self
            .workers
            .run("cleanup", &job_id, move || match h {
                Some(h) => {
                    let _ = h.signal_all(Signal::SIGKILL);
                    h.destroy()
                }
                None => exec.cleanup(&id, &dir),
            })
            .await;
        if let Err(e) = destroyed {
            tracing::error!(job_id, error = %e, "cleanup after exit failed");
        }
        self.register_child(shim.pid, false);
        let mut job = live.record.borrow().clone();
        job.ended_at_ms = ended_at(record.as_ref());
        job.oom_killed = oom;
        job.output_bytes = output_bytes;
        let stop = live.stop.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (&stop, &record) {
            (Some(s), rec) => {
                if let Some(rec) = rec {
                    apply_exit(&mut job, rec);
                }
                job.state = JobState::Stopped as i32;
                job.failure_reason = s.describe();
            }
            (None, Some(rec)) => apply_exit(&mut job, rec),
            (None, None) => {
                job.state = JobState::Failed as i32;
                job.failure_reason = format!(
                    "the job's shim (pid {}) ended without recording the job's exit status: \
                     the job's processes were killed and its cgroup and mounts removed",
                    shim.pid
                );
            }
        }
        tracing::info!(
            job_id = %job.id, state = job.state, exit_code = ?job.exit_code, signal = ?job.signal,
            oom_killed = oom, output_bytes = job.output_bytes, "job ended"
        );
        self.finish(&live, &job)
    }

    fn begin_stop(&self, live: &Arc<Live>, reason: StopReason, grace_ms: u64) {
        {
            let mut stop = live.stop.lock().unwrap_or_else(|p| p.into_inner());
            if stop.is_none() {
                // Kept so that a jobd restarted within the grace period finishes the stop.
                let id = live.record.borrow().id.clone();
                let kill_at = now_ms().saturating_add(grace_ms as i64);
                if let Err(e) = self.db.set_stop(&id, &reason.encode(), kill_at) {
                    tracing::error!(job_id = %id, error = %e, "record the stop");
                }
                *stop = Some(reason);
            }
        }
        let Some(handle) = live.handle.get().cloned() else {
            return; // still launching: the supervisor will see the stop flag
        };
        if let Err(e) = handle.signal_all(Signal::SIGTERM) {
            tracing::debug!(error = %e, "SIGTERM");
        }
        kill_after_grace(handle, live, grace_ms);
    }

    /// Stops a job: SIGTERM to all its processes, SIGKILL to all after `grace_ms` (0 = default).
    /// Returns the record once the job has ended (or at once if it already had).
    pub async fn stop(&self, id: &str, grace_ms: u64) -> Result<Option<Job>, ManagerError> {
        let grace = if grace_ms == 0 {
            self.cfg.grace_period_ms
        } else {
            grace_ms
        };
        let Some(live) = self.live(id) else {
            return Ok(self.db.get(id)?);
        };
        // Launch in flight: wait for the handle (or the failure) before signalling.
        let mut rx = live.record.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|j| j.state != JobState::Starting as i32),
        )
        .await;
        self.begin_stop(&live, StopReason::Request, grace);
        let _ = tokio::time::timeout(
            Duration::from_millis(grace) + Duration::from_secs(10),
            rx.wait_for(|j| is_final(j.state)),
        )
        .await;
        let job = rx.borrow().clone();
        Ok(Some(job))
    }

    /// A job's record, live or stored.
    pub fn get(&self, id: &str) -> Result<Option<Job>, ManagerError> {
        if let Some(live) = self.live(id) {
            let mut job = live.record.borrow().clone();
            job.output_bytes = live.output.progress().len;
            return Ok(Some(job));
        }
        Ok(self.db.get(id)?)
    }

    /// A page of records.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<Job>, String), ManagerError> {
        Ok(self.db.list(filter)?)
    }

    /// The output of a job that exists (the caller checked the record).
    pub fn output(&self, id: &str) -> Result<OutputLog, ManagerError> {
        if let Some(live) = self.live(id) {
            return Ok(live.output.clone());
        }
        Ok(OutputLog::open_finished(&self.job_dir(id))?)
    }

    /// A receiver of the record's changes while the job is live; `None` when it is final.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Job>> {
        self.live(id).map(|l| l.record.subscribe())
    }

    /// Current resource usage; `None` when the job is not running.
    pub async fn stats(&self, id: &str) -> Result<Option<JobStats>, ManagerError> {
        let Some(handle) = self.live(id).and_then(|l| l.handle.get().cloned()) else {
            return Ok(None);
        };
        self.workers
            .run("stats", id, move || handle.stats())
            .await
            .map(Some)
            .map_err(|source| ManagerError::Stats {
                job_id: id.to_string(),
                source,
            })
    }

    /// Refuses new jobs and applies the shutdown policy to running ones.
    pub async fn shutdown(&self) {
        self.closing.send_replace(true);
        let live: Vec<Arc<Live>> = self.live_map().values().cloned().collect();
        match self.cfg.shutdown_policy {
            ShutdownPolicy::Leave => {
                tracing::warn!(
                    running = live.len(),
                    "shutdown: leaving jobs running; their shims hold them until jobd re-adopts them"
                );
                self.leaving.send_replace(true);
                // Supervisors let go (and take their jobs off the live map) at once.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while !self.live_map().is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await;
            }
            ShutdownPolicy::Stop => {
                tracing::info!(running = live.len(), "shutdown: stopping jobs");
                let grace = self.cfg.grace_period_ms;
                let mut waits = Vec::new();
                for l in live {
                    let mut rx = l.record.subscribe();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        rx.wait_for(|j| j.state != JobState::Starting as i32),
                    )
                    .await;
                    self.begin_stop(&l, StopReason::Shutdown, grace);
                    waits.push(async move {
                        let _ = rx.wait_for(|j| is_final(j.state)).await;
                    });
                }
                let all = async {
                    for w in waits {
                        w.await;
                    }
                };
                let _ = tokio::time::timeout(
                    Duration::from_millis(grace) + Duration::from_secs(10),
                    all,
                )
                .await;
            }
        }
        let server = self.shim_server.clone();
        let _ = tokio::task::spawn_blocking(move || server.stop()).await;
    }

    /// Whether shutdown has begun.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Deletes finished jobs older than the configured retention, checking a tenth of it
    /// apart (at least every second, at most every minute), until shutdown. Returns at once
    /// when jobs are kept for ever.
    pub async fn run_retention(self: Arc<Self>) {
        let Some(keep) = self.cfg.retention() else {
            return;
        };
        let period = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut closing = self.closing();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = closing.changed() => return,
            }
            let cutoff = now_ms() - keep.as_millis() as i64;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.prune_ended_before(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(jobs = n, "deleted finished jobs past retention"),
                Ok(Err(e)) => tracing::warn!(error = %e, "deleting finished jobs"),
                Err(e) => tracing::warn!(error = %e, "the retention task failed"),
            }
        }
    }

    /// Deletes every finished job that ended before `cutoff_ms`: its files first, then its
    /// record, so that a crash in between leaves a record the next pass deletes, never files
    /// nobody knows about. Returns how many went.
    pub fn prune_ended_before(&self, cutoff_ms: i64) -> Result<usize, ManagerError> {
        let mut deleted = 0;
        loop {
            let ids = self.db.ended_before(cutoff_ms, 256)?;
            if ids.is_empty() {
                return Ok(deleted);
            }
            for id in ids {
                // Ids are jobd's own UUIDs; anything else is not a directory name to follow.
                if crate::validate::job_id(&id).is_ok_and(|canonical| canonical == id) {
                    self.remove_job_dir(&id)?;
                }
                self.db.delete_finished(&id)?;
                deleted += 1;
            }
        }
    }

    fn remove_job_dir(&self, id: &str) -> Result<(), ManagerError> {
        let dir = self.job_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ManagerError::Io {
                op: "delete the files of a finished job",
                path: dir,
                source,
            }),
        }
    }
}

/// Creates `path` as a directory (and parents).
pub fn ensure_dir(path: &Path) -> Result<(), ManagerError> {
    std::fs::create_dir_all(path).map_err(|source| ManagerError::Io {
        op: "create directory",
        path: path.to_path_buf(),
        source,
    })
}

/// Copies the shim's exit record into a job's record and sets its state from it.
/// SIGKILL to every process of the job after `grace_ms`, unless it has ended by then.
fn kill_after_grace(handle: Arc<dyn JobHandle>, live: &Live, grace_ms: u64) {
    let mut rx = live.record.subscribe();
    tokio::spawn(async move {
        let ended = tokio::time::timeout(
            Duration::from_millis(grace_ms),
            rx.wait_for(|j| is_final(j.state)),
        )
        .await;
        if ended.is_err() {
            if let Err(e) = handle.signal_all(Signal::SIGKILL) {
                tracing::debug!(error = %e, "SIGKILL");
            }
        }
    });
}

fn apply_exit(job: &mut Job, rec: &ExitRecord) {
    job.exit_code = rec.exit_code;
    job.signal = rec.signal;
    job.state = match (rec.exit_code, rec.signal) {
        (Some(_), _) => JobState::Exited,
        (None, Some(_)) => JobState::Killed,
        (None, None) => {
            job.failure_reason = "the job's exit status could not be collected".into();
            JobState::Failed
        }
    } as i32;
}

/// Whether a job left by a previous jobd had run to its own end: it was running and its shim
/// recorded the exit.
fn running_and_recorded(job: &Job, rec: Option<&ExitRecord>) -> bool {
    job.state == JobState::Running as i32 && rec.is_some()
}

/// Everything the shim wrote on its report pipe before closing it.
async fn read_report(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(buf)
}
