//! `linux.seccomp` of the OCI spec, compiled to classic BPF with seccompiler and installed with
//! `seccomp(2)`.
//!
//! # How a profile becomes filters
//!
//! seccompiler builds filters with one match action and one mismatch action, while an OCI
//! profile has a default action plus any number of rule actions. The profile therefore becomes a
//! *stack* of filters, relying on the kernel running every filter of the stack for every syscall
//! and keeping the most restrictive result (`KILL_PROCESS > KILL_THREAD > TRAP > ERRNO >
//! USER_NOTIF > TRACE > LOG > ALLOW`):
//!
//! - one *default filter* (only when the default action is not `SCMP_ACT_ALLOW`): returns
//!   `ALLOW` for every call that any rule of the profile matches, whatever that rule's action,
//!   and the default action for everything else;
//! - one *action filter* per distinct rule action other than `SCMP_ACT_ALLOW` (an ERRNO with
//!   another errno value is another action): returns that action for the calls its rules match
//!   and `ALLOW` otherwise.
//!
//! A call no rule matches gets `ALLOW` from every action filter and the default action from the
//! default filter. A call some rules match gets `ALLOW` from the default filter and the strictest
//! of the matching rules' actions from the action filters, so `ALLOW` rules of an allowlist are
//! allowed by every filter. When a call matches rules of two actions of the same kind (two ERRNO
//! values), the rule listed first in the profile wins: its filter is installed last, and the
//! kernel, which runs the newest filter first, keeps the first of equal-kind results.
//!
//! Each filter installed already applies to the `seccomp(2)` calls that install the next ones.
//! The one filter that refuses that call (typically the default filter of an allowlist without
//! `seccomp` in it) is therefore moved to the end of the stack, found by running every program
//! on that call; a profile where two filters refuse it cannot be installed and is an error.
//!
//! # Translation
//!
//! - Actions: `SCMP_ACT_KILL` and `SCMP_ACT_KILL_THREAD` kill the thread, `KILL_PROCESS`,
//!   `TRAP`, `ERRNO` (`errnoRet`, default `EPERM`; `defaultErrnoRet` for the default action),
//!   `TRACE` (`errnoRet` is the value given to the tracer, default `EPERM`, as runc), `LOG`,
//!   `ALLOW`. `SCMP_ACT_NOTIFY` is refused: there is no seccomp agent support.
//! - Arguments: every `SCMP_CMP_*` operator, comparing all 64 bits as libseccomp does; for
//!   `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the expected value (0 when absent,
//!   since Go's `omitempty` drops a zero). A masked comparison whose expected value has bits
//!   outside the mask can never match, and its rule is dropped.
//! - The conditions of one rule are ANDed, also when several name the same argument (runc
//!   instead ORs the conditions of such a rule, which turns "`arg0 != 40` and `arg0 != 38`" into
//!   "always"); rules for the same syscall are ORed.
//! - Names unknown on this architecture (the `syscalls` crate's table) are skipped with a debug
//!   log, as runc does.
//! - Architectures: rules are compiled for the native architecture only, which is always
//!   included. Other names in `architectures` are accepted and logged; a syscall made through
//!   another ABI (i386 `int 0x80` on x86_64) kills the process, as seccompiler's filters do.
//!   On x86_64, x32-ABI syscalls (number with bit 30 set) get `ENOSYS` from every filter:
//!   seccompiler does not tell them apart from x86_64 calls, and letting them through would
//!   bypass every rule.
//! - Syscalls newer than any the profile names get `ENOSYS` instead of the default errno when
//!   the default action is `SCMP_ACT_ERRNO` (as runc does), so that libc falls back to older
//!   calls it knows instead of failing on `EPERM`.
//! - `flags`: `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG` and `_SPEC_ALLOW` are applied to every filter
//!   of the stack; `_WAIT_KILLABLE_RECV` only means something for `SCMP_ACT_NOTIFY` and is
//!   ignored with a warning.
//!
//! Each filter is limited to 4096 BPF instructions and the whole stack to the kernel's 32768
//! (counting 4 per filter); a larger profile is an error naming the action and the count.
//!
//! # Installing
//!
//! [`CompiledFilter::install`] calls `seccomp(SECCOMP_SET_MODE_FILTER)` itself and does not set
//! `no_new_privs`: the caller sets it first when `process.noNewPrivileges` is true. Without
//! `no_new_privs` the kernel requires `CAP_SYS_ADMIN` (in the caller's user namespace), so with
//! `noNewPrivileges: false` the filter must be installed before the capabilities are dropped,
//! and the syscalls made between installing and `execve` (`capset`, `setresuid`, `prctl`,
//! `close`, `execve`, ...) must be allowed by the profile. With `noNewPrivileges: true`, install
//! it last, right before `execve`. Filters are permanent and inherited: install only in the
//! process that is about to become the container process.
//!
//! # Cache
//!
//! [`compile_cached`] keeps each distinct profile's BPF under a cache directory, keyed by a
//! 128-bit hash of the profile's canonical JSON (with this crate's version and the
//! architecture), so that a container start loads a few kilobytes instead of compiling.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

pub use crate::seccomp_default::default_profile;

/// The kernel's limit on one filter (`BPF_MAXINSNS`).
pub const MAX_FILTER_INSTRUCTIONS: usize = 4096;
/// The kernel's limit on all filters a syscall runs through (`MAX_INSNS_PER_PATH`), where
/// each filter counts [`FILTER_PATH_OVERHEAD`] more instructions than it has.
pub const MAX_STACK_INSTRUCTIONS: usize = 32768;
const FILTER_PATH_OVERHEAD: usize = 4;
/// The largest `errnoRet` the kernel honours (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;
/// `SECCOMP_RET_DATA`: the largest value `SCMP_ACT_TRACE` can hand to the tracer.
const MAX_TRACE_DATA: u32 = 0xffff;
/// x32-ABI syscalls on x86_64 carry this bit in their number (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `SECCOMP_FILTER_FLAG_*` bits this module sets.
const KNOWN_FLAGS: u32 = (libc::SECCOMP_FILTER_FLAG_TSYNC
    | libc::SECCOMP_FILTER_FLAG_LOG
    | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW) as u32;

// Classic BPF opcodes (`<linux/bpf_common.h>`) for the few instructions this module adds.
/// `BPF_LD | BPF_W | BPF_ABS` (`BPF_LD` and `BPF_W` are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGT_K: u16 = 0x05 | 0x20;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// seccompiler starts every filter with this many instructions checking the architecture.
const ARCH_CHECK_LEN: usize = 3;

/// Bumped whenever the translation changes, so that cached programs of an older translation
/// are never loaded (the cache key includes it).
const TRANSLATION_VERSION: u32 = 3;
const BYTES_MAGIC: &[u8; 8] = b"JRSECBPF";
const CACHE_MAGIC: &[u8; 8] = b"JRSECCCH";
/// A cache file larger than this is not read (the largest valid one is far smaller).
const MAX_CACHE_FILE: u64 = 8 << 20;

// seccompiler's `sock_filter` is passed to the kernel as `libc::sock_filter`.
const _: () = assert!(
    std::mem::size_of::<sock_filter>() == std::mem::size_of::<libc::sock_filter>()
        && std::mem::align_of::<sock_filter>() == std::mem::align_of::<libc::sock_filter>()
);

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is not supported on architecture {0}")]
    UnsupportedArch(String),
    #[error("seccomp {what}: SCMP_ACT_NOTIFY is not supported (no seccomp agent support)")]
    NotifyUnsupported { what: String },
    #[error("seccomp {what}: {field} {value} is out of range (0-{max})")]
    OutOfRange {
        what: String,
        field: &'static str,
        value: u32,
        max: u32,
    },
    #[error("seccomp syscall {syscall}: argument index {index} is out of range (0-5)")]
    ArgIndex { syscall: String, index: usize },
    #[error(
        "seccomp filter for {action}: {len} BPF instructions, more than the kernel's limit of \
         {max} per filter"
    )]
    TooLarge {
        action: String,
        len: usize,
        max: usize,
    },
    #[error(
        "seccomp filters: {total} BPF instructions in all, more than the kernel's limit of {max}"
    )]
    StackTooLarge { total: usize, max: usize },
    #[error("seccomp filter for {action}: {reason}")]
    Build { action: String, reason: String },
    #[error("seccomp profile: cannot serialize: {0}")]
    Serialize(String),
    #[error("install seccomp filter {index} of {count}: {errno}{hint}")]
    Install {
        index: usize,
        count: usize,
        errno: Errno,
        hint: &'static str,
    },
    #[error(
        "install seccomp filter {index} of {count}: thread {tid} cannot be synchronized \
         (SECCOMP_FILTER_FLAG_TSYNC)"
    )]
    ThreadSync {
        index: usize,
        count: usize,
        tid: i64,
    },
    #[error("compiled seccomp filter: {0}")]
    Malformed(String),
}

/// A profile compiled for this architecture: a stack of BPF programs in install order, and
/// the `SECCOMP_FILTER_FLAG_*` bits each is installed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFilter {
    programs: Vec<BpfProgram>,
    flags: u32,
}

