//! Bad input and failures inside the container: a clear message naming the problem, a non-zero
//! exit, and nothing left behind (state directory, cgroup, mount, process).

use std::fs;

use serde_json::json;
use tests::{stderr, unique_id, Bundle};

/// Runs `create` and asserts it failed with a message containing every part of `expect`.
fn assert_create_fails(b: &Bundle, expect: &[&str]) {
    let id = unique_id("bad");
    let out = b.create(&id);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "create succeeded; expected {expect:?}"
    );
    for part in expect {
        assert!(
            err.contains(part),
            "error {err:?} does not mention {part:?}"
        );
    }
    assert!(
        err.lines().count() <= 2,
        "a one-line reason is expected: {err}"
    );
    b.assert_clean(&id);
}

#[test]
fn invalid_json_names_the_file() {
    let b = Bundle::new(&["true"]);
    fs::write(b.path().join("config.json"), "{ \"ociVersion\": ").unwrap();
    assert_create_fails(&b, &["config.json", "invalid JSON"]);
}

#[test]
fn missing_root_path_is_named() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s.as_object_mut().unwrap().remove("root");
    });
    assert_create_fails(&b, &["config.json", "root.path is required"]);
}

#[test]
fn missing_rootfs_is_named() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["root"]["path"] = json!("no-such-rootfs"));
    assert_create_fails(&b, &["root.path", "no-such-rootfs", "does not exist"]);
}

#[test]
fn unknown_namespace_type_is_named() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["namespaces"][0]["type"] = json!("bogus"));
    assert_create_fails(&b, &["config.json", "bogus"]);
}

#[test]
fn unknown_executable_is_named() {
    let b = Bundle::new(&["python4"]);
    assert_create_fails(&b, &["executable \"python4\" not found in PATH"]);
}

#[test]
fn missing_cwd_is_named() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["process"]["cwd"] = json!("/nope"));
    assert_create_fails(&b, &["cwd /nope does not exist in the container"]);
}

#[test]
fn a_failing_mount_is_named() {
    let b = Bundle::new(&["true"]);
    fs::create_dir(b.path().join("rootfs/data")).unwrap();
    b.edit(|s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "destination": "/data", "type": "bogusfs", "source": "none" }));
    });
    assert_create_fails(&b, &["mount /data"]);
}

#[test]
fn a_missing_bind_source_is_named() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": "/definitely/not/here",
            "options": ["rbind", "ro"]
        }));
    });
    assert_create_fails(
        &b,
        &["mount /data", "/definitely/not/here", "does not exist"],
    );
}

#[test]
fn a_mount_point_the_container_cannot_create_is_named() {
    let b = Bundle::new(&["true"]);
    // The rootfs belongs to host root; container root (an unprivileged host uid) cannot
    // create /newdir in it.
    b.edit(|s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "destination": "/newdir", "type": "tmpfs", "source": "tmpfs" }));
    });
    assert_create_fails(
        &b,
        &["mount /newdir", "create mount point", "permission denied"],
    );
}

#[test]
fn an_unwritable_limit_fails_create() {
    let b = Bundle::new(&["true"]);
    // A cpuset the machine does not have cannot be applied: create must fail, naming it.
    b.edit(|s| s["linux"]["resources"]["cpu"] = json!({ "cpus": "999" }));
    assert_create_fails(&b, &["cpuset"]);
}

#[test]
fn id_maps_without_a_user_namespace_are_refused() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "user");
    });
    assert_create_fails(&b, &["uidMappings", "no user namespace"]);
}

#[test]
fn a_terminal_without_support_is_refused() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["process"]["terminal"] = json!(true));
    assert_create_fails(&b, &["process.terminal"]);
}

#[test]
fn unknown_containers_and_signals_are_named() {
    let b = Bundle::new(&["true"]);
    for args in [
        vec!["state", "nope-1"],
        vec!["start", "nope-1"],
        vec!["kill", "nope-1", "TERM"],
        vec!["delete", "nope-1"],
    ] {
        let out = b.runtime(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("container nope-1 does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let id = unique_id("sig");
    assert!(b.create(&id).status.success());
    let out = b.runtime(&["kill", &id, "SIGBOGUS"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown signal"), "{}", stderr(&out));
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn spec_writes_a_default_config_and_refuses_to_overwrite() {
    let b = Bundle::new(&["true"]);
    let out = b.runtime(&["spec", "--bundle", b.path().to_str().unwrap()]);
    assert!(!out.status.success(), "spec overwrote config.json");
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let spec = b.config();
    let types: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    for t in ["pid", "network", "ipc", "uts", "mount", "cgroup", "user"] {
        assert!(types.contains(&t), "default spec lacks {t} namespace");
    }
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["process"]["terminal"], false);
}

#[test]
fn fields_that_would_weaken_isolation_if_ignored_are_refused() {
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["intelRdt"] = json!({ "closID": "x" }));
    assert_create_fails(&b, &["linux.intelRdt", "not supported"]);
    let b = Bundle::new(&["true"]);
    b.edit(|s| s["linux"]["personality"] = json!({ "domain": "LINUX32" }));
    assert_create_fails(&b, &["linux.personality", "not supported"]);
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["linux"]["seccomp"]["syscalls"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "names": ["getpid"], "action": "SCMP_ACT_NOTIFY" }));
    });
    assert_create_fails(&b, &["SCMP_ACT_NOTIFY"]);
}

#[test]
fn masked_paths_need_a_real_procfs() {
    // CVE-2019-16884: with no procfs at /proc, /proc/self/fd cannot be trusted.
    let b = Bundle::new(&["true"]);
    b.edit(|s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/proc");
    });
    assert_create_fails(&b, &["/proc", "procfs"]);
}

#[test]
fn features_describe_what_is_implemented() {
    let b = Bundle::new(&["true"]);
    let out = b.runtime(&["features"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ns: Vec<&str> = f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ns.contains(&"user") && !ns.contains(&"time"), "{ns:?}");
    assert!(f["linux"]["cgroup"]["v1"] == true && f["linux"]["cgroup"]["v2"] == true);
    let actions = f["linux"]["seccomp"]["actions"].as_array().unwrap();
    assert!(
        !actions.iter().any(|a| a == "SCMP_ACT_NOTIFY"),
        "NOTIFY is refused, not supported"
    );
    assert_eq!(
        f["linux"]["seccomp"]["operators"].as_array().unwrap().len(),
        7
    );
    assert_eq!(f["hooks"].as_array().unwrap().len(), 6);
}
