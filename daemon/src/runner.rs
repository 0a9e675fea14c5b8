//! jobd's executor: each job is an OCI bundle made from the runtime library's secure default
//! spec, on a private writable overlayfs layer over the shared read-only default rootfs. jobd
//! prepares the bundle here; the job's shim starts it through `runtime::container` (job-init as
//! the re-exec), see [`crate::shim`].
//!
//! Per job, under `DATA/jobs/ID/`:
//! - `layer/upper`, `layer/work`: the job's private overlay layer (its `/work` and `/tmp` and any
//!   other change live here), owned by the container's root as the host sees it;
//! - `bundle/config.json` and `bundle/rootfs` (the overlay mount: shared rootfs below, private
//!   layer above).
//!
//! The container's state lives under `DATA/runtime/ID`, its cgroup at `/jobd/ID`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::Signal;
use nix::unistd::{fchownat, Gid, Uid};
use runtime::container::Container;
use serde_json::{json, Value};

use crate::config::LimitValues;
use crate::executor::{ExecError, Executor, JobHandle, JobStats, Launch, LaunchRequest};

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
    pub rootfs: PathBuf,
    /// The runtime's state root.
    pub state_root: PathBuf,
    /// job-init; `None` = the runtime's default (next to this executable, or `$JOB_RUNTIME_INIT`).
    pub init_path: Option<PathBuf>,
}

struct Layout {
    bundle: PathBuf,
    merged: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    layer: PathBuf,
}

fn layout(job_dir: &Path) -> Layout {
    let bundle = job_dir.join("bundle");
    let layer = job_dir.join("layer");
    Layout {
        merged: bundle.join("rootfs"),
        upper: layer.join("upper"),
        work: layer.join("work"),
        bundle,
        layer,
    }
}

fn mkdir(path: &Path, mode: u32, job_id: &str) -> Result<(), ExecError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| {
            host(
                "create directory",
                job_id,
                format!("{}: {e}", path.display()),
            )
        })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| host("chmod", job_id, format!("{}: {e}", path.display())))
}

fn chown(path: &Path, id: u32, job_id: &str) -> Result<(), ExecError> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(id)),
        Some(Gid::from_raw(id)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| host("chown", job_id, format!("{}: {e}", path.display())))
}

