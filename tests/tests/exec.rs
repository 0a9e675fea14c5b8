//! `job-runtime exec`: an extra process inside a running container, in all its namespaces
//! and its cgroup, with the user and settings asked for.

use std::fs;
use std::process::Stdio;

use serde_json::json;
use tests::{stderr, stdout, unique_id, Bundle};

fn running(args: &[&str]) -> (Bundle, String) {
    let b = Bundle::new(args);
    let id = unique_id("exec");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.runtime(&["start", &id]).status.success());
    b.wait_status(&id, "running");
    (b, id)
}

fn host_cgroup(pid: i64) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

#[test]
fn exec_joins_the_containers_namespaces_and_cgroup() {
    let (b, id) = running(&["sleep", "60"]);
    let init = b.state(&id).unwrap()["pid"].as_i64().unwrap();
    let out = b.runtime(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; ps -o pid,args | grep -c '^ *1 sleep 60'; readlink /proc/self/ns/net; readlink /proc/self/ns/mnt",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "job", "{text}");
    assert_eq!(lines[1], "1", "the container's init is not visible: {text}");
    let net = fs::read_link(format!("/proc/{init}/ns/net")).unwrap();
    let mnt = fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
    assert_eq!(lines[2], net.to_str().unwrap());
    assert_eq!(lines[3], mnt.to_str().unwrap());

    // A detached exec stays in the container's cgroup, as the host sees it.
    let pid_file = b.dir.path().join("exec.pid");
    // Null stdio: a pipe would stay open, held by the detached process.
    let status = b
        .command(&[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sleep",
            "50",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: i64 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(host_cgroup(pid), host_cgroup(init));
    let ps = b.runtime(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(pids.contains(&pid), "{pids:?}");

    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn exec_passes_exit_codes_and_names_missing_programs() {
    let (b, id) = running(&["sleep", "60"]);
    assert_eq!(
        b.runtime(&["exec", &id, "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    let out = b.runtime(&["exec", &id, "python4"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("executable \"python4\" not found in PATH"),
        "{}",
        stderr(&out)
    );
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn exec_with_a_process_file_applies_its_user_and_env() {
    let (b, id) = running(&["sleep", "60"]);
    let process = json!({
        "terminal": false,
        "user": { "uid": 1000, "gid": 1000 },
        "args": ["sh", "-c", "id -u; echo $GREETING; pwd"],
        "env": ["PATH=/bin", "GREETING=hello-exec"],
        "cwd": "/tmp",
        "noNewPrivileges": true
    });
    let file = b.dir.path().join("process.json");
    fs::write(&file, serde_json::to_vec(&process).unwrap()).unwrap();
    let out = b.runtime(&["exec", "--process", file.to_str().unwrap(), &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["1000", "hello-exec", "/tmp"]
    );
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn exec_in_a_stopped_container_fails() {
    let (b, id) = running(&["sleep", "60"]);
    assert!(b.runtime(&["kill", &id, "KILL"]).status.success());
    b.wait_status(&id, "stopped");
    let out = b.runtime(&["exec", &id, "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    assert!(b.runtime(&["delete", &id]).status.success());
    b.assert_clean(&id);
}
