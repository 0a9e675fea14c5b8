//! Helpers shared by the daemon's process-level tests.
// Each test binary uses its own part of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// job-init beside the jobd under test (built if missing): jobs start through it.
pub fn job_init() -> PathBuf {
    let jobd = Path::new(env!("CARGO_BIN_EXE_jobd"));
    let init = jobd.parent().unwrap().join("job-init");
    if !init.is_file() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "job-init"])
            .status()
            .expect("run cargo build -p job-init");
        assert!(st.success(), "cargo build -p job-init failed");
    }
    assert!(init.is_file(), "{} missing", init.display());
    init
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A static busybox rootfs in `dir/rootfs` (fast to make, unlike jobd's default rootfs), or
/// `None` when the host has no busybox.
pub fn busybox_rootfs(dir: &Path) -> Option<PathBuf> {
    let bb = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())?;
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "work", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for app in ["sh", "echo", "cat", "sleep", "true", "printf"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/work:/bin/sh\n").unwrap();
    Some(root)
}

/// Pids of processes whose command line contains every one of `needles`.
pub fn pids_with_cmdline(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let text = String::from_utf8_lossy(&c).replace('\0', " ");
                needles.iter().all(|n| text.contains(n))
            })
        })
        .collect()
}

/// Pids of live (non-zombie) processes in the job's cgroup.
pub fn job_pids(job_id: &str) -> Vec<i32> {
    let marker = format!("/jobd/{job_id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&marker))
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
        })
        .collect()
}

/// What is left of a job on the host: live processes in its cgroup, its shim, its cgroup
/// directories, its mounts. Empty when everything was cleaned.
pub fn leftovers(job_id: &str) -> Vec<String> {
    let mut left: Vec<String> = job_pids(job_id)
        .into_iter()
        .map(|p| format!("process {p}"))
        .collect();
    for p in pids_with_cmdline(&["jobd-shim", job_id]) {
        let zombie = std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        if !zombie {
            left.push(format!("shim {p}"));
        }
    }
    let mut cgroup_dirs = vec![PathBuf::from("/sys/fs/cgroup/jobd").join(job_id)];
    if let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hier.flatten() {
            cgroup_dirs.push(h.path().join("jobd").join(job_id));
        }
    }
    left.extend(
        cgroup_dirs
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| format!("cgroup {}", d.display())),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(job_id))
            .map(|l| format!("mount {l}")),
    );
    left
}

/// Removes what a failed test left of job `id` (a panicking test leaves running jobs in their
/// shims, by design): kills its processes, unmounts its overlay, removes its cgroups.
pub fn force_clean(id: &str) {
    for pid in job_pids(id) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in mounts
        .lines()
        .filter(|l| l.contains(id))
        .filter_map(|l| l.split_whitespace().nth(4))
    {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
    for entry in leftovers(id) {
        if let Some(dir) = entry.strip_prefix("cgroup ") {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Calls [`force_clean`] on its jobs when dropped (also when the test panics).
#[derive(Default)]
pub struct CleanJobs(pub Vec<String>);

impl Drop for CleanJobs {
    fn drop(&mut self) {
        for id in &self.0 {
            force_clean(id);
        }
    }
}
