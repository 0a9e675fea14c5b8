//! What the kernel enforces for a job-runtime container: namespaces and cgroup limits.
//! Each test runs real containers as root and asserts what the kernel did.

use std::fs;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::{cgroup_dir, is_cgroup_v2, keyed, stderr, stdout, unique_id, Bundle};

#[test]
fn pid_1_is_the_job_and_proc_shows_only_the_container() {
    let b = Bundle::new(&["ps", "-o", "pid,args"]);
    let id = unique_id("pid1");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        1,
        "only the job itself should be visible:\n{text}"
    );
    assert!(
        rows[0].trim_start().starts_with("1 "),
        "ps is not PID 1:\n{text}"
    );
    b.assert_clean(&id);
}

#[test]
fn hostname_is_the_specs() {
    let b = Bundle::new(&["hostname"]);
    b.edit(|s| s["hostname"] = json!("tester-host"));
    let id = unique_id("uts");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "tester-host");
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        "tester-host",
        "the host's name must not change"
    );
    b.assert_clean(&id);
}

#[test]
fn network_namespace_has_only_loopback() {
    let b = Bundle::new(&["ls", "/sys/class/net"]);
    let id = unique_id("net");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).split_whitespace().collect::<Vec<_>>(), ["lo"]);
    b.assert_clean(&id);
}

#[test]
fn host_root_is_not_reachable() {
    let b = Bundle::new(&["sh", "-c", ""]);
    // A marker beside the rootfs on the host: visible from anywhere on the host's tree.
    let marker = format!("hostmarker-{}", std::process::id());
    fs::write(b.dir.path().join(&marker), "x").unwrap();
    let script =
        format!("find / -name {marker} 2>/dev/null; echo root:; ls /; cd /..; echo up:; ls");
    b.edit(|s| s["process"]["args"] = json!(["sh", "-c", script]));
    let id = unique_id("root");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains(&marker),
        "host file visible in the container:\n{text}"
    );
    let (root, up) = text.split_once("up:").unwrap();
    let root_listing: Vec<&str> = root.lines().skip_while(|l| *l != "root:").skip(1).collect();
    let up_listing: Vec<&str> = up.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(root_listing, up_listing, "/.. must be / itself");
    assert!(root_listing.contains(&"bin") && !root_listing.contains(&"home"));
    b.assert_clean(&id);
}

#[test]
fn memory_limit_oom_kills_a_process_touching_more() {
    let b = Bundle::new(&["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    b.edit(|s| {
        s["linux"]["resources"]["memory"] = json!({ "limit": 64 * 1024 * 1024 });
    });
    let id = unique_id("oom");
    let bundle = b.path();
    let out = b.runtime(&["run", "--keep", "-b", bundle.to_str().unwrap(), &id]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "expected SIGKILL: {}",
        stderr(&out)
    );
    let ooms = if is_cgroup_v2() {
        keyed(&cgroup_dir("memory", &id).join("memory.events"), "oom_kill")
    } else {
        keyed(
            &cgroup_dir("memory", &id).join("memory.oom_control"),
            "oom_kill",
        )
    };
    assert!(
        ooms.unwrap_or(0) >= 1,
        "the kernel recorded no OOM kill: {ooms:?}"
    );
    let del = b.runtime(&["delete", &id]);
    assert!(del.status.success(), "{}", stderr(&del));
    b.assert_clean(&id);
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "n=0; for i in $(seq 1 40); do sleep 30 & n=$((n+1)); done; echo started $n",
    ]);
    b.edit(|s| s["linux"]["resources"]["pids"] = json!({ "limit": 16 }));
    let id = unique_id("pids");
    let bundle = b.path();
    let out = b.runtime(&["run", "--keep", "-b", bundle.to_str().unwrap(), &id]);
    let err = stderr(&out);
    assert!(err.contains("fork"), "no fork failure reported: {err}");
    let hits = keyed(&cgroup_dir("pids", &id).join("pids.events"), "max");
    assert!(hits.unwrap_or(0) > 0, "pids.max was never hit: {hits:?}");
    let del = b.runtime(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", stderr(&del));
    b.assert_clean(&id);
}

