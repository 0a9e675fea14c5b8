//! Interop: real clients drive `job-runtime`.
//!
//! - podman 4.3 (through conmon) with `--runtime PATH --rootfs DIR`, a containers.conf of the
//!   test's own that lists `job-runtime` in `runtime_supports_json` (so conmon passes
//!   `--log-format=json --log FILE`), cgroupfs under a cgroup parent of the test's own.
//! - containerd 1.6 started by the test (its own config, root, state and socket; no CRI)
//!   with an image built by umoci, run by `ctr run --runc-binary PATH` through
//!   containerd-shim-runc-v2.
//!
//! Flows: run (attached, `--rm`, detached), exit codes and stdio, create errors, stop (TERM,
//! then KILL), rm/delete, ps, pause/resume, `exec`, and terminals (`-t`, which needs a pty
//! of our own for `ctr`). Every external command is bounded in time,
//! and each harness's `Drop` removes what its test made even when the test fails: containers,
//! processes whose command line names the test's directory, mounts under that directory and
//! the test's own cgroup parent (only `rmdir`, only under that unique name).
//!
//! The tools come from `.ci/run` (Debian packages podman, containerd, umoci); the tests
//! install nothing.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tests::{
    busybox_rootfs, job_runtime, process_alive, require_root, stderr, stdout, unique_id, which,
};

/// Limit for one client command (a podman or ctr call, an image build step).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Limit for cleanup commands in `Drop`, which must not hang a failing test.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// The path of `tool`, or a panic saying how CI gets it.
fn require_tool(tool: &str) -> PathBuf {
    which(tool).unwrap_or_else(|| {
        panic!(
            "{tool} is not installed: .ci/run installs it \
             (apt-get install podman containerd umoci)"
        )
    })
}

/// A private directory for one test, readable by all (the tests run as root, but
/// containerd's and podman's helpers must reach what is inside).
fn scratch_dir() -> tempfile::TempDir {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("jobworker-interop-")
        .tempdir()
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs `cmd` with stdin closed and stdout/stderr going to files in `dir` (a daemon that the
/// command starts, such as conmon or a shim, could hold a pipe open for ever; a file does not
/// block anyone), killing it after `limit`.
fn try_run_bounded(cmd: &mut Command, dir: &Path, limit: Duration) -> Result<Output, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let logs = dir.join("cmd");
    fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let out_path = logs.join(format!("{n}.out"));
    let err_path = logs.join(format!("{n}.err"));
    let file = |p: &Path| fs::File::create(p).map_err(|e| format!("create {}: {e}", p.display()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{cmd:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                    fs::read_to_string(&out_path).unwrap_or_default(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                ));
            }
            Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    })
}

