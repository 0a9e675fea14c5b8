//! Process controls from config.json: capabilities, rlimits, oomScoreAdj, umask, sysctl,
//! devices, rootfs propagation; each asserted from inside or from /proc.

use std::fs;

use serde_json::json;
use tests::{stderr, stdout, unique_id, Bundle};

fn run_ok(b: &Bundle) -> String {
    let id = unique_id("proc");
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_clean(&id);
    stdout(&out)
}

fn run_fails(b: &Bundle, expect: &[&str]) {
    let id = unique_id("procbad");
    let out = b.run(&id);
    assert!(
        !out.status.success(),
        "expected a failure naming {expect:?}"
    );
    for part in expect {
        assert!(
            stderr(&out).contains(part),
            "{:?} does not name {part:?}",
            stderr(&out)
        );
    }
    b.assert_clean(&id);
}

#[test]
fn capability_sets_are_applied_exactly() {
    let b = Bundle::new(&["grep", "^Cap", "/proc/self/status"]);
    b.edit(|s| {
        s["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"]
        });
    });
    let text = run_ok(&b);
    // CHOWN = bit 0, KILL = bit 5, NET_BIND_SERVICE = bit 10.
    for (set, mask) in [
        ("CapInh", "0000000000000020"),
        ("CapPrm", "0000000000000021"),
        ("CapEff", "0000000000000021"),
        ("CapBnd", "0000000000000421"),
        ("CapAmb", "0000000000000020"),
    ] {
        assert!(
            text.contains(&format!("{set}:\t{mask}")),
            "{set} != {mask}:\n{text}"
        );
    }
}

#[test]
fn unknown_capabilities_and_rlimits_are_refused() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["process"]["capabilities"]["bounding"] = json!(["CAP_TEST"]));
    run_fails(&b, &["CAP_TEST"]);
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["process"]["rlimits"] = json!([{ "type": "RLIMIT_TEST", "hard": 1, "soft": 1 }]));
    run_fails(&b, &["RLIMIT_TEST"]);
}

#[test]
fn rlimits_apply_and_raising_past_the_hard_limit_is_a_clear_error() {
    let b = Bundle::new(&["sh", "-c", "ulimit -n; ulimit -Hn"]);
    b.edit(|s| {
        s["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "hard": 512, "soft": 256 }])
    });
    assert_eq!(
        run_ok(&b).split_whitespace().collect::<Vec<_>>(),
        ["256", "512"]
    );

    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY (test): getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["process"]["rlimits"] = json!([{
            "type": "RLIMIT_NOFILE", "hard": hard.rlim_max + 1000, "soft": 1024
        }]);
    });
    if nix::unistd::geteuid().is_root()
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap_or(true)
    {
        eprintln!("skipped the over-the-limit half: this host grants CAP_SYS_RESOURCE");
        return;
    }
    run_fails(&b, &["RLIMIT_NOFILE", "CAP_SYS_RESOURCE"]);
}

#[test]
fn oom_score_adj_and_umask_apply() {
    let b = Bundle::new(&["sh", "-c", "cat /proc/self/oom_score_adj; umask"]);
    b.edit(|s| {
        s["process"]["oomScoreAdj"] = json!(500);
        s["process"]["user"]["umask"] = json!(0o027);
    });
    assert_eq!(
        run_ok(&b).split_whitespace().collect::<Vec<_>>(),
        ["500", "0027"]
    );
}

#[test]
fn namespaced_sysctls_are_set_and_others_refused() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
    ]);
    b.edit(|s| {
        s["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1", "kernel.shmmni": "1234" });
    });
    assert_eq!(
        run_ok(&b).split_whitespace().collect::<Vec<_>>(),
        ["1", "1234"]
    );
    assert_ne!(
        fs::read_to_string("/proc/sys/kernel/shmmni")
            .unwrap()
            .trim(),
        "1234",
        "the host changed"
    );

    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["sysctl"] = json!({ "kernel.panic": "1" }));
    run_fails(&b, &["linux.sysctl", "kernel.panic", "not namespaced"]);
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" });
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
    });
    run_fails(&b, &["net.ipv4.ip_forward", "needs a net namespace"]);
}

