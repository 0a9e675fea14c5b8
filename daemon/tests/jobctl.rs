//! The real `jobctl` binary against the real `jobd` (root only for the server tests): exit
//! statuses, uploads, JSON listing, roles, and flag values refused before connecting.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, job_init};

fn jobctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jobctl"))
}

struct Jobd {
    child: Child,
}

impl Drop for Jobd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_jobd(dir: &Path, port: u16) -> Jobd {
    let log = std::fs::File::create(dir.join("jobd.log")).unwrap();
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
    Jobd { child }
}

struct Env {
    home: PathBuf,
    server: String,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = jobctl();
        c.env("HOME", &self.home)
            .env("JOBCTL_SERVER", &self.server)
            .env_remove("JOBCTL_TLS_DIR")
            .args(args)
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run jobctl")
    }
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bad_flag_values_are_refused_before_connecting() {
    // Port 1 on loopback: nothing listens, and nothing is reached anyway.
    for (flag, value) in [
        ("--memory", "128X"),
        ("--memory", "-1"),
        ("-m", "0"),
        ("--memory", "1.5.0"),
        ("--cpus", "0"),
        ("--cpus", "1.5.0"),
        ("--pids", "-1"),
        ("--io-read-bps", "10Q"),
        ("--timeout", "0"),
    ] {
        let o = jobctl()
            .args(["--server", "127.0.0.1:1", "--tls-dir", "/nonexistent"])
            .args(["run", &format!("{flag}={value}"), "--", "true"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("expected"), "{flag} {value}: {err}");
        assert!(
            !err.contains("127.0.0.1:1") && !err.contains("nonexistent"),
            "{err}"
        );
    }
}

#[test]
fn no_server_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let o = jobctl()
        .args(["--server", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-dir", tmp.path().to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ca.pem"),
        "{}",
        show(&o)
    );
}

#[test]
fn jobctl_against_real_jobd() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path();
    let port = free_port();
    let _jobd = spawn_jobd(dir, port);
    let env = Env {
        home: dir.join("home"),
        server: format!("127.0.0.1:{port}"),
    };
    // Up: the zero-config identity is written and the rootfs built.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let o = env.run(&["list"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobd did not come up: {}\nlog: {}",
            show(&o),
            std::fs::read_to_string(dir.join("jobd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Exit codes pass through; stdout and stderr stay apart.
    let o = env.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert_eq!(o.stdout, b"out\n", "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("err\n"),
        "{}",
        show(&o)
    );
    let o = env.run(&["run", "--", "sh", "-c", "sleep 100 & kill -9 $!; wait $!"]);
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
    // Not found: 127 with the reason.
    let o = env.run(&["run", "--", "surely-not-a-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        show(&o)
    );

    // python3 x.py from a directory holding x.py: the file is uploaded and run.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("x.py"),
        "import sys\nprint('hello from x.py', sys.argv[1:])\n",
    )
    .unwrap();
    let o = env
        .cmd(&["run", "--memory", "128M", "--", "python3", "x.py", "a"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from x.py ['a']\n"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uploaded x.py"),
        "{}",
        show(&o)
    );
    // --no-upload: python cannot open it.
    let o = env
        .cmd(&["run", "--no-upload", "--", "python3", "x.py"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));

    // A memory hog at 32M is OOM-killed: 137, and said so.
    let o = env.run(&[
        "run",
        "--memory",
        "32M",
        "--",
        "python3",
        "-c",
        "b = b'a' * (256 << 20)",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("OOM"),
        "{}",
        show(&o)
    );

    // -d prints the id; status, logs, stop and list work with a prefix of it.
    let o = env.run(&["run", "-d", "--", "sh", "-c", "echo hi; sleep 100"]);
    assert!(o.status.success(), "{}", show(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let prefix = &id[..8];
    let o = env.run(&["status", prefix, "-o", "json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = env.run(&["logs", prefix]);
        if o.stdout == b"hi\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", show(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = env.run(&["list", "-o", "json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().any(|j| j["id"] == id.as_str()),
        "{v}"
    );

    let o = env.run(&["stats", prefix]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("live:      true"),
        "{}",
        show(&o)
    );

    // A viewer may look but not run or stop, and is told why.
    let viewer = dir.join("viewer");
    let st = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .args(["certs", "issue", "--dir"])
        .arg(dir.join("data/tls"))
        .args(["--name", "vera", "--role", "viewer", "--out"])
        .arg(&viewer)
        .status()
        .unwrap();
    assert!(st.success());
    let as_viewer = |args: &[&str]| {
        env.cmd(args)
            .env("JOBCTL_TLS_DIR", &viewer)
            .output()
            .unwrap()
    };
    let o = as_viewer(&["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        show(&o)
    );
    let o = as_viewer(&["stop", &id]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        show(&o)
    );
    assert!(as_viewer(&["status", &id]).status.success());

    // TLS failures say what to check: another CA's server view, another CA's client.
    let jobd_bin = env!("CARGO_BIN_EXE_jobd");
    let other = dir.join("other");
    assert!(Command::new(jobd_bin)
        .args(["certs", "init", "--dir"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    assert!(Command::new(jobd_bin)
        .args(["certs", "issue", "--dir"])
        .arg(&other)
        .args(["--name", "mallory", "--role", "admin", "--out"])
        .arg(dir.join("otherid"))
        .status()
        .unwrap()
        .success());
    let o = env
        .cmd(&["list", "--ca"])
        .arg(other.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not signed by the CA"),
        "{}",
        show(&o)
    );
    let o = env
        .cmd(&["list", "--cert"])
        .arg(dir.join("otherid/client.pem"))
        .arg("--key")
        .arg(dir.join("otherid/client.key"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("client certificate"),
        "{}",
        show(&o)
    );

    // An expired client certificate.
    let ca = daemon::certs::Ca::load(&dir.join("data/tls")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = ca
        .issue_valid(
            &daemon::certs::Purpose::Client {
                name: "old".into(),
                role: "admin".into(),
            },
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    daemon::certs::write_identity(&dir.join("expired"), &ca.cert_pem, &old).unwrap();
    let o = env
        .cmd(&["list"])
        .env("JOBCTL_TLS_DIR", dir.join("expired"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expired"),
        "{}",
        show(&o)
    );

    // Ctrl-C stops the job: its TERM handler runs, jobctl reports the stop.
    {
        use std::io::Read;
        let mut child = env
            .cmd(&[
                "run",
                "--",
                "sh",
                "-c",
                "trap 'echo term; exit 7' TERM; echo go; while :; do sleep 0.1; done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 3];
        out.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"go\n");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(143), "{}", show(&o));
        assert_eq!(rest, b"term\n", "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("stopping job") && err.contains("job stopped"),
            "{err}"
        );
    }

    // Nothing listening there.
    let o = env
        .cmd(&["list", "--server", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is jobd running"),
        "{}",
        show(&o)
    );

    // logs -f from two clients at once: both see everything until the end.
    let o = env.run(&[
        "start",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo $i; sleep 0.3; done",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let fid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let a = env
        .cmd(&["logs", "-f", &fid])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .cmd(&["logs", "-f", &fid[..10]])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(o.stdout, b"1\n2\n3\n", "{}", show(&o));
    }

    // The owner stops it.
    let o = env.run(&["stop", prefix, "--timeout", "1s", "-o", "json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "stopped", "{v}");

    // stats and watch of it, now final: json parses, watch ends at once.
    let o = env.run(&["stats", prefix, "-o", "json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["live"], false, "{v}");
    let o = env.run(&["watch", prefix]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("stopped"),
        "{}",
        show(&o)
    );
}