/// CPU time the container's cgroup used, in nanoseconds.
fn cpu_usage_ns(id: &str) -> u64 {
    if is_cgroup_v2() {
        keyed(&cgroup_dir("cpu", id).join("cpu.stat"), "usage_usec").unwrap() * 1000
    } else {
        fs::read_to_string(cgroup_dir("cpuacct", id).join("cpuacct.usage"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn cpu_quota_holds_a_busy_loop_near_twenty_percent() {
    let b = Bundle::new(&["sh", "-c", "while :; do :; done"]);
    b.edit(|s| {
        s["linux"]["resources"]["cpu"] = json!({ "quota": 20000, "period": 100000 });
    });
    let id = unique_id("cpu");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.runtime(&["start", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (cpu_usage_ns(&id), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (u1, t1) = (cpu_usage_ns(&id), t0.elapsed());
    let share = (u1 - u0) as f64 / t1.as_nanos() as f64;
    let del = b.runtime(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", stderr(&del));
    assert!(
        (0.10..=0.30).contains(&share),
        "busy loop used {:.0}% of a CPU, expected about 20%",
        share * 100.0
    );
    b.assert_clean(&id);
}

#[test]
fn runs_as_the_specs_user_with_only_its_capabilities() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; grep -E 'CapEff|NoNewPrivs' /proc/self/status",
    ]);
    b.edit(|s| {
        s["process"]["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [2000] });
    });
    let id = unique_id("user");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["1000", "1000"], "{text}");
    assert!(lines[2].contains("2000"), "{text}");
    assert!(
        text.contains("CapEff:\t0000000000000000"),
        "a non-root user keeps no effective caps:\n{text}"
    );
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    b.assert_clean(&id);
}

#[test]
fn root_in_the_container_is_an_unprivileged_host_user() {
    let b = Bundle::new(&["sleep", "30"]);
    let id = unique_id("userns");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = b.state(&id).unwrap()["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.contains("100000"),
        "container root maps to host uid 100000: {uid_line}"
    );
    let del = b.runtime(&["delete", "--force", &id]);
    assert!(del.status.success(), "{}", stderr(&del));
    b.assert_clean(&id);
}

#[test]
fn the_root_filesystem_is_read_only() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "touch /bin/x 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok",
    ]);
    let id = unique_id("ro");
    let out = b.run(&id);
    let text = stdout(&out);
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    b.assert_clean(&id);
}

/// The whole-disk block device (major, minor) under the filesystem holding `path`.
fn disk_of(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("../dev")).unwrap();
        let (a, b) = parent.trim().split_once(':').unwrap();
        return (a.parse().unwrap(), b.parse().unwrap());
    }
    (major, minor)
}

#[test]
fn block_io_throttle_is_written_for_the_device() {
    let b = Bundle::new(&["sleep", "30"]);
    let (major, minor) = disk_of(&b.path());
    b.edit(|s| {
        s["linux"]["resources"]["blockIO"] = json!({
            "throttleReadBpsDevice": [{ "major": major, "minor": minor, "rate": 1048576 }],
            "throttleWriteIOPSDevice": [{ "major": major, "minor": minor, "rate": 100 }]
        });
    });
    let id = unique_id("blkio");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let dev = format!("{major}:{minor}");
    if is_cgroup_v2() {
        let max = fs::read_to_string(cgroup_dir("io", &id).join("io.max")).unwrap();
        assert!(max.contains(&format!("{dev} rbps=1048576")), "{max}");
        assert!(max.contains("wiops=100"), "{max}");
    } else {
        let dir = cgroup_dir("blkio", &id);
        let read = fs::read_to_string(dir.join("blkio.throttle.read_bps_device")).unwrap();
        assert_eq!(read.trim(), format!("{dev} 1048576"));
        let iops = fs::read_to_string(dir.join("blkio.throttle.write_iops_device")).unwrap();
        assert_eq!(iops.trim(), format!("{dev} 100"));
    }
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn the_container_sees_its_own_cgroup_and_limits() {
    let file = if is_cgroup_v2() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let b = Bundle::new(&["sh", "-c", &format!("cat {file}; cat /proc/self/cgroup")]);
    b.edit(|s| s["linux"]["resources"]["memory"] = json!({ "limit": 64 * 1024 * 1024 }));
    let id = unique_id("cgview");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("67108864"), "{text}");
    // The cgroup namespace is rooted at the container's cgroup: no host path shows.
    assert!(lines.all(|l| l.ends_with(":/")), "{text}");
    b.assert_clean(&id);
}