#[test]
fn spec_devices_are_created_with_their_mode_and_owner() {
    // Without a user namespace the runtime makes the node itself (mknod).
    let b = Bundle::new(&[
        "stat",
        "-c",
        "%F %t:%T %a %u:%g",
        "/dev/mydev",
        "/dev/myfifo",
    ]);
    b.edit(|s| {
        tests::without_user_namespace(s);
        s["linux"]["devices"] = json!([
            { "path": "/dev/mydev", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 7, "gid": 8 },
            { "path": "/dev/myfifo", "type": "p", "major": 0, "minor": 0, "fileMode": 0o600 }
        ]);
        s["linux"]["resources"]["devices"] = json!([
            { "allow": false, "access": "rwm" },
            { "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm" }
        ]);
    });
    let text = run_ok(&b);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "character special file 1:3 640 7:8", "{text}");
    assert_eq!(lines[1], "fifo 0:0 600 0:0", "{text}");
}

#[test]
fn the_device_cgroup_denies_what_is_not_allowed() {
    // /dev/mem exists in the container (made by the spec) but the cgroup refuses access.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "head -c 1 /dev/mem > /dev/null 2>&1 && echo READ-MEM; echo done",
    ]);
    b.edit(|s| {
        tests::without_user_namespace(s);
        s["linux"]["devices"] =
            json!([{ "path": "/dev/mem", "type": "c", "major": 1, "minor": 1, "fileMode": 0o600 }]);
    });
    let text = run_ok(&b);
    assert!(!text.contains("READ-MEM"), "{text}");
    assert!(text.contains("done"));
}

#[test]
fn rootfs_propagation_is_applied() {
    let b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    b.edit(|s| s["linux"]["rootfsPropagation"] = json!("private"));
    let text = run_ok(&b);
    let root = text
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        !root.contains("shared:") && !root.contains("master:"),
        "{root}"
    );
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["rootfsPropagation"] = json!("sideways"));
    run_fails(&b, &["rootfsPropagation", "sideways"]);
}

#[test]
fn mount_propagation_options_are_applied() {
    let b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    let shared = b.dir.path().join("shared-src");
    let private = b.dir.path().join("private-src");
    fs::create_dir(&shared).unwrap();
    fs::create_dir(&private).unwrap();
    fs::create_dir(b.path().join("rootfs/tmp/s")).unwrap();
    fs::create_dir(b.path().join("rootfs/tmp/p")).unwrap();
    b.edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.push(json!({ "destination": "/tmp/s", "type": "bind",
            "source": shared, "options": ["rbind", "ro", "rshared"] }));
        mounts.push(json!({ "destination": "/tmp/p", "type": "bind",
            "source": private, "options": ["rbind", "ro", "rprivate"] }));
    });
    let text = run_ok(&b);
    let line = |dest: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(4) == Some(dest))
            .unwrap_or_else(|| panic!("{dest} not mounted:\n{text}"))
            .to_string()
    };
    assert!(line("/tmp/s").contains("shared:"), "{}", line("/tmp/s"));
    let p = line("/tmp/p");
    assert!(!p.contains("shared:") && !p.contains("master:"), "{p}");
    assert!(
        p.contains(" ro,") || p.contains(" ro "),
        "ro not applied: {p}"
    );
}

#[test]
fn a_relative_bind_source_is_taken_from_the_bundle() {
    // job-init resolves mount targets from inside the rootfs (its working directory while
    // it mounts); a relative source must still mean the bundle's file, as runc reads it.
    let b = Bundle::new(&["cat", "/data/note"]);
    fs::create_dir(b.path().join("shared")).unwrap();
    fs::write(b.path().join("shared/note"), "from the bundle\n").unwrap();
    fs::create_dir(b.path().join("rootfs/shared")).unwrap();
    fs::write(b.path().join("rootfs/shared/note"), "from the rootfs\n").unwrap();
    fs::create_dir(b.path().join("rootfs/data")).unwrap();
    b.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": "shared",
            "options": ["rbind", "ro"]
        }));
    });
    assert_eq!(run_ok(&b), "from the bundle\n");
}
