//! The runtime-spec lifecycle through the `job-runtime` CLI: every rule and its failure cases.

use std::fs;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{cgroup_dirs, process_alive, stderr, stdout, unique_id, Bundle};

#[test]
fn create_start_state_kill_delete_follow_the_spec() {
    let b = Bundle::new(&["sleep", "60"]);
    let id = unique_id("life");
    let pid_file = b.dir.path().join("pid");
    let bundle = b.path();
    let out = b.create_with(&id, &["--pid-file", pid_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let state = b.state(&id).expect("state of a created container");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["bundle"], bundle.to_str().unwrap());
    assert!(state["annotations"].is_object());
    let pid = state["pid"].as_i64().unwrap() as i32;
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // Created: job-init waits; the user's process has not been executed yet.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(
        comm.trim(),
        "job-init",
        "the user process must not start before `start`"
    );
    assert!(
        !cgroup_dirs(&id).is_empty(),
        "the cgroup exists from create on"
    );

    // delete refuses a created container and changes nothing.
    let out = b.runtime(&["delete", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("created"), "{}", stderr(&out));
    assert_eq!(b.status(&id), "created");

    let out = b.runtime(&["start", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.wait_status(&id, "running");
    let start = Instant::now();
    while fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        != "sleep"
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "start did not exec the job"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // start only works once.
    let out = b.runtime(&["start", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not created"), "{}", stderr(&out));

    // delete refuses a running container and changes nothing.
    let out = b.runtime(&["delete", &id]);
    assert!(!out.status.success());
    assert_eq!(b.status(&id), "running");
    assert!(process_alive(pid));

    // PID 1 of a pid namespace ignores TERM without a handler; KILL always lands.
    let out = b.runtime(&["kill", &id, "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.wait_status(&id, "stopped");
    assert_eq!(b.state(&id).unwrap()["pid"], 0);

    // kill of a stopped container fails and changes nothing.
    let out = b.runtime(&["kill", &id, "9"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    assert_eq!(b.status(&id), "stopped");

    let out = b.runtime(&["delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        b.state(&id).is_none(),
        "state of a deleted container must fail"
    );
    b.assert_clean(&id);
}

#[test]
fn duplicate_and_malformed_ids_are_refused() {
    let b = Bundle::new(&["sleep", "60"]);
    let id = unique_id("dup");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.create(&id);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(
        b.status(&id),
        "created",
        "a failed duplicate must not touch the original"
    );

    let long = "x".repeat(1025);
    for bad in ["a/b", "..", ".", "", long.as_str(), "../escape"] {
        let out = b.create(bad);
        assert!(!out.status.success(), "id {bad:?} accepted");
        assert!(
            stderr(&out).contains("invalid container id"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    let out = b.runtime(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_clean(&id);
}

#[test]
fn editing_config_after_create_changes_nothing() {
    let b = Bundle::new(&["hostname"]);
    b.edit(|s| s["hostname"] = json!("before"));
    let id = unique_id("frozen");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    b.edit(|s| {
        s["hostname"] = json!("after");
        s["process"]["args"] = json!(["false"]);
    });
    let out = b.runtime(&["start", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.wait_status(&id, "stopped");
    assert_eq!(b.container_stdout(&id).trim(), "before");
    let out = b.runtime(&["delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_clean(&id);
}

#[test]
fn run_passes_exit_codes_through() {
    let b = Bundle::new(&["sh", "-c", "exit 3"]);
    let id = unique_id("code");
    let out = b.run(&id);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    b.assert_clean(&id);

    b.edit(|s| s["process"]["args"] = json!(["true"]));
    let id = unique_id("code");
    assert_eq!(b.run(&id).status.code(), Some(0));
    b.assert_clean(&id);
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n() {
    let b = Bundle::new(&["sleep", "60"]);
    let id = unique_id("sig");
    let bundle = b.path();
    let mut child = b
        .command(&["run", "-b", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_status(&id, "running");
    let out = b.runtime(&["kill", &id, "SIGKILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    b.assert_clean(&id);
}

#[test]
fn run_forwards_signals_to_the_job() {
    // A job with a TERM handler: `run` must pass the TERM it receives on to the job.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; while :; do sleep 0.1; done",
    ]);
    let id = unique_id("fwd");
    let bundle = b.path();
    let child = b
        .command(&["run", "-b", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_status(&id, "running");
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stdout(&out).contains("got-term"));
    b.assert_clean(&id);
}

#[test]
fn kill_all_and_force_delete_reach_every_descendant() {
    let b = Bundle::new(&["sh", "-c", "sleep 100 & sleep 100 & (sleep 100 &) ; wait"]);
    let id = unique_id("tree");
    let out = b.create(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.runtime(&["start", &id]).status.success());
    let start = Instant::now();
    let pids = loop {
        let out = b.runtime(&["ps", "--format", "json", &id]);
        let pids: Vec<i32> = serde_json::from_slice(&out.stdout).unwrap();
        if pids.len() >= 4 || start.elapsed() > Duration::from_secs(5) {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pids.len() >= 4, "expected sh and three sleeps: {pids:?}");
    let out = b.runtime(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived delete --force");
    }
    b.assert_clean(&id);
}

#[test]
fn kill_all_signals_every_process() {
    let b = Bundle::new(&["sh", "-c", "sleep 100 & sleep 100 & wait"]);
    let id = unique_id("killall");
    assert!(b.create(&id).status.success());
    assert!(b.runtime(&["start", &id]).status.success());
    std::thread::sleep(Duration::from_millis(300));
    let out = b.runtime(&["kill", "--all", &id, "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.wait_status(&id, "stopped");
    let out = b.runtime(&["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(pids.iter().all(|p| !process_alive(*p)), "{pids:?}");
    assert!(b.runtime(&["delete", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn pause_and_resume_freeze_the_container() {
    let b = Bundle::new(&["sh", "-c", "while :; do :; done"]);
    let id = unique_id("pause");
    assert!(b.create(&id).status.success());
    assert!(
        !b.runtime(&["pause", &id]).status.success(),
        "pause of a created container must fail"
    );
    assert!(b.runtime(&["start", &id]).status.success());
    let out = b.runtime(&["pause", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status(&id), "paused");
    let pid = b.state(&id).unwrap()["pid"].as_i64().unwrap();
    let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = st[st.rfind(')').unwrap() + 2..].chars().next().unwrap();
    assert!(
        state == 'D' || state == 'S',
        "a frozen task sleeps, got {state}"
    );
    let out = b.runtime(&["resume", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.status(&id), "running");
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn list_shows_containers_as_table_and_json() {
    let b = Bundle::new(&["sleep", "60"]);
    let id = unique_id("list");
    assert!(b.create(&id).status.success());
    let out = b.runtime(&["list", "--format", "json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all
        .iter()
        .any(|c| c["id"] == id.as_str() && c["status"] == "created"));
    let out = b.runtime(&["list", "-q"]);
    assert_eq!(stdout(&out).trim(), id);
    let out = b.runtime(&["list"]);
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    assert!(b.runtime(&["delete", "--force", &id]).status.success());
    b.assert_clean(&id);
}

#[test]
fn only_stdio_and_preserved_fds_reach_the_job() {
    let b = Bundle::new(&["ls", "/proc/self/fd"]);
    let id = unique_id("fds");
    // An fd the runtime's caller leaked without close-on-exec.
    let leaked = fs::File::open("/etc/hostname").unwrap();
    let raw = leaked.as_raw_fd();
    nix::fcntl::fcntl(
        raw,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let out = b.run(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    let fds: Vec<String> = stdout(&out).split_whitespace().map(String::from).collect();
    // 0-2 and the one ls opened to read the directory.
    assert_eq!(fds, ["0", "1", "2", "3"], "leaked fds reached the job");

    // --preserve-fds 1 passes fd 3 on; nothing above it.
    let id = unique_id("fds");
    let bundle = b.path();
    let mut cmd = b.command(&[
        "run",
        "--preserve-fds",
        "1",
        "-b",
        bundle.to_str().unwrap(),
        &id,
    ]);
    let keep = fs::File::open("/etc/hostname").unwrap();
    let keep_fd = keep.as_raw_fd();
    // SAFETY (test): dup2 in the child before exec so the runtime sees the file as fd 3.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it explicitly.
            if libc::dup2(keep_fd, 3) != 3 || libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    b.edit(|s| s["process"]["args"] = json!(["sh", "-c", "ls /proc/self/fd; cat <&3"]));
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let hostname = fs::read_to_string("/etc/hostname").unwrap();
    assert!(text.contains(hostname.trim()), "fd 3 not passed on: {text}");
    drop(leaked);
    b.assert_clean(&id);
}

#[test]
fn namespaces_can_be_joined_by_path_and_the_type_is_checked() {
    let a = Bundle::new(&["sleep", "60"]);
    let ida = unique_id("nsa");
    assert!(a.create(&ida).status.success());
    let pid = a.state(&ida).unwrap()["pid"].as_i64().unwrap();
    let net = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();

    let b = Bundle::new(&["readlink", "/proc/self/ns/net"]);
    b.edit(|s| {
        // Joining another container's net namespace means joining its user namespace too,
        // and its pid namespace (a new one would belong to the host's user namespace).
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        for n in ns.iter_mut() {
            for (kind, file) in [("network", "net"), ("user", "user"), ("pid", "pid")] {
                if n["type"] == kind {
                    n["path"] = json!(format!("/proc/{pid}/ns/{file}"));
                }
            }
        }
        s["linux"].as_object_mut().unwrap().remove("uidMappings");
        s["linux"].as_object_mut().unwrap().remove("gidMappings");
    });
    let idb = unique_id("nsb");
    let out = b.run(&idb);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), net.to_str().unwrap());
    b.assert_clean(&idb);

    b.edit(|s| {
        for n in s["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(format!("/proc/{pid}/ns/uts"));
            }
        }
    });
    let idc = unique_id("nsc");
    let out = b.run(&idc);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a uts namespace, expected net"),
        "{}",
        stderr(&out)
    );
    b.assert_clean(&idc);

    assert!(a.runtime(&["delete", "--force", &ida]).status.success());
    a.assert_clean(&ida);
}

#[test]
fn json_log_lines_carry_the_error() {
    let b = Bundle::new(&["python4"]);
    let id = unique_id("log");
    let log = b.dir.path().join("log.json");
    let bundle = b.path();
    let out = b.runtime(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "-b",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("python4"), "{line}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    b.assert_clean(&id);
}

#[test]
fn force_delete_removes_cgroups_the_job_made_below_its_own() {
    // Without a user namespace and with a writable cgroup mount, the job can nest cgroups.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "d=/sys/fs/cgroup/pids; [ -d $d ] || d=/sys/fs/cgroup; \
         mkdir $d/sub && sh -c 'echo $$ > '$d'/sub/cgroup.procs; exec sleep 100' & sleep 100",
    ]);
    b.edit(|s| {
        tests::without_user_namespace(s);
        for m in s["mounts"].as_array_mut().unwrap() {
            if m["destination"] == "/sys/fs/cgroup" || m["destination"] == "/sys" {
                m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
            }
        }
    });
    let id = unique_id("nested");
    assert!(b.create(&id).status.success());
    assert!(b.runtime(&["start", &id]).status.success());
    let start = Instant::now();
    while !tests::cgroup_dirs(&id)
        .iter()
        .any(|d| d.join("sub").exists())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the job made no sub-cgroup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = b.runtime(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    b.assert_clean(&id);
}
