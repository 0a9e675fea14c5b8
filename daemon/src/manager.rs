//! The job manager: lifecycle of every job, from request to final record.
//!
//! `start` records the job (committed before the caller hears of it), starts the output pump,
//! asks the [`Executor`] to launch it and returns the record; a supervisor task per job then
//! waits for the main process through a pidfd (an event, no polling), enforces the wall-clock
//! timeout, and on exit collects the status, OOM flag and output, cleans up and writes the final
//! record. Stop = SIGTERM to every process of the job, SIGKILL to all after the grace period.

use std::collections::{HashMap, HashSet};
use std::os::fd::{FromRawFd, OwnedFd};
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
use crate::db::{Db, DbError, ListFilter};
use crate::executor::{ExecError, Executor, JobHandle, JobStats, LaunchRequest};
use crate::output::{self, OutputError, OutputLog};

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
    #[error("create pipe for job {job_id}: {source}")]
    Pipe { job_id: String, source: nix::Error },
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

/// Pids of job processes (which the supervisors reap) and launches in flight (during which the
/// runtime may reap its own children): the orphan reaper keeps off both.
#[derive(Debug, Default)]
pub struct Children {
    registered: Mutex<HashSet<i32>>,
    launching: AtomicUsize,
}

impl Children {
    /// Reaps zombie children that no supervisor waits for (orphans re-parented to jobd, the
    /// child subreaper). Does nothing while a launch is in flight.
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

/// A job's exit as the kernel reported it.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Code(i32),
    Signal(i32),
    Unknown,
}

type Work = Box<dyn FnOnce() + Send>;

/// The threads that call into the executor (launch, stats, teardown): long-lived, started with
/// the manager.
///
/// The runtime clones the container's first process from the calling thread. A clone of a
/// multi-threaded process copies the C library's list of threads, and glibc's set*id wrappers in
/// the child then wait forever for any thread that was being created at that instant (seen here:
/// the child stuck in `__nptl_setxid` from `setresgid`). So jobd creates no threads while it
/// runs: executor calls go to these threads, not to tokio's on-demand blocking pool, and output
/// followers read the file on their own task. (The robust fix is raw set*id syscalls in the
/// runtime's child; see the README.)
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
    live: Mutex<HashMap<String, Arc<Live>>>,
    children: Arc<Children>,
    closing: watch::Sender<bool>,
}

