//! `check`: what this host supports and what will not work, probed for real.
//!
//! Every line comes from the kernel: `/proc` and `/sys` are read, and the features jobs need
//! (namespaces, a seccomp filter, pivot_root, an overlay mount) are tried in a forked child, so
//! whatever the probe makes (a namespace, a mount inside a private mount namespace, a filter)
//! dies with it. Host cgroups are only read, never written.
//!
//! `job-runtime check` prints [`host`]; `jobd check` adds its own lines to the same [`Report`].

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use serde::Serialize;

use crate::spec::{DEFAULT_HOST_ID_BASE, DEFAULT_ID_RANGE};

/// For tests only: read cgroups from this directory instead of `/sys/fs/cgroup`, so a test can
/// point the check at an empty directory and see it fail.
pub const CGROUP_ROOT_ENV: &str = "JOBWORKER_CHECK_CGROUP_ROOT";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// Works, but with a limit or a risk worth knowing.
    Warn,
    /// Absent or not working.
    Missing,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `namespace user` or `cgroup memory`.
    pub name: String,
    pub status: Status,
    /// Whether jobs cannot run without it.
    pub required: bool,
    /// What was found, or why it is missing.
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, status: Status, required: bool, detail: String) -> Check {
        Check {
            name: name.into(),
            status,
            required,
            detail,
        }
    }

    /// Whether this line makes the host unable to run jobs.
    pub fn fails(&self) -> bool {
        self.required && self.status == Status::Missing
    }
}

/// How `check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per check, coloured on a terminal.
    Text,
    /// `{"ok": bool, "checks": [...]}`.
    Json,
}

/// Every line, in the order they were checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Prints the report to stdout in `format`; returns true when nothing required is missing.
    pub fn print(&self, format: Format) -> bool {
        match format {
            Format::Json => println!("{:#}", self.to_json()),
            Format::Text => {
                use std::io::IsTerminal;
                print!("{}", self.to_text(std::io::stdout().is_terminal()));
            }
        }
        self.passed()
    }

    /// True when nothing required is missing.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(Check::fails)
    }

    /// The machine-readable form: `{"ok": bool, "checks": [{name, status, required, detail}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "ok": self.passed(), "checks": self.checks })
    }

    /// One line per check (`STATUS  required|optional  NAME  DETAIL`) and a verdict line;
    /// `colour` adds ANSI colours (for terminals only).
    pub fn to_text(&self, colour: bool) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let label = format!("{:<7}", c.status.label());
            let label = if colour {
                let code = match (c.status, c.required) {
                    (Status::Ok, _) => "32",
                    (Status::Missing, true) => "1;31",
                    _ => "33",
                };
                format!("\x1b[{code}m{label}\x1b[0m")
            } else {
                label
            };
            let need = if c.required { "required" } else { "optional" };
            let _ = writeln!(out, "{label} {need}  {:<width$}  {}", c.name, c.detail);
        }
        let failing: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.fails())
            .map(|c| c.name.as_str())
            .collect();
        let warnings = self
            .checks
            .iter()
            .filter(|c| c.status != Status::Ok && !c.fails())
            .count();
        if failing.is_empty() {
            let _ = writeln!(
                out,
                "result: every required feature is present ({warnings} warning(s))"
            );
        } else {
            let _ = writeln!(
                out,
                "result: this host cannot run jobs: missing required {}",
                failing.join(", ")
            );
        }
        out
    }
}