/// The host architecture as both seccompiler and the OCI spec name it.
#[derive(Debug, Clone, Copy)]
struct Native {
    target: TargetArch,
    oci: Arch,
    /// x86_64 kernels also accept x32-ABI syscall numbers under the same audit arch.
    has_x32: bool,
}

/// When a syscall matches: always, or when any of these rules (each an AND of conditions)
/// holds. `AnyOf` is never empty: an empty list would mean "always" to seccompiler.
#[derive(Debug, Clone)]
enum Matcher {
    Always,
    AnyOf(Vec<SeccompRule>),
}

type RuleSet = BTreeMap<i64, Matcher>;

/// The rules of one distinct action.
struct ActionRules {
    action: SeccompAction,
    rules: RuleSet,
}

/// A profile's rules resolved to syscall numbers of this architecture.
#[derive(Default)]
struct Resolved {
    /// One entry per distinct action, in order of first appearance in the profile.
    by_action: Vec<ActionRules>,
    /// The highest syscall number the profile names.
    max_nr: Option<i64>,
    /// Names this architecture does not have, for one debug line.
    unknown: Vec<String>,
}

/// Compiles `profile` for this host's architecture.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilter, SeccompError> {
    let native = native_arch()?;
    log_architectures(profile, native);
    let flags = filter_flags(profile);
    let default = translate_action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let resolved = resolve(profile)?;
    if !resolved.unknown.is_empty() {
        tracing::debug!(
            syscalls = %resolved.unknown.join(" "),
            "seccomp: syscalls unknown on this architecture skipped"
        );
    }
    let programs = build_stack(&resolved, &default, native)?;
    let programs = order_for_install(programs, flags, native)?;
    check_stack_size(&programs)?;
    Ok(CompiledFilter { programs, flags })
}

fn native_arch() -> Result<Native, SeccompError> {
    let (target, oci, has_x32) = match std::env::consts::ARCH {
        "x86_64" => (TargetArch::x86_64, Arch::ScmpArchX86_64, true),
        "aarch64" => (TargetArch::aarch64, Arch::ScmpArchAarch64, false),
        "riscv64" => (TargetArch::riscv64, Arch::ScmpArchRiscv64, false),
        other => return Err(SeccompError::UnsupportedArch(other.to_string())),
    };
    Ok(Native {
        target,
        oci,
        has_x32,
    })
}

/// The native architecture is always compiled for; other names are accepted, as runc accepts
/// them, but only logged: their syscalls never reach the rules (see the module docs).
fn log_architectures(profile: &LinuxSeccomp, native: Native) {
    for arch in profile.architectures().iter().flatten() {
        if *arch != native.oci && *arch != Arch::ScmpArchNative {
            tracing::debug!(
                arch = %arch,
                "seccomp: rules are compiled for the native architecture only; \
                 syscalls of this architecture kill the process"
            );
        }
    }
}

fn filter_flags(profile: &LinuxSeccomp) -> u32 {
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                tracing::warn!(
                    "seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV ignored: it only applies \
                     to SCMP_ACT_NOTIFY, which is not supported"
                );
                0
            }
        } as u32;
    }
    flags
}

/// The seccompiler action for an OCI action; `what` names the rule in errors.
fn translate_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: &str,
) -> Result<SeccompAction, SeccompError> {
    let data = |max: u32| {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        if value > max {
            return Err(SeccompError::OutOfRange {
                what: what.to_string(),
                field: "errnoRet",
                value,
                max,
            });
        }
        Ok(value)
    };
    if errno_ret.is_some()
        && !matches!(
            action,
            LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
        )
    {
        tracing::debug!(what, %action, "seccomp: errnoRet ignored for this action");
    }
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(data(MAX_ERRNO)?),
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(data(MAX_TRACE_DATA)?),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::NotifyUnsupported {
                what: what.to_string(),
            })
        }
    })
}

/// Resolves every rule of the profile to syscall numbers, grouped by action.
fn resolve(profile: &LinuxSeccomp) -> Result<Resolved, SeccompError> {
    let mut resolved = Resolved::default();
    for rule in profile.syscalls().iter().flatten() {
        resolve_rule(rule, &mut resolved)?;
    }
    Ok(resolved)
}

fn resolve_rule(rule: &LinuxSyscall, resolved: &mut Resolved) -> Result<(), SeccompError> {
    if rule.names().is_empty() {
        return Ok(());
    }
    let label = rule_label(rule.names());
    let action = translate_action(rule.action(), rule.errno_ret(), &format!("syscall {label}"))?;
    let conditions = translate_args(&label, rule.args().as_deref().unwrap_or(&[]))?;
    let matcher = match conditions {
        None => None,
        Some(c) if c.is_empty() => Some(Matcher::Always),
        Some(c) => Some(Matcher::AnyOf(vec![SeccompRule::new(c).map_err(|e| {
            SeccompError::Build {
                action: action_label(&action),
                reason: e.to_string(),
            }
        })?])),
    };
    let (numbers, unknown) = syscall_numbers(rule.names());
    let set = action_rules(resolved, action);
    if let Some(m) = &matcher {
        for &nr in &numbers {
            add_matcher(set, nr, m);
        }
    }
    // A rule that never matches still names its syscalls (for the ENOSYS threshold).
    resolved.max_nr = numbers.into_iter().chain(resolved.max_nr).max();
    resolved.unknown.extend(unknown);
    Ok(())
}

/// This architecture's numbers for `names`, and the names it does not have.
fn syscall_numbers(names: &[String]) -> (Vec<i64>, Vec<String>) {
    let mut numbers = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        match syscalls::Sysno::from_str(name) {
            Ok(sysno) => numbers.push(i64::from(sysno.id())),
            Err(()) => unknown.push(name.clone()),
        }
    }
    (numbers, unknown)
}

/// The rule set of `action`, created (in order of first appearance) when new.
fn action_rules(resolved: &mut Resolved, action: SeccompAction) -> &mut RuleSet {
    let key = u32::from(action.clone());
    let index = match resolved
        .by_action
        .iter()
        .position(|a| u32::from(a.action.clone()) == key)
    {
        Some(i) => i,
        None => {
            resolved.by_action.push(ActionRules {
                action,
                rules: RuleSet::new(),
            });
            resolved.by_action.len() - 1
        }
    };
    &mut resolved.by_action[index].rules
}

/// ORs `m` into what `nr` already matches: `Always` absorbs any rule list.
fn add_matcher(set: &mut RuleSet, nr: i64, m: &Matcher) {
    match (set.get_mut(&nr), m) {
        (None, _) => {
            set.insert(nr, m.clone());
        }
        (Some(Matcher::Always), _) => {}
        (Some(existing), Matcher::Always) => *existing = Matcher::Always,
        (Some(Matcher::AnyOf(rules)), Matcher::AnyOf(more)) => {
            for r in more {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
}

/// The conditions of one rule (ANDed); `None` when they can never all hold.
fn translate_args(
    syscall: &str,
    args: &[LinuxSeccompArg],
) -> Result<Option<Vec<SeccompCondition>>, SeccompError> {
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        match translate_arg(syscall, arg)? {
            Some(c) => conditions.push(c),
            None => {
                tracing::debug!(
                    syscall,
                    mask = arg.value(),
                    value = arg.value_two().unwrap_or(0),
                    "seccomp: SCMP_CMP_MASKED_EQ value has bits outside the mask; \
                     the rule can never match and is dropped"
                );
                return Ok(None);
            }
        }
    }
    Ok(Some(conditions))
}

/// One OCI argument comparison as a 64-bit seccompiler condition; `None` if it never holds.
fn translate_arg(
    syscall: &str,
    arg: &LinuxSeccompArg,
) -> Result<Option<SeccompCondition>, SeccompError> {
    let bad_index = || SeccompError::ArgIndex {
        syscall: syscall.to_string(),
        index: arg.index(),
    };
    let index = u8::try_from(arg.index()).map_err(|_| bad_index())?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (mask, expected) = (arg.value(), arg.value_two().unwrap_or(0));
            // seccompiler masks the expected value too, which would make this match.
            if expected & !mask != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), expected)
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|_| bad_index())
}

/// The stack: the default filter first, then the action filters with the first-listed action
/// last (see the module docs); [`order_for_install`] may still move one filter to the end.
fn build_stack(
    resolved: &Resolved,
    default: &SeccompAction,
    native: Native,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut programs = Vec::new();
    if *default != SeccompAction::Allow {
        let every_rule = every_rule(resolved);
        // Only for ERRNO defaults, as runc: a KILL or TRAP default stays what the author chose.
        let enosys_above = match default {
            SeccompAction::Errno(_) => resolved.max_nr,
            _ => None,
        };
        let guards = Guards {
            native,
            enosys_above,
        };
        let label = format!("the default action {}", action_label(default));
        programs.push(build_program(
            every_rule,
            SeccompAction::Allow,
            default.clone(),
            guards,
            &label,
        )?);
    }
    for a in resolved.by_action.iter().rev() {
        if a.action == SeccompAction::Allow || a.rules.is_empty() {
            continue;
        }
        let guards = Guards {
            native,
            enosys_above: None,
        };
        let label = format!("action {}", action_label(&a.action));
        programs.push(build_program(
            a.rules.clone(),
            a.action.clone(),
            SeccompAction::Allow,
            guards,
            &label,
        )?);
    }
    Ok(programs)
}

