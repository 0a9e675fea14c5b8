//! Helpers shared by the end-to-end tests: locating the built binaries, building a busybox
//! bundle, running `job-runtime`, and checking that nothing was left behind.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Applets the busybox rootfs offers; enough for every test.
const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "ps", "hostname", "true", "false", "sleep", "id", "dd", "seq",
    "find", "grep", "wc", "kill", "test", "head", "readlink", "stat", "mount", "touch", "env",
];

/// Directory holding `job-runtime` and `job-init`: `$JOBWORKER_BIN_DIR`, else the cargo
/// target directory this test binary was built in.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JOBWORKER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    assert!(
        dir.join("job-runtime").is_file() && dir.join("job-init").is_file(),
        "job-runtime and job-init are not built in {}: run `cargo build --workspace --bins` first",
        dir.display()
    );
    dir
}

pub fn job_runtime() -> PathBuf {
    bin_dir().join("job-runtime")
}

/// The end-to-end tests make namespaces, cgroups and mounts: they need root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create namespaces, cgroups and mounts and must run as root"
    );
}

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bundle with a busybox rootfs and the runtime's default spec, in a private temp dir,
/// with its own state root.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Bundle {
    pub fn new(args: &[&str]) -> Bundle {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("jobworker-test-")
            .tempdir()
            .expect("temp dir");
        // The container's root user is an unprivileged host uid: it must reach the rootfs.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let busybox =
            which("busybox").expect("busybox is not installed (apt-get install busybox-static)");
        fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let root = dir.path().join("state");
        let b = Bundle { dir, root };
        let out = b.runtime(&["spec", "--bundle", b.path().to_str().unwrap()]);
        assert!(out.status.success(), "spec failed: {}", stderr(&out));
        b.edit(|spec| {
            spec["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        });
        b
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&fs::read(self.path().join("config.json")).unwrap()).unwrap()
    }

    /// Changes config.json through `f`.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut spec = self.config();
        f(&mut spec);
        fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
    }

    /// A `job-runtime --root STATE` command.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(job_runtime());
        c.arg("--root").arg(&self.root).args(args);
        c.current_dir(self.path());
        c
    }

    /// Runs `job-runtime` with stdin closed, capturing stdout and stderr.
    pub fn runtime(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn job-runtime")
    }

    /// `job-runtime run` of this bundle as container `id`.
    pub fn run(&self, id: &str) -> Output {
        let bundle = self.path();
        self.runtime(&["run", "-b", bundle.to_str().unwrap(), id])
    }

    /// `job-runtime create`. The container inherits create's stdio, so it goes to files (a
    /// pipe would stay open as long as the container runs); they are read back into `Output`.
    pub fn create(&self, id: &str) -> Output {
        self.create_with(id, &[])
    }

    /// [`Bundle::create`] with extra `create` flags.
    pub fn create_with(&self, id: &str, flags: &[&str]) -> Output {
        let bundle = self.path();
        let (out_path, err_path) = self.stdio_files(id);
        let mut args = vec!["create", "-b", bundle.to_str().unwrap()];
        args.extend_from_slice(flags);
        args.push(id);
        let status = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .status()
            .expect("spawn job-runtime");
        Output {
            status,
            stdout: fs::read(&out_path).unwrap_or_default(),
            stderr: fs::read(&err_path).unwrap_or_default(),
        }
    }

    /// Where [`Bundle::create`] sends the stdio of container `id` (any id, even a bad one).
    fn stdio_files(&self, id: &str) -> (PathBuf, PathBuf) {
        let name: String = id
            .chars()
            .take(64)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        (
            self.dir.path().join(format!("stdio-{name}.out")),
            self.dir.path().join(format!("stdio-{name}.err")),
        )
    }

    /// What the container of `id` (made by [`Bundle::create`]) wrote to stdout so far.
    pub fn container_stdout(&self, id: &str) -> String {
        fs::read_to_string(self.stdio_files(id).0).unwrap_or_default()
    }

    /// The OCI state of `id` as JSON, or `None` if `state` fails.
    pub fn state(&self, id: &str) -> Option<Value> {
        let out = self.runtime(&["state", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state prints JSON"))
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)
            .map(|s| s["status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "absent".into())
    }

    /// Waits until `id` reaches `status` (bounded).
    pub fn wait_status(&self, id: &str, status: &str) {
        let start = Instant::now();
        while self.status(id) != status {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{id} did not become {status}: {}",
                self.status(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that container `id` left nothing: no state dir, no cgroup, no mount.
    pub fn assert_clean(&self, id: &str) {
        assert!(
            !self.root.join(id).exists(),
            "state dir of {id} left behind"
        );
        let left = cgroup_dirs(id);
        assert!(left.is_empty(), "cgroups of {id} left behind: {left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let bundle = self.path();
        assert!(
            !mounts.contains(bundle.to_str().unwrap()),
            "mounts under {} left behind",
            bundle.display()
        );
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Best effort: a failed test must not leave containers running.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.runtime(&["delete", "--force", &id]);
            }
        }
    }
}

/// Removes the user namespace and its id maps from a spec: container root is host root then,
/// which some tests need (mknod, writable cgroup mounts, attacks on a privileged container).
pub fn without_user_namespace(spec: &mut Value) {
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "user");
    }
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("uidMappings");
        linux.remove("gidMappings");
    }
}

/// Every directory of cgroup `/job-runtime/ID` that exists, in any hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let v2 = Path::new("/sys/fs/cgroup/job-runtime").join(id);
    if v2.exists() {
        out.push(v2);
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let d = e.path().join("job-runtime").join(id);
            if d.exists() {
                out.push(d);
            }
        }
    }
    out
}

/// The cgroup v1 directory of a controller for container `id`, or the v2 directory.
pub fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    if is_cgroup_v2() {
        Path::new("/sys/fs/cgroup/job-runtime").join(id)
    } else {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("job-runtime")
            .join(id)
    }
}

pub fn is_cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reads a flat-keyed cgroup file (`key value` lines) and returns `key`'s value.
pub fn keyed(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// Fills `dir` with a busybox root filesystem (the same tree [`Bundle::new`] builds:
/// `/bin/busybox` with the applets as symlinks, `/proc /sys /dev /tmp /etc`, an
/// `/etc/passwd` with root), for clients that take a rootfs or an image of their own.
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let busybox =
        which("busybox").expect("busybox is not installed (apt-get install busybox-static)");
    fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}
