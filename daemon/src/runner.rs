//! jobd's executor: each job is an OCI bundle made from the runtime library's secure default
//! spec, on a private writable layer over the shared read-only default rootfs. jobd makes the
//! spec here; the job's shim builds the job's filesystem ([`crate::layer`]) and starts it
//! through `runtime::container` (job-init as the re-exec), see [`crate::shim`].
//!
//! jobd makes nothing on the host's filesystems for a job's container: every shim mounts its
//! job's tmpfs on the same empty directory, `DATA/scratch`, each in a mount namespace of its
//! own, with the bundle, the writable layer and the runtime's state in it. The job's cgroup is
//! `/jobd/ID`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::config::LimitValues;
use crate::executor::{ExecError, Executor, JobHandle, JobStats, Launch, LaunchRequest};
use crate::layer::LayerPlan;

/// The cgroup parent of every job.
pub const CGROUP_PARENT: &str = "/jobd";

fn host(op: &'static str, job_id: &str, reason: impl ToString) -> ExecError {
    ExecError::Host {
        op,
        job_id: job_id.to_string(),
        reason: reason.to_string(),
    }
}

/// Runs jobs through the runtime library.
#[derive(Debug, Clone)]
pub struct RuntimeExecutor {
    /// The shared read-only rootfs (overlay lower layer).
    rootfs: PathBuf,
    /// The block device holding the rootfs, the one a job reads (for blkio throttles).
    rootfs_device: Option<(u64, u64)>,
    /// The empty directory every shim mounts its job's tmpfs on, in its own mount namespace
    /// (see [`scratch_dir`]).
    scratch: PathBuf,
    /// Compiled seccomp filters, shared by every job (see [`seccomp_cache_dir`]).
    seccomp_cache: PathBuf,
    /// job-init; `None` = the runtime's default (next to this executable, or `$JOB_RUNTIME_INIT`).
    init_path: Option<PathBuf>,
}

impl RuntimeExecutor {
    /// The executor for the data directory `data_dir` (its scratch directory is created) and
    /// the shared `rootfs`.
    pub fn new(
        data_dir: &Path,
        rootfs: PathBuf,
        init_path: Option<PathBuf>,
    ) -> std::io::Result<RuntimeExecutor> {
        let scratch = scratch_dir(data_dir);
        fs::create_dir_all(&scratch)?;
        Ok(RuntimeExecutor {
            rootfs_device: block_device(&rootfs),
            rootfs,
            scratch,
            seccomp_cache: seccomp_cache_dir(data_dir),
            init_path,
        })
    }
}

/// The directory the shims mount their jobs' tmpfs on, under the data directory. One for all
/// jobs: each mount is in its shim's namespace only, and a start makes and removes nothing on
/// the data directory's filesystem for it.
fn scratch_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("scratch")
}

/// The runtime's cache of compiled seccomp filters for jobd's jobs: compiling the default
/// profile costs more than a millisecond; every job of a jobd uses the same one.
fn seccomp_cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("seccomp-cache")
}

/// The whole-disk block device (major, minor) that holds `path`, for blkio throttles.
fn block_device(path: &Path) -> Option<(u64, u64)> {
    let dev = fs::metadata(path).ok()?.dev();
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("..").join("dev")).ok()?;
        let (a, b) = parent.trim().split_once(':')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    sys.exists().then_some((maj, min))
}