/// Every action's rules in one set: what the default action's filter lets through.
fn every_rule(resolved: &Resolved) -> RuleSet {
    let mut all = RuleSet::new();
    for a in &resolved.by_action {
        for (&nr, m) in &a.rules {
            add_matcher(&mut all, nr, m);
        }
    }
    all
}

/// The checks this module puts in front of seccompiler's rules, after its architecture check.
#[derive(Clone, Copy)]
struct Guards {
    native: Native,
    /// Syscall numbers above this get `ENOSYS`.
    enosys_above: Option<i64>,
}

/// Rule sets larger than this are compiled as runs of syscall numbers (see [`build_program`]).
const RULES_PER_CHAIN: usize = 32;
/// At most this many runs, so that every jump of the search fits in 8 bits.
const MAX_RUNS: usize = 256;

/// One program for `rules`. seccompiler compiles rules to a chain that a syscall walks until
/// its number matches (about 5 instructions per syscall), so a large rule set is compiled as
/// runs of consecutive syscall numbers that share an outcome ([`runs`]), found by a binary
/// search on the number ([`search`]): a run where every number is allowed (or every number is
/// absent) is one return instruction; only syscalls with argument conditions go through a
/// seccompiler chain. The default profile becomes about a sixth of the instructions of one
/// chain, and a syscall runs through about 20 of them instead of up to 600. The kernel
/// translates and JIT-compiles the whole program when it is attached and runs it for every
/// syscall number to find those it can allow without running it, so the size and the path
/// length are both paid at every container start.
fn build_program(
    rules: RuleSet,
    match_action: SeccompAction,
    mismatch_action: SeccompAction,
    guards: Guards,
    label: &str,
) -> Result<BpfProgram, SeccompError> {
    if rules.len() > RULES_PER_CHAIN {
        let runs = runs(&rules, &match_action, &mismatch_action);
        if runs.len() <= MAX_RUNS {
            let program = search(runs, &match_action, &mismatch_action, guards, label)?;
            if program.len() <= MAX_FILTER_INSTRUCTIONS {
                return Ok(program);
            }
        }
    }
    build_linear(rules, match_action, mismatch_action, guards, label)
}

/// What a run of syscall numbers gets.
#[derive(Debug)]
enum Run {
    /// Every number of the run: this return value (an action without conditions).
    Returns(u32),
    /// The run's numbers have argument conditions: these rules, compiled by seccompiler.
    Rules(RuleSet),
}

/// The number line from 0 cut into runs, each with the lowest number it covers (the last
/// one goes on to the largest number): neighbouring numbers with the same unconditional
/// outcome share a run, as do neighbouring numbers with conditions.
fn runs(rules: &RuleSet, on_match: &SeccompAction, on_mismatch: &SeccompAction) -> Vec<(u32, Run)> {
    let (matched, missed) = (u32::from(on_match.clone()), u32::from(on_mismatch.clone()));
    fn push(out: &mut Vec<(u32, Run)>, low: u32, run: Run) {
        match (out.last_mut(), run) {
            (Some((_, Run::Returns(a))), Run::Returns(b)) if *a == b => {}
            (Some((_, Run::Rules(set))), Run::Rules(more)) => set.extend(more),
            (_, run) => out.push((low, run)),
        }
    }
    let mut out: Vec<(u32, Run)> = Vec::new();
    let mut next = 0u32;
    for (&nr, m) in rules {
        let Ok(nr) = u32::try_from(nr) else {
            continue;
        };
        if nr > next {
            push(&mut out, next, Run::Returns(missed));
        }
        let run = match m {
            Matcher::Always => Run::Returns(matched),
            Matcher::AnyOf(_) => Run::Rules(RuleSet::from([(i64::from(nr), m.clone())])),
        };
        push(&mut out, nr, run);
        next = nr.saturating_add(1);
    }
    push(&mut out, next, Run::Returns(missed));
    out
}

/// The program for `runs`: the architecture check and guards, once, then a binary search
/// on the syscall number whose leaves are the runs' return instructions or jumps to their
/// seccompiler chains (appended after the search; each still starts with its own
/// architecture check).
fn search(
    runs: Vec<(u32, Run)>,
    on_match: &SeccompAction,
    on_mismatch: &SeccompAction,
    guards: Guards,
    label: &str,
) -> Result<BpfProgram, SeccompError> {
    let mut program = prologue(on_match, on_mismatch, guards, label)?;
    let lows: Vec<u32> = runs.iter().map(|(low, _)| *low).collect();
    let mut chains: Vec<BpfProgram> = Vec::new();
    let mut leaves = Vec::with_capacity(runs.len());
    for (_, run) in runs {
        leaves.push(match run {
            Run::Returns(k) => Leaf::Return(k),
            Run::Rules(rules) => {
                chains.push(compile_rules(
                    rules,
                    on_match.clone(),
                    on_mismatch.clone(),
                    guards.native,
                    label,
                )?);
                Leaf::Chain(chains.len() - 1)
            }
        });
    }
    let mut jumps = Vec::new();
    search_tree(&mut program, &lows, &leaves, 0..leaves.len(), &mut jumps);
    let mut start = program.len();
    let mut starts = Vec::with_capacity(chains.len());
    for chain in &chains {
        starts.push(start);
        start += chain.len();
    }
    for (pc, chain) in jumps {
        program[pc].k = (starts[chain] - (pc + 1)) as u32;
    }
    program.extend(chains.into_iter().flatten());
    Ok(program)
}

/// A leaf of the search: return a value, or jump to the chain with this index.
enum Leaf {
    Return(u32),
    Chain(usize),
}

/// seccompiler's architecture check followed by the guards, leaving the syscall number
/// loaded: the same checks, in the same order, as every chain [`build_linear`] makes.
fn prologue(
    on_match: &SeccompAction,
    on_mismatch: &SeccompAction,
    guards: Guards,
    label: &str,
) -> Result<BpfProgram, SeccompError> {
    // An empty rule set: the architecture check and the mismatch action's return.
    let mut program = compile_rules(
        RuleSet::new(),
        on_match.clone(),
        on_mismatch.clone(),
        guards.native,
        label,
    )?;
    if program.len() != ARCH_CHECK_LEN + 1 || !starts_with_arch_check(&program) {
        return Err(build_err(
            label,
            "unexpected program layout from seccompiler (empty filter)".into(),
        ));
    }
    program.truncate(ARCH_CHECK_LEN);
    program.push(stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR));
    program.extend(guard_checks(guards).map_err(|r| build_err(label, r))?);
    Ok(program)
}

/// The search over the leaves in `range` (the syscall number in the accumulator): the leaf
/// itself when one is left, else "number >= the upper half's low" with the lower half's
/// search right after it (taken when false) and the upper half's after that. Records
/// (instruction, chain) for each jump to a chain.
fn search_tree(
    out: &mut BpfProgram,
    lows: &[u32],
    leaves: &[Leaf],
    range: std::ops::Range<usize>,
    jumps: &mut Vec<(usize, usize)>,
) {
    if range.len() == 1 {
        match leaves[range.start] {
            Leaf::Return(k) => out.push(stmt(BPF_RET_K, k)),
            Leaf::Chain(chain) => {
                jumps.push((out.len(), chain));
                out.push(stmt(BPF_JMP_JA, 0));
            }
        }
        return;
    }
    let mid = range.start + range.len() / 2;
    let at = out.len();
    out.push(jump(BPF_JMP_JGE_K, lows[mid], 0, 0));
    search_tree(out, lows, leaves, range.start..mid, jumps);
    // A search over n leaves is 2n - 1 instructions, and n <= MAX_RUNS / 2 here.
    out[at].jt = u8::try_from(out.len() - at - 1).unwrap_or(u8::MAX);
    search_tree(out, lows, leaves, mid..range.end, jumps);
}

/// `rules` as seccompiler compiles them: its architecture check, then one chain.
fn compile_rules(
    rules: RuleSet,
    match_action: SeccompAction,
    mismatch_action: SeccompAction,
    native: Native,
    label: &str,
) -> Result<BpfProgram, SeccompError> {
    let rules = rules
        .into_iter()
        .map(|(nr, m)| match m {
            Matcher::Always => (nr, Vec::new()),
            Matcher::AnyOf(r) => (nr, r),
        })
        .collect();
    let filter = SeccompFilter::new(rules, mismatch_action, match_action, native.target)
        .map_err(|e| build_err(label, e.to_string()))?;
    filter.try_into().map_err(|e| match e {
        BackendError::FilterTooLarge(len) => too_large(label, len),
        other => build_err(label, other.to_string()),
    })
}

