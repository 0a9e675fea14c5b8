//! rootfs-builder and job-runtime together: a minimal python3 rootfs built from this host
//! runs real Python inside a default (user-namespaced, read-only, seccomp) container.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use tests::{bin_dir, job_runtime, require_root, stderr, stdout, unique_id};

#[test]
fn a_python3_rootfs_from_this_host_runs_through_job_runtime() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("jobworker-rootfs-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    let builder = bin_dir().join("rootfs-builder");
    let out = Command::new(&builder)
        .args(["host", "--out"])
        .arg(&rootfs)
        .args(["sh", "python3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootfs-builder host: {}",
        stderr(&out)
    );
    let script = "import json, sqlite3, ssl, ctypes, hashlib; \
                  db = sqlite3.connect(':memory:'); \
                  print(json.dumps({'sum': db.execute('select 2+3').fetchone()[0], \
                  'sha': hashlib.sha256(b'job').hexdigest()[:8], 'ssl': ssl.OPENSSL_VERSION[:7]}))";
    let out = Command::new(&builder)
        .args(["bundle", "--rootfs"])
        .arg(&rootfs)
        .arg("--out")
        .arg(&bundle)
        .args(["--", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootfs-builder bundle: {}",
        stderr(&out)
    );
    let root = dir.path().join("state");
    let id = unique_id("py");
    let out = Command::new(job_runtime())
        .arg("--root")
        .arg(&root)
        .args(["run", "-b"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 in the container failed: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("\"sum\": 5"), "{text}");
    assert!(
        text.contains("\"sha\": \"") && text.contains("OpenSSL"),
        "{text}"
    );
    assert!(!root.join(&id).exists(), "state left behind");
}