/// Everything the runtime needs from the host, checked.
pub fn host() -> Report {
    let mut r = Report::default();
    r.push(kernel());
    r.push(privileges());
    for ns in &NAMESPACES {
        r.push(namespace(ns));
    }
    r.push(user_namespace_limits());
    let root = std::env::var_os(CGROUP_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT));
    for c in cgroups(&root) {
        r.push(c);
    }
    r.push(seccomp());
    r.push(pivot_root());
    r.push(overlayfs());
    r.push(id_ranges("subuid", Path::new("/etc/subuid")));
    r.push(id_ranges("subgid", Path::new("/etc/subgid")));
    r
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel() -> Check {
    let release = read_trimmed("/proc/sys/kernel/osrelease");
    let arch = std::env::consts::ARCH;
    match release {
        Some(rel) => {
            // The cgroup namespace (4.6) is the newest feature the default spec relies on.
            let (major, minor) = kernel_version(&rel);
            let old = (major, minor) < (4, 6);
            let status = if old { Status::Warn } else { Status::Ok };
            let note = if old {
                ": older than 4.6, which added cgroup namespaces"
            } else {
                ""
            };
            Check::new(
                "kernel",
                status,
                true,
                format!("Linux {rel} ({arch}){note}"),
            )
        }
        None => Check::new(
            "kernel",
            Status::Missing,
            true,
            "cannot read /proc/sys/kernel/osrelease: is /proc mounted?".into(),
        ),
    }
}

/// `6.18.0-1-amd64` -> (6, 18).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Bit `cap` of a `Cap*:` hex mask in /proc/self/status.
fn has_capability(status: &str, field: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

fn privileges() -> Check {
    let euid = nix::unistd::geteuid().as_raw();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let sys_admin = has_capability(&status, "CapEff:", CAP_SYS_ADMIN);
    let sys_resource = has_capability(&status, "CapEff:", CAP_SYS_RESOURCE);
    if euid != 0 || !sys_admin {
        return Check::new(
            "privileges",
            Status::Missing,
            true,
            format!("euid {euid}, CAP_SYS_ADMIN {sys_admin}: run as root (jobs need cgroups and mounts)"),
        );
    }
    if !sys_resource {
        return Check::new(
            "privileges",
            Status::Warn,
            true,
            "root without CAP_SYS_RESOURCE: rlimits above the caller's hard limits will fail"
                .into(),
        );
    }
    Check::new(
        "privileges",
        Status::Ok,
        true,
        "root with CAP_SYS_ADMIN".into(),
    )
}

/// The namespaces the default spec puts every job in: all required.
const NAMESPACES: [(&str, &str, libc::c_int); 7] = [
    ("user", "user", libc::CLONE_NEWUSER),
    ("pid", "pid", libc::CLONE_NEWPID),
    ("net", "net", libc::CLONE_NEWNET),
    ("ipc", "ipc", libc::CLONE_NEWIPC),
    ("uts", "uts", libc::CLONE_NEWUTS),
    ("mount", "mnt", libc::CLONE_NEWNS),
    ("cgroup", "cgroup", libc::CLONE_NEWCGROUP),
];

fn namespace(&(name, proc_name, flag): &(&str, &str, libc::c_int)) -> Check {
    let label = format!("namespace {name}");
    if !Path::new("/proc/self/ns").join(proc_name).exists() {
        return Check::new(
            label,
            Status::Missing,
            true,
            format!("/proc/self/ns/{proc_name} is absent: the kernel lacks this namespace"),
        );
    }
    let steps = ["unshare"];
    // SAFETY: the child only calls unshare(2) with a constant flag.
    let outcome = in_child(&steps, || sys(0, unsafe { libc::unshare(flag) }));
    match outcome {
        Ok(()) => Check::new(label, Status::Ok, true, "unshare works".into()),
        Err(e) => {
            let hint = if flag == libc::CLONE_NEWUSER {
                user_ns_hint()
            } else {
                String::new()
            };
            Check::new(label, Status::Missing, true, format!("{e}{hint}"))
        }
    }
}

fn user_ns_hint() -> String {
    match read_trimmed("/proc/sys/user/max_user_namespaces").as_deref() {
        Some("0") => "; /proc/sys/user/max_user_namespaces is 0: raise it (sysctl user.max_user_namespaces=15000)".into(),
        _ => String::new(),
    }
}

/// The sysctls that limit user namespaces. jobd runs as root, so the knobs that only restrict
/// unprivileged users are reported for information.
fn user_namespace_limits() -> Check {
    let name = "user namespace limits";
    let max = read_trimmed("/proc/sys/user/max_user_namespaces");
    let mut facts = Vec::new();
    let mut status = Status::Ok;
    match max.as_deref().map(str::parse::<u64>) {
        Some(Ok(0)) => {
            status = Status::Missing;
            facts.push("max_user_namespaces=0 (no user namespace can be made)".to_string());
        }
        Some(Ok(n)) if n < 100 => {
            status = Status::Warn;
            facts.push(format!(
                "max_user_namespaces={n} (caps concurrent jobs at about {n})"
            ));
        }
        Some(Ok(n)) => facts.push(format!("max_user_namespaces={n}")),
        _ => {
            status = Status::Missing;
            facts.push("/proc/sys/user/max_user_namespaces is absent".into());
        }
    }
    for (knob, path) in [
        (
            "unprivileged_userns_clone",
            "/proc/sys/kernel/unprivileged_userns_clone",
        ),
        (
            "apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ] {
        if let Some(v) = read_trimmed(path) {
            facts.push(format!("{knob}={v} (affects unprivileged users only)"));
        }
    }
    Check::new(name, status, true, facts.join("; "))
}

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Pure cgroup v2 at the root.
    Unified,
    /// v1 hierarchies plus a v2 mount at `unified/`.
    Hybrid,
    /// v1 hierarchies only.
    Legacy,
    /// Not a cgroup mount.
    None,
}

// The magic's C type (`__fsword_t`) differs between architectures: the cast is not always a no-op.
#[allow(clippy::unnecessary_cast)]
fn fs_magic(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type().0 as i64)
}

