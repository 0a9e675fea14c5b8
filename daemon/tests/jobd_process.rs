//! The real `jobd` binary as a separate process (root only): zero-config certificates, the
//! default rootfs from rootfs-builder, a python3 job with an uploaded script, and `kill -9` of
//! the daemon followed by a restart on the same data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, job_init};

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

fn spawn_jobd(dir: &Path, port: u16) -> Jobd {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("jobd.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HOME", dir.join("home"))
        .env("JOB_RUNTIME_INIT", job_init())
        .env("JOBD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn jobd");
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
    let mut jobd = spawn_jobd(dir, port);
    let mut c = connect(&jobd, dir).await;

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
    let r = get(&mut c, &running.id).await;
    assert_eq!(r.state, JobState::Failed as i32, "{r:?}");
    assert!(
        r.failure_reason.contains("jobd restarted"),
        "{}",
        r.failure_reason
    );
    assert_eq!(all_output(&mut c, &running.id, true).await, b"started\n");
    // Nothing of it is left: processes, cgroup, overlay mount.
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in &job_pids {
        while Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&cg_marker))
        {
            assert!(
                Instant::now() < deadline,
                "pid {pid} of the stale job survived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&running.id),
        "overlay of the stale job still mounted"
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
