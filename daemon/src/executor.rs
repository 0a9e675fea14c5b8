//! The boundary between the job manager and whatever actually runs a job.
//!
//! The manager owns the lifecycle (states, stop, timeouts, output, records); an [`Executor`]
//! prepares a validated request into what the job's shim starts ([`Launch`]), and gives back a
//! [`JobHandle`] to signal, measure and clean the started job. jobd's executor is
//! [`crate::runner::RuntimeExecutor`]: an OCI bundle from the runtime library's default spec,
//! which the shim starts through that library.

use std::path::{Path, PathBuf};

use crate::config::LimitValues;
pub use crate::shim::Launch;

/// Errors of an executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The job could not be started for a reason that is the request's (e.g. executable not
    /// found); it becomes the record's failure reason.
    #[error("{0}")]
    Job(String),
    /// The host failed (mount, cgroup, runtime error).
    #[error("{op} for job {job_id}: {reason}")]
    Host {
        op: &'static str,
        job_id: String,
        reason: String,
    },
}

/// Everything needed to start one job.
#[derive(Debug)]
pub struct LaunchRequest {
    /// The job id (a UUID).
    pub job_id: String,
    /// The job's private directory (`DATA/jobs/ID`): bundle, writable layer, output.
    pub job_dir: PathBuf,
    /// argv (non-empty).
    pub argv: Vec<String>,
    /// Extra environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the job.
    pub working_dir: String,
    /// Resolved limits.
    pub limits: LimitValues,
    /// An uncompressed tar to unpack into the working directory (may be empty).
    pub input_tar: Vec<u8>,
}

/// Resource usage of a job, normalised across cgroup v1 and v2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    /// CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes.
    pub memory_current_bytes: u64,
    /// Peak memory, bytes.
    pub memory_peak_bytes: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// Processes and threads.
    pub pids_current: u64,
}

/// A started job.
pub trait JobHandle: Send + Sync + std::fmt::Debug {
    /// The job's main process as the host sees it (a child of the job's shim).
    fn pid(&self) -> i32;
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22), against pid reuse.
    fn pid_start(&self) -> u64;
    /// Sends `signal` to every process of the job.
    fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<(), ExecError>;
    /// Current resource usage.
    fn stats(&self) -> Result<JobStats, ExecError>;
    /// Whether the kernel's OOM killer killed a process of the job.
    fn oom_killed(&self) -> bool;
    /// After the main process ended: kills any survivor and removes the job's cgroup,
    /// mounts and runtime state.
    fn destroy(&self) -> Result<(), ExecError>;
}

/// Something that prepares jobs for the shim.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// Prepares a job (blocking; called from an executor thread) and says what the shim must
    /// start. On failure nothing of the job is left.
    fn prepare(&self, req: LaunchRequest) -> Result<Launch, ExecError>;
    /// The handle of a job whose main process `pid` (started at `pid_start`) the shim started,
    /// now or before a restart of jobd.
    fn handle(
        &self,
        job_id: &str,
        job_dir: &Path,
        pid: i32,
        pid_start: u64,
    ) -> Result<Box<dyn JobHandle>, ExecError>;
    /// Removes whatever is left of a job that has no handle (a failed start, a job whose shim
    /// is gone): kills its processes, removes its cgroup, mounts and runtime state. Succeeds
    /// when there is nothing left.
    fn cleanup(&self, job_id: &str, job_dir: &Path) -> Result<(), ExecError>;
}