fn cgroup_layout(root: &Path) -> Layout {
    match fs_magic(root) {
        Some(CGROUP2_SUPER_MAGIC) => Layout::Unified,
        Some(TMPFS_MAGIC) if fs_magic(&root.join("unified")) == Some(CGROUP2_SUPER_MAGIC) => {
            Layout::Hybrid
        }
        Some(TMPFS_MAGIC) => Layout::Legacy,
        _ => Layout::None,
    }
}

/// Controllers on v2: (name, required).
const V2_CONTROLLERS: [(&str, bool); 8] = [
    ("cpu", true),
    ("memory", true),
    ("pids", true),
    ("io", false),
    ("cpuset", false),
    ("hugetlb", false),
    ("rdma", false),
    ("misc", false),
];

/// Controllers on v1: (name, required, what it is for when optional).
const V1_CONTROLLERS: [(&str, bool); 12] = [
    ("cpu", true),
    ("cpuacct", true),
    ("memory", true),
    ("pids", true),
    ("devices", true),
    ("freezer", true),
    ("blkio", false),
    ("cpuset", false),
    ("hugetlb", false),
    ("net_cls", false),
    ("net_prio", false),
    ("perf_event", false),
];

fn cgroups(root: &Path) -> Vec<Check> {
    let layout = cgroup_layout(root);
    let shown = root.display();
    match layout {
        Layout::None => vec![Check::new(
            "cgroup",
            Status::Missing,
            true,
            format!(
                "{shown} is not a cgroup mount (neither cgroup2 nor a tmpfs of v1 hierarchies)"
            ),
        )],
        Layout::Unified => cgroups_v2(root),
        Layout::Hybrid | Layout::Legacy => cgroups_v1(root, layout),
    }
}

