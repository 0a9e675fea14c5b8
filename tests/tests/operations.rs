//! What operators run: `job-runtime check` and `jobd check` against this host's real facts,
//! the generated completions and man pages, jobd's systemd unit, and `scripts/install.sh`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tests::bin_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `BIN check --format json ARGS` with its own TMPDIR (so we can see the probes leave
/// nothing there) and returns (exit code, parsed report).
fn check_json(bin: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin_dir().join(bin));
    cmd.arg("check")
        .args(["--format", "json"])
        .args(args)
        .env("TMPDIR", tmp.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{bin} check --format json printed no JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{bin} check left {left:?} in TMPDIR");
    (out.status.code().unwrap(), report)
}

fn line<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} line in {report:#}"))
}

#[test]
fn runtime_check_reports_this_hosts_kernel_cgroups_and_namespaces() {
    tests::require_root();
    let (code, report) = check_json("job-runtime", &[], &[]);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(code, 0);
    for c in report["checks"].as_array().unwrap() {
        assert!(c["required"].is_boolean() && c["detail"].is_string(), "{c}");
        assert!(
            ["ok", "warn", "missing"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
    }
    // The kernel line is uname's release.
    let uname = text(&run(Command::new("uname").arg("-r")).stdout);
    let kernel = line(&report, "kernel");
    assert!(
        kernel["detail"].as_str().unwrap().contains(uname.trim()),
        "{kernel} vs uname -r {uname}"
    );
    // The cgroup line says what /sys/fs/cgroup really is.
    let cgroup = line(&report, "cgroup")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(cgroup.starts_with("v2"), "{cgroup}");
        assert_eq!(line(&report, "cgroup io")["required"], false);
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        assert!(cgroup.starts_with("v1 hybrid"), "{cgroup}");
    } else {
        assert!(cgroup.starts_with("v1 legacy"), "{cgroup}");
    }
    // Controllers the kernel lists as enabled and mounted show as ok.
    assert_eq!(line(&report, "cgroup memory")["status"], "ok");
    assert_eq!(line(&report, "cgroup pids")["required"], true);
    // Root can make every namespace here, install a filter, pivot_root and mount an overlay.
    for ns in ["user", "pid", "net", "ipc", "uts", "mount", "cgroup"] {
        let l = line(&report, &format!("namespace {ns}"));
        assert_eq!(l["status"], "ok", "{l}");
        assert_eq!(l["required"], true, "{l}");
    }
    let seccomp = line(&report, "seccomp");
    assert_eq!(seccomp["status"], "ok", "{seccomp}");
    let actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap();
    assert!(seccomp["detail"].as_str().unwrap().contains(actions.trim()));
    assert_eq!(line(&report, "pivot_root")["status"], "ok");
    let overlay = line(&report, "overlayfs");
    assert_eq!(overlay["required"], false);
    if fs::read_to_string("/proc/filesystems")
        .unwrap()
        .contains("overlay")
    {
        assert_eq!(overlay["status"], "ok", "{overlay}");
    }
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap();
    let limits = line(&report, "user namespace limits");
    assert!(
        limits["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("max_user_namespaces={}", max.trim())),
        "{limits}"
    );
    line(&report, "subuid");
    line(&report, "subgid");
}

#[test]
fn runtime_check_text_is_one_line_per_check_without_colour_when_piped() {
    let out = run(Command::new(bin_dir().join("job-runtime")).arg("check"));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\x1b'), "colour on a pipe: {stdout}");
    let (_, report) = check_json("job-runtime", &[], &[]);
    let n = report["checks"].as_array().unwrap().len();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), n + 1, "{stdout}");
    assert!(lines[0].starts_with("ok") && lines[0].contains("required  kernel"));
    assert!(
        lines[n].starts_with("result: every required feature is present"),
        "{stdout}"
    );
}