/// The bundle's config.json: the runtime's default spec with this job's command, environment,
/// working directory, writable root (the private overlay) and limits.
fn job_spec(req: &LaunchRequest, dev: Option<(u64, u64)>) -> Result<Value, ExecError> {
    let spec = runtime::spec::default_spec(&req.argv);
    let mut v = serde_json::to_value(&spec).map_err(|e| host("encode spec", &req.job_id, e))?;
    let process = &mut v["process"];
    let mut env: Vec<String> = process["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for kv in &req.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/work".into());
    }
    process["env"] = json!(env);
    process["cwd"] = json!(req.working_dir);
    v["root"] = json!({ "path": "rootfs", "readonly": false });
    let l: &LimitValues = &req.limits;
    let linux = &mut v["linux"];
    linux["cgroupsPath"] = json!(format!("{CGROUP_PARENT}/{}", req.job_id));
    let res = &mut linux["resources"];
    res["memory"] = json!({ "limit": l.memory_bytes });
    res["cpu"] = json!({ "quota": l.cpu_millicores as i64 * 100, "period": 100_000u64 });
    res["pids"] = json!({ "limit": l.pids });
    if let Some((major, minor)) = dev {
        let mut bio = serde_json::Map::new();
        for (key, rate) in [
            ("throttleReadBpsDevice", l.io_read_bps),
            ("throttleWriteBpsDevice", l.io_write_bps),
            ("throttleReadIOPSDevice", l.io_read_iops),
            ("throttleWriteIOPSDevice", l.io_write_iops),
        ] {
            if rate > 0 {
                bio.insert(
                    key.into(),
                    json!([{ "major": major, "minor": minor, "rate": rate }]),
                );
            }
        }
        if !bio.is_empty() {
            res["blockIO"] = Value::Object(bio);
        }
    }
    Ok(v)
}

fn host_root_id() -> u32 {
    runtime::spec::DEFAULT_HOST_ID_BASE
}

impl RuntimeExecutor {
    fn launch(&self, req: LaunchRequest) -> Result<Launch, ExecError> {
        let id = &req.job_id;
        // blkio throttles apply to the one block device the job reads: the rootfs's (its
        // writes go to memory).
        let spec = job_spec(&req, self.rootfs_device)?;
        let config_json = serde_json::to_vec(&spec).map_err(|e| host("encode spec", id, e))?;
        Ok(Launch::Container {
            id: req.job_id.clone(),
            layer: LayerPlan {
                scratch: self.scratch.clone(),
                size_bytes: req.limits.memory_bytes,
                lower: self.rootfs.clone(),
                owner: host_root_id(),
                working_dir: req.working_dir.clone(),
            },
            init: self.init_path.clone(),
            seccomp_cache: self.seccomp_cache.clone(),
            config_json,
            input_tar: req.input_tar,
        })
    }

    /// Removes the job's cgroup, killing what is left in it. Its mounts and runtime state
    /// lived in the shim's mount namespace and are gone with it.
    fn teardown(&self, job_id: &str) -> Result<(), ExecError> {
        runtime::cgroups::Cgroup::open(
            Path::new(&format!("{CGROUP_PARENT}/{job_id}")),
            false,
            job_id,
        )
        .and_then(|cg| cg.destroy())
        .map_err(|e| host("remove cgroup", job_id, e))
    }
}

impl Executor for RuntimeExecutor {
    /// Makes nothing on the host (the shim builds the job's filesystem), so a failure leaves
    /// nothing behind.
    fn prepare(&self, req: LaunchRequest) -> Result<Launch, ExecError> {
        self.launch(req)
    }

    fn handle(
        &self,
        job_id: &str,
        _job_dir: &Path,
        pid: i32,
        pid_start: u64,
    ) -> Result<Box<dyn JobHandle>, ExecError> {
        // The path job_spec put in config.json; resolving it again costs nothing.
        let cgroup_path = runtime::cgroups::resolve_path(
            Some(Path::new(&format!("{CGROUP_PARENT}/{job_id}"))),
            job_id,
            false,
        )
        .map_err(|e| host("cgroup path", job_id, e))?;
        Ok(Box::new(RuntimeHandle {
            job_id: job_id.to_string(),
            pid,
            pid_start,
            cgroup_path,
            exec: self.clone(),
        }))
    }

    fn cleanup(&self, job_id: &str, _job_dir: &Path) -> Result<(), ExecError> {
        self.teardown(job_id)
    }
}

/// A job started through the runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    job_id: String,
    pid: i32,
    pid_start: u64,
    cgroup_path: PathBuf,
    exec: RuntimeExecutor,
}