fn pipe(job_id: &str) -> Result<(OwnedFd, OwnedFd), ManagerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| ManagerError::Pipe {
        job_id: job_id.to_string(),
        source,
    })
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Manager {
    /// A manager over `db` with `exec`; call [`Manager::recover`] before serving.
    pub fn new(cfg: Arc<Config>, db: Arc<Db>, exec: Arc<dyn Executor>) -> Arc<Manager> {
        let jobs_dir = cfg.data_dir.join("jobs");
        Arc::new(Manager {
            workers: Workers::new(),
            cfg,
            db,
            exec,
            jobs_dir,
            live: Mutex::new(HashMap::new()),
            children: Arc::new(Children::default()),
            closing: watch::channel(false).0,
        })
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

    /// Deals with jobs a previous daemon left starting or running: their output pipes died with
    /// that daemon, so they cannot be followed; their processes, cgroups and mounts are removed
    /// and the record says so.
    pub async fn recover(&self) -> Result<usize, ManagerError> {
        let stale = self.db.unfinished()?;
        let n = stale.len();
        for u in stale {
            let mut job = u.job;
            let dir = self.job_dir(&job.id);
            let exec = self.exec.clone();
            let id = job.id.clone();
            let cleaned = self
                .workers
                .run("cleanup", &job.id, move || exec.cleanup_stale(&id, &dir))
                .await;
            let was = JobState::try_from(job.state)
                .map(|s| s.as_str_name())
                .unwrap_or("unknown");
            let mut reason = format!(
                "jobd restarted while the job was {}: its output pipes were lost with the previous \
                 daemon, so its processes were killed and its cgroup and mounts removed",
                was.trim_start_matches("JOB_STATE_").to_lowercase()
            );
            if let Err(e) = cleaned {
                tracing::error!(job_id = %job.id, error = %e, "cleanup of a stale job failed");
                reason.push_str(&format!(" (cleanup error: {e})"));
            }
            let dir = self.job_dir(&job.id);
            job.output_bytes =
                std::fs::metadata(dir.join(output::OUTPUT_FILE)).map_or(0, |m| m.len());
            job.state = JobState::Failed as i32;
            job.failure_reason = reason;
            job.ended_at_ms = now_ms();
            self.db.update(&job)?;
            self.db.set_pid(&job.id, None)?;
            tracing::warn!(job_id = %job.id, "stale job cleaned up after restart");
        }
        Ok(n)
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
        let (log, writer) = OutputLog::create(&dir, self.cfg.output_cap_bytes)?;
        self.db.insert(&job)?;
        let live = Arc::new(Live {
            record: watch::channel(job.clone()).0,
            output: log,
            handle: OnceLock::new(),
            stop: Mutex::new(None),
        });
        self.live_map().insert(id.clone(), live.clone());

        let (out_r, out_w) = pipe(&id)?;
        let (err_r, err_w) = pipe(&id)?;
        let pump = tokio::spawn(output::pump(writer, out_r, err_r));
        let mut argv = vec![spec.command.clone()];
        argv.extend(spec.args.iter().cloned());
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let req = LaunchRequest {
            job_id: id.clone(),
            job_dir: dir,
            argv,
            env,
            working_dir: if spec.working_dir.is_empty() {
                "/work".into()
            } else {
                spec.working_dir.clone()
            },
            limits,
            input_tar,
            stdout: out_w,
            stderr: err_w,
        };
        self.children.launching.fetch_add(1, Ordering::SeqCst);
        let exec = self.exec.clone();
        let launched = self
            .workers
            .run("launch", &id, move || exec.launch(req))
            .await;
        let handle: Arc<dyn JobHandle> = match launched {
            Ok(h) => {
                let h: Arc<dyn JobHandle> = Arc::from(h);
                self.children
                    .registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(h.pid());
                self.children.launching.fetch_sub(1, Ordering::SeqCst);
                h
            }
            Err(e) => {
                self.children.launching.fetch_sub(1, Ordering::SeqCst);
                let reason = match &e {
                    ExecError::Job(msg) => msg.clone(),
                    ExecError::Host { .. } => {
                        tracing::error!(job_id = %id, error = %e, "launch failed");
                        format!("jobd could not start the job: {e}")
                    }
                };
                tracing::info!(job_id = %id, reason = %reason, "job failed to start");
                let writer = pump.await.ok().and_then(|r| r.ok());
                job.state = JobState::Failed as i32;
                job.failure_reason = reason;
                job.ended_at_ms = now_ms();
                job.output_bytes = writer.map_or(0, |w| w.len());
                self.finish(&live, &job)?;
                return Ok(job);
            }
        };
        let _ = live.handle.set(handle.clone());
        job.state = JobState::Running as i32;
        job.started_at_ms = now_ms();
        self.db
            .set_pid(&id, Some((handle.pid(), handle.pid_start())))?;
        self.db.update(&job)?;
        live.record.send_replace(job.clone());
        tracing::info!(job_id = %id, owner, pid = handle.pid(), "job running");
        let me = self.clone();
        let timeout = spec.timeout_ms;
        tokio::spawn(async move {
            let id = job.id.clone();
            if let Err(e) = me.supervise(live, handle, pump, timeout).await {
                tracing::error!(job_id = %id, error = %e, "supervisor failed");
            }
        });
        let current = self.live(&id).map(|l| l.record.borrow().clone());
        Ok(current.unwrap_or_else(|| self.db.get(&id).ok().flatten().unwrap_or_default()))
    }

    /// Writes a final record, publishes it, ends the output and forgets the live job.
    fn finish(&self, live: &Live, job: &Job) -> Result<(), ManagerError> {
        let r1 = self.db.update(job);
        let r2 = self.db.set_pid(&job.id, None);
        live.record.send_replace(job.clone());
        live.output.finish();
        self.live_map().remove(&job.id);
        r1?;
        r2?;
        Ok(())
    }

    async fn wait_exit(pid: i32) -> Exit {
        let registered = pidfd_open(pid).and_then(|fd| {
            // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its
            // whole lifetime.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(pid, error = %e, "pidfd_open failed; waiting on a thread");
                return tokio::task::spawn_blocking(move || {
                    match waitpid(Pid::from_raw(pid), None) {
                        Ok(WaitStatus::Exited(_, c)) => Exit::Code(c),
                        Ok(WaitStatus::Signaled(_, s, _)) => Exit::Signal(s as i32),
                        _ => Exit::Unknown,
                    }
                })
                .await
                .unwrap_or(Exit::Unknown);
            }
        };
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => return Exit::Code(c),
                Ok(WaitStatus::Signaled(_, s, _)) => return Exit::Signal(s as i32),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Exit::Unknown,
            }
            match fd.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return Exit::Unknown,
            }
        }
    }

    async fn supervise(
        self: Arc<Self>,
        live: Arc<Live>,
        handle: Arc<dyn JobHandle>,
        pump: tokio::task::JoinHandle<Result<output::OutputWriter, OutputError>>,
        timeout_ms: u64,
    ) -> Result<(), ManagerError> {
        let pid = handle.pid();
        let exit = Self::wait_exit(pid);
        tokio::pin!(exit);
        let exit = if timeout_ms > 0 {
            tokio::select! {
                e = &mut exit => e,
                _ = tokio::time::sleep(Duration::from_millis(timeout_ms)) => {
                    self.begin_stop(&live, StopReason::Timeout(timeout_ms), self.cfg.grace_period_ms);
                    exit.await
                }
            }
        } else {
            exit.await
        };
        let oom = handle.oom_killed();
        // The main process is gone; nothing of the job may outlive it.
        let _ = handle.signal_all(Signal::SIGKILL);
        let h = handle.clone();
        let job_id = live.record.borrow().id.clone();
        let destroyed = self
            .workers
            .run("cleanup", &job_id, move || h.destroy())
            .await;
        if let Err(e) = destroyed {
            tracing::error!(job_id = %live.record.borrow().id, error = %e, "cleanup after exit failed");
        }
        self.children
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        let writer = match tokio::time::timeout(Duration::from_secs(10), pump).await {
            Ok(Ok(Ok(w))) => Some(w),
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "output pump failed");
                None
            }
            _ => None,
        };
        let mut job = live.record.borrow().clone();
        job.ended_at_ms = now_ms();
        job.oom_killed = oom;
        job.output_bytes = writer
            .as_ref()
            .map_or_else(|| live.output.progress().len, |w| w.len());
        match exit {
            Exit::Code(c) => job.exit_code = Some(c),
            Exit::Signal(s) => job.signal = Some(s),
            Exit::Unknown => {}
        }
        let stop = live.stop.lock().unwrap_or_else(|p| p.into_inner()).clone();
        job.state = match (&stop, exit) {
            (Some(_), _) => JobState::Stopped,
            (None, Exit::Code(_)) => JobState::Exited,
            (None, Exit::Signal(_)) => JobState::Killed,
            (None, Exit::Unknown) => JobState::Failed,
        } as i32;
        if let Some(s) = &stop {
            job.failure_reason = s.describe();
        } else if matches!(exit, Exit::Unknown) {
            job.failure_reason = "the job's exit status could not be collected".into();
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
                *stop = Some(reason);
            }
        }
        let Some(handle) = live.handle.get().cloned() else {
            return; // still launching: the supervisor will see the stop flag
        };
        if let Err(e) = handle.signal_all(Signal::SIGTERM) {
            tracing::debug!(error = %e, "SIGTERM");
        }
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
                tracing::warn!(running = live.len(), "shutdown: leaving jobs running");
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
    }

    /// Whether shutdown has begun.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
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
