//! What the kernel enforces for a job-runtime container: namespaces and cgroup limits.
//! Each test runs real containers as root and asserts what the kernel did.

use std::fs;
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