impl RuntimeHandle {
    fn cgroup(&self) -> Result<runtime::cgroups::Cgroup, ExecError> {
        runtime::cgroups::Cgroup::open(&self.cgroup_path, false, &self.job_id)
            .map_err(|e| host("open cgroup", &self.job_id, e))
    }

    /// Reads `key N` from a cgroup file of the memory controller.
    fn memory_counter(&self, v1_file: &str, v2_file: &str, key: &str) -> Option<u64> {
        let rel = self
            .cgroup_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroup_path);
        let path = match runtime::cgroups::host_version().ok()? {
            runtime::cgroups::Version::V1 => {
                Path::new("/sys/fs/cgroup/memory").join(rel).join(v1_file)
            }
            runtime::cgroups::Version::V2 => Path::new("/sys/fs/cgroup").join(rel).join(v2_file),
        };
        let text = fs::read_to_string(path).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl JobHandle for RuntimeHandle {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn pid_start(&self) -> u64 {
        self.pid_start
    }

    fn signal_all(&self, signal: Signal) -> Result<(), ExecError> {
        self.cgroup()?
            .signal_all(signal)
            .map_err(|e| host("signal", &self.job_id, e))
    }

    fn stats(&self) -> Result<JobStats, ExecError> {
        let s = self
            .cgroup()?
            .stats()
            .map_err(|e| host("stats", &self.job_id, e))?;
        let version =
            runtime::cgroups::host_version().map_err(|e| host("stats", &self.job_id, e))?;
        // CPU and memory in one set of units whatever the cgroup version (the runtime's
        // `events --stats` normalisation); block IO straight from libcgroups, in bytes on both.
        let n = runtime::stats::normalize(&self.job_id, &s, version).data;
        let io = |op: &str| {
            s.blkio
                .service_bytes
                .iter()
                .filter(|d| {
                    d.op_type
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(op))
                })
                .map(|d| d.value)
                .sum::<u64>()
        };
        Ok(JobStats {
            cpu_usage_ns: n.cpu.usage.total,
            memory_current_bytes: n.memory.usage.usage,
            memory_peak_bytes: n.memory.usage.max.max(n.memory.usage.usage),
            io_read_bytes: io("read"),
            io_write_bytes: io("write"),
            pids_current: n.pids.current,
        })
    }

    fn oom_killed(&self) -> bool {
        self.memory_counter("memory.oom_control", "memory.events", "oom_kill")
            .is_some_and(|n| n > 0)
    }

    fn destroy(&self) -> Result<(), ExecError> {
        self.exec.teardown(&self.job_id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Real jobs through the runtime library (root only): these need the `job-init` binary of
    //! this workspace (built by `cargo build --workspace` / `cargo test --workspace`).

    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use proto::job_service_client::JobServiceClient;
    use proto::*;
    use tonic::transport::Channel;

    use crate::testutil::Harness;

    /// Runs the runtime-backed tests (the ignored `runtime_*` below) in a fresh process of this
    /// test binary, one at a time. The other tests of this binary create threads all the time,
    /// and a thread being created while the runtime clones a container can hang that clone
    /// forever (glibc set*id in the child; see the README): jobd itself creates no threads while
    /// it runs, and this gives the runtime tests the same condition.
    #[test]
    fn runtime_tests_in_their_own_process() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--ignored", "--test-threads=1", "runner::tests::runtime_"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "runtime tests failed:\n{text}");
        assert!(text.contains("test result: ok. 9 passed"), "{text}");
    }

    /// A static busybox rootfs for tests (jobd itself uses the rootfs-builder default rootfs).
    pub(crate) fn busybox_rootfs(dir: &Path) -> Option<PathBuf> {
        let bb = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())?;
        let root = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "work", "etc"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(bb, root.join("bin/busybox")).unwrap();
        for app in [
            "sh", "echo", "cat", "sleep", "head", "dd", "ls", "true", "hostname", "id", "ps",
            "kill", "tail", "wc", "yes", "mkdir", "touch", "printf", "grep",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/work:/bin/sh\n").unwrap();
        Some(root)
    }

    /// job-init next to the test binary's target directory.
    pub(crate) fn job_init() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let p = exe.parent()?.parent()?.join("job-init");
        p.is_file().then_some(p)
    }

