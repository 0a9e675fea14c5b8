//! The real `jobd` binary as a separate process (root only): zero-config certificates, the
//! default rootfs from rootfs-builder, a python3 job with an uploaded script, and `kill -9` of
//! the daemon (and of jobs' shims) followed by restarts on the same data directory: running jobs
//! are re-adopted and followed to their end, with every byte of their output.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{busybox_rootfs, free_port, job_init, leftovers, pids_with_cmdline, CleanJobs};

use proto::job_service_client::JobServiceClient;
use proto::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Jobd {
    child: Child,
    addr: String,
}

impl Drop for Jobd {
    /// A failing test must not leave a daemon behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// jobd in the test's own session (as when started from a shell).
fn spawn_jobd(dir: &Path, port: u16) -> Jobd {
    spawn(dir, port, &[], false)
}

/// jobd leading a session of its own, as systemd starts it.
fn spawn_jobd_with(dir: &Path, port: u16, extra: &[&str]) -> Jobd {
    spawn(dir, port, extra, true)
}

fn spawn(dir: &Path, port: u16, extra: &[&str], own_session: bool) -> Jobd {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("jobd.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobd"));
    cmd.args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("HOME", dir.join("home"))
        .env("JOB_RUNTIME_INIT", job_init())
        .env("JOBD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if own_session {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and makes one syscall.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().expect("spawn jobd");
    Jobd {
        child,
        addr: format!("https://127.0.0.1:{port}"),
    }
}

async fn connect(j: &Jobd, dir: &Path) -> JobServiceClient<Channel> {
    // The zero-config admin identity, where jobctl looks for it ($HOME/.config/jobctl).
    let id_dir = dir.join("home/.config/jobctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if id_dir.join("ca.pem").exists() {
            let read = |n: &str| std::fs::read_to_string(id_dir.join(n)).unwrap();
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(Identity::from_pem(read("client.pem"), read("client.key")))
                .domain_name("localhost");
            let ep = Endpoint::from_shared(j.addr.clone())
                .unwrap()
                .tls_config(tls)
                .unwrap();
            if let Ok(ch) = ep.connect().await {
                return JobServiceClient::new(ch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "jobd did not come up: see {}",
            dir.join("jobd.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(c: &mut JobServiceClient<Channel>, spec: JobSpec) -> Job {
    c.start_job(StartJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn get(c: &mut JobServiceClient<Channel>, id: &str) -> Job {
    c.get_job(GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn all_output(c: &mut JobServiceClient<Channel>, id: &str, follow: bool) -> Vec<u8> {
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: id.into(),
            offset: 0,
            no_follow: !follow,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(ch) = tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .unwrap()
        .unwrap()
    {
        out.extend_from_slice(&ch.data);
    }
    out
}

fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

fn sh(script: &str) -> JobSpec {
    JobSpec {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobd_zero_config_python_and_kill9_restart() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path();
    let port = free_port();
    let own_group = group_of(std::process::id() as i32);
    let mut jobd = spawn_jobd(dir, port);
    let mut c = connect(&jobd, dir).await;
    // A jobd that does not lead its session leaves the session's group (ours) as it was.
    if daemon::priority::autogroup_enabled() {
        assert_eq!(group_of(jobd.child.id() as i32), own_group);
        assert_eq!(group_of(std::process::id() as i32), own_group);
    }

    // python3 from the default rootfs runs an uploaded x.py in the job's working directory.
    let mut py = JobSpec {
        command: "python3".into(),
        args: vec!["x.py".into()],
        ..Default::default()
    };
    py.input_tar = tar_of(
        "x.py",
        b"import sys\nprint('hello from', sys.version_info[0])\n",
    );
    py.limits = Some(Limits {
        memory_bytes: 128 << 20,
        ..Default::default()
    });
    let j = start(&mut c, py).await;
    let out = all_output(&mut c, &j.id, true).await;
    let done = get(&mut c, &j.id).await;
    assert_eq!(String::from_utf8_lossy(&out), "hello from 3\n", "{done:?}");
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Exited as i32, Some(0))
    );

    // A running job, then kill -9 of the daemon.
    let running = start(&mut c, sh("echo started; sleep 1000")).await;
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: running.id.clone(),
            offset: 0,
            no_follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().data, b"started\n");
    let cg_marker = format!("/jobd/{}", running.id);
    let job_pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&cg_marker))
        })
        .collect();
    assert!(!job_pids.is_empty(), "no process found in the job's cgroup");
    jobd.child.kill().unwrap(); // SIGKILL
    jobd.child.wait().unwrap();
    drop(c);

    let mut jobd = spawn_jobd(dir, port);
    let mut c = connect(&jobd, dir).await;
    let again = get(&mut c, &j.id).await;
    assert_eq!(again, done, "a finished job's record survives kill -9");
    assert_eq!(all_output(&mut c, &j.id, true).await, out, "and its output");
    // The running job was re-adopted (its shim held it); stopping it works as before.
    let r = get(&mut c, &running.id).await;
    assert_eq!(r.state, JobState::Running as i32, "{r:?}");
    assert_eq!(all_output(&mut c, &running.id, false).await, b"started\n");
    let stopped = c
        .stop_job(StopJobRequest {
            job_id: running.id.clone(),
            grace_period_ms: 200,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(stopped.state, JobState::Stopped as i32, "{stopped:?}");
    // (sh may add "Terminated" for its sleep.)
    assert!(all_output(&mut c, &running.id, true)
        .await
        .starts_with(b"started\n"));
    // Nothing of it is left: processes, cgroup, overlay mount.
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in &job_pids {
        while Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&cg_marker))
        {
            assert!(
                Instant::now() < deadline,
                "pid {pid} of the stopped job survived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&running.id),
        "overlay of the stopped job still mounted"
    );

    // SIGTERM: orderly exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jobd.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = jobd.child.wait().unwrap();
    assert!(st.success(), "jobd exit status {st}");
}

async fn wait_final(c: &mut JobServiceClient<Channel>, id: &str) -> Job {
    let mut w = c
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(60), w.message())
        .await
        .expect("watch timed out")
        .unwrap()
    {
        last = ev.job;
    }
    match last {
        Some(j) => j,
        None => get(c, id).await,
    }
}

/// Field 4 of /proc/PID/stat: the parent's pid.
fn parent_of(pid: i32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = text.rsplit_once(')').unwrap().1;
    after_comm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// A process's autogroup line, `/autogroup-N nice M`.
fn group_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/autogroup")).unwrap_or_default()
}

fn group_nice(pid: i32) -> Option<i32> {
    daemon::priority::group_nice(Path::new(&format!("/proc/{pid}/autogroup")))
}

/// Field 19 of a /proc stat file: the nice value.
fn nice_of(stat: &Path) -> i32 {
    let text = std::fs::read_to_string(stat).unwrap();
    let after_comm = text.rsplit_once(')').unwrap().1;
    after_comm
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits (bounded) until nothing of `id` is left on the host.
async fn assert_cleaned(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(id);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows a job's output until it contains `needle`; returns the open stream.
async fn output_until(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    needle: &[u8],
) -> tonic::Streaming<OutputChunk> {
    let mut s = c
        .stream_output(StreamOutputRequest {
            job_id: id.into(),
            offset: 0,
            no_follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while !got.windows(needle.len()).any(|w| w == needle) {
        let ch = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("output timed out")
            .unwrap()
            .expect("output ended early");
        got.extend_from_slice(&ch.data);
    }
    s
}

fn shim_of(id: &str) -> i32 {
    let pids = pids_with_cmdline(&["jobd-shim", id]);
    assert_eq!(pids.len(), 1, "shims of {id}: {pids:?}");
    pids[0]
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// kill -9 of jobd (and of one job's shim) while jobs run and write; graceful `leave`
/// shutdowns; restarts re-adopt what can be, finalise what ended meanwhile and clean the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_leave_restarts_readopt_running_jobs() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path();
    let rootfs = busybox_rootfs(dir).expect("busybox for the test rootfs");
    let config = dir.join("jobd.toml");
    std::fs::write(
        &config,
        format!(
            "rootfs = \"{}\"\nshutdown_policy = \"leave\"\ngrace_period_ms = 500\n",
            rootfs.display()
        ),
    )
    .unwrap();
    let cfg = ["--config", config.to_str().unwrap()];
    let port = free_port();
    let mut jobd = spawn_jobd_with(dir, port, &cfg);
    let mut c = connect(&jobd, dir).await;

    // A writes a line every 50 ms for 2 s, also while jobd is down, then exits 3.
    let writer = start(
        &mut c,
        sh("i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done; exit 3"),
    )
    .await;
    // B would sleep for ever; its 2.5 s timeout must still fire after the restart.
    let mut timed = sh("echo b; sleep 1000");
    timed.timeout_ms = 2500;
    let timed = start(&mut c, timed).await;
    // C loses its shim together with jobd; D loses its shim while jobd runs.
    let orphan = start(&mut c, sh("echo c; sleep 1000")).await;
    let lost = start(&mut c, sh("echo d; sleep 1000")).await;
    // Declared after jobd, so dropped (on a panic too) before it.
    let mut cleanup = CleanJobs::default();
    for j in [&writer, &timed, &orphan, &lost] {
        cleanup.0.push(j.id.clone());
        assert_eq!(j.state, JobState::Running as i32, "{j:?}");
    }
    let s = output_until(&mut c, &writer.id, b"line 0\n").await;

    // The shim inherited nothing of jobd: stdio on /dev/null, no socket, not the database.
    let shim = shim_of(&timed.id);
    for fd in std::fs::read_dir(format!("/proc/{shim}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap();
        let (n, t) = (fd.file_name(), target.to_string_lossy().into_owned());
        assert!(
            !t.starts_with("socket:") && !t.contains("jobs.db"),
            "shim fd {n:?} -> {t}"
        );
        if ["0", "1", "2"].contains(&n.to_str().unwrap()) {
            assert_eq!(t, "/dev/null", "shim fd {n:?}");
        }
    }
    // jobd serves at its configured nice value (default 19) and every thread of it does; the
    // shim and the job run at 0, ahead of jobd's work for clients.
    let jobd_pid = jobd.child.id();
    for t in std::fs::read_dir(format!("/proc/{jobd_pid}/task"))
        .unwrap()
        .flatten()
    {
        assert_eq!(nice_of(&t.path().join("stat")), 19, "jobd thread {t:?}");
    }
    assert_eq!(nice_of(Path::new(&format!("/proc/{shim}/stat"))), 0);
    // Where the kernel groups threads by session (autogroup), jobd leads its own session here
    // (as under systemd), so its group takes the nice value too; each shim leads one of its
    // own at 0. Otherwise jobd's clients would compete with the jobs as equals.
    if daemon::priority::autogroup_enabled() {
        assert_eq!(
            group_nice(jobd_pid as i32),
            Some(19),
            "jobd's session group"
        );
        assert_eq!(group_nice(shim), Some(0), "the shim's session group");
        assert_ne!(group_of(shim), group_of(jobd_pid as i32));
    }
    let niced = start(
        &mut c,
        sh("read -r s < /proc/self/stat; set -- $s; echo nice=${19}"),
    )
    .await;
    cleanup.0.push(niced.id.clone());
    assert_eq!(all_output(&mut c, &niced.id, true).await, b"nice=0\n");

    // Shims are forked by jobd's shim fork server (jobd's child), each named for its job.
    let server = parent_of(shim);
    assert_eq!(
        parent_of(server),
        jobd_pid as i32,
        "the fork server is jobd's child"
    );
    let title = std::fs::read(format!("/proc/{shim}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&title).starts_with(&format!("jobd-shim\0job\0{}\0", timed.id)),
        "{title:?}"
    );
    // The job inherits no descriptor of jobd, the server or its shim: only stdio (and the
    // one `ls` opens to list the directory).
    let fds = start(&mut c, sh("ls /proc/self/fd")).await;
    cleanup.0.push(fds.id.clone());
    assert_eq!(all_output(&mut c, &fds.id, true).await, b"0\n1\n2\n3\n");
    // A fork server that dies is replaced; the jobs its shims hold run on.
    kill9(server);
    // Once it has exited (a zombie, or reaped by jobd) its socket is closed, so jobd learns it
    // is gone when sending; a request that reaches a server as it dies fails that one start
    // (a shim may have been forked), which is not what this part tests.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{server}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    }) {
        assert!(
            Instant::now() < deadline,
            "the killed server {server} still runs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = start(&mut c, sh("echo again")).await;
    cleanup.0.push(again.id.clone());
    assert_eq!(all_output(&mut c, &again.id, true).await, b"again\n");
    assert_eq!(
        parent_of(shim_of(&writer.id)),
        jobd_pid as i32,
        "the dead server's shims are adopted by jobd, the child subreaper"
    );
    let servers: Vec<i32> = pids_with_cmdline(&["jobd-shim", "--serve"])
        .into_iter()
        .filter(|p| parent_of(*p) == jobd_pid as i32)
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], server);

    kill9(shim_of(&lost.id));
    let d = wait_final(&mut c, &lost.id).await;
    assert_eq!(d.state, JobState::Failed as i32, "{d:?}");
    assert!(
        d.failure_reason.contains("shim") && d.failure_reason.contains("without recording"),
        "{}",
        d.failure_reason
    );
    assert_cleaned(&lost.id).await;

    // E ends while no jobd runs: its record keeps the times its shim saw.
    let quick = start(&mut c, sh("echo q; sleep 0.3; exit 2")).await;
    cleanup.0.push(quick.id.clone());
    drop(output_until(&mut c, &quick.id, b"q\n").await);
    // F ignores SIGTERM and is being stopped (1.5 s grace) when jobd dies: the next jobd must
    // finish the stop, SIGKILL when the grace period ends.
    let stubborn = start(&mut c, sh("trap '' TERM; echo f; sleep 1000")).await;
    cleanup.0.push(stubborn.id.clone());
    drop(output_until(&mut c, &stubborn.id, b"f\n").await);
    let stop_asked_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stopping = {
        let (mut c, id) = (c.clone(), stubborn.id.clone());
        tokio::spawn(async move {
            let _ = c
                .stop_job(StopJobRequest {
                    job_id: id,
                    grace_period_ms: 1500,
                })
                .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let orphan_shim = shim_of(&orphan.id);
    jobd.child.kill().unwrap(); // SIGKILL
    jobd.child.wait().unwrap();
    kill9(orphan_shim);
    drop((c, s));
    // The writer keeps writing while no jobd runs.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut jobd = spawn_jobd_with(dir, port, &cfg);
    let mut c = connect(&jobd, dir).await;
    let out = all_output(&mut c, &writer.id, true).await;
    let want: String = (0..40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out),
        want,
        "every byte, written before, during and after the restart"
    );
    let a = wait_final(&mut c, &writer.id).await;
    assert_eq!(
        (a.state, a.exit_code),
        (JobState::Exited as i32, Some(3)),
        "{a:?}"
    );
    assert_eq!(a.output_bytes, want.len() as u64);

    let _ = stopping.await;
    let f = wait_final(&mut c, &stubborn.id).await;
    assert_eq!(f.state, JobState::Stopped as i32, "{f:?}");
    assert_eq!(f.failure_reason, "stopped by request", "{f:?}");
    assert_eq!(f.signal, Some(9), "{f:?}");
    let after = f.ended_at_ms - stop_asked_ms;
    assert!(
        (1400..6000).contains(&after),
        "SIGKILL {after} ms after the stop with a 1.5 s grace period"
    );
    assert_cleaned(&stubborn.id).await;

    let q = wait_final(&mut c, &quick.id).await;
    assert_eq!(
        (q.state, q.exit_code),
        (JobState::Exited as i32, Some(2)),
        "{q:?}"
    );
    let ran = q.ended_at_ms - q.started_at_ms;
    assert!(
        q.ended_at_ms < restarted_ms && (300..700).contains(&ran),
        "ended at {} (jobd restarted at {restarted_ms}), ran {ran} ms",
        q.ended_at_ms
    );
    assert_cleaned(&quick.id).await;

    let b = wait_final(&mut c, &timed.id).await;
    assert_eq!(b.state, JobState::Stopped as i32, "{b:?}");
    assert!(b.failure_reason.contains("timeout"), "{}", b.failure_reason);
    assert!(b.ended_at_ms - b.started_at_ms >= 2500, "{b:?}");

    let o = get(&mut c, &orphan.id).await;
    assert_eq!(o.state, JobState::Failed as i32, "{o:?}");
    assert!(
        o.failure_reason.contains("jobd restarted") && o.failure_reason.contains("shim was gone"),
        "{}",
        o.failure_reason
    );
    assert_eq!(all_output(&mut c, &orphan.id, true).await, b"c\n");
    for id in [&writer.id, &timed.id, &orphan.id] {
        assert_cleaned(id).await;
    }

    // Graceful shutdown with shutdown_policy = "leave": the job runs on, the next jobd
    // re-adopts it and sees it to its end.
    let left = start(&mut c, sh("echo e1; sleep 1; echo e2; exit 5")).await;
    cleanup.0.push(left.id.clone());
    let s = output_until(&mut c, &left.id, b"e1\n").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jobd.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(jobd.child.wait().unwrap().success());
    drop((c, s));
    assert_eq!(
        pids_with_cmdline(&["jobd-shim", &left.id]).len(),
        1,
        "the shim holds the job"
    );
    let jobd = spawn_jobd_with(dir, port, &cfg);
    let mut c = connect(&jobd, dir).await;
    assert_eq!(all_output(&mut c, &left.id, true).await, b"e1\ne2\n");
    let e = wait_final(&mut c, &left.id).await;
    assert_eq!(
        (e.state, e.exit_code),
        (JobState::Exited as i32, Some(5)),
        "{e:?}"
    );
    assert_cleaned(&left.id).await;
}