fn words(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn cgroups_v2(root: &Path) -> Vec<Check> {
    let available = words(&root.join("cgroup.controllers"));
    let enabled = words(&root.join("cgroup.subtree_control"));
    let mut out = vec![Check::new(
        "cgroup",
        Status::Ok,
        true,
        format!(
            "v2 (unified) at {}; controllers: {}",
            root.display(),
            available.iter().cloned().collect::<Vec<_>>().join(" ")
        ),
    )];
    for (name, required) in V2_CONTROLLERS {
        let label = format!("cgroup {name}");
        let check = if !available.contains(name) {
            Check::new(
                label,
                Status::Missing,
                required,
                format!("not in {}/cgroup.controllers", root.display()),
            )
        } else if enabled.contains(name) {
            Check::new(
                label,
                Status::Ok,
                required,
                "available, enabled in the root's cgroup.subtree_control".into(),
            )
        } else {
            Check::new(
                label,
                Status::Ok,
                required,
                "available, delegatable (the runtime enables it in the root's cgroup.subtree_control)"
                    .into(),
            )
        };
        out.push(check);
    }
    out
}

/// The v1 hierarchy directory that carries `controller` (`cpu` may be mounted as
/// `cpu,cpuacct`), if it is mounted.
fn v1_hierarchy(root: &Path, controller: &str) -> Option<PathBuf> {
    let direct = root.join(controller);
    if direct.join("cgroup.procs").exists() {
        return Some(direct);
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
                && p.join("cgroup.procs").exists()
        })
}

/// `/proc/cgroups`: controller -> enabled.
fn kernel_controllers() -> Vec<(String, bool)> {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0].to_string(), f[3] == "1"))
        })
        .collect()
}

fn cgroups_v1(root: &Path, layout: Layout) -> Vec<Check> {
    let unified = if layout == Layout::Hybrid {
        words(&root.join("unified/cgroup.controllers"))
    } else {
        BTreeSet::new()
    };
    let kernel = kernel_controllers();
    let mounted: Vec<&str> = V1_CONTROLLERS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| v1_hierarchy(root, n).is_some())
        .collect();
    let kind = match layout {
        Layout::Hybrid => "v1 hybrid (v1 hierarchies plus a v2 mount at unified/)",
        _ => "v1 legacy",
    };
    let head = if mounted.is_empty() {
        Check::new(
            "cgroup",
            Status::Missing,
            true,
            format!(
                "{kind} at {}, but no controller hierarchy is mounted there",
                root.display()
            ),
        )
    } else {
        Check::new(
            "cgroup",
            Status::Ok,
            true,
            format!(
                "{kind} at {}; mounted: {}",
                root.display(),
                mounted.join(" ")
            ),
        )
    };
    let mut out = vec![head];
    for (name, required) in V1_CONTROLLERS {
        let label = format!("cgroup {name}");
        let in_kernel = kernel.iter().find(|(n, _)| n == name);
        let check = match (v1_hierarchy(root, name), in_kernel) {
            (Some(dir), _) => Check::new(
                label,
                Status::Ok,
                required,
                format!("mounted at {}", dir.display()),
            ),
            (None, _) if unified.contains(name) => Check::new(
                label,
                Status::Warn,
                required,
                format!(
                    "only in the v2 hierarchy at {}/unified: v1 jobs cannot use it",
                    root.display()
                ),
            ),
            (None, Some((_, false))) => Check::new(
                label,
                Status::Missing,
                required,
                "disabled on the kernel command line (cgroup_disable=)".into(),
            ),
            (None, Some((_, true))) => Check::new(
                label,
                Status::Missing,
                required,
                format!("in the kernel but not mounted under {}", root.display()),
            ),
            (None, None) => Check::new(
                label,
                Status::Missing,
                required,
                "not in /proc/cgroups: the kernel was built without it".into(),
            ),
        };
        out.push(check);
    }
    out
}