#[test]
fn runtime_check_fails_when_the_cgroup_root_is_empty() {
    let empty = tempfile::tempdir().unwrap();
    let (code, report) = check_json(
        "job-runtime",
        &[],
        &[("JOBWORKER_CHECK_CGROUP_ROOT", empty.path())],
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let cgroup = line(&report, "cgroup");
    assert_eq!(cgroup["status"], "missing");
    assert!(cgroup["detail"]
        .as_str()
        .unwrap()
        .contains(&empty.path().display().to_string()));
    let out = run(Command::new(bin_dir().join("job-runtime"))
        .arg("check")
        .env("JOBWORKER_CHECK_CGROUP_ROOT", empty.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("result: this host cannot run jobs: missing required cgroup"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn runtime_check_as_an_unprivileged_user_names_what_is_missing() {
    tests::require_root();
    if !which("setpriv") {
        eprintln!("setpriv (util-linux) is not installed: unprivileged check not run");
        return;
    }
    // A copy nobody can reach (the build directory may sit under a 0700 home).
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("job-runtime");
    fs::copy(bin_dir().join("job-runtime"), &exe).unwrap();
    let out = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&exe)
        .args(["check", "--format", "json"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let p = line(&report, "privileges");
    assert_eq!(p["status"], "missing", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("euid 65534"), "{p}");
    // Without privileges, only a user namespace may come first: unsharing a mount namespace
    // alone is refused by the kernel.
    let mnt = line(&report, "namespace mount");
    assert_eq!(mnt["status"], "missing", "{mnt}");
    assert!(mnt["detail"].as_str().unwrap().contains("EPERM"), "{mnt}");
}

#[test]
fn jobd_check_adds_data_dir_binaries_tls_and_listen() {
    tests::require_root();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("not-yet");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let args = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        addr.as_str(),
    ];
    let (code, report) = check_json("jobd", &args, &[]);
    assert_eq!(code, 0, "{report:#}");
    let d = line(&report, "data dir");
    assert_eq!(d["status"], "ok", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("creates it"), "{d}");
    assert!(!data_dir.exists(), "check must not create the data dir");
    let init = line(&report, "job-init");
    assert!(init["detail"]
        .as_str()
        .unwrap()
        .contains(&bin_dir().join("job-init").display().to_string()));
    // The job-init the tests run is the one shipped: static (scripts/test.sh builds it with
    // scripts/build-job-init.sh after `cargo build`).
    assert_eq!(
        (
            init["status"].as_str(),
            init["detail"]
                .as_str()
                .unwrap()
                .contains("statically linked")
        ),
        (Some("ok"), true),
        "job-init is dynamically linked: run scripts/build-job-init.sh first: {init}"
    );
    assert_eq!(line(&report, "tls")["status"], "ok");
    assert_eq!(line(&report, "listen")["status"], "ok");
    assert_eq!(line(&report, "jobd-shim")["required"], false);
    assert_eq!(line(&report, "python3")["required"], false);
    // The runtime's lines are there too; overlayfs is required for jobd's writable layers.
    line(&report, "namespace user");
    assert_eq!(line(&report, "overlayfs")["required"], true);
    assert_eq!(line(&report, "overlayfs")["status"], "ok");

    // A taken port, a data dir that is a file: both required, both reported, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let file = data.path().join("file");
    fs::write(&file, "x").unwrap();
    let args = [
        "--data-dir",
        file.to_str().unwrap(),
        "--listen",
        taken_addr.as_str(),
    ];
    let (code, report) = check_json("jobd", &args, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(line(&report, "listen")["status"], "missing");
    assert!(line(&report, "listen")["detail"]
        .as_str()
        .unwrap()
        .contains("in use"));
    assert_eq!(line(&report, "data dir")["status"], "missing");
}

#[test]
fn jobctl_completions_name_the_subcommands() {
    let jobctl = bin_dir().join("jobctl");
    let bash = text(&run(Command::new(&jobctl).args(["completions", "bash"])).stdout);
    for sub in [
        "run", "start", "stop", "status", "list", "logs", "stats", "watch",
    ] {
        assert!(
            bash.contains(&format!("jobctl,{sub})")),
            "bash completion lacks {sub}"
        );
    }
    // Really complete in bash: `jobctl lo<TAB>` and `jobctl <TAB>`.
    let script = dir_with_file("jobctl.bash", &bash);
    let complete = |words: &str, cword: usize| {
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _jobctl jobctl \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[@]}}\"",
            script.1.display()
        );
        let out = run(Command::new("bash").args(["-c", &cmd]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("jobctl lo", 1), "logs");
    let all = complete("jobctl ''", 1);
    for sub in ["run", "logs", "stop", "--server"] {
        assert!(all.split(' ').any(|w| w == sub), "{sub} not offered: {all}");
    }
    assert!(bash.contains("--server"), "bash completion lacks --server");
    assert!(bash.contains("complete -F _jobctl"), "{bash}");
    let zsh = text(&run(Command::new(&jobctl).args(["completions", "zsh"])).stdout);
    assert!(zsh.starts_with("#compdef jobctl"), "{zsh}");
    let fish = text(&run(Command::new(&jobctl).args(["completions", "fish"])).stdout);
    assert!(fish.contains("complete -c jobctl"), "{fish}");
    assert!(fish.contains("logs"), "{fish}");
    // A shell that does not exist is a usage error.
    let bad = run(Command::new(&jobctl).args(["completions", "tcsh"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("tcsh"));
}

#[test]
fn man_pages_have_a_title_and_the_options() {
    let out = run(Command::new(bin_dir().join("jobctl")).arg("man"));
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH jobctl 1"), "{page}");
    assert!(page.contains("\\-\\-server"), "{page}");
    assert!(page.contains("\\-\\-tls\\-dir"), "{page}");
    assert!(page.contains("logs"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    for bin in ["jobctl", "jobd", "job-runtime"] {
        let out = run(Command::new(bin_dir().join(bin))
            .arg("man")
            .arg("--dir")
            .arg(dir.path()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(dir.path().join(format!("{bin}.1")).is_file());
    }
    let run_page = fs::read_to_string(dir.path().join("jobctl-run.1")).unwrap();
    assert!(run_page.contains("\\-\\-memory"), "{run_page}");
    assert!(dir.path().join("jobd-check.1").is_file());
    assert!(dir.path().join("job-runtime-check.1").is_file());
    // Hidden generator commands get no pages.
    assert!(!dir.path().join("jobctl-completions.1").exists());
    if which("man") {
        let rendered = run(Command::new("man")
            .arg("-l")
            .arg(dir.path().join("jobctl.1"))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"));
        assert!(rendered.status.success(), "{}", text(&rendered.stderr));
        let shown = text(&rendered.stdout);
        assert!(shown.contains("jobctl"), "{shown}");
        assert!(!shown.contains(".TH"), "roff was not rendered: {shown}");
    } else {
        eprintln!("man is not installed: rendering not checked");
    }
}

/// A temp dir holding one file with `content`; returns both (the dir must stay alive).
fn dir_with_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, content).unwrap();
    (dir, path)
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// `Key=Value` lines of a unit file, with their section.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('[') && l.ends_with(']') {
            section = l[1..l.len() - 1].to_string();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("bad unit line {l:?}"));
        out.push((section.clone(), k.to_string(), v.to_string()));
    }
    out
}

fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> String {
    entries
        .iter()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .unwrap_or_else(|| panic!("no [{section}] {key}= in the unit"))
}

#[test]
fn systemd_unit_keeps_jobs_alive_across_restarts_and_delegates_cgroups() {
    let text = fs::read_to_string(repo().join("daemon/systemd/jobd.service")).unwrap();
    let e = unit_entries(&text);
    assert_eq!(
        unit_value(&e, "Service", "ExecStart"),
        "/usr/local/bin/jobd"
    );
    assert_eq!(unit_value(&e, "Service", "Type"), "exec");
    assert_eq!(unit_value(&e, "Service", "KillMode"), "process");
    assert_eq!(unit_value(&e, "Service", "Delegate"), "yes");
    assert_eq!(unit_value(&e, "Service", "Restart"), "on-failure");
    unit_value(&e, "Service", "LimitNOFILE");
    assert_eq!(unit_value(&e, "Install", "WantedBy"), "multi-user.target");
    // Options that would break namespaces, mounts or cgroups, or leak into jobs.
    for bad in [
        "ProtectSystem",
        "ProtectControlGroups",
        "ProtectKernelTunables",
        "PrivateDevices",
        "RestrictNamespaces",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
        "NoNewPrivileges",
    ] {
        assert!(
            !e.iter().any(|(_, k, _)| k == bad),
            "{bad}= must not be set"
        );
    }
}

fn install(destdir: &Path, prefix: &str, bins: &Path) -> Output {
    run(Command::new(repo().join("scripts/install.sh"))
        .arg("--destdir")
        .arg(destdir)
        .args(["--prefix", prefix])
        .arg("--bin-dir")
        .arg(bins))
}

/// Every file under `dir`, relative.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_puts_binaries_completions_man_pages_and_unit_in_place() {
    let dest = tempfile::tempdir().unwrap();
    let prefix = "/opt/jobworker";
    let out = install(dest.path(), prefix, &bin_dir());
    assert!(
        out.status.success(),
        "install failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let root = dest.path().join("opt/jobworker");
    for b in [
        "job-runtime",
        "job-init",
        "jobd",
        "jobctl",
        "rootfs-builder",
    ] {
        let p = root.join("bin").join(b);
        let mode = fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{}", p.display());
    }
    let version = run(Command::new(root.join("bin/job-runtime")).arg("--version"));
    assert!(version.status.success());
    assert!(
        text(&version.stdout).starts_with("job-runtime "),
        "{version:?}"
    );
    for b in ["jobctl", "jobd", "job-runtime"] {
        for f in [
            format!("share/bash-completion/completions/{b}"),
            format!("share/zsh/site-functions/_{b}"),
            format!("share/fish/vendor_completions.d/{b}.fish"),
            format!("share/man/man1/{b}.1"),
        ] {
            let p = root.join(&f);
            assert!(
                fs::metadata(&p).is_ok_and(|m| m.len() > 0),
                "{} missing or empty",
                p.display()
            );
        }
    }
    let bash = fs::read_to_string(root.join("share/bash-completion/completions/jobctl")).unwrap();
    assert!(bash.contains("logs"));
    assert!(root.join("share/man/man1/jobctl-run.1").is_file());
    let unit_path = dest.path().join("etc/systemd/system/jobd.service");
    let unit = fs::read_to_string(&unit_path).unwrap();
    let e = unit_entries(&unit);
    assert_eq!(
        unit_value(&e, "Service", "ExecStart"),
        format!("{prefix}/bin/jobd")
    );

    // Idempotent: a second run succeeds and leaves the same files.
    let before = tree(dest.path());
    let again = install(dest.path(), prefix, &bin_dir());
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(tree(dest.path()), before);

    verify_unit(&unit, &root);
}

/// `systemd-analyze verify` on the installed unit (ExecStart pointed into DESTDIR, the staged
/// man pages on MANPATH so `Documentation=man:jobd(1)` resolves).
fn verify_unit(unit: &str, root: &Path) {
    if !which("systemd-analyze") {
        eprintln!("systemd-analyze is not installed (apt package systemd): unit not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("jobd.service");
    let exec = root.join("bin/jobd");
    let rewritten: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}\n", exec.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&staged, rewritten).unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&staged)
        .env("MANPATH", root.join("share/man"))
        .current_dir(dir.path()));
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn install_refuses_missing_binaries_and_bad_arguments() {
    let dest = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = install(dest.path(), "/usr/local", empty.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("job-runtime") && err.contains("is missing"),
        "{err}"
    );
    assert!(tree(dest.path()).is_empty(), "left {:?}", tree(dest.path()));
    let out = install(dest.path(), "relative", &bin_dir());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("must be an absolute path"));
    let out = run(Command::new(repo().join("scripts/install.sh")).arg("--frobnicate"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown argument '--frobnicate'"));
}