/// Prints `MOUNT_POINT OPTIONS` for every mount at or below /sys/fs/cgroup.
const LIST_CGROUP_MOUNTS: &str =
    "awk '$5 ~ \"^/sys/fs/cgroup\" { print $5, $6 }' /proc/self/mountinfo";

/// Checks the lines of [`LIST_CGROUP_MOUNTS`] in `text`: at least the mounts the cgroup
/// version makes (v1: the tmpfs and a bind per hierarchy), each of them read-only.
fn assert_cgroup_mounts_read_only(text: &str) {
    let mounts: Vec<&str> = text.lines().filter(|l| l.starts_with('/')).collect();
    let expected = if is_cgroup_v2() { 1 } else { 2 };
    assert!(mounts.len() >= expected, "too few cgroup mounts:\n{text}");
    for line in &mounts {
        let (at, opts) = line.split_once(' ').unwrap();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{at} is not read-only ({opts})\n{text}"
        );
    }
}

#[test]
fn the_cgroup_tree_is_read_only_in_every_mount() {
    // v1 shows one bind per hierarchy on a tmpfs, made read-only together: every one of them
    // must be, not only the tmpfs.
    let script = format!(
        "{LIST_CGROUP_MOUNTS}; \
         mkdir /sys/fs/cgroup/x 2>/dev/null && echo tmpfs-writable; \
         for d in /sys/fs/cgroup/*/; do mkdir \"$d/x\" 2>/dev/null && echo \"$d writable\"; done; true"
    );
    let b = Bundle::new(&["sh", "-c", &script]);
    let id = unique_id("cgro");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_cgroup_mounts_read_only(&text);
    assert!(!text.contains("writable"), "{text}");
    b.assert_clean(&id);
}