fn seccomp() -> Check {
    let name = "seccomp";
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Check::new(
            name,
            Status::Missing,
            true,
            "no Seccomp field in /proc/self/status: kernel built without CONFIG_SECCOMP".into(),
        );
    }
    // One instruction: return SECCOMP_RET_ALLOW.
    let mut allow = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: allow.as_mut_ptr(),
    };
    let steps = [
        "prctl(PR_SET_NO_NEW_PRIVS)",
        "seccomp(SECCOMP_SET_MODE_FILTER)",
    ];
    let outcome = in_child(&steps, || {
        // SAFETY: prctl with integer arguments.
        sys(0, unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        })?;
        // SAFETY: `prog` points at a valid one-instruction filter that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        sys(1, rc as libc::c_int)
    });
    let actions =
        read_trimmed("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_else(|| "unknown".into());
    match outcome {
        Ok(()) => Check::new(
            name,
            Status::Ok,
            true,
            format!("filter mode works; actions: {actions}"),
        ),
        Err(e) => Check::new(name, Status::Missing, true, format!("filter mode: {e}")),
    }
}

/// A private temporary directory for mount probes; removed on drop. Probes mount a tmpfs on it
/// inside the child's own mount namespace, so the host never sees anything in it.
struct ProbeDir {
    path: PathBuf,
}

impl ProbeDir {
    fn new() -> Result<ProbeDir, String> {
        let template = std::env::temp_dir().join("jobworker-check-XXXXXX");
        nix::unistd::mkdtemp(&template)
            .map(|path| ProbeDir { path })
            .map_err(|e| format!("mkdtemp {}: {e}", template.display()))
    }

    fn c(&self, rel: &str) -> CString {
        let p = if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        };
        CString::new(p.into_os_string().into_encoded_bytes()).expect("temp paths have no NUL")
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// In the child: a private mount namespace with a tmpfs on `dir` (steps 0..=2).
fn private_tmpfs(dir: &CString) -> Result<(), (usize, i32)> {
    // SAFETY: raw mount-namespace syscalls on NUL-terminated strings that outlive the calls.
    unsafe {
        sys(0, libc::unshare(libc::CLONE_NEWNS))?;
        sys(
            1,
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        sys(
            2,
            libc::mount(
                c"tmpfs".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m,mode=0700".as_ptr().cast(),
            ),
        )
    }
}

const MOUNT_NS_STEPS: [&str; 3] = [
    "unshare(CLONE_NEWNS)",
    "make / private",
    "mount tmpfs on the probe directory",
];

fn pivot_root() -> Check {
    let name = "pivot_root";
    let dir = match ProbeDir::new() {
        Ok(d) => d,
        Err(e) => return Check::new(name, Status::Missing, true, e),
    };
    let (root, old) = (dir.c(""), dir.c("old"));
    let steps = [
        MOUNT_NS_STEPS[0],
        MOUNT_NS_STEPS[1],
        MOUNT_NS_STEPS[2],
        "mkdir put_old",
        "pivot_root",
        "unmount the old root",
    ];
    let outcome = in_child(&steps, || {
        private_tmpfs(&root)?;
        // SAFETY: raw syscalls on NUL-terminated strings that outlive the calls.
        unsafe {
            sys(3, libc::mkdir(old.as_ptr(), 0o700))?;
            let rc = libc::syscall(libc::SYS_pivot_root, root.as_ptr(), old.as_ptr());
            sys(4, rc as libc::c_int)?;
            sys(5, libc::umount2(c"/old".as_ptr(), libc::MNT_DETACH))
        }
    });
    match outcome {
        Ok(()) => Check::new(
            name,
            Status::Ok,
            true,
            "pivoted into a tmpfs in a private mount namespace".into(),
        ),
        Err(e) => Check::new(name, Status::Missing, true, e),
    }
}

fn overlayfs() -> Check {
    let name = "overlayfs";
    let listed = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    let dir = match ProbeDir::new() {
        Ok(d) => d,
        Err(e) => return Check::new(name, Status::Warn, false, e),
    };
    let (root, lower, upper, work, merged) =
        (dir.c(""), dir.c("l"), dir.c("u"), dir.c("w"), dir.c("m"));
    let options = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.to_string_lossy(),
        upper.to_string_lossy(),
        work.to_string_lossy()
    ))
    .expect("temp paths have no NUL");
    let steps = [
        MOUNT_NS_STEPS[0],
        MOUNT_NS_STEPS[1],
        MOUNT_NS_STEPS[2],
        "mkdir",
        "mount overlay",
        "unmount overlay",
    ];
    let outcome = in_child(&steps, || {
        private_tmpfs(&root)?;
        // SAFETY: raw syscalls on NUL-terminated strings that outlive the calls.
        unsafe {
            for d in [&lower, &upper, &work, &merged] {
                sys(3, libc::mkdir(d.as_ptr(), 0o700))?;
            }
            sys(
                4,
                libc::mount(
                    c"overlay".as_ptr(),
                    merged.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                ),
            )?;
            sys(5, libc::umount2(merged.as_ptr(), 0))
        }
    });
    let listed_note = if listed {
        "listed in /proc/filesystems"
    } else {
        "not listed in /proc/filesystems before the probe (module loaded on demand)"
    };
    match outcome {
        Ok(()) => Check::new(
            name,
            Status::Ok,
            false,
            format!("mounted and unmounted an overlay in a private mount namespace; {listed_note}"),
        ),
        Err(e) => Check::new(
            name,
            Status::Missing,
            false,
            format!("{e}; {listed_note} (job-runtime does not need it; jobd's per-job writable layers do)"),
        ),
    }
}