fn build_linear(
    rules: RuleSet,
    match_action: SeccompAction,
    mismatch_action: SeccompAction,
    guards: Guards,
    label: &str,
) -> Result<BpfProgram, SeccompError> {
    let mut program = compile_rules(rules, match_action, mismatch_action, guards.native, label)?;
    insert_guards(&mut program, guards).map_err(|r| build_err(label, r))?;
    if program.len() > MAX_FILTER_INSTRUCTIONS {
        return Err(too_large(label, program.len()));
    }
    Ok(program)
}

fn build_err(label: &str, reason: String) -> SeccompError {
    SeccompError::Build {
        action: label.to_string(),
        reason,
    }
}

fn too_large(label: &str, len: usize) -> SeccompError {
    SeccompError::TooLarge {
        action: label.to_string(),
        len,
        max: MAX_FILTER_INSTRUCTIONS,
    }
}

/// Inserts the x32 and "newer than the profile" checks right after seccompiler's architecture
/// check. No jump crosses that point (the check only jumps over its own kill instruction, and
/// the rules after it jump only forward among themselves), so inserting there keeps every jump
/// target.
fn insert_guards(program: &mut BpfProgram, guards: Guards) -> Result<(), String> {
    if !starts_with_arch_check(program) {
        return Err("unexpected program layout from seccompiler (no architecture check)".into());
    }
    let checks = guard_checks(guards)?;
    if !checks.is_empty() {
        let load = std::iter::once(stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR));
        program.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, load.chain(checks));
    }
    Ok(())
}

/// Whether `program` starts with seccompiler's architecture check (load the arch, compare,
/// return on mismatch) and goes on after it.
fn starts_with_arch_check(program: &[sock_filter]) -> bool {
    program.len() > ARCH_CHECK_LEN
        && program[0].code == BPF_LD_W_ABS
        && program[0].k == SECCOMP_DATA_ARCH
        && program[1].code == BPF_JMP_JEQ_K
        && (program[1].jt, program[1].jf) == (1, 0)
        && program[2].code == BPF_RET_K
}

/// The x32 and "newer than the profile" checks of `guards`, for the syscall number in the
/// accumulator (which they leave there).
fn guard_checks(guards: Guards) -> Result<BpfProgram, String> {
    let enosys = stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    let mut checks = Vec::new();
    if guards.native.has_x32 {
        checks.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        checks.push(enosys.clone());
    }
    if let Some(max) = guards.enosys_above {
        let max = u32::try_from(max).map_err(|_| format!("syscall number {max} out of range"))?;
        checks.push(jump(BPF_JMP_JGT_K, max, 0, 1));
        checks.push(enosys);
    }
    Ok(checks)
}

/// Every filter installed applies to the `seccomp(2)` calls installing the next ones, so a
/// filter that refuses that call must be installed last. Keeps the order of the others.
fn order_for_install(
    programs: Vec<BpfProgram>,
    flags: u32,
    native: Native,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let (mut ordered, blocking): (Vec<_>, Vec<_>) = programs
        .into_iter()
        .partition(|p| allows_install_call(p, flags, native));
    if blocking.len() > 1 {
        return Err(SeccompError::Build {
            action: "the stack".into(),
            reason: format!(
                "{} filters refuse seccomp(2) itself, so the stack cannot be installed \
                 (at most one rule action may cover seccomp)",
                blocking.len()
            ),
        });
    }
    ordered.extend(blocking);
    Ok(ordered)
}

/// Whether `program` lets through the `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)` call
/// that installs the next filter (the pointer argument is taken as 0).
fn allows_install_call(program: &[sock_filter], flags: u32, native: Native) -> bool {
    let data = SeccompData {
        nr: syscalls::Sysno::seccomp.id() as u32,
        arch: native.oci as u32,
        args: [
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
            u64::from(flags),
            0,
            0,
            0,
            0,
        ],
    };
    matches!(
        evaluate(program, &data).map(|ret| ret & libc::SECCOMP_RET_ACTION_FULL),
        Some(libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_LOG)
    )
}

/// `struct seccomp_data` without the instruction pointer (no rule reads it).
struct SeccompData {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl SeccompData {
    /// The 32-bit word at `offset`, as `BPF_LD|BPF_W|BPF_ABS` reads it (little-endian).
    fn word(&self, offset: u32) -> Option<u32> {
        match offset {
            SECCOMP_DATA_NR => Some(self.nr),
            SECCOMP_DATA_ARCH => Some(self.arch),
            16..=60 if offset & 3 == 0 => {
                let arg = self.args[(offset as usize - 16) / 8];
                Some(if offset & 7 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                })
            }
            _ => None,
        }
    }
}

/// Runs a program as the kernel would, for the opcodes seccompiler and this module emit;
/// `None` on any other opcode, or a jump out of the program.
fn evaluate(program: &[sock_filter], data: &SeccompData) -> Option<u32> {
    run(program, data).map(|(ret, _)| ret)
}

/// [`evaluate`], with the number of instructions it ran.
fn run(program: &[sock_filter], data: &SeccompData) -> Option<(u32, usize)> {
    let (mut pc, mut acc) = (0usize, 0u32);
    for steps in 1.. {
        let insn = program.get(pc)?;
        pc += 1;
        let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            BPF_LD_W_ABS => acc = data.word(insn.k)?,
            BPF_ALU_AND_K => acc &= insn.k,
            BPF_JMP_JA => pc += insn.k as usize,
            BPF_JMP_JEQ_K => pc += branch(acc == insn.k),
            BPF_JMP_JGT_K => pc += branch(acc > insn.k),
            BPF_JMP_JGE_K => pc += branch(acc >= insn.k),
            BPF_RET_K => return Some((insn.k, steps)),
            _ => return None,
        }
    }
    None
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn check_stack_size(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    let total: usize = programs
        .iter()
        .map(|p| p.len() + FILTER_PATH_OVERHEAD)
        .sum();
    if total > MAX_STACK_INSTRUCTIONS {
        return Err(SeccompError::StackTooLarge {
            total,
            max: MAX_STACK_INSTRUCTIONS,
        });
    }
    Ok(())
}

/// A rule's names for messages: the first three and how many more.
fn rule_label(names: &[String]) -> String {
    match names.len() {
        0..=3 => names.join(","),
        n => format!("{} and {} more", names[..3].join(","), n - 3),
    }
}

fn action_label(action: &SeccompAction) -> String {
    match action {
        SeccompAction::Allow => "SCMP_ACT_ALLOW".into(),
        SeccompAction::Errno(e) => format!("SCMP_ACT_ERRNO({e})"),
        SeccompAction::KillThread => "SCMP_ACT_KILL_THREAD".into(),
        SeccompAction::KillProcess => "SCMP_ACT_KILL_PROCESS".into(),
        SeccompAction::Log => "SCMP_ACT_LOG".into(),
        SeccompAction::Trace(d) => format!("SCMP_ACT_TRACE({d})"),
        SeccompAction::Trap => "SCMP_ACT_TRAP".into(),
    }
}

/// Why `seccomp(2)` failed, in words a user can act on.
fn install_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EACCES => {
            " (no_new_privs is not set and the caller lacks CAP_SYS_ADMIN: set \
             noNewPrivileges or install before dropping capabilities)"
        }
        Errno::EINVAL => " (the kernel rejected the program or a SECCOMP_FILTER_FLAG_*)",
        Errno::ENOMEM => " (too many seccomp instructions in all, with filters already installed)",
        _ => "",
    }
}

impl CompiledFilter {
    /// Installs the stack with `seccomp(SECCOMP_SET_MODE_FILTER)`, each program with the
    /// profile's flags. Does not set `no_new_privs`: without it the caller needs
    /// `CAP_SYS_ADMIN` (job-init has it until it drops capabilities). See the module docs for
    /// where to call it. On an error some programs may already be installed: the process must
    /// not go on to run the container.
    pub fn install(&self) -> Result<(), SeccompError> {
        let count = self.programs.len();
        self.install_raw().map_err(|(i, failure)| match failure {
            InstallFailure::Errno(errno) => SeccompError::Install {
                index: i + 1,
                count,
                errno,
                hint: install_hint(errno),
            },
            InstallFailure::ThreadSync(tid) => SeccompError::ThreadSync {
                index: i + 1,
                count,
                tid,
            },
        })
    }