/// In a forked child before exec: a seccomp filter that answers `mount_setattr` with EPERM, as
/// an outer container runtime's profile that does not know the call does.
fn refuse_mount_setattr() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut filter = [
        stmt(load, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(load, 0), // seccomp_data.nr
        jeq(libc::SYS_mount_setattr as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments, then a filter program that outlives the call.
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn without_mount_setattr_the_cgroup_tree_is_still_read_only() {
    // A runtime nested in another container may be refused the new mount API: the one
    // recursive call falls back to a remount per mount (and job-init's read-only handle to
    // its sealed copy), and the container starts with the same read-only tree.
    let b = Bundle::new(&["sh", "-c", LIST_CGROUP_MOUNTS]);
    let id = unique_id("nosetattr");
    let bundle = b.path();
    let mut cmd = b.command(&["run", "-b", bundle.to_str().unwrap(), &id]);
    // SAFETY: the hook runs in the forked child before exec and only makes prctl calls.
    unsafe {
        cmd.pre_exec(refuse_mount_setattr);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn job-runtime");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_cgroup_mounts_read_only(&stdout(&out));
    b.assert_clean(&id);
}

#[test]
fn systemd_cgroup_driver_without_systemd_is_a_clear_error() {
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("skipped: systemd runs on this host");
        return;
    }
    let b = Bundle::new(&["true"]);
    let id = unique_id("systemd");
    let bundle = b.path();
    let out = b.runtime(&[
        "--systemd-cgroup",
        "run",
        "-b",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("systemd is not running"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&id);

    // A podman-style slice:prefix:name path: refused the same way, and no scope directory
    // appears in any hierarchy (the runtime must not fall back to making it itself).
    let id = unique_id("systemd");
    b.edit(|s| s["linux"]["cgroupsPath"] = json!(format!("system.slice:jobworker:{id}")));
    let out = b.runtime(&[
        "--systemd-cgroup",
        "run",
        "-b",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("systemd is not running"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&id);
    let scope = format!("system.slice/jobworker-{id}.scope");
    let mut hierarchies = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    hierarchies.extend(
        fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    );
    for h in hierarchies {
        assert!(
            !h.join(&scope).exists(),
            "{} made",
            h.join(&scope).display()
        );
    }
}

#[test]
fn masked_and_read_only_paths_hold() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "echo keys=$(cat /proc/keys /proc/timer_list 2>&1 | wc -c); ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/core_pattern 2>/dev/null && echo sys-writable; \
         grep -c ' /proc/keys ' /proc/self/mountinfo",
    ]);
    let id = unique_id("mask");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "keys=0",
        "/proc/keys or /proc/timer_list readable: {text}"
    );
    assert_eq!(lines[1], "0", "/sys/firmware not empty: {text}");
    assert!(!text.contains("sys-writable"), "{text}");
    assert_eq!(
        lines[2], "1",
        "/proc/keys is not covered by a mount: {text}"
    );
    b.assert_clean(&id);
}

#[test]
fn masking_refuses_a_dev_null_that_is_not_the_null_device() {
    // CVE-2025-31133: a rootfs whose /dev/null is a symlink must not redirect the mask.
    let b = Bundle::new(&["true"]);
    let dev = b.path().join("rootfs/dev");
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", dev.join("null")).unwrap();
    b.edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| {
            m["destination"]
                .as_str()
                .is_some_and(|d| !d.starts_with("/dev"))
        });
        s["linux"]["maskedPaths"] = json!(["/proc/keys"]);
    });
    let id = unique_id("cve");
    let out = b.run(&id);
    assert!(
        !out.status.success(),
        "masking through a symlinked /dev/null succeeded"
    );
    let err = stderr(&out);
    assert!(
        err.contains("/proc/keys") && err.contains("/dev/null"),
        "{err}"
    );
    b.assert_clean(&id);
}

#[test]
fn relative_masked_paths_are_rejected() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["maskedPaths"] = json!(["proc/keys"]));
    let id = unique_id("relmask");
    let out = b.run(&id);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("linux.maskedPaths"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&id);
}

#[test]
fn stats_come_in_nanoseconds_and_bytes() {
    let b = Bundle::new(&["sh", "-c", "sleep 100 & while :; do :; done"]);
    b.edit(|s| s["linux"]["resources"]["pids"] = json!({ "limit": 20 }));
    let id = unique_id("stats");
    assert!(b.create(&id).status.success());
    assert!(b.runtime(&["start", &id]).status.success());
    std::thread::sleep(Duration::from_millis(700));
    let out = b.runtime(&["events", "--stats", &id]);
    let direct_ns = cpu_usage_ns(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["type"], "stats");
    let total = e["data"]["cpu"]["usage"]["total"].as_u64().unwrap();
    assert!(
        total > 100_000_000,
        "a busy loop for 0.7 s used {total} ns?"
    );
    assert!(
        total <= direct_ns,
        "{total} ns reported, the cgroup says {direct_ns} ns"
    );
    assert!(
        total * 2 >= direct_ns,
        "{total} is not in ns (cgroup: {direct_ns})"
    );
    assert!(e["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 100_000);
    assert!(e["data"]["pids"]["current"].as_u64().unwrap() >= 2);
    assert_eq!(e["data"]["pids"]["limit"], 20);
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}