/// `/etc/subuid` or `/etc/subgid`: jobs map their root to host ids
/// `DEFAULT_HOST_ID_BASE..+DEFAULT_ID_RANGE` without consulting these files, so what matters
/// is whether that range is reserved for root or handed to someone else.
fn id_ranges(name: &str, path: &Path) -> Check {
    let (start, end) = (
        DEFAULT_HOST_ID_BASE as u64,
        DEFAULT_HOST_ID_BASE as u64 + DEFAULT_ID_RANGE as u64,
    );
    let range = format!("{start}-{}", end - 1);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                name,
                Status::Ok,
                false,
                format!(
                    "{} absent: jobs use host ids {range} (add `root:{start}:{DEFAULT_ID_RANGE}` to reserve them)",
                    path.display()
                ),
            )
        }
        Err(e) => {
            return Check::new(
                name,
                Status::Warn,
                false,
                format!("read {}: {e}", path.display()),
            )
        }
    };
    let entries: Vec<(String, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            let [owner, first, count] = f[..] else {
                return None;
            };
            Some((owner.to_string(), first.parse().ok()?, count.parse().ok()?))
        })
        .collect();
    let is_root = |o: &str| o == "root" || o == "0";
    let clash: Vec<String> = entries
        .iter()
        .filter(|(o, f, c)| !is_root(o) && *f < end && f + c > start)
        .map(|(o, f, c)| format!("{o}:{f}:{c}"))
        .collect();
    if !clash.is_empty() {
        return Check::new(
            name,
            Status::Warn,
            false,
            format!(
                "jobs use host ids {range}, which {} gives to {}: their files and processes would share ids",
                path.display(),
                clash.join(", ")
            ),
        );
    }
    let reserved = entries
        .iter()
        .any(|(o, f, c)| is_root(o) && *f <= start && f + c >= end);
    let detail = if reserved {
        format!("{range} reserved for root in {}", path.display())
    } else {
        format!(
            "{} has no entry covering jobs' host ids {range} (add `root:{start}:{DEFAULT_ID_RANGE}` to reserve them)",
            path.display()
        )
    };
    Check::new(name, Status::Ok, false, detail)
}

/// In a probe child: `Err((step, errno))` when a raw call returned -1.
fn sys(step: usize, rc: libc::c_int) -> Result<(), (usize, i32)> {
    if rc < 0 {
        Err((step, nix::errno::Errno::last_raw()))
    } else {
        Ok(())
    }
}