fn run_bounded(cmd: &mut Command, dir: &Path) -> Output {
    try_run_bounded(cmd, dir, COMMAND_LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with a new pty as its stdin, stdout and stderr (ctr's `-t` wants a terminal
/// on stdin), killing it after `limit`. Returns its status and everything it wrote.
///
/// Both pty ends are opened close-on-exec, so commands that other tests spawn at the same
/// time (podman leaves conmon running) never inherit them and the reader sees the end.
fn run_on_pty(cmd: &mut Command, limit: Duration) -> (std::process::ExitStatus, String) {
    use std::sync::{Arc, Mutex};
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let slave_path = nix::pty::ptsname_r(&master).unwrap();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&slave_path)
        .unwrap();
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let spawned = cmd.spawn();
    // The Command holds the slave until its stdio is replaced: only the child may keep it.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawned.unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let output = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (output, done) = (output.clone(), done.clone());
        let mut master = master;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last slave fd is closed.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            done.store(true, Ordering::SeqCst);
        });
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; its terminal showed: {:?}",
                String::from_utf8_lossy(&output.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    (status, text)
}

/// Panics with the command's output unless it succeeded.
fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes (not zombies) whose command line mentions something inside `dir`: conmon,
/// `podman container cleanup`, containerd and its shims all name the test's paths.
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// Gives the processes of `dir` (see [`processes_under`]) time to finish, then kills them.
fn end_processes_under(dir: &Path) {
    let start = Instant::now();
    while !processes_under(dir).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in processes_under(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let start = Instant::now();
    while !processes_under(dir).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lazily unmounts whatever is still mounted under `dir` (and only there), newest first.
fn unmount_under(dir: &Path) {
    for m in mounts_under(dir).into_iter().rev() {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
}

/// The directories of cgroup `rel` that exist: `/sys/fs/cgroup/REL` (v2) and
/// `/sys/fs/cgroup/HIERARCHY/REL` for every v1 hierarchy (symlinked aliases such as
/// `cpu -> cpu,cpuacct` are skipped).
fn cgroup_dirs_of(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    if root.join(rel).is_dir() {
        out.push(root.join(rel));
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let d = e.path().join(rel);
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Whether `pid` is in the cgroup `rel` (in any hierarchy).
fn cgroup_holds(rel: &str, pid: i32) -> bool {
    cgroup_dirs_of(rel).iter().any(|d| {
        fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().any(|l| l.trim() == pid.to_string()))
            .unwrap_or(false)
    })
}

/// Removes the test's own cgroup parent `name` (with `rmdir` only, children first) in every
/// hierarchy. Only names made by [`unique_id`] for these tests are accepted.
fn remove_test_cgroups(name: &str) {
    assert!(
        name.starts_with("jobworker-interop-") && !name.contains('/'),
        "refusing to remove cgroup {name:?}: not a cgroup of these tests"
    );
    fn rmdir_tree(d: &Path) {
        if let Ok(entries) = fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let start = Instant::now();
        // EBUSY while the kernel still counts exiting tasks.
        while fs::remove_dir(d).is_err() && d.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for d in cgroup_dirs_of(name) {
        rmdir_tree(&d);
    }
}

/// `job-runtime [--root ROOT] ARGS`, bounded.
fn try_job_runtime_cmd(
    root: Option<&Path>,
    args: &[&str],
    dir: &Path,
    limit: Duration,
) -> Result<Output, String> {
    let mut c = Command::new(job_runtime());
    if let Some(root) = root {
        c.arg("--root").arg(root);
    }
    c.args(args);
    try_run_bounded(&mut c, dir, limit)
}

fn job_runtime_cmd(root: Option<&Path>, args: &[&str], dir: &Path, limit: Duration) -> Output {
    try_job_runtime_cmd(root, args, dir, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// The ids of job-runtime's containers in `root` (default root if `None`) whose bundle lies
/// under `dir`.
fn runtime_containers_under(root: Option<&Path>, dir: &Path) -> Result<Vec<String>, String> {
    let mut c = Command::new(job_runtime());
    if let Some(root) = root {
        c.arg("--root").arg(root);
    }
    c.args(["list", "--format", "json"]);
    let out = try_run_bounded(&mut c, dir, CLEANUP_LIMIT)?;
    if !out.status.success() {
        return Err(format!("job-runtime list failed: {}", stderr(&out)));
    }
    let states: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "job-runtime list printed no JSON list ({e}): {}",
            stdout(&out)
        )
    })?;
    Ok(states
        .iter()
        .filter(|s| {
            s["bundle"]
                .as_str()
                .is_some_and(|b| Path::new(b).starts_with(dir))
        })
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect())
}

// ---------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------

/// podman with its own root, runroot, tmpdir, containers.conf and storage.conf, a busybox
/// rootfs to run, and a cgroup parent of its own. job-runtime keeps its state in its default
/// root: podman 4.3 does not pass `--runtime-flag` on to `podman container cleanup`, so a
/// private `--root` would make the cleanup miss the container.
struct Podman {
    dir: tempfile::TempDir,
    /// Cgroup parent (a unique name) under which podman puts `libpod-ID` and `conmon`.
    cgroup_parent: String,
}

impl Podman {
    fn new() -> Podman {
        require_tool("podman");
        require_tool("conmon");
        let dir = scratch_dir();
        let d = dir.path();
        for sub in ["root", "runroot", "tmp"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::write(
            d.join("containers.conf"),
            include_str!("../interop/containers.conf"),
        )
        .unwrap();
        fs::write(
            d.join("storage.conf"),
            include_str!("../interop/storage.conf").replace("@DIR@", d.to_str().unwrap()),
        )
        .unwrap();
        busybox_rootfs(&d.join("rootfs"));
        Podman {
            dir,
            cgroup_parent: unique_id("jobworker-interop"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = self.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d.join("tmp"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .args(args);
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.command(args), self.path())
    }

    /// `podman run` through job-runtime of `cmd` in the busybox rootfs, with `flags`.
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        let runtime = job_runtime();
        let parent = format!("/{}", self.cgroup_parent);
        let rootfs = self.path().join("rootfs");
        let mut args = vec![
            "run",
            "--network=none",
            "--runtime",
            runtime.to_str().unwrap(),
            "--cgroup-parent",
            &parent,
            // Root here lacks CAP_SYS_RESOURCE: podman's default rlimits would be refused.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap()]);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// The cgroup of container `id`, relative to the hierarchy roots.
    fn cgroup_of(&self, id: &str) -> String {
        format!("{}/libpod-{id}", self.cgroup_parent)
    }

    /// `podman inspect --format FORMAT ID`, trimmed.
    fn inspect(&self, id: &str, format: &str) -> String {
        let out = check(
            "podman inspect",
            self.podman(&["inspect", "--format", format, id]),
        );
        stdout(&out).trim().to_string()
    }

    /// Asserts that podman and job-runtime have nothing of this test left: no container,
    /// no runtime state, no container cgroup, no mount, no conmon.
    fn assert_clean(&self) {
        let out = check(
            "podman ps",
            self.podman(&["ps", "--all", "--quiet", "--no-trunc"]),
        );
        assert!(
            stdout(&out).trim().is_empty(),
            "podman still lists containers: {}",
            stdout(&out)
        );
        let left = runtime_containers_under(None, self.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(left.is_empty(), "job-runtime state left behind: {left:?}");
        wait_until(
            "no conmon or podman cleanup process of this test left",
            Duration::from_secs(20),
            || processes_under(self.path()).is_empty(),
        );
        // Only podman's conmon cgroup may remain under the parent; no libpod-ID leaf.
        for d in cgroup_dirs_of(&self.cgroup_parent) {
            let leaves: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("libpod-"))
                .collect();
            assert!(
                leaves.is_empty(),
                "container cgroups left in {}: {leaves:?}",
                d.display()
            );
        }
        let mounts = mounts_under(self.path());
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        if let Ok(out) = try_run_bounded(
            &mut self.command(&["ps", "--all", "--quiet", "--no-trunc"]),
            &d,
            CLEANUP_LIMIT,
        ) {
            for id in stdout(&out).split_whitespace() {
                let _ = try_run_bounded(
                    &mut self.command(&["rm", "--force", "--time", "0", id]),
                    &d,
                    CLEANUP_LIMIT,
                );
            }
        }
        for id in runtime_containers_under(None, &d).unwrap_or_default() {
            let _ = try_job_runtime_cmd(None, &["delete", "--force", &id], &d, CLEANUP_LIMIT);
        }
        end_processes_under(&d);
        unmount_under(&d);
        remove_test_cgroups(&self.cgroup_parent);
    }
}

#[test]
fn podman_run_rm_echo() {
    let p = Podman::new();
    let out = check(
        "podman run --rm echo",
        p.run(&["--rm"], &["/bin/echo", "hi"]),
    );
    assert_eq!(stdout(&out), "hi\n");
    p.assert_clean();
}

#[test]
fn podman_passes_exit_code_and_stdio() {
    let p = Podman::new();
    let out = p.run(&["--rm"], &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err"), "stderr: {}", stderr(&out));
    p.assert_clean();
}

/// A failing `create` reaches the user through conmon's JSON log: podman prints the
/// runtime's message after "OCI runtime error: PATH: ". Read from the JSON log it is the
/// bare message; had conmon not passed `--log-format=json --log` (job-runtime missing from
/// `runtime_supports_json`), podman would show job-runtime's stderr line, "job-runtime: ...".
#[test]
fn podman_shows_create_error_from_json_log() {
    let p = Podman::new();
    let out = p.run(&["--rm"], &["/bin/nope"]);
    let err = stderr(&out);
    // podman turns "not found" runtime errors into 127, as with runc.
    assert_eq!(out.status.code(), Some(127), "stderr: {err}");
    let prefix = format!("OCI runtime error: {}: ", job_runtime().display());
    let msg = err
        .split_once(&prefix)
        .unwrap_or_else(|| panic!("no runtime error in podman's stderr: {err}"))
        .1;
    assert!(msg.contains("/bin/nope"), "message: {msg}");
    assert!(
        !msg.starts_with("job-runtime:"),
        "podman read job-runtime's stderr, not its JSON log: {msg}"
    );
    p.assert_clean();
}

/// `podman run -d`, then `stop -t 1` of a PID 1 that ignores TERM: podman sends `kill ID 15`,
/// then `kill ID 9` after the timeout; `rm` then leaves nothing.
#[test]
fn podman_detached_stop_kills_and_rm_cleans() {
    let p = Podman::new();
    let out = check(
        "podman run -d sleep",
        p.run(&["-d"], &["/bin/sleep", "100"]),
    );
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 64, "podman run -d printed {id:?}");

    // It runs under job-runtime (default root, podman passes no --root), with podman's pid.
    let state = check(
        "job-runtime state",
        job_runtime_cmd(None, &["state", &id], p.path(), COMMAND_LIMIT),
    );
    let state: Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running");
    let pid = state["pid"].as_i64().unwrap() as i32;
    assert_eq!(p.inspect(&id, "{{.State.Pid}}"), pid.to_string());
    assert!(
        Path::new(state["bundle"].as_str().unwrap()).starts_with(p.path()),
        "bundle {} is not podman's",
        state["bundle"]
    );
    assert_eq!(
        p.inspect(&id, "{{.OCIRuntime}}"),
        job_runtime().to_str().unwrap()
    );
    // conmon passed --log (job-runtime opened it): the JSON log flags reached the runtime.
    let oci_log = p
        .path()
        .join("runroot/vfs-containers")
        .join(&id)
        .join("userdata/oci-log");
    assert!(oci_log.exists(), "{} missing", oci_log.display());
    // Its cgroup is the leaf under podman's cgroupsPath, new and holding the process.
    assert!(
        cgroup_holds(&p.cgroup_of(&id), pid),
        "pid {pid} is not in cgroup {}",
        p.cgroup_of(&id)
    );

    let start = Instant::now();
    let out = check("podman stop", p.podman(&["stop", "-t", "1", &id]));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "stop returned before its timeout; stderr: {}",
        stderr(&out)
    );
    assert_eq!(
        p.inspect(&id, "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 137"
    );
    wait_until(
        "the container's process is gone after stop",
        Duration::from_secs(10),
        || !process_alive(pid),
    );

    check("podman rm", p.podman(&["rm", &id]));
    assert!(
        !job_runtime_cmd(None, &["state", &id], p.path(), COMMAND_LIMIT)
            .status
            .success(),
        "job-runtime still knows {id}"
    );
    let left = cgroup_dirs_of(&p.cgroup_of(&id));
    assert!(left.is_empty(), "cgroup of {id} left behind: {left:?}");
    p.assert_clean();
}

/// `podman stop` whose TERM the container handles: `kill ID 15` reaches the process and its
/// own exit code is kept.
#[test]
fn podman_stop_delivers_term() {
    let p = Podman::new();
    let out = check(
        "podman run -d trap",
        p.run(
            &["-d"],
            &[
                "sh",
                "-c",
                "trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done",
            ],
        ),
    );
    let id = stdout(&out).trim().to_string();
    let pid: i32 = p.inspect(&id, "{{.State.Pid}}").parse().unwrap();
    wait_until(
        "the container prints ready",
        Duration::from_secs(20),
        || stdout(&p.podman(&["logs", &id])).contains("ready"),
    );
    let start = Instant::now();
    check("podman stop", p.podman(&["stop", "-t", "60", &id]));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "stop waited for its timeout: TERM did not reach the container"
    );
    assert_eq!(
        p.inspect(&id, "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 3"
    );
    assert!(!process_alive(pid), "pid {pid} still alive after stop");
    check("podman rm", p.podman(&["rm", &id]));
    p.assert_clean();
}

/// `podman exec` (conmon calls `job-runtime exec --process FILE --detach --pid-file F ID`):
/// the process runs inside the container's namespaces and its exit code comes back.
#[test]
fn podman_exec_joins_the_container() {
    let p = Podman::new();
    let out = check(
        "podman run -d sleep",
        p.run(&["-d"], &["/bin/sleep", "100"]),
    );
    let id = stdout(&out).trim().to_string();
    // pid 1 of its pid namespace is the container's sleep; its hostname is podman's (the
    // short id) in the container's UTS namespace.
    let out = check(
        "podman exec",
        p.podman(&[
            "exec",
            &id,
            "sh",
            "-c",
            "echo exec-hi; hostname; cat /proc/1/cmdline",
        ]),
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("exec-hi"), "exec printed {text:?}");
    assert_eq!(lines.next(), Some(&id[..12]), "exec printed {text:?}");
    assert!(
        text.contains("sleep\x00100"),
        "pid 1 seen by exec is not the container's sleep: {text:?}"
    );
    let out = p.podman(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    check(
        "podman rm -f",
        p.podman(&["rm", "--force", "--time", "0", &id]),
    );
    p.assert_clean();
}

/// `podman run -t` and `podman exec -t`: job-runtime gets `--console-socket` and sends the
/// pty master to conmon; the process sees a terminal.
#[test]
fn podman_tty() {
    let p = Podman::new();
    let out = check(
        "podman run -t",
        p.run(
            &["--rm", "-t"],
            &["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty"],
        ),
    );
    assert_eq!(stdout(&out), "is-a-tty\r\n");
    let out = check(
        "podman run -d sleep",
        p.run(&["-d"], &["/bin/sleep", "100"]),
    );
    let id = stdout(&out).trim().to_string();
    let out = check(
        "podman exec -t",
        p.podman(&["exec", "-t", &id, "sh", "-c", "test -t 1 && echo exec-tty"]),
    );
    assert_eq!(stdout(&out), "exec-tty\r\n");
    check(
        "podman rm -f",
        p.podman(&["rm", "--force", "--time", "0", &id]),
    );
    p.assert_clean();
}

// ---------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------

/// The image every containerd test runs (imported into the test's namespace).
const IMAGE: &str = "localhost/jobworker-busybox:latest";

/// A containerd of the test's own (config from `tests/interop/containerd.toml`), a
/// namespace of its own (so cgroups land under `/NAMESPACE/ID`), the busybox image imported,
/// and job-runtime's state under the test's directory (`ctr run --runc-root`).
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    ns: String,
}

impl Containerd {
    fn start() -> Containerd {
        for tool in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "umoci",
            "tar",
        ] {
            require_tool(tool);
        }
        let dir = scratch_dir();
        let d = dir.path().to_path_buf();
        let image_tar = build_image(&d);
        let config = d.join("config.toml");
        fs::write(
            &config,
            include_str!("../interop/containerd.toml").replace("@DIR@", d.to_str().unwrap()),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir,
            daemon: Some(daemon),
            ns: unique_id("jobworker-interop"),
        };
        c.wait_ready();
        check(
            "ctr images import",
            c.ctr(&[
                "images",
                "import",
                "--base-name",
                IMAGE.trim_end_matches(":latest"),
                image_tar.to_str().unwrap(),
            ]),
        );
        let images = check("ctr images ls", c.ctr(&["images", "ls", "-q"]));
        assert!(
            stdout(&images).lines().any(|l| l == IMAGE),
            "{IMAGE} not imported: {}",
            stdout(&images)
        );
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn socket(&self) -> PathBuf {
        self.path().join("containerd.sock")
    }

    /// Waits (bounded) until containerd answers on its socket.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}): {}",
                    fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
                );
            }
            if self.socket().exists() {
                let out = try_run_bounded(
                    &mut self.command(&["version"]),
                    self.path(),
                    Duration::from_secs(10),
                );
                if out.is_ok_and(|o| o.status.success()) {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not come up in 30 s: {}",
                fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.ns)
            .args(args);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.command(args), self.path())
    }

    /// Where the shim tells job-runtime to keep state: `--runc-root` plus the namespace.
    fn runtime_root(&self) -> PathBuf {
        self.path().join("runtime").join(&self.ns)
    }

    /// `ctr run` through job-runtime of `cmd` in container `id`, with `flags`.
    fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let runtime = job_runtime();
        let runc_root = self.path().join("runtime");
        let fifo_dir = self.path().join("fifo");
        let mut args = vec![
            "run",
            "--runc-binary",
            runtime.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            // ctr's default is /run/containerd/fifo; keep them in the test's directory.
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `(pid, STATUS)` of task `id` from `ctr task ls`, if it is listed.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = check("ctr task ls", self.ctr(&["task", "ls"]));
        stdout(&out).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap(), f[2].to_string()))
        })
    }

    /// The cgroup containerd gives container `id`: `/NAMESPACE/ID`.
    fn cgroup_of(&self, id: &str) -> String {
        format!("{}/{id}", self.ns)
    }

    /// Asserts that container `id` left nothing: not listed, no runtime state, no cgroup, no
    /// mount of its bundle, no shim.
    fn assert_clean(&self, id: &str) {
        let out = check("ctr containers ls", self.ctr(&["containers", "ls", "-q"]));
        assert!(
            !stdout(&out).lines().any(|l| l == id),
            "containerd still lists {id}"
        );
        let state = self.runtime_root().join(id);
        assert!(!state.exists(), "{} left behind", state.display());
        let left = cgroup_dirs_of(&self.cgroup_of(id));
        assert!(left.is_empty(), "cgroup of {id} left behind: {left:?}");
        let mounts = mounts_under(&self.path().join("state"));
        assert!(mounts.is_empty(), "task mounts left behind: {mounts:?}");
        let daemon = self.daemon.as_ref().map(|c| c.id() as i32);
        wait_until(
            "no shim of this test left (only containerd itself)",
            Duration::from_secs(20),
            || {
                processes_under(self.path())
                    .into_iter()
                    .all(|p| Some(p) == daemon)
            },
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.path().to_path_buf();
        let ctr = |args: &[&str]| try_run_bounded(&mut self.command(args), &d, CLEANUP_LIMIT);
        if self.daemon.is_some() {
            if let Ok(out) = ctr(&["containers", "ls", "-q"]) {
                for id in stdout(&out).split_whitespace() {
                    let _ = ctr(&["task", "kill", "-s", "9", id]);
                    let _ = ctr(&["task", "delete", "--force", id]);
                    let _ = ctr(&["containers", "delete", id]);
                }
            }
        }
        let root = self.runtime_root();
        for id in runtime_containers_under(Some(&root), &d).unwrap_or_default() {
            let _ =
                try_job_runtime_cmd(Some(&root), &["delete", "--force", &id], &d, CLEANUP_LIMIT);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while matches!(daemon.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        end_processes_under(&d);
        unmount_under(&d);
        remove_test_cgroups(&self.ns);
    }
}

/// Builds an OCI image of the busybox rootfs with umoci and packs its layout into a tar
/// for `ctr images import`. Returns the tar's path.
fn build_image(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let unpacked = dir.join("unpacked");
    let image = format!("{}:latest", layout.display());
    let umoci = |args: &[&str]| {
        check(
            &format!("umoci {args:?}"),
            run_bounded(Command::new("umoci").args(args), dir),
        )
    };
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    umoci(&["unpack", "--image", &image, unpacked.to_str().unwrap()]);
    busybox_rootfs(&unpacked.join("rootfs"));
    umoci(&["repack", "--image", &image, unpacked.to_str().unwrap()]);
    let tar = dir.join("image.tar");
    check(
        "tar",
        run_bounded(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            dir,
        ),
    );
    tar
}

#[test]
fn containerd_run_rm_echo() {
    let c = Containerd::start();
    let out = check(
        "ctr run --rm echo",
        c.run(&["--rm"], "echo", &["/bin/echo", "hi"]),
    );
    assert_eq!(stdout(&out), "hi\n");
    c.assert_clean("echo");
}

#[test]
fn containerd_passes_exit_code_and_stdio() {
    let c = Containerd::start();
    let out = c.run(
        &["--rm"],
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err"), "stderr: {}", stderr(&out));
    c.assert_clean("exit7");
}

/// `ctr run -d`, `task ps`, `pause`/`resume`, `kill -s 9`, `task delete`, `container delete`.
#[test]
fn containerd_detached_kill_delete() {
    let c = Containerd::start();
    let id = "sleeper";
    check("ctr run -d", c.run(&["-d"], id, &["/bin/sleep", "100"]));
    let (pid, status) = c.task(id).expect("task listed after run -d");
    assert_eq!(status, "RUNNING");

    // job-runtime holds it, in the state root the shim passed, with the shim's pid.
    let state = check(
        "job-runtime state",
        job_runtime_cmd(
            Some(&c.runtime_root()),
            &["state", id],
            c.path(),
            COMMAND_LIMIT,
        ),
    );
    let state: Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"].as_i64(), Some(pid as i64));
    assert!(
        cgroup_holds(&c.cgroup_of(id), pid),
        "pid {pid} is not in cgroup {}",
        c.cgroup_of(id)
    );

    // `ctr task ps` -> `job-runtime ps --format json`.
    let ps = check("ctr task ps", c.ctr(&["task", "ps", id]));
    assert!(
        stdout(&ps).lines().skip(1).any(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|p| p == pid.to_string())),
        "ctr task ps does not show {pid}: {}",
        stdout(&ps)
    );
    check("ctr task pause", c.ctr(&["task", "pause", id]));
    assert_eq!(c.task(id).unwrap().1, "PAUSED");
    check("ctr task resume", c.ctr(&["task", "resume", id]));
    assert_eq!(c.task(id).unwrap().1, "RUNNING");

    check("ctr task kill", c.ctr(&["task", "kill", "-s", "9", id]));
    wait_until("the task is stopped", Duration::from_secs(20), || {
        c.task(id).is_some_and(|(_, s)| s == "STOPPED")
    });
    assert!(!process_alive(pid), "pid {pid} alive after kill -9");
    check("ctr task delete", c.ctr(&["task", "delete", id]));
    assert!(c.task(id).is_none(), "task still listed after delete");
    check("ctr container delete", c.ctr(&["containers", "delete", id]));
    c.assert_clean(id);
}

/// `ctr task exec` (the shim calls `job-runtime exec --process FILE --detach --pid-file F ID`):
/// the process runs in the container's pid namespace and its exit code comes back.
#[test]
fn containerd_exec_joins_the_container() {
    let c = Containerd::start();
    let id = "execd";
    check("ctr run -d", c.run(&["-d"], id, &["/bin/sleep", "100"]));
    let fifo_dir = c.path().join("fifo");
    let exec = |exec_id: &str, cmd: &[&str]| {
        let mut args = vec![
            "task",
            "exec",
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
            "--exec-id",
            exec_id,
            id,
        ];
        args.extend_from_slice(cmd);
        c.ctr(&args)
    };
    let out = check(
        "ctr task exec",
        exec("e1", &["sh", "-c", "echo exec-hi; cat /proc/1/cmdline"]),
    );
    let text = stdout(&out);
    assert!(text.starts_with("exec-hi\n"), "exec printed {text:?}");
    assert!(
        text.contains("sleep\x00100"),
        "pid 1 seen by exec is not the container's sleep: {text:?}"
    );
    let out = exec("e2", &["sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    check("ctr task kill", c.ctr(&["task", "kill", "-s", "9", id]));
    wait_until("the task is stopped", Duration::from_secs(20), || {
        c.task(id).is_some_and(|(_, s)| s == "STOPPED")
    });
    check("ctr task delete", c.ctr(&["task", "delete", id]));
    check("ctr container delete", c.ctr(&["containers", "delete", id]));
    c.assert_clean(id);
}

/// `ctr run -t` and `ctr task exec -t` on a terminal of our own: job-runtime gets
/// `--console-socket` and sends the pty master to the shim; the process sees a terminal.
#[test]
fn containerd_tty() {
    let c = Containerd::start();
    let runtime = job_runtime();
    let runc_root = c.path().join("runtime");
    let fifo_dir = c.path().join("fifo");
    let (status, text) = run_on_pty(
        &mut c.command(&[
            "run",
            "--rm",
            "-t",
            "--runc-binary",
            runtime.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
            IMAGE,
            "tty1",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty",
        ]),
        COMMAND_LIMIT,
    );
    assert!(status.success(), "ctr run -t failed ({status}): {text:?}");
    // Two terminals translate the newline (the container's and ours): compare without \r.
    assert!(
        text.replace('\r', "").contains("is-a-tty\n"),
        "ctr run -t showed {text:?}"
    );
    c.assert_clean("tty1");

    let id = "tty2";
    check("ctr run -d", c.run(&["-d"], id, &["/bin/sleep", "100"]));
    let (status, text) = run_on_pty(
        &mut c.command(&[
            "task",
            "exec",
            "-t",
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "test -t 1 && echo exec-tty",
        ]),
        COMMAND_LIMIT,
    );
    assert!(
        status.success(),
        "ctr task exec -t failed ({status}): {text:?}"
    );
    assert!(
        text.replace('\r', "").contains("exec-tty\n"),
        "ctr task exec -t showed {text:?}"
    );
    check("ctr task kill", c.ctr(&["task", "kill", "-s", "9", id]));
    wait_until("the task is stopped", Duration::from_secs(20), || {
        c.task(id).is_some_and(|(_, s)| s == "STOPPED")
    });
    check("ctr task delete", c.ctr(&["task", "delete", id]));
    check("ctr container delete", c.ctr(&["containers", "delete", id]));
    c.assert_clean(id);
}