    /// A harness running jobs through the runtime, or `None` (with a note) where that cannot
    /// work: not root, or job-init not built.
    pub(crate) async fn runtime_harness(
        tweak: impl FnOnce(&mut crate::config::Config),
    ) -> Option<Harness> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let Some(init) = job_init() else {
            panic!("job-init is not built next to the test binary: run `cargo build -p job-init` first");
        };
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path()).expect("busybox for the test rootfs");
        let h = Harness::start_with(
            move |data| Arc::new(RuntimeExecutor::new(data, rootfs, Some(init)).unwrap()),
            tweak,
            Some(tmp),
        )
        .await;
        Some(h)
    }

    fn sh(script: &str) -> JobSpec {
        JobSpec {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }
    }

    async fn start(c: &mut JobServiceClient<Channel>, spec: JobSpec) -> Job {
        c.start_job(StartJobRequest { spec: Some(spec) })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    }

    /// The job's output from byte 0, followed live.
    async fn follow(
        c: &mut JobServiceClient<Channel>,
        id: &str,
    ) -> tonic::Streaming<proto::OutputChunk> {
        c.stream_output(StreamOutputRequest {
            job_id: id.into(),
            offset: 0,
            no_follow: false,
        })
        .await
        .unwrap()
        .into_inner()
    }

    async fn finish(c: &mut JobServiceClient<Channel>, id: &str) -> (Job, Vec<u8>) {
        let mut s = follow(c, id).await;
        let mut out = Vec::new();
        while let Some(ch) = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .expect("output timed out")
            .unwrap()
        {
            out.extend_from_slice(&ch.data);
        }
        let mut w = c
            .watch_job(WatchJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(ev) = w.message().await.unwrap() {
            last = ev.job;
        }
        (last.unwrap(), out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_job_is_isolated_and_its_output_streams() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let job = start(
            &mut c,
            sh("echo pid=$$ host=$(hostname) uid=$(id -u) cwd=$(pwd); echo err >&2; exit 7"),
        )
        .await;
        assert_eq!(job.state, JobState::Running as i32, "{job:?}");
        let (done, out) = finish(&mut c, &job.id).await;
        // stdout and stderr are separate pipes: each keeps its order, not their interleaving.
        let mut lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
        lines.sort();
        assert_eq!(lines, ["err", "pid=1 host=job uid=0 cwd=/work"], "{done:?}");
        assert_eq!(
            (done.state, done.exit_code),
            (JobState::Exited as i32, Some(7))
        );
        // Cleaned: no overlay mount, no runtime state, no cgroup.
        let dir = h.cfg.data_dir.join("jobs").join(&job.id);
        assert!(!dir.join("bundle").exists());
        assert!(!h.cfg.data_dir.join("runtime").join(&job.id).exists());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&job.id));
        // Not found: a failed record with the runtime's reason.
        let bad = start(
            &mut c,
            JobSpec {
                command: "nonexistent-prog".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(bad.state, JobState::Failed as i32);
        assert!(
            bad.failure_reason.contains("nonexistent-prog"),
            "{}",
            bad.failure_reason
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_jobs_have_private_files_and_get_their_input() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let mut b = tar::Builder::new(Vec::new());
        let script = b"echo from x.sh; echo secret > /tmp/s; echo mine > /work/f; cat /work/f\n";
        let mut hd = tar::Header::new_gnu();
        hd.set_size(script.len() as u64);
        hd.set_mode(0o644);
        hd.set_cksum();
        b.append_data(&mut hd, "x.sh", &script[..]).unwrap();
        let mut spec = JobSpec {
            command: "sh".into(),
            args: vec!["x.sh".into()],
            ..Default::default()
        };
        spec.input_tar = b.into_inner().unwrap();
        let a = start(&mut c, spec).await;
        let (done, out) = finish(&mut c, &a.id).await;
        assert_eq!(out, b"from x.sh\nmine\n", "{done:?}");
        let other = start(
            &mut c,
            sh("ls -A /tmp /work; cat /tmp/s 2>&1; touch /bin/x 2>&1; echo rc=$?"),
        )
        .await;
        let (_, out) = finish(&mut c, &other.id).await;
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("secret") && !text.contains("x.sh"), "{text}");
        assert!(
            text.contains("rc=1"),
            "the shared rootfs must not be writable: {text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_stop_kills_grandchildren() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let job = start(
            &mut c,
            sh("trap '' TERM; (sleep 1000 &) ; sh -c 'sleep 1001 & wait' & echo up; sleep 1002"),
        )
        .await;
        // Wait for "up", then collect the job's host pids from its cgroup.
        assert_eq!(first_chunk(&mut c, &job.id).await, b"up\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cg = runtime::cgroups::Cgroup::open(
            Path::new(&format!("{CGROUP_PARENT}/{}", job.id)),
            false,
            &job.id,
        )
        .unwrap();
        let pids = cg.pids().unwrap();
        assert!(pids.len() >= 4, "{pids:?}");
        let stopped = stop(&mut c, &job.id, 500).await;
        assert_eq!(stopped.state, JobState::Stopped as i32, "{stopped:?}");
        for pid in pids {
            let alive = Path::new(&format!("/proc/{pid}")).exists()
                && fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|c| c.contains(&job.id))
                    .unwrap_or(false);
            assert!(!alive, "pid {pid} of the job survived the stop");
        }
        assert!(!cg.exists(), "the job's cgroup was not removed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_memory_limit_sets_oom_killed() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let mut spec =
            sh("echo start; dd if=/dev/zero of=/dev/null bs=200M count=1; echo survived");
        spec.limits = Some(Limits {
            memory_bytes: 32 << 20,
            ..Default::default()
        });
        let job = start(&mut c, spec).await;
        let (done, out) = finish(&mut c, &job.id).await;
        assert!(
            done.oom_killed,
            "{done:?} {}",
            String::from_utf8_lossy(&out)
        );
    }

    /// 24 starts at once from a multi-threaded daemon: the runtime's clone child used to hang
    /// in glibc's `setresuid` (it waited for threads copied from the parent); it now makes
    /// raw syscalls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_concurrent_starts_all_complete() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let c = h.client("root", "admin").await;
        let mut tasks = Vec::new();
        for i in 0..24 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let job = start(&mut c, sh(&format!("echo job {i}"))).await;
                finish(&mut c, &job.id).await
            }));
        }
        let all = async {
            for (i, t) in tasks.into_iter().enumerate() {
                let (done, out) = t.await.unwrap();
                assert_eq!(out, format!("job {i}\n").as_bytes(), "{done:?}");
                assert_eq!(done.exit_code, Some(0));
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("concurrent starts hung (a launch never finished)");
        // One filter compiled and cached for all of them.
        let cached: Vec<_> = fs::read_dir(seccomp_cache_dir(&h.cfg.data_dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(cached.len(), 1, "{cached:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_stats_are_live() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let job = start(
            &mut c,
            sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let s = c
            .get_stats(GetStatsRequest {
                job_id: job.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(s.live);
        assert!(s.cpu_usage_ns > 1_000_000, "{s:?}");
        assert!(s.memory_current_bytes > 0, "{s:?}");
        assert!(s.pids_current >= 1, "{s:?}");
        stop(&mut c, &job.id, 100).await;
    }

    #[tokio::test]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_job_overlay_lives_only_in_the_shims_mount_namespace() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let job = start(
            &mut c,
            sh("n=$(grep -c ' / / .* - overlay ' /proc/self/mountinfo); echo \"$n up\"; sleep 1000"),
        )
        .await;
        // The job's root is its overlay.
        assert_eq!(first_chunk(&mut c, &job.id).await, b"1 up\n");
        // jobd's (this test process's) namespace has no mount of the job ...
        let ours = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !ours.contains(&job.id),
            "the job's overlay is in jobd's namespace"
        );
        // ... the shim's has the overlay, in a mount namespace that is not jobd's.
        let shim = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .find(|e| {
                fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(crate::shim::BINARY) && c.contains(&job.id)
                })
            })
            .expect("the job's shim runs")
            .path();
        let theirs = fs::read_to_string(shim.join("mountinfo")).unwrap();
        let scratch = scratch_dir(&h.cfg.data_dir);
        let mount_on = |fstype: &str, at: &Path| {
            theirs
                .lines()
                .find(|l| {
                    l.split(' ').nth(4) == at.to_str() && l.contains(&format!(" - {fstype} "))
                })
                .unwrap_or_else(|| {
                    panic!("no {fstype} on {at:?} in the shim's namespace:\n{theirs}")
                })
                .to_string()
        };
        // The job's files live in a tmpfs of its memory limit's size (512 MiB by default) ...
        let tmpfs = mount_on("tmpfs", &scratch);
        assert!(tmpfs.contains("size=524288k"), "{tmpfs}");
        // ... under the overlay, thrown away after the job: no syncfs when it goes.
        let overlay = mount_on("overlay", &scratch.join("bundle/rootfs"));
        assert!(overlay.contains("volatile"), "{overlay}");
        assert!(
            overlay.contains(&format!("upperdir={}/layer/upper", scratch.display())),
            "{overlay}"
        );
        assert_ne!(
            fs::read_link("/proc/self/ns/mnt").unwrap(),
            fs::read_link(shim.join("ns/mnt")).unwrap()
        );
        // On v1 the shim applied the job's limits by covering the hierarchies in its own
        // namespace for a moment (`runtime::v1_roots`): the limits are in the job's cgroup,
        // and the shim sees the cgroup hierarchies exactly as jobd does, cover gone.
        let cgroup_mounts = |info: &str| -> Vec<String> {
            info.lines()
                .filter_map(|l| {
                    let at = l.split(' ').nth(4)?;
                    let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
                    at.starts_with("/sys/fs/cgroup")
                        .then(|| format!("{at} {fstype}"))
                })
                .collect()
        };
        assert_eq!(cgroup_mounts(&theirs), cgroup_mounts(&ours));
        let cg = runtime::cgroups::Cgroup::open(
            Path::new(&format!("{CGROUP_PARENT}/{}", job.id)),
            false,
            &job.id,
        )
        .unwrap();
        let pids_max = fs::read_to_string(cg.dir("pids").join("pids.max")).unwrap();
        assert_eq!(pids_max.trim(), h.cfg.default_limits.pids.to_string());
        let stopped = stop(&mut c, &job.id, 200).await;
        assert_eq!(stopped.state, JobState::Stopped as i32, "{stopped:?}");
        assert_gone(&h, &job.id);
    }

    /// A job cannot fill the host's disk: its files are in its memory-sized tmpfs, charged to
    /// its memory cgroup, and writing past the limit fails or OOM-kills the job.
    #[tokio::test]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_job_files_count_against_its_memory_limit() {
        let Some(h) = runtime_harness(|_| {}).await else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let mut spec =
            sh("head -c 200000000 /dev/zero > /tmp/big; echo rc=$?; wc -c < /tmp/big; df -k /tmp");
        spec.limits = Some(Limits {
            memory_bytes: 32 << 20,
            ..Default::default()
        });
        let free = |p: &Path| {
            nix::sys::statvfs::statvfs(p)
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap()
        };
        // Free space is sampled while the job writes: had its /tmp been on the data
        // directory's disk, 200 MB would show there until the job's scratch is removed.
        // The margin leaves room for what concurrent tests write to the same disk.
        let before = free(&h.cfg.data_dir);
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let lowest = tokio::spawn({
            let (writing, data_dir) = (writing.clone(), h.cfg.data_dir.clone());
            async move {
                let mut lowest = free(&data_dir);
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    lowest = lowest.min(free(&data_dir));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                lowest
            }
        });
        let job = start(&mut c, spec).await;
        let (done, out) = finish(&mut c, &job.id).await;
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        let lowest = lowest.await.unwrap();
        let text = String::from_utf8_lossy(&out);
        if !done.oom_killed {
            // ENOSPC at the tmpfs size: the write failed short of 32 MiB.
            assert!(text.contains("rc=1"), "{done:?} {text}");
            let written: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
            assert!(written <= 32 << 20, "{written} bytes written: {text}");
        }
        assert!(
            before.saturating_sub(lowest) < 100 << 20,
            "free space on the data directory's disk fell from {before} to {lowest} while the job wrote"
        );
        assert_gone(&h, &job.id);
    }

    /// Nothing of job `id` on the host: cgroup, mount, runtime state, shim.
    fn assert_gone(h: &Harness, id: &str) {
        let cg =
            runtime::cgroups::Cgroup::open(Path::new(&format!("{CGROUP_PARENT}/{id}")), false, id)
                .unwrap();
        assert!(!cg.exists(), "cgroup of {id} left");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(id), "mount of {id} left");
        assert!(
            !h.cfg
                .data_dir
                .join("jobs")
                .join(id)
                .join("scratch")
                .exists(),
            "scratch directory of {id} left"
        );
        let shims = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(id))
                    && fs::read_to_string(e.path().join("stat"))
                        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").contains(" Z "))
            })
            .count();
        assert_eq!(shims, 0, "a shim of {id} is still running");
    }

    async fn stop(c: &mut JobServiceClient<Channel>, id: &str, grace_period_ms: u64) -> Job {
        c.stop_job(StopJobRequest {
            job_id: id.into(),
            grace_period_ms,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
    }

    async fn first_chunk(c: &mut JobServiceClient<Channel>, id: &str) -> Vec<u8> {
        let mut s = follow(c, id).await;
        s.message().await.unwrap().unwrap().data
    }

    /// `shutdown_policy = "leave"`: the job runs on in its shim and the next jobd follows it to
    /// its end; `"stop"`: shutdown stops it and nothing is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by runtime_tests_in_their_own_process"]
    async fn runtime_shutdown_leave_readopts_and_stop_stops() {
        let Some(mut h) = runtime_harness(|c| {
            c.shutdown_policy = crate::config::ShutdownPolicy::Leave;
        })
        .await
        else {
            return;
        };
        let mut c = h.client("root", "admin").await;
        let job = start(&mut c, sh("echo a; sleep 1; echo b >&2; exit 4")).await;
        assert_eq!(first_chunk(&mut c, &job.id).await, b"a\n");
        // The daemon after this restart stops its jobs when it shuts down.
        h.cfg.shutdown_policy = crate::config::ShutdownPolicy::Stop;
        h.restart().await;
        let mut c = h.client("root", "admin").await;
        let (done, out) = finish(&mut c, &job.id).await;
        assert_eq!(out, b"a\nb\n");
        assert_eq!(
            (done.state, done.exit_code),
            (JobState::Exited as i32, Some(4)),
            "{done:?}"
        );
        assert_gone(&h, &job.id);

        let held = start(&mut c, sh("echo s; sleep 1000")).await;
        assert_eq!(first_chunk(&mut c, &held.id).await, b"s\n");
        h.restart().await;
        let mut c = h.client("root", "admin").await;
        let rec = c
            .get_job(GetJobRequest {
                job_id: held.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(rec.state, JobState::Stopped as i32, "{rec:?}");
        assert!(
            rec.failure_reason.contains("shut down"),
            "{}",
            rec.failure_reason
        );
        assert_gone(&h, &held.id);
    }
}
