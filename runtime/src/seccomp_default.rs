//! The default seccomp profile for `job-runtime spec` and for jobs: a default-deny allowlist in
//! the spirit of Docker's default profile, kept as plain data so it reads like a policy.
//!
//! What it refuses (with `EPERM`, the profile's `defaultErrnoRet`): everything not named in
//! [`ALLOWED`]. Notably the namespace, mount, keyring, module, kexec, BPF, perf, userfaultfd,
//! io_uring, ptrace and cross-process memory calls, all of which are kernel attack surface or
//! escape routes and none of which a batch job needs. Three calls are allowed only by argument:
//!
//! - `clone` only without namespace flags (`CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|
//!   NEWCGROUP` masked out of `flags` must be 0), so plain `fork`/threads work but new
//!   namespaces cannot be made.
//! - `clone3` returns `ENOSYS`: its flags live in memory, which seccomp cannot read, so it
//!   cannot be filtered by flag. glibc and Go fall back to `clone` on `ENOSYS`, where the flags
//!   are checked.
//! - `socket` for every family but `AF_VSOCK` (host-guest sockets) and `AF_ALG` (the kernel
//!   crypto API, a steady source of kernel bugs).
//! - `personality` only with the harmless values Docker allows (query, Linux, 32-bit/unames).
//!
//! The list names syscalls of every architecture (for example the 32-bit `*32`/`*64`
//! variants); names this architecture does not have are skipped when the profile is compiled.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// Namespace flags that `clone` must not carry (values from `<linux/sched.h>`).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Socket families refused by the default profile: `AF_VSOCK` (40) and `AF_ALG` (38).
pub const DENIED_SOCKET_FAMILIES: [u64; 2] = [libc::AF_VSOCK as u64, libc::AF_ALG as u64];

/// `personality(2)` values a process may set: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32|UNAME26`, and `0xffffffff` (query only).
pub const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Syscalls the default profile allows unconditionally, sorted by name.
pub const ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "file_getattr",
    "file_setattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls the default profile must never allow (checked by the tests, and a reading aid).
/// Also not allowed, without being listed here: every syscall missing from [`ALLOWED`].
pub const DENIED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // The new mount API and friends: as dangerous as mount(2).
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    // Cross-process access that ptrace would gate.
    "pidfd_getfd",
    "process_madvise",
    "kcmp",
    // Host-wide state.
    "settimeofday",
    "clock_settime",
    "sethostname",
    "setdomainname",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "fanotify_init",
    "lookup_dcookie",
    "uselib",
    "modify_ldt",
    "iopl",
    "ioperm",
    "vhangup",
    "_sysctl",
    "nfsservctl",
    // 32-bit multiplexer: would bypass the per-family socket check on architectures that have it.
    "socketcall",
];

/// The default profile: `SCMP_ACT_ERRNO` (EPERM) for everything but [`ALLOWED`] and the
/// argument rules described in the module docs; compiled for this host's architecture only.
pub fn default_profile() -> LinuxSeccomp {
    let mut syscalls = vec![allow(ALLOWED.iter().copied(), Vec::new())];
    syscalls.push(clone_without_namespaces());
    syscalls.push(clone3_enosys());
    syscalls.push(socket_without_vsock_alg());
    syscalls.extend(ALLOWED_PERSONALITIES.iter().map(|&value| {
        allow(
            ["personality"],
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, value, None)],
        )
    }));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(native_arch().map(|a| vec![a]));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// `clone` is allowed when `flags & CLONE_NAMESPACE_FLAGS == 0`.
fn clone_without_namespaces() -> LinuxSyscall {
    allow(
        ["clone"],
        vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        )],
    )
}

/// `clone3` fails with `ENOSYS`, so that libc falls back to `clone`, whose flags can be checked.
fn clone3_enosys() -> LinuxSyscall {
    let mut rule = syscall(["clone3"], LinuxSeccompAction::ScmpActErrno, Vec::new());
    rule.set_errno_ret(Some(libc::ENOSYS as u32));
    rule
}

/// `socket` is allowed for any family but the denied ones. Conditions in one rule are ANDed.
/// The last condition requires the upper 32 bits of `domain` to be zero: the kernel reads only
/// the low 32 bits (it is an `int`) while the filter compares all 64, so without it
/// `0x1_0000_0028` would pass `!= 40` and still open an `AF_VSOCK` socket. libc passes an `int`
/// sign- or zero-extended, so every real family value satisfies it.
fn socket_without_vsock_alg() -> LinuxSyscall {
    let mut args: Vec<LinuxSeccompArg> = DENIED_SOCKET_FAMILIES
        .iter()
        .map(|&family| arg(0, LinuxSeccompOperator::ScmpCmpNe, family, None))
        .collect();
    args.push(arg(
        0,
        LinuxSeccompOperator::ScmpCmpLe,
        u64::from(u32::MAX),
        None,
    ));
    allow(["socket"], args)
}

fn allow<'a>(names: impl IntoIterator<Item = &'a str>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    syscall(names, LinuxSeccompAction::ScmpActAllow, args)
}

fn syscall<'a>(
    names: impl IntoIterator<Item = &'a str>,
    action: LinuxSeccompAction,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.into_iter().map(str::to_string).collect());
    rule.set_action(action);
    if !args.is_empty() {
        rule.set_args(Some(args));
    }
    rule
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let builder = match value_two {
        Some(v) => builder.value_two(v),
        None => builder,
    };
    builder
        .build()
        .expect("every field of LinuxSeccompArg is set")
}

/// The OCI name of this host's architecture, for the profile's `architectures`.
fn native_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::ScmpArchX86_64),
        "aarch64" => Some(Arch::ScmpArchAarch64),
        "riscv64" => Some(Arch::ScmpArchRiscv64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::str::FromStr;

    #[test]
    fn seccomp_default_lists_are_disjoint_sorted_and_sized() {
        let allowed: HashSet<&str> = ALLOWED.iter().copied().collect();
        assert_eq!(allowed.len(), ALLOWED.len(), "duplicate names in ALLOWED");
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, ALLOWED, "ALLOWED is kept sorted for reading");
        for name in DENIED {
            assert!(!allowed.contains(name), "{name} is both allowed and denied");
        }
        // Docker-sized: about 360 names across architectures, plus the argument rules.
        assert!(
            (330..=380).contains(&ALLOWED.len()),
            "{} names",
            ALLOWED.len()
        );
        for name in ["clone", "clone3", "socket", "personality"] {
            assert!(
                !allowed.contains(name),
                "{name} must only be allowed by argument"
            );
        }
    }

    #[test]
    fn seccomp_default_denied_names_exist_on_this_arch() {
        // A typo in DENIED would silently test nothing; the brief's core list must resolve.
        for name in &DENIED[..27] {
            assert!(syscalls::Sysno::from_str(name).is_ok(), "{name} unknown");
        }
    }

    #[test]
    fn seccomp_default_profile_shape() {
        let p = default_profile();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let rules = p.syscalls().as_ref().unwrap();
        let clone3 = rules
            .iter()
            .find(|r| r.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));
        // The JSON round-trips, so `job-runtime spec` can write it into config.json.
        let json = serde_json::to_string(&p).unwrap();
        let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(json.contains("\"SCMP_CMP_MASKED_EQ\""), "{json}");
    }
}
