//! The job is hostile: each test tries an attack from inside a default container and asserts
//! the kernel refused it.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use tests::{stderr, stdout, unique_id, Bundle};

/// Builds tests/fixtures/attack.c statically into `dir`.
fn build_attacker(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/attack.c");
    let out = dir.join("attack");
    let status = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the attacker");
    assert!(
        status.success(),
        "cc -static failed (is libc6-dev installed?)"
    );
    out
}

fn results(text: &str) -> HashMap<String, i32> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap_or(-1)))
        .collect()
}

#[test]
fn a_default_container_refuses_the_known_escapes() {
    let b = Bundle::new(&["/attack"]);
    let attacker = build_attacker(b.dir.path());
    fs::copy(&attacker, b.path().join("rootfs/attack")).unwrap();
    let id = unique_id("attack");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = results(&stdout(&out));
    for name in [
        "mount",
        "unshare_user",
        "unshare_ns",
        "setns",
        "keyctl",
        "add_key",
        "init_module",
        "finit_module",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "kexec_load",
        "reboot",
        "swapon",
        "pivot_root",
        "vsock",
        "alg",
        "clone_newuser",
        "ptrace_attach",
        "process_vm_readv",
    ] {
        assert_eq!(
            r.get(name),
            Some(&libc::EPERM),
            "{name} was not refused: {r:?}"
        );
    }
    assert_eq!(r.get("clone3"), Some(&libc::ENOSYS), "{r:?}");
    assert_eq!(
        r.get("unix_socket"),
        Some(&0),
        "ordinary sockets must work: {r:?}"
    );
    assert_eq!(r.get("getpid"), Some(&0), "{r:?}");
    b.assert_clean(&id);
}

#[test]
fn job_init_cannot_be_overwritten_through_proc_exe() {
    // CVE-2019-5736, the strong form: no user namespace (container root is host root). While
    // the container is created, its PID 1 is job-init; a process exec'd into it keeps an fd
    // on /proc/1/exe, and after `start` (job-init has exec'd the job, so the binary is no
    // longer busy) reopens it for writing.
    let b = Bundle::new(&["sleep", "60"]);
    b.edit(|s| {
        tests::without_user_namespace(s);
    });
    let id = unique_id("exe");
    assert!(b.create(&id).status.success());
    let host_init = tests::bin_dir().join("job-init");
    let before = fs::read(&host_init).unwrap();
    let result = b.dir.path().join("attack.out");
    let status = b
        .command(&[
            "exec",
            "-d",
            &id,
            "sh",
            "-c",
            "exec 3</proc/1/exe; sleep 1; \
             (echo pwned >/proc/self/fd/3) 2>/dev/null && echo WROTE || echo refused",
        ])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&result).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(b.runtime(&["start", &id]).status.success());
    let start = std::time::Instant::now();
    while fs::read_to_string(&result).unwrap_or_default().is_empty() {
        assert!(
            start.elapsed().as_secs() < 10,
            "the attacker never reported"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let text = fs::read_to_string(&result).unwrap();
    assert_eq!(text.trim(), "refused", "wrote through /proc/1/exe: {text}");
    assert_eq!(
        fs::read(&host_init).unwrap(),
        before,
        "host job-init changed"
    );
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn a_leaked_directory_fd_cannot_become_the_cwd() {
    // CVE-2024-21626: cwd /proc/self/fd/N through a directory fd the caller leaked.
    let b = Bundle::new(&["sh", "-c", "pwd; ls"]);
    b.edit(|s| s["process"]["cwd"] = json!("/proc/self/fd/9"));
    let host_dir = fs::File::open(b.dir.path()).unwrap();
    let raw = host_dir.as_raw_fd();
    let id = unique_id("cwd");
    let bundle = b.path();
    let mut cmd = b.command(&["run", "-b", bundle.to_str().unwrap(), &id]);
    // SAFETY (test): dup2 in the child so the runtime inherits the host directory as fd 9.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::dup2(raw, 9) != 9 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        !out.status.success(),
        "the job ran in a host directory: {}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("bundle"), "{}", stdout(&out));
    b.assert_clean(&id);
}

#[test]
fn jobs_cannot_see_each_others_processes_or_files() {
    let a = Bundle::new(&["sh", "-c", "echo secret > /dev/shm/secret; sleep 60"]);
    let ida = unique_id("ja");
    assert!(a.create(&ida).status.success());
    assert!(a.runtime(&["start", &ida]).status.success());
    let pid_a = a.state(&ida).unwrap()["pid"].as_i64().unwrap();

    let b = Bundle::new(&[
        "sh",
        "-c",
        "ls /dev/shm; ls /proc | grep -c '^[0-9]'; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '",
    ]);
    let idb = unique_id("jb");
    let out = b.run(&idb);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("secret"), "job b sees job a's files: {text}");
    assert!(
        !text.contains("sleep 60"),
        "job b sees job a's process: {text}"
    );
    assert!(!text.contains(&pid_a.to_string()) || pid_a < 10, "{text}");
    b.assert_clean(&idb);
    assert!(a.runtime(&["delete", "--force", &ida]).status.success());
    a.assert_clean(&ida);
}

#[test]
fn procfs_writes_and_sysfs_are_not_the_hosts() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ; \
         echo x > /sys/kernel/uevent_helper 2>/dev/null && echo UEVENT; \
         cat /proc/keys /proc/timer_list 2>/dev/null | wc -c",
    ]);
    let id = unique_id("procfs");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("SYSRQ") && !text.contains("UEVENT"),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some("0"), "{text}");
    b.assert_clean(&id);
}

#[test]
fn seccomp_holds_without_no_new_privileges() {
    // Without no_new_privs the filter must be installed while job-init still has
    // CAP_SYS_ADMIN; it must be in force all the same.
    let b = Bundle::new(&["/attack"]);
    b.edit(|s| s["process"]["noNewPrivileges"] = json!(false));
    let attacker = build_attacker(b.dir.path());
    fs::copy(&attacker, b.path().join("rootfs/attack")).unwrap();
    let id = unique_id("nnp");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = results(&stdout(&out));
    for name in ["mount", "unshare_user", "keyctl", "bpf", "ptrace_attach"] {
        assert_eq!(
            r.get(name),
            Some(&libc::EPERM),
            "{name} was not refused: {r:?}"
        );
    }
    assert_eq!(r.get("getpid"), Some(&0), "{r:?}");
    b.assert_clean(&id);

    let b = Bundle::new(&["grep", "NoNewPrivs", "/proc/self/status"]);
    b.edit(|s| s["process"]["noNewPrivileges"] = json!(false));
    let id = unique_id("nnp");
    let out = b.run(&id);
    assert!(stdout(&out).contains("NoNewPrivs:\t0"), "{}", stdout(&out));
    b.assert_clean(&id);
}