/// Runs `probe` in a forked child, so whatever it creates (namespaces, mounts in its private
/// mount namespace, a seccomp filter) ends with it. The child only makes raw system calls on data
/// prepared before the fork (this process may have threads, and allocating after fork is unsafe
/// then); a failure comes back through a pipe as (step, errno) and is named by `steps`.
fn in_child(
    steps: &[&str],
    probe: impl FnOnce() -> Result<(), (usize, i32)>,
) -> Result<(), String> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child runs only `probe` (raw syscalls, no allocation), writes to a pipe and
    // calls _exit: all async-signal-safe.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(read);
            let code = match probe() {
                Ok(()) => 0,
                Err((step, errno)) => {
                    let msg = [(step as u32).to_ne_bytes(), (errno as u32).to_ne_bytes()];
                    let bytes = msg.as_flattened();
                    // SAFETY: writes 8 bytes from a live stack buffer to our pipe.
                    unsafe { libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                    1
                }
            };
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            let failure = read_failure(read);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match (status, failure) {
                (Ok(WaitStatus::Exited(_, 0)), _) => Ok(()),
                (_, Some((step, errno))) => {
                    let step = steps.get(step as usize).copied().unwrap_or("probe");
                    let err = nix::errno::Errno::from_raw(errno as i32);
                    Err(format!("{step}: {} ({err:?})", err.desc()))
                }
                (other, None) => Err(format!("probe child ended unexpectedly: {other:?}")),
            }
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

fn read_failure(read: OwnedFd) -> Option<(u32, u32)> {
    use std::io::Read;
    let mut buf = [0u8; 8];
    let mut f = std::fs::File::from(read);
    f.read_exact(&mut buf).ok()?;
    let step = u32::from_ne_bytes(buf[..4].try_into().ok()?);
    let errno = u32::from_ne_bytes(buf[4..].try_into().ok()?);
    Some((step, errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), (6, 18));
        assert_eq!(kernel_version("4.5"), (4, 5));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }

    #[test]
    fn capability_bits_come_from_the_status_mask() {
        let status = "Name:\tx\nCapEff:\t0000000000200000\n";
        assert!(has_capability(status, "CapEff:", 21));
        assert!(!has_capability(status, "CapEff:", 24));
    }

    #[test]
    fn a_failing_probe_names_its_step_and_errno() {
        let steps = ["first", "second"];
        let err = in_child(&steps, || {
            sys(0, 0)?;
            // SAFETY: close(-1) only fails with EBADF.
            sys(1, unsafe { libc::close(-1) })
        })
        .unwrap_err();
        assert!(err.starts_with("second: "), "{err}");
        assert!(err.contains("EBADF"), "{err}");
        assert!(in_child(&steps, || Ok(())).is_ok());
    }

    #[test]
    fn an_empty_directory_is_not_a_cgroup_root() {
        let dir = tempfile::tempdir().unwrap();
        let checks = cgroups(dir.path());
        let head = &checks[0];
        assert_eq!(head.name, "cgroup");
        assert!(head.fails(), "{head:?}");
    }

    #[test]
    fn id_ranges_warn_when_another_user_holds_the_jobs_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subuid");
        std::fs::write(&path, "alice:100000:65536\n").unwrap();
        let c = id_ranges("subuid", &path);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("alice:100000:65536"), "{c:?}");
        std::fs::write(&path, "root:100000:65536\nbob:165536:65536\n").unwrap();
        let c = id_ranges("subuid", &path);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("reserved for root"), "{c:?}");
    }

    #[test]
    fn the_verdict_names_what_is_missing() {
        let mut r = Report::default();
        r.push(Check::new("a", Status::Ok, true, "fine".into()));
        r.push(Check::new("b", Status::Missing, false, "gone".into()));
        assert!(r.passed());
        r.push(Check::new("c", Status::Missing, true, "gone".into()));
        assert!(!r.passed());
        let text = r.to_text(false);
        assert!(text.contains("missing required c"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(r.to_text(true).contains("\x1b[1;31m"));
        assert_eq!(r.to_json()["ok"], false);
    }
}