    /// The installation itself, without allocating, so that it is safe between `fork` and
    /// `execve` in a multi-threaded parent. Fails with the index of the failed program.
    fn install_raw(&self) -> Result<(), (usize, InstallFailure)> {
        for (i, program) in self.programs.iter().enumerate() {
            let prog = libc::sock_fprog {
                // Every program is at most MAX_FILTER_INSTRUCTIONS long (compile, from_bytes).
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points at `program`, which outlives the call; seccompiler's
            // `sock_filter` is `repr(C)` with the same fields, size and alignment as the
            // kernel's (checked at compile time above); the kernel only reads it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::c_ulong::from(self.flags),
                    &prog as *const libc::sock_fprog,
                )
            };
            match rc {
                0 => {}
                // With TSYNC, a positive result is the thread that could not be synchronized.
                tid if tid > 0 => return Err((i, InstallFailure::ThreadSync(tid))),
                _ => return Err((i, InstallFailure::Errno(Errno::last()))),
            }
        }
        Ok(())
    }

    /// The programs in install order.
    pub fn programs(&self) -> &[BpfProgram] {
        &self.programs
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits every program is installed with.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Instructions in all programs (what the kernel runs at most per syscall, plus overhead).
    pub fn instruction_count(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }

    /// A self-checking serialization: magic, version, flags, the programs, and a checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.instruction_count() * 8);
        out.extend_from_slice(BYTES_MAGIC);
        out.extend_from_slice(&TRANSLATION_VERSION.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.programs.len() as u32).to_le_bytes());
        for program in &self.programs {
            out.extend_from_slice(&(program.len() as u32).to_le_bytes());
            for insn in program {
                out.extend_from_slice(&insn.code.to_le_bytes());
                out.push(insn.jt);
                out.push(insn.jf);
                out.extend_from_slice(&insn.k.to_le_bytes());
            }
        }
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote; any damage (truncation, a flipped bit,
    /// another version) is an error, never a different filter.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SeccompError> {
        let bad = |what: &str| SeccompError::Malformed(what.to_string());
        let (body, sum) = bytes
            .split_last_chunk::<8>()
            .ok_or_else(|| bad("too short"))?;
        if fnv1a64(body) != u64::from_le_bytes(*sum) {
            return Err(bad("checksum mismatch"));
        }
        let mut r = ByteReader(body);
        if r.take(8).ok_or_else(|| bad("too short"))? != BYTES_MAGIC {
            return Err(bad("not a compiled seccomp filter"));
        }
        if r.u32().ok_or_else(|| bad("too short"))? != TRANSLATION_VERSION {
            return Err(bad("compiled by another version"));
        }
        let flags = r.u32().ok_or_else(|| bad("too short"))?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(bad("unknown flags"));
        }
        let count = r.u32().ok_or_else(|| bad("too short"))?;
        let mut programs = Vec::new();
        for _ in 0..count {
            programs.push(read_program(&mut r).map_err(bad)?);
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        check_stack_size(&programs)?;
        Ok(Self { programs, flags })
    }
}

enum InstallFailure {
    Errno(Errno),
    ThreadSync(i64),
}

fn read_program(r: &mut ByteReader) -> Result<BpfProgram, &'static str> {
    let len = r.u32().ok_or("too short")? as usize;
    if len == 0 || len > MAX_FILTER_INSTRUCTIONS {
        return Err("program length out of range");
    }
    let raw = r.take(len * 8).ok_or("too short")?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Reads little-endian fields off the front of a byte slice.
struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// FNV-1a, 64 bits: a checksum against damage, not against an attacker (the cache directory
/// must be writable by root only, which [`compile_cached`] checks).
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a, 128 bits: stable across builds and Rust versions (unlike `DefaultHasher`), for
/// cache file names. A collision cannot load the wrong filter: the file holds the full key.
fn fnv1a128(data: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for &b in data {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

/// What [`compile_cached`] did, for the tests and the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheOutcome {
    Hit,
    Stored,
    Uncached,
}

/// [`compile`] with a cache: `cache_dir/<hash>.bpf`, where the hash covers the profile's
/// canonical JSON, this crate's version and the architecture. A hit is loaded without
/// compiling; a miss, a damaged file or one for another profile is compiled and (re)written
/// atomically (a `0600` temporary file renamed into place). The directory is created `0700`;
/// if it is not owned by this user or is writable by group or others, the cache is bypassed,
/// since a planted file would become the container's filter. Cache failures only warn:
/// compile errors are the only errors.
pub fn compile_cached(
    profile: &LinuxSeccomp,
    cache_dir: &Path,
) -> Result<CompiledFilter, SeccompError> {
    compile_cached_outcome(profile, cache_dir).map(|(filter, _)| filter)
}

fn compile_cached_outcome(
    profile: &LinuxSeccomp,
    cache_dir: &Path,
) -> Result<(CompiledFilter, CacheOutcome), SeccompError> {
    let key = cache_key(profile)?;
    let path = cache_dir.join(format!("{:032x}.bpf", fnv1a128(&key)));
    if let Err(reason) = prepare_cache_dir(cache_dir) {
        tracing::warn!(dir = %cache_dir.display(), %reason, "seccomp cache bypassed");
        return Ok((compile(profile)?, CacheOutcome::Uncached));
    }
    match load_cached(&path, &key) {
        Ok(Some(filter)) => {
            tracing::debug!(path = %path.display(), "seccomp cache hit");
            return Ok((filter, CacheOutcome::Hit));
        }
        Ok(None) => {}
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "seccomp cache entry unusable, recompiling")
        }
    }
    let filter = compile(profile)?;
    match store_cached(&path, &key, &filter) {
        Ok(()) => Ok((filter, CacheOutcome::Stored)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "seccomp cache not written");
            Ok((filter, CacheOutcome::Uncached))
        }
    }
}

/// Everything the compiled program depends on: translation version, crate version, arch and
/// the profile's JSON (oci-spec serializes fields in a fixed order, so equal profiles give
/// equal bytes whatever the layout of the config.json they came from).
fn cache_key(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    let json = serde_json::to_vec(profile).map_err(|e| SeccompError::Serialize(e.to_string()))?;
    let mut key = format!(
        "job-runtime seccomp v{TRANSLATION_VERSION} {} {}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
    .into_bytes();
    key.extend_from_slice(&json);
    Ok(key)
}

fn prepare_cache_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create: {e}"))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("stat: {e}"))?;
    trusted(&meta, true)
}

/// A cache entry or directory is trusted only when it is ours and nobody else can write it.
fn trusted(meta: &fs::Metadata, want_dir: bool) -> Result<(), String> {
    if want_dir && !meta.is_dir() || !want_dir && !meta.is_file() {
        return Err("not a plain directory or file".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} is writable by group or others",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// `Ok(None)` when there is no entry; `Err` when there is one that cannot be used.
fn load_cached(path: &Path, key: &[u8]) -> Result<Option<CompiledFilter>, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
    trusted(&meta, false)?;
    let mut bytes = Vec::new();
    file.take(MAX_CACHE_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    decode_cache_entry(&bytes, key).map(Some)
}

/// A cache entry: magic, the key's length and bytes, then [`CompiledFilter::to_bytes`].
fn encode_cache_entry(key: &[u8], filter: &CompiledFilter) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&filter.to_bytes());
    out
}

fn decode_cache_entry(bytes: &[u8], key: &[u8]) -> Result<CompiledFilter, String> {
    let mut r = ByteReader(bytes);
    if r.take(8) != Some(CACHE_MAGIC.as_slice()) {
        return Err("not a seccomp cache entry".into());
    }
    let len = r.u32().ok_or("truncated")? as usize;
    if r.take(len) != Some(key) {
        return Err("entry is for another profile or version".into());
    }
    CompiledFilter::from_bytes(r.0).map_err(|e| e.to_string())
}