/// Chowns a tree (never following symlinks) to `id`.
fn chown_tree(path: &Path, id: u32, job_id: &str) -> Result<(), ExecError> {
    chown(path, id, job_id)?;
    let meta = fs::symlink_metadata(path)
        .map_err(|e| host("stat", job_id, format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let entries = fs::read_dir(path)
            .map_err(|e| host("read directory", job_id, format!("{}: {e}", path.display())))?;
        for e in entries.flatten() {
            chown_tree(&e.path(), id, job_id)?;
        }
    }
    Ok(())
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
    fn prepare(&self, req: &LaunchRequest, lay: &Layout) -> Result<(), ExecError> {
        let id = &req.job_id;
        let owner = host_root_id();
        mkdir(&lay.upper, 0o755, id)?;
        mkdir(&lay.work, 0o700, id)?;
        mkdir(&lay.merged, 0o755, id)?;
        chown(&lay.upper, owner, id)?;
        // The job's working directory and /tmp, in its private layer, owned by its root.
        let wd = lay.upper.join(req.working_dir.trim_start_matches('/'));
        mkdir(&wd, 0o755, id)?;
        let tmp = lay.upper.join("tmp");
        mkdir(&tmp, 0o1777, id)?;
        chown(&tmp, owner, id)?;
        if !req.input_tar.is_empty() {
            let mut ar = tar::Archive::new(req.input_tar.as_slice());
            ar.set_preserve_permissions(false);
            ar.set_preserve_mtime(true);
            ar.set_unpack_xattrs(false);
            ar.set_overwrite(true);
            ar.unpack(&wd).map_err(|e| {
                ExecError::Job(format!(
                    "spec.input_tar: unpack into {}: {e}",
                    req.working_dir
                ))
            })?;
        }
        chown_tree(&wd, owner, id)?;
        Ok(())
    }

    /// The overlay the shim mounts on `BUNDLE/rootfs` in its own mount namespace.
    fn overlay_options(&self, lay: &Layout) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.rootfs.display(),
            lay.upper.display(),
            lay.work.display()
        )
    }

    fn write_config(&self, req: &LaunchRequest, lay: &Layout) -> Result<(), ExecError> {
        let id = &req.job_id;
        let dev = block_device(&req.job_dir);
        let spec = job_spec(req, dev)?;
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| host("encode spec", id, e))?;
        runtime::spec::write_atomic(&lay.bundle.join("config.json"), &text)
            .map_err(|e| host("write config.json", id, e))
    }

    fn teardown(&self, job_id: &str, job_dir: &Path) -> Result<(), ExecError> {
        let mut first_err = None;
        match Container::load(&self.state_root, job_id) {
            Ok(c) => {
                if let Err(e) = c.delete(true) {
                    first_err.get_or_insert(host("delete container", job_id, e));
                }
            }
            Err(e) => {
                // Nothing recorded (never created, or already deleted): make sure no cgroup is left.
                tracing::debug!(job_id, error = %e, "no container state");
                if let Ok(cg) = runtime::cgroups::Cgroup::open(
                    Path::new(&format!("{CGROUP_PARENT}/{job_id}")),
                    false,
                    job_id,
                ) {
                    if let Err(e) = cg.destroy() {
                        first_err.get_or_insert(host("remove cgroup", job_id, e));
                    }
                }
            }
        }
        let lay = layout(job_dir);
        match umount2(&lay.merged, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                first_err.get_or_insert(host("unmount overlay", job_id, e));
            }
        }
        for dir in [&lay.bundle, &lay.layer] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(host(
                        "remove",
                        job_id,
                        format!("{}: {e}", dir.display()),
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Executor for RuntimeExecutor {
    fn prepare(&self, req: LaunchRequest) -> Result<Launch, ExecError> {
        let lay = layout(&req.job_dir);
        let prepared = self
            .prepare(&req, &lay)
            .and_then(|()| self.write_config(&req, &lay));
        match prepared {
            Ok(()) => Ok(Launch::Container {
                overlay: Some(self.overlay_options(&lay)),
                id: req.job_id.clone(),
                bundle: lay.bundle,
                state_root: self.state_root.clone(),
                init: self.init_path.clone(),
            }),
            Err(e) => {
                if let Err(t) = self.teardown(&req.job_id, &req.job_dir) {
                    tracing::warn!(job_id = %req.job_id, error = %t, "cleanup after failed prepare");
                }
                Err(e)
            }
        }
    }

    fn handle(
        &self,
        job_id: &str,
        job_dir: &Path,
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
            job_dir: job_dir.to_path_buf(),
            pid,
            pid_start,
            cgroup_path,
            exec: self.clone(),
        }))
    }

    fn cleanup(&self, job_id: &str, job_dir: &Path) -> Result<(), ExecError> {
        self.teardown(job_id, job_dir)
    }
}

/// A job started through the runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    job_id: String,
    job_dir: PathBuf,
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
        self.exec.teardown(&self.job_id, &self.job_dir)
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
        assert!(text.contains("test result: ok. 8 passed"), "{text}");
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
            move |data| {
                Arc::new(RuntimeExecutor {
                    rootfs,
                    state_root: data.join("runtime"),
                    init_path: Some(init),
                })
            },
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
        let overlay = theirs
            .lines()
            .find(|l| l.contains(&job.id) && l.contains(" - overlay "))
            .unwrap_or_else(|| panic!("no overlay in the shim's namespace:\n{theirs}"));
        assert!(overlay.contains("bundle/rootfs"), "{overlay}");
        // Thrown away after the job: no syncfs of the data directory's filesystem at unmount.
        assert!(overlay.contains("volatile"), "{overlay}");
        assert_ne!(
            fs::read_link("/proc/self/ns/mnt").unwrap(),
            fs::read_link(shim.join("ns/mnt")).unwrap()
        );
        let stopped = stop(&mut c, &job.id, 200).await;
        assert_eq!(stopped.state, JobState::Stopped as i32, "{stopped:?}");
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
        assert!(!h.cfg.data_dir.join("runtime").join(id).exists());
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