/// Writes the entry to a private temporary file and renames it over `path`, so a reader sees
/// either the old entry or the whole new one. Concurrent writers write equal bytes.
fn store_cached(path: &Path, key: &[u8], filter: &CompiledFilter) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(&encode_cache_entry(key, filter))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp_default::{DENIED, DENIED_SOCKET_FAMILIES};
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSyscallBuilder};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// How a forked child ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Child {
        Exit(i32),
        Signal(Signal),
    }

    /// Exit code of a child whose filter could not be installed.
    const INSTALL_FAILED: i32 = 250;

    /// Forks; the child installs `filter` and exits with `probe()`. Seccomp filters are
    /// permanent and inherited, so they are only ever installed in a child. The child only makes
    /// raw syscalls (install_raw does not allocate), so locks other test threads held at fork
    /// time do not matter. No no_new_privs: the tests run as root, which has CAP_SYS_ADMIN.
    fn in_child(filter: &CompiledFilter, probe: impl FnOnce() -> i32) -> Child {
        // SAFETY: the child calls only async-signal-safe code (raw syscalls) and then _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = match filter.install_raw() {
                    Ok(()) => probe(),
                    Err(_) => INSTALL_FAILED,
                };
                // SAFETY: ends the child at once, without the parent's destructors or atexit.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => Child::Exit(code),
                WaitStatus::Signaled(_, sig, _) => Child::Signal(sig),
                other => panic!("child ended oddly: {other:?}"),
            },
        }
    }

    /// The return value of a raw syscall, or `-errno`.
    fn raw(nr: i64, a: [u64; 6]) -> i64 {
        // SAFETY: the tests pass pointers to live buffers or invalid addresses the kernel
        // rejects with EFAULT; no call here changes memory Rust relies on.
        let rc = unsafe { libc::syscall(nr as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if rc == -1 {
            -(Errno::last_raw() as i64)
        } else {
            rc
        }
    }

    /// The errno of a raw syscall, 0 on success: what the probes exit with.
    fn errno_of(nr: i64, a: [u64; 6]) -> i32 {
        let rc = raw(nr, a);
        if rc < 0 {
            (-rc) as i32
        } else {
            0
        }
    }

    fn nr(name: &str) -> i64 {
        i64::from(
            syscalls::Sysno::from_str(name)
                .unwrap_or_else(|()| panic!("{name}"))
                .id(),
        )
    }

    fn default_filter() -> &'static CompiledFilter {
        static FILTER: OnceLock<CompiledFilter> = OnceLock::new();
        FILTER.get_or_init(|| compile(&default_profile()).expect("default profile compiles"))
    }

    fn no_filter() -> CompiledFilter {
        CompiledFilter {
            programs: Vec::new(),
            flags: 0,
        }
    }

    /// A profile from JSON, as it would appear in config.json.
    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).expect("profile JSON")
    }

    const EPERM: i32 = libc::EPERM;
    const ENOSYS: i32 = libc::ENOSYS;

    // ---- the default profile, on the real kernel ----

    #[test]
    fn seccomp_default_denies_every_listed_syscall_with_eperm() {
        // vhangup takes no argument that could make it harmless if it were ever allowed.
        let names: Vec<&str> = DENIED
            .iter()
            .copied()
            .filter(|n| *n != "vhangup" && syscalls::Sysno::from_str(n).is_ok())
            .collect();
        let numbers: Vec<i64> = names.iter().map(|n| nr(n)).collect();
        // All-ones arguments make each call fail harmlessly should the filter let it through.
        let outcome = in_child(default_filter(), || {
            for (i, &n) in numbers.iter().enumerate() {
                if errno_of(n, [u64::MAX; 6]) != EPERM {
                    return i as i32 + 1;
                }
            }
            0
        });
        if let Child::Exit(code @ 1..=200) = outcome {
            panic!("{} is not refused with EPERM", names[code as usize - 1]);
        }
        assert_eq!(outcome, Child::Exit(0));
        assert!(names.len() >= 45, "{names:?}");
    }

    #[test]
    fn seccomp_default_denies_unshare_user_namespace() {
        let unshare = || errno_of(nr("unshare"), [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]);
        // Control: without the filter root can make a user namespace (unless the host forbids).
        let control = in_child(&no_filter(), unshare);
        eprintln!("unshare(CLONE_NEWUSER) without filter: {control:?}");
        assert_eq!(in_child(default_filter(), unshare), Child::Exit(EPERM));
    }

    #[test]
    fn seccomp_default_denies_mount_and_keyctl() {
        let mount = || {
            let a = [
                c"none".as_ptr() as u64,
                c"/nonexistent-seccomp-test".as_ptr() as u64,
                c"tmpfs".as_ptr() as u64,
                0,
                0,
                0,
            ];
            errno_of(nr("mount"), a)
        };
        // Control: the unfiltered call reaches the kernel and fails on the missing directory.
        assert_eq!(in_child(&no_filter(), mount), Child::Exit(libc::ENOENT));
        assert_eq!(in_child(default_filter(), mount), Child::Exit(EPERM));

        // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3).
        let keyctl = || errno_of(nr("keyctl"), [0, (-3i64) as u64, 0, 0, 0, 0]);
        assert_eq!(in_child(default_filter(), keyctl), Child::Exit(EPERM));
        let io_uring = || {
            let mut params = [0u8; 120];
            errno_of(
                nr("io_uring_setup"),
                [1, params.as_mut_ptr() as u64, 0, 0, 0, 0],
            )
        };
        assert_eq!(in_child(default_filter(), io_uring), Child::Exit(EPERM));
    }

    /// Raw `clone(flags)` like fork: the new child exits at once; returns the errno or 0.
    fn clone_and_reap(flags: u64) -> i32 {
        let pid = raw(nr("clone"), [flags | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
        if pid == 0 {
            // SAFETY: in the new child: leave at once.
            unsafe { libc::_exit(0) }
        }
        if pid < 0 {
            return (-pid) as i32;
        }
        reap(pid as libc::pid_t)
    }

    /// Waits for `pid`; 0 when it exited with 0, 100 otherwise.
    fn reap(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            0
        } else {
            100
        }
    }

    extern "C" fn thread_main(_: *mut libc::c_void) -> *mut libc::c_void {
        std::ptr::null_mut()
    }

    #[test]
    fn seccomp_default_clone_without_namespaces_only() {
        let f = default_filter();
        for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWNS] {
            assert_eq!(
                in_child(f, || clone_and_reap(ns as u64)),
                Child::Exit(EPERM),
                "clone with {ns:#x}"
            );
        }
        assert_eq!(
            in_child(f, || clone_and_reap(0)),
            Child::Exit(0),
            "plain clone"
        );
        let fork_works = || {
            // SAFETY: the new child only _exits.
            match unsafe { libc::fork() } {
                0 => unsafe { libc::_exit(0) },
                pid if pid > 0 => reap(pid),
                _ => Errno::last_raw(),
            }
        };
        assert_eq!(in_child(f, fork_works), Child::Exit(0), "fork");
        // clone3 gives ENOSYS, so glibc's pthread_create falls back to clone and works.
        let clone3 = || errno_of(nr("clone3"), [0, 0, 0, 0, 0, 0]);
        assert_eq!(in_child(f, clone3), Child::Exit(ENOSYS));
        let thread_works = || {
            let mut t: libc::pthread_t = 0;
            // SAFETY: `t` is a valid out pointer and thread_main a valid thread function.
            let rc = unsafe {
                libc::pthread_create(&mut t, std::ptr::null(), thread_main, std::ptr::null_mut())
            };
            if rc != 0 {
                return rc;
            }
            // SAFETY: `t` was just created and is joined once.
            unsafe { libc::pthread_join(t, std::ptr::null_mut()) }
        };
        assert_eq!(in_child(f, thread_works), Child::Exit(0), "pthread_create");
    }

    #[test]
    fn seccomp_default_socket_families() {
        let f = default_filter();
        let socket = |family: u64| {
            move || errno_of(nr("socket"), [family, libc::SOCK_STREAM as u64, 0, 0, 0, 0])
        };
        for family in DENIED_SOCKET_FAMILIES {
            assert_eq!(
                in_child(f, socket(family)),
                Child::Exit(EPERM),
                "family {family}"
            );
        }
        // The kernel reads only the low 32 bits of `domain`: garbage above must not pass.
        assert_eq!(
            in_child(f, socket(0x1_0000_0000 | libc::AF_VSOCK as u64)),
            Child::Exit(EPERM)
        );
        assert_eq!(in_child(f, socket(libc::AF_UNIX as u64)), Child::Exit(0));
        assert_eq!(in_child(f, socket(libc::AF_INET as u64)), Child::Exit(0));
    }

    #[test]
    fn seccomp_default_allows_ordinary_syscalls() {
        let probe = || {
            let mut buf = [0u8; 256];
            let checks = [
                raw(nr("getpid"), [0; 6]),
                raw(nr("write"), [2, buf.as_ptr() as u64, 0, 0, 0, 0]),
                raw(
                    nr("openat"),
                    [
                        libc::AT_FDCWD as u64,
                        c"/dev/null".as_ptr() as u64,
                        0,
                        0,
                        0,
                        0,
                    ],
                ),
                raw(nr("getcwd"), [buf.as_mut_ptr() as u64, 256, 0, 0, 0, 0]),
                raw(nr("personality"), [0xffff_ffff, 0, 0, 0, 0, 0]),
                raw(
                    nr("prctl"),
                    [libc::PR_GET_NO_NEW_PRIVS as u64, 0, 0, 0, 0, 0],
                ),
            ];
            match checks.iter().position(|&rc| rc < 0) {
                Some(i) => i as i32 + 1,
                // install() leaves no_new_privs alone: still 0 here.
                None if checks[5] != 0 => 50,
                None => 0,
            }
        };
        assert_eq!(in_child(default_filter(), probe), Child::Exit(0));
        // personality with ADDR_NO_RANDOMIZE is not among the allowed values.
        let aslr_off = || errno_of(nr("personality"), [0x0040000, 0, 0, 0, 0, 0]);
        assert_eq!(in_child(default_filter(), aslr_off), Child::Exit(EPERM));
    }

    #[test]
    fn seccomp_default_enosys_for_newer_and_x32_syscalls() {
        let f = default_filter();
        // Above every syscall the profile names: ENOSYS, so libc falls back.
        assert_eq!(in_child(f, || errno_of(511, [0; 6])), Child::Exit(ENOSYS));
        if std::env::consts::ARCH == "x86_64" {
            let x32_getpid = (X32_SYSCALL_BIT as i64) | nr("getpid");
            assert_eq!(
                in_child(f, || errno_of(x32_getpid, [0; 6])),
                Child::Exit(ENOSYS)
            );
        }
    }

    // ---- translation of custom profiles ----

    #[test]
    fn seccomp_errno_rule_with_errno_ret() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99}]
        })))
        .unwrap();
        assert_eq!(f.programs().len(), 1);
        let getcwd = || {
            let mut buf = [0u8; 64];
            errno_of(nr("getcwd"), [buf.as_mut_ptr() as u64, 64, 0, 0, 0, 0])
        };
        assert_eq!(in_child(&f, getcwd), Child::Exit(99));
        assert_eq!(
            in_child(&f, || errno_of(nr("getpid"), [0; 6])),
            Child::Exit(0)
        );
    }

    /// Compiles "getpid with arg0 <op> value -> ERRNO 77" and checks which arg0 match.
    fn check_operator(op: &str, value: u64, value_two: Option<u64>, cases: &[(u64, bool)]) {
        let mut arg = serde_json::json!({"index": 0, "value": value, "op": op});
        if let Some(v2) = value_two {
            arg["valueTwo"] = v2.into();
        }
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77,
                          "args": [arg]}]
        })))
        .unwrap();
        let getpid = nr("getpid");
        let outcome = in_child(&f, || {
            for (i, &(arg0, matches)) in cases.iter().enumerate() {
                let expected = if matches { 77 } else { 0 };
                if errno_of(getpid, [arg0, 0, 0, 0, 0, 0]) != expected {
                    return i as i32 + 1;
                }
            }
            0
        });
        assert_eq!(
            outcome,
            Child::Exit(0),
            "{op}: case number (1-based) failed"
        );
    }

    #[test]
    fn seccomp_argument_operators() {
        let big = 0x1_0000_0005u64; // the same low 32 bits as 5: compares are 64-bit
        check_operator(
            "SCMP_CMP_EQ",
            5,
            None,
            &[(5, true), (4, false), (big, false)],
        );
        check_operator(
            "SCMP_CMP_NE",
            5,
            None,
            &[(5, false), (6, true), (big, true)],
        );
        check_operator(
            "SCMP_CMP_LT",
            5,
            None,
            &[(4, true), (5, false), (big, false)],
        );
        check_operator("SCMP_CMP_LE", 5, None, &[(5, true), (6, false), (0, true)]);
        check_operator(
            "SCMP_CMP_GT",
            5,
            None,
            &[(6, true), (5, false), (big, true)],
        );
        check_operator(
            "SCMP_CMP_GE",
            5,
            None,
            &[(5, true), (4, false), (u64::MAX, true)],
        );
        // MASKED_EQ: value is the mask, valueTwo the expected value.
        check_operator(
            "SCMP_CMP_MASKED_EQ",
            0xff00,
            Some(0x1200),
            &[(0x12ab, true), (0x13ab, false), (0x1_0000_12ff, true)],
        );
        // valueTwo absent means 0 (Go's omitempty drops it).
        check_operator(
            "SCMP_CMP_MASKED_EQ",
            0x3,
            None,
            &[(0x4, true), (0x5, false)],
        );
        // Expected bits outside the mask: never matches.
        check_operator(
            "SCMP_CMP_MASKED_EQ",
            0xf0,
            Some(0x1),
            &[(0x1, false), (0, false)],
        );
    }

    #[test]
    fn seccomp_conditions_are_anded_and_rules_ored() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77, "args": [
                    {"index": 0, "value": 40, "op": "SCMP_CMP_NE"},
                    {"index": 0, "value": 38, "op": "SCMP_CMP_NE"},
                    {"index": 1, "value": 10, "op": "SCMP_CMP_GT"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77, "args": [
                    {"index": 2, "value": 3, "op": "SCMP_CMP_EQ"}]}
            ]
        })))
        .unwrap();
        let getpid = nr("getpid");
        let cases: [([u64; 3], i32); 6] = [
            ([1, 11, 0], 77), // first rule: all three hold
            ([40, 11, 0], 0), // arg0 == 40
            ([38, 11, 0], 0), // arg0 == 38
            ([1, 10, 0], 0),  // arg1 not > 10
            ([40, 0, 3], 77), // second rule
            ([0, 0, 0], 0),
        ];
        let outcome = in_child(&f, || {
            for (i, (a, expected)) in cases.iter().enumerate() {
                if errno_of(getpid, [a[0], a[1], a[2], 0, 0, 0]) != *expected {
                    return i as i32 + 1;
                }
            }
            0
        });
        assert_eq!(outcome, Child::Exit(0));
    }

    #[test]
    fn seccomp_allowlist_stack_semantics() {
        // Default ERRNO(EPERM); an ALLOW list; an argument-dependent ALLOW; a stricter rule
        // overlapping an ALLOW; two ERRNO values; KILL.
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["exit", "exit_group", "getpid", "getuid", "getgid"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 55,
                 "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]},
                {"names": ["geteuid"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 66},
                {"names": ["getpgrp"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]}
            ]
        })))
        .unwrap();
        // Default filter + ERRNO(55) + ERRNO(66) + KILL_PROCESS.
        assert_eq!(f.programs().len(), 4);
        let cases: [(&str, u64, i32); 9] = [
            ("getpid", 0, 0),
            ("getuid", 4, 0),
            ("getuid", 3, 55), // the stricter overlapping rule wins
            ("geteuid", 7, 0),
            ("geteuid", 8, EPERM), // the ALLOW rule's condition fails: default
            ("getppid", 0, 66),
            ("gettid", 0, EPERM), // not listed: default
            ("getgid", 0, 0),
            ("getpgrp", 1, EPERM), // KILL rule does not match: default
        ];
        let numbers: Vec<i64> = cases.iter().map(|c| nr(c.0)).collect();
        let outcome = in_child(&f, || {
            for (i, (n, c)) in numbers.iter().zip(&cases).enumerate() {
                if errno_of(*n, [c.1, 0, 0, 0, 0, 0]) != c.2 {
                    return i as i32 + 1;
                }
            }
            0
        });
        assert_eq!(outcome, Child::Exit(0));
        let getpgrp = nr("getpgrp");
        assert_eq!(
            in_child(&f, || errno_of(getpgrp, [9, 0, 0, 0, 0, 0])),
            Child::Signal(Signal::SIGSYS)
        );
    }

    #[test]
    fn seccomp_kill_trap_trace_log_actions() {
        let with = |action: &str| {
            compile(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": action}]
            })))
            .unwrap()
        };
        let getppid = nr("getppid");
        let call = || errno_of(getppid, [0; 6]);
        for action in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_TRAP",
        ] {
            assert_eq!(
                in_child(&with(action), call),
                Child::Signal(Signal::SIGSYS),
                "{action}"
            );
        }
        // TRACE without a tracer: the kernel fails the call with ENOSYS.
        assert_eq!(in_child(&with("SCMP_ACT_TRACE"), call), Child::Exit(ENOSYS));
        assert_eq!(in_child(&with("SCMP_ACT_LOG"), call), Child::Exit(0));
    }

    #[test]
    fn seccomp_flags_and_foreign_architectures() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_ARM"],
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                      "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12}]
        })))
        .unwrap();
        assert_eq!(f.flags(), KNOWN_FLAGS);
        let getppid = nr("getppid");
        assert_eq!(in_child(&f, || errno_of(getppid, [0; 6])), Child::Exit(12));
    }

    #[test]
    fn seccomp_unknown_syscall_names_are_skipped() {
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["no_such_syscall", "getcwd"], "action": "SCMP_ACT_ERRNO",
                 "errnoRet": 99},
                {"names": ["socketcall_not_here"], "action": "SCMP_ACT_KILL"}
            ]
        })))
        .unwrap();
        assert_eq!(
            f.programs().len(),
            1,
            "the all-unknown KILL rule adds no filter"
        );
        let getcwd = || {
            let mut buf = [0u8; 64];
            errno_of(nr("getcwd"), [buf.as_mut_ptr() as u64, 64, 0, 0, 0, 0])
        };
        assert_eq!(in_child(&f, getcwd), Child::Exit(99));
    }

    #[test]
    fn seccomp_refuses_what_it_cannot_honour() {
        let err = |json: serde_json::Value| compile(&profile(json)).unwrap_err().to_string();
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(
            e.contains("getcwd") && e.contains("SCMP_ACT_NOTIFY is not supported"),
            "{e}"
        );
        let e = err(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(
            e.contains("defaultAction") && e.contains("not supported"),
            "{e}"
        );
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(e.contains("read") && e.contains("index 6"), "{e}");
        let e = err(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000
        }));
        assert!(e.contains("errnoRet 70000"), "{e}");
    }

    #[test]
    fn seccomp_filter_over_4096_instructions_is_an_error() {
        let rules: Vec<LinuxSyscall> = (0..1000u64)
            .map(|i| {
                LinuxSyscallBuilder::default()
                    .names(vec!["getpid".to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .args(vec![LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(i)
                        .op(LinuxSeccompOperator::ScmpCmpEq)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap()
            })
            .collect();
        let mut p = LinuxSeccomp::default();
        p.set_syscalls(Some(rules));
        let e = compile(&p).unwrap_err();
        assert!(matches!(e, SeccompError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn seccomp_bytes_round_trip_and_detect_damage() {
        let f = default_filter();
        let bytes = f.to_bytes();
        assert_eq!(&CompiledFilter::from_bytes(&bytes).unwrap(), f);
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert!(CompiledFilter::from_bytes(&flipped).is_err());
        assert!(CompiledFilter::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(CompiledFilter::from_bytes(b"").is_err());
    }

    #[test]
    fn seccomp_cache_hit_and_recompile_of_damaged_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("seccomp-cache");
        let p = default_profile();
        let (first, outcome) = compile_cached_outcome(&p, &cache).unwrap();
        assert_eq!(outcome, CacheOutcome::Stored);
        let entries: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1, "one file, no temporary left");
        let path = entries[0].path();
        assert_eq!(entries[0].metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);

        let (second, outcome) = compile_cached_outcome(&p, &cache).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        assert_eq!(second, first);
        assert_eq!(&second, default_filter());

        // Damaged: recompiled, and the entry rewritten.
        fs::write(&path, b"garbage").unwrap();
        let (third, outcome) = compile_cached_outcome(&p, &cache).unwrap();
        assert_eq!(outcome, CacheOutcome::Stored);
        assert_eq!(third, first);
        assert_eq!(
            compile_cached_outcome(&p, &cache).unwrap().1,
            CacheOutcome::Hit
        );

        // A valid entry for another profile under this name (a hash collision): not used.
        let other = profile(serde_json::json!({"defaultAction": "SCMP_ACT_LOG"}));
        let entry = encode_cache_entry(&cache_key(&other).unwrap(), &compile(&other).unwrap());
        fs::write(&path, entry).unwrap();
        let (fourth, outcome) = compile_cached_outcome(&p, &cache).unwrap();
        assert_eq!((outcome, fourth == first), (CacheOutcome::Stored, true));
    }

    #[test]
    fn seccomp_cache_bypassed_when_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let p = default_profile();
        let (f, outcome) = compile_cached_outcome(&p, dir.path()).unwrap();
        assert_eq!(outcome, CacheOutcome::Uncached);
        assert_eq!(&f, default_filter());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The kernel's verdict over a stack: newest filter first, the most restrictive action
    /// (as a signed number: KILL_PROCESS is the smallest) wins, the first of equals kept.
    fn stack_verdict(f: &CompiledFilter, nr: u32, args: [u64; 6]) -> u32 {
        let data = SeccompData {
            nr,
            arch: native_arch().unwrap().oci as u32,
            args,
        };
        let mut verdict = libc::SECCOMP_RET_ALLOW;
        for p in f.programs().iter().rev() {
            let ret = evaluate(p, &data).expect("program evaluates");
            let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if action(ret) < action(verdict) {
                verdict = ret;
            }
        }
        verdict
    }

    #[test]
    fn seccomp_default_verdict_for_every_listed_name() {
        use crate::seccomp_default::ALLOWED;
        let f = default_filter();
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let known = |n: &&&str| syscalls::Sysno::from_str(n).is_ok();
        let mut allowed = 0;
        for name in ALLOWED.iter().filter(known) {
            let v = stack_verdict(f, nr(name) as u32, [0; 6]);
            assert_eq!(v, libc::SECCOMP_RET_ALLOW, "{name}");
            allowed += 1;
        }
        for name in DENIED.iter().filter(known) {
            assert_eq!(stack_verdict(f, nr(name) as u32, [0; 6]), eperm, "{name}");
        }
        let clone = nr("clone") as u32;
        assert_eq!(
            stack_verdict(f, clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(
            stack_verdict(f, clone, [libc::CLONE_NEWPID as u64, 0, 0, 0, 0, 0]),
            eperm
        );
        eprintln!("default profile: {allowed} names allowed unconditionally on this arch");
    }

    /// The default profile's big filter, compiled as runs of syscall numbers behind a binary search,
    /// decides every call (numbers, x32 numbers, other architectures, argument patterns) as
    /// the one chain seccompiler makes of the same rules, and in far fewer instructions.
    #[test]
    fn seccomp_search_program_decides_as_one_chain() {
        let native = native_arch().unwrap();
        let profile = default_profile();
        let default = translate_action(
            profile.default_action(),
            profile.default_errno_ret(),
            "defaultAction",
        )
        .unwrap();
        let resolved = resolve(&profile).unwrap();
        let every_rule = every_rule(&resolved);
        assert!(
            every_rule.len() > 4 * RULES_PER_CHAIN,
            "{}",
            every_rule.len()
        );
        let guards = Guards {
            native,
            enosys_above: resolved.max_nr,
        };
        let build = |split: bool| {
            let (r, a, d) = (every_rule.clone(), SeccompAction::Allow, default.clone());
            if split {
                build_program(r, a, d, guards, "test").unwrap()
            } else {
                build_linear(r, a, d, guards, "test").unwrap()
            }
        };
        let (chain, split) = (build(false), build(true));
        assert!(
            split.iter().any(|i| i.code == BPF_JMP_JGE_K),
            "the program searches by number"
        );
        let mut numbers: Vec<u32> = (0..1100).collect();
        numbers.extend((0..600).map(|n| X32_SYSCALL_BIT | n));
        numbers.extend([u32::MAX, u32::MAX - 1, X32_SYSCALL_BIT - 1]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut arg_sets = vec![[0; 6], [u64::MAX; 6], [libc::CLONE_NEWUSER as u64; 6]];
        arg_sets.extend((0..6).map(|_| [0; 6].map(|_: u64| random() >> (random() % 64))));
        let (mut longest_chain, mut longest_split) = (0, 0);
        for arch in [native.oci as u32, 0x4000_0003, 0] {
            for &nr in &numbers {
                for &args in &arg_sets {
                    let data = SeccompData { nr, arch, args };
                    let (a, b) = (run(&chain, &data), run(&split, &data));
                    assert_eq!(
                        a.map(|r| r.0),
                        b.map(|r| r.0),
                        "nr {nr} arch {arch:#x} args {args:?}"
                    );
                    longest_chain = longest_chain.max(a.unwrap().1);
                    longest_split = longest_split.max(b.unwrap().1);
                }
            }
        }
        assert!(
            longest_split * 5 < longest_chain,
            "longest path: {longest_split} instructions split, {longest_chain} as one chain"
        );
        assert!(
            split.len() * 3 < chain.len(),
            "{} instructions as runs, {} as one chain",
            split.len(),
            chain.len()
        );

        // What attaching each costs the kernel (fork, attach, exit; minus fork and exit).
        let filter = |p: &BpfProgram| CompiledFilter {
            programs: vec![p.clone()],
            flags: 0,
        };
        let cost = |f: &CompiledFilter| {
            let mut runs: Vec<Duration> = (0..41)
                .map(|_| {
                    let t = Instant::now();
                    assert_eq!(in_child(f, || 0), Child::Exit(0));
                    t.elapsed()
                })
                .collect();
            runs.sort();
            runs[runs.len() / 2]
        };
        let (none, chain_t, split_t) = (
            cost(&no_filter()),
            cost(&filter(&chain)),
            cost(&filter(&split)),
        );
        eprintln!(
            "attach: one chain {:?}, runs {:?} (fork + exit alone {none:?}); longest path \
             {longest_chain} / {longest_split} instructions; size {} / {}",
            chain_t.saturating_sub(none),
            split_t.saturating_sub(none),
            chain.len(),
            split.len()
        );
    }

    #[test]
    fn seccomp_filter_refusing_seccomp_is_installed_last() {
        // The default filter refuses seccomp(2) (not listed): it must go last to install.
        let f = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                {"names": ["gettid"], "action": "SCMP_ACT_KILL"}
            ]
        })))
        .unwrap();
        assert_eq!(f.programs().len(), 3);
        let native = native_arch().unwrap();
        let (last, others) = f.programs().split_last().unwrap();
        assert!(!allows_install_call(last, 0, native));
        assert!(others.iter().all(|p| allows_install_call(p, 0, native)));
        let (getpid, getppid) = (nr("getpid"), nr("getppid"));
        let probe = || errno_of(getpid, [0; 6]) * 10 + errno_of(getppid, [0; 6]);
        assert_eq!(in_child(&f, probe), Child::Exit(5));

        // Two filters refusing seccomp(2) cannot both be last.
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}
            ]
        })))
        .unwrap_err();
        assert!(e.to_string().contains("2 filters refuse seccomp(2)"), "{e}");
    }

    #[test]
    fn seccomp_default_profile_compile_and_cache_timing() {
        let p = default_profile();
        let runs = 50;
        let started = Instant::now();
        for _ in 0..runs {
            compile(&p).unwrap();
        }
        let compile_time = started.elapsed() / runs;
        let f = compile(&p).unwrap();

        let dir = tempfile::tempdir().unwrap();
        compile_cached(&p, dir.path()).unwrap();
        let started = Instant::now();
        for _ in 0..runs {
            compile_cached(&p, dir.path()).unwrap();
        }
        let hit_time = started.elapsed() / runs;
        let sizes: Vec<usize> = f.programs().iter().map(Vec::len).collect();
        eprintln!(
            "default profile: compile {compile_time:?}, cache hit {hit_time:?}, \
             programs {sizes:?} instructions, {} bytes serialized",
            f.to_bytes().len()
        );
        assert!(sizes.iter().all(|&n| n <= MAX_FILTER_INSTRUCTIONS));
    }
}
